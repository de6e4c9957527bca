//! Trace trees: where each call's span sits, chosen when its request starts.
//!
//! `context` reads W3C trace context; `node` is one call's place in a trace (its span id and
//! its parent, which may still change while the call is in flight); `links` joins calls into
//! trees: a client call to the server request its thread is serving (in a process), and a
//! server request to the client call at the other end of its connection (across processes
//! on this host). With `inject_traceparent` the kernel chooses some ids itself (the trace of
//! a request a thread serves, the span of a request it sends with a header): the links give
//! them to those spans.
pub mod context;
pub mod links;
pub mod node;

pub use links::{Injected, LinkCounts, TraceLinks};
pub use node::{NodeRef, TraceNode};
