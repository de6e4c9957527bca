//! HTTP/1 pairing: one connection's request and response streams, responses paired with
//! requests strictly in order (FIFO), which is what pipelining requires.
use std::collections::VecDeque;

use super::framing::{request_kind, Head, HttpEvent, HttpStream, RequestHead, StreamKind};
use crate::protocols::call::{HttpExchange, Role};
use crate::protocols::session::{Chunk, Finished, Readable, Session};

/// Requests a connection may have waiting for responses; the oldest is dropped beyond.
const MAX_PENDING: usize = 1024;

struct Pending {
    head: RequestHead,
    start_ts: u64,
    body_size: u64,
    tid: u32,
}

/// An HTTP/1 connection's session.
pub struct HttpSession {
    requests: HttpStream,
    responses: HttpStream,
    pending: VecDeque<Pending>,
    /// Index in `pending` of the request whose body is still arriving.
    open_request: Option<usize>,
    response_status: Option<u16>,
    /// Framing events of the current feed (kept to reuse its allocation).
    events: Vec<HttpEvent>,
}

impl Default for HttpSession {
    fn default() -> Self {
        HttpSession {
            requests: HttpStream::new(StreamKind::Requests),
            responses: HttpStream::new(StreamKind::Responses),
            pending: VecDeque::new(),
            open_request: None,
            response_status: None,
            events: Vec::new(),
        }
    }
}

impl Session for HttpSession {
    fn protocol(&self) -> &'static str {
        "http"
    }

    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Finished) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
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
                self.on_request_event(event, chunk.tid);
            } else {
                self.on_response_event(event, out);
            }
        }
        self.events = events;
    }

    fn restart(&mut self) {
        *self = HttpSession {
            events: std::mem::take(&mut self.events),
            ..HttpSession::default()
        };
    }

    fn closed(&mut self, ts: u64, role: Role, out: &mut Finished) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.responses.close(ts, &mut events);
        for event in events.drain(..) {
            self.on_response_event(event, out);
        }
        self.events = events;
        if role == Role::Client {
            self.fail_pending(ts, "connection_closed", out);
        }
    }

    fn failed(&mut self, ts: u64, role: Role, errno: &'static str, out: &mut Finished) {
        if role == Role::Client {
            self.fail_pending(ts, errno, out);
        }
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
    fn on_request_event(&mut self, event: HttpEvent, tid: u32) {
        match event {
            HttpEvent::Head {
                head: Head::Request(head),
                ts,
            } => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.responses
                    .expect_response_to(request_kind(&head.method));
                self.pending.push_back(Pending {
                    head,
                    start_ts: ts,
                    body_size: 0,
                    tid,
                });
                self.open_request = Some(self.pending.len() - 1);
            }
            HttpEvent::End { body_size, .. } => {
                if let Some(p) = self
                    .open_request
                    .take()
                    .and_then(|i| self.pending.get_mut(i))
                {
                    p.body_size = body_size;
                }
            }
            HttpEvent::Head {
                head: Head::Response(_),
                ..
            }
            | HttpEvent::Upgraded => {}
        }
    }

    fn on_response_event(&mut self, event: HttpEvent, out: &mut Finished) {
        match event {
            HttpEvent::Head {
                head: Head::Response(r),
                ..
            } => self.response_status = Some(r.status),
            HttpEvent::End { body_size, ts } => {
                let Some(status) = self.response_status.take() else {
                    return;
                };
                let Some(req) = self.pending.pop_front() else {
                    // A response to a request sonde did not see (picked up mid-stream).
                    out.errors.push("unpaired_response");
                    return;
                };
                self.open_request = self.open_request.and_then(|i| i.checked_sub(1));
                out.http
                    .push(exchange(req, Some(status), body_size, None, ts));
            }
            HttpEvent::Head {
                head: Head::Request(_),
                ..
            }
            | HttpEvent::Upgraded => {}
        }
    }

    /// The requests still waiting end with `failure` as their error.
    fn fail_pending(&mut self, ts: u64, failure: &str, out: &mut Finished) {
        while let Some(req) = self.pending.pop_front() {
            out.http
                .push(exchange(req, None, 0, Some(failure.to_string()), ts));
        }
        self.open_request = None;
    }
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
    }
}
