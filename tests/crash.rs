//! Crash safety: kill -9 the gateway while eight clients push blobs (monolithic and chunked) and
//! manifests, restart it on the same data directory, and check that everything it acknowledged is
//! there and verifies, everything it reports is complete, and interrupted uploads either resume to a
//! correct blob or are gone. Five rounds.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::support::{Gateway, noise};

fn digest_of(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// What the gateway acknowledged, and uploads it had started when it died.
#[derive(Default)]
struct Ledger {
    blobs: Vec<(String, String)>,
    manifests: Vec<(String, String, String)>,
    open_uploads: Vec<(String, Vec<u8>)>,
}

/// Pushes blobs and manifests until the gateway stops answering.
async fn pusher(base: String, task: u64, round: u64, ledger: Arc<Mutex<Ledger>>) {
    let c = Client::new();
    let repo = format!("crash/p{task}");
    for i in 0.. {
        let seed = round * 1_000_000 + task * 1000 + i;
        let layer = noise(10_000 + (seed as usize * 7919) % 3_000_000, seed);
        let config =
            serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed}))
                .unwrap();
        let mut ok = true;
        for (n, blob) in [&config, &layer].into_iter().enumerate() {
            let d = digest_of(blob);
            let chunked = (seed + n as u64).is_multiple_of(2);
            let pushed = if chunked {
                push_chunked(&c, &base, &repo, blob, &d, &ledger).await
            } else {
                c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                    .body(blob.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::CREATED)
            };
            if !pushed {
                ok = false;
                break;
            }
            ledger.lock().unwrap().blobs.push((repo.clone(), d));
        }
        if !ok {
            return;
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let tag = format!("r{round}-{i}");
        let put = c
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(manifest.clone())
            .send()
            .await;
        match put {
            Ok(r) if r.status() == StatusCode::CREATED => {
                ledger
                    .lock()
                    .unwrap()
                    .manifests
                    .push((repo.clone(), tag, digest_of(&manifest)));
            }
            _ => return,
        }
    }
}

/// Three PATCHes and a PUT; records the upload as open until it is finished.
async fn push_chunked(
    c: &Client,
    base: &str,
    repo: &str,
    blob: &[u8],
    d: &str,
    ledger: &Mutex<Ledger>,
) -> bool {
    let Ok(r) = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
    else {
        return false;
    };
    let Some(loc) = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return false;
    };
    let url = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    ledger
        .lock()
        .unwrap()
        .open_uploads
        .push((url.clone(), blob.to_vec()));
    let third = blob.len() / 3 + 1;
    let mut start = 0;
    for chunk in blob.chunks(third) {
        let end = start + chunk.len() - 1;
        let sent = c
            .patch(&url)
            .header("Content-Range", format!("{start}-{end}"))
            .header("Content-Type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .await;
        if !sent.is_ok_and(|r| r.status() == StatusCode::ACCEPTED) {
            return false;
        }
        start = end + 1;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let done = c.put(format!("{url}{sep}digest={d}")).send().await;
    if !done.is_ok_and(|r| r.status() == StatusCode::CREATED) {
        return false;
    }
    ledger
        .lock()
        .unwrap()
        .open_uploads
        .retain(|(u, _)| *u != url);
    true
}

async fn get_ok(c: &Client, url: &str) -> Vec<u8> {
    let r = c
        .get(url)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "GET {url}");
    r.bytes().await.unwrap().to_vec()
}

/// Everything the gateway reports must be complete and verify.
async fn check_reported(c: &Client, base: &str, repos: &BTreeSet<String>) {
    for repo in repos {
        let r = c
            .get(format!("{base}/v2/{repo}/tags/list"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::NOT_FOUND {
            continue;
        }
        let tags: serde_json::Value = r.json().await.unwrap();
        for tag in tags["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().unwrap();
            let m = get_ok(c, &format!("{base}/v2/{repo}/manifests/{tag}")).await;
            let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
            let mut blobs = vec![v["config"].clone()];
            blobs.extend(v["layers"].as_array().unwrap().iter().cloned());
            for b in blobs {
                let d = b["digest"].as_str().unwrap();
                let bytes = get_ok(c, &format!("{base}/v2/{repo}/blobs/{d}")).await;
                assert_eq!(
                    bytes.len() as u64,
                    b["size"].as_u64().unwrap(),
                    "{repo} {tag} {d} size"
                );
                assert_eq!(digest_of(&bytes), d, "{repo} {tag}: blob {d} corrupt");
            }
        }
    }
}

fn check_blob_files(dir: &Path) {
    let root = dir.join("blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(&root) else {
        return;
    };
    for p in prefixes.flatten() {
        for f in std::fs::read_dir(p.path()).unwrap().flatten() {
            let name = f.file_name().into_string().unwrap();
            let bytes = std::fs::read(f.path()).unwrap();
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                name,
                "blob file {name} does not match its name"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_pushes_loses_nothing_acknowledged() {
    let mut g = Gateway::start();
    let c = Client::new();
    let repos: BTreeSet<String> = (0..8).map(|t| format!("crash/p{t}")).collect();
    let mut all = Ledger::default();
    for round in 0..5u64 {
        let base = g.url();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let tasks: Vec<_> = (0..8)
            .map(|t| tokio::spawn(pusher(base.clone(), t, round, ledger.clone())))
            .collect();
        // Deterministic but varied moments: 300–1100 ms into the round.
        tokio::time::sleep(Duration::from_millis(300 + (round * 397) % 800)).await;
        g.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        g.restart();
        let base = g.url();
        let mut l = std::mem::take(&mut *ledger.lock().unwrap());

        // Interrupted chunked uploads: resumable from the offset the gateway reports, or gone.
        for (url, data) in l.open_uploads.drain(..) {
            let url = url.replace(&base_of(&url), &base);
            let r = c.get(&url).send().await.unwrap();
            match r.status() {
                StatusCode::NOT_FOUND => {}
                StatusCode::NO_CONTENT => {
                    let range = r.headers()["range"].to_str().unwrap().to_owned();
                    let end: u64 = range.split('-').nth(1).unwrap().parse().unwrap();
                    let offset = if range == "0-0" { 0 } else { end + 1 };
                    assert!(
                        offset <= data.len() as u64,
                        "offset {offset} beyond what was sent"
                    );
                    let d = digest_of(&data);
                    let sep = if url.contains('?') { '&' } else { '?' };
                    let mut put = c.put(format!("{url}{sep}digest={d}"));
                    if offset < data.len() as u64 {
                        put = put
                            .header("Content-Range", format!("{offset}-{}", data.len() - 1))
                            .body(data[offset as usize..].to_vec());
                    }
                    let done = put.send().await.unwrap();
                    assert_eq!(
                        done.status(),
                        StatusCode::CREATED,
                        "resumed upload did not complete"
                    );
                }
                s => panic!("interrupted upload answered {s}"),
            }
        }
        all.blobs.append(&mut l.blobs);
        all.manifests.append(&mut l.manifests);

        for (repo, d) in &all.blobs {
            let bytes = get_ok(&c, &format!("{base}/v2/{repo}/blobs/{d}")).await;
            assert_eq!(
                &digest_of(&bytes),
                d,
                "acknowledged blob {d} corrupt after kill -9"
            );
        }
        for (repo, tag, d) in &all.manifests {
            let m = get_ok(&c, &format!("{base}/v2/{repo}/manifests/{tag}")).await;
            assert_eq!(
                &digest_of(&m),
                d,
                "acknowledged manifest {repo}:{tag} lost or changed"
            );
        }
        check_reported(&c, &base, &repos).await;
        check_blob_files(&g.data_dir);
    }
    assert!(
        !all.manifests.is_empty(),
        "no push completed in any round: the test tested nothing"
    );
}

/// `http://host:port` of a URL.
fn base_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    format!("http://{}", rest.split('/').next().unwrap_or(""))
}
