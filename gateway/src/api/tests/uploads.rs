//! Upload sessions (POST/PATCH/PUT/GET/DELETE), monolithic uploads and cross-repository mounts.

use axum::http::{Method, StatusCode, header};
use flotilla_protocol::Digest;

use super::Api;
use crate::api::headers::{DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};

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
