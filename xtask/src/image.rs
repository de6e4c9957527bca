//! `cargo xtask image`: an OCI image of sonde, written without a container engine.
//!
//! One layer holds the stripped release binary at `/usr/bin/sonde`, the glibc libraries it
//! links (as `ldd` resolves them on this machine) and the licence; nothing else: no shell,
//! no package manager. A static musl build would be smaller by about 2 MiB but could not
//! load NVML: sonde `dlopen`s the driver's `libnvidia-ml.so.1`, which the NVIDIA container
//! toolkit mounts into the container and which needs glibc's loader.
//!
//! The result is an OCI image layout in a tar archive (`target/image/sonde-VERSION.oci.tar`)
//! that `podman load`, `skopeo copy oci-archive:...` and `docker load` (25 and later) take.
//! Every timestamp is the commit's time, so one commit gives one image digest.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where the image's layout archive is written, for this version.
pub fn archive_path(root: &Path) -> PathBuf {
    root.join("target/image")
        .join(format!("sonde-{}.oci.tar", env!("CARGO_PKG_VERSION")))
}

/// The CA bundle copied into the image from the building machine.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The name the image gets in the local store when no `--tag` is given.
pub fn default_reference() -> String {
    format!("localhost/sonde:{}", env!("CARGO_PKG_VERSION"))
}

/// Writes the image of `binary` (already stripped) as an OCI layout archive named
/// `reference`, and returns the archive's path.
pub fn build(root: &Path, binary: &Path, reference: &str) -> Result<PathBuf> {
    let epoch = crate::commit_time(root);
    let revision = crate::commit_id(root);
    let mut files = vec![
        (
            PathBuf::from("usr/bin/sonde"),
            std::fs::read(binary)?,
            0o755,
        ),
        (
            PathBuf::from("usr/share/licenses/sonde/LICENSE"),
            std::fs::read(root.join("LICENSE"))?,
            0o644,
        ),
        // The system roots for OTLP to an https:// collector (Debian's ca-certificates,
        // where rustls-native-certs looks first).
        (
            PathBuf::from(CA_BUNDLE.trim_start_matches('/')),
            std::fs::read(CA_BUNDLE).with_context(|| format!("reading {CA_BUNDLE}"))?,
            0o644,
        ),
    ];
    for lib in linked_libraries(binary)? {
        let bytes = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        let inside = lib.strip_prefix("/").unwrap_or(&lib).to_path_buf();
        files.push((inside, bytes, 0o755));
    }
    let layer_tar = layer(&files, epoch)?;
    let diff_id = sha256(&layer_tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer_tar)?;
    let layer_gz = gz.finish()?;

    let created = crate::rfc3339(epoch);
    let version = env!("CARGO_PKG_VERSION");
    let labels = json!({
        "org.opencontainers.image.title": "sonde",
        "org.opencontainers.image.description":
            "Host-level observability agent: eBPF spans and RED metrics for HTTP, Redis, \
             PostgreSQL and LLM calls, NVIDIA GPU statistics",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": env!("CARGO_PKG_REPOSITORY"),
        "org.opencontainers.image.licenses": env!("CARGO_PKG_LICENSE"),
        "org.opencontainers.image.created": created,
    });
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            // No shell in the image: the entrypoint is the program itself.
            "Entrypoint": ["/usr/bin/sonde"],
            "Env": ["PATH=/usr/bin"],
            "ExposedPorts": { "9464/tcp": {} },
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created": created, "created_by": "cargo xtask image" }],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer_gz)],
        "annotations": labels,
    }))?;
    let mut manifest_ref = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    // ref.name for podman and skopeo; containerd's name for `docker load`.
    manifest_ref["annotations"] = json!({
        "org.opencontainers.image.ref.name": reference,
        "io.containerd.image.name": reference,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_ref],
    }))?;

    let mut entries: Vec<(PathBuf, Vec<u8>, u32)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            0o644,
        ),
        ("index.json".into(), index, 0o644),
    ];
    for blob in [config, manifest, layer_gz] {
        let name = PathBuf::from("blobs/sha256").join(sha256(&blob));
        entries.push((name, blob, 0o644));
    }
    let archive = archive_path(root);
    std::fs::create_dir_all(archive.parent().context("archive path")?)?;
    std::fs::write(&archive, layer(&entries, epoch)?)
        .with_context(|| format!("writing {}", archive.display()))?;
    Ok(archive)
}

/// Loads the archive into the local podman store under `reference`.
pub fn load(archive: &Path, reference: &str) -> Result<()> {
    crate::run(Command::new("podman").args([
        "load",
        "--quiet",
        "--input",
        &archive.to_string_lossy(),
    ]))
    .context("podman load (install podman, or copy the archive with skopeo)")?;
    // podman names the image after the index's ref.name annotation.
    if !crate::succeeds(Command::new("podman").args(["image", "exists", reference])) {
        bail!(
            "podman loaded {} but has no image named {reference}",
            archive.display()
        );
    }
    Ok(())
}

/// The shared libraries `binary` links, as the loader here resolves them (the vDSO left
/// out); empty for a static binary.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("ldd {} failed: {}", binary.display(), text.trim());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let path = rest.split_whitespace().next().unwrap_or("");
                if path == "not" {
                    bail!("ldd: {} is not found on this machine", name.trim());
                }
                path
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A tar of `files` (path inside, bytes, mode) with the directories above them, owned by
/// root, every time `epoch`: the same inputs give the same bytes.
fn layer(files: &[(PathBuf, Vec<u8>, u32)], epoch: u64) -> Result<Vec<u8>> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (path, _, _) in files {
        for dir in path.ancestors().skip(1) {
            if !dir.as_os_str().is_empty() && !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs.sort();
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(epoch);
        h
    };
    for dir in &dirs {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    let mut sorted: Vec<&(PathBuf, Vec<u8>, u32)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, bytes, mode) in sorted {
        let mut h = header(tar::EntryType::Regular, bytes.len() as u64, *mode);
        tar.append_data(&mut h, path, bytes.as_slice())?;
    }
    Ok(tar.into_inner()?)
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", sha256(blob)),
        "size": blob.len(),
    })
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
