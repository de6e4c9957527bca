//! One PostgreSQL connection: queries paired with their results in the order the server
//! answers them, for the simple protocol (`Q`) and the extended one (Parse, Bind, Execute,
//! Sync), pipelines included.
//!
//! The frontend messages are turned into a queue of what the backend owes, in order:
//! a simple query is answered up to its ReadyForQuery; an Execute up to its
//! CommandComplete (or EmptyQueryResponse, PortalSuspended, ErrorResponse); a Sync by a
//! ReadyForQuery. After an error the server skips everything up to the next Sync, and so
//! does the queue. Notices, parameter changes and notifications may arrive at any time and
//! answer nothing.
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::protocols::call::{DbOperation, POSTGRESQL};
use crate::protocols::postgres::framing::{
    cstr, PgError, PgMessage, PgStream, ENCRYPTION_ANSWER, UNTYPED,
};
use crate::protocols::postgres::sql::{summarize, SqlSummary};
use crate::protocols::session::{DbSession, RequestNumbers};
use crate::protocols::shared::{interned, shared_name};
use crate::traces::links::Start;

/// Operations waiting for results on one connection, at most.
const MAX_PENDING: usize = 4096;
/// Prepared statements and portals remembered per connection, at most each.
const MAX_STATEMENTS: usize = 1024;
/// CommandComplete names kept per connection (see `shared_name`).
const MAX_TAG_NAMES: usize = 16;

const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// The SQL an operation runs, as far as it is known.
#[derive(Clone, Debug, Default)]
struct Statement {
    sql: Option<Arc<SqlSummary>>,
    /// The prepared statement's name when its text was never seen (prepared before sonde
    /// started watching the connection).
    name: Option<String>,
}

#[derive(Debug, Default)]
struct Op {
    start_ts: u64,
    tid: u32,
    /// Its number on the connection (see `Finished::started`), given when it is queued.
    seq: u64,
    statement: Statement,
    data_rows: u64,
    /// Operation names and row counts from each CommandComplete.
    completions: Vec<(Arc<str>, Option<u64>)>,
    sqlstate: Option<String>,
}

#[derive(Debug)]
enum Pending {
    /// StartupMessage: authentication, then ReadyForQuery.
    Startup,
    /// SSLRequest or GSSENCRequest: one bare byte.
    Encryption,
    /// A `Q` message: everything up to ReadyForQuery.
    Simple(Op),
    /// Parse/Bind and an Execute: up to CommandComplete or an error.
    Execute(Op),
    /// Parse/Bind without an Execute before a Sync (preparing a statement): a span only
    /// when it fails.
    Prepare(Op),
    /// ReadyForQuery.
    Sync,
    /// A FunctionCall: answered up to ReadyForQuery; not a query, no span.
    Function,
}

/// Pairs the queries and results of one PostgreSQL connection.
pub struct PostgresSession {
    frontend: PgStream,
    backend: PgStream,
    pending: VecDeque<Pending>,
    /// Operations given up since `take_dropped` was last called (`MAX_PENDING`).
    dropped: u64,
    /// The Parse/Bind messages before the next Execute.
    open: Option<Op>,
    statements: FxHashMap<Vec<u8>, Arc<SqlSummary>>,
    portals: FxHashMap<Vec<u8>, Statement>,
    /// `db.namespace`: the database named in the StartupMessage (empty when not seen).
    database: Arc<str>,
    encrypted: bool,
    /// The server skips messages up to the next Sync after an error.
    skip_to_sync: bool,
    /// Frontend framing was lost: it resumes after the next ReadyForQuery, when the client
    /// has nothing in flight.
    frontend_waits_for_ready: bool,
    /// Backend framing was lost: it resumes at the first backend bytes after a new query.
    backend_waits_for_query: bool,
    backend_may_resync: bool,
    messages: Vec<PgMessage>,
    /// The operations' numbers, and the operations queued since `take_started` (see
    /// `Finished::started`).
    numbers: RequestNumbers,
    started: Vec<(u64, Start)>,
    /// CommandComplete names met lately (`SELECT`, `UPDATE`): one seen before costs no
    /// allocation.
    tag_names: Vec<Arc<str>>,
}

impl Default for PostgresSession {
    fn default() -> Self {
        Self::new()
    }
}

impl DbSession for PostgresSession {
    type Error = PgError;
    const SYSTEM: &'static str = POSTGRESQL;

    fn error_kind(error: PgError) -> &'static str {
        error.as_str()
    }

    /// The server accepted SSL or GSS encryption: nothing more can be read.
    fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Bytes were lost: pending operations are dropped and both directions start over at
    /// the next event. The database and prepared statements are kept.
    fn restart(&mut self) {
        self.frontend = PgStream::new(true);
        self.backend = PgStream::new(false);
        self.pending.clear();
        self.open = None;
        self.skip_to_sync = false;
        self.frontend_waits_for_ready = false;
        self.backend_waits_for_query = false;
        self.backend_may_resync = false;
    }

    fn pending(&self) -> usize {
        self.pending.len()
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    fn take_started(&mut self, out: &mut Vec<(u64, Start)>) {
        out.append(&mut self.started);
    }

    fn unfinished(&self) -> bool {
        self.frontend.in_message() || self.backend.in_message()
    }

    fn feed(
        &mut self,
        from_client: bool,
        payload: &[u8],
        gap: u64,
        ts: u64,
        tid: u32,
        done: &mut Vec<DbOperation>,
    ) -> Option<PgError> {
        if self.encrypted {
            return None;
        }
        if !from_client && self.backend.is_lost() && self.backend_may_resync {
            self.backend.resync();
            self.backend_may_resync = false;
        }
        if from_client && self.frontend.is_lost() && self.backend.is_lost() && starts_query(payload)
        {
            // Both directions lost: no ReadyForQuery will be seen to resume the frontend at;
            // a write that starts like a query is the best boundary left.
            self.frontend.resync();
            self.frontend_waits_for_ready = false;
        }
        let mut messages = std::mem::take(&mut self.messages);
        messages.clear();
        let stream = if from_client {
            &mut self.frontend
        } else {
            &mut self.backend
        };
        let mut error = stream.feed(payload, ts, &mut messages).err();
        if gap > 0 && error.is_none() {
            error = stream.gap(gap, &mut messages).err();
        }
        for m in messages.drain(..) {
            if from_client {
                self.on_frontend(m, tid);
            } else {
                self.on_backend(m, done);
            }
        }
        self.messages = messages;
        if error.is_some() {
            if from_client {
                self.frontend_waits_for_ready = true;
            } else {
                // What was owed is lost with the bytes that carried it.
                self.pending.clear();
                self.backend_waits_for_query = true;
            }
        }
        error
    }
}

impl PostgresSession {
    pub fn new() -> PostgresSession {
        PostgresSession {
            frontend: PgStream::new(true),
            backend: PgStream::new(false),
            pending: VecDeque::new(),
            dropped: 0,
            open: None,
            statements: FxHashMap::default(),
            portals: FxHashMap::default(),
            database: interned(""),
            encrypted: false,
            skip_to_sync: false,
            frontend_waits_for_ready: false,
            backend_waits_for_query: false,
            backend_may_resync: false,
            messages: Vec::new(),
            numbers: RequestNumbers::default(),
            started: Vec::new(),
            tag_names: Vec::new(),
        }
    }

    fn on_frontend(&mut self, m: PgMessage, tid: u32) {
        if self.backend_waits_for_query && matches!(m.tag, b'Q' | b'P' | b'B' | b'E') {
            // A client that sends a new query has read the previous results: the next
            // backend bytes start a message.
            self.backend_waits_for_query = false;
            self.backend_may_resync = true;
        }
        let op = |ts| Op {
            start_ts: ts,
            tid,
            ..Op::default()
        };
        match m.tag {
            UNTYPED => self.on_untyped(&m.body),
            b'Q' => {
                let mut simple = op(m.ts);
                simple.statement.sql = Some(Arc::new(summarize(&text(cstr(&m.body).0))));
                self.push(Pending::Simple(simple));
            }
            b'P' => {
                let (name, rest) = cstr(&m.body);
                let sql = Arc::new(summarize(&text(cstr(rest).0)));
                if self.statements.len() >= MAX_STATEMENTS {
                    self.statements.clear();
                }
                self.statements.insert(name.to_vec(), sql.clone());
                let open = self.open.get_or_insert_with(|| op(m.ts));
                if open.statement.sql.is_none() {
                    open.statement.sql = Some(sql);
                }
            }
            b'B' => {
                let (portal, rest) = cstr(&m.body);
                let (name, _) = cstr(rest);
                let statement = match self.statements.get(name) {
                    Some(sql) => Statement {
                        sql: Some(sql.clone()),
                        name: None,
                    },
                    None => Statement {
                        sql: None,
                        name: Some(text(name)),
                    },
                };
                if let Some(known) = self.portals.get_mut(portal) {
                    // The unnamed portal, bound again for each execution: no new key.
                    *known = statement.clone();
                } else {
                    if self.portals.len() >= MAX_STATEMENTS {
                        self.portals.clear();
                    }
                    self.portals.insert(portal.to_vec(), statement.clone());
                }
                let open = self.open.get_or_insert_with(|| op(m.ts));
                open.statement = statement;
            }
            b'E' => {
                let mut exec = self.open.take().unwrap_or_else(|| op(m.ts));
                if exec.statement.sql.is_none() && exec.statement.name.is_none() {
                    let portal = cstr(&m.body).0;
                    if let Some(s) = self.portals.get(portal) {
                        exec.statement = s.clone();
                    }
                }
                self.push(Pending::Execute(exec));
            }
            b'C' => {
                // Close a statement ('S') or portal ('P').
                if let Some((&kind, name)) = m.body.split_first() {
                    let name = cstr(name).0;
                    match kind {
                        b'S' => drop(self.statements.remove(name)),
                        b'P' => drop(self.portals.remove(name)),
                        _ => {}
                    }
                }
            }
            b'S' => {
                if let Some(open) = self.open.take() {
                    self.push(Pending::Prepare(open));
                }
                self.skip_to_sync = false;
                self.push(Pending::Sync);
            }
            b'F' => self.push(Pending::Function),
            b'X' => {
                self.open = None;
            }
            // Describe and Flush are answered by messages that complete nothing; COPY data,
            // CopyDone, CopyFail and password messages carry nothing to pair.
            _ => {}
        }
    }

    /// The packets that open a connection: StartupMessage, SSLRequest, GSSENCRequest.
    fn on_untyped(&mut self, body: &[u8]) {
        let Some(code) = body.get(..4) else {
            return;
        };
        match u32::from_be_bytes([code[0], code[1], code[2], code[3]]) {
            SSL_REQUEST | GSSENC_REQUEST => {
                self.backend.expect_encryption_answer();
                self.push(Pending::Encryption);
            }
            c if c >> 16 == PROTOCOL_3 >> 16 => {
                self.database = interned(&startup_database(&body[4..]));
                self.push(Pending::Startup);
            }
            // CancelRequest and unknown codes: the server answers nothing.
            _ => {}
        }
    }

    fn push(&mut self, mut p: Pending) {
        if self.skip_to_sync && matches!(p, Pending::Execute(_) | Pending::Prepare(_)) {
            // The server will skip this: an earlier message in the batch failed.
            return;
        }
        if let Pending::Simple(op) | Pending::Execute(op) | Pending::Prepare(op) = &mut p {
            op.seq = self
                .numbers
                .start(Start::untraced(op.tid), &mut self.started);
        }
        if self.pending.len() >= MAX_PENDING {
            // The oldest is given up (counted): what the server owes is not one reply per
            // message here, so pairing may be off until the queue drains.
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(p);
    }

    fn on_backend(&mut self, m: PgMessage, done: &mut Vec<DbOperation>) {
        match m.tag {
            ENCRYPTION_ANSWER => {
                if matches!(self.pending.front(), Some(Pending::Encryption)) {
                    self.pending.pop_front();
                }
                if m.body.first() != Some(&b'N') {
                    self.encrypted = true;
                    self.pending.clear();
                }
            }
            b'D' => {
                if let Some(Pending::Execute(op) | Pending::Simple(op)) = self.pending.front_mut() {
                    op.data_rows += 1;
                }
            }
            b'C' => {
                let tag = String::from_utf8_lossy(cstr(&m.body).0);
                let (name, rows) = command_tag(&tag);
                let completion = (shared_name(&mut self.tag_names, &name, MAX_TAG_NAMES), rows);
                match self.pending.front_mut() {
                    Some(Pending::Simple(op)) => op.completions.push(completion),
                    Some(Pending::Execute(_)) => {
                        if let Some(Pending::Execute(mut op)) = self.pending.pop_front() {
                            op.completions.push(completion);
                            done.push(self.finish(op, m.ts));
                        }
                    }
                    _ => {}
                }
            }
            // EmptyQueryResponse (an empty statement) and PortalSuspended (row limit reached).
            b'I' | b's' => {
                if let Some(Pending::Execute(_)) = self.pending.front() {
                    if let Some(Pending::Execute(op)) = self.pending.pop_front() {
                        if m.tag == b's' {
                            done.push(self.finish(op, m.ts));
                        }
                    }
                }
            }
            b'E' => self.on_error(&m, done),
            b'Z' => self.on_ready(m.ts, done),
            // ParseComplete, BindComplete, CloseComplete, NoData, descriptions, COPY
            // responses and data, authentication, notices, parameters, notifications,
            // FunctionCallResponse: nothing to pair.
            _ => {}
        }
    }

    fn on_error(&mut self, m: &PgMessage, done: &mut Vec<DbOperation>) {
        let code = sqlstate(&m.body);
        match self.pending.front_mut() {
            Some(Pending::Simple(op)) => op.sqlstate = code,
            Some(Pending::Execute(_) | Pending::Prepare(_)) => {
                if let Some(Pending::Execute(mut op) | Pending::Prepare(mut op)) =
                    self.pending.pop_front()
                {
                    op.sqlstate = code;
                    done.push(self.finish(op, m.ts));
                }
                // The server skips the rest of the batch, up to its Sync.
                while matches!(
                    self.pending.front(),
                    Some(Pending::Execute(_) | Pending::Prepare(_))
                ) {
                    self.pending.pop_front();
                }
                if !matches!(self.pending.front(), Some(Pending::Sync)) {
                    self.skip_to_sync = true;
                    self.open = None;
                }
            }
            // Authentication failures and errors outside any query: no operation.
            _ => {}
        }
    }

    /// ReadyForQuery: the simple query, startup, function call or Sync at the front is
    /// answered; anything still queued before it was skipped by the server.
    fn on_ready(&mut self, ts: u64, done: &mut Vec<DbOperation>) {
        if self.frontend_waits_for_ready {
            self.frontend_waits_for_ready = false;
            self.frontend.resync();
            self.open = None;
        }
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Simple(op) => {
                    done.push(self.finish(op, ts));
                    return;
                }
                Pending::Sync | Pending::Startup | Pending::Function => return,
                Pending::Execute(_) | Pending::Prepare(_) | Pending::Encryption => {}
            }
        }
    }

    fn finish(&self, op: Op, end_ts: u64) -> DbOperation {
        let sql = op.statement.sql.as_deref();
        let (operation, returned_rows, batch_size) = match op.completions.as_slice() {
            [] => (
                sql.and_then(|s| s.operation.clone())
                    .unwrap_or_else(|| interned("EXECUTE")),
                (op.data_rows > 0).then_some(op.data_rows),
                None,
            ),
            [(name, rows)] => (name.clone(), *rows, None),
            many => {
                let first = &many[0].0;
                let same = many.iter().all(|(n, _)| n == first);
                let name: Arc<str> = if same {
                    interned(&format!("BATCH {first}"))
                } else {
                    interned("BATCH")
                };
                (name, None, Some(many.len() as u64))
            }
        };
        let single = batch_size.is_none();
        DbOperation {
            system: POSTGRESQL,
            operation,
            namespace: self.database.clone(),
            collection: sql.and_then(|s| s.collection.clone()).filter(|_| single),
            query_text: sql.map(|s| s.masked.clone()),
            statement_name: op.statement.name,
            status_code: op.sqlstate,
            returned_rows,
            batch_size,
            start_ts: op.start_ts,
            end_ts,
            tid: op.tid,
            seq: op.seq,
        }
    }
}

/// A Query, Parse or Bind message header with a sane length, at the start of `b`.
fn starts_query(b: &[u8]) -> bool {
    match b {
        [b'Q' | b'P' | b'B', l0, l1, l2, l3, ..] => {
            let len = u32::from_be_bytes([*l0, *l1, *l2, *l3]);
            (5..1 << 24).contains(&len)
        }
        _ => false,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `database` parameter of a StartupMessage; PostgreSQL defaults it to the user name.
fn startup_database(mut params: &[u8]) -> String {
    let mut user = String::new();
    while !params.is_empty() && params[0] != 0 {
        let (key, rest) = cstr(params);
        let (value, rest) = cstr(rest);
        match key {
            b"database" => return text(value),
            b"user" => user = text(value),
            _ => {}
        }
        params = rest;
    }
    user
}

/// A CommandComplete tag: `SELECT 5`, `INSERT 0 1`, `UPDATE 3`, `CREATE TABLE`, ...
/// Returns the operation and its row count.
fn command_tag(tag: &str) -> (Cow<'_, str>, Option<u64>) {
    let rows = tag
        .split_whitespace()
        .next_back()
        .and_then(|w| w.parse::<u64>().ok());
    let mut words = tag
        .split_whitespace()
        .filter(|w| !w.bytes().all(|b| b.is_ascii_digit()));
    let name = match (words.next(), words.next()) {
        (None, _) => Cow::Borrowed(""),
        // The usual tag (`SELECT 1`, `INSERT 0 5`): no copy.
        (Some(one), None) => Cow::Borrowed(one),
        (Some(first), Some(second)) => {
            let mut name = format!("{first} {second}");
            for w in words {
                name.push(' ');
                name.push_str(w);
            }
            Cow::Owned(name)
        }
    };
    (name, rows)
}

/// The SQLSTATE (`C` field) of an ErrorResponse. The message and detail fields, which can
/// quote the values of a row, are never read.
fn sqlstate(mut fields: &[u8]) -> Option<String> {
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            break;
        }
        let (value, rest) = cstr(rest);
        if kind == b'C' {
            return Some(text(value)).filter(|c| c.len() == 5);
        }
        fields = rest;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pg_message as msg, Garbage};

    fn untyped(code: u32, params: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend(params);
        let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        v.extend(body);
        v
    }

    fn q(sql: &str) -> Vec<u8> {
        msg(b'Q', format!("{sql}\0").as_bytes())
    }
    fn parse(name: &str, sql: &str) -> Vec<u8> {
        msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
    }
    fn bind(portal: &str, stmt: &str) -> Vec<u8> {
        msg(
            b'B',
            format!("{portal}\0{stmt}\0\0\0\0\x01\0\0\0\x0242\0\0").as_bytes(),
        )
    }
    fn execute(portal: &str) -> Vec<u8> {
        msg(b'E', format!("{portal}\0\0\0\0\0").as_bytes())
    }
    fn complete(tag: &str) -> Vec<u8> {
        msg(b'C', format!("{tag}\0").as_bytes())
    }
    fn error(code: &str) -> Vec<u8> {
        msg(
            b'E',
            format!("SERROR\0VERROR\0C{code}\0Mrelation \"secret_table\" does not exist\0\0")
                .as_bytes(),
        )
    }
    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }
    fn row() -> Vec<u8> {
        msg(b'D', b"\0\x01\0\0\0\x011")
    }
    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    type Run = crate::testing::Run<PostgresSession>;
    type Summary = (String, Option<String>, Option<String>, Option<u64>);

    trait Ops {
        fn ops(&self) -> Vec<Summary>;
    }

    impl Ops for Run {
        /// (operation, query text, SQLSTATE, rows) of each finished operation.
        fn ops(&self) -> Vec<Summary> {
            self.done
                .iter()
                .map(|o| {
                    (
                        o.operation.to_string(),
                        o.query_text.as_deref().map(str::to_string),
                        o.status_code.clone(),
                        o.returned_rows,
                    )
                })
                .collect()
        }
    }

    fn op(name: &str, text: Option<&str>, code: Option<&str>, rows: Option<u64>) -> Summary {
        (
            name.into(),
            text.map(Into::into),
            code.map(Into::into),
            rows,
        )
    }

    fn startup_exchange(r: &mut Run) {
        r.client(&untyped(SSL_REQUEST, b""));
        r.server(b"N");
        r.client(&untyped(
            PROTOCOL_3,
            b"user\0app\0database\0shop\0application_name\0psql\0\0",
        ));
        r.server(&msg(b'R', &10u32.to_be_bytes()));
        r.client(&msg(b'p', b"SCRAM-SHA-256\0\0\0\0\x05hunter2"));
        r.server(&cat(&[
            msg(b'R', &0u32.to_be_bytes()),
            msg(b'S', b"TimeZone\0UTC\0"),
            msg(b'K', &[0; 8]),
            ready(),
        ]));
    }

    #[test]
    fn simple_queries_after_startup() {
        let mut r = Run::new();
        startup_exchange(&mut r);
        r.client(&q("SELECT name FROM users WHERE id = 42"));
        r.server(&cat(&[
            msg(
                b'T',
                b"\0\x01name\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
            ),
            row(),
            complete("SELECT 1"),
            ready(),
        ]));
        r.client(&q("SELECT * FROM missing"));
        r.server(&cat(&[error("42P01"), ready()]));
        assert_eq!(
            r.ops(),
            [
                op(
                    "SELECT",
                    Some("SELECT name FROM users WHERE id = ?"),
                    None,
                    Some(1)
                ),
                op("SELECT", Some("SELECT * FROM missing"), Some("42P01"), None),
            ]
        );
        assert!(r.done.iter().all(|o| &*o.namespace == "shop"));
        assert_eq!(r.done[0].collection.as_deref(), Some("users"));
        assert_eq!(r.done[1].collection.as_deref(), Some("missing"));
        let debug = format!("{:?}", r.done);
        assert!(
            !debug.contains("hunter2") && !debug.contains("secret_table") && !debug.contains("42 ")
        );
    }

    /// The metric handle cache compares addresses: two connections' statements with the
    /// same labels carry the same operation and namespace values.
    #[test]
    fn connections_share_their_operation_and_namespace_names() {
        let runs: Vec<Run> = (0..2)
            .map(|i| {
                let mut r = Run::new();
                startup_exchange(&mut r);
                r.client(&q(&format!("UPDATE t SET v = {i}")));
                r.server(&cat(&[complete("UPDATE 1"), ready()]));
                r
            })
            .collect();
        let (a, b) = (&runs[0].done[0], &runs[1].done[0]);
        assert_eq!((&*a.operation, &*a.namespace), ("UPDATE", "shop"));
        assert!(Arc::ptr_eq(&a.operation, &b.operation));
        assert!(Arc::ptr_eq(&a.namespace, &b.namespace));
    }

    #[test]
    fn ssl_accepted_stops_parsing() {
        let mut r = Run::new();
        r.client(&untyped(SSL_REQUEST, b""));
        r.server(b"S");
        assert!(r.s.is_encrypted());
        // TLS records: never framed, never an error.
        r.client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        r.server(b"\x16\x03\x03\x00\x7a\x02");
        assert!(r.done.is_empty());
    }

    #[test]
    fn command_complete_names_the_operation_and_counts_rows() {
        let mut r = Run::new();
        r.client(&q("END"));
        r.server(&cat(&[complete("COMMIT"), ready()]));
        r.client(&q("insert into t values (1)"));
        r.server(&cat(&[complete("INSERT 0 1"), ready()]));
        r.client(&q("create table x (a int)"));
        r.server(&cat(&[complete("CREATE TABLE"), ready()]));
        let names: Vec<(String, Option<u64>)> = r
            .done
            .iter()
            .map(|o| (o.operation.to_string(), o.returned_rows))
            .collect();
        assert_eq!(
            names,
            [
                ("COMMIT".into(), None),
                ("INSERT".into(), Some(1)),
                ("CREATE TABLE".into(), None)
            ]
        );
    }

    #[test]
    fn a_multi_statement_query_is_a_batch() {
        let mut r = Run::new();
        r.client(&q("UPDATE a SET x = 1; UPDATE b SET y = 2"));
        r.server(&cat(&[complete("UPDATE 1"), complete("UPDATE 4"), ready()]));
        assert_eq!(&*r.done[0].operation, "BATCH UPDATE");
        assert_eq!(r.done[0].batch_size, Some(2));
        assert_eq!(r.done[0].collection, None);
    }

    #[test]
    fn extended_protocol_named_and_unnamed_statements() {
        let mut r = Run::new();
        // libpq's PQexecParams: unnamed statement and portal.
        r.client(&cat(&[
            parse("", "SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            bind("", ""),
            msg(b'D', b"P\0"),
            execute(""),
            msg(b'S', b""),
        ]));
        r.server(&cat(&[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'T', b"\0\0"),
            row(),
            complete("SELECT 1"),
            ready(),
        ]));
        // PQprepare then PQexecPrepared twice.
        r.client(&cat(&[
            parse("P_1", "UPDATE t SET v = v + $1 WHERE id = $2"),
            msg(b'S', b""),
        ]));
        r.server(&cat(&[msg(b'1', b""), ready()]));
        for _ in 0..2 {
            r.client(&cat(&[bind("", "P_1"), execute(""), msg(b'S', b"")]));
            r.server(&cat(&[msg(b'2', b""), complete("UPDATE 1"), ready()]));
        }
        assert_eq!(
            r.ops(),
            [
                op(
                    "SELECT",
                    Some("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
                    None,
                    Some(1)
                ),
                op(
                    "UPDATE",
                    Some("UPDATE t SET v = v + $1 WHERE id = $2"),
                    None,
                    Some(1)
                ),
                op(
                    "UPDATE",
                    Some("UPDATE t SET v = v + $1 WHERE id = $2"),
                    None,
                    Some(1)
                ),
            ]
        );
        assert_eq!(r.s.pending(), 0);
    }

    #[test]
    fn a_pipeline_pairs_in_order_and_an_error_skips_to_sync() {
        let mut r = Run::new();
        r.client(&cat(&[
            parse("", "SELECT 1"),
            bind("", ""),
            execute(""),
            parse("", "INSERT INTO t VALUES ($1)"),
            bind("", ""),
            execute(""),
            parse("", "SELECT * FROM nope"),
            bind("", ""),
            execute(""),
            parse("", "DELETE FROM t"),
            bind("", ""),
            execute(""),
            msg(b'S', b""),
            parse("", "SELECT 2"),
            bind("", ""),
            execute(""),
            msg(b'S', b""),
        ]));
        r.server(&cat(&[
            msg(b'1', b""),
            msg(b'2', b""),
            row(),
            complete("SELECT 1"),
            msg(b'N', b"SNOTICE\0C00000\0Mhello\0\0"),
            msg(b'1', b""),
            msg(b'2', b""),
            complete("INSERT 0 1"),
            error("42P01"),
            ready(),
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'S', b"application_name\0x\0"),
            row(),
            complete("SELECT 1"),
            ready(),
        ]));
        assert_eq!(
            r.ops(),
            [
                op("SELECT", Some("SELECT ?"), None, Some(1)),
                op("INSERT", Some("INSERT INTO t VALUES ($1)"), None, Some(1)),
                op("SELECT", Some("SELECT * FROM nope"), Some("42P01"), None),
                op("SELECT", Some("SELECT ?"), None, Some(1)),
            ]
        );
        assert_eq!(r.s.pending(), 0);
    }

    #[test]
    fn a_statement_prepared_before_sonde_started_is_named() {
        let mut r = Run::new();
        // Picked up mid-stream: no StartupMessage, no Parse for P_3.
        r.client(&cat(&[bind("", "P_3"), execute(""), msg(b'S', b"")]));
        r.server(&cat(&[msg(b'2', b""), complete("DELETE 2"), ready()]));
        assert_eq!(r.ops(), [op("DELETE", None, None, Some(2))]);
        assert_eq!(r.done[0].statement_name.as_deref(), Some("P_3"));
        assert_eq!(&*r.done[0].namespace, "");
    }

    #[test]
    fn copy_in_and_out() {
        let mut r = Run::new();
        r.client(&q("COPY t (a, b) FROM STDIN"));
        r.server(&msg(b'G', b"\0\0\x02\0\0\0\0"));
        r.client(&cat(&[
            msg(b'd', b"1\tsecret\n"),
            msg(b'd', b"2\tx\n"),
            msg(b'c', b""),
        ]));
        r.server(&cat(&[complete("COPY 2"), ready()]));
        r.client(&q("COPY t TO STDOUT"));
        r.server(&cat(&[
            msg(b'H', b"\0\0\x02\0\0\0\0"),
            msg(b'd', b"1\tsecret\n"),
            msg(b'c', b""),
            complete("COPY 1"),
            ready(),
        ]));
        let ops: Vec<_> = r
            .done
            .iter()
            .map(|o| (&*o.operation, o.collection.as_deref(), o.returned_rows))
            .collect();
        assert_eq!(
            ops,
            [("COPY", Some("t"), Some(2)), ("COPY", Some("t"), Some(1))]
        );
    }

    #[test]
    fn a_row_limited_execute_ends_at_portal_suspended() {
        let mut r = Run::new();
        r.client(&cat(&[
            parse("", "SELECT * FROM big"),
            bind("c1", ""),
            msg(b'E', b"c1\0\0\0\0\x02"),
            msg(b'S', b""),
        ]));
        r.server(&cat(&[
            msg(b'1', b""),
            msg(b'2', b""),
            row(),
            row(),
            msg(b's', b""),
            ready(),
        ]));
        r.client(&cat(&[msg(b'E', b"c1\0\0\0\0\x02"), msg(b'S', b"")]));
        r.server(&cat(&[row(), complete("SELECT 1"), ready()]));
        let ops: Vec<_> = r
            .done
            .iter()
            .map(|o| (o.query_text.as_deref(), o.returned_rows))
            .collect();
        assert_eq!(
            ops,
            [
                (Some("SELECT * FROM big"), Some(2)),
                (Some("SELECT * FROM big"), Some(1))
            ]
        );
    }

    #[test]
    fn every_split_gives_the_same_operations() {
        let client = cat(&[
            untyped(PROTOCOL_3, b"user\0u\0database\0d\0\0"),
            q("SELECT 1; SELECT 2"),
            parse("s", "UPDATE t SET a = 'x'"),
            bind("", "s"),
            execute(""),
            msg(b'S', b""),
        ]);
        let server = cat(&[
            msg(b'R', &0u32.to_be_bytes()),
            ready(),
            row(),
            complete("SELECT 1"),
            row(),
            complete("SELECT 1"),
            ready(),
            msg(b'1', b""),
            msg(b'2', b""),
            complete("UPDATE 3"),
            ready(),
        ]);
        crate::testing::assert_every_split_same(&client, &server, |r: &Run| {
            assert_eq!(r.done.len(), 2);
            r.ops()
        });
    }

    #[test]
    fn lost_result_bytes_resume_at_the_next_query() {
        let mut s = PostgresSession::new();
        let mut done = Vec::new();
        s.feed(true, &q("SELECT * FROM big"), 0, 1, 1, &mut done);
        // Many rows in one read, larger than the copied prefix: the gap spans messages.
        let mut result = Vec::new();
        for _ in 0..1000 {
            result.extend(row());
        }
        result.extend(complete("SELECT 1000"));
        result.extend(ready());
        let gap = (result.len() - 4096) as u64;
        assert_eq!(
            s.feed(false, &result[..4096], gap, 2, 1, &mut done),
            Some(PgError::LostSync)
        );
        assert!(done.is_empty());
        s.feed(true, &q("SELECT 1"), 0, 3, 1, &mut done);
        s.feed(
            false,
            &cat(&[row(), complete("SELECT 1"), ready()]),
            0,
            4,
            1,
            &mut done,
        );
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].query_text.as_deref(), Some("SELECT ?"));
    }

    #[test]
    fn lost_copy_data_resumes_after_ready_for_query() {
        let mut s = PostgresSession::new();
        let mut done = Vec::new();
        s.feed(true, &q("COPY t FROM STDIN"), 0, 1, 1, &mut done);
        s.feed(false, &msg(b'G', b"\0\0\0"), 0, 2, 1, &mut done);
        let mut data = Vec::new();
        for i in 0..2000 {
            data.extend(msg(b'd', format!("{i}\tvalue\n").as_bytes()));
        }
        let gap = (data.len() - 4096) as u64;
        assert_eq!(
            s.feed(true, &data[..4096], gap, 3, 1, &mut done),
            Some(PgError::LostSync)
        );
        // The rest of the COPY arrives in a later write, not at a message boundary.
        s.feed(true, b"lue\n", 0, 4, 1, &mut done);
        s.feed(
            false,
            &cat(&[complete("COPY 2000"), ready()]),
            0,
            5,
            1,
            &mut done,
        );
        s.feed(true, &q("SELECT 1"), 0, 6, 1, &mut done);
        s.feed(
            false,
            &cat(&[row(), complete("SELECT 1"), ready()]),
            0,
            7,
            1,
            &mut done,
        );
        let ops: Vec<_> = done
            .iter()
            .map(|o| (&*o.operation, o.returned_rows))
            .collect();
        assert_eq!(ops, [("COPY", Some(2000)), ("SELECT", Some(1))]);
    }

    #[test]
    fn both_directions_lost_resume_at_a_query() {
        let mut s = PostgresSession::new();
        let mut done = Vec::new();
        s.feed(
            true,
            &untyped(PROTOCOL_3, b"database\0d\0\0"),
            0,
            1,
            1,
            &mut done,
        );
        s.feed(false, &ready(), 0, 2, 1, &mut done);
        // Events were lost (the kernel's probation budget): the parsers restart mid-message.
        s.restart();
        assert!(s
            .feed(true, b"\x00\x01garbage", 0, 3, 1, &mut done)
            .is_some());
        assert!(s
            .feed(false, b"xx\x00\x01\x02\x03", 0, 4, 1, &mut done)
            .is_some());
        s.feed(true, &q("SELECT 1"), 0, 5, 1, &mut done);
        s.feed(
            false,
            &cat(&[row(), complete("SELECT 1"), ready()]),
            0,
            6,
            1,
            &mut done,
        );
        assert_eq!(done.len(), 1);
        assert_eq!(&*done[0].namespace, "d");
        assert_eq!(done[0].query_text.as_deref(), Some("SELECT ?"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut g = Garbage::new(3);
        for _ in 0..300 {
            let mut s = PostgresSession::new();
            let mut done = Vec::new();
            for i in 0..8 {
                let bytes = g.bytes(b"QPBESZCDI12\0\0\0\x05\x08abc", 48);
                let gap = (g.next() % 3) as u64;
                s.feed(i % 2 == 0, &bytes, gap, i, 1, &mut done);
            }
        }
    }

    #[test]
    fn tags_and_sqlstates() {
        assert_eq!(command_tag("INSERT 0 5"), ("INSERT".into(), Some(5)));
        assert_eq!(command_tag("SELECT 0"), ("SELECT".into(), Some(0)));
        assert_eq!(command_tag("ALTER TABLE"), ("ALTER TABLE".into(), None));
        assert_eq!(
            sqlstate(b"SFATAL\0VFATAL\0C28P01\0Mpassword\0\0").as_deref(),
            Some("28P01")
        );
        assert_eq!(sqlstate(b"SERROR\0\0"), None);
        assert_eq!(startup_database(b"user\0bob\0\0"), "bob");
    }
}

/// Hostile input: bounded memory, a message cut off counted.
#[cfg(test)]
mod hostile_tests {
    use super::*;
    use crate::protocols::call::Role;
    use crate::protocols::session::{Chunk, Finished, Session, UNFINISHED_MESSAGE};
    use crate::testing::live_bytes;

    #[test]
    fn a_message_claiming_a_gigabyte_is_bounded_and_counted_at_close() {
        let base = live_bytes();
        let mut s: Box<dyn Session> = Box::new(PostgresSession::new());
        let mut out = Finished::default();
        let mut feed = |s: &mut dyn Session, payload: &[u8], gap: u64| {
            s.feed(
                &Chunk {
                    from_client: true,
                    payload,
                    gap,
                    ts: 1,
                    tid: 1,
                },
                &mut out,
            )
        };
        let mut q = vec![b'Q'];
        q.extend(1_000_000_000u32.to_be_bytes());
        q.extend(b"SELECT '");
        feed(&mut *s, &q, 0);
        let x = vec![b'x'; 4096];
        let mut peak = 0;
        for _ in 0..10_000 {
            feed(&mut *s, &x, 60_000);
            peak = peak.max(live_bytes() - base);
        }
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        s.closed(2, Role::Server, &mut out);
        assert_eq!(out.errors, [UNFINISHED_MESSAGE]);
        assert!(out.db.is_empty());
        eprintln!("PostgreSQL session held at most {peak} bytes");
        assert!(peak < 16 * 1024, "held {peak} bytes");
    }
}
