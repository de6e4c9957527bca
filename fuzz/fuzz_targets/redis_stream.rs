//! RESP framing (`RespStream`), one direction. Input: `[mode] [cuts] payload` (see
//! `sonde_fuzz`); mode bit 7 adds a gap after each piece.
//!
//! Invariants: every split gives the same frames and the same error as the whole payload;
//! no frame without a line of its own; kept elements are bounded and are bytes of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::redis::framing::{RespError, RespFrame, RespStream, MAX_ELEMENT, MAX_KEPT};
use sonde_fuzz::{contains, pieces, Input};

fn run(parts: &[&[u8]], gaps: &[u64]) -> (Vec<RespFrame>, Option<RespError>) {
    let mut s = RespStream::new();
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
    (out, error)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let lens = input.cuts();
    let payload = input.rest();

    let (frames, error) = run(&[payload], &[]);
    let lines = payload.iter().filter(|b| **b == b'\n').count();
    assert!(
        frames.len() <= lines,
        "{} frames, {lines} lines",
        frames.len()
    );
    for f in &frames {
        assert!(f.kept.len() <= MAX_KEPT);
        for i in 0..f.kept.len() {
            let kept = f.kept.get(i).expect("kept element");
            assert!(kept.len() <= MAX_ELEMENT);
            assert!(
                contains(payload, kept),
                "kept bytes not in the input: {f:?}"
            );
        }
    }
    let parts = pieces(payload, &lens);
    let split = run(&parts, &[]);
    assert_eq!(split, (frames, error), "split at {lens:?}");
    if mode & 0x80 != 0 {
        let gaps: Vec<u64> = lens.iter().map(|&n| n as u64 * 100).collect();
        let (frames, _) = run(&parts, &gaps);
        assert!(frames.len() <= lines);
    }
});
