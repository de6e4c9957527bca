//! Packages of other Debian releases (the kernel matrix's kernels, bullseye's OpenSSL 1.1),
//! fetched with a private apt configuration so that this machine's own apt state stays as
//! it is.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{run, step};

/// Where fetched packages are kept between runs (`~/.cache/sonde/`).
pub fn cache_root() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("sonde")
}

/// The Debian archive and security archive URIs this machine's apt uses (sources.list or
/// deb822 .sources files).
fn debian_archives() -> Result<(String, Option<String>)> {
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    let (mut main, mut security) = (None, None);
    for text in &texts {
        for line in text.lines().map(str::trim) {
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| !w.starts_with('['))
            } else {
                None
            };
            let Some(uri) = uri.map(|u| u.trim_end_matches('/').to_string()) else {
                continue;
            };
            let slot = if uri.ends_with("-security") {
                &mut security
            } else {
                &mut main
            };
            slot.get_or_insert(uri);
        }
    }
    match main {
        Some(main) => Ok((main, security)),
        None => {
            bail!("no Debian archive found in /etc/apt/sources.list or /etc/apt/sources.list.d")
        }
    }
}

/// apt-get with a configuration of its own under `dir`: the suite's package lists and the
/// downloads never touch the machine's apt state.
pub fn private_apt(dir: &Path, tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
    cmd.arg("-o")
        .arg(opt("Dir::Etc::SourceList", &dir.join("sources.list")))
        .args(["-o", "Dir::Etc::SourceParts=/nonexistent"])
        .arg("-o")
        .arg(opt("Dir::State::Lists", &dir.join("lists")))
        .arg("-o")
        .arg(opt("Dir::State::status", &dir.join("status")))
        .arg("-o")
        .arg(opt("Dir::Cache", &dir.join("cache")))
        .args(["-o", "Debug::NoLocking=1", "-o", "APT::Get::List-Cleanup=0"])
        // Root downloads into root's cache; no translations or AppStream metadata.
        .args([
            "-o",
            "APT::Sandbox::User=root",
            "-o",
            "Acquire::Languages=none",
        ])
        .args([
            "-o",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
        ])
        .args([
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
        ]);
    cmd
}

/// A private apt configuration for `suite` (and its security updates) under `cache`, its
/// package lists updated; returns its directory.
pub fn suite_apt(cache: &Path, suite: &str) -> Result<PathBuf> {
    let apt = cache.join(format!("apt-{suite}"));
    std::fs::create_dir_all(apt.join("lists/partial"))?;
    std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
    std::fs::write(apt.join("status"), "")?;
    let (archive, security) = debian_archives()?;
    let mut sources = format!("deb {archive} {suite} main\n");
    if let Some(security) = security {
        sources.push_str(&format!("deb {security} {suite}-security main\n"));
    }
    std::fs::write(apt.join("sources.list"), sources)?;
    step(&format!("apt-get update for {suite} (private lists)"));
    run(private_apt(&apt, "apt-get").args(["update", "-qq"]))?;
    Ok(apt)
}

/// Downloads `package` through the private configuration `apt` into `debs`; returns the
/// .deb's path.
pub fn download(apt: &Path, debs: &Path, package: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(debs)?;
    run(private_apt(apt, "apt-get")
        .args(["download", "-qq", package])
        .current_dir(debs))?;
    std::fs::read_dir(debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("apt-get download left no {package}_*.deb"))
}

/// OpenSSL 1.1 for the TLS tests: Debian bullseye's `libssl1.1` and its `openssl` tool,
/// unpacked (once) under `~/.cache/sonde/openssl-1.1` (`usr/bin/openssl`, run with
/// `LD_LIBRARY_PATH=usr/lib/x86_64-linux-gnu`).
pub fn setup_openssl_1_1() -> Result<()> {
    let cache = cache_root();
    let unpacked = cache.join("openssl-1.1");
    if unpacked.join(".complete").exists() {
        step("OpenSSL 1.1 (bullseye): present");
        return Ok(());
    }
    step("OpenSSL 1.1 for the TLS tests: bullseye's libssl1.1 and openssl");
    let apt = suite_apt(&cache, "bullseye")?;
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked)?;
    for package in ["libssl1.1", "openssl"] {
        let deb = download(&apt, &cache.join("debs"), package)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    std::fs::write(unpacked.join(".complete"), "")?;
    Ok(())
}
