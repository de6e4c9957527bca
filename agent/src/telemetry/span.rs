//! Finished spans: built from paired HTTP calls, printed as JSON lines.
use std::io::Write;
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::identity::process::ProcessInfo;
use crate::protocols::call::DbCall;
use crate::protocols::call::{HttpCall, Role};
use crate::telemetry::attr::server_endpoint_attrs;
use crate::telemetry::attr::IpText;
pub use crate::telemetry::attr::{http_error_type, server_endpoint};
use crate::telemetry::genai;
use crate::telemetry::sampler::Sampler;
use crate::traces::context::parse_traceparent;
use crate::traces::context::{new_span_id, new_trace_id};
use crate::traces::TraceNode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

impl SpanKind {
    /// SERVER in the accepting process, CLIENT in the connecting one.
    pub fn of(role: Role) -> SpanKind {
        match role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "SERVER",
            SpanKind::Client => "CLIENT",
        }
    }
}

pub use crate::telemetry::attr::AttrValue;

#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub name: SpanName,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub process: Arc<ProcessInfo>,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

/// A span's name: most are a method or an operation name that many spans share, and are
/// not copied per span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanName {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl std::ops::Deref for SpanName {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            SpanName::Static(s) => s,
            SpanName::Shared(s) => s,
            SpanName::Owned(s) => s,
        }
    }
}

impl From<&'static str> for SpanName {
    fn from(s: &'static str) -> Self {
        SpanName::Static(s)
    }
}

impl From<String> for SpanName {
    fn from(s: String) -> Self {
        SpanName::Owned(s)
    }
}

/// Converts the kernel's monotonic timestamps to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real as i128 - mono as i128,
        }
    }

    pub fn to_unix(self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A span's identity, chosen before anything is recorded so that the metrics can carry
/// the trace as an exemplar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
}

impl SpanIds {
    /// The trace of an incoming `traceparent` when it is valid, else a new one; sampled as
    /// `sampler` decides.
    pub fn new(traceparent: Option<&str>, sampler: &Sampler) -> SpanIds {
        let (trace_id, parent_span_id, parent_sampled) =
            match traceparent.and_then(parse_traceparent) {
                Some(p) => (p.trace_id, Some(p.span_id), Some(p.sampled)),
                None => (new_trace_id(), None, None),
            };
        SpanIds {
            trace_id,
            span_id: new_span_id(),
            parent_span_id,
            sampled: sampler.sample(trace_id, parent_sampled),
        }
    }

    /// The ids of a span whose place the trace links chose (see `traces`): the sampler
    /// decides by the trace, so a whole tree is sampled or not.
    pub fn of_node(node: &TraceNode, sampler: &Sampler) -> SpanIds {
        let place = node.place();
        SpanIds {
            trace_id: place.trace_id,
            span_id: node.span_id,
            parent_span_id: place.parent_span_id,
            sampled: sampler.sample(place.trace_id, place.parent_sampled),
        }
    }
}

const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The semantic-convention method: a known method, or `_OTHER`.
pub fn normalize_method(m: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == m)
        .copied()
        .unwrap_or("_OTHER")
}

impl Span {
    pub fn from_http_call(call: &HttpCall, ids: SpanIds, clock: Clock) -> Span {
        let req = &call.request;
        let method = normalize_method(&req.method);
        let mut a: Vec<(&'static str, AttrValue)> = Vec::with_capacity(16);
        let s = |v: &str| AttrValue::Str(v.to_string());
        a.push(("http.request.method", AttrValue::Static(method)));
        if method == "_OTHER" {
            a.push(("http.request.method_original", s(&req.method)));
        }
        a.push(("url.path", AttrValue::Shared(req.path.clone())));
        if let Some(route) = &call.route {
            a.push(("http.route", AttrValue::Shared(route.clone())));
        }
        a.push(("url.scheme", AttrValue::Static(call.scheme())));
        if let Some(status) = call.status {
            a.push(("http.response.status_code", AttrValue::Int(status as i64)));
        }
        let fallback = if call.role == Role::Server {
            call.local
        } else {
            call.peer
        };
        let (addr, port) = server_endpoint_attrs(req.host.as_ref(), fallback, call.tls);
        if let Some(addr) = addr {
            a.push(("server.address", addr));
        }
        if let Some(port) = port {
            a.push(("server.port", AttrValue::Int(port as i64)));
        }
        if let Some(peer) = call.peer {
            if call.role == Role::Server {
                a.push(("client.address", AttrValue::Ip(peer.ip())));
            }
            a.push(("network.peer.address", AttrValue::Ip(peer.ip())));
            a.push(("network.peer.port", AttrValue::Int(peer.port() as i64)));
        }
        a.push((
            "network.protocol.version",
            AttrValue::Static(if req.minor_version == 0 { "1.0" } else { "1.1" }),
        ));
        a.push((
            "http.request.body.size",
            AttrValue::Int(call.request_body_size as i64),
        ));
        if call.status.is_some() {
            a.push((
                "http.response.body.size",
                AttrValue::Int(call.response_body_size as i64),
            ));
        }
        if let Some(e) = genai::error_type(call) {
            a.push(("error.type", AttrValue::Str(e)));
        }
        if let Some(llm) = &call.llm {
            a.extend(genai::attributes(llm, call.start_ts));
        }
        Span {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            // `{method} {http.route}` when a route is known, as the conventions ask.
            // An LLM call is named by its operation and model (`chat gpt-4o`).
            name: match (method, &call.route, &call.llm) {
                (_, _, Some(llm)) => genai::span_name(llm).into(),
                ("_OTHER", Some(route), _) => format!("HTTP {route}").into(),
                ("_OTHER", None, _) => "HTTP".into(),
                (m, Some(route), _) => format!("{m} {route}").into(),
                (m, None, _) => m.into(),
            },
            kind: SpanKind::of(call.role),
            start_unix_nano: clock.to_unix(call.start_ts),
            end_unix_nano: clock.to_unix(call.end_ts.max(call.start_ts)),
            process: call.process.clone(),
            attributes: a,
        }
    }

    /// A database operation: `db.*` attributes, named `{operation}` or
    /// `{operation} {collection}`.
    pub fn from_db_call(call: &DbCall, ids: SpanIds, clock: Clock) -> Span {
        let op = &call.op;
        let mut a: Vec<(&'static str, AttrValue)> = Vec::with_capacity(12);
        let s = |v: &str| AttrValue::Str(v.to_string());
        let shared = |v: &Arc<str>| AttrValue::Shared(v.clone());
        a.push(("db.system.name", AttrValue::Static(op.system)));
        a.push(("db.operation.name", shared(&op.operation)));
        if !op.namespace.is_empty() {
            a.push(("db.namespace", shared(&op.namespace)));
        }
        if let Some(c) = &op.collection {
            a.push(("db.collection.name", shared(c)));
        }
        if let Some(q) = &op.query_text {
            a.push(("db.query.text", shared(q)));
        }
        if let Some(name) = &op.statement_name {
            a.push(("sonde.db.statement.name", s(name)));
        }
        if let Some(n) = op.batch_size {
            a.push(("db.operation.batch.size", AttrValue::Int(n as i64)));
        }
        if let Some(code) = &op.status_code {
            a.push(("db.response.status_code", s(code)));
            a.push(("error.type", s(code)));
        }
        if let Some(rows) = op.returned_rows {
            a.push(("db.response.returned_rows", AttrValue::Int(rows as i64)));
        }
        if let Some(server) = call.server() {
            a.push(("server.address", AttrValue::Ip(server.ip())));
            a.push(("server.port", AttrValue::Int(server.port() as i64)));
        }
        if let Some(peer) = call.peer {
            a.push(("network.peer.address", AttrValue::Ip(peer.ip())));
            a.push(("network.peer.port", AttrValue::Int(peer.port() as i64)));
        }
        let name = match &op.collection {
            Some(c) => format!("{} {c}", op.operation).into(),
            None => SpanName::Shared(op.operation.clone()),
        };
        Span {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            parent_span_id: ids.parent_span_id,
            name,
            kind: SpanKind::of(call.role),
            start_unix_nano: clock.to_unix(op.start_ts),
            end_unix_nano: clock.to_unix(op.end_ts.max(op.start_ts)),
            process: call.process.clone(),
            attributes: a,
        }
    }

    /// One line of `--print-spans json`, written straight from the span (no JSON tree: that
    /// took half the capture thread's time when every span was printed). Keys come in
    /// sorted order, attributes under `attributes`, pod attributes at the top level.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, &JsonSpan(self))?;
        out.write_all(b"\n")
    }
}

/// A span as its JSON line.
struct JsonSpan<'a>(&'a Span);

impl Serialize for JsonSpan<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        let p = &s.process;
        let mut pod = p
            .pod
            .as_ref()
            .map(|pod| pod.attributes())
            .unwrap_or_default();
        pod.sort_by_key(|(k, _)| *k);
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("attributes", &JsonAttributes(&s.attributes))?;
        m.serialize_entry("container.id", &p.container_id)?;
        m.serialize_entry("end_time_unix_nano", &s.end_unix_nano)?;
        // `k8s.*` sorts between these two.
        for (k, v) in &pod {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry("kind", s.kind.as_str())?;
        m.serialize_entry("name", &*s.name)?;
        match s.parent_span_id {
            Some(parent) => {
                m.serialize_entry("parent_span_id", hex::<16>(parent.into()).as_str())?
            }
            None => m.serialize_entry("parent_span_id", "")?,
        }
        m.serialize_entry("process.executable.name", &p.exe_name)?;
        m.serialize_entry("process.pid", &p.pid)?;
        m.serialize_entry("service.name", &p.service_name)?;
        m.serialize_entry("span_id", hex::<16>(s.span_id.into()).as_str())?;
        m.serialize_entry("start_time_unix_nano", &s.start_unix_nano)?;
        m.serialize_entry("trace_id", hex::<32>(s.trace_id).as_str())?;
        m.end()
    }
}

/// Attributes as a JSON object: keys sorted; of a key given twice, the last value.
struct JsonAttributes<'a>(&'a [(&'static str, AttrValue)]);

impl Serialize for JsonAttributes<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut sorted: Vec<&(&'static str, AttrValue)> = self.0.iter().collect();
        sorted.sort_by_key(|(k, _)| *k);
        let mut m = ser.serialize_map(None)?;
        for (i, (k, v)) in sorted.iter().enumerate() {
            if sorted.get(i + 1).is_some_and(|(next, _)| next == k) {
                continue;
            }
            match v {
                AttrValue::Str(s) => m.serialize_entry(k, s)?,
                AttrValue::Static(s) => m.serialize_entry(k, s)?,
                AttrValue::Shared(s) => m.serialize_entry(k, &**s)?,
                AttrValue::Ip(ip) => m.serialize_entry(k, IpText::of(*ip).as_str())?,
                AttrValue::Int(i) => m.serialize_entry(k, i)?,
                AttrValue::Double(d) => m.serialize_entry(k, d)?,
                AttrValue::Bool(b) => m.serialize_entry(k, b)?,
                AttrValue::StrArray(items) => m.serialize_entry(k, items)?,
            }
        }
        m.end()
    }
}

/// The low `N` hex digits of `v`, lowercase, on the stack.
struct Hex<const N: usize>([u8; N]);

fn hex<const N: usize>(v: u128) -> Hex<N> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((v >> (4 * (N - 1 - i))) & 0xf) as usize];
    }
    Hex(out)
}

impl<const N: usize> Hex<N> {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};
    use std::net::SocketAddr;

    impl Span {
        /// The JSON line as a tree, the way it was built before `write_json` wrote it
        /// directly: the reference the direct writer must match byte for byte.
        fn to_json_tree(&self) -> Value {
            let mut attrs = Map::new();
            for (k, v) in &self.attributes {
                let v = match v {
                    AttrValue::Str(s) => Value::String(s.clone()),
                    AttrValue::Static(s) => Value::from(*s),
                    AttrValue::Shared(s) => Value::from(&**s),
                    AttrValue::Ip(ip) => Value::String(ip.to_string()),
                    AttrValue::Int(i) => Value::from(*i),
                    AttrValue::Double(d) => Value::from(*d),
                    AttrValue::Bool(b) => Value::Bool(*b),
                    AttrValue::StrArray(items) => Value::from(items.clone()),
                };
                attrs.insert((*k).to_string(), v);
            }
            let mut v = json!({
                "trace_id": format!("{:032x}", self.trace_id),
                "span_id": format!("{:016x}", self.span_id),
                "parent_span_id": self.parent_span_id.map(|p| format!("{p:016x}")).unwrap_or_default(),
                "name": &*self.name,
                "kind": self.kind.as_str(),
                "start_time_unix_nano": self.start_unix_nano,
                "end_time_unix_nano": self.end_unix_nano,
                "service.name": self.process.service_name,
                "process.pid": self.process.pid,
                "process.executable.name": self.process.exe_name,
                "container.id": self.process.container_id,
                "attributes": attrs,
            });
            if let Some(pod) = &self.process.pod {
                for (k, val) in pod.attributes() {
                    v[k] = Value::String(val.to_string());
                }
            }
            v
        }
    }

    fn pod() -> crate::identity::k8s::PodMeta {
        crate::identity::k8s::PodMeta {
            namespace: "shop".into(),
            pod_name: "cart-7d9f".into(),
            pod_uid: "0c1d".into(),
            container_name: "cart".into(),
            node_name: "node-1".into(),
            owner: Some(("k8s.deployment.name", "cart".into())),
            service_name: "cart".into(),
        }
    }

    /// Every attribute kind, ids with leading zeros, with and without a parent, a pod and a
    /// container, text that JSON escapes, a key given twice: written the same, byte for
    /// byte, as the JSON tree it replaces.
    #[test]
    fn spans_are_written_as_the_json_tree_was() {
        let plain = Arc::new(ProcessInfo::for_tests(42, "ngi\"nx", "web\\1"));
        let in_pod = Arc::new(ProcessInfo {
            pod: Some(Arc::new(pod())),
            container_id: Some("abc123".into()),
            ..(*plain).clone()
        });
        for (process, parent) in [(plain, None), (in_pod, Some(0x00ab_u64))] {
            let span = Span {
                trace_id: 0x0000_0000_0000_0001_0000_0000_0000_00ff,
                span_id: 0x0f,
                parent_span_id: parent,
                name: "GET /a\u{7f}\n".into(),
                kind: SpanKind::Client,
                start_unix_nano: 1_700_000_000_000_000_000,
                end_unix_nano: 1_700_000_000_000_000_500,
                process,
                attributes: vec![
                    ("url.path", AttrValue::Str("/a?\"b\"".into())),
                    ("http.request.method", AttrValue::Static("GET")),
                    (
                        "network.peer.address",
                        AttrValue::Ip("10.0.0.7".parse().unwrap()),
                    ),
                    ("client.address", AttrValue::Ip("::1".parse().unwrap())),
                    ("http.response.status_code", AttrValue::Int(-200)),
                    ("gen_ai.request.temperature", AttrValue::Double(0.25)),
                    ("gen_ai.request.top_p", AttrValue::Double(f64::NAN)),
                    ("gen_ai.is_stream", AttrValue::Bool(true)),
                    (
                        "gen_ai.response.finish_reasons",
                        AttrValue::StrArray(vec!["stop".into(), String::new()]),
                    ),
                    ("error.type", AttrValue::Str("first".into())),
                    ("error.type", AttrValue::Str("last".into())),
                ],
            };
            let mut line = Vec::new();
            span.write_json(&mut line).unwrap();
            let want = serde_json::to_string(&span.to_json_tree()).unwrap() + "\n";
            assert_eq!(String::from_utf8(line).unwrap(), want);
        }
    }

    #[test]
    fn server_endpoint_from_host_header() {
        assert_eq!(
            server_endpoint(Some("api:8080"), None, false),
            (Some("api".into()), Some(8080))
        );
        assert_eq!(
            server_endpoint(Some("api"), None, false),
            (Some("api".into()), Some(80))
        );
        assert_eq!(
            server_endpoint(Some("api"), None, true),
            (Some("api".into()), Some(443))
        );
        assert_eq!(
            server_endpoint(Some("[::1]:81"), None, true),
            (Some("::1".into()), Some(81))
        );
        let fb: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        assert_eq!(
            server_endpoint(None, Some(fb), true),
            (Some("10.0.0.1".into()), Some(9000))
        );
    }

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(normalize_method("GET"), "GET");
        assert_eq!(normalize_method("PROPFIND"), "_OTHER");
    }
}
