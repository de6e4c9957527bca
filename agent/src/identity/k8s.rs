//! The Kubernetes API, listed and then watched: the pods of this node (a `spec.nodeName`
//! field selector), indexed by container id, so that a process's container id (from
//! /proc/PID/cgroup) gives its pod, namespace, container, owner and service name; and the
//! cluster's Services by address (`identity::services`), to name peers off this host.
//!
//! In a cluster sonde uses its pod's ServiceAccount (`kubernetes_api: in-cluster`): HTTPS to
//! `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`, the server checked against the
//! ServiceAccount's CA, and its token sent as a bearer token (read again at every connection,
//! since the kubelet rotates it). Plain `http://` is for a local proxy and for tests.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use thiserror::Error;

/// Where Kubernetes mounts a pod's ServiceAccount token and the cluster's CA.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const SERVICE_ACCOUNT_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// What a process learns from its pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub container_name: String,
    pub node_name: String,
    /// The workload that owns the pod: (`k8s.deployment.name`-style attribute, name).
    pub owner: Option<(&'static str, String)>,
    /// Annotation, then labels, then owner, then container name.
    pub service_name: String,
}

impl PodMeta {
    /// The `k8s.*` resource attributes of a pod.
    pub fn attributes(&self) -> Vec<(&'static str, &str)> {
        let mut a = vec![
            ("k8s.namespace.name", self.namespace.as_str()),
            ("k8s.pod.name", self.pod_name.as_str()),
            ("k8s.pod.uid", self.pod_uid.as_str()),
            ("k8s.container.name", self.container_name.as_str()),
            ("k8s.node.name", self.node_name.as_str()),
        ];
        if let Some((k, v)) = &self.owner {
            a.push((k, v.as_str()));
        }
        a
    }
}

/// Pods of this node by container id (64 hex digits, runtime prefix removed).
#[derive(Default)]
pub struct PodIndex {
    by_container: HashMap<String, Arc<PodMeta>>,
    /// Container ids of each pod uid, to forget a deleted pod's containers.
    by_pod: HashMap<String, Vec<String>>,
}

pub type SharedPodIndex = Arc<RwLock<PodIndex>>;

/// Objects sonde lists and then watches, and the index it keeps of them.
pub trait Watched: Default + Send + Sync + 'static {
    /// What the index gives, in log lines ("pod metadata").
    const PURPOSE: &'static str;
    /// The name of the thread that keeps it (at most 15 bytes).
    const THREAD: &'static str;
    /// The list request's path and query; the watch adds its own parameters.
    fn path(api: &ApiConfig) -> String;
    /// Adds or replaces an object.
    fn upsert(&mut self, object: &Value);
    fn remove(&mut self, object: &Value);
    /// Replaces everything with a list's items.
    fn replace_all(&mut self, items: &[Value]) {
        *self = Self::default();
        for object in items {
            self.upsert(object);
        }
    }
}

impl PodIndex {
    pub fn get(&self, container_id: &str) -> Option<Arc<PodMeta>> {
        self.by_container.get(container_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_container.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_container.is_empty()
    }

    fn remove_uid(&mut self, uid: &str) {
        for id in self.by_pod.remove(uid).unwrap_or_default() {
            self.by_container.remove(&id);
        }
    }
}

impl Watched for PodIndex {
    const PURPOSE: &'static str = "pod metadata";
    const THREAD: &'static str = "sonde-k8s-pods";

    fn path(api: &ApiConfig) -> String {
        format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            api.node_name
        )
    }

    /// A JSON `v1.Pod`.
    fn upsert(&mut self, pod: &Value) {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.remove_uid(&uid);
        let mut ids = Vec::new();
        for (id, meta) in containers_of(pod) {
            self.by_container.insert(id.clone(), Arc::new(meta));
            ids.push(id);
        }
        self.by_pod.insert(uid, ids);
    }

    fn remove(&mut self, pod: &Value) {
        self.remove_uid(pod["metadata"]["uid"].as_str().unwrap_or_default());
    }
}

/// (container id, metadata) for every container of a pod that has started.
fn containers_of(pod: &Value) -> Vec<(String, PodMeta)> {
    let md = &pod["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let owner = owner_of(pod);
    let statuses = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][k].as_array())
        .flatten();
    statuses
        .filter_map(|c| {
            // "containerd://<id>", "docker://<id>", "cri-o://<id>".
            let id = c["containerID"].as_str()?.rsplit("://").next()?.to_string();
            let container_name = s(&c["name"]);
            let service_name = service_name(pod, owner.as_ref(), &container_name);
            Some((
                id,
                PodMeta {
                    namespace: s(&md["namespace"]),
                    pod_name: s(&md["name"]),
                    pod_uid: s(&md["uid"]),
                    container_name,
                    node_name: s(&pod["spec"]["nodeName"]),
                    owner: owner.clone(),
                    service_name,
                },
            ))
        })
        .collect()
}

/// The workload owning a pod. A ReplicaSet named `<deployment>-<pod-template-hash>` is
/// reported as its Deployment; a Job named `<cronjob>-<digits>` with a CronJob-style
/// name as the CronJob's.
fn owner_of(pod: &Value) -> Option<(&'static str, String)> {
    let owner = pod["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"].as_bool() == Some(true))?;
    let name = owner["name"].as_str()?.to_string();
    let hash = pod["metadata"]["labels"]["pod-template-hash"].as_str();
    Some(match owner["kind"].as_str()? {
        "ReplicaSet" => match hash.and_then(|h| name.strip_suffix(&format!("-{h}"))) {
            Some(deployment) => ("k8s.deployment.name", deployment.to_string()),
            None => ("k8s.replicaset.name", name),
        },
        "StatefulSet" => ("k8s.statefulset.name", name),
        "DaemonSet" => ("k8s.daemonset.name", name),
        "Job" => match name.rsplit_once('-') {
            Some((cron, n)) if n.len() >= 8 && n.bytes().all(|b| b.is_ascii_digit()) => {
                ("k8s.cronjob.name", cron.to_string())
            }
            _ => ("k8s.job.name", name),
        },
        _ => return None,
    })
}

/// The annotation `resource.opentelemetry.io/service.name`, then the labels
/// `app.kubernetes.io/name` and `app.kubernetes.io/instance`, then the owner's name,
/// then the container's.
fn service_name(pod: &Value, owner: Option<&(&'static str, String)>, container: &str) -> String {
    let md = &pod["metadata"];
    let non_empty = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    non_empty(&md["annotations"]["resource.opentelemetry.io/service.name"])
        .or_else(|| non_empty(&md["labels"]["app.kubernetes.io/name"]))
        .or_else(|| non_empty(&md["labels"]["app.kubernetes.io/instance"]))
        .or_else(|| owner.map(|(_, n)| n.clone()))
        .unwrap_or_else(|| container.to_string())
}

#[derive(Debug, Error)]
pub enum K8sError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("bad answer: {0}")]
    Protocol(String),
    #[error("bad JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The token's content is never part of a message.
    #[error("cannot read the token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How sonde reaches the API, and this node's name.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `host:port`, connected to and sent as `Host`.
    pub host_port: String,
    pub node_name: String,
    /// Set for `https://`: the server is verified and a bearer token is sent.
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    token_file: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// A setting of the API that cannot work, with the configuration key it is about.
#[derive(Debug, Error)]
pub enum ApiSettingsError {
    /// `kubernetes_api`: the address, or the variables `in-cluster` needs.
    #[error("{0}")]
    Api(String),
    /// `kubernetes_ca_file`.
    #[error("CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    /// `kubernetes_token_file`.
    #[error(transparent)]
    Token(K8sError),
}

impl ApiSettingsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            ApiSettingsError::Api(_) => "kubernetes_api",
            ApiSettingsError::CaFile { .. } => "kubernetes_ca_file",
            ApiSettingsError::Token(_) => "kubernetes_token_file",
        }
    }
}

/// Where the API is, as configured: `in-cluster`, `https://HOST[:PORT]` or
/// `http://HOST[:PORT]`, with the files an `https` API needs.
pub struct ApiSettings<'a> {
    pub api: &'a str,
    pub node_name: &'a str,
    pub token_file: &'a Path,
    pub ca_file: &'a Path,
}

impl ApiConfig {
    /// Checks the settings (and, for HTTPS, loads the CA and reads the token once); an error
    /// says what is wrong in words a configuration message can carry. `env` reads the
    /// `KUBERNETES_SERVICE_*` variables for `in-cluster`.
    pub fn new(
        s: &ApiSettings<'_>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ApiConfig, ApiSettingsError> {
        // (https?, host without brackets, port)
        let (https, host, port) = if s.api == "in-cluster" {
            let var = |name: &str| {
                env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                    ApiSettingsError::Api(format!("`in-cluster` needs {name}, which Kubernetes sets in every pod; it is not set"))
                })
            };
            let host = var("KUBERNETES_SERVICE_HOST")?;
            let port = var("KUBERNETES_SERVICE_PORT")?;
            let port = port.parse().map_err(|_| {
                ApiSettingsError::Api(format!("KUBERNETES_SERVICE_PORT `{port}` is not a port"))
            })?;
            (true, host, port)
        } else {
            let (https, rest) = if let Some(rest) = s.api.strip_prefix("https://") {
                (true, rest)
            } else if let Some(rest) = s.api.strip_prefix("http://") {
                (false, rest)
            } else {
                return Err(not_an_api(s.api));
            };
            let (host, port) =
                split_authority(rest.trim_end_matches('/'), if https { 443 } else { 80 })
                    .ok_or_else(|| not_an_api(s.api))?;
            (https, host.to_string(), port)
        };
        let host_port = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let tls = if https {
            let config = Arc::new(client_config(s.ca_file)?);
            // Read once here too, so that a missing token is a configuration error.
            read_token(s.token_file).map_err(ApiSettingsError::Token)?;
            Some(Tls {
                config,
                server_name: ServerName::try_from(host.clone()).map_err(|e| {
                    ApiSettingsError::Api(format!("`{host}` is not a valid server name: {e}"))
                })?,
                token_file: s.token_file.to_path_buf(),
            })
        } else {
            None
        };
        Ok(ApiConfig {
            host_port,
            node_name: s.node_name.to_string(),
            tls,
        })
    }

    /// Whether requests go over TLS with the ServiceAccount's token.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }
}

/// The watch request for `I` from `resource_version`.
fn watch_path<I: Watched>(api: &ApiConfig, resource_version: &str) -> String {
    let path = I::path(api);
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}watch=1&allowWatchBookmarks=true&resourceVersion={resource_version}")
}

fn not_an_api(url: &str) -> ApiSettingsError {
    ApiSettingsError::Api(format!(
        "`{url}` is not in-cluster, https://HOST[:PORT] or http://HOST[:PORT]"
    ))
}

/// `host[:port]` or `[v6][:port]` into the host (without brackets) and the port.
fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty() && !host.contains('/')).then_some((host, port))
}

/// A TLS client that trusts only the certificates in `ca_file` (the cluster's CA).
fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, ApiSettingsError> {
    let what = |reason: String| ApiSettingsError::CaFile {
        path: ca_file.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(ca_file).map_err(|e| what(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| what(e.to_string()))?;
        roots.add(cert).map_err(|e| what(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(what("no PEM certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| what(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The bearer token, trimmed. Read at every connection: the kubelet rotates the file.
fn read_token(path: &Path) -> Result<String, K8sError> {
    let token = std::fs::read_to_string(path).map_err(|source| K8sError::Token {
        path: path.to_path_buf(),
        source,
    })?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(K8sError::Token {
            path: path.to_path_buf(),
            source: std::io::Error::other("the file is empty"),
        });
    }
    Ok(token)
}

/// A connection to the API, plain or TLS.
pub trait Connection: Read + Write + Send {}
impl<T: Read + Write + Send> Connection for T {}

/// One GET; returns the status and a reader positioned at the (de-chunked) body.
fn get(api: &ApiConfig, path: &str, timeout: Option<Duration>) -> Result<Body, K8sError> {
    let tcp = TcpStream::connect(&api.host_port)?;
    tcp.set_read_timeout(timeout)?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let (mut stream, auth): (Box<dyn Connection>, String) = match &api.tls {
        Some(tls) => {
            let token = read_token(&tls.token_file)?;
            let conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())?;
            (
                Box::new(rustls::StreamOwned::new(conn, tcp)),
                format!("Authorization: Bearer {token}\r\n"),
            )
        }
        None => (Box::new(tcp), String::new()),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Accept: application/json\r\nUser-Agent: sonde\r\nConnection: close\r\n\r\n",
        api.host_port
    )?;
    stream.flush()?;
    read_response(stream)
}

/// Reads a response's status line and headers from `stream`; returns a reader positioned at
/// the (de-chunked) body; a status other than 200 is an error that quotes the body's start.
pub fn read_response(stream: Box<dyn Connection>) -> Result<Body, K8sError> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| K8sError::Protocol(format!("status line {line:?}")))?;
    let mut chunked = false;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    // A body with a length ends there, whether or not the peer then closes cleanly.
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(_)) => Framing::Length,
        (false, None) => Framing::UntilClose,
    };
    let mut body = Body {
        reader,
        framing,
        left: if framing == Framing::Length {
            length.unwrap_or(0)
        } else {
            0
        },
        done: false,
    };
    if status != 200 {
        let mut text = String::new();
        let _ = body.read_to_string(&mut text);
        // At most 300 bytes, cut between characters (found by the k8s_watch fuzz target:
        // a multi-byte character across byte 300 panicked the watch thread).
        let cut = (0..=text.len().min(300))
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        return Err(K8sError::Status { status, body: text });
    }
    Ok(body)
}

/// A response body, chunked or not.
pub struct Body {
    reader: BufReader<Box<dyn Connection>>,
    framing: Framing,
    /// Bytes left in the current chunk, or of the Content-Length.
    left: usize,
    done: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length,
    UntilClose,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.framing == Framing::UntilClose {
            return self.reader.read(buf);
        }
        if self.done || (self.framing == Framing::Length && self.left == 0) {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            // Blank lines: the CRLF after the previous chunk's data (skipped in a loop, not
            // by recursion: a peer can send any number of them).
            while size.trim().is_empty() {
                size.clear();
                if self.reader.read_line(&mut size)? == 0 {
                    self.done = true;
                    return Ok(0);
                }
            }
            let size = size.trim();
            let hex = size.split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(hex, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.left);
        let n = self.reader.read(&mut buf[..n])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n;
        Ok(n)
    }
}

/// Lists `I`'s objects into `index`; returns the list's resourceVersion.
pub fn list<I: Watched>(api: &ApiConfig, index: &Arc<RwLock<I>>) -> Result<String, K8sError> {
    let body = get(api, &I::path(api), Some(Duration::from_secs(30)))?;
    let list: Value = serde_json::from_reader(body)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    index
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace_all(&items);
    Ok(list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Applies watch events until the stream ends; returns the last resourceVersion seen, or
/// None when the API says it is too old (410 Gone: list again).
pub fn watch<I: Watched>(
    api: &ApiConfig,
    from: &str,
    index: &Arc<RwLock<I>>,
) -> Result<Option<String>, K8sError> {
    let body = get(
        api,
        &watch_path::<I>(api, from),
        Some(Duration::from_secs(600)),
    )?;
    apply_watch_events(BufReader::new(body), from, index)
}

/// Applies a watch stream's events (one JSON object per line) to `index`; returns the last
/// resourceVersion seen (`from` when none), or None when the API says it is too old.
pub fn apply_watch_events<I: Watched>(
    body: impl BufRead,
    from: &str,
    index: &Arc<RwLock<I>>,
) -> Result<Option<String>, K8sError> {
    let mut version = from.to_string();
    for line in body.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(&line)?;
        let object = &event["object"];
        if let Some(rv) = object["metadata"]["resourceVersion"].as_str() {
            version = rv.to_string();
        }
        let mut index = index.write().unwrap_or_else(|e| e.into_inner());
        match event["type"].as_str() {
            Some("ADDED" | "MODIFIED") => index.upsert(object),
            Some("DELETED") => index.remove(object),
            Some("ERROR") if object["code"].as_u64() == Some(410) => return Ok(None),
            _ => {} // BOOKMARK
        }
    }
    Ok(Some(version))
}

/// Keeps `index` current on its own thread: list, then watch, and list again after an
/// error (backing off to 30 s). Failures are logged at most once a minute.
pub fn spawn<I: Watched>(api: ApiConfig, index: Arc<RwLock<I>>) {
    let run = move || {
        let mut backoff = Duration::from_secs(1);
        let mut last_log: Option<std::time::Instant> = None;
        loop {
            let result = list(&api, &index).and_then(|mut rv| loop {
                match watch(&api, &rv, &index)? {
                    Some(next) => rv = next,
                    None => return Ok(()),
                }
            });
            match result {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_log = Some(std::time::Instant::now());
                        log::warn!(
                            "Kubernetes API at {}: {e}; {} may be stale",
                            api.host_port,
                            I::PURPOSE
                        );
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name(I::THREAD.into())
        .spawn(run)
    {
        log::warn!("{} off: cannot start its thread: {e}", I::PURPOSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, labels: Value, annotations: Value, owner: Value, ids: &[&str]) -> Value {
        json!({
            "metadata": {"name": "web-7d4b9c8f6-x2x9q", "namespace": "shop", "uid": uid,
                         "labels": labels, "annotations": annotations, "ownerReferences": owner},
            "spec": {"nodeName": "node-a"},
            "status": {"containerStatuses": ids.iter().enumerate().map(|(i, id)| json!({
                "name": format!("c{i}"), "containerID": format!("containerd://{id}")
            })).collect::<Vec<_>>()}
        })
    }

    fn rs_owner() -> Value {
        json!([{"kind": "ReplicaSet", "name": "web-7d4b9c8f6", "controller": true}])
    }

    #[test]
    fn service_name_precedence_and_owner() {
        let hash = json!({"pod-template-hash": "7d4b9c8f6"});
        let mut labels = hash.clone();
        labels["app.kubernetes.io/instance"] = json!("web-prod");
        let p = pod("u1", labels.clone(), json!({}), rs_owner(), &["a1"]);
        let (_, meta) = &containers_of(&p)[0];
        assert_eq!(meta.service_name, "web-prod");
        assert_eq!(meta.owner, Some(("k8s.deployment.name", "web".into())));
        assert_eq!(
            (meta.namespace.as_str(), meta.container_name.as_str()),
            ("shop", "c0")
        );
        labels["app.kubernetes.io/name"] = json!("web-name");
        let p = pod("u1", labels.clone(), json!({}), rs_owner(), &["a1"]);
        assert_eq!(containers_of(&p)[0].1.service_name, "web-name");
        let ann = json!({"resource.opentelemetry.io/service.name": "checkout"});
        let p = pod("u1", labels, ann, rs_owner(), &["a1"]);
        assert_eq!(containers_of(&p)[0].1.service_name, "checkout");
        let p = pod("u1", hash, json!({}), rs_owner(), &["a1"]);
        assert_eq!(containers_of(&p)[0].1.service_name, "web", "the owner");
        let p = pod("u1", json!({}), json!({}), json!([]), &["a1"]);
        assert_eq!(containers_of(&p)[0].1.service_name, "c0", "the container");
        let job = json!([{"kind": "Job", "name": "report-28891440", "controller": true}]);
        let p = pod("u1", json!({}), json!({}), job, &["a1"]);
        assert_eq!(
            containers_of(&p)[0].1.owner,
            Some(("k8s.cronjob.name", "report".into()))
        );
    }

    #[test]
    fn index_follows_upserts_and_deletes() {
        let mut index = PodIndex::default();
        let p = pod("u1", json!({}), json!({}), json!([]), &["a1", "a2"]);
        index.upsert(&p);
        assert_eq!(index.len(), 2);
        // A restarted container has a new id: the old one is forgotten.
        index.upsert(&pod("u1", json!({}), json!({}), json!([]), &["a3"]));
        assert!(index.get("a1").is_none() && index.get("a3").is_some());
        index.remove(&p);
        assert!(index.is_empty());
    }

    fn settings<'a>(api: &'a str, token_file: &'a Path, ca_file: &'a Path) -> ApiSettings<'a> {
        ApiSettings {
            api,
            node_name: "node-a",
            token_file,
            ca_file,
        }
    }

    #[test]
    fn api_urls() {
        let no_env = |_: &str| None;
        let none = Path::new("/nonexistent");
        let api = ApiConfig::new(&settings("http://127.0.0.1:8001/", none, none), &no_env).unwrap();
        assert_eq!(
            (api.host_port.as_str(), api.is_https()),
            ("127.0.0.1:8001", false)
        );
        assert_eq!(
            watch_path::<PodIndex>(&api, "42"),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=1&allowWatchBookmarks=true&resourceVersion=42"
        );
        let v6 = ApiConfig::new(&settings("http://[::1]", none, none), &no_env).unwrap();
        assert_eq!(v6.host_port, "[::1]:80");
        for bad in [
            "ftp://x",
            "http://",
            "http://a/b",
            "http://a:port",
            "10.0.0.1",
        ] {
            let err = ApiConfig::new(&settings(bad, none, none), &no_env).unwrap_err();
            assert_eq!(err.key(), "kubernetes_api");
            assert!(
                err.to_string().contains("is not in-cluster"),
                "{bad}: {err}"
            );
        }
        let err = ApiConfig::new(&settings("in-cluster", none, none), &no_env).unwrap_err();
        assert!(
            err.to_string().contains("needs KUBERNETES_SERVICE_HOST"),
            "{err}"
        );
    }

    #[test]
    fn in_cluster_needs_a_ca_and_a_token() {
        let dir = std::env::temp_dir().join(format!("sonde-k8s-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_string()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
            _ => None,
        };
        let (token, ca) = (dir.join("token"), dir.join("ca.crt"));
        let s = settings("in-cluster", &token, &ca);
        let err = ApiConfig::new(&s, &env).unwrap_err();
        assert_eq!(err.key(), "kubernetes_ca_file");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("CA file {}", ca.display())),
            "{text}"
        );
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = ApiConfig::new(&s, &env).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::write(&ca, include_str!("../../../tests/fixtures/k8s/test-ca.crt")).unwrap();
        let err = ApiConfig::new(&s, &env).unwrap_err();
        assert_eq!(err.key(), "kubernetes_token_file");
        assert!(
            err.to_string().starts_with("cannot read the token file"),
            "{err}"
        );
        std::fs::write(&token, "  \n").unwrap();
        let err = ApiConfig::new(&s, &env).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        std::fs::write(&token, "secret-token-value\n").unwrap();
        let api = ApiConfig::new(&s, &env).unwrap();
        assert_eq!(
            (api.host_port.as_str(), api.is_https()),
            ("10.96.0.1:443", true)
        );
        assert!(!format!("{api:?}").contains("secret-token-value"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bodies_end_at_their_length_or_last_chunk() {
        let body = |framing, left, wire: &str| {
            let conn: Box<dyn Connection> =
                Box::new(std::io::Cursor::new(wire.as_bytes().to_vec()));
            let mut b = Body {
                reader: BufReader::new(conn),
                framing,
                left,
                done: false,
            };
            let mut out = String::new();
            b.read_to_string(&mut out).map(|_| out)
        };
        // Bytes after Content-Length are not the body's (a peer that then closes uncleanly
        // must not turn a complete body into an error).
        assert_eq!(
            body(Framing::Length, 5, "hello, and more").unwrap(),
            "hello"
        );
        assert_eq!(
            body(
                Framing::Chunked,
                0,
                "4\r\n{\"a\"\r\n2;ext=1\r\n:1\r\n1\r\n}\r\n0\r\n\r\n"
            )
            .unwrap(),
            "{\"a\":1}"
        );
        assert!(body(Framing::Chunked, 0, "zz\r\nhi\r\n").is_err());
        assert_eq!(
            body(Framing::UntilClose, 0, "all of it").unwrap(),
            "all of it"
        );
    }

    /// Found while writing the `k8s_watch` fuzz target: each blank line between chunks was
    /// skipped by a recursive call, so a stream of them overflowed the stack.
    #[test]
    fn blank_lines_between_chunks_do_not_overflow_the_stack() {
        let wire = format!("{}2\r\nok\r\n0\r\n\r\n", "\r\n".repeat(1_000_000));
        let conn: Box<dyn Connection> = Box::new(std::io::Cursor::new(wire.into_bytes()));
        let mut b = Body {
            reader: BufReader::new(conn),
            framing: Framing::Chunked,
            left: 0,
            done: false,
        };
        let mut out = String::new();
        b.read_to_string(&mut out).unwrap();
        assert_eq!(out, "ok");
    }

    /// Found by the `k8s_watch` fuzz target: an error body was cut at byte 300 whether or
    /// not a character ended there, which panicked the watch thread.
    #[test]
    fn an_error_body_is_quoted_up_to_a_character_boundary() {
        for pad in 295..302 {
            let body = format!("{}{}", "x".repeat(pad), "é".repeat(10));
            let wire = format!(
                "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let conn: Box<dyn Connection> = Box::new(std::io::Cursor::new(wire.into_bytes()));
            match read_response(conn) {
                Err(K8sError::Status {
                    status,
                    body: quoted,
                }) => {
                    assert_eq!(status, 403);
                    assert!(
                        quoted.len() <= 300 && quoted.len() >= 299,
                        "{}",
                        quoted.len()
                    );
                    assert!(body.starts_with(&quoted));
                }
                other => panic!("{pad}: {:?}", other.err()),
            }
        }
    }
}
