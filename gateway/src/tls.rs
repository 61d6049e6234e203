//! HTTPS for the gateway (the `[tls]` section of the config): a rustls server configuration
//! from PEM files, and a listener that hands axum connections whose handshake is done.
//!
//! The TLS provider is chosen explicitly (aws-lc-rs, as everywhere in the tree): libp2p's QUIC
//! stack enables rustls's aws-lc-rs provider, and another crate may enable ring, in which case
//! rustls cannot pick a process default.
//!
//! Handshakes run in their own tasks (at most [`MAX_HANDSHAKES`] at once, each given
//! [`HANDSHAKE_TIMEOUT`]), so a client that connects and says nothing holds up no one; finished
//! connections queue in a bounded channel for axum's accept loop. Dropping the listener (which
//! axum does on graceful shutdown) stops accepting at once.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// Most handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// Time a client gets to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for axum to take them.
const READY_QUEUE: usize = 64;

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("[tls] {what} {path}: {reason}")]
    Pem {
        /// `cert` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the certificate and key (for instance, they do not belong together).
    #[error("[tls] certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls server configuration for `cfg`: TLS 1.2 and 1.3, HTTP/1.1.
///
/// # Errors
/// [`TlsError`] if a file cannot be read or parsed, or the key does not fit the certificate.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |what, path: &Path, reason: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| pem_err("cert", &cfg.cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err("cert", &cfg.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err(
            "cert",
            &cfg.cert,
            "no CERTIFICATE block".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| pem_err("key", &cfg.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // axum serves HTTP/1.1 only; offering h2 would break clients that take it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections are TLS streams with the handshake done (for `axum::serve`).
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` and handshaking with `config`.
    ///
    /// # Errors
    /// The listener's local address cannot be read.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped; until then, wait.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path) -> TlsConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cfg = TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&cfg.cert, cert.pem()).unwrap();
        std::fs::write(&cfg.key, key.serialize_pem()).unwrap();
        cfg
    }

    #[test]
    fn loads_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_pair(dir.path());
        let sc = server_config(&cfg).unwrap();
        assert_eq!(sc.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn refuses_missing_empty_and_mismatched_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_pair(dir.path());
        let missing = TlsConfig {
            cert: dir.path().join("nope.pem"),
            ..cfg.clone()
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(e.contains("cert") && e.contains("nope.pem"), "{e}");

        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let empty = TlsConfig {
            key: dir.path().join("empty.pem"),
            ..cfg.clone()
        };
        let e = server_config(&empty).unwrap_err().to_string();
        assert!(e.contains("key") && e.contains("empty.pem"), "{e}");

        let other = write_pair(&{
            let d = dir.path().join("other");
            std::fs::create_dir(&d).unwrap();
            d
        });
        let mismatched = TlsConfig {
            key: other.key,
            ..cfg
        };
        assert!(server_config(&mismatched).is_err());
    }
}
