//! An incremental JSON scanner: fed a document in pieces of any size, it reports the scalars
//! at the paths its caller wants. Its state is bounded (the open containers, the current key,
//! and the token being read); it never holds the document, and a string is kept only when
//! its path is wanted, so prompt and completion text pass through without being stored.
//!
//! It is a scanner, not a validator: it follows the structure well enough to name paths,
//! and stops (`is_broken`) at the first byte that cannot continue a JSON document.

/// Containers nested deeper than this stop the scan (LLM payloads nest a few levels).
pub const MAX_DEPTH: usize = 16;
/// Bytes kept of a wanted string value; the rest is dropped.
pub const MAX_STRING: usize = 256;
/// Bytes kept of an object key (longer keys are never wanted).
const MAX_KEY: usize = 64;
/// Bytes kept of a number or literal token.
const MAX_TOKEN: usize = 32;

/// One open container and where the scan is inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    /// An object and the key of the value being read (empty before the first key).
    Object(String),
    /// An array and the index of the element being read.
    Array(u32),
}

/// A scalar value found at a path.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a value.
    Value,
    /// Just after `[`: a value or `]`.
    ArrayStart,
    /// Just after `{`: a key or `}`.
    ObjectStart,
    /// After `,` in an object: a key.
    NextKey,
    /// Inside a key string.
    Key,
    /// After a key: `:`.
    Colon,
    /// Inside a string value.
    Str,
    /// Inside a number.
    Num,
    /// Inside `true`, `false` or `null`.
    Literal,
    /// After a value: `,` or the end of the container.
    AfterValue,
    /// The top-level value ended.
    Done,
    /// Not JSON (or too deep): nothing more is reported.
    Broken,
}

/// See the module documentation.
#[derive(Debug)]
pub struct JsonScanner {
    levels: Vec<Level>,
    state: State,
    token: Vec<u8>,
    /// The string being read is wanted (kept, up to `MAX_STRING`).
    keep: bool,
    /// The previous byte inside a string was a backslash.
    escape: bool,
}

impl Default for JsonScanner {
    fn default() -> Self {
        JsonScanner {
            levels: Vec::new(),
            state: State::Value,
            token: Vec::new(),
            keep: false,
            escape: false,
        }
    }
}

/// Whether `levels` is the path `pattern`: key names, and `[]` for any array index.
pub fn path_is(levels: &[Level], pattern: &[&str]) -> bool {
    levels.len() == pattern.len()
        && levels.iter().zip(pattern).all(|(level, want)| match level {
            Level::Object(key) => key == want,
            Level::Array(_) => *want == "[]",
        })
}

impl JsonScanner {
    /// The document ended (its top-level value closed).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes stopped being JSON somewhere (or nested too deep).
    pub fn is_broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Scans `data`. `wants` says whether the string at a path is to be kept; `found` gets
    /// every kept string and every number, boolean and null, with its path.
    pub fn feed(
        &mut self,
        data: &[u8],
        wants: &dyn Fn(&[Level]) -> bool,
        found: &mut dyn FnMut(&[Level], Scalar),
    ) {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                State::Done | State::Broken => return,
                State::Str | State::Key => {
                    i += self.string_byte(data, i, found);
                    continue;
                }
                State::Num | State::Literal => {
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.') {
                        if self.token.len() < MAX_TOKEN {
                            self.token.push(b);
                        }
                        i += 1;
                    } else {
                        // The token ended: this byte is read again in the next state.
                        self.end_token(found);
                    }
                    continue;
                }
                _ => {}
            }
            i += 1;
            if b.is_ascii_whitespace() {
                continue;
            }
            match self.state {
                State::Value => self.start_value(b, wants),
                State::ArrayStart if b == b']' => self.close_container(),
                State::ArrayStart => self.start_value(b, wants),
                State::ObjectStart if b == b'}' => self.close_container(),
                State::ObjectStart | State::NextKey if b == b'"' => {
                    self.token.clear();
                    self.escape = false;
                    self.state = State::Key;
                }
                State::Colon if b == b':' => self.state = State::Value,
                State::AfterValue => match (b, self.levels.last_mut()) {
                    (b',', Some(Level::Array(index))) => {
                        *index += 1;
                        self.state = State::Value;
                    }
                    (b',', Some(Level::Object(_))) => self.state = State::NextKey,
                    (b']', Some(Level::Array(_))) | (b'}', Some(Level::Object(_))) => {
                        self.close_container()
                    }
                    _ => self.state = State::Broken,
                },
                _ => self.state = State::Broken,
            }
        }
    }

    fn start_value(&mut self, b: u8, wants: &dyn Fn(&[Level]) -> bool) {
        match b {
            b'{' | b'[' => {
                if self.levels.len() >= MAX_DEPTH {
                    self.state = State::Broken;
                    return;
                }
                if b == b'{' {
                    self.levels.push(Level::Object(String::new()));
                    self.state = State::ObjectStart;
                } else {
                    self.levels.push(Level::Array(0));
                    self.state = State::ArrayStart;
                }
            }
            b'"' => {
                self.token.clear();
                self.escape = false;
                self.keep = wants(&self.levels);
                self.state = State::Str;
            }
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                self.token.clear();
                self.token.push(b);
                self.state = if b.is_ascii_alphabetic() {
                    State::Literal
                } else {
                    State::Num
                };
            }
            _ => self.state = State::Broken,
        }
    }

    /// Reads string bytes from `data[at..]`; returns how many it used.
    fn string_byte(
        &mut self,
        data: &[u8],
        at: usize,
        found: &mut dyn FnMut(&[Level], Scalar),
    ) -> usize {
        let is_key = self.state == State::Key;
        let limit = if is_key { MAX_KEY } else { MAX_STRING };
        let store = is_key || self.keep;
        for (n, &b) in data[at..].iter().enumerate() {
            if self.escape {
                self.escape = false;
                if store && self.token.len() < limit {
                    self.token.push(match b {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                }
                continue;
            }
            match b {
                b'\\' => self.escape = true,
                b'"' => {
                    let text = String::from_utf8_lossy(&self.token).into_owned();
                    if is_key {
                        if let Some(Level::Object(key)) = self.levels.last_mut() {
                            *key = text;
                        }
                        self.state = State::Colon;
                    } else {
                        if self.keep {
                            found(&self.levels, Scalar::Str(text));
                        }
                        self.after_value();
                    }
                    self.token.clear();
                    return n + 1;
                }
                _ => {
                    if store && self.token.len() < limit {
                        self.token.push(b);
                    }
                }
            }
        }
        data.len() - at
    }

    fn end_token(&mut self, found: &mut dyn FnMut(&[Level], Scalar)) {
        let value = match self.token.as_slice() {
            b"true" => Some(Scalar::Bool(true)),
            b"false" => Some(Scalar::Bool(false)),
            b"null" => Some(Scalar::Null),
            t if self.state == State::Num => std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .map(Scalar::Num),
            _ => None,
        };
        self.token.clear();
        match value {
            Some(v) => {
                found(&self.levels, v);
                self.after_value();
            }
            None => self.state = State::Broken,
        }
    }

    fn close_container(&mut self) {
        self.levels.pop();
        self.after_value();
    }

    fn after_value(&mut self) {
        self.state = if self.levels.is_empty() {
            State::Done
        } else {
            State::AfterValue
        };
    }

    /// The input ended: a number or literal that closes the document ends with it.
    pub fn finish(&mut self, found: &mut dyn FnMut(&[Level], Scalar)) {
        if matches!(self.state, State::Num | State::Literal) {
            self.end_token(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scalar with its path as `a.b.[].c`, scanning `doc` cut at `cuts`.
    fn scan(pieces: &[&[u8]], wants: &dyn Fn(&[Level]) -> bool) -> (Vec<(String, Scalar)>, bool) {
        let mut s = JsonScanner::default();
        let mut out = Vec::new();
        for p in pieces {
            s.feed(p, wants, &mut |levels, v| {
                let path: Vec<String> = levels
                    .iter()
                    .map(|l| match l {
                        Level::Object(k) => k.clone(),
                        Level::Array(i) => format!("[{i}]"),
                    })
                    .collect();
                out.push((path.join("."), v));
            });
        }
        s.finish(&mut |_, v| out.push((String::new(), v)));
        (out, s.is_done())
    }

    const CHAT: &[u8] =
        br#"{"messages":[{"role":"user","content":"SECRET \"prompt\" {not json} [x]"}],
        "model":"gpt-4o-mini","stream":true,"max_tokens":256,"temperature":0.5,"n":1,
        "stop":null,"stream_options":{"include_usage":true},"tools":[[1,2],[3]]}"#;

    fn wants_model(levels: &[Level]) -> bool {
        path_is(levels, &["model"])
    }

    #[test]
    fn reports_the_wanted_scalars_and_keeps_no_other_string() {
        let (found, done) = scan(&[CHAT], &wants_model);
        assert!(done);
        let get = |p: &str| found.iter().find(|(k, _)| k == p).map(|(_, v)| v.clone());
        assert_eq!(get("model"), Some(Scalar::Str("gpt-4o-mini".into())));
        assert_eq!(get("stream"), Some(Scalar::Bool(true)));
        assert_eq!(get("max_tokens"), Some(Scalar::Num(256.0)));
        assert_eq!(get("temperature"), Some(Scalar::Num(0.5)));
        assert_eq!(get("stop"), Some(Scalar::Null));
        assert_eq!(
            get("stream_options.include_usage"),
            Some(Scalar::Bool(true))
        );
        assert_eq!(get("tools.[1].[0]"), Some(Scalar::Num(3.0)));
        // The prompt is scanned past, never kept.
        assert!(!format!("{found:?}").contains("SECRET"));
    }

    #[test]
    fn every_split_gives_the_same_result() {
        let (whole, _) = scan(&[CHAT], &wants_model);
        for cut in 1..CHAT.len() {
            let (split, done) = scan(&[&CHAT[..cut], &CHAT[cut..]], &wants_model);
            assert!(done, "cut at {cut}");
            assert_eq!(split, whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = CHAT.chunks(1).collect();
        assert_eq!(scan(&bytes, &wants_model).0, whole);
    }

    #[test]
    fn nested_paths_and_escapes() {
        let doc = br#"{"choices":[{"index":0,"finish_reason":"stop"},{"finish_reason":"len\"gth"}],
            "usage":{"prompt_tokens":12,"completion_tokens_details":{"reasoning_tokens":3}}}"#;
        let wants = |l: &[Level]| path_is(l, &["choices", "[]", "finish_reason"]);
        let (found, done) = scan(&[doc], &wants);
        assert!(done);
        let reasons: Vec<&Scalar> = found
            .iter()
            .filter(|(k, _)| k.ends_with("finish_reason"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            reasons,
            [&Scalar::Str("stop".into()), &Scalar::Str("len\"gth".into())]
        );
        assert!(found.contains(&(
            "usage.completion_tokens_details.reasoning_tokens".into(),
            Scalar::Num(3.0)
        )));
    }

    #[test]
    fn garbage_depth_and_long_strings_are_bounded() {
        assert!(scan(&[b"not json"], &|_| true).0.is_empty());
        let deep = "[".repeat(MAX_DEPTH + 1);
        let mut s = JsonScanner::default();
        s.feed(deep.as_bytes(), &|_| true, &mut |_, _| {});
        assert!(s.is_broken());
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(10_000));
        let (found, done) = scan(&[long.as_bytes()], &|_| true);
        assert!(done);
        match &found[0].1 {
            Scalar::Str(s) => assert_eq!(s.len(), MAX_STRING),
            other => panic!("{other:?}"),
        }
        // Random bytes never panic.
        let mut x: u32 = 1;
        for _ in 0..2000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    const ALPHABET: &[u8] = b"{}[],:\"\\ 0123tfn-.e";
                    ALPHABET[(x >> 16) as usize % ALPHABET.len()]
                })
                .collect();
            let mut s = JsonScanner::default();
            s.feed(&bytes, &|_| true, &mut |_, _| {});
        }
    }
}
