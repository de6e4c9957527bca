//! Configuration: defaults, then a YAML file (`--config`), then environment variables, then
//! flags; each layer wins over the ones before it. Every key is listed in
//! docs/configuration.md.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::export::otlp::settings::Protocol as OtlpProtocol;
use crate::identity::selector::{CaptureFilter, Selector, ServiceNameRule, ServiceNames};
use crate::protocols::http1::routes::RouteRule;
use crate::telemetry::genai::ProviderRule;
use crate::telemetry::sampler::{parse_ratio, SamplerName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanFormat {
    /// One JSON object per finished span, one per line.
    Json,
}

/// A protocol sonde can capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Redis,
    Postgresql,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Http, Protocol::Redis, Protocol::Postgresql];

    fn kernel_proto(self) -> u8 {
        match self {
            Protocol::Http => sonde_ebpf::proto::HTTP1,
            Protocol::Redis => sonde_ebpf::proto::REDIS,
            Protocol::Postgresql => sonde_ebpf::proto::POSTGRES,
        }
    }
}

/// Whether spans and metrics are sent over OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpSwitch {
    /// On when an OTEL_EXPORTER_OTLP_*ENDPOINT variable or `otlp_endpoint` is set.
    Auto,
    On,
    Off,
}

/// sonde watches the HTTP/1.x, Redis and PostgreSQL traffic of every process on this host
/// through eBPF and turns it into spans and RED metrics. Run it as root (or with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH); Linux 5.8 or newer with BTF (/sys/kernel/btf/vmlinux).
///
/// Settings come from defaults, then the --config file, then SONDE_* variables, then flags.
#[derive(Clone, Debug, Parser)]
#[command(name = "sonde", version, about, long_about)]
pub struct Config {
    /// YAML configuration file; its keys are the long flag names with underscores
    /// (metrics_addr, ring_buffer_mib, ...). Environment variables and flags override it.
    #[arg(long, env = "SONDE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (defaults included) as YAML and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address of the HTTP endpoint serving /metrics (OpenMetrics), /healthz and /readyz.
    #[arg(long, env = "SONDE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// Write every finished span to stdout in this format.
    #[arg(long, env = "SONDE_PRINT_SPANS", value_enum)]
    pub print_spans: Option<SpanFormat>,

    /// Do not print the periodic summary table.
    #[arg(long, env = "SONDE_QUIET")]
    pub quiet: bool,

    /// Protocols to capture, comma-separated; connections of the others are left alone in
    /// the kernel.
    #[arg(long, env = "SONDE_PROTOCOLS", value_enum, value_delimiter = ',', default_values_t = Protocol::ALL)]
    pub protocols: Vec<Protocol>,

    /// Capture only connections that one of these selectors matches (comma-separated):
    /// exe=GLOB, port=N (the port the connection's server listens on), container=GLOB.
    /// Empty: every process.
    #[arg(long, env = "SONDE_INCLUDE", value_delimiter = ',')]
    pub include: Vec<Selector>,

    /// Never capture connections these selectors match (same forms as --include); an
    /// exclude wins over an include.
    #[arg(long, env = "SONDE_EXCLUDE", value_delimiter = ',')]
    pub exclude: Vec<Selector>,

    /// Service-name overrides, SELECTOR:NAME (exe=nginx:gateway, port=6379:queue); the first
    /// that matches a process names it, ahead of its own OTEL_SERVICE_NAME. A port rule
    /// names the process that listens on that port.
    #[arg(
        long = "service-name",
        env = "SONDE_SERVICE_NAMES",
        value_delimiter = ','
    )]
    pub service_names: Vec<ServiceNameRule>,

    /// `http.route` patterns, SERVICE=PATTERN (web=/users/{id}, web=/static/*); the first
    /// pattern of the server's service that matches the path is its route. Paths that match
    /// none get no route: routes are never guessed.
    #[arg(long = "http-route", env = "SONDE_HTTP_ROUTES", value_delimiter = ',')]
    pub http_routes: Vec<RouteRule>,

    /// `gen_ai.provider.name` of LLM calls, SELECTOR:PROVIDER (port=8000:vllm,
    /// exe=ollama:ollama); the first that matches applies when neither a known provider
    /// host nor a provider's response header names one. Else the API's shape decides
    /// (openai, anthropic, ollama).
    #[arg(
        long = "genai-provider",
        env = "SONDE_GENAI_PROVIDERS",
        value_delimiter = ','
    )]
    pub genai_providers: Vec<ProviderRule>,

    /// Payload bytes copied from each socket read or write (64 to 4096). Less costs less
    /// but cuts longer request heads, which then give no span (counted in
    /// sonde_parse_errors_total{kind="truncated"}); body sizes stay exact.
    #[arg(long, env = "SONDE_PAYLOAD_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub payload_bytes: u32,

    /// Read TLS plaintext through uprobes on OpenSSL's SSL_read/SSL_write (and _ex) in every
    /// libssl the host's processes map: HTTPS gets spans like HTTP. Costs a uprobe hit (a
    /// trap into the kernel) per TLS read or write of every process using OpenSSL.
    #[arg(long, env = "SONDE_TLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls: bool,

    /// Add a W3C `traceparent` header to the plain HTTP/1 requests processes send (kernel
    /// sk_msg program), so that services on other hosts continue sonde's traces. Off by
    /// default: it changes the bytes applications send (docs/traces.md says what and when).
    #[arg(long, env = "SONDE_INJECT_TRACEPARENT", default_value_t = false, action = clap::ArgAction::Set)]
    pub inject_traceparent: bool,

    /// Read NVIDIA GPU statistics through NVML. Where there is no driver or no GPU this
    /// says so in one line and turns itself off.
    #[arg(long, env = "SONDE_GPU", default_value_t = true, action = clap::ArgAction::Set)]
    pub gpu: bool,

    /// Seconds between GPU readings.
    #[arg(long, env = "SONDE_GPU_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub gpu_interval: u64,

    /// Also serve dcgm-exporter's GPU metric names, labels and units on /metrics
    /// (DCGM_FI_DEV_*), so that dcgm dashboards and alerts keep working.
    #[arg(long, env = "SONDE_GPU_DCGM_NAMES", default_value_t = false, action = clap::ArgAction::Set)]
    pub gpu_dcgm_names: bool,

    /// The Kubernetes API, for pod metadata and service names (the pods of this node are
    /// listed and watched): `in-cluster` (the pod's ServiceAccount: HTTPS to
    /// KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT with its token and CA),
    /// https://HOST[:PORT] (the token and CA files below) or http://HOST[:PORT] (a local
    /// proxy, no credentials). Unset: no pod metadata.
    #[arg(long, env = "SONDE_KUBERNETES_API")]
    pub kubernetes_api: Option<String>,

    /// Bearer token for an HTTPS Kubernetes API; read again at every connection, as the
    /// kubelet rotates it.
    #[arg(long, env = "SONDE_KUBERNETES_TOKEN_FILE", default_value = crate::identity::k8s::SERVICE_ACCOUNT_TOKEN)]
    pub kubernetes_token_file: PathBuf,

    /// PEM certificates that an HTTPS Kubernetes API's certificate must chain to.
    #[arg(long, env = "SONDE_KUBERNETES_CA_FILE", default_value = crate::identity::k8s::SERVICE_ACCOUNT_CA)]
    pub kubernetes_ca_file: PathBuf,

    /// This node's name, for the pods watched (the DaemonSet sets it from spec.nodeName).
    #[arg(long, env = "K8S_NODE_NAME")]
    pub node_name: Option<String>,

    /// Seconds between summary tables.
    #[arg(long, env = "SONDE_SUMMARY_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub summary_interval: u64,

    /// Seconds without traffic after which a connection's state is dropped.
    #[arg(long, env = "SONDE_CONN_IDLE_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub conn_idle_timeout: u64,

    /// Size of the kernel-to-sonde ring buffer in MiB (a power of two). A larger ring absorbs
    /// longer bursts before events are dropped (drops are counted in
    /// sonde_events_dropped_total{reason="ringbuf_full"}); it is locked kernel memory.
    #[arg(long, env = "SONDE_RING_BUFFER_MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    pub ring_buffer_mib: u32,

    /// Serve the RED metrics on /metrics (Prometheus); /healthz and /readyz are served either way.
    #[arg(long, env = "SONDE_PROMETHEUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub prometheus: bool,

    /// Send spans and metrics over OTLP: auto (when an endpoint is set), on, off.
    /// OTEL_SDK_DISABLED=true turns it off.
    #[arg(long, env = "SONDE_OTLP", value_enum, default_value_t = OtlpSwitch::Auto)]
    pub otlp: OtlpSwitch,

    /// The OTLP collector: http://host:port (the HTTP paths /v1/traces and /v1/metrics are added).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: grpc or http/protobuf.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value_t = OtlpProtocol::HttpProtobuf)]
    pub otlp_protocol: OtlpProtocol,

    /// Milliseconds between OTLP metric exports.
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub metric_export_interval: u64,

    /// Which traces are recorded: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off, parentbased_traceidratio.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", default_value_t = SamplerName::ParentBasedAlwaysOn)]
    pub traces_sampler: SamplerName,

    /// The ratio of the *traceidratio samplers, between 0 and 1.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0, value_parser = parse_ratio)]
    pub traces_sampler_arg: f64,

    /// Label sets one metric may hold; further ones are recorded in a series labelled
    /// otel_metric_overflow="true" and counted in sonde_metric_label_set_overflow_total.
    #[arg(long, env = "SONDE_MAX_LABEL_SETS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_label_sets: u64,

    /// Add process.command_line to OTLP resources (off: command lines can hold secrets).
    #[arg(long, env = "SONDE_RESOURCE_COMMAND_LINE", default_value_t = false, action = clap::ArgAction::Set)]
    pub resource_command_line: bool,

    /// Refuse to start while another sonde runs on this host (it would export everything
    /// twice); false allows a second one, for instance a test build beside the service.
    #[arg(long, env = "SONDE_SINGLE_INSTANCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub single_instance: bool,
}

/// The keys a configuration file may set. Every one is optional; unknown keys are errors.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub metrics_addr: Option<SocketAddr>,
    pub print_spans: Option<SpanFormat>,
    pub quiet: Option<bool>,
    pub protocols: Option<Vec<Protocol>>,
    pub include: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub service_names: Option<Vec<String>>,
    pub http_routes: Option<Vec<String>>,
    pub genai_providers: Option<Vec<String>>,
    pub payload_bytes: Option<u32>,
    pub tls: Option<bool>,
    pub inject_traceparent: Option<bool>,
    pub gpu: Option<bool>,
    pub gpu_interval: Option<u64>,
    pub gpu_dcgm_names: Option<bool>,
    pub kubernetes_api: Option<String>,
    pub kubernetes_token_file: Option<PathBuf>,
    pub kubernetes_ca_file: Option<PathBuf>,
    pub node_name: Option<String>,
    pub summary_interval: Option<u64>,
    pub conn_idle_timeout: Option<u64>,
    pub ring_buffer_mib: Option<u32>,
    pub prometheus: Option<bool>,
    pub otlp: Option<OtlpSwitch>,
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub metric_export_interval: Option<u64>,
    pub traces_sampler: Option<String>,
    pub traces_sampler_arg: Option<f64>,
    pub max_label_sets: Option<u64>,
    pub resource_command_line: Option<bool>,
    pub single_instance: Option<bool>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Unknown keys, values of the wrong type: the parser names the key and the position.
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration file {path}: key `{key}`: value {value} is invalid: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Parses the command line (exiting with clap's message on a bad flag) and merges in the
    /// configuration file, if one is named.
    pub fn load() -> Result<Config, ConfigError> {
        let matches = Config::command().get_matches();
        let mut config = Config::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let Some(path) = config.config.clone() {
            let file = FileConfig::read(&path)?;
            config.apply_file(&file, &matches, &path)?;
        }
        Ok(config)
    }

    /// Takes each key from the file unless a variable or a flag set it.
    fn apply_file(
        &mut self,
        file: &FileConfig,
        matches: &ArgMatches,
        path: &Path,
    ) -> Result<(), ConfigError> {
        let from_file = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let invalid = |key: &'static str, value: String, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            value,
            reason: reason.to_string(),
        };
        if let Some(v) = file.metrics_addr.filter(|_| from_file("metrics_addr")) {
            self.metrics_addr = v;
        }
        if let Some(v) = file.print_spans.filter(|_| from_file("print_spans")) {
            self.print_spans = Some(v);
        }
        if let Some(v) = file.quiet.filter(|_| from_file("quiet")) {
            self.quiet = v;
        }
        if let Some(v) = file.protocols.as_ref().filter(|_| from_file("protocols")) {
            if v.is_empty() {
                let reason = "name at least one of http, redis, postgresql";
                return Err(invalid("protocols", "[]".into(), reason));
            }
            self.protocols = v.clone();
        }
        /// Parses each string of a list key, naming the key and the bad entry.
        fn list<T: std::str::FromStr<Err = String>>(
            values: &[String],
            key: &'static str,
            invalid: &dyn Fn(&'static str, String, &str) -> ConfigError,
        ) -> Result<Vec<T>, ConfigError> {
            values
                .iter()
                .map(|v| {
                    v.parse()
                        .map_err(|reason: String| invalid(key, format!("`{v}`"), &reason))
                })
                .collect()
        }
        if let Some(v) = file.include.as_ref().filter(|_| from_file("include")) {
            self.include = list(v, "include", &invalid)?;
        }
        if let Some(v) = file.exclude.as_ref().filter(|_| from_file("exclude")) {
            self.exclude = list(v, "exclude", &invalid)?;
        }
        if let Some(v) = file
            .service_names
            .as_ref()
            .filter(|_| from_file("service_names"))
        {
            self.service_names = list(v, "service_names", &invalid)?;
        }
        if let Some(v) = file
            .http_routes
            .as_ref()
            .filter(|_| from_file("http_routes"))
        {
            self.http_routes = list(v, "http_routes", &invalid)?;
        }
        if let Some(v) = file
            .genai_providers
            .as_ref()
            .filter(|_| from_file("genai_providers"))
        {
            self.genai_providers = list(v, "genai_providers", &invalid)?;
        }
        if let Some(v) = file.payload_bytes.filter(|_| from_file("payload_bytes")) {
            if !(64..=4096).contains(&v) {
                let reason = "must be between 64 and 4096";
                return Err(invalid("payload_bytes", v.to_string(), reason));
            }
            self.payload_bytes = v;
        }
        if let Some(v) = file.tls.filter(|_| from_file("tls")) {
            self.tls = v;
        }
        if let Some(v) = file
            .inject_traceparent
            .filter(|_| from_file("inject_traceparent"))
        {
            self.inject_traceparent = v;
        }
        if let Some(v) = file.gpu.filter(|_| from_file("gpu")) {
            self.gpu = v;
        }
        if let Some(v) = file.gpu_interval.filter(|_| from_file("gpu_interval")) {
            if !(1..=3600).contains(&v) {
                let reason = "must be between 1 and 3600 seconds";
                return Err(invalid("gpu_interval", v.to_string(), reason));
            }
            self.gpu_interval = v;
        }
        if let Some(v) = file.gpu_dcgm_names.filter(|_| from_file("gpu_dcgm_names")) {
            self.gpu_dcgm_names = v;
        }
        if let Some(v) = file
            .kubernetes_api
            .as_ref()
            .filter(|_| from_file("kubernetes_api"))
        {
            self.kubernetes_api = Some(v.clone());
        }
        if let Some(v) = file
            .kubernetes_token_file
            .as_ref()
            .filter(|_| from_file("kubernetes_token_file"))
        {
            self.kubernetes_token_file = v.clone();
        }
        if let Some(v) = file
            .kubernetes_ca_file
            .as_ref()
            .filter(|_| from_file("kubernetes_ca_file"))
        {
            self.kubernetes_ca_file = v.clone();
        }
        if let Some(v) = file.node_name.as_ref().filter(|_| from_file("node_name")) {
            self.node_name = Some(v.clone());
        }
        if let Some(v) = file
            .summary_interval
            .filter(|_| from_file("summary_interval"))
        {
            if v == 0 {
                return Err(invalid(
                    "summary_interval",
                    v.to_string(),
                    "must be at least 1 second",
                ));
            }
            self.summary_interval = v;
        }
        if let Some(v) = file
            .conn_idle_timeout
            .filter(|_| from_file("conn_idle_timeout"))
        {
            if v == 0 {
                return Err(invalid(
                    "conn_idle_timeout",
                    v.to_string(),
                    "must be at least 1 second",
                ));
            }
            self.conn_idle_timeout = v;
        }
        if let Some(v) = file
            .ring_buffer_mib
            .filter(|_| from_file("ring_buffer_mib"))
        {
            self.ring_buffer_mib = parse_ring_mib(&v.to_string())
                .map_err(|reason| invalid("ring_buffer_mib", v.to_string(), &reason))?;
        }
        if let Some(v) = file.prometheus.filter(|_| from_file("prometheus")) {
            self.prometheus = v;
        }
        if let Some(v) = file.otlp.filter(|_| from_file("otlp")) {
            self.otlp = v;
        }
        if let Some(v) = file
            .otlp_endpoint
            .as_ref()
            .filter(|_| from_file("otlp_endpoint"))
        {
            self.otlp_endpoint = Some(v.clone());
        }
        if let Some(v) = file
            .otlp_protocol
            .as_ref()
            .filter(|_| from_file("otlp_protocol"))
        {
            self.otlp_protocol = v
                .parse()
                .map_err(|reason: String| invalid("otlp_protocol", v.clone(), &reason))?;
        }
        if let Some(v) = file
            .metric_export_interval
            .filter(|_| from_file("metric_export_interval"))
        {
            if v < 100 {
                let reason = "must be at least 100 milliseconds";
                return Err(invalid("metric_export_interval", v.to_string(), reason));
            }
            self.metric_export_interval = v;
        }
        if let Some(v) = file
            .traces_sampler
            .as_ref()
            .filter(|_| from_file("traces_sampler"))
        {
            self.traces_sampler = v
                .parse()
                .map_err(|reason: String| invalid("traces_sampler", v.clone(), &reason))?;
        }
        if let Some(v) = file
            .traces_sampler_arg
            .filter(|_| from_file("traces_sampler_arg"))
        {
            self.traces_sampler_arg = parse_ratio(&v.to_string())
                .map_err(|reason| invalid("traces_sampler_arg", v.to_string(), &reason))?;
        }
        if let Some(v) = file.max_label_sets.filter(|_| from_file("max_label_sets")) {
            if !(1..=1_000_000).contains(&v) {
                let reason = "must be between 1 and 1000000";
                return Err(invalid("max_label_sets", v.to_string(), reason));
            }
            self.max_label_sets = v;
        }
        if let Some(v) = file
            .resource_command_line
            .filter(|_| from_file("resource_command_line"))
        {
            self.resource_command_line = v;
        }
        if let Some(v) = file
            .single_instance
            .filter(|_| from_file("single_instance"))
        {
            self.single_instance = v;
        }
        Ok(())
    }

    /// The sampler `traces_sampler` and `traces_sampler_arg` name.
    pub fn sampler(&self) -> crate::telemetry::sampler::Sampler {
        crate::telemetry::sampler::Sampler::new(self.traces_sampler, self.traces_sampler_arg)
    }

    /// The Kubernetes API settings when pod metadata is asked for; an error names the key.
    pub fn kubernetes(&self) -> Result<Option<crate::identity::k8s::ApiConfig>, String> {
        let Some(url) = &self.kubernetes_api else {
            return Ok(None);
        };
        let node = self.node_name.as_deref().filter(|n| !n.is_empty()).ok_or(
            "key `node_name` (K8S_NODE_NAME): required with `kubernetes_api`, to watch this node's pods",
        )?;
        let settings = crate::identity::k8s::ApiSettings {
            api: url,
            node_name: node,
            token_file: &self.kubernetes_token_file,
            ca_file: &self.kubernetes_ca_file,
        };
        let env = |k: &str| std::env::var(k).ok();
        crate::identity::k8s::ApiConfig::new(&settings, &env)
            .map(Some)
            .map_err(|e| format!("key `{}`: {e}", e.key()))
    }

    /// Which connections are captured (`include`, `exclude`).
    pub fn capture_filter(&self) -> CaptureFilter {
        CaptureFilter {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }

    pub fn service_name_rules(&self) -> ServiceNames {
        ServiceNames {
            rules: self.service_names.clone(),
        }
    }

    /// The kernel program's `PROTOCOLS` mask.
    pub fn protocol_bits(&self) -> u32 {
        self.protocols
            .iter()
            .fold(0, |bits, p| bits | sonde_ebpf::proto::bit(p.kernel_proto()))
    }

    /// The effective configuration as YAML, every key present.
    pub fn to_yaml(&self) -> String {
        let effective = FileConfig {
            metrics_addr: Some(self.metrics_addr),
            print_spans: self.print_spans,
            quiet: Some(self.quiet),
            protocols: Some(self.protocols.clone()),
            include: Some(strings(&self.include)),
            exclude: Some(strings(&self.exclude)),
            service_names: Some(strings(&self.service_names)),
            http_routes: Some(strings(&self.http_routes)),
            genai_providers: Some(strings(&self.genai_providers)),
            payload_bytes: Some(self.payload_bytes),
            tls: Some(self.tls),
            inject_traceparent: Some(self.inject_traceparent),
            gpu: Some(self.gpu),
            gpu_interval: Some(self.gpu_interval),
            gpu_dcgm_names: Some(self.gpu_dcgm_names),
            kubernetes_api: self.kubernetes_api.clone(),
            kubernetes_token_file: Some(self.kubernetes_token_file.clone()),
            kubernetes_ca_file: Some(self.kubernetes_ca_file.clone()),
            node_name: self.node_name.clone(),
            summary_interval: Some(self.summary_interval),
            conn_idle_timeout: Some(self.conn_idle_timeout),
            ring_buffer_mib: Some(self.ring_buffer_mib),
            prometheus: Some(self.prometheus),
            otlp: Some(self.otlp),
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: Some(self.otlp_protocol.to_string()),
            metric_export_interval: Some(self.metric_export_interval),
            traces_sampler: Some(self.traces_sampler.to_string()),
            traces_sampler_arg: Some(self.traces_sampler_arg),
            max_label_sets: Some(self.max_label_sets),
            resource_command_line: Some(self.resource_command_line),
            single_instance: Some(self.single_instance),
        };
        serde_yaml_ng::to_string(&effective).expect("plain values serialize")
    }
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    fn parse(text: &str) -> Result<FileConfig, String> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }
}

fn strings<T: ToString>(values: &[T]) -> Vec<String> {
    values.iter().map(T::to_string).collect()
}

fn parse_ring_mib(v: &str) -> Result<u32, String> {
    let n: u32 = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two between 1 and 1024"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], yaml: &str) -> Result<Config, ConfigError> {
        let mut argv = vec!["sonde"];
        argv.extend_from_slice(args);
        let matches = Config::command().try_get_matches_from(argv).unwrap();
        let mut config = Config::from_arg_matches(&matches).unwrap();
        let file = FileConfig::parse(yaml).map_err(|message| ConfigError::Parse {
            path: "test.yaml".into(),
            message,
        })?;
        config.apply_file(&file, &matches, Path::new("test.yaml"))?;
        Ok(config)
    }

    #[test]
    fn file_values_replace_defaults_and_flags_replace_file_values() {
        let yaml = "metrics_addr: 0.0.0.0:9999\nquiet: true\nring_buffer_mib: 32\n";
        let c = load(&[], yaml).unwrap();
        assert_eq!(c.metrics_addr, "0.0.0.0:9999".parse().unwrap());
        assert!(c.quiet);
        assert_eq!(c.ring_buffer_mib, 32);
        assert_eq!(c.summary_interval, 10, "untouched keys keep their default");
        let c = load(&["--ring-buffer-mib", "4"], yaml).unwrap();
        assert_eq!(c.ring_buffer_mib, 4);
        assert_eq!(c.metrics_addr, "0.0.0.0:9999".parse().unwrap());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = load(&[], "metrics_adr: 1.2.3.4:5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `metrics_adr`"), "{err}");
        let err = load(&[], "ring_buffer_mib: 3\n").unwrap_err().to_string();
        assert!(
            err.contains("`ring_buffer_mib`")
                && err.contains("value 3")
                && err.contains("power of two"),
            "{err}"
        );
        let err = load(&[], "summary_interval: 0\n").unwrap_err().to_string();
        assert!(
            err.contains("`summary_interval`") && err.contains("at least 1"),
            "{err}"
        );
        let err = load(&[], "metrics_addr: nowhere\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics_addr"), "{err}");
        let err = load(&[], "quiet: maybe\n").unwrap_err().to_string();
        assert!(err.contains("quiet"), "{err}");
    }

    #[test]
    fn protocols_come_from_a_list() {
        let all = load(&[], "").unwrap();
        assert_eq!(all.protocols, Protocol::ALL);
        let c = load(&[], "protocols: [http, postgresql]\n").unwrap();
        assert_eq!(c.protocols, [Protocol::Http, Protocol::Postgresql]);
        assert_eq!(
            c.protocol_bits(),
            (1 << sonde_ebpf::proto::HTTP1) | (1 << sonde_ebpf::proto::POSTGRES)
        );
        let c = load(&["--protocols", "redis"], "protocols: [http]\n").unwrap();
        assert_eq!(c.protocols, [Protocol::Redis]);
        let err = load(&[], "protocols: [http, mysql]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `mysql`"), "{err}");
        let err = load(&[], "protocols: []\n").unwrap_err().to_string();
        assert!(
            err.contains("`protocols`") && err.contains("at least one"),
            "{err}"
        );
    }

    #[test]
    fn selectors_names_and_routes_from_file_and_flags() {
        let yaml = "include: [exe=nginx, port=6379]\nexclude: [container=*]\n\
                    service_names: ['exe=nginx*:gateway', 'port=6379:queue']\n\
                    http_routes: ['gateway=/users/{id}']\npayload_bytes: 512\n\
                    genai_providers: ['port=8000:vllm']\n";
        let c = load(&[], yaml).unwrap();
        assert_eq!(strings(&c.include), ["exe=nginx", "port=6379"]);
        assert_eq!(strings(&c.exclude), ["container=*"]);
        assert_eq!(
            strings(&c.service_names),
            ["exe=nginx*:gateway", "port=6379:queue"]
        );
        assert_eq!(strings(&c.http_routes), ["gateway=/users/{id}"]);
        assert_eq!(strings(&c.genai_providers), ["port=8000:vllm"]);
        assert_eq!(c.payload_bytes, 512);
        let c = load(
            &["--exclude", "port=22,exe=sshd", "--payload-bytes", "64"],
            yaml,
        )
        .unwrap();
        assert_eq!(strings(&c.exclude), ["port=22", "exe=sshd"]);
        assert_eq!(c.payload_bytes, 64);
        assert_eq!(strings(&c.include), ["exe=nginx", "port=6379"]);

        for (yaml, key, value, why) in [
            ("include: [nginx]", "include", "`nginx`", "is not exe=GLOB"),
            (
                "exclude: [port=99999]",
                "exclude",
                "`port=99999`",
                "not a number",
            ),
            (
                "service_names: [exe=nginx]",
                "service_names",
                "`exe=nginx`",
                "SELECTOR:NAME",
            ),
            (
                "http_routes: ['web=users/{id}']",
                "http_routes",
                "`web=users/{id}`",
                "start with `/`",
            ),
            (
                "genai_providers: ['port=x:vllm']",
                "genai_providers",
                "`port=x:vllm`",
                "not a number",
            ),
            (
                "genai_providers: ['port=8000:']",
                "genai_providers",
                "`port=8000:`",
                "names no provider",
            ),
            (
                "payload_bytes: 10",
                "payload_bytes",
                "10",
                "between 64 and 4096",
            ),
        ] {
            let err = load(&[], yaml).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(value) && err.contains(why),
                "{yaml}: {err}"
            );
        }
    }

    #[test]
    fn printed_configuration_reads_back_the_same() {
        let c = load(
            &[
                "--print-spans",
                "json",
                "--summary-interval",
                "7",
                "--include",
                "exe=nginx",
                "--http-route",
                "web=/a/{b}",
            ],
            "",
        )
        .unwrap();
        let again = load(&[], &c.to_yaml()).unwrap();
        assert_eq!(again.to_yaml(), c.to_yaml());
        assert_eq!(again.print_spans, Some(SpanFormat::Json));
        assert_eq!(again.summary_interval, 7);
    }
}
