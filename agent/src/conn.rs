//! The connection table: one entry per observed socket of a process, holding its two HTTP
//! streams and the requests still waiting for their responses. Responses are paired with
//! requests strictly in order (FIFO), which is what HTTP/1 pipelining requires.
use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use sonde_ebpf::{conn_flags, proto, role, ConnKey};

use crate::capture::{needs_resolve, peer_addr, Event, EventKind};
use crate::db::{DbCall, DbOperation, DbSession};
use crate::k8s::SharedPodIndex;
use crate::postgres::PostgresSession;
use crate::process::{ProcessInfo, ProcessTable};
use crate::protocols::http1::{
    request_kind, Head, HttpEvent, HttpStream, ParseError, RequestHead, StreamKind,
};
use crate::redis::RedisSession;
use crate::selector::{CaptureFilter, ServiceNames};
use crate::sockets::{resolve_fd, FdKind, ListenerCache};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    /// `client` or `server`, as the summary table shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// One request and its outcome, as seen by one process.
#[derive(Clone, Debug)]
pub struct HttpCall {
    pub role: Role,
    pub process: Arc<ProcessInfo>,
    pub tid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub request: RequestHead,
    pub request_body_size: u64,
    /// None when no response came (see `failure`).
    pub status: Option<u16>,
    pub response_body_size: u64,
    /// Why no response came: an errno name (`ECONNRESET`) or `connection_closed`.
    pub failure: Option<String>,
    /// Monotonic ns: first byte of the request, end of the response.
    pub start_ts: u64,
    pub end_ts: u64,
    /// `http.route`: the configured pattern the path matched (server side only; see
    /// `routes`). Set by the sink, never guessed.
    pub route: Option<Arc<str>>,
}

/// Where the connection table reports what it finds.
pub trait CallSink {
    fn http_call(&mut self, call: HttpCall);
    fn db_call(&mut self, call: DbCall);
    fn parse_error(&mut self, protocol: &'static str, kind: &'static str);
    /// The kernel should stop shipping this connection (not a TCP socket, or upgraded).
    /// `conn_id` names the connection: by the time this is applied the fd may be another's.
    fn ignore_connection(&mut self, key: ConnKey, conn_id: u64);
    /// A connection the kernel holds on probation is a TCP socket: ship all of it.
    fn confirm_connection(&mut self, key: ConnKey, conn_id: u64);
    /// `n` events of a connection were lost before they reached userspace.
    fn dropped(&mut self, reason: &'static str, n: u64);
    /// A connection switched to TLS (or GSS) encryption: its protocol can no longer be read.
    fn encrypted_connection(&mut self, protocol: &'static str);
}

/// The protocol session of a database connection.
// Connections hold it boxed, so the size of the larger variant costs nothing per connection.
#[allow(clippy::large_enum_variant)]
enum Database {
    Redis(RedisSession),
    Postgres(PostgresSession),
}

struct Pending {
    head: RequestHead,
    start_ts: u64,
    body_size: u64,
    tid: u32,
}

struct Connection {
    conn_id: u64,
    role: Role,
    process: Arc<ProcessInfo>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    requests: HttpStream,
    responses: HttpStream,
    pending: VecDeque<Pending>,
    /// Index in `pending` of the request whose body is still arriving.
    open_request: Option<usize>,
    response_status: Option<u16>,
    last_ts: u64,
    ignored: bool,
    /// Set on Redis and PostgreSQL connections; the HTTP streams above stay unused there.
    db: Option<Box<Database>>,
}

const MAX_PENDING: usize = 1024;

#[derive(Default)]
pub struct ConnTable {
    /// Keyed by (tgid, fd); FxHash because SipHash showed in profiles of this hot lookup.
    conns: FxHashMap<(u32, i32), Connection>,
    processes: ProcessTable,
    filter: CaptureFilter,
    listeners: ListenerCache,
    scratch: Vec<HttpEvent>,
    db_done: Vec<DbOperation>,
}

impl ConnTable {
    /// A table that captures only what `filter` admits and names services by `names`.
    pub fn new(
        filter: CaptureFilter,
        names: ServiceNames,
        pods: Option<SharedPodIndex>,
    ) -> ConnTable {
        ConnTable {
            processes: ProcessTable::new(names, pods),
            filter,
            ..ConnTable::default()
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn handle(&mut self, ev: &Event<'_>, sink: &mut impl CallSink) {
        let h = &ev.header;
        // The kernel's key fd, not the event's: a dup()ed or inherited copy of a socket
        // (inetd-style servers read fd 0 and write fd 1) is one connection.
        let key = (h.tgid, h.conn.key_fd);
        let kernel_key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        if let Some(c) = self.conns.get(&key) {
            if c.conn_id != h.conn.conn_id {
                // The fd was reused: whatever the old connection still owed ends here.
                let old = self.conns.remove(&key).expect("present");
                finish_connection(old, h.ts_ns, "connection_closed", sink, &mut self.scratch);
            }
        }
        if ev.kind == EventKind::Close {
            if let Some(c) = self.conns.remove(&key) {
                finish_connection(c, h.ts_ns, "connection_closed", sink, &mut self.scratch);
            }
            return;
        }
        let c = match self.conns.entry(key) {
            Entry::Occupied(o) => {
                let c = o.into_mut();
                if h.conn.flags & conn_flags::LOST != 0 {
                    // The kernel could not ship some events before this one (probation).
                    sink.dropped("probation_limit", h.conn.lost_events.into());
                    c.restart_parsers();
                }
                c
            }
            Entry::Vacant(v) => {
                let c = open_connection(&mut self.processes, &mut self.listeners, &self.filter, ev);
                if c.ignored {
                    sink.ignore_connection(kernel_key, h.conn.conn_id);
                } else if needs_resolve(&h.conn) {
                    sink.confirm_connection(kernel_key, h.conn.conn_id);
                }
                v.insert(c)
            }
        };
        if c.ignored {
            return;
        }
        c.last_ts = h.ts_ns;
        match ev.kind {
            EventKind::Data if c.db.is_some() => {
                let from_client = (c.role == Role::Server) == ev.is_ingress();
                c.feed_db(from_client, ev, sink, &mut self.db_done);
                if c.ignored {
                    sink.ignore_connection(kernel_key, h.conn.conn_id);
                }
            }
            EventKind::Data => {
                let carries_requests = (c.role == Role::Server) == ev.is_ingress();
                c.feed(carries_requests, ev, sink, &mut self.scratch);
                if c.responses.is_opaque() || c.requests.is_opaque() {
                    c.ignored = true;
                    sink.ignore_connection(kernel_key, h.conn.conn_id);
                }
            }
            EventKind::Error => {
                if c.role == Role::Client {
                    let errno = errno_name(h.errno);
                    c.fail_pending(h.ts_ns, errno, sink);
                }
            }
            EventKind::Close => {}
        }
    }
}

/// Feeds one event to a database session, counting its parse errors. Returns true once the
/// connection turned encrypted (counted here).
fn feed_session<S: DbSession>(
    session: &mut S,
    from_client: bool,
    ev: &Event<'_>,
    sink: &mut impl CallSink,
    done: &mut Vec<DbOperation>,
) -> bool {
    let h = &ev.header;
    if let Some(e) = session.feed(from_client, ev.payload, ev.gap(), h.ts_ns, h.tid, done) {
        sink.parse_error(S::SYSTEM, S::error_kind(e));
    }
    let encrypted = session.is_encrypted();
    if encrypted {
        sink.encrypted_connection(S::SYSTEM);
    }
    encrypted
}

/// A first event for (tgid, fd): learn who and where.
fn open_connection(
    processes: &mut ProcessTable,
    listeners: &mut ListenerCache,
    filter: &CaptureFilter,
    ev: &Event<'_>,
) -> Connection {
    let h = &ev.header;
    let info = &h.conn;
    let mut process = if info.role == role::SERVER && info.listen_tgid != h.tgid {
        // Served by a child of the process that accepted it.
        processes.get_forked(h.tgid, info.listen_tgid, &ev.comm())
    } else {
        processes.get(h.tgid, &ev.comm(), true)
    };
    let mut role = match info.role {
        role::CLIENT => Role::Client,
        role::SERVER => Role::Server,
        // Unknown: infer from the first message and its direction.
        _ => {
            let first_request = info.flags & conn_flags::FIRST_WAS_REQUEST != 0;
            if first_request != ev.is_ingress() {
                Role::Client
            } else {
                Role::Server
            }
        }
    };
    let mut peer = peer_addr(info);
    let mut local = None;
    let mut ignored = false;
    if needs_resolve(info) {
        match resolve_fd(h.tgid, h.fd) {
            FdKind::Tcp(t) => {
                local = Some(t.local);
                peer = Some(t.peer);
            }
            FdKind::NotTcp => ignored = true,
            // The fd was closed before sonde looked (a short connection). Off probation the
            // kernel saw a socket-only call on it, so its events are parsed (without
            // addresses); on probation it may as well have been a file.
            FdKind::Gone => ignored = info.flags & conn_flags::PROBATION != 0,
        }
    } else if info.role == role::SERVER && info.listen_fd >= 0 {
        // The listener's process: a forked child serves what its parent accepted.
        local = listeners.local_addr(info.listen_tgid, info.listen_fd);
    }
    if info.role == role::UNKNOWN && ignored {
        role = Role::Client;
    }
    // The port of the service this connection talks to.
    let service_port = match role {
        Role::Server => local.map(|a| a.port()),
        Role::Client => peer.map(|a| a.port()),
    };
    if !filter.admits(&process, service_port) {
        ignored = true;
    }
    if let (Role::Server, Some(port)) = (role, service_port) {
        process = processes.serving_on(process, port);
    }
    let db = match info.proto {
        proto::REDIS => Some(Box::new(Database::Redis(RedisSession::new()))),
        proto::POSTGRES => Some(Box::new(Database::Postgres(PostgresSession::new()))),
        proto::HTTP1 => None,
        _ => {
            // A protocol the kernel classifies but this build does not parse.
            ignored = true;
            None
        }
    };
    Connection {
        conn_id: info.conn_id,
        role,
        process,
        local,
        peer,
        requests: HttpStream::new(StreamKind::Requests),
        responses: HttpStream::new(StreamKind::Responses),
        pending: VecDeque::new(),
        open_request: None,
        response_status: None,
        last_ts: h.ts_ns,
        ignored,
        db,
    }
}

impl ConnTable {
    /// Drops connections idle for longer than `idle_ns` (their process may have exited
    /// without closing them). Returns how many were dropped.
    pub fn evict_idle(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl CallSink) -> usize {
        let stale: Vec<(u32, i32)> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ts) > idle_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in &stale {
            if let Some(c) = self.conns.remove(key) {
                let pid = c.process.pid;
                finish_connection(c, 0, "connection_closed", sink, &mut self.scratch);
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    self.processes.forget(pid);
                    self.listeners.forget_pid(pid);
                }
            }
        }
        stale.len()
    }
}

impl Connection {
    /// Bytes were lost: what was pending gets no span, and parsing starts over at this
    /// event (the parsers find their way back to a message boundary from there).
    fn restart_parsers(&mut self) {
        self.requests = HttpStream::new(StreamKind::Requests);
        self.responses = HttpStream::new(StreamKind::Responses);
        self.pending.clear();
        self.open_request = None;
        self.response_status = None;
        if let Some(db) = self.db.as_deref_mut() {
            match db {
                Database::Redis(s) => s.restart(),
                Database::Postgres(s) => s.restart(),
            }
        }
    }

    /// Feeds a Redis or PostgreSQL connection; sets `ignored` once it turns encrypted.
    fn feed_db(
        &mut self,
        from_client: bool,
        ev: &Event<'_>,
        sink: &mut impl CallSink,
        done: &mut Vec<DbOperation>,
    ) {
        let Some(session) = self.db.as_deref_mut() else {
            return;
        };
        done.clear();
        let encrypted = match session {
            Database::Redis(s) => feed_session(s, from_client, ev, sink, done),
            Database::Postgres(s) => feed_session(s, from_client, ev, sink, done),
        };
        if encrypted {
            self.ignored = true;
        }
        for op in done.drain(..) {
            sink.db_call(DbCall {
                role: self.role,
                process: self.process.clone(),
                tid: op.tid,
                local: self.local,
                peer: self.peer,
                op,
            });
        }
    }

    fn feed(
        &mut self,
        carries_requests: bool,
        ev: &Event<'_>,
        sink: &mut impl CallSink,
        scratch: &mut Vec<HttpEvent>,
    ) {
        let ts = ev.header.ts_ns;
        scratch.clear();
        let stream = if carries_requests {
            &mut self.requests
        } else {
            &mut self.responses
        };
        let mut errors: [Option<ParseError>; 2] = [None, None];
        if !ev.payload.is_empty() {
            errors[0] = stream.feed(ev.payload, ts, scratch);
        }
        let gap = ev.gap();
        if gap > 0 {
            errors[1] = stream.gap(gap, ts, scratch);
        }
        for e in errors.into_iter().flatten() {
            sink.parse_error("http", e.as_str());
        }
        for event in scratch.drain(..) {
            if carries_requests {
                self.on_request_event(event, ev.header.tid);
            } else {
                self.on_response_event(event, sink);
            }
        }
    }

    fn on_request_event(&mut self, event: HttpEvent, tid: u32) {
        match event {
            HttpEvent::Head {
                head: Head::Request(head),
                ts,
            } => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.responses
                    .expect_response_to(request_kind(&head.method));
                self.pending.push_back(Pending {
                    head,
                    start_ts: ts,
                    body_size: 0,
                    tid,
                });
                self.open_request = Some(self.pending.len() - 1);
            }
            HttpEvent::End { body_size, .. } => {
                if let Some(p) = self
                    .open_request
                    .take()
                    .and_then(|i| self.pending.get_mut(i))
                {
                    p.body_size = body_size;
                }
            }
            HttpEvent::Head {
                head: Head::Response(_),
                ..
            }
            | HttpEvent::Upgraded => {}
        }
    }

    fn on_response_event(&mut self, event: HttpEvent, sink: &mut impl CallSink) {
        match event {
            HttpEvent::Head {
                head: Head::Response(r),
                ..
            } => self.response_status = Some(r.status),
            HttpEvent::End { body_size, ts } => {
                let Some(status) = self.response_status.take() else {
                    return;
                };
                let Some(req) = self.pending.pop_front() else {
                    // A response to a request sonde did not see (picked up mid-stream).
                    sink.parse_error("http", "unpaired_response");
                    return;
                };
                self.open_request = self.open_request.and_then(|i| i.checked_sub(1));
                sink.http_call(self.call(req, Some(status), body_size, None, ts));
            }
            HttpEvent::Head {
                head: Head::Request(_),
                ..
            }
            | HttpEvent::Upgraded => {}
        }
    }

    fn call(
        &self,
        req: Pending,
        status: Option<u16>,
        response_body_size: u64,
        failure: Option<String>,
        end_ts: u64,
    ) -> HttpCall {
        HttpCall {
            role: self.role,
            process: self.process.clone(),
            tid: req.tid,
            local: self.local,
            peer: self.peer,
            request: req.head,
            request_body_size: req.body_size,
            status,
            response_body_size,
            failure,
            start_ts: req.start_ts,
            end_ts,
            route: None,
        }
    }

    /// A client's requests that will get no response end with `failure` as error.type.
    fn fail_pending(&mut self, ts: u64, failure: &str, sink: &mut impl CallSink) {
        while let Some(req) = self.pending.pop_front() {
            let end = if ts == 0 { self.last_ts } else { ts };
            sink.http_call(self.call(req, None, 0, Some(failure.to_string()), end));
        }
        self.open_request = None;
    }
}

fn finish_connection(
    mut c: Connection,
    ts: u64,
    failure: &str,
    sink: &mut impl CallSink,
    scratch: &mut Vec<HttpEvent>,
) {
    if c.ignored {
        return;
    }
    scratch.clear();
    c.responses.close(ts, scratch);
    for event in scratch.drain(..) {
        c.on_response_event(event, sink);
    }
    if c.role == Role::Client {
        c.fail_pending(ts, failure, sink);
    }
}

fn errno_name(errno: u32) -> &'static str {
    match errno as i32 {
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "connection_error",
    }
}
