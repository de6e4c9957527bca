//! Attribute values, and the HTTP attributes that spans and metrics both derive.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::protocols::call::{HttpCall, Role};

/// An attribute value: the OTLP `AnyValue` kinds sonde uses.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    /// A string known when sonde was built (a method, a scheme, a version): no copy per
    /// span.
    Static(&'static str),
    /// A string many calls share (a Redis command, a prepared statement's text): no copy
    /// per span.
    Shared(std::sync::Arc<str>),
    /// An address, written out as text only when the span is.
    Ip(IpAddr),
    Int(i64),
    Double(f64),
    Bool(bool),
    StrArray(Vec<String>),
}

/// An address as text in a buffer on the stack (the longest IPv6 text is 45 bytes), so
/// that writing it allocates nothing.
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub fn of(ip: std::net::IpAddr) -> IpText {
        use std::fmt::Write;
        let mut text = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            // Digit by digit: `Display` goes through the formatter for each octet, a tenth
            // of the OTLP export thread's time (measured).
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            // Cannot fail: every address fits the buffer.
            std::net::IpAddr::V6(_) => {
                let _ = write!(text, "{ip}");
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `server.address` and `server.port`: the Host header when present (without a port: the
/// scheme's, 443 over TLS, else 80), else `fallback`.
pub fn server_endpoint(
    host: Option<&str>,
    fallback: Option<SocketAddr>,
    tls: bool,
) -> (Option<String>, Option<u16>) {
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        let (name, port) = split_host(h, tls);
        return (Some(name.to_string()), Some(port));
    }
    match fallback {
        Some(a) => (Some(a.ip().to_string()), Some(a.port())),
        None => (None, None),
    }
}

/// `server_endpoint` as span attributes: the Host header's name shares its copy when it
/// is the whole header, and an address stays an address until the span is written.
pub fn server_endpoint_attrs(
    host: Option<&Arc<str>>,
    fallback: Option<SocketAddr>,
    tls: bool,
) -> (Option<AttrValue>, Option<u16>) {
    if let Some(h) = host.filter(|h| !h.is_empty()) {
        let (name, port) = split_host(h, tls);
        let name = if name.len() == h.len() {
            AttrValue::Shared(h.clone())
        } else {
            AttrValue::Str(name.to_string())
        };
        return (Some(name), Some(port));
    }
    match fallback {
        Some(a) => (Some(AttrValue::Ip(a.ip())), Some(a.port())),
        None => (None, None),
    }
}

/// A Host header's name (without brackets) and port (the scheme's, 443 over TLS, else 80,
/// when it names none).
fn split_host(h: &str, tls: bool) -> (&str, u16) {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (h, None), // bare IPv6
        Some((n, p)) => (n, p.parse().ok()),
        None => (h, None),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    (name, port.unwrap_or(if tls { 443 } else { 80 }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_their_display_text() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "::ffff:10.0.0.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
    }

    /// The span attributes say what `server_endpoint` says, and a Host header that is all
    /// name is shared, not copied.
    #[test]
    fn span_endpoint_attributes_agree_with_the_text_and_share_a_bare_host() {
        let fallback: Option<SocketAddr> = Some("10.0.0.7:8443".parse().unwrap());
        for (host, tls) in [
            (Some("api.internal"), false),
            (Some("api.internal"), true),
            (Some("api.internal:8080"), false),
            (Some("[::1]:9000"), false),
            (Some("[::1]"), true),
            (Some("::1"), false),
            (Some(""), false),
            (None, false),
        ] {
            let shared: Option<Arc<str>> = host.map(Into::into);
            let (text, port) = server_endpoint(host, fallback, tls);
            let (attr, attr_port) = server_endpoint_attrs(shared.as_ref(), fallback, tls);
            assert_eq!(port, attr_port, "{host:?}");
            let attr_text = match &attr {
                Some(AttrValue::Shared(s)) => Some(s.to_string()),
                Some(AttrValue::Str(s)) => Some(s.clone()),
                Some(AttrValue::Ip(ip)) => Some(ip.to_string()),
                other => panic!("{other:?}"),
            };
            assert_eq!(text, attr_text, "{host:?}");
            if let (Some(AttrValue::Shared(s)), Some(h)) = (&attr, &shared) {
                assert!(Arc::ptr_eq(s, h));
            }
        }
        let bare: Arc<str> = "api.internal".into();
        assert!(matches!(
            server_endpoint_attrs(Some(&bare), None, false).0,
            Some(AttrValue::Shared(_))
        ));
    }
}
