//! SQL masking (`postgres::sql::summarize`). Input: the SQL text (UTF-8); byte 0 also picks
//! where a known literal is planted.
//!
//! Invariants, from what `sql.rs` promises (every literal becomes `?`, comments go,
//! identifiers stay):
//! - masking is idempotent: the masked text masked again is itself;
//! - without quoted identifiers and dollar signs in the text (the only places a quote or a
//!   digit is kept verbatim besides words and `$n` parameters), the masked text holds no
//!   single quote, and no digit that starts a token (every number is masked);
//! - a number and a dollar-quoted string planted anywhere in that text (between spaces) never
//!   appear in the masked text;
//! - the operation is an upper-case keyword or `OTHER`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::postgres::sql::summarize;

const PLANTED_NUMBER: &str = "4815162342";
const PLANTED_STRING: &str = "zqxjsecret";

fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// A digit that starts a run of word bytes: a number left unmasked.
fn bare_number(masked: &str) -> bool {
    let b = masked.as_bytes();
    (0..b.len()).any(|i| b[i].is_ascii_digit() && (i == 0 || !word_byte(b[i - 1])))
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let s = summarize(sql);
    assert_eq!(summarize(&s.masked).masked, s.masked, "not idempotent");
    if let Some(op) = &s.operation {
        assert!(
            !op.is_empty() && op.len() <= 12 && op.bytes().all(|b| b.is_ascii_uppercase()),
            "{op:?}"
        );
    }

    let plain = sql.replace(['"', '$'], " ");
    let masked = summarize(&plain).masked;
    assert!(!masked.contains('\''), "a quote survived: {masked:?}");
    assert!(!bare_number(&masked), "a number survived: {masked:?}");

    let mut at = data.first().map_or(0, |&b| b as usize * plain.len() / 256);
    while !plain.is_char_boundary(at) {
        at -= 1;
    }
    let planted = format!(
        "{} {PLANTED_NUMBER} $sonde${PLANTED_STRING}$sonde$ {}",
        &plain[..at],
        &plain[at..]
    );
    let masked = summarize(&planted).masked;
    for literal in [PLANTED_NUMBER, PLANTED_STRING] {
        assert!(
            masked.matches(literal).count() <= plain.matches(literal).count(),
            "planted {literal} survived: {masked:?}"
        );
    }
});
