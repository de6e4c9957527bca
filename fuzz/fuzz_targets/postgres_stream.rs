//! PostgreSQL framing (`PgStream`), one direction. Input: `[mode] [cuts] payload` (see
//! `sonde_fuzz`); mode bit 0 picks the frontend, bit 1 expects an encryption answer first,
//! bit 7 adds a gap after each piece.
//!
//! Invariants: every split gives the same messages and error as the whole payload; messages
//! never account for more bytes than were fed (gaps included); kept bodies are bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::postgres::framing::{
    PgError, PgMessage, PgStream, ENCRYPTION_ANSWER, UNTYPED,
};
use sonde_fuzz::{pieces, Input};

/// The most body bytes a message keeps (a Query's or Parse's SQL).
const MAX_KEPT: usize = 4096;

fn run(mode: u8, parts: &[&[u8]], gaps: &[u64]) -> (Vec<PgMessage>, Option<PgError>) {
    let mut s = PgStream::new(mode & 1 != 0);
    if mode & 2 != 0 {
        s.expect_encryption_answer();
    }
    let mut out = Vec::new();
    let mut error = None;
    for (i, part) in parts.iter().enumerate() {
        if let Err(e) = s.feed(part, 7, &mut out) {
            error = error.or(Some(e));
        }
        if let Some(&n) = gaps.get(i).filter(|n| **n > 0) {
            if let Err(e) = s.gap(n, &mut out) {
                error = error.or(Some(e));
            }
        }
    }
    let fed: u64 = parts.iter().map(|p| p.len() as u64).sum::<u64>() + gaps.iter().sum::<u64>();
    let mut framed = 0u64;
    for m in &out {
        assert!(
            m.body.len() <= MAX_KEPT && m.body.len() as u64 <= m.len as u64,
            "{m:?}"
        );
        framed += match m.tag {
            ENCRYPTION_ANSWER => 1,
            UNTYPED => 4 + m.len as u64,
            _ => 5 + m.len as u64,
        };
    }
    assert!(framed <= fed, "messages of {framed} bytes from {fed} bytes");
    (out, error)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let lens = input.cuts();
    let payload = input.rest();

    let whole = run(mode, &[payload], &[]);
    let parts = pieces(payload, &lens);
    assert_eq!(run(mode, &parts, &[]), whole, "split at {lens:?}");
    if mode & 0x80 != 0 {
        let gaps: Vec<u64> = lens.iter().map(|&n| n as u64 * 100).collect();
        run(mode, &parts, &gaps);
    }
});
