//! Ring-buffer event decoding (`capture::event::Event::decode`). Input: the event's bytes.
//!
//! Invariants: a decoded event's payload and tail are the bytes after the header, as long as
//! the header says and never longer than what is there; the gap is what the syscall moved
//! beyond them; an event is refused exactly when it is shorter than its header, of an unknown
//! kind, or claims more bytes than it holds; a peer address is never an IPv4-mapped IPv6 one.
#![no_main]
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sonde::capture::event::{peer_addr, DecodeError, Event};
use sonde_ebpf::EVENT_HEADER_LEN;

fuzz_target!(|data: &[u8]| {
    match Event::decode(data) {
        Ok(e) => {
            let captured = e.header.captured_len as usize;
            let body = &data[EVENT_HEADER_LEN..];
            assert!(captured <= body.len());
            assert_eq!(e.payload.len() + e.tail.len(), captured);
            assert_eq!(e.tail.len(), e.header.tail_len as usize);
            assert_eq!(e.payload, &body[..e.payload.len()]);
            assert_eq!(e.tail, &body[e.payload.len()..captured]);
            assert_eq!(
                e.gap(),
                (e.header.total_len as u64).saturating_sub(captured as u64)
            );
            assert!(e.comm().chars().count() <= 16);
            if let Some(addr) = peer_addr(&e.header.conn) {
                if let IpAddr::V6(v6) = addr.ip() {
                    assert!(v6.to_ipv4_mapped().is_none(), "{addr}");
                }
            }
        }
        Err(DecodeError::Short(n)) => assert!(n == data.len() && n < EVENT_HEADER_LEN),
        Err(DecodeError::UnknownKind(_)) => assert!(data.len() >= EVENT_HEADER_LEN),
        Err(DecodeError::BadLength { available, .. }) => {
            assert_eq!(available, data.len() - EVENT_HEADER_LEN)
        }
    }
});
