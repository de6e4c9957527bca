//! One sonde per host: a second one refuses to start (it would export everything twice)
//! unless `--single-instance false` allows it, and a restart (the old one still stopping)
//! is not refused. Its own test binary: no other test's sonde runs meanwhile.
use std::process::Command;
use std::time::{Duration, Instant};

use sonde_tests::*;

const GUARD_ON: (&str, &str) = ("SONDE_SINGLE_INSTANCE", "true");

#[test]
fn a_second_sonde_refuses_to_start_unless_allowed() {
    let _serial = serial();
    let first = Sonde::start_with_env(&[], &[GUARD_ON]);

    let start = Instant::now();
    let out = Command::new(sonde_bin())
        .args([
            "--quiet",
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env(GUARD_ON.0, GUARD_ON.1)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "another sonde is running on this host (pid {}",
            first.pid
        )) && err.contains("--single-instance false"),
        "the refusal names the running sonde and the setting: {err}"
    );
    // It gave the running one time to stop, as a restart would need.
    assert!(
        start.elapsed() >= Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    // Allowed explicitly: both run.
    let second = Sonde::start_with_env(&["--single-instance", "false"], &[]);
    assert!(second.metrics().0.contains("sonde_events_received_total"));
    drop(second);

    // A restart: the new sonde starts while the old one still runs, and the old one is
    // stopped two seconds later: the new one waits for it instead of refusing.
    let pid = first.pid as i32;
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: kill(2) on our own child, not reaped before `first` is dropped below.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    });
    let restarted = Sonde::start_with_env(&[], &[GUARD_ON]);
    stopper.join().unwrap();
    assert!(
        restarted.logs().contains(&format!(
            "another sonde (pid {pid}) holds eBPF programs: waiting"
        )),
        "{}",
        restarted.logs()
    );
    drop(first);
}

/// Two sondes started at the same moment (a DaemonSet's and a unit's, say) both find no
/// other sonde holding programs at their first look: once both hold theirs, the younger
/// exits with the same message, and the older keeps running.
#[test]
fn of_two_sondes_started_at_once_exactly_one_runs() {
    let _serial = serial();
    let start = || {
        let mut cmd = Command::new(sonde_bin());
        cmd.args([
            "--quiet",
            "--metrics-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .env(GUARD_ON.0, GUARD_ON.1)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        // Owned: a failed run leaves no sonde behind.
        spawn_owned(cmd)
    };
    let mut sondes = [start(), start()];
    let pids = [sondes[0].id(), sondes[1].id()];
    let begun = Instant::now();
    let gone = loop {
        let exited: Vec<usize> = (0..2)
            .filter(|&i| sondes[i].try_wait().unwrap().is_some())
            .collect();
        if !exited.is_empty() || begun.elapsed() > Duration::from_secs(30) {
            break exited;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The one still running keeps running.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(gone.len(), 1, "exactly one of the two exits");
    let (quit, kept) = (gone[0], 1 - gone[0]);
    assert!(
        sondes[kept].try_wait().unwrap().is_none(),
        "the other keeps running"
    );
    let out = exit_and_stderr(&mut sondes[quit]);
    assert_eq!(out.0, Some(1), "{}", out.1);
    assert!(
        out.1.contains(&format!(
            "another sonde is running on this host (pid {}",
            pids[kept]
        )),
        "{}",
        out.1
    );
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pids[kept] as i32, libc::SIGTERM) };
    assert!(sondes[kept].wait().unwrap().success());
}

/// The exit code and stderr of a child that has exited.
fn exit_and_stderr(child: &mut std::process::Child) -> (Option<i32>, String) {
    let status = child.wait().unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    (status.code(), err)
}
