//! Authentication and authorisation of the registry API (the `[auth]` section of the config).
//!
//! # Model
//! - **Identities** are the users of an htpasswd file (bcrypt only), or nobody (anonymous).
//! - **Rights** come from the access rules ([`policy`]): per repository pattern, the actions
//!   (`pull`, `push`, `delete`) anonymous callers, any user, and named users may perform; the
//!   first matching rule decides, no match means no rights; admins may do everything, including
//!   reading the catalog.
//! - **Credentials** on a request are either `Authorization: Basic` (checked against htpasswd,
//!   successes cached briefly) or `Authorization: Bearer <token>` with a token from this
//!   gateway's token endpoint, `GET /auth/token` (docker's token protocol; [`token`]). A token
//!   carries exactly what it grants (the `access` claim); a Basic or anonymous request is checked
//!   against the rules directly.
//!
//! # Requests
//! Every `/v2/…` request maps to a need (see [`check`]): `/v2/` itself needs valid credentials
//! (so `docker login` can check them), `_catalog` needs the `registry:catalog:*` scope (admins),
//! and everything else needs one action on one repository: `GET`/`HEAD` pull, `DELETE` of a
//! blob or manifest delete, anything else and every upload request push. A cross-repository
//! mount additionally needs pull on `from`; without it (or without `from`) the mount is not
//! attempted and a plain upload starts instead, as the spec allows, so a blob never leaks from
//! a repository the caller cannot read.
//!
//! Refusals are OCI errors: `401 UNAUTHORIZED` with a `WWW-Authenticate: Bearer realm=…,
//! service=…,scope=…` challenge when credentials are missing or invalid (or a token lacks a
//! scope its holder could get), `403 DENIED` when the caller is known but not allowed.
//!
//! `/flotilla/v1/…` (the node endpoints) stays anonymous: fleet membership is not part of this.
//!
//! # Layout
//! - [`pattern`]: repository globs. [`policy`]: the compiled rules.
//! - [`htpasswd`]: the user file and the cached password check.
//! - [`scope`]: the scope grammar and what a token grants. [`token`]: Ed25519 JWTs and the key.
//! - [`check`]: the per-request decision. [`endpoint`]: `GET /auth/token`.

mod check;
mod endpoint;
pub mod htpasswd;
mod pattern;
mod policy;
mod scope;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use self::htpasswd::{Htpasswd, HtpasswdError, Verifier};
use self::pattern::PatternError;
use self::policy::{Identity, Policy};
use self::token::{Claims, KeyError, TokenKeys};
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};

/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/auth/token";

/// Why the `[auth]` section cannot be put into effect.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// An access rule's repository pattern is invalid.
    #[error("[[auth.rules]]: {0}")]
    Pattern(String),
    /// The htpasswd file cannot be read or parsed.
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    /// The token signing key cannot be read or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Another setting is unusable.
    #[error("[auth]: {0}")]
    Setting(String),
}

impl From<PatternError> for AuthError {
    fn from(e: PatternError) -> Self {
        AuthError::Pattern(e.to_string())
    }
}

/// The access control of one gateway (cheap to clone).
#[derive(Clone)]
pub struct Auth(Arc<Inner>);

struct Inner {
    policy: Policy,
    verifier: Verifier,
    keys: TokenKeys,
    lifetime_secs: u64,
    /// The configured realm, or `None` to build it from the request's host.
    realm: Option<String>,
    scheme: &'static str,
    /// The host put in realms when a request names none.
    fallback_host: String,
}

/// Who sent a request, as far as its credentials tell.
#[derive(Debug)]
pub(crate) enum Caller {
    /// No credentials.
    Anonymous,
    /// Basic credentials that match htpasswd.
    User(String),
    /// A valid bearer token.
    Token(Claims),
}

impl Caller {
    /// The identity the policy knows the caller by.
    pub(crate) fn identity(&self) -> Identity<'_> {
        match self {
            Caller::Anonymous => Identity::Anonymous,
            Caller::User(u) => Identity::User(u),
            Caller::Token(c) if c.sub.is_empty() => Identity::Anonymous,
            Caller::Token(c) => Identity::User(&c.sub),
        }
    }
}

/// Credentials found in an `Authorization` header.
enum Presented {
    None,
    Basic { user: String, password: String },
    Bearer(String),
    Unusable,
}

impl Auth {
    /// The access control `config.auth` describes, or `None` when there is no `[auth]` section.
    /// Reads the htpasswd file and reads (or creates) the token signing key.
    ///
    /// # Errors
    /// [`AuthError`] for a bad pattern, an unreadable or malformed htpasswd file, an unusable
    /// key file, or a token lifetime of zero or a malformed realm.
    pub fn load(config: &Config) -> Result<Option<Auth>, AuthError> {
        let Some(cfg) = &config.auth else {
            return Ok(None);
        };
        let policy = Policy::new(cfg)?;
        let users = match &cfg.htpasswd {
            Some(path) => Htpasswd::load(path)?,
            None => Htpasswd::default(),
        };
        for name in policy.named_users() {
            if !users.contains(name) {
                tracing::warn!(
                    user = name,
                    "[auth] names a user the htpasswd file does not have"
                );
            }
        }
        if cfg.token.lifetime_secs == 0 {
            return Err(AuthError::Setting(
                "token.lifetime_secs must be at least 1".to_owned(),
            ));
        }
        if let Some(realm) = &cfg.token.realm
            && (!(realm.starts_with("https://") || realm.starts_with("http://"))
                || realm
                    .chars()
                    .any(|c| c == '"' || c == '\\' || c.is_control()))
        {
            return Err(AuthError::Setting(format!(
                "token.realm {realm:?} must be an absolute http(s) URL without quotes"
            )));
        }
        for (what, v) in [
            ("service", &cfg.token.service),
            ("issuer", &cfg.token.issuer),
        ] {
            if v.is_empty() || v.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                return Err(AuthError::Setting(format!(
                    "token.{what} {v:?} must be non-empty, without quotes or control characters"
                )));
            }
        }
        let key_file = cfg
            .token
            .key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("auth").join("token-key.pem"));
        let keys = TokenKeys::load_or_create(&key_file, &cfg.token.issuer, &cfg.token.service)?;
        let user_count = users.len();
        let verifier = Verifier::new(users, Duration::from_secs(cfg.credential_cache_secs))
            .map_err(|_| AuthError::Setting("no randomness for the credential cache".to_owned()))?;
        tracing::info!(
            users = user_count,
            rules = cfg.rules.len(),
            service = %cfg.token.service,
            "access control on"
        );
        Ok(Some(Auth(Arc::new(Inner {
            policy,
            verifier,
            keys,
            lifetime_secs: cfg.token.lifetime_secs,
            realm: cfg.token.realm.clone(),
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            fallback_host: config.listen.to_string(),
        }))))
    }

    /// Who sent a request with these headers; `Err` (401) when credentials are present but wrong.
    pub(crate) async fn caller(&self, headers: &HeaderMap, uri: &Uri) -> Result<Caller, ApiError> {
        match presented(headers) {
            Presented::None => Ok(Caller::Anonymous),
            Presented::Basic { user, password } => {
                if self.0.verifier.verify(&user, &password).await {
                    Ok(Caller::User(user))
                } else {
                    tracing::info!(user = %user, "refused Basic credentials");
                    Err(self
                        .unauthorized(headers, uri, None, None)
                        .with_message("invalid username or password"))
                }
            }
            Presented::Bearer(token) => match self.0.keys.verify(&token, token::unix_now()) {
                Ok(claims) => Ok(Caller::Token(claims)),
                Err(e) => Err(self
                    .unauthorized(headers, uri, None, Some("invalid_token"))
                    .with_message(e.to_string())),
            },
            Presented::Unusable => Err(self
                .unauthorized(headers, uri, None, None)
                .with_message("unsupported Authorization header; use Basic or Bearer")),
        }
    }

    /// `401 UNAUTHORIZED` with the Bearer challenge for `scope` (and an RFC 6750 `error`).
    pub(crate) fn unauthorized(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        scope: Option<&str>,
        error: Option<&str>,
    ) -> ApiError {
        let mut challenge = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers, uri),
            self.0.keys.service()
        );
        if let Some(scope) = scope {
            challenge.push_str(&format!(",scope=\"{scope}\""));
        }
        if let Some(error) = error {
            challenge.push_str(&format!(",error=\"{error}\""));
        }
        let err = ApiError::new(ErrorCode::Unauthorized);
        match HeaderValue::from_str(&challenge) {
            Ok(v) => err.with_header(header::WWW_AUTHENTICATE, v),
            // Every part is checked at load time or built from checked characters.
            Err(_) => err,
        }
    }

    /// The token endpoint's URL for a request with these headers.
    fn realm(&self, headers: &HeaderMap, uri: &Uri) -> String {
        if let Some(r) = &self.0.realm {
            return r.clone();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .filter(|h| plausible_host(h))
            .unwrap_or(&self.0.fallback_host);
        format!("{}://{host}{TOKEN_PATH}", self.0.scheme)
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.0.policy
    }

    /// Lets the request through only if its caller passes `allowed` (an endpoint outside the
    /// repository rules: garbage collection, metrics): an anonymous caller gets the `401`
    /// challenge, anyone else `403 DENIED`, both saying `who` may.
    pub(crate) async fn require(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        allowed: impl Fn(&Policy, Identity<'_>) -> bool,
        who: &str,
    ) -> Result<(), ApiError> {
        let caller = self.caller(headers, uri).await?;
        if allowed(self.policy(), caller.identity()) {
            return Ok(());
        }
        Err(match caller {
            Caller::Anonymous => self
                .unauthorized(headers, uri, None, None)
                .with_message(format!("{who}: log in as one")),
            _ => ApiError::new(ErrorCode::Denied).with_message(who.to_owned()),
        })
    }
}

/// Whether `host` can go into a quoted header parameter and a URL unchanged.
fn plausible_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        })
}

fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Unusable;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((user, password)) => Presented::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            },
            None => Presented::Unusable,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Presented::Bearer(rest.to_owned())
    } else {
        Presented::Unusable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn reads_authorization_headers() {
        assert!(matches!(presented(&HeaderMap::new()), Presented::None));
        let b = STANDARD.encode("alice:pa:ss");
        match presented(&headers(&format!("basic {b}"))) {
            Presented::Basic { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("alice", "pa:ss"))
            }
            _ => panic!("not Basic"),
        }
        assert!(
            matches!(presented(&headers("Bearer abc.def.ghi")), Presented::Bearer(t) if t == "abc.def.ghi")
        );
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic !!!",
            &format!("Basic {}", STANDARD.encode("nocolon")),
            "Digest x",
            "x",
        ] {
            assert!(
                matches!(presented(&headers(bad)), Presented::Unusable),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts_for_realms() {
        assert!(plausible_host("127.0.0.1:5000"));
        assert!(plausible_host("[::1]:5000"));
        assert!(plausible_host("registry.example.com"));
        assert!(!plausible_host("evil\"host"));
        assert!(!plausible_host("a b"));
        assert!(!plausible_host(""));
    }
}
