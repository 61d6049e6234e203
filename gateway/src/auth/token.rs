//! Bearer tokens: compact JWTs signed with Ed25519 (`alg: EdDSA`), and the key that signs them.
//!
//! ```text
//! header  {"alg":"EdDSA","typ":"JWT","kid":"<first 16 bytes of SHA-256(public key), base64url>"}
//! claims  {"iss","sub","aud","iat","nbf","exp","jti","access":[{"type","name","actions"}]}
//! ```
//! `sub` is the user name, empty for anonymous tokens. Verification accepts only `EdDSA` with
//! this gateway's key (no algorithm negotiation), the configured issuer and audience, and
//! `nbf`/`iat` up to [`CLOCK_SKEW_SECS`] in the future; a token is dead from the second `exp`.
//!
//! The key is a PKCS#8 Ed25519 private key in PEM (`openssl genpkey -algorithm ed25519` makes
//! one), created with mode 0600 on first start when missing.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use super::scope::AccessEntry;

/// How far in the future `nbf` and `iat` may be (clocks of gateways sharing a key differ).
pub(crate) const CLOCK_SKEW_SECS: u64 = 30;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading, creating or writing the key file failed.
    #[error("token signing key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PEM PKCS#8 Ed25519 private key.
    #[error("token signing key {path}: {reason}")]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// A header algorithm other than EdDSA.
    #[error("unsupported token algorithm")]
    Algorithm,
    /// The signature does not verify with this gateway's key.
    #[error("invalid token signature")]
    Signature,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf` or `iat` (beyond the allowed skew).
    #[error("token not valid yet")]
    NotYetValid,
    /// Another issuer or audience.
    #[error("token issued for another service")]
    WrongService,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// `aud` may be one string or a list (RFC 7519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Audience {
    fn includes(&self, service: &str) -> bool {
        match self {
            Audience::One(a) => a == service,
            Audience::Many(v) => v.iter().any(|a| a == service),
        }
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// Issuer.
    pub(crate) iss: String,
    /// Subject: the user, empty for anonymous.
    pub(crate) sub: String,
    /// Audience: the service.
    pub(crate) aud: Audience,
    /// Expiry, seconds since the epoch.
    pub(crate) exp: u64,
    /// Not before.
    pub(crate) nbf: u64,
    /// Issued at.
    pub(crate) iat: u64,
    /// Unique id.
    pub(crate) jti: String,
    /// What the token grants.
    #[serde(default)]
    pub(crate) access: Vec<AccessEntry>,
}

/// Signs and verifies tokens for one issuer and service.
pub(crate) struct TokenKeys {
    key: Ed25519KeyPair,
    public: UnparsedPublicKey<Vec<u8>>,
    kid: String,
    issuer: String,
    service: String,
}

impl TokenKeys {
    /// Keys from the PEM file at `path`, which is created first if it does not exist.
    pub(crate) fn load_or_create(
        path: &Path,
        issuer: &str,
        service: &str,
    ) -> Result<TokenKeys, KeyError> {
        let key = load_or_create_key(path)?;
        Ok(Self::from_key(key, issuer, service))
    }

    fn from_key(key: Ed25519KeyPair, issuer: &str, service: &str) -> TokenKeys {
        let public = key.public_key().as_ref().to_vec();
        let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
        TokenKeys {
            kid: URL_SAFE_NO_PAD.encode(&fingerprint.as_ref()[..16]),
            public: UnparsedPublicKey::new(&ED25519, public),
            key,
            issuer: issuer.to_owned(),
            service: service.to_owned(),
        }
    }

    /// The issuer tokens carry.
    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The service (audience) tokens carry.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    /// The compact JWS of `claims`.
    pub(crate) fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "EdDSA".to_owned(),
            typ: Some("JWT".to_owned()),
            kid: Some(self.kid.clone()),
        };
        // Serialising plain structs of strings and numbers cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let claims = serde_json::to_vec(claims).unwrap_or_default();
        let mut out = URL_SAFE_NO_PAD.encode(header);
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let sig = self.key.sign(out.as_bytes());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        out
    }

    /// The claims of `token` if it is genuine, current (at `now`, seconds since the epoch) and
    /// meant for this issuer and service.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm);
        }
        let signed_len = h.len() + 1 + c.len();
        self.public
            .verify(&token.as_bytes()[..signed_len], &decode(s)?)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(c)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != self.issuer || !claims.aud.includes(&self.service) {
            return Err(TokenError::WrongService);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + CLOCK_SKEW_SECS || claims.iat > now + CLOCK_SKEW_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `secs` since the epoch as RFC 3339 UTC (`2024-05-01T12:00:00Z`).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn load_or_create_key(path: &Path) -> Result<Ed25519KeyPair, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => return parse_key(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let invalid = |reason: &str| KeyError::Invalid {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let doc = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new())
        .map_err(|_| invalid("cannot generate a key"))?;
    let pem = to_pem(doc.as_ref());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Written under a temporary name and renamed, so a crash never leaves half a key; mode 0600
    // from the start, so the key is never readable by others.
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    tracing::info!(path = %path.display(), "created the token signing key");
    parse_key(path, &pem)
}

fn parse_key(path: &Path, text: &str) -> Result<Ed25519KeyPair, KeyError> {
    let invalid = |reason: String| KeyError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let start = text.find(PEM_BEGIN).ok_or_else(|| {
        invalid(format!(
            "no `{PEM_BEGIN}` block (a PKCS#8 Ed25519 key is expected)"
        ))
    })?;
    let body = &text[start + PEM_BEGIN.len()..];
    let end = body
        .find(PEM_END)
        .ok_or_else(|| invalid(format!("no `{PEM_END}`")))?;
    let b64: String = body[..end].split_whitespace().collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| invalid(format!("bad base64: {e}")))?;
    Ed25519KeyPair::from_pkcs8(&der).map_err(|e| invalid(format!("not an Ed25519 PKCS#8 key: {e}")))
}

fn to_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from(PEM_BEGIN);
    out.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(PEM_END);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn claims(now: u64, lifetime: u64) -> Claims {
        Claims {
            iss: "iss".into(),
            sub: "alice".into(),
            aud: Audience::One("svc".into()),
            exp: now + lifetime,
            nbf: now,
            iat: now,
            jti: "j".into(),
            access: vec![AccessEntry {
                kind: "repository".into(),
                name: "team/app".into(),
                actions: vec!["pull".into()],
            }],
        }
    }

    fn keys(dir: &Path) -> TokenKeys {
        TokenKeys::load_or_create(&dir.join("k/key.pem"), "iss", "svc").unwrap()
    }

    #[test]
    fn round_trip_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path());
        let now = 1_700_000_000;
        let t = k.sign(&claims(now, 300));
        assert_eq!(k.verify(&t, now).unwrap(), claims(now, 300));
        assert_eq!(k.verify(&t, now + 299).unwrap().sub, "alice");
        assert_eq!(k.verify(&t, now + 300), Err(TokenError::Expired));
        assert_eq!(k.verify(&t, now - CLOCK_SKEW_SECS).unwrap().sub, "alice");
        assert_eq!(
            k.verify(&t, now - CLOCK_SKEW_SECS - 1),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn the_key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/key.pem");
        let a = keys(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(PEM_BEGIN), "{text}");
        // A second start reads the same key: its tokens verify with the first one's.
        let b = keys(dir.path());
        let t = b.sign(&claims(1000, 10));
        assert!(a.verify(&t, 1000).is_ok());
        assert_eq!(a.kid, b.kid);
    }

    #[test]
    fn tampering_and_foreign_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path());
        let other = TokenKeys::from_key(Ed25519KeyPair::generate().unwrap(), "iss", "svc");
        let now = 1_700_000_000;
        let t = k.sign(&claims(now, 300));
        let parts: Vec<&str> = t.split('.').collect();

        let mut more = claims(now, 300);
        more.access[0].actions.push("push".into());
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&more).unwrap());
        let forged = format!("{}.{body}.{}", parts[0], parts[2]);
        assert_eq!(k.verify(&forged, now), Err(TokenError::Signature));

        assert_eq!(
            k.verify(&other.sign(&claims(now, 300)), now),
            Err(TokenError::Signature)
        );

        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(
            k.verify(&format!("{none}.{}.", parts[1]), now),
            Err(TokenError::Algorithm)
        );
        let hs = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        assert_eq!(
            k.verify(&format!("{hs}.{}.{}", parts[1], parts[2]), now),
            Err(TokenError::Algorithm)
        );

        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &format!("{}.{}", parts[0], parts[1]),
        ] {
            assert_eq!(k.verify(bad, now), Err(TokenError::Malformed), "{bad}");
        }
        let mut sig = parts[2].to_owned();
        sig.replace_range(0..1, if sig.starts_with('A') { "B" } else { "A" });
        assert_eq!(
            k.verify(&format!("{}.{}.{sig}", parts[0], parts[1]), now),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let k = TokenKeys::load_or_create(&path, "iss", "svc").unwrap();
        let other_service = TokenKeys::load_or_create(&path, "iss", "elsewhere").unwrap();
        let other_issuer = TokenKeys::load_or_create(&path, "someone", "svc").unwrap();
        let t = k.sign(&claims(100, 10));
        assert_eq!(other_service.verify(&t, 100), Err(TokenError::WrongService));
        assert_eq!(other_issuer.verify(&t, 100), Err(TokenError::WrongService));
        let mut many = claims(100, 10);
        many.aud = Audience::Many(vec!["x".into(), "svc".into()]);
        assert!(k.verify(&k.sign(&many), 100).is_ok());
    }

    #[test]
    fn broken_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        for text in [
            "",
            "hello",
            &format!("{PEM_BEGIN}\n!!!\n{PEM_END}\n"),
            &to_pem(b"not a key"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = TokenKeys::load_or_create(&path, "i", "s")
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("key.pem"), "{e}");
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
