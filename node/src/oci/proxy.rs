//! Manifests, tag lists, referrers and the catalog, proxied to the gateway.
//!
//! The request goes out with the same path and query (minus containerd's `ns` parameter, which
//! names the upstream registry a mirror stands in for and means nothing to the gateway), its
//! `Accept` and `If-None-Match` headers, and the same method. The answer comes back with its
//! status, the headers a registry client reads, and its body streamed through (never held
//! here). Gateway errors pass through unchanged, OCI error bodies included. A gateway that gives
//! no answer (connection refused, timeout, no response headers within [`HEADERS_TIMEOUT`]) is
//! `503 UNAVAILABLE`; manifests then take the partition path of `oci/manifests.rs`.

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::Response;

use super::{CONTENT_DIGEST, FILTERS_APPLIED, OciError, OciState};

/// Request headers sent on to the gateway.
const FORWARDED: [HeaderName; 2] = [header::ACCEPT, header::IF_NONE_MATCH];
/// Response headers copied back.
pub(super) const COPIED: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::LINK,
    header::ETAG,
    CONTENT_DIGEST,
    FILTERS_APPLIED,
];

/// The query string without `ns=...` pairs (`None` if nothing is left).
fn forwarded_query(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != "ns")
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Longest wait for the gateway's response headers (bodies then stream without a limit).
pub(super) const HEADERS_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the gateway gave no answer.
#[derive(Debug)]
pub(super) struct NoAnswer(pub(super) String);

impl From<NoAnswer> for OciError {
    fn from(e: NoAnswer) -> Self {
        super::unavailable("the gateway cannot be reached").detail(e.0)
    }
}

/// Sends `req` (a `GET` or `HEAD`) on to the gateway and streams its answer back.
pub(super) async fn forward(st: &OciState, req: &Parts) -> Result<Response, OciError> {
    let upstream = send(st, req).await?;
    Ok(respond(upstream, req.method == Method::HEAD))
}

/// Sends `req` on to the gateway; an error means it gave no answer.
pub(super) async fn send(st: &OciState, req: &Parts) -> Result<reqwest::Response, NoAnswer> {
    let head = req.method == Method::HEAD;
    let mut url = format!("{}{}", st.gateway_url, req.uri.path());
    if let Some(q) = forwarded_query(req.uri.query()) {
        url.push('?');
        url.push_str(&q);
    }
    let method = if head {
        reqwest::Method::HEAD
    } else {
        reqwest::Method::GET
    };
    let mut out = st
        .member
        .sign(st.http.request(method.clone(), &url), &method, &url);
    for name in FORWARDED {
        for v in req.headers.get_all(&name) {
            out = out.header(name.clone(), v.clone());
        }
    }
    match tokio::time::timeout(HEADERS_TIMEOUT, out.send()).await {
        Ok(Ok(res)) => Ok(res),
        Ok(Err(e)) => {
            tracing::warn!(url = %url, error = %e, "gateway unreachable");
            Err(NoAnswer(e.to_string()))
        }
        Err(_) => {
            tracing::warn!(url = %url, "gateway sent no answer in time");
            Err(NoAnswer(format!("no answer within {HEADERS_TIMEOUT:?}")))
        }
    }
}

/// The gateway's answer, streamed back with its status and registry headers.
pub(super) fn respond(upstream: reqwest::Response, head: bool) -> Response {
    let status = upstream.status();
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    for name in COPIED {
        for v in upstream.headers().get_all(&name) {
            res.headers_mut().append(name.clone(), v.clone());
        }
    }
    if !head && status != StatusCode::NOT_MODIFIED {
        *res.body_mut() = Body::from_stream(upstream.bytes_stream());
    }
    res
}

#[cfg(test)]
mod query_tests {
    use super::forwarded_query;

    #[test]
    fn ns_is_dropped() {
        assert_eq!(forwarded_query(None), None);
        assert_eq!(forwarded_query(Some("ns=docker.io")), None);
        assert_eq!(
            forwarded_query(Some("n=10&ns=docker.io&last=b")),
            Some("n=10&last=b".to_owned())
        );
        assert_eq!(
            forwarded_query(Some("artifactType=a%2Fb")),
            Some("artifactType=a%2Fb".to_owned())
        );
        assert_eq!(forwarded_query(Some("nsx=1")), Some("nsx=1".to_owned()));
    }
}
