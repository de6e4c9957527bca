//! Finished calls as one process saw them: HTTP requests with their responses, database
//! operations (Redis commands, PostgreSQL queries) with their replies.
use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::process::ProcessInfo;
use crate::protocols::http1::framing::RequestHead;
use crate::protocols::llm::LlmCall;
use crate::traces::NodeRef;

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

/// One request and its outcome, before the connection adds who and where.
#[derive(Clone, Debug)]
pub struct HttpExchange {
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
    /// The thread that sent or received the request.
    pub tid: u32,
    /// What an LLM API call carried (see `protocols::llm`).
    pub llm: Option<Box<LlmCall>>,
    /// The number its session gave the request when it started (see `Finished::started`).
    pub seq: u64,
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
    /// What an LLM API call carried (see `protocols::llm`).
    pub llm: Option<Box<LlmCall>>,
    /// Read from TLS plaintext (HTTPS).
    pub tls: bool,
    /// Its span's place in a trace, when the connection table linked it.
    pub trace: Option<NodeRef>,
}

impl HttpCall {
    /// `url.scheme`.
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

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
    /// Its span's place in a trace, when the connection table linked it.
    pub trace: Option<NodeRef>,
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
    pub collection: Option<Arc<str>>,
    /// `db.query.text`, with every value masked (shared by the operations of one
    /// prepared statement).
    pub query_text: Option<Arc<str>>,
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
    /// The number its session gave the operation when it started (see `Finished::started`).
    pub seq: u64,
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
