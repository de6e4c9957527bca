//! Where and how OTLP is sent, from the standard `OTEL_EXPORTER_OTLP_*` variables (the
//! endpoint and protocol may also come from sonde's configuration, see `Config`).
use std::time::Duration;

use thiserror::Error;

use super::tls::{FileSetting, TlsFiles};
use crate::identity::process::percent_decode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(v: &str) -> Result<Protocol, String> {
        Protocol::parse(v)
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Protocol {
    pub fn parse(v: &str) -> Result<Protocol, String> {
        match v.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err("http/json is not supported; use grpc or http/protobuf".into()),
            other => Err(format!(
                "unknown protocol `{other}`; use grpc or http/protobuf"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    fn env(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }
}

/// Where one signal goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Destination {
    pub protocol: Protocol,
    /// gRPC: scheme, host and port; HTTP: the full URL of the signal's path.
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub gzip: bool,
    /// CA and client certificate files, used when the endpoint is https://.
    pub tls: TlsFiles,
}

/// Spans waiting for export by default: twice an SDK's 2048, because one sonde exports the
/// spans of every service on its host. At 125,000 spans/s (wrk against nginx, both ends
/// traced) 2048 spans were 16 ms, shorter than the export task may wait for a CPU on a busy
/// host, and a few thousand spans a second were dropped although the collector kept up;
/// 4096 dropped none there. (8192 dropped none either, but a full queue at redis-benchmark
/// -P 16 then took peak RSS to 51 MiB.) The queue holds encoded spans, about 350 bytes
/// each.
pub const DEFAULT_MAX_QUEUE: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct OtlpSettings {
    pub traces: Destination,
    pub metrics: Destination,
    pub metric_interval: Duration,
    pub temporality: Temporality,
    /// Spans waiting for export; past this, new spans are dropped and counted.
    pub max_queue: usize,
    pub max_batch: usize,
    pub schedule_delay: Duration,
    /// Applied to every resource sonde exports (`OTEL_RESOURCE_ATTRIBUTES`).
    pub resource_attributes: Vec<(String, String)>,
}

#[derive(Debug, Error, PartialEq)]
#[error("{var}={value:?} is invalid: {reason}")]
pub struct SettingsError {
    pub var: String,
    pub value: String,
    pub reason: String,
}

/// Read from `env` (a variable lookup). `endpoint` and `protocol` are sonde's
/// configuration (themselves set from `OTEL_EXPORTER_OTLP_ENDPOINT` / `_PROTOCOL` or the
/// file); the per-signal variables win over them.
pub fn from_env(
    env: &dyn Fn(&str) -> Option<String>,
    endpoint: Option<&str>,
    protocol: Protocol,
    metric_interval: Duration,
) -> Result<OtlpSettings, SettingsError> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let err = |var: &str, value: &str, reason: String| SettingsError {
        var: var.to_string(),
        value: value.to_string(),
        reason,
    };
    let destination = |signal: Signal| -> Result<Destination, SettingsError> {
        let var = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{}_{suffix}", signal.env());
        let protocol = match get(&var("PROTOCOL")) {
            Some(v) => Protocol::parse(&v).map_err(|r| err(&var("PROTOCOL"), &v, r))?,
            None => protocol,
        };
        let endpoint = match (get(&var("ENDPOINT")), endpoint) {
            (Some(v), _) => {
                check_url(&v).map_err(|r| err(&var("ENDPOINT"), &v, r))?;
                v
            }
            (None, Some(base)) => {
                check_url(base).map_err(|r| err("OTEL_EXPORTER_OTLP_ENDPOINT", base, r))?;
                match protocol {
                    Protocol::Grpc => base.to_string(),
                    Protocol::HttpProtobuf => {
                        format!("{}{}", base.trim_end_matches('/'), signal.http_path())
                    }
                }
            }
            (None, None) => match protocol {
                Protocol::Grpc => "http://localhost:4317".to_string(),
                Protocol::HttpProtobuf => format!("http://localhost:4318{}", signal.http_path()),
            },
        };
        let mut headers = Vec::new();
        for name in ["OTEL_EXPORTER_OTLP_HEADERS".to_string(), var("HEADERS")] {
            if let Some(v) = get(&name) {
                for (k, val) in parse_pairs(&v).map_err(|r| err(&name, &v, r))? {
                    headers.retain(|(old, _): &(String, String)| !old.eq_ignore_ascii_case(&k));
                    headers.push((k, val));
                }
            }
        }
        let timeout_var = [var("TIMEOUT"), "OTEL_EXPORTER_OTLP_TIMEOUT".to_string()]
            .into_iter()
            .find(|n| get(n).is_some());
        let timeout = match timeout_var {
            Some(name) => {
                let v = get(&name).unwrap_or_default();
                millis(&v).map_err(|r| err(&name, &v, r))?
            }
            None => Duration::from_secs(10),
        };
        let compression_var = [
            var("COMPRESSION"),
            "OTEL_EXPORTER_OTLP_COMPRESSION".to_string(),
        ]
        .into_iter()
        .find(|n| get(n).is_some());
        let gzip = match compression_var {
            Some(name) => {
                let v = get(&name).unwrap_or_default();
                match v.trim() {
                    "gzip" => true,
                    "none" => false,
                    _ => return Err(err(&name, &v, "use gzip or none".into())),
                }
            }
            None => false,
        };
        // The per-signal form wins over the general one.
        let file = |suffix: &str| {
            [var(suffix), format!("OTEL_EXPORTER_OTLP_{suffix}")]
                .into_iter()
                .find_map(|name| {
                    get(&name).map(|v| FileSetting {
                        var: name,
                        path: v.trim().into(),
                    })
                })
        };
        let tls = TlsFiles {
            ca: file("CERTIFICATE"),
            client_cert: file("CLIENT_CERTIFICATE"),
            client_key: file("CLIENT_KEY"),
        };
        match (&tls.client_cert, &tls.client_key) {
            (Some(f), None) | (None, Some(f)) => {
                let missing = match tls.client_key {
                    None => "CLIENT_KEY",
                    Some(_) => "CLIENT_CERTIFICATE",
                };
                return Err(err(
                    &f.var,
                    &f.path.display().to_string(),
                    format!(
                        "a client certificate needs both; OTEL_EXPORTER_OTLP_{missing} is not set"
                    ),
                ));
            }
            _ => {}
        }
        Ok(Destination {
            protocol,
            endpoint,
            headers,
            timeout,
            gzip,
            tls,
        })
    };
    let number = |name: &str, default: usize| -> Result<usize, SettingsError> {
        match get(name) {
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(err(name, &v, "must be a whole number above 0".into())),
            },
            None => Ok(default),
        }
    };
    let temporality_var = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
    let temporality = match get(temporality_var) {
        None => Temporality::Cumulative,
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "cumulative" => Temporality::Cumulative,
            // `lowmemory` asks for delta on synchronous histograms, which is all sonde has.
            "delta" | "lowmemory" => Temporality::Delta,
            _ => {
                return Err(err(
                    temporality_var,
                    &v,
                    "use cumulative, delta or lowmemory".into(),
                ))
            }
        },
    };
    let schedule_delay = match get("OTEL_BSP_SCHEDULE_DELAY") {
        Some(v) => millis(&v).map_err(|r| err("OTEL_BSP_SCHEDULE_DELAY", &v, r))?,
        None => Duration::from_secs(5),
    };
    let resource_attributes = match get("OTEL_RESOURCE_ATTRIBUTES") {
        Some(v) => parse_pairs(&v).map_err(|r| err("OTEL_RESOURCE_ATTRIBUTES", &v, r))?,
        None => Vec::new(),
    };
    Ok(OtlpSettings {
        traces: destination(Signal::Traces)?,
        metrics: destination(Signal::Metrics)?,
        metric_interval,
        temporality,
        max_queue: number("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE)?,
        max_batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?,
        schedule_delay,
        resource_attributes,
    })
}

/// Whether any OTLP endpoint variable is set (then `otlp: auto` turns export on).
pub fn endpoint_set(env: &dyn Fn(&str) -> Option<String>) -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|v| env(v).is_some_and(|v| !v.trim().is_empty()))
}

/// `OTEL_SDK_DISABLED=true` turns every OpenTelemetry export off.
pub fn sdk_disabled(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn check_url(v: &str) -> Result<(), String> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or("an endpoint is a URL starting with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the URL has no host".into());
    }
    v.parse::<hyper::Uri>().map_err(|e| e.to_string())?;
    Ok(())
}

fn millis(v: &str) -> Result<Duration, String> {
    v.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| "a whole number of milliseconds".to_string())
}

/// `k1=v1,k2=v2` with percent-encoded values (the W3C Baggage format the OpenTelemetry
/// specification uses for headers and resource attributes).
pub fn parse_pairs(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in v.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, val) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not key=value"))?;
        let k = k.trim();
        if k.is_empty() {
            return Err(format!("`{item}` has an empty key"));
        }
        out.push((k.to_string(), percent_decode(val.trim())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<OtlpSettings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let endpoint = map.get("OTEL_EXPORTER_OTLP_ENDPOINT").cloned();
        let env = move |k: &str| map.get(k).cloned();
        from_env(
            &env,
            endpoint.as_deref(),
            Protocol::HttpProtobuf,
            Duration::from_secs(60),
        )
    }

    #[test]
    fn http_endpoints_get_the_signal_path_unless_given_per_signal() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318/")]).unwrap();
        assert_eq!(s.traces.endpoint, "http://col:4318/v1/traces");
        assert_eq!(s.metrics.endpoint, "http://col:4318/v1/metrics");
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:9/custom",
            ),
        ])
        .unwrap();
        assert_eq!(s.traces.endpoint, "http://other:9/custom");
        assert_eq!(s.metrics.endpoint, "http://col:4318/v1/metrics");
        let s = settings(&[]).unwrap();
        assert_eq!(s.traces.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!((s.max_queue, s.max_batch), (4096, 512));
    }

    #[test]
    fn grpc_endpoints_are_used_as_given() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://col:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(s.metrics.protocol, Protocol::Grpc);
        assert_eq!(s.metrics.endpoint, "http://col:4317");
        assert_eq!(s.traces.protocol, Protocol::HttpProtobuf);
    }

    #[test]
    fn headers_timeout_compression_and_batching() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc%3D%3D, x-team=ml"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=infra"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=prod,team=ml%20infra",
            ),
        ])
        .unwrap();
        assert_eq!(
            s.traces.headers,
            [
                ("api-key".to_string(), "abc==".to_string()),
                ("x-team".to_string(), "infra".to_string())
            ]
        );
        assert_eq!(s.metrics.headers[1], ("x-team".into(), "ml".into()));
        assert_eq!(s.traces.timeout, Duration::from_millis(2500));
        assert!(s.traces.gzip && s.metrics.gzip);
        assert_eq!(s.max_queue, 100);
        assert_eq!(s.temporality, Temporality::Delta);
        assert_eq!(s.resource_attributes[1], ("team".into(), "ml infra".into()));
    }

    #[test]
    fn tls_files_per_signal_win_over_the_general_ones() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://col:4318"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics-ca.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/client.pem"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/client-key.pem"),
        ])
        .unwrap();
        assert_eq!(s.traces.endpoint, "https://col:4318/v1/traces");
        let ca = |d: &Destination| d.tls.ca.clone().map(|f| (f.var, f.path));
        assert_eq!(
            ca(&s.traces),
            Some(("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), "/ca.pem".into()))
        );
        assert_eq!(
            ca(&s.metrics),
            Some((
                "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE".into(),
                "/metrics-ca.pem".into()
            ))
        );
        let key = s.metrics.tls.client_key.clone().unwrap();
        assert_eq!(key.path, std::path::PathBuf::from("/client-key.pem"));
        assert!(settings(&[]).unwrap().traces.tls.is_empty());
    }

    #[test]
    fn bad_values_name_the_variable_and_the_reason() {
        let e = settings(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zip")]).unwrap_err();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_COMPRESSION");
        assert!(e.to_string().contains("gzip or none"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://col:4318")]).unwrap_err();
        assert!(e.reason.contains("https://"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")]).unwrap_err();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_CLIENT_KEY");
        assert!(e.reason.contains("CLIENT_CERTIFICATE is not set"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "col:4318")]).unwrap_err();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let e = settings(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).unwrap_err();
        assert!(e.reason.contains("milliseconds"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).unwrap_err();
        assert!(e.reason.contains("key=value"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]).unwrap_err();
        assert!(e.reason.contains("not supported"), "{e}");
        let e = settings(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).unwrap_err();
        assert!(e.reason.contains("above 0"), "{e}");
    }

    #[test]
    fn switches() {
        let none = |_: &str| None;
        assert!(!endpoint_set(&none));
        assert!(!sdk_disabled(&none));
        let set =
            |k: &str| (k == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").then(|| "http://x:1".into());
        assert!(endpoint_set(&set));
        let off = |k: &str| (k == "OTEL_SDK_DISABLED").then(|| "TRUE".to_string());
        assert!(sdk_disabled(&off));
    }
}
