//! The sockhash of trace propagation and the program that fills it, an object of their own:
//! creating a sockhash needs `CAP_NET_ADMIN`, which sonde has only when `inject_traceparent`
//! is on, so the main object must not hold one. The `sk_msg` program of the main object
//! (`propagate.rs`) is attached to this map by its fd.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The kernel programs only exist for the bpf target; agent/build.rs builds them.
}

#[cfg(target_arch = "bpf")]
mod socks {
    use core::ffi::c_void;

    use aya_ebpf::{
        bindings::{BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
        helpers::generated::bpf_get_socket_cookie,
        macros::{map, sock_ops},
        maps::SockHash,
        programs::SockOpsContext,
    };
    use sonde_ebpf::MAX_INJECT_SOCKETS;

    #[map]
    static CLIENT_SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_INJECT_SOCKETS, 0);

    /// Each TCP socket that connects joins `CLIENT_SOCKS`, so that `sonde_inject` sees what
    /// it sends.
    #[sock_ops]
    pub fn sonde_client_socks(ctx: SockOpsContext) -> u32 {
        if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
            // SAFETY: the context pointer the kernel passed to this program.
            let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
            let _ = CLIENT_SOCKS.update(&mut cookie, unsafe { &mut *ctx.ops }, BPF_ANY as u64);
        }
        1
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic; the verifier rejects any path that reaches here.
    loop {}
}
