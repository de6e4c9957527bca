//! Sending one OTLP request: gRPC (tonic) or HTTP/protobuf (hyper), with the configured
//! headers, timeout and compression. Errors say whether a retry may succeed.
use std::io::Write;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use thiserror::Error;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::settings::{Destination, Protocol};
use super::tls::{TlsError, TlsMaterial};

#[derive(Debug, Error)]
pub enum SendError {
    /// The collector may accept it later: unavailable, overloaded, timed out.
    #[error("{0} (will retry)")]
    Retryable(String),
    /// The collector refused the data itself: sending it again would not help.
    #[error("{0}")]
    Permanent(String),
}

/// A destination that cannot be set up: sonde does not start.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("OTLP {name}: {reason}")]
    Setting { name: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
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

/// The gRPC method of span export.
const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A tonic codec for a request already encoded (`encode::SpanBatch::body`); the response
/// (`ExportTraceServiceResponse`, whose partial-success details sonde does not use) is
/// skipped.
#[derive(Clone, Copy, Default)]
struct EncodedCodec;

impl tonic::codec::Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> EncodedCodec {
        EncodedCodec
    }

    fn decoder(&mut self) -> EncodedCodec {
        EncodedCodec
    }
}

impl tonic::codec::Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for EncodedCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf;
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// A connection to one signal's destination. gRPC connects lazily and reconnects by itself.
pub enum Transport {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
        gzip: bool,
    },
    Http {
        client: Box<Client<HttpsConnector<HttpConnector>, Full<Bytes>>>,
        url: hyper::Uri,
        headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
        gzip: bool,
        timeout: std::time::Duration,
    },
}

impl Transport {
    pub fn new(d: &Destination) -> Result<Transport, TransportError> {
        let bad = |name: &str, reason: String| TransportError::Setting {
            name: format!("header `{name}`"),
            reason,
        };
        // TLS when the endpoint says https; the files were named in the settings.
        let tls = match d.endpoint.starts_with("https://") {
            true => Some(TlsMaterial::load(&d.tls)?),
            false => {
                if !d.tls.is_empty() {
                    log::warn!(
                        "OTLP endpoint {} is not https://: its certificate settings are unused",
                        d.endpoint
                    );
                }
                None
            }
        };
        let endpoint_error = |e: &dyn std::fmt::Display| TransportError::Setting {
            name: "endpoint".into(),
            reason: e.to_string(),
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
                let mut endpoint =
                    Endpoint::from_shared(d.endpoint.clone()).map_err(|e| endpoint_error(&e))?;
                if let Some(tls) = &tls {
                    endpoint = endpoint
                        .tls_config(tls.tonic_config())
                        .map_err(|e| endpoint_error(&e))?;
                }
                let channel = endpoint
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
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(d.timeout));
                http.enforce_http(false);
                let builder = hyper_rustls::HttpsConnectorBuilder::new();
                let connector = match &tls {
                    Some(tls) => builder
                        .with_tls_config(tls.rustls_config()?)
                        .https_only()
                        .enable_http1()
                        .wrap_connector(http),
                    // A plain http:// endpoint never uses the configuration.
                    None => builder
                        .with_tls_config(TlsMaterial::unused_config())
                        .https_or_http()
                        .enable_http1()
                        .wrap_connector(http),
                };
                Transport::Http {
                    client: Box::new(Client::builder(TokioExecutor::new()).build(connector)),
                    url: d
                        .endpoint
                        .parse()
                        .map_err(|e: hyper::http::uri::InvalidUri| endpoint_error(&e))?,
                    headers,
                    gzip: d.gzip,
                    timeout: d.timeout,
                }
            }
        })
    }

    /// Sends an encoded `ExportTraceServiceRequest` (`encode::SpanBatch::body`).
    pub async fn send_traces(&self, body: Bytes) -> Result<(), SendError> {
        match self {
            Transport::Grpc {
                channel,
                metadata,
                gzip,
            } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                if *gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                grpc.ready()
                    .await
                    .map_err(|e| SendError::Retryable(format!("gRPC channel: {e}")))?;
                let request = tonic::Request::from_parts(
                    metadata.clone(),
                    tonic::Extensions::default(),
                    body,
                );
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(TRACE_EXPORT);
                grpc.unary(request, path, EncodedCodec)
                    .await
                    .map(|_| ())
                    .map_err(grpc_error)
            }
            Transport::Http { .. } => self.post(body).await,
        }
    }

    pub async fn send_metrics(&self, req: ExportMetricsServiceRequest) -> Result<(), SendError> {
        match self {
            Transport::Grpc {
                channel,
                metadata,
                gzip,
            } => grpc_export!(MetricsServiceClient, channel, metadata, *gzip, req),
            Transport::Http { .. } => self.post(Bytes::from(req.encode_to_vec())).await,
        }
    }

    async fn post(&self, body: Bytes) -> Result<(), SendError> {
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
            Bytes::from(enc.finish().unwrap_or_default())
        } else {
            body
        };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let response = match tokio::time::timeout(*timeout, client.request(request)).await {
            Err(_) => return Err(SendError::Retryable(format!("no answer in {timeout:?}"))),
            Ok(Err(e)) => return Err(SendError::Retryable(format!("{url}: {}", chain(&e)))),
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

/// An error with its causes (hyper's own message hides them: "client error (Connect)"), so
/// that the log says what went wrong, for instance which certificate was refused.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The gRPC codes the OTLP specification names retryable; a status that tonic made from a
/// connection failure (it carries the transport error as its source) is retryable too.
fn grpc_error(status: tonic::Status) -> SendError {
    use std::error::Error;
    use tonic::Code;
    let mut message = format!("gRPC {:?}: {}", status.code(), status.message());
    if let Some(cause) = status.source() {
        message.push_str(": ");
        message.push_str(&chain(cause));
    }
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::Retryable(message),
        Code::Unknown if status.source().is_some() => SendError::Retryable(message),
        _ => SendError::Permanent(message),
    }
}
