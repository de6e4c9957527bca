//! sonde's kernel programs.
//!
//! One BTF tracepoint on `sys_exit` does all the work: at syscall exit the saved user registers
//! still hold the syscall's arguments and `ret` says how many bytes moved, so one hit per
//! syscall is enough (see KERNEL.md). It needs neither kprobes nor fentry.
//!
//! Per hit: syscall number -> own-process filter -> one connection-table lookup -> (classify)
//! -> copy a bounded prefix of the payload into the ring buffer. Files, pipes and sockets that
//! do not carry a supported protocol never reach the ring buffer.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The kernel programs only exist for the bpf target; agent/build.rs builds them.
}

#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod propagate;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic; the verifier rejects any path that reaches here.
    loop {}
}
