//! Reads every GPU each interval into a `Snapshot`: device points with the `hw.*`
//! identity attributes, per-process points attributed to the process's service, and
//! optionally dcgm-exporter's series.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::names::{self, dcgm, MetricDef};
use super::{DeviceIdentity, Field, GpuBackend, GpuError};
use crate::identity::table::ProcessTable;

/// One value of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuPoint {
    pub metric: &'static MetricDef,
    /// OpenTelemetry attribute names (Prometheus turns `.` into `_`).
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
    /// The service a per-process point belongs to (its OTLP resource); None for the
    /// host's devices.
    pub service: Option<String>,
}

/// One dcgm-exporter series (Prometheus only).
#[derive(Clone, Debug, PartialEq)]
pub struct DcgmPoint {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// What one interval read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub points: Vec<GpuPoint>,
    pub dcgm: Vec<DcgmPoint>,
}

/// What one interval learnt of a process: memory bytes, and (SM %, memory %).
type ProcessFigures = (Option<u64>, Option<(u32, u32)>);

struct Device {
    index: u32,
    identity: DeviceIdentity,
    /// Fields the device said it does not support: never asked again.
    unsupported: BTreeSet<Field>,
    processes_supported: bool,
    utilization_supported: bool,
    /// Newest process utilization sample seen (NVML microseconds).
    last_sample_us: u64,
    /// PCIe bytes (transmit, receive) integrated from throughput samples.
    io_bytes: [f64; 2],
    xid_counts: BTreeMap<u64, u64>,
    last_xid: u64,
}

pub struct Collector {
    backend: Box<dyn GpuBackend>,
    devices: Vec<Device>,
    driver_version: String,
    host_name: String,
    dcgm: bool,
    xid_supported: bool,
    processes: ProcessTable,
    read_errors: u64,
    last_error_log: Option<Instant>,
}

impl Collector {
    /// Finds the devices; fails when there are none (the caller turns GPU statistics off).
    /// `processes` names the processes using a GPU as the capture path names them.
    pub fn new(
        mut backend: Box<dyn GpuBackend>,
        processes: ProcessTable,
        host_name: String,
        dcgm: bool,
    ) -> Result<Collector, GpuError> {
        let driver_version = backend.driver_version().unwrap_or_default();
        let count = backend.device_count()?;
        let mut devices = Vec::new();
        for index in 0..count {
            match backend.identity(index) {
                Ok(identity) => devices.push(Device {
                    index,
                    identity,
                    unsupported: BTreeSet::new(),
                    processes_supported: true,
                    utilization_supported: true,
                    last_sample_us: 0,
                    io_bytes: [0.0; 2],
                    xid_counts: BTreeMap::new(),
                    last_xid: 0,
                }),
                Err(e) => log::warn!("GPU {index} left out: {e}"),
            }
        }
        if devices.is_empty() {
            return Err(GpuError::Unavailable("no NVIDIA GPU found".into()));
        }
        Ok(Collector {
            backend,
            devices,
            driver_version,
            host_name,
            dcgm,
            xid_supported: true,
            processes,
            read_errors: 0,
            last_error_log: None,
        })
    }

    /// The devices found, in index order.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceIdentity> {
        self.devices.iter().map(|d| &d.identity)
    }

    pub fn driver_version(&self) -> &str {
        &self.driver_version
    }

    /// Reads everything once; `elapsed` is the time since the previous tick.
    pub fn tick(&mut self, elapsed: Duration) -> Snapshot {
        let mut snap = Snapshot::default();
        self.collect_xids();
        for i in 0..self.devices.len() {
            let readings = self.read_fields(i);
            let secs = elapsed.as_secs_f64();
            let d = &mut self.devices[i];
            for (slot, field) in [Field::PcieTx, Field::PcieRx].into_iter().enumerate() {
                if let Some(rate) = readings.get(&field) {
                    d.io_bytes[slot] += rate * secs;
                }
            }
            self.device_points(i, &readings, &mut snap);
            if self.dcgm {
                self.dcgm_points(i, &readings, &mut snap);
            }
            self.process_points(i, &mut snap);
        }
        snap.points.push(GpuPoint {
            metric: &names::READ_ERRORS,
            labels: Vec::new(),
            value: self.read_errors as f64,
            service: None,
        });
        snap
    }

    fn collect_xids(&mut self) {
        if !self.xid_supported {
            return;
        }
        match self.backend.xid_events() {
            Ok(events) => {
                for (index, xid) in events {
                    if let Some(d) = self.devices.iter_mut().find(|d| d.index == index) {
                        *d.xid_counts.entry(xid).or_default() += 1;
                        d.last_xid = xid;
                    }
                }
            }
            Err(GpuError::NotSupported) => self.xid_supported = false,
            Err(e) => self.failed("XID events", &e),
        }
    }

    fn read_fields(&mut self, i: usize) -> BTreeMap<Field, f64> {
        let mut readings = BTreeMap::new();
        let mut failures = Vec::new();
        let d = &mut self.devices[i];
        for field in Field::ALL {
            if d.unsupported.contains(&field) {
                continue;
            }
            match self.backend.read(d.index, field) {
                Ok(v) => {
                    readings.insert(field, v);
                }
                Err(GpuError::NotSupported) => {
                    d.unsupported.insert(field);
                }
                Err(e) => failures.push((field, e)),
            }
        }
        for (field, e) in failures {
            self.failed(&format!("GPU {} {field:?}", self.devices[i].index), &e);
        }
        readings
    }

    /// Counts a failed call and logs it at most once a minute.
    fn failed(&mut self, what: &str, e: &GpuError) {
        self.read_errors += 1;
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.last_error_log = Some(Instant::now());
            log::warn!("NVML: {what}: {e} (counted in sonde_gpu_read_errors_total)");
        }
    }

    /// `hw.id`, `hw.type`, `hw.model`, `hw.vendor`, `hw.driver_version`.
    fn identity_labels(&self, i: usize) -> Vec<(&'static str, String)> {
        let id = &self.devices[i].identity;
        vec![
            ("hw.id", id.uuid.clone()),
            ("hw.type", "gpu".into()),
            ("hw.model", id.model.clone()),
            ("hw.vendor", "NVIDIA".into()),
            ("hw.driver_version", self.driver_version.clone()),
        ]
    }

    fn device_points(&self, i: usize, r: &BTreeMap<Field, f64>, snap: &mut Snapshot) {
        let base = self.identity_labels(i);
        let mut push = |metric: &'static MetricDef, extra: &[(&'static str, &str)], value: f64| {
            let mut labels = base.clone();
            labels.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
            snap.points.push(GpuPoint {
                metric,
                labels,
                value,
                service: None,
            });
        };
        let get = |f: Field| r.get(&f).copied();
        for (field, task) in [
            (Field::UtilGpu, "general"),
            (Field::UtilEncoder, "encoder"),
            (Field::UtilDecoder, "decoder"),
        ] {
            if let Some(v) = get(field) {
                push(&names::UTILIZATION, &[("hw.gpu.task", task)], v / 100.0);
            }
        }
        let plain = [
            (Field::UtilMemory, &names::MEMORY_UTILIZATION, 0.01),
            (Field::MemoryUsed, &names::MEMORY_USAGE, 1.0),
            (Field::MemoryTotal, &names::MEMORY_LIMIT, 1.0),
            (Field::MemoryFree, &names::MEMORY_FREE, 1.0),
            (Field::MemoryReserved, &names::MEMORY_RESERVED, 1.0),
            (Field::Temperature, &names::TEMPERATURE, 1.0),
            (Field::PowerUsage, &names::POWER, 1.0),
            (Field::EnergyTotal, &names::ENERGY, 1.0),
            (Field::PowerLimit, &names::POWER_LIMIT, 1.0),
            (Field::PcieLinkGeneration, &names::PCIE_GENERATION, 1.0),
            (Field::PcieLinkWidth, &names::PCIE_WIDTH, 1.0),
            (Field::PcieReplays, &names::PCIE_REPLAYS, 1.0),
            (Field::RemapPending, &names::REMAP_PENDING, 1.0),
            (Field::RemapFailed, &names::REMAP_FAILED, 1.0),
            (Field::FanSpeed, &names::FAN_SPEED, 0.01),
        ];
        for (field, metric, scale) in plain {
            if let Some(v) = get(field) {
                push(metric, &[], v * scale);
            }
        }
        for (field, clock) in [
            (Field::ClockSm, "sm"),
            (Field::ClockMemory, "memory"),
            (Field::ClockGraphics, "graphics"),
        ] {
            if let Some(v) = get(field) {
                push(&names::CLOCK, &[("sonde.gpu.clock", clock)], v);
            }
        }
        let io = self.devices[i].io_bytes;
        for (slot, (field, direction)) in [(Field::PcieTx, "transmit"), (Field::PcieRx, "receive")]
            .into_iter()
            .enumerate()
        {
            if let Some(v) = get(field) {
                let dir = [("network.io.direction", direction)];
                push(&names::PCIE_THROUGHPUT, &dir, v);
                push(&names::IO, &dir, io[slot]);
            }
        }
        for (field, kind, counter) in [
            (Field::EccCorrectedVolatile, "corrected", "volatile"),
            (Field::EccUncorrectedVolatile, "uncorrected", "volatile"),
            (Field::EccCorrectedAggregate, "corrected", "aggregate"),
            (Field::EccUncorrectedAggregate, "uncorrected", "aggregate"),
        ] {
            if let Some(v) = get(field) {
                let labels = [
                    ("sonde.gpu.ecc.type", kind),
                    ("sonde.gpu.ecc.counter", counter),
                ];
                push(&names::ECC_ERRORS, &labels, v);
                if counter == "aggregate" {
                    let error_type = format!("ecc_{kind}");
                    push(&names::ERRORS, &[("error.type", &error_type)], v);
                }
            }
        }
        if self.xid_supported {
            let d = &self.devices[i];
            let total: u64 = d.xid_counts.values().sum();
            push(&names::ERRORS, &[("error.type", "xid")], total as f64);
            for (xid, n) in &d.xid_counts {
                push(
                    &names::XID_ERRORS,
                    &[("sonde.gpu.xid", &xid.to_string())],
                    *n as f64,
                );
            }
        }
        for (field, cause) in [
            (Field::RemappedRowsCorrectable, "correctable"),
            (Field::RemappedRowsUncorrectable, "uncorrectable"),
        ] {
            if let Some(v) = get(field) {
                push(
                    &names::REMAPPED_ROWS,
                    &[("sonde.gpu.remap.cause", cause)],
                    v,
                );
            }
        }
        if let Some(bits) = get(Field::ClockEventReasons) {
            let bits = bits as u64;
            for (bit, reason) in names::CLOCK_EVENT_REASONS {
                let active = if bits & bit != 0 { 1.0 } else { 0.0 };
                push(
                    &names::CLOCK_EVENT,
                    &[("sonde.gpu.clock_event.reason", reason)],
                    active,
                );
            }
        }
    }

    fn dcgm_points(&self, i: usize, r: &BTreeMap<Field, f64>, snap: &mut Snapshot) {
        let d = &self.devices[i];
        let labels = vec![
            ("gpu", d.index.to_string()),
            ("UUID", d.identity.uuid.clone()),
            (
                "device",
                format!("nvidia{}", d.identity.minor.unwrap_or(d.index)),
            ),
            ("modelName", d.identity.model.clone()),
            ("Hostname", self.host_name.clone()),
        ];
        const MIB: f64 = 1024.0 * 1024.0;
        let series = [
            (dcgm::GPU_UTIL, Field::UtilGpu, 1.0),
            (dcgm::FB_USED, Field::MemoryUsed, 1.0 / MIB),
            (dcgm::FB_FREE, Field::MemoryFree, 1.0 / MIB),
            (dcgm::GPU_TEMP, Field::Temperature, 1.0),
            (dcgm::POWER_USAGE, Field::PowerUsage, 1.0),
            (dcgm::SM_CLOCK, Field::ClockSm, 1e-6),
            (dcgm::MEM_CLOCK, Field::ClockMemory, 1e-6),
            (dcgm::PCIE_REPLAY_COUNTER, Field::PcieReplays, 1.0),
            (dcgm::TOTAL_ENERGY, Field::EnergyTotal, 1000.0),
        ];
        for (name, field, scale) in series {
            if let Some(v) = r.get(&field) {
                // dcgm reports whole MiB, MHz and mJ.
                let value = if scale == 1.0 {
                    *v
                } else {
                    (v * scale).floor()
                };
                snap.dcgm.push(DcgmPoint {
                    name,
                    labels: labels.clone(),
                    value,
                });
            }
        }
        if self.xid_supported {
            snap.dcgm.push(DcgmPoint {
                name: dcgm::XID_ERRORS,
                labels,
                value: d.last_xid as f64,
            });
        }
    }

    fn process_points(&mut self, i: usize, snap: &mut Snapshot) {
        let index = self.devices[i].index;
        let mut by_pid: BTreeMap<u32, ProcessFigures> = BTreeMap::new();
        if self.devices[i].processes_supported {
            match self.backend.processes(index) {
                Ok(list) => {
                    for p in list {
                        let entry = by_pid.entry(p.pid).or_default();
                        if let Some(m) = p.memory_bytes {
                            entry.0 = Some(entry.0.unwrap_or(0) + m);
                        }
                    }
                }
                Err(GpuError::NotSupported) => self.devices[i].processes_supported = false,
                Err(e) => self.failed(&format!("GPU {index} processes"), &e),
            }
        }
        let mut utilization_read = false;
        if self.devices[i].utilization_supported {
            let since = self.devices[i].last_sample_us;
            match self.backend.process_utilization(index, since) {
                Ok(samples) => {
                    utilization_read = true;
                    // The newest sample of each process.
                    let mut newest: BTreeMap<u32, (u64, u32, u32)> = BTreeMap::new();
                    for s in samples.iter().filter(|s| s.timestamp_us > since) {
                        let e = newest.entry(s.pid).or_insert((0, 0, 0));
                        if s.timestamp_us >= e.0 {
                            *e = (s.timestamp_us, s.sm_percent, s.memory_percent);
                        }
                        self.devices[i].last_sample_us =
                            self.devices[i].last_sample_us.max(s.timestamp_us);
                    }
                    for (pid, (_, sm, mem)) in newest {
                        by_pid.entry(pid).or_default().1 = Some((sm, mem));
                    }
                }
                Err(GpuError::NotSupported) => self.devices[i].utilization_supported = false,
                Err(e) => self.failed(&format!("GPU {index} process utilization"), &e),
            }
        }
        let uuid = self.devices[i].identity.uuid.clone();
        for (pid, (memory, utilization)) in by_pid {
            let info = self.processes.get(pid, "", true);
            let mut labels = vec![
                ("service.name", info.service_name.clone()),
                ("process.pid", pid.to_string()),
                ("process.executable.name", info.exe_name.clone()),
                ("hw.id", uuid.clone()),
            ];
            if let Some(c) = &info.container_id {
                labels.push(("container.id", c.clone()));
            }
            let mut push = |metric: &'static MetricDef, value: f64| {
                snap.points.push(GpuPoint {
                    metric,
                    labels: labels.clone(),
                    value,
                    service: Some(info.service_name.clone()),
                });
            };
            if let Some(m) = memory {
                push(&names::PROCESS_MEMORY, m as f64);
            }
            // No new sample in the interval: the process was idle on this GPU.
            if utilization_read {
                let (sm, mem) = utilization.unwrap_or((0, 0));
                push(&names::PROCESS_UTILIZATION, sm as f64 / 100.0);
                push(&names::PROCESS_MEMORY_UTILIZATION, mem as f64 / 100.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::fake::{FakeGpu, FakeNvml};

    fn collector(fake: FakeNvml, dcgm: bool) -> Collector {
        Collector::new(
            Box::new(fake),
            ProcessTable::default(),
            "host-a".into(),
            dcgm,
        )
        .unwrap()
    }

    fn value(snap: &Snapshot, metric: &MetricDef, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = snap
            .points
            .iter()
            .filter(|p| {
                std::ptr::eq(p.metric, metric)
                    && labels
                        .iter()
                        .all(|(k, v)| p.labels.iter().any(|(pk, pv)| pk == k && pv == v))
            })
            .map(|p| p.value)
            .collect();
        assert!(
            found.len() <= 1,
            "{labels:?} matches {} points",
            found.len()
        );
        found.first().copied()
    }

    const H100: &str = "GPU-5c3b3fa4-2b6e-7c4d-a1e0-96e2f3a1b7c9";

    #[test]
    fn device_points_carry_identity_and_si_units() {
        let mut c = collector(FakeNvml::new(vec![FakeGpu::h100(H100)]), false);
        let snap = c.tick(Duration::from_secs(10));
        let id = [("hw.id", H100)];
        let point = snap
            .points
            .iter()
            .find(|p| p.metric == &names::MEMORY_USAGE)
            .unwrap();
        for (k, v) in [
            ("hw.id", H100),
            ("hw.type", "gpu"),
            ("hw.model", "NVIDIA H100 80GB HBM3"),
            ("hw.vendor", "NVIDIA"),
            ("hw.driver_version", "550.54.15"),
        ] {
            assert!(point.labels.contains(&(k, v.to_string())), "{k}: {point:?}");
        }
        let v = |m: &MetricDef, extra: &[(&str, &str)]| {
            let mut labels = id.to_vec();
            labels.extend_from_slice(extra);
            value(&snap, m, &labels)
        };
        assert_eq!(
            v(&names::UTILIZATION, &[("hw.gpu.task", "general")]),
            Some(0.87)
        );
        assert_eq!(
            v(&names::UTILIZATION, &[("hw.gpu.task", "encoder")]),
            Some(0.0)
        );
        assert_eq!(v(&names::MEMORY_UTILIZATION, &[]), Some(0.42));
        assert_eq!(v(&names::MEMORY_USAGE, &[]), Some(40_960.0 * 1048576.0));
        assert_eq!(v(&names::MEMORY_LIMIT, &[]), Some(81_559.0 * 1048576.0));
        assert_eq!(v(&names::TEMPERATURE, &[]), Some(61.0));
        assert_eq!(v(&names::POWER, &[]), Some(412.5));
        assert_eq!(v(&names::ENERGY, &[]), Some(123_456.789));
        assert_eq!(v(&names::POWER_LIMIT, &[]), Some(700.0));
        assert_eq!(
            v(&names::CLOCK, &[("sonde.gpu.clock", "sm")]),
            Some(1_980e6)
        );
        assert_eq!(v(&names::PCIE_GENERATION, &[]), Some(5.0));
        assert_eq!(v(&names::PCIE_WIDTH, &[]), Some(16.0));
        let tx = [("network.io.direction", "transmit")];
        assert_eq!(v(&names::PCIE_THROUGHPUT, &tx), Some(2e9));
        // 2 GB/s over the 10 s interval.
        assert_eq!(v(&names::IO, &tx), Some(2e10));
        let ecc = [
            ("sonde.gpu.ecc.type", "corrected"),
            ("sonde.gpu.ecc.counter", "aggregate"),
        ];
        assert_eq!(v(&names::ECC_ERRORS, &ecc), Some(3.0));
        assert_eq!(
            v(&names::ERRORS, &[("error.type", "ecc_corrected")]),
            Some(3.0)
        );
        assert_eq!(v(&names::ERRORS, &[("error.type", "xid")]), Some(0.0));
        let reason = |r| v(&names::CLOCK_EVENT, &[("sonde.gpu.clock_event.reason", r)]);
        assert_eq!(reason("sw_power_cap"), Some(1.0));
        assert_eq!(reason("hw_thermal_slowdown"), Some(0.0));
        assert_eq!(
            v(
                &names::REMAPPED_ROWS,
                &[("sonde.gpu.remap.cause", "correctable")]
            ),
            Some(2.0)
        );
        // The H100 has no fan: the field is absent, not zero.
        assert_eq!(v(&names::FAN_SPEED, &[]), None);
        assert_eq!(value(&snap, &names::READ_ERRORS, &[]), Some(0.0));
    }

    #[test]
    fn unsupported_fields_are_asked_once_and_errors_are_retried_and_counted() {
        let fake = FakeNvml::new(vec![FakeGpu::h100(H100)]);
        let calls = fake.calls.clone();
        let failing = fake.failing.clone();
        let mut c = collector(fake, false);
        failing.lock().unwrap().insert(Field::Temperature);
        let first = c.tick(Duration::from_secs(10));
        assert_eq!(value(&first, &names::TEMPERATURE, &[]), None);
        assert_eq!(value(&first, &names::READ_ERRORS, &[]), Some(1.0));
        failing.lock().unwrap().clear();
        for _ in 0..3 {
            c.tick(Duration::from_secs(10));
        }
        {
            let calls = calls.lock().unwrap();
            assert_eq!(calls[&Field::FanSpeed], 1, "unsupported: asked once");
            assert_eq!(
                calls[&Field::Temperature],
                4,
                "failed: asked again next time"
            );
        }
        let last = c.tick(Duration::from_secs(10));
        assert_eq!(value(&last, &names::TEMPERATURE, &[]), Some(61.0));
        assert_eq!(value(&last, &names::READ_ERRORS, &[]), Some(1.0));
    }

    #[test]
    fn xid_errors_are_counted_by_code_and_device() {
        let other = "GPU-00000000-1111-2222-3333-444444444444";
        let fake = FakeNvml::new(vec![FakeGpu::h100(H100), FakeGpu::h100(other)]);
        let xids = fake.xids.clone();
        let mut c = collector(fake, true);
        xids.lock().unwrap().extend([(0, 79), (0, 79), (1, 48)]);
        c.tick(Duration::from_secs(10));
        xids.lock().unwrap().push((0, 13));
        let snap = c.tick(Duration::from_secs(10));
        let xid = |dev: &str, code: &str| {
            value(
                &snap,
                &names::XID_ERRORS,
                &[("hw.id", dev), ("sonde.gpu.xid", code)],
            )
        };
        assert_eq!(xid(H100, "79"), Some(2.0));
        assert_eq!(xid(H100, "13"), Some(1.0));
        assert_eq!(xid(other, "48"), Some(1.0));
        assert_eq!(xid(other, "79"), None);
        let errors = |dev| {
            value(
                &snap,
                &names::ERRORS,
                &[("hw.id", dev), ("error.type", "xid")],
            )
        };
        assert_eq!(errors(H100), Some(3.0));
        assert_eq!(errors(other), Some(1.0));
        let last: Vec<f64> = snap
            .dcgm
            .iter()
            .filter(|p| p.name == dcgm::XID_ERRORS)
            .map(|p| p.value)
            .collect();
        assert_eq!(last, [13.0, 48.0], "dcgm shows the last XID of each GPU");
    }

    #[test]
    fn processes_are_attributed_to_their_service() {
        let me = std::process::id();
        let mut gpu = FakeGpu::h100(H100);
        gpu.processes = vec![(me, Some(2 << 30)), (u32::MAX - 7, None)];
        gpu.samples = vec![(me, 100, 35, 12), (me, 200, 55, 20)];
        let mut c = collector(FakeNvml::new(vec![gpu]), false);
        let snap = c.tick(Duration::from_secs(10));
        let pid = me.to_string();
        let mem: Vec<&GpuPoint> = snap
            .points
            .iter()
            .filter(|p| p.metric == &names::PROCESS_MEMORY)
            .collect();
        assert_eq!(
            mem.len(),
            1,
            "a process without a memory figure has no memory point"
        );
        let exe = std::env::current_exe().unwrap();
        let exe_name = exe.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(mem[0].value, (2u64 << 30) as f64);
        assert_eq!(mem[0].service.as_deref(), Some(exe_name.as_str()));
        for (k, v) in [
            ("process.pid", pid.as_str()),
            ("service.name", exe_name.as_str()),
            ("hw.id", H100),
        ] {
            assert!(mem[0].labels.contains(&(k, v.to_string())), "{k}");
        }
        let util = |m| value(&snap, m, &[("process.pid", &pid)]);
        assert_eq!(
            util(&names::PROCESS_UTILIZATION),
            Some(0.55),
            "the newest sample"
        );
        assert_eq!(util(&names::PROCESS_MEMORY_UTILIZATION), Some(0.20));
        // No new samples next interval: the process was idle.
        let snap = c.tick(Duration::from_secs(10));
        assert_eq!(
            value(&snap, &names::PROCESS_UTILIZATION, &[("process.pid", &pid)]),
            Some(0.0)
        );
    }

    #[test]
    fn dcgm_series_use_dcgm_units_and_labels() {
        let mut c = collector(FakeNvml::new(vec![FakeGpu::h100(H100)]), true);
        let snap = c.tick(Duration::from_secs(10));
        let get = |name: &str| snap.dcgm.iter().find(|p| p.name == name).unwrap();
        assert_eq!(get(dcgm::FB_USED).value, 40_960.0);
        assert_eq!(get(dcgm::FB_FREE).value, 40_599.0);
        assert_eq!(get(dcgm::GPU_UTIL).value, 87.0);
        assert_eq!(get(dcgm::SM_CLOCK).value, 1980.0);
        assert_eq!(get(dcgm::POWER_USAGE).value, 412.5);
        assert_eq!(get(dcgm::TOTAL_ENERGY).value, 123_456_789.0);
        assert_eq!(
            get(dcgm::GPU_TEMP).labels,
            vec![
                ("gpu", "0".to_string()),
                ("UUID", H100.to_string()),
                ("device", "nvidia3".to_string()),
                ("modelName", "NVIDIA H100 80GB HBM3".to_string()),
                ("Hostname", "host-a".to_string()),
            ]
        );
        let without =
            collector(FakeNvml::new(vec![FakeGpu::h100(H100)]), false).tick(Duration::from_secs(1));
        assert!(without.dcgm.is_empty());
    }

    #[test]
    fn no_gpu_is_an_error_for_the_caller() {
        let err = Collector::new(
            Box::new(FakeNvml::new(Vec::new())),
            ProcessTable::default(),
            String::new(),
            false,
        )
        .err()
        .unwrap();
        assert_eq!(err, GpuError::Unavailable("no NVIDIA GPU found".into()));
    }
}
