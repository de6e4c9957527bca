//! A fake NVML for tests: realistic H100 values, a field it does not support (the fan),
//! errors on demand, XID events on demand, and a count of the calls made.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::{DeviceIdentity, Field, GpuBackend, GpuError, GpuProcess, ProcessUtilization};

pub struct FakeGpu {
    pub identity: DeviceIdentity,
    pub values: BTreeMap<Field, f64>,
    /// (pid, memory bytes)
    pub processes: Vec<(u32, Option<u64>)>,
    /// (pid, timestamp µs, sm %, memory %)
    pub samples: Vec<(u32, u64, u32, u32)>,
}

impl FakeGpu {
    /// An H100 SXM under load, as NVML reports one (in the trait's SI units).
    pub fn h100(uuid: &str) -> FakeGpu {
        const MIB: f64 = 1048576.0;
        let values = [
            (Field::UtilGpu, 87.0),
            (Field::UtilMemory, 42.0),
            (Field::UtilEncoder, 0.0),
            (Field::UtilDecoder, 0.0),
            (Field::MemoryUsed, 40_960.0 * MIB),
            (Field::MemoryFree, 40_599.5 * MIB),
            (Field::MemoryTotal, 81_559.0 * MIB),
            (Field::MemoryReserved, 512.0 * MIB),
            (Field::Temperature, 61.0),
            (Field::PowerUsage, 412.5),
            (Field::EnergyTotal, 123_456.789),
            (Field::PowerLimit, 700.0),
            (Field::ClockSm, 1_980e6),
            (Field::ClockMemory, 2_619e6),
            (Field::ClockGraphics, 1_980e6),
            (Field::PcieTx, 2e9),
            (Field::PcieRx, 5e8),
            (Field::PcieLinkGeneration, 5.0),
            (Field::PcieLinkWidth, 16.0),
            (Field::PcieReplays, 0.0),
            (Field::EccCorrectedVolatile, 1.0),
            (Field::EccUncorrectedVolatile, 0.0),
            (Field::EccCorrectedAggregate, 3.0),
            (Field::EccUncorrectedAggregate, 0.0),
            (Field::RemappedRowsCorrectable, 2.0),
            (Field::RemappedRowsUncorrectable, 0.0),
            (Field::RemapPending, 0.0),
            (Field::RemapFailed, 0.0),
            // sw_power_cap
            (Field::ClockEventReasons, 4.0),
        ];
        FakeGpu {
            identity: DeviceIdentity {
                uuid: uuid.to_string(),
                model: "NVIDIA H100 80GB HBM3".into(),
                minor: Some(3),
            },
            values: values.into_iter().collect(),
            processes: Vec::new(),
            samples: Vec::new(),
        }
    }
}

pub struct FakeNvml {
    pub gpus: Vec<FakeGpu>,
    /// Fields whose reads fail (not as unsupported) until removed.
    pub failing: Arc<Mutex<BTreeSet<Field>>>,
    /// XID events waiting to be read: (device, code).
    pub xids: Arc<Mutex<Vec<(u32, u64)>>>,
    /// Reads made, by field.
    pub calls: Arc<Mutex<BTreeMap<Field, u32>>>,
}

impl FakeNvml {
    pub fn new(gpus: Vec<FakeGpu>) -> FakeNvml {
        FakeNvml {
            gpus,
            failing: Default::default(),
            xids: Default::default(),
            calls: Default::default(),
        }
    }

    fn gpu(&self, device: u32) -> Result<&FakeGpu, GpuError> {
        self.gpus
            .get(device as usize)
            .ok_or_else(|| GpuError::Failed(format!("no device {device}")))
    }
}

impl GpuBackend for FakeNvml {
    fn driver_version(&mut self) -> Result<String, GpuError> {
        Ok("550.54.15".into())
    }

    fn device_count(&mut self) -> Result<u32, GpuError> {
        Ok(self.gpus.len() as u32)
    }

    fn identity(&mut self, device: u32) -> Result<DeviceIdentity, GpuError> {
        Ok(self.gpu(device)?.identity.clone())
    }

    fn read(&mut self, device: u32, field: Field) -> Result<f64, GpuError> {
        *self.calls.lock().unwrap().entry(field).or_default() += 1;
        if self.failing.lock().unwrap().contains(&field) {
            return Err(GpuError::Failed("Unknown Error".into()));
        }
        self.gpu(device)?
            .values
            .get(&field)
            .copied()
            .ok_or(GpuError::NotSupported)
    }

    fn processes(&mut self, device: u32) -> Result<Vec<GpuProcess>, GpuError> {
        Ok(self
            .gpu(device)?
            .processes
            .iter()
            .map(|&(pid, memory_bytes)| GpuProcess { pid, memory_bytes })
            .collect())
    }

    fn process_utilization(
        &mut self,
        device: u32,
        since_us: u64,
    ) -> Result<Vec<ProcessUtilization>, GpuError> {
        Ok(self
            .gpu(device)?
            .samples
            .iter()
            .filter(|s| s.1 > since_us)
            .map(
                |&(pid, timestamp_us, sm_percent, memory_percent)| ProcessUtilization {
                    pid,
                    timestamp_us,
                    sm_percent,
                    memory_percent,
                },
            )
            .collect())
    }

    fn xid_events(&mut self) -> Result<Vec<(u32, u64)>, GpuError> {
        Ok(std::mem::take(&mut *self.xids.lock().unwrap()))
    }
}
