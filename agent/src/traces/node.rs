//! One call's place in a trace: its span id, fixed when its request starts, and its parent,
//! which a link made later (the other end of a connection seen after this one) may still
//! set while the call is in flight.
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use super::context::{new_span_id, new_trace_id, TraceParent};
use crate::identity::process::ProcessInfo;

pub type NodeRef = Rc<TraceNode>;

#[derive(Debug)]
pub struct TraceNode {
    pub span_id: u64,
    parent: RefCell<Parent>,
    /// Its span was built: a parent set after this comes too late.
    finished: Cell<bool>,
    /// For a client call linked to the server request at the other end of its connection:
    /// the half of their service-graph edge that finished first (see `telemetry::graph`).
    /// (Boxed: most calls never have one, and every request in flight has a node.)
    edge: RefCell<Option<Box<EdgeHalf>>>,
    /// A server request on this host is linked to this client call.
    has_server: Cell<bool>,
    /// For a server request: its number among the requests its thread serves (see
    /// `TraceLinks::served`); 0 for others. (32 bits keep the node in 64 bytes.)
    serving_seq: Cell<u32>,
}

/// The first half of a service-graph edge to finish, waiting for the other.
#[derive(Clone, Debug, Default)]
pub enum EdgeHalf {
    #[default]
    None,
    Server(Served),
    Client(Served),
}

#[derive(Clone, Debug)]
enum Parent {
    /// The first span of a new trace.
    /// (The trace id's two halves: a `u128` would align the node to 16 bytes, and every
    /// request in flight has a node.)
    Root(u64, u64),
    /// A span of a process sonde does not see, named by a `traceparent` header.
    Remote(Box<TraceParent>),
    /// A span sonde made: its trace is this one's.
    Node(NodeRef),
    /// The trace named in a header the kernel sent (see `TraceNode::sent`), and the span
    /// this one is a child of while that span is in it.
    Sent(Box<(u128, Option<NodeRef>)>),
}

/// One end of a call between two services, as its span reported it.
#[derive(Clone, Debug)]
pub struct Served {
    pub process: Arc<ProcessInfo>,
    pub seconds: f64,
    pub failed: bool,
}

/// Where a span sits, read when it is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub trace_id: u128,
    pub parent_span_id: Option<u64>,
    /// The sampled flag of a `traceparent` at the root of the chain, if one is.
    pub parent_sampled: Option<bool>,
}

/// Longest chain of parents followed: a chain is as deep as the calls nested in flight, and
/// a cycle (which only a wrong link could make) must not hang the capture thread.
const MAX_DEPTH: usize = 64;

impl TraceNode {
    /// A node of a new trace, or under `remote` when a `traceparent` names a parent.
    pub fn new(remote: Option<TraceParent>) -> NodeRef {
        match remote {
            Some(p) => TraceNode::make(new_span_id(), Parent::Remote(Box::new(p))),
            None => TraceNode::root_of(new_trace_id()),
        }
    }

    /// The first span of trace `trace_id` (one the kernel chose).
    pub fn root_of(trace_id: u128) -> NodeRef {
        TraceNode::make(
            new_span_id(),
            Parent::Root((trace_id >> 64) as u64, trace_id as u64),
        )
    }

    /// The span of a request that went out with a `traceparent` the kernel added: its id and
    /// its trace are the header's, whatever happens to `parent` later (a link made after
    /// the header left may move the parent into another trace: the span then starts the
    /// header's trace, since that is the trace the other end continues).
    pub fn sent(span_id: u64, trace_id: u128, parent: Option<&NodeRef>) -> NodeRef {
        TraceNode::make(span_id, Parent::Sent(Box::new((trace_id, parent.cloned()))))
    }

    fn make(span_id: u64, parent: Parent) -> NodeRef {
        Rc::new(TraceNode {
            span_id,
            parent: RefCell::new(parent),
            finished: Cell::new(false),
            edge: RefCell::new(None),
            has_server: Cell::new(false),
            serving_seq: Cell::new(0),
        })
    }

    /// A node whose parent is `parent`.
    pub fn child_of(parent: &NodeRef) -> NodeRef {
        let node = TraceNode::new(None);
        node.set_parent(parent);
        node
    }

    pub fn set_parent(&self, parent: &NodeRef) {
        *self.parent.borrow_mut() = Parent::Node(parent.clone());
    }

    /// The parent node, when it is a span sonde made.
    pub fn parent_node(&self) -> Option<NodeRef> {
        match &*self.parent.borrow() {
            Parent::Node(p) => Some(p.clone()),
            Parent::Sent(sent) => sent.1.clone(),
            _ => None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished.get()
    }

    pub fn mark_finished(&self) {
        self.finished.set(true);
    }

    /// A server request on this host was linked to this client call.
    pub fn expect_server(&self) {
        self.has_server.set(true);
    }

    pub fn has_server(&self) -> bool {
        self.has_server.get()
    }

    pub(super) fn set_serving_seq(&self, seq: u32) {
        self.serving_seq.set(seq);
    }

    pub(super) fn serving_seq(&self) -> u32 {
        self.serving_seq.get()
    }

    /// Leaves one end's half of the edge; returns the other end's when it came first.
    pub fn meet(&self, half: EdgeHalf) -> EdgeHalf {
        let mut edge = self.edge.borrow_mut();
        match edge.take() {
            None => {
                *edge = Some(Box::new(half));
                EdgeHalf::None
            }
            Some(other) => *other,
        }
    }

    /// Its trace, its parent span, and the sampled flag of a remote root.
    pub fn place(&self) -> Place {
        if let Parent::Sent(sent) = &*self.parent.borrow() {
            let (trace_id, parent) = &**sent;
            let under = parent.as_ref().map(|p| (p.span_id, p.place()));
            return match under {
                Some((span_id, p)) if p.trace_id == *trace_id => Place {
                    trace_id: *trace_id,
                    parent_span_id: Some(span_id),
                    parent_sampled: p.parent_sampled,
                },
                _ => Place {
                    trace_id: *trace_id,
                    parent_span_id: None,
                    parent_sampled: None,
                },
            };
        }
        let parent_span_id = match &*self.parent.borrow() {
            Parent::Root(..) | Parent::Sent(_) => None,
            Parent::Remote(p) => Some(p.span_id),
            Parent::Node(n) => Some(n.span_id),
        };
        let mut current = self.parent.borrow().clone();
        for _ in 0..MAX_DEPTH {
            match current {
                Parent::Root(hi, lo) => {
                    return Place {
                        trace_id: (hi as u128) << 64 | lo as u128,
                        parent_span_id,
                        parent_sampled: None,
                    }
                }
                Parent::Remote(p) => {
                    return Place {
                        trace_id: p.trace_id,
                        parent_span_id,
                        parent_sampled: Some(p.sampled),
                    }
                }
                Parent::Node(n) => {
                    let next = n.parent.borrow().clone();
                    current = next;
                }
                // A span whose ids went out in a header: its trace is the header's.
                Parent::Sent(sent) => {
                    return Place {
                        trace_id: sent.0,
                        parent_span_id,
                        parent_sampled: None,
                    }
                }
            }
        }
        // A cycle: this span starts a trace of its own.
        Place {
            trace_id: (self.span_id as u128) << 64 | self.span_id as u128,
            parent_span_id: None,
            parent_sampled: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_in_its_parents_trace_even_when_the_parent_is_linked_later() {
        let server = TraceNode::new(None);
        let child = TraceNode::child_of(&server);
        let before = child.place();
        assert_eq!(before.trace_id, server.place().trace_id);
        assert_eq!(before.parent_span_id, Some(server.span_id));
        // The client at the other end of the server's connection is seen afterwards.
        let tp = TraceParent {
            trace_id: 7,
            span_id: 9,
            sampled: true,
        };
        let client = TraceNode::new(Some(tp));
        server.set_parent(&client);
        let after = child.place();
        assert_eq!(after.trace_id, 7);
        assert_eq!(after.parent_span_id, Some(server.span_id));
        assert_eq!(after.parent_sampled, Some(true));
        assert_eq!(server.place().parent_span_id, Some(client.span_id));
        assert_eq!(client.place().parent_span_id, Some(9));
    }

    #[test]
    fn a_node_stays_small() {
        // One per request in flight: 10,000 connections busy at once hold 20,000.
        assert!(
            std::mem::size_of::<TraceNode>() <= 64,
            "{}",
            std::mem::size_of::<TraceNode>()
        );
    }

    #[test]
    fn a_span_sent_in_a_header_keeps_the_headers_trace() {
        let served = TraceNode::root_of(0xabc);
        let call = TraceNode::sent(0x55, 0xabc, Some(&served));
        let below = TraceNode::child_of(&call);
        assert_eq!(call.place().parent_span_id, Some(served.span_id));
        assert_eq!(below.place().trace_id, 0xabc);
        // The server request is linked to a client in another trace after the header left:
        // the call starts the header's trace, as the other end sees it.
        let caller = TraceNode::root_of(0xdef);
        served.set_parent(&caller);
        let place = call.place();
        assert_eq!((place.trace_id, place.parent_span_id), (0xabc, None));
        assert_eq!(below.place().trace_id, 0xabc);
        assert_eq!(call.span_id, 0x55);
    }

    #[test]
    fn a_cycle_ends_in_a_trace_of_its_own() {
        let a = TraceNode::new(None);
        let b = TraceNode::child_of(&a);
        a.set_parent(&b);
        let place = a.place();
        assert_eq!(place.parent_span_id, None);
        assert_ne!(place.trace_id, 0);
        // Break the cycle so the nodes are freed.
        *a.parent.borrow_mut() = Parent::Root(0, 1);
    }
}
