//! Joins calls into trees, when each request starts:
//!
//! - in a process, a client call made on a thread that is serving exactly one server
//!   request becomes that request's child (thread-per-request servers; an event loop with
//!   one request in flight). A thread serving several gets the link only when exactly one of
//!   them has the client request's method and path (a reverse proxy passing the request on);
//!   otherwise sonde does not guess, and counts the call as ambiguous;
//! - across processes, a server request becomes the child of the client call at the other
//!   end of its connection. Both ends are named by the client's own address and port, which
//!   DNAT (a Kubernetes Service) leaves alone, and requests pair in order, as pipelining
//!   requires. Whichever end is seen first waits for the other in a queue of its connection.
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::context::TraceParent;
use super::node::{NodeRef, TraceNode};

/// `sonde_trace_links_total` labels: the kind of link tried...
pub const THREAD: &str = "thread";
pub const CONNECTION: &str = "connection";
pub const TRACEPARENT: &str = "traceparent";
/// A client call whose `traceparent` the kernel added (`inject_traceparent`).
pub const INJECTED: &str = "injected";
/// ...and what came of it.
pub const LINKED: &str = "linked";
pub const LINKED_BY_PATH: &str = "linked_by_path";
pub const AMBIGUOUS: &str = "ambiguous";
/// The server span was already built when its client call was seen.
pub const TOO_LATE: &str = "too_late";
/// The kernel's header starts a new trace with the call (its thread served no request).
pub const NEW_TRACE: &str = "new_trace";
/// The kernel's header names the trace of the request its thread serves, but no request
/// the thread serves here is in that trace (its trace came from a client on this host
/// that sent no header): the call keeps the header's ids, as the first span of that trace.
pub const MISMATCH: &str = "mismatch";

/// Every (kind, result) counted, for exporting them at zero from the start.
pub const LINK_OUTCOMES: [(&str, &str); 9] = [
    (THREAD, LINKED),
    (THREAD, LINKED_BY_PATH),
    (THREAD, AMBIGUOUS),
    (CONNECTION, LINKED),
    (CONNECTION, TOO_LATE),
    (TRACEPARENT, LINKED),
    (INJECTED, LINKED),
    (INJECTED, NEW_TRACE),
    (INJECTED, MISMATCH),
];

/// The ids in a `traceparent` the kernel added to a thread's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injected {
    pub trace_id: u128,
    pub span_id: u64,
    /// The trace is the one of the request the thread serves.
    pub child: bool,
    /// The local port of the socket it went out on (0 when not known).
    pub local_port: u16,
}

/// Threads whose queue of server requests is kept while empty (see `keeps_buffer`), at
/// most: past this many, the empty ones are dropped.
const MAX_THREADS: usize = 4096;

/// A queue that held more than a few entries at once (a pipelined connection, an event
/// loop serving many) keeps its buffer when it empties: it fills again soon, and growing it
/// anew each time cost a tenth of the capture thread at redis-benchmark -P 16. Others give
/// theirs back, so that idle keep-alive connections hold no memory.
pub(crate) fn keeps_buffer<T>(queue: &VecDeque<T>) -> bool {
    queue.capacity() > 4
}

/// Threads with kernel ids not claimed yet, at most (a thread whose request never reaches
/// a session leaves its entry; past this many, all are dropped).
const MAX_KERNEL_IDS: usize = 16_384;

/// Which end of its connection a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// One connection as the links see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEnd {
    pub tgid: u32,
    pub role: Side,
    /// The client's address and port: the peer of a server's connection, the local address
    /// of a client's. None when unknown (then no cross-process link is made).
    pub client_endpoint: Option<SocketAddr>,
}

/// What a session says of a request that just started.
#[derive(Clone, Copy, Debug)]
pub struct Start {
    pub tid: u32,
    /// Method and path hashed (0 when not HTTP).
    pub request_key: u64,
    pub traceparent: Option<TraceParent>,
}

impl Start {
    /// A request that carries no trace context and is not told apart by a path (a Redis
    /// command, a PostgreSQL query).
    pub fn untraced(tid: u32) -> Start {
        Start {
            tid,
            request_key: 0,
            traceparent: None,
        }
    }
}

/// A server request a thread is serving.
struct Serving {
    /// Its number in `TraceLinks::serving_seq` (also kept in the node): a thread's
    /// requests are in this order, which finds one in a log of their count.
    seq: u32,
    node: NodeRef,
    request_key: u64,
}

/// Requests of one end of a connection (named by the client's endpoint) that wait for
/// the other end's. Only one end waits at a time (the other's next request takes the
/// front), and an entry exists only while one does: an idle connection costs nothing.
struct Waiting {
    side: Side,
    nodes: VecDeque<NodeRef>,
}

/// Links counted since the last `take_counts`, by (kind, result).
pub type LinkCounts = Vec<(&'static str, &'static str)>;

#[derive(Default)]
pub struct TraceLinks {
    /// (tgid, tid) -> the server requests that thread is serving, oldest first.
    threads: FxHashMap<(u32, u32), VecDeque<Serving>>,
    /// The number of the last server request started (wraps).
    serving_seq: u32,
    waiting: FxHashMap<SocketAddr, Waiting>,
    counts: LinkCounts,
    /// (tgid, tid) -> the trace the kernel gave the thread's next server request.
    kernel_traces: FxHashMap<(u32, u32), u128>,
    /// (tgid, tid) -> the ids the kernel put in the thread's next client request.
    kernel_headers: FxHashMap<(u32, u32), Injected>,
}

impl TraceLinks {
    /// A request started on `conn`: its span's place.
    pub fn started(&mut self, conn: &ConnEnd, start: &Start) -> NodeRef {
        match conn.role {
            Side::Server => self.server_started(conn, start),
            Side::Client => self.client_started(conn, start),
        }
    }

    /// The kernel gave the next server request of thread (tgid, tid) trace `trace_id` (the
    /// trace of the headers it adds to the thread's calls).
    pub fn kernel_trace(&mut self, tgid: u32, tid: u32, trace_id: u128) {
        bounded_insert(&mut self.kernel_traces, (tgid, tid), trace_id);
    }

    /// The kernel added a `traceparent` with `ids` to the next client request of thread
    /// (tgid, tid).
    pub fn kernel_header(&mut self, tgid: u32, tid: u32, ids: Injected) {
        bounded_insert(&mut self.kernel_headers, (tgid, tid), ids);
    }

    fn server_started(&mut self, conn: &ConnEnd, start: &Start) -> NodeRef {
        let kernel_trace = self.kernel_traces.remove(&(conn.tgid, start.tid));
        let node = match (start.traceparent, kernel_trace) {
            (None, Some(trace_id)) => TraceNode::root_of(trace_id),
            (remote, _) => TraceNode::new(remote),
        };
        if let Some(endpoint) = conn.client_endpoint {
            match self.take_waiting(endpoint, Side::Client) {
                Some(client) => {
                    node.set_parent(&client);
                    client.expect_server();
                    self.counts.push((CONNECTION, LINKED));
                }
                None => self.wait(endpoint, Side::Server, &node),
            }
        }
        self.serving_seq = self.serving_seq.wrapping_add(1);
        node.set_serving_seq(self.serving_seq);
        let thread = (conn.tgid, start.tid);
        if self.threads.len() >= MAX_THREADS && !self.threads.contains_key(&thread) {
            self.threads.retain(|_, serving| !serving.is_empty());
        }
        self.threads.entry(thread).or_default().push_back(Serving {
            seq: self.serving_seq,
            node: node.clone(),
            request_key: start.request_key,
        });
        node
    }

    fn client_started(&mut self, conn: &ConnEnd, start: &Start) -> NodeRef {
        let thread = (conn.tgid, start.tid);
        // Only an HTTP request can carry the kernel's header, and only one on the socket it
        // went out on: the ids of a request that reached no session (its connection
        // excluded, its event lost) are dropped at the thread's next request instead.
        let injected = match start.request_key {
            0 => None,
            _ => self.kernel_headers.remove(&thread).filter(|ids| {
                let port = conn.client_endpoint.map_or(0, |e| e.port());
                ids.local_port == 0 || port == 0 || port == ids.local_port
            }),
        };
        let node = match (start.traceparent, self.threads.get(&thread)) {
            // The process's own tracing named the span this call belongs to.
            (Some(tp), _) => {
                self.counts.push((TRACEPARENT, LINKED));
                TraceNode::new(Some(tp))
            }
            (None, serving) if injected.is_some() => {
                let ids = injected.expect("checked");
                let parent = serving
                    .into_iter()
                    .flatten()
                    .find(|s| s.node.place().trace_id == ids.trace_id);
                let parent = match (ids.child, parent) {
                    (true, Some(parent)) => {
                        self.counts.push((INJECTED, LINKED));
                        Some(&parent.node)
                    }
                    (true, None) => {
                        self.counts.push((INJECTED, MISMATCH));
                        None
                    }
                    (false, _) => {
                        self.counts.push((INJECTED, NEW_TRACE));
                        None
                    }
                };
                // The other end reads these ids from the header: the span keeps them.
                TraceNode::sent(ids.span_id, ids.trace_id, parent)
            }
            (None, None) => TraceNode::new(None),
            (None, Some(serving)) => match serving.len() {
                0 => TraceNode::new(None),
                1 => {
                    self.counts.push((THREAD, LINKED));
                    TraceNode::child_of(&serving[0].node)
                }
                _ => {
                    let mut same = serving
                        .iter()
                        .filter(|s| start.request_key != 0 && s.request_key == start.request_key);
                    match (same.next(), same.next()) {
                        (Some(one), None) => {
                            self.counts.push((THREAD, LINKED_BY_PATH));
                            TraceNode::child_of(&one.node)
                        }
                        _ => {
                            self.counts.push((THREAD, AMBIGUOUS));
                            TraceNode::new(None)
                        }
                    }
                }
            },
        };
        if let Some(endpoint) = conn.client_endpoint {
            match self.take_waiting(endpoint, Side::Server) {
                Some(server) if server.is_finished() => self.counts.push((CONNECTION, TOO_LATE)),
                Some(server) => {
                    server.set_parent(&node);
                    node.expect_server();
                    self.counts.push((CONNECTION, LINKED));
                }
                None => self.wait(endpoint, Side::Client, &node),
            }
        }
        node
    }

    /// The oldest request of `side` waiting on the connection of `endpoint`.
    fn take_waiting(&mut self, endpoint: SocketAddr, side: Side) -> Option<NodeRef> {
        let w = self.waiting.get_mut(&endpoint).filter(|w| w.side == side)?;
        let front = w.nodes.pop_front();
        if w.nodes.is_empty() && !keeps_buffer(&w.nodes) {
            self.waiting.remove(&endpoint);
        }
        front
    }

    /// `node`, of `side`, waits for the other end's request.
    fn wait(&mut self, endpoint: SocketAddr, side: Side, node: &NodeRef) {
        let w = self.waiting.entry(endpoint).or_insert_with(|| Waiting {
            side,
            nodes: VecDeque::new(),
        });
        if w.side != side {
            // Cannot happen (the other side's requests were taken first); start over.
            w.side = side;
            w.nodes.clear();
        }
        w.nodes.push_back(node.clone());
    }

    /// Removes what `keep` refuses from the requests of `side` waiting on `endpoint`.
    fn drop_waiting(&mut self, endpoint: SocketAddr, side: Side, keep: impl Fn(&NodeRef) -> bool) {
        if let Some(w) = self.waiting.get_mut(&endpoint).filter(|w| w.side == side) {
            w.nodes.retain(keep);
            if w.nodes.is_empty() {
                self.waiting.remove(&endpoint);
            }
        }
    }

    /// The call of `node`, started on thread `tid` of `conn`, finished (or was given up):
    /// its span is built now, and it waits for nothing any more.
    pub fn finished(&mut self, conn: &ConnEnd, tid: u32, node: &NodeRef) {
        self.served(conn, tid, node);
        self.emitted(conn, node);
    }

    /// A server request of thread `tid` was answered: the thread no longer serves it (its
    /// span may still wait for its client, see `emitted`).
    pub fn served(&mut self, conn: &ConnEnd, tid: u32, node: &NodeRef) {
        if conn.role == Side::Server {
            let key = (conn.tgid, tid);
            if let Some(serving) = self.threads.get_mut(&key) {
                // An event loop may serve thousands at once, answered in any order (Redis
                // writes to the clients it read last first): found by number, not by a scan.
                // (Where the numbers wrapped, the order is broken for a while: a scan then.)
                let seq = node.serving_seq();
                let found = match serving.binary_search_by_key(&seq, |s| s.seq) {
                    Ok(i) if Rc::ptr_eq(&serving[i].node, node) => Some(i),
                    _ => serving.iter().position(|s| Rc::ptr_eq(&s.node, node)),
                };
                if let Some(i) = found {
                    serving.remove(i);
                }
                if serving.is_empty() && !keeps_buffer(serving) {
                    self.threads.remove(&key);
                }
            }
        }
    }

    /// The span of `node` was built: a link to it comes too late from now on.
    pub fn emitted(&mut self, conn: &ConnEnd, node: &NodeRef) {
        node.mark_finished();
        if let Some(endpoint) = conn.client_endpoint {
            self.drop_waiting(endpoint, conn.role, |n| !Rc::ptr_eq(n, node));
        }
    }

    /// `conn` closed: its end waits for nothing more (its calls were given up or finished
    /// before this).
    pub fn closed(&mut self, conn: &ConnEnd) {
        let Some(endpoint) = conn.client_endpoint else {
            return;
        };
        match conn.role {
            Side::Client => self.drop_waiting(endpoint, Side::Client, |_| false),
            // Answered requests whose spans wait for their client (see `emitted`) may still
            // be claimed: a server often closes right after its answer.
            Side::Server => self.drop_waiting(endpoint, Side::Server, |n| !n.is_finished()),
        }
    }

    /// The links counted since the last call.
    pub fn take_counts(&mut self) -> std::vec::Drain<'_, (&'static str, &'static str)> {
        self.counts.drain(..)
    }

    /// Threads with server requests in flight, and connections with requests waiting for
    /// their other end (for tests of boundedness).
    /// (Empty queues kept for reuse, see `keeps_buffer`, do not count.)
    pub fn len(&self) -> (usize, usize) {
        (
            self.threads.values().filter(|s| !s.is_empty()).count(),
            self.waiting
                .values()
                .filter(|w| !w.nodes.is_empty())
                .count(),
        )
    }
}

/// Inserts into a map that may hold entries nobody claims: past `MAX_KERNEL_IDS` it starts
/// over.
fn bounded_insert<V>(map: &mut FxHashMap<(u32, u32), V>, key: (u32, u32), value: V) {
    if map.len() >= MAX_KERNEL_IDS {
        map.clear();
    }
    map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(tgid: u32, role: Side, endpoint: &str) -> ConnEnd {
        ConnEnd {
            tgid,
            role,
            client_endpoint: Some(endpoint.parse().unwrap()),
        }
    }

    fn start(tid: u32, key: u64) -> Start {
        Start {
            tid,
            request_key: key,
            traceparent: None,
        }
    }

    #[test]
    fn a_chain_across_two_processes_is_one_tree_whichever_end_is_seen_first() {
        for client_first in [true, false] {
            let mut links = TraceLinks::default();
            // Process 1 (gateway) serves a request on thread 11 and calls process 2.
            let entry = end(1, Side::Server, "10.0.0.9:5000");
            let to_backend = end(1, Side::Client, "127.0.0.1:40000");
            let backend = end(2, Side::Server, "127.0.0.1:40000");
            let served = links.started(&entry, &start(11, 1));
            let (call, handled) = if client_first {
                let call = links.started(&to_backend, &start(11, 2));
                (call, links.started(&backend, &start(21, 2)))
            } else {
                let handled = links.started(&backend, &start(21, 2));
                (links.started(&to_backend, &start(11, 2)), handled)
            };
            // The backend's own database call, on the thread serving.
            let to_db = end(2, Side::Client, "127.0.0.1:41000");
            let query = links.started(&to_db, &start(21, 0));
            assert_eq!(call.place().parent_span_id, Some(served.span_id));
            assert_eq!(handled.place().parent_span_id, Some(call.span_id));
            assert_eq!(query.place().parent_span_id, Some(handled.span_id));
            let trace = served.place().trace_id;
            for n in [&call, &handled, &query] {
                assert_eq!(n.place().trace_id, trace);
            }
            let counts: Vec<_> = links.take_counts().collect();
            assert_eq!(
                counts.iter().filter(|c| **c == (THREAD, LINKED)).count(),
                2,
                "{counts:?}"
            );
            assert_eq!(
                counts
                    .iter()
                    .filter(|c| **c == (CONNECTION, LINKED))
                    .count(),
                1
            );
            for (conn, tid, node) in [
                (&to_db, 21, &query),
                (&backend, 21, &handled),
                (&to_backend, 11, &call),
                (&entry, 11, &served),
            ] {
                links.finished(conn, tid, node);
            }
            for conn in [entry, to_backend, backend, to_db] {
                links.closed(&conn);
            }
            assert_eq!(links.len(), (0, 0));
        }
    }

    #[test]
    fn pipelined_requests_pair_in_order() {
        let mut links = TraceLinks::default();
        let client = end(1, Side::Client, "127.0.0.1:40000");
        let server = end(2, Side::Server, "127.0.0.1:40000");
        let calls: Vec<_> = (0..3)
            .map(|_| links.started(&client, &start(1, 0)))
            .collect();
        let handled: Vec<_> = (0..3)
            .map(|_| links.started(&server, &start(2, 0)))
            .collect();
        for (c, s) in calls.iter().zip(&handled) {
            assert_eq!(s.place().parent_span_id, Some(c.span_id));
        }
    }

    #[test]
    fn a_thread_serving_several_requests_links_only_by_an_equal_path() {
        let mut links = TraceLinks::default();
        let proxy = 1;
        let a = links.started(&end(proxy, Side::Server, "10.0.0.1:1"), &start(5, 100));
        let _b = links.started(&end(proxy, Side::Server, "10.0.0.1:2"), &start(5, 200));
        let upstream = end(proxy, Side::Client, "127.0.0.1:3");
        let passed_on = links.started(&upstream, &start(5, 100));
        assert_eq!(passed_on.place().parent_span_id, Some(a.span_id));
        let other = links.started(&upstream, &start(5, 300));
        assert_eq!(other.place().parent_span_id, None);
        let counts: Vec<_> = links.take_counts().collect();
        assert_eq!(counts, [(THREAD, LINKED_BY_PATH), (THREAD, AMBIGUOUS)]);
    }

    #[test]
    fn an_event_loop_answering_in_any_order_keeps_the_requests_it_still_serves() {
        let mut links = TraceLinks::default();
        let server = |port: u16| end(3, Side::Server, &format!("10.0.0.1:{port}"));
        let nodes: Vec<NodeRef> = (1..=5)
            .map(|p| links.started(&server(p), &start(9, 0)))
            .collect();
        // Redis answers the clients it read last first.
        for i in [3, 4, 1, 0] {
            links.served(&server(i as u16 + 1), 9, &nodes[i]);
        }
        assert_eq!(links.len().0, 1);
        // The one still served is the parent of the thread's next call.
        let call = links.started(&end(3, Side::Client, "127.0.0.1:6000"), &start(9, 0));
        assert_eq!(call.place().parent_span_id, Some(nodes[2].span_id));
        links.served(&server(3), 9, &nodes[2]);
        assert_eq!(links.len().0, 0);
    }

    #[test]
    fn emptied_queues_kept_for_reuse_are_bounded() {
        let mut links = TraceLinks::default();
        for tid in 0..(MAX_THREADS as u32 + 100) {
            // Five at once: the thread's queue grows past the size given back.
            let nodes: Vec<NodeRef> = (0..5)
                .map(|_| links.started(&end(3, Side::Server, "10.0.0.1:1"), &start(tid, 0)))
                .collect();
            for node in &nodes {
                links.served(&end(3, Side::Server, "10.0.0.1:1"), tid, node);
            }
            assert!(links.threads.len() <= MAX_THREADS, "{tid}");
        }
        assert_eq!(links.len().0, 0);
    }

    #[test]
    fn the_request_numbers_may_wrap() {
        let mut links = TraceLinks {
            serving_seq: u32::MAX - 1,
            ..TraceLinks::default()
        };
        let server = |port: u16| end(3, Side::Server, &format!("10.0.0.1:{port}"));
        let nodes: Vec<NodeRef> = (1..=4)
            .map(|p| links.started(&server(p), &start(9, 0)))
            .collect();
        for (i, node) in nodes.iter().enumerate().rev() {
            links.served(&server(i as u16 + 1), 9, node);
        }
        assert_eq!(links.len().0, 0);
    }

    #[test]
    fn a_server_span_built_before_its_client_is_seen_counts_too_late() {
        let mut links = TraceLinks::default();
        let server = end(2, Side::Server, "127.0.0.1:40000");
        let handled = links.started(&server, &start(2, 0));
        handled.mark_finished();
        let call = links.started(&end(1, Side::Client, "127.0.0.1:40000"), &start(1, 0));
        assert_eq!(handled.place().parent_span_id, None);
        assert_eq!(call.place().parent_span_id, None);
        let counts: Vec<_> = links.take_counts().collect();
        assert_eq!(counts, [(CONNECTION, TOO_LATE)]);
    }

    #[test]
    fn a_server_that_closed_after_answering_can_still_be_claimed_until_its_span_is_built() {
        let mut links = TraceLinks::default();
        let server = end(2, Side::Server, "127.0.0.1:40000");
        let handled = links.started(&server, &start(2, 0));
        // Answered, its span held for the client end; then the server closes.
        links.served(&server, 2, &handled);
        links.closed(&server);
        let client = end(1, Side::Client, "127.0.0.1:40000");
        let call = links.started(&client, &start(1, 0));
        assert_eq!(handled.place().parent_span_id, Some(call.span_id));
        links.emitted(&server, &handled);
        links.finished(&client, 1, &call);
        links.closed(&client);
        assert_eq!(links.len(), (0, 0));
    }

    #[test]
    fn an_application_traceparent_is_the_parent_of_its_client_call() {
        let mut links = TraceLinks::default();
        let tp = TraceParent {
            trace_id: 0xabc,
            span_id: 0xdef,
            sampled: true,
        };
        let served = links.started(&end(1, Side::Server, "10.0.0.1:1"), &start(5, 1));
        let call = links.started(
            &end(1, Side::Client, "127.0.0.1:3"),
            &Start {
                traceparent: Some(tp),
                ..start(5, 2)
            },
        );
        assert_ne!(call.place().parent_span_id, Some(served.span_id));
        assert_eq!(call.place().parent_span_id, Some(0xdef));
        assert_eq!(call.place().trace_id, 0xabc);
    }

    #[test]
    fn a_server_request_from_an_unseen_client_keeps_its_traceparent() {
        let mut links = TraceLinks::default();
        let tp = TraceParent {
            trace_id: 0xabc,
            span_id: 0xdef,
            sampled: false,
        };
        let served = links.started(
            &end(1, Side::Server, "10.9.9.9:1234"),
            &Start {
                traceparent: Some(tp),
                ..start(5, 1)
            },
        );
        let place = served.place();
        assert_eq!(
            (place.trace_id, place.parent_span_id, place.parent_sampled),
            (0xabc, Some(0xdef), Some(false))
        );
        assert_eq!(links.take_counts().count(), 0);
    }

    #[test]
    fn the_kernels_ids_name_the_spans_they_went_out_with() {
        let mut links = TraceLinks::default();
        let (tgid, tid) = (7, 70);
        let entry = end(tgid, Side::Server, "10.9.9.9:1234");
        let upstream = end(tgid, Side::Client, "127.0.0.1:41000");
        // The kernel gave the thread's next request trace 0xabc, then added a header with
        // span id 0x55 to the call that thread made while serving it.
        links.kernel_trace(tgid, tid, 0xabc);
        let served = links.started(&entry, &start(tid, 1));
        assert_eq!(served.place().trace_id, 0xabc);
        // A Redis command of the thread does not take the header's ids.
        let ids = Injected {
            trace_id: 0xabc,
            span_id: 0x55,
            child: true,
            local_port: 41000,
        };
        links.kernel_header(tgid, tid, ids);
        let cache = end(tgid, Side::Client, "127.0.0.1:42000");
        let command = links.started(&cache, &start(tid, 0));
        assert_ne!(command.span_id, 0x55);
        let call = links.started(&upstream, &start(tid, 2));
        assert_eq!(call.span_id, 0x55);
        assert_eq!(call.place().trace_id, 0xabc);
        assert_eq!(call.place().parent_span_id, Some(served.span_id));
        // A thread that serves nothing starts a trace with its call.
        links.kernel_header(
            tgid,
            99,
            Injected {
                trace_id: 0xdef,
                span_id: 0x66,
                child: false,
                local_port: 0,
            },
        );
        let alone = links.started(&upstream, &start(99, 3));
        let place = alone.place();
        assert_eq!((alone.span_id, place.trace_id), (0x66, 0xdef));
        assert_eq!(place.parent_span_id, None);
        let counts: Vec<_> = links.take_counts().collect();
        assert_eq!(
            counts,
            [(THREAD, LINKED), (INJECTED, LINKED), (INJECTED, NEW_TRACE)]
        );
    }

    #[test]
    fn a_header_in_another_trace_than_the_served_request_keeps_its_ids() {
        let mut links = TraceLinks::default();
        // The kernel gave the request trace 0xabc, but its client on this host sent no
        // header: sonde puts the request in that client's trace.
        links.kernel_trace(2, 20, 0xabc);
        let server = end(2, Side::Server, "127.0.0.1:40000");
        let served = links.started(&server, &start(20, 1));
        let caller = links.started(&end(1, Side::Client, "127.0.0.1:40000"), &start(10, 1));
        assert_eq!(served.place().trace_id, caller.place().trace_id);
        links.kernel_header(
            2,
            20,
            Injected {
                trace_id: 0xabc,
                span_id: 0x77,
                child: true,
                local_port: 0,
            },
        );
        let call = links.started(&end(2, Side::Client, "127.0.0.1:43000"), &start(20, 2));
        let place = call.place();
        // What the far end reads in the header, not a parent in another trace.
        assert_eq!((call.span_id, place.trace_id), (0x77, 0xabc));
        assert_eq!(place.parent_span_id, None);
        assert!(links.take_counts().any(|c| c == (INJECTED, MISMATCH)));
    }

    #[test]
    fn kernel_ids_nobody_claims_stay_bounded() {
        let mut links = TraceLinks::default();
        for tid in 0..3 * MAX_KERNEL_IDS as u32 {
            links.kernel_trace(1, tid, 1);
            links.kernel_header(
                1,
                tid,
                Injected {
                    trace_id: 1,
                    span_id: 1,
                    child: false,
                    local_port: 0,
                },
            );
        }
        assert!(links.kernel_traces.len() <= MAX_KERNEL_IDS);
        assert!(links.kernel_headers.len() <= MAX_KERNEL_IDS);
    }

    #[test]
    fn an_off_host_client_leaves_nothing_behind() {
        let mut links = TraceLinks::default();
        let conn = end(2, Side::Server, "10.1.2.3:5555");
        for _ in 0..1000 {
            let n = links.started(&conn, &start(2, 0));
            links.finished(&conn, 2, &n);
        }
        assert_eq!(links.len(), (0, 0));
        links.closed(&conn);
        assert_eq!(links.len(), (0, 0));
    }
}
