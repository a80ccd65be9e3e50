//! Reads the ring buffer's records in place, in batches.
//!
//! aya's reader publishes its position after every record. The position
//! shares a cache line that every producing CPU reads before it writes a
//! record, so at full rate each message then costs a cache miss on both
//! sides. This reader publishes it once per batch (and every
//! `PUBLISH_BYTES` within a long one, so that producers get room back).
//!
//! The kernel lets a reader map the data pages twice in a row, so that a
//! record that wraps around reads as one slice. VmRSS then counts the
//! ring twice (32 MiB for the default 16), so this reader maps the data
//! once and copies the rare record that wraps (one per turn of the ring).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicUsize, Ordering},
};

/// Record header bits, as the kernel defines them (`BPF_RINGBUF_*`).
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_LEN: usize = 8;

/// How far the reader gets ahead of the position it last published.
const PUBLISH_BYTES: usize = 256 * 1024;

/// One mmap of the ring buffer map, unmapped on drop.
struct Mapping {
    start: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, offset: usize, len: usize, writable: bool) -> io::Result<Self> {
        let protection = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a new shared mapping of the map's fd, which the kernel
        // checks against the map's layout; nothing else uses this range.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                protection,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if start == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let start = NonNull::new(start.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { start, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `new` and nothing borrows it past
        // the `Ring` that owns this mapping.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

/// The consumer side of a BPF ring buffer map.
pub struct Ring {
    /// One page: the consumer position, which only we write.
    consumer: Mapping,
    /// One page with the producer position, then the data pages.
    producer: Mapping,
    page_size: usize,
    /// The data size (a power of two) minus one.
    mask: usize,
    /// A record that wraps around the end of the data, put together.
    wrapped: Vec<u8>,
}

impl Ring {
    /// `size` is the map's data size, a power-of-two number of pages.
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> io::Result<Self> {
        // SAFETY: sysconf only reads a configuration value.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(io::Error::other)?;
        if !size.is_power_of_two() || size < page_size {
            return Err(io::Error::other(format!("bad ring buffer size {size}")));
        }
        Ok(Self {
            consumer: Mapping::new(fd, 0, page_size, true)?,
            producer: Mapping::new(fd, page_size, page_size + size, false)?,
            page_size,
            mask: size - 1,
            wrapped: Vec::new(),
        })
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the page is mapped for as long as `self`, page-aligned, and
        // the kernel keeps the consumer position at its start.
        unsafe { self.consumer.start.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: as above, for the producer position.
        unsafe { self.producer.start.cast::<AtomicUsize>().as_ref() }
    }

    /// The data size in bytes.
    pub fn size(&self) -> usize {
        self.mask + 1
    }

    /// Hands over every committed record, oldest first, up to the first one
    /// a producer is still writing, each with the bytes that waited behind
    /// it when the producer position was last read (the backlog).
    pub fn drain(&mut self, mut handle: impl FnMut(&[u8], usize)) {
        // Only this reader writes the consumer position.
        let mut pos = self.consumer_pos().load(Ordering::Relaxed);
        let mut published = pos;
        let size = self.mask + 1;
        // SAFETY: the data pages follow the producer page: `size` bytes.
        let data = unsafe { self.producer.start.add(self.page_size) };
        // At most one ring's worth per call: producers that keep up with
        // the reader must not keep it here, away from signals and ticks.
        let start = pos;
        loop {
            // Acquire: the records before it are visible.
            let end = self.producer_pos().load(Ordering::Acquire);
            if pos == end || pos.wrapping_sub(start) > self.mask {
                break;
            }
            while pos != end {
                let offset = pos & self.mask;
                // SAFETY: offset < size, so the header lies in the mapping;
                // it never wraps, as positions advance by multiples of 8
                // from 0 and size is one too. The kernel writes it
                // atomically.
                let header = unsafe { data.add(offset).cast::<AtomicU32>().as_ref() };
                // Acquire pairs with the kernel's commit: the record's bytes
                // are written before its busy bit is cleared.
                let header = header.load(Ordering::Acquire);
                if header & BUSY_BIT != 0 {
                    self.consumer_pos().store(pos, Ordering::Release);
                    return;
                }
                let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
                if len > self.mask {
                    // Cannot happen with a sane kernel; stop rather than read
                    // outside the mapping.
                    self.consumer_pos().store(pos, Ordering::Release);
                    return;
                }
                if header & DISCARD_BIT == 0 {
                    // Where the record's bytes start, and how many lie before
                    // the end of the data (the rest from its start).
                    let from = (offset + HEADER_LEN) & self.mask;
                    let before_end = len.min(size - from);
                    // SAFETY: a committed record of `len` bytes after its
                    // header, in two pieces if it wraps, each within the
                    // data; the kernel does not reuse them until the
                    // position we publish passes them.
                    let (head, tail) = unsafe {
                        (
                            std::slice::from_raw_parts(data.add(from).as_ptr(), before_end),
                            std::slice::from_raw_parts(data.as_ptr(), len - before_end),
                        )
                    };
                    let record = if tail.is_empty() {
                        head
                    } else {
                        self.wrapped.clear();
                        self.wrapped.extend_from_slice(head);
                        self.wrapped.extend_from_slice(tail);
                        &self.wrapped
                    };
                    handle(record, end.wrapping_sub(pos));
                }
                pos += (HEADER_LEN + len).next_multiple_of(8);
                if pos.wrapping_sub(published) >= PUBLISH_BYTES {
                    self.consumer_pos().store(pos, Ordering::Release);
                    published = pos;
                }
            }
        }
        // Release: the kernel may reuse the space once it sees this.
        self.consumer_pos().store(pos, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, io::Write, os::fd::AsFd, os::unix::fs::FileExt};

    use super::*;

    fn page_size() -> usize {
        // SAFETY: sysconf only reads a configuration value.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
    }

    /// A record's bytes, each record its own pattern.
    fn record(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + seed * 31) as u8).collect()
    }

    /// A ring's map laid out as the kernel's is (consumer page, producer
    /// page, `size` bytes of data), with records written from `start` on,
    /// each with its header's flag bits.
    fn lay_out(size: usize, start: usize, records: &[(Vec<u8>, u32)]) -> Vec<u8> {
        let page = page_size();
        let mut bytes = vec![0u8; 2 * page + size];
        bytes[..8].copy_from_slice(&start.to_ne_bytes());
        let mut pos = start;
        for (record, flags) in records {
            let header = (u32::try_from(record.len()).unwrap() | flags).to_ne_bytes();
            for (i, byte) in header.iter().chain(&[0; 4]).chain(record).enumerate() {
                bytes[2 * page + (pos + i) % size] = *byte;
            }
            pos += (HEADER_LEN + record.len()).next_multiple_of(8);
        }
        bytes[page..page + 8].copy_from_slice(&pos.to_ne_bytes());
        bytes
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    /// The records a ring of `size` bytes of data hands over, and the
    /// consumer position it publishes.
    fn drain(ring: &mut Ring) -> (Vec<Vec<u8>>, usize) {
        let mut read = Vec::new();
        ring.drain(|record, _| read.push(record.to_vec()));
        (read, ring.consumer_pos().load(Ordering::Relaxed))
    }

    fn read(size: usize, start: usize, records: &[(Vec<u8>, u32)]) -> (Vec<Vec<u8>>, usize) {
        let file = file_of(&lay_out(size, start, records));
        drain(&mut Ring::new(file.as_fd(), size).unwrap())
    }

    #[test]
    fn every_record_reads_whole_wherever_it_wraps() {
        let size = page_size();
        for len in [0, 1, 7, 40, 300] {
            // Headers from 320 bytes before the end to the last 8 bytes:
            // the second record wraps at every split, or starts at 0.
            for start in (size - 320..size).step_by(8) {
                let records = [record(24, 1), record(len, 2), record(17, 3)];
                let (read, consumed) = read(size, start, &records.clone().map(|r| (r, 0)));
                assert_eq!(read, records, "len {len}, start {start}");
                let end = start + 32 + (8 + len).next_multiple_of(8) + 32;
                assert_eq!(consumed, end);
            }
        }
    }

    #[test]
    fn a_discarded_record_is_passed_over_and_a_busy_one_stops_the_read() {
        let size = page_size();
        let start = size - 64;
        let written = [
            (record(100, 1), DISCARD_BIT),
            (record(30, 2), 0),
            (record(50, 3), BUSY_BIT),
            (record(10, 4), 0),
        ];
        let (read, consumed) = read(size, start, &written);
        assert_eq!(read, [record(30, 2)]);
        // Up to the busy record, which the reader waits for.
        assert_eq!(consumed, start + 112 + 40);
    }

    #[test]
    fn a_length_past_the_ring_stops_the_read() {
        let size = page_size();
        // Laid out in twice the room, read as a ring of `size`.
        let written = [(record(8, 1), 0), (record(size, 2), 0)];
        let file = file_of(&lay_out(2 * size, 0, &written));
        let (read, consumed) = drain(&mut Ring::new(file.as_fd(), size).unwrap());
        assert_eq!(read, [record(8, 1)]);
        assert_eq!(consumed, 16);
    }

    /// A shorter record wrapping after a longer one reads as itself, not
    /// with the longer one's bytes behind it.
    #[test]
    fn a_second_wrap_reads_no_bytes_of_the_first() {
        let size = page_size();
        let file = file_of(&lay_out(size, size - 64, &[(record(300, 1), 0)]));
        let mut ring = Ring::new(file.as_fd(), size).unwrap();
        let (first, _) = drain(&mut ring);
        // A turn later (what came between read already).
        let later = lay_out(size, 2 * size - 32, &[(record(60, 2), 0)]);
        file.write_all_at(&later, 0).unwrap();
        let (second, _) = drain(&mut ring);
        assert_eq!([first, second].concat(), [record(300, 1), record(60, 2)]);
    }
}
