//! Helpers shared by the unit tests of the protocol parsers and sessions.
use crate::protocols::call::DbOperation;
use crate::protocols::session::DbSession;

/// A deterministic generator of garbage input (a linear congruential generator).
pub struct Garbage(u32);

impl Garbage {
    pub fn new(seed: u32) -> Garbage {
        Garbage(seed)
    }

    pub fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12345);
        self.0 >> 16
    }

    /// `n` bytes drawn from `alphabet`, or any byte values when it is empty.
    pub fn bytes(&mut self, alphabet: &[u8], n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let x = self.next();
                if alphabet.is_empty() {
                    x as u8
                } else {
                    alphabet[x as usize % alphabet.len()]
                }
            })
            .collect()
    }
}

/// A typed PostgreSQL message: type byte, length, body.
pub fn pg_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(((body.len() + 4) as u32).to_be_bytes());
    v.extend(body);
    v
}

/// One session fed whole writes in turn, each a tick later; every write must frame cleanly.
pub struct Run<S> {
    pub s: S,
    pub done: Vec<DbOperation>,
    pub ts: u64,
}

impl<S: DbSession> Run<S> {
    pub fn new() -> Run<S> {
        Run {
            s: S::default(),
            done: Vec::new(),
            ts: 0,
        }
    }

    pub fn client(&mut self, bytes: &[u8]) {
        self.ts += 1;
        assert_eq!(
            self.s.feed(true, bytes, 0, self.ts, 1, &mut self.done),
            None
        );
    }

    pub fn server(&mut self, bytes: &[u8]) {
        self.ts += 1;
        assert_eq!(
            self.s.feed(false, bytes, 0, self.ts, 1, &mut self.done),
            None
        );
    }
}

/// Feeds `client` then `server` whole, then again with the client's bytes cut at every
/// offset, then with the server's: `ops` must give the same result every time.
pub fn assert_every_split_same<S: DbSession, T: PartialEq + std::fmt::Debug>(
    client: &[u8],
    server: &[u8],
    ops: impl Fn(&Run<S>) -> T,
) {
    let mut whole = Run::<S>::new();
    whole.client(client);
    whole.server(server);
    let expected = ops(&whole);
    for cut in 1..client.len() {
        let mut r = Run::<S>::new();
        r.client(&client[..cut]);
        r.client(&client[cut..]);
        r.server(server);
        assert_eq!(ops(&r), expected, "client cut at {cut}");
    }
    for cut in 1..server.len() {
        let mut r = Run::<S>::new();
        r.client(client);
        r.server(&server[..cut]);
        r.server(&server[cut..]);
        assert_eq!(ops(&r), expected, "server cut at {cut}");
    }
}

/// The unit tests' allocator: the system's, counting the bytes each thread holds, so that a
/// test can measure what a session keeps (`live_bytes` before and after, same thread).
struct CountingAlloc;

thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + delta));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter of this
// thread is updated besides.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size() as isize);
        std::alloc::System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        count(-(layout.size() as isize));
        std::alloc::System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size() as isize);
        std::alloc::System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count(new as isize - layout.size() as isize);
        std::alloc::System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Heap bytes this thread holds now (allocated minus freed since it started).
pub fn live_bytes() -> isize {
    LIVE.with(|l| l.get())
}
