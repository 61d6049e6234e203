//! In-process tests of the API: the router on a real `Registry` in a temporary directory, driven
//! with `tower::ServiceExt::oneshot`. They pin the status codes and headers this layer decides;
//! exhaustive black-box tests against the binary live in the workspace's `tests/`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use flotilla_protocol::Digest;
use flotilla_protocol::manifest::media_type;
use tower::ServiceExt;

use super::headers::{DOCKER_API_VERSION, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};
use crate::config::Config;
use crate::registry::Registry;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: impl header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["errors"][0]["code"].as_str().unwrap().to_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

struct Api {
    app: Router,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn new() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            max_manifest_bytes: 4096,
            max_list_entries: 50,
            ..Config::default()
        };
        let registry = Registry::open(config.storage()).await.unwrap();
        Api {
            app: super::router(registry, &config),
            _dir: dir,
        }
    }

    async fn call(
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

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, &[], Vec::new()).await
    }

    /// Monolithic push; returns the digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
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
    async fn push_image(
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

#[tokio::test]
async fn chunked_upload_session() {
    let api = Api::new().await;
    let r = api
        .call(Method::POST, "/v2/a/blobs/uploads/", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header(header::LOCATION).to_owned();
    let id = r.header(DOCKER_UPLOAD_UUID).to_owned();
    assert_eq!(loc, format!("/v2/a/blobs/uploads/{id}"));
    assert_eq!(r.header(header::RANGE), "0-0");
    assert_eq!(r.header(header::CONTENT_LENGTH), "0");

    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[("content-range", "0-4")],
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header(header::RANGE), "0-4");
    assert_eq!(r.header(header::LOCATION), loc);

    // Out of order: 416 with the state to resume from.
    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[("content-range", "3-7")],
            b"xxxxx".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.error_code(), "BLOB_UPLOAD_INVALID");
    assert_eq!(r.header(header::RANGE), "0-4");
    assert_eq!(r.header(header::LOCATION), loc);
    // Backwards and malformed ranges, and a length that disagrees with the range.
    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[("content-range", "9-5")],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[("content-range", "five-six")],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID")
    );
    let r = api
        .call(
            Method::PATCH,
            &loc,
            &[("content-range", "5-9")],
            b"xx".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "SIZE_INVALID")
    );

    let r = api.get(&loc).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header(header::RANGE), "0-4");
    assert_eq!(r.header(header::LOCATION), loc);

    // A streamed chunk (no Content-Range).
    let r = api.call(Method::PATCH, &loc, &[], b" world".to_vec()).await;
    assert_eq!(r.header(header::RANGE), "0-10");

    let r = api.call(Method::PUT, &loc, &[], Vec::new()).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    let r = api
        .call(
            Method::PUT,
            &format!("{loc}?digest=sha256:nope"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );

    let d = Digest::sha256_of(b"hello world!");
    let r = api
        .call(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[("content-range", "11-11")],
            b"!".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header(header::LOCATION), format!("/v2/a/blobs/{d}"));
    assert_eq!(r.header(DOCKER_CONTENT_DIGEST), d.as_str());
    assert_eq!(
        &api.get(&format!("/v2/a/blobs/{d}")).await.body[..],
        b"hello world!"
    );

    // The session is gone.
    let r = api.get(&loc).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
    );

    // Ids that cannot be sessions never reach storage.
    for bad in ["..", "a.b", "%2e%2e"] {
        let r = api.get(&format!("/v2/a/blobs/uploads/{bad}")).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            "{bad}"
        );
    }

    // Cancel.
    let r = api
        .call(Method::POST, "/v2/a/blobs/uploads", &[], Vec::new())
        .await;
    let loc = r.header(header::LOCATION).to_owned();
    assert_eq!(
        api.call(Method::DELETE, &loc, &[], Vec::new()).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(Method::DELETE, &loc, &[], Vec::new()).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn monolithic_and_mount() {
    let api = Api::new().await;
    let d = api.push_blob("src/repo", b"shared layer").await;
    // Wrong digest for the body.
    let wrong = Digest::sha256_of(b"other");
    let r = api
        .call(
            Method::POST,
            &format!("/v2/a/blobs/uploads/?digest={wrong}"),
            &[],
            b"shared layer".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );

    let r = api
        .call(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header(header::LOCATION), format!("/v2/dst/blobs/{d}"));
    assert_eq!(r.header(DOCKER_CONTENT_DIGEST), d.as_str());
    assert_eq!(
        &api.get(&format!("/v2/dst/blobs/{d}")).await.body[..],
        b"shared layer"
    );

    // Not mountable: an upload starts instead.
    let r = api
        .call(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={wrong}&from=src/repo"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(
        r.header(header::LOCATION)
            .starts_with("/v2/dst/blobs/uploads/")
    );

    let r = api
        .call(
            Method::POST,
            "/v2/dst/blobs/uploads/?mount=sha256:zz&from=src/repo",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.error_code(), "DIGEST_INVALID");
    let r = api
        .call(
            Method::POST,
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=Bad"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.error_code(), "NAME_INVALID");
}

#[tokio::test]
async fn manifests_negotiation_and_limits() {
    let api = Api::new().await;
    let (d, body) = api.push_image("app", "v1", None).await;

    let r = api.get("/v2/app/manifests/v1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], &body[..]);
    assert_eq!(r.header(header::CONTENT_TYPE), media_type::OCI_MANIFEST);
    assert_eq!(r.header(DOCKER_CONTENT_DIGEST), d.as_str());
    assert_eq!(r.header(header::ETAG), format!("\"{d}\""));

    let r = api
        .call(
            Method::HEAD,
            &format!("/v2/app/manifests/{d}"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    assert_eq!(r.header(header::CONTENT_LENGTH), body.len().to_string());
    assert_eq!(r.header(header::CONTENT_TYPE), media_type::OCI_MANIFEST);

    let docker_only = [("accept", media_type::DOCKER_MANIFEST)];
    let r = api
        .call(
            Method::GET,
            "/v2/app/manifests/v1",
            &docker_only,
            Vec::new(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let both = [
        ("accept", media_type::DOCKER_MANIFEST),
        ("accept", media_type::OCI_MANIFEST),
    ];
    assert_eq!(
        api.call(Method::GET, "/v2/app/manifests/v1", &both, Vec::new())
            .await
            .status,
        StatusCode::OK
    );

    let r = api.get("/v2/app/manifests/v2").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );

    // Over the limit, by declared length and by actual bytes.
    let big = vec![b' '; 5000];
    let r = api
        .call(Method::PUT, "/v2/app/manifests/big", &[], big)
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID")
    );

    let r = api
        .call(
            Method::PUT,
            "/v2/app/manifests/bad",
            &[("content-type", media_type::OCI_MANIFEST)],
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );

    let r = api
        .call(Method::DELETE, "/v2/app/manifests/v1", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        api.get("/v2/app/manifests/v1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/v2/app/manifests/{d}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("/v2/app/manifests/{d}"),
            &[],
            Vec::new()
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        api.get(&format!("/v2/app/manifests/{d}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn referrers_tags_and_catalog() {
    let api = Api::new().await;
    let (subject, body) = api.push_image("app", "v1", None).await;
    let (sig, _) = api
        .push_image("app", "sig", Some((&subject, body.len() as u64)))
        .await;

    let r = api.get(&format!("/v2/app/referrers/{subject}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(header::CONTENT_TYPE), media_type::OCI_INDEX);
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], media_type::OCI_INDEX);
    assert_eq!(v["manifests"][0]["digest"], sig.as_str());
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.config+json"
    );

    let r = api
        .get(&format!(
            "/v2/app/referrers/{subject}?artifactType=application/vnd.none"
        ))
        .await;
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
    let r = api.get(&format!("/v2/nowhere/referrers/{subject}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["manifests"], serde_json::json!([]));

    // The subject push answered OCI-Subject.
    let (_, body2) = api.push_image("app", "v2", None).await;
    let d2 = Digest::sha256_of(&body2);
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [],
        "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": d2, "size": body2.len()},
    });
    let r = api
        .call(
            Method::PUT,
            "/v2/app/manifests/idx",
            &[("content-type", media_type::OCI_INDEX)],
            serde_json::to_vec(&m).unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header("oci-subject"), d2.as_str());

    let r = api.get("/v2/app/tags/list").await;
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "app", "tags": ["idx", "sig", "v1", "v2"]})
    );
    assert_eq!(r.header(header::LINK), "");
    let r = api.get("/v2/app/tags/list?n=2").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["idx", "sig"]));
    assert_eq!(
        r.header(header::LINK),
        "</v2/app/tags/list?n=2&last=sig>; rel=\"next\""
    );
    let r = api.get("/v2/app/tags/list?n=2&last=sig").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["v1", "v2"]));
    assert_eq!(r.header(header::LINK), "");
    let r = api.get("/v2/app/tags/list?n=0").await;
    assert_eq!(r.json()["tags"], serde_json::json!([]));
    assert_eq!(r.header(header::LINK), "");
    let r = api.get("/v2/app/tags/list?n=-1").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = api.get("/v2/never/pushed/tags/list").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );

    api.push_blob("b/one", b"1").await;
    let r = api.get("/v2/_catalog?n=1").await;
    assert_eq!(r.json(), serde_json::json!({"repositories": ["app"]}));
    assert_eq!(
        r.header(header::LINK),
        "</v2/_catalog?n=1&last=app>; rel=\"next\""
    );
    let r = api.get("/v2/_catalog?last=app").await;
    assert_eq!(r.json(), serde_json::json!({"repositories": ["b/one"]}));
}
