//! The per-request decision: what a `/v2/…` route needs, whether the caller has it, and the
//! refusal when not (see the parent module for the rules).
//!
//! Refusals are reported to the audit log (`auth.failure`): presented credentials that are
//! wrong (401), a token without the scope (401 `insufficient_scope`), a known caller without the
//! right (403). The plain challenge of a request without credentials is not: it is the first
//! step of every docker client's token flow, not a failure.

use axum::extract::{Query, Request};
use axum::http::uri::PathAndQuery;
use axum::http::{Method, StatusCode, Uri};
use flotilla_protocol::RepoName;
use flotilla_protocol::reference::V2Route;

use super::policy::{ActionSet, Identity};
use super::scope::{CATALOG_SCOPE, Scope};
use super::{Auth, Caller, Presented, presented};
use crate::audit::{self, Events, Origin};
use crate::config::Action;
use crate::error::{ApiError, ErrorCode};

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Valid credentials of any kind (`/v2/`).
    Login,
    /// The catalog.
    Catalog,
    /// One action on one repository.
    Repo(RepoName, Action),
}

/// What `method` on `route` needs.
pub(crate) fn need(route: &V2Route, method: &Method) -> Need {
    let by_method = || match *method {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    match route {
        V2Route::Base => Need::Login,
        V2Route::Catalog => Need::Catalog,
        V2Route::Tags(repo) | V2Route::Referrers(repo, _) => Need::Repo(repo.clone(), by_method()),
        V2Route::Blob(repo, _) | V2Route::Manifest(repo, _) => {
            Need::Repo(repo.clone(), by_method())
        }
        // Reading or cancelling one's own upload session is part of pushing.
        V2Route::UploadStart(repo) | V2Route::Upload(repo, _) => {
            Need::Repo(repo.clone(), Action::Push)
        }
    }
}

impl Auth {
    /// Lets `req` through (possibly with its mount parameters removed) or refuses it. Sets
    /// `origin.actor` to the caller's name and records refusals in `events`.
    pub(crate) async fn authorize(
        &self,
        route: &V2Route,
        req: Request,
        events: &Events,
        origin: &mut Origin,
    ) -> Result<Request, ApiError> {
        let need = need(route, req.method());
        let caller = match self.caller(req.headers(), req.uri()).await {
            Ok(c) => c,
            Err(e) => {
                origin.actor = claimed_user(req.headers());
                record_failure(events, origin, &need, &e).await;
                return Err(e);
            }
        };
        origin.actor = match &caller {
            Caller::Anonymous => None,
            Caller::User(u) => Some(u.clone()),
            Caller::Token(c) => Some(c.sub.clone()).filter(|s| !s.is_empty()),
        };
        if !self.has(&caller, &need) {
            let e = self.refuse(&caller, &need, &req);
            if !matches!(caller, Caller::Anonymous) {
                record_failure(events, origin, &need, &e).await;
            }
            return Err(e);
        }
        if matches!(route, V2Route::UploadStart(_)) {
            return self.restrict_mount(&caller, req);
        }
        Ok(req)
    }

    /// [`Auth::token_endpoint`], recording wrong credentials (401) as `auth.failure`.
    pub(crate) async fn token_endpoint_audited(
        &self,
        req: Request,
        events: &Events,
        mut origin: Origin,
    ) -> Result<axum::response::Response, ApiError> {
        origin.actor = claimed_user(req.headers());
        let res = self.token_endpoint(req).await;
        if let Err(e) = &res
            && e.status() == StatusCode::UNAUTHORIZED
        {
            record_failure(events, &origin, &Need::Login, e).await;
        }
        res
    }

    /// Whether `caller` has what `need` asks for.
    fn has(&self, caller: &Caller, need: &Need) -> bool {
        match (need, caller) {
            (Need::Login, Caller::Anonymous) => false,
            (Need::Login, _) => true,
            (Need::Catalog, Caller::Token(c)) => c.access.iter().any(|a| a.grants_catalog()),
            (Need::Catalog, _) => self.policy().is_admin(caller.identity()),
            (Need::Repo(name, action), Caller::Token(c)) => {
                c.access.iter().any(|a| a.grants(name.as_str(), *action))
            }
            (Need::Repo(name, action), _) => self
                .policy()
                .allowed(caller.identity(), name.as_str())
                .contains(*action),
        }
    }

    /// Whether the rules would give `who` what `need` asks for (a token may lack it anyway).
    fn could(&self, who: Identity<'_>, need: &Need) -> bool {
        match need {
            Need::Login => !matches!(who, Identity::Anonymous),
            Need::Catalog => self.policy().is_admin(who),
            Need::Repo(name, action) => self.policy().allowed(who, name.as_str()).contains(*action),
        }
    }

    /// 401 with a challenge when the caller should (re)authenticate, 403 when they cannot get it.
    fn refuse(&self, caller: &Caller, need: &Need, req: &Request) -> ApiError {
        let scope = match need {
            Need::Login => None,
            Need::Catalog => Some(CATALOG_SCOPE.to_owned()),
            Need::Repo(name, action) => {
                // Pushing always reads too (blob checks), so docker asks for both.
                let actions = match action {
                    Action::Push => ActionSet::of(&[Action::Pull, Action::Push]),
                    a => ActionSet::of(&[*a]),
                };
                Some(Scope::repository_text(name.as_str(), actions))
            }
        };
        let challenge =
            |error| self.unauthorized(req.headers(), req.uri(), scope.as_deref(), error);
        match caller {
            Caller::Anonymous => challenge(None),
            // A token without the scope: a new one would carry it if the rules allow, and an
            // anonymous holder may have it once they log in.
            Caller::Token(c) if c.sub.is_empty() || self.could(caller.identity(), need) => {
                challenge(Some("insufficient_scope"))
            }
            Caller::User(_) | Caller::Token(_) => denied(need),
        }
    }

    /// Removes `mount` and `from` from a `POST …/blobs/uploads/` unless the caller may pull from
    /// `from`: the handler then starts a plain upload instead of mounting. Without `from` the
    /// storage would mount from any repository, so that is never allowed under access control.
    fn restrict_mount(&self, caller: &Caller, mut req: Request) -> Result<Request, ApiError> {
        if req.uri().query().is_none() {
            return Ok(req);
        }
        // Decoded exactly as the handler will decode them, so no spelling of `mount` slips by.
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
            .map(|q| q.0)
            .unwrap_or_default();
        if !pairs.iter().any(|(k, _)| k == "mount") {
            return Ok(req);
        }
        let from = pairs.iter().find(|(k, _)| k == "from").map(|(_, v)| v);
        let readable = from
            .and_then(|f| f.parse::<RepoName>().ok())
            .is_some_and(|from| self.has(caller, &Need::Repo(from, Action::Pull)));
        if readable {
            return Ok(req);
        }
        let kept: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "mount" && k != "from")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let path = req.uri().path();
        let pq = if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = pq.parse::<PathAndQuery>().ok();
        // Built from a valid path and escaped pairs, so this holds; if not, refuse, never mount.
        let uri = Uri::from_parts(parts).map_err(|e| {
            ApiError::new(ErrorCode::Unsupported)
                .with_status(StatusCode::BAD_REQUEST)
                .with_detail(e.to_string())
        })?;
        tracing::debug!(uri = %uri, "mount not allowed from there; starting a plain upload");
        *req.uri_mut() = uri;
        Ok(req)
    }
}

/// The user a request's Basic credentials name, whether or not the password is right.
fn claimed_user(headers: &axum::http::HeaderMap) -> Option<String> {
    match presented(headers) {
        Presented::Basic { user, .. } => Some(user),
        _ => None,
    }
}

/// Records one `auth.failure` for a request that needed `need` and was refused with `e`.
async fn record_failure(events: &Events, origin: &Origin, need: &Need, e: &ApiError) {
    let origin = std::sync::Arc::new(origin.clone());
    let mut ev = audit::Event::new(audit::Action::AuthFailure, &origin);
    ev.status = Some(e.status().as_u16());
    let what = match need {
        Need::Login => "log in".to_owned(),
        Need::Catalog => "read the catalog".to_owned(),
        Need::Repo(name, action) => {
            ev.repository = Some(name.as_str().to_owned());
            action.as_str().to_owned()
        }
    };
    ev.reason = Some(format!("{} ({what})", e.message()));
    events.record(ev).await;
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn denied(need: &Need) -> ApiError {
    let detail = match need {
        Need::Login => serde_json::json!({}),
        Need::Catalog => {
            serde_json::json!([{"Type": "registry", "Name": "catalog", "Action": "*"}])
        }
        Need::Repo(name, action) => {
            serde_json::json!([{"Type": "repository", "Name": name.as_str(), "Action": action.as_str()}])
        }
    };
    ApiError::new(ErrorCode::Denied).with_detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(path: &str) -> V2Route {
        flotilla_protocol::reference::split_v2_path(path).unwrap()
    }

    fn repo(name: &str, a: Action) -> Need {
        Need::Repo(name.parse().unwrap(), a)
    }

    #[test]
    fn encodes_query_components() {
        assert_eq!(encode("sha256:ab"), "sha256%3Aab");
        assert_eq!(encode("a b/c&d=e"), "a%20b%2Fc%26d%3De");
        assert_eq!(encode("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn every_route_maps_to_an_action() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            (Method::GET, "".to_owned(), Need::Login),
            (Method::GET, "_catalog".to_owned(), Need::Catalog),
            (
                Method::GET,
                "a/b/tags/list".to_owned(),
                repo("a/b", Action::Pull),
            ),
            (
                Method::GET,
                format!("a/referrers/{d}"),
                repo("a", Action::Pull),
            ),
            (
                Method::HEAD,
                format!("a/blobs/{d}"),
                repo("a", Action::Pull),
            ),
            (Method::GET, format!("a/blobs/{d}"), repo("a", Action::Pull)),
            (
                Method::DELETE,
                format!("a/blobs/{d}"),
                repo("a", Action::Delete),
            ),
            (
                Method::GET,
                "a/manifests/v1".to_owned(),
                repo("a", Action::Pull),
            ),
            (
                Method::PUT,
                "a/manifests/v1".to_owned(),
                repo("a", Action::Push),
            ),
            (
                Method::DELETE,
                "a/manifests/v1".to_owned(),
                repo("a", Action::Delete),
            ),
            (
                Method::POST,
                "a/blobs/uploads/".to_owned(),
                repo("a", Action::Push),
            ),
            (
                Method::GET,
                "a/blobs/uploads/abc".to_owned(),
                repo("a", Action::Push),
            ),
            (
                Method::PATCH,
                "a/blobs/uploads/abc".to_owned(),
                repo("a", Action::Push),
            ),
            (
                Method::PUT,
                "a/blobs/uploads/abc".to_owned(),
                repo("a", Action::Push),
            ),
            (
                Method::DELETE,
                "a/blobs/uploads/abc".to_owned(),
                repo("a", Action::Push),
            ),
        ];
        for (m, path, want) in cases {
            assert_eq!(need(&route(&path), &m), want, "{m} /v2/{path}");
        }
    }
}
