//! Sending one OTLP request: gRPC (tonic) or HTTP/protobuf (hyper), with the configured
//! headers, timeout and compression. Errors say whether a retry may succeed.
use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use thiserror::Error;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::settings::{Destination, Protocol};

#[derive(Debug, Error)]
pub enum SendError {
    /// The collector may accept it later: unavailable, overloaded, timed out.
    #[error("{0} (will retry)")]
    Retryable(String),
    /// The collector refused the data itself: sending it again would not help.
    #[error("{0}")]
    Permanent(String),
}

#[derive(Debug, Error)]
#[error("OTLP header `{name}`: {reason}")]
pub struct HeaderError {
    name: String,
    reason: String,
}

/// One gRPC export call: the generated clients of the two services share no trait.
macro_rules! grpc_export {
    ($client:ident, $channel:expr, $metadata:expr, $gzip:expr, $req:expr) => {{
        let mut client = $client::new($channel.clone());
        if $gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let request =
            tonic::Request::from_parts($metadata.clone(), tonic::Extensions::default(), $req);
        client.export(request).await.map(|_| ()).map_err(grpc_error)
    }};
}

/// A connection to one signal's destination. gRPC connects lazily and reconnects by itself.
pub enum Transport {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
        gzip: bool,
    },
    Http {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        url: hyper::Uri,
        headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
        gzip: bool,
        timeout: std::time::Duration,
    },
}

impl Transport {
    pub fn new(d: &Destination) -> Result<Transport, HeaderError> {
        let bad = |name: &str, reason: String| HeaderError {
            name: name.to_string(),
            reason,
        };
        Ok(match d.protocol {
            Protocol::Grpc => {
                let mut metadata = MetadataMap::new();
                for (k, v) in &d.headers {
                    let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                        .map_err(|e| bad(k, e.to_string()))?;
                    let value =
                        MetadataValue::try_from(v.as_str()).map_err(|e| bad(k, e.to_string()))?;
                    metadata.insert(key, value);
                }
                // The endpoint was checked when the settings were read.
                let channel = Endpoint::from_shared(d.endpoint.clone())
                    .map_err(|e| bad("endpoint", e.to_string()))?
                    .timeout(d.timeout)
                    .connect_timeout(d.timeout)
                    .connect_lazy();
                Transport::Grpc {
                    channel,
                    metadata,
                    gzip: d.gzip,
                }
            }
            Protocol::HttpProtobuf => {
                let mut headers = Vec::new();
                for (k, v) in &d.headers {
                    let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| bad(k, e.to_string()))?;
                    let value = hyper::header::HeaderValue::from_str(v)
                        .map_err(|e| bad(k, e.to_string()))?;
                    headers.push((name, value));
                }
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(d.timeout));
                Transport::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
                    url: d
                        .endpoint
                        .parse()
                        .map_err(|e: hyper::http::uri::InvalidUri| {
                            bad("endpoint", e.to_string())
                        })?,
                    headers,
                    gzip: d.gzip,
                    timeout: d.timeout,
                }
            }
        })
    }

    pub async fn send_traces(&self, req: ExportTraceServiceRequest) -> Result<(), SendError> {
        match self {
            Transport::Grpc {
                channel,
                metadata,
                gzip,
            } => grpc_export!(TraceServiceClient, channel, metadata, *gzip, req),
            Transport::Http { .. } => self.post(req.encode_to_vec()).await,
        }
    }

    pub async fn send_metrics(&self, req: ExportMetricsServiceRequest) -> Result<(), SendError> {
        match self {
            Transport::Grpc {
                channel,
                metadata,
                gzip,
            } => grpc_export!(MetricsServiceClient, channel, metadata, *gzip, req),
            Transport::Http { .. } => self.post(req.encode_to_vec()).await,
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), SendError> {
        let Transport::Http {
            client,
            url,
            headers,
            gzip,
            timeout,
        } = self
        else {
            unreachable!("post is only called on the HTTP transport");
        };
        let mut builder = hyper::Request::post(url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/x-protobuf");
        for (k, v) in headers {
            builder = builder.header(k, v);
        }
        let body = if *gzip {
            builder = builder.header(hyper::header::CONTENT_ENCODING, "gzip");
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            // Writing into a Vec cannot fail.
            let _ = enc.write_all(&body);
            enc.finish().unwrap_or_default()
        } else {
            body
        };
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let response = match tokio::time::timeout(*timeout, client.request(request)).await {
            Err(_) => return Err(SendError::Retryable(format!("no answer in {timeout:?}"))),
            Ok(Err(e)) => return Err(SendError::Retryable(format!("{url}: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        // Read the body so the connection can be reused; its content is only for errors.
        let text = match tokio::time::timeout(*timeout, response.into_body().collect()).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()[..])
                .chars()
                .take(200)
                .collect(),
            _ => String::new(),
        };
        if status.is_success() {
            return Ok(());
        }
        let message = format!("{url}: HTTP {status} {text}");
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(SendError::Retryable(message)),
            _ => Err(SendError::Permanent(message)),
        }
    }
}

/// The gRPC codes the OTLP specification names retryable.
fn grpc_error(status: tonic::Status) -> SendError {
    use tonic::Code;
    let message = format!("gRPC {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::Retryable(message),
        _ => SendError::Permanent(message),
    }
}
