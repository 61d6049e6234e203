//! `GET /auth/token`: docker's token endpoint.
//!
//! `?service=<service>&scope=<scope>[&scope=…]`, with `Authorization: Basic` for a user or no
//! credentials for an anonymous token. The answer is
//! `{"token", "access_token", "expires_in", "issued_at"}` (both token fields hold the same JWT,
//! for old and OAuth 2 clients). The token grants, per requested resource, the requested actions
//! the rules allow: asking for more is not an error, the token simply carries less (docker then
//! gets `401`/`403` on the request that needs more). Wrong credentials are `401`; a `service`
//! other than this gateway's, or a malformed scope, `400`. No refresh tokens are issued, so
//! clients keep their password and come back here when a token expires.

use axum::extract::{Query, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde::Serialize;

use super::policy::Identity;
use super::scope::{Scope, ScopeError, grant};
use super::token::{self, Audience, Claims};
use super::{Auth, Caller, Presented, presented};
use crate::api::json_response;
use crate::error::{ApiError, ErrorCode};

#[derive(Serialize)]
struct TokenAnswer {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
}

impl Auth {
    /// Answers one request to [`super::TOKEN_PATH`].
    pub(crate) async fn token_endpoint(&self, req: Request) -> Result<Response, ApiError> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Err(ApiError::new(ErrorCode::Unsupported)
                .with_message("the token endpoint answers GET only")
                .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        }
        let caller = match presented(req.headers()) {
            Presented::None => Caller::Anonymous,
            Presented::Basic { user, password }
                if self.0.verifier.verify(&user, &password).await =>
            {
                Caller::User(user)
            }
            Presented::Basic { user, .. } => {
                tracing::info!(user = %user, "token refused: wrong credentials");
                return Err(basic_challenge("invalid username or password"));
            }
            Presented::Bearer(_) | Presented::Unusable => {
                return Err(basic_challenge(
                    "the token endpoint takes Basic credentials or none",
                ));
            }
        };
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
            .map(|q| q.0)
            .unwrap_or_default();
        if let Some((_, service)) = pairs.iter().find(|(k, _)| k == "service")
            && service != self.0.keys.service()
        {
            return Err(ApiError::new(ErrorCode::Unsupported)
                .with_status(StatusCode::BAD_REQUEST)
                .with_message("unknown service")
                .with_detail(format!(
                    "this registry is service {:?}",
                    self.0.keys.service()
                )));
        }
        let scopes = Scope::parse_all(
            pairs
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str()),
        )
        .map_err(|e| match e {
            ScopeError::Name { .. } => {
                ApiError::new(ErrorCode::NameInvalid).with_detail(e.to_string())
            }
            ScopeError::Malformed(_) => ApiError::new(ErrorCode::Unsupported)
                .with_status(StatusCode::BAD_REQUEST)
                .with_message("malformed scope")
                .with_detail(e.to_string()),
        })?;
        let who = caller.identity();
        let access = grant(self.policy(), who, &scopes);
        let now = token::unix_now();
        let claims = Claims {
            iss: self.0.keys.issuer().to_owned(),
            sub: match who {
                Identity::User(u) => u.to_owned(),
                Identity::Anonymous => String::new(),
            },
            aud: Audience::One(self.0.keys.service().to_owned()),
            exp: now + self.0.lifetime_secs,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
        };
        tracing::debug!(sub = %claims.sub, access = ?claims.access, "token issued");
        let jwt = self.0.keys.sign(&claims);
        let mut res = json_response(
            StatusCode::OK,
            &TokenAnswer {
                token: jwt.clone(),
                access_token: jwt,
                expires_in: self.0.lifetime_secs,
                issued_at: token::rfc3339(now),
            },
        );
        // RFC 6749 §5.1: token answers must not be cached.
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(res)
    }
}

/// `401` asking for a password (the token endpoint itself never answers with a Bearer challenge).
fn basic_challenge(message: &'static str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized)
        .with_message(message)
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"flotilla\", charset=\"UTF-8\""),
        )
}
