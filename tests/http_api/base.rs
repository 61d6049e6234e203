//! The base endpoint, unknown paths, and requests refused before any storage is touched: invalid
//! repository names, tags and digests, wrong methods, nonsense query parameters.

use reqwest::Method;

use super::util::{Api, OCI_MANIFEST, blob, codes_of, sha256};

/// Digests that break the grammar (spec: `algorithm ":" encoded`) or use an algorithm flotilla
/// does not support (SPEC.md §1.1: sha256 and sha512 only, lowercase hex of the exact length).
fn bad_digests() -> Vec<String> {
    vec![
        format!("sha256:{}", "z".repeat(64)),              // not hex
        "sha256:abc123".to_owned(),                        // too short
        format!("sha256:{}", "0".repeat(65)),              // too long
        format!("sha256:{}", "A".repeat(64)),              // uppercase hex
        format!("sha512:{}", "0".repeat(64)),              // sha512 needs 128
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_owned(), // unsupported algorithm
        format!("sha384:{}", "0".repeat(96)),              // well-formed, unsupported
        format!("sha256:{}", "0".repeat(32) + "-" + &"0".repeat(31)), // a non-hex character
        "sha256:".to_owned(),                              // empty encoded part
        format!(":{}", "0".repeat(64)),                    // empty algorithm
    ]
}

#[tokio::test]
async fn base_endpoint_is_200_with_api_version() {
    let api = Api::start();
    // end-1: `GET /v2/` answers 200 when the registry implements the spec.
    let r = api.get("/v2/").await;
    r.expect(200);
    assert_eq!(
        r.must_header("docker-distribution-api-version"),
        "registry/2.0"
    );
    let h = api.head("/v2/").await;
    h.expect(200);
    assert_eq!(
        h.must_header("docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let api = Api::start();
    for path in [
        "/",
        "/v1/",
        "/v3/",
        "/favicon.ico",
        "/v2/foo",
        "/v2/foo/bar",
        "/v2/foo/tags",
        "/v2/foo/tags/lists",
        "/v2/foo/manifest/latest",
        "/v2/foo/blob/sha256:0000",
        "/v2/foo/referrer/x",
        "/v2/foo/uploads/",
        "/v2/_catalogue",
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status.as_u16(), 404, "{}: {}", r.what, r.text());
        let r = api.send(api.req(Method::POST, path)).await;
        assert!(
            r.status.as_u16() == 404 || r.status.as_u16() == 405,
            "{}: {} ({})",
            r.what,
            r.status,
            r.text()
        );
    }
}

#[tokio::test]
async fn invalid_names_are_name_invalid() {
    let api = Api::start();
    let long = "a".repeat(256);
    let long_multi = format!("{}/{}", "a".repeat(128), "b".repeat(127));
    let bad: Vec<&str> = vec![
        "Upper",
        "foo/Bar",
        "foo..bar",
        "-foo",
        "foo-",
        "foo_",
        "_foo",
        "foo___bar",
        "foo//bar",
        "foo/.bar",
        ".foo",
        &long,
        &long_multi,
    ];
    let d = sha256(b"x");
    for name in bad {
        for (method, path) in [
            (Method::GET, format!("/v2/{name}/tags/list")),
            (Method::GET, format!("/v2/{name}/manifests/latest")),
            (Method::GET, format!("/v2/{name}/blobs/{d}")),
            (Method::POST, format!("/v2/{name}/blobs/uploads/")),
            (Method::GET, format!("/v2/{name}/referrers/{d}")),
        ] {
            api.send(api.req(method, &path))
                .await
                .expect_error(400, "NAME_INVALID");
        }
    }
    // A `..` path segment (sent raw: HTTP client libraries resolve dot segments).
    for path in [
        "/v2/foo/../bar/tags/list",
        "/v2/../tags/list",
        "/v2/foo/./bar/manifests/latest",
    ] {
        let (status, body) = api.raw("GET", path).await;
        assert_eq!(
            status,
            400,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            codes_of(&body).iter().any(|c| c == "NAME_INVALID"),
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // The limits themselves are valid names (255 characters, several components): unknown, not
    // invalid.
    for name in [
        "a".repeat(255),
        format!("{}/{}", "a".repeat(127), "b".repeat(127)),
    ] {
        api.get(&format!("/v2/{name}/tags/list"))
            .await
            .expect_error(404, "NAME_UNKNOWN");
    }
    for name in ["a", "a/b/c/d/e", "a.b_c__d-e---f", "0", "a1/2b"] {
        api.get(&format!("/v2/{name}/tags/list"))
            .await
            .expect_error(404, "NAME_UNKNOWN");
    }
    // `from=` of a mount names a repository too.
    let r = api
        .send(
            api.req(Method::POST, "/v2/ok/blobs/uploads/")
                .query(&[("mount", d.as_str()), ("from", "Not/Valid")]),
        )
        .await;
    r.expect_error(400, "NAME_INVALID");
}

#[tokio::test]
async fn names_may_contain_endpoint_words() {
    // SPEC.md §1.3: the router finds the endpoint from the end of the path, so `blobs`,
    // `manifests`, `tags`, `uploads` and `referrers` are ordinary name components.
    let api = Api::start();
    let repo = "team/blobs/manifests/tags/uploads/referrers";
    let img = api.push_image(repo, "v1", 7).await;
    api.assert_manifest(repo, "v1", OCI_MANIFEST, &img.manifest)
        .await;
    api.assert_blob(repo, &sha256(&img.config), &img.config)
        .await;
    let r = api.get(&format!("/v2/{repo}/tags/list")).await;
    r.expect(200);
    assert_eq!(r.json()["name"], repo);
    assert_eq!(r.json()["tags"], serde_json::json!(["v1"]));
    let loc = api.start_upload(repo).await;
    let data = blob(3, 100);
    let loc = api.patch_ok(&loc, &data, 0).await;
    api.close_ok(&loc, &sha256(&data)).await;
    api.assert_blob(repo, &sha256(&data), &data).await;
}

#[tokio::test]
async fn invalid_tags_are_tag_invalid() {
    // Pulling manifests: a tag is `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`; the `<tag-or-digest>`
    // "MUST NOT be in any other format". TAG_INVALID is distribution's (legacy) code for it.
    let api = Api::start();
    let img = api.push_image("repo", "ok", 1).await;
    let long = "t".repeat(129);
    for tag in ["-lead", ".dot", "bad!tag", "tag+plus", "t@g", &long] {
        for method in [Method::GET, Method::DELETE] {
            api.manifest(method, "repo", tag)
                .await
                .expect_error(400, "TAG_INVALID");
        }
        api.put_manifest("repo", tag, OCI_MANIFEST, &img.manifest)
            .await
            .expect_error(400, "TAG_INVALID");
    }
    // 128 characters, and every allowed character, are fine.
    let max = format!("_{}", "A".repeat(127));
    for tag in [max.as_str(), "_a.b-c_D9", "0"] {
        api.manifest(Method::GET, "repo", tag)
            .await
            .expect_error(404, "MANIFEST_UNKNOWN");
        api.put_manifest("repo", tag, OCI_MANIFEST, &img.manifest)
            .await
            .expect(201);
        api.assert_manifest("repo", tag, OCI_MANIFEST, &img.manifest)
            .await;
    }
}

#[tokio::test]
async fn invalid_digests_are_digest_invalid() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 2).await;
    let data = blob(9, 64);
    for d in bad_digests() {
        // Pull and delete endpoints with a digest in the path.
        for method in [Method::GET, Method::DELETE] {
            api.send(api.req(method, &format!("/v2/repo/blobs/{d}")))
                .await
                .expect_error(400, "DIGEST_INVALID");
        }
        api.head(&format!("/v2/repo/blobs/{d}")).await.expect(400);
        api.manifest(Method::GET, "repo", &d)
            .await
            .expect_error(400, "DIGEST_INVALID");
        api.delete(&format!("/v2/repo/manifests/{d}"))
            .await
            .expect_error(400, "DIGEST_INVALID");
        api.put_manifest("repo", &d, OCI_MANIFEST, &img.manifest)
            .await
            .expect_error(400, "DIGEST_INVALID");
        // end-12a: "If the request is invalid, such as a <digest> with an invalid syntax, a
        // 400 Bad Request MUST be returned."
        api.get(&format!("/v2/repo/referrers/{d}"))
            .await
            .expect_error(400, "DIGEST_INVALID");
        // Pushing blobs: "if the client provided digest is invalid or uses an unsupported
        // algorithm, the registry SHOULD respond with a response code 400 Bad Request".
        api.post_blob("repo", &d, &data)
            .await
            .expect_error(400, "DIGEST_INVALID");
        let loc = api.start_upload("repo").await;
        api.put_upload(&loc, &d, &data, None)
            .await
            .expect_error(400, "DIGEST_INVALID");
        let r = api
            .send(
                api.req(Method::POST, "/v2/repo/blobs/uploads/")
                    .query(&[("mount", d.as_str()), ("from", "repo")]),
            )
            .await;
        r.expect_error(400, "DIGEST_INVALID");
    }
    // Nothing was stored along the way.
    api.assert_no_blob("repo", &sha256(&data)).await;
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 3).await;
    let d = sha256(&img.config);
    let loc = api.start_upload("repo").await;
    let cases = [
        (Method::POST, "/v2/".to_owned()),
        (Method::DELETE, "/v2/".to_owned()),
        (Method::PUT, format!("/v2/repo/blobs/{d}")),
        (Method::POST, format!("/v2/repo/blobs/{d}")),
        (Method::PATCH, format!("/v2/repo/blobs/{d}")),
        (Method::POST, "/v2/repo/manifests/v1".to_owned()),
        (Method::PATCH, "/v2/repo/manifests/v1".to_owned()),
        (Method::PUT, "/v2/repo/tags/list".to_owned()),
        (Method::DELETE, "/v2/repo/tags/list".to_owned()),
        (Method::POST, "/v2/_catalog".to_owned()),
        (Method::DELETE, format!("/v2/repo/referrers/{}", img.digest)),
        (Method::PUT, "/v2/repo/blobs/uploads/".to_owned()),
        (Method::GET, "/v2/repo/blobs/uploads/".to_owned()),
        (Method::POST, loc.clone()),
    ];
    for (method, path) in cases {
        let r = api.send(api.req(method.clone(), &path)).await;
        r.expect_error(405, "UNSUPPORTED");
        // RFC 9110 §15.5.6: a 405 MUST carry Allow, listing what the target supports.
        let allow = r.must_header("allow").to_ascii_uppercase();
        assert!(
            !allow.split(',').any(|m| m.trim() == method.as_str()),
            "{}: Allow `{allow}` lists the refused method",
            r.what
        );
        assert!(!allow.trim().is_empty(), "{}: empty Allow", r.what);
    }
    // The refused requests changed nothing.
    api.assert_manifest("repo", "v1", OCI_MANIFEST, &img.manifest)
        .await;
    api.assert_blob("repo", &d, &img.config).await;
}

#[tokio::test]
async fn odd_query_parameters_are_never_5xx() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 4).await;
    let queries = [
        "n=abc",
        "n=-1",
        "n=99999999999999999999999",
        "n=1.5",
        "n=",
        "last=",
        "last=%ff%fe",
        "n=2&n=3",
        "last=zzz&n=0",
        "junk=1",
    ];
    for q in queries {
        for base in ["/v2/repo/tags/list", "/v2/_catalog"] {
            let r = api.get(&format!("{base}?{q}")).await;
            assert!(
                r.status.as_u16() == 200 || r.status.as_u16() == 400,
                "{}: {} {}",
                r.what,
                r.status,
                r.text()
            );
        }
    }
    for q in [
        "artifactType=",
        "artifactType=%ff",
        "artifactType=a&artifactType=b",
    ] {
        let r = api
            .get(&format!("/v2/repo/referrers/{}?{q}", img.digest))
            .await;
        assert!(
            r.status.as_u16() == 200 || r.status.as_u16() == 400,
            "{}: {} {}",
            r.what,
            r.status,
            r.text()
        );
    }
    // Upload start with contradictory or empty parameters.
    for q in [
        "digest=",
        "mount=",
        "mount=&from=repo",
        "from=repo",
        "digest-algorithm=md5",
    ] {
        let r = api
            .send(api.req(Method::POST, &format!("/v2/repo/blobs/uploads/?{q}")))
            .await;
        assert!(
            r.status.is_client_error() || r.status.as_u16() == 202,
            "{}: {} {}",
            r.what,
            r.status,
            r.text()
        );
    }
}
