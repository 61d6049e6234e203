//! Blob pull, existence checks and deletion (spec "Pulling blobs", "Checking if content exists",
//! "Deleting Blobs"), repository scoping, and `Range` requests per RFC 9110 §14.

use super::util::{Api, blob, sha256, sha512};

/// Size of the blob the range tests use.
const SIZE: usize = 10_000;

#[tokio::test]
async fn blob_head_and_get_headers() {
    let api = Api::start();
    let data = blob(1, 3 * 1024 * 1024 + 11);
    let d = sha256(&data);
    let r = api.post_blob("lib/app", &d, &data).await;
    r.expect(201);
    // The Location of a finished push "is a pullable blob URL".
    let loc = r.location(&api);
    let g = api.get(&loc).await;
    g.expect(200);
    assert!(
        g.body == data,
        "{}: body differs from the pushed blob",
        g.what
    );

    let h = api.head(&format!("/v2/lib/app/blobs/{d}")).await;
    h.expect(200);
    assert_eq!(h.digest(), d, "HEAD Docker-Content-Digest");
    assert_eq!(
        h.must_header("content-length"),
        data.len().to_string(),
        "HEAD Content-Length must be the blob size"
    );

    let g = api.get_blob("lib/app", &d, None).await;
    g.expect(200);
    assert_eq!(g.digest(), d, "GET Docker-Content-Digest");
    assert_eq!(g.must_header("content-length"), data.len().to_string());
    assert_eq!(sha256(&g.body), d, "GET body digest");
}

#[tokio::test]
async fn unknown_blobs_are_blob_unknown() {
    let api = Api::start();
    let data = blob(2, 2048);
    let d = api.push_blob("a", &data).await;
    // A repository that exists but never got this blob.
    api.push_blob("b", &blob(3, 10)).await;
    api.assert_no_blob("b", &d).await;
    // A digest nobody pushed.
    api.assert_no_blob("a", &sha256(b"never pushed")).await;
    api.assert_no_blob("a", &sha512(b"never pushed")).await;
    // A repository that does not exist: 404, with either blob or name unknown.
    api.head(&format!("/v2/nope/blobs/{d}")).await.expect(404);
    api.get_blob("nope", &d, None)
        .await
        .expect_error_in(&[404], &["BLOB_UNKNOWN", "NAME_UNKNOWN"]);
    // The holder still has it.
    api.assert_blob("a", &d, &data).await;
}

#[tokio::test]
async fn sha512_blobs_push_and_pull() {
    // SPEC.md §1.1: sha512 is accepted besides sha256.
    let api = Api::start();
    let data = blob(4, 70_000);
    let d = sha512(&data);
    let r = api.post_blob("repo", &d, &data).await;
    r.expect(201);
    assert_eq!(r.digest(), d, "Docker-Content-Digest of a sha512 push");
    api.assert_blob("repo", &d, &data).await;
    let h = api.head(&format!("/v2/repo/blobs/{d}")).await;
    h.expect(200);
    assert_eq!(h.must_header("content-length"), data.len().to_string());
    // The same bytes under sha256 are a different, unknown address.
    api.assert_no_blob("repo", &sha256(&data)).await;
}

#[tokio::test]
async fn satisfiable_ranges_are_206() {
    let api = Api::start();
    let data = blob(5, SIZE);
    let d = api.push_blob("repo", &data).await;
    let n = SIZE as u64;
    let cases: Vec<(String, u64, u64)> = vec![
        ("bytes=0-0".into(), 0, 0),
        ("bytes=0-".into(), 0, n - 1),
        ("bytes=-1".into(), n - 1, n - 1),
        ("bytes=-100".into(), n - 100, n - 1),
        ("bytes=100-199".into(), 100, 199),
        (format!("bytes={}-", n - 1), n - 1, n - 1),
        (format!("bytes={}-{}", n - 1, n - 1), n - 1, n - 1),
        // A last-pos beyond the end is clamped (RFC 9110 §14.1.2).
        (format!("bytes=5-{}", n + 100), 5, n - 1),
        (format!("bytes=0-{}", u64::MAX), 0, n - 1),
        // A suffix longer than the representation selects all of it (§14.1.2).
        (format!("bytes=-{}", n + 50), 0, n - 1),
    ];
    for (range, first, last) in cases {
        let r = api.get_blob("repo", &d, Some(&range)).await;
        r.expect(206);
        assert_eq!(
            r.must_header("content-range"),
            format!("bytes {first}-{last}/{n}"),
            "{}: Content-Range for {range}",
            r.what
        );
        assert_eq!(
            r.must_header("content-length"),
            (last - first + 1).to_string(),
            "{}: Content-Length for {range}",
            r.what
        );
        assert!(
            r.body == data[first as usize..=last as usize],
            "{}: wrong bytes for {range}",
            r.what
        );
    }
}

#[tokio::test]
async fn unsatisfiable_ranges_are_416_with_size() {
    let api = Api::start();
    let data = blob(6, SIZE);
    let d = api.push_blob("repo", &data).await;
    let n = SIZE;
    for range in [
        format!("bytes={n}-"),
        format!("bytes={n}-{}", n + 10),
        format!("bytes={}-{}", n + 10, n + 20),
        format!("bytes={}-", u64::MAX),
        // A zero-length suffix is unsatisfiable (RFC 9110 §14.1.1).
        "bytes=-0".to_owned(),
    ] {
        let r = api.get_blob("repo", &d, Some(&range)).await;
        // RFC 9110 §15.5.17: 416, and the server SHOULD send `Content-Range: bytes */<length>`.
        r.expect(416);
        assert_eq!(
            r.must_header("content-range"),
            format!("bytes */{n}"),
            "{}: Content-Range of a 416 for {range}",
            r.what
        );
    }
    // The blob is still served whole afterwards.
    api.assert_blob("repo", &d, &data).await;
}

#[tokio::test]
async fn invalid_ranges_are_ignored_or_refused() {
    let api = Api::start();
    let data = blob(7, SIZE);
    let d = api.push_blob("repo", &data).await;
    // RFC 9110 §14.2: a server MAY ignore or reject an invalid ranges-specifier. Either way the
    // answer is the whole blob (200) or a 416 naming the length, never a 5xx or a wrong 206.
    for range in [
        "bytes=10-5",
        "bytes=abc",
        "bytes=",
        "bytes=1-2-3",
        "bytes=--1",
        "bytes 0-1",
        "0-1",
        "bytes=-",
        "bytes=0x10-0x20",
        "",
    ] {
        let r = api.get_blob("repo", &d, Some(range)).await;
        match r.status.as_u16() {
            200 => assert!(
                r.body == data,
                "{}: 200 for {range:?} is not the whole blob",
                r.what
            ),
            416 => assert_eq!(
                r.must_header("content-range"),
                format!("bytes */{SIZE}"),
                "{}: 416 for {range:?}",
                r.what
            ),
            s => panic!(
                "{}: status {s} for invalid Range {range:?}: {}",
                r.what,
                r.text()
            ),
        }
    }
    // An unknown range unit MUST be ignored (§14.2).
    let r = api.get_blob("repo", &d, Some("items=0-5")).await;
    r.expect(200);
    assert!(r.body == data, "{}: unknown unit not ignored", r.what);
    // Several ranges: whole blob, multipart 206 or 416; only the status is pinned down.
    let r = api.get_blob("repo", &d, Some("bytes=0-1,5-6")).await;
    assert!(
        [200, 206, 416].contains(&r.status.as_u16()),
        "{}: {} for a multi-range request",
        r.what,
        r.status
    );
}

#[tokio::test]
async fn delete_blob_then_404() {
    let api = Api::start();
    let data = blob(8, 4096);
    let d = api.push_blob("a", &data).await;
    api.push_blob("b", &data).await;
    // end-10: 202 on success.
    api.delete(&format!("/v2/a/blobs/{d}")).await.expect(202);
    api.assert_no_blob("a", &d).await;
    // Deleting from one repository leaves the other's link alone.
    api.assert_blob("b", &d, &data).await;
    // "If the blob is not found, a 404 Not Found code MUST be returned."
    api.delete(&format!("/v2/a/blobs/{d}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    api.delete(&format!("/v2/a/blobs/{}", sha256(b"never")))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    api.delete(&format!("/v2/nope/blobs/{d}"))
        .await
        .expect_error_in(&[404], &["BLOB_UNKNOWN", "NAME_UNKNOWN"]);
    // It can be pushed again and is whole.
    api.push_blob("a", &data).await;
    api.assert_blob("a", &d, &data).await;
    // Deleting the last link, then pushing again, also works.
    api.delete(&format!("/v2/a/blobs/{d}")).await.expect(202);
    api.delete(&format!("/v2/b/blobs/{d}")).await.expect(202);
    api.assert_no_blob("b", &d).await;
    api.push_blob("b", &data).await;
    api.assert_blob("b", &d, &data).await;
}

#[tokio::test]
async fn escaped_colon_in_digests() {
    // Some clients percent-encode the `:` of a digest in the path; it is the same resource.
    let api = Api::start();
    let data = blob(9, 1234);
    let d = api.push_blob("repo", &data).await;
    let escaped = d.replace(':', "%3A");
    let r = api.get(&format!("/v2/repo/blobs/{escaped}")).await;
    r.expect(200);
    assert!(r.body == data, "{}: wrong bytes", r.what);
    assert_eq!(r.digest(), d);
    api.head(&format!("/v2/repo/blobs/{}", d.replace(':', "%3a")))
        .await
        .expect(200);
}
