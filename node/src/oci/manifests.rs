//! `GET`/`HEAD /v2/<name>/manifests/<reference>`: from the gateway while it answers, from signed
//! tag records and kept manifests while it does not (spec §6.4).
//!
//! Gateway reachable: the request is proxied as before. For a tag, the tag's signed record
//! (`GET /flotilla/v1/tags/<name>/<tag>`) is fetched at the same time and kept if it verifies
//! and is newer than the one held; a `200` manifest body (at most 4 MiB; larger ones stream
//! through unkept) is read whole, kept if it hashes to its digest, and answered. So every tag a
//! client resolved here, and every manifest it read (the children of an index included), can
//! be answered later without the gateway.
//!
//! Gateway unreachable (no answer at all, or `502`/`503`/`504` from a proxy in front of it; a
//! `404` is an answer and passes through): a tag resolves to the newest record this node or
//! its peers hold; a record saying "deleted" is `404 MANIFEST_UNKNOWN`. The manifest comes from
//! this node's store, else from a peer. Records verify against the gateway's peer id (known
//! from `/flotilla/v1/info` or remembered from earlier), manifests against their digest. When
//! neither is to be had: `503 UNAVAILABLE`. The answer is what the gateway would send
//! (`Content-Type`, `Docker-Content-Digest`, `ETag`, `Accept` and `If-None-Match` handled as
//! it does). Repository visibility is not checked in this mode: like blobs, kept manifests
//! are content-addressed.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::BytesMut;
use flotilla_protocol::tagrecord::{MAX_SIGNED_LEN, SignedTagRecord, TagTarget};
use flotilla_protocol::{Digest, Reference, RepoName, Tag};
use libp2p::PeerId;

use super::proxy::{self, COPIED};
use super::{CONTENT_DIGEST, OciError, OciState, unavailable};
use crate::meta::Meta;
use crate::tags::{CachedManifest, MAX_MANIFEST_BYTES};

/// Manifest media types a client's `Accept` may choose among.
const KNOWN_MANIFEST_TYPES: [&str; 4] = flotilla_protocol::manifest::media_type::ACCEPTED;

type Answer = Result<Response, OciError>;

/// Answers a manifest request (see the module docs).
pub(super) async fn manifest(
    st: &OciState,
    req: &Parts,
    repo: &RepoName,
    reference: &Reference,
) -> Answer {
    let Some(meta) = &st.meta else {
        return proxy::forward(st, req).await;
    };
    let head = req.method == Method::HEAD;
    let record = async {
        match reference {
            Reference::Tag(t) => gateway_record(st, repo, t).await,
            Reference::Digest(_) => None,
        }
    };
    let (upstream, record) = tokio::join!(proxy::send(st, req), record);
    let cause = match upstream {
        Ok(up) if !is_proxy_failure(up.status()) => {
            if let Some(signed) = record {
                learn_record(st, meta, &signed).await;
            }
            if !head && up.status() == StatusCode::OK {
                return Ok(keep_and_answer(meta, up, reference).await);
            }
            return Ok(proxy::respond(up, head));
        }
        Ok(up) => format!("the gateway answered {}", up.status()),
        Err(e) => e.0,
    };
    tracing::info!(%repo, %reference, %cause, "gateway unreachable; answering from tag records");
    partitioned(st, meta, req, repo, reference, &cause).await
}

/// `502`/`503`/`504`: what a proxy or load balancer says for a gateway it cannot reach.
fn is_proxy_failure(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The tag's signed record from the gateway, if it gives one (not verified yet).
async fn gateway_record(st: &OciState, repo: &RepoName, tag: &Tag) -> Option<SignedTagRecord> {
    let url = format!("{}/flotilla/v1/tags/{repo}/{tag}", st.gateway_url);
    let rb = st
        .member
        .sign(st.http.get(&url), &reqwest::Method::GET, &url);
    let mut res = tokio::time::timeout(proxy::HEADERS_TIMEOUT, rb.send())
        .await
        .ok()?
        .ok()?;
    if res.status() != StatusCode::OK {
        tracing::debug!(%url, status = %res.status(), "no tag record from the gateway");
        return None;
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        if body.len() + chunk.len() > MAX_SIGNED_LEN {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    SignedTagRecord::decode(&body)
        .inspect_err(
            |e| tracing::warn!(%url, error = %e, "the gateway's tag record does not decode"),
        )
        .ok()
}

/// The gateway's peer id: the fetcher's (configured or read from the gateway), else the one
/// records were last verified against.
async fn gateway_peer(st: &OciState, meta: &Meta) -> Option<PeerId> {
    match st.fetcher.gateway_peer().await {
        Ok(p) => Some(p),
        Err(_) => meta.store().gateway_peer(),
    }
}

async fn learn_record(st: &OciState, meta: &Meta, signed: &SignedTagRecord) {
    let Some(gateway) = gateway_peer(st, meta).await else {
        return;
    };
    if let Err(e) = meta.learn_record(signed, &gateway) {
        tracing::warn!(error = %e, "the gateway's tag record was not kept");
    }
}

/// Reads a `200` manifest answer, keeps the manifest if it is small enough and hashes to its
/// digest, and answers it.
async fn keep_and_answer(
    meta: &Meta,
    mut up: reqwest::Response,
    reference: &Reference,
) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = up.status();
    for name in COPIED {
        for v in up.headers().get_all(&name) {
            res.headers_mut().append(name.clone(), v.clone());
        }
    }
    let mut body = BytesMut::new();
    loop {
        match up.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_MANIFEST_BYTES {
                    // Too large to keep: the rest streams through.
                    let first = futures::stream::once(async move { Ok(body.freeze()) });
                    let rest = up.bytes_stream();
                    *res.body_mut() = Body::from_stream(futures::StreamExt::chain(first, rest));
                    return res;
                }
            }
            Ok(None) => break,
            Err(e) => {
                // The body broke off: hand the client a broken body too, never a short manifest.
                let part = body.freeze();
                let err = std::io::Error::other(e);
                *res.body_mut() = Body::from_stream(futures::stream::iter([Ok(part), Err(err)]));
                return res;
            }
        }
    }
    let bytes = body.freeze();
    let digest = match reference {
        Reference::Digest(d) => Some(d.clone()),
        Reference::Tag(_) => res
            .headers()
            .get(&CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok()),
    };
    let media_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match digest {
        Some(d) if !media_type.is_empty() => {
            if let Err(e) = meta.learn_manifest(&d, &media_type, bytes.clone()).await {
                tracing::warn!(digest = %d, error = %e, "manifest not kept");
            }
        }
        _ => tracing::debug!("manifest answer without digest or media type; not kept"),
    }
    *res.body_mut() = Body::from(bytes);
    res
}

/// Answers from tag records and kept manifests (the gateway gave no answer).
async fn partitioned(
    st: &OciState,
    meta: &Meta,
    req: &Parts,
    repo: &RepoName,
    reference: &Reference,
    cause: &str,
) -> Answer {
    let gateway = gateway_peer(st, meta).await;
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(tag) => {
            let gateway = gateway.as_ref().ok_or_else(|| {
                unavailable("the gateway cannot be reached and its identity is not known yet")
                    .detail(cause.to_owned())
            })?;
            let signed = meta
                .record_from_peers(repo, tag, gateway)
                .await
                .ok_or_else(|| {
                    unavailable("the gateway cannot be reached and no peer knows this tag")
                        .detail(cause.to_owned())
                })?;
            match signed.record.target {
                TagTarget::Manifest(d) => d,
                TagTarget::Deleted => {
                    return Err(OciError::new(
                        StatusCode::NOT_FOUND,
                        "MANIFEST_UNKNOWN",
                        "manifest unknown",
                    )
                    .detail(format!("{repo}:{tag} was deleted")));
                }
            }
        }
    };
    let m = meta
        .manifest_from_peers(&digest, gateway.as_ref())
        .await
        .ok_or_else(|| {
            unavailable("the gateway cannot be reached and no peer holds this manifest")
                .detail(format!("{digest}: {cause}"))
        })?;
    answer_kept(&digest, m, &req.headers, req.method == Method::HEAD)
}

/// A kept manifest, answered as the gateway answers it.
fn answer_kept(d: &Digest, m: CachedManifest, req: &HeaderMap, head: bool) -> Answer {
    if !acceptable(req, &m.media_type) {
        return Err(OciError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "the manifest's media type is not in the request's Accept list",
        )
        .detail(m.media_type));
    }
    let etag = value(&format!("\"{d}\""));
    let mut res = if if_none_match(req, d) {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let len = m.bytes.len();
        let mut res = Response::new(if head {
            Body::empty()
        } else {
            Body::from(m.bytes)
        });
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, value(&m.media_type));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        res
    };
    let h = res.headers_mut();
    h.insert(CONTENT_DIGEST, value(d.as_str()));
    h.insert(header::ETAG, etag);
    Ok(res)
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The gateway's rule: `Accept` matters only when every type it lists (with `q` > 0) is a
/// known manifest type and none is the stored one.
fn acceptable(headers: &HeaderMap, stored: &str) -> bool {
    let mut listed_any = false;
    for entry in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = entry.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if essence.is_empty() {
            continue;
        }
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        if essence == stored || !KNOWN_MANIFEST_TYPES.contains(&essence.as_str()) {
            return true;
        }
        listed_any = true;
    }
    !listed_any
}

/// Whether `If-None-Match` names the manifest's ETag (its quoted digest) or `*`.
fn if_none_match(headers: &HeaderMap, d: &Digest) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| {
            let t = t.strip_prefix("W/").unwrap_or(t);
            t == "*" || t.trim_matches('"') == d.as_str()
        })
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn accept_follows_the_gateway() {
        let oci = "application/vnd.oci.image.manifest.v1+json";
        let docker = "application/vnd.docker.distribution.manifest.v2+json";
        let mut h = HeaderMap::new();
        assert!(acceptable(&h, oci));
        h.insert(header::ACCEPT, HeaderValue::from_static(docker));
        assert!(!acceptable(&h, oci));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(acceptable(&h, oci));
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/vnd.oci.image.manifest.v1+json;q=0, application/vnd.docker.distribution.manifest.v2+json",
            ),
        );
        assert!(!acceptable(&h, oci));
        assert!(acceptable(&h, docker));
    }
}
