//! The real backend: NVML through nvml-wrapper, which loads `libnvidia-ml.so.1` at run
//! time (sonde has no link-time dependency on the driver).
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, PcieUtilCounter, TemperatureSensor,
};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::structs::device::FieldId;
use nvml_wrapper::sys_exports::field_id::{
    NVML_FI_DEV_REMAPPED_COR, NVML_FI_DEV_REMAPPED_FAILURE, NVML_FI_DEV_REMAPPED_PENDING,
    NVML_FI_DEV_REMAPPED_UNC,
};
use nvml_wrapper::{Device, EventSet, Nvml};

use super::{DeviceIdentity, Field, GpuBackend, GpuError, GpuProcess, ProcessUtilization};

pub struct NvmlBackend {
    /// Declared before `nvml`: the event set must be freed before NVML shuts down.
    events: Option<EventSet<'static>>,
    nvml: &'static Nvml,
}

impl From<NvmlError> for GpuError {
    fn from(e: NvmlError) -> GpuError {
        match e {
            NvmlError::NotSupported | NvmlError::FunctionNotFound => GpuError::NotSupported,
            NvmlError::LibloadingError(_)
            | NvmlError::LibraryNotFound
            | NvmlError::DriverNotLoaded => GpuError::Unavailable(e.to_string()),
            other => GpuError::Failed(other.to_string()),
        }
    }
}

impl NvmlBackend {
    /// Loads NVML; fails (GPU statistics off) where there is no driver or library.
    pub fn load() -> Result<NvmlBackend, GpuError> {
        let nvml = Nvml::init().map_err(|e| match GpuError::from(e) {
            GpuError::Failed(m) => GpuError::Unavailable(m),
            other => other,
        })?;
        // The collector lives as long as the process; NVML's handles borrow it.
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let events = register_xid_events(nvml);
        Ok(NvmlBackend { events, nvml })
    }

    fn device(&self, index: u32) -> Result<Device<'static>, GpuError> {
        Ok(self.nvml.device_by_index(index)?)
    }
}

/// An event set with the critical XID errors of every device that supports them.
fn register_xid_events(nvml: &'static Nvml) -> Option<EventSet<'static>> {
    let mut set = nvml.create_event_set().ok()?;
    let count = nvml.device_count().ok()?;
    let mut any = false;
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let supported = device
            .supported_event_types()
            .is_ok_and(|t| t.contains(EventTypes::CRITICAL_XID_ERROR));
        if !supported {
            log::info!("GPU {index}: XID events are not supported");
            continue;
        }
        // A failed registration consumes the set: the devices before this one lose theirs.
        match device.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
            Ok(s) => {
                set = s;
                any = true;
            }
            Err(e) => {
                log::warn!("GPU {index}: XID events unavailable: {}", e.error);
                return None;
            }
        }
    }
    any.then_some(set)
}

/// One NVML field value (the wrapper has no call for remapped rows).
fn field_value(d: &Device<'static>, id: u32) -> Result<f64, GpuError> {
    let sample = d
        .field_values_for(&[FieldId(id)])?
        .pop()
        .ok_or(GpuError::NotSupported)??;
    Ok(match sample.value? {
        SampleValue::F64(v) => v,
        SampleValue::U32(v) => v as f64,
        SampleValue::U64(v) => v as f64,
        SampleValue::I64(v) => v as f64,
    })
}

impl GpuBackend for NvmlBackend {
    fn driver_version(&mut self) -> Result<String, GpuError> {
        Ok(self.nvml.sys_driver_version()?)
    }

    fn device_count(&mut self) -> Result<u32, GpuError> {
        Ok(self.nvml.device_count()?)
    }

    fn identity(&mut self, index: u32) -> Result<DeviceIdentity, GpuError> {
        let d = self.device(index)?;
        Ok(DeviceIdentity {
            uuid: d.uuid()?,
            model: d.name()?,
            minor: d.minor_number().ok(),
        })
    }

    fn read(&mut self, index: u32, field: Field) -> Result<f64, GpuError> {
        let d = self.device(index)?;
        let v = match field {
            Field::UtilGpu => d.utilization_rates()?.gpu as f64,
            Field::UtilMemory => d.utilization_rates()?.memory as f64,
            Field::UtilEncoder => d.encoder_utilization()?.utilization as f64,
            Field::UtilDecoder => d.decoder_utilization()?.utilization as f64,
            Field::MemoryUsed => d.memory_info()?.used as f64,
            Field::MemoryFree => d.memory_info()?.free as f64,
            Field::MemoryTotal => d.memory_info()?.total as f64,
            Field::MemoryReserved => d.memory_info()?.reserved as f64,
            Field::Temperature => d.temperature(TemperatureSensor::Gpu)? as f64,
            // NVML: milliwatts and millijoules.
            Field::PowerUsage => d.power_usage()? as f64 / 1e3,
            Field::EnergyTotal => d.total_energy_consumption()? as f64 / 1e3,
            Field::PowerLimit => d.enforced_power_limit()? as f64 / 1e3,
            // NVML: MHz.
            Field::ClockSm => d.clock_info(Clock::SM)? as f64 * 1e6,
            Field::ClockMemory => d.clock_info(Clock::Memory)? as f64 * 1e6,
            Field::ClockGraphics => d.clock_info(Clock::Graphics)? as f64 * 1e6,
            // NVML: KB/s.
            Field::PcieTx => d.pcie_throughput(PcieUtilCounter::Send)? as f64 * 1e3,
            Field::PcieRx => d.pcie_throughput(PcieUtilCounter::Receive)? as f64 * 1e3,
            Field::PcieLinkGeneration => d.current_pcie_link_gen()? as f64,
            Field::PcieLinkWidth => d.current_pcie_link_width()? as f64,
            Field::PcieReplays => d.pcie_replay_counter()? as f64,
            Field::EccCorrectedVolatile => {
                d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile)? as f64
            }
            Field::EccUncorrectedVolatile => {
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)? as f64
            }
            Field::EccCorrectedAggregate => {
                d.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)? as f64
            }
            Field::EccUncorrectedAggregate => {
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate)? as f64
            }
            Field::RemappedRowsCorrectable => field_value(&d, NVML_FI_DEV_REMAPPED_COR)?,
            Field::RemappedRowsUncorrectable => field_value(&d, NVML_FI_DEV_REMAPPED_UNC)?,
            Field::RemapPending => field_value(&d, NVML_FI_DEV_REMAPPED_PENDING)?,
            Field::RemapFailed => field_value(&d, NVML_FI_DEV_REMAPPED_FAILURE)?,
            Field::ClockEventReasons => d.current_throttle_reasons()?.bits() as f64,
            Field::FanSpeed => d.fan_speed(0)? as f64,
        };
        Ok(v)
    }

    fn processes(&mut self, index: u32) -> Result<Vec<GpuProcess>, GpuError> {
        let d = self.device(index)?;
        let mut list = d.running_compute_processes()?;
        // Graphics contexts are absent on most datacenter GPUs: that is not an error.
        list.extend(d.running_graphics_processes().unwrap_or_default());
        Ok(list
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect())
    }

    fn process_utilization(
        &mut self,
        index: u32,
        since_us: u64,
    ) -> Result<Vec<ProcessUtilization>, GpuError> {
        let d = self.device(index)?;
        match d.process_utilization_stats(since_us) {
            Ok(samples) => Ok(samples
                .into_iter()
                .map(|s| ProcessUtilization {
                    pid: s.pid,
                    timestamp_us: s.timestamp,
                    sm_percent: s.sm_util,
                    memory_percent: s.mem_util,
                })
                .collect()),
            // No process ran on the GPU since `since_us`.
            Err(NvmlError::NotFound) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    fn xid_events(&mut self) -> Result<Vec<(u32, u64)>, GpuError> {
        let Some(set) = &self.events else {
            return Err(GpuError::NotSupported);
        };
        let mut out = Vec::new();
        // Drain what is waiting; a zero timeout never blocks.
        for _ in 0..1024 {
            match set.wait(0) {
                Ok(event) => {
                    let index = event.device.index().unwrap_or(u32::MAX);
                    if let Some(XidError::Value(xid)) = event.event_data {
                        out.push((index, xid));
                    }
                }
                Err(NvmlError::Timeout) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}
