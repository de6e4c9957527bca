//! Attribute values, and the HTTP attributes that spans and metrics both derive.
use std::net::{IpAddr, SocketAddr};

use crate::protocols::call::{HttpCall, Role};

/// An attribute value: the OTLP `AnyValue` kinds sonde uses.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    /// A string known when sonde was built (a method, a scheme, a version): no copy per
    /// span.
    Static(&'static str),
    /// An address, written out as text only when the span is.
    Ip(IpAddr),
    Int(i64),
    Double(f64),
    Bool(bool),
    StrArray(Vec<String>),
}

/// `server.address` and `server.port`: the Host header when present (without a port: the
/// scheme's, 443 over TLS, else 80), else `fallback`.
pub fn server_endpoint(
    host: Option<&str>,
    fallback: Option<SocketAddr>,
    tls: bool,
) -> (Option<String>, Option<u16>) {
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        let (name, port) = match h.rsplit_once(':') {
            Some((n, _)) if !n.ends_with(']') && n.contains(':') => (h, None), // bare IPv6
            Some((n, p)) => (n, p.parse().ok()),
            None => (h, None),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let default_port = if tls { 443 } else { 80 };
        return (Some(name.to_string()), port.or(Some(default_port)));
    }
    match fallback {
        Some(a) => (Some(a.ip().to_string()), Some(a.port())),
        None => (None, None),
    }
}

/// `error.type` for a call: 5xx on the server; 4xx, 5xx and connection failures on the client.
pub fn http_error_type(call: &HttpCall) -> Option<String> {
    if let Some(e) = &call.failure {
        return Some(e.clone());
    }
    let status = call.status?;
    let limit = if call.role == Role::Server { 500 } else { 400 };
    (status >= limit).then(|| status.to_string())
}
