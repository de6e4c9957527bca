//! `cargo xtask gpu-check`: on a machine with an NVIDIA GPU, runs sonde beside a PyTorch
//! workload and compares sonde's GPU figures with nvidia-smi's, read at the same moment.
//!
//! Tolerances: device and per-process memory exact to the MiB (the workload holds its
//! memory steady); GPU utilization within 15 points and power within 15 % or 30 W (both
//! move between sonde's reading and nvidia-smi's). The workload's pid must appear with
//! its service name and its memory.
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const SERVICE: &str = "gpu-check-workload";

/// Allocates 4 GiB on the first GPU and keeps it busy with matrix products.
const WORKLOAD: &str = r#"
import sys, time, torch
x = torch.randn(16384, 16384, device="cuda")   # 1 GiB
hold = torch.empty(3 * 1024**3, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    y = x @ x
    torch.cuda.synchronize()
"#;

/// Kills the child when dropped, so a failed check leaves nothing behind.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(sonde: &Path, args: &[String]) -> Result<()> {
    let seconds: u64 = match args.iter().position(|a| a == "--seconds") {
        Some(i) => args
            .get(i + 1)
            .context("--seconds needs a value")?
            .parse()?,
        None => 40,
    };
    let smi = |q: &str| -> Result<Vec<Vec<String>>> {
        let out = Command::new("nvidia-smi")
            .args([q, "--format=csv,noheader,nounits"])
            .output()
            .context("nvidia-smi is not installed: this check needs an NVIDIA GPU")?;
        if !out.status.success() {
            bail!("nvidia-smi {q}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|f| f.trim().to_string()).collect())
            .collect())
    };
    let gpus = smi("--query-gpu=uuid,name,driver_version")?;
    eprintln!("==> GPUs: {gpus:?}");

    eprintln!("==> starting the workload (PyTorch, 4 GiB on GPU 0, {seconds} s)");
    let mut workload = Owned(
        Command::new("python3")
            .args(["-c", WORKLOAD, &seconds.to_string()])
            .env("OTEL_SERVICE_NAME", SERVICE)
            .env("CUDA_VISIBLE_DEVICES", "0")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting python3")?,
    );
    let mut line = String::new();
    BufReader::new(workload.0.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the workload did not start (is PyTorch with CUDA installed?)");
    }
    let pid = workload.0.id();

    let addr = "127.0.0.1:19464";
    eprintln!(
        "==> starting {} (GPU readings every second)",
        sonde.display()
    );
    let _sonde = Owned(
        Command::new(sonde)
            .args(["--quiet", "--metrics-addr", addr, "--gpu-interval", "1"])
            .args(["--gpu-dcgm-names", "true"])
            .spawn()
            .with_context(|| format!("starting {}", sonde.display()))?,
    );
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("sonde did not serve {addr} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));

    let mut failures = Vec::new();
    for round in 1..=3 {
        let metrics = scrape(addr)?;
        let gpu = smi("--query-gpu=uuid,memory.used,utilization.gpu,power.draw")?;
        let apps = smi("--query-compute-apps=pid,used_memory,gpu_uuid")?;
        eprintln!("==> round {round}");
        for g in &gpu {
            let uuid = &g[0];
            let id = format!("hw_id=\"{uuid}\"");
            let mem = sample(&metrics, "hw_gpu_memory_usage_bytes{", &[&id]).map(|b| b / 1048576.0);
            let util = sample(
                &metrics,
                "hw_gpu_utilization_ratio{",
                &[&id, "hw_gpu_task=\"general\""],
            )
            .map(|r| r * 100.0);
            let power = sample(&metrics, "hw_power_watts{", &[&id]);
            let smi_mem: f64 = g[1].parse()?;
            let smi_util: f64 = g[2].parse()?;
            let smi_power: f64 = g[3].parse().unwrap_or(f64::NAN);
            check(&mut failures, uuid, "memory used MiB", mem, smi_mem, 1.0);
            check(&mut failures, uuid, "utilization %", util, smi_util, 15.0);
            if smi_power.is_finite() {
                let tolerance = (smi_power * 0.15).max(30.0);
                check(&mut failures, uuid, "power W", power, smi_power, tolerance);
            }
        }
        let mine: Vec<&Vec<String>> = apps.iter().filter(|a| a[0] == pid.to_string()).collect();
        if mine.is_empty() {
            failures.push(format!("nvidia-smi does not list the workload (pid {pid})"));
        }
        for a in mine {
            let labels = [
                format!("process_pid=\"{pid}\""),
                format!("service_name=\"{SERVICE}\""),
                format!("hw_id=\"{}\"", a[2]),
            ];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            let mem = sample(&metrics, "sonde_gpu_process_memory_usage_bytes{", &labels)
                .map(|b| b / 1048576.0);
            check(
                &mut failures,
                &a[2],
                "workload memory MiB",
                mem,
                a[1].parse()?,
                1.0,
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    if failures.is_empty() {
        eprintln!("==> gpu-check passed");
        Ok(())
    } else {
        bail!("gpu-check failed:\n  {}", failures.join("\n  "))
    }
}

/// Prints one comparison and records it when it is off by more than `tolerance`.
fn check(
    failures: &mut Vec<String>,
    gpu: &str,
    what: &str,
    sonde: Option<f64>,
    smi: f64,
    tolerance: f64,
) {
    match sonde {
        Some(v) => {
            let ok = (v - smi).abs() <= tolerance;
            eprintln!(
                "    {gpu} {what:<20} sonde {v:>10.1}  nvidia-smi {smi:>10.1}  {}",
                if ok { "ok" } else { "OFF" }
            );
            if !ok {
                failures.push(format!(
                    "{gpu} {what}: sonde {v:.1}, nvidia-smi {smi:.1} (tolerance {tolerance})"
                ));
            }
        }
        None => failures.push(format!("{gpu} {what}: sonde exports no such series")),
    }
}

/// The value of the first sample whose line starts with `prefix` and holds every label.
fn sample(metrics: &str, prefix: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn scrape(addr: &str) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{addr}/metrics")])
        .output()
        .context("curl")?;
    if !out.status.success() {
        bail!("scraping {addr} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
