//! Command line and environment: every flag has an environment variable, flags win.
use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SpanFormat {
    /// One JSON object per finished span, one per line.
    Json,
}

/// sonde watches the HTTP/1.x, Redis and PostgreSQL traffic of every process on this host
/// through eBPF and turns it into spans and RED metrics. Run it as root (or with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and
/// CAP_DAC_READ_SEARCH); Linux 5.8 or newer with BTF (/sys/kernel/btf/vmlinux).
#[derive(Clone, Debug, Parser)]
#[command(name = "sonde", version, about, long_about)]
pub struct Config {
    /// Address of the HTTP endpoint serving /metrics (OpenMetrics), /healthz and /readyz.
    #[arg(long, env = "SONDE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// Write every finished span to stdout in this format.
    #[arg(long, env = "SONDE_PRINT_SPANS", value_enum)]
    pub print_spans: Option<SpanFormat>,

    /// Do not print the periodic summary table.
    #[arg(long, env = "SONDE_QUIET")]
    pub quiet: bool,

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
}

fn parse_ring_mib(v: &str) -> Result<u32, String> {
    let n: u32 = v.parse().map_err(|e| format!("{e}"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two between 1 and 1024"));
    }
    Ok(n)
}
