//! Manifests (negotiation, limits, delete), referrers, tags and catalog pagination.

use axum::http::{Method, StatusCode, header};
use flotilla_protocol::Digest;
use flotilla_protocol::manifest::media_type;

use super::Api;
use crate::api::headers::DOCKER_CONTENT_DIGEST;

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
