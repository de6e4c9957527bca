//! `cargo xtask deb`: a Debian package of sonde for hosts run by systemd (GPU hosts).
//!
//! It holds the stripped binary (`/usr/bin/sonde`), the unit of `deploy/systemd/` with its
//! paths moved from `/usr/local` to the package's, `/etc/sonde/sonde.yaml` as a conffile
//! (dpkg keeps the administrator's copy on upgrade), a manual page made from `--help`, the
//! docs, and maintainer scripts that do what debhelper's systemd snippets do: enable the
//! unit on first install, start or restart it where systemd runs, stop it on removal, and
//! forget it on purge. Built with dpkg-deb, no debhelper or source package.
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const MAINTAINER: &str = "sonde developers <sonde-dev@users.noreply.github.com>";
/// The docs the package carries under /usr/share/doc/sonde.
const DOCS: &[&str] = &[
    "README.md",
    "docs/deploy.md",
    "docs/configuration.md",
    "docs/telemetry.md",
];

/// Where the package is written, for this version.
pub fn deb_path(root: &Path) -> PathBuf {
    root.join("target/deb")
        .join(format!("sonde_{}_amd64.deb", env!("CARGO_PKG_VERSION")))
}

/// Builds the package around `binary` (already stripped) and returns its path.
pub fn build(root: &Path, binary: &Path) -> Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let epoch = crate::commit_time(root);
    let tree = root.join("target/deb/tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let dest = tree.join(path);
        std::fs::create_dir_all(dest.parent().context("no parent")?)?;
        std::fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };

    put("usr/bin/sonde", &std::fs::read(binary)?, 0o755)?;
    for (source, dest) in [
        (
            "deploy/systemd/sonde.service",
            "lib/systemd/system/sonde.service",
        ),
        ("deploy/systemd/sonde.yaml", "etc/sonde/sonde.yaml"),
    ] {
        let text = std::fs::read_to_string(root.join(source))?;
        put(dest, moved_from_usr_local(&text, source)?.as_bytes(), 0o644)?;
    }
    for doc in DOCS {
        let name = Path::new(doc).file_name().context("doc name")?;
        let dest = format!("usr/share/doc/sonde/{}", name.to_string_lossy());
        put(&dest, &std::fs::read(root.join(doc))?, 0o644)?;
    }
    put(
        "usr/share/doc/sonde/copyright",
        copyright().as_bytes(),
        0o644,
    )?;
    put(
        "usr/share/lintian/overrides/sonde",
        LINTIAN_OVERRIDES.as_bytes(),
        0o644,
    )?;
    let changelog = format!(
        "sonde ({version}) unstable; urgency=medium\n\n  * Built from sonde commit {}.\n\n -- {MAINTAINER}  {}\n",
        crate::commit_id(root),
        crate::format_time(epoch, "-R"),
    );
    put(
        "usr/share/doc/sonde/changelog.gz",
        &gzip(changelog.as_bytes())?,
        0o644,
    )?;
    put(
        "usr/share/man/man8/sonde.8.gz",
        &gzip(manual_page(binary, epoch)?.as_bytes())?,
        0o644,
    )?;

    let md5sums = md5sums(&tree)?;
    let installed_kib = du_kib(&tree)?;
    put(
        "DEBIAN/control",
        control(binary, installed_kib)?.as_bytes(),
        0o644,
    )?;
    put("DEBIAN/conffiles", b"/etc/sonde/sonde.yaml\n", 0o644)?;
    put("DEBIAN/md5sums", md5sums.as_bytes(), 0o644)?;
    put("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put("DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    // Directories dpkg-deb copies as they are: make them 0755 whatever the umask was.
    for dir in walk(&tree)?.into_iter().filter(|p| p.is_dir()) {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }

    let deb = deb_path(root);
    crate::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&tree)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(deb)
}

/// The unit and the configuration name `/usr/local` paths (install.sh puts the binary and
/// docs there); the package's are under `/usr`.
fn moved_from_usr_local(text: &str, what: &str) -> Result<String> {
    if !text.contains("/usr/local/") {
        bail!("{what} no longer names /usr/local paths: check the package's paths by hand");
    }
    Ok(text
        .replace("/usr/local/bin/sonde", "/usr/bin/sonde")
        .replace("/usr/local/share/doc/sonde", "/usr/share/doc/sonde"))
}

fn control(binary: &Path, installed_kib: u64) -> Result<String> {
    let glibc = glibc_needed(binary)?;
    Ok(format!(
        "Package: sonde
Version: {version}
Architecture: amd64
Maintainer: {MAINTAINER}
Installed-Size: {installed_kib}
Depends: libc6 (>= {glibc}), libgcc-s1
Recommends: systemd, ca-certificates
Section: net
Priority: optional
Homepage: {homepage}
Description: eBPF observability agent for HTTP, Redis, PostgreSQL, LLM calls and GPUs
 sonde watches the HTTP/1.x, Redis and PostgreSQL traffic of every process on
 the host through eBPF, plain and over OpenSSL, with no change to the programs.
 It pairs each request with its response and exports OpenTelemetry spans and RED
 metrics (rate, errors, duration) over OTLP and on a Prometheus endpoint, with
 LLM API calls (model, tokens, time to first token) and NVIDIA GPU statistics
 from NVML attributed to the processes that use the GPU.
 .
 The package installs a systemd service, enabled and started on installation,
 configured in /etc/sonde/sonde.yaml. It needs Linux 5.10 or newer with BTF.
",
        version = env!("CARGO_PKG_VERSION"),
        homepage = env!("CARGO_PKG_REPOSITORY"),
    ))
}

/// The newest `GLIBC_x.y` symbol version the binary asks for: the libc6 it depends on.
fn glibc_needed(binary: &Path) -> Result<String> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .context("objdump (binutils) reads the binary's symbol versions")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut newest: Option<Vec<u32>> = None;
    for word in text.split_whitespace() {
        // objdump writes the version in parentheses: "(GLIBC_2.34)".
        let word = word.trim_matches(|c| c == '(' || c == ')');
        let Some(v) = word.strip_prefix("GLIBC_") else {
            continue;
        };
        let Ok(parts) = v
            .split('.')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|n| parts > *n) {
            newest = Some(parts);
        }
    }
    let newest = newest.context("the binary names no GLIBC_ symbol version")?;
    Ok(newest
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: sonde
Source: {source}

Files: *
Copyright: 2026 sonde developers
License: Apache-2.0
Comment: The binary also holds the Rust crates it is built from, under the MIT or
 Apache-2.0 licences; `cargo tree` in the source lists them.

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
",
        source = env!("CARGO_PKG_REPOSITORY"),
    )
}

/// sonde(8): the options as `sonde --help` prints them, the files and where the docs are.
fn manual_page(binary: &Path, epoch: u64) -> Result<String> {
    let out = Command::new(binary)
        .arg("--help")
        .output()
        .context("running sonde --help")?;
    if !out.status.success() {
        bail!("sonde --help failed");
    }
    let mut page = format!(
        ".TH SONDE 8 \"{}\" \"sonde {}\" \"System Administration\"\n",
        crate::format_time(epoch, "+%Y-%m-%d"),
        env!("CARGO_PKG_VERSION"),
    );
    page.push_str(
        ".SH NAME\nsonde \\- host\\-level observability agent (eBPF spans, RED metrics, GPU statistics)\n\
         .SH SYNOPSIS\n.B sonde\n[\\fIOPTIONS\\fR]\n\
         .SH DESCRIPTION\nsonde loads eBPF programs that watch the HTTP/1.x, Redis and PostgreSQL \
         traffic of every process on the host, pairs requests with responses, and exports \
         OpenTelemetry spans and RED metrics over OTLP and on a Prometheus endpoint. It runs \
         as root, or with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, as \
         the systemd unit sonde.service does.\n\
         .SH OPTIONS\n.nf\n",
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // roff: backslashes escaped; a line starting with '.' or '\'' is not a request.
        let line = line.replace('\\', "\\e");
        if line.starts_with('.') || line.starts_with('\'') {
            page.push_str("\\&");
        }
        let _ = writeln!(page, "{line}");
    }
    page.push_str(
        ".fi\n.SH FILES\n.TP\n/etc/sonde/sonde.yaml\nthe configuration (every key: \
         /usr/share/doc/sonde/configuration.md)\n.TP\n/etc/sonde/sonde.env\noptional \
         environment for the service (OTEL_*, SONDE_*)\n\
         .SH SEE ALSO\n/usr/share/doc/sonde/deploy.md, /usr/share/doc/sonde/telemetry.md\n",
    );
    Ok(page)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    // No name and no time in the header (gzip -n), as Debian requires.
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// DEBIAN/md5sums: every file below `tree` except DEBIAN/ and the conffiles under etc/
/// (dpkg keeps their sums itself), as md5sum writes it.
fn md5sums(tree: &Path) -> Result<String> {
    let mut files: Vec<String> = walk(tree)?
        .into_iter()
        .filter(|p| p.is_file())
        .filter_map(|p| Some(p.strip_prefix(tree).ok()?.to_string_lossy().into_owned()))
        .filter(|p| !p.starts_with("DEBIAN") && !p.starts_with("etc/"))
        .collect();
    files.sort();
    let out = Command::new("md5sum")
        .args(&files)
        .current_dir(tree)
        .output()
        .context("md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed");
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn du_kib(tree: &Path) -> Result<u64> {
    let bytes: u64 = walk(tree)?
        .iter()
        .filter(|p| p.is_file())
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    Ok(bytes.div_ceil(1024))
}

/// Every path below `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    Ok(out)
}

/// Tags lintian raises that do not apply, each with the reason.
const LINTIAN_OVERRIDES: &str = "\
# serde_yaml_ng (the configuration file's parser) uses unsafe-libyaml, libyaml translated
# to Rust and compiled into the binary: there is no C library to link to instead.
sonde: embedded-library libyaml [usr/bin/sonde]
";

/// debhelper's systemd snippets (dh_installsystemd), for one unit.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
	# Removes only the mask left by a removal (postrm).
	deb-systemd-helper unmask 'sonde.service' >/dev/null || true
	# Enabled on first installation; an administrator's disable is kept.
	if deb-systemd-helper --quiet was-enabled 'sonde.service'; then
		deb-systemd-helper enable 'sonde.service' >/dev/null || true
	else
		deb-systemd-helper update-state 'sonde.service' >/dev/null || true
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke restart 'sonde.service' >/dev/null || true
		else
			deb-systemd-invoke start 'sonde.service' >/dev/null || true
		fi
	fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop 'sonde.service' >/dev/null || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && command -v deb-systemd-helper >/dev/null; then
	deb-systemd-helper mask 'sonde.service' >/dev/null || true
fi
if [ "$1" = "purge" ] && command -v deb-systemd-helper >/dev/null; then
	deb-systemd-helper purge 'sonde.service' >/dev/null || true
	deb-systemd-helper unmask 'sonde.service' >/dev/null || true
fi
"#;
