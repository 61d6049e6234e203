//! Concurrent clients (spec "Layer Upload De-duplication": uploads of the same layer at the same
//! time "will proceed"): one blob pushed 16 times at once by mixed methods, interleaved chunked
//! uploads of different blobs, and racing manifest pushes to one tag.

use std::sync::Arc;

use reqwest::Method;

use super::util::{Api, Image, OCI_MANIFEST, blob, sha256};

/// Pushes `data` to `repo`: monolithically (single POST, or POST+PUT) or in `chunks` PATCHes.
async fn push_with(api: &Api, repo: &str, data: &[u8], way: usize) {
    let d = sha256(data);
    match way % 3 {
        0 => {
            api.post_blob(repo, &d, data).await.expect(201);
        }
        1 => {
            let loc = api.start_upload(repo).await;
            api.put_upload(&loc, &d, data, None).await.expect(201);
        }
        _ => {
            let mut loc = api.start_upload(repo).await;
            let step = data.len().div_ceil(4);
            let mut off = 0;
            while off < data.len() {
                let end = (off + step).min(data.len());
                loc = api.patch_ok(&loc, &data[off..end], off as u64).await;
                off = end;
            }
            api.close_ok(&loc, &d).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_pushes_of_one_blob() {
    let api = Arc::new(Api::start());
    let data = Arc::new(blob(1, 2 * 1024 * 1024 + 5));
    let d = sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let api = Arc::clone(&api);
        let data = Arc::clone(&data);
        // Half into one repository, half spread over others: the stored file is shared.
        let repo = if i % 2 == 0 {
            "same".to_owned()
        } else {
            format!("r{i}")
        };
        tasks.push(tokio::spawn(async move {
            push_with(&api, &repo, &data, i).await;
            repo
        }));
    }
    let mut repos = Vec::new();
    for t in tasks {
        repos.push(t.await.expect("push task panicked"));
    }
    repos.sort();
    repos.dedup();
    for repo in &repos {
        api.assert_blob(repo, &d, &data).await;
    }
    // A range read of the shared blob is right too.
    let r = api
        .get_blob("same", &d, Some("bytes=1000000-1000099"))
        .await;
    r.expect(206);
    assert!(r.body == data[1_000_000..1_000_100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_chunked_uploads_of_different_blobs() {
    let api = Arc::new(Api::start());
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let api = Arc::clone(&api);
        tasks.push(tokio::spawn(async move {
            let data = blob(100 + i, 300_000 + i as usize * 1000);
            push_with(&api, "repo", &data, 2).await;
            data
        }));
    }
    for t in tasks {
        let data = t.await.expect("upload task panicked");
        api.assert_blob("repo", &sha256(&data), &data).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_pushes_to_one_tag() {
    let api = Arc::new(Api::start());
    let images: Vec<Image> = (0..8).map(|i| Image::new(200 + i)).collect();
    for img in &images {
        for b in std::iter::once(&img.config).chain(&img.layers) {
            api.push_blob("repo", b).await;
        }
    }
    let mut tasks = Vec::new();
    for img in &images {
        let api = Arc::clone(&api);
        let body = img.manifest.clone();
        tasks.push(tokio::spawn(async move {
            let r = api.put_manifest("repo", "race", OCI_MANIFEST, &body).await;
            r.expect(201);
            r.digest().to_owned()
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.expect("manifest task panicked"));
    }
    for (img, d) in images.iter().zip(&digests) {
        assert_eq!(&img.digest, d);
        api.assert_manifest("repo", &img.digest, OCI_MANIFEST, &img.manifest)
            .await;
    }
    // The tag ends at exactly one of them, consistently for GET and HEAD.
    let g = api.manifest(Method::GET, "repo", "race").await;
    g.expect(200);
    let winner = images
        .iter()
        .find(|i| i.digest == g.digest())
        .unwrap_or_else(|| panic!("tag points at {}, none of the pushed manifests", g.digest()));
    assert!(
        g.body == winner.manifest,
        "tag body differs from its digest's manifest"
    );
    api.assert_manifest("repo", "race", OCI_MANIFEST, &winner.manifest)
        .await;
    let r = api.get("/v2/repo/tags/list").await;
    r.expect(200);
    assert_eq!(r.json()["tags"], serde_json::json!(["race"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_chunks_on_one_session() {
    // Several clients send a chunk for the same offset of one session at once. Chunks "MUST be
    // uploaded in order": exactly one is taken, the others get 416, and the blob is the prefix
    // plus the winner's bytes.
    let api = Arc::new(Api::start());
    let prefix = blob(300, 10_000);
    let loc = api.start_upload("repo").await;
    let loc = Arc::new(api.patch_ok(&loc, &prefix, 0).await);
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let api = Arc::clone(&api);
        let loc = Arc::clone(&loc);
        tasks.push(tokio::spawn(async move {
            let chunk = blob(400 + i, 50_000);
            let r = api.patch(&loc, &chunk, Some(10_000)).await;
            (
                r.status.as_u16(),
                chunk,
                r.header("location").map(str::to_owned),
            )
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (status, chunk, location) = t.await.expect("patch task panicked");
        match status {
            202 => winners.push((chunk, location.expect("Location on a 202"))),
            416 => {}
            s => panic!("racing PATCH answered {s}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "{} racing chunks were all accepted",
        winners.len()
    );
    let (chunk, location) = winners.pop().expect("one winner");
    let whole = [prefix, chunk].concat();
    let d = sha256(&whole);
    api.close_ok(&api.url(&location), &d).await;
    api.assert_blob("repo", &d, &whole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_pushes_and_deletes_of_one_blob_stay_consistent() {
    // The stored file is shared between repositories; deleting links while others push the
    // same bytes must never leave a repository whose HEAD says 200 but whose GET fails or
    // serves other bytes.
    let api = Arc::new(Api::start());
    let data = Arc::new(blob(500, 256 * 1024));
    let d = sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let api = Arc::clone(&api);
        let data = Arc::clone(&data);
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let repo = format!("r{}", i % 2);
            for round in 0..4 {
                if (i + round) % 2 == 0 {
                    push_with(&api, &repo, &data, i + round).await;
                } else {
                    let r = api.delete(&format!("/v2/{repo}/blobs/{d}")).await;
                    assert!(
                        matches!(r.status.as_u16(), 202 | 404),
                        "{}: {}",
                        r.what,
                        r.status
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("push/delete task panicked");
    }
    for repo in ["r0", "r1"] {
        let h = api.head(&format!("/v2/{repo}/blobs/{d}")).await;
        match h.status.as_u16() {
            200 => api.assert_blob(repo, &d, &data).await,
            404 => api.assert_no_blob(repo, &d).await,
            s => panic!("{}: {s}", h.what),
        }
        // Whatever the race left, a fresh push makes the blob whole again.
        api.push_blob(repo, &data).await;
        api.assert_blob(repo, &d, &data).await;
    }
}
