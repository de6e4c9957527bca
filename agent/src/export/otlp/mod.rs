//! OTLP export of spans and metrics that never holds capture up.
//!
//! The capture thread gathers finished spans into batches and hands each whole batch to a
//! bounded queue without waiting: when the queue is full the batch is dropped and its spans
//! counted (`sonde_export_dropped_total{signal, reason}`). One task encodes and sends the
//! batches; another sends every metric each interval. A failed send is retried with backoff when the collector may recover
//! (unavailable, overloaded, timed out), a few times, and then dropped and counted; while
//! it waits the queue fills and further spans are dropped, so memory stays bounded. At
//! shutdown what is queued is flushed, within a time limit.
//!
//! The requests are built with opentelemetry-proto's messages (the ones opentelemetry-otlp
//! sends) rather than through the SDK exporters: those carry one Resource per exporter and
//! take metrics only from SDK instruments, while sonde exports the spans and histograms of
//! many services, each under its own Resource.
pub mod encode;
pub mod settings;
pub mod tls;
pub mod transport;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::telemetry::metrics::Metrics;
use crate::telemetry::sink::SpanExport;
use crate::telemetry::span::{clock_ns, Span};
use encode::{CounterPoint, DeltaState, MetricInputs, ResourceBase, SpanBatch};
use settings::{OtlpSettings, Signal};
use transport::{SendError, Transport};

/// Tries per batch: the first send and this many retries.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long shutdown waits for queued data to leave.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The capture thread's side of the span queue. Each span is encoded here as it comes (and
/// dropped on the thread that made it) into a batch, and a whole batch crosses to the
/// export task at once, when it is full or has waited the schedule delay: one wake-up of
/// the task per batch, and the queue holds encoded bytes, about 350 per span.
pub struct SpanQueue {
    tx: mpsc::Sender<SpanBatch>,
    metrics: Arc<Metrics>,
    batch: SpanBatch,
    max_batch: usize,
    delay: Duration,
    /// When the first span of `batch` came.
    first_at: Instant,
}

impl SpanQueue {
    /// Hands the batch to the export task without waiting; a full queue drops it (counted).
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len() as u64;
        let reason = match self.tx.try_send(batch) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => "queue_full",
            Err(mpsc::error::TrySendError::Closed(_)) => "shutdown",
        };
        self.metrics
            .export_dropped(Signal::Traces.as_str(), reason, n);
    }
}

impl SpanExport for SpanQueue {
    fn export(&mut self, span: Span) {
        if self.batch.is_empty() {
            self.first_at = Instant::now();
        }
        self.batch.push(&span);
        drop(span);
        if self.batch.len() >= self.max_batch {
            self.send_batch();
        }
    }

    fn flush_due(&mut self) {
        if !self.batch.is_empty() && self.first_at.elapsed() >= self.delay {
            self.send_batch();
        }
    }

    /// A new batch is started only when the queue can take it: one that would be dropped
    /// whole when full is not encoded at all.
    fn refuse_if_full(&mut self) -> bool {
        let full = self.batch.is_empty() && self.tx.capacity() == 0;
        if full {
            self.metrics
                .export_dropped(Signal::Traces.as_str(), "queue_full", 1);
        }
        full
    }
}

impl Drop for SpanQueue {
    /// At shutdown the last partial batch goes too.
    fn drop(&mut self) {
        self.send_batch();
    }
}

/// Batches the span queue holds: `max_queue` spans in batches of `max_batch`, at least one.
fn queued_batches(max_queue: usize, max_batch: usize) -> usize {
    max_queue.div_ceil(max_batch.max(1)).max(1)
}

/// The running exporter tasks.
pub struct Exporter {
    spans: JoinHandle<()>,
    metrics: JoinHandle<()>,
    stop_metrics: watch::Sender<bool>,
}

impl Exporter {
    /// Starts the span and metric tasks on the current tokio runtime.
    pub fn start(
        settings: OtlpSettings,
        base: ResourceBase,
        metrics: Arc<Metrics>,
    ) -> Result<(Exporter, SpanQueue), transport::TransportError> {
        let traces = Transport::new(&settings.traces)?;
        let metric_transport = Transport::new(&settings.metrics)?;
        let (tx, rx) = mpsc::channel(queued_batches(settings.max_queue, settings.max_batch));
        let queue = SpanQueue {
            tx,
            metrics: metrics.clone(),
            batch: SpanBatch::default(),
            max_batch: settings.max_batch.max(1),
            delay: settings.schedule_delay,
            first_at: Instant::now(),
        };
        let (stop_metrics, stopped) = watch::channel(false);
        let spans = tokio::spawn(span_task(rx, traces, base.clone(), metrics.clone()));
        let metrics_task = tokio::spawn(metric_task(
            metric_transport,
            settings,
            base,
            metrics.clone(),
            stopped,
        ));
        Ok((
            Exporter {
                spans,
                metrics: metrics_task,
                stop_metrics,
            },
            queue,
        ))
    }

    /// Waits (at most `FLUSH_LIMIT`) for the queued spans to be sent, once every
    /// `SpanQueue` is gone, and for a last metric export.
    pub async fn shutdown(self) {
        let _ = self.stop_metrics.send(true);
        let both = async {
            let _ = self.spans.await;
            let _ = self.metrics.await;
        };
        if tokio::time::timeout(FLUSH_LIMIT, both).await.is_err() {
            log::warn!("OTLP: gave up flushing after {FLUSH_LIMIT:?}");
        }
    }
}

/// Encodes and sends each batch the capture thread hands over, in order.
async fn span_task(
    mut rx: mpsc::Receiver<SpanBatch>,
    transport: Transport,
    base: ResourceBase,
    metrics: Arc<Metrics>,
) {
    while let Some(batch) = rx.recv().await {
        let n = batch.len() as u64;
        let body = bytes::Bytes::from(batch.body(&base));
        drop(batch);
        // Once the queue is closed (shutdown), no retries: the flush has a time limit.
        let retries = if rx.is_closed() { 0 } else { RETRIES };
        if let Err(reason) = send_with_retry(Signal::Traces, retries, || {
            transport.send_traces(body.clone())
        })
        .await
        {
            metrics.export_dropped(Signal::Traces.as_str(), reason, n);
        } else {
            metrics.spans_exported.inc_by(n);
        }
    }
}

async fn metric_task(
    transport: Transport,
    settings: OtlpSettings,
    base: ResourceBase,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    let start = unix_now();
    let mut delta = DeltaState::default();
    let mut tick = tokio::time::interval(settings.metric_interval);
    tick.tick().await; // the first tick is immediate: there is nothing to send yet
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped.changed() => true,
        };
        let counters = own_counters(&metrics);
        let gpu = metrics
            .gpu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let inputs = MetricInputs {
            histograms: &metrics.histograms(),
            counters: &counters,
            gpu: &gpu.points,
        };
        let req = encode::metrics_request(
            inputs,
            &base,
            settings.temporality,
            start,
            unix_now(),
            &mut delta,
        );
        let points: u64 = req
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(h)) => {
                    h.data_points.len() as u64
                }
                Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) => {
                    s.data_points.len() as u64
                }
                _ => 0,
            })
            .sum();
        let retries = if last { 0 } else { RETRIES };
        if let Err(reason) = send_with_retry(Signal::Metrics, retries, || {
            transport.send_metrics(req.clone())
        })
        .await
        {
            metrics.export_dropped(Signal::Metrics.as_str(), reason, points);
        }
        if last {
            break;
        }
    }
}

/// Sends, retrying retryable failures with doubling backoff. On failure, the reason to
/// count the drop under.
async fn send_with_retry<F, Fut>(signal: Signal, retries: u32, send: F) -> Result<(), &'static str>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), SendError>>,
{
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=retries {
        match send().await {
            Ok(()) => return Ok(()),
            Err(SendError::Permanent(e)) => {
                log::warn!(
                    "OTLP {}: the collector refused a batch: {e}",
                    signal.as_str()
                );
                return Err("rejected");
            }
            Err(SendError::Retryable(e)) => {
                if attempt == retries {
                    log_unavailable(signal, &e);
                    return Err("unavailable");
                }
                // Jitter keeps many agents from retrying in step.
                let jitter = backoff.mul_f64(fastrand::f64() * 0.2);
                tokio::time::sleep(backoff + jitter).await;
                backoff *= 2;
            }
        }
    }
    Err("unavailable")
}

/// One warning per signal per minute at most: a collector that is down for an hour must
/// not fill the log.
fn log_unavailable(signal: Signal, error: &str) {
    use std::sync::Mutex;
    static LAST: Mutex<[Option<Instant>; 2]> = Mutex::new([None, None]);
    let i = signal as usize;
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last[i].is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        last[i] = Some(Instant::now());
        log::warn!(
            "OTLP {}: collector unavailable, data dropped (counted in sonde_export_dropped_total): {error}",
            signal.as_str()
        );
    }
}

fn unix_now() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// sonde's own counters as OTLP points (the same as on /metrics, in OpenTelemetry names).
fn own_counters(m: &Metrics) -> Vec<CounterPoint> {
    let mut out = vec![
        CounterPoint {
            name: "sonde.events.received",
            description: "Events read from the kernel ring buffer",
            labels: Vec::new(),
            value: m.events_received.get(),
        },
        CounterPoint {
            name: "sonde.spans",
            description: "Spans produced",
            labels: Vec::new(),
            value: m.spans.get(),
        },
        CounterPoint {
            name: "sonde.spans.exported",
            description: "Spans the OTLP collector accepted",
            labels: Vec::new(),
            value: m.spans_exported.get(),
        },
    ];
    for (reason, value) in m.dropped_counts() {
        out.push(CounterPoint {
            name: "sonde.events.dropped",
            description: "Events lost before they could be processed, by reason",
            labels: vec![("reason", reason)],
            value,
        });
    }
    for (signal, reason, value) in m.export_dropped_counts() {
        out.push(CounterPoint {
            name: "sonde.export.dropped",
            description: "Spans and metric points that could not be exported, by signal and reason",
            labels: vec![("signal", signal), ("reason", reason)],
            value,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::process::ProcessInfo;
    use crate::telemetry::span::SpanKind;

    fn span(id: u64) -> Span {
        let process = Arc::new(ProcessInfo::for_tests(1, "nginx", "nginx"));
        Span {
            trace_id: 1,
            span_id: id,
            parent_span_id: None,
            name: "GET".into(),
            kind: SpanKind::Server,
            start_unix_nano: 1,
            end_unix_nano: 2,
            process,
            attributes: Vec::new(),
        }
    }

    fn queue(
        max_queue: usize,
        max_batch: usize,
        delay: Duration,
    ) -> (SpanQueue, mpsc::Receiver<SpanBatch>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(100));
        let (tx, rx) = mpsc::channel(queued_batches(max_queue, max_batch));
        let q = SpanQueue {
            tx,
            metrics: metrics.clone(),
            batch: SpanBatch::default(),
            max_batch,
            delay,
            first_at: Instant::now(),
        };
        (q, rx, metrics)
    }

    /// The span ids of a batch, read back from its encoded body.
    fn ids(batch: &SpanBatch) -> Vec<u64> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let base = ResourceBase {
            host_name: "host".into(),
            extra: Vec::new(),
            command_line: false,
        };
        let req = ExportTraceServiceRequest::decode(&batch.body(&base)[..]).unwrap();
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
            .collect()
    }

    /// The export drops counted, without the zeros.
    fn dropped(m: &Metrics) -> Vec<(String, String, u64)> {
        let mut counts = m.export_dropped_counts();
        counts.retain(|c| c.2 > 0);
        counts
    }

    /// A batch crosses when full, a partial one only once it has waited the delay, and
    /// the rest at shutdown; spans keep their order.
    #[test]
    fn spans_cross_in_whole_batches() {
        let (mut q, mut rx, metrics) = queue(8, 3, Duration::from_millis(50));
        for id in 1..=4 {
            q.export(span(id));
        }
        assert_eq!(ids(&rx.try_recv().expect("a full batch")), [1, 2, 3]);
        q.flush_due();
        assert!(rx.try_recv().is_err(), "span 4 has not waited the delay");
        std::thread::sleep(Duration::from_millis(60));
        q.flush_due();
        assert_eq!(ids(&rx.try_recv().expect("the due batch")), [4]);
        q.export(span(5));
        drop(q);
        assert_eq!(ids(&rx.try_recv().expect("the last batch")), [5]);
        assert!(dropped(&metrics).is_empty());
    }

    /// A queue that holds 4 spans in batches of 2 takes two batches; the third is dropped
    /// and its spans counted one by one.
    #[test]
    fn a_full_queue_drops_whole_batches_and_counts_every_span() {
        let (mut q, mut rx, metrics) = queue(4, 2, Duration::from_secs(5));
        for id in 1..=6 {
            q.export(span(id));
        }
        assert_eq!(
            dropped(&metrics),
            [("traces".to_string(), "queue_full".to_string(), 2)]
        );
        assert_eq!(ids(&rx.try_recv().unwrap()), [1, 2]);
        assert_eq!(ids(&rx.try_recv().unwrap()), [3, 4]);
        assert!(rx.try_recv().is_err());
    }

    /// While the queue has no room, no new batch is started: each span is refused (and
    /// counted) before it is built; a batch already started is filled and sent as usual.
    #[test]
    fn a_full_queue_refuses_spans_before_they_are_built() {
        let (mut q, mut rx, metrics) = queue(2, 2, Duration::from_secs(5));
        assert!(!q.refuse_if_full());
        q.export(span(1));
        q.export(span(2));
        assert!(q.refuse_if_full(), "one batch fills the queue");
        assert!(q.refuse_if_full());
        assert_eq!(
            dropped(&metrics),
            [("traces".to_string(), "queue_full".to_string(), 2)]
        );
        assert_eq!(ids(&rx.try_recv().unwrap()), [1, 2]);
        assert!(!q.refuse_if_full(), "room again");
        q.export(span(3));
        assert!(!q.refuse_if_full(), "the batch being filled takes more");
    }

    #[test]
    fn the_queue_holds_at_least_one_batch() {
        assert_eq!(queued_batches(2048, 512), 4);
        assert_eq!(queued_batches(100, 512), 1);
        assert_eq!(queued_batches(1000, 512), 2);
        assert_eq!(queued_batches(10, 0), 10);
    }
}
