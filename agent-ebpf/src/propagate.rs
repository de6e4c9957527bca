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
//! - `sonde_client_socks` (`sock_ops` on the cgroup v2 root, in an object of its own:
//!   socks.rs) puts each TCP socket that connects into `CLIENT_SOCKS`.
//! - `sonde_inject` (`sk_msg` on `CLIENT_SOCKS`) inserts the header after the request line
//!   (no `bpf_probe_write_user`: `bpf_msg_push_data` grows the message in the kernel) and
//!   ships the ids as `TRACE_INJECTED`.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{pt_regs, sk_action},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_prandom_u32, bpf_msg_pull_data, bpf_probe_read_user},
    },
    macros::{btf_tracepoint, map, sk_msg},
    maps::{ring_buf::RingBufEntry, LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, SkMsgContext},
};
use sonde_ebpf::{
    conn_flags, drop_reason, event_kind,
    head::{self, HEAD_BUF, HEAD_BYTES},
    injection, proto, role, trace_flags, ConnKey, EventHeader, TraceIds, MAX_TRACED_THREADS,
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
    /// Several were in flight at once since the thread last had none, or the one in flight
    /// has a trace the kernel could not tell: whose trace a call belongs to is not known.
    mixed: u8,
    /// The trace's sampled flag (the request's own `traceparent`'s, else set).
    sampled: u8,
}

#[map]
static THREADS: LruHashMap<u64, ThreadTrace> = LruHashMap::with_max_entries(MAX_TRACED_THREADS, 0);

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
    } else if &first[..7] == b"HTTP/1." && (head[9] != b'1' || &head[9..12] == b"101") {
        // A final answer: not a 1xx, except 101 (the connection switches protocol).
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
    let seen = request_trace(ptr, len);
    if seen.kind == NOT_A_REQUEST {
        return;
    }
    let (trace_hi, trace_lo, sampled) = match seen.kind {
        INHERITED => (seen.trace_hi, seen.trace_lo, seen.sampled),
        _ => (random_u64(), random_u64(), 1),
    };
    let t = ThreadTrace {
        trace_hi,
        trace_lo,
        last_read_ns: now,
        opaque_until_ns,
        fd,
        in_flight: 1,
        mixed: u8::from(seen.kind == UNKNOWN),
        sampled,
    };
    let _ = THREADS.insert(&pid_tgid, &t, 0);
    if seen.kind == NEW {
        ship(
            event_kind::TRACE_STARTED,
            pid_tgid,
            fd,
            TraceIds {
                trace_hi,
                trace_lo,
                ..TraceIds::default()
            },
        );
    }
}

/// The thread wrote the start of a final response.
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
                sampled: 1,
            };
            let _ = THREADS.insert(&pid_tgid, &t, 0);
        }
    }
}

/// What the kernel makes of a read that starts like an HTTP/1 request.
struct Seen {
    kind: u8,
    trace_hi: u64,
    trace_lo: u64,
    sampled: u8,
}

/// Not a request line after all (a Redis inline command, say).
const NOT_A_REQUEST: u8 = 0;
/// A head with no valid `traceparent`: the request starts a trace.
const NEW: u8 = 1;
/// The request's own `traceparent`.
const INHERITED: u8 = 2;
/// The head does not end in the bytes looked at (or they could not be read): its trace is
/// not known here, so its thread adds nothing while it serves it.
const UNKNOWN: u8 = 3;

/// Looks at the first bytes of a read that starts like an HTTP/1 request: whether it is
/// one, and the trace of its own `traceparent`.
#[inline(always)]
fn request_trace(ptr: u64, len: u64) -> Seen {
    let mut seen = Seen {
        kind: UNKNOWN,
        trace_hi: 0,
        trace_lo: 0,
        sampled: 1,
    };
    let Some(scan) = ScanGuard::take() else {
        return seen;
    };
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
        return seen;
    }
    scan.set_len(size);
    match head::first_newline(buf, scan.len()) {
        Some(end) if head::is_request_line(buf, scan.launder(end)) => {}
        Some(_) => {
            seen.kind = NOT_A_REQUEST;
            return seen;
        }
        // The request line goes on past what was read.
        None => return seen,
    }
    let pos = scan.launder(head::scan(buf, scan.len()));
    if pos == head::UNFINISHED {
        return seen;
    }
    seen.kind = NEW;
    if pos != head::PLAIN {
        if let Some((hi, lo, sampled)) = head::trace_id_at(buf, pos, scan.len()) {
            seen = Seen {
                kind: INHERITED,
                trace_hi: hi,
                trace_lo: lo,
                sampled: u8::from(sampled),
            };
        }
    }
    seen
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

/// Ships a `TRACE_*` event.
#[inline(always)]
fn ship(kind: u32, pid_tgid: u64, fd: i32, ids: TraceIds) {
    let Some(mut entry) = EVENTS.reserve::<TraceEvent>(0) else {
        count_drop(drop_reason::RINGBUF_FULL);
        return;
    };
    fill(&mut entry, kind, pid_tgid, fd, ids);
    // The write or read event that follows wakes userspace.
    entry.submit(BPF_RB_NO_WAKEUP);
}

/// Writes a `TRACE_*` event in place in its reserved ring entry (not built on the stack
/// first: there is no room beside the rest).
#[inline(always)]
fn fill(entry: &mut RingBufEntry<TraceEvent>, kind: u32, pid_tgid: u64, fd: i32, ids: TraceIds) {
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
}

const BPF_RB_NO_WAKEUP: u64 = 1;

#[sk_msg]
pub fn sonde_inject(ctx: SkMsgContext) -> u32 {
    if HOOK_ONLY.load() != 0 {
        return sk_action::SK_PASS;
    }
    let outcome = inject(&ctx);
    let counted = match outcome {
        Some(MUST_DROP) => Some(injection::FAILED),
        other => other,
    };
    if let Some(c) = counted.and_then(|o| INJECTIONS.get_ptr_mut(o)) {
        // SAFETY: per-CPU value; sk_msg programs run with migration disabled.
        unsafe { *c += 1 };
    }
    if outcome == Some(MUST_DROP) {
        sk_action::SK_DROP
    } else {
        sk_action::SK_PASS
    }
}

/// Adds a `traceparent` to a message that starts an HTTP/1 request. None when the message is
/// not one (nothing counted), else the outcome (`MUST_DROP` when the message could not be
/// put back as the application sent it).
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
    let line_end = match head::first_newline(buf, scan.len()) {
        Some(end) => scan.launder(end),
        None => return Some(injection::FAILED),
    };
    if line_end >= HEAD_BYTES || !head::is_request_line(buf, line_end) {
        // A Redis inline command, or a body that starts like a request line.
        return None;
    }
    // Only a head that ends in the bytes looked at: an own `traceparent` further on would
    // be missed and sent twice.
    match scan.launder(head::scan(buf, scan.len())) {
        head::PLAIN => {}
        head::UNFINISHED => return Some(injection::FAILED),
        _ => return Some(injection::HAS_OWN),
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the reference points into the map value, valid for this program run.
    let (trace_hi, trace_lo, sampled, flags) = match unsafe { THREADS.get(&pid_tgid) } {
        Some(t) if t.opaque_until_ns > now => return Some(injection::AMBIGUOUS),
        Some(t) if t.in_flight > 0 && now.wrapping_sub(t.last_read_ns) < STALE_NS => {
            if t.in_flight > 1 || t.mixed != 0 {
                return Some(injection::AMBIGUOUS);
            }
            (t.trace_hi, t.trace_lo, t.sampled, trace_flags::CHILD)
        }
        _ => (random_u64(), random_u64(), 1, 0),
    };
    let span_id = random_u64();
    // Reserved before the message changes: once the header is out, userspace must learn
    // its ids.
    let Some(mut entry) = EVENTS.reserve::<TraceEvent>(0) else {
        count_drop(drop_reason::RINGBUF_FULL);
        return Some(injection::FAILED);
    };
    let start = (line_end + 1) as u32;
    if ctx.push_data(start, HEADER_LEN as u32, 0).is_err() {
        entry.discard(0);
        return Some(injection::FAILED);
    }
    let Some(p) = linear_header(ctx, start) else {
        // Never leave the pushed bytes (uninitialised kernel memory) in the stream: take
        // them out, or drop the message when even that fails.
        entry.discard(0);
        if ctx.pop_data(start, HEADER_LEN as u32, 0).is_err() {
            return Some(MUST_DROP);
        }
        return Some(injection::FAILED);
    };
    // SAFETY: [p, p + HEADER_LEN) is inside the message (`linear_header`). Written in place:
    // a copy built on the stack would not fit beside the event.
    unsafe {
        *(p as *mut [u8; 16]) = *b"traceparent: 00-";
        write_hex(p + 16, trace_hi);
        write_hex(p + 32, trace_lo);
        *((p + 48) as *mut u8) = b'-';
        write_hex(p + 49, span_id);
        *((p + 65) as *mut [u8; 5]) = if sampled != 0 {
            *b"-01\r\n"
        } else {
            *b"-00\r\n"
        };
    }
    let ids = TraceIds {
        trace_hi,
        trace_lo,
        span_id,
        flags,
        // SAFETY: a read of the context the kernel passed to this program.
        local_port: unsafe { (*ctx.msg).local_port },
    };
    fill(&mut entry, event_kind::TRACE_INJECTED, pid_tgid, -1, ids);
    entry.submit(BPF_RB_NO_WAKEUP);
    Some(injection::INJECTED)
}

/// Not a counted outcome: the message must be dropped (counted as `failed`).
const MUST_DROP: u32 = u32::MAX;

/// Makes the `HEADER_LEN` bytes pushed at `start` linear and returns where they are. The
/// whole message is pulled first (measured cheaper than the new bytes alone: docs/traces.md),
/// up to 64 KiB; when that allocation fails, the new bytes alone, which need none (they are
/// one scatterlist element of their own).
#[inline(always)]
fn linear_header(ctx: &SkMsgContext, start: u32) -> Option<usize> {
    let size = ctx.size();
    if size <= 65536 {
        // SAFETY: plain helper call on this program's context.
        if unsafe { bpf_msg_pull_data(ctx.msg, 0, size, 0) } == 0 {
            let (data, end) = packet(ctx);
            // Masked behind black_box: the 5.10 verifier only lets a packet pointer with a
            // small known bound on its variable offset be checked against the end.
            let p = data + (core::hint::black_box(start as usize) & (HEAD_BYTES * 2 - 1));
            if p + HEADER_LEN <= end {
                return Some(p);
            }
        }
    }
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_msg_pull_data(ctx.msg, start, start + HEADER_LEN as u32, 0) } != 0 {
        return None;
    }
    // The pulled range starts at `data`.
    let (data, end) = packet(ctx);
    (data + HEADER_LEN <= end).then_some(data)
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
