//! The `sys_exit` program and its maps. See main.rs for the shape of the hot path.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
    macros::{btf_tracepoint, map, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, ProbeContext, RetProbeContext, TracePointContext},
    Global,
};
use sonde_ebpf::{
    conn_flags, direction, drop_reason, event_kind, proto, role, ConnInfo, ConnKey, EventHeader,
    EVENT_HEADER_LEN, MAX_CONNS, MAX_FORKS, MAX_IOVECS, MAX_PAYLOAD, MAX_PROCESSES_SEEN,
    MAX_SSL_CALLS, MAX_UNBOUND_WRITES, PROBATION_EVENTS, RING_BYTES, RING_LOST,
};

/// sonde's own process id, set by the loader: sonde never observes its own traffic.
#[no_mangle]
pub(crate) static SONDE_TGID: Global<u32> = Global::new(0);

/// The protocols to capture, as bits `1 << proto::X`, set by the loader (all by default).
/// A connection of a protocol left out is judged "none of ours" at its first bytes.
#[no_mangle]
static PROTOCOLS: Global<u32> = Global::new(u32::MAX);

/// Payload bytes copied per syscall, set by the loader (at most `MAX_PAYLOAD`).
#[no_mangle]
static PAYLOAD_BYTES: Global<u32> = Global::new(MAX_PAYLOAD as u32);

/// 1 when the TLS uprobes are loaded (set by the loader): otherwise no syscall looks for an
/// SSL call in progress.
#[no_mangle]
static TLS_ON: Global<u32> = Global::new(0);

/// 1 when set by the loader for the benchmark's floor (`SONDE_BENCH_HOOK_ONLY=1`): the
/// syscall and TLS programs return at once, so a run measures what the hooks alone cost.
#[no_mangle]
pub(crate) static HOOK_ONLY: Global<u32> = Global::new(0);

/// Offset of `child_pid` in the `sched/sched_process_fork` record, set by the loader from
/// the tracepoint's format file (44 on every kernel seen so far).
#[no_mangle]
static FORK_CHILD_PID_OFFSET: Global<u32> = Global::new(44);

#[map]
pub(crate) static CONNS: LruHashMap<ConnKey, ConnInfo> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// Who forked a process, and when.
#[repr(C)]
#[derive(Clone, Copy)]
struct Fork {
    parent_tgid: u32,
    /// The fd of the connection the parent accepted last before the fork (-1: none): the
    /// one a fork-per-connection server hands to this child, kept here as it was then,
    /// since the parent may close that fd and accept the next connection on it before the
    /// child reads.
    accepted_fd: i32,
    /// Monotonic ns of the fork: only connections open at that moment were inherited.
    at_ns: u64,
    accepted: ConnInfo,
}

/// The connection a process accepted last (`Fork::accepted`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Accepted {
    fd: i32,
    _pad: u32,
    conn: ConnInfo,
}

#[map]
static LAST_ACCEPT: LruHashMap<u32, Accepted> = LruHashMap::with_max_entries(MAX_FORKS, 0);

/// Child pid -> its fork. A child looks up the connections it inherited here (threads are
/// recorded too; they never look themselves up).
#[map]
static FORKS: LruHashMap<u32, Fork> = LruHashMap::with_max_entries(MAX_FORKS, 0);

/// tgid -> monotonic ns of its latest fork (or thread): a connection it closes that is
/// older than that may live on in a child, so its entry is kept as a tombstone.
#[map]
static LAST_FORK: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_FORKS, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Per-CPU staging area for one event: header then payload. The payload area is three times
/// `MAX_PAYLOAD` so that every masked offset + masked length the verifier sees stays inside.
#[repr(C)]
pub struct Scratch {
    /// Bytes this CPU has put in the ring so far (drives the batched wakeups).
    shipped_bytes: u64,
    /// Set while an event is being staged here. The sys_exit program cannot be preempted,
    /// but a uprobe program can (under a fully preemptible kernel), and the task that runs
    /// next on this CPU must not overwrite its half-staged event: it drops its own
    /// (counted as `scratch_busy`).
    busy: u64,
    /// The iovec array of the current readv/writev/*msg, as (base, len) pairs. Twice
    /// MAX_IOVECS so that the masked read length stays inside.
    iov: [[u64; 2]; 2 * MAX_IOVECS],
    hdr: EventHeader,
    data: [u8; 3 * MAX_PAYLOAD],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

// x86-64 syscall numbers.
pub(crate) const SYS_READ: u64 = 0;
pub(crate) const SYS_WRITE: u64 = 1;
pub(crate) const SYS_CLOSE: u64 = 3;
const SYS_DUP: u64 = 32;
const SYS_DUP2: u64 = 33;
pub(crate) const SYS_READV: u64 = 19;
pub(crate) const SYS_WRITEV: u64 = 20;
const SYS_SENDFILE: u64 = 40;
const SYS_CONNECT: u64 = 42;
const SYS_ACCEPT: u64 = 43;
pub(crate) const SYS_SENDTO: u64 = 44;
pub(crate) const SYS_RECVFROM: u64 = 45;
pub(crate) const SYS_SENDMSG: u64 = 46;
pub(crate) const SYS_RECVMSG: u64 = 47;
const SYS_ACCEPT4: u64 = 288;
const SYS_DUP3: u64 = 292;
const SYS_RECVMMSG: u64 = 299;
const SYS_SENDMMSG: u64 = 307;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EPIPE: i64 = 32;
const ECONNRESET: i64 = 104;
const ETIMEDOUT: i64 = 110;
const EINPROGRESS: i64 = 115;

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// Each CPU wakes the reader once per this many bytes shipped.
const WAKEUP_BYTES: u64 = 256 * 1024;

/// Masks that bound offsets and lengths for the verifier (values are already <= MAX_PAYLOAD).
const LEN_MASK: usize = 2 * MAX_PAYLOAD - 1;
const OFF_MASK: usize = MAX_PAYLOAD - 1;

/// Where a syscall's payload lives in user memory. A struct whose fields are all set on every
/// path, not an enum: an enum leaves the other variant's stack slot unwritten, LLVM still
/// loads it where paths merge, and the 5.10 verifier refuses that ("invalid read from
/// stack").
#[derive(Clone, Copy)]
struct Source {
    kind: u8,
    /// The buffer (`SRC_BUF`) or the iovec array (`SRC_IOV`).
    ptr: u64,
    /// The iovec count (`SRC_IOV`), or the bytes staged (`SRC_KERNEL`).
    iovs: u64,
}

const SRC_NONE: u8 = 0;
/// One contiguous buffer (read/write/recvfrom/sendto).
const SRC_BUF: u8 = 1;
/// An iovec array (readv/writev, and *msg through their msghdr).
const SRC_IOV: u8 = 2;
/// A memory-BIO `SSL_write`'s plaintext staged in `UNBOUND_STAGING`: `iovs` is how many
/// bytes.
const SRC_KERNEL: u8 = 3;

const NO_PAYLOAD: Source = Source {
    kind: SRC_NONE,
    ptr: 0,
    iovs: 0,
};

#[inline(always)]
fn buf(ptr: u64) -> Source {
    Source {
        kind: SRC_BUF,
        ptr,
        iovs: 0,
    }
}

/// The `count` bytes staged in this CPU's `UNBOUND_STAGING` (no pointer: the readers
/// look the map up themselves, which keeps map-value pointers out of the code that does
/// arithmetic on user addresses).
#[inline(always)]
fn staged_plaintext(count: u64) -> Source {
    Source {
        kind: SRC_KERNEL,
        ptr: 0,
        iovs: count,
    }
}

#[inline(always)]
fn iov(ptr: u64, iovs: u64) -> Source {
    Source {
        kind: SRC_IOV,
        ptr,
        iovs,
    }
}

/// An `SSL_read`/`SSL_write` (or `_ex`) in progress on a thread: set at its entry, read and
/// removed at its return. The read/write syscall OpenSSL makes inside it names the fd.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslCall {
    ssl: u64,
    buf: u64,
    /// `SSL_*_ex`: where the byte count is written (0 for `SSL_read`/`SSL_write`).
    len_ptr: u64,
    /// The socket the call moved ciphertext on, -1 until a syscall shows it.
    fd: i32,
    /// `direction::INGRESS` for reads, `EGRESS` for writes.
    dir: u32,
}

/// Key of the `SSL*` -> fd cache.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    tgid: u32,
    _pad: u32,
    ssl: u64,
}

#[map]
static SSL_CALLS: LruHashMap<u64, SslCall> = LruHashMap::with_max_entries(MAX_SSL_CALLS, 0);

/// Processes announced to userspace (`event_kind::PROCESS_SEEN`), by tgid; removed when the
/// process's main thread exits.
#[map]
static PROCESSES_SEEN: LruHashMap<u32, u8> = LruHashMap::with_max_entries(MAX_PROCESSES_SEEN, 0);

/// Threads inside connect(): the socket each is connecting (`struct sock *`), seen when it
/// entered SYN_SENT, so that connect()'s exit reads the local address the kernel chose.
#[map]
static CONNECTING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_SSL_CALLS, 0);

/// Offsets in `struct sock_common` (see `on_new_conn`).
const SKC_RCV_SADDR: u64 = 4;
const SKC_NUM: u64 = 14;
/// `sock:inet_sock_set_state`'s format (the same since Linux 4.16): `skaddr` at 8,
/// `newstate` at 20.
const SOCK_STATE_SKADDR: usize = 8;
const SOCK_STATE_NEWSTATE: usize = 20;
const TCP_SYN_SENT: i32 = 2;

/// A TCP socket changed state: one entering SYN_SENT is being connected by the current
/// thread (inside connect(), or a TCP Fast Open sendto()).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sonde_sock_state(ctx: TracePointContext) -> u32 {
    // SAFETY: read_at goes through bpf_probe_read, which fails cleanly on a bad offset.
    if unsafe { ctx.read_at::<i32>(SOCK_STATE_NEWSTATE) } != Ok(TCP_SYN_SENT) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == SONDE_TGID.load() {
        return 0;
    }
    if let Ok(sock) = unsafe { ctx.read_at::<u64>(SOCK_STATE_SKADDR) } {
        let _ = CONNECTING.insert(&pid_tgid, &sock, 0);
    }
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the reference points into the map value, valid for this program run.
    if unsafe { PROCESSES_SEEN.get(&tgid) }.is_none() {
        let _ = PROCESSES_SEEN.insert(&tgid, &1, 0);
        announce_process(pid_tgid);
    }
    0
}

/// Tells userspace that the current process is connecting for the first time
/// (`event_kind::PROCESS_SEEN`, a header-only event), and wakes it at once: a short-lived
/// client may exit before its first bytes reach userspace, and its environment (its
/// `OTEL_SERVICE_NAME`) with it. Sent from here rather than from connect()'s exit, whose
/// program has no stack to spare.
#[inline(always)]
fn announce_process(pid_tgid: u64) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `s` is this CPU's scratch value; tracepoint programs run with preemption off,
    // and `busy` says whether a preempted uprobe program is staging an event in it.
    let s = unsafe { &mut *s };
    if s.busy != 0 {
        count_drop(drop_reason::SCRATCH_BUSY);
        return;
    }
    s.hdr.kind = event_kind::PROCESS_SEEN;
    s.hdr.total_len = 0;
    s.hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    s.hdr.tgid = (pid_tgid >> 32) as u32;
    s.hdr.tid = pid_tgid as u32;
    s.hdr.fd = -1;
    s.hdr.captured_len = 0;
    s.hdr.errno = 0;
    s.hdr.direction = direction::EGRESS;
    s.hdr.tail_len = 0;
    s.hdr.conn = ConnInfo::default();
    s.hdr.comm = bpf_get_current_comm().unwrap_or_default();
    // SAFETY: `hdr` is a repr(C) value of EVENT_HEADER_LEN bytes inside the map value.
    let bytes = unsafe {
        core::slice::from_raw_parts(&s.hdr as *const EventHeader as *const u8, EVENT_HEADER_LEN)
    };
    if EVENTS.output::<[u8]>(bytes, BPF_RB_FORCE_WAKEUP).is_err() {
        count_drop(drop_reason::RINGBUF_FULL);
    }
}

/// A thread exited: a call it was inside of (killed in SSL_read) ends with it, so that a
/// thread that later gets its id does not look like it is inside one. (LRU besides, so
/// that the map stays bounded whatever happens.)
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sonde_thread_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        // The main thread: its process id may be reused by a process to announce.
        let _ = PROCESSES_SEEN.remove(&((pid_tgid >> 32) as u32));
    }
    let _ = SSL_CALLS.remove(&pid_tgid);
    let _ = CIPHER_READS.remove(&pid_tgid);
    if UNBOUND_WRITES.remove(&pid_tgid).is_ok() {
        count_drop(drop_reason::TLS_FD_UNKNOWN);
    }
    0
}

/// The socket of each `SSL*` a call was last seen on: an `SSL_read` served from OpenSSL's own
/// buffer makes no syscall, and its plaintext goes to the socket its connection last used.
#[map]
static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// An `SSL_write` that returned without a syscall inside it, on an `SSL*` whose socket is
/// not known yet: OpenSSL wrote the ciphertext to a memory BIO (Node, Python's asyncio),
/// and the program writes it to the socket itself soon after, on the same thread. That
/// write, when its first record is exactly this plaintext's encryption, names the socket.
/// The plaintext is copied here at the call's return: the program may free its buffer
/// before it writes the ciphertext out (Node does).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnboundWrite {
    ssl: u64,
    /// The call's plaintext length.
    len: u64,
    /// How many of its first bytes `bytes` holds (1 to MAX_PAYLOAD - 1).
    copied: u64,
    bytes: [u8; MAX_PAYLOAD],
}

/// One entry per thread, deleted when a write binds it (or the thread's next unbound write
/// replaces it, or the thread exits: both counted as `tls_fd_unknown`). Not an LRU map: a
/// full map refuses the new entry, which is counted, instead of dropping an old one
/// silently.
#[map]
static UNBOUND_WRITES: HashMap<u64, UnboundWrite> =
    HashMap::with_max_entries(MAX_UNBOUND_WRITES, 0);

/// Per-CPU room for one `UnboundWrite` (too large for the stack): the value a new entry is
/// inserted from (then filled in place), and where a bound entry's plaintext is moved
/// before the entry is deleted, to be shipped from there (the sys_exit program runs with
/// preemption off, so nothing else uses this CPU's copy meanwhile).
#[map]
static UNBOUND_STAGING: PerCpuArray<UnboundWrite> = PerCpuArray::with_max_entries(1, 0);

/// The application-data records (their lengths, 0 for none) at the start of the thread's
/// last ciphertext read outside an SSL call, and its socket: an `SSL_read` over a memory
/// BIO (a server's first request, before any write bound its `SSL*`) returns the plaintext
/// of one of them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CipherRead {
    fd: i32,
    /// Record lengths fit 16 bits (at most 2^14 + 2048 by the TLS specification).
    records: [u16; CIPHER_READ_RECORDS],
}

const CIPHER_READ_RECORDS: usize = 4;

#[map]
static CIPHER_READS: LruHashMap<u64, CipherRead> = LruHashMap::with_max_entries(MAX_SSL_CALLS, 0);

/// The most plaintext one TLS record carries.
const TLS_RECORD_PLAINTEXT: u64 = 16384;

/// `SSL_free`: the `SSL*` is gone, and the same address may be the next connection's.
#[uprobe]
pub fn sonde_ssl_free(ctx: ProbeContext) -> u32 {
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let ssl_key = SslKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        ssl,
    };
    let _ = SSL_FDS.remove(&ssl_key);
    0
}

#[uprobe]
pub fn sonde_ssl_write(ctx: ProbeContext) -> u32 {
    if HOOK_ONLY.load() != 0 {
        return 0;
    }
    ssl_enter(&ctx, direction::EGRESS, false);
    0
}

#[uprobe]
pub fn sonde_ssl_read(ctx: ProbeContext) -> u32 {
    if HOOK_ONLY.load() != 0 {
        return 0;
    }
    ssl_enter(&ctx, direction::INGRESS, false);
    0
}

#[uprobe]
pub fn sonde_ssl_write_ex(ctx: ProbeContext) -> u32 {
    if HOOK_ONLY.load() != 0 {
        return 0;
    }
    ssl_enter(&ctx, direction::EGRESS, true);
    0
}

#[uprobe]
pub fn sonde_ssl_read_ex(ctx: ProbeContext) -> u32 {
    if HOOK_ONLY.load() != 0 {
        return 0;
    }
    ssl_enter(&ctx, direction::INGRESS, true);
    0
}

/// The return of any of the four: the plaintext the call moved, on its socket.
#[uretprobe]
pub fn sonde_ssl_return(ctx: RetProbeContext) -> u32 {
    if HOOK_ONLY.load() != 0 {
        return 0;
    }
    let _ = ssl_exit(&ctx);
    0
}

#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, dir: u8, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == SONDE_TGID.load() {
        return;
    }
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let len_ptr = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let call = SslCall {
        ssl,
        buf,
        len_ptr,
        fd: -1,
        dir: dir as u32,
    };
    let _ = SSL_CALLS.insert(&pid_tgid, &call, 0);
}

#[inline(always)]
fn ssl_exit(ctx: &RetProbeContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the reference points into the map value, valid for this program run.
    let Some(call) = (unsafe { SSL_CALLS.get(&pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = SSL_CALLS.remove(&pid_tgid);
    // All four return an int: only the low 32 bits of the register are the value (a -1
    // would otherwise read as 4294967295 bytes).
    let ret = ctx.ret::<i64>() as i32;
    let len = if call.len_ptr != 0 {
        // SSL_*_ex return 1 on success and the count through their last argument.
        if ret != 1 {
            return Ok(());
        }
        read_user::<u64>(call.len_ptr)?
    } else if ret > 0 {
        ret as u64
    } else {
        return Ok(());
    };
    let tgid = (pid_tgid >> 32) as u32;
    let ssl_key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let fd = if call.fd >= 0 {
        let _ = SSL_FDS.insert(&ssl_key, &call.fd, 0);
        call.fd
    } else {
        // SAFETY: as above.
        match unsafe { SSL_FDS.get(&ssl_key) } {
            Some(fd) => *fd,
            None if call.dir == direction::EGRESS as u32 => {
                keep_unbound_write(pid_tgid, call.ssl, call.buf, len);
                return Ok(());
            }
            None => match bound_read(pid_tgid, len) {
                Some(fd) => {
                    let _ = SSL_FDS.insert(&ssl_key, &fd, 0);
                    fd
                }
                None => {
                    count_drop(drop_reason::TLS_FD_UNKNOWN);
                    return Ok(());
                }
            },
        }
    };
    let key = ConnKey { tgid, fd };
    on_data(
        &key,
        pid_tgid,
        call.dir as u8,
        buf(call.buf),
        len,
        true,
        true,
    )
}

/// Inlined into the program's entry: as a function of its own, its frame (480 bytes) plus
/// the entry's and a `memcpy`'s (32 each, the verifier's minimum) would be 544, over the
/// 512 that the verifier allows; inlined, 480 + 32 = 512 passes on 5.10, 6.1 and 6.12
/// (`cargo xtask kernels`). Measure a change with `llvm-objdump -d` (the largest
/// `r10 - N`) before adding to this path.
#[btf_tracepoint(function = "sys_exit")]
#[inline(always)]
pub fn sonde_sys_exit(ctx: BtfTracePointContext) -> i32 {
    if HOOK_ONLY.load() != 0 {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let _ = handle(regs, ret);
    0
}

/// A process forked: remember the child's parent, so that a child serving a connection its
/// parent accepted (busybox httpd, inetd-style servers) finds it. The program runs in the
/// parent, so the current tgid is the parent's.
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sonde_fork(ctx: TracePointContext) -> u32 {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if parent == SONDE_TGID.load() {
        return 0;
    }
    // SAFETY: read_at goes through bpf_probe_read, which fails cleanly on a bad offset.
    if let Ok(child) = unsafe { ctx.read_at::<u32>(FORK_CHILD_PID_OFFSET.load() as usize) } {
        let at_ns = unsafe { bpf_ktime_get_ns() };
        // SAFETY: the reference points into the map value, valid for this program run.
        let fork = match unsafe { LAST_ACCEPT.get(&parent) } {
            Some(a) => Fork {
                parent_tgid: parent,
                accepted_fd: a.fd,
                at_ns,
                accepted: a.conn,
            },
            None => Fork {
                parent_tgid: parent,
                accepted_fd: -1,
                at_ns,
                accepted: ConnInfo::default(),
            },
        };
        let _ = FORKS.insert(&child, &fork, 0);
        let _ = LAST_FORK.insert(&parent, &at_ns, 0);
        // Handed over: a later fork gets the connection accepted after this one.
        let _ = LAST_ACCEPT.remove(&parent);
    }
    0
}

#[inline(always)]
fn handle(regs: *const pt_regs, ret: i64) -> Result<(), i64> {
    // SAFETY (all reg reads): `regs` is the tp_btf argument, a BTF-typed pointer the
    // verifier trusts, so plain loads are checked against struct pt_regs and cannot fault.
    // This saves a helper call on every syscall of the host.
    let nr = unsafe { (*regs).orig_rax };
    match nr {
        SYS_READ | SYS_WRITE | SYS_RECVFROM | SYS_SENDTO | SYS_READV | SYS_WRITEV | SYS_RECVMSG
        | SYS_SENDMSG | SYS_RECVMMSG | SYS_SENDMMSG | SYS_SENDFILE | SYS_CLOSE | SYS_CONNECT
        | SYS_ACCEPT | SYS_ACCEPT4 | SYS_DUP | SYS_DUP2 | SYS_DUP3 => {}
        _ => return Ok(()),
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == SONDE_TGID.load() {
        return Ok(());
    }
    let fd = unsafe { (*regs).rdi } as i32;
    let key = ConnKey { tgid, fd };
    match nr {
        SYS_CLOSE => on_close(&key, pid_tgid),
        SYS_DUP | SYS_DUP2 | SYS_DUP3 => {
            if ret >= 0 {
                on_dup(&key, ret as i32, pid_tgid)
            } else {
                Ok(())
            }
        }
        SYS_CONNECT => {
            // SAFETY: the reference points into the map value, valid for this program run.
            let sock = unsafe { CONNECTING.get(&pid_tgid) }.copied().unwrap_or(0);
            let _ = CONNECTING.remove(&pid_tgid);
            if sock == 0 {
                // No TCP socket entered SYN_SENT in this connect(): it asked again about one
                // already connecting (hiredis does; the first call recorded it), or it was
                // not TCP (a UDP connect). A connection sonde started watching in the middle
                // of its connect() is found through /proc at its first bytes instead.
                return Ok(());
            }
            if ret == 0 || ret == -EINPROGRESS {
                let addr = unsafe { (*regs).rsi };
                on_new_conn(ConnKey { tgid, fd }, addr, role::CLIENT, -1, sock)
            } else {
                Ok(())
            }
        }
        SYS_ACCEPT | SYS_ACCEPT4 => {
            if ret >= 0 {
                let addr = unsafe { (*regs).rsi };
                on_new_conn(
                    ConnKey {
                        tgid,
                        fd: ret as i32,
                    },
                    addr,
                    role::SERVER,
                    fd,
                    0,
                )
            } else {
                Ok(())
            }
        }
        _ => {
            if ret <= 0 {
                return on_error(&key, pid_tgid, ret, nr);
            }
            let arg1 = unsafe { (*regs).rsi };
            let (dir, src, len) = match nr {
                SYS_READ | SYS_RECVFROM => (direction::INGRESS, buf(arg1), ret as u64),
                SYS_WRITE | SYS_SENDTO => (direction::EGRESS, buf(arg1), ret as u64),
                SYS_READV | SYS_WRITEV => {
                    let cnt = unsafe { (*regs).rdx };
                    let dir = if nr == SYS_READV {
                        direction::INGRESS
                    } else {
                        direction::EGRESS
                    };
                    (dir, iov(arg1, cnt), ret as u64)
                }
                SYS_RECVMSG | SYS_SENDMSG => {
                    let (iovs, cnt) = msghdr_iov(arg1)?;
                    let dir = if nr == SYS_RECVMSG {
                        direction::INGRESS
                    } else {
                        direction::EGRESS
                    };
                    (dir, iov(iovs, cnt), ret as u64)
                }
                SYS_RECVMMSG | SYS_SENDMMSG => {
                    // ret counts messages; take the first one (its length follows its msghdr).
                    let (iovs, cnt) = msghdr_iov(arg1)?;
                    let first_len: u32 = read_user(arg1 + 56)?;
                    let dir = if nr == SYS_RECVMMSG {
                        direction::INGRESS
                    } else {
                        direction::EGRESS
                    };
                    (dir, iov(iovs, cnt), first_len as u64)
                }
                // sendfile(out_fd, ...): bytes we cannot see; shipped as a gap.
                _ => (direction::EGRESS, NO_PAYLOAD, ret as u64),
            };
            if len == 0 {
                return Ok(());
            }
            // These calls fail on anything but a socket: no need to wait for userspace to
            // check what the fd is.
            let socket_call = matches!(
                nr,
                SYS_RECVFROM | SYS_SENDTO | SYS_RECVMSG | SYS_SENDMSG | SYS_RECVMMSG | SYS_SENDMMSG
            );
            on_data(&key, pid_tgid, dir, src, len, socket_call, false)
        }
    }
}

/// A read/write-family syscall moved `len` bytes on `key`'s fd.
#[inline(always)]
fn on_data(
    key: &ConnKey,
    pid_tgid: u64,
    dir: u8,
    mut src: Source,
    mut len: u64,
    socket_call: bool,
    tls: bool,
) -> Result<(), i64> {
    // A tombstone (CLOSED): this fd was closed and holds something new now, which is not
    // what a parent had on it either.
    let mut may_inherit = true;
    let entry = match CONNS.get_ptr_mut(key) {
        // SAFETY (all map value derefs below): the pointer is into the map value, valid for
        // this program run.
        Some(info) if unsafe { (*info).flags } & conn_flags::CLOSED != 0 => {
            may_inherit = false;
            None
        }
        other => other,
    };
    let (conn, first) = match entry {
        Some(info) => {
            // SAFETY: `info` points into the map value, valid for this program run.
            let mut conn = unsafe { *info };
            if tls {
                mark_tls(info, &mut conn);
            } else if TLS_ON.load() != 0 && may_be_tls(&conn) {
                // Inside SSL_read/SSL_write these bytes are the call's ciphertext: they
                // name its socket, and are not parsed.
                if let Some(call) = SSL_CALLS.get_ptr_mut(&pid_tgid) {
                    unsafe {
                        if (*call).fd < 0 {
                            (*call).fd = key.fd;
                        }
                    }
                    mark_tls(info, &mut conn);
                    return Ok(());
                }
                // A socket no SSL* is tied to yet whose bytes may be TLS records: a
                // memory-BIO program's ciphertext may tie one. (Other connections judged not
                // ours, most of them, cost nothing here.)
                let unbound_tls = conn.flags & conn_flags::TLS == 0
                    && (conn.flags & conn_flags::TLS_RECORDS != 0
                        || conn.proto == proto::UNKNOWN
                        || conn.proto == proto::POSTGRES);
                let bound = if !unbound_tls {
                    None
                } else if dir == direction::INGRESS {
                    note_cipher_read(key, pid_tgid, src, len);
                    None
                } else {
                    bound_write(key, pid_tgid, src, len)
                };
                if let Some((staged, plain_len)) = bound {
                    // The ciphertext of this thread's last SSL_write into a memory BIO:
                    // that call's plaintext goes in its place.
                    src = staged_plaintext(staged);
                    len = plain_len;
                    mark_tls(info, &mut conn);
                } else if conn.flags & conn_flags::TLS != 0 && src.kind != SRC_NONE {
                    // Handshake or alert records, outside a call. (A sendfile, whose bytes
                    // are not read, still goes through: kernel TLS sends bodies that way,
                    // and the framing needs their length.)
                    return Ok(());
                }
            }
            if conn.proto == proto::NONE {
                return Ok(());
            }
            if conn.flags & conn_flags::PROBATION != 0 && socket_call {
                conn.flags &= !conn_flags::PROBATION;
                unsafe { (*info).flags = conn.flags };
            }
            if conn.flags & conn_flags::PROBATION != 0 {
                if conn.probation_left == 0 {
                    unsafe {
                        (*info).flags = conn.flags | conn_flags::LOST;
                        (*info).lost_events = conn.lost_events.saturating_add(1);
                    }
                    return Ok(());
                }
                unsafe { (*info).probation_left = conn.probation_left - 1 };
            }
            if conn.flags & conn_flags::LOST != 0 {
                // This event carries the flag and count (in `conn`) to userspace.
                unsafe {
                    (*info).flags = conn.flags & !conn_flags::LOST;
                    (*info).lost_events = 0;
                }
            }
            let first = conn.proto == proto::UNKNOWN;
            if first {
                let class = classify(src, len);
                if class.proto == proto::UNKNOWN {
                    // Decide "not ours" only on a full-sized first message; a shorter first
                    // write may be part of a split request line.
                    if len >= 8 {
                        unsafe { (*info).proto = proto::NONE };
                    }
                    if class.tls_record {
                        unsafe { (*info).flags |= conn_flags::TLS_RECORDS };
                    }
                    return Ok(());
                }
                conn.proto = class.proto;
                conn.flags |= first_flag(class.is_request);
                unsafe {
                    (*info).proto = conn.proto;
                    (*info).flags = conn.flags;
                }
            }
            (conn, first)
        }
        None => {
            // Not seen connecting or accepting: inherited across fork, older than sonde, or
            // not a socket at all. Track it only if it carries a protocol.
            let class = classify(src, len);
            if class.proto == proto::UNKNOWN {
                if !tls && class.tls_record && TLS_ON.load() != 0 {
                    // A TLS connection older than sonde: inside a call, its ciphertext
                    // names the call's socket.
                    if let Some(call) = SSL_CALLS.get_ptr_mut(&pid_tgid) {
                        unsafe {
                            if (*call).fd < 0 {
                                (*call).fd = key.fd;
                            }
                        }
                    }
                }
                return Ok(());
            }
            let is_request = class.is_request;
            let tls_flag = if tls { conn_flags::TLS } else { 0 };
            if let Some(parent) = inherited(key.tgid, key.fd).filter(|_| may_inherit) {
                // The parent accepted or connected it: a known socket, no probation.
                let info = ConnInfo {
                    proto: class.proto,
                    flags: first_flag(is_request) | tls_flag,
                    probation_left: 0,
                    lost_events: 0,
                    closed_ns: 0,
                    ..parent
                };
                if CONNS.insert(key, &info, 0).is_err() {
                    count_drop(drop_reason::CONN_TABLE_FULL);
                    return Ok(());
                }
                return emit(
                    key,
                    pid_tgid,
                    event_kind::DATA,
                    dir,
                    src,
                    len,
                    &info,
                    0,
                    true,
                );
            }
            let probation = if socket_call {
                0
            } else {
                conn_flags::PROBATION
            };
            let client = is_request == (dir == direction::EGRESS);
            let info = ConnInfo {
                conn_id: unsafe { bpf_ktime_get_ns() },
                role: if client { role::CLIENT } else { role::SERVER },
                proto: class.proto,
                flags: conn_flags::RESOLVE | probation | first_flag(is_request) | tls_flag,
                probation_left: PROBATION_EVENTS - 1,
                listen_fd: -1,
                key_fd: key.fd,
                ..ConnInfo::default()
            };
            if CONNS.insert(key, &info, 0).is_err() {
                count_drop(drop_reason::CONN_TABLE_FULL);
                return Ok(());
            }
            (info, true)
        }
    };
    emit(
        key,
        pid_tgid,
        event_kind::DATA,
        dir,
        src,
        len,
        &conn,
        0,
        first,
    )
}

/// Copies an unbound `SSL_write`'s plaintext (its first MAX_PAYLOAD - 1 bytes) into the
/// thread's `UNBOUND_WRITES` entry. One per thread: an older one never written out is lost;
/// every loss here is counted.
#[inline(always)]
fn keep_unbound_write(pid_tgid: u64, ssl: u64, buf: u64, len: u64) {
    let entry = match UNBOUND_WRITES.get_ptr_mut(&pid_tgid) {
        Some(e) => {
            count_drop(drop_reason::TLS_FD_UNKNOWN); // the older one, replaced
            e
        }
        None => {
            let Some(template) = UNBOUND_STAGING.get_ptr(0) else {
                count_drop(drop_reason::TLS_FD_UNKNOWN);
                return;
            };
            // SAFETY: a per-CPU map value, valid for this program run; what it holds does
            // not matter (every field read later is written below).
            let inserted = UNBOUND_WRITES.insert(&pid_tgid, unsafe { &*template }, 0);
            match UNBOUND_WRITES.get_ptr_mut(&pid_tgid) {
                Some(e) if inserted.is_ok() => e,
                _ => {
                    count_drop(drop_reason::TLS_FD_UNKNOWN); // the map is full
                    return;
                }
            }
        }
    };
    let want = if len > OFF_MASK as u64 {
        OFF_MASK
    } else {
        len as usize
    };
    // Masked behind black_box, as in `emit`, for the older verifiers.
    let n = core::hint::black_box(want) & OFF_MASK;
    // SAFETY (all derefs of `entry`): a pointer into this thread's map value, valid for this
    // program run; only this thread's programs use this key.
    let copied = unsafe {
        let dst = (*entry).bytes.as_mut_ptr() as *mut c_void;
        bpf_probe_read_user(dst, n as u32, buf as *const c_void) == 0
    };
    if !copied || n == 0 {
        let _ = UNBOUND_WRITES.remove(&pid_tgid);
        count_drop(drop_reason::TLS_FD_UNKNOWN);
        return;
    }
    unsafe {
        (*entry).ssl = ssl;
        (*entry).len = len;
        (*entry).copied = n as u64;
    }
}

/// The thread's pending memory-BIO `SSL_write` if `src`, written to `key`'s socket (one no
/// `SSL*` is tied to yet), starts with its encryption: an application-data record (type
/// 23, version 3.x) that `encrypts` exactly its plaintext. Then the `SSL*` is bound to the
/// socket from here on, the entry's plaintext is moved to this CPU's staging copy and the
/// entry deleted; returns how many bytes were staged and the plaintext's length, to ship
/// in place of the ciphertext.
#[inline(always)]
fn bound_write(key: &ConnKey, pid_tgid: u64, src: Source, len: u64) -> Option<(u64, u64)> {
    let w = UNBOUND_WRITES.get_ptr(&pid_tgid)?;
    // SAFETY (all derefs of `w`): a pointer into this thread's map value, valid for this
    // program run.
    let (ssl, plain_len, copied) = unsafe { ((*w).ssl, (*w).len, (*w).copied) };
    let (ptr, avail) = first_buffer(src, len)?;
    if avail < 5 {
        return None;
    }
    let (content_type, record) = record_header(ptr)?;
    if content_type != 23 || !encrypts(record, plain_len) {
        return None;
    }
    let staging = UNBOUND_STAGING.get_ptr_mut(0)?;
    let n = core::hint::black_box(copied as usize) & OFF_MASK;
    // SAFETY: `staging` is this CPU's value; the helper writes at most n < MAX_PAYLOAD bytes
    // into its `bytes`.
    let moved = unsafe {
        bpf_probe_read_kernel(
            (*staging).bytes.as_mut_ptr() as *mut c_void,
            n as u32,
            (*w).bytes.as_ptr() as *const c_void,
        )
    };
    let _ = UNBOUND_WRITES.remove(&pid_tgid);
    if moved != 0 {
        count_drop(drop_reason::TLS_FD_UNKNOWN);
        return None;
    }
    let ssl_key = SslKey {
        tgid: key.tgid,
        _pad: 0,
        ssl,
    };
    let _ = SSL_FDS.insert(&ssl_key, &key.fd, 0);
    Some((n as u64, plain_len))
}

/// Whether `record` (a ciphertext record's length) carries `plaintext` bytes (up to one
/// record's worth) under an AEAD: 16 more for TLS 1.2 ChaCha20-Poly1305, 17 for TLS 1.3
/// (tag and inner type), 24 for TLS 1.2 GCM (explicit nonce and tag).
#[inline(always)]
fn encrypts(record: u64, plaintext: u64) -> bool {
    let plaintext = if plaintext < TLS_RECORD_PLAINTEXT {
        plaintext
    } else {
        TLS_RECORD_PLAINTEXT
    };
    matches!(record.wrapping_sub(plaintext), 16 | 17 | 24)
}

/// The content type and length of the TLS record whose 5-byte header is at `ptr` (user
/// memory), if it is one: types 20 to 23, version 3.x.
#[inline(always)]
fn record_header(ptr: u64) -> Option<(u8, u64)> {
    let head = read_user::<[u8; 5]>(ptr).ok()?;
    if !(20..=23).contains(&head[0]) || head[1] != 3 {
        return None;
    }
    Some((head[0], ((head[3] as u64) << 8) | head[4] as u64))
}

/// The first buffer of `src` and how many of its bytes count (at most `len`).
#[inline(always)]
fn first_buffer(src: Source, len: u64) -> Option<(u64, u64)> {
    match src.kind {
        SRC_BUF => Some((src.ptr, len)),
        SRC_IOV if src.iovs > 0 => {
            let first = read_user::<[u64; 2]>(src.ptr).ok()?;
            Some((first[0], if first[1] < len { first[1] } else { len }))
        }
        _ => None,
    }
}

/// Keeps the application-data record lengths at the start of a ciphertext read (outside a
/// call: a program that runs OpenSSL over memory BIOs), for `bound_read`.
#[inline(always)]
fn note_cipher_read(key: &ConnKey, pid_tgid: u64, src: Source, len: u64) {
    let Some((ptr, avail)) = first_buffer(src, len) else {
        return;
    };
    let mut read = CipherRead {
        fd: key.fd,
        records: [0; CIPHER_READ_RECORDS],
    };
    let mut off: u64 = 0;
    let mut found = false;
    for i in 0..CIPHER_READ_RECORDS {
        if off + 5 > avail {
            break;
        }
        let Some((content_type, record)) = record_header(ptr + off) else {
            break;
        };
        if content_type == 23 {
            read.records[i] = record as u16;
            found = true;
        }
        off += 5 + record;
    }
    if found {
        let _ = CIPHER_READS.insert(&pid_tgid, &read, 0);
    }
}

/// The socket of an `SSL_read` that made no syscall and whose `SSL*` is not bound yet:
/// the thread's last ciphertext read, if one of its records encrypts exactly `len` bytes.
#[inline(always)]
fn bound_read(pid_tgid: u64, len: u64) -> Option<i32> {
    // SAFETY: the reference points into the map value, valid for this program run.
    let read = unsafe { CIPHER_READS.get(&pid_tgid) }.copied()?;
    let mut hit = false;
    for record in read.records {
        if record != 0 && encrypts(record as u64, len) {
            hit = true;
        }
    }
    if !hit {
        return None;
    }
    let _ = CIPHER_READS.remove(&pid_tgid);
    Some(read.fd)
}

/// The connection is TLS from now on: what its ciphertext looked like (a handshake, "not
/// ours") no longer decides, its plaintext does.
#[inline(always)]
fn mark_tls(info: *mut ConnInfo, conn: &mut ConnInfo) {
    if conn.flags & conn_flags::TLS != 0 {
        return;
    }
    conn.flags |= conn_flags::TLS;
    if conn.proto == proto::NONE {
        conn.proto = proto::UNKNOWN;
    }
    // SAFETY: `info` points into the CONNS value, valid for this program run.
    unsafe {
        (*info).flags = conn.flags;
        (*info).proto = conn.proto;
    }
}

#[inline(always)]
fn first_flag(is_request: bool) -> u8 {
    if is_request {
        conn_flags::FIRST_WAS_REQUEST
    } else {
        0
    }
}

/// A read/write failed (or read EOF): a connection error on a tracked connection is shipped
/// so that a waiting client request ends with an error.
#[inline(always)]
fn on_error(key: &ConnKey, pid_tgid: u64, ret: i64, nr: u64) -> Result<(), i64> {
    if ret != -ECONNRESET && ret != -EPIPE && ret != -ETIMEDOUT {
        return Ok(());
    }
    if nr == SYS_SENDFILE {
        return Ok(());
    }
    if let Some(p) = CONNS.get_ptr(key) {
        let conn = unsafe { *p };
        if is_tracked(conn.proto) && conn.flags & conn_flags::CLOSED == 0 {
            return emit(
                key,
                pid_tgid,
                event_kind::ERROR,
                direction::INGRESS,
                NO_PAYLOAD,
                0,
                &conn,
                (-ret) as u32,
                false,
            );
        }
    }
    Ok(())
}

#[inline(always)]
fn on_close(key: &ConnKey, pid_tgid: u64) -> Result<(), i64> {
    let Some(p) = CONNS.get_ptr_mut(key) else {
        // A child closing a socket it inherited and never used leaves a tombstone, so that
        // whatever it opens on that fd next is not taken for the parent's connection.
        if inherited(key.tgid, key.fd).is_some() {
            let tombstone = ConnInfo {
                proto: proto::NONE,
                flags: conn_flags::CLOSED,
                closed_ns: unsafe { bpf_ktime_get_ns() },
                ..ConnInfo::default()
            };
            let _ = CONNS.insert(key, &tombstone, 0);
        }
        return Ok(());
    };
    // SAFETY: `p` points into the map value, valid for this program run.
    let conn = unsafe { *p };
    if conn.flags & conn_flags::CLOSED != 0 {
        return Ok(());
    }
    // Kept as a tombstone with its close time when a child forked since the connection
    // opened may still read it (fork-per-connection servers), or when this process
    // inherited it (the parent's entry must not resurface for the fd's next use).
    // SAFETY: the reference points into the map value, valid for this program run.
    let forked_since = unsafe { LAST_FORK.get(&key.tgid) }.is_some_and(|at| *at > conn.conn_id);
    if forked_since || inherited(key.tgid, key.fd).is_some() {
        unsafe {
            (*p).flags = conn.flags | conn_flags::CLOSED;
            (*p).closed_ns = bpf_ktime_get_ns();
        }
    } else {
        let _ = CONNS.remove(key);
    }
    // A dup()ed copy closing is not the connection closing, nor is the key fd while copies
    // remain (they are not counted: an aliased connection ends when it goes idle).
    let aliased = conn.flags & conn_flags::ALIASED != 0;
    if is_tracked(conn.proto) && key.fd == conn.key_fd && !aliased {
        return emit(
            key,
            pid_tgid,
            event_kind::CLOSE,
            direction::EGRESS,
            NO_PAYLOAD,
            0,
            &conn,
            0,
            false,
        );
    }
    Ok(())
}

/// dup()/dup2()/dup3() made `new_fd` another fd of what `old.fd` is: the connection (if it is
/// one) stays one connection under both, so an inetd-style child that moves the socket to
/// stdin and stdout has its requests and responses paired.
#[inline(always)]
fn on_dup(old: &ConnKey, new_fd: i32, pid_tgid: u64) -> Result<(), i64> {
    if old.fd == new_fd {
        return Ok(());
    }
    let key = ConnKey {
        tgid: old.tgid,
        fd: new_fd,
    };
    // dup2/dup3 closed whatever `new_fd` was first.
    on_close(&key, pid_tgid)?;
    let src = match CONNS.get_ptr_mut(old) {
        // SAFETY: `p` points into the map value, valid for this program run.
        Some(p) => {
            let conn = unsafe { *p };
            if conn.flags & conn_flags::CLOSED != 0 {
                return Ok(()); // a tombstone: `old` is nothing we track
            }
            unsafe { (*p).flags = conn.flags | conn_flags::ALIASED };
            conn
        }
        None => match inherited(old.tgid, old.fd) {
            Some(c) => c,
            None => return Ok(()),
        },
    };
    let copy = ConnInfo {
        // A copy of the parent's tombstone is a live fd of the child.
        flags: (src.flags & !(conn_flags::LOST | conn_flags::CLOSED)) | conn_flags::ALIASED,
        lost_events: 0,
        closed_ns: 0,
        ..src
    };
    if CONNS.insert(&key, &copy, 0).is_err() {
        count_drop(drop_reason::CONN_TABLE_FULL);
    }
    Ok(())
}

/// The connection a forked child inherited on `fd`: its parent's entry for that fd, if the
/// parent accepted or connected it before the fork and had not closed it by then.
#[inline(always)]
fn inherited(tgid: u32, fd: i32) -> Option<ConnInfo> {
    // SAFETY: the reference points into the map value, valid for this program run.
    let fork = unsafe { FORKS.get(&tgid) }?;
    if fork.accepted_fd == fd {
        return Some(fork.accepted);
    }
    let p = CONNS.get_ptr(&ConnKey {
        tgid: fork.parent_tgid,
        fd,
    })?;
    let conn = unsafe { *p };
    let closed_before_fork = conn.flags & conn_flags::CLOSED != 0 && conn.closed_ns < fork.at_ns;
    if conn.flags & conn_flags::RESOLVE != 0
        || conn.proto == proto::NONE
        || conn.conn_id >= fork.at_ns
        || closed_before_fork
    {
        return None;
    }
    Some(conn)
}

/// connect() or accept() gave a TCP connection: remember it with its peer address, and for
/// a connected one its local IPv4 address and port, read from `sock` (its `struct sock`, 0
/// when unknown).
#[inline(always)]
fn on_new_conn(
    key: ConnKey,
    sockaddr: u64,
    conn_role: u8,
    listen_fd: i32,
    sock: u64,
) -> Result<(), i64> {
    let mut info = ConnInfo {
        conn_id: unsafe { bpf_ktime_get_ns() },
        role: conn_role,
        proto: proto::UNKNOWN,
        listen_fd,
        key_fd: key.fd,
        listen_tgid: key.tgid,
        ..ConnInfo::default()
    };
    if sockaddr != 0 {
        // struct sockaddr_in6 covers sockaddr_in: family, port, then the address.
        let raw: [u8; 28] = read_user(sockaddr)?;
        let family = u16::from_ne_bytes([raw[0], raw[1]]);
        let port = u16::from_be_bytes([raw[2], raw[3]]);
        match family {
            AF_INET => info.peer_addr[..4].copy_from_slice(&raw[4..8]),
            AF_INET6 => info.peer_addr.copy_from_slice(&raw[8..24]),
            // Unix and other families are not TCP: not tracked.
            _ => return Ok(()),
        }
        info.family = family;
        info.peer_port = port;
    } else if conn_role == role::CLIENT {
        return Ok(());
    }
    if sock != 0 {
        // `struct sock` starts with `struct sock_common`, whose first 16 bytes have been
        // laid out the same since Linux 3.x: daddr, rcv_saddr, hash, dport, num (the local
        // port, host order). connect() has chosen both by the time it returns. A connected
        // connection keeps them where an accepted one keeps its listener (see `ConnInfo`).
        // Read straight into the entry (the syscall program's stack has no room for
        // more): the port's two bytes land in the low half of `listen_fd` (little-endian).
        info.listen_fd = 0;
        // SAFETY: each helper writes at most the named size into a field of `info`.
        let ok = unsafe {
            bpf_probe_read_kernel(
                &mut info.listen_tgid as *mut u32 as *mut c_void,
                4,
                (sock + SKC_RCV_SADDR) as *const c_void,
            ) == 0
                && bpf_probe_read_kernel(
                    &mut info.listen_fd as *mut i32 as *mut c_void,
                    2,
                    (sock + SKC_NUM) as *const c_void,
                ) == 0
        };
        if !ok {
            info.listen_fd = -1;
        }
    }
    if CONNS.insert(&key, &info, 0).is_err() {
        count_drop(drop_reason::CONN_TABLE_FULL);
    }
    if conn_role == role::SERVER {
        let accepted = Accepted {
            fd: key.fd,
            _pad: 0,
            conn: info,
        };
        let _ = LAST_ACCEPT.insert(&key.tgid, &accepted, 0);
    }
    Ok(())
}

/// What the first payload bytes of a connection say: its protocol (UNKNOWN: none we
/// know) and whether they are a request (the side that sent them is the client).
#[derive(Clone, Copy)]
struct Class {
    proto: u8,
    is_request: bool,
    /// Not ours, but the bytes start like a TLS record (content type 20-23, version 3.x).
    tls_record: bool,
}

const NOT_OURS: Class = Class {
    proto: proto::UNKNOWN,
    is_request: false,
    tls_record: false,
};

/// Whether syscall bytes on `conn` may be TLS ciphertext: a TLS connection, one not
/// classified yet or judged not ours (a handshake looks like nothing of ours), or a
/// PostgreSQL one (it switches to TLS after an SSLRequest).
#[inline(always)]
fn may_be_tls(conn: &ConnInfo) -> bool {
    conn.flags & conn_flags::TLS != 0
        || conn.proto == proto::NONE
        || conn.proto == proto::UNKNOWN
        || conn.proto == proto::POSTGRES
}

#[inline(always)]
fn is_tracked(p: u8) -> bool {
    p == proto::HTTP1 || p == proto::REDIS || p == proto::POSTGRES
}

/// Looks at the first payload bytes: an HTTP/1 request or status line, a RESP command array,
/// or a PostgreSQL startup packet or frontend message. Eight bytes decide; a write of 4 to 7
/// bytes (a request line split over writes) is judged on its first four.
#[inline(always)]
fn classify(src: Source, len: u64) -> Class {
    let class = classify_payload(src, len);
    if class.proto != proto::UNKNOWN && PROTOCOLS.load() & (1u32 << class.proto) == 0 {
        return NOT_OURS;
    }
    class
}

#[inline(always)]
fn classify_payload(src: Source, len: u64) -> Class {
    if len < 4 {
        return NOT_OURS;
    }
    let (ptr, avail) = match src.kind {
        SRC_BUF => (src.ptr, len),
        SRC_KERNEL => {
            // This CPU's staged plaintext (the map is looked up here, so that no map-value
            // pointer travels in a Source).
            let Some(staging) = UNBOUND_STAGING.get_ptr(0) else {
                return NOT_OURS;
            };
            // SAFETY: only the address of this CPU's map value is taken.
            let bytes = unsafe { (*staging).bytes.as_ptr() } as u64;
            (bytes, if src.iovs < len { src.iovs } else { len })
        }
        SRC_IOV => {
            if src.iovs == 0 || src.ptr == 0 {
                return NOT_OURS;
            }
            let Ok(first) = read_user::<[u64; 2]>(src.ptr) else {
                return NOT_OURS;
            };
            (first[0], if first[1] < len { first[1] } else { len })
        }
        _ => return NOT_OURS,
    };
    if avail < 4 {
        return NOT_OURS;
    }
    let kernel = src.kind == SRC_KERNEL;
    if avail < 8 {
        let Ok(b) = read_bytes::<[u8; 4]>(ptr, kernel) else {
            return NOT_OURS;
        };
        return classify_short(&b);
    }
    let Ok(b) = read_bytes::<[u8; 8]>(ptr, kernel) else {
        return NOT_OURS;
    };
    let http = classify_http(&b);
    if http != 0 {
        return Class {
            proto: proto::HTTP1,
            is_request: http == CLASS_REQUEST,
            tls_record: false,
        };
    }
    if is_resp_command(&b) {
        return Class {
            proto: proto::REDIS,
            is_request: true,
            tls_record: false,
        };
    }
    if is_postgres_frontend(&b, len) {
        return Class {
            proto: proto::POSTGRES,
            is_request: true,
            tls_record: false,
        };
    }
    Class {
        tls_record: (20..=23).contains(&b[0]) && b[1] == 3,
        ..NOT_OURS
    }
}

pub(crate) const CLASS_REQUEST: u8 = 1;
pub(crate) const CLASS_RESPONSE: u8 = 2;

#[inline(always)]
fn classify_short(b: &[u8; 4]) -> Class {
    let class = match b {
        b"HTTP" => CLASS_RESPONSE,
        b"GET " | b"PUT " | b"POST" | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"CONN" | b"TRAC" => {
            CLASS_REQUEST
        }
        _ => 0,
    };
    if class == 0 {
        return NOT_OURS;
    }
    Class {
        proto: proto::HTTP1,
        is_request: class == CLASS_REQUEST,
        tls_record: false,
    }
}

#[inline(always)]
pub(crate) fn classify_http(b: &[u8; 8]) -> u8 {
    match b {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _] => CLASS_RESPONSE,
        [b'G', b'E', b'T', b' ', ..]
        | [b'P', b'U', b'T', b' ', ..]
        | [b'P', b'O', b'S', b'T', b' ', ..]
        | [b'H', b'E', b'A', b'D', b' ', ..]
        | [b'P', b'A', b'T', b'C', b'H', b' ', ..]
        | [b'T', b'R', b'A', b'C', b'E', b' ', ..]
        | [b'D', b'E', b'L', b'E', b'T', b'E', b' ', _]
        | [b'O', b'P', b'T', b'I', b'O', b'N', b'S', b' ']
        | [b'C', b'O', b'N', b'N', b'E', b'C', b'T', b' '] => CLASS_REQUEST,
        _ => 0,
    }
}

/// A RESP command: an array of bulk strings, `*<n>\r\n$` with n of one or two digits.
/// (Replies are never used to classify: the client always speaks first.)
#[inline(always)]
fn is_resp_command(b: &[u8; 8]) -> bool {
    if b[0] != b'*' || !b[1].is_ascii_digit() {
        return false;
    }
    (b[2] == b'\r' && b[3] == b'\n' && b[4] == b'$')
        || (b[2].is_ascii_digit() && b[3] == b'\r' && b[4] == b'\n' && b[5] == b'$')
}

/// PostgreSQL v3, frontend side. A new connection starts with a length-prefixed packet:
/// StartupMessage (protocol 3.0), SSLRequest or GSSENCRequest. A connection first seen
/// mid-stream is judged by message shape: Query, Parse or Bind with a sane big-endian length
/// that fits in this write.
#[inline(always)]
fn is_postgres_frontend(b: &[u8; 8], len: u64) -> bool {
    let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
    let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    if first >= 8 && first <= 10_000 && first <= len {
        // 196608 = protocol 3.0; 80877103 SSLRequest; 80877104 GSSENCRequest.
        if code == 196_608 || (first == 8 && (code == 80_877_103 || code == 80_877_104)) {
            return true;
        }
    }
    if !matches!(b[0], b'Q' | b'P' | b'B') {
        return false;
    }
    let msg_len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as u64;
    msg_len >= 5 && msg_len < (1 << 24) && msg_len < len
}

/// Copies the header and up to PAYLOAD_BYTES bytes of payload into the ring buffer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    key: &ConnKey,
    pid_tgid: u64,
    kind: u32,
    dir: u8,
    src: Source,
    len: u64,
    conn: &ConnInfo,
    errno: u32,
    with_comm: bool,
) -> Result<(), i64> {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: `s` is this CPU's scratch value. The sys_exit and fork programs run with
    // preemption off; a uprobe program may be preempted, which `busy` guards.
    let s = unsafe { &mut *s };
    if s.busy != 0 {
        count_drop(drop_reason::SCRATCH_BUSY);
        return Ok(());
    }
    s.busy = 1;
    s.hdr.kind = kind;
    s.hdr.total_len = len as u32;
    s.hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    s.hdr.tgid = key.tgid;
    s.hdr.tid = pid_tgid as u32;
    s.hdr.fd = key.fd;
    s.hdr.errno = errno;
    s.hdr.direction = dir;
    s.hdr.conn = *conn;
    // The command name matters only when userspace first meets a connection.
    s.hdr.comm = if with_comm {
        bpf_get_current_comm().unwrap_or_default()
    } else {
        [0; 16]
    };
    let cap = match PAYLOAD_BYTES.load() as u64 {
        c if c > MAX_PAYLOAD as u64 => MAX_PAYLOAD as u64,
        c => c,
    };
    let want = if len > cap {
        cap as usize
    } else {
        len as usize
    };
    let data = s.data.as_mut_ptr();
    let mut copied: usize = 0;
    // Every size and offset handed to a helper below is masked right before use, behind
    // black_box: LLVM drops a mask it can prove redundant from the branches around it, and
    // the 5.10 and 6.1 verifiers do not follow those branches (6.1 saw the iovec offset as
    // unbounded and refused "invalid access to map value").
    let mut tail: usize = 0;
    if src.kind == SRC_KERNEL {
        // This CPU's staged plaintext (a memory-BIO SSL_write): as many bytes as were
        // kept, no tail.
        let want = if (want as u64) > src.iovs {
            src.iovs as usize
        } else {
            want
        };
        let n = core::hint::black_box(want) & OFF_MASK;
        let read = match UNBOUND_STAGING.get_ptr(0) {
            // SAFETY: this CPU's map value; the helper writes n < MAX_PAYLOAD bytes into
            // `data`.
            Some(staging) => unsafe {
                bpf_probe_read_kernel(
                    data as *mut c_void,
                    n as u32,
                    (*staging).bytes.as_ptr() as *const c_void,
                )
            },
            None => -1,
        };
        if read == 0 {
            copied = n;
        } else {
            count_drop(drop_reason::READ_FAILED);
        }
    } else if src.kind == SRC_BUF {
        let n = core::hint::black_box(want) & LEN_MASK;
        if unsafe { bpf_probe_read_user(data as *mut c_void, n as u32, src.ptr as *const c_void) }
            == 0
        {
            copied = n;
            // An HTTP read or write longer than the head copied: its last bytes as well, as
            // many as the head (at most MAX_PAYLOAD - 1, so that offset + length stay
            // inside `data`).
            if conn.proto == proto::HTTP1 && len > n as u64 {
                let rest = len - n as u64;
                let rest = if rest > cap { cap } else { rest };
                let t = if rest > OFF_MASK as u64 {
                    OFF_MASK
                } else {
                    rest as usize
                };
                let t = core::hint::black_box(t) & OFF_MASK;
                let off = core::hint::black_box(copied) & LEN_MASK;
                let from = src.ptr + len - t as u64;
                let dst = unsafe { data.add(off) } as *mut c_void;
                if t > 0
                    && unsafe { bpf_probe_read_user(dst, t as u32, from as *const c_void) } == 0
                {
                    copied += t;
                    tail = t;
                }
            }
        } else {
            count_drop(drop_reason::READ_FAILED);
        }
    } else if src.kind == SRC_IOV {
        // The whole iovec array (up to MAX_IOVECS entries) in one read, not one per entry.
        let entries = if src.iovs > MAX_IOVECS as u64 {
            MAX_IOVECS
        } else {
            src.iovs as usize
        };
        let iov_bytes = core::hint::black_box(entries * 16) & (MAX_IOVECS * 16 * 2 - 1);
        let vecs = s.iov.as_mut_ptr();
        if iov_bytes == 0
            || unsafe {
                bpf_probe_read_user(
                    vecs as *mut c_void,
                    iov_bytes as u32,
                    src.ptr as *const c_void,
                )
            } != 0
        {
            if iov_bytes != 0 {
                count_drop(drop_reason::READ_FAILED);
            }
        } else {
            for i in 0..MAX_IOVECS {
                if i >= entries || copied >= want {
                    break;
                }
                let (base, vlen) = (s.iov[i][0], s.iov[i][1]);
                let room = want - copied;
                let chunk = if vlen < room as u64 {
                    vlen as usize
                } else {
                    room
                };
                let off = core::hint::black_box(copied) & OFF_MASK;
                let n = core::hint::black_box(chunk) & LEN_MASK;
                let dst = unsafe { data.add(off) } as *mut c_void;
                if unsafe { bpf_probe_read_user(dst, n as u32, base as *const c_void) } != 0 {
                    count_drop(drop_reason::READ_FAILED);
                    break;
                }
                copied += n;
            }
        }
    }
    let copied = core::hint::black_box(copied) & LEN_MASK;
    s.hdr.captured_len = copied as u32;
    s.hdr.tail_len = tail as u16;
    let total = EVENT_HEADER_LEN + copied;
    // SAFETY: `hdr` and `data` are adjacent in the repr(C) Scratch (the header is 8-aligned in
    // size), and header + masked length < size of hdr + data.
    let bytes =
        unsafe { core::slice::from_raw_parts(&s.hdr as *const EventHeader as *const u8, total) };
    // Waking the reader per event costs more than the event (a self-IPI, a VM exit under a
    // hypervisor): userspace drains on a short timer and is woken only each time this CPU
    // has shipped another WAKEUP_BYTES. A per-CPU count avoids reading the ring's shared
    // producer and consumer positions on every event.
    let before = s.shipped_bytes;
    s.shipped_bytes = before.wrapping_add(total as u64);
    // A connection on probation is shipped only until userspace confirms it: wake it now.
    let confirm_soon = with_comm && conn.flags & conn_flags::PROBATION != 0;
    let flags = if confirm_soon || before / WAKEUP_BYTES != s.shipped_bytes / WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(bytes, flags).is_err() {
        count_drop(drop_reason::RINGBUF_FULL);
        note_ring_loss();
    }
    s.busy = 0;
    Ok(())
}

/// The event staged in this CPU's scratch did not fit the ring: its connection's next
/// shipped event says so (`conn_flags::LOST`), so that userspace restarts its parsers there
/// instead of pairing a request with the response of another. It finds the connection from
/// the staged header, so that `emit`'s callers keep nothing more alive across the output.
#[inline(always)]
fn note_ring_loss() {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch, still held by the caller (`busy`).
    let key = unsafe {
        ConnKey {
            tgid: (*s).hdr.tgid,
            fd: (*s).hdr.fd,
        }
    };
    if unsafe { (*s).hdr.kind } != event_kind::DATA {
        return;
    }
    if let Some(info) = CONNS.get_ptr_mut(&key) {
        // SAFETY: a pointer into the map value, valid for this program run; a concurrent
        // update of the same connection on another CPU writes the same bits.
        unsafe {
            (*info).flags |= conn_flags::LOST;
            (*info).lost_events |= RING_LOST;
        }
    }
}

/// Reads the iovec array pointer and count out of a user `struct msghdr`.
#[inline(always)]
pub(crate) fn msghdr_iov(msg: u64) -> Result<(u64, u64), i64> {
    // struct msghdr { void *name; int namelen; struct iovec *iov /* +16 */; size_t iovlen; ...}
    let v: [u64; 2] = read_user(msg + 16)?;
    Ok((v[0], v[1]))
}

#[inline(always)]
pub(crate) fn count_drop(reason: u32) {
    if let Some(c) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub(crate) fn read_user<T: Copy>(addr: u64) -> Result<T, i64> {
    read_bytes(addr, false)
}

/// A `T` read from user memory, or from kernel memory (staged plaintext).
#[inline(always)]
fn read_bytes<T: Copy>(addr: u64, kernel: bool) -> Result<T, i64> {
    // Zeroed, not uninitialised: the 5.10 verifier refuses any load of a stack slot that
    // some path left unwritten, and a failed read leaves it so.
    // SAFETY: only used with integer and byte-array types, for which all zeroes is valid.
    let mut v: T = unsafe { core::mem::zeroed() };
    let (dst, size, src) = (
        &mut v as *mut T as *mut c_void,
        core::mem::size_of::<T>() as u32,
        addr as *const c_void,
    );
    // SAFETY: the helpers write at most size_of::<T>() bytes into `v`.
    let r = unsafe {
        if kernel {
            bpf_probe_read_kernel(dst, size, src)
        } else {
            bpf_probe_read_user(dst, size, src)
        }
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(r)
    }
}
