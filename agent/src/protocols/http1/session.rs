//! HTTP/1 pairing: one connection's request and response streams, responses paired with
//! requests strictly in order (FIFO), which is what pipelining requires.
use std::collections::VecDeque;

use super::framing::{request_kind, Head, HttpEvent, HttpStream, RequestHead, StreamKind};
use crate::protocols::call::{HttpExchange, Role};
use crate::protocols::llm::{self, LlmCall, RequestReader, ResponseReader};
use crate::protocols::session::{
    Chunk, Finished, Readable, RequestNumbers, Session, EARLY_WINDOW_NS, MAX_EARLY,
};
use crate::traces::context::parse_traceparent;
use crate::traces::links::Start;

/// Requests a connection may have waiting for responses, and the bytes their heads keep
/// (method, path, host, traceparent). A request beyond either is given up: it gets no call
/// and counts as a `pending_limit` drop, and its response, which comes after those of the
/// requests kept, is passed over, so pairing stays exact.
pub const MAX_PENDING: usize = 1024;
pub const MAX_PENDING_BYTES: usize = 64 * 1024;
/// LLM API calls a connection may have waiting, each with its body readers (tens of KiB);
/// one beyond is given up like any request beyond `MAX_PENDING`.
pub const MAX_PENDING_LLM: usize = 8;

struct Pending {
    head: RequestHead,
    start_ts: u64,
    body_size: u64,
    tid: u32,
    /// Its number on the connection (see `Finished::started`).
    seq: u64,
    /// An LLM API call: its bodies are read as they arrive.
    llm: Option<Box<LlmReading>>,
}

/// A response that ended while no request waited, on a connection whose stream sonde
/// follows from a request on: its request's event is late (see `session::MAX_EARLY`). The
/// next request seen, if it comes within `EARLY_WINDOW_NS`, is the one it answers.
struct Early {
    status: u16,
    body_size: u64,
    ts: u64,
}

#[derive(Default)]
struct LlmReading {
    call: LlmCall,
    request: RequestReader,
    response: ResponseReader,
}

/// Request bodies the framing hands over: those of LLM API calls.
fn is_llm_call(head: &RequestHead) -> bool {
    llm::api_of(&head.method, &head.path).is_some()
}

/// An HTTP/1 connection's session.
pub struct HttpSession {
    requests: HttpStream,
    responses: HttpStream,
    pending: VecDeque<Pending>,
    /// Bytes the heads in `pending` keep (`head_bytes`).
    pending_bytes: usize,
    /// Requests given up after those in `pending` (see `MAX_PENDING`): the next responses
    /// once `pending` is empty answer them.
    skipped: u64,
    /// Index in `pending` of the request whose body is still arriving.
    open_request: Option<usize>,
    response_status: Option<u16>,
    numbers: RequestNumbers,
    /// A request was seen since the (re)start: a response with none waiting is early, not
    /// the answer to a request sonde never saw.
    in_step: bool,
    early: VecDeque<Early>,
    /// A call answered while its request's body was still arriving (a server that answers
    /// without reading the body, as nginx's `return` does): it is finished when the body
    /// ends, so that `http.request.body.size` is the whole body.
    answered_mid_body: Option<Box<HttpExchange>>,
}

impl Default for HttpSession {
    fn default() -> Self {
        let mut requests = HttpStream::new(StreamKind::Requests);
        requests.tap_requests(is_llm_call);
        HttpSession {
            requests,
            responses: HttpStream::new(StreamKind::Responses),
            pending: VecDeque::new(),
            pending_bytes: 0,
            skipped: 0,
            open_request: None,
            response_status: None,
            numbers: RequestNumbers::default(),
            in_step: false,
            early: VecDeque::new(),
            answered_mid_body: None,
        }
    }
}

impl Session for HttpSession {
    fn protocol(&self) -> &'static str {
        "http"
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Finished) {
        let mut events = take_scratch();
        let stream = if chunk.from_client {
            &mut self.requests
        } else {
            &mut self.responses
        };
        if !chunk.payload.is_empty() {
            if let Some(e) = stream.feed(chunk.payload, chunk.ts, &mut events) {
                out.errors.push(e.as_str());
            }
        }
        if chunk.gap > 0 {
            if let Some(e) = stream.gap(chunk.gap, chunk.ts, &mut events) {
                out.errors.push(e.as_str());
            }
        }
        for event in events.drain(..) {
            if chunk.from_client {
                self.on_request_event(event, chunk.tid, out);
            } else {
                self.on_response_event(event, out);
            }
        }
        give_back_scratch(events);
    }

    fn restart(&mut self) {
        let numbers = self.numbers;
        *self = HttpSession::default();
        self.numbers = numbers;
    }

    fn closed(&mut self, ts: u64, role: Role, out: &mut Finished) {
        self.count_unfinished(out);
        self.drop_early(u64::MAX, out);
        out.http.extend(self.answered_mid_body.take().map(|c| *c));
        let mut events = take_scratch();
        self.responses.close(ts, &mut events);
        for event in events.drain(..) {
            self.on_response_event(event, out);
        }
        give_back_scratch(events);
        if role == Role::Client {
            self.fail_pending(ts, "connection_closed", out);
        } else {
            self.fail_answering(ts, "connection_closed", out);
        }
    }

    fn failed(&mut self, ts: u64, role: Role, errno: &'static str, out: &mut Finished) {
        // The connection is dead (a server may still hold it open for a long time, as nginx
        // does until its keep-alive timeout): a message in progress is counted now, and
        // nothing more is read.
        self.count_unfinished(out);
        self.drop_early(u64::MAX, out);
        out.http.extend(self.answered_mid_body.take().map(|c| *c));
        if role == Role::Client {
            self.fail_pending(ts, errno, out);
        } else {
            self.fail_answering(ts, errno, out);
        }
        self.requests.abandon();
        self.responses.abandon();
    }

    fn readable(&self) -> Readable {
        if self.responses.is_opaque() || self.requests.is_opaque() {
            Readable::Upgraded
        } else {
            Readable::Yes
        }
    }
}

impl HttpSession {
    fn on_request_event(&mut self, event: HttpEvent, tid: u32, out: &mut Finished) {
        match event {
            HttpEvent::Head {
                head: Head::Request(head),
                ts,
            } => {
                self.in_step = true;
                self.drop_early(ts, out);
                self.responses
                    .expect_response_to(request_kind(&head.method));
                let size = head_bytes(&head);
                let llm_full = || {
                    is_llm_call(&head)
                        && self.pending.iter().filter(|p| p.llm.is_some()).count()
                            >= MAX_PENDING_LLM
                };
                if self.skipped > 0
                    || self.pending.len() >= MAX_PENDING
                    || self.pending_bytes + size > MAX_PENDING_BYTES
                    || llm_full()
                {
                    self.skipped += 1;
                    out.pending_dropped += 1;
                    self.open_request = None;
                    return;
                }
                self.pending_bytes += size;
                let llm = llm::api_of(&head.method, &head.path).map(|api| {
                    self.responses.tap_last_response();
                    Box::new(LlmReading {
                        call: LlmCall {
                            api: Some(api),
                            ..LlmCall::default()
                        },
                        ..LlmReading::default()
                    })
                });
                let start = Start {
                    tid,
                    request_key: request_key(&head.method, &head.path),
                    traceparent: head.traceparent.as_deref().and_then(parse_traceparent),
                };
                let seq = self.numbers.start(start, &mut out.started);
                self.pending.push_back(Pending {
                    head,
                    start_ts: ts,
                    body_size: 0,
                    tid,
                    seq,
                    llm,
                });
                self.open_request = Some(self.pending.len() - 1);
            }
            HttpEvent::End { body_size, .. } => {
                if let Some(r) = self.open_llm_request() {
                    r.request.finish(&mut r.call);
                }
                if let Some(p) = self
                    .open_request
                    .take()
                    .and_then(|i| self.pending.get_mut(i))
                {
                    p.body_size = body_size;
                }
                if let Some(mut call) = self.answered_mid_body.take() {
                    call.request_body_size = body_size;
                    out.http.push(*call);
                }
                // The request an early response answers (the first to come after it).
                if let Some(early) = self.early.pop_front() {
                    if let Some(req) = self.pop_pending() {
                        // Its request's event came later than its own: the call took no
                        // longer than the time between the two.
                        let end_ts = early.ts.max(req.start_ts);
                        let call = exchange(req, Some(early.status), early.body_size, None, end_ts);
                        out.http.push(call);
                    }
                }
            }
            HttpEvent::Body { data, .. } => {
                if let Some(r) = self.open_llm_request() {
                    r.request.feed(&data, &mut r.call);
                }
            }
            HttpEvent::BodyGap { .. } => {
                if let Some(r) = self.open_llm_request() {
                    r.request.gap(&mut r.call);
                }
            }
            HttpEvent::Head {
                head: Head::Response(_),
                ..
            }
            | HttpEvent::Upgraded => {}
        }
    }

    /// The LLM reading of the request whose body is arriving.
    fn open_llm_request(&mut self) -> Option<&mut LlmReading> {
        let i = self.open_request?;
        self.pending.get_mut(i)?.llm.as_deref_mut()
    }

    /// The LLM reading of the request being answered (the oldest waiting).
    fn answered_llm_request(&mut self) -> Option<&mut LlmReading> {
        self.pending.front_mut()?.llm.as_deref_mut()
    }

    fn on_response_event(&mut self, event: HttpEvent, out: &mut Finished) {
        match event {
            HttpEvent::Head {
                head: Head::Response(r),
                ..
            } => {
                self.response_status = Some(r.status);
                if let Some(reading) = self.answered_llm_request() {
                    reading.call.header_provider = r.provider;
                }
            }
            HttpEvent::End { body_size, ts } => {
                let Some(status) = self.response_status.take() else {
                    return;
                };
                if let Some(r) = self.answered_llm_request() {
                    r.response.finish(&mut r.call);
                }
                let Some(req) = self.pop_pending() else {
                    if self.skipped > 0 {
                        // It answers a request given up (already counted).
                        self.skipped -= 1;
                        return;
                    }
                    if self.in_step && self.early.len() < MAX_EARLY {
                        self.early.push_back(Early {
                            status,
                            body_size,
                            ts,
                        });
                        return;
                    }
                    // A response to a request sonde did not see (picked up mid-stream).
                    out.errors.push("unpaired_response");
                    return;
                };
                let body_arriving = self.open_request == Some(0);
                self.open_request = self.open_request.and_then(|i| i.checked_sub(1));
                let call = exchange(req, Some(status), body_size, None, ts);
                if body_arriving {
                    // Boxed: most sessions never hold one.
                    let held = self.answered_mid_body.replace(Box::new(call));
                    out.http.extend(held.map(|c| *c));
                } else {
                    out.http.push(call);
                }
            }
            HttpEvent::Body { data, ts } => {
                if let Some(r) = self.answered_llm_request() {
                    r.response.feed(&data, ts, &mut r.call);
                }
            }
            HttpEvent::BodyGap { .. } => {
                if let Some(r) = self.answered_llm_request() {
                    r.response.gap(&mut r.call);
                }
            }
            HttpEvent::Head {
                head: Head::Request(_),
                ..
            }
            | HttpEvent::Upgraded => {}
        }
    }

    /// The requests still waiting end with `failure` as their error; the one being
    /// answered keeps the status its response began with.
    /// An LLM stream that ended as its API ends one (`[DONE]`) is complete even if the
    /// connection closed before the HTTP body's own end (the SDKs stop reading there).
    fn fail_pending(&mut self, ts: u64, failure: &str, out: &mut Finished) {
        let mut status = self.response_status.take();
        // Those given up were counted when they were.
        self.skipped = 0;
        while let Some(req) = self.pop_pending() {
            let answered = status.is_some();
            let body = if answered {
                self.responses.body_size()
            } else {
                0
            };
            let completed = answered && req.llm.as_ref().is_some_and(|r| r.call.stream_completed);
            let failure = (!completed).then(|| failure.to_string());
            out.http
                .push(exchange(req, status.take(), body, failure, ts));
        }
        self.open_request = None;
    }

    /// A server whose connection ends while it is sending a response (a stream cut short):
    /// that exchange ends here with `failure`. Requests not yet answered give nothing: a
    /// server that closes an idle keep-alive connection has failed no one.
    fn fail_answering(&mut self, ts: u64, failure: &str, out: &mut Finished) {
        let Some(status) = self.response_status.take() else {
            return;
        };
        if let Some(req) = self.pop_pending() {
            let body = self.responses.body_size();
            out.http.push(exchange(
                req,
                Some(status),
                body,
                Some(failure.to_string()),
                ts,
            ));
        }
        self.open_request = None;
    }
}

thread_local! {
    /// The framing events of the feed in progress: one vector for every session of the
    /// thread, not one per connection (it was a third of an idle session's heap).
    static SCRATCH: std::cell::Cell<Vec<HttpEvent>> = const { std::cell::Cell::new(Vec::new()) };
}

fn take_scratch() -> Vec<HttpEvent> {
    SCRATCH.with(|s| s.take())
}

fn give_back_scratch(mut events: Vec<HttpEvent>) {
    events.clear();
    SCRATCH.with(|s| s.set(events));
}

impl HttpSession {
    /// Counts the message each direction stopped inside (see `HttpStream::unfinished`).
    fn count_unfinished(&self, out: &mut Finished) {
        for stream in [&self.requests, &self.responses] {
            if let Some(e) = stream.unfinished() {
                out.errors.push(e.as_str());
            }
        }
    }

    /// Early responses more than `EARLY_WINDOW_NS` before `ts` (all of them for
    /// `u64::MAX`) answer no request to come: counted as unpaired.
    fn drop_early(&mut self, ts: u64, out: &mut Finished) {
        while let Some(e) = self.early.front() {
            if ts != u64::MAX && ts.saturating_sub(e.ts) <= EARLY_WINDOW_NS {
                break;
            }
            self.early.pop_front();
            out.errors.push("unpaired_response");
        }
    }

    /// The oldest request waiting, out of the queue. An emptied queue gives its memory
    /// back: an idle keep-alive connection holds none.
    fn pop_pending(&mut self) -> Option<Pending> {
        let req = self.pending.pop_front()?;
        self.pending_bytes -= head_bytes(&req.head);
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
        Some(req)
    }
}

/// The bytes a request head keeps in its strings.
fn head_bytes(head: &RequestHead) -> usize {
    head.method.len()
        + head.path.len()
        + head.host.as_deref().map_or(0, str::len)
        + head.traceparent.as_ref().map_or(0, String::len)
}

fn exchange(
    req: Pending,
    status: Option<u16>,
    response_body_size: u64,
    failure: Option<String>,
    end_ts: u64,
) -> HttpExchange {
    HttpExchange {
        request: req.head,
        request_body_size: req.body_size,
        status,
        response_body_size,
        failure,
        start_ts: req.start_ts,
        end_ts,
        tid: req.tid,
        llm: req.llm.map(|r| Box::new(r.call)),
        seq: req.seq,
    }
}

/// A request's method and path, hashed (never 0): how a reverse proxy's upstream request is
/// told apart among the requests its thread is serving (see `traces::links`).
fn request_key(method: &str, path: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one((method, path)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `client` then `server` bytes, each cut at `cuts`, and returns what finished
    /// and the errors counted.
    fn run(client: &[&[u8]], server: &[&[u8]]) -> (Vec<HttpExchange>, Vec<&'static str>) {
        let mut s = HttpSession::default();
        let mut out = Finished::default();
        let mut ts = 0;
        for (from_client, parts) in [(true, client), (false, server)] {
            for payload in parts {
                ts += 1;
                let chunk = Chunk {
                    from_client,
                    payload,
                    gap: 0,
                    ts,
                    tid: 7,
                };
                s.feed(&chunk, &mut out);
            }
        }
        (out.http, out.errors)
    }

    fn summary(calls: &[HttpExchange]) -> Vec<(String, Option<u16>, u64)> {
        calls
            .iter()
            .map(|c| (c.request.path.to_string(), c.status, c.response_body_size))
            .collect()
    }

    const REQUESTS: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
        GET /c HTTP/1.1\r\nHost: x\r\n\r\n";
    const RESPONSES: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
        HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n\
        HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n";

    #[test]
    fn pipelined_requests_pair_in_order_whatever_the_splits() {
        let (whole, errors) = run(&[REQUESTS], &[RESPONSES]);
        assert!(errors.is_empty(), "{errors:?}");
        let expected = vec![
            ("/a".to_string(), Some(200), 2),
            ("/b".to_string(), Some(201), 0),
            // A chunked body's size is what crossed the wire, chunk framing included.
            ("/c".to_string(), Some(404), 14),
        ];
        assert_eq!(summary(&whole), expected);
        assert_eq!(whole[1].request_body_size, 3);
        assert!(whole.iter().all(|c| c.tid == 7 && c.failure.is_none()));
        for cut in 1..REQUESTS.len() {
            let (calls, _) = run(&[&REQUESTS[..cut], &REQUESTS[cut..]], &[RESPONSES]);
            assert_eq!(summary(&calls), expected, "requests cut at {cut}");
        }
        for cut in 1..RESPONSES.len() {
            let (calls, _) = run(&[REQUESTS], &[&RESPONSES[..cut], &RESPONSES[cut..]]);
            assert_eq!(summary(&calls), expected, "responses cut at {cut}");
        }
    }

    /// Feeds each (from_client, bytes, ts) in turn, the bytes of step `cut.0` cut at
    /// `cut.1`; returns what finished and the errors counted.
    fn run_steps(
        steps: &[(bool, &[u8], u64)],
        cut: Option<(usize, usize)>,
    ) -> (Vec<HttpExchange>, Vec<&'static str>) {
        let mut s = HttpSession::default();
        let mut out = Finished::default();
        feed_steps(&mut s, steps, cut, &mut out);
        (out.http, out.errors)
    }

    /// Feeds each (from_client, bytes, ts) to `s` in turn, step `cut.0` cut at `cut.1`.
    fn feed_steps(
        s: &mut HttpSession,
        steps: &[(bool, &[u8], u64)],
        cut: Option<(usize, usize)>,
        out: &mut Finished,
    ) {
        for (i, &(from_client, bytes, ts)) in steps.iter().enumerate() {
            let parts: Vec<&[u8]> = match cut {
                Some((step, at)) if step == i => vec![&bytes[..at], &bytes[at..]],
                _ => vec![bytes],
            };
            for payload in parts {
                let chunk = Chunk {
                    from_client,
                    payload,
                    gap: 0,
                    ts,
                    tid: 3,
                };
                s.feed(&chunk, out);
            }
        }
    }

    #[test]
    fn a_response_read_before_its_request_event_is_paired_with_it() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        // The write of /b is late: its answer (404) is read first.
        let steps: [(bool, &[u8], u64); 6] = [
            (true, b"GET /a HTTP/1.1\r\n\r\n", 1),
            (false, OK, 2),
            (false, NOT_FOUND, 3),
            (true, b"GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n", 4),
            (false, CREATED, 5),
            (true, b"GET /d HTTP/1.1\r\n\r\n", 6),
        ];
        let expected = vec![
            ("/a".to_string(), Some(200), 2),
            ("/b".to_string(), Some(404), 0),
            ("/c".to_string(), Some(201), 0),
        ];
        let (calls, errors) = run_steps(&steps, None);
        assert_eq!(summary(&calls), expected);
        assert!(errors.is_empty(), "{errors:?}");
        // Its request came later than it: the call ends when its request was seen.
        assert_eq!((calls[1].start_ts, calls[1].end_ts), (4, 4));
        for (step, &(_, bytes, _)) in steps.iter().enumerate() {
            for at in 1..bytes.len() {
                let (calls, errors) = run_steps(&steps, Some((step, at)));
                assert_eq!(summary(&calls), expected, "step {step} cut at {at}");
                assert!(errors.is_empty(), "step {step} cut at {at}: {errors:?}");
            }
        }

        // A response with nothing waiting at the start (picked up mid-stream) answers no
        // later request; nor does one more than 10 ms before the next request.
        let late = 3 + EARLY_WINDOW_NS + 1;
        let steps: [(bool, &[u8], u64); 5] = [
            (false, OK, 1),
            (true, b"GET /a HTTP/1.1\r\n\r\n", 2),
            (false, NOT_FOUND, 3),
            (false, CREATED, 3),
            (true, b"GET /b HTTP/1.1\r\n\r\n", late),
        ];
        let (calls, errors) = run_steps(&steps, None);
        assert_eq!(summary(&calls), [("/a".to_string(), Some(404), 0)]);
        assert_eq!(errors, ["unpaired_response", "unpaired_response"]);
    }

    /// A server that answers before it has read the request's body (nginx's `return`
    /// discards the body after answering): the call ends with its response but is finished
    /// when the body ends, with the whole body's size; the next request pairs as usual.
    #[test]
    fn a_response_before_the_request_body_ends_waits_for_the_body() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let steps: [(bool, &[u8], u64); 6] = [
            (
                true,
                b"POST /up HTTP/1.1\r\nContent-Length: 10\r\n\r\nabcd",
                1,
            ),
            (false, OK, 2),
            (true, b"efg", 3),
            (true, b"hij", 4),
            (true, b"GET /next HTTP/1.1\r\n\r\n", 5),
            (false, CREATED, 6),
        ];
        let check = |calls: &[HttpExchange], errors: &[&str], what: &str| {
            let got: Vec<_> = calls
                .iter()
                .map(|c| (&*c.request.path, c.status, c.request_body_size, c.end_ts))
                .collect();
            assert_eq!(
                got,
                [("/up", Some(200), 10, 2), ("/next", Some(201), 0, 6)],
                "{what}"
            );
            assert!(errors.is_empty(), "{what}: {errors:?}");
        };
        let (calls, errors) = run_steps(&steps, None);
        check(&calls, &errors, "whole");
        for (step, &(_, bytes, _)) in steps.iter().enumerate() {
            for at in 1..bytes.len() {
                let (calls, errors) = run_steps(&steps, Some((step, at)));
                check(&calls, &errors, &format!("step {step} cut at {at}"));
            }
        }

        // The connection closes before the body ends: the call is not lost.
        let mut s = HttpSession::default();
        let mut out = Finished::default();
        feed_steps(&mut s, &steps[..2], None, &mut out);
        assert!(out.http.is_empty(), "held until the body ends");
        s.closed(9, Role::Server, &mut out);
        assert_eq!(summary(&out.http), [("/up".to_string(), Some(200), 2)]);
    }

    #[test]
    fn a_client_connection_that_ends_fails_what_waits() {
        let mut s = HttpSession::default();
        let mut out = Finished::default();
        let chunk = |payload: &'static [u8], from_client, ts| Chunk {
            from_client,
            payload,
            gap: 0,
            ts,
            tid: 1,
        };
        s.feed(&chunk(b"GET /x HTTP/1.1\r\n\r\n", true, 1), &mut out);
        s.failed(5, Role::Client, "ECONNRESET", &mut out);
        assert_eq!(out.http.len(), 1);
        assert_eq!(out.http[0].failure.as_deref(), Some("ECONNRESET"));
        assert_eq!((out.http[0].start_ts, out.http[0].end_ts), (1, 5));

        // A response that ends at close ends there; a server's waiting requests do not fail.
        let mut out = Finished::default();
        s.feed(&chunk(b"GET /y HTTP/1.0\r\n\r\n", true, 6), &mut out);
        s.feed(&chunk(b"HTTP/1.0 200 OK\r\n\r\nbody", false, 7), &mut out);
        s.closed(9, Role::Server, &mut out);
        assert_eq!(summary(&out.http), [("/y".to_string(), Some(200), 4)]);
        assert_eq!(out.http[0].end_ts, 9);
        let mut out = Finished::default();
        s.feed(&chunk(b"GET /z HTTP/1.1\r\n\r\n", true, 10), &mut out);
        s.closed(11, Role::Server, &mut out);
        assert!(out.http.is_empty());
        s.closed(12, Role::Client, &mut out);
        assert_eq!(out.http[0].failure.as_deref(), Some("connection_closed"));
    }

    #[test]
    fn lost_bytes_drop_what_waits_and_an_upgrade_stops_reading() {
        let mut s = HttpSession::default();
        let mut out = Finished::default();
        let req = Chunk {
            from_client: true,
            payload: b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            gap: 0,
            ts: 1,
            tid: 1,
        };
        s.feed(&req, &mut out);
        s.restart();
        let resp = Chunk {
            from_client: false,
            payload: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ts: 2,
            ..req
        };
        s.feed(&resp, &mut out);
        assert!(out.http.is_empty());
        assert_eq!(out.errors, ["unpaired_response"]);
        assert_eq!(s.readable(), Readable::Yes);
        s.feed(&req, &mut out);
        let switching = Chunk {
            payload: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            ..resp
        };
        s.feed(&switching, &mut out);
        // Another protocol from here on: the connection is left alone, the request unpaired.
        assert_eq!(s.readable(), Readable::Upgraded);
        assert!(out.http.is_empty());
    }
}

#[cfg(test)]
mod llm_tests {
    use super::*;

    /// A request whose body is larger than the head copied: the head, a gap, the syscall's
    /// tail (as the kernel ships a long write on an HTTP connection).
    #[test]
    fn the_model_after_a_long_prompt_comes_from_the_tail() {
        let prompt = "p".repeat(10_000);
        let body = format!(
            r#"{{"messages": [{{"role": "user", "content": "{prompt}"}}], "model": "gpt-4o", "max_tokens": 7}}"#
        );
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let wire = [head.as_bytes(), body.as_bytes()].concat();
        let (first, tail) = (&wire[..4096], &wire[wire.len() - 2000..]);
        let mut s = HttpSession::default();
        let mut out = Finished::default();
        let chunk = Chunk {
            from_client: true,
            payload: first,
            gap: (wire.len() - first.len() - tail.len()) as u64,
            ts: 1,
            tid: 1,
        };
        s.feed(&chunk, &mut out);
        s.feed(
            &Chunk {
                payload: tail,
                gap: 0,
                ..chunk
            },
            &mut out,
        );
        let response =
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nopenai-version: 2020-10-01\r\n\r\n{}";
        s.feed(
            &Chunk {
                from_client: false,
                payload: response,
                gap: 0,
                ts: 2,
                tid: 1,
            },
            &mut out,
        );
        assert_eq!(out.http.len(), 1);
        let llm = out.http[0].llm.as_deref().expect("an LLM call");
        assert_eq!(llm.request_model.as_deref(), Some("gpt-4o"));
        assert_eq!(llm.max_tokens, Some(7));
        assert!(llm.truncated);
        assert_eq!(llm.header_provider, Some("openai"));
        assert_eq!(out.http[0].request_body_size, body.len() as u64);
    }

    /// The client read `[DONE]` and closed before the chunked body's last chunk: the
    /// stream is complete, not failed.
    #[test]
    fn a_stream_closed_after_done_is_complete() {
        let mut s = HttpSession::default();
        let mut out = Finished::default();
        let body = br#"{"model": "m", "stream": true}"#;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let request = [head.as_bytes(), body].concat();
        let mut feed = |from_client, payload: &[u8], ts| {
            let chunk = Chunk {
                from_client,
                payload,
                gap: 0,
                ts,
                tid: 1,
            };
            s.feed(&chunk, &mut out);
        };
        feed(true, &request, 1);
        let events =
            b"data: {\"choices\": [{\"delta\": {\"content\": \"hi\"}}]}\n\ndata: [DONE]\n\n";
        let response = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
                .as_slice(),
            format!("{:x}\r\n", events.len()).as_bytes(),
            events,
            b"\r\n",
        ]
        .concat();
        feed(false, &response, 2);
        s.closed(3, Role::Client, &mut out);
        assert_eq!(out.http.len(), 1);
        assert_eq!(out.http[0].failure, None);
        assert_eq!(out.http[0].status, Some(200));
        assert!(out.http[0].llm.as_ref().unwrap().stream_completed);
    }
}

/// Hostile input: what a session holds stays bounded whatever it is fed, and every request
/// given up or message cut off is counted.
#[cfg(test)]
mod hostile_tests {
    use super::*;
    use crate::testing::live_bytes;

    /// Most heap bytes one HTTP/1 session holds, however it is fed (docs/architecture.md
    /// states it): two head buffers (16 KiB each), `MAX_PENDING` requests and
    /// `MAX_PENDING_BYTES` of their strings, an LLM reading.
    pub const SESSION_BOUND: isize = 384 * 1024;

    /// A boxed session (as the connection table holds it), fed events and drained as the
    /// table drains it; it tracks the most heap the session held.
    struct Fed {
        s: Box<HttpSession>,
        base: isize,
        peak: isize,
        ts: u64,
        calls: Vec<(String, Option<u16>, Option<String>)>,
        errors: Vec<&'static str>,
        dropped: u64,
        out: Finished,
    }

    impl Fed {
        fn new() -> Fed {
            let mut out = Finished::default();
            out.http.reserve(2048);
            out.errors.reserve(16);
            let base = live_bytes();
            let s = Box::new(HttpSession::default());
            Fed {
                s,
                base,
                peak: 0,
                ts: 0,
                calls: Vec::new(),
                errors: Vec::new(),
                dropped: 0,
                out,
            }
        }

        /// Heap held by the session now (the results drained so far excluded).
        fn held(&self) -> isize {
            live_bytes()
                - self.base
                - (self.calls.capacity()
                    * std::mem::size_of::<(String, Option<u16>, Option<String>)>())
                    as isize
                - self
                    .calls
                    .iter()
                    .map(|c| c.0.capacity() + c.2.as_ref().map_or(0, String::capacity))
                    .sum::<usize>() as isize
                - (self.errors.capacity() * std::mem::size_of::<&str>()) as isize
        }

        fn drain(&mut self) {
            for ex in self.out.http.drain(..) {
                self.calls
                    .push((ex.request.path.to_string(), ex.status, ex.failure.clone()));
            }
            self.errors.append(&mut self.out.errors);
            self.dropped += std::mem::take(&mut self.out.pending_dropped);
            self.peak = self.peak.max(self.held());
        }

        fn feed(&mut self, from_client: bool, payload: &[u8], gap: u64) {
            self.ts += 1;
            let chunk = Chunk {
                from_client,
                payload,
                gap,
                ts: self.ts,
                tid: 1,
            };
            self.s.feed(&chunk, &mut self.out);
            self.drain();
        }

        fn close(&mut self, role: Role) {
            self.ts += 1;
            self.s.closed(self.ts, role, &mut self.out);
            self.drain();
        }
    }

    impl Drop for Fed {
        fn drop(&mut self) {
            // The figure docs/architecture.md quotes (`--nocapture`).
            eprintln!("HTTP/1 session held at most {} bytes", self.peak);
        }
    }

    #[test]
    fn a_keep_alive_connection_holds_little() {
        let mut f = Fed::new();
        for _ in 0..3 {
            f.feed(true, b"GET /load HTTP/1.1\r\nHost: load\r\n\r\n", 0);
            f.feed(
                false,
                b"HTTP/1.1 204 No Content\r\nServer: nginx\r\n\r\n",
                0,
            );
        }
        assert_eq!(f.calls.len(), 3);
        eprintln!(
            "keep-alive: {} bytes now, the session itself {}",
            f.held(),
            std::mem::size_of::<HttpSession>()
        );
        assert!(f.peak < 4096, "held {} bytes", f.peak);
    }

    #[test]
    fn pipelined_requests_beyond_the_limit_are_counted_and_pairing_stays_exact() {
        let mut f = Fed::new();
        for i in 0..3000 {
            f.feed(
                true,
                format!("GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                0,
            );
        }
        assert_eq!(f.dropped, 3000 - MAX_PENDING as u64);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        for _ in 0..3000 {
            f.feed(false, ok, 0);
        }
        // The kept requests got their own responses; those of the requests given up were
        // passed over, so the next request pairs with the next response.
        assert_eq!(f.calls.len(), MAX_PENDING);
        assert_eq!(f.calls[MAX_PENDING - 1].0, format!("/r{}", MAX_PENDING - 1));
        f.feed(true, b"GET /next HTTP/1.1\r\n\r\n", 0);
        f.feed(
            false,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            0,
        );
        assert_eq!(f.calls.last().unwrap(), &("/next".into(), Some(404), None));
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        assert!(f.peak < SESSION_BOUND, "held {} bytes", f.peak);
    }

    /// 100k pipelined requests never answered: the session holds what it holds for 1024;
    /// at the client's close those end as `connection_closed`, the rest were counted.
    #[test]
    fn a_hundred_thousand_unanswered_requests_hold_bounded_memory() {
        let mut f = Fed::new();
        let long_path = "/p".repeat(150);
        for i in 0..100_000 {
            let path = if i % 2 == 0 { "/short" } else { &long_path };
            f.feed(
                true,
                format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
                0,
            );
        }
        f.close(Role::Client);
        let closed = f
            .calls
            .iter()
            .filter(|c| c.2.as_deref() == Some("connection_closed"))
            .count();
        assert_eq!(closed as u64 + f.dropped, 100_000);
        // The byte budget bounds them before the count does.
        assert!(closed < MAX_PENDING, "{closed}");
        assert!(f.peak < SESSION_BOUND, "held {} bytes", f.peak);
    }

    #[test]
    fn a_head_that_never_ends_is_bounded_and_counted() {
        // One byte per event, as a trickle arrives: past 16 KiB the head is given up.
        let mut f = Fed::new();
        f.feed(true, b"GET /slow HTTP/1.1\r\nX-Long: ", 0);
        for _ in 0..100_000 {
            f.feed(true, b"a", 0);
        }
        assert_eq!(f.errors, ["head_too_large"]);
        assert!(f.peak < SESSION_BOUND, "held {} bytes", f.peak);
        // A short trickle cut off by the close.
        let mut f = Fed::new();
        f.feed(true, b"GET /slow HTTP/1.1\r\nX-Long: ", 0);
        for _ in 0..5 {
            f.feed(true, b"a", 0);
        }
        f.close(Role::Server);
        assert_eq!(f.errors, ["unfinished_head"]);
        assert!(f.calls.is_empty());
    }

    #[test]
    fn bodies_that_never_end_are_bounded_and_counted_at_close() {
        // Chunks for ever.
        let mut f = Fed::new();
        f.feed(
            true,
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            0,
        );
        for _ in 0..200_000 {
            f.feed(true, b"1\r\nx\r\n", 0);
        }
        f.feed(false, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0);
        f.close(Role::Server);
        assert_eq!(f.errors, ["unfinished_body"]);
        assert_eq!(f.calls, [("/up".into(), Some(200), None)]);
        assert!(f.peak < SESSION_BOUND, "held {} bytes", f.peak);

        // Content-Length: 1 TB, its bytes copied and not (gaps), also to an LLM API path
        // whose body is read as it arrives.
        for path in ["/upload", "/v1/chat/completions"] {
            let mut f = Fed::new();
            let head =
                format!("POST {path} HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n{{\"m\":\"");
            f.feed(true, head.as_bytes(), 0);
            let x = vec![b'x'; 4096];
            for _ in 0..5000 {
                f.feed(true, &x, 1 << 20);
            }
            f.feed(
                false,
                b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n",
                0,
            );
            f.close(Role::Client);
            assert_eq!(f.errors, ["unfinished_body"], "{path}");
            assert_eq!(f.calls, [(path.into(), Some(413), None)]);
            assert!(f.peak < SESSION_BOUND, "{path}: held {} bytes", f.peak);
        }

        // The client resets the connection mid-body; nginx keeps it open until its
        // keep-alive timeout: counted at the reset, once.
        let mut f = Fed::new();
        f.feed(
            true,
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n",
            0,
        );
        f.feed(false, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0);
        f.ts += 1;
        f.s.failed(f.ts, Role::Server, "ECONNRESET", &mut f.out);
        f.drain();
        assert_eq!(f.errors, ["unfinished_body"]);
        f.feed(true, b"1\r\nx\r\n", 0);
        f.close(Role::Server);
        assert_eq!(f.errors, ["unfinished_body"]);
        assert_eq!(f.calls, [("/up".into(), Some(200), None)]);

        // A body that ends at the close is complete: nothing to count.
        let mut f = Fed::new();
        f.feed(true, b"GET / HTTP/1.0\r\n\r\n", 0);
        f.feed(false, b"HTTP/1.0 200 OK\r\n\r\nall of it", 0);
        f.close(Role::Client);
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        assert_eq!(f.calls, [("/".into(), Some(200), None)]);
    }

    /// Pipelined LLM API calls, each body larger than what is copied (so their readers keep
    /// a tail): at most `MAX_PENDING_LLM` are read, the rest given up and counted.
    #[test]
    fn pipelined_llm_calls_hold_bounded_memory() {
        let mut f = Fed::new();
        let body = format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}], \"model\": \"m\"}}",
            "w".repeat(100_000)
        );
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let wire = [head.as_bytes(), body.as_bytes()].concat();
        for _ in 0..100 {
            // The first 4096 bytes, a gap, the last 20000 (as the kernel ships a long write).
            f.feed(true, &wire[..4096], (wire.len() - 4096 - 20_000) as u64);
            f.feed(true, &wire[wire.len() - 20_000..], 0);
        }
        assert_eq!(f.dropped, 100 - MAX_PENDING_LLM as u64);
        f.close(Role::Client);
        assert_eq!(f.calls.len(), MAX_PENDING_LLM);
        assert!(f.errors.is_empty(), "{:?}", f.errors);
        assert!(f.peak < SESSION_BOUND, "held {} bytes", f.peak);
    }

    #[test]
    fn binary_garbage_after_a_request_line_is_counted_and_skipped() {
        let mut f = Fed::new();
        let mut wire = b"GET /g HTTP/1.1\r\n".to_vec();
        wire.push(0);
        wire.extend(crate::testing::Garbage::new(7).bytes(&[], 4000));
        f.feed(true, &wire, 1 << 20);
        for i in 0..1000 {
            f.feed(true, &crate::testing::Garbage::new(i).bytes(&[], 4096), 0);
        }
        f.feed(
            false,
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            0,
        );
        f.close(Role::Server);
        assert_eq!(f.errors, ["invalid_header_name", "unpaired_response"]);
        assert!(f.calls.is_empty());
        assert!(f.peak < SESSION_BOUND, "held {} bytes", f.peak);
    }
}
