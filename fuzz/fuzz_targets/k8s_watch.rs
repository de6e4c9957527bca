//! The Kubernetes watch stream (`identity::k8s`): an API server's response to a watch, as
//! it comes off the socket (status line, headers, a body by length, chunked or until close),
//! then its events (one JSON object per line) applied to a pod index and to a Service index.
//!
//! Invariants: the body read never holds more bytes than the response; the pod index never
//! holds more containers than the body holds JSON objects, the Service index never more
//! addresses than the body holds JSON strings; a failed stream leaves both usable.
#![no_main]
use std::io::{Cursor, Read};
use std::sync::{Arc, RwLock};

use libfuzzer_sys::fuzz_target;
use sonde::identity::k8s::{apply_watch_events, read_response, PodIndex};
use sonde::identity::services::ServiceIndex;

fuzz_target!(|data: &[u8]| {
    let Ok(mut body) = read_response(Box::new(Cursor::new(data.to_vec()))) else {
        return;
    };
    let mut bytes = Vec::new();
    // A bad chunk size ends the body with an error; what came before is still read.
    let _ = body.read_to_end(&mut bytes);
    assert!(bytes.len() <= data.len(), "{} body bytes", bytes.len());

    let index = Arc::new(RwLock::new(PodIndex::default()));
    let _ = apply_watch_events(&bytes[..], "1", &index);
    let index = index.read().unwrap();
    let objects = bytes.iter().filter(|b| **b == b'{').count();
    assert!(index.len() <= objects, "{} containers", index.len());
    // Lookups still work, whatever was applied.
    let _ = index.get("");

    let services = Arc::new(RwLock::new(ServiceIndex::default()));
    let _ = apply_watch_events(&bytes[..], "1", &services);
    let services = services.read().unwrap();
    let strings = bytes.iter().filter(|b| **b == b'"').count() / 2;
    assert!(services.len() <= strings, "{} addresses", services.len());
    let _ = services.name_at(std::net::Ipv4Addr::LOCALHOST.into());
});
