//! The packages users roll out, as they run them: the OCI image of `cargo xtask image`, run
//! by podman with what the DaemonSet gives its container (and with the least-privilege
//! patch's capabilities alone), and the .deb of `cargo xtask deb`, installed with dpkg.
//! `cargo xtask test` builds both before the tests run.
use std::process::{Command, Stdio};

use serde_json::Value;
use sonde_tests::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What the .deb test appends to the installed configuration, as an administrator would.
const EDIT: &str = "# edited by the administrator\n";

fn built(path: &str) -> std::path::PathBuf {
    let p = workspace_root().join(path);
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask test` builds it (or `cargo xtask image` / `cargo xtask deb`)",
        p.display()
    );
    p
}

/// The commit being tested: the packages must have been built from it (a stale archive in
/// target/ from an earlier build must not pass for this one).
fn head_commit() -> String {
    run(Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["rev-parse", "HEAD"]))
    .trim()
    .to_string()
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The DaemonSet's pod spec, with the least-privilege patch's securityContext when asked.
fn pod_spec(least_privilege: bool) -> Value {
    let mut spec = yaml("deploy/kubernetes/daemonset.yaml")["spec"]["template"]["spec"].clone();
    if least_privilege {
        let patch = yaml("deploy/kubernetes/least-privilege/capabilities.yaml");
        let op = &patch[0];
        assert_eq!(op["op"], "replace");
        assert_eq!(
            op["path"],
            "/spec/template/spec/containers/0/securityContext"
        );
        spec["containers"][0]["securityContext"] = op["value"].clone();
    }
    spec
}

/// `podman run` arguments for the DaemonSet's container as Kubernetes would run it on a
/// node named `node`: host pid namespace, its volumes (the ConfigMap written to
/// `config_dir`), its privileges, its environment and args, its metrics port published on
/// `metrics_port`, and the image `image`.
fn podman_run(
    spec: &Value,
    name: &str,
    image: &str,
    config_dir: &std::path::Path,
    metrics_port: u16,
) -> Command {
    let container = &spec["containers"][0];
    let mut cmd = Command::new("podman");
    cmd.args(["run", "--rm", "--name", name]);
    // This sandbox, not the DaemonSet: root here lacks CAP_SYS_RESOURCE, so the container's
    // limits must not exceed the current ones (podman asks for more by default), and its
    // hybrid cgroup hierarchy is one crun refuses while runc accepts it.
    cmd.args([
        "--runtime",
        "runc",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ]);
    assert_eq!(
        spec["hostPID"], true,
        "the DaemonSet shares the host's pids"
    );
    cmd.arg("--pid=host");
    for port in container["ports"].as_array().unwrap() {
        let inside = port["containerPort"].as_u64().unwrap();
        cmd.args(["-p", &format!("127.0.0.1:{metrics_port}:{inside}")]);
    }
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        let source = if let Some(host) = volume["hostPath"]["path"].as_str() {
            host.to_string()
        } else if volume["configMap"].is_object() {
            // The ConfigMap's keys become files in the mounted directory.
            let map = yaml("deploy/kubernetes/configmap.yaml");
            for (key, text) in map["data"].as_object().unwrap() {
                std::fs::write(config_dir.join(key), text.as_str().unwrap()).unwrap();
            }
            config_dir.display().to_string()
        } else {
            panic!("a volume this test cannot stand in for: {volume}")
        };
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        cmd.args([
            "-v",
            &format!("{source}:{}{ro}", mount["mountPath"].as_str().unwrap()),
        ]);
    }
    let security = &container["securityContext"];
    if security["privileged"] == true {
        cmd.arg("--privileged");
    } else {
        for cap in security["capabilities"]["drop"].as_array().unwrap() {
            cmd.args(["--cap-drop", cap.as_str().unwrap()]);
        }
        for cap in security["capabilities"]["add"].as_array().unwrap() {
            cmd.args(["--cap-add", cap.as_str().unwrap()]);
        }
        if security["readOnlyRootFilesystem"] == true {
            cmd.arg("--read-only");
        }
        if security["allowPrivilegeEscalation"] == false {
            cmd.args(["--security-opt", "no-new-privileges"]);
        }
        if security["seccompProfile"]["type"] == "Unconfined" {
            cmd.args(["--security-opt", "seccomp=unconfined"]);
        }
        if security["appArmorProfile"]["type"] == "Unconfined" {
            cmd.args(["--security-opt", "apparmor=unconfined"]);
        }
    }
    let node = "rollout-node";
    for var in container["env"].as_array().unwrap() {
        let key = var["name"].as_str().unwrap();
        // No API server runs here (tests/kubernetes.rs covers pod metadata against one).
        if key == "SONDE_KUBERNETES_API" {
            continue;
        }
        let value = match var["value"].as_str() {
            Some(v) => v.replace("$(K8S_NODE_NAME)", node),
            None => {
                assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
                node.to_string()
            }
        };
        cmd.args(["--env", &format!("{key}={value}")]);
    }
    cmd.arg(image);
    for arg in container["args"].as_array().unwrap() {
        cmd.arg(arg.as_str().unwrap());
    }
    // The test reads the spans from the container's stdout.
    cmd.args(["--print-spans", "json"]);
    cmd
}

/// The image loaded into podman's store, once; its name.
fn loaded_image() -> &'static str {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let archive = built(&format!("target/image/sonde-{VERSION}.oci.tar"));
        let out = run(Command::new("podman")
            .args(["load", "--input"])
            .arg(&archive));
        let name = format!("localhost/sonde:{VERSION}");
        assert!(out.contains(&name), "{out}");
        // The image's labels and entrypoint, as the registry and the kubelet read them.
        let inspect = run(Command::new("podman").args(["image", "inspect", &name]));
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        let config = &inspect[0]["Config"];
        assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/bin/sonde"]));
        let labels = &config["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(
            labels["org.opencontainers.image.revision"],
            head_commit().as_str(),
            "the image is from an earlier build: run `cargo xtask image`"
        );
        assert!(labels["org.opencontainers.image.source"]
            .as_str()
            .unwrap()
            .starts_with("https://"));
        name
    })
}

/// Runs the image as the DaemonSet (or its least-privilege variant) runs it, then checks that
/// it sees a web server and a client on the host: exact spans, the host's pids, the service
/// names from the processes' environments.
fn image_observes_the_host(variant: &str, least_privilege: bool) {
    let image = loaded_image();
    let name = format!("sonde-rollout-{variant}-{}", std::process::id());
    let config_dir = tempdir(&format!("rollout-config-{variant}"));
    let metrics_port = free_port();
    let cmd = podman_run(
        &pod_spec(least_privilege),
        &name,
        image,
        &config_dir,
        metrics_port,
    );
    let sonde = Sonde::spawn(cmd, format!("127.0.0.1:{metrics_port}"));

    let www = tempdir(&format!("rollout-www-{variant}"));
    for i in 0..5 {
        std::fs::write(www.join(format!("{variant}-{i}.txt")), format!("{i}\n")).unwrap();
    }
    let port = free_port();
    let mut server = Command::new("python3");
    server
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&www)
        .env("OTEL_SERVICE_NAME", "rollout-web")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = spawn_owned(server);
    wait_port(port, "http.server");
    let script = format!(
        "import urllib.request, time\n\
         for i in range(5):\n    urllib.request.urlopen('http://127.0.0.1:{port}/{variant}-%d.txt' % i).read()\n\
         time.sleep(0.5)\n"
    );
    let client = spawn_owned({
        let mut c = Command::new("python3");
        c.args(["-c", &script])
            .env("OTEL_SERVICE_NAME", "rollout-client");
        c
    });
    let client_pid = client.id();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success());

    let ours = |s: &Value| path_starts(s, &format!("/{variant}-"));
    let servers = sonde.wait_spans(5, |s| kind(s) == "SERVER" && ours(s));
    let clients = sonde.wait_spans(5, |s| kind(s) == "CLIENT" && ours(s));
    assert_eq!(servers.len(), 5, "{servers:?}");
    assert_eq!(clients.len(), 5, "{clients:?}");
    for s in &servers {
        assert_eq!(s["process.pid"], server.id(), "the host's pid: {s}");
        assert_eq!(s["service.name"], "rollout-web", "{s}");
        assert_eq!(attr(s, "http.response.status_code").as_deref(), Some("200"));
    }
    for s in &clients {
        assert_eq!(s["process.pid"], client_pid, "the host's pid: {s}");
        assert_eq!(s["service.name"], "rollout-client", "{s}");
        assert_eq!(attr(s, "server.port"), Some(port.to_string()));
    }
    // /metrics through the published port, as Prometheus scrapes the pod.
    let metrics = sonde.metrics();
    assert!(
        metrics.sum(
            "http_server_request_duration_seconds_count",
            &[("service_name", "rollout-web")]
        ) == 5.0,
        "{}",
        metrics.0
    );
    let _ = server.kill();
    let _ = server.wait();
    // SIGTERM to podman, which passes it on: sonde stops and the container is removed.
    drop(sonde);
    let gone = Command::new("podman")
        .args(["container", "exists", &name])
        .status()
        .unwrap();
    assert!(!gone.success(), "container {name} still there");
}

#[test]
fn image_runs_as_the_privileged_daemonset_and_sees_the_host() {
    let _serial = serial();
    image_observes_the_host("privileged", false);
}

#[test]
fn image_runs_with_the_least_privilege_capabilities_alone() {
    let _serial = serial();
    image_observes_the_host("least-privilege", true);
}

fn dpkg(args: &[&str]) -> String {
    run(Command::new("dpkg")
        .args(args)
        .stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The .deb is lintian clean, installs the binary, the unit (enabled), the configuration as a
/// conffile, the manual page and the docs; the installed binary sees real traffic; an edited
/// configuration survives a reinstall; removal keeps the configuration and purge takes it.
#[test]
fn deb_installs_runs_keeps_its_configuration_and_purges() {
    let _serial = serial();
    let deb = built(&format!("target/deb/sonde_{VERSION}_amd64.deb"));
    let deb = deb.to_str().unwrap();
    let lintian = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&lintian.stdout);
    assert!(
        lintian.status.success(),
        "lintian failed: {report}{}",
        String::from_utf8_lossy(&lintian.stderr)
    );
    let tags: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(tags.is_empty(), "lintian: {report}");

    // A package left by an earlier run goes first; an administrator's own configuration
    // is never purged by a test.
    let default_config = run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {deb} | tar -xO ./etc/sonde/sonde.yaml"
    )));
    if let Ok(present) = std::fs::read_to_string("/etc/sonde/sonde.yaml") {
        let ours = [default_config.clone(), format!("{default_config}{EDIT}")];
        assert!(
            ours.contains(&present),
            "/etc/sonde/sonde.yaml here is not the package's: this test would purge it"
        );
    }
    let _ = Command::new("dpkg")
        .args(["--purge", "sonde"])
        .stdout(Stdio::null())
        .status();
    dpkg(&["--install", deb]);
    let version = run(Command::new("/usr/bin/sonde").arg("--version"));
    assert!(version.contains(VERSION), "{version}");
    let unit = std::fs::read_to_string("/lib/systemd/system/sonde.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/sonde --config /etc/sonde/sonde.yaml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "/lib/systemd/system/sonde.service"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{err}");
    assert!(!err.lines().any(|l| l.contains("sonde")), "{err}");
    // Enabled on installation (started too where systemd runs; not in CI's sandbox).
    let wants = std::fs::read_link("/etc/systemd/system/multi-user.target.wants/sonde.service")
        .expect("the unit is enabled");
    assert_eq!(wants.to_str(), Some("/lib/systemd/system/sonde.service"));
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "sonde"]));
    assert!(conffiles.contains("/etc/sonde/sonde.yaml"), "{conffiles}");
    for file in [
        "/usr/share/man/man8/sonde.8.gz",
        "/usr/share/doc/sonde/copyright",
        "/usr/share/doc/sonde/changelog.gz",
        "/usr/share/doc/sonde/configuration.md",
    ] {
        assert!(std::path::Path::new(file).exists(), "{file}");
    }
    let config = std::fs::read_to_string("/etc/sonde/sonde.yaml").unwrap();
    assert_eq!(config, default_config);
    let changelog = run(Command::new("zcat").arg("/usr/share/doc/sonde/changelog.gz"));
    assert!(
        changelog.contains(&head_commit()),
        "the package is from an earlier build: run `cargo xtask deb`\n{changelog}"
    );
    assert!(
        config.contains("/usr/share/doc/sonde/configuration.md"),
        "{config}"
    );

    // The installed binary with the installed configuration, against nginx and curl.
    let port = free_port();
    let _nginx = Nginx::start(
        "rollout-deb",
        &[format!("127.0.0.1:{port}")],
        port,
        "location /deb/ { return 200 \"d\\n\"; }",
    );
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new("/usr/bin/sonde");
    cmd.args(["--config", "/etc/sonde/sonde.yaml", "--print-spans", "json"])
        .args(["--metrics-addr", &metrics_addr]);
    let sonde = Sonde::spawn(cmd, metrics_addr);
    for i in 0..3 {
        run(Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/deb/{i}")));
    }
    let ours = |s: &Value| path_starts(s, "/deb/");
    let servers = sonde.wait_spans(3, |s| kind(s) == "SERVER" && ours(s));
    let clients = sonde.wait_spans(3, |s| kind(s) == "CLIENT" && ours(s));
    assert_eq!(servers.len(), 3, "{servers:?}");
    assert_eq!(clients.len(), 3, "{clients:?}");
    assert!(servers.iter().all(|s| s["service.name"] == "nginx"));
    assert!(clients.iter().all(|s| s["service.name"] == "curl"));
    drop(sonde);

    // An edited configuration survives a reinstall, without a question.
    let edited = format!("{config}{EDIT}");
    std::fs::write("/etc/sonde/sonde.yaml", &edited).unwrap();
    dpkg(&["--install", deb]);
    assert_eq!(
        std::fs::read_to_string("/etc/sonde/sonde.yaml").unwrap(),
        edited
    );

    // Removal keeps the configuration; purge takes it and the unit's links.
    dpkg(&["--remove", "sonde"]);
    assert!(!std::path::Path::new("/usr/bin/sonde").exists());
    assert!(!std::path::Path::new("/lib/systemd/system/sonde.service").exists());
    assert!(std::path::Path::new("/etc/sonde/sonde.yaml").exists());
    dpkg(&["--purge", "sonde"]);
    assert!(!std::path::Path::new("/etc/sonde").exists());
    assert!(
        std::fs::symlink_metadata("/etc/systemd/system/multi-user.target.wants/sonde.service")
            .is_err()
    );
    let status = Command::new("dpkg")
        .args(["--status", "sonde"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("install ok installed"),
        "still installed"
    );
}
