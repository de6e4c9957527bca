//! Loading and attaching the kernel programs, and the host checks that come first.
use std::path::Path;

use aya::{
    maps::SockHash,
    programs::{BtfTracePoint, CgroupAttachMode, ProgramError, SkMsg, SockOps, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use thiserror::Error;

/// The kernel object built by agent/build.rs from agent-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-ebpf"));
/// The sockhash of trace propagation and its `sock_ops` program (agent-ebpf/src/socks.rs),
/// loaded only with `inject_traceparent`: creating a sockhash needs `CAP_NET_ADMIN`.
static SOCKS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-socks"));

/// The loaded programs: they stay attached while this lives.
pub struct Probes {
    pub ebpf: Ebpf,
    /// The trace propagation sockhash and its program, with `inject_traceparent`.
    pub propagation: Option<Ebpf>,
}

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
        source: ProgramError,
    },
    #[error(
        "the verifier of Linux {kernel} refused program {name} ({error}); its last lines:\n{log_tail}"
    )]
    Refused {
        name: &'static str,
        kernel: String,
        error: std::io::Error,
        log_tail: String,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("inject_traceparent needs a cgroup v2 hierarchy: none is mounted and mounting one at {OWN_CGROUP2} failed: {0} (mount one, or set inject_traceparent: false)")]
    NoCgroup2(std::io::Error),
    #[error("opening the cgroup v2 root {path}: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("duplicating the fd of sonde_inject's sockhash: {0}")]
    MapFd(std::io::Error),
    #[error("the sockhash of program sonde_inject: {0}")]
    SockHash(#[from] aya::maps::MapError),
}

/// Capabilities sonde needs when not root: (bit, name).
const NEEDED_CAPS: [(u32, &str); 4] = [
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (19, "CAP_SYS_PTRACE"),
    (2, "CAP_DAC_READ_SEARCH"),
];
const CAP_SYS_ADMIN: u32 = 21;
/// Loading `sk_msg` and `sock_ops` programs and attaching to a cgroup need it besides.
const CAP_NET_ADMIN: u32 = 12;

/// The effective capability set.
fn effective_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Fails with the names of the capabilities that are missing.
pub fn check_privileges() -> Result<(), ProbeError> {
    let have = effective_caps();
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
    mount("tracefs", TRACEFS).map_err(ProbeError::Tracefs)?;
    log::info!("tracefs was not mounted: mounted it at {TRACEFS}");
    Ok(())
}

/// Mounts a kernel file system of type `fstype` (named after it) at `target`.
fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("static string");
    let (fstype, target) = (c(fstype), c(target));
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
        return Err(std::io::Error::last_os_error());
    }
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
    /// Load the OpenSSL uprobes (attached later, per library file: `capture::tls`).
    pub tls: bool,
    /// Load the trace propagation programs (`inject_traceparent`).
    pub inject_traceparent: bool,
}

/// The benchmark's floor (`cargo xtask bench`): with `SONDE_BENCH_HOOK_ONLY=1` in its
/// environment sonde attaches every program as usual, but they return at once and capture
/// nothing. A development switch, not a setting.
fn hook_only() -> bool {
    std::env::var_os("SONDE_BENCH_HOOK_ONLY").is_some_and(|v| v == "1")
}

/// Loads the kernel programs (telling them sonde's own pid and `settings`) and attaches them.
pub fn load_and_attach(settings: &KernelSettings) -> Result<Probes, ProbeError> {
    if !Path::new(BTF_VMLINUX).exists() {
        return Err(ProbeError::NoBtf);
    }
    let btf = Btf::from_sys_fs()?;
    let own_pid = std::process::id();
    let child_pid_offset = fork_child_pid_offset();
    let hook_only = u32::from(hook_only());
    if hook_only != 0 {
        log::warn!("SONDE_BENCH_HOOK_ONLY=1: the programs return at once, nothing is captured");
    }
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("SONDE_TGID", &own_pid, true)
        .override_global("PROTOCOLS", &settings.protocols, true)
        .override_global("PAYLOAD_BYTES", &settings.payload_bytes, true)
        .override_global("FORK_CHILD_PID_OFFSET", &child_pid_offset, true)
        .override_global("TLS_ON", &u32::from(settings.tls), true)
        .override_global("HOOK_ONLY", &hook_only, true)
        .map_max_entries("EVENTS", settings.ring_bytes)
        .load(EBPF_OBJECT)?;
    // The fork program first: a child forked between the two attaches is then still known.
    let name = "sonde_fork";
    let fork: &mut TracePoint = program(&mut ebpf, name)?;
    fork.load().map_err(|e| refused(name, e))?;
    fork.attach("sched", "sched_process_fork")
        .map_err(|source| ProbeError::Program { name, source })?;
    // Before the syscall program: a connect() it sees has had its SYN_SENT seen.
    let name = "sonde_sock_state";
    let state: &mut TracePoint = program(&mut ebpf, name)?;
    state.load().map_err(|e| refused(name, e))?;
    state
        .attach("sock", "inet_sock_set_state")
        .map_err(|source| ProbeError::Program { name, source })?;
    let propagation = match settings.inject_traceparent {
        // Before the syscall program: the thread's trace is shipped before its request.
        true => Some(attach_propagation(&mut ebpf, &btf)?),
        false => None,
    };
    let name = "sonde_sys_exit";
    let exit: &mut BtfTracePoint = program(&mut ebpf, name)?;
    exit.load("sys_exit", &btf).map_err(|e| refused(name, e))?;
    exit.attach()
        .map_err(|source| ProbeError::Program { name, source })?;
    if settings.tls {
        super::tls::load(&mut ebpf).map_err(|(name, e)| refused(name, e))?;
        let name = "sonde_thread_exit";
        let exit: &mut TracePoint = program(&mut ebpf, name)?;
        exit.load().map_err(|e| refused(name, e))?;
        exit.attach("sched", "sched_process_exit")
            .map_err(|source| ProbeError::Program { name, source })?;
    }
    Ok(Probes { ebpf, propagation })
}

/// The trace propagation programs (agent-ebpf/src/propagate.rs): the thread follower on
/// `sys_exit` and the `sk_msg` program that adds the header, from the main object, and the
/// sockhash of client sockets with the `sock_ops` program that fills it, from their own
/// object (returned: it must live as long as the main one).
fn attach_propagation(ebpf: &mut Ebpf, btf: &Btf) -> Result<Ebpf, ProbeError> {
    let have = effective_caps();
    if have & (1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN) == 0 {
        return Err(ProbeError::MissingPrivileges {
            missing: "CAP_NET_ADMIN (for inject_traceparent; or set inject_traceparent: false)"
                .to_string(),
            have,
        });
    }
    let name = "sonde_trace_exit";
    let follow: &mut BtfTracePoint = program(ebpf, name)?;
    follow.load("sys_exit", btf).map_err(|e| refused(name, e))?;
    follow
        .attach()
        .map_err(|source| ProbeError::Program { name, source })?;
    let mut socks_obj = EbpfLoader::new().btf(Some(btf)).load(SOCKS_OBJECT)?;
    let socks: SockHash<_, u64> = SockHash::try_from(
        socks_obj
            .map("CLIENT_SOCKS")
            .ok_or(ProbeError::Missing("CLIENT_SOCKS"))?,
    )?;
    let socks = socks.fd().try_clone().map_err(ProbeError::MapFd)?;
    let name = "sonde_inject";
    let inject: &mut SkMsg = program(ebpf, name)?;
    inject.load().map_err(|e| refused(name, e))?;
    inject
        .attach(&socks)
        .map_err(|source| ProbeError::Program { name, source })?;
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root).map_err(|source| ProbeError::Cgroup {
        path: root.clone(),
        source,
    })?;
    let name = "sonde_client_socks";
    let fill: &mut SockOps = program(&mut socks_obj, name)?;
    fill.load().map_err(|e| refused(name, e))?;
    fill
        // A link (Linux >= 5.7) with no flags: it runs beside programs other tools attached
        // to the root with links or BPF_F_ALLOW_MULTI; an exclusive one refuses it.
        .attach(&cgroup, CgroupAttachMode::Single)
        .map_err(|source| ProbeError::Program { name, source })?;
    log::info!("inject_traceparent: plain HTTP/1 requests sent from this host get a traceparent header (sockets connected from now on; cgroup {root})");
    Ok(socks_obj)
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one). Where none is (a minimal init), sonde mounts
/// one of its own, as it does tracefs.
fn cgroup2_root() -> Result<String, ProbeError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if let Some(root) = cgroup2_in(&mounts) {
        return Ok(root);
    }
    std::fs::create_dir_all(OWN_CGROUP2).map_err(ProbeError::NoCgroup2)?;
    mount("cgroup2", OWN_CGROUP2).map_err(ProbeError::NoCgroup2)?;
    log::info!("no cgroup v2 hierarchy was mounted: mounted one at {OWN_CGROUP2}");
    Ok(OWN_CGROUP2.to_string())
}

/// Where sonde mounts the cgroup v2 hierarchy when the host has not.
const OWN_CGROUP2: &str = "/run/sonde/cgroup2";

fn cgroup2_in(mounts: &str) -> Option<String> {
    mounts.lines().find_map(|l| {
        let mut fields = l.split_whitespace();
        let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| path.to_string())
    })
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

/// Lines of the verifier's log shown when it refuses a program (its conclusion is last).
const VERIFIER_LOG_LINES: usize = 12;

/// A refused load names the program, the kernel and the verifier's last lines.
fn refused(name: &'static str, error: ProgramError) -> ProbeError {
    match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_LOG_LINES)..].join("\n");
            ProbeError::Refused {
                name,
                kernel: kernel_release(),
                error: io_error,
                log_tail: tail,
            }
        }
        source => ProbeError::Program { name, source },
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown release)".to_string())
}

/// The offset of `child_pid` in the `sched_process_fork` record, from its format file; the
/// layout every kernel so far has used when the file cannot be read.
fn fork_child_pid_offset() -> u32 {
    let path = Path::new(TRACEFS).join("events/sched/sched_process_fork/format");
    let format = std::fs::read_to_string(&path).unwrap_or_default();
    match child_pid_offset_in(&format) {
        Some(offset) => offset,
        None => {
            log::warn!("{}: no child_pid field; assuming offset 44", path.display());
            44
        }
    }
}

/// Parses `field:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;` out of a format file.
fn child_pid_offset_in(format: &str) -> Option<u32> {
    let line = format.lines().find(|l| l.contains(" child_pid;"))?;
    let rest = &line[line.find("offset:")? + "offset:".len()..];
    rest[..rest.find(';')?].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n\
            cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n";
        assert_eq!(
            cgroup2_in(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_in(unified).as_deref(), Some("/sys/fs/cgroup"));
        assert_eq!(cgroup2_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn child_pid_offset_from_the_format_file() {
        let format = "name: sched_process_fork\nID: 311\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
            \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
            \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(child_pid_offset_in(format), Some(44));
        assert_eq!(child_pid_offset_in("format:\n"), None);
    }

    #[test]
    fn a_refused_program_names_itself_the_kernel_and_the_verdict() {
        let log: String = (0..40)
            .map(|i| format!("{i}: (79) r1 = r{i}\n"))
            .collect::<String>()
            + "\ninvalid read from stack off -168+0 size 8\nprocessed 1200 insns\n";
        let error = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log),
        };
        let message = refused("sonde_sys_exit", error).to_string();
        assert!(
            message.starts_with(&format!(
                "the verifier of Linux {} refused program sonde_sys_exit (Permission denied",
                kernel_release()
            )),
            "{message}"
        );
        let tail: Vec<&str> = message.lines().skip(1).collect();
        assert_eq!(tail.len(), VERIFIER_LOG_LINES, "{message}");
        assert_eq!(
            tail[VERIFIER_LOG_LINES - 2],
            "invalid read from stack off -168+0 size 8"
        );
        assert_eq!(tail[0], "30: (79) r1 = r30");
    }
}
