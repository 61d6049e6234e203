//! In-process tests of the API: the router on a real `Registry` in a temporary directory, driven
//! with `tower::ServiceExt::oneshot`. They pin the status codes and headers this layer decides;
//! exhaustive black-box tests against the binary live in the workspace's `tests/`.
//!
//! This file holds the harness and the routing and blob-read tests; `tests/uploads.rs` covers
//! upload sessions and mounts, `tests/manifests.rs` manifests, listings and referrers.

mod manifests;
mod uploads;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use flotilla_protocol::Digest;
use flotilla_protocol::manifest::media_type;
use tower::ServiceExt;

use super::headers::{DOCKER_API_VERSION, DOCKER_CONTENT_DIGEST};
use crate::config::Config;
use crate::registry::Registry;

pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Reply {
    pub(super) fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub(super) fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["errors"][0]["code"].as_str().unwrap().to_owned()
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub(super) struct Api {
    app: Router,
    dir: tempfile::TempDir,
}

impl Api {
    pub(super) async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            max_manifest_bytes: 4096,
            max_list_entries: 50,
            ..Config::default()
        };
        let registry = Registry::open(config.storage()).await.unwrap();
        Api {
            app: super::router(registry, &config, None),
            dir,
        }
    }

    /// The gateway's data directory.
    pub(super) fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub(super) async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header(header::CONTENT_LENGTH, body.len());
        }
        let res = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            headers.get(DOCKER_API_VERSION).unwrap(),
            "registry/2.0",
            "{uri}: API version header missing"
        );
        Reply {
            status,
            headers,
            body,
        }
    }

    pub(super) async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, &[], Vec::new()).await
    }

    /// Monolithic push; returns the digest.
    pub(super) async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let r = self
            .call(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[],
                data.to_vec(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        d
    }

    /// Pushes a config + one layer and an OCI manifest (optionally with a subject) under `reference`.
    pub(super) async fn push_image(
        &self,
        repo: &str,
        reference: &str,
        subject: Option<(&Digest, u64)>,
    ) -> (Digest, Vec<u8>) {
        let config = b"{}".to_vec();
        let layer = format!("layer of {repo}:{reference}").into_bytes();
        let cd = self.push_blob(repo, &config).await;
        let ld = self.push_blob(repo, &layer).await;
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.example.config+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
        });
        if let Some((sd, size)) = subject {
            m["subject"] = serde_json::json!({"mediaType": media_type::OCI_MANIFEST, "digest": sd, "size": size});
        }
        let body = serde_json::to_vec(&m).unwrap();
        let r = self
            .call(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("content-type", media_type::OCI_MANIFEST)],
                body.clone(),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let d = Digest::sha256_of(&body);
        assert_eq!(
            r.header(header::LOCATION),
            format!("/v2/{repo}/manifests/{d}")
        );
        assert_eq!(r.header(DOCKER_CONTENT_DIGEST), d.as_str());
        (d, body)
    }
}

#[tokio::test]
async fn base_endpoint() {
    let api = Api::new().await;
    let r = api.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({}));
    assert_eq!(r.header(header::CONTENT_TYPE), "application/json");
    let r = api.call(Method::HEAD, "/v2/", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.header(header::CONTENT_LENGTH), "2");
    assert_eq!(api.get("/v2").await.status, StatusCode::OK);
}

#[tokio::test]
async fn routing_errors() {
    let api = Api::new().await;
    let d = Digest::sha256_of(b"x");
    let cases: [(Method, String, StatusCode, &str); 9] = [
        (
            Method::GET,
            "/v2/Bad/manifests/latest".into(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/manifests/-bad".into(),
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/manifests/sha256:baddigeststring".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/blobs/sha256:00".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/a/referrers/md5:00".into(),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/no/such/thing".into(),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/nothing-here".into(),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
        (
            Method::POST,
            format!("/v2/a/blobs/{d}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/v2/a/%zz/x".into(),
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
        ),
    ];
    for (m, uri, status, code) in cases {
        let r = api.call(m.clone(), &uri, &[], Vec::new()).await;
        assert_eq!(r.status, status, "{m} {uri}");
        assert_eq!(r.error_code(), code, "{m} {uri}");
        assert_eq!(r.header(header::CONTENT_TYPE), "application/json");
    }
    let r = api
        .call(Method::PATCH, "/v2/a/manifests/x", &[], Vec::new())
        .await;
    assert_eq!(r.header(header::ALLOW), "GET, HEAD, PUT, DELETE");
    // An escaped ':' in a digest is decoded.
    let r = api
        .get(&format!("/v2/a/blobs/{}", d.as_str().replace(':', "%3A")))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn blob_reads_and_ranges() {
    let api = Api::new().await;
    let data: Vec<u8> = (0..100u8).collect();
    let d = api.push_blob("team/app", &data).await;
    let uri = format!("/v2/team/app/blobs/{d}");

    let r = api.call(Method::HEAD, &uri, &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.header(header::CONTENT_LENGTH), "100");
    assert_eq!(r.header(DOCKER_CONTENT_DIGEST), d.as_str());
    assert_eq!(r.header(header::ACCEPT_RANGES), "bytes");

    let r = api.get(&uri).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], &data[..]);
    assert_eq!(r.header(header::CONTENT_TYPE), "application/octet-stream");
    assert_eq!(r.header(header::ETAG), format!("\"{d}\""));

    let range = |v: &'static str| [("range", v)];
    let r = api
        .call(Method::GET, &uri, &range("bytes=10-19"), Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.body[..], &data[10..20]);
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes 10-19/100");
    assert_eq!(r.header(header::CONTENT_LENGTH), "10");
    let r = api
        .call(Method::GET, &uri, &range("bytes=-5"), Vec::new())
        .await;
    assert_eq!(&r.body[..], &data[95..]);
    let r = api
        .call(Method::GET, &uri, &range("bytes=90-500"), Vec::new())
        .await;
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes 90-99/100");
    for bad in ["bytes=100-", "bytes=50-10", "bytes=x"] {
        let r = api.call(Method::GET, &uri, &range(bad), Vec::new()).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(r.header(header::CONTENT_RANGE), "bytes */100");
    }
    let r = api
        .call(Method::GET, &uri, &range("bytes=0-1,5-6"), Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 100);

    let etag = format!("\"{d}\"");
    let r = api
        .call(Method::GET, &uri, &[("if-none-match", &etag)], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // Not linked to another repository.
    let r = api.get(&format!("/v2/other/blobs/{d}")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );

    let r = api.call(Method::DELETE, &uri, &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        api.call(Method::HEAD, &uri, &[], Vec::new()).await.status,
        StatusCode::NOT_FOUND
    );
}

/// The value of the sample `line_start` (`name{labels}`) on a metrics page.
fn sample(page: &str, line_start: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn health_probes_storage_for_real() {
    let api = Api::new().await;
    let r = api.get("/flotilla/v1/health").await;
    assert_eq!(r.status, StatusCode::OK);
    let h = r.json();
    assert_eq!(h["ready"], true, "{h}");
    assert_eq!(h["reasons"], serde_json::json!([]));
    assert_eq!(h["warnings"], serde_json::json!([]));
    assert!(h["storage"]["write_error"].is_null(), "{h}");
    assert!(h["storage"]["available_bytes"].as_u64().unwrap() > 0, "{h}");
    assert_eq!(h["connected_peers"], 0);
    let tmp = api.data_dir().join("tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the probe file is removed"
    );

    // Writes fail (a file where the temp directory was; chmod would not stop root): pulls
    // still work, so the gateway stays ready and warns.
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"in the way").unwrap();
    let r = api.get("/flotilla/v1/health").await;
    assert_eq!(r.status, StatusCode::OK);
    let h = r.json();
    assert_eq!(h["ready"], true);
    let warning = h["warnings"][0].as_str().unwrap();
    assert!(warning.contains("pushes fail"), "{h}");
    assert_eq!(h["storage"]["disk_full"], false);

    // The blob files are gone: not ready, and why.
    let blobs = api.data_dir().join("blobs");
    std::fs::rename(&blobs, api.data_dir().join("blobs.moved")).unwrap();
    let r = api.get("/flotilla/v1/health").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let h = r.json();
    assert_eq!(h["ready"], false);
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .contains("the blob files cannot be read"),
        "{h}"
    );
    let r = api
        .call(Method::HEAD, "/flotilla/v1/health", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.is_empty());
    let r = api
        .call(Method::POST, "/flotilla/v1/health", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_collections() {
    let api = Api::new().await;
    let data = vec![5u8; 3000];
    let d = api.push_blob("team/app", &data).await;
    let uri = format!("/v2/team/app/blobs/{d}");
    assert_eq!(api.get(&uri).await.status, StatusCode::OK);
    assert_eq!(api.get(&uri).await.status, StatusCode::OK);
    assert_eq!(
        api.get("/v2/team/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000")
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let r = api.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header(header::CONTENT_TYPE),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let page = std::str::from_utf8(&r.body).unwrap();
    let get = |labels: &str| sample(page, &format!("flotilla_gateway_{labels}"));
    assert_eq!(
        get("http_requests_total{method=\"GET\",code=\"200\"}"),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        get("http_requests_total{method=\"GET\",code=\"404\"}"),
        Some(1.0)
    );
    assert_eq!(
        get("http_response_bytes_total{method=\"GET\",code=\"200\"}"),
        Some(6000.0)
    );
    assert_eq!(get("blob_bytes_sent_total{via=\"http\"}"), Some(6000.0));
    assert_eq!(get("blob_bytes_sent_total{via=\"swarm\"}"), Some(0.0));
    assert_eq!(get("gc_runs_total"), Some(0.0));
    assert_eq!(get("connected_peers"), Some(0.0));
    assert!(get("available_bytes").unwrap() > 0.0, "{page}");
    assert!(page.contains("# TYPE flotilla_gateway_origin_sending gauge\n"));
    // Three GETs so far (the page's own is counted once it is sent), in cumulative buckets.
    let hist = "http_request_duration_seconds";
    assert_eq!(
        get(&format!("{hist}_count{{method=\"GET\"}}")),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        get(&format!("{hist}_bucket{{method=\"GET\",le=\"+Inf\"}}")),
        Some(3.0)
    );
    let buckets: Vec<f64> = page
        .lines()
        .filter(|l| {
            l.starts_with("flotilla_gateway_http_request_duration_seconds_bucket{method=\"GET\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    assert_eq!(buckets.len(), 16, "{page}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    let r = api.call(Method::HEAD, "/metrics", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    let r = api.call(Method::POST, "/metrics", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}
