//! The roll-out material under deploy/: the systemd unit passes `systemd-analyze verify`
//! and its install script lays out what the unit expects.
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

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

fn prometheus_dir() -> std::path::PathBuf {
    workspace_root().join("deploy/prometheus")
}

#[test]
fn prometheus_rules_check_and_their_unit_tests_pass() {
    let dir = prometheus_dir();
    let out = run(Command::new("promtool")
        .args(["check", "rules", "sonde-rules.yaml"])
        .current_dir(&dir));
    assert!(out.contains("SUCCESS: 37 rules found"), "{out}");
    let out = run(Command::new("promtool")
        .args(["test", "rules", "sonde-rules.test.yaml"])
        .current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every expression of the rules, with the names recording rules define.
fn rule_expressions() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(prometheus_dir().join("sonde-rules.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let (mut exprs, mut recorded) = (Vec::new(), Vec::new());
    for group in doc["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_string());
            if let Some(r) = rule["record"].as_str() {
                recorded.push(r.to_string());
            }
        }
    }
    (exprs, recorded)
}

/// Every panel query of the Grafana dashboards, and the (metric, label) of every
/// `label_values` variable.
fn dashboard_queries() -> (Vec<String>, Vec<(String, String)>) {
    let (mut exprs, mut variables) = (Vec::new(), Vec::new());
    let dir = workspace_root().join("deploy/grafana");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    files.sort_by_key(|f| f.path());
    assert_eq!(
        files.len(),
        5,
        "services, databases, GPUs, health, LLM calls"
    );
    for f in files {
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.path()).unwrap()).unwrap();
        assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS", "{:?}", f.path());
        for panel in d["panels"].as_array().unwrap() {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}");
            for t in panel["targets"].as_array().unwrap() {
                exprs.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            let q = v["definition"].as_str().unwrap();
            let args = q
                .strip_prefix("label_values(")
                .unwrap()
                .trim_end_matches(')');
            let (metric, label) = args.split_once(',').unwrap();
            variables.push((metric.trim().to_string(), label.trim().to_string()));
        }
    }
    (exprs, variables)
}

/// What sonde's /metrics holds for GPUs: the real encoder fed by the fake NVML (CI has no
/// GPU), as with `gpu_dcgm_names: true`.
fn gpu_exposition() -> String {
    use sonde::gpu::fake::{FakeGpu, FakeNvml};
    let mut gpu = FakeGpu::h100("GPU-5c3b3fa4-2b6e-7c4d-a1e0-96e2f3a1b7c9");
    gpu.processes = vec![(std::process::id(), Some(1 << 30))];
    let fake = FakeNvml::new(vec![gpu]);
    fake.xids.lock().unwrap().push((0, 79));
    let mut collector =
        sonde::gpu::Collector::new(Box::new(fake), Default::default(), "h".into(), true).unwrap();
    let metrics = sonde::telemetry::metrics::Metrics::default();
    *metrics.gpu.lock().unwrap() = Arc::new(collector.tick(Duration::from_secs(10)));
    sonde::export::prometheus::encode(&metrics)
}

/// The rules and the dashboards name only series and labels sonde exports: a real scrape
/// of a sonde that saw HTTP (200 and 500), LLM, Redis and PostgreSQL traffic (errors
/// included), plus the GPU series.
#[test]
fn rules_and_dashboards_name_only_metrics_and_labels_sonde_exports() {
    let port = free_port();
    let _nginx = Nginx::start(
        "deploy-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location /fail { return 500; }\nlocation / { return 200 \"ok\\n\"; }",
    );
    let redis = Redis::start("deploy-redis");
    let pg = Postgres::start("deploy-postgres", &[]);
    let sonde = Sonde::start();
    for path in ["/", "/fail"] {
        run(Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}{path}")));
    }
    // A malformed request (a header without a colon): nginx answers 400, sonde counts a
    // parse error.
    run(Command::new("bash").arg("-c").arg(format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET / HTTP/1.1\\r\\nBad Header\\r\\n\\r\\n' >&3; cat <&3 >/dev/null"
    )));
    redis.cli(&["SET", "deploy:k", "v"]);
    redis.cli(&["LPUSH", "deploy:k", "x"]); // WRONGTYPE
    pg.psql("postgres", "SELECT 1");
    let _ = pg
        .client("psql")
        .args(["-d", "postgres", "-c", "SELECT nope"])
        .output();
    // LLM calls, both sides: the openai SDK against the wire-format server of the LLM tests.
    let llm_port = free_port();
    let mut llm_server = Command::new("python3");
    llm_server
        .arg(workspace_root().join("tests/llm/fake_llm.py"))
        .arg(llm_port.to_string())
        .stdout(std::process::Stdio::null());
    std::mem::forget(spawn_owned(llm_server));
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", llm_port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fake LLM server"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run(Command::new("python3")
        .arg(workspace_root().join("tests/llm/openai_client.py"))
        .arg(format!("http://127.0.0.1:{llm_port}/v1")));
    let count = "db_client_operation_duration_seconds_count";
    let start = std::time::Instant::now();
    let mut scrape = sonde.metrics();
    while (scrape.sum(count, &[("db_system_name", "postgresql")]) < 2.0
        || scrape.sum(count, &[("db_system_name", "redis")]) < 2.0
        || scrape.sum("http_server_request_duration_seconds_count", &[]) < 2.0
        || scrape.sum("sonde_parse_errors_total", &[("protocol", "http")]) < 1.0
        || scrape.sum("gen_ai_server_time_per_output_token_seconds_count", &[]) < 1.0
        || scrape.sum("gen_ai_client_operation_duration_seconds_count", &[]) < 9.0)
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(200));
        scrape = sonde.metrics();
    }
    let text = format!("{}\n{}", scrape.0, gpu_exposition());
    let (metrics, mut labels) = promql::exposition_names(&text);
    // Added by Prometheus to every series it scrapes.
    labels.extend(["job".to_string(), "instance".to_string()]);
    let (mut exprs, recorded) = rule_expressions();
    let (panel_exprs, variables) = dashboard_queries();
    exprs.extend(panel_exprs);
    let mut unknown = Vec::new();
    for (m, l) in variables {
        if !metrics.contains(&m) || !labels.contains(&l) {
            unknown.push(format!("variable label_values({m}, {l})"));
        }
    }
    for expr in &exprs {
        let (used_metrics, used_labels) = promql::names(expr);
        for m in used_metrics {
            if !(metrics.contains(&m) || recorded.contains(&m) || m == "up") {
                unknown.push(format!("metric {m} in {expr}"));
            }
        }
        for l in used_labels {
            if !labels.contains(&l) {
                unknown.push(format!("label {l} in {expr}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by sonde:\n{}",
        unknown.join("\n")
    );
    // The check itself can fail: a name sonde does not export is caught.
    let (m, _) = promql::names("dcgm_fb_used_bytes / dcgm_fb_total_bytes");
    assert!(m.iter().all(|m| !metrics.contains(m)));
}

/// A real Prometheus loads the rules and scrapes a running sonde; while nginx answers
/// 500s the 5xx-ratio alert goes pending (its `for: 5m` keeps it from firing in a test).
#[test]
fn prometheus_scrapes_sonde_and_the_5xx_alert_goes_pending() {
    let port = free_port();
    let _nginx = Nginx::start(
        "deploy-prom-nginx",
        &[format!("127.0.0.1:{port}")],
        port,
        "location /fail { return 503; }\nlocation / { return 200 \"ok\\n\"; }",
    );
    let sonde = Sonde::start();
    let dir = tempdir("deploy-prometheus");
    std::fs::copy(
        prometheus_dir().join("sonde-rules.yaml"),
        dir.join("sonde-rules.yaml"),
    )
    .unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [sonde-rules.yaml]\n\
         scrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: ['{}']\n",
        sonde.metrics_addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        dir.join("data").display()
    ))
    .arg(format!("--web.listen-address={web}"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut prometheus = spawn_owned(cmd);
    wait_http_ok(&web, "/-/ready", 60);
    let outcome = wait_for_pending_5xx_alert(&web, port);
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    if let Err(alerts) = outcome {
        panic!("ServiceHigh5xxRatio never went pending for nginx; last /api/v1/alerts: {alerts}");
    }
}

/// Sends 200s and 503s to nginx until Prometheus shows the alert pending (Ok) or 90 s
/// pass (Err with the last alerts answer).
fn wait_for_pending_5xx_alert(web: &str, port: u16) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut alerts = String::new();
    while start.elapsed() < Duration::from_secs(90) {
        for path in ["/", "/fail"] {
            run(Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{port}{path}")));
        }
        alerts = http_get(web, "/api/v1/alerts")
            .map(|r| r.1)
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&alerts).unwrap_or_default();
        let pending = v["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["labels"]["alertname"] == "ServiceHigh5xxRatio"
                    && x["labels"]["service_name"] == "nginx"
                    && x["state"] == "pending"
            })
        });
        if pending {
            // The scrape it came from is sonde's, with the job the rules expect.
            let up = http_get(web, "/api/v1/query?query=up%7Bjob%3D%22sonde%22%7D")
                .unwrap()
                .1;
            assert!(up.contains("\"value\":[") && up.contains("\"1\"]"), "{up}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(alerts)
}

/// The collector example is valid YAML whose pipelines use only components it defines,
/// limit memory first, batch last, and delete the sensitive attributes.
#[test]
fn otel_collector_example_is_consistent() {
    let path = workspace_root().join("deploy/otel-collector/config.yaml");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pipelines = doc["service"]["pipelines"].as_mapping().unwrap();
    assert_eq!(pipelines.len(), 2, "traces and metrics");
    for (name, p) in pipelines {
        for kind in ["receivers", "processors", "exporters"] {
            for c in p[kind].as_sequence().unwrap() {
                assert!(
                    !doc[kind][c.as_str().unwrap()].is_null(),
                    "{name:?}: {kind} {c:?} undefined"
                );
            }
        }
        let processors: Vec<&str> = p["processors"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(processors.first(), Some(&"memory_limiter"), "{name:?}");
        assert_eq!(processors.last(), Some(&"batch"), "{name:?}");
        assert!(
            processors.contains(&"attributes/drop-sensitive"),
            "{name:?}"
        );
    }
    let deleted: Vec<&str> = doc["processors"]["attributes/drop-sensitive"]["actions"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "delete")
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    for key in ["api_key", "user_email", "token", "authorization"] {
        assert!(deleted.contains(&key), "{key}");
    }
    assert!(!doc["exporters"]["prometheus"].is_null());
    assert_eq!(
        doc["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        "0.0.0.0:4318"
    );
}

fn kubernetes_validate(path: &std::path::Path) {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(path)
        .output()
        .expect("kubernetes-validate (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "{}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The manifests validate against the Kubernetes schemas (strict: no unknown fields),
/// the least-privilege patch included, and hold what a DaemonSet of sonde needs.
#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let dir = workspace_root().join("deploy/kubernetes");
    let kustomization: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    for r in kustomization["resources"].as_sequence().unwrap() {
        kubernetes_validate(&dir.join(r.as_str().unwrap()));
    }
    let ds: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap())
            .unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        pod["tolerations"][0]["operator"], "Exists",
        "GPU nodes included"
    );
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(
        pod["containers"].as_array().map(Vec::len),
        Some(1),
        "sonde alone: it holds the ServiceAccount credentials itself"
    );
    let c = &pod["containers"][0];
    // The image is named by kustomize's `images:` (the placeholder the docs tell users to
    // set), at the version being built.
    assert_eq!(c["image"], "sonde");
    let image = &kustomization["images"][0];
    assert_eq!(image["name"].as_str(), Some("sonde"));
    assert!(image["newName"].as_str().unwrap().ends_with("/sonde"));
    assert_eq!(image["newTag"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "SONDE_KUBERNETES_API" && e["value"] == "in-cluster"),
        "pod metadata through the in-cluster ServiceAccount"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert!(c["resources"]["limits"]["memory"].is_string());
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for m in ["/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup"] {
        assert!(mounts.contains(&m), "{m}");
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");

    // The least-privilege variant: the JSON patch applied, then validated.
    let patch: Vec<serde_json::Value> = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("least-privilege/capabilities.yaml")).unwrap(),
    )
    .unwrap();
    let mut least = ds.clone();
    for op in &patch {
        assert_eq!(op["op"], "replace");
        *least.pointer_mut(op["path"].as_str().unwrap()).unwrap() = op["value"].clone();
    }
    let sc = &least["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"])
    );
    let patched = tempdir("deploy-k8s").join("least-privilege-daemonset.json");
    std::fs::write(&patched, least.to_string()).unwrap();
    kubernetes_validate(&patched);

    // The Prometheus Operator's copy of the rules is the rules file.
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("prometheus-operator/prometheusrule.yaml")).unwrap(),
    )
    .unwrap();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(prometheus_dir().join("sonde-rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml drifted"
    );
    let monitor: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("prometheus-operator/podmonitor.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let name = "app.kubernetes.io/name";
    assert_eq!(monitor["spec"]["selector"]["matchLabels"][name], "sonde");
    assert_eq!(ds["spec"]["selector"]["matchLabels"][name], "sonde");
}
