//! Incremental HTTP/1.x message framing for one direction of one connection.
//!
//! An [`HttpStream`] is fed the bytes of each syscall as they arrive (arbitrary splits, many
//! pipelined messages per call, gaps where the kernel copied only a prefix) and reports
//! [`HttpEvent`]s: a message head, then the end of that message with its body size. Heads are
//! tokenised by `httparse`; bodies are framed here (Content-Length, chunked with trailers,
//! until-close, and the no-body cases of HEAD, 1xx, 204 and 304).
//!
//! Nothing here panics on bad input: malformed bytes give a [`ParseError`], the stream drops
//! what it cannot frame and picks up again at the next syscall that starts a message.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::sync::Arc;

use crate::protocols::llm;
use crate::protocols::shared::interned;

/// Largest message head buffered while waiting for its end.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 96;

/// Which messages a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    Requests,
    Responses,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// The standard methods are not copied per request.
    pub method: Cow<'static, str>,
    /// The path only: the query string is cut off here and never stored. Shared (not
    /// copied) into the call's span.
    pub path: Arc<str>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The Host header, when present; one copy per capture thread (`shared::interned`).
    pub host: Option<Arc<str>>,
    /// The W3C `traceparent` header, when present.
    pub traceparent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    /// The LLM provider a response header names by its presence (`openai-version`).
    pub provider: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpEvent {
    /// A message head was parsed (`ts`: the time of the syscall that carried its first byte).
    Head { head: Head, ts: u64 },
    /// The message ended; `body_size` counts the bytes after the head as sent on the wire.
    End { body_size: u64, ts: u64 },
    /// `101 Switching Protocols` or a successful CONNECT: the rest is not HTTP/1.
    Upgraded,
    /// Body bytes of a message whose body is tapped (see `HttpStream::tap_requests`,
    /// `tap_last_response`), de-chunked, as they arrive.
    Body { data: Vec<u8>, ts: u64 },
    /// Body bytes of a tapped message were not copied (`n` of them): what follows does not
    /// continue what came before.
    BodyGap { n: u64 },
}

/// Why bytes could not be framed. `as_str` is a low-cardinality metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    InvalidHead(&'static str),
    HeadTooLarge,
    InvalidContentLength,
    InvalidChunk,
    /// Bytes were missing from the capture where framing needed them.
    Truncated,
    /// The connection ended inside a head (one that never ended).
    UnfinishedHead,
    /// The connection ended inside a Content-Length or chunked body.
    UnfinishedBody,
}

impl ParseError {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::InvalidHead(kind) => kind,
            ParseError::HeadTooLarge => "head_too_large",
            ParseError::InvalidContentLength => "invalid_content_length",
            ParseError::InvalidChunk => "invalid_chunk",
            ParseError::Truncated => "truncated",
            ParseError::UnfinishedHead => "unfinished_head",
            ParseError::UnfinishedBody => "unfinished_body",
        }
    }
}

fn httparse_kind(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid_header_name",
        httparse::Error::HeaderValue => "invalid_header_value",
        httparse::Error::NewLine => "invalid_new_line",
        httparse::Error::Status => "invalid_status",
        httparse::Error::Token => "invalid_token",
        httparse::Error::TooManyHeaders => "too_many_headers",
        httparse::Error::Version => "invalid_version",
    }
}

/// What the request a response answers implies for that response's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Normal,
    Head,
    Connect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size {
        value: u64,
        digits: u8,
        in_ext: bool,
    },
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk; `line_len` of the current line.
    Trailer {
        line_len: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for (the rest of) a message head.
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    /// Lost framing. `in_message`: a message's body is being skipped (it ends at the next
    /// message start or at close).
    Desync {
        in_message: bool,
    },
    /// Not HTTP/1 any more (upgrade, tunnel).
    Opaque,
}

pub struct HttpStream {
    kind: StreamKind,
    state: State,
    head_buf: Vec<u8>,
    head_ts: u64,
    body_size: u64,
    last_ts: u64,
    /// For response streams: the kinds of the requests still waiting for a response, in
    /// order, and whether their response bodies are tapped.
    awaiting: VecDeque<(RequestKind, bool)>,
    /// For request streams: which requests have their bodies tapped.
    tap_requests: Option<fn(&RequestHead) -> bool>,
    /// The body of the message in progress is tapped.
    tap: bool,
    /// Request streams: the Host value sent last, the capture thread's one copy (a
    /// connection keeps sending the same one). One field: 10,000 idle connections hold
    /// no more than that.
    last_host: Option<Arc<str>>,
}

impl HttpStream {
    pub fn new(kind: StreamKind) -> Self {
        HttpStream {
            kind,
            state: State::Head,
            head_buf: Vec::new(),
            head_ts: 0,
            body_size: 0,
            last_ts: 0,
            awaiting: VecDeque::new(),
            tap_requests: None,
            tap: false,
            last_host: None,
        }
    }

    /// The shared copy of a request's Host value.
    fn shared_host(&mut self, host: &str) -> Arc<str> {
        match &self.last_host {
            Some(last) if **last == *host => last.clone(),
            _ => {
                let host = interned(host);
                self.last_host = Some(host.clone());
                host
            }
        }
    }

    /// Request streams: the bodies of the requests `which` picks are delivered as `Body`
    /// events (the LLM readers ask for those of LLM API calls).
    pub fn tap_requests(&mut self, which: fn(&RequestHead) -> bool) {
        self.tap_requests = Some(which);
    }

    /// Response streams: the body of the response to the request announced last (with
    /// `expect_response_to`) is delivered as `Body` events.
    pub fn tap_last_response(&mut self) {
        if let Some((_, tap)) = self.awaiting.back_mut() {
            *tap = true;
        }
    }

    /// Tells a response stream that a request of this kind was sent (HEAD and CONNECT change
    /// how its response is framed).
    pub fn expect_response_to(&mut self, kind: RequestKind) {
        if self.awaiting.len() < 1024 {
            self.awaiting.push_back((kind, false));
        }
    }

    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Body bytes of the message in progress so far (as sent on the wire).
    pub fn body_size(&self) -> u64 {
        self.body_size
    }

    /// Feeds the bytes one syscall carried. Events are appended to `out`.
    pub fn feed(&mut self, data: &[u8], ts: u64, out: &mut Vec<HttpEvent>) -> Option<ParseError> {
        self.last_ts = ts;
        if let State::Desync { in_message } = self.state {
            // Framing resumes only where a syscall starts with a message.
            if !starts_message(self.kind, data) {
                if in_message {
                    self.body_size += data.len() as u64;
                }
                return None;
            }
            if in_message {
                out.push(HttpEvent::End {
                    body_size: self.body_size,
                    ts,
                });
            }
            self.state = State::Head;
            self.head_buf.clear();
        }
        let mut rest = data;
        while !rest.is_empty() {
            match self.step(rest, ts, out) {
                Ok(used) => rest = &rest[used..],
                Err(e) => {
                    self.head_buf.clear();
                    self.state = State::Desync { in_message: false };
                    return Some(e);
                }
            }
            if self.state == State::Opaque {
                break;
            }
        }
        None
    }

    /// `n` bytes moved that the kernel did not copy (the tail of a large message).
    pub fn gap(&mut self, n: u64, ts: u64, out: &mut Vec<HttpEvent>) -> Option<ParseError> {
        self.last_ts = ts;
        match self.state {
            State::Length(rem) if n <= rem => {
                self.body_size += n;
                self.tap_gap(n, out);
                if n == rem {
                    self.finish(ts, out);
                } else {
                    self.state = State::Length(rem - n);
                }
                None
            }
            State::Chunked(Chunk::Data(rem)) if n < rem => {
                self.body_size += n;
                self.tap_gap(n, out);
                self.state = State::Chunked(Chunk::Data(rem - n));
                None
            }
            State::Length(_) | State::Chunked(_) => {
                // The gap runs past what framing can account for: skip to the next message.
                self.body_size += n;
                self.tap_gap(n, out);
                self.state = State::Desync { in_message: true };
                None
            }
            State::UntilClose | State::Desync { in_message: true } => {
                self.body_size += n;
                self.tap_gap(n, out);
                None
            }
            State::Head if self.head_buf.is_empty() => {
                self.state = State::Desync { in_message: false };
                Some(ParseError::Truncated)
            }
            State::Head => {
                self.head_buf.clear();
                self.state = State::Desync { in_message: false };
                Some(ParseError::Truncated)
            }
            State::Desync { in_message: false } | State::Opaque => None,
        }
    }

    /// Whether the stream stopped inside a message whose end it knows how to find (a head
    /// being buffered, a Content-Length or chunked body): at the connection's end, that
    /// message never ended. A body delimited by the close is not one.
    pub fn unfinished(&self) -> Option<ParseError> {
        match self.state {
            State::Head if !self.head_buf.is_empty() => Some(ParseError::UnfinishedHead),
            State::Length(_) | State::Chunked(_) => Some(ParseError::UnfinishedBody),
            _ => None,
        }
    }

    /// The connection failed (reset, broken pipe): nothing more will come, what was in
    /// progress is dropped (the caller counts it through `unfinished` first).
    pub fn abandon(&mut self) {
        self.head_buf.clear();
        self.tap = false;
        self.state = State::Desync { in_message: false };
    }

    /// The connection closed: a body delimited by the close ends here.
    pub fn close(&mut self, ts: u64, out: &mut Vec<HttpEvent>) {
        match self.state {
            State::UntilClose | State::Desync { in_message: true } => {
                let ts = if ts == 0 { self.last_ts } else { ts };
                out.push(HttpEvent::End {
                    body_size: self.body_size,
                    ts,
                });
            }
            _ => {}
        }
        self.state = State::Head;
        self.head_buf.clear();
        self.tap = false;
    }

    fn finish(&mut self, ts: u64, out: &mut Vec<HttpEvent>) {
        out.push(HttpEvent::End {
            body_size: self.body_size,
            ts,
        });
        self.body_size = 0;
        self.state = State::Head;
        self.tap = false;
    }

    /// Body bytes of the message in progress, delivered when it is tapped.
    fn tap_body(&self, data: &[u8], ts: u64, out: &mut Vec<HttpEvent>) {
        if self.tap && !data.is_empty() {
            out.push(HttpEvent::Body {
                data: data.to_vec(),
                ts,
            });
        }
    }

    fn tap_gap(&self, n: u64, out: &mut Vec<HttpEvent>) {
        if self.tap {
            out.push(HttpEvent::BodyGap { n });
        }
    }

    /// Consumes a prefix of `data` in the current state; returns how much.
    fn step(
        &mut self,
        data: &[u8],
        ts: u64,
        out: &mut Vec<HttpEvent>,
    ) -> Result<usize, ParseError> {
        match self.state {
            State::Head => self.step_head(data, ts, out),
            State::Length(rem) => {
                let n = rem.min(data.len() as u64);
                self.body_size += n;
                self.tap_body(&data[..n as usize], ts, out);
                if n == rem {
                    self.finish(ts, out);
                } else {
                    self.state = State::Length(rem - n);
                }
                Ok(n as usize)
            }
            State::Chunked(chunk) => self.step_chunked(chunk, data, ts, out),
            State::UntilClose => {
                self.body_size += data.len() as u64;
                self.tap_body(data, ts, out);
                Ok(data.len())
            }
            State::Desync { .. } | State::Opaque => Ok(data.len()),
        }
    }

    fn step_head(
        &mut self,
        data: &[u8],
        ts: u64,
        out: &mut Vec<HttpEvent>,
    ) -> Result<usize, ParseError> {
        if self.head_buf.is_empty() {
            // Blank lines between messages are allowed (RFC 9112 section 2.2).
            let skip = data
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if skip > 0 {
                return Ok(skip);
            }
            self.head_ts = ts;
            // Fast path: the whole head is in this syscall's bytes.
            if let Some(used) = self.try_head(data, out)? {
                return Ok(used);
            }
            if data.len() > MAX_HEAD {
                return Err(ParseError::HeadTooLarge);
            }
            self.head_buf.extend_from_slice(data);
            return Ok(data.len());
        }
        let before = self.head_buf.len();
        let take = data.len().min(MAX_HEAD + 1 - before.min(MAX_HEAD));
        self.head_buf.extend_from_slice(&data[..take]);
        let buf = std::mem::take(&mut self.head_buf);
        let parsed = self.try_head(&buf, out);
        match parsed {
            Ok(Some(used)) => Ok(used - before),
            Ok(None) if buf.len() > MAX_HEAD => Err(ParseError::HeadTooLarge),
            Ok(None) => {
                self.head_buf = buf;
                Ok(take)
            }
            Err(e) => Err(e),
        }
    }

    /// Parses a complete head from `buf` if there is one; returns the head's length.
    fn try_head(
        &mut self,
        buf: &[u8],
        out: &mut Vec<HttpEvent>,
    ) -> Result<Option<usize>, ParseError> {
        // Left uninitialised: zeroing 96 headers on every attempt cost more than the parse.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let config = httparse::ParserConfig::default();
        match self.kind {
            StreamKind::Requests => {
                let mut req = httparse::Request::new(&mut []);
                let used =
                    match config.parse_request_with_uninit_headers(&mut req, buf, &mut headers) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(e) => return Err(ParseError::InvalidHead(httparse_kind(e))),
                    };
                let framing = Framing::from_headers(req.headers)?;
                let target = req.path.unwrap_or("/");
                let path = target.split(['?', '#']).next().unwrap_or("");
                let head = RequestHead {
                    method: method_of(req.method.unwrap_or("")),
                    path: path.into(),
                    minor_version: req.version.unwrap_or(1),
                    host: framing.host.map(|h| self.shared_host(h)),
                    traceparent: framing.traceparent,
                };
                self.tap = self.tap_requests.is_some_and(|tap| tap(&head));
                out.push(HttpEvent::Head {
                    head: Head::Request(head),
                    ts: self.head_ts,
                });
                self.body_size = 0;
                // A request without Content-Length or chunked coding has no body.
                self.state = match (framing.chunked, framing.content_length) {
                    (true, _) => State::Chunked(Chunk::Size {
                        value: 0,
                        digits: 0,
                        in_ext: false,
                    }),
                    (false, Some(n)) if n > 0 => State::Length(n),
                    _ => {
                        out.push(HttpEvent::End {
                            body_size: 0,
                            ts: self.head_ts,
                        });
                        State::Head
                    }
                };
                Ok(Some(used))
            }
            StreamKind::Responses => {
                let mut resp = httparse::Response::new(&mut []);
                let used =
                    match config.parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(e) => return Err(ParseError::InvalidHead(httparse_kind(e))),
                    };
                let status = resp.code.unwrap_or(0);
                let framing = Framing::from_headers(resp.headers)?;
                if (100..200).contains(&status) {
                    // Interim responses (100 Continue, 103 Early Hints) answer nothing yet.
                    if status == 101 {
                        self.state = State::Opaque;
                        out.push(HttpEvent::Upgraded);
                    }
                    return Ok(Some(used));
                }
                let (request, tap) = self
                    .awaiting
                    .pop_front()
                    .unwrap_or((RequestKind::Normal, false));
                self.tap = tap;
                let head = ResponseHead {
                    status,
                    minor_version: resp.version.unwrap_or(1),
                    provider: framing.provider,
                };
                out.push(HttpEvent::Head {
                    head: Head::Response(head),
                    ts: self.head_ts,
                });
                self.body_size = 0;
                if request == RequestKind::Connect && (200..300).contains(&status) {
                    out.push(HttpEvent::End {
                        body_size: 0,
                        ts: self.head_ts,
                    });
                    out.push(HttpEvent::Upgraded);
                    self.state = State::Opaque;
                    return Ok(Some(used));
                }
                let no_body = request == RequestKind::Head || status == 204 || status == 304;
                self.state = match (no_body, framing.chunked, framing.content_length) {
                    (true, _, _) | (false, false, Some(0)) => {
                        out.push(HttpEvent::End {
                            body_size: 0,
                            ts: self.head_ts,
                        });
                        State::Head
                    }
                    (false, true, _) => State::Chunked(Chunk::Size {
                        value: 0,
                        digits: 0,
                        in_ext: false,
                    }),
                    (false, false, Some(n)) => State::Length(n),
                    (false, false, None) => State::UntilClose,
                };
                Ok(Some(used))
            }
        }
    }

    fn step_chunked(
        &mut self,
        chunk: Chunk,
        data: &[u8],
        ts: u64,
        out: &mut Vec<HttpEvent>,
    ) -> Result<usize, ParseError> {
        match chunk {
            Chunk::Data(rem) => {
                let n = rem.min(data.len() as u64);
                self.body_size += n;
                self.tap_body(&data[..n as usize], ts, out);
                self.state = State::Chunked(if n == rem {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rem - n)
                });
                return Ok(n as usize);
            }
            Chunk::Size { .. } | Chunk::DataEnd | Chunk::Trailer { .. } => {}
        }
        // Framing lines are walked byte by byte; they are short.
        let mut state = chunk;
        for (i, &b) in data.iter().enumerate() {
            self.body_size += 1;
            state = match state {
                Chunk::Size {
                    value,
                    digits,
                    in_ext,
                } => match b {
                    b'\n' if digits == 0 => return Err(ParseError::InvalidChunk),
                    b'\n' if value == 0 => Chunk::Trailer { line_len: 0 },
                    b'\n' => {
                        self.state = State::Chunked(Chunk::Data(value));
                        return Ok(i + 1);
                    }
                    b'\r' => Chunk::Size {
                        value,
                        digits,
                        in_ext: true,
                    },
                    _ if in_ext => Chunk::Size {
                        value,
                        digits,
                        in_ext,
                    },
                    b';' | b' ' | b'\t' => Chunk::Size {
                        value,
                        digits,
                        in_ext: true,
                    },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(ParseError::InvalidChunk)?;
                        if digits >= 15 {
                            return Err(ParseError::InvalidChunk);
                        }
                        Chunk::Size {
                            value: value * 16 + d as u64,
                            digits: digits + 1,
                            in_ext,
                        }
                    }
                },
                Chunk::DataEnd => match b {
                    b'\r' => Chunk::DataEnd,
                    b'\n' => Chunk::Size {
                        value: 0,
                        digits: 0,
                        in_ext: false,
                    },
                    _ => return Err(ParseError::InvalidChunk),
                },
                Chunk::Trailer { line_len } => match b {
                    b'\n' if line_len == 0 => {
                        self.finish(ts, out);
                        return Ok(i + 1);
                    }
                    b'\n' => Chunk::Trailer { line_len: 0 },
                    b'\r' => Chunk::Trailer { line_len },
                    _ => Chunk::Trailer {
                        line_len: line_len + 1,
                    },
                },
                // Entering Data returns above, so this arm only hands the bytes back.
                Chunk::Data(n) => {
                    self.body_size -= 1;
                    self.state = State::Chunked(Chunk::Data(n));
                    return Ok(i);
                }
            };
        }
        self.state = State::Chunked(state);
        Ok(data.len())
    }
}

/// The headers that decide framing and identity.
struct Framing<'a> {
    content_length: Option<u64>,
    chunked: bool,
    host: Option<&'a str>,
    traceparent: Option<String>,
    provider: Option<&'static str>,
}

impl<'a> Framing<'a> {
    fn from_headers(headers: &[httparse::Header<'a>]) -> Result<Framing<'a>, ParseError> {
        let mut f = Framing {
            content_length: None,
            chunked: false,
            host: None,
            traceparent: None,
            provider: None,
        };
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(ParseError::InvalidContentLength)?;
                if f.content_length.is_some_and(|old| old != v) {
                    return Err(ParseError::InvalidContentLength);
                }
                f.content_length = Some(v);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked must be the final coding (RFC 9112 section 6.1).
                let v = String::from_utf8_lossy(h.value);
                f.chunked = v
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("host") {
                f.host = std::str::from_utf8(h.value).ok().map(str::trim);
            } else if name.eq_ignore_ascii_case("traceparent") {
                f.traceparent = std::str::from_utf8(h.value)
                    .ok()
                    .map(|s| s.trim().to_string());
            } else if f.provider.is_none() {
                f.provider = llm::provider_of_header(name);
            }
        }
        Ok(f)
    }
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

/// A request's method as kept: the standard ones without an allocation.
fn method_of(method: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_string()),
    }
}

/// Whether `data` begins with a request line (for request streams) or a status line.
pub fn starts_message(kind: StreamKind, data: &[u8]) -> bool {
    match kind {
        StreamKind::Requests => METHODS.iter().any(|m| data.starts_with(m)),
        StreamKind::Responses => data.starts_with(b"HTTP/1."),
    }
}

/// The kind of request a method names, for framing its response.
pub fn request_kind(method: &str) -> RequestKind {
    match method {
        "HEAD" => RequestKind::Head,
        "CONNECT" => RequestKind::Connect,
        _ => RequestKind::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> Head {
        Head::Request(RequestHead {
            method: method.to_string().into(),
            path: path.into(),
            minor_version: 1,
            host: Some("h".into()),
            traceparent: None,
        })
    }

    fn resp(status: u16) -> Head {
        Head::Response(ResponseHead {
            status,
            minor_version: 1,
            provider: None,
        })
    }

    /// Events without timestamps, for comparing runs fed with different splits.
    #[derive(Debug, PartialEq)]
    enum Ev {
        Head(Head),
        End(u64),
        Upgraded,
    }

    fn strip(events: Vec<HttpEvent>) -> Vec<Ev> {
        events
            .into_iter()
            .filter_map(|e| match e {
                HttpEvent::Head { head, .. } => Some(Ev::Head(head)),
                HttpEvent::End { body_size, .. } => Some(Ev::End(body_size)),
                HttpEvent::Upgraded => Some(Ev::Upgraded),
                // Bodies are tapped only where asked (see the tap tests).
                HttpEvent::Body { .. } | HttpEvent::BodyGap { .. } => None,
            })
            .collect()
    }

    /// The body bytes a tapped stream delivered, joined, and its gaps.
    fn tapped(events: &[HttpEvent]) -> (Vec<u8>, u64) {
        let mut body = Vec::new();
        let mut gaps = 0;
        for e in events {
            match e {
                HttpEvent::Body { data, .. } => body.extend_from_slice(data),
                HttpEvent::BodyGap { n } => gaps += n,
                _ => {}
            }
        }
        (body, gaps)
    }

    #[test]
    fn tapped_bodies_arrive_dechunked_whatever_the_splits() {
        let response: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\ndata:\r\n6\r\n {}\n\n\n\r\n0\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno";
        for cut in 0..response.len() {
            let mut s = HttpStream::new(StreamKind::Responses);
            s.expect_response_to(RequestKind::Normal);
            s.tap_last_response();
            s.expect_response_to(RequestKind::Normal);
            let mut out = Vec::new();
            for piece in [&response[..cut], &response[cut..]] {
                assert_eq!(s.feed(piece, 1, &mut out), None);
            }
            // The second response was not tapped.
            assert_eq!(
                tapped(&out),
                (b"data: {}\n\n\n".to_vec(), 0),
                "cut at {cut}"
            );
        }
        // Requests: only those the predicate picks; a gap is reported, not filled.
        let mut s = HttpStream::new(StreamKind::Requests);
        s.tap_requests(|h| &*h.path == "/v1/chat/completions");
        let mut out = Vec::new();
        let req = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\"";
        s.feed(req, 1, &mut out);
        s.gap(4, 1, &mut out);
        s.feed(b"1}", 1, &mut out);
        s.feed(
            b"POST /other HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            1,
            &mut out,
        );
        assert_eq!(tapped(&out), (b"{\"a\"1}".to_vec(), 4));
    }

    fn run(
        kind: StreamKind,
        pieces: &[&[u8]],
        awaiting: &[RequestKind],
        close: bool,
    ) -> (Vec<Ev>, Vec<ParseError>) {
        let mut s = HttpStream::new(kind);
        for k in awaiting {
            s.expect_response_to(*k);
        }
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            errors.extend(s.feed(p, i as u64 + 1, &mut out));
        }
        if close {
            s.close(0, &mut out);
        }
        (strip(out), errors)
    }

    /// Feeds `bytes` whole and split at every offset; every run must give `expected`.
    fn check_all_splits(
        kind: StreamKind,
        bytes: &[u8],
        awaiting: &[RequestKind],
        close: bool,
        expected: &[Ev],
    ) {
        let (whole, errors) = run(kind, &[bytes], awaiting, close);
        assert!(errors.is_empty(), "errors {errors:?}");
        assert_eq!(whole, expected, "whole");
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            let (got, errors) = run(kind, &[a, b], awaiting, close);
            assert!(errors.is_empty(), "split at {cut}: errors {errors:?}");
            assert_eq!(got, expected, "split at {cut}");
        }
    }

    #[test]
    fn simple_get_request() {
        let bytes = b"GET /a/b?token=secret HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n";
        check_all_splits(
            StreamKind::Requests,
            bytes,
            &[],
            false,
            &[Ev::Head(req("GET", "/a/b")), Ev::End(0)],
        );
    }

    #[test]
    fn query_string_is_never_kept() {
        let (got, _) = run(
            StreamKind::Requests,
            &[b"GET /p?user=alice&key=k HTTP/1.1\r\nHost: h\r\n\r\n"],
            &[],
            false,
        );
        let Ev::Head(Head::Request(r)) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(&*r.path, "/p");
        assert!(!format!("{got:?}").contains("alice"));
    }

    #[test]
    fn a_host_sent_again_shares_its_copy() {
        let (got, _) = run(
            StreamKind::Requests,
            &[
                b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /a?q=1 HTTP/1.1\r\nHost: h\r\n\r\n",
                b"GET /b HTTP/1.1\r\nHost: g\r\n\r\n",
            ],
            &[],
            false,
        );
        let heads: Vec<&RequestHead> = got
            .iter()
            .filter_map(|e| match e {
                Ev::Head(Head::Request(r)) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(heads.len(), 3, "{got:?}");
        assert_eq!((&*heads[0].path, &*heads[1].path), ("/a", "/a"));
        assert!(Arc::ptr_eq(
            heads[0].host.as_ref().unwrap(),
            heads[1].host.as_ref().unwrap()
        ));
        assert_eq!(
            (&*heads[2].path, heads[2].host.as_deref()),
            ("/b", Some("g"))
        );
    }

    #[test]
    fn content_length_request_body() {
        let bytes = b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world";
        check_all_splits(
            StreamKind::Requests,
            bytes,
            &[],
            false,
            &[Ev::Head(req("POST", "/u")), Ev::End(11)],
        );
    }

    #[test]
    fn pipelined_requests_in_one_write() {
        let bytes = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: h\r\n\r\n";
        check_all_splits(
            StreamKind::Requests,
            bytes,
            &[],
            false,
            &[
                Ev::Head(req("GET", "/1")),
                Ev::End(0),
                Ev::Head(req("POST", "/2")),
                Ev::End(3),
                Ev::Head(req("GET", "/3")),
                Ev::End(0),
            ],
        );
    }

    #[test]
    fn chunked_response_with_extensions_and_trailers() {
        let bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: v\r\n\r\n";
        let body = bytes.len() - b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".len();
        check_all_splits(
            StreamKind::Responses,
            bytes,
            &[],
            false,
            &[Ev::Head(resp(200)), Ev::End(body as u64)],
        );
    }

    #[test]
    fn chunked_request_then_keep_alive() {
        let bytes = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: h\r\n\r\n";
        check_all_splits(
            StreamKind::Requests,
            bytes,
            &[],
            false,
            &[
                Ev::Head(req("POST", "/c")),
                Ev::End(13),
                Ev::Head(req("GET", "/n")),
                Ev::End(0),
            ],
        );
    }

    #[test]
    fn responses_without_body() {
        // A HEAD response carries Content-Length but no body; 204 and 304 have none either.
        let bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        check_all_splits(
            StreamKind::Responses,
            bytes,
            &[
                RequestKind::Head,
                RequestKind::Normal,
                RequestKind::Normal,
                RequestKind::Normal,
            ],
            false,
            &[
                Ev::Head(resp(200)),
                Ev::End(0),
                Ev::Head(resp(204)),
                Ev::End(0),
                Ev::Head(resp(304)),
                Ev::End(0),
                Ev::Head(resp(200)),
                Ev::End(2),
            ],
        );
    }

    #[test]
    fn interim_100_continue_is_not_a_response() {
        let bytes =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        check_all_splits(
            StreamKind::Responses,
            bytes,
            &[],
            false,
            &[Ev::Head(resp(201)), Ev::End(0)],
        );
    }

    #[test]
    fn body_until_close() {
        let bytes = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this until close";
        let expected = [
            Ev::Head(Head::Response(ResponseHead {
                status: 200,
                minor_version: 0,
                provider: None,
            })),
            Ev::End(23),
        ];
        check_all_splits(StreamKind::Responses, bytes, &[], true, &expected);
        // Without the close the message has not ended.
        let (got, _) = run(StreamKind::Responses, &[bytes], &[], false);
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn upgrade_stops_parsing() {
        let bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        check_all_splits(StreamKind::Responses, bytes, &[], false, &[Ev::Upgraded]);
    }

    #[test]
    fn traceparent_and_host_are_read() {
        let (got, _) = run(
            StreamKind::Requests,
            &[b"GET / HTTP/1.1\r\nhost: example:8080\r\nTRACEPARENT: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"],
            &[],
            false,
        );
        let Ev::Head(Head::Request(r)) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(r.host.as_deref(), Some("example:8080"));
        assert_eq!(
            r.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }

    #[test]
    fn large_body_with_gap_keeps_size() {
        // The kernel copied 10 bytes of a 100000-byte body; the gap carries the rest.
        let mut s = HttpStream::new(StreamKind::Responses);
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789";
        assert_eq!(s.feed(head, 1, &mut out), None);
        assert_eq!(s.gap(100000 - 10, 2, &mut out), None);
        assert_eq!(strip(out), vec![Ev::Head(resp(200)), Ev::End(100000)]);
    }

    #[test]
    fn chunked_body_with_gap_ends_at_next_response() {
        let mut s = HttpStream::new(StreamKind::Responses);
        let mut out = Vec::new();
        s.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\nabc",
            1,
            &mut out,
        );
        s.gap(5000, 2, &mut out);
        s.gap(70000, 3, &mut out);
        s.feed(b"more bytes of the lost body", 4, &mut out);
        s.feed(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            5,
            &mut out,
        );
        let ev = strip(out);
        assert_eq!(ev[0], Ev::Head(resp(200)));
        assert!(matches!(ev[1], Ev::End(n) if n > 75000), "{ev:?}");
        assert_eq!(&ev[2..], &[Ev::Head(resp(404)), Ev::End(0)]);
    }

    #[test]
    fn garbage_gives_errors_and_recovers() {
        let mut s = HttpStream::new(StreamKind::Requests);
        let mut out = Vec::new();
        assert!(matches!(
            s.feed(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 1, &mut out),
            Some(ParseError::InvalidHead(_))
        ));
        assert_eq!(s.feed(b"\x00\x01\x02 not http", 2, &mut out), None);
        assert_eq!(
            s.feed(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n", 3, &mut out),
            None
        );
        assert_eq!(strip(out), vec![Ev::Head(req("GET", "/ok")), Ev::End(0)]);
    }

    #[test]
    fn bad_content_length_and_chunk_size_are_errors() {
        let mut s = HttpStream::new(StreamKind::Requests);
        let mut out = Vec::new();
        assert_eq!(
            s.feed(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                1,
                &mut out
            ),
            Some(ParseError::InvalidContentLength)
        );
        let mut s = HttpStream::new(StreamKind::Responses);
        assert_eq!(
            s.feed(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                1,
                &mut out
            ),
            Some(ParseError::InvalidChunk)
        );
    }

    #[test]
    fn oversized_head_is_an_error() {
        let mut s = HttpStream::new(StreamKind::Requests);
        let mut out = Vec::new();
        let mut err = None;
        s.feed(b"GET / HTTP/1.1\r\n", 1, &mut out);
        for _ in 0..100 {
            err = err.or(s.feed(&[b'x'; 1000], 2, &mut out));
        }
        assert_eq!(err, Some(ParseError::HeadTooLarge));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..300);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() {
                let prefix: &[u8] = if rng.bool() {
                    b"HTTP/1.1 200 OK\r\n"
                } else {
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                };
                bytes.splice(0..0, prefix.iter().copied());
            }
            for kind in [StreamKind::Requests, StreamKind::Responses] {
                let mut s = HttpStream::new(kind);
                let mut out = Vec::new();
                let cut = rng.usize(0..=bytes.len());
                s.feed(&bytes[..cut], 1, &mut out);
                s.gap(rng.u64(0..10_000), 2, &mut out);
                s.feed(&bytes[cut..], 3, &mut out);
                s.close(4, &mut out);
            }
        }
    }
}
