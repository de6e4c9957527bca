//! Trace propagation across hosts (`inject_traceparent`, off by default): the kernel
//! follows which plain HTTP/1 request each thread serves, and adds a `traceparent` header to
//! the plain HTTP/1 requests the thread sends, so that a service on another host (with its own
//! sonde, or an OpenTelemetry SDK) continues the trace. Userspace learns every id the kernel
//! chose from two small events and gives them to its spans (`traces::links`).
//!
//! - `sonde_trace_exit` (`sys_exit`, attached before the capture program, so its events come
//!   first): a read that starts an HTTP/1 request on a server connection gives the thread a
//!   trace, the request's own `traceparent`'s or a new one (shipped as `TRACE_STARTED`). The
//!   first write of the response ends it; a second request read before the answer (an event
//!   loop under concurrency) makes the thread ambiguous until it has answered them all.
//! - `sonde_client_socks` (`sock_ops` on the cgroup v2 root) puts each TCP socket that
//!   connects into `CLIENT_SOCKS`.
//! - `sonde_inject` (`sk_msg` on `CLIENT_SOCKS`) inserts the header after the request line
//!   (no `bpf_probe_write_user`: `bpf_msg_push_data` grows the message in the kernel) and
//!   ships the ids as `TRACE_INJECTED`.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{pt_regs, sk_action, BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{
            bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_msg_pull_data, bpf_probe_read_user,
        },
    },
    macros::{btf_tracepoint, map, sk_msg, sock_ops},
    maps::{LruHashMap, PerCpuArray, SockHash},
    programs::{BtfTracePointContext, SkMsgContext, SockOpsContext},
};
use sonde_ebpf::{
    conn_flags, drop_reason, event_kind,
    head::{self, HEAD_BUF, HEAD_BYTES},
    injection, proto, role, trace_flags, ConnKey, EventHeader, TraceIds, MAX_INJECT_SOCKETS,
    MAX_TRACED_THREADS,
};

use crate::kernel::{
    classify_http, count_drop, msghdr_iov, read_user, CLASS_REQUEST, CONNS, EVENTS, HOOK_ONLY,
    SONDE_TGID, SYS_CLOSE, SYS_READ, SYS_READV, SYS_RECVFROM, SYS_RECVMSG, SYS_SENDMSG, SYS_SENDTO,
    SYS_WRITE, SYS_WRITEV,
};

/// The server request a thread is serving, as far as the kernel can tell.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadTrace {
    trace_hi: u64,
    trace_lo: u64,
    /// When the last request was read.
    last_read_ns: u64,
    /// Until then the thread adds nothing: it read a request the kernel cannot see into
    /// (TLS), so which trace its calls belong to is not known here.
    opaque_until_ns: u64,
    /// The connection of the request.
    fd: i32,
    /// Requests read and not answered yet.
    in_flight: u16,
    /// Several were in flight at once since the thread last had none.
    mixed: u8,
    _pad: u8,
}

#[map]
static THREADS: LruHashMap<u64, ThreadTrace> = LruHashMap::with_max_entries(MAX_TRACED_THREADS, 0);

#[map]
static CLIENT_SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_INJECT_SOCKETS, 0);

#[map]
static INJECTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(injection::COUNT, 0);

/// A CPU's working area.
#[repr(C)]
pub struct Scan {
    /// Set while a program uses it: an `sk_msg` program can be preempted (it runs in the
    /// sending task), and what runs next on the CPU must not overwrite its `pos`.
    busy: u64,
    /// A position found by a search loop, passed through memory so that the verifier sees
    /// one unknown value after the loop, not one constant per iteration: without this it
    /// explores the code after the loop once per position (a million instructions).
    pos: u64,
    /// How many bytes `bytes` holds, read afresh by each search for the same reason: a loop
    /// that stops at `i < len` teaches the verifier a different bound on `len` on each path
    /// out, and the next search would be walked once per bound.
    len: u64,
    /// The first bytes of a request read or sent (see `head`).
    bytes: [u8; HEAD_BUF],
}

#[map]
static SCAN: PerCpuArray<Scan> = PerCpuArray::with_max_entries(1, 0);

/// Holds this CPU's `Scan` for the life of the value; None when a preempted program holds
/// it (counted as `scratch_busy`).
struct ScanGuard(*mut Scan);

impl ScanGuard {
    #[inline(always)]
    fn take() -> Option<ScanGuard> {
        let s = SCAN.get_ptr_mut(0)?;
        // SAFETY: this CPU's value; `busy` keeps a preempting program out.
        unsafe {
            if (*s).busy != 0 {
                count_drop(drop_reason::SCRATCH_BUSY);
                return None;
            }
            (*s).busy = 1;
        }
        Some(ScanGuard(s))
    }

    /// Sets how many bytes the buffer holds (at most HEAD_BYTES) and zeroes the eight after.
    #[inline(always)]
    fn set_len(&self, n: usize) {
        head::terminate(self.bytes(), n);
        // SAFETY: as in `launder`.
        unsafe { core::ptr::write_volatile(&mut (*self.0).len, n as u64) };
    }

    /// How many bytes the buffer holds, as an unknown to the verifier (see `Scan::len`).
    #[inline(always)]
    fn len(&self) -> usize {
        // SAFETY: as in `launder`.
        (unsafe { core::ptr::read_volatile(&(*self.0).len) } as usize) & (2 * HEAD_BYTES - 1)
    }

    /// The head buffer.
    #[inline(always)]
    fn bytes(&self) -> &mut [u8; HEAD_BUF] {
        // SAFETY: our CPU's value, held through `busy`.
        unsafe { &mut (*self.0).bytes }
    }

    /// `pos` as an unknown to the verifier (see `Scan::pos`).
    #[inline(always)]
    fn launder(&self, pos: usize) -> usize {
        // SAFETY: our CPU's value, held through `busy`; volatile so that the compiler keeps
        // the store and the load.
        unsafe {
            core::ptr::write_volatile(&mut (*self.0).pos, pos as u64);
            core::ptr::read_volatile(&(*self.0).pos) as usize
        }
    }
}

impl Drop for ScanGuard {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: as in `take`.
        unsafe { (*self.0).busy = 0 };
    }
}

/// A thread in flight this long without reading another request starts over: its answer was
/// not seen (a response the kernel did not recognise, a request dropped without a close).
const STALE_NS: u64 = 5_000_000_000;
/// How long a thread that read a TLS request adds nothing.
const OPAQUE_NS: u64 = 1_000_000_000;

/// `traceparent: 00-<32 hex>-<16 hex>-01\r\n`
const HEADER_LEN: usize = 70;

#[btf_tracepoint(function = "sys_exit")]
pub fn sonde_trace_exit(ctx: BtfTracePointContext) -> i32 {
    if HOOK_ONLY.load() != 0 {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let _ = follow(regs, ret);
    0
}

#[inline(always)]
fn follow(regs: *const pt_regs, ret: i64) -> Result<(), i64> {
    // SAFETY (all reg reads): `regs` is the tp_btf argument, a BTF-typed pointer the
    // verifier checks plain loads from.
    let nr = unsafe { (*regs).orig_rax };
    let ingress = match nr {
        SYS_READ | SYS_RECVFROM | SYS_READV | SYS_RECVMSG => true,
        SYS_WRITE | SYS_SENDTO | SYS_WRITEV | SYS_SENDMSG | SYS_CLOSE => false,
        _ => return Ok(()),
    };
    if ret <= 0 && nr != SYS_CLOSE {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == SONDE_TGID.load() {
        return Ok(());
    }
    let fd = unsafe { (*regs).rdi } as i32;
    // SAFETY: the reference points into the map value, valid for this program run.
    let Some(conn) = (unsafe { CONNS.get(&ConnKey { tgid, fd }) }) else {
        return Ok(());
    };
    if conn.role != role::SERVER || conn.flags & conn_flags::CLOSED != 0 {
        return Ok(());
    }
    if nr == SYS_CLOSE {
        // A request closed unanswered is no longer served.
        if let Some(t) = THREADS.get_ptr_mut(&pid_tgid) {
            // SAFETY: a pointer into this thread's own entry, valid for this program run.
            let t = unsafe { &mut *t };
            if t.fd == fd && t.mixed == 0 {
                t.in_flight = 0;
            }
        }
        return Ok(());
    }
    if conn.flags & (conn_flags::TLS | conn_flags::TLS_RECORDS) != 0 {
        if ingress {
            opaque(pid_tgid);
        }
        return Ok(());
    }
    if conn.proto != proto::HTTP1 && conn.proto != proto::UNKNOWN {
        return Ok(());
    }
    let arg1 = unsafe { (*regs).rsi };
    let (ptr, first_len) = match nr {
        SYS_READ | SYS_RECVFROM | SYS_WRITE | SYS_SENDTO => (arg1, ret as u64),
        SYS_READV | SYS_WRITEV => read_user::<(u64, u64)>(arg1)?,
        _ => {
            let (iovs, _) = msghdr_iov(arg1)?;
            read_user::<(u64, u64)>(iovs)?
        }
    };
    let len = if first_len < ret as u64 {
        first_len
    } else {
        ret as u64
    };
    if len < 12 {
        return Ok(());
    }
    let head: [u8; 12] = read_user(ptr)?;
    let first: [u8; 8] = [
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ];
    if ingress {
        if classify_http(&first) == CLASS_REQUEST {
            request_read(pid_tgid, fd, ptr, len);
        }
    } else if &first[..7] == b"HTTP/1." && head[9] != b'1' {
        answered(pid_tgid);
    }
    Ok(())
}

/// The thread read the start of a request on server connection `fd`.
#[inline(always)]
fn request_read(pid_tgid: u64, fd: i32, ptr: u64, len: u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut opaque_until_ns = 0;
    if let Some(t) = THREADS.get_ptr_mut(&pid_tgid) {
        // SAFETY: a pointer into this thread's own entry, valid for this program run.
        let t = unsafe { &mut *t };
        opaque_until_ns = t.opaque_until_ns;
        if t.in_flight > 0 && now.wrapping_sub(t.last_read_ns) < STALE_NS {
            // Another request before the answer: whose trace a call belongs to is not known
            // until every one is answered.
            t.in_flight = t.in_flight.saturating_add(1);
            t.mixed = 1;
            t.last_read_ns = now;
            return;
        }
    }
    let (trace_hi, trace_lo, inherited) = match request_trace(ptr, len) {
        Some((hi, lo)) => (hi, lo, true),
        None => (random_u64(), random_u64(), false),
    };
    let t = ThreadTrace {
        trace_hi,
        trace_lo,
        last_read_ns: now,
        opaque_until_ns,
        fd,
        in_flight: 1,
        mixed: 0,
        _pad: 0,
    };
    let _ = THREADS.insert(&pid_tgid, &t, 0);
    if !inherited {
        ship(
            event_kind::TRACE_STARTED,
            pid_tgid,
            fd,
            TraceIds {
                trace_hi,
                trace_lo,
                span_id: 0,
                flags: 0,
            },
        );
    }
}

/// The thread wrote the start of a response (not a 1xx).
#[inline(always)]
fn answered(pid_tgid: u64) {
    if let Some(t) = THREADS.get_ptr_mut(&pid_tgid) {
        // SAFETY: a pointer into this thread's own entry, valid for this program run.
        let t = unsafe { &mut *t };
        if t.in_flight > 0 {
            t.in_flight -= 1;
        }
        if t.in_flight == 0 {
            t.mixed = 0;
        }
    }
}

/// The thread read from a TLS server connection.
#[inline(always)]
fn opaque(pid_tgid: u64) {
    let until = unsafe { bpf_ktime_get_ns() } + OPAQUE_NS;
    match THREADS.get_ptr_mut(&pid_tgid) {
        // SAFETY: a pointer into this thread's own entry, valid for this program run.
        Some(t) => unsafe { (*t).opaque_until_ns = until },
        None => {
            let t = ThreadTrace {
                trace_hi: 0,
                trace_lo: 0,
                last_read_ns: 0,
                opaque_until_ns: until,
                fd: -1,
                in_flight: 0,
                mixed: 0,
                _pad: 0,
            };
            let _ = THREADS.insert(&pid_tgid, &t, 0);
        }
    }
}

/// The trace id of the request's own `traceparent`, looked for in its first bytes.
#[inline(always)]
fn request_trace(ptr: u64, len: u64) -> Option<(u64, u64)> {
    let scan = ScanGuard::take()?;
    let n = if len > HEAD_BYTES as u64 {
        HEAD_BYTES
    } else {
        len as usize
    };
    // Masked behind black_box, as in kernel.rs, for the older verifiers.
    let size = core::hint::black_box(n) & (2 * HEAD_BYTES - 1);
    let buf = scan.bytes();
    // SAFETY: at most HEAD_BYTES into a buffer larger than twice that.
    let read = unsafe {
        bpf_probe_read_user(
            buf.as_mut_ptr() as *mut c_void,
            size as u32,
            ptr as *const c_void,
        )
    };
    if read != 0 {
        return None;
    }
    scan.set_len(size);
    let pos = scan.launder(head::find_traceparent(buf, scan.len())?);
    head::trace_id_at(buf, pos, scan.len())
}

#[inline(always)]
fn random_u64() -> u64 {
    // SAFETY: plain helper calls.
    let (a, b) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    (a as u64) << 32 | b as u64 | 1
}

/// One `TRACE_*` event: the common header (no connection) and the ids.
#[repr(C)]
struct TraceEvent {
    header: EventHeader,
    ids: TraceIds,
}

/// Ships a `TRACE_*` event, written in place in the ring (not built on the stack first).
#[inline(always)]
fn ship(kind: u32, pid_tgid: u64, fd: i32, ids: TraceIds) {
    let Some(mut entry) = EVENTS.reserve::<TraceEvent>(0) else {
        count_drop(drop_reason::RINGBUF_FULL);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved entry, size_of::<TraceEvent>() bytes, ours until submit;
    // every byte is written (the header zeroed first; its size is a multiple of 8).
    unsafe {
        // Word by word and volatile: a `write_bytes` becomes a call to a byte-loop memset,
        // which the 5.10 verifier walks on every path here.
        let words = e as *mut u64;
        let mut k = 0;
        while k < core::mem::size_of::<EventHeader>() / 8 {
            core::ptr::write_volatile(words.add(k), 0);
            k += 1;
        }
        (*e).header.kind = kind;
        (*e).header.ts_ns = bpf_ktime_get_ns();
        (*e).header.tgid = (pid_tgid >> 32) as u32;
        (*e).header.tid = pid_tgid as u32;
        (*e).header.fd = fd;
        (*e).header.captured_len = core::mem::size_of::<TraceIds>() as u32;
        (*e).ids = ids;
    }
    // The write or read event that follows wakes userspace.
    entry.submit(BPF_RB_NO_WAKEUP);
}

const BPF_RB_NO_WAKEUP: u64 = 1;

/// Each TCP socket that connects joins `CLIENT_SOCKS`, so that `sonde_inject` sees what it
/// sends.
#[sock_ops]
pub fn sonde_client_socks(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // SAFETY: the context pointer the kernel passed to this program.
        let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
        let _ = CLIENT_SOCKS.update(&mut cookie, unsafe { &mut *ctx.ops }, BPF_ANY as u64);
    }
    1
}

#[sk_msg]
pub fn sonde_inject(ctx: SkMsgContext) -> u32 {
    if HOOK_ONLY.load() != 0 {
        return sk_action::SK_PASS;
    }
    if let Some(outcome) = inject(&ctx) {
        if let Some(c) = INJECTIONS.get_ptr_mut(outcome) {
            // SAFETY: per-CPU value; sk_msg programs run with migration disabled.
            unsafe { *c += 1 };
        }
    }
    sk_action::SK_PASS
}

/// Adds a `traceparent` to a message that starts an HTTP/1 request. None when the message is
/// not one (nothing counted), else the outcome.
#[inline(always)]
fn inject(ctx: &SkMsgContext) -> Option<u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == SONDE_TGID.load() {
        return None;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 16 > end {
        return None;
    }
    // SAFETY: the 16 bytes at `data` are inside the message (checked just above).
    let first: [u8; 8] = unsafe { *(data as *const [u8; 8]) };
    if classify_http(&first) != CLASS_REQUEST {
        return None;
    }
    let scan = ScanGuard::take()?;
    let buf = scan.bytes();
    // Laundered: a length known exactly on each path out of the copy loop would have the
    // verifier walk everything below once per length.
    let n = scan.launder(copy_head(ctx, buf));
    if n > HEAD_BYTES {
        return Some(injection::FAILED);
    }
    scan.set_len(n);
    if head::find_traceparent(buf, scan.len()).is_some() {
        return Some(injection::HAS_OWN);
    }
    let Some(line_end) = head::first_newline(buf, scan.len()) else {
        return Some(injection::FAILED);
    };
    let line_end = scan.launder(line_end);
    if line_end >= HEAD_BYTES {
        return Some(injection::FAILED);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the reference points into the map value, valid for this program run.
    let (trace_hi, trace_lo, flags) = match unsafe { THREADS.get(&pid_tgid) } {
        Some(t) if t.opaque_until_ns > now => return Some(injection::AMBIGUOUS),
        Some(t) if t.in_flight > 0 && now.wrapping_sub(t.last_read_ns) < STALE_NS => {
            if t.in_flight > 1 || t.mixed != 0 {
                return Some(injection::AMBIGUOUS);
            }
            (t.trace_hi, t.trace_lo, trace_flags::CHILD)
        }
        _ => (random_u64(), random_u64(), 0),
    };
    let span_id = random_u64();
    let start = (line_end + 1) as u32;
    if ctx.push_data(start, HEADER_LEN as u32, 0).is_err() {
        return Some(injection::FAILED);
    }
    // Linear from the start: writing into a pulled range of the whole message measured
    // cheaper than pulling only the new bytes (docs/traces.md).
    let size = ctx.size();
    let pull_end = if size > 65536 {
        start + HEADER_LEN as u32
    } else {
        size
    };
    // SAFETY: plain helper call on this program's context.
    let pulled = unsafe { bpf_msg_pull_data(ctx.msg, 0, pull_end, 0) } == 0;
    let (data, end) = (ctx.data(), ctx.data_end());
    // Masked behind black_box: the 5.10 verifier only lets a packet pointer with a small
    // known bound on its variable offset be checked against the end.
    let p = data + (core::hint::black_box(start as usize) & (HEAD_BYTES * 2 - 1));
    if !pulled || p + HEADER_LEN > end {
        // Never leave the pushed bytes unwritten in the stream.
        let _ = ctx.pop_data(start, HEADER_LEN as u32, 0);
        return Some(injection::FAILED);
    }
    // SAFETY: [p, p + HEADER_LEN) is inside the message, checked just above. Written in
    // place: a copy built on the stack would not fit beside the event.
    unsafe {
        *(p as *mut [u8; 16]) = *b"traceparent: 00-";
        write_hex(p + 16, trace_hi);
        write_hex(p + 32, trace_lo);
        *((p + 48) as *mut u8) = b'-';
        write_hex(p + 49, span_id);
        *((p + 65) as *mut [u8; 5]) = *b"-01\r\n";
    }
    ship(
        event_kind::TRACE_INJECTED,
        pid_tgid,
        -1,
        TraceIds {
            trace_hi,
            trace_lo,
            span_id,
            flags,
        },
    );
    Some(injection::INJECTED)
}

/// Copies the message's first linear bytes (at most HEAD_BYTES) into `buf`, eight at a
/// time and then one at a time; returns how many.
///
/// The packet bounds are read afresh at each step: a pointer carried along the loop would
/// hold a different checked range on each path out of it, and the verifier would walk
/// everything after the loop once per length.
#[inline(always)]
fn copy_head(ctx: &SkMsgContext, buf: &mut [u8; HEAD_BUF]) -> usize {
    let mut n = 0;
    while n + 8 <= HEAD_BYTES {
        let (data, end) = packet(ctx);
        if data + n + 8 > end {
            break;
        }
        // SAFETY: eight bytes inside [data, data_end), checked just above.
        let w = unsafe { ((data + n) as *const u64).read_unaligned() };
        let k = n & (HEAD_BYTES - 1);
        buf[k..k + 8].copy_from_slice(&w.to_le_bytes());
        n += 8;
    }
    let mut tail = 0;
    while tail < 7 && n < HEAD_BYTES {
        let (data, end) = packet(ctx);
        if data + n + 1 > end {
            break;
        }
        // SAFETY: one byte inside [data, data_end), checked just above.
        buf[n & (HEAD_BYTES - 1)] = unsafe { *((data + n) as *const u8) };
        n += 1;
        tail += 1;
    }
    n
}

/// The message's linear bytes, `[data, data_end)`, read from the context each time (volatile:
/// the compiler must not carry them across loop steps).
#[inline(always)]
fn packet(ctx: &SkMsgContext) -> (usize, usize) {
    // SAFETY: reads of the context the kernel passed to this program.
    unsafe {
        let msg = ctx.msg;
        (
            core::ptr::read_volatile(&(*msg).__bindgen_anon_1.data) as usize,
            core::ptr::read_volatile(&(*msg).__bindgen_anon_2.data_end) as usize,
        )
    }
}

/// Writes `v` as 16 lowercase hex digits at `p`.
///
/// # Safety
/// `[p, p + 16)` must be writable.
#[inline(always)]
unsafe fn write_hex(p: usize, v: u64) {
    let mut k = 0;
    while k < 16 {
        let d = (v >> (60 - 4 * k)) as u8 & 15;
        let c = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        *((p + k) as *mut u8) = c;
        k += 1;
    }
}
