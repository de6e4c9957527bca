//! One Redis connection: commands paired with their replies strictly in order (pipelines,
//! MULTI/EXEC, blocking commands), with pub/sub pushes kept out of the pairing.
use std::collections::VecDeque;
use std::sync::Arc;

use crate::protocols::call::{DbOperation, REDIS};
use crate::protocols::redis::framing::{FrameType, RespError, RespFrame, RespStream};
use crate::protocols::session::{DbSession, RequestNumbers, EARLY_WINDOW_NS, MAX_EARLY};
use crate::protocols::shared::{interned, shared_str};
use crate::traces::links::Start;

/// Commands waiting for replies on one connection, at most. A command beyond is given up
/// (no span, a `pending_limit` drop) and its reply, which comes after those of the commands
/// kept, is passed over, so pairing stays exact.
pub const MAX_PENDING: usize = 4096;

/// Command names remembered per connection.
const MAX_NAMES: usize = 16;
/// Query texts remembered per connection.
const MAX_TEXTS: usize = 8;

/// Commands whose first argument is a subcommand: named `CONFIG GET`, `CLIENT SETNAME`, ...
const TWO_WORD: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Commands whose arguments are never shown, not even masked (credentials).
const SECRET_ARGS: &[&str] = &["AUTH", "HELLO", "MIGRATE"];

/// Commands whose first argument is not a key: every argument is masked.
const KEYLESS: &[&str] = &[
    "PING",
    "ECHO",
    "SELECT",
    "INFO",
    "DBSIZE",
    "FLUSHDB",
    "FLUSHALL",
    "MULTI",
    "EXEC",
    "DISCARD",
    "QUIT",
    "TIME",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "EVAL",
    "EVALSHA",
    "FCALL",
    "SWAPDB",
    "WAIT",
    "SHUTDOWN",
    "RESET",
    "READONLY",
    "READWRITE",
    "LASTSAVE",
    "ROLE",
    "MONITOR",
    "SCAN",
    "RANDOMKEY",
    "KEYS",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subscription {
    /// Not a (un)subscribe command.
    No,
    /// Expects this many confirmations (one per channel named).
    Channels(usize),
    /// UNSUBSCRIBE with no channel: confirmations until the subscription count reaches 0.
    All,
}

/// What sonde needs to know about a command name, worked out once per connection.
#[derive(Clone)]
struct CommandKind {
    /// Upper case.
    name: Arc<str>,
    two_word: bool,
    secret_args: bool,
    keyless: bool,
    select: bool,
    /// `Channels` for the subscribe family, `All` for the unsubscribe family (until the
    /// arguments are counted).
    subscription: Subscription,
}

impl CommandKind {
    fn of(name: String) -> CommandKind {
        let n = name.as_str();
        CommandKind {
            two_word: TWO_WORD.contains(&n),
            secret_args: SECRET_ARGS.contains(&n),
            keyless: KEYLESS.contains(&n),
            select: n == "SELECT",
            subscription: match n {
                "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" => Subscription::Channels(1),
                "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => Subscription::All,
                _ => Subscription::No,
            },
            name: interned(&name),
        }
    }
}

/// A command as `on_command` read it. A client that sends the same command again (same
/// name, first argument and element count: a pipeline, a loop) reuses it whole.
struct Described {
    /// The first element, then the second (as kept: cut to `MAX_ELEMENT`).
    words: Vec<u8>,
    first_len: usize,
    has_second: bool,
    arg_count: usize,
    command: CommandKind,
    operation: Arc<str>,
    query_text: Arc<str>,
    /// For `SELECT n`: the database index it selects.
    selects: Option<Arc<str>>,
}

impl Described {
    fn is(&self, first: &[u8], second: Option<&[u8]>, arg_count: usize) -> bool {
        let (own_first, own_second) = self.words.split_at(self.first_len);
        self.arg_count == arg_count
            && own_first == first
            && match second {
                Some(second) => self.has_second && own_second == second,
                None => !self.has_second,
            }
    }
}

struct Pending {
    op: DbOperation,
    subscription: Subscription,
    /// For (un)subscribe commands: the span was already reported at the first confirmation.
    reported: bool,
}

/// A reply read while no command waited, after commands were seen on the connection: its
/// command's event is late (see `session::MAX_EARLY`); the next command seen within
/// `EARLY_WINDOW_NS` is the one it answers.
struct EarlyReply {
    status_code: Option<String>,
    ts: u64,
}

/// Pairs commands and replies of one Redis connection.
pub struct RedisSession {
    commands: RespStream,
    replies: RespStream,
    pending: VecDeque<Pending>,
    /// Commands given up after those in `pending` (see `MAX_PENDING`).
    skipped: u64,
    /// Commands given up since `take_dropped` was last called.
    dropped: u64,
    /// The database index commands run against (tracks SELECT).
    db: Arc<str>,
    /// Command names met lately on this connection, as sent and upper-cased: a command
    /// seen before costs no allocation.
    names: Vec<(Box<[u8]>, CommandKind)>,
    /// Query texts met lately on this connection: a command sent again with the same key
    /// costs no allocation.
    texts: Vec<Arc<str>>,
    text_buf: String,
    /// The last command read (see `Described`).
    last: Option<Described>,
    /// In RESP2 subscribed mode, arrays starting with `message` are pushes, not replies.
    subscribed: bool,
    /// After reply bytes were lost, replies resume only once a new command was sent: the
    /// next reply event then starts at that command's reply, not inside the lost one.
    command_since_reply_loss: bool,
    frames: Vec<RespFrame>,
    /// The commands' numbers, and the commands started since `take_started` (see
    /// `Finished::started`).
    numbers: RequestNumbers,
    started: Vec<(u64, Start)>,
    /// A command was seen since the (re)start: a reply with none waiting is early, not the
    /// answer to a command sonde never saw.
    in_step: bool,
    early: VecDeque<EarlyReply>,
}

impl Default for RedisSession {
    fn default() -> Self {
        Self::new()
    }
}

impl DbSession for RedisSession {
    type Error = RespError;
    const SYSTEM: &'static str = REDIS;

    fn error_kind(error: RespError) -> &'static str {
        error.as_str()
    }

    fn feed(
        &mut self,
        from_client: bool,
        payload: &[u8],
        gap: u64,
        ts: u64,
        tid: u32,
        done: &mut Vec<DbOperation>,
    ) -> Option<RespError> {
        let stream = if from_client {
            &mut self.commands
        } else {
            &mut self.replies
        };
        let may_resync = from_client || self.command_since_reply_loss;
        // What was pending when bytes were lost was dropped then (see below).
        if may_resync {
            stream.resync(payload.first().copied());
        }
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        let mut error = stream.feed(payload, ts, &mut frames).err();
        if gap > 0 && error.is_none() {
            error = stream.gap(gap, &mut frames).err();
        }
        // Frames are large (their kept elements are inline): read in place, not moved out.
        for frame in &frames {
            if from_client {
                self.on_command(frame, tid, done);
            } else {
                self.on_reply(frame, ts, done);
            }
        }
        frames.clear();
        self.frames = frames;
        if error.is_some() {
            self.pending.clear();
            self.early.clear();
            self.skipped = 0;
            if !from_client {
                self.command_since_reply_loss = false;
            }
        }
        error
    }

    /// Bytes were lost: pending commands are dropped and both streams start over at the
    /// next event; the database index is kept.
    fn restart(&mut self) {
        let db = std::mem::take(&mut self.db);
        let numbers = self.numbers;
        *self = RedisSession::new();
        self.db = db;
        self.numbers = numbers;
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
        self.commands.in_frame() || self.replies.in_frame()
    }
}

impl RedisSession {
    pub fn new() -> RedisSession {
        RedisSession {
            commands: RespStream::new(),
            replies: RespStream::new(),
            pending: VecDeque::new(),
            skipped: 0,
            dropped: 0,
            db: interned("0"),
            names: Vec::new(),
            texts: Vec::new(),
            text_buf: String::new(),
            last: None,
            subscribed: false,
            command_since_reply_loss: true,
            frames: Vec::new(),
            numbers: RequestNumbers::default(),
            started: Vec::new(),
            in_step: false,
            early: VecDeque::new(),
        }
    }

    fn on_command(&mut self, frame: &RespFrame, tid: u32, done: &mut Vec<DbOperation>) {
        self.command_since_reply_loss = true;
        self.in_step = true;
        let Some(first) = frame.kept.first() else {
            return;
        };
        let second = frame.kept.get(1);
        let repeated = self
            .last
            .as_ref()
            .is_some_and(|last| last.is(first, second, frame.len));
        if !repeated {
            let described = self.describe(frame, first, second);
            self.last = Some(described);
        }
        let last = self.last.as_ref().expect("just described");
        let (operation, query_text) = (last.operation.clone(), last.query_text.clone());
        let subscription = match last.command.subscription {
            Subscription::No => Subscription::No,
            Subscription::Channels(_) => Subscription::Channels(frame.len.saturating_sub(1).max(1)),
            Subscription::All if frame.len > 1 => Subscription::Channels(frame.len - 1),
            Subscription::All => Subscription::All,
        };
        if let Some(index) = &last.selects {
            // Commands pipelined after SELECT run in the new database.
            self.db = index.clone();
        }
        if self.skipped > 0 || self.pending.len() >= MAX_PENDING {
            self.skipped += 1;
            self.dropped += 1;
            return;
        }
        let seq = self.numbers.start(Start::untraced(tid), &mut self.started);
        self.pending.push_back(Pending {
            op: DbOperation {
                seq,
                system: REDIS,
                operation,
                namespace: self.db.clone(),
                query_text: Some(query_text),
                start_ts: frame.ts,
                tid,
                ..DbOperation::default()
            },
            subscription,
            reported: false,
        });
        self.pair_early(frame.ts, done);
    }

    /// What a command is, from its first two elements and its element count.
    fn describe(&mut self, frame: &RespFrame, first: &[u8], second: Option<&[u8]>) -> Described {
        let command = self.command_kind(first);
        let name = &command.name;
        let second_text = second.map(String::from_utf8_lossy);
        let two_word = command.two_word && second_text.is_some();
        let operation: Arc<str> = match &second_text {
            Some(sub) if two_word => interned(&format!("{name} {}", sub.to_ascii_uppercase())),
            _ => name.clone(),
        };
        let args_used = if two_word { 2 } else { 1 };
        let key = second_text.as_deref().filter(|_| !two_word);
        let mut text = std::mem::take(&mut self.text_buf);
        text.clear();
        query_text(&command, &operation, key, frame.len, args_used, &mut text);
        let query_text = shared_str(&mut self.texts, &text, MAX_TEXTS);
        self.text_buf = text;
        let selects = second_text
            .filter(|w| command.select && w.parse::<u32>().is_ok())
            .map(|w| interned(&w));
        // The last one's buffer is reused: a client whose keys all differ allocates nothing
        // more for this.
        let mut words = self.last.take().map(|l| l.words).unwrap_or_default();
        words.clear();
        words.extend_from_slice(first);
        words.extend_from_slice(second.unwrap_or_default());
        Described {
            words,
            first_len: first.len(),
            has_second: second.is_some(),
            arg_count: frame.len,
            command,
            operation,
            query_text,
            selects,
        }
    }

    /// Pairs replies read before their commands' events with the commands now waiting, in
    /// order; those held longer than `EARLY_WINDOW_NS` answer nothing to come.
    fn pair_early(&mut self, ts: u64, done: &mut Vec<DbOperation>) {
        while let Some(e) = self.early.front() {
            if ts.saturating_sub(e.ts) <= EARLY_WINDOW_NS {
                break;
            }
            self.early.pop_front();
        }
        while !self.early.is_empty()
            && self
                .pending
                .front()
                .is_some_and(|p| p.subscription == Subscription::No)
        {
            let (Some(e), Some(mut p)) = (self.early.pop_front(), self.pending.pop_front()) else {
                break;
            };
            // The command's event came later than its reply's: the call took no longer
            // than the time between the two.
            p.op.end_ts = e.ts.max(p.op.start_ts);
            p.op.status_code = e.status_code;
            done.push(p.op);
        }
    }

    /// What the command whose first word is `raw` is.
    fn command_kind(&mut self, raw: &[u8]) -> CommandKind {
        if let Some((_, kind)) = self.names.iter().find(|(r, _)| **r == *raw) {
            return kind.clone();
        }
        let kind = CommandKind::of(String::from_utf8_lossy(raw).to_ascii_uppercase());
        if self.names.len() >= MAX_NAMES {
            self.names.remove(0);
        }
        self.names.push((raw.into(), kind.clone()));
        kind
    }

    fn on_reply(&mut self, frame: &RespFrame, ts: u64, done: &mut Vec<DbOperation>) {
        let is_aggregate = matches!(frame.ty, FrameType::Array | FrameType::Push);
        // The first element of an aggregate says what a push or confirmation is.
        let kind = frame.kept.first().filter(|_| is_aggregate);
        let kind_is = |words: &[&str]| {
            kind.is_some_and(|k| words.iter().any(|w| k.eq_ignore_ascii_case(w.as_bytes())))
        };
        let confirmation = kind_is(&[
            "subscribe",
            "psubscribe",
            "ssubscribe",
            "unsubscribe",
            "punsubscribe",
            "sunsubscribe",
        ]);
        if confirmation {
            let count: i64 = frame.text(2).and_then(|c| c.parse().ok()).unwrap_or(0);
            self.subscribed = count > 0;
            self.confirm(count, ts, done);
            return;
        }
        let pushed_message = kind_is(&["message", "pmessage", "smessage"]);
        if frame.ty == FrameType::Push || (self.subscribed && pushed_message) {
            // Out-of-band data (a published message, a RESP3 invalidation): no command's reply.
            return;
        }
        // An (un)subscribe reported at its first confirmation that is still at the front has
        // had all the confirmations it will get (the server answers in order): this reply is
        // the next command's.
        while self.pending.front().is_some_and(|p| p.reported) {
            self.pending.pop_front();
        }
        let Some(mut p) = self.pending.pop_front() else {
            if self.skipped > 0 {
                // The reply to a command given up (already counted).
                self.skipped -= 1;
            } else if self.in_step && self.early.len() < MAX_EARLY {
                self.early.push_back(EarlyReply {
                    status_code: frame.error_code(),
                    ts,
                });
            }
            // Else the reply to a command not seen (picked up mid-stream).
            return;
        };
        p.op.end_ts = ts;
        if let Some(code) = frame.error_code() {
            p.op.status_code = Some(code);
        }
        done.push(p.op);
    }

    /// A (un)subscribe confirmation: the first one ends the command's span, the last one
    /// retires the command.
    fn confirm(&mut self, count: i64, ts: u64, done: &mut Vec<DbOperation>) {
        let Some(front) = self.pending.front_mut() else {
            return;
        };
        if front.subscription == Subscription::No {
            return;
        }
        if !front.reported {
            front.reported = true;
            let mut op = front.op.clone();
            op.end_ts = ts;
            done.push(op);
        }
        let finished = match &mut front.subscription {
            Subscription::Channels(left) => {
                *left -= 1;
                *left == 0
            }
            Subscription::All => count == 0,
            Subscription::No => true,
        };
        if finished {
            self.pending.pop_front();
        }
    }
}

/// `db.query.text`: the command, its key, and `?` for every other argument. Credentials
/// (AUTH, HELLO) keep no argument at all.
fn query_text(
    command: &CommandKind,
    operation: &str,
    key: Option<&str>,
    arg_count: usize,
    args_used: usize,
    text: &mut String,
) {
    text.push_str(operation);
    if command.secret_args {
        return;
    }
    let mut rest = arg_count.saturating_sub(args_used);
    if rest > 0 && !command.keyless {
        if let Some(key) = key {
            text.push(' ');
            text.push_str(key);
            rest -= 1;
        }
    }
    for _ in 0..rest.min(16) {
        text.push_str(" ?");
    }
    if rest > 16 {
        text.push_str(" ...");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        v
    }

    type Run = crate::testing::Run<RedisSession>;

    trait Ops {
        fn ops(&self) -> Vec<(String, Option<String>, Option<String>)>;
    }

    impl Ops for Run {
        /// (operation, query text, error code) of each finished command.
        fn ops(&self) -> Vec<(String, Option<String>, Option<String>)> {
            self.done
                .iter()
                .map(|o| {
                    (
                        o.operation.to_string(),
                        o.query_text.as_deref().map(str::to_string),
                        o.status_code.clone(),
                    )
                })
                .collect()
        }
    }

    /// Feeds each (from_client, bytes, ts) in turn, step `cut.0` cut at `cut.1`; gives
    /// (operation, error code, start, end) of each finished command.
    fn run_steps(
        steps: &[(bool, &[u8], u64)],
        cut: Option<(usize, usize)>,
    ) -> Vec<(String, Option<String>, u64, u64)> {
        let mut s = RedisSession::new();
        let mut done = Vec::new();
        for (i, &(from_client, bytes, ts)) in steps.iter().enumerate() {
            let parts: Vec<&[u8]> = match cut {
                Some((step, at)) if step == i => vec![&bytes[..at], &bytes[at..]],
                _ => vec![bytes],
            };
            for payload in parts {
                assert_eq!(s.feed(from_client, payload, 0, ts, 1, &mut done), None);
            }
        }
        done.iter()
            .map(|o| {
                let op = o.operation.to_string();
                (op, o.status_code.clone(), o.start_ts, o.end_ts)
            })
            .collect()
    }

    /// Replies read before the event of the write that sent their commands (the writer
    /// preempted, the reader on another CPU) pair with those commands when they come; a
    /// reply with nothing sent before it, or held past the window, answers nothing.
    #[test]
    fn replies_read_before_their_commands_event_pair_with_them() {
        let (get, incr, del) = (cmd(&["GET", "k"]), cmd(&["INCR", "s"]), cmd(&["DEL", "k"]));
        let both = [get.clone(), incr.clone()].concat();
        let replies: &[u8] = b"$1\r\nv\r\n-ERR not an integer\r\n";
        let steps: [(bool, &[u8], u64); 5] = [
            (true, &get, 1),
            (false, b"$1\r\nv\r\n", 2),
            (false, replies, 3),
            (true, &both, 4),
            (true, &del, 5),
        ];
        let mut with_del = steps.to_vec();
        with_del.push((false, b":1\r\n", 6));
        let expected = vec![
            ("GET".to_string(), None, 1, 2),
            ("GET".to_string(), None, 4, 4),
            ("INCR".to_string(), Some("ERR".to_string()), 4, 4),
            ("DEL".to_string(), None, 5, 6),
        ];
        assert_eq!(run_steps(&with_del, None), expected);
        for (step, &(_, bytes, _)) in with_del.iter().enumerate() {
            for at in 1..bytes.len() {
                assert_eq!(
                    run_steps(&with_del, Some((step, at))),
                    expected,
                    "step {step} cut at {at}"
                );
            }
        }

        // Nothing sent before the reply: picked up mid-stream, it answers no later command;
        // nor does one held more than the window.
        let late = 3 + EARLY_WINDOW_NS + 1;
        let steps: [(bool, &[u8], u64); 4] = [
            (false, b"$1\r\nv\r\n", 1),
            (true, &get, 2),
            (false, b"$1\r\nv\r\n:1\r\n", 3),
            (true, &del, late),
        ];
        assert_eq!(
            run_steps(&steps, None),
            [("GET".to_string(), None, 2, 3)],
            "only the GET is paired, with the first reply after it"
        );
    }

    #[test]
    fn pipelined_commands_pair_in_order_with_masked_values() {
        let mut r = Run::new();
        let mut batch = cmd(&["SET", "user:1", "secret-value"]);
        batch.extend(cmd(&["GET", "user:1"]));
        batch.extend(cmd(&["LPUSH", "q", "a", "b"]));
        batch.extend(cmd(&["HGET", "h"]));
        r.client(&batch);
        r.server(b"+OK\r\n$12\r\nsecret-value\r\n:2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert_eq!(
            r.ops(),
            [
                ("SET".into(), Some("SET user:1 ?".into()), None),
                ("GET".into(), Some("GET user:1".into()), None),
                ("LPUSH".into(), Some("LPUSH q ? ?".into()), None),
                (
                    "HGET".into(),
                    Some("HGET h".into()),
                    Some("WRONGTYPE".into())
                ),
            ]
        );
        assert!(r.done.iter().all(|o| o.start_ts == 1 && o.end_ts == 2));
    }

    /// A command sent again is described once; one that differs in its name's case, its
    /// key, its element count or its subcommand is described anew.
    #[test]
    fn a_repeated_command_shares_its_description_and_any_difference_is_seen() {
        let mut r = Run::new();
        let mut batch = Vec::new();
        for args in [
            &["SET", "k", "v"][..],
            &["SET", "k", "w"],
            &["set", "k", "v"],
            &["SET", "k2", "v"],
            &["SET", "k", "v", "EX", "10"],
            &["SET", "k"],
            &["SET"],
            &["SET"],
            &["CONFIG", "GET", "x"],
            &["CONFIG", "SET", "x", "1"],
            &["SELECT", "2"],
            &["SELECT", "2"],
            &["GET", "k"],
        ] {
            batch.extend(cmd(args));
        }
        r.client(&batch);
        r.server(&b"+OK\r\n".repeat(13));
        let texts: Vec<String> = r.ops().into_iter().map(|(_, t, _)| t.unwrap()).collect();
        assert_eq!(
            texts,
            [
                "SET k ?",
                "SET k ?",
                "SET k ?",
                "SET k2 ?",
                "SET k ? ? ?",
                "SET k",
                "SET",
                "SET",
                "CONFIG GET ?",
                "CONFIG SET ? ?",
                "SELECT ?",
                "SELECT ?",
                "GET k",
            ]
        );
        let shared = |a: usize, b: usize| {
            let text = |i: usize| r.done[i].query_text.clone().unwrap();
            Arc::ptr_eq(&text(a), &text(b))
        };
        assert!(shared(0, 1) && shared(6, 7) && shared(10, 11));
        let ns: Vec<&str> = r.done.iter().map(|o| &*o.namespace).collect();
        assert_eq!(ns[9..], ["0", "2", "2", "2"]);
    }

    /// The metric handle cache compares addresses: two connections' calls with the same
    /// labels carry the same operation and namespace values.
    #[test]
    fn connections_share_their_operation_and_namespace_names() {
        let runs: Vec<Run> = (0..2)
            .map(|_| {
                let mut r = Run::new();
                r.client(&cmd(&["get", "a"]));
                r.client(&cmd(&["CONFIG", "GET", "x"]));
                r.client(&cmd(&["SELECT", "1"]));
                r.client(&cmd(&["GET", "b"]));
                r.server(b"$-1\r\n*0\r\n+OK\r\n$-1\r\n");
                r
            })
            .collect();
        let [a, b] = &runs[..] else { unreachable!() };
        assert_eq!(a.done.len(), 4);
        for (x, y) in a.done.iter().zip(&b.done) {
            assert!(Arc::ptr_eq(&x.operation, &y.operation), "{x:?}");
            assert!(Arc::ptr_eq(&x.namespace, &y.namespace), "{x:?}");
        }
        // `get` and `GET` are one operation.
        assert!(Arc::ptr_eq(&a.done[0].operation, &b.done[3].operation));
        assert_eq!(&*a.done[3].namespace, "1");
    }

    #[test]
    fn credentials_and_two_word_commands() {
        let mut r = Run::new();
        r.client(&cmd(&["AUTH", "admin", "hunter2"]));
        r.client(&cmd(&["HELLO", "3", "AUTH", "admin", "hunter2"]));
        r.client(&cmd(&["config", "get", "maxmemory"]));
        r.server(b"-NOAUTH Authentication required.\r\n%1\r\n+server\r\n+redis\r\n*2\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n");
        assert_eq!(
            r.ops(),
            [
                ("AUTH".into(), Some("AUTH".into()), Some("NOAUTH".into())),
                ("HELLO".into(), Some("HELLO".into()), None),
                ("CONFIG GET".into(), Some("CONFIG GET ?".into()), None),
            ]
        );
        let text = format!("{:?}", r.done);
        assert!(!text.contains("hunter2") && !text.contains("admin"));
    }

    #[test]
    fn select_sets_the_namespace_of_later_commands() {
        let mut r = Run::new();
        r.client(&cmd(&["GET", "a"]));
        r.client(&cmd(&["SELECT", "3"]));
        r.client(&cmd(&["GET", "b"]));
        r.server(b"$-1\r\n+OK\r\n$-1\r\n");
        let ns: Vec<&str> = r.done.iter().map(|o| &*o.namespace).collect();
        assert_eq!(ns, ["0", "3", "3"]);
    }

    #[test]
    fn multi_exec_pairs_queued_replies() {
        let mut r = Run::new();
        let mut batch = cmd(&["MULTI"]);
        batch.extend(cmd(&["INCR", "c"]));
        batch.extend(cmd(&["INCR", "c"]));
        batch.extend(cmd(&["EXEC"]));
        r.client(&batch);
        r.server(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:2\r\n");
        let names: Vec<String> = r.ops().into_iter().map(|o| o.0).collect();
        assert_eq!(names, ["MULTI", "INCR", "INCR", "EXEC"]);
    }

    #[test]
    fn blocking_command_lasts_until_its_reply() {
        let mut r = Run::new();
        r.client(&cmd(&["BLPOP", "jobs", "5"]));
        r.ts = 1_000_000_000;
        r.server(b"*2\r\n$4\r\njobs\r\n$1\r\nx\r\n");
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].end_ts - r.done[0].start_ts, 1_000_000_000 - 1 + 1);
        assert_eq!(r.done[0].query_text.as_deref(), Some("BLPOP jobs ?"));
    }

    /// Found by the `redis_session` fuzz target: a reply that is not a confirmation, while an
    /// UNSUBSCRIBE already reported at its first confirmation waited for more, reported the
    /// UNSUBSCRIBE a second time (more operations than commands).
    #[test]
    fn an_unsubscribe_is_reported_once_whatever_follows_its_confirmation() {
        let mut r = Run::new();
        r.client(&cmd(&["SUBSCRIBE", "a", "b"]));
        r.server(
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n",
        );
        r.client(&cmd(&["UNSUBSCRIBE"]));
        r.client(&cmd(&["PING"]));
        // One confirmation (the other was never seen), then PING's reply.
        r.server(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n+PONG\r\n");
        let names: Vec<String> = r.ops().into_iter().map(|o| o.0).collect();
        assert_eq!(names, ["SUBSCRIBE", "UNSUBSCRIBE", "PING"]);
    }

    #[test]
    fn resp2_pubsub_messages_are_not_replies() {
        let mut r = Run::new();
        r.client(&cmd(&["SUBSCRIBE", "a", "b"]));
        r.server(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        r.server(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n");
        r.server(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n");
        r.client(&cmd(&["PING"]));
        r.server(b"*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$5\r\nworld\r\n");
        r.server(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        r.client(&cmd(&["UNSUBSCRIBE"]));
        r.server(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n");
        r.client(&cmd(&["GET", "k"]));
        r.server(b"$1\r\nv\r\n");
        let names: Vec<String> = r.ops().into_iter().map(|o| o.0).collect();
        assert_eq!(names, ["SUBSCRIBE", "PING", "UNSUBSCRIBE", "GET"]);
        assert_eq!(r.s.pending(), 0);
    }

    #[test]
    fn resp3_push_frames_are_not_replies() {
        let mut r = Run::new();
        r.client(&cmd(&["SUBSCRIBE", "a"]));
        r.server(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        r.client(&cmd(&["GET", "k"]));
        r.server(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nm\r\n$1\r\nv\r\n");
        let names: Vec<String> = r.ops().into_iter().map(|o| o.0).collect();
        assert_eq!(names, ["SUBSCRIBE", "GET"]);
    }

    #[test]
    fn every_split_of_a_pipeline_gives_the_same_operations() {
        let mut commands = cmd(&["SET", "k", "v"]);
        commands.extend(cmd(&["GET", "k"]));
        commands.extend(cmd(&["DEL", "k"]));
        let replies = b"+OK\r\n$1\r\nv\r\n:1\r\n";
        crate::testing::assert_every_split_same(&commands, replies, |r: &Run| {
            assert_eq!(r.done.len(), 3);
            r.ops()
        });
    }

    #[test]
    fn a_large_value_beyond_the_prefix_keeps_pairing() {
        let mut s = RedisSession::new();
        let mut done = Vec::new();
        let big = "x".repeat(20_000);
        let write = cmd(&["SET", "big", &big]);
        let gap = (write.len() - 4096) as u64;
        assert_eq!(s.feed(true, &write[..4096], gap, 1, 1, &mut done), None);
        assert_eq!(
            s.feed(true, &cmd(&["GET", "big"]), 0, 2, 1, &mut done),
            None
        );
        let mut reply = b"+OK\r\n$20000\r\n".to_vec();
        reply.extend(big.as_bytes());
        reply.extend(b"\r\n");
        let gap = (reply.len() - 4096) as u64;
        assert_eq!(s.feed(false, &reply[..4096], gap, 3, 1, &mut done), None);
        let names: Vec<&str> = done.iter().map(|o| &*o.operation).collect();
        assert_eq!(names, ["SET", "GET"]);
    }

    #[test]
    fn a_huge_nested_reply_resumes_pairing_at_the_next_command() {
        let mut s = RedisSession::new();
        let mut done = Vec::new();
        s.feed(true, &cmd(&["COMMAND", "DOCS"]), 0, 1, 1, &mut done);
        // A reply of many small elements, larger than the copied prefix: the gap falls
        // between elements and cannot be skipped by length.
        let mut reply = b"*2000\r\n".to_vec();
        for i in 0..2000 {
            reply.extend(format!("+doc-{i}\r\n").as_bytes());
        }
        let gap = (reply.len() - 4096) as u64;
        assert_eq!(
            s.feed(false, &reply[..4096], gap, 2, 1, &mut done),
            Some(RespError::LostSync)
        );
        // A later read of the same reply that happens to start with a type byte is not
        // taken for a reply.
        s.feed(false, b"+doc-x\r\n", 0, 3, 1, &mut done);
        assert!(done.is_empty());
        s.feed(true, &cmd(&["GET", "k"]), 0, 4, 1, &mut done);
        s.feed(false, b"$1\r\nv\r\n", 0, 5, 1, &mut done);
        let names: Vec<&str> = done.iter().map(|o| &*o.operation).collect();
        assert_eq!(names, ["GET"]);
    }

    #[test]
    fn lost_bytes_in_the_framing_never_pair_wrongly() {
        let mut s = RedisSession::new();
        let mut done = Vec::new();
        let big = "x".repeat(20_000);
        // SET and GET in one write: the GET is inside the uncopied tail.
        let mut write = cmd(&["SET", "big", &big]);
        write.extend(cmd(&["GET", "small"]));
        let gap = (write.len() - 4096) as u64;
        assert_eq!(
            s.feed(true, &write[..4096], gap, 1, 1, &mut done),
            Some(RespError::LostSync)
        );
        assert_eq!(s.pending(), 0);
        s.feed(false, b"+OK\r\n$-1\r\n", 0, 2, 1, &mut done);
        assert!(done.is_empty());
        // The next write starts a command: pairing resumes.
        s.feed(true, &cmd(&["PING"]), 0, 3, 1, &mut done);
        s.feed(false, b"+PONG\r\n", 0, 4, 1, &mut done);
        let names: Vec<&str> = done.iter().map(|o| &*o.operation).collect();
        assert_eq!(names, ["PING"]);
    }
}

/// Hostile input: bounded memory, every command given up or frame cut off counted.
#[cfg(test)]
mod hostile_tests {
    use super::*;
    use crate::protocols::call::Role;
    use crate::protocols::session::{Chunk, Finished, Session, UNFINISHED_MESSAGE};
    use crate::testing::live_bytes;

    /// Most heap bytes one Redis session holds (docs/architecture.md): `MAX_PENDING`
    /// commands with their masked text.
    const SESSION_BOUND: isize = 2 * 1024 * 1024;

    fn feed(s: &mut dyn Session, out: &mut Finished, from_client: bool, payload: &[u8]) {
        s.feed(
            &Chunk {
                from_client,
                payload,
                gap: 0,
                ts: 1,
                tid: 1,
            },
            out,
        );
    }

    #[test]
    fn an_array_of_two_billion_elements_is_bounded_and_counted_at_close() {
        let base = live_bytes();
        let mut s: Box<dyn Session> = Box::new(RedisSession::new());
        let mut out = Finished::default();
        feed(&mut *s, &mut out, true, b"*2147483648\r\n");
        let mut peak = 0;
        for _ in 0..100_000 {
            feed(&mut *s, &mut out, true, b"$3\r\nSET\r\n$1\r\nk\r\n");
            peak = peak.max(live_bytes() - base);
        }
        feed(
            &mut *s,
            &mut out,
            false,
            b"-ERR Protocol error: invalid multibulk length\r\n",
        );
        assert!(out.db.is_empty() && out.errors.is_empty(), "{out:?}");
        s.closed(2, Role::Server, &mut out);
        assert_eq!(out.errors, [UNFINISHED_MESSAGE]);
        eprintln!("Redis session held at most {peak} bytes");
        assert!(peak < 4096, "held {peak} bytes");
        // A connection that ends between commands is not counted.
        let mut s = RedisSession::new();
        let mut out = Finished::default();
        feed(&mut s, &mut out, true, b"*1\r\n$4\r\nPING\r\n");
        feed(&mut s, &mut out, false, b"+PONG\r\n");
        Session::closed(&mut s, 2, Role::Client, &mut out);
        assert!(out.errors.is_empty() && out.db.len() == 1, "{out:?}");
    }

    #[test]
    fn commands_beyond_the_limit_are_counted_and_pairing_stays_exact() {
        let base = live_bytes();
        let mut s: Box<dyn Session> = Box::new(RedisSession::new());
        let mut out = Finished::default();
        let mut dropped = 0;
        let mut peak = 0;
        for i in 0..10_000 {
            feed(
                &mut *s,
                &mut out,
                true,
                format!("*2\r\n$3\r\nGET\r\n$5\r\nk{i:04}\r\n").as_bytes(),
            );
            dropped += std::mem::take(&mut out.pending_dropped);
            peak = peak.max(live_bytes() - base);
        }
        assert_eq!(dropped, 10_000 - MAX_PENDING as u64);
        for _ in 0..10_000 {
            feed(&mut *s, &mut out, false, b"$-1\r\n");
        }
        assert_eq!(out.db.len(), MAX_PENDING);
        feed(&mut *s, &mut out, true, b"*1\r\n$4\r\nPING\r\n");
        feed(&mut *s, &mut out, false, b"+PONG\r\n");
        assert_eq!(&*out.db.last().unwrap().operation, "PING");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        eprintln!("Redis session held at most {peak} bytes");
        assert!(peak < SESSION_BOUND, "held {peak} bytes");
    }
}
