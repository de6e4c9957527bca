//! Developer commands: `cargo xtask setup | build | run | test | bench http|redis|postgres |
//! kernels | image | deb | dashboards | gpu-check | fuzz`.
//!
//! Every command sets up what it needs first (idempotently, saying what it does), so a fresh
//! machine needs nothing but cargo.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

mod bench;
mod dashboards;
mod deb;
mod debian;
mod fuzz;
mod gpu_check;
mod image;
mod kernels;
mod soak;

/// Debian packages the build, the tests and the benchmarks use.
const DEB_PACKAGES: &[&str] = &[
    "nginx",
    "wrk",
    "curl",
    "python3",
    "bpftool",
    "util-linux",
    "procps",
    "redis-server",
    "redis-tools",
    // Server, psql and pgbench (postgresql-NN and its client package).
    "postgresql",
    "openssl",
    // The CA bundle the image carries, for OTLP to https:// collectors.
    "ca-certificates",
    // promtool and a Prometheus server for the deploy/prometheus tests; systemd-analyze.
    "prometheus",
    "systemd",
    "python3-pip",
    // tests/tls.rs and tests/traces.rs run node (its `https` and `http` modules).
    "nodejs",
    // The kernel matrix: guests under qemu, an initramfs of static busybox and the
    // kernel package's 9p modules; busybox httpd is also the fork-per-connection server.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "xz-utils",
    "zstd",
    // `cargo xtask image` and its test: podman runs the image as the DaemonSet would
    // (runc: crun refuses this machine's hybrid cgroups; netavark and iptables publish the
    // metrics port); `cargo xtask deb`: strip and objdump, lintian.
    "podman",
    "runc",
    "netavark",
    "iptables",
    "binutils",
    "lintian",
];

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup          install what building and testing need (Debian packages, PyPI packages,
                 bullseye's OpenSSL 1.1 under ~/.cache/sonde, nightly rust-src,
                 bpf-linker built against the nightly toolchain's LLVM); safe to repeat
  build          setup, then cargo build --release (target/release/sonde)
  run [ARGS..]   build, then run target/release/sonde with ARGS (as root)
  test           build, image and deb, then run every test: each fuzz target for a few
                 seconds, unit tests, the integration tests that load the real probes and
                 drive real servers, the image under podman, the package under dpkg, the
                 kernel matrix (needs root)
  bench http     build, then wrk against nginx with sonde off and on, interleaved (--tls:
                 over HTTPS, which sonde reads through its OpenSSL uprobes)
  bench redis    build, then redis-benchmark (-P 1 and -P 16) against redis-server, off/on
  bench postgres build, then pgbench (tpcb-like, prepared) against PostgreSQL, off/on
                 (bench options: --pairs N (6), --seconds S (5), --sonde PATH (a built
                 binary, no build), --inject (every sonde arm with inject_traceparent on);
                 reports in target/bench/)
  kernels        build, then boot Debian's 5.10, 6.1 and 6.12 kernels under qemu (TCG) and run
                 sonde in each against nginx, busybox httpd (fork per connection) and Redis
                 with exact span counts (--only 5.10,6.1 picks kernels; --sonde PATH runs
                 a built binary and skips setup and build; packages are cached in
                 ~/.cache/sonde/kernels)
  image          build, then write an OCI image (target/image/sonde-VERSION.oci.tar): the
                 stripped binary and the glibc libraries it links, nothing else
                 (--tag NAME (localhost/sonde:VERSION); --load puts it in podman's store;
                 --sonde PATH uses a built binary)
  deb            build, then write a Debian package (target/deb/sonde_VERSION_amd64.deb):
                 binary, systemd unit (enabled on install), /etc/sonde/sonde.yaml as a
                 conffile, manual page, docs (--sonde PATH uses a built binary)
  soak           build, then sonde with OTLP on under paced HTTP, Redis and PostgreSQL load
                 while the collector goes down 30 s of every 90; RSS, CPU and drops each
                 minute; fails if RSS grew (--minutes N (30), --sonde PATH)
  dashboards     write the Grafana dashboards under deploy/grafana/ (from xtask/src/dashboards.rs)
  fuzz           cargo-fuzz (libFuzzer, nightly) on every parser and session in fuzz/, one
                 target after another from its seeds (fuzz/seeds); a crash fails it and names
                 its input (--seconds N per target (60) or --runs N; --target NAME)
  gpu-check      on a host with an NVIDIA GPU and PyTorch: sonde beside a GPU workload,
                 its figures compared with nvidia-smi's (--sonde PATH uses a built binary
                 and skips setup and build; --seconds S (40) of workload)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    // A prebuilt xtask copied to another machine (gpu-check there) runs where it is.
    if root.exists() {
        std::env::set_current_dir(&root)?;
    }
    match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("build") => {
            setup()?;
            build()
        }
        Some("run") => {
            setup()?;
            build()?;
            let status = Command::new(root.join("target/release/sonde"))
                .args(&args[1..])
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Some("test") => {
            setup()?;
            build()?;
            // The roll-out tests run what users install: the image and the package.
            let binary = packaged_binary(&root, &root.join("target/release/sonde"))?;
            build_image(&root, &binary, &image::default_reference())?;
            build_deb(&root, &binary)?;
            test()
        }
        Some("bench") => {
            let what = args.get(1).map(String::as_str);
            // `--sonde PATH` measures a given binary (another build, for a comparison).
            if !args.iter().any(|a| a == "--sonde") {
                setup()?;
                build()?;
            }
            match what {
                Some("http") => bench::http(&root, &args[2..]),
                Some("redis") => bench::redis(&root, &args[2..]),
                Some("postgres") => bench::postgres(&root, &args[2..]),
                _ => {
                    bail!("usage: cargo xtask bench http|redis|postgres [--pairs N] [--seconds S]")
                }
            }
        }
        Some("kernels") => {
            let rest = &args[1..];
            let sonde = given_or_built_sonde(&root, rest)?;
            let (_, failed) = kernels::run_matrix(&root, &sonde, rest)?;
            if failed > 0 {
                bail!("{failed} kernel matrix checks failed");
            }
            Ok(())
        }
        Some("dashboards") => dashboards::write(&root.join("deploy/grafana")),
        Some("soak") => {
            let rest = &args[1..];
            let sonde = given_or_built_sonde(&root, rest)?;
            soak::run(&root, &sonde, rest)
        }
        Some("fuzz") => fuzz::main(&root, &args[1..]),
        Some("gpu-check") => {
            let rest = &args[1..];
            let sonde = given_or_built_sonde(&root, rest)?;
            gpu_check::run(&sonde, rest)
        }
        Some("image") => {
            let rest = &args[1..];
            let sonde = given_or_built_sonde(&root, rest)?;
            let reference = match rest.iter().position(|a| a == "--tag") {
                Some(i) => rest
                    .get(i + 1)
                    .context("--tag needs an image name")?
                    .clone(),
                None => image::default_reference(),
            };
            let archive = build_image(&root, &packaged_binary(&root, &sonde)?, &reference)?;
            if rest.iter().any(|a| a == "--load") {
                step(&format!("podman load: {reference}"));
                image::load(&archive, &reference)?;
            }
            Ok(())
        }
        Some("deb") => {
            let sonde = given_or_built_sonde(&root, &args[1..])?;
            build_deb(&root, &packaged_binary(&root, &sonde)?).map(|_| ())
        }
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    }
}

/// The binary named by `--sonde PATH` in `rest`, else the one `setup` and `build` make.
fn given_or_built_sonde(root: &Path, rest: &[String]) -> Result<PathBuf> {
    match rest.iter().position(|a| a == "--sonde") {
        Some(i) => Ok(PathBuf::from(
            rest.get(i + 1).context("--sonde needs a path")?,
        )),
        None => {
            setup()?;
            build()?;
            Ok(root.join("target/release/sonde"))
        }
    }
}

/// `binary` (from `packaged_binary`) as an OCI image archive.
fn build_image(root: &Path, binary: &Path, reference: &str) -> Result<PathBuf> {
    let archive = image::build(root, binary, reference)?;
    step(&format!("image {reference}: {}", with_size(&archive)?));
    Ok(archive)
}

/// `binary` (from `packaged_binary`) in a Debian package.
fn build_deb(root: &Path, binary: &Path) -> Result<PathBuf> {
    let deb = deb::build(root, binary)?;
    step(&format!("package: {}", with_size(&deb)?));
    Ok(deb)
}

/// "PATH (N.N MiB)", for the progress lines.
fn with_size(path: &Path) -> Result<String> {
    let mib = std::fs::metadata(path)?.len() as f64 / (1024.0 * 1024.0);
    Ok(format!("{} ({mib:.1} MiB)", path.display()))
}

/// The binary the packages ship: a copy of `sonde` without its symbol table (the eBPF
/// object is data and stays). x86-64 only: the packages say amd64, and the eBPF programs
/// read x86-64 registers.
fn packaged_binary(root: &Path, sonde: &Path) -> Result<PathBuf> {
    if std::env::consts::ARCH != "x86_64" {
        bail!("the image and the package are built for x86-64 hosts only");
    }
    let out = root.join("target/package/sonde");
    std::fs::create_dir_all(out.parent().context("target/package")?)?;
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment", "-o"])
        .arg(&out)
        .arg(sonde))
    .context("strip (binutils) could not copy the binary")?;
    Ok(out)
}

/// The HEAD commit's time (seconds since the epoch): every timestamp in the packages, so a
/// commit gives the same bytes each time. 0 outside a git checkout.
fn commit_time(root: &Path) -> u64 {
    git(root, &["log", "-1", "--format=%ct"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The HEAD commit's id, or "unknown" outside a git checkout.
fn commit_id(root: &Path) -> String {
    git(root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `epoch` as an RFC 3339 UTC time (`2026-12-03T06:14:16Z`), or with `-R` as RFC 5322
/// (Debian's changelog), through date(1).
fn format_time(epoch: u64, format: &str) -> String {
    Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), format])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn rfc3339(epoch: u64) -> String {
    format_time(epoch, "+%Y-%m-%dT%H:%M:%SZ")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn setup() -> Result<()> {
    setup_debian_packages()?;
    setup_python_tools()?;
    debian::setup_openssl_1_1()?;
    setup_nightly()?;
    setup_bpf_linker()
}

/// Python packages from PyPI, with the module that shows each is there:
/// kubernetes-validate checks the Kubernetes manifests against the API schemas; the official
/// `openai`, `anthropic` and `ollama` clients are those of the LLM tests.
const PYPI_PACKAGES: &[(&str, &str)] = &[
    ("kubernetes-validate", "kubernetes_validate"),
    ("openai", "openai"),
    ("anthropic", "anthropic"),
    ("ollama", "ollama"),
    // tests/traces/service.py: redis-py and psycopg 3 (with its bundled libpq).
    ("redis", "redis"),
    ("psycopg[binary]", "psycopg"),
];

fn setup_python_tools() -> Result<()> {
    let missing: Vec<&str> = PYPI_PACKAGES
        .iter()
        .filter(|(_, module)| {
            !succeeds(Command::new("python3").args(["-c", &format!("import {module}")]))
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        step("Python packages: all present");
        return Ok(());
    }
    step(&format!("installing from PyPI: {}", missing.join(" ")));
    let pip = |extra: &[&str]| {
        succeeds(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet"])
                .args(&missing)
                .args(extra),
        )
    };
    // Debian's own python3 refuses system-wide installs unless told (PEP 668).
    if pip(&[]) || pip(&["--break-system-packages"]) {
        Ok(())
    } else {
        bail!(
            "`python3 -m pip install {}` failed: install python3-pip and retry",
            missing.join(" ")
        )
    }
}

fn setup_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEB_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    if !is_root() {
        bail!("Debian packages {missing:?} are missing and installing them needs root");
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn setup_nightly() -> Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        step("installing the nightly toolchain (minimal profile)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup component list")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("adding the nightly rust-src component (the eBPF crate builds core from source)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker links the eBPF object. No prebuilt binary can be fetched, and Debian's LLVM is
/// too old, so it is built against the LLVM shared library inside the nightly toolchain. The
/// symlink lives under CARGO_HOME because the binary keeps an rpath to it.
fn setup_bpf_linker() -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        step("bpf-linker: present");
        return Ok(());
    }
    let sysroot = String::from_utf8(
        Command::new("rustc")
            .args(["+nightly", "--print", "sysroot"])
            .output()?
            .stdout,
    )?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&libdir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split(['.', '-']).next())
        .context("cannot read the LLVM version")?
        .to_string();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    let prefix = cargo_home.join("sonde-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    // The build links libLLVM.so; the binary then asks for the library's own file name
    // (its soname) through its rpath, so both names point at it.
    for name in [
        std::ffi::OsStr::new("libLLVM.so"),
        llvm.file_name().context("LLVM path")?,
    ] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)?;
    }
    step(&format!(
        "building bpf-linker against LLVM {major} from the nightly toolchain (a few minutes, once)"
    ));
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn build() -> Result<()> {
    step("cargo build --release (sonde with its eBPF programs embedded)");
    run(Command::new("cargo").args(["build", "--release", "--package", "sonde"]))
}

fn test() -> Result<()> {
    if !is_root() {
        bail!("the integration tests load eBPF programs: run `cargo xtask test` as root");
    }
    step("cargo fmt --check and clippy");
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The fuzz crate is outside the workspace: `--all` does not format it.
    run(Command::new("cargo").args([
        "fmt",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--",
        "--check",
    ]))?;
    step("fuzzing: every target briefly (a minute in all), so that a regression shows");
    let root = workspace_root();
    let seconds = (60 / fuzz::TARGETS.len() as u64).max(1);
    let fuzzed = fuzz::run_targets(&root, fuzz::TARGETS, fuzz::Limit::Seconds(seconds))?;
    let fuzz_failed = fuzzed.iter().filter(|o| o.failure.is_some()).count() as u64;
    step("cargo test --release --workspace (unit tests, then integration tests with real servers)");
    let mut child = Command::new("cargo")
        .args(["test", "--release", "--workspace", "--no-fail-fast"])
        .env("SONDE_BIN", "target/release/sonde")
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning cargo test")?;
    // Echo the output and add up every binary's "test result:" line into one total; each
    // fuzz target counts as one.
    let (mut passed, mut failed) = (fuzzed.len() as u64 - fuzz_failed, fuzz_failed);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_in(rest, "passed");
            failed += count_in(rest, "failed");
        }
    }
    let status = child.wait()?;
    step("the kernel matrix: sonde on Debian's 5.10, 6.1 and 6.12 kernels under qemu");
    let (kernel_passed, kernel_failed) =
        kernels::run_matrix(&root, &root.join("target/release/sonde"), &[])?;
    passed += kernel_passed as u64;
    failed += kernel_failed as u64;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    if kernel_failed > 0 {
        bail!("{kernel_failed} kernel matrix checks failed");
    }
    if fuzz_failed > 0 {
        bail!("{fuzz_failed} fuzz targets crashed");
    }
    Ok(())
}

/// The number before `word` in a cargo "test result:" line ("ok. 28 passed; 0 failed; ...").
fn count_in(result: &str, word: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
