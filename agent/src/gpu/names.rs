//! GPU metric names: the OpenTelemetry hardware conventions (`hw.*`) where they have one,
//! `sonde.gpu.*` otherwise, and dcgm-exporter's names for `gpu_dcgm_names`.

/// How a metric is exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// Monotonic sum (its Prometheus name ends in `_total`).
    Counter,
}

#[derive(Debug, PartialEq, Eq)]
pub struct MetricDef {
    /// OpenTelemetry name (OTLP).
    pub otel: &'static str,
    /// Prometheus sample name, unit suffix and `_total` included.
    pub prom: &'static str,
    /// UCUM unit (OTLP).
    pub unit: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

macro_rules! metric {
    ($id:ident, $otel:literal, $prom:literal, $unit:literal, $kind:ident, $help:literal) => {
        pub static $id: MetricDef = MetricDef {
            otel: $otel,
            prom: $prom,
            unit: $unit,
            help: $help,
            kind: Kind::$kind,
        };
    };
}

metric!(
    UTILIZATION,
    "hw.gpu.utilization",
    "hw_gpu_utilization_ratio",
    "1",
    Gauge,
    "Fraction of time the GPU was busy, by hw.gpu.task (general, encoder, decoder)"
);
metric!(
    MEMORY_UTILIZATION,
    "hw.gpu.memory.utilization",
    "hw_gpu_memory_utilization_ratio",
    "1",
    Gauge,
    "Fraction of time device memory was being read or written"
);
metric!(
    MEMORY_USAGE,
    "hw.gpu.memory.usage",
    "hw_gpu_memory_usage_bytes",
    "By",
    Gauge,
    "Device memory in use"
);
metric!(
    MEMORY_LIMIT,
    "hw.gpu.memory.limit",
    "hw_gpu_memory_limit_bytes",
    "By",
    Gauge,
    "Device memory in all"
);
metric!(
    MEMORY_FREE,
    "sonde.gpu.memory.free",
    "sonde_gpu_memory_free_bytes",
    "By",
    Gauge,
    "Device memory free"
);
metric!(
    MEMORY_RESERVED,
    "sonde.gpu.memory.reserved",
    "sonde_gpu_memory_reserved_bytes",
    "By",
    Gauge,
    "Device memory reserved by the driver and firmware"
);
metric!(
    TEMPERATURE,
    "hw.temperature",
    "hw_temperature_celsius",
    "Cel",
    Gauge,
    "GPU core temperature"
);
metric!(
    POWER,
    "hw.power",
    "hw_power_watts",
    "W",
    Gauge,
    "Power drawn by the GPU"
);
metric!(
    ENERGY,
    "hw.energy",
    "hw_energy_joules_total",
    "J",
    Counter,
    "Energy used by the GPU since the driver loaded"
);
metric!(
    POWER_LIMIT,
    "sonde.gpu.power.limit",
    "sonde_gpu_power_limit_watts",
    "W",
    Gauge,
    "Enforced power limit"
);
metric!(
    CLOCK,
    "sonde.gpu.clock.frequency",
    "sonde_gpu_clock_frequency_hertz",
    "Hz",
    Gauge,
    "Current clock, by sonde.gpu.clock (sm, memory, graphics)"
);
metric!(
    IO,
    "hw.gpu.io",
    "hw_gpu_io_bytes_total",
    "By",
    Counter,
    "PCIe bytes moved, by network.io.direction; integrated from NVML's throughput samples"
);
metric!(
    PCIE_THROUGHPUT,
    "sonde.gpu.pcie.throughput",
    "sonde_gpu_pcie_throughput_bytes_per_second",
    "By/s",
    Gauge,
    "PCIe throughput at the last sample, by network.io.direction"
);
metric!(
    PCIE_GENERATION,
    "sonde.gpu.pcie.link.generation",
    "sonde_gpu_pcie_link_generation",
    "1",
    Gauge,
    "Current PCIe link generation"
);
metric!(
    PCIE_WIDTH,
    "sonde.gpu.pcie.link.width",
    "sonde_gpu_pcie_link_width",
    "{lane}",
    Gauge,
    "Current PCIe link width"
);
metric!(
    PCIE_REPLAYS,
    "sonde.gpu.pcie.replays",
    "sonde_gpu_pcie_replays_total",
    "{replay}",
    Counter,
    "PCIe replays"
);
metric!(ECC_ERRORS, "sonde.gpu.ecc.errors", "sonde_gpu_ecc_errors", "{error}", Gauge,
    "ECC errors, by sonde.gpu.ecc.type (corrected, uncorrected) and sonde.gpu.ecc.counter (volatile: since the driver loaded; aggregate: lifetime)");
metric!(
    ERRORS,
    "hw.errors",
    "hw_errors_total",
    "{error}",
    Counter,
    "GPU errors, by error.type: lifetime ECC (ecc_corrected, ecc_uncorrected) and xid"
);
metric!(
    XID_ERRORS,
    "sonde.gpu.xid.errors",
    "sonde_gpu_xid_errors_total",
    "{error}",
    Counter,
    "XID errors seen since sonde started, by sonde.gpu.xid code"
);
metric!(
    REMAPPED_ROWS,
    "sonde.gpu.remapped_rows",
    "sonde_gpu_remapped_rows",
    "{row}",
    Gauge,
    "Remapped memory rows, by sonde.gpu.remap.cause (correctable, uncorrectable)"
);
metric!(
    REMAP_PENDING,
    "sonde.gpu.row_remap.pending",
    "sonde_gpu_row_remap_pending",
    "1",
    Gauge,
    "1 when a row remap waits for a GPU reset"
);
metric!(
    REMAP_FAILED,
    "sonde.gpu.row_remap.failed",
    "sonde_gpu_row_remap_failed",
    "1",
    Gauge,
    "1 when a row remap failed"
);
metric!(
    CLOCK_EVENT,
    "sonde.gpu.clock_event.active",
    "sonde_gpu_clock_event_active",
    "1",
    Gauge,
    "1 while this reason holds clocks down (throttling), by sonde.gpu.clock_event.reason"
);
metric!(
    FAN_SPEED,
    "sonde.gpu.fan.speed",
    "sonde_gpu_fan_speed_ratio",
    "1",
    Gauge,
    "Fan speed as a fraction of its maximum"
);
metric!(
    PROCESS_MEMORY,
    "sonde.gpu.process.memory.usage",
    "sonde_gpu_process_memory_usage_bytes",
    "By",
    Gauge,
    "Device memory a process holds, by service.name, process.pid and hw.id"
);
metric!(
    PROCESS_UTILIZATION,
    "sonde.gpu.process.utilization",
    "sonde_gpu_process_utilization_ratio",
    "1",
    Gauge,
    "Fraction of SM time a process used over the last interval"
);
metric!(
    PROCESS_MEMORY_UTILIZATION,
    "sonde.gpu.process.memory.utilization",
    "sonde_gpu_process_memory_utilization_ratio",
    "1",
    Gauge,
    "Fraction of memory-controller time a process used over the last interval"
);
metric!(
    READ_ERRORS,
    "sonde.gpu.read.errors",
    "sonde_gpu_read_errors_total",
    "{error}",
    Counter,
    "NVML calls that failed (other than fields a GPU does not support)"
);

/// NVML clock event (throttle) reason bits and their names.
pub const CLOCK_EVENT_REASONS: [(u64, &str); 9] = [
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

/// dcgm-exporter's names and units (Prometheus only). All are written as gauges, as
/// dcgm-exporter's text format lets counters be named without `_total`.
pub mod dcgm {
    pub const GPU_UTIL: &str = "DCGM_FI_DEV_GPU_UTIL";
    pub const FB_USED: &str = "DCGM_FI_DEV_FB_USED";
    pub const FB_FREE: &str = "DCGM_FI_DEV_FB_FREE";
    pub const GPU_TEMP: &str = "DCGM_FI_DEV_GPU_TEMP";
    pub const POWER_USAGE: &str = "DCGM_FI_DEV_POWER_USAGE";
    pub const SM_CLOCK: &str = "DCGM_FI_DEV_SM_CLOCK";
    pub const MEM_CLOCK: &str = "DCGM_FI_DEV_MEM_CLOCK";
    pub const XID_ERRORS: &str = "DCGM_FI_DEV_XID_ERRORS";
    pub const PCIE_REPLAY_COUNTER: &str = "DCGM_FI_DEV_PCIE_REPLAY_COUNTER";
    pub const TOTAL_ENERGY: &str = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION";
}
