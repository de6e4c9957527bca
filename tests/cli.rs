//! The command-line contract: help, privileges, signals.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sonde_tests::*;

#[test]
fn help_documents_every_flag_and_variable() {
    let out = run(Command::new(sonde_bin()).arg("--help"));
    for needle in [
        "--metrics-addr",
        "SONDE_METRICS_ADDR",
        "127.0.0.1:9464",
        "--print-spans",
        "SONDE_PRINT_SPANS",
        "--quiet",
        "SONDE_QUIET",
        "--summary-interval",
        "--conn-idle-timeout",
        "--config",
        "SONDE_CONFIG",
        "--print-config",
        "--protocols",
        "SONDE_PROTOCOLS",
    ] {
        assert!(out.contains(needle), "--help lacks {needle}:\n{out}");
    }
}

#[test]
fn without_privileges_it_exits_non_zero_naming_what_is_missing() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(sonde_bin())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("root"),
        "{err}"
    );
}

#[test]
fn bad_flag_values_are_rejected_with_the_flag_name() {
    let out = Command::new(sonde_bin())
        .args(["--metrics-addr", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-addr"));
    for (flag, value, reason) in [
        ("--include", "port=http", "port `http` is not a number"),
        ("--http-route", "web=users", "does not start with `/`"),
        ("--payload-bytes", "10", "64..=4096"),
    ] {
        let out = Command::new(sonde_bin())
            .args([flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag) && err.contains(reason),
            "{flag} {value}: {err}"
        );
    }
}

/// Defaults, then the file, then SONDE_* variables, then flags; `--print-config` shows the
/// result (without needing privileges).
#[test]
fn configuration_layers_file_env_and_flags() {
    let dir = tempdir("cli-config");
    let file = dir.join("sonde.yaml");
    std::fs::write(
        &file,
        "metrics_addr: 0.0.0.0:9100\nquiet: true\nsummary_interval: 30\nring_buffer_mib: 16\n\
         otlp: off\ntraces_sampler: traceidratio\ntraces_sampler_arg: 0.1\n\
         exclude: [port=22]\nhttp_routes: ['web=/users/{id}']\n",
    )
    .unwrap();
    let out = run(Command::new(sonde_bin())
        .env("OTEL_TRACES_SAMPLER_ARG", "0.5")
        .env("SONDE_SUMMARY_INTERVAL", "20")
        .env("SONDE_RING_BUFFER_MIB", "32")
        .env("SONDE_SERVICE_NAMES", "exe=nginx:gateway,port=6379:queue")
        .arg("--config")
        .arg(&file)
        .args(["--ring-buffer-mib", "64", "--payload-bytes", "512"])
        .arg("--print-config"));
    let expected = "metrics_addr: 0.0.0.0:9100\n\
                    print_spans: null\n\
                    quiet: true\n\
                    protocols:\n\
                    - http\n\
                    - redis\n\
                    - postgresql\n\
                    include: []\n\
                    exclude:\n\
                    - port=22\n\
                    service_names:\n\
                    - exe=nginx:gateway\n\
                    - port=6379:queue\n\
                    http_routes:\n\
                    - web=/users/{id}\n\
                    genai_providers: []\n\
                    payload_bytes: 512\n\
                    tls: true\n\
                    inject_traceparent: false\n\
                    gpu: true\n\
                    gpu_interval: 10\n\
                    gpu_dcgm_names: false\n\
                    kubernetes_api: null\n\
                    kubernetes_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token\n\
                    kubernetes_ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt\n\
                    node_name: null\n\
                    summary_interval: 20\n\
                    conn_idle_timeout: 300\n\
                    ring_buffer_mib: 64\n\
                    prometheus: true\n\
                    otlp: off\n\
                    otlp_endpoint: null\n\
                    otlp_protocol: http/protobuf\n\
                    metric_export_interval: 60000\n\
                    traces_sampler: traceidratio\n\
                    traces_sampler_arg: 0.5\n\
                    max_label_sets: 2000\n\
                    resource_command_line: false\n\
                    single_instance: true\n";
    assert_eq!(out, expected);
}

#[test]
fn bad_configuration_files_name_the_key_value_and_reason() {
    let dir = tempdir("cli-bad-config");
    let cases = [
        ("metrics_adr: 1.2.3.4:5\n", "unknown field `metrics_adr`"),
        (
            "ring_buffer_mib: 3\n",
            "key `ring_buffer_mib`: value 3 is invalid: 3 is not a power of two",
        ),
        (
            "conn_idle_timeout: 0\n",
            "key `conn_idle_timeout`: value 0 is invalid",
        ),
        (
            "exclude: [pid=1]\n",
            "key `exclude`: value `pid=1` is invalid: unknown selector `pid`",
        ),
        (
            "service_names: ['port=6379']\n",
            "key `service_names`: value `port=6379` is invalid: `port=6379` is not SELECTOR:NAME",
        ),
        (
            "http_routes: ['web=/a/*/b']\n",
            "key `http_routes`: value `web=/a/*/b` is invalid: route `/a/*/b`: `*` may only be the last segment",
        ),
        (
            "payload_bytes: 8192\n",
            "key `payload_bytes`: value 8192 is invalid: must be between 64 and 4096",
        ),
    ];
    for (i, (yaml, message)) in cases.iter().enumerate() {
        let file = dir.join(format!("bad{i}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(sonde_bin())
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(message) && err.contains("bad"),
            "{yaml}: {err}"
        );
    }
}

#[test]
fn kubernetes_settings_name_the_key_and_reason() {
    let dir = tempdir("cli-k8s");
    let ca = workspace_root().join("tests/fixtures/k8s/test-ca.crt");
    let cases = [
        (
            "kubernetes_api: in-cluster\n".to_string(),
            "key `kubernetes_api`: `in-cluster` needs KUBERNETES_SERVICE_HOST".to_string(),
        ),
        (
            "kubernetes_api: ftp://10.0.0.1\n".to_string(),
            "key `kubernetes_api`: `ftp://10.0.0.1` is not in-cluster, https://HOST[:PORT] or http://HOST[:PORT]".to_string(),
        ),
        (
            "kubernetes_api: https://10.0.0.1\nkubernetes_ca_file: /nonexistent/ca.crt\n"
                .to_string(),
            "key `kubernetes_ca_file`: CA file /nonexistent/ca.crt: No such file or directory"
                .to_string(),
        ),
        (
            format!(
                "kubernetes_api: https://10.0.0.1\nkubernetes_ca_file: {}\n\
                 kubernetes_token_file: /nonexistent/token\n",
                ca.display()
            ),
            "key `kubernetes_token_file`: cannot read the token file /nonexistent/token"
                .to_string(),
        ),
    ];
    for (i, (yaml, message)) in cases.iter().enumerate() {
        let file = dir.join(format!("k8s{i}.yaml"));
        std::fs::write(&file, format!("node_name: node-a\n{yaml}")).unwrap();
        let out = Command::new(sonde_bin())
            .arg("--config")
            .arg(&file)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{yaml}: {err}");
    }
}

#[test]
fn sigterm_detaches_and_exits_zero_within_two_seconds() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(sonde_bin());
    cmd.args(["--quiet", "--metrics-addr", &addr])
        .stdout(Stdio::null());
    let mut child = spawn_owned(cmd);
    wait_http_ok(&addr, "/readyz", 60);
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));
    let links_before = bpf_prog_count();
    assert!(
        links_before >= 1,
        "no sonde program loaded while sonde runs"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "sonde did not exit within 2 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // The kernel frees a released program asynchronously (after an RCU grace period).
    let start = Instant::now();
    while bpf_prog_count() >= links_before && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        bpf_prog_count(),
        links_before - 1,
        "the program was not detached and unloaded"
    );
}

/// sonde programs currently loaded in the kernel (bpftool); one goes away on detach.
fn bpf_prog_count() -> usize {
    let out = run(Command::new("bpftool").args(["prog", "show"]));
    out.lines()
        .filter(|l| l.contains("name sonde_sys_exit"))
        .count()
}

/// Without an NVIDIA driver (as in CI) GPU statistics turn themselves off in one info
/// line and sonde runs as usual: no warning, no error, no GPU series. With a driver, one
/// line names the GPUs instead.
#[test]
fn gpu_statistics_without_a_driver_are_off_in_one_line() {
    let nvml_present = Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q 'libnvidia-ml.so.1 '"])
        .status()
        .unwrap()
        .success();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(sonde_bin());
    cmd.args(["--quiet", "--metrics-addr", &addr, "--gpu-interval", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = spawn_owned(cmd);
    wait_http_ok(&addr, "/readyz", 60);
    // Three GPU intervals.
    std::thread::sleep(Duration::from_millis(3200));
    let (status, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stderr);
    let gpu_lines: Vec<&str> = log.lines().filter(|l| l.contains("GPU")).collect();
    assert_eq!(gpu_lines.len(), 1, "{log}");
    if nvml_present {
        assert!(gpu_lines[0].contains("GPU statistics every 1 s"), "{log}");
        assert!(metrics.contains("hw_gpu_memory_usage_bytes{"));
    } else {
        assert!(
            gpu_lines[0].contains("INFO")
                && gpu_lines[0].contains("GPU statistics off: NVML unavailable"),
            "{log}"
        );
        assert!(!metrics.contains("hw_gpu") && !metrics.contains("sonde_gpu"));
        assert!(metrics.contains("sonde_events_received_total"));
    }
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
}

/// Under systemd (`Type=notify`), sonde says READY=1 once its probes are attached and
/// STOPPING=1 on SIGTERM, through the datagram socket NOTIFY_SOCKET names.
#[test]
fn tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let path = tempdir("cli-notify").join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(sonde_bin());
    cmd.args(["--quiet", "--metrics-addr", &addr])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null());
    let mut child = spawn_owned(cmd);
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means ready: the probes are attached and /readyz says so.
    assert_eq!(http_get(&addr, "/readyz").map(|r| r.0), Some(200));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
