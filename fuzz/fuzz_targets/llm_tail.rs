//! The end of a JSON body after a gap (`llm::tail::TailBuffer`). Input: `[mode] [cuts]
//! payload` (see `sonde_fuzz`); mode picks where the gap falls in the payload.
//!
//! Invariants: pushing the bytes in any pieces gives the same members as pushing them whole;
//! and when the payload is one JSON object, the members read from any tail of it are members
//! a scan of the whole object finds (the tail never guesses).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sonde::protocols::llm::json::{JsonScanner, Level, Scalar};
use sonde::protocols::llm::tail::TailBuffer;
use sonde_fuzz::{pieces, Input};

/// `a.[0].b` for a path (a member's arrays are counted from the member's start in both
/// scans).
fn path(levels: &[Level]) -> String {
    let names: Vec<String> = levels
        .iter()
        .map(|l| match l {
            Level::Object(k) => k.clone(),
            Level::Array(i) => format!("[{i}]"),
        })
        .collect();
    names.join(".")
}

fn members(parts: &[&[u8]]) -> (bool, Vec<String>) {
    let mut tail = TailBuffer::default();
    tail.gap();
    for part in parts {
        tail.push(part);
    }
    let mut found = Vec::new();
    let proven = tail.members(&|_| true, &mut |levels, value: Scalar| {
        found.push(format!("{} = {value:?}", path(levels)));
    });
    (proven, found)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.byte();
    let lens = input.cuts();
    let payload = input.rest();

    let whole = members(&[payload]);
    assert!(whole.0 || whole.1.is_empty());
    let parts = pieces(payload, &lens);
    assert_eq!(members(&parts), whole, "split at {lens:?}");

    // A whole object: scanned from its start, then from after a gap at `cut`.
    let body = payload.trim_ascii_end();
    if !body.starts_with(b"{") {
        return;
    }
    let mut scanner = JsonScanner::default();
    let mut full = Vec::new();
    let (last, before) = body.split_last().expect("starts with {");
    scanner.feed(before, &|_| true, &mut |l, v| {
        full.push(format!("{} = {v:?}", path(l)))
    });
    if scanner.is_done() || scanner.is_broken() {
        return;
    }
    scanner.feed(&[*last], &|_| true, &mut |l, v| {
        full.push(format!("{} = {v:?}", path(l)))
    });
    if !scanner.is_done() {
        return;
    }
    let cut = mode as usize * body.len() / 256;
    let (_, from_tail) = members(&[&body[cut..]]);
    for m in &from_tail {
        assert!(full.contains(m), "{m} is not a member of the object");
    }
});
