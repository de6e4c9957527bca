//! Strings that many calls share (operation, database and host names, query texts): a
//! connection keeps the ones it met lately, and names that recur across connections have
//! one copy per capture thread. Calls that share their label values share the addresses
//! the metric handle caches compare (`telemetry::series_memo`).
use std::sync::Arc;

/// The shared copy of `text` among `recent`, the texts a connection met lately (at most
/// `max`, the oldest out first): a text seen before costs no allocation.
pub fn shared_str(recent: &mut Vec<Arc<str>>, text: &str, max: usize) -> Arc<str> {
    shared_with(recent, text, max, |t| t.into())
}

/// `shared_str` for a name that recurs across connections (an operation's name): one
/// not met lately on this connection is taken from `interned`.
pub fn shared_name(recent: &mut Vec<Arc<str>>, text: &str, max: usize) -> Arc<str> {
    shared_with(recent, text, max, interned)
}

fn shared_with(
    recent: &mut Vec<Arc<str>>,
    text: &str,
    max: usize,
    make: fn(&str) -> Arc<str>,
) -> Arc<str> {
    if let Some(known) = recent.iter().find(|t| ***t == *text) {
        return known.clone();
    }
    if recent.len() >= max {
        recent.remove(0);
    }
    let text = make(text);
    recent.push(text.clone());
    text
}

/// Names interned per thread, at most: past it the set starts over (the names handed out
/// stay valid; new calls get new copies).
const MAX_INTERNED: usize = 4096;

thread_local! {
    static INTERNED: std::cell::RefCell<rustc_hash::FxHashSet<Arc<str>>> = Default::default();
}

/// The one copy of `name` shared by every connection of this thread (the capture thread):
/// operation names, database names and indexes. Calls that share their label values share
/// the addresses the metric handle caches compare (`telemetry::series_memo`), and connections
/// hold no copies of their own.
pub fn interned(name: &str) -> Arc<str> {
    INTERNED.with(|set| {
        let mut set = set.borrow_mut();
        if let Some(known) = set.get(name) {
            return known.clone();
        }
        if set.len() >= MAX_INTERNED {
            set.clear();
        }
        let name: Arc<str> = name.into();
        set.insert(name.clone());
        name
    })
}
