//! The OCI endpoint over loopback HTTP, with blobs from in-memory peers and a fake gateway.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use super::{OciState, router};
use crate::fetch::testkit::{MANIFEST, TestBlob};
use crate::fetch::tests::Rig;

/// The endpoint of `rig`'s node, listening on loopback.
struct Node {
    addr: SocketAddr,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Node {
    async fn start(rig: &Rig) -> Node {
        Node::start_with(rig, |s| s).await
    }

    async fn start_with(rig: &Rig, tune: impl FnOnce(OciState) -> OciState) -> Node {
        let state = OciState::new(rig.fetcher.clone(), rig.gw.url(), rig.local.source()).unwrap();
        // As the node serves it: with the peer's address, which the prefetch route reads.
        let app = router(tune(state)).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Node {
            addr,
            http: crate::gateway_http::client_builder().build().unwrap(),
            server,
        }
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.addr))
            .timeout(Duration::from_secs(20))
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.req(Method::GET, path).send().await.unwrap()
    }
}

fn header_str<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn error_code(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn base_answers_the_version_check() {
    let rig = Rig::new().await;
    let node = Node::start(&rig).await;
    for path in ["/v2/", "/v2"] {
        let res = node.get(path).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            header_str(&res, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(res.text().await.unwrap(), "{}");
    }
}

#[tokio::test]
async fn blobs_stream_from_the_swarm() {
    let rig = Rig::new().await;
    let blob = rig.blob(20 * 16384 + 333, 16384, 21);
    let n = blob.pieces();
    rig.peer(&blob, 0..n).await;
    rig.peer(&blob, 0..n / 2).await;
    let node = Node::start(&rig).await;
    let path = format!("/v2/library/alpine/blobs/{}", blob.digest);
    let size = blob.data.len() as u64;

    // HEAD: from the table alone, nothing downloaded.
    let res = node.req(Method::HEAD, &path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_str(&res, "content-length"), Some(&*size.to_string()));
    assert_eq!(
        header_str(&res, "docker-content-digest"),
        Some(blob.digest.as_str())
    );
    assert_eq!(header_str(&res, "accept-ranges"), Some("bytes"));
    assert_eq!(rig.fetcher.totals().peer_bytes, 0);
    assert_eq!(rig.net.total_opens(), 0);

    // Two clients at once share one download.
    let (a, b) = tokio::join!(node.get(&path), node.get(&path));
    for res in [a, b] {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header_str(&res, "content-length"), Some(&*size.to_string()));
        let body = res.bytes().await.unwrap();
        assert!(body[..] == blob.data[..], "body differs");
    }
    // The driver may still be hearing who delivered the last piece.
    for _ in 0..100 {
        if rig.fetcher.totals().peer_bytes == size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rig.fetcher.totals().peer_bytes, size);
    assert_eq!(
        rig.gw
            .state
            .table_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // A range across pieces.
    let res = node
        .req(Method::GET, &path)
        .header(header::RANGE, "bytes=16000-40000")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_str(&res, "content-range"),
        Some(&*format!("bytes 16000-40000/{size}"))
    );
    assert!(res.bytes().await.unwrap()[..] == blob.data[16000..=40000]);

    // A suffix range.
    let res = node
        .req(Method::GET, &path)
        .header(header::RANGE, "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert!(res.bytes().await.unwrap()[..] == blob.data[blob.data.len() - 10..]);

    // Past the end.
    let res = node
        .req(Method::GET, &path)
        .header(header::RANGE, format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header_str(&res, "content-range"),
        Some(&*format!("bytes */{size}"))
    );
    assert_eq!(error_code(res).await, "RANGE_INVALID");

    // A matching ETag.
    let res = node
        .req(Method::GET, &path)
        .header(header::IF_NONE_MATCH, format!("\"{}\"", blob.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn a_blob_streams_as_its_pieces_arrive_from_the_origin() {
    let rig = Rig::with(|c| c.scheduler.origin_grace = Duration::ZERO).await;
    let blob = rig.blob(9 * 4096 + 5, 4096, 22);
    let node = Node::start(&rig).await;
    let res = node
        .get(&format!("/v2/some/deep/name/blobs/{}", blob.digest))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap()[..] == blob.data[..]);
    assert_eq!(rig.gw.origin_bytes(), blob.data.len() as u64);
}

#[tokio::test]
async fn unknown_blobs_and_bad_paths() {
    let rig = Rig::new().await;
    let node = Node::start(&rig).await;
    let unknown = TestBlob::new(100, 64, 23, &rig.key);
    let res = node
        .get(&format!("/v2/library/alpine/blobs/{}", unknown.digest))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(res).await, "BLOB_UNKNOWN");
    let res = node
        .req(
            Method::HEAD,
            &format!("/v2/library/alpine/blobs/{}", unknown.digest),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let res = node.get("/v2/library/alpine/blobs/sha256:nothex").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "DIGEST_INVALID");
    let res = node.get("/v2/Bad/Name/manifests/latest").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "NAME_INVALID");
    for path in ["/", "/v1/x", "/v2/library/alpine/nothing/here"] {
        let res = node.get(path).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            header_str(&res, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(error_code(res).await, "UNSUPPORTED");
    }
}

#[tokio::test]
async fn writes_are_refused() {
    let rig = Rig::new().await;
    let node = Node::start(&rig).await;
    let digest = TestBlob::new(10, 64, 24, &rig.key).digest;
    let cases = [
        (Method::POST, "/v2/library/alpine/blobs/uploads/".to_owned()),
        (
            Method::PATCH,
            "/v2/library/alpine/blobs/uploads/abc".to_owned(),
        ),
        (
            Method::PUT,
            "/v2/library/alpine/manifests/latest".to_owned(),
        ),
        (Method::DELETE, format!("/v2/library/alpine/blobs/{digest}")),
        (
            Method::DELETE,
            "/v2/library/alpine/manifests/latest".to_owned(),
        ),
        (
            Method::GET,
            "/v2/library/alpine/blobs/uploads/abc".to_owned(),
        ),
    ];
    for (method, path) in cases {
        let res = node
            .req(method.clone(), &path)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("push to the gateway")
        );
    }
    // Nothing reached the gateway.
    assert!(rig.gw.state.v2.lock().unwrap().is_empty());
}

#[tokio::test]
async fn manifests_and_listings_are_proxied() {
    let rig = Rig::new().await;
    let node = Node::start(&rig).await;
    let oci = "application/vnd.oci.image.manifest.v1+json";

    // containerd as a mirror: `ns` is dropped, `Accept` forwarded.
    let res = node
        .req(
            Method::GET,
            "/v2/library/alpine/manifests/latest?ns=docker.io",
        )
        .header(header::ACCEPT, oci)
        .header(header::ACCEPT, "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header_str(&res, "content-type"), Some(oci));
    let digest = flotilla_protocol::Digest::sha256_of(MANIFEST.as_bytes());
    assert_eq!(
        header_str(&res, "docker-content-digest"),
        Some(digest.as_str())
    );
    assert_eq!(
        header_str(&res, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    assert_eq!(res.text().await.unwrap(), MANIFEST);
    {
        let seen = rig.gw.state.v2.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(last.uri, "/v2/library/alpine/manifests/latest");
        assert_eq!(last.accept.len(), 2);
        assert_eq!(last.accept[0], oci);
    }

    // HEAD: the length, no body.
    let res = node
        .req(Method::HEAD, "/v2/library/alpine/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header_str(&res, "content-length"),
        Some(&*MANIFEST.len().to_string())
    );
    assert_eq!(
        rig.gw.state.v2.lock().unwrap().last().unwrap().method,
        Method::HEAD
    );

    // Errors pass through.
    let res = node.get("/v2/library/alpine/manifests/nope").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(res).await, "MANIFEST_UNKNOWN");

    // Listings keep their query and Link.
    let res = node
        .get("/v2/library/alpine/tags/list?n=1&ns=docker.io&last=a")
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header_str(&res, "link").unwrap().contains("rel=\"next\""));
    assert_eq!(
        rig.gw.state.v2.lock().unwrap().last().unwrap().uri,
        "/v2/library/alpine/tags/list?n=1&last=a"
    );
    let res = node.get("/v2/_catalog?n=5").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        rig.gw.state.v2.lock().unwrap().last().unwrap().uri,
        "/v2/_catalog?n=5"
    );
    let res = node
        .get(&format!(
            "/v2/library/alpine/referrers/{digest}?artifactType=x%2Fy"
        ))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        rig.gw.state.v2.lock().unwrap().last().unwrap().uri,
        format!("/v2/library/alpine/referrers/{digest}?artifactType=x%2Fy")
    );
}

#[tokio::test]
async fn an_unreachable_gateway_is_unavailable() {
    let rig = Rig::new().await;
    let state = OciState::new(
        rig.fetcher.clone(),
        "http://127.0.0.1:9",
        rig.local.source(),
    )
    .unwrap();
    let app = router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let res = crate::gateway_http::client_builder()
        .build()
        .unwrap()
        .get(format!("http://{addr}/v2/library/alpine/manifests/latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(res).await, "UNAVAILABLE");
    server.abort();
}

/// A client reading a blob gets the verified start of a piece while the rest of it still
/// arrives: the only peer holding the piece is itself receiving it (its own copy stalls half
/// way), passes on what has verified, and the node's endpoint streams that on at once.
#[tokio::test]
async fn a_blob_streams_block_by_block_while_its_piece_arrives() {
    use crate::ports::{PieceSink, PieceSource};
    use futures::StreamExt;

    const PIECE: u32 = 4 << 20;
    const FIRST: usize = 1536 << 10;
    // The uploader's copy stalls on purpose until the client has its first MiB. On a loaded
    // machine that can outlast a request's timeout or the rig's 5-s stall timeout, and the node
    // would take the piece from the origin (CI saw it twice): the origin refuses every blob
    // here, so the peer's arriving copy is the only source, however long anything takes.
    let rig = Rig::with(|c| c.stall_timeout = Duration::from_secs(60)).await;
    rig.gw
        .state
        .refuse_blobs
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let blob = rig.blob(PIECE as usize, PIECE, 23);
    // The uploader's store gets piece 0 part way: its first 1.5 MiB, verified block by block.
    let uploader = crate::fetch::testkit::TestStore::new().await;
    PieceSink::register(&*uploader.store, blob.signed.clone())
        .await
        .unwrap();
    let mut copy = PieceSink::receive(&*uploader.store, &blob.digest, 0).unwrap();
    copy.write(&blob.data[..FIRST]).await.unwrap();
    rig.net.add_peer(uploader.source());
    let node = Node::start(&rig).await;

    let res = node
        .get(&format!("/v2/library/alpine/blobs/{}", blob.digest))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.bytes_stream();
    let mut got = Vec::new();
    // The node's store publishes its copy 512 KiB at a time: at least 1 MiB of the 1.5 the
    // uploader has must reach the client while piece 0 is held whole nowhere.
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < 1 << 20 {
            got.extend_from_slice(&body.next().await.unwrap().unwrap());
        }
    })
    .await
    .expect("the start of the piece reaches the client while the piece arrives");
    assert!(got[..] == blob.data[..got.len()]);
    let local = PieceSource::held(&*rig.local.store, &blob.digest)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !local.have.borrow().get(0),
        "the node already holds the piece"
    );

    // The uploader's copy completes; so does the client's body, byte for byte.
    copy.write(&blob.data[FIRST..]).await.unwrap();
    copy.finish().await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
    })
    .await
    .expect("the body ends");
    assert!(got[..] == blob.data[..]);
    assert_eq!(rig.gw.origin_bytes(), 0);
}

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";

fn image_manifest(blobs: &[&TestBlob]) -> String {
    let desc = |b: &TestBlob, mt: &str| serde_json::json!({"mediaType": mt, "digest": b.digest.as_str(), "size": b.data.len()});
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": IMAGE,
        "config": desc(blobs[0], "application/vnd.oci.image.config.v1+json"),
        "layers": blobs[1..].iter().map(|b| desc(b, "application/vnd.oci.image.layer.v1.tar")).collect::<Vec<_>>(),
    })
    .to_string()
}

fn index_entry(manifest: &str, platform: Value) -> Value {
    serde_json::json!({
        "mediaType": IMAGE,
        "digest": flotilla_protocol::Digest::sha256_of(manifest.as_bytes()).as_str(),
        "size": manifest.len(),
        "platform": platform,
    })
}

async fn prefetch(node: &Node, body: Value) -> (StatusCode, Value) {
    let res = node
        .req(Method::POST, "/flotilla/v1/prefetch")
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

#[tokio::test]
async fn prefetch_fetches_one_platform_of_an_index_and_pins_it() {
    let rig = Rig::new().await;
    let config_amd = rig.blob(300, 4096, 31);
    let shared = rig.blob(5 * 4096 + 7, 4096, 32);
    let only_amd = rig.blob(3 * 4096, 4096, 33);
    let config_arm = rig.blob(200, 4096, 34);
    let only_arm = rig.blob(2 * 4096 + 1, 4096, 35);
    rig.peer(&shared, 0..shared.pieces()).await;
    let amd = image_manifest(&[&config_amd, &shared, &only_amd]);
    let arm = image_manifest(&[&config_arm, &shared, &only_arm]);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            index_entry(&arm, serde_json::json!({"os": "linux", "architecture": "arm64"})),
            index_entry(&amd, serde_json::json!({"os": "linux", "architecture": "amd64"})),
            index_entry(&amd, serde_json::json!({"os": "unknown", "architecture": "unknown"})),
        ],
    })
    .to_string();
    for m in [&amd, &arm] {
        let d = flotilla_protocol::Digest::sha256_of(m.as_bytes());
        rig.gw.add_manifest("team/app", d.as_str(), IMAGE, m);
    }
    rig.gw.add_manifest("team/app", "v1", INDEX, &index);
    let store = rig.local.store.clone();
    let node = Node::start_with(&rig, |s| {
        s.with_pinning(std::sync::Arc::new(move |d| {
            let store = store.clone();
            Box::pin(async move { store.pin(&d).await.map_err(|e| e.to_string()) })
        }))
    })
    .await;

    let (status, report) = prefetch(
        &node,
        serde_json::json!({"image": "localhost:5000/team/app:v1", "platform": "linux/amd64", "pin": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["image"], "team/app:v1");
    assert_eq!(report["platform"], "linux/amd64");
    let index_digest = flotilla_protocol::Digest::sha256_of(index.as_bytes());
    let amd_digest = flotilla_protocol::Digest::sha256_of(amd.as_bytes());
    assert_eq!(
        report["manifests"],
        serde_json::json!([index_digest.as_str(), amd_digest.as_str()])
    );
    let want = [&config_amd, &shared, &only_amd];
    let blobs = report["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 3, "{report}");
    let size: u64 = want.iter().map(|b| b.data.len() as u64).sum();
    assert_eq!(report["bytes"], size);
    assert_eq!(report["fetched_bytes"], size);
    assert_eq!(report["pinned"], true);
    for (b, r) in want.iter().zip(blobs) {
        assert_eq!(r["digest"], b.digest.as_str());
        assert_eq!(r["held_before"], false);
        let e = rig.local.store.entry(&b.digest).expect("held");
        assert!(e.complete && e.pinned, "{}: {e:?}", b.digest);
    }
    // The shared layer came from its peer, the others from the origin (nobody else has them).
    assert_eq!(blobs[1]["peer_bytes"], shared.data.len() as u64);
    assert_eq!(
        rig.gw.origin_bytes(),
        (config_amd.data.len() + only_amd.data.len()) as u64
    );
    for b in [&config_arm, &only_arm] {
        assert!(
            rig.local.store.entry(&b.digest).is_none(),
            "arm64 blob fetched"
        );
    }

    // Again: everything is held, nothing moves.
    let (status, again) = prefetch(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "linux/amd64"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["fetched_bytes"], 0);
    assert_eq!(again["pinned"], false);
    assert!(
        again["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["held_before"] == true)
    );

    // `all` takes every entry (the shared layer and the amd64 image once).
    let (status, all) = prefetch(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "all"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["blobs"].as_array().unwrap().len(), 5, "{all}");
    assert_eq!(
        all["fetched_bytes"],
        (config_arm.data.len() + only_arm.data.len()) as u64
    );
    assert!(!rig.local.store.entry(&only_arm.digest).unwrap().pinned);

    // One blob by digest, and an image by digest.
    let (status, one) =
        prefetch(&node, serde_json::json!({"blob": only_arm.digest.as_str()})).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["blobs"][0]["held_before"], true);
    assert!(one.get("image").is_none());
    let (status, by_digest) = prefetch(
        &node,
        serde_json::json!({"image": format!("team/app@{arm_digest}", arm_digest = flotilla_protocol::Digest::sha256_of(arm.as_bytes()))}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{by_digest}");
    assert_eq!(by_digest["blobs"].as_array().unwrap().len(), 3);
}

/// A prefetch whose TCP peer is `peer`, straight into the route's handler (a test cannot
/// connect from another host's address).
async fn prefetch_from(
    state: &OciState,
    peer: &str,
    bearer: Option<&str>,
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let mut req = axum::http::Request::post("/flotilla/v1/prefetch");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(axum::body::Body::from("{}")).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(
            peer.parse().unwrap(),
        ));
    let res = super::prefetch::handle(axum::extract::State(state.clone()), req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap(), headers)
}

#[tokio::test]
async fn prefetch_from_another_host_needs_the_fleet_token() {
    let rig = Rig::new().await;
    let open = OciState::new(rig.fetcher.clone(), rig.gw.url(), rig.local.source()).unwrap();
    let guarded = open.clone().with_prefetch_token("s3cret-fleet-token");
    // The body `{}` is malformed: an admitted caller gets 400 UNSUPPORTED, past the check.
    let cases = [
        (
            &open,
            "127.0.0.1:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &open,
            "[::1]:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &open,
            "[::ffff:127.0.0.1]:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &open,
            "10.1.2.3:40000",
            None,
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            &open,
            "10.1.2.3:40000",
            Some("s3cret-fleet-token"),
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            &guarded,
            "127.0.0.2:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &guarded,
            "10.1.2.3:40000",
            None,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            &guarded,
            "10.1.2.3:40000",
            Some("s3cret-fleet-token-"),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            &guarded,
            "[2001:db8::1]:40000",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            &guarded,
            "10.1.2.3:40000",
            Some("s3cret-fleet-token"),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
    ];
    for (state, peer, bearer, status, code) in cases {
        let (got, answer, headers) = prefetch_from(state, peer, bearer).await;
        let what = format!("{peer} with {bearer:?}, token {:?}", state.prefetch_token);
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["errors"][0]["code"], code, "{what}: {answer}");
        if got == StatusCode::UNAUTHORIZED {
            assert_eq!(
                headers["www-authenticate"], "Bearer realm=\"flotilla-node\"",
                "{what}"
            );
        }
    }
    // Without the server's peer address the caller counts as another host's.
    let req = axum::http::Request::post("/flotilla/v1/prefetch")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let res = super::prefetch::handle(axum::extract::State(open), req).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn prefetch_errors_are_the_registry_s() {
    let rig = Rig::new().await;
    let config = rig.blob(100, 4096, 41);
    let amd = image_manifest(&[&config]);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [index_entry(&amd, serde_json::json!({"os": "linux", "architecture": "amd64"}))],
    })
    .to_string();
    let d = flotilla_protocol::Digest::sha256_of(amd.as_bytes());
    rig.gw.add_manifest("team/app", d.as_str(), IMAGE, &amd);
    rig.gw.add_manifest("team/app", "v1", INDEX, &index);
    let node = Node::start(&rig).await;
    let unknown = TestBlob::new(100, 64, 42, &rig.key);

    let cases = [
        (
            serde_json::json!({"image": "team/app:v1", "platform": "linux/s390x"}),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            serde_json::json!({"image": "team/app:v2"}),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            serde_json::json!({"image": "Team/App"}),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            serde_json::json!({"image": "team/app:v1", "platform": "linux"}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({"blob": unknown.digest.as_str()}),
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            serde_json::json!({"blob": "sha256:abc"}),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            serde_json::json!({"blob": unknown.digest.as_str(), "platform": "all"}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({"image": "team/app:v1", "blob": unknown.digest.as_str()}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({"image": "team/app:v1", "layers": 1}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        // This endpoint was given no way to pin.
        (
            serde_json::json!({"image": "team/app:v1", "platform": "all", "pin": true}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = prefetch(&node, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["errors"][0]["code"], code, "{body} -> {answer}");
    }
    let (_, answer) = prefetch(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "linux/s390x"}),
    )
    .await;
    let detail = answer["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("linux/amd64"), "{detail}");
    // Not JSON at all, and the wrong method.
    let res = node
        .req(Method::POST, "/flotilla/v1/prefetch")
        .body("image=x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "UNSUPPORTED");
    let res = node.get("/flotilla/v1/prefetch").await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header_str(&res, "allow"), Some("POST"));
    assert_eq!(error_code(res).await, "UNSUPPORTED");
    // Nothing was fetched for any of them.
    assert_eq!(rig.gw.origin_bytes(), 0);
    assert!(rig.local.store.entry(&config.digest).is_none());
}

#[tokio::test]
async fn prefetches_together_fetch_at_most_their_node_wide_share_of_blobs_at_once() {
    let rig = Rig::new().await;
    // Nobody has these and the origin refuses for now: their downloads stay open.
    let blobs: Vec<TestBlob> = (0..6).map(|i| rig.blob(5000, 4096, 60 + i)).collect();
    rig.gw
        .state
        .refuse_blobs
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let node = Node::start_with(&rig, |s| s.with_prefetch_slots(2)).await;
    let asks = blobs
        .iter()
        .map(|b| prefetch(&node, serde_json::json!({"blob": b.digest.as_str()})));
    let all = futures::future::join_all(asks);
    tokio::pin!(all);
    let mut most = 0;
    for _ in 0..20 {
        tokio::select! {
            _ = &mut all => panic!("prefetches finished while the origin refused"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        most = most.max(rig.fetcher.active_downloads());
    }
    assert_eq!(most, 2, "six prefetched blobs, two slots");
    rig.gw
        .state
        .refuse_blobs
        .store(false, std::sync::atomic::Ordering::Relaxed);
    for (status, report) in all.await {
        assert_eq!(status, StatusCode::OK, "{report}");
    }
    for b in &blobs {
        assert!(rig.local.store.entry(&b.digest).is_some_and(|e| e.complete));
    }
}
