//! The kernel side's userspace half: loading and attaching the probes, waiting on and
//! decoding the ring buffer, and the kernel's other maps (drop counters, connection
//! verdicts), and the TLS uprobes' attaching.
pub mod event;
pub mod instances;
pub mod kernel_maps;
pub mod probes;
pub mod ring;
pub mod tls;
