//! Blob uploads (spec "Pushing blobs"): single POST, POST then PUT, chunked PATCH with and without
//! `Content-Range`, upload status and resume (also across a gateway restart), cancel, sessions
//! under the wrong repository, digest checks, empty blobs, and cross-repository mounts.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::Method;

use crate::support::Gateway;

use super::util::{Api, EMPTY_SHA256, blob, raw_exchange, sha256, sha512};

/// Splits `data` at the given offsets.
fn split<'a>(data: &'a [u8], at: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &a in at.iter().chain(std::iter::once(&data.len())) {
        out.push(&data[prev..a]);
        prev = a;
    }
    out
}

/// `GET location`: asserts the spec's `204` with `Location` (and `Docker-Upload-UUID`), returns
/// the `Range` header, if any, and the location to continue with.
async fn status(api: &Api, location: &str) -> (Option<String>, String) {
    let r = api.get(location).await;
    r.expect(204);
    r.must_header("docker-upload-uuid");
    assert!(r.body.is_empty(), "{}: a 204 with a body", r.what);
    (r.header("range").map(str::to_owned), r.location(api))
}

/// A `POST` with `mount=` (and `from=` if given).
async fn mount(api: &Api, repo: &str, digest: &str, from: Option<&str>) -> super::util::Resp {
    let mut q = vec![("mount", digest)];
    if let Some(f) = from {
        q.push(("from", f));
    }
    let rb = api
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .header("Content-Length", "0")
        .query(&q);
    api.send(rb).await
}

#[tokio::test]
async fn single_post_with_digest_is_201() {
    let api = Api::start();
    let data = blob(10, 200_000);
    let d = sha256(&data);
    let r = api.post_blob("repo", &d, &data).await;
    // "Successful completion of the request MUST return a 201 Created and MUST include
    // Location: <blob-location>", a pullable blob URL.
    r.expect(201);
    assert_eq!(r.digest(), d);
    let g = api.get(&r.location(&api)).await;
    g.expect(200);
    assert!(
        g.body == data,
        "Location of a single POST does not serve the blob"
    );
    // Pushing it again is harmless.
    api.post_blob("repo", &d, &data).await.expect(201);
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn post_then_put_whole_body() {
    let api = Api::start();
    let data = blob(11, 150_000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc2 = api.start_upload("repo").await;
    assert_ne!(loc, loc2, "two sessions share one location");
    // "PUT <blob-push-location>?digest=<digest>" with the whole blob, no Content-Range.
    let r = api.put_upload(&loc, &d, &data, None).await;
    r.expect(201);
    assert_eq!(r.digest(), d);
    let g = api.get(&r.location(&api)).await;
    g.expect(200);
    assert!(g.body == data, "PUT Location does not serve the blob");
    api.assert_blob("repo", &d, &data).await;
    // The session is closed; the other one is untouched.
    api.get(&loc).await.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    status(&api, &loc2).await;
}

#[tokio::test]
async fn chunked_patches_in_order() {
    let api = Api::start();
    let data = blob(12, 300_000);
    let d = sha256(&data);
    let mut loc = api.start_upload("repo").await;
    let mut off = 0u64;
    for chunk in split(&data, &[100_000, 250_000]) {
        loc = api.patch_ok(&loc, chunk, off).await;
        off += chunk.len() as u64;
        let (range, next) = status(&api, &loc).await;
        assert_eq!(range.as_deref(), Some(format!("0-{}", off - 1).as_str()));
        loc = next;
    }
    // Nothing is pullable before the closing PUT.
    api.assert_no_blob("repo", &d).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;
    // A closed session is gone (end-13 fails with 404).
    api.get(&loc).await.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.patch(&loc, b"more", Some(off))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn final_chunk_in_the_closing_put() {
    let api = Api::start();
    let data = blob(13, 90_000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data[..40_000], 0).await;
    let r = api
        .put_upload(&loc, &d, &data[40_000..], Some(40_000))
        .await;
    r.expect(201);
    assert_eq!(r.digest(), d);
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn out_of_order_chunks_are_416() {
    let api = Api::start();
    let data = blob(14, 60_000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    // "The first chunk's range MUST begin with 0" / "If a chunk is uploaded out of order, the
    // registry MUST respond with a 416".
    api.patch(&loc, &data[5..1000], Some(5)).await.expect(416);
    let loc = api.patch_ok(&loc, &data[..20_000], 0).await;
    // A gap after the first chunk.
    api.patch(&loc, &data[20_010..30_000], Some(20_010))
        .await
        .expect(416);
    // "If the final chunk is uploaded out of order, the registry MUST respond with 416."
    api.put_upload(&loc, &d, &data[20_001..], Some(20_001))
        .await
        .expect(416);
    // The GET the spec suggests after a 416 reports the offset, and the upload completes.
    let (range, loc) = status(&api, &loc).await;
    assert_eq!(range.as_deref(), Some("0-19999"));
    let loc = api.patch_ok(&loc, &data[20_000..30_000], 20_000).await;
    let r = api
        .put_upload(&loc, &d, &data[30_000..], Some(30_000))
        .await;
    r.expect(201);
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn repeated_chunk_is_416_and_upload_still_completes() {
    let api = Api::start();
    let data = blob(15, 120_000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data[..50_000], 0).await;
    // The same chunk again (a client retrying after a lost answer).
    api.patch(&loc, &data[..50_000], Some(0)).await.expect(416);
    // A chunk overlapping the data already received.
    api.patch(&loc, &data[40_000..60_000], Some(40_000))
        .await
        .expect(416);
    let (range, loc) = status(&api, &loc).await;
    assert_eq!(
        range.as_deref(),
        Some("0-49999"),
        "a refused chunk changed the offset"
    );
    let loc = api.patch_ok(&loc, &data[50_000..], 50_000).await;
    api.close_ok(&loc, &d).await;
    // Exactly the bytes sent once each: nothing of the refused chunks slipped in.
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn streamed_patches_without_content_range() {
    // The conformance suite's "Blob Upload Streamed": PATCH with the body and no Content-Range;
    // here as a chunked transfer encoding, in two PATCHes that append.
    let api = Api::start();
    let data = blob(16, 700_000);
    let d = sha256(&data);
    let mut loc = api.start_upload("repo").await;
    let mut off = 0u64;
    for part in split(&data, &[300_000]) {
        let pieces: Vec<Result<Bytes, std::io::Error>> = part
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
        let r = api
            .send(
                api.req(Method::PATCH, &loc)
                    .header("Content-Type", "application/octet-stream")
                    .body(body),
            )
            .await;
        r.expect(202);
        off += part.len() as u64;
        assert_eq!(
            r.must_header("range"),
            format!("0-{}", off - 1),
            "{}",
            r.what
        );
        loc = r.location(&api);
    }
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn upload_status_and_resume() {
    let api = Api::start();
    let data = blob(17, 80_000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    // end-13 on a fresh session: 204 with Location.
    let (_, loc) = status(&api, &loc).await;
    let loc = api.patch_ok(&loc, &data[..33_333], 0).await;
    // A client that lost track asks where to continue, and continues from there.
    let (range, loc) = status(&api, &loc).await;
    let range = range.expect("Range on an upload holding data");
    let end: u64 = range
        .strip_prefix("0-")
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("Range `{range}` is not `0-<end>`"));
    assert_eq!(end, 33_332);
    let next = end as usize + 1;
    let loc = api.patch_ok(&loc, &data[next..], next as u64).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn upload_resumes_across_a_gateway_restart() {
    let mut api = Api::start();
    let data = blob(18, 512 * 1024 + 3);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data[..256 * 1024], 0).await;
    // SIGKILL: the 202 promised those bytes were received.
    api.restart();
    let (range, loc) = status(&api, &loc).await;
    assert_eq!(
        range.as_deref(),
        Some(format!("0-{}", 256 * 1024 - 1).as_str()),
        "offset lost across a restart"
    );
    let loc = api.patch_ok(&loc, &data[256 * 1024..], 256 * 1024).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;
    // A finished blob survives a SIGKILL too.
    api.restart();
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn cancelled_upload_is_unknown() {
    let api = Api::start();
    let data = blob(19, 10_000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data[..5000], 0).await;
    // end-14: 204 on success.
    api.send(api.req(Method::DELETE, &loc).header("Content-Length", "0"))
        .await
        .expect(204);
    api.get(&loc).await.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.patch(&loc, &data[5000..], Some(5000))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.put_upload(&loc, &d, &data[5000..], Some(5000))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.delete(&loc)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.assert_no_blob("repo", &d).await;
}

#[tokio::test]
async fn unknown_upload_ids_are_404() {
    let api = Api::start();
    api.push_blob("repo", b"exists").await;
    for id in [
        "3f2b6c1e-9d2a-4c1b-8e7f-0a1b2c3d4e5f",
        "not-a-session",
        "0",
        &"x".repeat(300),
    ] {
        let loc = format!("/v2/repo/blobs/uploads/{id}");
        api.get(&loc).await.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.patch(&loc, b"abc", Some(0))
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.put_upload(&loc, &sha256(b"abc"), b"abc", None)
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
        api.delete(&loc)
            .await
            .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    }
    // Path tricks sent raw, past any client-side normalisation.
    for path in [
        "/v2/repo/blobs/uploads/../../../etc/passwd",
        "/v2/repo/blobs/uploads/%2e%2e",
        "/v2/repo/blobs/uploads/..%2f..%2fetc",
    ] {
        let (status, _) = api.raw("GET", path).await;
        assert!((400..500).contains(&status), "GET {path}: {status}");
    }
}

#[tokio::test]
async fn upload_id_under_another_repository_is_404() {
    let api = Api::start();
    api.push_blob("b", b"b exists").await;
    let data = blob(20, 30_000);
    let d = sha256(&data);
    let r = api.post_upload("a").await;
    r.expect(202);
    let id = r.must_header("docker-upload-uuid").to_owned();
    let loc = api.patch_ok(&r.location(&api), &data[..10_000], 0).await;
    let wrong = format!("/v2/b/blobs/uploads/{id}");
    api.get(&wrong)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.patch(&wrong, &data[10_000..], Some(10_000))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.put_upload(&wrong, &d, &data[10_000..], Some(10_000))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    api.delete(&wrong)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    // The session in its own repository is intact and completes there only.
    let (range, loc) = status(&api, &loc).await;
    assert_eq!(range.as_deref(), Some("0-9999"));
    let loc = api.patch_ok(&loc, &data[10_000..], 10_000).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("a", &d, &data).await;
    api.assert_no_blob("b", &d).await;
}

#[tokio::test]
async fn wrong_digest_is_digest_invalid_and_nothing_is_stored() {
    let api = Api::start();
    let data = blob(21, 40_000);
    let real = sha256(&data);
    let claimed = sha256(b"something else entirely");
    // Chunked, closed with the wrong digest.
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data, 0).await;
    api.put_upload(&loc, &claimed, &[], None)
        .await
        .expect_error(400, "DIGEST_INVALID");
    // POST then PUT with the body.
    let loc = api.start_upload("repo").await;
    api.put_upload(&loc, &claimed, &data, None)
        .await
        .expect_error(400, "DIGEST_INVALID");
    // Single POST.
    api.post_blob("repo", &claimed, &data)
        .await
        .expect_error(400, "DIGEST_INVALID");
    // Neither the claimed nor the real digest is pullable.
    api.assert_no_blob("repo", &claimed).await;
    api.assert_no_blob("repo", &real).await;
    // A correct push afterwards works.
    api.post_blob("repo", &real, &data).await.expect(201);
    api.assert_blob("repo", &real, &data).await;
    api.assert_no_blob("repo", &claimed).await;
}

#[tokio::test]
async fn closing_put_without_digest_is_400() {
    // "The closing PUT request MUST include the <digest> of the whole blob".
    let api = Api::start();
    let data = blob(22, 5000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data, 0).await;
    let r = api
        .send(api.req(Method::PUT, &loc).header("Content-Length", "0"))
        .await;
    r.expect_error_in(&[400], &["DIGEST_INVALID", "BLOB_UPLOAD_INVALID"]);
    let r = api
        .send(
            api.req(Method::PUT, &loc)
                .query(&[("digest", "")])
                .header("Content-Length", "0"),
        )
        .await;
    r.expect_error_in(&[400], &["DIGEST_INVALID", "BLOB_UPLOAD_INVALID"]);
    api.assert_no_blob("repo", &d).await;
    // A fresh upload of the same bytes is unaffected.
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data, 0).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn empty_blob_push_and_pull() {
    let api = Api::start();
    assert_eq!(sha256(b""), EMPTY_SHA256);
    // Single POST with an empty body.
    api.post_blob("a", EMPTY_SHA256, b"").await.expect(201);
    // POST then a PUT with no body, no PATCH at all.
    let loc = api.start_upload("b").await;
    api.close_ok(&loc, EMPTY_SHA256).await;
    for repo in ["a", "b"] {
        let h = api.head(&format!("/v2/{repo}/blobs/{EMPTY_SHA256}")).await;
        h.expect(200);
        assert_eq!(h.must_header("content-length"), "0");
        assert_eq!(h.digest(), EMPTY_SHA256);
        api.assert_blob(repo, EMPTY_SHA256, b"").await;
    }
    // Any byte range of an empty blob is unsatisfiable (RFC 9110 §14.1.1); ignoring the Range
    // is allowed too.
    let r = api.get_blob("a", EMPTY_SHA256, Some("bytes=0-0")).await;
    match r.status.as_u16() {
        200 => assert!(r.body.is_empty()),
        416 => assert_eq!(r.must_header("content-range"), "bytes */0"),
        s => panic!("{}: {s} for a range of the empty blob", r.what),
    }
    // An empty blob claimed to be something else.
    api.post_blob("a", &sha256(b"x"), b"")
        .await
        .expect_error(400, "DIGEST_INVALID");
}

#[tokio::test]
async fn mount_from_a_repository_holding_the_blob_is_201() {
    let api = Api::start();
    let data = blob(23, 64_000);
    let d = api.push_blob("src", &data).await;
    // end-11: "The response to a successful mount MUST be 201 Created, and MUST contain
    // Location: <blob-location>".
    let r = mount(&api, "dst", &d, Some("src")).await;
    r.expect(201);
    assert_eq!(r.digest(), d);
    let g = api.get(&r.location(&api)).await;
    g.expect(200);
    assert!(g.body == data, "mount Location does not serve the blob");
    api.assert_blob("dst", &d, &data).await;
    api.assert_blob("src", &d, &data).await;
    // The mounted link is independent of its source.
    api.delete(&format!("/v2/src/blobs/{d}")).await.expect(202);
    api.assert_blob("dst", &d, &data).await;
    // And a source that no longer holds the blob cannot be mounted from.
    let r = mount(&api, "dst2", &d, Some("src")).await;
    assert!(
        matches!(r.status.as_u16(), 201 | 202),
        "{}: {}",
        r.what,
        r.status
    );
    if r.status.as_u16() == 201 {
        // Mounting from wherever it is held is allowed ("MAY cross-mount the blob if it can be
        // found"), as long as the bytes are right.
        api.assert_blob("dst2", &d, &data).await;
    }
}

#[tokio::test]
async fn mount_from_a_repository_lacking_the_blob_starts_an_upload() {
    let api = Api::start();
    api.push_blob("other", b"other content").await;
    // A fresh blob per case, so that no repository at all holds it when the mount is asked.
    for (from, seed) in [
        (Some("other"), 24),
        (Some("does-not-exist"), 26),
        (None, 27),
    ] {
        let data = blob(seed, 20_000);
        let d = sha256(&data);
        // "if a registry ... is unable to mount the requested blob, it SHOULD return a 202.
        // This indicates that the upload session has begun".
        let r = mount(&api, "dst", &d, from).await;
        r.expect(202);
        let loc = r.location(&api);
        status(&api, &loc).await;
        let r = api.put_upload(&loc, &d, &data, None).await;
        r.expect(201);
        api.assert_blob("dst", &d, &data).await;
        api.assert_no_blob("other", &d).await;
    }
}

#[tokio::test]
async fn mount_without_from_finds_the_blob_anywhere() {
    // "The registry MAY treat the from parameter as optional, and it MAY cross-mount the blob if
    // it can be found." flotilla does.
    let api = Api::start();
    let data = blob(25, 10_000);
    let d = api.push_blob("holder/deep/name", &data).await;
    let r = mount(&api, "dst", &d, None).await;
    r.expect(201);
    assert_eq!(r.digest(), d);
    api.assert_blob("dst", &d, &data).await;
    // Mounting into a repository that already holds it is fine too.
    mount(&api, "dst", &d, Some("holder/deep/name"))
        .await
        .expect(201);
    api.assert_blob("dst", &d, &data).await;
}

#[tokio::test]
async fn malformed_or_mismatched_content_range_is_refused() {
    let api = Api::start();
    let data = blob(28, 10_000);
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data[..4000], 0).await;
    // Not `^[0-9]+-[0-9]+$`, reversed, or declaring another length than the 1000 bytes sent.
    for range in [
        "abc",
        "4000-",
        "-4999",
        "4999-4000",
        "4000-4999-5000",
        "4000-5999",
        "4000-4499",
    ] {
        let r = api
            .send(
                api.req(Method::PATCH, &loc)
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", range)
                    .body(data[4000..5000].to_vec()),
            )
            .await;
        assert!(
            matches!(r.status.as_u16(), 400 | 416),
            "{}: Content-Range {range:?} answered {} {}",
            r.what,
            r.status,
            r.text()
        );
    }
    // None of them moved the offset, and the upload completes with exactly the right bytes.
    let (range, loc) = status(&api, &loc).await;
    assert_eq!(range.as_deref(), Some("0-3999"), "a refused chunk was kept");
    let loc = api.patch_ok(&loc, &data[4000..], 4000).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;

    // A closing PUT whose final chunk does not match its Content-Range.
    let other = blob(29, 3000);
    let od = sha256(&other);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &other[..1000], 0).await;
    let r = api
        .send(
            api.req(Method::PUT, &loc)
                .query(&[("digest", od.as_str())])
                .header("Content-Type", "application/octet-stream")
                .header("Content-Range", "1000-1499")
                .body(other[1000..].to_vec()),
        )
        .await;
    assert!(
        matches!(r.status.as_u16(), 400 | 416),
        "{}: mismatched final chunk answered {} {}",
        r.what,
        r.status,
        r.text()
    );
    api.assert_no_blob("repo", &od).await;
}

#[tokio::test]
async fn sha512_chunked_uploads() {
    // end-4c: "When pushing a blob with a digest algorithm other than sha256, the post request
    // SHOULD include the digest-algorithm parameter"; SPEC.md §1.1 accepts sha512.
    let api = Api::start();
    let data = blob(30, 100_000);
    let d = sha512(&data);
    let r = api
        .send(
            api.req(Method::POST, "/v2/repo/blobs/uploads/")
                .query(&[("digest-algorithm", "sha512")])
                .header("Content-Length", "0"),
        )
        .await;
    r.expect(202);
    let loc = api.patch_ok(&r.location(&api), &data[..50_000], 0).await;
    let loc = api.patch_ok(&loc, &data[50_000..], 50_000).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;

    // Without the hint the registry may refuse, but must never store wrong bytes or call a
    // matching digest a mismatch silently: either 201 and the blob, or a 400 and nothing.
    let data = blob(31, 70_000);
    let d = sha512(&data);
    let loc = api.start_upload("other").await;
    let loc = api.patch_ok(&loc, &data, 0).await;
    let r = api.put_upload(&loc, &d, &[], None).await;
    match r.status.as_u16() {
        201 => api.assert_blob("other", &d, &data).await,
        400 => api.assert_no_blob("other", &d).await,
        s => panic!("{}: {s} {}", r.what, r.text()),
    }
}

#[tokio::test]
async fn many_small_chunks() {
    let api = Api::start();
    let data = blob(32, 128 * 512);
    let d = sha256(&data);
    let mut loc = api.start_upload("repo").await;
    for (i, chunk) in data.chunks(512).enumerate() {
        loc = api.patch_ok(&loc, chunk, (i * 512) as u64).await;
    }
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn interrupted_bodies_store_nothing_and_uploads_resume() {
    let api = Api::start();
    let data = blob(33, 50_000);
    let sent = &data[..20_000];
    let d_sent = sha256(sent);
    // A single POST whose client goes away after 20 000 of the 50 000 bytes it announced,
    // carrying the digest of what it did send: the request is incomplete, nothing is stored.
    let (status_code, body) = raw_exchange(
        api.gw.addr,
        &format!("POST /v2/repo/blobs/uploads/?digest={d_sent}"),
        &format!(
            "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            data.len()
        ),
        sent,
        true,
    )
    .await;
    assert!(
        (400..500).contains(&status_code),
        "truncated single POST answered {status_code} {}",
        String::from_utf8_lossy(&body)
    );
    api.assert_no_blob("repo", &d_sent).await;

    // A PATCH cut off the same way ("Resumable Push"): the registry may keep what arrived or
    // drop it, but the offset it then reports must be true, so resuming from it completes the
    // blob exactly.
    let d = sha256(&data);
    let loc = api.start_upload("repo").await;
    let loc = api.patch_ok(&loc, &data[..10_000], 0).await;
    let path = loc
        .strip_prefix(&api.gw.url())
        .expect("Location on this gateway")
        .to_owned();
    let (status_code, body) = raw_exchange(
        api.gw.addr,
        &format!("PATCH {path}"),
        "Content-Type: application/octet-stream\r\nContent-Range: 10000-39999\r\nContent-Length: 30000\r\n",
        &data[10_000..25_000],
        true,
    )
    .await;
    assert!(
        (400..500).contains(&status_code),
        "truncated PATCH answered {status_code} {}",
        String::from_utf8_lossy(&body)
    );
    let (range, loc) = status(&api, &loc).await;
    let next = match range.as_deref() {
        Some(r) => {
            let end: usize = r
                .strip_prefix("0-")
                .and_then(|e| e.parse().ok())
                .unwrap_or_else(|| panic!("Range `{r}` is not `0-<end>`"));
            end + 1
        }
        None => 0,
    };
    assert!(
        next == 10_000 || next == 25_000,
        "offset {next} after an interrupted PATCH"
    );
    let loc = api.patch_ok(&loc, &data[next..], next as u64).await;
    api.close_ok(&loc, &d).await;
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn idle_uploads_expire_and_active_ones_do_not() {
    // "If this request fails or is not called, the server SHOULD eventually timeout unfinished
    // uploads." With `--upload-ttl-secs 2`, an idle session becomes BLOB_UPLOAD_UNKNOWN while a
    // session that keeps receiving chunks lives on.
    let api = Api::with_gateway(Gateway::start_with_args(&["--upload-ttl-secs", "2"]));
    let data = blob(34, 40_000);
    let d = sha256(&data);
    let idle = api.start_upload("repo").await;
    let idle = api.patch_ok(&idle, &data[..1000], 0).await;
    let mut active = api.start_upload("repo").await;
    let start = Instant::now();
    let mut off = 0usize;
    let mut expired = false;
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let end = (off + 1000).min(data.len());
        active = api.patch_ok(&active, &data[off..end], off as u64).await;
        off = end;
        let r = api.get(&idle).await;
        if r.status.as_u16() == 404 {
            r.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
            expired = true;
            break;
        }
        r.expect(204);
    }
    assert!(
        expired,
        "idle upload still alive after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "upload expired before its TTL ({:?})",
        start.elapsed()
    );
    api.patch(&idle, &data[1000..2000], Some(1000))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    // The busy session survived the reaper and completes.
    let active = api.patch_ok(&active, &data[off..], off as u64).await;
    api.close_ok(&active, &d).await;
    api.assert_blob("repo", &d, &data).await;
}
