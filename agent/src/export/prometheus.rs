//! The HTTP endpoint: `/metrics` (OpenMetrics), `/healthz`, `/readyz`.
//!
//! A deliberately small HTTP/1.0-style responder: one request per connection, bounded reads,
//! and a timeout so a slow client cannot hold a task forever.
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::red::{HistogramFamily, OVERFLOW_LABEL};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything in OpenMetrics text: sonde's counters (prometheus-client's registry), then the
/// duration histograms with their `trace_id` exemplars.
pub fn encode(metrics: &Metrics) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &metrics.registry);
    for family in metrics.histograms() {
        encode_histogram(&mut out, family);
    }
    out.push_str("# EOF\n");
    out
}

fn encode_histogram(out: &mut String, family: &HistogramFamily) {
    let name = format!("{}_seconds", family.prom_name);
    let _ = write!(
        out,
        "# HELP {name} {}\n# TYPE {name} histogram\n# UNIT {name} seconds\n",
        family.help
    );
    for series in family.all_series() {
        let mut labels = String::new();
        if series.is_overflow() {
            let _ = write!(labels, "{}=\"true\"", prom_label(OVERFLOW_LABEL));
        } else {
            for (k, v) in family.label_names.iter().zip(&series.labels) {
                if !labels.is_empty() {
                    labels.push(',');
                }
                let _ = write!(labels, "{}=\"{}\"", prom_label(k), escape(v));
            }
        }
        let sep = if labels.is_empty() { "" } else { "," };
        let d = series.snapshot();
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", float(d.sum));
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", d.count);
        let mut cumulative = 0;
        let bounds = family.bounds.iter().map(|b| float(*b));
        for (i, le) in bounds.chain(["+Inf".to_string()]).enumerate() {
            cumulative += d.counts[i];
            let _ = write!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
            if let Some(e) = &d.exemplars[i] {
                let _ = write!(
                    out,
                    " # {{trace_id=\"{:032x}\",span_id=\"{:016x}\"}} {} {}.{:09}",
                    e.trace_id,
                    e.span_id,
                    float(e.value),
                    e.time_unix_nano / 1_000_000_000,
                    e.time_unix_nano % 1_000_000_000
                );
            }
            out.push('\n');
        }
    }
}

/// A float as OpenMetrics writes it: `1.0`, not `1`.
fn float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        v.to_string()
    }
}

/// `service.name` -> `service_name`.
fn prom_label(otel: &str) -> String {
    otel.replace('.', "_")
}

/// OpenMetrics label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_string();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
/// Serves until the runtime ends. `metrics` is None when the Prometheus exporter is off.
pub async fn serve(listener: TcpListener, metrics: Option<Arc<Metrics>>, ready: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                handle(stream, metrics.as_deref(), &ready),
            )
            .await;
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: Option<&Metrics>,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => match metrics {
            Some(m) => ("200 OK", OPENMETRICS, encode(m)),
            None => (
                "404 Not Found",
                "text/plain",
                "the Prometheus exporter is off (prometheus: false)\n".to_string(),
            ),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ready\n".to_string())
        }
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "probes not attached yet\n".to_string(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
