//! How the node talks HTTP to its gateway: clients that speak HTTPS with the system's CAs plus
//! the gateway's own CA from the config, and [`MemberSigner`], which signs each request to the
//! gateway's member-only endpoints (`/flotilla/v1/blobs`, `pieces`, `swarm`, `tags`, and reads
//! under `/v2/`) with this node's key and membership certificate (SPEC §5.3), and
//! [`RevocationsHeard`], the revocation-list version the gateway's answers name.
//!
//! The TLS provider is chosen explicitly (aws-lc-rs, as everywhere in the tree): reqwest is
//! built without one, so two crates enabling different providers can never leave rustls
//! without a process default.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_protocol::membership::MemberCertificate;
use flotilla_protocol::membership::http::{MEMBER_HEADER, MemberHeader};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Where Debian, Ubuntu, Alpine and Fedora-like systems keep their CA bundle; the first one
/// that exists is read.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Why an HTTP client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The configured CA file cannot be read or holds no certificate.
    #[error("gateway CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls or reqwest refused the configuration.
    #[error("HTTP client: {0}")]
    Build(String),
}

/// What every client to the gateway shares: the extra CA to trust.
#[derive(Debug, Clone, Default)]
pub struct HttpTls {
    /// A PEM file of CA certificates trusted besides the system's (a private CA's, for a
    /// gateway with its own certificate).
    pub ca_file: Option<PathBuf>,
}

impl HttpTls {
    /// A client builder trusting the system's CAs and `ca_file`'s.
    ///
    /// # Errors
    /// [`HttpClientError`] if the CA file is unusable.
    pub fn builder(&self) -> Result<reqwest::ClientBuilder, HttpClientError> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(bundle) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.exists()) {
            // A system bundle with a few unparsable entries still gives the rest.
            if let Ok(iter) = CertificateDer::pem_file_iter(bundle) {
                let certs: Vec<_> = iter.filter_map(Result::ok).collect();
                roots.add_parsable_certificates(certs);
            }
        }
        if let Some(path) = &self.ca_file {
            let bad = |reason: String| HttpClientError::CaFile {
                path: path.clone(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in the file".to_owned()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpClientError::Build(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
    }

    /// A client that gives up connecting after `connect` (no overall time limit).
    ///
    /// # Errors
    /// [`HttpClientError`].
    pub fn client(&self, connect: Duration) -> Result<reqwest::Client, HttpClientError> {
        self.builder()?
            .connect_timeout(connect)
            .build()
            .map_err(|e| HttpClientError::Build(e.to_string()))
    }
}

/// A reqwest client builder trusting the system's CAs, for any HTTP(S) client in the process
/// (reqwest is built without a TLS provider of its own: its plain `Client::builder()` panics
/// at `build()` unless the process installed a default provider).
pub fn client_builder() -> reqwest::ClientBuilder {
    HttpTls::default()
        .builder()
        // Without a CA file nothing can fail but rustls refusing its own safe defaults.
        .unwrap_or_else(|_| reqwest::Client::builder())
}

/// The header on the gateway's `/flotilla/v1/` answers that names its revocation list's `seq`.
pub const REVOCATIONS_HEADER: &str = "flotilla-revocations";

/// The highest revocation-list `seq` the gateway's answers named (`Flotilla-Revocations`, SPEC
/// §5.3): the node's revocation follower fetches the list as soon as this is above the list it
/// holds, instead of at its next poll. Only a hint — the list fetched is verified like any
/// other, so a forged header costs one request. Cheap to clone (clones share the value).
#[derive(Clone, Debug)]
pub struct RevocationsHeard(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for RevocationsHeard {
    fn default() -> Self {
        RevocationsHeard(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl RevocationsHeard {
    /// Nothing heard yet (0, the `seq` of a gateway that never revoked anyone).
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes the `seq` an answer of the gateway names, if it is higher than any before.
    pub fn note(&self, headers: &reqwest::header::HeaderMap) {
        let Some(seq) = headers
            .get(REVOCATIONS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        else {
            return;
        };
        self.0.send_if_modified(|held| {
            let higher = seq > *held;
            if higher {
                *held = seq;
            }
            higher
        });
    }

    /// The highest `seq` heard, woken whenever it rises.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Signs requests to the gateway as a fleet member, once the node holds a certificate; cheap to
/// clone (every clone sees the newest certificate).
#[derive(Clone, Default)]
pub struct MemberSigner(Arc<RwLock<Option<Signing>>>);

struct Signing {
    key: Keypair,
    certificate: MemberCertificate,
    gateway: PeerId,
}

impl std::fmt::Debug for MemberSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSigner")
            .field("member", &self.member())
            .finish_non_exhaustive()
    }
}

impl MemberSigner {
    /// A signer with no certificate yet (requests go unsigned).
    pub fn new() -> Self {
        Self::default()
    }

    /// Signs from now on with `key` and `certificate`, for the gateway `gateway`.
    pub fn set(&self, key: Keypair, certificate: MemberCertificate, gateway: PeerId) {
        let mut g = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = Some(Signing {
            key,
            certificate,
            gateway,
        });
    }

    /// The member this signer signs as, once it has a certificate.
    pub fn member(&self) -> Option<PeerId> {
        let g = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.as_ref().map(|s| s.certificate.member)
    }

    /// `rb` (a request for `method` on `url`) with the `Flotilla-Member` header, when a
    /// certificate is held and the URL parses; else `rb` unchanged (the gateway then answers 401
    /// where membership is required, which callers treat as any other refusal).
    pub fn sign(
        &self,
        rb: reqwest::RequestBuilder,
        method: &reqwest::Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        match self.header(method.as_str(), url) {
            Some(v) => rb.header(MEMBER_HEADER, v),
            None => rb,
        }
    }

    /// The header value for `method` on `url`, if one can be made.
    pub fn header(&self, method: &str, url: &str) -> Option<String> {
        let path = reqwest::Url::parse(url).ok()?.path().to_owned();
        let g = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = g.as_ref()?;
        let now = crate::swarm::unix_now();
        match MemberHeader::sign(&s.key, &s.certificate, &s.gateway, method, &path, now) {
            Ok(h) => Some(h.encode()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot sign a request to the gateway");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_signed_for_their_path_once_a_certificate_is_held() {
        let fleet = Keypair::generate_ed25519();
        let gw = fleet.public().to_peer_id();
        let node = Keypair::generate_ed25519();
        let me = node.public().to_peer_id();
        let signer = MemberSigner::new();
        let url = "http://127.0.0.1:5000/flotilla/v1/blobs/sha256:ab";
        assert_eq!(signer.header("GET", url), None);
        let now = crate::swarm::unix_now();
        let cert = MemberCertificate::issue(&fleet, me, now, 3600).unwrap();
        signer.clone().set(node, cert, gw);
        assert_eq!(signer.member(), Some(me));
        let h = MemberHeader::decode(&signer.header("GET", url).unwrap()).unwrap();
        assert_eq!(
            h.verify(&gw, "GET", "/flotilla/v1/blobs/sha256:ab", now)
                .unwrap(),
            me
        );
        assert!(
            h.verify(&gw, "GET", "/flotilla/v1/blobs/sha256:ac", now)
                .is_err()
        );
        assert_eq!(signer.header("GET", "not a url"), None);
    }

    #[test]
    fn only_a_higher_revocation_seq_is_heard() {
        let heard = RevocationsHeard::new();
        let mut rx = heard.subscribe();
        let with = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(REVOCATIONS_HEADER, v.parse().unwrap());
            h
        };
        heard.note(&with("17"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 17);
        for stale in ["17", "3", "not a number", ""] {
            heard.note(&with(stale));
        }
        heard.note(&reqwest::header::HeaderMap::new());
        assert!(!rx.has_changed().unwrap(), "nothing higher was heard");
        heard.clone().note(&with(" 18 "));
        assert_eq!(*rx.borrow_and_update(), 18, "clones share the value");
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = HttpTls {
            ca_file: Some(path.clone()),
        };
        let e = tls.client(Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        let missing = HttpTls {
            ca_file: Some(dir.path().join("absent.pem")),
        };
        assert!(missing.client(Duration::from_secs(1)).is_err());
        assert!(HttpTls::default().client(Duration::from_secs(1)).is_ok());
    }
}
