//! NVIDIA GPU statistics. NVML is reached through one narrow trait, `GpuBackend`: the real
//! one (`nvml.rs`, libnvidia-ml.so.1 loaded at run time) and, in tests, a fake. The
//! collector (`collector.rs`) reads every device each interval into a snapshot of points
//! that /metrics and OTLP both export (`names.rs` holds the metric names).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

pub mod collector;
#[cfg(any(test, feature = "fake-gpu"))]
pub mod fake;
pub mod names;
pub mod nvml;

pub use collector::{Collector, GpuPoint, Snapshot};

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum GpuError {
    /// The device does not have this field: it is not asked for again.
    #[error("not supported")]
    NotSupported,
    /// No NVIDIA driver or library on this host.
    #[error("NVML unavailable: {0}")]
    Unavailable(String),
    /// Any other failure of one call (retried next interval).
    #[error("{0}")]
    Failed(String),
}

/// A device's fixed identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// `GPU-...` UUID (`hw.id`).
    pub uuid: String,
    /// Product name (`hw.model`), e.g. `NVIDIA H100 80GB HBM3`.
    pub model: String,
    /// The `/dev/nvidiaN` minor number (dcgm's `device` label).
    pub minor: Option<u32>,
}

/// One reading of a device. Values are in SI units (bytes, watts, joules, hertz,
/// bytes per second, degrees Celsius); utilizations and fan speed in percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    UtilGpu,
    UtilMemory,
    UtilEncoder,
    UtilDecoder,
    MemoryUsed,
    MemoryFree,
    MemoryTotal,
    MemoryReserved,
    Temperature,
    PowerUsage,
    EnergyTotal,
    PowerLimit,
    ClockSm,
    ClockMemory,
    ClockGraphics,
    PcieTx,
    PcieRx,
    PcieLinkGeneration,
    PcieLinkWidth,
    PcieReplays,
    EccCorrectedVolatile,
    EccUncorrectedVolatile,
    EccCorrectedAggregate,
    EccUncorrectedAggregate,
    RemappedRowsCorrectable,
    RemappedRowsUncorrectable,
    RemapPending,
    RemapFailed,
    /// NVML's clock event (throttle) reasons bitmask.
    ClockEventReasons,
    FanSpeed,
}

impl Field {
    pub const ALL: [Field; 30] = [
        Field::UtilGpu,
        Field::UtilMemory,
        Field::UtilEncoder,
        Field::UtilDecoder,
        Field::MemoryUsed,
        Field::MemoryFree,
        Field::MemoryTotal,
        Field::MemoryReserved,
        Field::Temperature,
        Field::PowerUsage,
        Field::EnergyTotal,
        Field::PowerLimit,
        Field::ClockSm,
        Field::ClockMemory,
        Field::ClockGraphics,
        Field::PcieTx,
        Field::PcieRx,
        Field::PcieLinkGeneration,
        Field::PcieLinkWidth,
        Field::PcieReplays,
        Field::EccCorrectedVolatile,
        Field::EccUncorrectedVolatile,
        Field::EccCorrectedAggregate,
        Field::EccUncorrectedAggregate,
        Field::RemappedRowsCorrectable,
        Field::RemappedRowsUncorrectable,
        Field::RemapPending,
        Field::RemapFailed,
        Field::ClockEventReasons,
        Field::FanSpeed,
    ];
}

/// A process holding memory on a device (compute and graphics contexts together).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    /// None where the driver does not say (some vGPU and Windows setups).
    pub memory_bytes: Option<u64>,
}

/// One process utilization sample (NVML keeps a short history per device).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessUtilization {
    pub pid: u32,
    /// Microseconds (NVML's clock): samples newer than the last one seen are new.
    pub timestamp_us: u64,
    pub sm_percent: u32,
    pub memory_percent: u32,
}

/// The NVML calls sonde makes, and nothing else.
pub trait GpuBackend: Send {
    fn driver_version(&mut self) -> Result<String, GpuError>;
    fn device_count(&mut self) -> Result<u32, GpuError>;
    fn identity(&mut self, device: u32) -> Result<DeviceIdentity, GpuError>;
    fn read(&mut self, device: u32, field: Field) -> Result<f64, GpuError>;
    fn processes(&mut self, device: u32) -> Result<Vec<GpuProcess>, GpuError>;
    /// Samples newer than `since_us`.
    fn process_utilization(
        &mut self,
        device: u32,
        since_us: u64,
    ) -> Result<Vec<ProcessUtilization>, GpuError>;
    /// XID errors that arrived since the last call, as (device, XID code); never blocks.
    fn xid_events(&mut self) -> Result<Vec<(u32, u64)>, GpuError>;
}

/// Where the collector publishes: the newest snapshot, read by /metrics and OTLP.
pub type SharedSnapshot = Arc<Mutex<Arc<Snapshot>>>;

/// Runs `collector` every `interval` on its own thread until the process ends.
pub fn spawn(mut collector: Collector, interval: Duration, shared: SharedSnapshot) {
    let spawned = std::thread::Builder::new()
        .name("sonde-gpu".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                let snapshot = collector.tick(last.elapsed());
                last = Instant::now();
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
                std::thread::sleep(interval);
            }
        });
    if let Err(e) = spawned {
        log::warn!("GPU statistics off: cannot start their thread: {e}");
    }
}
