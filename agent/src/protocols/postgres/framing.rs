//! PostgreSQL protocol 3.0 framing: splits one direction of a connection into messages,
//! whatever the read and write boundaries. Each message is a type byte and a big-endian
//! length that counts itself; the packets that open a connection (StartupMessage,
//! SSLRequest, GSSENCRequest, CancelRequest) have no type byte, and the server answers an
//! SSL or GSS request with one bare byte. Only a bounded prefix of each body is kept, and
//! none of password messages, rows or COPY data.

/// Type of the untyped packets that open a connection; their body starts with the code.
pub const UNTYPED: u8 = 0;
/// Type of the server's one-byte answer to SSLRequest/GSSENCRequest; the body is that byte.
pub const ENCRYPTION_ANSWER: u8 = 1;

/// Frontend (client) message types of protocol 3.0.
const FRONTEND_TYPES: &[u8] = b"QPBEDCSHXFdcfp";
/// Backend (server) message types of protocol 3.0.
const BACKEND_TYPES: &[u8] = b"RSKZTDCENA123ntsIGHWdcVv";
/// Larger lengths are not PostgreSQL (its own limit is 1 GiB).
const MAX_LEN: u32 = 1 << 30;
/// A startup packet is a few parameters; PostgreSQL itself refuses more than 10000 bytes.
const MAX_STARTUP_LEN: u32 = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgMessage {
    pub tag: u8,
    /// The body's length as declared (without type byte and length field).
    pub len: u32,
    /// The first bytes of the body (see `keep`).
    pub body: Vec<u8>,
    /// When the message's first byte was seen.
    pub ts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgError {
    /// A type byte or length that PostgreSQL never sends.
    Malformed,
    /// Bytes were not copied across a message boundary: framing is lost until `resync`.
    LostSync,
}

impl PgError {
    pub fn as_str(self) -> &'static str {
        match self {
            PgError::Malformed => "malformed",
            PgError::LostSync => "lost_sync",
        }
    }
}

enum State {
    /// At or inside a message header; `have` bytes of it are in `buf`.
    Header {
        buf: [u8; 5],
        have: usize,
    },
    Body(PgMessage, u32),
}

/// One direction of a PostgreSQL connection.
pub struct PgStream {
    frontend: bool,
    state: State,
    /// The next message is the server's one-byte answer to an encryption request.
    bare_byte_next: bool,
    lost: bool,
}

/// How many body bytes of a message to keep: enough for the SQL, the names and the
/// CommandComplete tag or SQLSTATE; nothing of passwords, rows or COPY data.
fn keep(frontend: bool, tag: u8) -> usize {
    match (frontend, tag) {
        (true, b'Q' | b'P') => 4096,
        (true, UNTYPED) => 1024,
        (true, b'B' | b'E' | b'C' | b'D') => 256,
        (false, b'C') => 128,
        (false, b'E') => 256,
        (false, b'Z') => 1,
        _ => 0,
    }
}

impl PgStream {
    pub fn new(frontend: bool) -> PgStream {
        PgStream {
            frontend,
            state: State::Header {
                buf: [0; 5],
                have: 0,
            },
            bare_byte_next: false,
            lost: false,
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// Inside a message: its header or body began and has not ended (a lost stream is not).
    pub fn in_message(&self) -> bool {
        !self.lost
            && match &self.state {
                State::Header { have, .. } => *have > 0,
                State::Body(..) => true,
            }
    }

    /// The next byte is a bare answer to an SSL or GSS encryption request.
    pub fn expect_encryption_answer(&mut self) {
        self.bare_byte_next = true;
    }

    /// The caller knows the next bytes start a message: framing resumes there.
    pub fn resync(&mut self) {
        self.lost = false;
        self.bare_byte_next = false;
        self.state = State::Header {
            buf: [0; 5],
            have: 0,
        };
    }

    /// Frames `data`; complete messages are appended to `out`. Bytes are ignored while lost.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        ts: u64,
        out: &mut Vec<PgMessage>,
    ) -> Result<(), PgError> {
        while !data.is_empty() && !self.lost {
            match &mut self.state {
                State::Header { buf, have } => {
                    if *have == 0 && self.bare_byte_next {
                        self.bare_byte_next = false;
                        out.push(PgMessage {
                            tag: ENCRYPTION_ANSWER,
                            len: 1,
                            body: vec![data[0]],
                            ts,
                        });
                        data = &data[1..];
                        continue;
                    }
                    // Untyped packets start with their length, whose high byte is 0; no
                    // message type is 0.
                    let header_len = if self.frontend && buf[0] == 0 && (*have > 0 || data[0] == 0)
                    {
                        4
                    } else {
                        5
                    };
                    let take = (header_len - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have < header_len {
                        return Ok(());
                    }
                    let (tag, len) = if header_len == 4 {
                        (
                            UNTYPED,
                            u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
                        )
                    } else {
                        (buf[0], u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))
                    };
                    let valid = if tag == UNTYPED {
                        (8..=MAX_STARTUP_LEN).contains(&len)
                    } else {
                        let types = if self.frontend {
                            FRONTEND_TYPES
                        } else {
                            BACKEND_TYPES
                        };
                        types.contains(&tag) && (4..=MAX_LEN).contains(&len)
                    };
                    if !valid {
                        self.lost = true;
                        return Err(PgError::Malformed);
                    }
                    let body_len = len - 4;
                    let msg = PgMessage {
                        tag,
                        len: body_len,
                        body: Vec::new(),
                        ts,
                    };
                    self.state = State::Body(msg, body_len);
                    self.finish_if_complete(out);
                }
                State::Body(msg, remaining) => {
                    let take = (*remaining as usize).min(data.len());
                    let room = keep(self.frontend, msg.tag).saturating_sub(msg.body.len());
                    msg.body.extend_from_slice(&data[..take.min(room)]);
                    *remaining -= take as u32;
                    data = &data[take..];
                    self.finish_if_complete(out);
                }
            }
        }
        Ok(())
    }

    /// `n` bytes of this direction were not copied. Inside a body they are skipped; across
    /// a message boundary framing is lost.
    pub fn gap(&mut self, n: u64, out: &mut Vec<PgMessage>) -> Result<(), PgError> {
        if self.lost || n == 0 {
            return Ok(());
        }
        if let State::Body(_, remaining) = &mut self.state {
            if n <= *remaining as u64 {
                *remaining -= n as u32;
                self.finish_if_complete(out);
                return Ok(());
            }
        }
        self.lost = true;
        Err(PgError::LostSync)
    }

    fn finish_if_complete(&mut self, out: &mut Vec<PgMessage>) {
        if let State::Body(_, 0) = self.state {
            let done = std::mem::replace(
                &mut self.state,
                State::Header {
                    buf: [0; 5],
                    have: 0,
                },
            );
            if let State::Body(msg, _) = done {
                out.push(msg);
            }
        }
    }
}

/// Reads a NUL-terminated string at the start of `b`: the string and what follows the NUL.
/// A string cut off by the kept prefix is returned whole as far as it goes.
pub fn cstr(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pg_message as msg, Garbage};

    fn startup() -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        body.extend(b"user\0app\0database\0shop\0\0");
        let mut v = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        v.extend(body);
        v
    }

    fn frame_all(frontend: bool, parts: &[&[u8]]) -> Vec<PgMessage> {
        let mut s = PgStream::new(frontend);
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            s.feed(p, i as u64, &mut out).unwrap();
        }
        out
    }

    fn tags(msgs: &[PgMessage]) -> Vec<u8> {
        msgs.iter().map(|m| m.tag).collect()
    }

    #[test]
    fn frontend_startup_then_typed_messages_at_every_split() {
        let mut bytes = startup();
        bytes.extend(msg(b'Q', b"SELECT 1\0"));
        bytes.extend(msg(b'P', b"s1\0SELECT $1\0\0\0"));
        bytes.extend(msg(b'S', b""));
        let whole = frame_all(true, &[&bytes]);
        assert_eq!(tags(&whole), [UNTYPED, b'Q', b'P', b'S']);
        assert_eq!(whole[1].body, b"SELECT 1\0");
        for cut in 1..bytes.len() {
            let split = frame_all(true, &[&bytes[..cut], &bytes[cut..]]);
            let bodies: Vec<_> = split.iter().map(|m| (m.tag, m.body.clone())).collect();
            let expect: Vec<_> = whole.iter().map(|m| (m.tag, m.body.clone())).collect();
            assert_eq!(bodies, expect, "cut {cut}");
        }
    }

    #[test]
    fn backend_bare_encryption_answer_then_messages() {
        let mut s = PgStream::new(false);
        let mut out = Vec::new();
        s.expect_encryption_answer();
        let mut bytes = b"N".to_vec();
        bytes.extend(msg(b'R', &0u32.to_be_bytes()));
        bytes.extend(msg(b'S', b"server_version\x0015\0"));
        bytes.extend(msg(b'Z', b"I"));
        s.feed(&bytes, 1, &mut out).unwrap();
        assert_eq!(tags(&out), [ENCRYPTION_ANSWER, b'R', b'S', b'Z']);
        assert_eq!(out[0].body, b"N");
        assert_eq!(out[3].body, b"I");
        // Authentication and parameter bodies are not kept.
        assert!(out[1].body.is_empty() && out[2].body.is_empty());
    }

    #[test]
    fn passwords_and_rows_are_never_kept() {
        let out = frame_all(true, &[&msg(b'p', b"hunter2\0")]);
        assert_eq!(out[0].len, 8);
        assert!(out[0].body.is_empty());
        let out = frame_all(false, &[&msg(b'D', b"\0\x01\0\0\0\x06secret")]);
        assert!(out[0].body.is_empty());
    }

    #[test]
    fn a_gap_inside_a_body_is_skipped_and_across_messages_is_lost() {
        let mut s = PgStream::new(false);
        let mut out = Vec::new();
        let row = msg(b'D', &[7u8; 10_000]);
        s.feed(&row[..4096], 1, &mut out).unwrap();
        s.gap((row.len() - 4096) as u64, &mut out).unwrap();
        s.feed(&msg(b'C', b"SELECT 1\0"), 2, &mut out).unwrap();
        assert_eq!(tags(&out), [b'D', b'C']);
        assert_eq!(out[1].body, b"SELECT 1\0");

        let mut two = row.clone();
        two.extend(msg(b'C', b"SELECT 1\0"));
        let mut s = PgStream::new(false);
        let mut out = Vec::new();
        s.feed(&two[..4096], 1, &mut out).unwrap();
        assert_eq!(
            s.gap((two.len() - 4096) as u64, &mut out),
            Err(PgError::LostSync)
        );
        assert!(s.is_lost());
        s.feed(b"garbage", 2, &mut out).unwrap();
        assert!(out.is_empty());
        s.resync();
        s.feed(&msg(b'Z', b"I"), 3, &mut out).unwrap();
        assert_eq!(tags(&out), [b'Z']);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"Q\xff\xff\xff\xff",
            b"\0\0\0\x02xx",
            b"Q\0\0\0\x01",
        ] {
            let mut s = PgStream::new(true);
            let mut out = Vec::new();
            assert_eq!(
                s.feed(bytes, 0, &mut out),
                Err(PgError::Malformed),
                "{bytes:?}"
            );
        }
        let mut g = Garbage::new(1);
        for _ in 0..500 {
            let bytes = g.bytes(&[], 64);
            for frontend in [true, false] {
                let mut s = PgStream::new(frontend);
                let _ = s.feed(&bytes, 0, &mut Vec::new());
                let _ = s.gap(3, &mut Vec::new());
            }
        }
    }

    #[test]
    fn cstr_reads_up_to_the_nul() {
        assert_eq!(cstr(b"abc\0rest"), (&b"abc"[..], &b"rest"[..]));
        assert_eq!(cstr(b"cut"), (&b"cut"[..], &b""[..]));
    }
}
