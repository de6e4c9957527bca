//! Start-up, the capture loop, and shutdown.
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use sonde_ebpf::{ConnInfo, ConnKey};
use thiserror::Error;

use crate::capture::event::Event;
use crate::capture::instances;
use crate::capture::kernel_maps::{self, KernelCounter};
use crate::capture::probes::{self, ProbeError};
use crate::capture::ring::{Overload, RingFill, RingWaiter};
use crate::capture::tls::TlsAttacher;
use crate::config::{Config, OtlpSwitch};
use crate::conn::ConnTable;
use crate::export::otlp::encode::ResourceBase;
use crate::export::otlp::settings::{self, OtlpSettings, SettingsError};
use crate::export::otlp::transport::TransportError;
use crate::export::otlp::{Exporter, SpanQueue};
use crate::gpu::{self, nvml::NvmlBackend};
use crate::identity::cluster::Cluster;
use crate::identity::k8s;
use crate::identity::services::SharedServiceIndex;
use crate::identity::table::ProcessTable;
use crate::protocols::http1::routes::Routes;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::sink::{Sink, SpanExport};
use crate::telemetry::span::clock_ns;

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
    OtlpTransport(#[from] TransportError),
    #[error("configuration: {0}")]
    Kubernetes(String),
    #[error(
        "another sonde is running on this host (pid {}, holding {} eBPF programs): a second one would export everything twice; stop it first, or set single_instance: false (--single-instance false)",
        .0.pid, .0.programs
    )]
    AlreadyRunning(instances::OtherSonde),
}

/// Exit codes: 0 after a clean shutdown, 1 on any start-up failure, 2 when privileges miss.
impl AgentError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Probe(ProbeError::MissingPrivileges { .. }) => 2,
            AgentError::OtlpSettings(_) | AgentError::OtlpTransport(_) => 2,
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
    if config.single_instance {
        refuse_a_second_sonde(false)?;
    }
    probes::ensure_tracefs()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let cluster = kubernetes.map(|api| {
        log::info!(
            "pod metadata: watching the pods of node {} and the Services through {}://{}",
            api.node_name,
            if api.is_https() { "https" } else { "http" },
            api.host_port
        );
        Cluster::watch(api)
    });
    rt.block_on(run_async(config, otlp, cluster))
}

/// Fails when another sonde holds eBPF programs (with `older_only`, another that started
/// before this one); one that is stopping (a restart) gets `SECOND_SONDE_WAIT` to exit
/// first.
fn refuse_a_second_sonde(older_only: bool) -> Result<(), AgentError> {
    let find = || instances::find_other_sonde(Path::new("/proc"), std::process::id(), older_only);
    let Some(other) = find() else {
        return Ok(());
    };
    log::info!(
        "another sonde (pid {}) holds eBPF programs: waiting up to {SECOND_SONDE_WAIT:?} for it to exit",
        other.pid
    );
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Some(still) = find() else {
            return Ok(());
        };
        if start.elapsed() >= SECOND_SONDE_WAIT {
            return Err(AgentError::AlreadyRunning(still));
        }
    }
}

/// How long a starting sonde waits for another one to exit before it refuses to run.
const SECOND_SONDE_WAIT: Duration = Duration::from_secs(10);

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
    cluster: Option<Cluster>,
) -> Result<(), AgentError> {
    let (pods, services) = match cluster {
        Some(c) => (Some(c.pods), Some(c.services)),
        None => (None, None),
    };
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

    let probes = probes::load_and_attach(&probes::KernelSettings {
        ring_bytes: config.ring_buffer_mib << 20,
        protocols: config.protocol_bits(),
        payload_bytes: config.payload_bytes,
        tls: config.tls,
        inject_traceparent: config.inject_traceparent,
    })?;
    let (mut ebpf, propagation) = (probes.ebpf, probes.propagation);
    if config.single_instance {
        // Two sondes started at the same moment both passed the first look: now that each
        // holds its programs, the younger gives way.
        refuse_a_second_sonde(true)?;
    }
    let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
        ebpf.take_map(name).ok_or(AgentError::MissingMap(name))
    };
    let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|source| AgentError::Map {
        name: "EVENTS",
        source,
    })?;
    let mut counter = |name| {
        PerCpuArray::try_from(take(&mut ebpf, name)?)
            .map_err(|source| AgentError::Map { name, source })
    };
    let drops = KernelCounter::drops(counter("DROPS")?);
    let injections = KernelCounter::injections(counter("INJECTIONS")?);
    let conns =
        BpfHashMap::try_from(take(&mut ebpf, "CONNS")?).map_err(|source| AgentError::Map {
            name: "CONNS",
            source,
        })?;
    // The libssl files of the processes running now are attached before sonde says it is
    // ready; later ones by the TLS thread.
    let tls = config.tls.then(|| {
        let mut attacher = TlsAttacher::new();
        attach_tls(&mut attacher, &mut ebpf, &metrics);
        attacher
    });
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
                    ring,
                    [drops, injections],
                    conns,
                    table,
                    &metrics,
                    &config,
                    span_queue,
                    services,
                    &shutdown,
                )
            })
            .map_err(AgentError::Runtime)?
    };

    // The programs stay attached as long as `ebpf` lives: with TLS, the thread that
    // attaches new libraries holds it and hands it back at shutdown.
    let (tls_thread, kept) = match tls {
        Some(attacher) => {
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            let thread = std::thread::Builder::new()
                .name("sonde-tls".into())
                .spawn(move || tls_loop(attacher, ebpf, &metrics, &shutdown))
                .map_err(AgentError::Runtime)?;
            (Some(thread), None)
        }
        None => (None, Some(ebpf)),
    };

    wait_for_signal().await;
    log::info!("shutting down");
    notify_systemd("STOPPING=1");
    ready.store(false, Ordering::Relaxed);
    shutdown.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || capture.join()).await;
    let ebpf = match tls_thread {
        Some(thread) => tokio::task::spawn_blocking(move || thread.join().ok())
            .await
            .ok()
            .flatten(),
        None => kept,
    };
    drop(ebpf); // detaches the programs
    drop(propagation);
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    Ok(())
}

/// Attaches the TLS uprobes to libraries not seen yet, logs what it did, updates the gauges.
fn attach_tls(attacher: &mut TlsAttacher, ebpf: &mut aya::Ebpf, metrics: &Metrics) {
    for line in attacher.scan(ebpf) {
        log::info!("{line}");
    }
    let coverage = attacher.coverage();
    metrics.tls_libraries.set(coverage.libraries as i64);
    metrics.tls_processes.set(coverage.processes as i64);
}

/// Every second, the processes started since: their libssl files get the uprobes.
fn tls_loop(
    mut attacher: TlsAttacher,
    mut ebpf: aya::Ebpf,
    metrics: &Metrics,
    shutdown: &AtomicBool,
) -> aya::Ebpf {
    let mut last = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            attach_tls(&mut attacher, &mut ebpf, metrics);
        }
    }
    ebpf
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

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_INTERVAL_MS: i32 = 10;

/// A drain this large (or taking half the interval) means sonde is behind: drain again
/// without waiting.
const BACKLOG_EVENTS: u64 = 8192;

/// How often, in events, the ring's fill is looked at while draining.
const FILL_CHECK_EVENTS: u64 = 256;

/// Overload is logged at most this often.
const OVERLOAD_LOG_EVERY: Duration = Duration::from_secs(60);

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    mut ring: RingBuf<MapData>,
    [mut drops, mut injections]: [KernelCounter; 2],
    mut conns: BpfHashMap<MapData, ConnKey, ConnInfo>,
    mut table: ConnTable,
    metrics: &Metrics,
    config: &Config,
    otlp: Option<SpanQueue>,
    services: Option<SharedServiceIndex>,
    shutdown: &AtomicBool,
) {
    let show_summary = !config.quiet && config.print_spans.is_none();
    let mut sink = Sink::new(
        metrics,
        config.print_spans.is_some(),
        show_summary,
        config.sampler(),
        otlp.map(|q| Box::new(q) as Box<dyn SpanExport>),
        Routes::new(&config.http_routes),
        config.genai_providers.clone(),
    )
    .with_services(services);
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
    let fill = RingFill::new(ring.as_raw_fd(), u64::from(config.ring_buffer_mib) << 20)
        .map_err(|e| log::warn!("cannot read the ring buffer's fill ({e}): spans are never shed"))
        .ok();
    let mut overload = Overload::default();
    let mut overload_logged: Option<Instant> = None;
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
            if received.is_multiple_of(FILL_CHECK_EVENTS) {
                if let Some(on) = fill.as_ref().and_then(|f| overload.update(f.fraction())) {
                    sink.set_overloaded(on);
                    if on && overload_logged.is_none_or(|t| t.elapsed() >= OVERLOAD_LOG_EVERY) {
                        overload_logged = Some(Instant::now());
                        log::warn!(
                            "capture is behind (the ring buffer is over half full): spans are \
                             not exported until it catches up, so that no event is lost and \
                             the metrics stay exact (sonde_export_dropped_total{{reason=\"overload\"}})"
                        );
                    }
                }
            }
            received += 1;
            match Event::decode(&item) {
                Ok(ev) => {
                    let tls = ev.header.conn.flags & sonde_ebpf::conn_flags::TLS != 0;
                    if tls && ev.kind == crate::capture::event::EventKind::Data {
                        metrics.tls_plaintext_events.inc();
                    }
                    table.handle(&ev, &mut sink, &|key| conns.get(&key, 0).ok())
                }
                Err(_) => metrics.dropped("decode_error", 1),
            }
        }
        metrics.events_received.inc_by(received);
        // Server calls that waited long enough for their client end go out even when no
        // event comes to push them.
        table.flush_deferred(clock_ns(libc::CLOCK_MONOTONIC), &mut sink);
        behind = received >= BACKLOG_EVENTS
            || drain_start.elapsed() >= Duration::from_millis(DRAIN_INTERVAL_MS as u64 / 2);
        sink.flush();
        for update in table.take_kernel_updates() {
            kernel_maps::apply(&mut conns, update);
        }
        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
            last_housekeeping = Instant::now();
            for (reason, count) in drops.take_new() {
                metrics.dropped(reason, count);
            }
            for (result, count) in injections.take_new() {
                metrics.injected(result, count);
            }
            let now = clock_ns(libc::CLOCK_MONOTONIC);
            table.evict_idle(now, idle_ns, &mut sink);
            table.count_encrypted(&mut sink);
            metrics.connections_tracked.set(table.len() as i64);
        }
        if show_summary && last_summary.elapsed() >= summary_every {
            let secs = last_summary.elapsed().as_secs_f64();
            last_summary = Instant::now();
            sink.print_summary(secs);
        }
    }
    table.flush_deferred(u64::MAX, &mut sink);
    sink.flush();
}
