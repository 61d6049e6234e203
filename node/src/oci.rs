//! The node's read-only OCI endpoint, where docker and containerd on this host pull.
//!
//! - `GET /v2/` answers `200 {}` itself.
//! - Manifests (`GET`/`HEAD`), tag lists, referrers and the catalog are proxied to the gateway
//!   (`oci/proxy.rs`): same path and query, `Accept` forwarded, the answer streamed back with
//!   its status and registry headers. With a [`Meta`] service (`OciState::with_meta`), manifests
//!   go through `oci/manifests.rs`, which keeps the gateway's signed tag records and the
//!   manifests served, and answers from them (and from peers) while the gateway is
//!   unreachable. Listings then answer `503 UNAVAILABLE`.
//! - Blobs (`GET`/`HEAD /v2/<name>/blobs/<digest>`) come from the swarm through the
//!   [`Fetcher`] (`oci/blobs.rs`): streamed in order, each piece sent only once verified, with
//!   single `Range`s and `If-None-Match`. Blobs are content-addressed and the swarm is
//!   repository-free, so the name only has to be valid.
//! - Anything that writes (`POST`, `PUT`, `PATCH`, `DELETE`, and every upload route) is
//!   `405 UNSUPPORTED`: pushes go to the gateway. Unknown paths are `404 UNSUPPORTED`.
//! - `POST /flotilla/v1/prefetch` fetches an image's blobs (or one blob) into the store ahead
//!   of its pulls, and pins them if asked (`oci/prefetch.rs`); `POST /flotilla/v1/unpin` makes
//!   them evictable again (`oci/unpin.rs`).
//!
//! Paths are routed with [`split_v2_path`], so names with many segments work, and bad names,
//! tags and digests get the registry's error codes. As a registry mirror it takes docker's
//! `registry-mirrors` paths (`/v2/library/<name>/...`) as they come, and ignores the `ns`
//! query parameter containerd's `hosts.toml` mirrors add (it is not forwarded).
//!
//! Every response carries `Docker-Distribution-API-Version: registry/2.0` and produces one
//! access-log line (method, path, status, bytes sent, duration) when its body is done.

mod blobs;
mod manifests;
pub mod prefetch;
mod proxy;
mod unpin;

/// `405` with the methods the route takes in `Allow`.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "method not allowed",
    )
    .header(header::ALLOW, HeaderValue::from_static(allow))
    .into_response()
}

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flotilla_protocol::reference::{RouteError, V2Route, split_v2_path};
use flotilla_protocol::{Digest, ReferenceError};
use http_body_util::BodyExt as _;
use serde::Serialize;

use crate::fetch::{FetchError, Fetcher};
use crate::meta::Meta;
use crate::ports::PieceSource;

/// `Docker-Distribution-API-Version`.
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
/// `Docker-Content-Digest`.
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// `OCI-Filters-Applied` (referrers filtered by artifact type).
const FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// What the endpoint needs.
#[derive(Clone)]
pub struct OciState {
    /// Blob downloads through the swarm.
    pub fetcher: Fetcher,
    /// Base URL of the gateway (`http://host:port`), where manifests and listings are proxied.
    pub gateway_url: String,
    /// The client for proxied requests.
    pub http: reqwest::Client,
    /// Where verified pieces are read from (the node's store).
    pub source: Arc<dyn PieceSource>,
    /// Tag records and kept manifests, for pulls while the gateway is unreachable. `None`:
    /// manifests are only proxied.
    pub meta: Option<Meta>,
    /// Signs the requests sent on to the gateway as a fleet member's (so the gateway serves
    /// this node's clients without their credentials; SPEC §5.3).
    pub member: crate::gateway_http::MemberSigner,
    /// What the access log counts for `GET /metrics`.
    pub requests: Arc<crate::metrics::RequestCounts>,
    /// Pins and unpins blobs held (a pinned one is never evicted); `None`: prefetches cannot pin
    /// and nothing can be unpinned.
    pub pin: Option<PinFn>,
    /// Blobs that prefetches may fetch at once, node-wide (pulls are not counted).
    pub prefetch_slots: Arc<tokio::sync::Semaphore>,
    /// The bearer token a prefetch from another host must present (the fleet token); `None`:
    /// prefetches are taken from this host only. See [`prefetch`]'s module docs.
    pub prefetch_token: Option<crate::identity::membership::FleetToken>,
}

/// Pins (`true`) or unpins (`false`) a blob the store holds: `Some(whether it was pinned)`, or
/// `None` if the store does not hold it; the error says why it could not.
pub type PinFn = Arc<
    dyn Fn(Digest, bool) -> futures::future::BoxFuture<'static, Result<Option<bool>, String>>
        + Send
        + Sync,
>;

impl OciState {
    /// The state for a gateway at `gateway_url`, with an HTTP client that gives up connecting
    /// after 10 s (answers themselves have no time limit: listings and manifests stream through).
    ///
    /// # Errors
    /// [`FetchError::BadGatewayUrl`] if the client cannot be built.
    pub fn new(
        fetcher: Fetcher,
        gateway_url: impl Into<String>,
        source: Arc<dyn PieceSource>,
    ) -> Result<Self, FetchError> {
        let gateway_url = gateway_url.into();
        let http = crate::gateway_http::HttpTls::default()
            .client(Duration::from_secs(10))
            .map_err(|e| FetchError::BadGatewayUrl {
                url: gateway_url.clone(),
                reason: e.to_string(),
            })?;
        Ok(OciState {
            fetcher,
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            http,
            source,
            meta: None,
            member: crate::gateway_http::MemberSigner::new(),
            requests: Arc::default(),
            pin: None,
            prefetch_slots: Arc::new(tokio::sync::Semaphore::new(prefetch::MAX_BLOBS)),
            prefetch_token: None,
        })
    }

    /// Talks to the gateway with `http` (an HTTPS-capable client, see
    /// [`crate::gateway_http::HttpTls`]) and signs as `member`.
    #[must_use]
    pub fn with_gateway_http(
        mut self,
        http: reqwest::Client,
        member: crate::gateway_http::MemberSigner,
    ) -> Self {
        self.http = http;
        self.member = member;
        self
    }

    /// Answers manifests from signed tag records and kept manifests while the gateway is
    /// unreachable, and keeps what the gateway serves (spec §6.4).
    #[must_use]
    pub fn with_meta(mut self, meta: Meta) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Lets prefetches fetch at most `blobs` blobs at once, node-wide (default
    /// [`prefetch::MAX_BLOBS`]).
    #[must_use]
    pub fn with_prefetch_slots(mut self, blobs: usize) -> Self {
        self.prefetch_slots = Arc::new(tokio::sync::Semaphore::new(blobs.max(1)));
        self
    }

    /// Takes prefetches from other hosts that present `token` (`Authorization: Bearer …`).
    #[must_use]
    pub fn with_prefetch_token(
        mut self,
        token: impl Into<crate::identity::membership::FleetToken>,
    ) -> Self {
        self.prefetch_token = Some(token.into());
        self
    }

    /// Lets prefetches pin what they fetch, and unpins.
    #[must_use]
    pub fn with_pinning(mut self, pin: PinFn) -> Self {
        self.pin = Some(pin);
        self
    }
}

/// The endpoint as an axum `Router` (no listener).
pub fn router(state: OciState) -> Router {
    let requests = state.requests.clone();
    Router::new()
        .route(
            "/flotilla/v1/prefetch",
            axum::routing::any(prefetch::handle),
        )
        .route("/flotilla/v1/unpin", axum::routing::any(unpin::handle))
        .fallback(dispatch)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(requests, access_log))
}

/// An error answered in the registry's JSON form.
#[derive(Debug)]
pub(crate) struct OciError {
    status: StatusCode,
    code: &'static str,
    message: String,
    detail: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl OciError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        OciError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

#[derive(Serialize)]
struct ErrorEntry<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            errors: [ErrorEntry {
                code: self.code,
                message: &self.message,
                detail: self.detail.as_deref(),
            }],
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = (self.status, json).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            res.headers_mut().insert(name, value);
        }
        res
    }
}

impl From<FetchError> for OciError {
    fn from(e: FetchError) -> Self {
        let detail = e.to_string();
        match e {
            FetchError::NotFound(_) => OciError::new(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
            ),
            FetchError::BadTable { .. }
            | FetchError::GatewayIdentity { .. }
            | FetchError::Unreachable { .. }
            | FetchError::Stalled { .. } => {
                tracing::warn!(error = %detail, "blob unavailable");
                OciError::new(
                    StatusCode::BAD_GATEWAY,
                    "UNKNOWN",
                    "the blob cannot be fetched from the swarm or the gateway",
                )
            }
            FetchError::Store(ref source)
                if matches!(**source, crate::ports::SourceError::NoSpace(_)) =>
            {
                tracing::warn!(error = %detail, "blob refused: the node's disk is full");
                OciError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "UNAVAILABLE",
                    "the node has no disk space for this blob; free space or lower cache_bytes",
                )
            }
            FetchError::Store(_)
            | FetchError::BadGatewayUrl { .. }
            | FetchError::PieceOutOfRange { .. }
            | FetchError::Stopped(_) => {
                tracing::error!(error = %detail, "blob download failed");
                OciError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal error",
                )
            }
        }
        .detail(detail)
    }
}

/// The answer to any write: this node only serves.
fn read_only() -> OciError {
    OciError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "this node is read-only; push to the gateway",
    )
    .header(header::ALLOW, HeaderValue::from_static("GET, HEAD"))
}

/// `503 UNAVAILABLE`: the gateway cannot be reached and nothing here can stand in for it.
pub(crate) fn unavailable(message: &str) -> OciError {
    OciError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
}

fn not_found() -> OciError {
    OciError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", "no such endpoint")
}

/// Routes one request (see the module docs).
async fn dispatch(State(st): State<OciState>, req: Request) -> Response {
    // Only the head is needed (nothing here reads a body), and it is `Sync`, unlike the body.
    let (req, _) = req.into_parts();
    let route = match route(&req.uri) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let method = req.method.clone();
    if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return read_only().into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    let head = method == Method::HEAD;
    let res = match route {
        V2Route::Base => Ok(base()),
        V2Route::Blob(_, digest) => {
            if head {
                blobs::head(&st, &digest, &req.headers).await
            } else {
                blobs::get(&st, &digest, &req.headers).await
            }
        }
        V2Route::Manifest(repo, reference) => {
            manifests::manifest(&st, &req, &repo, &reference).await
        }
        V2Route::Tags(_) | V2Route::Catalog | V2Route::Referrers(..) => {
            proxy::forward(&st, &req).await
        }
        V2Route::UploadStart(_) | V2Route::Upload(..) => Err(read_only()),
    };
    res.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v2/`: the version check clients start with.
fn base() -> Response {
    let mut res = (StatusCode::OK, "{}").into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The API route of a URI, or the error that answers it.
fn route(uri: &Uri) -> Result<V2Route, OciError> {
    let path = percent_decode(uri.path()).ok_or_else(not_found)?;
    let rest = if path == "/v2" {
        ""
    } else {
        path.strip_prefix("/v2/").ok_or_else(not_found)?
    };
    split_v2_path(rest).map_err(|e| match e {
        RouteError::NotFound => not_found(),
        RouteError::Name(e) | RouteError::Reference(e) => reference_error(&e),
    })
}

/// The registry's answer to a bad name, tag or digest.
pub(crate) fn reference_error(e: &ReferenceError) -> OciError {
    let (code, message) = match e {
        ReferenceError::BadName(_) => ("NAME_INVALID", "invalid repository name"),
        ReferenceError::BadTag(_) => ("TAG_INVALID", "manifest tag did not match URI"),
        ReferenceError::BadDigest(_) => ("DIGEST_INVALID", "provided digest is invalid"),
    };
    OciError::new(StatusCode::BAD_REQUEST, code, message).detail(e.to_string())
}

/// `%XX`-decodes a path; `None` for a broken escape or a result that is not UTF-8.
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

/// Adds the API version header and logs one line per request when its body is done.
async fn access_log(
    State(requests): State<Arc<crate::metrics::RequestCounts>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut res = next.run(req).await;
    res.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    let mut line = LogLine {
        method,
        path,
        status: res.status(),
        start,
        bytes: 0,
        requests,
    };
    // The closure owns the line: it is written when the body is dropped (sent or aborted).
    res.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                line.sent(data.len());
            }
            frame
        }))
    })
}

/// One access-log line, written on drop.
struct LogLine {
    method: Method,
    path: String,
    status: StatusCode,
    start: Instant,
    bytes: u64,
    requests: Arc<crate::metrics::RequestCounts>,
}

impl LogLine {
    fn sent(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        self.requests
            .record(&self.method, self.status.as_u16(), self.bytes, seconds);
        let duration = format!("{:.3}ms", seconds * 1e3);
        tracing::info!(
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration = %duration,
            "request"
        );
    }
}
