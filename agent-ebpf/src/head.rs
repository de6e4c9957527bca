//! Looking into the head of an HTTP/1 request in the kernel (trace propagation): where its
//! request line ends, and the trace id of its `traceparent` header. Plain code shared with
//! the host, so that it is unit-tested there; the kernel programs run it on a copy of the
//! request's first bytes in a per-CPU map.
//!
//! Written for the verifier of Linux 5.10: every index is masked into the buffer (no bounds
//! branch), bytes are scanned eight at a time with no branch per byte, and a search loop has
//! a handful of conditional jumps per step (the verifier follows at most 8,192 pending
//! branches down one path, and explores a branch again wherever the states differ).

/// Request bytes looked at.
pub const HEAD_BYTES: usize = 1024;
/// Size of the buffer: masked reads (`MASK`, then up to 16 bytes on) stay inside.
pub const HEAD_BUF: usize = 2 * HEAD_BYTES + 16;
const MASK: usize = 2 * HEAD_BYTES - 1;

/// The header name, lowercase, as two little-endian words ("tracepar", "ent:").
const NAME_1: u64 = u64::from_le_bytes(*b"tracepar");
const NAME_2: u64 = u32::from_le_bytes(*b"ent:") as u64;
const NAME_LEN: usize = 12;
/// Lowercases ASCII letters (and leaves ':' as it is).
const LOWER: u64 = 0x2020_2020_2020_2020;
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const NEWLINES: u64 = ONES * b'\n' as u64;
/// The longest `traceparent` value read: `vv-` + 32 + `-` + 16 + `-ff`.
pub const VALUE_LEN: usize = 55;

/// A copy of a request's first `n` bytes (n <= HEAD_BYTES) in `buf`: the eight bytes after
/// them are zeroed, so no newline is seen past the end.
#[inline(always)]
pub fn terminate(buf: &mut [u8; HEAD_BUF], n: usize) {
    let at = n & MASK;
    let mut k = 0;
    while k < 8 {
        buf[at + k] = 0;
        k += 1;
    }
}

/// The byte at `k`, masked into the buffer, the mask kept whatever the compiler knows: after
/// a check such as `pos + 55 < n` with `n` masked, LLVM drops the mask as redundant, and
/// the 5.10 and 6.1 verifiers, which do not carry that bound over to `pos`, refuse the
/// access.
#[inline(always)]
fn byte(buf: &[u8; HEAD_BUF], k: usize) -> u8 {
    buf[core::hint::black_box(k) & MASK]
}

/// The eight bytes at `k`, little endian.
#[inline(always)]
fn word(buf: &[u8; HEAD_BUF], k: usize) -> u64 {
    let k = k & MASK;
    u64::from_le_bytes([
        buf[k],
        buf[k + 1],
        buf[k + 2],
        buf[k + 3],
        buf[k + 4],
        buf[k + 5],
        buf[k + 6],
        buf[k + 7],
    ])
}

/// The high bit of each zero byte of `x`, exact up to the lowest zero byte (a borrow may
/// mark bytes above it).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The index (0-7) of the lowest byte marked in `t`, 8 when none is. Branch-free: the bits
/// below the lowest mark are counted.
#[inline(always)]
fn lowest_byte(t: u64) -> usize {
    let mut v = (t & t.wrapping_neg()).wrapping_sub(1);
    v = v - ((v >> 1) & 0x5555_5555_5555_5555);
    v = (v & 0x3333_3333_3333_3333) + ((v >> 2) & 0x3333_3333_3333_3333);
    v = (v + (v >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (v.wrapping_mul(ONES) >> 56) as usize >> 3
}

/// Whether a `traceparent:` name (any case) starts at `k`.
#[inline(always)]
fn name_at(buf: &[u8; HEAD_BUF], k: usize) -> bool {
    let diff =
        ((word(buf, k) | LOWER) ^ NAME_1) | (((word(buf, k + 8) | LOWER) ^ NAME_2) & 0xffff_ffff);
    diff == 0
}

/// The offset of the first `\n` among the first `n` bytes of a terminated head.
#[inline(always)]
pub fn first_newline(buf: &[u8; HEAD_BUF], n: usize) -> Option<usize> {
    let mut i = 0;
    while i < n && i < HEAD_BYTES {
        let j = lowest_byte(zero_bytes(word(buf, i) ^ NEWLINES));
        if j < 8 {
            return Some(i + j);
        }
        i += 8;
    }
    None
}

/// `scan` found the end of the head and no `traceparent` before it.
pub const PLAIN: usize = 0;
/// `scan` found no end of the head among the bytes: what the head holds is not known.
pub const UNFINISHED: usize = 1;

/// Looks through the first `n` bytes of a terminated head, up to the blank line that ends
/// it: the offset where a `traceparent:` header's value starts (its name at a line start,
/// any case; always above `UNFINISHED`), else `PLAIN` or `UNFINISHED`. Two newlines per
/// word are looked at: a header line is at least four bytes (`a:\r\n`), so a word holds
/// no more (three only around a one-letter header with no value right before the blank
/// line, whose end is then missed: the head reads as unfinished, and nothing is added).
#[inline(always)]
pub fn scan(buf: &[u8; HEAD_BUF], n: usize) -> usize {
    let mut i = 0;
    while i < n && i < HEAD_BYTES {
        let x = word(buf, i) ^ NEWLINES;
        let j1 = lowest_byte(zero_bytes(x));
        if j1 < 8 {
            let found = line_after(buf, i + j1 + 1);
            if found != UNFINISHED {
                return found;
            }
        }
        // The next newline: the first one's byte set to non-zero (when j1 is 8 this only
        // touches byte 0, which held no newline).
        let j2 = lowest_byte(zero_bytes(x | 0xff << ((8 * j1) & 63)));
        if j2 < 8 {
            let found = line_after(buf, i + j2 + 1);
            if found != UNFINISHED {
                return found;
            }
        }
        i += 8;
    }
    UNFINISHED
}

/// What the line starting at `k` (after a newline) says: `PLAIN` when it is the blank line
/// ending the head, the value's offset when it is a `traceparent` header, else
/// `UNFINISHED` (look on).
#[inline(always)]
fn line_after(buf: &[u8; HEAD_BUF], k: usize) -> usize {
    let start = word(buf, k) & 0xffff;
    if start & 0xff == b'\n' as u64 || start == u16::from_le_bytes(*b"\r\n") as u64 {
        return PLAIN;
    }
    if name_at(buf, k) {
        return k + NAME_LEN;
    }
    UNFINISHED
}

/// Whether the line ending at the newline at `line_end` ends like an HTTP/1 request line
/// (` HTTP/1.0` or ` HTTP/1.1`, then an optional `\r`): a Redis inline command such as
/// `GET key` starts like one and must not be taken for one.
#[inline(always)]
pub fn is_request_line(buf: &[u8; HEAD_BUF], line_end: usize) -> bool {
    let e = if byte(buf, line_end.wrapping_sub(1)) == b'\r' {
        line_end.wrapping_sub(1)
    } else {
        line_end
    };
    if e < 14 {
        return false;
    }
    let version = word(buf, e - 8);
    (version == u64::from_le_bytes(*b"HTTP/1.1") || version == u64::from_le_bytes(*b"HTTP/1.0"))
        && byte(buf, e - 9) == b' '
}

/// The trace id and sampled flag of the `traceparent` value at `pos` (after up to two
/// blanks) when the whole value is among the first `n` bytes and is one that userspace's
/// parser takes too: version not `ff`, trace id and parent id not zero, nothing glued to
/// the flags.
#[inline(always)]
pub fn trace_id_at(buf: &[u8; HEAD_BUF], mut pos: usize, n: usize) -> Option<(u64, u64, bool)> {
    let mut blanks = 0;
    while blanks < 2 && matches!(byte(buf, pos), b' ' | b'\t') {
        pos += 1;
        blanks += 1;
    }
    if pos + VALUE_LEN >= n {
        return None;
    }
    let version = hex(buf, pos, 2)?;
    let hi = hex(buf, pos + 3, 16)?;
    let lo = hex(buf, pos + 19, 16)?;
    let parent = hex(buf, pos + 36, 16)?;
    let flags = hex(buf, pos + 53, 2)?;
    // Spelled out, not a loop over the offsets: LLVM would read them from .rodata, which
    // the 5.10 and 6.1 verifiers take for unknown values.
    let dashes =
        byte(buf, pos + 2) == b'-' && byte(buf, pos + 35) == b'-' && byte(buf, pos + 52) == b'-';
    let ends = matches!(
        byte(buf, pos + VALUE_LEN),
        b'\r' | b'\n' | b' ' | b'\t' | b'-'
    );
    if version == 0xff || !dashes || !ends || (hi == 0 && lo == 0) || parent == 0 {
        return None;
    }
    Some((hi, lo, flags & 1 == 1))
}

/// `digits` hex digits (either case) at `k`.
#[inline(always)]
fn hex(buf: &[u8; HEAD_BUF], k: usize, digits: usize) -> Option<u64> {
    let mut v = 0u64;
    let mut d = 0;
    while d < digits {
        let c = byte(buf, k + d);
        let lower = c | 0x20;
        let nibble = if c.is_ascii_digit() {
            c - b'0'
        } else if (b'a'..=b'f').contains(&lower) {
            lower - b'a' + 10
        } else {
            return None;
        };
        v = v << 4 | nibble as u64;
        d += 1;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// `text` copied into a head buffer whose other bytes are not zero (stale bytes of an
    /// earlier request), terminated as the kernel does.
    fn head(text: &[u8]) -> ([u8; HEAD_BUF], usize) {
        let mut buf = [b'\n'; HEAD_BUF];
        let n = text.len().min(HEAD_BYTES);
        buf[..n].copy_from_slice(&text[..n]);
        terminate(&mut buf, n);
        (buf, n)
    }

    fn trace_id(text: &[u8]) -> Option<(u64, u64, bool)> {
        let (buf, n) = head(text);
        let pos = scan(&buf, n);
        if pos == PLAIN || pos == UNFINISHED {
            return None;
        }
        trace_id_at(&buf, pos, n)
    }

    #[test]
    fn finds_the_header_at_every_offset_and_in_any_case() {
        for pad in 0..40 {
            for name in ["traceparent", "Traceparent", "TRACEPARENT"] {
                let text = std::format!(
                    "GET /a HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n{name}: {TP}\r\n\r\n",
                    "p".repeat(pad)
                );
                assert_eq!(
                    trace_id(text.as_bytes()),
                    Some((0x0af7651916cd43dd, 0x8448eb211c80319c, true)),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn two_short_lines_in_one_word_are_both_seen() {
        // "\r\na:\r\n" puts two newlines eight bytes apart at most.
        for pad in 0..16 {
            let text = std::format!(
                "GET / HTTP/1.1\r\nX:{}\r\na:\r\ntraceparent:{TP}\r\n\r\n",
                "y".repeat(pad)
            );
            assert!(trace_id(text.as_bytes()).is_some(), "{text:?}");
        }
    }

    #[test]
    fn a_value_userspace_would_refuse_or_that_is_cut_gives_no_trace() {
        let bad = [
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319x-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ];
        for v in bad {
            let text = std::format!("GET / HTTP/1.1\r\ntraceparent: {v}\r\n\r\n");
            assert_eq!(trace_id(text.as_bytes()), None, "{v}");
        }
        // Cut at every length short of the value and the byte after it: never read past the
        // copied bytes.
        let text = std::format!("GET / HTTP/1.1\r\ntraceparent: {TP}\r\n");
        for cut in 0..text.len() - 1 {
            assert_eq!(trace_id(&text.as_bytes()[..cut]), None, "cut at {cut}");
        }
        assert!(trace_id(text.as_bytes()).is_some());
        let unsampled = std::format!("GET / HTTP/1.1\r\ntraceparent: {}0\r\n", &TP[..54]);
        assert_eq!(trace_id(unsampled.as_bytes()).map(|t| t.2), Some(false));
    }

    #[test]
    fn a_header_not_at_a_line_start_or_past_the_head_is_not_taken() {
        let text = std::format!("GET / HTTP/1.1\r\nx-traceparent: {TP}\r\n\r\n");
        assert_eq!(trace_id(text.as_bytes()), None);
        let mut long: Vec<u8> = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        long.resize(HEAD_BYTES - 10, b'b');
        long.extend_from_slice(std::format!("\r\ntraceparent: {TP}\r\n\r\n").as_bytes());
        assert_eq!(trace_id(&long), None);
    }

    #[test]
    fn the_head_ends_at_its_blank_line_and_the_body_is_not_looked_at() {
        for end in ["\r\n\r\n", "\n\n"] {
            for pad in 0..16 {
                let text = std::format!(
                    "GET / HTTP/1.1\r\nX: {}{end}traceparent: {TP}\r\n",
                    "z".repeat(pad)
                );
                let (buf, n) = head(text.as_bytes());
                assert_eq!(scan(&buf, n), PLAIN, "{text:?}");
            }
        }
        // A head cut before its end, at every length: never plain, never a wrong header.
        let text = "GET / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n";
        for cut in 0..text.len() - 1 {
            let (buf, n) = head(&text.as_bytes()[..cut]);
            assert_eq!(scan(&buf, n), UNFINISHED, "cut at {cut}");
        }
        let (buf, n) = head(text.as_bytes());
        assert_eq!(scan(&buf, n), PLAIN);
    }

    #[test]
    fn only_an_http_request_line_is_one() {
        for (line, is) in [
            ("GET /a HTTP/1.1\r\n", true),
            ("POST /x?y=1 HTTP/1.0\n", true),
            ("GET key\r\n", false),
            ("GET HTTP/1.1\r\n", false),
            ("GET /a HTTP/2.0\r\n", false),
            ("GET /aHTTP/1.1\r\n", false),
        ] {
            let (buf, n) = head(line.as_bytes());
            let end = first_newline(&buf, n).unwrap();
            assert_eq!(is_request_line(&buf, end), is, "{line:?}");
        }
    }

    #[test]
    fn the_request_line_ends_at_its_first_newline() {
        for len in 8..200 {
            let mut text: Vec<u8> = b"GET /".to_vec();
            text.resize(len, b'x');
            text.extend_from_slice(b"\nHost: h\r\n\r\n");
            let (buf, n) = head(&text);
            assert_eq!(first_newline(&buf, n), Some(len), "line of {len}");
        }
        let (buf, n) = head(b"GET /no/newline/in/this/head HTTP/1.1");
        assert_eq!(first_newline(&buf, n), None);
    }

    #[test]
    fn lowest_byte_names_the_lowest_mark() {
        assert_eq!(lowest_byte(0), 8);
        for j in 0..8 {
            let t = 0x80u64 << (8 * j);
            assert_eq!(lowest_byte(t), j);
            assert_eq!(lowest_byte(t | HIGHS & !(t.wrapping_sub(1)) & !t), j);
        }
    }
}
