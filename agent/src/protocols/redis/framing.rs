//! Incremental RESP2/RESP3 framing (Redis): one `RespStream` per direction of a connection.
//!
//! The stream is fed bytes in arbitrary splits and yields one `RespFrame` per top-level
//! value. It never buffers a bulk value: only the first `MAX_KEPT` elements of a frame are
//! kept, each cut to `MAX_ELEMENT` bytes, and the rest is skipped by length, so values larger
//! than the kernel's copied prefix (shipped as a gap) keep the stream in step.
use std::fmt;

/// Elements kept per frame: enough for `CONFIG GET name` and pub/sub pushes.
pub const MAX_KEPT: usize = 3;
/// Bytes kept of each element.
pub const MAX_ELEMENT: usize = 64;
/// Longest line (type byte to CRLF) accepted; simple strings and errors are short.
const MAX_LINE: usize = 64 * 1024;
/// Deepest aggregate nesting accepted.
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameType {
    /// `+`
    Simple,
    /// `-` (and RESP3 `!` blob errors)
    Error,
    /// `:` `,` `#` `(` `_` and the null forms: a scalar that is not text we keep.
    Scalar,
    /// `$` and RESP3 `=` verbatim strings.
    Bulk,
    /// `*`, `%`, `~`.
    Array,
    /// RESP3 `>`: out-of-band data, never a reply to a command.
    Push,
    /// A command sent inline (`PING\r\n`), not as an array.
    Inline,
}

/// One complete top-level value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RespFrame {
    pub ty: FrameType,
    /// Monotonic ns of the event that carried the frame's first byte.
    pub ts: u64,
    /// Number of elements of a top-level array (1 for a scalar or inline word count).
    pub len: usize,
    /// The first `MAX_KEPT` elements (for scalars: the value itself), each cut to
    /// `MAX_ELEMENT` bytes. Integers are kept as their decimal text.
    pub kept: Kept,
}

/// The kept elements of a frame, stored inline: framing a command or a reply allocates
/// nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Kept {
    count: u8,
    lens: [u8; MAX_KEPT],
    bytes: [[u8; MAX_ELEMENT]; MAX_KEPT],
}

impl Default for Kept {
    fn default() -> Self {
        Kept {
            count: 0,
            lens: [0; MAX_KEPT],
            bytes: [[0; MAX_ELEMENT]; MAX_KEPT],
        }
    }
}

impl Kept {
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        (i < self.len()).then(|| &self.bytes[i][..self.lens[i] as usize])
    }

    pub fn first(&self) -> Option<&[u8]> {
        self.get(0)
    }

    /// Starts a new element with `value` (cut to `MAX_ELEMENT`); ignored once full.
    fn push(&mut self, value: &[u8]) {
        if self.len() < MAX_KEPT {
            self.count += 1;
            self.lens[self.len() - 1] = 0;
            self.extend_last(value);
        }
    }

    /// Appends to the last element what still fits in it.
    fn extend_last(&mut self, more: &[u8]) {
        let Some(i) = self.len().checked_sub(1) else {
            return;
        };
        let have = self.lens[i] as usize;
        let take = more.len().min(MAX_ELEMENT - have);
        self.bytes[i][have..have + take].copy_from_slice(&more[..take]);
        self.lens[i] = (have + take) as u8;
    }
}

impl fmt::Debug for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                (0..self.len())
                    .filter_map(|i| self.get(i))
                    .map(String::from_utf8_lossy),
            )
            .finish()
    }
}

impl RespFrame {
    /// The error's first word (`ERR`, `WRONGTYPE`, `NOAUTH`), for error frames.
    pub fn error_code(&self) -> Option<String> {
        if self.ty != FrameType::Error {
            return None;
        }
        let text = self.kept.first().unwrap_or(b"");
        let word = text.split(|b| *b == b' ').next().unwrap_or(b"");
        let word = String::from_utf8_lossy(word).into_owned();
        Some(if word.is_empty() { "ERR".into() } else { word })
    }

    /// Element `i` of the kept elements as text (lossy).
    pub fn text(&self, i: usize) -> Option<String> {
        self.kept
            .get(i)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespError {
    /// A byte that starts no RESP value.
    BadType,
    /// A length or count that is not a number, or out of range.
    BadLength,
    /// A line longer than `MAX_LINE`.
    LineTooLong,
    /// Nesting deeper than `MAX_DEPTH`.
    TooDeep,
    /// Bytes were lost (not copied) where the framing needed them.
    LostSync,
}

impl RespError {
    pub fn as_str(self) -> &'static str {
        match self {
            RespError::BadType => "bad_type",
            RespError::BadLength => "bad_length",
            RespError::LineTooLong => "line_too_long",
            RespError::TooDeep => "too_deep",
            RespError::LostSync => "lost_sync",
        }
    }
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
enum State {
    /// Reading a line (type byte included) up to CRLF.
    Line,
    /// Inside a bulk value: bytes still to come, CRLF included.
    Bulk { left: u64 },
    /// After an error: nothing more is framed until `resync` (the next event).
    Lost,
}

/// Frames one direction of a RESP connection.
#[derive(Debug)]
pub struct RespStream {
    state: State,
    line: Vec<u8>,
    /// Elements still expected at each open aggregate level (innermost last).
    stack: Vec<u64>,
    current: Option<RespFrame>,
    /// An attribute frame (`|`) is metadata for the next frame: it is read and dropped.
    in_attribute: bool,
    /// Bytes kept of the bulk being read, when it is one of the kept elements.
    keep_bulk: bool,
}

impl Default for RespStream {
    fn default() -> Self {
        Self::new()
    }
}

impl RespStream {
    pub fn new() -> RespStream {
        RespStream {
            state: State::Line,
            line: Vec::new(),
            stack: Vec::new(),
            current: None,
            in_attribute: false,
            keep_bulk: false,
        }
    }

    /// True after an error, until the stream resynchronises.
    pub fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// Inside a value: a frame began and has not ended (a line, a bulk value or an
    /// aggregate's elements still to come). A lost stream is not.
    pub fn in_frame(&self) -> bool {
        match self.state {
            State::Lost => false,
            State::Bulk { .. } => true,
            State::Line => !self.line.is_empty() || !self.stack.is_empty(),
        }
    }

    /// A lost stream starts over at the start of an event whose first byte opens a value:
    /// clients and servers write whole commands and replies, so a new write is the best
    /// boundary there is. Returns true when it did.
    pub fn resync(&mut self, first: Option<u8>) -> bool {
        if !self.is_lost() || !first.is_some_and(starts_value) {
            return false;
        }
        *self = RespStream::new();
        true
    }

    /// Feeds bytes; complete frames are appended to `out`. On error the stream is lost.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        ts: u64,
        out: &mut Vec<RespFrame>,
    ) -> Result<(), RespError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Lost => return Ok(()),
                State::Bulk { left } => {
                    let take = (*left).min(data.len() as u64) as usize;
                    if self.keep_bulk {
                        if let Some(f) = self.current.as_mut() {
                            // The trailing CRLF is inside `left`; keep value bytes only.
                            let value_take = take.min(left.saturating_sub(2) as usize);
                            f.kept.extend_last(&data[..value_take]);
                        }
                    }
                    *left -= take as u64;
                    data = &data[take..];
                    if *left == 0 {
                        self.state = State::Line;
                        self.keep_bulk = false;
                        self.element_done(out);
                    }
                }
                State::Line => {
                    let (used, complete) = match data.iter().position(|b| *b == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (data.len(), false),
                    };
                    if self.line.len() + used > MAX_LINE {
                        return self.fail(RespError::LineTooLong);
                    }
                    if self.line.is_empty() && self.stack.is_empty() && self.current.is_none() {
                        self.start_frame(ts);
                    }
                    if complete && self.line.is_empty() {
                        // The whole line is in this event: no copy.
                        let (line, rest) = data.split_at(used);
                        data = rest;
                        if let Err(e) = self.on_line(line, out) {
                            return self.fail(e);
                        }
                        continue;
                    }
                    self.line.extend_from_slice(&data[..used]);
                    data = &data[used..];
                    if complete {
                        let line = std::mem::take(&mut self.line);
                        let r = self.on_line(&line, out);
                        self.line = line;
                        self.line.clear();
                        if let Err(e) = r {
                            return self.fail(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `n` bytes were not copied. Only the inside of a bulk value can be skipped safely.
    pub fn gap(&mut self, n: u64, out: &mut Vec<RespFrame>) -> Result<(), RespError> {
        match &mut self.state {
            State::Lost => Ok(()),
            State::Bulk { left } if *left >= n => {
                *left -= n;
                if *left == 0 {
                    self.state = State::Line;
                    self.keep_bulk = false;
                    self.element_done(out);
                }
                Ok(())
            }
            _ => self.fail(RespError::LostSync),
        }
    }

    fn fail(&mut self, e: RespError) -> Result<(), RespError> {
        self.state = State::Lost;
        self.line.clear();
        self.stack.clear();
        self.current = None;
        self.in_attribute = false;
        Err(e)
    }

    fn start_frame(&mut self, ts: u64) {
        self.current = Some(RespFrame {
            ty: FrameType::Scalar,
            ts,
            len: 1,
            kept: Kept::default(),
        });
    }

    /// Whether the element now starting is one of the kept ones.
    fn keeps_next(&self) -> bool {
        let depth_ok = self.stack.len() <= 1;
        let count = self.current.as_ref().map_or(0, |f| f.kept.len());
        depth_ok && count < MAX_KEPT
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<RespFrame>) -> Result<(), RespError> {
        let body = line
            .strip_suffix(b"\r\n")
            .or_else(|| line.strip_suffix(b"\n"))
            .unwrap_or(line);
        let top = self.stack.is_empty();
        let Some((&ty, rest)) = body.split_first() else {
            // An empty line between inline commands: nothing.
            if top {
                self.current = None;
                return Ok(());
            }
            return Err(RespError::BadType);
        };
        let keep = self.keeps_next();
        match ty {
            b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => {
                if top {
                    let f = self.current.as_mut().expect("frame started");
                    f.ty = match ty {
                        b'+' => FrameType::Simple,
                        b'-' => FrameType::Error,
                        _ => FrameType::Scalar,
                    };
                }
                if keep {
                    self.keep(rest);
                }
                self.element_done(out);
            }
            b'$' | b'=' | b'!' => {
                let n = parse_len(rest)?;
                if top {
                    let f = self.current.as_mut().expect("frame started");
                    f.ty = if ty == b'!' {
                        FrameType::Error
                    } else {
                        FrameType::Bulk
                    };
                }
                if n < 0 {
                    // Null bulk string.
                    self.element_done(out);
                } else {
                    if keep {
                        self.keep(b"");
                    }
                    self.keep_bulk = keep;
                    self.state = State::Bulk { left: n as u64 + 2 };
                }
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let n = parse_len(rest)?;
                let elements = if ty == b'%' || ty == b'|' {
                    (n.max(0) as u64) * 2
                } else {
                    n.max(0) as u64
                };
                if top {
                    let f = self.current.as_mut().expect("frame started");
                    f.ty = if ty == b'>' {
                        FrameType::Push
                    } else {
                        FrameType::Array
                    };
                    f.len = elements as usize;
                    if ty == b'|' {
                        self.in_attribute = true;
                    }
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(RespError::TooDeep);
                }
                if elements == 0 {
                    self.element_done(out);
                } else {
                    self.stack.push(elements);
                }
            }
            _ if top => {
                // An inline command: words separated by spaces.
                let f = self.current.as_mut().expect("frame started");
                f.ty = FrameType::Inline;
                let words: Vec<&[u8]> = body
                    .split(|b| *b == b' ')
                    .filter(|w| !w.is_empty())
                    .collect();
                f.len = words.len();
                for w in words.iter().take(MAX_KEPT) {
                    f.kept.push(w);
                }
                if !body.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                    return Err(RespError::BadType);
                }
                self.element_done(out);
            }
            _ => return Err(RespError::BadType),
        }
        Ok(())
    }

    fn keep(&mut self, value: &[u8]) {
        if let Some(f) = self.current.as_mut() {
            f.kept.push(value);
        }
    }

    /// One element is complete: close every aggregate it completes, and the frame when the
    /// outermost one closes.
    fn element_done(&mut self, out: &mut Vec<RespFrame>) {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return;
            }
            self.stack.pop();
        }
        let Some(frame) = self.current.take() else {
            return;
        };
        if self.in_attribute {
            // The real value follows the attribute map; it keeps the attribute's timestamp.
            self.in_attribute = false;
            self.current = Some(RespFrame {
                ty: FrameType::Scalar,
                ts: frame.ts,
                len: 1,
                kept: Kept::default(),
            });
            return;
        }
        if frame.ty != FrameType::Inline || frame.len > 0 {
            out.push(frame);
        }
    }
}

/// A byte that opens a RESP value.
fn starts_value(b: u8) -> bool {
    matches!(
        b,
        b'+' | b'-'
            | b':'
            | b'$'
            | b'*'
            | b'_'
            | b','
            | b'#'
            | b'!'
            | b'='
            | b'('
            | b'%'
            | b'~'
            | b'>'
            | b'|'
    )
}

fn parse_len(digits: &[u8]) -> Result<i64, RespError> {
    let text = std::str::from_utf8(digits).map_err(|_| RespError::BadLength)?;
    let n: i64 = text.parse().map_err(|_| RespError::BadLength)?;
    if !(-1..=(1 << 32)).contains(&n) {
        return Err(RespError::BadLength);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<RespFrame> {
        let mut s = RespStream::new();
        let mut out = Vec::new();
        s.feed(input, 7, &mut out).expect("valid input");
        out
    }

    /// Feeds `input` whole and split at every offset; all must agree.
    fn frames_split(input: &[u8]) -> Vec<RespFrame> {
        let whole = frames(input);
        for cut in 1..input.len() {
            let mut s = RespStream::new();
            let mut out = Vec::new();
            s.feed(&input[..cut], 7, &mut out).unwrap();
            s.feed(&input[cut..], 7, &mut out).unwrap();
            assert_eq!(out, whole, "split at {cut}");
        }
        whole
    }

    fn kept(f: &RespFrame) -> Vec<String> {
        (0..f.kept.len()).map(|i| f.text(i).unwrap()).collect()
    }

    #[test]
    fn command_array() {
        let f = frames_split(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].ty, FrameType::Array);
        assert_eq!(f[0].len, 3);
        assert_eq!(kept(&f[0]), ["SET", "key", "value"]);
    }

    #[test]
    fn pipelined_commands() {
        let mut input = Vec::new();
        for i in 0..5 {
            input.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n$2\r\nk{i}\r\n").as_bytes());
        }
        let f = frames_split(&input);
        assert_eq!(f.len(), 5);
        assert_eq!(kept(&f[4]), ["GET", "k4"]);
    }

    #[test]
    fn replies_of_every_resp2_type() {
        let f = frames_split(
            b"+OK\r\n-WRONGTYPE Operation against a key\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n*-1\r\n*0\r\n",
        );
        let types: Vec<FrameType> = f.iter().map(|f| f.ty).collect();
        assert_eq!(
            types,
            [
                FrameType::Simple,
                FrameType::Error,
                FrameType::Scalar,
                FrameType::Bulk,
                FrameType::Bulk,
                FrameType::Array,
                FrameType::Array,
                FrameType::Array
            ]
        );
        assert_eq!(f[1].error_code().as_deref(), Some("WRONGTYPE"));
        assert_eq!(kept(&f[5]), ["a", "1"]);
    }

    #[test]
    fn resp3_types_push_and_attribute() {
        let f = frames_split(
            b"%1\r\n+server\r\n+redis\r\n_\r\n,1.5\r\n#t\r\n(123\r\n=8\r\ntxt:abcd\r\n~1\r\n:1\r\n!9\r\nERR boom!\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n|1\r\n+ttl\r\n:3\r\n+OK\r\n",
        );
        let types: Vec<FrameType> = f.iter().map(|f| f.ty).collect();
        assert_eq!(
            types,
            [
                FrameType::Array,
                FrameType::Scalar,
                FrameType::Scalar,
                FrameType::Scalar,
                FrameType::Scalar,
                FrameType::Bulk,
                FrameType::Array,
                FrameType::Error,
                FrameType::Push,
                // The attribute is dropped; the reply after it remains.
                FrameType::Simple,
            ]
        );
        assert_eq!(f[0].len, 2);
        assert_eq!(f[7].error_code().as_deref(), Some("ERR"));
        assert_eq!(kept(&f[8]), ["message", "ch", "x"]);
    }

    #[test]
    fn nested_arrays_complete_once() {
        let f = frames_split(b"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n+x\r\n+after\r\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].len, 2);
        assert_eq!(f[1].ty, FrameType::Simple);
    }

    #[test]
    fn inline_commands() {
        let f = frames_split(b"PING\r\nSET k v\r\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].ty, FrameType::Inline);
        assert_eq!(kept(&f[1]), ["SET", "k", "v"]);
        assert_eq!(f[1].len, 3);
    }

    #[test]
    fn long_values_are_cut_and_skipped_across_a_gap() {
        let value = vec![b'v'; 10_000];
        let mut input = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$10000\r\n".to_vec();
        input.extend_from_slice(&value);
        input.extend_from_slice(b"\r\n*1\r\n$4\r\nPING\r\n");
        // Whole: the kept value is cut.
        let f = frames(&input);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].kept.get(2).unwrap().len(), MAX_ELEMENT);
        // As the kernel ships it: a 4096-byte prefix, the rest of the value as a gap, and
        // the next write in full.
        let first_write = input.len() - 16;
        let mut s = RespStream::new();
        let mut out = Vec::new();
        s.feed(&input[..4096], 1, &mut out).unwrap();
        s.gap((first_write - 4096) as u64, &mut out).unwrap();
        s.feed(&input[first_write..], 2, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(kept(&out[1]), ["PING"]);
        assert_eq!(out[1].ts, 2);
    }

    #[test]
    fn gap_in_framing_loses_sync_then_resyncs_on_a_new_write() {
        let mut s = RespStream::new();
        let mut out = Vec::new();
        s.feed(b"*2\r\n$3\r\nGET\r\n", 1, &mut out).unwrap();
        assert_eq!(s.gap(100, &mut out), Err(RespError::LostSync));
        assert!(s.is_lost());
        s.feed(b"garbage", 2, &mut out).unwrap();
        assert!(!s.resync(Some(b'g')));
        assert!(s.resync(Some(b'*')));
        s.feed(b"*1\r\n$4\r\nPING\r\n", 3, &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: [&[u8]; 7] = [
            b"*x\r\n",
            b"$-5\r\n",
            b"*99999999999\r\n",
            b"\x00\x01\x02\r\n",
            b"$3\r\nabcdefgh\r\n",
            b":\r\n*1\r\n",
            b"\r\n\r\n",
        ];
        for input in inputs {
            for cut in 0..=input.len() {
                let mut s = RespStream::new();
                let mut out = Vec::new();
                let _ = s.feed(&input[..cut], 0, &mut out);
                let _ = s.feed(&input[cut..], 0, &mut out);
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    *rng.choice(b"*$+-:\r\n0123456789abc_>|%~!=#,(".iter())
                        .unwrap()
                })
                .collect();
            let mut s = RespStream::new();
            let mut out = Vec::new();
            let _ = s.feed(&bytes, 0, &mut out);
            let _ = s.gap(rng.u64(0..10), &mut out);
        }
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let input = "*1\r\n".repeat(40);
        let mut s = RespStream::new();
        let mut out = Vec::new();
        assert_eq!(
            s.feed(input.as_bytes(), 0, &mut out),
            Err(RespError::TooDeep)
        );
    }
}
