//! The end of a JSON body whose middle was not captured: its last top-level members.
//!
//! The OpenAI SDKs write `model` after `messages`, so in a request larger than the bytes
//! copied per syscall the model sits past the gap, in the syscall's tail (see
//! `EventHeader::tail_len`); a long completion puts `usage` at the end of a response the
//! same way. `TailBuffer` keeps the last bytes seen since the gap, and at the body's end
//! finds where its top-level members start, without guessing:
//!
//! A candidate is a `,` such that `{` followed by the rest of the body scans as exactly one
//! JSON object that closes on the body's last byte. Only a comma between two top-level
//! members passes. A comma inside a nested value leaves closers after the object ends. A
//! comma inside a string puts the scan out of phase with the real quotes: the scan then
//! reads string content as structure, where any backslash stops it, and reads real structure
//! as string content, which holds no backslash; so both toggle on the same quotes and the
//! scan is still inside a string when the body ends. The earliest candidate wins (it gives
//! the most members).
use super::json::{JsonScanner, Level, Scalar};

/// Bytes kept before the body's end: more than the 4095-byte tail the kernel copies, so a
/// short last syscall still finds the members that began in the one before.
pub const TAIL_KEEP: usize = 16 * 1024;

/// Candidate commas tried per body (each try reads to the end): bounds the work on a tail
/// full of commas that open no member.
const MAX_TRIES: usize = 64;

/// The last bytes of a body since the last gap.
#[derive(Debug, Default)]
pub struct TailBuffer {
    bytes: Vec<u8>,
    /// Bytes were lost since the buffer began, so its start is not the body's start.
    pub after_gap: bool,
}

impl TailBuffer {
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL_KEEP {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&data[data.len() - TAIL_KEEP..]);
            return;
        }
        let excess = (self.bytes.len() + data.len()).saturating_sub(TAIL_KEEP);
        self.bytes.drain(..excess);
        self.bytes.extend_from_slice(data);
    }

    /// Bytes were lost: what was kept does not join what comes next.
    pub fn gap(&mut self) {
        self.bytes.clear();
        self.after_gap = true;
    }

    /// At the body's end: reports the top-level members that follow the last gap (nested
    /// paths included) to `found`, as a scan from the body's start would have. Returns
    /// false when no member boundary could be proven.
    pub fn members(
        &self,
        wants: &dyn Fn(&[Level]) -> bool,
        found: &mut dyn FnMut(&[Level], Scalar),
    ) -> bool {
        let body = self.bytes.trim_ascii_end();
        let mut tries = 0;
        for (at, _) in body.iter().enumerate().filter(|(_, b)| **b == b',') {
            let rest = &body[at + 1..];
            if !rest.trim_ascii_start().starts_with(b"\"") {
                continue; // not a member: cheap to tell
            }
            tries += 1;
            if tries > MAX_TRIES {
                return false;
            }
            if closes_at_end(rest) {
                let mut scanner = JsonScanner::default();
                scanner.feed(b"{", wants, found);
                scanner.feed(rest, wants, found);
                return true;
            }
        }
        false
    }
}

/// Whether `{` + `rest` scans as one object that closes on `rest`'s last byte.
fn closes_at_end(rest: &[u8]) -> bool {
    let Some((last, before)) = rest.split_last() else {
        return false;
    };
    let mut scanner = JsonScanner::default();
    let (wants, mut found) = (|_: &[Level]| false, |_: &[Level], _: Scalar| {});
    scanner.feed(b"{", &wants, &mut found);
    scanner.feed(before, &wants, &mut found);
    if scanner.is_done() || scanner.is_broken() {
        return false;
    }
    scanner.feed(std::slice::from_ref(last), &wants, &mut found);
    scanner.is_done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::llm::json::path_is;

    fn top_strings(tail: &[u8]) -> Option<Vec<(String, String)>> {
        let mut buf = TailBuffer::default();
        buf.gap();
        buf.push(tail);
        let mut out = Vec::new();
        let ok = buf.members(&|l: &[Level]| l.len() == 1, &mut |l, v| {
            if let (Some(Level::Object(k)), Scalar::Str(s)) = (l.first(), v) {
                out.push((k.clone(), s));
            }
        });
        ok.then_some(out)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_members_after_the_prompt() {
        let tail =
            br#"t of a long prompt, \"with\" quotes"}], "model": "gpt-4o", "user": "u1", "n": 1}
"#;
        assert_eq!(
            top_strings(tail),
            Some(pairs(&[("model", "gpt-4o"), ("user", "u1")]))
        );
    }

    #[test]
    fn commas_inside_strings_and_nested_values_are_not_members() {
        // The prompt forges a member list; its quotes are escaped, so it never counts.
        let forged = br#"x, \"model\": \"forged\"}"}], "model": "real"}"#;
        assert_eq!(top_strings(forged), Some(pairs(&[("model", "real")])));
        // A comma inside a nested object closes too early.
        let nested = br#"1, "b": "x"}, "model": "m"}"#;
        assert_eq!(top_strings(nested), Some(pairs(&[("model", "m")])));
        // A string that ends with `, ` right before its closing quote.
        let tricky = br#"hello, "}], "model": "m2"}"#;
        assert_eq!(top_strings(tricky), Some(pairs(&[("model", "m2")])));
        // An escaped backslash before a real quote.
        let slashes = br#"end\\", "model": "m3"}"#;
        assert_eq!(top_strings(slashes), Some(pairs(&[("model", "m3")])));
    }

    #[test]
    fn no_member_boundary_means_nothing() {
        assert_eq!(top_strings(br#"just text inside a prompt, "quoted""#), None);
        assert_eq!(top_strings(br#"abc"}]}"#), None);
        assert_eq!(top_strings(b""), None);
    }

    #[test]
    fn nested_members_are_reported_with_their_path() {
        let mut buf = TailBuffer::default();
        buf.gap();
        buf.push(br#"...", "usage": {"prompt_tokens": 10, "completion_tokens": 5}}"#);
        let mut tokens = Vec::new();
        assert!(buf.members(&|_| false, &mut |l, v| {
            if path_is(l, &["usage", "completion_tokens"]) {
                tokens.push(v);
            }
        }));
        assert_eq!(tokens, [Scalar::Num(5.0)]);
    }

    #[test]
    fn every_split_and_every_garbage_prefix_gives_the_same() {
        let tail = br#"prompt"}], "model": "gpt-4o", "stream": true}"#;
        let want = top_strings(tail);
        for cut in 0..tail.len() {
            let mut buf = TailBuffer::default();
            buf.gap();
            buf.push(&tail[..cut]);
            buf.push(&tail[cut..]);
            let mut out = Vec::new();
            buf.members(&|l: &[Level]| l.len() == 1, &mut |l, v| {
                if let (Some(Level::Object(k)), Scalar::Str(s)) = (l.first(), v) {
                    out.push((k.clone(), s));
                }
            });
            assert_eq!(Some(out), want, "cut at {cut}");
            // Whatever the tail starts with, the members are the same or none.
            let got = top_strings(&tail[cut..]);
            let want = want.as_deref().unwrap();
            assert!(
                got.as_deref().is_none_or(|got| want.ends_with(got)),
                "start at {cut}: {got:?}"
            );
        }
    }

    #[test]
    fn only_the_last_bytes_are_kept() {
        let mut buf = TailBuffer::default();
        buf.push(&vec![b'x'; TAIL_KEEP * 2]);
        buf.push(br#", "model": "m"}"#);
        assert_eq!(buf.bytes.len(), TAIL_KEEP);
        assert!(buf.bytes.ends_with(b"}"));
    }
}
