//! The one interface every protocol implements: a [`Session`] is fed one connection's bytes
//! and reports finished calls.

use crate::protocols::call::{DbOperation, HttpExchange, Role};
use crate::traces::links::Start;

/// One event's bytes, as a session sees them.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The bytes come from the client (requests), not the server (responses).
    pub from_client: bool,
    pub payload: &'a [u8],
    /// Bytes that moved after `payload` but were not copied.
    pub gap: u64,
    /// Monotonic ns of the syscall.
    pub ts: u64,
    /// The thread that moved them.
    pub tid: u32,
}

/// What sessions report; one per connection table, cleared before each use.
#[derive(Debug, Default)]
pub struct Finished {
    pub http: Vec<HttpExchange>,
    pub db: Vec<DbOperation>,
    /// Parse errors by kind (their protocol is the session's).
    pub errors: Vec<&'static str>,
    /// Requests (commands, queries) parsed but given up because too many were already
    /// waiting for their responses on the connection (`PENDING_LIMIT`): they get no call.
    pub pending_dropped: u64,
    /// Requests (commands, queries) that started, each with the number the session gave
    /// it (`seq`), which its finished call carries too: its span's place in a trace is
    /// chosen now, while the calls around it are in flight.
    pub started: Vec<(u64, Start)>,
}

/// Answers a connection may hold for requests whose events are late, and how much later,
/// in event time, a request may come and still be theirs. A client that writes on one
/// thread and reads on another (on another CPU) can be preempted between sending a request
/// and the return of its write, after the server answered and the other thread read the
/// answer: the read's event then comes first. The HTTP and Redis sessions hold such an
/// answer and pair it with the next request seen.
pub const MAX_EARLY: usize = 64;
pub const EARLY_WINDOW_NS: u64 = 10_000_000;

/// Numbers a connection's requests in the order they start (`Finished::started`). The
/// numbering goes on across a session's restart: what it had in flight is given up by
/// number.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestNumbers {
    next: u64,
}

impl RequestNumbers {
    /// Gives the request that just started its number and reports it in `started`.
    pub fn start(&mut self, start: Start, started: &mut Vec<(u64, Start)>) -> u64 {
        let seq = self.next;
        self.next += 1;
        started.push((seq, start));
        seq
    }
}

/// The drop reason of `Finished::pending_dropped`.
pub const PENDING_LIMIT: &str = "pending_limit";

/// The parse-error kind of a Redis or PostgreSQL connection that ended (closed, or evicted
/// when idle) inside a message: a command or message that never ended.
pub const UNFINISHED_MESSAGE: &str = "unfinished_message";

impl Finished {
    pub fn clear(&mut self) {
        self.http.clear();
        self.db.clear();
        self.errors.clear();
        self.pending_dropped = 0;
        self.started.clear();
    }
}

/// Whether a session can still read its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readable {
    Yes,
    /// Switched to another protocol (HTTP `Upgrade`, `CONNECT`): left alone.
    Upgraded,
    /// Switched to TLS or GSS encryption: counted, then left alone.
    Encrypted,
}

/// One connection's protocol session: bytes in, finished calls out.
pub trait Session: Send {
    /// The `protocol` label of its parse errors: `http`, `redis`, `postgresql`.
    fn protocol(&self) -> &'static str;

    /// Feeds one event's bytes.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Finished);

    /// Bytes were lost: what was pending gets no call, and parsing starts over at the next
    /// event (the framing finds its way back to a message boundary from there).
    fn restart(&mut self);

    /// The connection closed at `ts` (or was evicted idle): a response that ends at close
    /// ends; a client's requests still waiting end with `connection_closed`; a message cut
    /// off in the middle (a head or body that never ended) is counted as a parse error.
    fn closed(&mut self, _ts: u64, _role: Role, _out: &mut Finished) {}

    /// A read or write failed with `errno` (`ECONNRESET`, ...): a client's requests still
    /// waiting end with it.
    fn failed(&mut self, _ts: u64, _role: Role, _errno: &'static str, _out: &mut Finished) {}

    fn readable(&self) -> Readable {
        Readable::Yes
    }
}

/// How a database session (Redis, PostgreSQL) is written: typed framing errors, operations
/// appended as they finish. Every `DbSession` is a [`Session`].
pub trait DbSession: Default {
    type Error: Copy + std::fmt::Debug + PartialEq;
    /// `db.system.name`, also the `protocol` label of the session's parse errors.
    const SYSTEM: &'static str;

    /// The `kind` label of a parse error.
    fn error_kind(error: Self::Error) -> &'static str;

    /// Feeds one event's bytes (`gap` more were not copied) in the given direction.
    /// Finished operations are appended to `done`; framing errors are returned for counting.
    fn feed(
        &mut self,
        from_client: bool,
        payload: &[u8],
        gap: u64,
        ts: u64,
        tid: u32,
        done: &mut Vec<DbOperation>,
    ) -> Option<Self::Error>;

    /// Bytes were lost: pending operations are dropped and parsing starts over at the next
    /// event.
    fn restart(&mut self);

    /// Operations still waiting for their response (they get no span if the connection
    /// ends).
    fn pending(&self) -> usize;

    /// The connection switched to encryption: nothing more can be read.
    fn is_encrypted(&self) -> bool {
        false
    }

    /// Operations given up since the last call because `pending` was at its limit (they
    /// get no span; counted as `pending_limit` drops). Resets the count.
    fn take_dropped(&mut self) -> u64 {
        0
    }

    /// Requests started since the last call, with their `seq` (see `Finished::started`).
    fn take_started(&mut self, _out: &mut Vec<(u64, Start)>) {}

    /// Either direction stopped inside a message (a command or message that never ended).
    fn unfinished(&self) -> bool {
        false
    }
}

impl<S: DbSession + Send> Session for S {
    fn protocol(&self) -> &'static str {
        S::SYSTEM
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Finished) {
        let c = chunk;
        if let Some(e) = DbSession::feed(
            self,
            c.from_client,
            c.payload,
            c.gap,
            c.ts,
            c.tid,
            &mut out.db,
        ) {
            out.errors.push(S::error_kind(e));
        }
        out.pending_dropped += self.take_dropped();
        self.take_started(&mut out.started);
    }

    fn closed(&mut self, _ts: u64, _role: Role, out: &mut Finished) {
        if DbSession::unfinished(self) {
            out.errors.push(UNFINISHED_MESSAGE);
        }
    }

    /// The connection is dead: a message in progress is counted now, and what waits is
    /// dropped (a server may hold the connection open for long before it closes it).
    fn failed(&mut self, _ts: u64, _role: Role, _errno: &'static str, out: &mut Finished) {
        if DbSession::unfinished(self) {
            out.errors.push(UNFINISHED_MESSAGE);
            DbSession::restart(self);
        }
    }

    fn restart(&mut self) {
        DbSession::restart(self)
    }

    fn readable(&self) -> Readable {
        if self.is_encrypted() {
            Readable::Encrypted
        } else {
            Readable::Yes
        }
    }
}
