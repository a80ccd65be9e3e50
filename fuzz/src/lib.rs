//! What every fuzz target shares: an allocator that turns an allocation
//! no input of this size should need into a crash libFuzzer reports.
//! Without a sanitizer, libFuzzer's `-malloc_limit_mb` cannot see
//! allocations, and an untouched huge buffer never raises the RSS.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Write,
};

/// The largest single allocation allowed. dnstrace's largest legitimate
/// buffers (a 64 KiB JSON line, a pcapng block, tables of 65,536 streams)
/// are far below it.
const LIMIT: usize = 64 << 20;

pub struct Capped;

fn check(size: usize) {
    if size > LIMIT {
        // Stderr is unbuffered: writing to it does not allocate.
        let _ = std::io::stderr().write_all(b"==fuzz== allocation over 64 MiB\n");
        std::process::abort();
    }
}

// SAFETY: every call is passed on to the system allocator unchanged, after
// a size check that allocates nothing.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
