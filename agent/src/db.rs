//! Database operations (Redis commands, PostgreSQL queries) as one process saw them.
use std::net::SocketAddr;
use std::sync::Arc;

use crate::conn::Role;
use crate::process::ProcessInfo;

/// `db.system.name` values.
pub const REDIS: &str = "redis";
pub const POSTGRESQL: &str = "postgresql";

/// One database operation and its outcome, as seen by one process (the client that sent it
/// or the server that answered it).
#[derive(Clone, Debug)]
pub struct DbCall {
    pub role: Role,
    pub process: Arc<ProcessInfo>,
    pub tid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub op: DbOperation,
}

/// What a protocol session reports for one operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbOperation {
    pub system: &'static str,
    /// `db.operation.name`: `GET`, `CONFIG GET`, `SELECT`, ... Shared, like the namespace:
    /// the same few names recur on every operation of a connection.
    pub operation: Arc<str>,
    /// `db.namespace`: the Redis database index, the PostgreSQL database.
    pub namespace: Arc<str>,
    /// `db.collection.name`, where one is known.
    pub collection: Option<String>,
    /// `db.query.text`, with every value masked.
    pub query_text: Option<String>,
    /// `sonde.db.statement.name`: the prepared statement run, when its text is unknown.
    pub statement_name: Option<String>,
    /// `db.response.status_code`: the Redis error prefix or the SQLSTATE.
    pub status_code: Option<String>,
    /// `db.response.returned_rows`.
    pub returned_rows: Option<u64>,
    /// `db.operation.batch.size`: statements in one simple query, when more than one.
    pub batch_size: Option<u64>,
    /// Monotonic ns: the command's first byte, the end of its reply.
    pub start_ts: u64,
    pub end_ts: u64,
    pub tid: u32,
}

/// A database protocol session: one connection's requests and responses paired in order.
/// The connection table drives every database protocol through this.
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
}

impl DbCall {
    /// `server.address` / `server.port`: the peer for a client, this socket for a server.
    pub fn server(&self) -> Option<SocketAddr> {
        match self.role {
            Role::Client => self.peer,
            Role::Server => self.local,
        }
    }

    /// `error.type`: the response status code of a failed operation.
    pub fn error_type(&self) -> Option<&str> {
        self.op.status_code.as_deref()
    }
}
