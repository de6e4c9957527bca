//! HTTP/1 pairing: one connection's request and response streams, responses paired with
//! requests strictly in order (FIFO), which is what pipelining requires.
use std::collections::VecDeque;

use super::framing::{request_kind, Head, HttpEvent, HttpStream, RequestHead, StreamKind};
use crate::protocols::call::{HttpExchange, Role};
use crate::protocols::llm::{self, LlmCall, RequestReader, ResponseReader};
use crate::protocols::session::{Chunk, Finished, Readable, Session};

/// Requests a connection may have waiting for responses; the oldest is dropped beyond.
const MAX_PENDING: usize = 1024;

struct Pending {
    head: RequestHead,
    start_ts: u64,
    body_size: u64,
    tid: u32,
    /// An LLM API call: its bodies are read as they arrive.
    llm: Option<Box<LlmReading>>,
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
    /// Index in `pending` of the request whose body is still arriving.
    open_request: Option<usize>,
    response_status: Option<u16>,
    /// Framing events of the current feed (kept to reuse its allocation).
    events: Vec<HttpEvent>,
}

impl Default for HttpSession {
    fn default() -> Self {
        let mut requests = HttpStream::new(StreamKind::Requests);
        requests.tap_requests(is_llm_call);
        HttpSession {
            requests,
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
        } else {
            self.fail_answering(ts, "connection_closed", out);
        }
    }

    fn failed(&mut self, ts: u64, role: Role, errno: &'static str, out: &mut Finished) {
        if role == Role::Client {
            self.fail_pending(ts, errno, out);
        } else {
            self.fail_answering(ts, errno, out);
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
                self.pending.push_back(Pending {
                    head,
                    start_ts: ts,
                    body_size: 0,
                    tid,
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
                let Some(req) = self.pending.pop_front() else {
                    // A response to a request sonde did not see (picked up mid-stream).
                    out.errors.push("unpaired_response");
                    return;
                };
                self.open_request = self.open_request.and_then(|i| i.checked_sub(1));
                out.http
                    .push(exchange(req, Some(status), body_size, None, ts));
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
        while let Some(req) = self.pending.pop_front() {
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
        if let Some(req) = self.pending.pop_front() {
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
    }
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
            .map(|c| (c.request.path.clone(), c.status, c.response_body_size))
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
