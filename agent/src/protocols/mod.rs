//! The protocols sonde reads, behind one interface. The connection table hands each
//! connection's bytes to its [`Session`], which frames both directions, pairs requests with
//! responses in order, and reports finished calls in a [`Finished`] (the interface is in
//! `session`).
//!
//! Adding a protocol: a folder here with its framing and its session, the classifier in
//! `agent-ebpf`, and one line in [`session_for`].
use sonde_ebpf::proto;

pub mod call;
pub mod http1;
pub mod llm;
pub mod postgres;
pub mod redis;
pub mod session;
pub mod shared;

pub use session::{Chunk, DbSession, Finished, Readable, Session};

/// The session for a connection the kernel classified as `protocol`; `None` for one this
/// build does not parse.
pub fn session_for(protocol: u8) -> Option<Box<dyn Session>> {
    match protocol {
        proto::HTTP1 => Some(Box::new(http1::HttpSession::default())),
        proto::REDIS => Some(Box::new(redis::RedisSession::default())),
        proto::POSTGRES => Some(Box::new(postgres::PostgresSession::default())),
        _ => None,
    }
}
