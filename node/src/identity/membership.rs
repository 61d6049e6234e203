//! The node's fleet membership certificate: asked of the gateway (`POST /flotilla/v1/join` with
//! the fleet token and a proof of key possession), kept in `<data_dir>/member.cert` so a restart
//! does not need the gateway, presented by the swarm on every connection, and renewed half way
//! through its life.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_protocol::membership::{JoinProof, MemberCertificate};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use super::write_private;
use crate::gateway_http::MemberSigner;
use crate::swarm::SwarmHandle;

/// File name of the stored certificate inside a data directory.
pub const CERT_FILE: &str = "member.cert";
/// The gateway's enrollment endpoint, relative to its base URL.
pub const JOIN_PATH: &str = "/flotilla/v1/join";
/// First wait after a failed enrollment; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Shortest wait before renewing (a gateway issuing very short certificates is not hammered).
const RENEW_MIN: Duration = Duration::from_secs(5);

/// The fleet join token: given in the configuration, or read from a file at every use, so a
/// rotated secret (a replaced file, a Kubernetes secret's mounted file) reaches the next
/// enrollment or renewal, and the node's prefetch check, without a restart. A file that cannot
/// be read, or is empty, at a later use leaves the last token read in place (and is logged).
#[derive(Clone)]
pub struct FleetToken(Arc<TokenSource>);

enum TokenSource {
    Fixed(String),
    File { path: PathBuf, last: Mutex<String> },
}

impl std::fmt::Debug for FleetToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            TokenSource::Fixed(_) => f.write_str("FleetToken(given)"),
            TokenSource::File { path, .. } => write!(f, "FleetToken(file {})", path.display()),
        }
    }
}

impl From<&str> for FleetToken {
    fn from(token: &str) -> Self {
        FleetToken(Arc::new(TokenSource::Fixed(token.trim().to_owned())))
    }
}

impl From<String> for FleetToken {
    fn from(token: String) -> Self {
        FleetToken::from(token.as_str())
    }
}

impl FleetToken {
    /// The token in `path` (surrounding whitespace ignored), read now and at every later use.
    ///
    /// # Errors
    /// The file cannot be read, or holds no token.
    pub fn file(path: &Path) -> Result<FleetToken, String> {
        let token = read_token(path)?;
        Ok(FleetToken(Arc::new(TokenSource::File {
            path: path.to_owned(),
            last: Mutex::new(token),
        })))
    }

    /// The token as it is now.
    pub fn current(&self) -> String {
        match &*self.0 {
            TokenSource::Fixed(t) => t.clone(),
            TokenSource::File { path, last } => {
                let mut last = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match read_token(path) {
                    Ok(t) => {
                        if *last != t {
                            tracing::info!(file = %path.display(), "fleet token changed");
                            *last = t;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the fleet token read before");
                    }
                }
                last.clone()
            }
        }
    }
}

fn read_token(path: &Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| format!("fleet_token_file {}: {e}", path.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(format!("fleet_token_file {} is empty", path.display()));
    }
    Ok(token)
}

/// Whether `headers` carry `token` as `Authorization: Bearer <token>` (compared in constant
/// time): how the gateway's enrollment and a node's prefetch and unpin routes check the fleet
/// token.
pub fn bearer_matches(headers: &http::HeaderMap, token: &str) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .is_some_and(|p| {
            aws_lc_rs::constant_time::verify_slices_are_equal(p.as_bytes(), token.as_bytes())
                .is_ok()
        })
}

/// Why a certificate could not be obtained or kept.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The gateway refused the fleet token (401).
    #[error(
        "the gateway refused the fleet token (set fleet_token to the gateway's <data_dir>/fleet.token)"
    )]
    TokenRefused,
    /// The gateway refused the request for another reason.
    #[error("the gateway refused to enroll this node: {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error body.
        body: String,
    },
    /// The gateway could not be reached or answered nonsense.
    #[error("enrollment request failed: {0}")]
    Http(String),
    /// The certificate the gateway sent does not verify.
    #[error("the gateway sent an unusable certificate: {0}")]
    BadCertificate(String),
    /// The node's key cannot sign.
    #[error("cannot sign the join proof: {0}")]
    Signing(String),
    /// The certificate file could not be written.
    #[error("certificate file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The body of `POST /flotilla/v1/join` (SPEC §3.7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The node's peer id (base58), for the log and as a cross-check of `public_key`.
    pub peer_id: String,
    /// The node's libp2p public key, protobuf-encoded, hex.
    pub public_key: String,
    /// Unix seconds when the proof was made.
    pub timestamp: u64,
    /// Signature of the join message (see `flotilla_protocol::membership::JoinProof`), hex.
    pub signature: String,
}

/// The answer of `POST /flotilla/v1/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// `MemberCertificate::encode`, hex.
    pub certificate: String,
    /// Start of validity, Unix seconds.
    pub issued_at: u64,
    /// End of validity, Unix seconds.
    pub not_after: u64,
}

impl JoinRequest {
    /// A request proving possession of `key` to the gateway `gateway` at `now`.
    ///
    /// # Errors
    /// [`EnrollError::Signing`].
    pub fn new(key: &Keypair, gateway: &PeerId, now: u64) -> Result<Self, EnrollError> {
        let proof =
            JoinProof::sign(key, gateway, now).map_err(|e| EnrollError::Signing(e.to_string()))?;
        Ok(JoinRequest {
            peer_id: key.public().to_peer_id().to_string(),
            public_key: hex::encode(&proof.public_key),
            timestamp: proof.timestamp,
            signature: hex::encode(&proof.signature),
        })
    }
}

impl JoinRequest {
    /// The claimed peer id and the proof, decoded (not verified: see [`JoinProof::verify`]).
    ///
    /// # Errors
    /// What is malformed, as text.
    pub fn proof(&self) -> Result<(PeerId, JoinProof), String> {
        let peer: PeerId = self
            .peer_id
            .parse()
            .map_err(|_| "peer_id is not a peer id".to_owned())?;
        let proof = JoinProof {
            public_key: hex::decode(&self.public_key).map_err(|e| format!("public_key: {e}"))?,
            timestamp: self.timestamp,
            signature: hex::decode(&self.signature).map_err(|e| format!("signature: {e}"))?,
        };
        Ok((peer, proof))
    }
}

impl JoinResponse {
    /// The answer carrying `cert`.
    pub fn new(cert: &MemberCertificate) -> Self {
        JoinResponse {
            certificate: hex::encode(cert.encode()),
            issued_at: cert.issued_at,
            not_after: cert.not_after,
        }
    }
}

/// The stored certificate, if it is one for this node from this fleet and still valid.
pub fn load_certificate(dir: &Path, fleet: &PeerId, local: &PeerId) -> Option<MemberCertificate> {
    let bytes = std::fs::read(dir.join(CERT_FILE)).ok()?;
    let cert = MemberCertificate::decode(&bytes).ok()?;
    cert.verify(fleet, local, crate::swarm::unix_now()).ok()?;
    Some(cert)
}

/// Writes the certificate to `dir/member.cert` (0600, temp file, fsync, rename).
///
/// # Errors
/// [`EnrollError::Io`].
pub fn store_certificate(dir: &Path, cert: &MemberCertificate) -> Result<(), EnrollError> {
    write_private(dir, CERT_FILE, &cert.encode())
        .map_err(|(path, source)| EnrollError::Io { path, source })
}

/// Asks the gateway at `gateway_url` (whose peer id is `gateway`) for a certificate.
///
/// # Errors
/// [`EnrollError`].
pub async fn enroll(
    http: &reqwest::Client,
    gateway_url: &str,
    gateway: &PeerId,
    key: &Keypair,
    token: &str,
) -> Result<MemberCertificate, EnrollError> {
    let local = key.public().to_peer_id();
    let body = JoinRequest::new(key, gateway, crate::swarm::unix_now())?;
    let res = http
        .post(format!("{gateway_url}{JOIN_PATH}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| EnrollError::Http(e.to_string()))?;
    let status = res.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(EnrollError::TokenRefused);
    }
    if !status.is_success() {
        let body = res.text().await.unwrap_or_default();
        return Err(EnrollError::Refused {
            status: status.as_u16(),
            body: body.chars().take(512).collect(),
        });
    }
    let answer: JoinResponse = res
        .json()
        .await
        .map_err(|e| EnrollError::Http(e.to_string()))?;
    let bytes =
        hex::decode(&answer.certificate).map_err(|e| EnrollError::BadCertificate(e.to_string()))?;
    let cert = MemberCertificate::decode(&bytes)
        .map_err(|e| EnrollError::BadCertificate(e.to_string()))?;
    cert.verify(gateway, &local, crate::swarm::unix_now())
        .map_err(|e| EnrollError::BadCertificate(e.to_string()))?;
    Ok(cert)
}

/// What enrollment needs before the gateway's peer id is known.
#[derive(Clone)]
pub struct MembershipConfig {
    /// HTTP client for the gateway.
    pub http: reqwest::Client,
    /// The gateway's base URL.
    pub gateway_url: String,
    /// This node's identity.
    pub key: Keypair,
    /// The fleet join token (read again at every enrollment).
    pub token: FleetToken,
    /// Where the certificate is kept.
    pub data_dir: PathBuf,
    /// Signs the node's HTTP requests to the gateway with the current certificate.
    pub signer: MemberSigner,
}

impl MembershipConfig {
    /// The enrollment with the gateway whose peer id is `gateway`.
    pub fn for_gateway(&self, gateway: PeerId) -> Enrollment {
        Enrollment {
            http: self.http.clone(),
            gateway_url: self.gateway_url.clone(),
            gateway,
            key: self.key.clone(),
            token: self.token.clone(),
            data_dir: self.data_dir.clone(),
            signer: self.signer.clone(),
        }
    }
}

/// Everything the membership keeper needs.
pub struct Enrollment {
    /// HTTP client for the gateway.
    pub http: reqwest::Client,
    /// The gateway's base URL.
    pub gateway_url: String,
    /// The gateway's peer id (the fleet key).
    pub gateway: PeerId,
    /// This node's identity.
    pub key: Keypair,
    /// The fleet join token (read again at every enrollment).
    pub token: FleetToken,
    /// Where the certificate is kept.
    pub data_dir: PathBuf,
    /// Signs the node's HTTP requests to the gateway with the current certificate.
    pub signer: MemberSigner,
}

impl Enrollment {
    /// Gets a certificate (the stored one while it is before its renewal time, else a new one
    /// from the gateway, stored) and hands it to the swarm.
    ///
    /// # Errors
    /// [`EnrollError`]; a certificate the swarm refuses is [`EnrollError::BadCertificate`].
    pub async fn once(&self, swarm: &SwarmHandle) -> Result<MemberCertificate, EnrollError> {
        let local = self.key.public().to_peer_id();
        let now = crate::swarm::unix_now();
        let stored =
            load_certificate(&self.data_dir, &self.gateway, &local).filter(|c| c.not_after > now);
        let cert = match stored.clone().filter(|c| now < c.renew_at()) {
            Some(c) => c,
            None => {
                let asked = enroll(
                    &self.http,
                    &self.gateway_url,
                    &self.gateway,
                    &self.key,
                    &self.token.current(),
                )
                .await;
                let c = match (asked, stored) {
                    (Ok(c), _) => c,
                    // The gateway is away (or refuses) while the kept certificate is still
                    // valid: keep using it, so a restart during an outage still exchanges
                    // pieces; the caller retries the renewal.
                    (Err(e), Some(old)) => {
                        self.install(swarm, &old).await?;
                        return Err(e);
                    }
                    (Err(e), None) => return Err(e),
                };
                if let Err(e) = store_certificate(&self.data_dir, &c) {
                    tracing::warn!(error = %e, "cannot keep the membership certificate");
                }
                tracing::info!(
                    gateway = %self.gateway,
                    not_after = c.not_after,
                    "fleet membership certificate issued"
                );
                c
            }
        };
        self.install(swarm, &cert).await?;
        Ok(cert)
    }

    /// Hands `cert` to the swarm (handshakes) and to the HTTP signer.
    async fn install(
        &self,
        swarm: &SwarmHandle,
        cert: &MemberCertificate,
    ) -> Result<(), EnrollError> {
        swarm
            .set_certificate(cert.clone())
            .await
            .map_err(|e| EnrollError::BadCertificate(e.to_string()))?;
        self.signer
            .set(self.key.clone(), cert.clone(), self.gateway);
        Ok(())
    }

    /// Keeps a valid certificate in the swarm for as long as it runs: renews half way through
    /// each certificate's life, retries failures (1 s doubling to 60 s; a refused token is
    /// logged as an error every time).
    pub async fn keep(self, swarm: SwarmHandle, mut current: Option<MemberCertificate>) {
        let mut retry = RETRY_MIN;
        loop {
            if let Some(cert) = &current {
                let wait = cert.renew_at().saturating_sub(crate::swarm::unix_now());
                tokio::time::sleep(Duration::from_secs(wait).max(RENEW_MIN)).await;
            }
            match self.once(&swarm).await {
                Ok(cert) => {
                    current = Some(cert);
                    retry = RETRY_MIN;
                }
                Err(e) => {
                    match &e {
                        EnrollError::TokenRefused | EnrollError::Refused { .. } => {
                            tracing::error!(error = %e, "cannot join the fleet")
                        }
                        _ => tracing::warn!(error = %e, "cannot renew fleet membership yet"),
                    }
                    // Keep the old certificate's schedule out of the way: retry on our own.
                    current = None;
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_certificate_is_private_and_reused_only_for_its_fleet_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Keypair::generate_ed25519();
        let fleet_id = fleet.public().to_peer_id();
        let me = Keypair::generate_ed25519().public().to_peer_id();
        let now = crate::swarm::unix_now();
        let cert = MemberCertificate::issue(&fleet, me, now, 3600).unwrap();
        store_certificate(dir.path(), &cert).unwrap();
        assert_eq!(load_certificate(dir.path(), &fleet_id, &me), Some(cert));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(CERT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another gateway (a new fleet key) or another identity: enroll again.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(load_certificate(dir.path(), &other, &me), None);
        assert_eq!(load_certificate(dir.path(), &fleet_id, &other), None);
        // Expired: enroll again.
        let old = MemberCertificate::issue(&fleet, me, now - 7200, 3600).unwrap();
        store_certificate(dir.path(), &old).unwrap();
        assert_eq!(load_certificate(dir.path(), &fleet_id, &me), None);
        std::fs::write(dir.path().join(CERT_FILE), b"garbage").unwrap();
        assert_eq!(load_certificate(dir.path(), &fleet_id, &me), None);
    }

    #[test]
    fn a_join_request_carries_a_verifiable_proof() {
        let node = Keypair::generate_ed25519();
        let gateway = Keypair::generate_ed25519().public().to_peer_id();
        let now = crate::swarm::unix_now();
        let req = JoinRequest::new(&node, &gateway, now).unwrap();
        let (peer, proof) = req.proof().unwrap();
        assert_eq!(peer, node.public().to_peer_id());
        assert_eq!(proof.verify(&gateway, now).unwrap(), peer);
        let mut bad = req.clone();
        bad.public_key = "zz".to_owned();
        assert!(bad.proof().is_err());
    }
}
