//! Fleet membership at the gateway (SPEC §5.3): the fleet join token, and
//! `POST /flotilla/v1/join`, which issues a node its membership certificate.
//!
//! The fleet key is the gateway's libp2p identity (the key that signs piece tables), so nodes
//! already know it from `GET /flotilla/v1/info`. A node earns a certificate by presenting the
//! fleet token (`Authorization: Bearer <token>`) and proving it holds the key of the peer id it
//! asks for (a signed [`JoinProof`]).
//!
//! Members then sign their HTTP requests to the origin endpoints (`Flotilla-Member`,
//! [`flotilla_protocol::membership::http`]); [`Fleet::member`] checks that header, so a stranger
//! fetches neither blobs nor piece tables over HTTP, as it cannot over the swarm.
//!
//! The token is `fleet_token` from the config, else `<data_dir>/fleet.token`, created with a
//! random token (32 bytes, hex) on first start: the gateway is never open to strangers by
//! default. The file is written like `identity.key` (0600, temp file, fsync, rename).

use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use flotilla_node::identity::membership::{JoinRequest, JoinResponse, bearer_matches};
use flotilla_protocol::membership::MemberCertificate;
use flotilla_protocol::membership::http::{MEMBER_HEADER, MemberHeader};
use libp2p_identity::{Keypair, PeerId};

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};

/// File name of the generated token inside the data directory.
pub const TOKEN_FILE: &str = "fleet.token";
/// Random bytes in a generated token.
const TOKEN_BYTES: usize = 32;
/// Largest join request body read.
pub const MAX_JOIN_BODY: usize = 16 * 1024;

/// Why the fleet token could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The token file could not be read or written.
    #[error("fleet token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configured or stored token is empty.
    #[error("the fleet token in {0} is empty")]
    Empty(String),
    /// No randomness for a new token.
    #[error("cannot generate a fleet token: {0}")]
    Random(String),
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where the token comes from: the path of the token file unless it is set in the config.
pub fn token_path(config: &Config) -> Option<PathBuf> {
    match &config.fleet_token {
        Some(_) => None,
        None => Some(config.data_dir.join(TOKEN_FILE)),
    }
}

/// The fleet token: `config.fleet_token`, else the contents of `<data_dir>/fleet.token`, which
/// is created with a random token if missing. Surrounding whitespace is ignored.
///
/// # Errors
/// [`FleetError`].
pub fn load_token(config: &Config) -> Result<String, FleetError> {
    if let Some(t) = &config.fleet_token {
        let t = t.trim();
        if t.is_empty() {
            return Err(FleetError::Empty("the configuration".to_owned()));
        }
        return Ok(t.to_owned());
    }
    load_or_create_file(&config.data_dir)
}

fn load_or_create_file(dir: &Path) -> Result<String, FleetError> {
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let t = text.trim();
            if t.is_empty() {
                return Err(FleetError::Empty(path.display().to_string()));
            }
            return Ok(t.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(FleetError::Io { path, source }),
    }
    let mut raw = [0u8; TOKEN_BYTES];
    aws_lc_rs::rand::fill(&mut raw).map_err(|e| FleetError::Random(e.to_string()))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, format!("{token}\n").as_bytes()).map_err(|source| FleetError::Io {
        path: path.clone(),
        source,
    })?;
    tracing::info!(path = %path.display(), "created a fleet join token; give it to every node (fleet_token)");
    Ok(token)
}

/// Writes `bytes` to `path` (mode 0600) through a temporary file beside it, synced and renamed,
/// so a crash leaves the old content or the new.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The enrollment side of the API: the token and how long certificates live.
#[derive(Clone)]
pub struct Fleet {
    token: String,
    lifetime_secs: u64,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Fleet")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Enrollment with `config.fleet_token` (which [`crate::serve`] fills from [`load_token`]);
    /// `None` when it is not set, and then `POST /flotilla/v1/join` answers 404.
    pub fn from_config(config: &Config) -> Option<Fleet> {
        let token = config.fleet_token.as_deref()?.trim();
        if token.is_empty() {
            return None;
        }
        Some(Fleet {
            token: token.to_owned(),
            lifetime_secs: config.member_cert_secs.max(60),
        })
    }

    /// Answers a join request: `401 UNAUTHORIZED` for a missing or wrong token,
    /// `400 UNSUPPORTED` for a body that is not a valid join proof (bad JSON, bad signature,
    /// a timestamp more than 5 min off, a peer id that does not match the key), `403 DENIED`
    /// for a revoked peer, else the proven peer id and a certificate for it signed by
    /// `fleet_key`.
    ///
    /// # Errors
    /// The [`ApiError`] to answer.
    pub fn join(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        fleet_key: &Keypair,
        revoked: &Revocations,
        now: u64,
    ) -> Result<(PeerId, JoinResponse), ApiError> {
        if !bearer_matches(headers, &self.token) {
            return Err(ApiError::new(ErrorCode::Unauthorized)
                .with_message("a valid fleet join token is required")
                .with_header(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"flotilla-fleet\""),
                ));
        }
        let bad = |detail: String| {
            ApiError::new(ErrorCode::Unsupported)
                .with_status(StatusCode::BAD_REQUEST)
                .with_message("invalid join request")
                .with_detail(detail)
        };
        let req: JoinRequest =
            serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
        let (named, proof) = req.proof().map_err(bad)?;
        let gateway = fleet_key.public().to_peer_id();
        let member = proof
            .verify(&gateway, now)
            .map_err(|e| bad(e.to_string()))?;
        if named != member {
            return Err(bad(format!("peer_id {named} is not the key's ({member})")));
        }
        if revoked.contains(&member) {
            tracing::warn!(%member, "a revoked member asked to join; refused");
            return Err(member_revoked());
        }
        let cert = MemberCertificate::issue(fleet_key, member, now, self.lifetime_secs)
            .map_err(|e| ApiError::internal("issuing a membership certificate", &e))?;
        tracing::info!(%member, not_after = cert.not_after, "fleet member enrolled");
        Ok((member, JoinResponse::new(&cert)))
    }

    /// The member that signed this request (`Flotilla-Member`) for the fleet `fleet` (the
    /// gateway's peer id): `Ok(None)` when the request carries no such header, `401
    /// UNAUTHORIZED` when it carries one that does not verify (wrong fleet, expired, another
    /// request's signature, too old or malformed).
    ///
    /// # Errors
    /// The [`ApiError`] to answer.
    pub fn member(
        headers: &HeaderMap,
        method: &str,
        path: &str,
        fleet: &PeerId,
        now: u64,
    ) -> Result<Option<PeerId>, ApiError> {
        let Some(value) = headers.get(MEMBER_HEADER) else {
            return Ok(None);
        };
        let checked = value
            .to_str()
            .map_err(|_| flotilla_protocol::membership::MembershipError::Malformed("not ASCII"))
            .and_then(MemberHeader::decode)
            .and_then(|h| h.verify(fleet, method, path, now));
        match checked {
            Ok(member) => Ok(Some(member)),
            Err(e) => Err(member_required().with_detail(e.to_string())),
        }
    }
}

/// `403 DENIED` for a member the gateway revoked (joining, or signing a request).
pub fn member_revoked() -> ApiError {
    ApiError::new(ErrorCode::Denied).with_message("this fleet member was revoked")
}

/// `401 UNAUTHORIZED` for an origin endpoint asked without (valid) fleet membership.
pub fn member_required() -> ApiError {
    ApiError::new(ErrorCode::Unauthorized)
        .with_message("fleet membership is required (a valid Flotilla-Member header)")
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Flotilla-Member realm=\"flotilla-fleet\""),
        )
}

mod members;
mod revoked;
pub(crate) use members::flusher as members_flusher;
pub use members::{Member, Members};
pub use revoked::{MAX_REASON, Revocations, RevokeError, Revoked};

#[cfg(test)]
mod tests;
