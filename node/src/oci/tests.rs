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

/// `POST /flotilla/v1/prefetch` and `/flotilla/v1/unpin`.
mod prefetch;
