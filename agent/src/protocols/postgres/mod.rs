//! PostgreSQL (protocol 3.0): its framing, query/result pairing, and SQL masking.
pub mod framing;
pub mod session;
pub mod sql;

pub use session::PostgresSession;
