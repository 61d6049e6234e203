//! `POST /flotilla/v1/join` through the real router: the token, the proof of key possession, the
//! clock, and the certificate it issues; and the token file.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use flotilla_node::identity::membership::{JoinRequest, JoinResponse};
use flotilla_protocol::membership::MemberCertificate;
use libp2p_identity::{Keypair, PeerId};
use tower::ServiceExt as _;

use super::{TOKEN_FILE, load_token, unix_now};
use crate::config::Config;
use crate::registry::Registry;

const TOKEN: &str = "sesame-0123456789";

struct Rig {
    app: axum::Router,
    gateway: PeerId,
    _dir: tempfile::TempDir,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        fleet_token: Some(TOKEN.to_owned()),
        member_cert_secs: 3600,
        ..Config::default()
    };
    let registry = Registry::open(config.storage()).await.unwrap();
    let gateway = registry.seed().peer_id();
    Rig {
        app: crate::api::router(registry, &config, None),
        gateway,
        _dir: dir,
    }
}

fn key() -> Keypair {
    Keypair::generate_ed25519()
}

impl Rig {
    async fn join(&self, auth: Option<&str>, body: Vec<u8>) -> (StatusCode, serde_json::Value) {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        let (status, _, bytes) = self
            .call(Method::POST, "/flotilla/v1/join", &headers, body)
            .await;
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn request(&self, node: &Keypair, at: u64) -> Vec<u8> {
        serde_json::to_vec(&JoinRequest::new(node, &self.gateway, at).unwrap()).unwrap()
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn decode_cert(hex_text: &str) -> MemberCertificate {
    let bytes: Vec<u8> = (0..hex_text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_text[i..i + 2], 16).unwrap())
        .collect();
    MemberCertificate::decode(&bytes).unwrap()
}

#[tokio::test]
async fn the_right_token_and_proof_get_a_certificate_for_the_node() {
    let rig = rig().await;
    let node = key();
    let (status, body) = rig
        .join(Some(&bearer()), rig.request(&node, unix_now()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: JoinResponse = serde_json::from_value(body).unwrap();
    let cert = decode_cert(&answer.certificate);
    let me = node.public().to_peer_id();
    cert.verify(&rig.gateway, &me, unix_now()).unwrap();
    assert_eq!(cert.not_after - cert.issued_at, 3600);
    assert_eq!(
        (answer.issued_at, answer.not_after),
        (cert.issued_at, cert.not_after)
    );
    let stranger = key().public().to_peer_id();
    assert!(cert.verify(&rig.gateway, &stranger, unix_now()).is_err());
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_401() {
    let rig = rig().await;
    let node = key();
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic c2VzYW1l"),
        Some("Bearer "),
    ] {
        let (status, body) = rig.join(auth, rig.request(&node, unix_now())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {body}");
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    }
}

#[tokio::test]
async fn a_bad_proof_is_400() {
    let rig = rig().await;
    let node = key();
    let now = unix_now();
    // Signed for another gateway.
    let other = key().public().to_peer_id();
    let for_other = serde_json::to_vec(&JoinRequest::new(&node, &other, now).unwrap()).unwrap();
    // Someone else's peer id with this node's proof.
    let mut claimed = JoinRequest::new(&node, &rig.gateway, now).unwrap();
    claimed.peer_id = key().public().to_peer_id().to_string();
    // A tampered signature.
    let mut tampered = JoinRequest::new(&node, &rig.gateway, now).unwrap();
    let flipped = if tampered.signature.starts_with("00") {
        "11"
    } else {
        "00"
    };
    tampered.signature.replace_range(0..2, flipped);
    let cases = [
        ("another gateway", for_other),
        ("another peer id", serde_json::to_vec(&claimed).unwrap()),
        ("tampered", serde_json::to_vec(&tampered).unwrap()),
        ("not json", b"{".to_vec()),
        ("stale", rig.request(&node, now - 301)),
        ("early", rig.request(&node, now + 301)),
    ];
    for (what, body) in cases {
        let (status, answer) = rig.join(Some(&bearer()), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(answer["errors"][0]["code"], "UNSUPPORTED", "{what}");
    }
    // Within the allowed skew.
    let (status, _) = rig
        .join(Some(&bearer()), rig.request(&node, now - 200))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn only_post_is_allowed() {
    let rig = rig().await;
    let res = rig
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/flotilla/v1/join")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn the_token_file_is_created_once_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let a = load_token(&config).unwrap();
    let b = load_token(&config).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 64);
    use std::os::unix::fs::PermissionsExt as _;
    let path = config.data_dir.join(TOKEN_FILE);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let configured = Config {
        fleet_token: Some(" set ".to_owned()),
        ..config
    };
    assert_eq!(load_token(&configured).unwrap(), "set");
}

impl Rig {
    /// A request to the router, with optional headers; the status, the headers and the body.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (parts.status, parts.headers, bytes.to_vec())
    }

    /// `POST /flotilla/v1/<what>` with `{"peer_id": peer}`: the status and the JSON answer.
    async fn change(&self, what: &str, peer: &str) -> (StatusCode, serde_json::Value) {
        let body = serde_json::json!({ "peer_id": peer, "reason": "key leaked" });
        let (status, _, bytes) = self
            .call(
                Method::POST,
                &format!("/flotilla/v1/{what}"),
                &[("content-type", "application/json")],
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// `GET /flotilla/v1/members`.
    async fn members(&self) -> serde_json::Value {
        let (status, _, bytes) = self
            .call(Method::GET, "/flotilla/v1/members", &[], Vec::new())
            .await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A member-signed `GET /flotilla/v1/swarm/<digest>` (a member-only endpoint).
    async fn member_get(&self, node: &Keypair, cert: &MemberCertificate) -> StatusCode {
        let path = "/flotilla/v1/swarm/sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let h = flotilla_protocol::membership::http::MemberHeader::sign(
            node,
            cert,
            &self.gateway,
            "GET",
            path,
            unix_now(),
        )
        .unwrap()
        .encode();
        self.call(Method::GET, path, &[("flotilla-member", &h)], Vec::new())
            .await
            .0
    }
}

#[tokio::test]
async fn a_revoked_member_is_refused_until_restored_and_the_list_is_signed() {
    use flotilla_protocol::revocation::SignedRevocationList;

    let rig = rig().await;
    let node = key();
    let me = node.public().to_peer_id();
    let (status, body) = rig
        .join(Some(&bearer()), rig.request(&node, unix_now()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cert = decode_cert(
        serde_json::from_value::<JoinResponse>(body)
            .unwrap()
            .certificate
            .as_str(),
    );
    assert_eq!(rig.member_get(&node, &cert).await, StatusCode::OK);
    let listed = rig.members().await;
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["members"][0]["peer_id"], me.to_string());
    assert_eq!(listed["members"][0]["joins"], 1);
    assert_eq!(listed["members"][0]["revoked"], false);
    assert_eq!(
        listed["members"][0]["certificate_not_after_unix_s"],
        cert.not_after
    );

    // Nonsense and the gateway itself are refused; nothing changes.
    assert_eq!(
        rig.change("revoke", "not-a-peer").await.0,
        StatusCode::BAD_REQUEST
    );
    let own = rig.gateway.to_string();
    assert_eq!(rig.change("revoke", &own).await.0, StatusCode::BAD_REQUEST);
    // Every answer under /flotilla/v1/ names the list's seq, so nodes hear of a change at once.
    let seq_said =
        |h: &axum::http::HeaderMap| h["flotilla-revocations"].to_str().unwrap().to_owned();
    let (_, headers, _) = rig
        .call(Method::GET, "/flotilla/v1/info", &[], Vec::new())
        .await;
    assert_eq!(seq_said(&headers), "0");

    let (status, answer) = rig.change("revoke", &me.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["changed"], true);
    let seq1 = answer["seq"].as_u64().unwrap();
    assert!(
        seq1 >= unix_now() * 1000 - 60_000,
        "seq is the time in ms: {seq1}"
    );
    assert_eq!(answer["peers"][me.to_string()]["reason"], "key leaked");
    let (_, again) = rig.change("revoke", &me.to_string()).await;
    assert_eq!(again["changed"], false);
    assert_eq!(again["seq"], seq1);
    let (_, headers, _) = rig
        .call(Method::GET, "/flotilla/v1/info", &[], Vec::new())
        .await;
    assert_eq!(seq_said(&headers), seq1.to_string());

    // Refused: renewing its certificate, and its signed requests.
    let (status, body) = rig
        .join(Some(&bearer()), rig.request(&node, unix_now()))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eq!(rig.member_get(&node, &cert).await, StatusCode::FORBIDDEN);
    let listed = rig.members().await;
    assert_eq!(listed["members"][0]["revoked"], true, "{listed}");
    assert_eq!(
        listed["members"][0]["joins"], 1,
        "a refused join is not counted"
    );

    // The signed list names it, verifies against the gateway's key, and is cached by ETag.
    let (status, headers, bytes) = rig
        .call(Method::GET, "/flotilla/v1/revoked", &[], Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    let etag = format!("\"{seq1}\"");
    assert_eq!(headers["etag"].to_str().unwrap(), etag);
    let signed = SignedRevocationList::decode(&bytes).unwrap();
    let list = signed.verify(&rig.gateway).unwrap();
    assert_eq!((list.seq, list.peers()), (seq1, &[me][..]));
    let (status, _, _) = rig
        .call(
            Method::GET,
            "/flotilla/v1/revoked",
            &[("if-none-match", etag.as_str())],
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (status, _, _) = rig
        .call(Method::DELETE, "/flotilla/v1/revoked", &[], Vec::new())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = rig
        .call(Method::GET, "/flotilla/v1/revoke", &[], Vec::new())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Restored: it may join and sign again; the list moves on (a node never takes an older one).
    let (status, answer) = rig.change("restore", &me.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["changed"], true);
    let seq2 = answer["seq"].as_u64().unwrap();
    assert!(seq2 > seq1);
    assert_eq!(rig.member_get(&node, &cert).await, StatusCode::OK);
    let (status, _) = rig
        .join(Some(&bearer()), rig.request(&node, unix_now()))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, headers, bytes) = rig
        .call(Method::GET, "/flotilla/v1/revoked", &[], Vec::new())
        .await;
    assert_eq!(headers["etag"].to_str().unwrap(), format!("\"{seq2}\""));
    let signed = SignedRevocationList::decode(&bytes).unwrap();
    assert!(signed.verify(&rig.gateway).unwrap().peers().is_empty());
}

#[test]
fn revocations_survive_a_restart_and_seq_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = key().public().to_peer_id();
    let b = key().public().to_peer_id();
    {
        let r = super::Revocations::open(dir.path()).unwrap();
        assert!(r.revoke(a, "lost laptop", 100).unwrap());
        assert!(r.revoke(b, "", 101).unwrap());
        assert!(r.restore(b).unwrap());
    }
    let r = super::Revocations::open(dir.path()).unwrap();
    assert!(r.contains(&a));
    assert!(!r.contains(&b));
    let (seq, peers) = r.listing();
    assert!(seq >= unix_now() * 1000 - 60_000, "{seq}");
    // The file lost: the next list still numbers above any a node holds.
    std::fs::remove_file(dir.path().join("revoked.json")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let fresh = super::Revocations::open(dir.path()).unwrap();
    assert!(fresh.revoke(b, "", 102).unwrap());
    assert!(fresh.listing().0 >= seq);
    assert_eq!(peers[&a.to_string()].reason, "lost laptop");
    assert_eq!(peers[&a.to_string()].revoked_unix_s, 100);
    std::fs::write(dir.path().join("revoked.json"), b"{not json").unwrap();
    assert!(super::Revocations::open(dir.path()).is_err());
}
