//! `cargo xtask kernels`: sonde on the kernels users run, each booted under qemu.
//!
//! Each kernel comes from its Debian `linux-image-*-amd64` package (fetched once with a
//! private apt configuration, so the machine's own apt state is untouched, and cached under
//! `~/.cache/sonde/kernels`). The guest boots from a small initramfs (static busybox and the
//! kernel's own 9p modules) that mounts this machine's root file system read-only over 9p and
//! runs `tests/kernels/guest.sh` in a chroot of it: the host's nginx, curl, busybox and Redis
//! then run on the guest kernel, watched by the release sonde binary. The guest writes what
//! it saw to a second, writable 9p share; this module checks it: sonde loaded (with
//! `inject_traceparent` on, so its kernel programs are verified too), every request gave
//! exactly one span on each side, each traceparent the kernel added named the caller's
//! client span, and sonde exited 0 on SIGTERM.
//!
//! Nested KVM does not work on this machine, so the guests run under TCG (a few times slower
//! than native, which these small workloads do not notice).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{debian, run, step};

/// A kernel of the matrix: the Debian suite that ships it and its image package's name
/// before the ABI number (the newest ABI the suite has is taken).
struct Kernel {
    label: &'static str,
    suite: &'static str,
    package_prefix: &'static str,
}

const KERNELS: [Kernel; 3] = [
    Kernel {
        label: "5.10",
        suite: "bullseye",
        package_prefix: "linux-image-5.10.0-",
    },
    Kernel {
        label: "6.1",
        suite: "bookworm",
        package_prefix: "linux-image-6.1.0-",
    },
    Kernel {
        label: "6.12",
        suite: "trixie",
        package_prefix: "linux-image-6.12.",
    },
];

/// Modules the guest loads to mount the host over 9p (their dependencies come along; a name
/// the package has no file for is built into that kernel).
const GUEST_MODULES: [&str; 3] = ["virtio_pci", "9pnet_virtio", "9p"];

/// The longest a guest may take from boot to power-off.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// What one guest run found.
pub struct Outcome {
    pub label: String,
    pub release: String,
    pub seconds: f64,
    /// Each check's name and outcome: what was seen, or why it failed.
    pub checks: Vec<(String, Result<String, String>)>,
}

impl Outcome {
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|(_, r)| r.is_err()).count()
    }
}

/// Runs `sonde` (a binary under this machine's root, which the guest sees as its own) on
/// the matrix, or on the kernels `--only` names, prints a table and returns the checks
/// (passed, failed).
pub fn run_matrix(root: &Path, sonde: &Path, args: &[String]) -> Result<(usize, usize)> {
    let only: Vec<&str> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').collect())
        .unwrap_or_default();
    let sonde = std::fs::canonicalize(sonde)
        .with_context(|| format!("{}: no such binary", sonde.display()))?;
    let cache = cache_dir();
    let pg_template = postgres_template(root)?;
    let mut outcomes = Vec::new();
    for k in KERNELS
        .iter()
        .filter(|k| only.is_empty() || only.contains(&k.label))
    {
        let started = Instant::now();
        step(&format!("kernel {} ({}): fetching", k.label, k.suite));
        let extracted = fetch_kernel(&cache, k)?;
        let outcome = boot_and_check(root, &sonde, &pg_template, k, &extracted, started)?;
        print_outcome(&outcome);
        outcomes.push(outcome);
    }
    let passed: usize = outcomes.iter().map(|o| o.checks.len() - o.failed()).sum();
    let failed: usize = outcomes.iter().map(Outcome::failed).sum();
    println!("\nkernel matrix:");
    println!(
        "{:<8} {:<24} {:>8} {:>8}",
        "KERNEL", "RELEASE", "SECONDS", "RESULT"
    );
    for o in &outcomes {
        let result = if o.failed() == 0 {
            format!("{} ok", o.checks.len())
        } else {
            format!("{} FAILED", o.failed())
        };
        println!(
            "{:<8} {:<24} {:>8.0} {:>8}",
            o.label, o.release, o.seconds, result
        );
    }
    Ok((passed, failed))
}

fn print_outcome(o: &Outcome) {
    for (name, r) in &o.checks {
        match r {
            Ok(seen) => println!("kernel {} {name} ... ok ({seen})", o.label),
            Err(why) => println!("kernel {} {name} ... FAILED: {why}", o.label),
        }
    }
}

fn cache_dir() -> PathBuf {
    debian::cache_root().join("kernels")
}

/// Downloads (once) and unpacks the newest image package of the kernel; returns the
/// directory it was unpacked in.
fn fetch_kernel(cache: &Path, k: &Kernel) -> Result<PathBuf> {
    let unpacked = cache.join(k.label);
    if unpacked.join(".complete").exists() {
        return Ok(unpacked);
    }
    let apt = debian::suite_apt(cache, k.suite)?;
    let names = debian::private_apt(&apt, "apt-cache")
        .args(["pkgnames", k.package_prefix])
        .output()
        .context("apt-cache pkgnames")?;
    let package = newest_image(&String::from_utf8_lossy(&names.stdout), k.package_prefix)
        .with_context(|| format!("{} has no {}*-amd64 package", k.suite, k.package_prefix))?;
    step(&format!("downloading {package} from {}", k.suite));
    let deb = debian::download(&apt, &cache.join("debs"), &package)?;
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    std::fs::write(unpacked.join(".complete"), &package)?;
    Ok(unpacked)
}

/// The newest `PREFIX<abi>-amd64` image (unsigned variants and debug packages left out),
/// by ABI number for 5.10/6.1 (`5.10.0-35-amd64`) and by version for trixie's
/// (`6.12.48+deb13-amd64`).
fn newest_image(names: &str, prefix: &str) -> Option<String> {
    names
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix) && n.ends_with("-amd64"))
        .filter(|n| !n.contains("-rt-") && !n.contains("-cloud-"))
        .max_by_key(|n| {
            n[prefix.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<u64>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .map(str::to_string)
}

/// The files of an unpacked image package the guest needs.
struct KernelFiles {
    release: String,
    vmlinuz: PathBuf,
    modules: PathBuf,
}

fn kernel_files(unpacked: &Path) -> Result<KernelFiles> {
    let boot = unpacked.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("{} has no boot/", unpacked.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no boot/vmlinuz-* in the package")?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz name")?
        .to_string();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(&release))
        .find(|d| d.join("kernel").is_dir())
        .context("no modules for the kernel in the package")?;
    Ok(KernelFiles {
        release,
        vmlinuz,
        modules,
    })
}

/// `wanted` modules and what they depend on, dependencies first, as paths under the
/// modules directory. The package has no modules.dep (depmod makes it at install time), so
/// dependencies come from each module's own `depends=` modinfo string. A name with no file
/// is built into that kernel.
fn modules_in_load_order(modules: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![modules.join("kernel")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)?.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Some(name) = module_name(&path) {
                files.insert(name, path);
            }
        }
    }
    let mut order = Vec::new();
    for want in wanted {
        add_with_dependencies(want, &files, &mut order, 0)?;
    }
    Ok(order)
}

fn add_with_dependencies(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<()> {
    let Some(path) = files.get(&name.replace('-', "_")) else {
        return Ok(()); // built in
    };
    if order.contains(path) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies of {name} nest too deep");
    }
    for dep in module_depends(&read_module(path)?) {
        add_with_dependencies(&dep, files, order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

/// `9pnet_virtio` from `.../9pnet_virtio.ko.xz` (module names use `_` for `-`).
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (name, _) = file.split_once(".ko")?;
    Some(name.replace('-', "_"))
}

/// The module's `depends=a,b` modinfo string.
fn module_depends(elf: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = elf.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &elf[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// A module's ELF image, decompressed (busybox insmod reads plain ELF only).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let mut cmd = if name.ends_with(".xz") {
        let mut c = Command::new("xz");
        c.arg("-dc");
        c
    } else if name.ends_with(".zst") {
        let mut c = Command::new("zstd");
        c.arg("-dcq");
        c
    } else {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = cmd
        .arg(path)
        .output()
        .with_context(|| format!("decompressing {name}"))?;
    if !out.status.success() {
        bail!(
            "decompressing {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Writes the guest's initramfs: static busybox, the 9p modules (decompressed, since
/// busybox insmod reads plain ELF), and an /init that mounts the host and runs the guest
/// script in a chroot of it.
fn build_initramfs(work: &Path, files: &KernelFiles, init: &str) -> Result<PathBuf> {
    let tree = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "host", "modules"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("copying /bin/busybox (Debian package busybox-static)")?;
    let mut order = String::new();
    for (i, path) in modules_in_load_order(&files.modules, &GUEST_MODULES)?
        .iter()
        .enumerate()
    {
        std::fs::write(tree.join(format!("modules/{i:02}.ko")), read_module(path)?)?;
        order.push_str(&format!("{i:02}.ko\n"));
    }
    std::fs::write(tree.join("modules/order"), order)?;
    std::fs::write(tree.join("init"), init)?;
    std::fs::set_permissions(
        tree.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let image = work.join("initramfs.cpio.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&image)
        .current_dir(&tree))?;
    Ok(image)
}

/// A PostgreSQL data directory made by initdb here, which each guest copies and starts:
/// initdb itself takes minutes under emulation, the copy seconds.
fn postgres_template(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/kernels/postgres");
    let data = dir.join("data");
    if data.join("PG_VERSION").exists() {
        return Ok(data);
    }
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (cargo xtask setup installs it)")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .context("no version under /usr/lib/postgresql")?;
    step("initdb for the guests' PostgreSQL");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    run(Command::new("chown").arg("postgres:").arg(&dir))?;
    run(Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(format!("/usr/lib/postgresql/{bin}/bin/initdb"))
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
        ])
        .arg("-D")
        .arg(&data)
        .stdout(Stdio::null()))?;
    Ok(data)
}

/// The guest's /init. Output lines starting with `guest:` are progress; `GUEST-DONE` ends it.
fn init_script(root: &Path, sonde: &Path, pg_template: &Path) -> String {
    let (root, sonde, pg) = (root.display(), sonde.display(), pg_template.display());
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "guest: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host || echo "guest: mounting the host root failed"
for d in proc sys dev tmp run; do [ -d /host/$d ] || echo "guest: /host/$d missing"; done
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/shm
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs tmpfs /host/tmp
mount -t tmpfs tmpfs /host/run
mkdir -p /host/tmp/out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /host/tmp/out || echo "guest: mounting the output share failed"
ip link set lo up
chroot /host /bin/bash {root}/tests/kernels/guest.sh {sonde} /tmp/out {pg}
echo "GUEST-DONE $?"
sync
echo o > /proc/sysrq-trigger
sleep 5
"#
    )
}

fn boot_and_check(
    root: &Path,
    sonde: &Path,
    pg_template: &Path,
    k: &Kernel,
    unpacked: &Path,
    started: Instant,
) -> Result<Outcome> {
    let files = kernel_files(unpacked)?;
    let work = root.join("target/kernels").join(k.label);
    let out = work.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let initramfs = build_initramfs(&work, &files, &init_script(root, sonde, pg_template))?;
    step(&format!(
        "kernel {} ({}): booting under qemu (TCG); console in {}",
        k.label,
        files.release,
        work.join("console.log").display()
    ));
    let console = std::fs::File::create(work.join("console.log"))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "2",
        "-nographic",
        "-no-reboot",
    ])
    .args(["-nic", "none"])
    .arg("-kernel")
    .arg(&files.vmlinuz)
    .arg("-initrd")
    .arg(&initramfs)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .arg("-virtfs")
    .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
    .arg("-virtfs")
    .arg(format!(
        "local,path={},mount_tag=out,security_model=none",
        out.display()
    ))
    .stdin(Stdio::null())
    .stdout(console.try_clone()?)
    .stderr(console);
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let boot = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if boot.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(work.join("console.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.starts_with("guest:")) {
        eprintln!("    {line}");
    }
    let mut checks = Vec::new();
    let finished = log.contains("GUEST-DONE");
    checks.push((
        "guest ran to the end".to_string(),
        match (status, finished) {
            (None, _) => Err(format!(
                "no power-off within {GUEST_TIMEOUT:?}; see {}",
                work.join("console.log").display()
            )),
            (Some(_), false) => Err(format!(
                "the guest stopped early; see {}",
                work.join("console.log").display()
            )),
            (Some(_), true) => Ok(format!(
                "{:.0} s from boot to power-off",
                boot.elapsed().as_secs_f64()
            )),
        },
    ));
    checks.extend(check_guest_output(&out));
    Ok(Outcome {
        label: k.label.to_string(),
        release: files.release,
        seconds: started.elapsed().as_secs_f64(),
        checks,
    })
}

/// What the guest left in `out`, against what its clients did.
fn check_guest_output(out: &Path) -> Vec<(String, Result<String, String>)> {
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap_or_default();
    let log = read("sonde.log");
    let mut checks = Vec::new();
    let attached = log.contains("probes attached");
    checks.push((
        "sonde loads and attaches".to_string(),
        if attached {
            Ok(log
                .lines()
                .find(|l| l.contains("probes attached"))
                .and_then(|l| l.split("] ").nth(1))
                .unwrap_or("attached")
                .to_string())
        } else {
            Err(format!("sonde's log ends:\n{}", last_lines(&log, 15)))
        },
    ));
    let exit = read("sonde.exit");
    checks.push((
        "sonde exits 0 on SIGTERM".to_string(),
        if exit.trim() == "0" {
            Ok("exit 0".to_string())
        } else {
            Err(format!("exit status {:?}", exit.trim()))
        },
    ));
    if !attached {
        return checks;
    }
    let spans: Vec<Value> = read("spans.json")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let traffic: BTreeMap<String, usize> = read("traffic.txt")
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect();
    let sent = |name: &str| traffic.get(name).copied();
    let attr = |s: &Value, k: &str| s["attributes"][k].to_string().trim_matches('"').to_string();
    let count = |pred: &dyn Fn(&Value) -> bool| spans.iter().filter(|s| pred(s)).count();
    let mut expect = |name: &str, want: Option<usize>, got: usize| {
        let r = match want {
            None => Err("the guest's client did not run (see the console log)".to_string()),
            Some(w) if w == got => Ok(format!("{got} spans for {w} requests")),
            Some(w) => Err(format!("{got} spans for {w} requests")),
        };
        checks.push((name.to_string(), r));
    };
    let http = |s: &Value, kind: &str, service: &str, port: &str| {
        s["kind"] == kind && s["service.name"] == service && attr(s, "server.port") == port
    };
    expect(
        "nginx keep-alive: server spans",
        sent("nginx_keepalive"),
        count(&|s| {
            http(s, "SERVER", "nginx", "8080") && attr(s, "http.response.status_code") == "200"
        }),
    );
    expect(
        "nginx keep-alive: curl client spans",
        sent("nginx_keepalive"),
        count(&|s| {
            http(s, "CLIENT", "curl", "8080") && attr(s, "http.response.status_code") == "200"
        }),
    );
    // The kernel reads a client's local address from `struct sock` as connect() returns:
    // each nginx span is the child of the curl span at the other end of its connection.
    let curl_spans: std::collections::BTreeSet<String> = spans
        .iter()
        .filter(|s| http(s, "CLIENT", "curl", "8080"))
        .filter_map(|s| s["span_id"].as_str().map(str::to_string))
        .collect();
    expect(
        "nginx keep-alive: server spans are children of curl's",
        sent("nginx_keepalive"),
        count(&|s| {
            http(s, "SERVER", "nginx", "8080")
                && s["parent_span_id"]
                    .as_str()
                    .is_some_and(|p| curl_spans.contains(p))
        }),
    );
    let https = |s: &Value, kind: &str, service: &str, port: &str| {
        http(s, kind, service, port)
            && attr(s, "url.scheme") == "https"
            && attr(s, "http.response.status_code") == "200"
    };
    expect(
        "nginx HTTPS (OpenSSL uprobes): server spans",
        sent("nginx_tls"),
        count(&|s| https(s, "SERVER", "nginx", "8443")),
    );
    expect(
        "nginx HTTPS: curl client spans",
        sent("nginx_tls"),
        count(&|s| https(s, "CLIENT", "curl", "8443")),
    );
    expect(
        "Node HTTPS (memory BIOs): node client spans",
        sent("node_tls"),
        count(&|s| https(s, "CLIENT", "node", "8444")),
    );
    expect(
        "Node HTTPS: nginx server spans",
        sent("node_tls"),
        count(&|s| https(s, "SERVER", "nginx", "8444")),
    );
    let bb_parent: Option<u64> = read("busybox.pid").trim().parse().ok();
    expect(
        "busybox httpd (fork per connection): server spans from its children",
        sent("busybox_fork"),
        count(&|s| {
            http(s, "SERVER", "busybox", "8081")
                && attr(s, "http.response.status_code") == "200"
                && s["process.pid"].as_u64() != bb_parent
        }),
    );
    expect(
        "busybox httpd: curl client spans",
        sent("busybox_fork"),
        count(&|s| http(s, "CLIENT", "curl", "8081")),
    );
    let db = |s: &Value, kind: &str, service: &str, op: &str| {
        s["kind"] == kind && s["service.name"] == service && attr(s, "db.operation.name") == op
    };
    expect(
        "redis SET one at a time: server spans",
        sent("redis_set"),
        count(&|s| db(s, "SERVER", "redis-server", "SET")),
    );
    expect(
        "redis SET one at a time: redis-benchmark client spans",
        sent("redis_set"),
        count(&|s| db(s, "CLIENT", "redis-benchmark", "SET")),
    );
    expect(
        "redis GET pipelined by 10: server spans",
        sent("redis_get_pipelined"),
        count(&|s| db(s, "SERVER", "redis-server", "GET")),
    );
    expect(
        "redis GET pipelined by 10: redis-benchmark client spans",
        sent("redis_get_pipelined"),
        count(&|s| db(s, "CLIENT", "redis-benchmark", "GET")),
    );
    expect(
        "postgres (a backend forked per connection): server spans",
        sent("postgres_select"),
        count(&|s| db(s, "SERVER", "postgres", "SELECT")),
    );
    expect(
        "postgres: psql client spans",
        sent("postgres_select"),
        count(&|s| db(s, "CLIENT", "psql", "SELECT")),
    );
    // Each traceparent the echo service received names the front service's CLIENT span of
    // that request (its trace and its span id): the header the sk_msg program added.
    let echoed: Vec<Value> = read("propagation.json")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let named = echoed
        .iter()
        .filter(|e| {
            let Some([tp]) = e["traceparent"].as_array().map(Vec::as_slice) else {
                return false;
            };
            let parts: Vec<&str> = tp.as_str().unwrap_or_default().split('-').collect();
            let path = e["path"].as_str().unwrap_or_default();
            parts.len() == 4
                && spans.iter().any(|s| {
                    s["kind"] == "CLIENT"
                        && attr(s, "server.port") == "8091"
                        && attr(s, "url.path") == path
                        && s["trace_id"] == parts[1]
                        && s["span_id"] == parts[2]
                })
        })
        .count();
    expect(
        "trace propagation: traceparents naming the caller's client span",
        sent("propagation"),
        named,
    );
    let metrics = read("metrics.txt");
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sonde_events_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    checks.push((
        "no event dropped".to_string(),
        if metrics.is_empty() {
            Err("no /metrics scrape".to_string())
        } else if dropped == 0.0 {
            Ok("sonde_events_dropped_total 0".to_string())
        } else {
            Err(format!("sonde_events_dropped_total = {dropped}"))
        },
    ));
    checks
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_image_by_abi_and_version() {
        let names = "linux-image-5.10.0-30-amd64\nlinux-image-5.10.0-9-amd64\n\
                     linux-image-5.10.0-35-amd64-unsigned\nlinux-image-5.10.0-35-amd64\n\
                     linux-image-5.10.0-35-amd64-dbg\nlinux-image-5.10.0-35-rt-amd64\n";
        assert_eq!(
            newest_image(names, "linux-image-5.10.0-").as_deref(),
            Some("linux-image-5.10.0-35-amd64")
        );
        let trixie = "linux-image-6.12.41+deb13-amd64\nlinux-image-6.12.9+deb13-amd64\n";
        assert_eq!(
            newest_image(trixie, "linux-image-6.12.").as_deref(),
            Some("linux-image-6.12.41+deb13-amd64")
        );
    }

    #[test]
    fn modinfo_depends() {
        let elf = b"\x7fELF...\0license=GPL\0depends=9pnet,netfs\0intree=Y\0";
        assert_eq!(module_depends(elf), ["9pnet", "netfs"]);
        assert!(module_depends(b"\0depends=\0name=9pnet\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
        assert_eq!(
            module_name(Path::new("k/net/9p/9pnet_virtio.ko.xz")).as_deref(),
            Some("9pnet_virtio")
        );
    }
}
