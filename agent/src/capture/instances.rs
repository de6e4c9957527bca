//! One sonde per host: another sonde that already holds eBPF programs would make every span
//! and metric twice. It is found through /proc (a process named `sonde`, other than this
//! one, with an open `bpf-prog` file descriptor), which needs no more privilege than sonde
//! already has and sees a sonde in any container when the host's PID namespace is shared
//! (the DaemonSet's `hostPID: true`).
use std::path::Path;

use crate::identity::process::start_time_in;

/// Another running sonde: its pid and how many eBPF programs it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherSonde {
    pub pid: u32,
    pub programs: usize,
}

/// The first other sonde process under `proc` (normally `/proc`) that holds eBPF programs;
/// with `older_only`, only one that started before this one (by start time, then pid): of
/// two sondes started at the same moment, both past the first look, the younger gives way
/// once both hold their programs.
pub fn find_other_sonde(proc: &Path, own_pid: u32, older_only: bool) -> Option<OtherSonde> {
    let age = |pid: u32| (start_time_in(proc, pid).unwrap_or(u64::MAX), pid);
    let own_age = older_only.then(|| age(own_pid));
    let entries = std::fs::read_dir(proc).ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "sonde" {
            continue;
        }
        if own_age.is_some_and(|own| age(pid) >= own) {
            continue;
        }
        let programs = bpf_programs_held(&entry.path());
        if programs > 0 {
            return Some(OtherSonde { pid, programs });
        }
    }
    None
}

/// The number of open file descriptors of a process that are eBPF programs.
fn bpf_programs_held(process: &Path) -> usize {
    let Ok(fds) = std::fs::read_dir(process.join("fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-prog")
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc: pid 10 is this sonde, 11 a sonde holding programs, 12 a shell.
    #[test]
    fn finds_only_another_sonde_that_holds_programs() {
        let proc = std::env::temp_dir().join(format!("sonde-instances-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&proc);
        let process = |pid: u32, comm: &str, links: &[&str]| {
            let dir = proc.join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            // Started at tick 1000 + pid (field 22, counted from after the command name).
            let stat = format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {}",
                1000 + pid
            );
            std::fs::write(dir.join("stat"), stat).unwrap();
            for (fd, target) in links.iter().enumerate() {
                std::os::unix::fs::symlink(target, dir.join("fd").join(fd.to_string())).unwrap();
            }
        };
        process(10, "sonde", &["anon_inode:bpf-prog"]);
        process(12, "bash", &["anon_inode:bpf-prog"]);
        assert_eq!(
            find_other_sonde(&proc, 10, false),
            None,
            "itself and a shell"
        );
        process(11, "sonde", &["/dev/null", "anon_inode:bpf-map"]);
        assert_eq!(
            find_other_sonde(&proc, 10, false),
            None,
            "a sonde still starting"
        );
        process(
            13,
            "sonde",
            &["anon_inode:bpf-prog", "anon_inode:bpf-prog", "pipe:[1]"],
        );
        assert_eq!(
            find_other_sonde(&proc, 10, false),
            Some(OtherSonde {
                pid: 13,
                programs: 2
            })
        );
        // Only sondes older than this one: 13 is younger than 10, but not than 14.
        assert_eq!(find_other_sonde(&proc, 10, true), None);
        assert_eq!(
            find_other_sonde(&proc, 14, true),
            Some(OtherSonde {
                pid: 13,
                programs: 2
            })
        );
        let _ = std::fs::remove_dir_all(&proc);
    }
}
