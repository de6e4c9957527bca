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

use crate::gpu::names::{Kind, MetricDef};
use crate::gpu::Snapshot;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::red::{HistogramFamily, OVERFLOW_LABEL};

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
    let gpu = metrics
        .gpu
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    encode_gpu(&mut out, &gpu);
    out.push_str("# EOF\n");
    out
}

/// The GPU snapshot: one family per metric, in the order the collector wrote them, then
/// the dcgm-exporter series (as gauges: their counters carry no `_total`).
fn encode_gpu(out: &mut String, snap: &Snapshot) {
    let mut defs: Vec<&'static MetricDef> = Vec::new();
    for p in &snap.points {
        if !defs.iter().any(|d| std::ptr::eq(*d, p.metric)) {
            defs.push(p.metric);
        }
    }
    for def in defs {
        let (family, kind) = match def.kind {
            Kind::Counter => (def.prom.trim_end_matches("_total"), "counter"),
            Kind::Gauge => (def.prom, "gauge"),
        };
        let _ = writeln!(out, "# HELP {family} {}", def.help);
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for p in snap.points.iter().filter(|p| std::ptr::eq(p.metric, def)) {
            let labels = label_text(p.labels.iter().map(|(k, v)| (prom_label(k), v.as_str())));
            let _ = writeln!(out, "{}{labels} {}", def.prom, float(p.value));
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for p in &snap.dcgm {
        if !names.contains(&p.name) {
            names.push(p.name);
        }
    }
    for name in names {
        let _ = writeln!(out, "# TYPE {name} gauge");
        for p in snap.dcgm.iter().filter(|p| p.name == name) {
            let labels = label_text(p.labels.iter().map(|(k, v)| (k.to_string(), v.as_str())));
            let _ = writeln!(out, "{name}{labels} {}", float(p.value));
        }
    }
}

/// `{k="v",...}`, or nothing for no labels.
fn label_text<'a>(labels: impl Iterator<Item = (String, &'a str)>) -> String {
    let mut text = String::new();
    for (k, v) in labels {
        text.push(if text.is_empty() { '{' } else { ',' });
        let _ = write!(text, "{k}=\"{}\"", escape(v));
    }
    if !text.is_empty() {
        text.push('}');
    }
    text
}

fn encode_histogram(out: &mut String, family: &HistogramFamily) {
    let name = family.prom_full_name();
    let _ = write!(
        out,
        "# HELP {name} {}\n# TYPE {name} histogram\n",
        family.help
    );
    if let Some(unit) = family.prom_unit() {
        let _ = writeln!(out, "# UNIT {name} {unit}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::{FakeGpu, FakeNvml};
    use crate::gpu::Collector;
    use crate::identity::table::ProcessTable;

    const UUID: &str = "GPU-5c3b3fa4-2b6e-7c4d-a1e0-96e2f3a1b7c9";

    fn gpu_metrics(dcgm: bool) -> String {
        let mut gpu = FakeGpu::h100(UUID);
        gpu.processes = vec![(std::process::id(), Some(1 << 30))];
        let fake = FakeNvml::new(vec![gpu]);
        fake.xids.lock().unwrap().push((0, 79));
        let mut c =
            Collector::new(Box::new(fake), ProcessTable::default(), "h".into(), dcgm).unwrap();
        let metrics = Metrics::default();
        *metrics.gpu.lock().unwrap() = Arc::new(c.tick(Duration::from_secs(10)));
        encode(&metrics)
    }

    #[test]
    fn token_histograms_have_no_unit_suffix_and_seconds_do() {
        let metrics = Metrics::default();
        let labels = |kind: &str| {
            let mut v = vec![String::new(); 8];
            v[0] = "gw".into();
            v[5] = kind.into();
            v
        };
        let tokens = &metrics.genai.client_tokens;
        tokens.series(labels("output")).observe(42.0, None);
        let duration = &metrics.genai.client_duration;
        duration.series(labels("")).observe(0.3, None);
        let text = encode(&metrics);
        assert!(text.contains("# TYPE gen_ai_client_token_usage histogram\n"));
        assert!(!text.contains("# UNIT gen_ai_client_token_usage"));
        assert!(text.contains("gen_ai_client_token_usage_sum{service_name=\"gw\""));
        assert!(text.contains("gen_ai_token_type=\"output\""));
        assert!(
            text.contains("le=\"64.0\"} 1"),
            "42 tokens in the 64 bucket:\n{text}"
        );
        assert!(text.contains("# UNIT gen_ai_client_operation_duration_seconds seconds\n"));
        assert!(text.contains("sonde_gen_ai_missing_fields_total{field=\"request_model\"} 0"));
    }

    #[test]
    fn gpu_series_are_openmetrics_families() {
        let text = gpu_metrics(false);
        let id = format!(
            "hw_id=\"{UUID}\",hw_type=\"gpu\",hw_model=\"NVIDIA H100 80GB HBM3\",hw_vendor=\"NVIDIA\",hw_driver_version=\"550.54.15\""
        );
        for line in [
            "# TYPE hw_gpu_memory_usage_bytes gauge".to_string(),
            format!("hw_gpu_memory_usage_bytes{{{id}}} 42949672960.0"),
            format!("hw_gpu_utilization_ratio{{{id},hw_gpu_task=\"general\"}} 0.87"),
            "# TYPE hw_energy_joules counter".to_string(),
            format!("hw_energy_joules_total{{{id}}} 123456.789"),
            format!("hw_errors_total{{{id},error_type=\"xid\"}} 1.0"),
            format!("sonde_gpu_xid_errors_total{{{id},sonde_gpu_xid=\"79\"}} 1.0"),
            format!("hw_temperature_celsius{{{id}}} 61.0"),
            "# TYPE sonde_gpu_read_errors counter".to_string(),
            "sonde_gpu_read_errors_total 0.0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        let process = text
            .lines()
            .find(|l| l.starts_with("sonde_gpu_process_memory_usage_bytes{"))
            .unwrap();
        assert!(process.contains(&format!("process_pid=\"{}\"", std::process::id())));
        assert!(process.ends_with(" 1073741824.0"), "{process}");
        assert!(!text.contains("DCGM_"));
        // Every sample belongs to a family declared before it, and the text ends once.
        let mut declared = Vec::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(
                    declared.iter().any(|d| name == d
                        || name.strip_prefix(d.as_str()).is_some_and(|s| {
                            ["_total", "_bucket", "_sum", "_count", "_created"].contains(&s)
                        })),
                    "{l}"
                );
            }
        }
        assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1);
    }

    #[test]
    fn dcgm_names_when_asked_for() {
        let text = gpu_metrics(true);
        let labels = format!(
            "gpu=\"0\",UUID=\"{UUID}\",device=\"nvidia3\",modelName=\"NVIDIA H100 80GB HBM3\",Hostname=\"h\""
        );
        for line in [
            "# TYPE DCGM_FI_DEV_FB_USED gauge".to_string(),
            format!("DCGM_FI_DEV_FB_USED{{{labels}}} 40960.0"),
            format!("DCGM_FI_DEV_FB_FREE{{{labels}}} 40599.0"),
            format!("DCGM_FI_DEV_GPU_UTIL{{{labels}}} 87.0"),
            format!("DCGM_FI_DEV_GPU_TEMP{{{labels}}} 61.0"),
            format!("DCGM_FI_DEV_POWER_USAGE{{{labels}}} 412.5"),
            format!("DCGM_FI_DEV_SM_CLOCK{{{labels}}} 1980.0"),
            format!("DCGM_FI_DEV_MEM_CLOCK{{{labels}}} 2619.0"),
            format!("DCGM_FI_DEV_XID_ERRORS{{{labels}}} 79.0"),
            format!("DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{labels}}} 0.0"),
            format!("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{labels}}} 123456789.0"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
