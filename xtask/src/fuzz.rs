//! `cargo xtask fuzz [--seconds N | --runs N] [--target NAME]`: the libFuzzer targets of
//! `fuzz/` (cargo-fuzz layout, built with the nightly toolchain and AddressSanitizer), one
//! process each, one after another.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`, the unit tests' byte
//! fixtures) and the corpus it grew before (`fuzz/corpus/TARGET`, not committed). A crash
//! (panic, failed invariant, sanitizer report, timeout, out of memory) leaves its input in
//! `fuzz/artifacts/TARGET/` and fails the command; `fuzz/TARGET_BINARY CRASH_FILE` replays it.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{run, step, succeeds};

/// The targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "http1_stream",
    "http1_session",
    "redis_stream",
    "redis_session",
    "postgres_stream",
    "postgres_session",
    "sql_mask",
    "event_decode",
    "k8s_watch",
    "llm_request",
    "llm_response",
    "llm_tail",
];

/// Seconds per target when neither `--seconds` nor `--runs` is given.
const DEFAULT_SECONDS: u64 = 60;

/// How long each target runs.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    Seconds(u64),
    /// Executions (libFuzzer's `-runs`).
    Runs(u64),
}

/// What one target's run gave.
#[derive(Debug)]
pub struct Outcome {
    pub target: &'static str,
    pub executions: u64,
    pub seconds: f64,
    /// Inputs in the target's corpus afterwards.
    pub corpus: usize,
    /// The input that crashed it, or why it failed without one.
    pub failure: Option<String>,
}

/// `cargo xtask fuzz ...`.
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let value = |flag: &str| -> Result<Option<u64>> {
        match args.iter().position(|a| a == flag) {
            Some(i) => {
                let v = args
                    .get(i + 1)
                    .with_context(|| format!("{flag} needs a number"))?;
                Ok(Some(
                    v.parse()
                        .with_context(|| format!("{flag} {v}: not a number"))?,
                ))
            }
            None => Ok(None),
        }
    };
    let limit = match (value("--seconds")?, value("--runs")?) {
        (Some(_), Some(_)) => bail!("give --seconds or --runs, not both"),
        (_, Some(runs)) => Limit::Runs(runs),
        (seconds, None) => Limit::Seconds(seconds.unwrap_or(DEFAULT_SECONDS)),
    };
    let targets: Vec<&'static str> = match args.iter().position(|a| a == "--target") {
        Some(i) => {
            let name = args.get(i + 1).context("--target needs a name")?;
            let target = TARGETS
                .iter()
                .find(|t| *t == name)
                .with_context(|| format!("no target {name}; targets: {}", TARGETS.join(" ")))?;
            vec![*target]
        }
        None => TARGETS.to_vec(),
    };
    let outcomes = run_targets(root, &targets, limit)?;
    let crashed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.target, o.failure.as_ref()?)))
        .collect();
    if !crashed.is_empty() {
        bail!("fuzzing failed:\n  {}", crashed.join("\n  "));
    }
    Ok(())
}

/// Sets up, builds, and runs `targets` in turn; prints a table of what each gave.
pub fn run_targets(root: &Path, targets: &[&'static str], limit: Limit) -> Result<Vec<Outcome>> {
    setup()?;
    build(root)?;
    let mut outcomes = Vec::new();
    for target in targets {
        let outcome = run_target(root, target, limit)?;
        step(&format!(
            "{target}: {} executions in {:.0} s ({:.0}/s), corpus {}: {}",
            outcome.executions,
            outcome.seconds,
            outcome.executions as f64 / outcome.seconds.max(0.001),
            outcome.corpus,
            outcome.failure.as_deref().unwrap_or("no crash")
        ));
        outcomes.push(outcome);
    }
    println!(
        "{:<18} {:>12} {:>9} {:>8} {:>7}  result",
        "target", "executions", "exec/s", "seconds", "corpus"
    );
    for o in &outcomes {
        println!(
            "{:<18} {:>12} {:>9.0} {:>8.0} {:>7}  {}",
            o.target,
            o.executions,
            o.executions as f64 / o.seconds.max(0.001),
            o.seconds,
            o.corpus,
            o.failure.as_deref().unwrap_or("ok")
        );
    }
    Ok(outcomes)
}

/// The nightly toolchain (cargo-fuzz needs `-Z` flags) and cargo-fuzz itself; bpf-linker,
/// since the fuzz targets link the whole agent library, whose build script builds the eBPF
/// programs.
fn setup() -> Result<()> {
    crate::setup_nightly()?;
    crate::setup_bpf_linker()?;
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        step("cargo-fuzz: present");
        return Ok(());
    }
    step("installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// Builds every target (release, debug assertions, AddressSanitizer). `agent/build.rs`
/// builds the eBPF programs in a nested cargo that aya-build gives its own
/// `CARGO_ENCODED_RUSTFLAGS`, so the sanitizer flags cargo-fuzz sets do not reach it.
fn build(root: &Path) -> Result<()> {
    step("cargo +nightly fuzz build (all targets, AddressSanitizer)");
    let started = Instant::now();
    // The binaries are looked for under fuzz/target, wherever CARGO_TARGET_DIR points.
    run(Command::new("cargo")
        .args(["+nightly", "fuzz", "build"])
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(root.join("fuzz")))?;
    step(&format!(
        "fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn binary(root: &Path, target: &str) -> PathBuf {
    root.join("fuzz/target")
        .join(host_triple())
        .join("release")
        .join(target)
}

fn host_triple() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// Runs one target's binary until `limit`, in a single process (`-jobs` and `-workers`
/// are left at 1: the CI machines have two cores).
fn run_target(root: &Path, target: &'static str, limit: Limit) -> Result<Outcome> {
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let limit_arg = match limit {
        Limit::Seconds(s) => format!("-max_total_time={s}"),
        Limit::Runs(n) => format!("-runs={n}"),
    };
    step(&format!("fuzzing {target} ({limit_arg})"));
    let started = Instant::now();
    let mut child = Command::new(binary(root, target))
        .arg(&limit_arg)
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(fuzz.join("seeds").join(target))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary(root, target).display()))?;
    let mut executions = 0;
    let mut crash = None;
    let mut report = Vec::new();
    let stderr = child.stderr.take().context("fuzzer stderr")?;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        // Progress: libFuzzer's pulse lines (`#262144<TAB>pulse  cov: ...`, at every power
        // of two executions) and its end.
        if line.contains("\tpulse ") || line.starts_with("Done ") {
            eprintln!("    {target}: {line}");
        }
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = n.trim().parse().unwrap_or(0);
        }
        if let Some(rest) = line.split("Test unit written to ").nth(1) {
            crash = Some(rest.trim().to_string());
        }
        // What a crash printed (the panic message, the sanitizer's report), kept to show.
        if crash.is_none() && (line.contains("panicked") || line.contains("ERROR:")) {
            report.push(line);
        }
    }
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    for line in &report {
        eprintln!("    {target}: {line}");
    }
    let failure = match (status.success(), crash) {
        (true, _) => None,
        (false, Some(file)) => Some(format!(
            "crash, input in {file} (replay: {} {file})",
            binary(root, target).display()
        )),
        (false, None) => Some(format!("the fuzzer exited with {status}")),
    };
    let corpus = std::fs::read_dir(&corpus)?.count();
    Ok(Outcome {
        target,
        executions,
        seconds,
        corpus,
        failure,
    })
}
