//! Blob uploads: `POST /v2/<name>/blobs/uploads/` and the session endpoints
//! `GET`/`PATCH`/`PUT`/`DELETE /v2/<name>/blobs/uploads/<id>`.
//!
//! - `POST ?mount=<digest>[&from=<repo>]`: 201 with the blob's `Location` when mounted; otherwise
//!   an upload starts (202), as the spec asks. Without `from`, the blob is mounted if the registry
//!   holds it anywhere.
//! - `POST ?digest=<digest>` with a body: monolithic upload, 201.
//! - `POST`: 202, `Location: /v2/<name>/blobs/uploads/<id>`, `Docker-Upload-UUID`, `Range: 0-0`.
//! - `PATCH` with or without `Content-Range` (a streamed chunk): 202 with `Location`,
//!   `Range: 0-<last byte>` and `Docker-Upload-UUID`. A chunk that does not start at the current
//!   offset gets `416` with code `BLOB_UPLOAD_INVALID` and the same three headers, so the client can
//!   resume from `Range`.
//! - `PUT ?digest=<digest>` with an optional final chunk: 201, `Location` of the blob,
//!   `Docker-Content-Digest`. A missing or malformed `digest` is `400 DIGEST_INVALID`.
//! - `GET`: 204 with `Location`, `Range`, `Docker-Upload-UUID`. `DELETE`: 204.
//!
//! Bodies are handed to the registry as a stream; nothing here buffers them.

use std::io;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use flotilla_protocol::{Digest, RepoName};
use futures::{StreamExt, TryStreamExt};

use super::headers::{self, ContentRangeError, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};
use super::{ApiResult, AppState, parse_name, query};
use crate::audit::{Event, Origin};
use crate::error::{ApiError, ErrorCode};
use crate::registry::{BodyStream, RegistryError, UploadInfo};

/// `POST /v2/<name>/blobs/uploads/`: mount, monolithic upload, or a new session.
pub(super) async fn start(
    st: &AppState,
    repo: &RepoName,
    req: Request,
    o: &Arc<Origin>,
) -> ApiResult {
    let q = query(req.uri());
    if let Some(mount) = q.get("mount") {
        let d = parse_digest(mount)?;
        let from = match q.get("from").filter(|f| !f.is_empty()) {
            Some(f) => Some(parse_name(f)?),
            None => None,
        };
        if let Some(size) = st.registry.blob_mount(repo, &d, from.as_ref()).await? {
            let ev = Event::blob_pushed(o, repo, &d, size, Some(from.as_ref()));
            st.events.record(ev).await;
            return Ok(blob_created(repo, &d));
        }
    }
    if let Some(digest) = q.get("digest") {
        let d = parse_digest(digest)?;
        let size = st
            .registry
            .blob_put(repo, &d, body_stream(req.into_body()))
            .await?;
        st.events
            .record(Event::blob_pushed(o, repo, &d, size, None))
            .await;
        return Ok(blob_created(repo, &d));
    }
    let info = st.registry.upload_start(repo).await?;
    Ok(session_answer(StatusCode::ACCEPTED, repo, &info))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: where the upload stands.
pub(super) async fn status(st: &AppState, repo: &RepoName, id: &str) -> ApiResult {
    let info = st.registry.upload_status(repo, id).await?;
    Ok(session_answer(StatusCode::NO_CONTENT, repo, &info))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: appends one chunk.
pub(super) async fn patch(st: &AppState, repo: &RepoName, id: &str, req: Request) -> ApiResult {
    let start = chunk_start(st, repo, id, req.headers()).await?;
    let info = st
        .registry
        .upload_append(repo, id, start, body_stream(req.into_body()))
        .await
        .map_err(|e| session_error(e, repo, id))?;
    Ok(session_answer(StatusCode::ACCEPTED, repo, &info))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: the optional last chunk, then the blob is checked
/// against the digest and linked.
pub(super) async fn put(
    st: &AppState,
    repo: &RepoName,
    id: &str,
    req: Request,
    o: &Arc<Origin>,
) -> ApiResult {
    let q = query(req.uri());
    let d = match q.get("digest") {
        Some(d) => parse_digest(d)?,
        None => {
            return Err(ApiError::new(ErrorCode::DigestInvalid)
                .with_message("the digest query parameter is required to finish an upload"));
        }
    };
    let start = chunk_start(st, repo, id, req.headers()).await?;
    let body = req.into_body();
    let body = if body.is_end_stream() || body.size_hint().exact() == Some(0) {
        None
    } else {
        Some(body_stream(body))
    };
    let size = st
        .registry
        .upload_finish(repo, id, &d, start, body)
        .await
        .map_err(|e| session_error(e, repo, id))?;
    st.events
        .record(Event::blob_pushed(o, repo, &d, size, None))
        .await;
    Ok(blob_created(repo, &d))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`: abandons the upload; 204.
pub(super) async fn cancel(st: &AppState, repo: &RepoName, id: &str) -> ApiResult {
    st.registry.upload_cancel(repo, id).await?;
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    Ok(res)
}

/// A digest from a query parameter, as `400 DIGEST_INVALID` if malformed or unsupported.
fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    text.parse().map_err(|e: flotilla_protocol::DigestError| {
        ApiError::new(ErrorCode::DigestInvalid).with_detail(e.to_string())
    })
}

/// The request body as the registry's stream type.
fn body_stream(body: Body) -> BodyStream {
    body.into_data_stream().map_err(io::Error::other).boxed()
}

/// The first byte of the chunk from `Content-Range`, if the client sent one.
///
/// Malformed: `400 BLOB_UPLOAD_INVALID`. End before start: `416` with the session's current
/// `Range`. A `Content-Length` that disagrees with the range: `400 SIZE_INVALID`, before any byte
/// is stored.
async fn chunk_start(
    st: &AppState,
    repo: &RepoName,
    id: &str,
    req: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    let Some(raw) = req.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let parsed = raw
        .to_str()
        .map_err(|_| ContentRangeError::Malformed)
        .and_then(headers::parse_content_range);
    match parsed {
        Ok((start, end)) => {
            let declared = req
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            // Some clients send a range with an empty body; only a non-empty body must match it.
            if let Some(len) = declared.filter(|&l| l > 0 && end - start != l - 1) {
                return Err(ApiError::new(ErrorCode::SizeInvalid).with_detail(format!(
                    "Content-Range {start}-{end} does not match Content-Length {len}"
                )));
            }
            Ok(Some(start))
        }
        Err(ContentRangeError::Malformed) => Err(ApiError::new(ErrorCode::BlobUploadInvalid)
            .with_message("malformed Content-Range; expected <start>-<end>")),
        Err(ContentRangeError::Backwards) => {
            let info = st.registry.upload_status(repo, id).await?;
            Err(out_of_order(repo, id, info.offset))
        }
    }
}

/// Maps a session error; an out-of-order chunk becomes 416 with the state to resume from.
fn session_error(e: RegistryError, repo: &RepoName, id: &str) -> ApiError {
    match e {
        RegistryError::RangeInvalid { offset } => out_of_order(repo, id, offset),
        other => other.into(),
    }
}

/// `416` for a chunk that does not start at `offset`.
fn out_of_order(repo: &RepoName, id: &str, offset: u64) -> ApiError {
    ApiError::new(ErrorCode::BlobUploadInvalid)
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_message("chunk out of order: it must start at the upload's current offset")
        .with_detail(serde_json::json!({ "offset": offset }))
        .with_header(header::LOCATION, headers::upload_location(repo, id))
        .with_header(header::RANGE, headers::upload_range(offset))
        .with_header(DOCKER_UPLOAD_UUID, headers::value(id))
}

/// The answer describing a live session (202 after POST/PATCH, 204 for GET).
fn session_answer(status: StatusCode, repo: &RepoName, info: &UploadInfo) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::LOCATION, headers::upload_location(repo, &info.id));
    h.insert(header::RANGE, headers::upload_range(info.offset));
    h.insert(DOCKER_UPLOAD_UUID, headers::value(&info.id));
    if status != StatusCode::NO_CONTENT {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    res
}

/// `201 Created` for a blob now in the repository.
fn blob_created(repo: &RepoName, d: &Digest) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::CREATED;
    let h = res.headers_mut();
    h.insert(header::LOCATION, headers::blob_location(repo, d));
    h.insert(DOCKER_CONTENT_DIGEST, headers::value(d.as_str()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    res
}
