#![no_main]

#[global_allocator]
static ALLOCATOR: dnstrace_fuzz::Capped = dnstrace_fuzz::Capped;

libfuzzer_sys::fuzz_target!(|data: &[u8]| dnstrace::fuzz::correlate(data));
