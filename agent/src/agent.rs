//! Start-up, the capture loop, and shutdown.
use std::io::{BufWriter, Stdout, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use sonde_ebpf::{conn_flags, proto, ConnInfo, ConnKey};
use thiserror::Error;

use crate::capture::{read_drops, Event};
use crate::config::{Config, OtlpSwitch};
use crate::conn::{CallSink, ConnTable, HttpCall, Role};
use crate::db::DbCall;
use crate::export::otlp::encode::ResourceBase;
use crate::export::otlp::settings::{self, OtlpSettings, SettingsError};
use crate::export::otlp::transport::HeaderError;
use crate::export::otlp::{Exporter, SpanQueue};
use crate::gpu::{self, nvml::NvmlBackend};
use crate::k8s;
use crate::metrics::{HistogramCaches, Metrics};
use crate::probes::{self, ProbeError};
use crate::process::ProcessTable;
use crate::routes::Routes;
use crate::sampler::Sampler;
use crate::span::{clock_ns, http_error_type, Clock, Span, SpanIds};
use crate::summary::Summary;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("OTLP configuration: {0}")]
    OtlpSettings(#[from] SettingsError),
    #[error("OTLP configuration: {0}")]
    OtlpHeader(#[from] HeaderError),
    #[error("configuration: {0}")]
    Kubernetes(String),
}

/// Exit codes: 0 after a clean shutdown, 1 on any start-up failure, 2 when privileges miss.
impl AgentError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Probe(ProbeError::MissingPrivileges { .. }) => 2,
            AgentError::OtlpSettings(_) | AgentError::OtlpHeader(_) => 2,
            AgentError::Kubernetes(_) => 2,
            _ => 1,
        }
    }
}

pub fn run(config: Config) -> Result<(), AgentError> {
    // Configuration mistakes are reported before anything else is tried.
    let otlp = otlp_settings(&config)?;
    let kubernetes = config.kubernetes().map_err(AgentError::Kubernetes)?;
    probes::check_privileges()?;
    probes::ensure_tracefs()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let pods = kubernetes.map(|api| {
        log::info!(
            "pod metadata: watching the pods of node {} through {}://{}",
            api.node_name,
            if api.is_https() { "https" } else { "http" },
            api.host_port
        );
        let index = k8s::SharedPodIndex::default();
        k8s::spawn(api, index.clone());
        index
    });
    rt.block_on(run_async(config, otlp, pods))
}

/// The OTLP settings when OTLP export is on.
fn otlp_settings(config: &Config) -> Result<Option<OtlpSettings>, AgentError> {
    let env = |k: &str| std::env::var(k).ok();
    let on = match config.otlp {
        _ if settings::sdk_disabled(&env) => false,
        OtlpSwitch::Off => false,
        OtlpSwitch::On => true,
        OtlpSwitch::Auto => config.otlp_endpoint.is_some() || settings::endpoint_set(&env),
    };
    if !on {
        return Ok(None);
    }
    let interval = Duration::from_millis(config.metric_export_interval);
    let s = settings::from_env(
        &env,
        config.otlp_endpoint.as_deref(),
        config.otlp_protocol,
        interval,
    )?;
    Ok(Some(s))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

async fn run_async(
    config: Config,
    otlp: Option<OtlpSettings>,
    pods: Option<k8s::SharedPodIndex>,
) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::new(config.max_label_sets as usize));
    if config.gpu {
        start_gpu(&config, &metrics, pods.clone());
    }
    let ready = Arc::new(AtomicBool::new(false));
    let addr = config.metrics_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { addr, source })?;
    tokio::spawn(crate::export::prometheus::serve(
        listener,
        config.prometheus.then(|| metrics.clone()),
        ready.clone(),
    ));
    let (exporter, span_queue) = match otlp {
        Some(settings) => {
            log::info!(
                "OTLP: traces to {} ({}), metrics to {} ({}) every {:?}",
                settings.traces.endpoint,
                settings.traces.protocol.as_str(),
                settings.metrics.endpoint,
                settings.metrics.protocol.as_str(),
                settings.metric_interval
            );
            let base = ResourceBase {
                host_name: host_name(),
                extra: settings.resource_attributes.clone(),
                command_line: config.resource_command_line,
            };
            let (e, q) = Exporter::start(settings, base, metrics.clone())?;
            (Some(e), Some(q))
        }
        None => (None, None),
    };

    let mut ebpf = probes::load_and_attach(&probes::KernelSettings {
        ring_bytes: config.ring_buffer_mib << 20,
        protocols: config.protocol_bits(),
        payload_bytes: config.payload_bytes,
    })?;
    let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
        ebpf.take_map(name).ok_or(AgentError::MissingMap(name))
    };
    let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| AgentError::Map {
        name: "EVENTS",
        source,
    })?;
    let drops =
        PerCpuArray::try_from(take(&mut ebpf, "DROPS")?).map_err(|source| AgentError::Map {
            name: "DROPS",
            source,
        })?;
    let conns =
        BpfHashMap::try_from(take(&mut ebpf, "CONNS")?).map_err(|source| AgentError::Map {
            name: "CONNS",
            source,
        })?;
    ready.store(true, Ordering::Relaxed);
    log::info!(
        "probes attached on Linux {}; serving http://{addr}/metrics",
        probes::kernel_release()
    );
    notify_systemd("READY=1");

    let shutdown = Arc::new(AtomicBool::new(false));
    let capture = {
        let (metrics, shutdown, config) = (metrics.clone(), shutdown.clone(), config.clone());
        std::thread::Builder::new()
            .name("sonde-capture".into())
            .spawn(move || {
                let table =
                    ConnTable::new(config.capture_filter(), config.service_name_rules(), pods);
                capture_loop(
                    ring, drops, conns, table, &metrics, &config, span_queue, &shutdown,
                )
            })
            .map_err(AgentError::Runtime)?
    };

    wait_for_signal().await;
    log::info!("shutting down");
    notify_systemd("STOPPING=1");
    ready.store(false, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || capture.join()).await;
    drop(ebpf); // detaches the programs
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    Ok(())
}

/// Starts the GPU collector; without a driver or a GPU, says so once and goes on.
fn start_gpu(config: &Config, metrics: &Metrics, pods: Option<k8s::SharedPodIndex>) {
    let collector = NvmlBackend::load().and_then(|backend| {
        gpu::Collector::new(
            Box::new(backend),
            ProcessTable::new(config.service_name_rules(), pods),
            host_name(),
            config.gpu_dcgm_names,
        )
    });
    match collector {
        Ok(c) => {
            let models: Vec<String> = c.devices().map(|d| d.model.clone()).collect();
            log::info!(
                "GPU statistics every {} s from {} GPU(s) ({}), driver {}",
                config.gpu_interval,
                models.len(),
                models.join(", "),
                c.driver_version()
            );
            gpu::spawn(
                c,
                Duration::from_secs(config.gpu_interval),
                metrics.gpu.clone(),
            );
        }
        Err(e) => log::info!("GPU statistics off: {e}"),
    }
}

/// Tells systemd (a `Type=notify` unit) how sonde is doing, when it runs under systemd.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        // `@name` is a socket in the abstract namespace.
        let addr = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        log::warn!("cannot tell systemd {state} through NOTIFY_SOCKET={path:?}: {e}");
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Receives what the connection table finds: metrics, spans, the summary, and the
/// connections the kernel should stop shipping.
struct Sink<'a> {
    metrics: &'a Metrics,
    spans_out: Option<BufWriter<Stdout>>,
    summary: Option<Summary>,
    clock: Clock,
    /// Kernel connection-table updates to apply after the batch: (key, conn_id, ignore?).
    updates: Vec<(ConnKey, u64, bool)>,
    histograms: HistogramCaches,
    sampler: Sampler,
    otlp: Option<SpanQueue>,
    routes: Routes,
}

impl Sink<'_> {
    /// Whether a sampled span goes anywhere, and so is worth building.
    fn wants_spans(&self) -> bool {
        self.spans_out.is_some() || self.otlp.is_some()
    }

    fn emit(&mut self, span: Span) {
        if let Some(out) = &mut self.spans_out {
            let _ = span.write_json(out);
        }
        if let Some(q) = &self.otlp {
            q.push(span);
        }
    }
}

/// The exemplar of a sampled span: its trace, its id, and when it ended.
fn exemplar(ids: SpanIds, end_ts: u64, clock: Clock) -> Option<(u128, u64, u64)> {
    ids.sampled
        .then(|| (ids.trace_id, ids.span_id, clock.to_unix(end_ts)))
}

impl CallSink for Sink<'_> {
    fn http_call(&mut self, mut call: HttpCall) {
        if call.role == Role::Server && !self.routes.is_empty() {
            call.route = self
                .routes
                .route(&call.process.service_name, &call.request.path);
        }
        let ids = SpanIds::new(call.request.traceparent.as_deref(), &self.sampler);
        let ex = exemplar(ids, call.end_ts, self.clock);
        self.metrics.observe_http(&call, ex, &mut self.histograms);
        self.metrics.spans.inc();
        if let Some(summary) = &mut self.summary {
            let error = http_error_type(&call).is_some();
            summary.observe(
                &call.process.service_name,
                "http",
                call.role.as_str(),
                call.end_ts.saturating_sub(call.start_ts),
                error,
            );
        }
        if ids.sampled && self.wants_spans() {
            self.emit(Span::from_http_call(&call, ids, self.clock));
        }
    }

    fn db_call(&mut self, call: DbCall) {
        let ids = SpanIds::new(None, &self.sampler);
        let ex = exemplar(ids, call.op.end_ts, self.clock);
        self.metrics.observe_db(&call, ex, &mut self.histograms);
        self.metrics.spans.inc();
        if let Some(summary) = &mut self.summary {
            summary.observe(
                &call.process.service_name,
                call.op.system,
                call.role.as_str(),
                call.op.end_ts.saturating_sub(call.op.start_ts),
                call.error_type().is_some(),
            );
        }
        if ids.sampled && self.wants_spans() {
            self.emit(Span::from_db_call(&call, ids, self.clock));
        }
    }

    fn parse_error(&mut self, protocol: &'static str, kind: &'static str) {
        self.metrics.parse_error(protocol, kind);
    }

    fn ignore_connection(&mut self, key: ConnKey, conn_id: u64) {
        self.updates.push((key, conn_id, true));
    }

    fn confirm_connection(&mut self, key: ConnKey, conn_id: u64) {
        self.updates.push((key, conn_id, false));
    }

    fn dropped(&mut self, reason: &'static str, n: u64) {
        self.metrics.dropped(reason, n);
    }

    fn encrypted_connection(&mut self, protocol: &'static str) {
        self.metrics.encrypted_connection(protocol);
    }
}

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_INTERVAL_MS: i32 = 10;

/// A drain this large (or taking half the interval) means sonde is behind: drain again
/// without waiting.
const BACKLOG_EVENTS: u64 = 8192;

/// Sleeps until the kernel wakes the ring buffer's readers or a timeout passes.
///
/// Edge-triggered: an event already in the ring does not end the wait, only a new wakeup
/// does (the kernel side wakes us once per 256 KiB shipped per CPU, and for connections on
/// probation). Between wakeups events gather for up to the timeout and are then drained
/// in one batch, which costs far less per event than draining each as it lands.
struct RingWaiter {
    epoll: std::os::fd::OwnedFd,
}

impl RingWaiter {
    fn new(ring_fd: std::os::fd::RawFd) -> std::io::Result<RingWaiter> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls; the fd returned is owned here and closed on drop.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(epoll) };
        let mut interest = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; `interest` is a valid epoll_event.
        if unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring_fd,
                &mut interest,
            )
        } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingWaiter { epoll })
    }

    fn wait(&self, timeout_ms: i32) {
        let mut ready = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: room for one event, as passed.
        unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut ready, 1, timeout_ms) };
    }
}

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    mut ring: RingBuf<MapData>,
    drops: PerCpuArray<MapData, u64>,
    mut conns: BpfHashMap<MapData, ConnKey, ConnInfo>,
    mut table: ConnTable,
    metrics: &Metrics,
    config: &Config,
    otlp: Option<SpanQueue>,
    shutdown: &AtomicBool,
) {
    let show_summary = !config.quiet && config.print_spans.is_none();
    let mut sink = Sink {
        metrics,
        spans_out: config
            .print_spans
            .map(|_| BufWriter::with_capacity(1 << 16, std::io::stdout())),
        summary: show_summary.then(Summary::default),
        clock: Clock::now(),
        updates: Vec::new(),
        histograms: HistogramCaches::default(),
        sampler: config.sampler(),
        otlp,
        routes: Routes::new(&config.http_routes),
    };
    let mut kernel_drops_seen = vec![0u64; sonde_ebpf::drop_reason::COUNT as usize];
    let mut last_housekeeping = Instant::now();
    let mut last_summary = Instant::now();
    let summary_every = Duration::from_secs(config.summary_interval);
    let idle_ns = config.conn_idle_timeout * 1_000_000_000;
    let waiter = match RingWaiter::new(ring.as_raw_fd()) {
        Ok(w) => w,
        Err(e) => {
            log::error!("cannot wait on the ring buffer: {e}");
            return;
        }
    };
    let mut behind = false;
    while !shutdown.load(Ordering::Relaxed) {
        // Sleeping while a backlog waits would leave sonde idle exactly when it has the
        // most to do: after a long drain, go straight to the next one.
        if !behind {
            waiter.wait(DRAIN_INTERVAL_MS);
        }
        let drain_start = Instant::now();
        let mut received = 0u64;
        while let Some(item) = ring.next() {
            received += 1;
            match Event::decode(&item) {
                Ok(ev) => table.handle(&ev, &mut sink),
                Err(_) => metrics.dropped("decode_error", 1),
            }
        }
        metrics.events_received.inc_by(received);
        behind = received >= BACKLOG_EVENTS
            || drain_start.elapsed() >= Duration::from_millis(DRAIN_INTERVAL_MS as u64 / 2);
        if let Some(out) = &mut sink.spans_out {
            let _ = out.flush();
        }
        for (key, conn_id, ignore) in sink.updates.drain(..) {
            // The kernel entry may be gone already (closed), or the fd may now hold another
            // connection: then there is nothing to do.
            if let Ok(mut info) = conns.get(&key, 0) {
                if info.conn_id != conn_id {
                    continue;
                }
                if ignore {
                    info.proto = proto::NONE;
                } else {
                    info.flags &= !conn_flags::PROBATION;
                }
                let _ = conns.insert(key, info, 0);
            }
        }
        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
            last_housekeeping = Instant::now();
            for (i, (reason, total)) in read_drops(&drops).into_iter().enumerate() {
                if total > kernel_drops_seen[i] {
                    metrics.dropped(reason, total - kernel_drops_seen[i]);
                    kernel_drops_seen[i] = total;
                }
            }
            table.evict_idle(clock_ns(libc::CLOCK_MONOTONIC), idle_ns, &mut sink);
            metrics.connections_tracked.set(table.len() as i64);
        }
        if let Some(summary) = &mut sink.summary {
            if last_summary.elapsed() >= summary_every {
                let secs = last_summary.elapsed().as_secs_f64();
                last_summary = Instant::now();
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "{}", summary.take_table(secs));
                let _ = out.flush();
            }
        }
    }
    if let Some(out) = &mut sink.spans_out {
        let _ = out.flush();
    }
}
