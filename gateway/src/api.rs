//! The OCI Distribution v1.1 HTTP API, plus flotilla's own `/flotilla/v1/…` endpoints for nodes:
//! routing, shared state, and the handlers (in `api/`).
//!
//! Dependency direction: `api` → [`crate::registry::Registry`] → storage. Handlers are thin:
//! extract what the request says, call one `Registry` method, build the response. Nothing here
//! touches files or the database except through `Registry` (blob downloads read the `File` it
//! hands out).
//!
//! Every path under `/v2/` goes to one handler, `dispatch`, which routes with
//! [`flotilla_protocol::reference::split_v2_path`] (names may hold any number of `/`) and then by
//! method. Routing failures are OCI errors: a bad name is `400 NAME_INVALID`, a bad tag
//! `400 TAG_INVALID`, a bad digest `400 DIGEST_INVALID`, an unknown shape `404 UNSUPPORTED`, a
//! known shape with the wrong method `405 UNSUPPORTED` with `Allow`. Paths under `/flotilla/v1/`
//! go to `flotilla::handle` instead, with the same error conventions.
//!
//! With access control on ([`crate::auth`]), a routed `/v2/…` request is authorised between
//! routing and its handler, and `GET /auth/token` answers docker's token requests;
//! a fleet member's signed read (`Flotilla-Member`, see [`crate::fleet::Fleet::member`]) is
//! allowed without credentials. `/flotilla/v1/…` checks membership itself.
//!
//! Every routed request gets an [`Origin`] (who, from where; see [`crate::audit`]) before it is
//! authorised; handlers that change something report it with it to [`Events`] (the audit log
//! and webhook notifications).
//!
//! # Layout
//! - `headers`: header names, `Range`/`Content-Range` parsers, `Accept` negotiation, ETags.
//! - `blobs`: `HEAD`/`GET`/`DELETE /v2/<name>/blobs/<digest>`, streamed from disk.
//! - `uploads`: `POST /v2/<name>/blobs/uploads/` (plain, monolithic, mount) and the session
//!   endpoints `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.
//! - `manifests`: `HEAD`/`GET`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.
//! - `listing`: tags list, catalog, referrers.
//! - `flotilla`: `/flotilla/v1/info`, `pieces/<digest>`, `blobs/<digest>` and `stats`, what nodes
//!   ask of the gateway besides the OCI API.
//! - `access_log`: the per-request log line and the API-version header.

mod access_log;
mod blobs;
mod collect;
mod dedup;
mod flotilla;
pub mod headers;
mod listing;
mod manifests;
mod metrics;
mod revoke;
mod send_pool;
mod uploads;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use flotilla_protocol::reference::{RouteError, V2Route, split_v2_path};
use flotilla_protocol::{ReferenceError, RepoName};

use crate::audit::{Events, Origin};
use crate::auth::{self, Auth};
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::registry::Registry;

/// What every handler gets: the storage service and the limits from the config.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) registry: Registry,
    pub(crate) max_manifest_bytes: usize,
    pub(crate) page_limit: usize,
    /// Access control, if on.
    pub(crate) auth: Option<Auth>,
    /// The audit log and notifications.
    pub(crate) events: Events,
    /// Fleet enrollment (`POST /flotilla/v1/join`), when a fleet token is configured.
    pub(crate) fleet: Option<crate::fleet::Fleet>,
    /// The origin's refusal window for piece ranges just sent to another member.
    pub(crate) origin_dedup: Arc<dedup::OriginDedup>,
    pub(crate) send_pool: Arc<send_pool::SendPool>,
    /// Requests answered, per method and status (`GET /metrics`).
    pub(crate) requests: Arc<flotilla_node::metrics::RequestCounts>,
    /// `gc_min_age_secs`, for collections asked for over HTTP.
    pub(crate) gc_min_age: std::time::Duration,
    /// Held while such a collection runs (one at a time).
    pub(crate) gc_running: Arc<tokio::sync::Mutex<()>>,
}

/// The API as an axum `Router` (no listener): every response carries
/// `Docker-Distribution-API-Version: registry/2.0` and produces one log line.
///
/// `auth` is the access control loaded from `config.auth` ([`Auth::load`]); `None` serves
/// everyone everything. Nothing is audited or notified (see [`router_with_events`]).
pub fn router(registry: Registry, config: &Config, auth: Option<Auth>) -> Router {
    router_with_events(registry, config, auth, Events::disabled())
}

/// [`router`], reporting pushes, deletes and refusals to `events` ([`Events::start`]). The
/// client address comes from `ConnectInfo<SocketAddr>` when the server provides it (as
/// [`crate::serve`] does).
pub fn router_with_events(
    registry: Registry,
    config: &Config,
    auth: Option<Auth>,
    events: Events,
) -> Router {
    let requests = Arc::new(flotilla_node::metrics::RequestCounts::default());
    let state = AppState {
        requests: requests.clone(),
        gc_min_age: std::time::Duration::from_secs(config.gc_min_age_secs),
        gc_running: Arc::default(),
        registry,
        max_manifest_bytes: config.max_manifest_bytes,
        page_limit: config.page_limit(),
        auth,
        events,
        fleet: crate::fleet::Fleet::from_config(config),
        origin_dedup: Arc::new(dedup::OriginDedup::new(
            std::time::Duration::from_millis(config.origin_dedup_ms),
            std::time::Duration::from_millis(config.origin_dedup_connected_ms),
        )),
        send_pool: Arc::new(send_pool::SendPool::new(
            config.origin_max_sends,
            send_pool::MAX_WAITING,
        )),
    };
    Router::new()
        .fallback(dispatch)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            requests,
            access_log::layer,
        ))
}

/// The result type of handlers.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// Routes one request (see the module docs).
async fn dispatch(State(st): State<AppState>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    let res = match percent_decode(req.uri().path()) {
        Some(path) if flotilla::owns(&path) => flotilla::handle(&st, &path, req).await,
        Some(path) if path == "/metrics" => match *req.method() {
            Method::GET | Method::HEAD => metrics::serve(&st, req.headers(), req.uri()).await,
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        Some(path) if path == auth::TOKEN_PATH && st.auth.is_some() => match &st.auth {
            Some(a) => {
                let origin = st.events.origin(&req);
                a.token_endpoint_audited(req, &st.events, origin).await
            }
            None => Err(not_found()),
        },
        _ => match (route(req.uri()), st.auth.clone()) {
            (Ok(route), None) => {
                let origin = Arc::new(st.events.origin(&req));
                handle(st, route, req, origin).await
            }
            (Ok(route), Some(a)) => {
                let mut origin = st.events.origin(&req);
                match member_read(&st, &req) {
                    Ok(Some(member)) => {
                        origin.actor = Some(format!("member:{member}"));
                        return finish(handle(st, route, req, Arc::new(origin)).await, head);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        flotilla::record_refusal(&st, origin, &e).await;
                        return finish(Err(e), head);
                    }
                }
                match a.authorize(&route, req, &st.events, &mut origin).await {
                    Ok(req) => handle(st, route, req, Arc::new(origin)).await,
                    Err(e) => Err(e),
                }
            }
            (Err(e), _) => Err(e),
        },
    };
    finish(res, head)
}

/// The response to send for a handler's result.
fn finish(res: ApiResult, head: bool) -> Response {
    let res = res.unwrap_or_else(IntoResponse::into_response);
    if head { strip_body(res) } else { res }
}

/// A fleet member reads (`GET`/`HEAD`) under `/v2/` without credentials: it holds every layer
/// through the swarm anyway, and its node resolves tags and manifests here for its local
/// clients. `Ok(None)` when the request is not a member's read (access control decides).
fn member_read(st: &AppState, req: &Request) -> Result<Option<libp2p_identity::PeerId>, ApiError> {
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if !read || st.fleet.is_none() {
        return Ok(None);
    }
    flotilla::signed_by(st, req)
}

/// A `HEAD` answer: the `GET` headers (including the length the body would have), no body.
fn strip_body(mut res: Response) -> Response {
    use axum::body::HttpBody as _;
    let exact = res.body().size_hint().exact();
    if let Some(n) = exact.filter(|_| !res.headers().contains_key(header::CONTENT_LENGTH)) {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    *res.body_mut() = Body::empty();
    res
}

/// The API route of a URI, or the error that answers it.
fn route(uri: &Uri) -> Result<V2Route, ApiError> {
    let path = percent_decode(uri.path()).ok_or_else(not_found)?;
    let rest = if path == "/v2" {
        ""
    } else {
        path.strip_prefix("/v2/").ok_or_else(not_found)?
    };
    split_v2_path(rest).map_err(|e| match e {
        RouteError::NotFound => not_found(),
        RouteError::Name(e) => ApiError::new(ErrorCode::NameInvalid).with_detail(e.to_string()),
        RouteError::Reference(e @ ReferenceError::BadDigest(_)) => {
            ApiError::new(ErrorCode::DigestInvalid).with_detail(e.to_string())
        }
        RouteError::Reference(e @ ReferenceError::BadTag(_)) => {
            ApiError::new(ErrorCode::TagInvalid).with_detail(e.to_string())
        }
        RouteError::Reference(e) => {
            ApiError::new(ErrorCode::NameInvalid).with_detail(e.to_string())
        }
    })
}

/// `404` for paths that are not an endpoint of the API.
fn not_found() -> ApiError {
    ApiError::new(ErrorCode::Unsupported)
        .with_status(StatusCode::NOT_FOUND)
        .with_message("no such endpoint")
}

/// `405` with the methods the endpoint does allow.
fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(ErrorCode::Unsupported)
        .with_message("method not allowed on this endpoint")
        .with_header(header::ALLOW, HeaderValue::from_static(allow))
}

/// Calls the handler for `route` and the request's method.
async fn handle(st: AppState, route: V2Route, req: Request, origin: Arc<Origin>) -> ApiResult {
    let o = &origin;
    let m = req.method().clone();
    let get = m == Method::GET || m == Method::HEAD;
    match route {
        V2Route::Base if get => Ok(json_response(StatusCode::OK, &serde_json::json!({}))),
        V2Route::Base => Err(method_not_allowed("GET, HEAD")),
        V2Route::Catalog if get => listing::catalog(&st, req.uri()).await,
        V2Route::Catalog => Err(method_not_allowed("GET, HEAD")),
        V2Route::Tags(repo) if get => listing::tags(&st, &repo, req.uri()).await,
        V2Route::Tags(_) => Err(method_not_allowed("GET, HEAD")),
        V2Route::Referrers(repo, d) if get => listing::referrers(&st, &repo, &d, req.uri()).await,
        V2Route::Referrers(..) => Err(method_not_allowed("GET, HEAD")),
        V2Route::Blob(repo, d) => match m {
            Method::HEAD => blobs::head(&st, &repo, &d, req.headers()).await,
            Method::GET => blobs::get(&st, &repo, &d, req.headers()).await,
            Method::DELETE => blobs::delete(&st, &repo, &d, o).await,
            _ => Err(method_not_allowed("GET, HEAD, DELETE")),
        },
        V2Route::Manifest(repo, r) => match m {
            Method::GET | Method::HEAD => {
                manifests::get(&st, &repo, &r, req.headers(), m == Method::GET, o).await
            }
            Method::PUT => manifests::put(&st, &repo, &r, req, o).await,
            Method::DELETE => manifests::delete(&st, &repo, &r, o).await,
            _ => Err(method_not_allowed("GET, HEAD, PUT, DELETE")),
        },
        V2Route::UploadStart(repo) => match m {
            Method::POST => uploads::start(&st, &repo, req, o).await,
            _ => Err(method_not_allowed("POST")),
        },
        // Session ids are uuids; anything else cannot name a session, and is never handed to
        // storage (where it could be mistaken for a path).
        V2Route::Upload(_, id) if !plausible_upload_id(&id) => {
            Err(ApiError::new(ErrorCode::BlobUploadUnknown))
        }
        V2Route::Upload(repo, id) => match m {
            Method::GET | Method::HEAD => uploads::status(&st, &repo, &id).await,
            Method::PATCH => uploads::patch(&st, &repo, &id, req).await,
            Method::PUT => uploads::put(&st, &repo, &id, req, o).await,
            Method::DELETE => uploads::cancel(&st, &repo, &id).await,
            _ => Err(method_not_allowed("GET, HEAD, PATCH, PUT, DELETE")),
        },
    }
}

/// Whether `id` could be an upload session id: 1 to 128 ASCII letters, digits, `-` or `_`.
fn plausible_upload_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A JSON response with `Content-Type: application/json`.
pub(crate) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::internal("serialising a response", &e).into_response(),
    }
}

/// The query parameters of a request, first occurrence of each name winning.
pub(crate) fn query(uri: &Uri) -> HashMap<String, String> {
    // `form_urlencoded` parsing never fails for string pairs; a broken escape stays literal.
    let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let mut map = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        map.entry(k).or_insert(v);
    }
    map
}

/// A repository name from a query parameter (`from=`), as `400 NAME_INVALID` if malformed.
pub(crate) fn parse_name(text: &str) -> Result<RepoName, ApiError> {
    text.parse().map_err(|e: ReferenceError| {
        ApiError::new(ErrorCode::NameInvalid).with_detail(e.to_string())
    })
}

/// Decodes `%XX` escapes in a path; `None` if an escape is broken or the result is not UTF-8.
/// Clients do not normally escape anything in registry paths, but some escape the `:` of digests.
fn percent_decode(path: &str) -> Option<String> {
    if !path.contains('%') {
        return Some(path.to_owned());
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
