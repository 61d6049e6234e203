//! Crash safety: kill -9 the gateway while eight clients push blobs (monolithic, POST+PUT and
//! chunked, up to 4 MiB) and manifests (images and indexes), restart it on the same data
//! directory, and check that everything it acknowledged is there and verifies, everything it
//! reports (catalog, tags, manifests, the blob files on disk) is complete and verifies, and
//! interrupted uploads either resume, from an offset between what was acknowledged and what was
//! sent, to a correct blob, or are gone. Twenty rounds in a row. Besides the pushers, each round holds
//! requests open across the kill on purpose (an idle upload, a chunk and a monolithic push cut
//! off mid-body), so every round has work in flight whatever the timing.
//!
//! The kill moments and blob sizes come from a seed: `FLOTILLA_CRASH_SEED=<n>` repeats a run's
//! choices (the interleaving of eight pushers is the scheduler's). Runs against distribution too
//! (see `clients::registry`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use reqwest::{Body, Client, StatusCode};
use serde_json::{Value, json};

use crate::clients::digest_of;
use crate::clients::registry::TestRegistry;
use crate::support::noise;

const PUSHERS: u64 = 8;
/// The issue asks for twenty kills in a row: state left by one crash must survive the next ones.
const ROUNDS: u64 = 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// splitmix64: small, seedable, good enough to pick sizes and moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A chunked upload the gateway had started when it died.
struct OpenUpload {
    /// Who left it open: `pusher`, `idle` or `cut` (see `staller`), for the summary.
    kind: &'static str,
    /// The most recent `Location` the gateway gave.
    url: String,
    data: Bytes,
    /// Bytes the gateway acknowledged (`202`): it must still hold at least these.
    acked: usize,
    /// Bytes sent so far, acknowledged or not: it may hold at most these.
    sent: usize,
    /// Whether the final `PUT` went out: then the upload may be complete, and gone.
    put_sent: bool,
}

/// What the gateway acknowledged with `201`, and uploads in flight.
#[derive(Default)]
struct Ledger {
    /// `(repo, digest, size)`.
    blobs: Vec<(String, String, u64)>,
    /// `(repo, tag, digest)`.
    manifests: Vec<(String, String, String)>,
    open: BTreeMap<u64, OpenUpload>,
    next_key: u64,
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn location(r: &reqwest::Response, base: &str) -> Option<String> {
    let l = r.headers().get("location")?.to_str().ok()?;
    Some(absolute(base, l))
}

fn with_digest(url: &str, d: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={d}")
}

/// Records a new open upload; returns its key.
fn open_upload(ledger: &Mutex<Ledger>, kind: &'static str, url: &str, data: &Bytes) -> u64 {
    let mut l = ledger.lock().unwrap();
    l.next_key += 1;
    let key = l.next_key;
    let open = OpenUpload {
        kind,
        url: url.to_owned(),
        data: data.clone(),
        acked: 0,
        sent: 0,
        put_sent: false,
    };
    l.open.insert(key, open);
    key
}

fn update(ledger: &Mutex<Ledger>, key: u64, f: impl FnOnce(&mut OpenUpload)) {
    f(ledger.lock().unwrap().open.get_mut(&key).unwrap());
}

/// Pushes one blob in the way `mode` says: 0 monolithic POST, 1 POST + PUT with the body,
/// 2 PATCHes + empty PUT, 3 PATCHes with the last chunk on the PUT. True once answered `201`.
async fn push_blob(
    c: &Client,
    base: &str,
    repo: &str,
    blob: Bytes,
    mode: u64,
    ledger: &Mutex<Ledger>,
) -> bool {
    let d = digest_of(&blob);
    let uploads = format!("{base}/v2/{repo}/blobs/uploads/");
    if mode == 0 {
        let r = c.post(with_digest(&uploads, &d)).body(blob).send().await;
        return r.is_ok_and(|r| r.status() == StatusCode::CREATED);
    }
    let Ok(r) = c.post(&uploads).send().await else {
        return false;
    };
    let Some(mut url) = location(&r, base) else {
        return false;
    };
    if mode == 1 {
        let r = c.put(with_digest(&url, &d)).body(blob).send().await;
        return r.is_ok_and(|r| r.status() == StatusCode::CREATED);
    }
    let key = open_upload(ledger, "pusher", &url, &blob);
    let chunks = 1 + (mode as usize + blob.len()) % 4;
    let size = blob.len().div_ceil(chunks).max(1);
    let pieces: Vec<(usize, usize)> = (0..blob.len())
        .step_by(size)
        .map(|s| (s, (s + size).min(blob.len())))
        .collect();
    let (patches, last) = match (mode, pieces.split_last()) {
        (3, Some((last, rest))) => (rest, Some(*last)),
        _ => (&pieces[..], None),
    };
    for &(s, e) in patches {
        update(ledger, key, |u| u.sent = e);
        let r = c
            .patch(&url)
            .header("Content-Range", format!("{s}-{}", e - 1))
            .header("Content-Type", "application/octet-stream")
            .body(blob.slice(s..e))
            .send()
            .await;
        let Ok(r) = r else { return false };
        if r.status() != StatusCode::ACCEPTED {
            return false;
        }
        let Some(next) = location(&r, base) else {
            return false;
        };
        url = next;
        update(ledger, key, |u| {
            u.url = url.clone();
            u.acked = e;
        });
    }
    let mut put = c.put(with_digest(&url, &d));
    update(ledger, key, |u| u.put_sent = true);
    if let Some((s, e)) = last {
        update(ledger, key, |u| u.sent = e);
        put = put
            .header("Content-Range", format!("{s}-{}", e - 1))
            .header("Content-Type", "application/octet-stream")
            .body(blob.slice(s..e));
    }
    if !put
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::CREATED)
    {
        return false;
    }
    ledger.lock().unwrap().open.remove(&key);
    true
}

/// A body that sends `data` in 64 KiB pieces and then never ends.
fn stalling_body(data: Bytes) -> Body {
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
        .step_by(64 << 10)
        .map(|s| Ok(data.slice(s..(s + (64 << 10)).min(data.len()))))
        .collect();
    Body::wrap_stream(futures::stream::iter(pieces).chain(futures::stream::pending()))
}

/// Requests that are open when the kill comes, whatever the timing: an upload with one
/// acknowledged chunk and a second chunk cut off mid-body, an upload with nothing sent, and a
/// monolithic push cut off mid-body (its temporary file must be gone after the restart).
async fn staller(base: String, blob: Bytes, ledger: Arc<Mutex<Ledger>>) {
    let c = flotilla_node::gateway_http::client_builder()
        .build()
        .unwrap();
    let repo = "crash/stalled";
    let uploads = format!("{base}/v2/{repo}/blobs/uploads/");
    let d = digest_of(&blob);
    let monolithic = c
        .post(with_digest(&uploads, &d))
        .body(stalling_body(blob.slice(..blob.len() / 2)))
        .send();
    let idle = async {
        let r = c.post(&uploads).send().await.ok()?;
        open_upload(&ledger, "idle", &location(&r, &base)?, &blob);
        Some(())
    };
    let cut = async {
        let r = c.post(&uploads).send().await.ok()?;
        let url = location(&r, &base)?;
        let key = open_upload(&ledger, "cut", &url, &blob);
        let first = blob.len() / 3;
        update(&ledger, key, |u| u.sent = first);
        let r = c
            .patch(&url)
            .header("Content-Range", format!("0-{}", first - 1))
            .header("Content-Type", "application/octet-stream")
            .body(blob.slice(..first))
            .send()
            .await
            .ok()?;
        if r.status() != StatusCode::ACCEPTED {
            return None;
        }
        let url = location(&r, &base)?;
        update(&ledger, key, |u| {
            u.url = url.clone();
            u.acked = first;
            u.sent = blob.len() - 1;
        });
        // No Content-Range: a streamed append, cut off somewhere in the rest.
        let _ = c
            .patch(&url)
            .header("Content-Type", "application/octet-stream")
            .body(stalling_body(blob.slice(first..blob.len() - 1)))
            .send()
            .await;
        Some(())
    };
    let _ = futures::join!(monolithic, idle, cut);
}

async fn put_manifest(c: &Client, base: &str, repo: &str, tag: &str, m: &Value) -> Option<String> {
    let body = serde_json::to_vec(m).unwrap();
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", m["mediaType"].as_str().unwrap())
        .body(body.clone())
        .send()
        .await
        .ok()?;
    (r.status() == StatusCode::CREATED).then(|| digest_of(&body))
}

fn descriptor(media_type: &str, d: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": d, "size": size})
}

/// Pushes images (and now and then an index of the last two) until the gateway stops answering.
async fn pusher(
    base: String,
    task: u64,
    round: u64,
    seed: u64,
    pool: Bytes,
    ledger: Arc<Mutex<Ledger>>,
) {
    let c = flotilla_node::gateway_http::client_builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let repo = format!("crash/p{task}");
    let mut rng = Rng(seed ^ (round << 40) ^ (task << 32));
    let mut recent: Vec<Value> = Vec::new();
    for i in 0.. {
        let config = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers"}, "round": round, "task": task, "i": i}))
        .unwrap();
        let mut blobs = vec![(OCI_CONFIG, Bytes::from(config))];
        for _ in 0..1 + rng.below(2) {
            let size = match rng.below(8) {
                0 => rng.below(1024) as usize,
                _ => rng.below(4 << 20) as usize,
            };
            // Slices of one noise pool: unique content without generating it per blob.
            let start = rng.below((pool.len() - size) as u64) as usize;
            blobs.push((OCI_LAYER, pool.slice(start..start + size)));
        }
        let mut descs = Vec::new();
        for (media_type, blob) in blobs {
            let (d, len) = (digest_of(&blob), blob.len());
            // A 1-byte first chunk would make `Range: 0-0` ambiguous on resume (0 or 1 byte?).
            let mode = if blob.len() < 8 {
                rng.below(2)
            } else {
                rng.below(4)
            };
            if !push_blob(&c, &base, &repo, blob, mode, &ledger).await {
                return;
            }
            let acked = (repo.clone(), d.clone(), len as u64);
            ledger.lock().unwrap().blobs.push(acked);
            descs.push(descriptor(media_type, &d, len));
        }
        let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": descs[0], "layers": descs[1..]});
        let tag = format!("r{round}-{i}");
        let Some(d) = put_manifest(&c, &base, &repo, &tag, &m).await else {
            return;
        };
        let size = serde_json::to_vec(&m).unwrap().len();
        ledger
            .lock()
            .unwrap()
            .manifests
            .push((repo.clone(), tag.clone(), d.clone()));
        recent.push(descriptor(OCI_MANIFEST, &d, size));
        if recent.len() >= 2 && i % 3 == 2 {
            let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                "manifests": recent[recent.len() - 2..]});
            let tag = format!("{tag}-index");
            let Some(d) = put_manifest(&c, &base, &repo, &tag, &index).await else {
                return;
            };
            ledger
                .lock()
                .unwrap()
                .manifests
                .push((repo.clone(), tag, d));
        }
    }
}

/// Verifies what a restarted registry serves. A blob is checked once per round: by a full `GET`
/// and hash when `full`, else by `HEAD` (presence, length, digest header); the blob files on disk
/// are hashed every round anyway.
struct Checker {
    c: Client,
    base: String,
    verified: Mutex<HashSet<String>>,
}

impl Checker {
    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let url = format!("{}{path}", self.base);
        let r = self
            .c
            .get(&url)
            .header("Accept", ACCEPT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let (status, headers) = (r.status(), r.headers().clone());
        (status, headers, r.bytes().await.unwrap().to_vec())
    }

    /// A blob the registry must serve, complete and uncorrupted.
    async fn blob(&self, repo: &str, d: &str, size: u64, full: bool, why: &str) {
        if !self.verified.lock().unwrap().insert(format!("{repo}@{d}")) {
            return;
        }
        if !full {
            let url = format!("{}/v2/{repo}/blobs/{d}", self.base);
            let r = self.c.head(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{why}: HEAD {repo} blob {d}");
            let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                header("content-length"),
                Some(size.to_string()),
                "{why}: {d}"
            );
            assert_eq!(header("docker-content-digest").as_deref(), Some(d), "{why}");
            return;
        }
        let (status, _, bytes) = self.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(status, StatusCode::OK, "{why}: GET {repo} blob {d}");
        assert_eq!(bytes.len() as u64, size, "{why}: {repo} blob {d} length");
        assert_eq!(digest_of(&bytes), d, "{why}: {repo} blob {d} corrupt");
    }

    /// A manifest the registry must serve under `reference`; returns its digest. Verifies the
    /// bytes, the same bytes by digest, and (recursively) everything it references.
    async fn manifest(&self, repo: &str, reference: &str, why: &str) -> String {
        let (status, headers, bytes) = self.get(&format!("/v2/{repo}/manifests/{reference}")).await;
        assert_eq!(status, StatusCode::OK, "{why}: GET {repo}:{reference}");
        let d = digest_of(&bytes);
        let header = headers
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap());
        assert_eq!(
            header,
            Some(d.as_str()),
            "{why}: {repo}:{reference} bytes vs digest"
        );
        let (status, _, by_digest) = self.get(&format!("/v2/{repo}/manifests/{d}")).await;
        assert_eq!(status, StatusCode::OK, "{why}: GET {repo}@{d}");
        assert!(by_digest == bytes, "{why}: {repo}@{d} serves other bytes");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let blobs = v["config"].as_object().map(|_| &v["config"]).into_iter();
        for b in blobs.chain(v["layers"].as_array().into_iter().flatten()) {
            let (bd, size) = (b["digest"].as_str().unwrap(), b["size"].as_u64().unwrap());
            self.blob(
                repo,
                bd,
                size,
                true,
                &format!("{why}: {repo}:{reference} names it"),
            )
            .await;
        }
        for child in v["manifests"].as_array().into_iter().flatten() {
            let cd = child["digest"].as_str().unwrap();
            let got = Box::pin(self.manifest(repo, cd, why)).await;
            assert_eq!(got, cd);
        }
        d
    }

    /// Everything the registry lists must resolve and verify.
    async fn reported(&self, known: &BTreeSet<String>) {
        let (status, _, body) = self.get("/v2/_catalog").await;
        assert_eq!(status, StatusCode::OK, "catalog");
        let catalog: Value = serde_json::from_slice(&body).unwrap();
        let mut repos = known.clone();
        for r in catalog["repositories"].as_array().into_iter().flatten() {
            repos.insert(r.as_str().unwrap().to_owned());
        }
        for repo in &repos {
            let (status, _, body) = self.get(&format!("/v2/{repo}/tags/list")).await;
            if status == StatusCode::NOT_FOUND {
                continue;
            }
            assert_eq!(status, StatusCode::OK, "tags of {repo}");
            let tags: Value = serde_json::from_slice(&body).unwrap();
            for tag in tags["tags"].as_array().into_iter().flatten() {
                let tag = tag.as_str().unwrap();
                self.manifest(repo, tag, "listed tag").await;
            }
        }
    }

    /// An upload that was in flight at the kill: `204` and resumable from the offset the
    /// registry reports, or `404`. Never anything else, never a wrong blob.
    async fn resume(&self, repo: &str, old_base: &str, up: OpenUpload) -> bool {
        let url = up.url.replacen(old_base, &self.base, 1);
        let r = self.c.get(&url).send().await.unwrap();
        match r.status() {
            StatusCode::NOT_FOUND => return false,
            StatusCode::NO_CONTENT => {}
            s => panic!("interrupted upload {url} answered {s}, not 204 or 404"),
        }
        let range = r.headers()["range"].to_str().unwrap().to_owned();
        let end: usize = range.rsplit('-').next().unwrap().parse().unwrap();
        // `0-0` is also what an empty upload answers; re-sending byte 0 is then refused.
        let offset = if range == "0-0" { 0 } else { end + 1 };
        assert!(
            up.acked <= offset && offset <= up.sent,
            "upload {url} resumes at {offset}: {} bytes were acknowledged, {} sent",
            up.acked,
            up.sent
        );
        let next = location(&r, &self.base).unwrap_or(url);
        let d = digest_of(&up.data);
        let mut put = self.c.put(with_digest(&next, &d));
        if offset < up.data.len() {
            put = put
                .header("Content-Range", format!("{offset}-{}", up.data.len() - 1))
                .header("Content-Type", "application/octet-stream")
                .body(up.data[offset..].to_vec());
        }
        let done = put.send().await.unwrap();
        assert_eq!(
            done.status(),
            StatusCode::CREATED,
            "finishing resumed upload {next}"
        );
        let size = up.data.len() as u64;
        self.blob(repo, &d, size, true, "resumed upload").await;
        true
    }
}

fn seed() -> u64 {
    match std::env::var("FLOTILLA_CRASH_SEED") {
        Ok(s) => s.parse().expect("FLOTILLA_CRASH_SEED must be a u64"),
        Err(_) => 0x0F10_7111_A5EE_D000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_pushes_loses_nothing_acknowledged() {
    let seed = seed();
    eprintln!("crash test seed {seed} (FLOTILLA_CRASH_SEED={seed} repeats its choices)");
    let mut rng = Rng(seed);
    let pool = Bytes::from(noise(16 << 20, seed));
    let mut reg = TestRegistry::start();
    let known: BTreeSet<String> = (0..PUSHERS).map(|t| format!("crash/p{t}")).collect();
    let mut all = Ledger::default();
    // (kind, resumed?) → count.
    let mut outcomes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let base = reg.url();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let tasks: Vec<_> = (0..PUSHERS)
            .map(|t| {
                let (pool, ledger) = (pool.clone(), ledger.clone());
                tokio::spawn(pusher(base.clone(), t, round, seed, pool, ledger))
            })
            .collect();
        let start = rng.below(8 << 20) as usize;
        let stalled = pool.slice(start..start + (1 << 20) + round as usize);
        let staller = tokio::spawn(staller(base.clone(), stalled, ledger.clone()));
        tokio::time::sleep(Duration::from_millis(300 + rng.below(2200))).await;
        if let Some(tmp) = reg.temp_files() {
            // The stalled monolithic push is in there: the check after the restart is not empty.
            assert!(
                !tmp.is_empty(),
                "no temporary file for a monolithic push in flight"
            );
        }
        tokio::task::block_in_place(|| reg.kill9());
        for t in tasks {
            t.await.unwrap();
        }
        staller.await.unwrap();
        tokio::task::block_in_place(|| reg.restart());
        let leftovers = reg.temp_files().unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "temporary files survived a restart: {leftovers:?}"
        );

        let check = Checker {
            verified: Mutex::new(HashSet::new()),
            c: flotilla_node::gateway_http::client_builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            base: reg.url(),
        };
        let mut l = std::mem::take(&mut *ledger.lock().unwrap());
        for (_, up) in std::mem::take(&mut l.open) {
            let repo = up.url.split("/v2/").nth(1).unwrap();
            let repo = repo.split("/blobs/uploads/").next().unwrap().to_owned();
            let (kind, put_sent) = (up.kind, up.put_sent);
            let outcome = match (check.resume(&repo, &base, up).await, put_sent) {
                (true, _) => "resumed",
                (false, true) => "gone after PUT",
                (false, false) => "gone",
            };
            *outcomes.entry((kind, outcome)).or_default() += 1;
        }
        // This round's blobs fully; older ones fully again only after the last kill.
        let last = round + 1 == ROUNDS;
        for (repo, d, size) in &l.blobs {
            check.blob(repo, d, *size, true, "blob acknowledged").await;
        }
        for (repo, d, size) in &all.blobs {
            check
                .blob(repo, d, *size, last, "blob acknowledged earlier")
                .await;
        }
        all.blobs.append(&mut l.blobs);
        all.manifests.append(&mut l.manifests);

        for (repo, tag, d) in &all.manifests {
            let got = check.manifest(repo, tag, "acknowledged manifest").await;
            assert_eq!(&got, d, "acknowledged manifest {repo}:{tag} changed");
        }
        check.reported(&known).await;

        let files = reg.blob_files();
        assert!(
            all.blobs.is_empty() || !files.is_empty(),
            "blobs were acknowledged but no blob file is on disk"
        );
        for (hex, path) in files {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                digest_of(&bytes),
                format!("sha256:{hex}"),
                "blob file {} does not hash to its name",
                path.display()
            );
        }
        eprintln!(
            "round {round}: {} blobs and {} manifests acknowledged so far; interrupted uploads \
             {outcomes:?}; {:.1} s",
            all.blobs.len(),
            all.manifests.len(),
            started.elapsed().as_secs_f64()
        );
    }
    assert!(
        all.manifests.len() >= ROUNDS as usize,
        "only {} manifests acknowledged in {ROUNDS} rounds: the test tested too little",
        all.manifests.len()
    );
}
