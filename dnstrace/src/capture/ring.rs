//! Reads the ring buffer's records in place, in batches.
//!
//! aya's reader publishes its position after every record. The position
//! shares a cache line that every producing CPU reads before it writes a
//! record, so at full rate each message then costs a cache miss on both
//! sides. This reader publishes it once per batch (and every
//! `PUBLISH_BYTES` within a long one, so that producers get room back).

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
    /// One page with the producer position, then the data pages mapped
    /// twice in a row, so a record that wraps around reads as one slice.
    producer: Mapping,
    page_size: usize,
    /// The data size (a power of two) minus one.
    mask: usize,
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
            producer: Mapping::new(fd, page_size, page_size + 2 * size, false)?,
            page_size,
            mask: size - 1,
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
        // SAFETY: the data pages follow the producer page, mapped twice:
        // 2 * (mask + 1) bytes.
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
                // mapping; the kernel writes it atomically.
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
                    // SAFETY: a committed record of `len` bytes after its
                    // header; the data is mapped twice, so it lies within
                    // the mapping even when it wraps, and the kernel does not
                    // reuse it until the position we publish passes it.
                    let record = unsafe {
                        std::slice::from_raw_parts(data.add(offset + HEADER_LEN).as_ptr(), len)
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
