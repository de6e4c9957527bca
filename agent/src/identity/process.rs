//! Who a process is, as /proc tells: executable, container, the service name its own
//! variables give, and the ports it listens on.
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use procfs::net::TcpState;
use procfs::process::{FDTarget, Process};

use crate::identity::k8s::PodMeta;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub exe_name: String,
    pub exe_path: String,
    /// The name the program was started as (see `program_name`).
    pub program: String,
    pub service_name: String,
    /// Whether `service_name` comes from a configured rule (see `ServiceNames`).
    pub name_from_rule: bool,
    /// Whether `service_name` comes from the process's own OTEL variables.
    pub name_from_env: bool,
    /// The pod the process's container belongs to (Kubernetes, when enabled).
    pub pod: Option<Arc<PodMeta>>,
    pub container_id: Option<String>,
    /// Arguments joined by spaces (at most 4 KiB). Exported only when asked for: command
    /// lines can hold secrets.
    pub command_line: Option<String>,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid.
    pub start_time: u64,
}

#[cfg(test)]
impl ProcessInfo {
    /// A process outside any container, for unit tests: `exe` at `/usr/bin/{exe}`.
    pub fn for_tests(pid: u32, exe: &str, service_name: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            exe_name: exe.into(),
            exe_path: format!("/usr/bin/{exe}"),
            program: exe.into(),
            service_name: service_name.into(),
            name_from_rule: false,
            name_from_env: false,
            pod: None,
            container_id: None,
            command_line: None,
            start_time: 1,
        }
    }
}

/// What /proc says of `pid`; `comm` stands in for the executable name when it is gone.
pub(crate) fn read_process(pid: u32, comm: &str) -> ProcessInfo {
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default();
    let exe_name = exe_path
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(comm)
        .to_string();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let main_comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let program = program_name(&exe_name, main_comm.trim_end());
    let from_env = service_name_from_environ(&environ);
    let name_from_env = from_env.is_some();
    let service_name = from_env.unwrap_or_else(|| program.clone());
    let container_id = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|c| container_id(&c));
    ProcessInfo {
        pid,
        exe_name,
        exe_path,
        program,
        service_name,
        name_from_rule: false,
        name_from_env,
        pod: None,
        container_id,
        command_line: read_command_line(pid),
        start_time: read_start_time(pid).unwrap_or(0),
    }
}

/// The TCP ports `pid` listens on (empty when /proc cannot tell).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(proc) = Process::new(pid as i32) else {
        return Vec::new();
    };
    let Ok(fds) = proc.fd() else {
        return Vec::new();
    };
    let inodes: HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    let tables = proc.tcp().into_iter().chain(proc.tcp6()).flatten();
    let mut ports: Vec<u16> = tables
        .filter(|e| e.state == TcpState::Listen && inodes.contains(&e.inode))
        .map(|e| e.local_address.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The service name a process without OTEL variables gets: its executable's name, except
/// where it was started through a link to a multi-call binary (Debian's `redis-server` is a
/// link to `redis-check-rdb`). The kernel's command name comes from the name it was started
/// as; it wins unless it is only the executable's name cut to 15 bytes.
pub fn program_name(exe_name: &str, comm: &str) -> String {
    if comm.is_empty() || exe_name.starts_with(comm) {
        exe_name.to_string()
    } else {
        comm.to_string()
    }
}

fn read_command_line(pid: u32) -> Option<String> {
    let mut raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    raw.truncate(4096);
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

pub(crate) fn read_start_time(pid: u32) -> Option<u64> {
    start_time_in(Path::new("/proc"), pid)
}

/// `read_start_time` under another /proc (a test's).
pub(crate) fn start_time_in(proc: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// `OTEL_SERVICE_NAME`, else `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, from a
/// NUL-separated environment block.
pub fn service_name_from_environ(environ: &[u8]) -> Option<String> {
    let mut from_attrs = None;
    for var in environ.split(|b| *b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("OTEL_SERVICE_NAME=") {
            if !v.trim().is_empty() {
                return Some(v.trim().to_string());
            }
        } else if let Some(attrs) = var.strip_prefix("OTEL_RESOURCE_ATTRIBUTES=") {
            from_attrs = attrs
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k.trim() == "service.name")
                .map(|(_, v)| percent_decode(v.trim()))
                .filter(|v| !v.is_empty());
        }
    }
    from_attrs
}

/// OTEL_RESOURCE_ATTRIBUTES values and OTLP headers are percent-encoded (W3C Baggage
/// octets).
pub(crate) fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container id in a /proc/PID/cgroup file: the last 64-hex-digit run on any line
/// (docker-<id>.scope, cri-containerd-<id>.scope, /docker/<id>, /kubepods/.../<id>).
pub fn container_id(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.rsplit(['/', '-', '.', ':']) {
            if part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(part.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_name_prefers_the_started_name_over_a_multi_call_binary() {
        assert_eq!(
            program_name("redis-check-rdb", "redis-server"),
            "redis-server"
        );
        assert_eq!(program_name("nginx", "nginx"), "nginx");
        assert_eq!(program_name("python3.11", "python3"), "python3.11");
        assert_eq!(
            program_name("a-very-long-program-name", "a-very-long-pro"),
            "a-very-long-program-name"
        );
        assert_eq!(program_name("curl", ""), "curl");
    }

    #[test]
    fn service_name_precedence() {
        let env = b"PATH=/bin\0OTEL_RESOURCE_ATTRIBUTES=team=a,service.name=from%20attrs\0";
        assert_eq!(
            service_name_from_environ(env).as_deref(),
            Some("from attrs")
        );
        let env = b"OTEL_RESOURCE_ATTRIBUTES=service.name=attrs\0OTEL_SERVICE_NAME=checkout\0";
        assert_eq!(service_name_from_environ(env).as_deref(), Some("checkout"));
        assert_eq!(service_name_from_environ(b"HOME=/root\0"), None);
        assert_eq!(service_name_from_environ(b"OTEL_SERVICE_NAME=\0"), None);
    }

    #[test]
    fn container_ids_from_cgroup_layouts() {
        let id = "3f4a0c7b9d2e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
        for cg in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("12:pids:/docker/{id}\n"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope\n"),
        ] {
            assert_eq!(container_id(&cg).as_deref(), Some(id), "{cg}");
        }
        assert_eq!(container_id("0::/user.slice/session-1.scope\n"), None);
    }
}
