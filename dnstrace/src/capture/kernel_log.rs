//! Messages the kernel programs log (aya-log), shown on stderr like the
//! agent's own: `dnstrace: kernel: …`. They log only what should never
//! happen, so there is nothing to filter.

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{Log, Metadata, Record};

pub struct KernelLog;

impl Log for KernelLog {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        eprintln!("dnstrace: kernel: {}", record.args());
    }

    fn flush(&self) {}
}

/// The reader of the programs' log ring; `None` when the object has none.
pub fn attach(ebpf: &mut Ebpf) -> Option<EbpfLogger<KernelLog>> {
    EbpfLogger::init_with_logger(ebpf, KernelLog).ok()
}
