//! The connection table: one entry per observed socket of a process (its identity,
//! addresses, fd reuse, idle eviction and loss handling). It knows no protocol: it hands
//! each event's bytes to the connection's protocol [`Session`] and turns what the session
//! finishes into calls with who and where.
pub mod sockets;

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use sonde_ebpf::{conn_flags, role, trace_flags, ConnInfo, ConnKey, RING_LOST};

use crate::capture::event::{needs_resolve, peer_addr, Event, EventKind};
use crate::capture::kernel_maps::{ConnVerdict, KernelUpdate};
use crate::identity::k8s::SharedPodIndex;
use crate::identity::process::ProcessInfo;
use crate::identity::selector::{CaptureFilter, ServiceNames};
use crate::identity::table::ProcessTable;
use crate::protocols::call::{DbCall, HttpCall, HttpExchange, Role};
use crate::protocols::session::PENDING_LIMIT;
use crate::protocols::{session_for, Chunk, Finished, Readable, Session};
use crate::traces::links::{keeps_buffer, ConnEnd, Side, Start};
use crate::traces::{Injected, NodeRef, TraceLinks};
use sockets::{resolve_fd, FdKind, ListenerCache, PidFds};

/// Where the connection table reports what it finds.
pub trait CallSink {
    fn http_call(&mut self, call: HttpCall);
    fn db_call(&mut self, call: DbCall);
    fn parse_error(&mut self, protocol: &'static str, kind: &'static str);
    /// `n` events of a connection were lost before they reached userspace.
    fn dropped(&mut self, reason: &'static str, n: u64);
    /// A connection switched to TLS (or GSS) encryption: its protocol can no longer be read.
    fn encrypted_connection(&mut self, protocol: &'static str);
    /// A trace link was tried (see `traces::links`): its kind and what came of it.
    fn trace_link(&mut self, _kind: &'static str, _result: &'static str) {}
}

struct Connection {
    conn_id: u64,
    /// The fd the connection was opened (or first seen) on, in the kernel's entries.
    key_fd: i32,
    /// dup() made copies of its fd: closing the key fd does not end it.
    aliased: bool,
    role: Role,
    process: Arc<ProcessInfo>,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    last_ts: u64,
    /// None (and `ignored`) for a protocol this build does not parse.
    session: Option<Box<dyn Session>>,
    ignored: bool,
    /// Its bytes are TLS plaintext from the OpenSSL uprobes.
    tls: bool,
    /// It switched to encryption (PostgreSQL's SSLRequest answered `S`) at this time, for
    /// this protocol, and no plaintext has come through the uprobes yet: counted as
    /// unreadable once `ENCRYPTED_GRACE_NS` pass without any (or at its close).
    encrypted: Option<(u64, &'static str)>,
    /// It stopped being readable as it was (encryption, a CONNECT tunnel): TLS plaintext
    /// that comes later is read afresh, even after it was counted as unreadable.
    switched: bool,
    /// The client's address and port (see `ConnEnd`).
    client_endpoint: Option<SocketAddr>,
    /// Requests started and not finished, by their session's `seq`, with their trace nodes.
    in_flight: VecDeque<InFlight>,
}

struct InFlight {
    seq: u64,
    tid: u32,
    node: NodeRef,
}

/// How long a server call whose client end may still be seen waits before its span is
/// built (in event time): a client thread preempted inside write() can have its request
/// reach sonde after the server's answer to it.
const LINK_GRACE_NS: u64 = 20_000_000;
/// Server calls waiting at most; past this they are emitted at once (unlinked).
const MAX_DEFERRED: usize = 16_384;

/// A finished call, before it goes to the sink.
enum FinishedCall {
    Http(HttpCall),
    Db(DbCall),
}

impl FinishedCall {
    fn emit(self, sink: &mut impl CallSink) {
        match self {
            FinishedCall::Http(c) => sink.http_call(c),
            FinishedCall::Db(c) => sink.db_call(c),
        }
    }
}

/// A server call waiting for its client end (see `LINK_GRACE_NS`).
struct Deferred {
    until_ts: u64,
    end: ConnEnd,
    node: NodeRef,
    call: FinishedCall,
}

/// How long a connection that switched to encryption may take to show its TLS plaintext
/// before it counts as unreadable (an OpenSSL client's first `SSL_write` follows its
/// handshake within milliseconds).
const ENCRYPTED_GRACE_NS: u64 = 2_000_000_000;

#[derive(Default)]
pub struct ConnTable {
    /// Keyed by (tgid, conn_id); FxHash because SipHash showed in profiles of this hot
    /// lookup.
    conns: FxHashMap<(u32, u64), Connection>,
    /// (tgid, key fd) -> the conn_id last seen on it: a new one means the fd was reused.
    by_key_fd: FxHashMap<(u32, i32), u64>,
    processes: ProcessTable,
    filter: CaptureFilter,
    listeners: ListenerCache,
    finished: Finished,
    /// What the kernel's connection table should learn, applied after each batch.
    kernel_updates: Vec<KernelUpdate>,
    /// Timestamp of the newest event handled.
    newest_ts: u64,
    /// When `evict_idle` last swept the process table.
    last_sweep_ns: u64,
    links: TraceLinks,
    pidfds: PidFds,
    deferred: VecDeque<Deferred>,
}

/// How often the process table is swept of exited processes (`ProcessTable::sweep`).
const PROCESS_SWEEP_NS: u64 = 10_000_000_000;

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

    /// The kernel updates gathered since the last call. `conn_id` names the connection: by
    /// the time one is applied the fd may be another's.
    pub fn take_kernel_updates(&mut self) -> std::vec::Drain<'_, KernelUpdate> {
        self.kernel_updates.drain(..)
    }

    /// Handles one event. `kernel` reads the kernel's connection table (a socket sonde asks
    /// for its addresses must still be the connection the event is about).
    pub fn handle(
        &mut self,
        ev: &Event<'_>,
        sink: &mut impl CallSink,
        kernel: &dyn Fn(ConnKey) -> Option<ConnInfo>,
    ) {
        let h = &ev.header;
        self.newest_ts = self.newest_ts.max(h.ts_ns);
        self.flush_deferred(h.ts_ns, sink);
        if ev.kind == EventKind::ProcessSeen {
            // Its identity is read now, while it runs: its first bytes may come after a
            // short-lived client has exited, and with it its environment.
            self.processes.get(h.tgid, &ev.comm(), true);
            return;
        }
        if matches!(ev.kind, EventKind::TraceStarted | EventKind::TraceInjected) {
            if let Some(ids) = ev.trace_ids() {
                let trace_id = (ids.trace_hi as u128) << 64 | ids.trace_lo as u128;
                if ev.kind == EventKind::TraceStarted {
                    self.links.kernel_trace(h.tgid, h.tid, trace_id);
                } else {
                    let child = ids.flags & trace_flags::CHILD != 0;
                    let injected = Injected {
                        trace_id,
                        span_id: ids.span_id,
                        child,
                        local_port: ids.local_port as u16,
                    };
                    self.links.kernel_header(h.tgid, h.tid, injected);
                }
            }
            return;
        }
        // By connection id, not fd: a dup()ed or inherited copy of a socket (inetd-style
        // servers read fd 0 and write fd 1) is one connection whatever fd carries it.
        let key = (h.tgid, h.conn.conn_id);
        let kernel_key = ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        };
        let update = |verdict| KernelUpdate {
            key: kernel_key,
            conn_id: h.conn.conn_id,
            verdict,
        };
        if h.fd == h.conn.key_fd {
            let fd_key = (h.tgid, h.fd);
            if let Some(old_id) = self.by_key_fd.insert(fd_key, h.conn.conn_id) {
                let old_key = (h.tgid, old_id);
                // The fd was reused: whatever the old connection still owed ends here,
                // unless copies of it live on under other fds.
                if old_id != h.conn.conn_id && self.conns.get(&old_key).is_some_and(|c| !c.aliased)
                {
                    let old = self.conns.remove(&old_key).expect("present");
                    old.close(
                        h.ts_ns,
                        &mut self.finished,
                        &mut self.links,
                        &mut self.deferred,
                        sink,
                    );
                }
            }
        }
        if ev.kind == EventKind::Close {
            if let Some(c) = self.conns.remove(&key) {
                self.forget_key_fd(&c);
                c.close(
                    h.ts_ns,
                    &mut self.finished,
                    &mut self.links,
                    &mut self.deferred,
                    sink,
                );
            }
            return;
        }
        let c = match self.conns.entry(key) {
            Entry::Occupied(o) => {
                let c = o.into_mut();
                if c.switched && !c.tls && h.conn.flags & conn_flags::TLS != 0 {
                    // It switched to TLS, and its plaintext now arrives through the OpenSSL
                    // uprobes: read it afresh, from its first plaintext message.
                    c.encrypted = None;
                    c.tls = true;
                    c.session = session_for(h.conn.proto);
                    c.ignored = c.session.is_none();
                    if !c.ignored {
                        // Undoes the Ignore sent when it switched, if that is still queued.
                        self.kernel_updates
                            .push(update(ConnVerdict::Track(h.conn.proto)));
                    }
                }
                if c.ignored {
                    // Another copy of the fd (dup) still ships: tell the kernel about it too.
                    let verdict = if c.switched {
                        ConnVerdict::IgnoreUnlessTls
                    } else {
                        ConnVerdict::Ignore
                    };
                    self.kernel_updates.push(update(verdict));
                }
                if h.conn.flags & conn_flags::LOST != 0 {
                    // The kernel could not ship some events before this one: refused on
                    // probation (counted here), or not fitting the ring (counted by the
                    // kernel as `ringbuf_full`, marked by the `RING_LOST` bit).
                    let refused = h.conn.lost_events & !RING_LOST;
                    if refused > 0 {
                        sink.dropped("probation_limit", refused.into());
                    }
                    if let Some(session) = c.session.as_deref_mut() {
                        session.restart();
                        c.give_up_in_flight(&mut self.links);
                    }
                }
                c
            }
            Entry::Vacant(v) => {
                let c = open_connection(
                    &mut self.processes,
                    &mut self.listeners,
                    &mut self.pidfds,
                    &self.filter,
                    ev,
                    kernel,
                );
                if c.ignored {
                    self.kernel_updates.push(update(ConnVerdict::Ignore));
                } else if needs_resolve(&h.conn) {
                    self.kernel_updates.push(update(ConnVerdict::Confirm));
                }
                v.insert(c)
            }
        };
        if c.ignored {
            return;
        }
        c.last_ts = h.ts_ns;
        c.aliased |= h.conn.flags & conn_flags::ALIASED != 0;
        let Some(session) = c.session.as_deref_mut() else {
            return;
        };
        let finished = &mut self.finished;
        finished.clear();
        match ev.kind {
            EventKind::Data => {
                let chunk = Chunk {
                    from_client: (c.role == Role::Server) == ev.is_ingress(),
                    payload: ev.payload,
                    gap: ev.gap(),
                    ts: h.ts_ns,
                    tid: h.tid,
                };
                session.feed(&chunk, finished);
                if !ev.tail.is_empty() {
                    // The syscall's last bytes, after the gap.
                    let tail = Chunk {
                        payload: ev.tail,
                        gap: 0,
                        ..chunk
                    };
                    session.feed(&tail, finished);
                }
                match session.readable() {
                    Readable::Yes => {}
                    Readable::Upgraded => {
                        c.ignored = true;
                        c.switched = true;
                    }
                    Readable::Encrypted => {
                        c.encrypted = Some((h.ts_ns, session.protocol()));
                        c.ignored = true;
                        c.switched = true;
                    }
                }
                if c.switched && c.ignored {
                    self.kernel_updates
                        .push(update(ConnVerdict::IgnoreUnlessTls));
                } else if c.ignored {
                    self.kernel_updates.push(update(ConnVerdict::Ignore));
                }
            }
            EventKind::Error => session.failed(h.ts_ns, c.role, errno_name(h.errno), finished),
            EventKind::Close
            | EventKind::ProcessSeen
            | EventKind::TraceStarted
            | EventKind::TraceInjected => {}
        }
        c.start(finished, &mut self.links);
        c.report(finished, &mut self.links, &mut self.deferred, sink);
    }
}

/// A first event for (tgid, fd): learn who and where.
fn open_connection(
    processes: &mut ProcessTable,
    listeners: &mut ListenerCache,
    pidfds: &mut PidFds,
    filter: &CaptureFilter,
    ev: &Event<'_>,
    kernel: &dyn Fn(ConnKey) -> Option<ConnInfo>,
) -> Connection {
    let h = &ev.header;
    let info = &h.conn;
    let forked_child =
        info.role == role::SERVER && info.listen_tgid != 0 && info.listen_tgid != h.tgid;
    let mut process = if forked_child {
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
    // Asking a socket through its fd is only right while the fd still holds this
    // connection: looked up after the answer, the kernel's entry for the fd must still be
    // this connection, open (a closed one may have given its fd to the next).
    let still_this = || {
        kernel(ConnKey {
            tgid: h.tgid,
            fd: h.fd,
        })
        .is_some_and(|k| k.conn_id == info.conn_id && k.flags & conn_flags::CLOSED == 0)
    };
    if role == Role::Server && peer.is_none() && !ignored {
        // Accepted without asking for the peer's address (libuv, so Node.js, passes NULL to
        // accept4): the socket is asked at its first event (a connection that closed
        // within the drain interval stays without a peer).
        peer = pidfds
            .peer_addr(h.tgid, h.fd, local)
            .filter(|_| still_this());
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
    let session = session_for(info.proto);
    let ignored = ignored || session.is_none();
    // The client's own address and port names the connection at both ends (see
    // `traces::links`): the kernel reads it as connect() returns (IPv4); otherwise it is
    // looked up once, here, while the socket is still open.
    let client_endpoint = match role {
        Role::Server => peer,
        Role::Client if ignored => None,
        Role::Client => local.or_else(|| kernel_local_addr(info, peer)).or_else(|| {
            pidfds
                .local_addr(h.tgid, h.fd, peer)
                .filter(|_| still_this())
        }),
    };
    Connection {
        conn_id: info.conn_id,
        key_fd: info.key_fd,
        aliased: info.flags & conn_flags::ALIASED != 0,
        role,
        process,
        local,
        peer,
        last_ts: h.ts_ns,
        ignored,
        session,
        tls: info.flags & conn_flags::TLS != 0,
        encrypted: None,
        switched: false,
        client_endpoint,
        in_flight: VecDeque::new(),
    }
}

impl ConnTable {
    /// Drops connections idle for longer than `idle_ns` (their process may have exited
    /// without closing them), and every 10 s the identities of exited processes no
    /// connection holds. Returns how many connections were dropped.
    pub fn evict_idle(&mut self, now_ns: u64, idle_ns: u64, sink: &mut impl CallSink) -> usize {
        let stale: Vec<(u32, u64)> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ts) > idle_ns)
            .map(|(k, _)| *k)
            .collect();
        for key in &stale {
            if let Some(c) = self.conns.remove(key) {
                self.forget_key_fd(&c);
                let pid = c.process.pid;
                c.close(
                    0,
                    &mut self.finished,
                    &mut self.links,
                    &mut self.deferred,
                    sink,
                );
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    self.processes.forget(pid);
                    self.listeners.forget_pid(pid);
                    self.pidfds.forget(pid);
                }
            }
        }
        self.flush_deferred(now_ns, sink);
        if now_ns.saturating_sub(self.last_sweep_ns) >= PROCESS_SWEEP_NS {
            self.last_sweep_ns = now_ns;
            self.processes.sweep();
        }
        stale.len()
    }

    /// Connections that switched to encryption more than `ENCRYPTED_GRACE_NS` before the
    /// newest event processed (not the clock: a backlog must not count a switch whose
    /// plaintext is still queued) and showed no plaintext since are counted as unreadable.
    pub fn count_encrypted(&mut self, sink: &mut impl CallSink) {
        let now_ns = self.newest_ts;
        for c in self.conns.values_mut() {
            if let Some((since, protocol)) = c.encrypted {
                if now_ns.saturating_sub(since) > ENCRYPTED_GRACE_NS {
                    sink.encrypted_connection(protocol);
                    c.encrypted = None;
                }
            }
        }
    }

    /// Emits the server calls that waited for their client end until `now_ns` (event
    /// time; `u64::MAX` emits them all).
    pub fn flush_deferred(&mut self, now_ns: u64, sink: &mut impl CallSink) {
        while self.deferred.front().is_some_and(|d| d.until_ts <= now_ns) {
            let d = self.deferred.pop_front().expect("present");
            self.links.emitted(&d.end, &d.node);
            d.call.emit(sink);
        }
        for (kind, result) in self.links.take_counts() {
            sink.trace_link(kind, result);
        }
    }

    /// The connection ended: its key fd no longer names it.
    fn forget_key_fd(&mut self, c: &Connection) {
        let fd_key = (c.process.pid, c.key_fd);
        if self.by_key_fd.get(&fd_key) == Some(&c.conn_id) {
            self.by_key_fd.remove(&fd_key);
        }
    }
}

impl Connection {
    /// The connection ended at `ts` (0: when it was last seen): what its session can still
    /// finish is reported.
    fn close(
        mut self,
        ts: u64,
        finished: &mut Finished,
        links: &mut TraceLinks,
        deferred: &mut VecDeque<Deferred>,
        sink: &mut impl CallSink,
    ) {
        if let Some((_, protocol)) = self.encrypted {
            sink.encrypted_connection(protocol);
        }
        if !self.ignored {
            if let Some(session) = self.session.as_deref_mut() {
                let ts = if ts == 0 { self.last_ts } else { ts };
                finished.clear();
                session.closed(ts, self.role, finished);
                self.report(finished, links, deferred, sink);
            }
        }
        self.give_up_in_flight(links);
        links.closed(&self.end());
    }

    fn end(&self) -> ConnEnd {
        ConnEnd {
            tgid: self.process.pid,
            role: match self.role {
                Role::Client => Side::Client,
                Role::Server => Side::Server,
            },
            client_endpoint: self.client_endpoint,
        }
    }

    /// Gives the requests the session started their places in traces.
    fn start(&mut self, finished: &mut Finished, links: &mut TraceLinks) {
        if finished.started.is_empty() {
            return;
        }
        let end = self.end();
        for (seq, start) in finished.started.drain(..) {
            if self.in_flight.back().is_some_and(|f| f.seq >= seq) {
                // The session started over: what it had in flight is gone.
                self.give_up_in_flight(links);
            }
            let node = links.started(&end, &start);
            let Start { tid, .. } = start;
            self.in_flight.push_back(InFlight { seq, tid, node });
        }
    }

    /// The trace node of the request the session numbered `seq`, and the thread that
    /// started it, out of `in_flight`; requests numbered before it got no call (given up),
    /// and leave too.
    fn take_node(&mut self, seq: u64, links: &mut TraceLinks) -> Option<(NodeRef, u32)> {
        let end = self.end();
        while let Some(front) = self.in_flight.front() {
            if front.seq > seq {
                return None;
            }
            let f = self.in_flight.pop_front().expect("present");
            if self.in_flight.is_empty() && !keeps_buffer(&self.in_flight) {
                // An idle keep-alive connection holds no memory for requests.
                self.in_flight = VecDeque::new();
            }
            if f.seq == seq {
                return Some((f.node, f.tid));
            }
            links.finished(&end, f.tid, &f.node);
        }
        None
    }

    /// Sends a finished call to the sink, or, for a server call whose client end may still
    /// be seen, holds it for `LINK_GRACE_NS`.
    fn deliver(
        &self,
        call: FinishedCall,
        node: Option<(NodeRef, u32)>,
        end_ts: u64,
        links: &mut TraceLinks,
        deferred: &mut VecDeque<Deferred>,
        sink: &mut impl CallSink,
    ) {
        if let Some((node, tid)) = node {
            let end = self.end();
            links.served(&end, tid, &node);
            let may_wait = self.role == Role::Server
                && self.client_endpoint.is_some()
                && node.parent_node().is_none()
                && deferred.len() < MAX_DEFERRED;
            if may_wait {
                deferred.push_back(Deferred {
                    until_ts: end_ts.saturating_add(LINK_GRACE_NS),
                    end,
                    node,
                    call,
                });
                return;
            }
            links.emitted(&end, &node);
        }
        call.emit(sink);
    }

    /// Requests in flight are given up (bytes lost, connection gone).
    fn give_up_in_flight(&mut self, links: &mut TraceLinks) {
        let end = self.end();
        for f in self.in_flight.drain(..) {
            links.finished(&end, f.tid, &f.node);
        }
        self.in_flight = VecDeque::new();
    }

    /// Reports what the session finished, with who and where.
    fn report(
        &mut self,
        finished: &mut Finished,
        links: &mut TraceLinks,
        deferred: &mut VecDeque<Deferred>,
        sink: &mut impl CallSink,
    ) {
        for (kind, result) in links.take_counts() {
            sink.trace_link(kind, result);
        }
        if let Some(session) = &self.session {
            for kind in finished.errors.drain(..) {
                sink.parse_error(session.protocol(), kind);
            }
        }
        if finished.pending_dropped > 0 {
            sink.dropped(PENDING_LIMIT, std::mem::take(&mut finished.pending_dropped));
        }
        for exchange in finished.http.drain(..) {
            let node = self.take_node(exchange.seq, links);
            let end_ts = exchange.end_ts;
            let call = self.http_call(exchange, node.as_ref().map(|(n, _)| n.clone()));
            self.deliver(
                FinishedCall::Http(call),
                node,
                end_ts,
                links,
                deferred,
                sink,
            );
        }
        for op in finished.db.drain(..) {
            let node = self.take_node(op.seq, links);
            let end_ts = op.end_ts;
            let call = DbCall {
                role: self.role,
                process: self.process.clone(),
                tid: op.tid,
                local: self.local,
                peer: self.peer,
                op,
                trace: node.as_ref().map(|(n, _)| n.clone()),
            };
            self.deliver(FinishedCall::Db(call), node, end_ts, links, deferred, sink);
        }
    }

    fn http_call(&self, ex: HttpExchange, trace: Option<NodeRef>) -> HttpCall {
        HttpCall {
            role: self.role,
            process: self.process.clone(),
            tid: ex.tid,
            local: self.local,
            peer: self.peer,
            request: ex.request,
            request_body_size: ex.request_body_size,
            status: ex.status,
            response_body_size: ex.response_body_size,
            failure: ex.failure,
            start_ts: ex.start_ts,
            end_ts: ex.end_ts,
            route: None,
            llm: ex.llm,
            tls: self.tls,
            trace,
        }
    }
}

/// The local address the kernel read when the connection's connect() returned: IPv4 only
/// (an IPv6 socket's is not at a fixed place in `struct sock`).
fn kernel_local_addr(info: &sonde_ebpf::ConnInfo, peer: Option<SocketAddr>) -> Option<SocketAddr> {
    let (addr, port) = info.client_local_addr4()?;
    if !peer.is_some_and(|p| p.is_ipv4()) {
        return None;
    }
    Some(SocketAddr::new(std::net::Ipv4Addr::from(addr).into(), port))
}

fn errno_name(errno: u32) -> &'static str {
    match errno as i32 {
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "connection_error",
    }
}
