//! Loading and attaching the kernel programs, and the host checks that come first.
use std::path::Path;

use aya::{programs::BtfTracePoint, Btf, Ebpf, EbpfLoader};
use thiserror::Error;

/// The kernel object built by agent/build.rs from agent-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-ebpf"));

const TRACEFS: &str = "/sys/kernel/tracing";
const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "sonde needs root, or the capabilities {missing} (effective set {have:#x}): run it with sudo or grant them"
    )]
    MissingPrivileges { missing: String, have: u64 },
    #[error("the kernel has no BTF ({BTF_VMLINUX} is missing): sonde needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed: {0} (mount it with `mount -t tracefs tracefs {TRACEFS}`)")]
    Tracefs(std::io::Error),
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
}

/// Capabilities sonde needs when not root: (bit, name).
const NEEDED_CAPS: [(u32, &str); 4] = [
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (19, "CAP_SYS_PTRACE"),
    (2, "CAP_DAC_READ_SEARCH"),
];
const CAP_SYS_ADMIN: u32 = 21;

/// Fails with the names of the capabilities that are missing.
pub fn check_privileges() -> Result<(), ProbeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let have = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| have & (1u64 << bit) != 0;
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        // Before Linux 5.8 CAP_SYS_ADMIN covered what CAP_BPF and CAP_PERFMON grant now.
        .filter(|(bit, _)| !(has(*bit) || (*bit >= 38 && has(CAP_SYS_ADMIN))))
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::MissingPrivileges {
            missing: missing.join(", "),
            have,
        })
    }
}

/// Mounts tracefs when it is absent (a fresh host often has it unmounted).
pub fn ensure_tracefs() -> Result<(), ProbeError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS).expect("static path");
    let fstype = std::ffi::CString::new("tracefs").expect("static string");
    // SAFETY: plain mount(2) with valid NUL-terminated strings and no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::Tracefs(std::io::Error::last_os_error()));
    }
    log::info!("tracefs was not mounted: mounted it at {TRACEFS}");
    Ok(())
}

/// What the kernel program is told at load time.
pub struct KernelSettings {
    /// Size of the ring buffer.
    pub ring_bytes: u32,
    /// The protocols to capture, as `proto::bit`s.
    pub protocols: u32,
    /// Payload bytes copied per syscall (at most `MAX_PAYLOAD`).
    pub payload_bytes: u32,
}

/// Loads the kernel program (telling it sonde's own pid and `settings`) and attaches it.
pub fn load_and_attach(settings: &KernelSettings) -> Result<Ebpf, ProbeError> {
    if !Path::new(BTF_VMLINUX).exists() {
        return Err(ProbeError::NoBtf);
    }
    let btf = Btf::from_sys_fs()?;
    let own_pid = std::process::id();
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("SONDE_TGID", &own_pid, true)
        .override_global("PROTOCOLS", &settings.protocols, true)
        .override_global("PAYLOAD_BYTES", &settings.payload_bytes, true)
        .map_max_entries("EVENTS", settings.ring_bytes)
        .load(EBPF_OBJECT)?;
    let name = "sonde_sys_exit";
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::Missing(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })?;
    prog.load("sys_exit", &btf)
        .map_err(|source| ProbeError::Program { name, source })?;
    prog.attach()
        .map_err(|source| ProbeError::Program { name, source })?;
    Ok(ebpf)
}
