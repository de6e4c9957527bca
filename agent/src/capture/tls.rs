//! TLS plaintext: the OpenSSL uprobes, attached to every `libssl.so` that processes on the
//! host map and to every executable that has OpenSSL linked in with its symbols exported
//! (Debian's `node`), each file once (a uprobe on a file fires in every process that maps
//! it, so a process started later is covered the moment it calls into an attached file).
//!
//! Files are found in `/proc/PID/maps` and attached through `/proc/PID/root`, so a
//! container's own libssl is attached too. Sonde lists `/proc` every second: a process is
//! looked at each time during its first `YOUNG` seconds, and all of them again every
//! `FULL_SCAN` (a process may load libssl after it started: Python imports `ssl` on demand).
//! A process's age is its own (from its start time), not how long sonde has seen it: the
//! processes already running when sonde starts are not read every second for `YOUNG`.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::uprobe::UProbeScope;
use aya::programs::{ProgramError, UProbe};
use aya::Ebpf;

/// Entry programs and the functions they attach to; `sonde_ssl_return` attaches to each too.
const ENTRIES: [(&str, &str); 4] = [
    ("sonde_ssl_write", "SSL_write"),
    ("sonde_ssl_read", "SSL_read"),
    ("sonde_ssl_write_ex", "SSL_write_ex"),
    ("sonde_ssl_read_ex", "SSL_read_ex"),
];
const RETURN: &str = "sonde_ssl_return";
/// `SSL_free` (entry only): forgets the freed `SSL*`'s socket.
const FREE: (&str, &str) = ("sonde_ssl_free", "SSL_free");

/// Every process's maps are read again this often.
const FULL_SCAN: Duration = Duration::from_secs(10);
/// A process's maps are read every second for this long after sonde first sees it: a
/// program may load libssl after it starts (Python imports `ssl` when a module first needs
/// it), and its first TLS calls come soon after.
const YOUNG: Duration = Duration::from_secs(10);

/// Loads the TLS programs (before any attach).
pub fn load(ebpf: &mut Ebpf) -> Result<(), (&'static str, ProgramError)> {
    for name in ENTRIES.iter().map(|(p, _)| *p).chain([RETURN, FREE.0]) {
        uprobe(ebpf, name)?.load().map_err(|e| (name, e))?;
    }
    Ok(())
}

fn uprobe<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut UProbe, (&'static str, ProgramError)> {
    let program = ebpf
        .program_mut(name)
        .ok_or((name, ProgramError::NotLoaded))?;
    program.try_into().map_err(|e| (name, e))
}

/// What the TLS attacher found so far (self-telemetry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCoverage {
    /// Library files the uprobes are attached to.
    pub libraries: usize,
    /// Processes that map one of them, at the last scan.
    pub processes: usize,
}

/// Finds libssl files in processes' maps and attaches the uprobes to each once.
pub struct TlsAttacher {
    /// (device, inode) of the files attached, or that failed to attach (not retried).
    done: HashSet<(String, u64)>,
    /// (device, inode) of the executables looked at (most have no OpenSSL of their own).
    exes_done: HashSet<(u64, u64)>,
    /// The executables among them with OpenSSL linked in.
    static_exes: HashSet<(u64, u64)>,
    /// When each live process started (as far as its stat says; else when first seen).
    seen_pids: HashMap<u32, Instant>,
    last_full: Option<Instant>,
    coverage: TlsCoverage,
    proc_root: PathBuf,
}

/// One libssl mapping of one process.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    dev: String,
    inode: u64,
    path: String,
}

impl TlsAttacher {
    pub fn new() -> TlsAttacher {
        TlsAttacher::with_proc(PathBuf::from("/proc"))
    }

    fn with_proc(proc_root: PathBuf) -> TlsAttacher {
        TlsAttacher {
            done: HashSet::new(),
            exes_done: HashSet::new(),
            static_exes: HashSet::new(),
            seen_pids: HashMap::new(),
            last_full: None,
            coverage: TlsCoverage::default(),
            proc_root,
        }
    }

    pub fn coverage(&self) -> TlsCoverage {
        self.coverage
    }

    /// Looks at new processes (all of them every `FULL_SCAN`) and attaches to the libssl
    /// files not attached yet. Returns one line per file attached or refused, for the log.
    pub fn scan(&mut self, ebpf: &mut Ebpf) -> Vec<String> {
        let full = self.last_full.is_none_or(|t| t.elapsed() >= FULL_SCAN);
        if full {
            self.last_full = Some(Instant::now());
        }
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return Vec::new();
        };
        let own = std::process::id();
        let mut alive = HashSet::new();
        let mut covered = 0;
        let mut log = Vec::new();
        let mut uptime = None;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            alive.insert(pid);
            let started = *self.seen_pids.entry(pid).or_insert_with(|| {
                let age = process_age(&self.proc_root, pid, &mut uptime).unwrap_or_default();
                let now = Instant::now();
                now.checked_sub(age).unwrap_or(now)
            });
            let young = started.elapsed() < YOUNG;
            if pid == own || (!full && !young) {
                continue;
            }
            let Ok(maps) = std::fs::read_to_string(self.proc_root.join(format!("{pid}/maps")))
            else {
                continue;
            };
            let mappings = libssl_mappings(&maps);
            let exe = self.proc_root.join(format!("{pid}/exe"));
            let static_openssl = self.look_at_exe(ebpf, &exe, pid, &mut log);
            if !mappings.is_empty() || static_openssl {
                covered += 1;
            }
            for m in mappings {
                let key = (m.dev.clone(), m.inode);
                if self.done.contains(&key) {
                    continue;
                }
                let target = self
                    .proc_root
                    .join(format!("{pid}/root"))
                    .join(m.path.trim_start_matches('/'));
                match attach(ebpf, &target, false) {
                    Ok(n) => {
                        self.coverage.libraries += 1;
                        log.push(format!(
                            "TLS: uprobes on {} ({n} functions, seen in pid {pid})",
                            m.path
                        ));
                    }
                    Err(_) if !target.exists() => continue, // the process is gone: try another
                    Err(e) => {
                        log.push(format!("TLS: cannot attach to {} (pid {pid}): {e}", m.path))
                    }
                }
                self.done.insert(key);
            }
        }
        self.seen_pids.retain(|p, _| alive.contains(p));
        if full {
            self.coverage.processes = covered;
        }
        log
    }
}

impl TlsAttacher {
    /// Attaches to `exe` if it exports OpenSSL's functions (looked at once per file);
    /// returns whether it carries OpenSSL.
    fn look_at_exe(
        &mut self,
        ebpf: &mut Ebpf,
        exe: &Path,
        pid: u32,
        log: &mut Vec<String>,
    ) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(exe) else {
            return false; // a kernel thread, or gone
        };
        let key = (meta.dev(), meta.ino());
        if !self.exes_done.insert(key) {
            return self.static_exes.contains(&key);
        }
        // An executable that only imports SSL_write (from libssl) has no address for it:
        // the attach is refused and nothing else is tried.
        match attach(ebpf, exe, true) {
            Ok(n) => {
                self.coverage.libraries += 1;
                self.static_exes.insert(key);
                let name = std::fs::read_link(exe).map(|p| p.display().to_string());
                let name = name.unwrap_or_else(|_| exe.display().to_string());
                log.push(format!(
                    "TLS: uprobes on {name} (OpenSSL linked in, {n} functions, seen in pid {pid})"
                ));
                true
            }
            Err(_) => {
                if !exe.exists() {
                    self.exes_done.remove(&key); // gone before it could be read: another time
                }
                false
            }
        }
    }
}

impl Default for TlsAttacher {
    fn default() -> Self {
        TlsAttacher::new()
    }
}

/// Attaches the entry and return probes to each OpenSSL function `target` exports;
/// returns how many functions. `first_decides`: if the first (SSL_write) is not there,
/// nothing else is tried (an executable, most of which have no OpenSSL).
fn attach(ebpf: &mut Ebpf, target: &Path, first_decides: bool) -> Result<usize, String> {
    let mut attached = 0;
    let mut last_error = None;
    for (program, function) in ENTRIES {
        // The return probe first: one without its entry finds no call and does nothing,
        // while an entry without its return would leave every call it records behind.
        let ret = uprobe(ebpf, RETURN).map_err(|(n, e)| format!("{n}: {e}"))?;
        let attempt = match ret.attach(function, target, UProbeScope::AllProcesses) {
            Ok(_) => uprobe(ebpf, program)
                .map_err(|(_, e)| e)
                .and_then(|entry| entry.attach(function, target, UProbeScope::AllProcesses)),
            Err(e) => Err(e),
        };
        if let Err(e) = attempt {
            if first_decides && attached == 0 {
                return Err(format!("{function}: {e}"));
            }
            // OpenSSL 1.1.0 has no *_ex functions: the others still count.
            last_error = Some(format!("{function}: {e}"));
            continue;
        }
        attached += 1;
    }
    if attached > 0 {
        // Without it a freed SSL*'s address, reused by a later connection, names the old
        // socket until a call with a syscall in it names the new one. (Every OpenSSL
        // exports it; the calls above stay attached either way.)
        let (program, function) = FREE;
        let free = uprobe(ebpf, program).map_err(|(n, e)| format!("{n}: {e}"))?;
        if let Err(e) = free.attach(function, target, UProbeScope::AllProcesses) {
            log::warn!("TLS: {function} not attached in {}: {e}", target.display());
        }
    }
    match (attached, last_error) {
        (0, Some(e)) => Err(e),
        (n, _) => Ok(n),
    }
}

/// How long ago process `pid` started: its start time (field 22 of its stat, in clock
/// ticks since boot) against the host's uptime, read once per scan into `uptime`. None
/// when either cannot be read.
fn process_age(proc_root: &Path, pid: u32, uptime: &mut Option<f64>) -> Option<Duration> {
    let stat = std::fs::read_to_string(proc_root.join(format!("{pid}/stat"))).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let start_ticks: u64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    if uptime.is_none() {
        let text = std::fs::read_to_string(proc_root.join("uptime")).ok()?;
        *uptime = text.split_whitespace().next()?.parse().ok();
    }
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    let started = start_ticks as f64 / ticks_per_second as f64;
    Some(Duration::from_secs_f64(
        (uptime.as_ref()? - started).max(0.0),
    ))
}

/// The OpenSSL libraries (`libssl.so.3`, `libssl.so.1.1`, ...) mapped in a maps file, each
/// file once.
fn libssl_mappings(maps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_), Some(_), Some(_), Some(dev), Some(inode), Some(path)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if fields.next().is_some() {
            continue; // "(deleted)" or a path with spaces: not a file we can open
        }
        let name = path.rsplit('/').next().unwrap_or(path);
        // libssl.so.3, and the copies Python wheels vendor (libssl-1a2b3c4d.so.3); not
        // NSS's libssl3.so, which is another library.
        let openssl =
            name.starts_with("libssl.so") || (name.starts_with("libssl-") && name.contains(".so"));
        if !openssl {
            continue;
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 || out.iter().any(|m| m.dev == dev && m.inode == inode) {
            continue;
        }
        out.push(Mapping {
            dev: dev.to_string(),
            inode,
            path: path.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_age_comes_from_its_start_time() {
        let root = std::env::temp_dir().join(format!("sonde-tls-age-{}", std::process::id()));
        std::fs::create_dir_all(root.join("7")).unwrap();
        // SAFETY: sysconf only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        // A command name with a space and a parenthesis; started 1000 s after boot.
        let stat = format!(
            "7 (my (app) x) S 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {} 0 0",
            1000 * hz
        );
        std::fs::write(root.join("7/stat"), stat).unwrap();
        std::fs::write(root.join("uptime"), "1600.25 3000.00\n").unwrap();
        let mut uptime = None;
        let age = process_age(&root, 7, &mut uptime).unwrap();
        assert_eq!(age.as_millis(), 600_250);
        assert_eq!(uptime, Some(1600.25));
        // Unreadable: no age (the process then counts as new).
        assert_eq!(process_age(&root, 8, &mut uptime), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn libssl_files_from_maps_each_once() {
        let maps = "\
7f1c0000-7f1c1000 r--p 00000000 08:01 1311 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c1000-7f1c2000 r-xp 00001000 08:01 1311 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c3000-7f1c4000 r-xp 00001000 08:01 1400 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f1c5000-7f1c6000 r-xp 00001000 00:2a 77 /opt/app/lib/libssl.so.1.1
7f1c6000-7f1c7000 r-xp 00001000 00:2a 78 /venv/psycopg2_binary.libs/libssl-0a1b2c3d.so.3
7f1c6000-7f1c7000 r-xp 00001000 08:01 79 /usr/lib/x86_64-linux-gnu/libssl3.so
7f1c7000-7f1c8000 r-xp 00001000 08:01 1500 /tmp/libssl.so.3 (deleted)
7ffd0000-7ffd1000 rw-p 00000000 00:00 0 [stack]
";
        let found = libssl_mappings(maps);
        assert_eq!(
            found,
            vec![
                Mapping {
                    dev: "08:01".into(),
                    inode: 1311,
                    path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into()
                },
                Mapping {
                    dev: "00:2a".into(),
                    inode: 77,
                    path: "/opt/app/lib/libssl.so.1.1".into()
                },
                Mapping {
                    dev: "00:2a".into(),
                    inode: 78,
                    path: "/venv/psycopg2_binary.libs/libssl-0a1b2c3d.so.3".into()
                },
            ]
        );
    }
}
