//! One sonde per host: a second one refuses to start (it would export everything twice)
//! unless `--single-instance false` allows it, and a restart (the old one still stopping)
//! is not refused. Its own test binary: no other test's sonde runs meanwhile.
use std::process::Command;
use std::time::{Duration, Instant};

use sonde_tests::*;

const GUARD_ON: (&str, &str) = ("SONDE_SINGLE_INSTANCE", "true");

#[test]
fn a_second_sonde_refuses_to_start_unless_allowed() {
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
