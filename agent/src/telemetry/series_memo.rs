//! The histogram series of recent calls, found by the identity of what their labels are
//! made of. Sessions share their operation, namespace and host names across connections
//! (`protocols::shared`), and a connection shares its process: the common call
//! is matched by comparing a few pointers, without hashing or comparing any label string.
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::process::ProcessInfo;
use crate::protocols::call::{DbCall, HttpCall, Role};
use crate::telemetry::red::Series;

/// Direct-mapped slots: a collision replaces the older entry, and a miss costs one lookup
/// in the label cache behind.
const SLOTS: usize = 256;

/// What a memo keeps of a call: the values its labels come from.
pub trait MemoEntry: Sized {
    type Call;
    fn of(call: &Self::Call, series: Arc<Series>) -> Self;
    /// Whether `call`'s labels are this entry's. `ProcessInfo` and the shared strings are
    /// immutable, so the same values give the same labels.
    fn matches(&self, call: &Self::Call) -> bool;
    /// Whether all of `call`'s labels are shared values, so that an entry can match it.
    fn takes(call: &Self::Call) -> bool;
    fn series(&self) -> &Series;
    /// The slot of `call`, from the addresses of its values (heap addresses: their low bits
    /// are alignment, the bits above vary).
    fn slot(call: &Self::Call) -> usize;
}

pub struct SeriesMemo<E> {
    slots: Vec<Option<E>>,
}

impl<E> Default for SeriesMemo<E> {
    fn default() -> Self {
        SeriesMemo { slots: Vec::new() }
    }
}

impl<E: MemoEntry> SeriesMemo<E> {
    pub fn takes(call: &E::Call) -> bool {
        E::takes(call)
    }

    /// Hands `observe` the series of `call`'s label set: the memo's when the call's labels
    /// are all shared values, else the one `lookup` finds.
    pub fn with_series(
        &mut self,
        call: &E::Call,
        lookup: impl FnOnce() -> Arc<Series>,
        observe: impl FnOnce(&Series),
    ) {
        if E::takes(call) {
            observe(self.series(call, lookup));
        } else {
            observe(&lookup());
        }
    }

    /// The series of `call`'s label set, or the one `lookup` finds (then kept). Only for
    /// calls whose labels are all shared values (`takes`).
    pub fn series(&mut self, call: &E::Call, lookup: impl FnOnce() -> Arc<Series>) -> &Series {
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        let slot = &mut self.slots[E::slot(call) % SLOTS];
        if !slot.as_ref().is_some_and(|entry| entry.matches(call)) {
            *slot = Some(E::of(call, lookup()));
        }
        slot.as_ref().expect("just filled").series()
    }
}

pub type DbMemo = SeriesMemo<DbEntry>;

pub struct DbEntry {
    // The values themselves are held, not only their addresses: an address compared is
    // that of these very values, never of a later one allocated in their place.
    process: Arc<ProcessInfo>,
    operation: Arc<str>,
    namespace: Arc<str>,
    system: &'static str,
    role: Role,
    server: Option<SocketAddr>,
    series: Arc<Series>,
}

impl MemoEntry for DbEntry {
    type Call = DbCall;

    fn of(call: &DbCall, series: Arc<Series>) -> DbEntry {
        DbEntry {
            process: call.process.clone(),
            operation: call.op.operation.clone(),
            namespace: call.op.namespace.clone(),
            system: call.op.system,
            role: call.role,
            server: call.server(),
            series,
        }
    }

    fn matches(&self, call: &DbCall) -> bool {
        Arc::ptr_eq(&self.process, &call.process)
            && Arc::ptr_eq(&self.operation, &call.op.operation)
            && Arc::ptr_eq(&self.namespace, &call.op.namespace)
            && self.system == call.op.system
            && self.role == call.role
            && self.server == call.server()
    }

    /// A failed call's `error.type` is not a shared value.
    fn takes(call: &DbCall) -> bool {
        call.error_type().is_none()
    }

    fn series(&self) -> &Series {
        &self.series
    }

    fn slot(call: &DbCall) -> usize {
        let operation = Arc::as_ptr(&call.op.operation) as *const u8 as usize;
        let process = Arc::as_ptr(&call.process) as usize;
        let port = call.server().map_or(0, |s| s.port() as usize);
        (operation >> 4) ^ (process >> 6) ^ port.wrapping_mul(31) ^ call.role as usize
    }
}

pub type HttpMemo = SeriesMemo<HttpEntry>;

/// The values an HTTP call's labels come from (see `metrics::HttpKey`): the host and peer
/// only label client calls, the route only server calls.
pub struct HttpEntry {
    process: Arc<ProcessInfo>,
    method: &'static str,
    host: Option<Arc<str>>,
    route: Option<Arc<str>>,
    peer: Option<SocketAddr>,
    status: Option<u16>,
    role: Role,
    tls: bool,
    series: Arc<Series>,
}

fn static_method(call: &HttpCall) -> &'static str {
    match call.request.method {
        Cow::Borrowed(m) => m,
        Cow::Owned(_) => "",
    }
}

fn same_shared(a: Option<&Arc<str>>, b: Option<&Arc<str>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

impl HttpEntry {
    fn host(call: &HttpCall) -> Option<&Arc<str>> {
        call.request
            .host
            .as_ref()
            .filter(|_| call.role == Role::Client)
    }

    fn peer(call: &HttpCall) -> Option<SocketAddr> {
        call.peer.filter(|_| call.role == Role::Client)
    }
}

impl MemoEntry for HttpEntry {
    type Call = HttpCall;

    fn of(call: &HttpCall, series: Arc<Series>) -> HttpEntry {
        HttpEntry {
            process: call.process.clone(),
            method: static_method(call),
            host: HttpEntry::host(call).cloned(),
            route: call.route.clone(),
            peer: HttpEntry::peer(call),
            status: call.status,
            role: call.role,
            tls: call.tls,
            series,
        }
    }

    fn matches(&self, call: &HttpCall) -> bool {
        Arc::ptr_eq(&self.process, &call.process)
            && std::ptr::eq(self.method, static_method(call))
            && self.status == call.status
            && self.role == call.role
            && self.tls == call.tls
            && same_shared(self.host.as_ref(), HttpEntry::host(call))
            && same_shared(self.route.as_ref(), call.route.as_ref())
            && self.peer == HttpEntry::peer(call)
    }

    /// A failure's name and a method outside the standard ones are not shared values.
    fn takes(call: &HttpCall) -> bool {
        call.failure.is_none() && matches!(call.request.method, Cow::Borrowed(_))
    }

    fn series(&self) -> &Series {
        &self.series
    }

    fn slot(call: &HttpCall) -> usize {
        let process = Arc::as_ptr(&call.process) as usize;
        let host = HttpEntry::host(call).map_or(0, |h| Arc::as_ptr(h) as *const u8 as usize);
        let route = call
            .route
            .as_ref()
            .map_or(0, |r| Arc::as_ptr(r) as *const u8 as usize);
        let status = call.status.unwrap_or(0) as usize;
        (process >> 6) ^ (host >> 4) ^ (route >> 4) ^ status.wrapping_mul(31) ^ call.role as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::call::DbOperation;
    use crate::protocols::http1::framing::RequestHead;
    use crate::telemetry::red::HistogramFamily;
    use std::cell::Cell;

    fn call(process: &Arc<ProcessInfo>, operation: &Arc<str>, namespace: &Arc<str>) -> DbCall {
        DbCall {
            role: Role::Client,
            process: process.clone(),
            tid: 1,
            local: None,
            peer: Some("127.0.0.1:6379".parse().unwrap()),
            op: DbOperation {
                system: "redis",
                operation: operation.clone(),
                namespace: namespace.clone(),
                ..DbOperation::default()
            },
            trace: None,
        }
    }

    /// A lookup that makes a new series each time, and counts the lookups.
    struct Lookups {
        family: HistogramFamily,
        count: Cell<usize>,
    }

    impl Lookups {
        fn new() -> Lookups {
            Lookups {
                family: HistogramFamily::new("t", "t", "s", "t", &[1.0], &["n"], 100),
                count: Cell::new(0),
            }
        }

        fn lookup(&self) -> Arc<Series> {
            self.count.set(self.count.get() + 1);
            self.family.series(vec![self.count.get().to_string()])
        }
    }

    #[test]
    fn the_same_shared_values_find_the_same_series_and_others_look_up_theirs() {
        let lookups = Lookups::new();
        let lookup = || lookups.lookup();
        let process = Arc::new(ProcessInfo::for_tests(1, "app", "app"));
        let (get, ns): (Arc<str>, Arc<str>) = ("GET".into(), "0".into());
        let mut memo = DbMemo::default();
        let first = memo.series(&call(&process, &get, &ns), lookup) as *const Series;
        // The same process, operation and namespace values: no lookup.
        let again = memo.series(&call(&process, &get, &ns), || panic!("looked up again"));
        assert!(std::ptr::eq(first, again));
        // Equal text in another allocation, another process, another peer, another
        // namespace value: each is looked up.
        memo.series(&call(&process, &"GET".into(), &ns), lookup);
        let other = Arc::new(ProcessInfo::for_tests(2, "app", "app"));
        memo.series(&call(&other, &get, &ns), lookup);
        let mut moved = call(&process, &get, &ns);
        moved.peer = Some("127.0.0.1:6380".parse().unwrap());
        memo.series(&moved, lookup);
        memo.series(&call(&process, &get, &"0".into()), lookup);
        assert_eq!(lookups.count.get(), 5);
    }

    fn http(process: &Arc<ProcessInfo>, role: Role, host: &Arc<str>, status: u16) -> HttpCall {
        HttpCall {
            role,
            process: process.clone(),
            tid: 1,
            local: None,
            peer: Some("10.0.0.2:8080".parse().unwrap()),
            request: RequestHead {
                method: Cow::Borrowed("GET"),
                path: "/v1/items".into(),
                minor_version: 1,
                host: Some(host.clone()),
                traceparent: None,
            },
            request_body_size: 0,
            status: Some(status),
            response_body_size: 0,
            failure: None,
            start_ts: 0,
            end_ts: 1,
            route: None,
            llm: None,
            tls: false,
            trace: None,
        }
    }

    #[test]
    fn http_calls_with_the_same_shared_values_find_their_series_and_others_look_up() {
        let lookups = Lookups::new();
        let lookup = || lookups.lookup();
        let process = Arc::new(ProcessInfo::for_tests(1, "app", "app"));
        let host: Arc<str> = "api.internal".into();
        let mut memo = HttpMemo::default();
        let first = memo.series(&http(&process, Role::Client, &host, 200), lookup) as *const Series;
        let again = memo.series(&http(&process, Role::Client, &host, 200), || {
            panic!("looked up again")
        });
        assert!(std::ptr::eq(first, again));
        // The same host text in another allocation, another status, another method,
        // another peer, another route: each is looked up.
        memo.series(
            &http(&process, Role::Client, &"api.internal".into(), 200),
            lookup,
        );
        memo.series(&http(&process, Role::Client, &host, 404), lookup);
        let mut post = http(&process, Role::Client, &host, 200);
        post.request.method = Cow::Borrowed("POST");
        memo.series(&post, lookup);
        let mut moved = http(&process, Role::Client, &host, 200);
        moved.peer = Some("10.0.0.3:8080".parse().unwrap());
        memo.series(&moved, lookup);
        let mut routed = http(&process, Role::Server, &host, 200);
        routed.route = Some("/v1/{id}".into());
        memo.series(&routed, lookup);
        assert_eq!(lookups.count.get(), 6);
        // A server call's labels hold neither host nor peer: any of them finds its series.
        let server =
            memo.series(&http(&process, Role::Server, &host, 200), lookup) as *const Series;
        let mut elsewhere = http(&process, Role::Server, &"other".into(), 200);
        elsewhere.peer = None;
        let found = memo.series(&elsewhere, || panic!("looked up again")) as *const Series;
        assert!(std::ptr::eq(server, found));
        assert_eq!(lookups.count.get(), 7);
        // A failure or a method outside the standard ones is not a shared value.
        let mut failed = http(&process, Role::Client, &host, 200);
        failed.failure = Some("ECONNRESET".into());
        assert!(!HttpMemo::takes(&failed));
        let mut custom = http(&process, Role::Client, &host, 200);
        custom.request.method = Cow::Owned("PURGE".into());
        assert!(!HttpMemo::takes(&custom));
    }
}
