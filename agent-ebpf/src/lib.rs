//! Types shared by sonde's kernel programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the kernel and userspace agree
//! byte for byte; the const asserts at the bottom pin every size.
#![no_std]

pub mod head;

/// Most payload bytes copied from one syscall. Larger messages arrive as a prefix plus a gap
/// (the event's `total_len` still says how many bytes moved), so sizes stay right.
pub const MAX_PAYLOAD: usize = 4096;
/// How many iovecs of a readv/writev/sendmsg/recvmsg are copied (the copy also stops at
/// `MAX_PAYLOAD`).
pub const MAX_IOVECS: usize = 8;
/// Capacity of the connection table in the kernel (an LRU map, so leaks from processes that
/// exit without close() are evicted).
pub const MAX_CONNS: u32 = 65536;
/// Ring buffer size in bytes (a power-of-two multiple of the page size).
pub const RING_BYTES: u32 = 8 * 1024 * 1024;
/// Capacity of the fork table (child pid -> parent tgid), an LRU map.
pub const MAX_FORKS: u32 = 16384;
/// Threads inside an `SSL_read`/`SSL_write` at once.
pub const MAX_SSL_CALLS: u32 = 16384;
/// Threads with a memory-BIO `SSL_write` whose ciphertext they have not written yet (each
/// entry holds MAX_PAYLOAD bytes of plaintext; least recently used first out).
pub const MAX_UNBOUND_WRITES: u32 = 256;

/// Event kinds (`EventHeader::kind`). Read with `EventKind::try_from`, never transmuted.
pub mod event_kind {
    /// Payload of one read/write-family syscall on a tracked connection.
    pub const DATA: u32 = 1;
    /// A tracked connection was closed by its process.
    pub const CLOSE: u32 = 2;
    /// A read/write on a tracked connection failed with a connection error (`errno` set).
    pub const ERROR: u32 = 3;
    /// A process's first TCP connect() since it started (or since sonde did): no payload,
    /// no connection (`fd` -1). Userspace reads the process's identity (its environment's
    /// `OTEL_SERVICE_NAME`) while the process still runs; a short-lived client may exit
    /// before its first bytes reach userspace.
    pub const PROCESS_SEEN: u32 = 4;
    /// Trace propagation (`inject_traceparent`): a thread read the start of a plain
    /// HTTP/1 request that carried no `traceparent`, and the kernel gave it a new trace id
    /// (`TraceIds` follows the header; `fd` is the connection). Shipped before the read's
    /// own `DATA` event: the thread's next server request is in that trace.
    pub const TRACE_STARTED: u32 = 5;
    /// Trace propagation: the kernel added a `traceparent` header to an HTTP/1 request the
    /// thread was sending (`TraceIds` follows the header; no connection is known). Shipped
    /// before the write's own `DATA` event: the thread's next client request carries these
    /// ids.
    pub const TRACE_INJECTED: u32 = 6;
}

/// The ids of a `TRACE_STARTED` or `TRACE_INJECTED` event (its payload).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceIds {
    pub trace_hi: u64,
    pub trace_lo: u64,
    /// The injected header's parent id: the client span's id (0 for `TRACE_STARTED`).
    pub span_id: u64,
    /// `trace_flags` bits.
    pub flags: u32,
    /// `TRACE_INJECTED`: the local port of the socket the request went out on (host byte
    /// order), so that only a request on that connection takes these ids.
    pub local_port: u32,
}

pub mod trace_flags {
    /// The injected trace is the one of the request the thread serves (the client call is
    /// its child); otherwise a new trace starts with the client call.
    pub const CHILD: u32 = 1;
}

/// Outcomes of the `sk_msg` program on an HTTP/1 request (index into `INJECTIONS`).
pub mod injection {
    /// A `traceparent` was added.
    pub const INJECTED: u32 = 0;
    /// The request carries its own `traceparent` (the application traces itself).
    pub const HAS_OWN: u32 = 1;
    /// The thread serves several requests at once (or one the kernel cannot read): whose
    /// trace the call belongs to is not known, so nothing is added.
    pub const AMBIGUOUS: u32 = 2;
    /// The request line does not end in the first bytes of the message, or the kernel
    /// refused to grow the message.
    pub const FAILED: u32 = 3;
    pub const COUNT: u32 = 4;
    /// Label values, indexed by outcome.
    pub const NAMES: [&str; COUNT as usize] = ["injected", "has_own", "ambiguous", "failed"];
}

/// Client sockets in the sockhash the `sk_msg` program runs on (connections made while
/// sonde runs with `inject_traceparent`; a full table only leaves new ones out).
pub const MAX_INJECT_SOCKETS: u32 = 65536;
/// Threads whose server request the kernel follows for trace propagation.
pub const MAX_TRACED_THREADS: u32 = 16384;

/// Processes remembered as announced (`event_kind::PROCESS_SEEN`); least recently used
/// first out, so one that falls out is announced again at its next connection.
pub const MAX_PROCESSES_SEEN: u32 = 16384;

/// Connection protocol as classified in the kernel (`ConnInfo::proto`).
pub mod proto {
    /// Not classified yet: the next payload decides.
    pub const UNKNOWN: u8 = 0;
    /// Not a supported protocol: nothing more is shipped for this connection.
    pub const NONE: u8 = 1;
    pub const HTTP1: u8 = 2;
    /// RESP2/RESP3 (Redis and compatible servers).
    pub const REDIS: u8 = 3;
    /// PostgreSQL frontend/backend protocol 3.0.
    pub const POSTGRES: u8 = 4;

    /// The loader's `PROTOCOLS` bit of a protocol.
    pub const fn bit(proto: u8) -> u32 {
        1 << proto
    }
}

/// Which side of the connection the observed process is (`ConnInfo::role`).
pub mod role {
    pub const UNKNOWN: u8 = 0;
    /// The process connected (it sends requests).
    pub const CLIENT: u8 = 1;
    /// The process accepted (it receives requests).
    pub const SERVER: u8 = 2;
}

/// Data direction seen from the observed process.
pub mod direction {
    /// The process wrote the bytes.
    pub const EGRESS: u8 = 0;
    /// The process read the bytes.
    pub const INGRESS: u8 = 1;
}

/// `ConnInfo::flags` bits.
pub mod conn_flags {
    /// The kernel saw no connect/accept for this connection (it predates sonde, or was
    /// inherited across fork): userspace resolves its addresses through /proc.
    pub const RESOLVE: u8 = 1;
    /// The payload that classified the connection was a request (else a response).
    pub const FIRST_WAS_REQUEST: u8 = 2;
    /// Not yet confirmed by userspace to be a TCP socket (set with RESOLVE): at most
    /// `PROBATION_EVENTS` events are shipped until userspace clears it (or marks the fd NONE),
    /// so a pipe or file that happens to carry HTTP-looking bytes costs next to nothing. A
    /// socket-only call (recvfrom, sendto, *msg) on the fd ends probation in the kernel.
    pub const PROBATION: u8 = 4;
    /// Events of this connection were not shipped: the probation budget was used up
    /// (counted in `lost_events`), or the ring buffer was full (`RING_LOST` set in
    /// `lost_events`; counted as `drop_reason::RINGBUF_FULL`). The next shipped event
    /// carries the flag and `lost_events`: userspace counts the refused ones
    /// (`probation_limit`) and restarts the connection's parsers there, so that no call is
    /// paired across the hole. A pipe or file that userspace rules out never ships again,
    /// and its refused events are not counted.
    pub const LOST: u8 = 8;
    /// Its process closed this fd (at `closed_ns`). Kept so that a child forked before the
    /// close finds the socket it inherited (a fork-per-connection server accepts in the
    /// parent, which closes its copy, often before the child's first read), and so that a
    /// process whose fd now holds something else does not look for it in its parent. Never
    /// shipped; for its own process's lookups it is a tombstone: no connection, no
    /// inheritance.
    pub const CLOSED: u8 = 16;
    /// The fd was copied by dup()/dup2()/dup3() (this entry is the source or a copy):
    /// closing one copy does not end the connection, so no close of it is shipped.
    pub const ALIASED: u8 = 32;
    /// A TLS connection: its plaintext comes from the OpenSSL uprobes, and its ciphertext
    /// (the syscalls) is never shipped.
    pub const TLS: u8 = 64;
    /// Its first payload was a TLS record, and no `SSL*` is tied to it yet: only such a
    /// connection (or one not classified yet, or PostgreSQL, which switches to TLS) is
    /// looked at for a memory-BIO program's ciphertext.
    pub const TLS_RECORDS: u8 = 128;
}

/// Events a connection on probation may ship before userspace confirms it. Its first event
/// wakes userspace at once, which confirms it well within this budget.
pub const PROBATION_EVENTS: u8 = 64;

/// Kernel drop counters (index into the per-CPU `DROPS` array).
pub mod drop_reason {
    /// The ring buffer was full: the event is lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// The connection table was full and the connection could not be tracked.
    pub const CONN_TABLE_FULL: u32 = 1;
    /// Reading the syscall's arguments or user buffer failed.
    pub const READ_FAILED: u32 = 2;
    /// The plaintext of an `SSL_read`/`SSL_write` whose socket was not seen (no syscall in
    /// the call and none cached for its `SSL*`): never guessed, counted.
    pub const TLS_FD_UNKNOWN: u32 = 3;
    /// A program found this CPU's staging area in use by a preempted one (only uprobe
    /// programs can be preempted, and only under a fully preemptible kernel).
    pub const SCRATCH_BUSY: u32 = 4;
    pub const COUNT: u32 = 5;
    /// Label values, indexed by reason.
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full",
        "conn_table_full",
        "read_failed",
        "tls_fd_unknown",
        "scratch_busy",
    ];
}

/// Set in `ConnInfo::lost_events` when an event of the connection did not fit the ring.
pub const RING_LOST: u32 = 1 << 31;

impl ConnInfo {
    /// A connected socket's local IPv4 address (network byte order) and port, read as
    /// connect() returned (see `listen_fd`); None when unknown (IPv6, or not seen
    /// connecting). The client's own address names the connection at both of its ends.
    pub fn client_local_addr4(&self) -> Option<([u8; 4], u16)> {
        let port = self.listen_fd;
        (self.role == role::CLIENT && port > 0 && port <= u16::MAX as i32)
            .then(|| (self.listen_tgid.to_ne_bytes(), port as u16))
    }
}

/// Key of the kernel connection table: one open socket fd of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: i32,
}

/// What the kernel knows about one connection; copied into every event about it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnInfo {
    /// Monotonic ns when sonde first saw the connection: tells a reused fd from the old one.
    pub conn_id: u64,
    /// Peer address (IPv4 in the first 4 bytes, or IPv6), network byte order.
    pub peer_addr: [u8; 16],
    /// `AF_INET` (2), `AF_INET6` (10), or 0 when unknown.
    pub family: u16,
    /// Peer port, host byte order (0 when unknown).
    pub peer_port: u16,
    pub role: u8,
    pub proto: u8,
    pub flags: u8,
    /// Events still allowed while on probation (see `conn_flags::PROBATION`).
    pub probation_left: u8,
    /// For an accepted connection, the listening fd it came from (its local address is the
    /// server's). For a connected one, its local port (host byte order; 0 when unknown,
    /// see `local_addr4`). -1 otherwise.
    pub listen_fd: i32,
    /// Events refused on probation since the last shipped one, plus `RING_LOST` when an
    /// event did not fit the ring (sent with `LOST`). One field rather than two: a wider
    /// `ConnInfo` grows the syscall program's stack past what 5.10 allows.
    pub lost_events: u32,
    /// The fd userspace tracks the connection under: the one it was accepted, connected or
    /// first seen on. Copies made by dup()/dup2() and by a child that inherited the socket
    /// keep it, so both directions of `dup2(sock, 0); dup2(0, 1)` land on one connection.
    pub key_fd: i32,
    /// The process that holds `listen_fd` (a child serving an inherited connection does
    /// not). For a connected connection, its local IPv4 address in network byte order (0
    /// when unknown): the role says which, so the header stays this size (the syscall
    /// program's stack has no room for more).
    pub listen_tgid: u32,
    /// Monotonic ns when the process closed the fd (with `CLOSED`), else 0.
    pub closed_ns: u64,
}

/// Fixed header in front of every ring-buffer event; `captured_len` payload bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventHeader {
    pub kind: u32,
    /// Bytes the syscall moved (may exceed `captured_len`).
    pub total_len: u32,
    /// Monotonic ns at syscall exit.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: i32,
    pub captured_len: u32,
    /// Positive errno for `ERROR` events.
    pub errno: u32,
    pub direction: u8,
    pub _pad: u8,
    /// The last `tail_len` of the `captured_len` payload bytes are the syscall's last bytes
    /// (at offset `total_len - tail_len`), the rest its first: long plain-buffer reads and
    /// writes of HTTP connections carry both ends, so a field at the end of a large body
    /// (an LLM request's `model` after its prompt) is still seen.
    pub tail_len: u16,
    pub conn: ConnInfo,
    /// The thread's command name (the executable name, up to 15 bytes), so identity survives
    /// a process that exits before userspace reads /proc. Set on a connection's first event
    /// only; zero otherwise.
    pub comm: [u8; 16],
}

pub const EVENT_HEADER_LEN: usize = core::mem::size_of::<EventHeader>();

const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 56);
const _: () = assert!(EVENT_HEADER_LEN == 112);
const _: () = assert!(EVENT_HEADER_LEN.is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<TraceIds>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], no implicit padding (sizes asserted above), every
    // bit pattern valid.
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnInfo {}
}
