//! The database histogram series of recent calls, found by the identity of what their
//! labels are made of. Sessions share their operation and namespace names across
//! connections (`protocols::session::interned`), and a connection shares its process: the
//! common call is matched by comparing a few pointers, without hashing or comparing any
//! label string.
use std::net::SocketAddr;
use std::sync::Arc;

use crate::identity::process::ProcessInfo;
use crate::protocols::call::{DbCall, Role};
use crate::telemetry::red::Series;

/// Direct-mapped slots: a collision replaces the older entry, and a miss costs one lookup
/// in the label cache behind.
const SLOTS: usize = 256;

#[derive(Default)]
pub struct DbMemo {
    slots: Vec<Option<Entry>>,
}

struct Entry {
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

impl Entry {
    fn of(call: &DbCall, series: Arc<Series>) -> Entry {
        Entry {
            process: call.process.clone(),
            operation: call.op.operation.clone(),
            namespace: call.op.namespace.clone(),
            system: call.op.system,
            role: call.role,
            server: call.server(),
            series,
        }
    }

    /// Whether `call`'s labels are this entry's. `ProcessInfo` and the strings are
    /// immutable, so the same values give the same labels.
    fn matches(&self, call: &DbCall) -> bool {
        Arc::ptr_eq(&self.process, &call.process)
            && Arc::ptr_eq(&self.operation, &call.op.operation)
            && Arc::ptr_eq(&self.namespace, &call.op.namespace)
            && self.system == call.op.system
            && self.role == call.role
            && self.server == call.server()
    }
}

impl DbMemo {
    /// The series of `call`'s label set, or the one `lookup` finds (then kept). Only for
    /// calls that did not fail: an `error.type` is not a shared value.
    pub fn series(&mut self, call: &DbCall, lookup: impl FnOnce() -> Arc<Series>) -> &Series {
        debug_assert!(call.error_type().is_none());
        if self.slots.is_empty() {
            self.slots.resize_with(SLOTS, || None);
        }
        let slot = &mut self.slots[slot_of(call)];
        if !slot.as_ref().is_some_and(|entry| entry.matches(call)) {
            *slot = Some(Entry::of(call, lookup()));
        }
        &slot.as_ref().expect("just filled").series
    }
}

fn slot_of(call: &DbCall) -> usize {
    // Heap addresses: their low bits are alignment, the bits above vary.
    let operation = Arc::as_ptr(&call.op.operation) as *const u8 as usize;
    let process = Arc::as_ptr(&call.process) as usize;
    let port = call.server().map_or(0, |s| s.port() as usize);
    ((operation >> 4) ^ (process >> 6) ^ port.wrapping_mul(31) ^ call.role as usize) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::call::DbOperation;
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

    #[test]
    fn the_same_shared_values_find_the_same_series_and_others_look_up_theirs() {
        let family = HistogramFamily::new("t", "t", "s", "t", &[1.0], &["n"], 100);
        let lookups = Cell::new(0);
        let lookup = || {
            lookups.set(lookups.get() + 1);
            family.series(vec![lookups.get().to_string()])
        };
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
        assert_eq!(lookups.get(), 5);
    }
}
