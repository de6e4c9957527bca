//! OTLP export of spans and metrics that never holds capture up.
//!
//! The capture thread hands finished spans to a bounded queue and never waits: when the
//! queue is full the span is dropped and counted (`sonde_export_dropped_total{signal,
//! reason}`). One task batches the queue and sends; another sends every metric each
//! interval. A failed send is retried with backoff when the collector may recover
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
use encode::{CounterPoint, DeltaState, MetricInputs, ResourceBase};
use settings::{OtlpSettings, Signal};
use transport::{SendError, Transport};

/// Tries per batch: the first send and this many retries.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long shutdown waits for queued data to leave.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The capture thread's side of the span queue.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<Span>,
    metrics: Arc<Metrics>,
}

impl SpanExport for SpanQueue {
    /// Queues a span for export without waiting; a full queue drops it (counted).
    fn export(&self, span: Span) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics
                    .export_dropped(Signal::Traces.as_str(), "queue_full", 1)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics
                    .export_dropped(Signal::Traces.as_str(), "shutdown", 1)
            }
        }
    }
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
        let (tx, rx) = mpsc::channel(settings.max_queue);
        let (stop_metrics, stopped) = watch::channel(false);
        let spans = tokio::spawn(span_task(
            rx,
            traces,
            settings.clone(),
            base.clone(),
            metrics.clone(),
        ));
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
            SpanQueue { tx, metrics },
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

async fn span_task(
    mut rx: mpsc::Receiver<Span>,
    transport: Transport,
    settings: OtlpSettings,
    base: ResourceBase,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<Span> = Vec::with_capacity(settings.max_batch);
    let mut open = true;
    while open {
        match rx.recv().await {
            Some(s) => batch.push(s),
            None => break,
        }
        let deadline = tokio::time::Instant::now() + settings.schedule_delay;
        while batch.len() < settings.max_batch {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => batch.push(s),
                    None => { open = false; break; }
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let n = batch.len() as u64;
        let body = bytes::Bytes::from(encode::traces_body(&batch, &base));
        batch.clear();
        // Once the queue is closed (shutdown), no retries: the flush has a time limit.
        let retries = if open { RETRIES } else { 0 };
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
