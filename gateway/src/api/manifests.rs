//! `HEAD`, `GET`, `PUT` and `DELETE /v2/<name>/manifests/<tag-or-digest>`.
//!
//! - `GET`/`HEAD`: the stored bytes with `Content-Type` = the stored media type,
//!   `Docker-Content-Digest`, `Content-Length` and `ETag`. The registry never converts manifests;
//!   an `Accept` list that names only other manifest types is answered `404 MANIFEST_UNKNOWN`
//!   (see [`super::headers::manifest_acceptable`]). `If-None-Match` on the digest gives 304.
//! - `PUT`: the body is read up to `max_manifest_bytes` (a larger `Content-Length` is refused before
//!   reading; a body that grows past the limit is cut off after limit + 1 bytes) and refused with
//!   `413 SIZE_INVALID`; accepted manifests get 201 with `Location: /v2/<name>/manifests/<digest>`,
//!   `Docker-Content-Digest`, and `OCI-Subject` when the manifest has a `subject`.
//! - `DELETE`: 202; by digest it removes the manifest and its tags, by tag only the tag.
//!
//! Pushes and deletes are reported to the audit log and notifications (`manifest.push`, and
//! `tag.move` when a push by tag changes what the tag names; `manifest.delete`, `tag.delete`);
//! `GET`s only to notification endpoints that asked for pulls.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use flotilla_protocol::{Reference, RepoName};
use futures::StreamExt;

use super::headers::{self, DOCKER_CONTENT_DIGEST, OCI_SUBJECT};
use super::{ApiResult, AppState};
use crate::audit::{Action, Event, Origin};
use crate::error::{ApiError, ErrorCode, manifest_too_large};

/// `GET`/`HEAD` (the dispatcher drops the body for `HEAD`); `is_get` tells them apart.
pub(super) async fn get(
    st: &AppState,
    repo: &RepoName,
    r: &Reference,
    req: &HeaderMap,
    is_get: bool,
    o: &Arc<Origin>,
) -> ApiResult {
    let m = st.registry.manifest_get(repo, r).await?;
    let size = m.bytes.len() as u64;
    if !headers::manifest_acceptable(req, &m.media_type) {
        return Err(ApiError::new(ErrorCode::ManifestUnknown)
            .with_message("the manifest's media type is not in the request's Accept list")
            .with_detail(serde_json::json!({ "mediaType": m.media_type })));
    }
    let mut res = if headers::if_none_match(req, &m.digest) {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let mut res = Response::new(Body::from(m.bytes));
        res.headers_mut()
            .insert(header::CONTENT_TYPE, headers::value(&m.media_type));
        res
    };
    let h = res.headers_mut();
    h.insert(DOCKER_CONTENT_DIGEST, headers::value(m.digest.as_str()));
    h.insert(header::ETAG, headers::etag(&m.digest));
    if is_get && res.status() == StatusCode::OK && st.events.wants_pulls() {
        let tag = match r {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        let ev = Event::manifest(
            Action::ManifestPull,
            o,
            repo,
            &m.digest,
            tag,
            &m.media_type,
            size,
        );
        st.events.record(ev).await;
    }
    Ok(res)
}

/// `PUT`: validates and stores the manifest (and its tag, if the reference is one).
pub(super) async fn put(
    st: &AppState,
    repo: &RepoName,
    r: &Reference,
    req: Request,
    o: &Arc<Origin>,
) -> ApiResult {
    let limit = st.max_manifest_bytes;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // Read what the client is sending anyway, so it sees the 413 instead of a reset.
        drain(req.into_body().into_data_stream()).await;
        return Err(manifest_too_large(limit));
    }
    let body = read_limited(req.into_body(), limit).await?;
    let put = st
        .registry
        .manifest_put(repo, r, content_type.as_deref(), body)
        .await?;
    let tag = match r {
        Reference::Tag(t) => Some(t),
        Reference::Digest(_) => None,
    };
    let (d, mt, size) = (&put.digest, put.media_type.as_str(), put.size);
    let ev = Event::manifest(Action::ManifestPush, o, repo, d, tag, mt, size);
    st.events.record(ev).await;
    if tag.is_some() && put.previous.as_ref() != Some(d) {
        let mut ev = Event::manifest(Action::TagMove, o, repo, d, tag, mt, size);
        ev.previous_digest = put.previous.as_ref().map(|p| p.as_str().to_owned());
        st.events.record(ev).await;
    }
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::CREATED;
    let h = res.headers_mut();
    h.insert(
        header::LOCATION,
        headers::manifest_location(repo, &put.digest),
    );
    h.insert(DOCKER_CONTENT_DIGEST, headers::value(put.digest.as_str()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Some(subject) = &put.subject {
        h.insert(OCI_SUBJECT, headers::value(subject.as_str()));
    }
    Ok(res)
}

/// `DELETE`: 202.
pub(super) async fn delete(
    st: &AppState,
    repo: &RepoName,
    r: &Reference,
    o: &Arc<Origin>,
) -> ApiResult {
    // What is deleted, for the event; read first, so a concurrent change can make it stale.
    let before = match st.events.active() {
        true => st.registry.manifest_get(repo, r).await.ok(),
        false => None,
    };
    st.registry.manifest_delete(repo, r).await?;
    let mut ev = match r {
        Reference::Tag(t) => {
            let mut ev = Event::new(Action::TagDelete, o).repo(repo);
            ev.tag = Some(t.as_str().to_owned());
            ev
        }
        Reference::Digest(d) => Event::new(Action::ManifestDelete, o).repo(repo).digest(d),
    };
    if let Some(m) = before {
        ev.digest = Some(m.digest.as_str().to_owned());
        ev.media_type = Some(m.media_type);
        ev.size = Some(m.bytes.len() as u64);
    }
    st.events.record(ev).await;
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(res)
}

/// Reads a request body of at most `limit` bytes; stops reading as soon as it is over.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "manifest body read failed");
            ApiError::new(ErrorCode::ManifestInvalid).with_message("request body could not be read")
        })?;
        if buf.len() + chunk.len() > limit {
            drain(stream).await;
            return Err(manifest_too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Most bytes of a refused body read and discarded before answering.
const DRAIN_CAP: u64 = 64 << 20;
/// Longest time spent discarding a refused body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Discards the rest of a refused request body (bounded in bytes and time). A client that is still
/// sending when the server answers and closes gets a broken pipe and never reads the answer
/// (RFC 9112 §9.6); past the bounds the connection is closed anyway.
async fn drain(mut stream: axum::body::BodyDataStream) {
    let discard = async {
        let mut n = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            n += chunk.len() as u64;
            if n > DRAIN_CAP {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_limited_edges() {
        let ok = read_limited(Body::from(vec![1u8; 10]), 10).await.unwrap();
        assert_eq!(ok.len(), 10);
        let over = read_limited(Body::from(vec![1u8; 11]), 10)
            .await
            .unwrap_err();
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(over.code(), ErrorCode::SizeInvalid);
        assert!(read_limited(Body::empty(), 0).await.unwrap().is_empty());
    }
}
