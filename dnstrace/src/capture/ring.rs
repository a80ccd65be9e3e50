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
                // SAFETY: offset < size, so the 8-aligned header lies in the
                // mapping (size is a multiple of 8, so it never wraps); the
                // kernel writes it atomically.
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
    use std::{io::Write, os::fd::AsFd};

    use super::*;

    /// Lays out a ring as the kernel's map does (consumer page, producer
    /// page, data), with records written from `start` on, and reads it.
    fn read_ring(size: usize, start: usize, records: &[&[u8]]) -> Vec<Vec<u8>> {
        // SAFETY: sysconf only reads a configuration value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let mut file = vec![0u8; 2 * page + size];
        file[..8].copy_from_slice(&start.to_ne_bytes());
        let mut pos = start;
        for record in records {
            let header = u32::try_from(record.len()).unwrap().to_ne_bytes();
            for (i, byte) in header.iter().chain(&[0; 4]).chain(*record).enumerate() {
                file[2 * page + (pos + i) % size] = *byte;
            }
            pos += (HEADER_LEN + record.len()).next_multiple_of(8);
        }
        file[page..page + 8].copy_from_slice(&pos.to_ne_bytes());
        let mut backing = tempfile::tempfile().unwrap();
        backing.write_all(&file).unwrap();
        let mut ring = Ring::new(backing.as_fd(), size).unwrap();
        let mut read = Vec::new();
        ring.drain(|record, _| read.push(record.to_vec()));
        assert_eq!(ring.consumer_pos().load(Ordering::Relaxed), pos);
        read
    }

    #[test]
    fn a_record_that_wraps_around_the_end_reads_whole() {
        // SAFETY: as above.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let records: [&[u8]; 3] = [&[1; 40], &[2; 300], &[3; 17]];
        // The second record's header sits 64 bytes before the end, so its
        // bytes wrap.
        let start = size - 48 - 64;
        assert_eq!(
            read_ring(size, start, &records),
            records.map(<[u8]>::to_vec)
        );
        // A record that ends exactly at the end, and one after it.
        let start = size - 8 - 40;
        assert_eq!(
            read_ring(size, start, &records),
            records.map(<[u8]>::to_vec)
        );
    }
}
