//! One notification request: an HTTP/1.1 `POST` of an event envelope over a fresh TCP
//! connection, TLS (rustls, aws-lc-rs) for `https://` endpoints, bounded by a timeout.
//!
//! A connection per delivery keeps this small (events are batched, so deliveries are few) and
//! leaves nothing behind when an endpoint hangs: when the timeout fires the attempt's future,
//! and with it the connection, is dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::EVENTS_MEDIA_TYPE;

/// Why a target cannot be built or a delivery failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("url {0:?}: {1}")]
    Url(String, &'static str),
    #[error("header {0:?}: not a valid HTTP header")]
    Header(String),
    #[error("CA certificates: {0}")]
    Ca(String),
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("answered {0}")]
    Status(u16),
    #[error("no answer within the timeout")]
    Timeout,
}

/// Where and how to POST.
pub(crate) struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
    headers: HeaderMap,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// Where the system's CA bundle usually is, after `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

impl Target {
    /// Parses `url`, checks `headers`, and for `https://` loads the CA certificates.
    pub(crate) fn new(
        url: &str,
        headers: &BTreeMap<String, String>,
        ca_file: Option<&Path>,
    ) -> Result<Target, ClientError> {
        let bad = |why| ClientError::Url(url.to_owned(), why);
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("must be http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("must not carry credentials; use headers"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| ClientError::Header(k.clone()))?;
            let value = HeaderValue::from_str(v).map_err(|_| ClientError::Header(k.clone()))?;
            map.insert(name, value);
        }
        let tls = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| bad("host is not a valid TLS server name"))?;
            Some((connector(ca_file)?, name))
        } else {
            None
        };
        Ok(Target {
            host,
            port,
            authority: authority.as_str().to_owned(),
            path,
            headers: map,
            tls,
        })
    }

    /// POSTs `body` (an envelope); the status if it is 2xx or 3xx.
    pub(crate) async fn post(&self, body: Vec<u8>, timeout: Duration) -> Result<u16, ClientError> {
        tokio::time::timeout(timeout, self.attempt(body))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn attempt(&self, body: Vec<u8>) -> Result<u16, ClientError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.authority.as_str())
            .header(CONTENT_TYPE, EVENTS_MEDIA_TYPE)
            .header(
                USER_AGENT,
                concat!("flotilla-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .header(CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))?;
        for (k, v) in &self.headers {
            req.headers_mut().insert(k, v.clone());
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(ClientError::Connect)?;
        // Best effort: an envelope is one small write.
        let _ = tcp.set_nodelay(true);
        let status = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ClientError::Tls)?;
                exchange(tls, req).await?
            }
            None => exchange(tcp, req).await?,
        };
        if (200..400).contains(&status) {
            Ok(status)
        } else {
            Err(ClientError::Status(status))
        }
    }
}

/// Sends `req` on `io` and returns the answer's status (its body is not read).
async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> Result<u16, ClientError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let request = async move { sender.send_request(req).await };
    tokio::pin!(request);
    tokio::pin!(conn);
    let mut conn_done = false;
    loop {
        tokio::select! {
            res = &mut request => return Ok(res?.status().as_u16()),
            // The connection future ends when the peer closes or breaks it; the request then
            // fails, which the other branch reports.
            done = &mut conn, if !conn_done => {
                conn_done = true;
                done?;
            }
        }
    }
}

/// A TLS connector trusting `ca_file`, or the system bundle.
fn connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                SYSTEM_BUNDLES
                    .iter()
                    .map(std::path::PathBuf::from)
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| ClientError::Ca("no system CA bundle found; set ca_file".to_owned()))?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| ClientError::Ca(format!("{}: {e}", path.display())))?;
    for c in certs {
        let c = c.map_err(|e| ClientError::Ca(format!("{}: {e}", path.display())))?;
        // A bundle may hold certificates rustls cannot use; the others still count.
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(ClientError::Ca(format!(
            "{}: no usable certificate",
            path.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_headers() {
        let none = BTreeMap::new();
        let t = Target::new("http://127.0.0.1:9000/hook?x=1", &none, None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/hook?x=1")
        );
        let t = Target::new("http://[::1]/", &none, None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        for bad in ["ftp://x/", "not a url", "http://user:pw@host/", "/relative"] {
            assert!(Target::new(bad, &none, None).is_err(), "{bad}");
        }
        let h = BTreeMap::from([("bad header".to_owned(), "v".to_owned())]);
        assert!(Target::new("http://h/", &h, None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(Target::new("https://h/", &none, Some(&empty)).is_err());
    }
}
