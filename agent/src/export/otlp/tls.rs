//! TLS to the collector for `https://` endpoints: which roots verify it (the file of
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`, else the system's), and the client certificate sonde
//! shows when the collector asks for one (`_CLIENT_CERTIFICATE` and `_CLIENT_KEY`). The
//! files are read and checked once, at start, so a wrong path stops sonde with its variable.
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// A file named by a variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSetting {
    pub var: String,
    pub path: PathBuf,
}

/// The TLS files of one signal's destination (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Trusted CA certificates (PEM) that replace the system roots.
    pub ca: Option<FileSetting>,
    pub client_cert: Option<FileSetting>,
    pub client_key: Option<FileSetting>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }
}

#[derive(Debug, Error)]
#[error("{var}={path:?}: {reason}")]
pub struct TlsError {
    pub var: String,
    pub path: String,
    pub reason: String,
}

/// The PEM contents of a destination's TLS files, checked.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The trusted CA certificates; None: the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key, as PEM.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    /// Reads and checks the files: each must hold what its variable names.
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
        let ca_pem = match &files.ca {
            Some(f) => {
                let pem = read(f)?;
                certificates(f, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let identity_pem = match (&files.client_cert, &files.client_key) {
            (Some(c), Some(k)) => {
                let (cert, key) = (read(c)?, read(k)?);
                certificates(c, &cert)?;
                private_key(k, &key)?;
                Some((cert, key))
            }
            // Settings refuse one without the other.
            _ => None,
        };
        Ok(TlsMaterial {
            ca_pem,
            identity_pem,
        })
    }

    /// A rustls client configuration (hyper-rustls sets its ALPN protocols).
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem).flatten() {
                    roots.add(cert).map_err(|e| TlsError {
                        var: "OTEL_EXPORTER_OTLP_CERTIFICATE".into(),
                        path: String::new(),
                        reason: e.to_string(),
                    })?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(TlsError {
                        var: "system roots".into(),
                        path: "/etc/ssl/certs".into(),
                        reason: "no CA certificate found; install the system's CA bundle or \
                                 name one with OTEL_EXPORTER_OTLP_CERTIFICATE"
                            .into(),
                    });
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error("rustls", e))?
            .with_root_certificates(roots);
        Ok(match &self.identity_pem {
            Some((cert, key)) => {
                let chain: Vec<_> = CertificateDer::pem_slice_iter(cert).flatten().collect();
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| tls_error("OTEL_EXPORTER_OTLP_CLIENT_KEY", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_error("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", e))?
            }
            None => builder.with_no_client_auth(),
        })
    }

    /// A configuration for a connector that only ever connects to http:// (no roots).
    pub fn unused_config() -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // ring's provider has the TLS 1.2 and 1.3 suites this asks for.
            .expect("ring supports the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }

    /// The same settings for tonic's gRPC channel.
    pub fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity_pem {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

fn tls_error(var: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError {
        var: var.to_string(),
        path: String::new(),
        reason: e.to_string(),
    }
}

fn read(f: &FileSetting) -> Result<Vec<u8>, TlsError> {
    std::fs::read(&f.path).map_err(|e| error(f, format!("cannot read it: {e}")))
}

fn certificates(f: &FileSetting, pem: &[u8]) -> Result<(), TlsError> {
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| error(f, format!("not a PEM certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(error(f, "holds no PEM certificate".into()));
    }
    Ok(())
}

fn private_key(f: &FileSetting, pem: &[u8]) -> Result<(), TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map(|_| ())
        .map_err(|e| error(f, format!("holds no PEM private key: {e}")))
}

fn error(f: &FileSetting, reason: String) -> TlsError {
    TlsError {
        var: f.var.clone(),
        path: f.path.display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(var: &str, path: PathBuf) -> Option<FileSetting> {
        Some(FileSetting {
            var: var.into(),
            path,
        })
    }

    #[test]
    fn a_missing_or_wrong_file_names_its_variable() {
        let dir = std::env::temp_dir().join(format!("sonde-otlp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            ca: setting("OTEL_EXPORTER_OTLP_CERTIFICATE", dir.join("absent.pem")),
            ..TlsFiles::default()
        };
        let e = TlsMaterial::load(&files).err().unwrap();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_CERTIFICATE");
        assert!(e.reason.contains("cannot read"), "{e}");

        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let files = TlsFiles {
            ca: setting("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", not_pem.clone()),
            ..TlsFiles::default()
        };
        let e = TlsMaterial::load(&files).err().unwrap();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE");
        assert!(e.reason.contains("no PEM certificate"), "{e}");

        let cert = certificate_pem();
        let cert_file = dir.join("cert.pem");
        std::fs::write(&cert_file, cert).unwrap();
        let files = TlsFiles {
            client_cert: setting("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert_file),
            client_key: setting("OTEL_EXPORTER_OTLP_CLIENT_KEY", not_pem),
            ..TlsFiles::default()
        };
        let e = TlsMaterial::load(&files).err().unwrap();
        assert_eq!(e.var, "OTEL_EXPORTER_OTLP_CLIENT_KEY");
        assert!(e.reason.contains("no PEM private key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A self-signed certificate (openssl, valid for a century): only its PEM shape matters.
    fn certificate_pem() -> &'static str {
        include_str!("testdata/certificate.pem")
    }
}
