//! A real HTTPS client (rustls + hyper) for talking to Envoy: HTTP/1.1 or
//! HTTP/2, optional request trailers, trusting the test certificate only.

use std::{convert::Infallible, path::Path, sync::Arc};

use anyhow::Context;
use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What to send.
#[derive(Debug, Clone)]
pub struct Post {
    /// Request path.
    pub path: String,
    /// HTTP method.
    pub method: Method,
    /// `(user, password)` for Basic auth.
    pub basic: Option<(String, String)>,
    /// Content type (None: no header).
    pub content_type: Option<String>,
    /// Body.
    pub body: Vec<u8>,
    /// Use HTTP/2 (ALPN h2) instead of HTTP/1.1.
    pub http2: bool,
    /// HTTP/2 request trailers to end the stream with.
    pub trailers: Option<Vec<(String, String)>>,
}

impl Post {
    /// An authenticated form POST of `body` to `/aljex/sync`.
    pub fn form(user: &str, password: &str, body: impl Into<Vec<u8>>) -> Self {
        Post {
            path: "/aljex/sync".to_string(),
            method: Method::POST,
            basic: Some((user.to_string(), password.to_string())),
            content_type: Some("application/x-www-form-urlencoded".to_string()),
            body: body.into(),
            http2: false,
            trailers: None,
        }
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body as text.
    pub body: String,
}

impl Answer {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// HTTPS client for one Envoy listener.
#[derive(Clone)]
pub struct HttpsClient {
    connector: TlsConnector,
    port: u16,
}

impl HttpsClient {
    /// Trusts only the certificate in `cert_pem` and connects to `127.0.0.1:port`.
    pub fn new(cert_pem: &Path, port: u16) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cert_pem).context("read test certificate")? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(HttpsClient {
            connector: TlsConnector::from(Arc::new(config)),
            port,
        })
    }

    /// Sends one request on a new connection.
    pub async fn send(&self, post: &Post) -> anyhow::Result<Answer> {
        let mut config = (*self.connector_config()).clone();
        config.alpn_protocols = if post.http2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let connector = TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await
            .context("TLS handshake")?;
        let mut request = Request::builder()
            .method(post.method.clone())
            .uri(format!("https://localhost:{}{}", self.port, post.path));
        if !post.http2 {
            request = request.header("host", format!("localhost:{}", self.port));
        }
        if let Some((user, password)) = &post.basic {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            request = request.header("authorization", format!("Basic {token}"));
        }
        if let Some(content_type) = &post.content_type {
            request = request.header("content-type", content_type);
        }
        let full = Full::new(Bytes::from(post.body.clone()));
        let body: BoxBody<Bytes, Infallible> = match &post.trailers {
            Some(pairs) => {
                let mut trailers = HeaderMap::new();
                for (name, value) in pairs {
                    trailers.insert(
                        http::HeaderName::from_bytes(name.as_bytes())?,
                        HeaderValue::from_str(value)?,
                    );
                }
                full.with_trailers(async move { Some(Ok(trailers)) })
                    .boxed()
            }
            None => full.boxed(),
        };
        let request = request.body(body)?;
        let io = TokioIo::new(tls);
        let response = if post.http2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            sender.send_request(request).await?
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            sender.send_request(request).await?
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn connector_config(&self) -> Arc<rustls::ClientConfig> {
        self.connector.config().clone()
    }
}
