//! Manifests (spec "Pulling manifests", "Pushing Manifests", "Deleting tags/Manifests"): every
//! accepted media type by tag and by digest, exact bytes and headers, validation errors, the size
//! limit, tag moves, deletion, and persistence across a restart.

use bytes::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

use super::util::{
    Api, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST, Image, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER, OCI_MANIFEST, blob, desc, manifest_bytes, oci_index, oci_manifest, sha256,
    try_raw_exchange,
};

/// The documented (and spec-suggested) manifest size limit: 4 MiB.
const LIMIT: usize = 4 * 1024 * 1024;

/// Tags of `repo` from one unpaginated listing.
async fn tags(api: &Api, repo: &str) -> Vec<String> {
    let r = api.get(&format!("/v2/{repo}/tags/list")).await;
    r.expect(200);
    serde_json::from_value(r.json()["tags"].clone()).unwrap_or_default()
}

/// An OCI manifest whose `annotations` pad the serialised bytes to exactly `len`.
fn padded_manifest(img: &Image, len: usize) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&img.manifest).expect("image manifest");
    v["annotations"] = json!({ "pad": "" });
    let base = serde_json::to_vec(&v).expect("serialise").len();
    assert!(base <= len, "manifest already larger than {len}");
    v["annotations"]["pad"] = json!("p".repeat(len - base));
    let out = serde_json::to_vec(&v).expect("serialise");
    assert_eq!(out.len(), len);
    out
}

/// A Docker schema 2 image for `seed`, its blobs pushed to `repo`; returns the manifest bytes.
async fn push_docker_image(api: &Api, repo: &str, seed: u64) -> Vec<u8> {
    let config = format!("{{\"architecture\":\"arm64\",\"os\":\"linux\",\"seed\":{seed}}}");
    let layer = blob(seed + 1000, 4096);
    api.push_blob(repo, config.as_bytes()).await;
    api.push_blob(repo, &layer).await;
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(DOCKER_CONFIG, config.as_bytes()),
        "layers": [desc(DOCKER_LAYER, &layer)],
    });
    manifest_bytes(&v)
}

#[tokio::test]
async fn oci_image_manifest_by_tag_and_digest() {
    let api = Api::start();
    let img = Image::new(1);
    api.push_blob("repo", &img.config).await;
    for l in &img.layers {
        api.push_blob("repo", l).await;
    }
    let r = api
        .put_manifest("repo", "v1", OCI_MANIFEST, &img.manifest)
        .await;
    // "Upon a successful upload, the registry MUST return response code 201 Created, and MUST
    // have Location: <location>", a pullable manifest URL; Docker-Content-Digest is the digest.
    r.expect(201);
    assert_eq!(r.digest(), img.digest);
    let g = api
        .send(
            api.req(Method::GET, &r.location(&api))
                .header("Accept", OCI_MANIFEST),
        )
        .await;
    g.expect(200);
    assert!(
        g.body == img.manifest,
        "manifest Location does not serve the manifest"
    );
    api.assert_manifest("repo", "v1", OCI_MANIFEST, &img.manifest)
        .await;
    api.assert_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
    assert_eq!(tags(&api, "repo").await, ["v1"]);
}

#[tokio::test]
async fn push_by_digest_creates_no_tag() {
    let api = Api::start();
    let img = Image::new(2);
    api.push_blob("repo", &img.config).await;
    for l in &img.layers {
        api.push_blob("repo", l).await;
    }
    let r = api
        .put_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
    r.expect(201);
    assert_eq!(r.digest(), img.digest);
    api.assert_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
    assert!(
        tags(&api, "repo").await.is_empty(),
        "a push by digest created a tag"
    );
    // Pushing the same bytes again by digest and then by tag is fine.
    api.put_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
        .await
        .expect(201);
    api.put_manifest("repo", "t", OCI_MANIFEST, &img.manifest)
        .await
        .expect(201);
    api.assert_manifest("repo", "t", OCI_MANIFEST, &img.manifest)
        .await;
}

#[tokio::test]
async fn oci_index_requires_its_children() {
    let api = Api::start();
    let a = api.push_image("repo", &Image::new(3).digest, 3).await;
    let b = api.push_image("repo", &Image::new(4).digest, 4).await;
    let mut da = a.descriptor();
    da["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    let mut db = b.descriptor();
    db["platform"] = json!({ "architecture": "arm64", "os": "linux" });
    let index = manifest_bytes(&oci_index(vec![da.clone(), db]));
    let r = api.put_manifest("repo", "multi", OCI_INDEX, &index).await;
    r.expect(201);
    assert_eq!(r.digest(), sha256(&index));
    api.assert_manifest("repo", "multi", OCI_INDEX, &index)
        .await;
    api.assert_manifest("repo", &sha256(&index), OCI_INDEX, &index)
        .await;

    // A child that was never pushed: "it MUST result in one or more MANIFEST_BLOB_UNKNOWN
    // errors". (The spec names no status; flotilla follows distribution's 400.)
    let ghost = Image::new(5);
    let bad = manifest_bytes(&oci_index(vec![da, ghost.descriptor()]));
    api.put_manifest("repo", "broken", OCI_INDEX, &bad)
        .await
        .expect_error_in(&[400, 404], &["MANIFEST_BLOB_UNKNOWN"]);
    api.put_manifest("repo", &sha256(&bad), OCI_INDEX, &bad)
        .await
        .expect_error_in(&[400, 404], &["MANIFEST_BLOB_UNKNOWN"]);
    api.assert_no_manifest("repo", "broken").await;
    api.assert_no_manifest("repo", &sha256(&bad)).await;
}

#[tokio::test]
async fn docker_schema2_manifest_and_manifest_list() {
    let api = Api::start();
    let m1 = push_docker_image(&api, "dock", 6).await;
    let m2 = push_docker_image(&api, "dock", 7).await;
    api.put_manifest("dock", "amd64", DOCKER_MANIFEST, &m1)
        .await
        .expect(201);
    api.put_manifest("dock", &sha256(&m2), DOCKER_MANIFEST, &m2)
        .await
        .expect(201);
    api.assert_manifest("dock", "amd64", DOCKER_MANIFEST, &m1)
        .await;
    api.assert_manifest("dock", &sha256(&m2), DOCKER_MANIFEST, &m2)
        .await;
    let list = manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [
            { "mediaType": DOCKER_MANIFEST, "digest": sha256(&m1), "size": m1.len(),
              "platform": { "architecture": "amd64", "os": "linux" } },
            { "mediaType": DOCKER_MANIFEST, "digest": sha256(&m2), "size": m2.len(),
              "platform": { "architecture": "arm64", "os": "linux", "variant": "v8" } },
        ],
    }));
    let r = api.put_manifest("dock", "latest", DOCKER_LIST, &list).await;
    r.expect(201);
    assert_eq!(r.digest(), sha256(&list));
    api.assert_manifest("dock", "latest", DOCKER_LIST, &list)
        .await;
    api.assert_manifest("dock", &sha256(&list), DOCKER_LIST, &list)
        .await;
    // A manifest list whose child is missing.
    let bad = manifest_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{ "mediaType": DOCKER_MANIFEST, "digest": sha256(b"ghost"), "size": 5,
                        "platform": { "architecture": "amd64", "os": "linux" } }],
    }));
    api.put_manifest("dock", "bad", DOCKER_LIST, &bad)
        .await
        .expect_error_in(&[400, 404], &["MANIFEST_BLOB_UNKNOWN"]);
}

#[tokio::test]
async fn digest_mismatch_is_digest_invalid() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 8).await;
    let other = Image::new(9);
    // Pushed under a digest that is not its own.
    api.put_manifest("repo", &other.digest, OCI_MANIFEST, &img.manifest)
        .await
        .expect_error(400, "DIGEST_INVALID");
    api.assert_no_manifest("repo", &other.digest).await;
    // The same bytes re-serialised compactly are a different document with a different digest.
    let compact =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&img.manifest).unwrap()).unwrap();
    api.put_manifest("repo", &img.digest, OCI_MANIFEST, &compact)
        .await
        .expect_error(400, "DIGEST_INVALID");
    api.assert_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
    api.assert_no_manifest("repo", &sha256(&compact)).await;
}

#[tokio::test]
async fn unpushed_blobs_are_manifest_blob_unknown() {
    let api = Api::start();
    let img = Image::new(10);
    // Only the config: both layers are missing.
    api.push_blob("repo", &img.config).await;
    api.put_manifest("repo", "v1", OCI_MANIFEST, &img.manifest)
        .await
        .expect_error_in(&[400, 404], &["MANIFEST_BLOB_UNKNOWN"]);
    // Layers but not the config.
    let img2 = Image::new(11);
    for l in &img2.layers {
        api.push_blob("repo", l).await;
    }
    api.put_manifest("repo", "v2", OCI_MANIFEST, &img2.manifest)
        .await
        .expect_error_in(&[400, 404], &["MANIFEST_BLOB_UNKNOWN"]);
    api.assert_no_manifest("repo", "v1").await;
    api.assert_no_manifest("repo", "v2").await;
    api.assert_no_manifest("repo", &img.digest).await;
    // A blob deleted from the repository no longer counts.
    let first = api.push_blob("repo", &img.layers[0]).await;
    api.push_blob("repo", &img.layers[1]).await;
    api.delete(&format!("/v2/repo/blobs/{first}"))
        .await
        .expect(202);
    api.put_manifest("repo", "v1", OCI_MANIFEST, &img.manifest)
        .await
        .expect_error_in(&[400, 404], &["MANIFEST_BLOB_UNKNOWN"]);
    // Once everything is there, the same bytes are accepted.
    api.push_blob("repo", &img.layers[0]).await;
    api.put_manifest("repo", "v1", OCI_MANIFEST, &img.manifest)
        .await
        .expect(201);
}

#[tokio::test]
async fn invalid_manifests_are_manifest_invalid() {
    let api = Api::start();
    let img = api.push_image("repo", "good", 12).await;
    let config = desc(OCI_CONFIG, &img.config);
    let layer = desc(OCI_LAYER, &img.layers[0]);
    let bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        ("not JSON", OCI_MANIFEST, b"this is not json".to_vec()),
        ("empty body", OCI_MANIFEST, Vec::new()),
        (
            "truncated",
            OCI_MANIFEST,
            img.manifest[..img.manifest.len() / 2].to_vec(),
        ),
        ("JSON array", OCI_MANIFEST, b"[]".to_vec()),
        ("empty object", OCI_MANIFEST, b"{}".to_vec()),
        (
            "schemaVersion 1",
            OCI_MANIFEST,
            manifest_bytes(&json!({"schemaVersion": 1, "mediaType": OCI_MANIFEST,
                                   "config": config, "layers": [layer]})),
        ),
        (
            "no config",
            OCI_MANIFEST,
            manifest_bytes(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "layers": [layer]})),
        ),
        (
            "layers not a list",
            OCI_MANIFEST,
            manifest_bytes(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                   "config": config, "layers": "nope"})),
        ),
        (
            "bad descriptor digest",
            OCI_MANIFEST,
            manifest_bytes(&oci_manifest(
                json!({"mediaType": OCI_CONFIG, "digest": "sha256:xyz", "size": 2}),
                vec![],
            )),
        ),
        (
            "negative size",
            OCI_MANIFEST,
            manifest_bytes(&oci_manifest(
                json!({"mediaType": OCI_CONFIG, "digest": sha256(&img.config), "size": -1}),
                vec![],
            )),
        ),
        (
            // SPEC.md §1.4: a body mediaType contradicting a specific Content-Type is refused.
            "mediaType contradicts Content-Type",
            OCI_INDEX,
            img.manifest.clone(),
        ),
        (
            // SPEC.md §1.4: Docker schema 1 is refused.
            "docker schema 1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            manifest_bytes(&json!({"schemaVersion": 1, "name": "repo", "tag": "v1",
                                   "architecture": "amd64", "fsLayers": [], "history": []})),
        ),
    ];
    for (why, ct, body) in bodies {
        let r = api.put_manifest("repo", "bad", ct, &body).await;
        assert_eq!(r.status.as_u16(), 400, "{why}: {} {}", r.what, r.text());
        assert!(
            r.error_codes().iter().any(|c| c == "MANIFEST_INVALID"),
            "{why}: want MANIFEST_INVALID, got {}",
            r.text()
        );
        api.assert_no_manifest("repo", "bad").await;
        if sha256(&body) != img.digest {
            api.assert_no_manifest("repo", &sha256(&body)).await;
        }
    }
    api.assert_manifest("repo", "good", OCI_MANIFEST, &img.manifest)
        .await;
}

#[tokio::test]
async fn manifest_size_limit() {
    let api = Api::start();
    let img = api.push_image("repo", "small", 13).await;
    // "Client and registry implementations SHOULD expect to be able to support manifest pushes
    // of at least 4 megabytes": exactly the limit is accepted.
    let at = padded_manifest(&img, LIMIT);
    api.put_manifest("repo", "at-limit", OCI_MANIFEST, &at)
        .await
        .expect(201);
    api.assert_manifest("repo", "at-limit", OCI_MANIFEST, &at)
        .await;
    // One byte more: "SHOULD respond ... with a response code 413 Payload Too Large".
    let over = padded_manifest(&img, LIMIT + 1);
    api.put_manifest("repo", "over", OCI_MANIFEST, &over)
        .await
        .expect(413);
    // Far over, streamed without a Content-Length: the limit is counted, not read from a header.
    let huge = padded_manifest(&img, LIMIT + 64 * 1024);
    let pieces: Vec<Result<Bytes, std::io::Error>> = huge
        .chunks(128 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let r = api
        .send(
            api.req(Method::PUT, "/v2/repo/manifests/huge")
                .header("Content-Type", OCI_MANIFEST)
                .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces))),
        )
        .await;
    r.expect(413);
    api.assert_no_manifest("repo", "over").await;
    api.assert_no_manifest("repo", "huge").await;
    api.assert_no_manifest("repo", &sha256(&over)).await;
}

#[tokio::test]
async fn unknown_manifests_are_manifest_unknown() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 14).await;
    api.assert_no_manifest("repo", "v2").await;
    api.assert_no_manifest("repo", &Image::new(15).digest).await;
    // A blob's digest is not a manifest.
    api.assert_no_manifest("repo", &sha256(&img.config)).await;
    // "An attempt to pull a nonexistent repository MUST return response code 404 Not Found."
    api.manifest(Method::GET, "nope", "v1")
        .await
        .expect_error_in(&[404], &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    api.manifest(Method::HEAD, "nope", &img.digest)
        .await
        .expect(404);
    // Manifests are scoped to their repository.
    api.push_blob("other", b"x").await;
    api.manifest(Method::GET, "other", &img.digest)
        .await
        .expect_error_in(&[404], &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
}

#[tokio::test]
async fn tag_moves_when_pushed_again() {
    let api = Api::start();
    let a = api.push_image("repo", "v1", 16).await;
    api.assert_manifest("repo", "v1", OCI_MANIFEST, &a.manifest)
        .await;
    let b = api.push_image("repo", "v1", 17).await;
    api.assert_manifest("repo", "v1", OCI_MANIFEST, &b.manifest)
        .await;
    // The old manifest is still there by digest.
    api.assert_manifest("repo", &a.digest, OCI_MANIFEST, &a.manifest)
        .await;
    assert_eq!(tags(&api, "repo").await, ["v1"]);
    // And back.
    api.put_manifest("repo", "v1", OCI_MANIFEST, &a.manifest)
        .await
        .expect(201);
    api.assert_manifest("repo", "v1", OCI_MANIFEST, &a.manifest)
        .await;
}

#[tokio::test]
async fn delete_by_digest_removes_manifest_and_its_tags() {
    let api = Api::start();
    let a = api.push_image("repo", "v1", 18).await;
    api.put_manifest("repo", "v1-alias", OCI_MANIFEST, &a.manifest)
        .await
        .expect(201);
    let b = api.push_image("repo", "other", 19).await;
    // end-9: 202.
    api.delete(&format!("/v2/repo/manifests/{}", a.digest))
        .await
        .expect(202);
    // "Once deleted, a GET to /v2/<name>/manifests/<digest> and any tag pointing to that digest
    // will return a 404."
    api.assert_no_manifest("repo", &a.digest).await;
    api.assert_no_manifest("repo", "v1").await;
    api.assert_no_manifest("repo", "v1-alias").await;
    api.assert_manifest("repo", "other", OCI_MANIFEST, &b.manifest)
        .await;
    assert_eq!(tags(&api, "repo").await, ["other"]);
    api.delete(&format!("/v2/repo/manifests/{}", a.digest))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    // "If the repository does not exist, the response MUST return 404 Not Found."
    api.delete(&format!("/v2/nope/manifests/{}", a.digest))
        .await
        .expect_error_in(&[404], &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
    // It can be pushed again.
    api.put_manifest("repo", "v1", OCI_MANIFEST, &a.manifest)
        .await
        .expect(201);
    api.assert_manifest("repo", "v1", OCI_MANIFEST, &a.manifest)
        .await;
}

#[tokio::test]
async fn delete_tag_keeps_the_manifest() {
    let api = Api::start();
    let a = api.push_image("repo", "v1", 20).await;
    api.put_manifest("repo", "v2", OCI_MANIFEST, &a.manifest)
        .await
        .expect(201);
    api.delete("/v2/repo/manifests/v1").await.expect(202);
    api.assert_no_manifest("repo", "v1").await;
    api.assert_manifest("repo", &a.digest, OCI_MANIFEST, &a.manifest)
        .await;
    api.assert_manifest("repo", "v2", OCI_MANIFEST, &a.manifest)
        .await;
    assert_eq!(tags(&api, "repo").await, ["v2"]);
    api.delete("/v2/repo/manifests/v1")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    api.delete("/v2/nope/manifests/v1")
        .await
        .expect_error_in(&[404], &["MANIFEST_UNKNOWN", "NAME_UNKNOWN"]);
}

#[tokio::test]
async fn media_type_inference_and_parameters() {
    // SPEC.md §1.4: without a body mediaType, the Content-Type decides; with generic JSON, the
    // shape. The spec: the registry "SHOULD ignore parameters on the Content-Type header" and
    // "SHOULD NOT include parameters" in its own.
    let api = Api::start();
    let img = api.push_image("repo", "base", 21).await;
    let mut v: Value = serde_json::from_slice(&img.manifest).unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    let plain = manifest_bytes(&v);
    api.put_manifest("repo", "from-header", OCI_MANIFEST, &plain)
        .await
        .expect(201);
    api.assert_manifest("repo", "from-header", OCI_MANIFEST, &plain)
        .await;

    let idx = manifest_bytes(&json!({"schemaVersion": 2, "manifests": [img.descriptor()]}));
    api.put_manifest("repo", "from-shape", "application/json", &idx)
        .await
        .expect(201);
    api.assert_manifest("repo", "from-shape", OCI_INDEX, &idx)
        .await;

    // No Content-Type at all: the body's mediaType decides.
    let r = api
        .send(
            api.req(Method::PUT, "/v2/repo/manifests/no-header")
                .body(img.manifest.clone()),
        )
        .await;
    r.expect(201);
    api.assert_manifest("repo", "no-header", OCI_MANIFEST, &img.manifest)
        .await;

    let with_params = format!("{OCI_MANIFEST}; charset=utf-8");
    api.put_manifest("repo", "params", &with_params, &img.manifest)
        .await
        .expect(201);
    api.assert_manifest("repo", "params", OCI_MANIFEST, &img.manifest)
        .await;
    let g = api.manifest(Method::GET, "repo", "params").await;
    assert_eq!(
        g.must_header("content-type"),
        OCI_MANIFEST,
        "parameters in Content-Type"
    );
}

#[tokio::test]
async fn foreign_layers_need_not_be_pushed() {
    // SPEC.md §1.4: descriptors with `urls` are not required blobs.
    let api = Api::start();
    let img = Image::new(22);
    api.push_blob("repo", &img.config).await;
    api.push_blob("repo", &img.layers[0]).await;
    let foreign = blob(4242, 1000);
    let mut fl = desc(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        &foreign,
    );
    fl["urls"] = json!(["https://example.invalid/layer.tar.gz"]);
    let body = manifest_bytes(&oci_manifest(
        desc(OCI_CONFIG, &img.config),
        vec![desc(OCI_LAYER, &img.layers[0]), fl],
    ));
    api.put_manifest("repo", "win", OCI_MANIFEST, &body)
        .await
        .expect(201);
    api.assert_manifest("repo", "win", OCI_MANIFEST, &body)
        .await;
}

#[tokio::test]
async fn manifests_survive_a_restart() {
    // Every 201/202 is a promise: pushes and deletions alike survive a SIGKILL.
    let mut api = Api::start();
    let img = api.push_image("repo", "v1", 23).await;
    api.put_manifest("repo", "old-tag", OCI_MANIFEST, &img.manifest)
        .await
        .expect(201);
    let gone = api.push_image("repo", "gone", 26).await;
    api.delete("/v2/repo/manifests/old-tag").await.expect(202);
    api.delete(&format!("/v2/repo/manifests/{}", gone.digest))
        .await
        .expect(202);
    let gone_blob = sha256(&gone.layers[0]);
    api.delete(&format!("/v2/repo/blobs/{gone_blob}"))
        .await
        .expect(202);
    api.restart();
    api.assert_manifest("repo", "v1", OCI_MANIFEST, &img.manifest)
        .await;
    api.assert_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
    api.assert_blob("repo", &sha256(&img.layers[1]), &img.layers[1])
        .await;
    assert_eq!(tags(&api, "repo").await, ["v1"]);
    api.assert_no_manifest("repo", "old-tag").await;
    api.assert_no_manifest("repo", "gone").await;
    api.assert_no_manifest("repo", &gone.digest).await;
    api.assert_no_blob("repo", &gone_blob).await;
}

#[tokio::test]
async fn push_by_digest_with_tag_parameters() {
    // end-7b: a registry MAY accept `?tag=` on a push by digest; if it does, it "MUST include
    // an OCI-Tag response header ... for each accepted tag". Either way the tags listed and the
    // tags announced agree.
    let api = Api::start();
    let img = Image::new(24);
    for b in std::iter::once(&img.config).chain(&img.layers) {
        api.push_blob("repo", b).await;
    }
    let r = api
        .send(
            api.req(Method::PUT, &format!("/v2/repo/manifests/{}", img.digest))
                .query(&[("tag", "1.2.3"), ("tag", "1.2"), ("tag", "latest")])
                .header("Content-Type", OCI_MANIFEST)
                .body(img.manifest.clone()),
        )
        .await;
    r.expect(201);
    assert_eq!(r.digest(), img.digest);
    let announced: Vec<String> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .expect("ASCII OCI-Tag")
                .split(',')
                .map(|t| t.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut listed = tags(&api, "repo").await;
    listed.sort();
    let mut announced_sorted = announced.clone();
    announced_sorted.sort();
    assert_eq!(
        listed, announced_sorted,
        "tags created vs OCI-Tag announced"
    );
    for t in &announced {
        api.assert_manifest("repo", t, OCI_MANIFEST, &img.manifest)
            .await;
    }
    api.assert_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
        .await;
}

#[tokio::test]
async fn oversized_manifest_413_reaches_a_client_sending_everything() {
    // A client that writes its whole request before reading (as simple clients do), here a
    // little slowly, must still get the 413: a server refusing early has to drain the body or
    // close in stages (RFC 9112 §9.6), not reset the connection under the client.
    let api = Api::start();
    let img = api.push_image("repo", "small", 25).await;
    let over = padded_manifest(&img, LIMIT + 1);
    let res = try_raw_exchange(
        api.gw.addr,
        "PUT /v2/repo/manifests/over",
        &format!(
            "Content-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n",
            over.len()
        ),
        &over,
        false,
        true,
    )
    .await;
    match res {
        Ok((413, _)) => {}
        Ok((s, body)) => panic!("oversized manifest: {s} {}", String::from_utf8_lossy(&body)),
        Err(e) => panic!(
            "oversized manifest: the connection was reset ({e}) before the client could read \
             the 413 (the gateway answers without reading the body and closes at once)"
        ),
    }
    api.assert_no_manifest("repo", "over").await;
}
