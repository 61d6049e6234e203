//! flotilla's own gateway endpoints for nodes (`/flotilla/v1/info`, `pieces/<digest>`,
//! `blobs/<digest>`, `stats`), driven with reqwest against the real `flotilla gateway` binary.
//!
//! Piece tables are checked against tables built here from the pushed bytes with the protocol
//! crate, and their signatures against the peer id `/flotilla/v1/info` announces.

use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_protocol::piece::{PieceTable, PieceTableBuilder, SignedPieceTable, piece_size_for};
use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::support::{Gateway, Member};

/// One answer, fully read.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    what: String,
}

impl Resp {
    fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}: status (body {})",
            self.what,
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// Panics unless this is an OCI error answer with `status` and `code`.
    fn expect_error(&self, status: u16, code: &str) {
        self.expect(status);
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: error body is not JSON: {e}", self.what));
        assert_eq!(v["errors"][0]["code"], code, "{}: {v}", self.what);
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{}: no `{name}` header", self.what))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", self.what))
    }
}

/// A client bound to one gateway process; once [`Api::joined`], it signs every request as a
/// fleet member.
struct Api {
    gw: Gateway,
    http: reqwest::Client,
    member: Option<Member>,
    _config_dir: Option<tempfile::TempDir>,
}

fn client() -> reqwest::Client {
    flotilla_node::gateway_http::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

impl Api {
    fn start() -> Api {
        Api {
            gw: Gateway::start(),
            http: client(),
            member: None,
            _config_dir: None,
        }
    }

    /// A gateway started with `toml` as its config file.
    fn start_with_config(toml: &str) -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).expect("write config");
        Api {
            gw: Gateway::start_with_args(&["--config", path.to_str().expect("utf-8 path")]),
            http: client(),
            member: None,
            _config_dir: Some(dir),
        }
    }

    /// The same client, enrolled in the gateway's fleet with its token.
    async fn joined(mut self) -> Api {
        let token = self.gw.fleet_token();
        self.member = Some(Member::enroll(&self.http, &self.gw.url(), &token).await);
        self
    }

    /// SIGKILLs the gateway and starts it again on the same data directory; connections pooled
    /// to the dead process go with the old client.
    fn restart(&mut self) {
        self.gw.restart();
        self.http = client();
    }

    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.gw.url());
        let rb = self.http.request(method.clone(), &url);
        match &self.member {
            Some(m) => m.sign(rb, &method, &url),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let req = rb.build().expect("request");
        let what = format!("{} {}", req.method(), req.url());
        let res = self.http.execute(req).await.expect("request failed");
        let (status, headers) = (res.status(), res.headers().clone());
        let body = res.bytes().await.expect("body");
        assert!(
            !status.is_server_error(),
            "{what}: {status}; log:\n{}",
            self.gw.log()
        );
        Resp {
            status,
            headers,
            body,
            what,
        }
    }

    async fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path)).await
    }

    /// Pushes `data` monolithically into `repo`; returns its digest.
    async fn push(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let rb = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .query(&[("digest", &d)])
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec());
        self.send(rb).await.expect(201);
        d
    }

    async fn peer_id(&self) -> String {
        let info = self.get("/flotilla/v1/info").await;
        info.expect(200);
        assert_eq!(info.header("content-type"), "application/json");
        info.json()["peer_id"]
            .as_str()
            .expect("peer_id is a string")
            .to_owned()
    }

    async fn stats(&self) -> Value {
        let s = self.get("/flotilla/v1/stats").await;
        s.expect(200);
        s.json()
    }

    /// `stats[name]` once it has stopped changing (a body's count lands as it streams).
    async fn settled(&self, name: &str) -> u64 {
        let mut last = u64::MAX;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.stats().await[name].as_u64().expect("counter");
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic, non-repeating test bytes.
fn blob(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// The piece table of `data`, built independently of the gateway.
fn table_of(data: &[u8]) -> PieceTable {
    let mut b = PieceTableBuilder::new(piece_size_for(data.len() as u64)).unwrap();
    b.update(data);
    b.finish(sha256(data).parse().unwrap()).unwrap()
}

#[tokio::test]
async fn info_names_a_persistent_identity() {
    let mut api = Api::start();
    let id = api.peer_id().await;
    let info = api.get("/flotilla/v1/info").await.json();
    // The swarm listens by default: every address names the gateway's peer id.
    let addrs = info["addrs"].as_array().expect("addrs is a list");
    assert!(!addrs.is_empty(), "the swarm's addresses are published");
    for a in addrs {
        let a = a.as_str().expect("an address is a string");
        assert!(a.ends_with(&format!("/p2p/{id}")), "{a} lacks /p2p/{id}");
    }
    let key = api.gw.data_dir.join("identity.key");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key)
        .expect("identity.key exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "identity.key must be private");

    api.restart();
    assert_eq!(api.peer_id().await, id, "the identity survives a restart");

    api.send(api.req(Method::POST, "/flotilla/v1/info"))
        .await
        .expect_error(405, "UNSUPPORTED");
    api.get("/flotilla/v1/nothing")
        .await
        .expect_error(404, "UNSUPPORTED");
    api.get("/flotilla/v2/info")
        .await
        .expect_error(404, "UNSUPPORTED");
}

#[tokio::test]
async fn piece_tables_are_signed_by_the_gateway_and_describe_the_blob() {
    let mut api = Api::start().joined().await;
    let id = api.peer_id().await;
    let data = blob(1, (4 << 20) * 2 + 12345);
    let d = api.push("lib/app", &data).await;

    let r = api.get(&format!("/flotilla/v1/pieces/{d}")).await;
    r.expect(200);
    assert_eq!(r.header("content-type"), "application/octet-stream");
    assert_eq!(r.header("docker-content-digest"), d);
    let signed = SignedPieceTable::decode(&r.body).expect("a signed piece table");
    let table = signed.verify(None).expect("the signature verifies");
    assert_eq!(
        signed.signer_peer_id().map(|p| p.to_string()),
        Some(id.clone()),
        "signed by the gateway's identity"
    );
    assert_eq!(*table, table_of(&data));
    assert_eq!(table.piece_count(), 3);
    // The push queued it and the GET may have joined that computation: one table either way.
    assert_eq!(api.settled("tables_computed").await, 1);

    // A `:` escaped by the client is the same digest.
    let escaped = d.replace(':', "%3A");
    let again = api.get(&format!("/flotilla/v1/pieces/{escaped}")).await;
    again.expect(200);
    assert_eq!(again.body, r.body);
    let head = api
        .send(api.req(Method::HEAD, &format!("/flotilla/v1/pieces/{d}")))
        .await;
    head.expect(200);
    assert_eq!(head.header("content-length"), r.body.len().to_string());
    assert!(head.body.is_empty());

    api.get(&format!("/flotilla/v1/pieces/{}", sha256(b"never pushed")))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    api.get("/flotilla/v1/pieces/sha256:1234")
        .await
        .expect_error(400, "DIGEST_INVALID");
    api.get("/flotilla/v1/pieces/nonsense")
        .await
        .expect_error(400, "DIGEST_INVALID");
    api.send(api.req(Method::PUT, &format!("/flotilla/v1/pieces/{d}")))
        .await
        .expect_error(405, "UNSUPPORTED");

    // Same key, same table: the same bytes after a restart (ed25519 signs deterministically).
    api.restart();
    let after = api.get(&format!("/flotilla/v1/pieces/{d}")).await;
    after.expect(200);
    assert_eq!(after.body, r.body);
}

#[tokio::test]
async fn the_swarm_answer_says_unsent_until_a_byte_of_the_blob_leaves() {
    let mut api = Api::start().joined().await;
    let (a, b) = (blob(7, 50_000), blob(8, 60_000));
    let (da, db) = (api.push("x/y", &a).await, api.push("x/y", &b).await);
    let swarm = |d: &str| format!("/flotilla/v1/swarm/{d}");
    for d in [&da, &db] {
        let r = api.get(&swarm(d)).await;
        r.expect(200);
        assert_eq!(
            r.json()["unsent"],
            true,
            "{d} was just pushed: {}",
            r.json()
        );
    }
    // A node's piece table fetch sends nothing of the blob; a client's GET does.
    api.get(&format!("/flotilla/v1/pieces/{da}"))
        .await
        .expect(200);
    assert_eq!(api.get(&swarm(&da)).await.json()["unsent"], true);
    api.get(&format!("/v2/x/y/blobs/{da}")).await.expect(200);
    assert_eq!(api.get(&swarm(&da)).await.json()["unsent"], false);
    // So does a node's range request to the origin.
    api.send(
        api.req(Method::GET, &format!("/flotilla/v1/blobs/{db}"))
            .header("Range", "bytes=0-99"),
    )
    .await
    .expect(206);
    let r = api.get(&swarm(&db)).await;
    assert_eq!(r.json()["unsent"], false, "{}", r.json());
    assert_eq!(r.json()["fetchers"], 0);
    // A restarted gateway cannot know what left before it: nothing is unsent.
    let c = blob(9, 70_000);
    let dc = api.push("x/y", &c).await;
    api.restart();
    let api = api.joined().await;
    assert_eq!(api.get(&swarm(&dc)).await.json()["unsent"], false);
}

#[tokio::test]
async fn blobs_are_served_without_a_repository() {
    let api = Api::start().joined().await;
    let data = blob(2, 100_000);
    let d = api.push("some/repo", &data).await;
    let path = format!("/flotilla/v1/blobs/{d}");

    let r = api.get(&path).await;
    r.expect(200);
    assert!(r.body == data, "body differs from the pushed blob");
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(r.header("content-length"), data.len().to_string());
    assert_eq!(r.header("accept-ranges"), "bytes");

    let part = api
        .send(api.req(Method::GET, &path).header("Range", "bytes=10-19"))
        .await;
    part.expect(206);
    assert_eq!(part.body, &data[10..20]);
    assert_eq!(
        part.header("content-range"),
        format!("bytes 10-19/{}", data.len())
    );
    api.send(api.req(Method::GET, &path).header("Range", "bytes=100000-"))
        .await
        .expect_error(416, "RANGE_INVALID");

    let head = api.send(api.req(Method::HEAD, &path)).await;
    head.expect(200);
    assert_eq!(head.header("content-length"), data.len().to_string());
    assert!(head.body.is_empty());

    // Unlinked from its only repository, the file is still held and still served here.
    api.send(api.req(Method::DELETE, &format!("/v2/some/repo/blobs/{d}")))
        .await
        .expect(202);
    api.get(&format!("/v2/some/repo/blobs/{d}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    api.get(&path).await.expect(200);

    api.get(&format!("/flotilla/v1/blobs/{}", sha256(b"never pushed")))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    api.send(api.req(
        Method::HEAD,
        &format!("/flotilla/v1/blobs/{}", sha256(b"x")),
    ))
    .await
    .expect(404);
    api.get("/flotilla/v1/blobs/sha256:zz")
        .await
        .expect_error(400, "DIGEST_INVALID");
    api.send(api.req(Method::DELETE, &path))
        .await
        .expect_error(405, "UNSUPPORTED");
}

#[tokio::test]
async fn stats_count_blob_bytes_sent_over_http() {
    let api = Api::start().joined().await;
    let zero = api.stats().await;
    for k in ["http_blob_bytes", "swarm_bytes", "tables_computed"] {
        assert_eq!(zero[k], 0, "{k}");
    }
    // The audit log's and the notification endpoints' counters (tests/audit.rs covers them).
    assert_eq!(zero["audit"]["lines_written"], 0);
    assert_eq!(zero["notifications"], serde_json::json!([]));
    let data = blob(3, 300_000);
    let d = api.push("r", &data).await;
    let n = data.len() as u64;

    api.get(&format!("/v2/r/blobs/{d}")).await.expect(200);
    api.send(
        api.req(Method::GET, &format!("/v2/r/blobs/{d}"))
            .header("Range", "bytes=-100"),
    )
    .await
    .expect(206);
    api.get(&format!("/flotilla/v1/blobs/{d}"))
        .await
        .expect(200);
    api.send(api.req(Method::HEAD, &format!("/flotilla/v1/blobs/{d}")))
        .await
        .expect(200);
    api.get(&format!("/flotilla/v1/pieces/{d}"))
        .await
        .expect(200);
    assert_eq!(api.settled("http_blob_bytes").await, 2 * n + 100);
    let s = api.stats().await;
    assert_eq!(s["swarm_bytes"], 0);
    assert_eq!(s["tables_computed"], 1);

    // A download abandoned after its first chunk counts what went out, not the whole blob.
    let big = blob(4, 48 << 20);
    let big_d = api.push("r", &big).await;
    let before = api.settled("http_blob_bytes").await;
    let res = api
        .req(Method::GET, &format!("/flotilla/v1/blobs/{big_d}"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let first = body.next().await.expect("a chunk").expect("chunk");
    assert!(!first.is_empty());
    drop(body);
    let sent = api.settled("http_blob_bytes").await - before;
    assert!(
        sent >= first.len() as u64 && sent < big.len() as u64,
        "an abandoned download counted {sent} bytes of {}",
        big.len()
    );
}

#[tokio::test]
async fn origin_endpoints_serve_fleet_members_only() {
    let api = Api::start();
    let data = blob(5, 50_000);
    let d = api.push("open/repo", &data).await;
    let tag_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": data.len()},
        "layers": []
    });
    api.send(
        api.req(Method::PUT, "/v2/open/repo/manifests/v1")
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(serde_json::to_vec(&tag_manifest).unwrap()),
    )
    .await
    .expect(201);
    let member_only = [
        format!("/flotilla/v1/blobs/{d}"),
        format!("/flotilla/v1/pieces/{d}"),
        format!("/flotilla/v1/swarm/{d}"),
        "/flotilla/v1/tags/open/repo/v1".to_owned(),
    ];

    // A stranger: no header, a garbage header, or a certificate it signed itself.
    let stranger = libp2p_identity::Keypair::generate_ed25519();
    let own_cert = flotilla_protocol::membership::MemberCertificate::issue(
        &stranger,
        stranger.public().to_peer_id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        3600,
    )
    .unwrap();
    let fleet: libp2p_identity::PeerId = api.peer_id().await.parse().unwrap();
    let self_signed = flotilla_node::gateway_http::MemberSigner::new();
    self_signed.set(stranger, own_cert, fleet);
    for path in &member_only {
        for method in [Method::GET, Method::HEAD] {
            let r = api.send(api.req(method.clone(), path)).await;
            r.expect(401);
            assert_eq!(
                r.header("www-authenticate"),
                "Flotilla-Member realm=\"flotilla-fleet\""
            );
            if method == Method::GET {
                r.expect_error(401, "UNAUTHORIZED");
            }
        }
        api.send(
            api.req(Method::GET, path)
                .header("flotilla-member", "v1 1 00 00 00"),
        )
        .await
        .expect_error(401, "UNAUTHORIZED");
        let url = format!("{}{path}", api.gw.url());
        let r = api
            .send(self_signed.sign(api.http.get(&url), &Method::GET, &url))
            .await;
        r.expect_error(401, "UNAUTHORIZED");
        assert!(
            String::from_utf8_lossy(&r.body).contains("fleet key"),
            "{}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(
        api.settled("http_blob_bytes").await,
        0,
        "a stranger got bytes"
    );
    // How a node finds and joins the fleet stays open.
    api.get("/flotilla/v1/info").await.expect(200);
    api.get("/flotilla/v1/stats").await.expect(200);

    // A member: every endpoint answers; a signature made for one blob does not open another.
    let api = api.joined().await;
    for path in &member_only {
        api.get(path).await.expect(200);
    }
    let other = api.push("open/repo", &blob(6, 1000)).await;
    let url = format!("{}/flotilla/v1/blobs/{d}", api.gw.url());
    let signed = api
        .member
        .as_ref()
        .unwrap()
        .get(&api.http, &url)
        .build()
        .unwrap();
    let header = signed.headers()["flotilla-member"].clone();
    let replayed = format!("{}/flotilla/v1/blobs/{other}", api.gw.url());
    api.send(api.http.get(&replayed).header("flotilla-member", header))
        .await
        .expect_error(401, "UNAUTHORIZED");
    assert_eq!(api.settled("http_blob_bytes").await, data.len() as u64);
}

#[tokio::test]
async fn a_piece_just_sent_to_one_member_is_refused_to_another() {
    let a = Api::start().joined().await;
    let token = a.gw.fleet_token();
    let b = Member::enroll(&a.http, &a.gw.url(), &token).await;
    let data = blob(7, 300_000);
    let d = a.push("dedup/repo", &data).await;
    let path = format!("/flotilla/v1/blobs/{d}");
    let url = format!("{}{path}", a.gw.url());
    let piece = |rb: reqwest::RequestBuilder| rb.header("Range", "bytes=0-99999");

    a.send(piece(a.req(Method::GET, &path))).await.expect(206);
    // The same member again (a retry) is served; another member is sent to the swarm.
    a.send(piece(a.req(Method::GET, &path))).await.expect(206);
    let r = a.send(piece(b.get(&a.http, &url))).await;
    r.expect_error(429, "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), "2");
    // It names the member that has it, so b can ask that peer.
    let a_id = a.member.as_ref().unwrap().peer.to_string();
    assert_eq!(r.header("flotilla-holder"), a_id);
    // Another range, or the whole blob (what a registry client would ask), is not held back.
    a.send(b.get(&a.http, &url).header("Range", "bytes=100000-199999"))
        .await
        .expect(206);
    a.send(b.get(&a.http, &url)).await.expect(200);
    assert_eq!(a.stats().await["origin_refused"], 1);

    // With alternatives, a refused range is answered with the first one nobody was sent
    // lately (b's own 100000-199999 included), and Content-Range says which.
    let alternatives = "bytes=100000-199999, 200000-299999";
    let r = a
        .send(piece(b.get(&a.http, &url)).header("flotilla-alternatives", alternatives))
        .await;
    r.expect(206);
    assert_eq!(r.header("content-range"), "bytes 200000-299999/300000");
    assert_eq!(&r.body[..], &data[200_000..300_000]);
    // None left: refused as before, naming the holder of the range asked for.
    let r = a
        .send(piece(b.get(&a.http, &url)).header("flotilla-alternatives", alternatives))
        .await;
    r.expect_error(429, "TOOMANYREQUESTS");
    assert_eq!(r.header("flotilla-holder"), a_id);
    // A malformed header is an error, not ignored.
    for bad in ["bytes=5-1", "bytes=0-300000", "items=0-9"] {
        a.send(piece(b.get(&a.http, &url)).header("flotilla-alternatives", bad))
            .await
            .expect_error(400, "RANGE_INVALID");
    }
    assert_eq!(a.stats().await["origin_refused"], 2);

    // A member that banned the holder is not refused for its copy (it is no use to it).
    let r = a
        .send(piece(b.get(&a.http, &url)).header("flotilla-banned", a_id.as_str()))
        .await;
    r.expect(206);
    assert_eq!(&r.body[..], &data[..100_000]);
    for bad in ["not-a-peer-id", &vec![a_id.as_str(); 33].join(",")] {
        a.send(piece(b.get(&a.http, &url)).header("flotilla-banned", bad))
            .await
            .expect_error(400, "UNSUPPORTED");
    }
    assert_eq!(a.stats().await["origin_refused"], 2);
    // (When the window ends the range is anyone's again: gateway/src/api/dedup.rs tests it.)
}

#[tokio::test]
async fn piece_requests_beyond_origin_max_sends_wait_for_a_send_slot() {
    second_piece_waits_for_the_first("origin_max_sends = 1\n").await;
    // The pool does not depend on the refusal window.
    second_piece_waits_for_the_first("origin_max_sends = 1\norigin_dedup_ms = 0\n").await;
}

/// With one send slot, a second member's piece waits until the first member's piece has been
/// read to the end.
async fn second_piece_waits_for_the_first(config: &str) {
    let a = Api::start_with_config(config).joined().await;
    let b = Member::enroll(&a.http, &a.gw.url(), &a.gw.fleet_token()).await;
    // Large enough that a's answer cannot sit whole in socket buffers while a does not read.
    let half = 32 << 20;
    let data = blob(11, 2 * half);
    let d = a.push("pool/repo", &data).await;
    let path = format!("/flotilla/v1/blobs/{d}");
    let url = format!("{}{path}", a.gw.url());

    let first = a
        .http
        .execute(
            a.req(Method::GET, &path)
                .header("Range", format!("bytes=0-{}", half - 1))
                .build()
                .expect("request"),
        )
        .await
        .expect("first piece");
    assert_eq!(first.status(), StatusCode::PARTIAL_CONTENT);
    // Another member's piece (another range, so not refused) waits while a's streams.
    let second = {
        let rb = b
            .get(&a.http, &url)
            .header("Range", format!("bytes={half}-{}", 2 * half - 1));
        let http = a.http.clone();
        tokio::spawn(async move {
            let res = http.execute(rb.build().expect("request")).await?;
            Ok::<_, reqwest::Error>((res.status(), res.bytes().await?))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = a.stats().await;
        if s["origin_waiting"] == 1 {
            assert_eq!(s["origin_sending"], 1);
            assert_eq!(s["origin_send_limit"], 1, "a most of 1 is the limit");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second request never queued: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!second.is_finished(), "sent while the only slot was taken");
    // a reads its piece to the end: the slot goes to b.
    assert_eq!(first.bytes().await.expect("first body")[..], data[..half]);
    let (status, body) = second.await.expect("task").expect("second piece");
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body[..], data[half..]);
    let s = a.stats().await;
    assert_eq!(
        (
            &s["origin_waited"],
            &s["origin_waiting"],
            &s["origin_queue_full"]
        ),
        (&Value::from(1), &Value::from(0), &Value::from(0))
    );
}
