//! The roll-out material under deploy/: the systemd unit passes `systemd-analyze verify`
//! and its install script lays out what the unit expects.
use std::process::Command;

use sonde_tests::*;

/// The unit as shipped, with ExecStart pointing at the binary just built (verify checks
/// that the program exists).
#[test]
fn systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(workspace_root().join("deploy/systemd/sonde.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/sonde --config /etc/sonde/sonde.yaml"));
    assert!(unit.contains("Type=notify"));
    for cap in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
    ] {
        assert!(unit.contains(cap), "{cap}");
    }
    let dir = tempdir("deploy-systemd");
    let path = dir.join("sonde.service");
    let bin = sonde_bin().display().to_string();
    std::fs::write(&path, unit.replace("/usr/local/bin/sonde", &bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let about_ours: Vec<&str> = err.lines().filter(|l| l.contains("sonde")).collect();
    assert!(about_ours.is_empty(), "{err}");
}

#[test]
fn install_script_lays_out_binary_unit_and_configuration() {
    let root = tempdir("deploy-install");
    let script = workspace_root().join("deploy/systemd/install.sh");
    let install = || run(Command::new(&script).arg(sonde_bin()).env("DESTDIR", &root));
    let out = install();
    assert!(out.contains("installed /etc/sonde/sonde.yaml"), "{out}");
    let bin = root.join("usr/local/bin/sonde");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(sonde_bin()).unwrap()
    );
    assert!(root.join("etc/systemd/system/sonde.service").exists());
    assert!(root.join("etc/sonde/sonde.env").exists());
    // The shipped configuration is one sonde accepts.
    let config = root.join("etc/sonde/sonde.yaml");
    let printed = run(Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("--print-config"));
    assert!(printed.contains("metrics_addr: 0.0.0.0:9464"), "{printed}");
    // A second install keeps an edited configuration.
    std::fs::write(&config, "quiet: true\n").unwrap();
    assert!(install().contains("kept the existing"));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "quiet: true\n");
}
