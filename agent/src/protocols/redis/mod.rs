//! Redis (RESP2/RESP3): its framing and command/reply pairing.
pub mod framing;
pub mod session;

pub use session::RedisSession;
