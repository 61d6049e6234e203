//! Fleet membership end to end (SPEC §5.3) against the real `flotilla gateway` binary: nodes
//! given the fleet token enroll and pull through each other; a node started with a wrong token
//! is a stranger that gets no piece from any member and leaves no provider record; the join
//! endpoint refuses wrong tokens; a gateway without a configured token makes one, private.

use std::time::{Duration, Instant};

use flotilla_node::NodeOptions;
use flotilla_node::ports::Network as _;
use flotilla_node::swarm::SwarmHandle;
use flotilla_node::transfer::{self, TransferError};
use flotilla_protocol::Digest;
use flotilla_protocol::wire::ErrorCode;

use crate::fleet::{
    FLEET_TOKEN, FleetGateway, Image, InNode, client, get_json, get_text, pull, settled_stats,
};
use crate::support::Gateway;

const MIB: usize = 1 << 20;

/// Waits (at most `limit`) until `cond` holds, polling.
async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connected(from: &SwarmHandle, to: &SwarmHandle) -> bool {
    from.connected_peers()
        .await
        .unwrap_or_default()
        .contains(&to.local_peer_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_pull_and_a_stranger_gets_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = FleetGateway::start();
    let http = client();
    let info = gw.info(&http).await;
    let img = Image::push(
        &http,
        &gw.url(),
        "fleet/members",
        "v1",
        &[6 * MIB, 3 * MIB],
        7,
    )
    .await;

    // Enrollment needs the token.
    let join = format!("{}/flotilla/v1/join", gw.url());
    for auth in [None, Some("Bearer wrong")] {
        let mut req = http.post(&join).body("{}");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
    }

    let a = InNode::start(&gw.url(), &tmp.path().join("a"), NodeOptions::default()).await;
    let b = InNode::start(&gw.url(), &tmp.path().join("b"), NodeOptions::default()).await;
    let stranger = InNode::start_with_token(
        &gw.url(),
        "not-the-fleet-token",
        &tmp.path().join("stranger"),
        NodeOptions::default(),
    )
    .await;
    assert!(
        a.swarm.certificate().is_some(),
        "a member holds a certificate"
    );
    assert!(b.swarm.certificate().is_some());
    assert!(
        stranger.swarm.certificate().is_none(),
        "the wrong token got a certificate"
    );
    assert!(
        tmp.path().join("a").join("member.cert").is_file(),
        "the certificate is kept for restarts"
    );
    // Their health says the same: the member is ready, the stranger is not and says why.
    let health = |url: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("{url}/flotilla/v1/health"))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, h) = health(a.url.clone()).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        (h["ready"].clone(), h["member"].clone()),
        (true.into(), true.into()),
        "{h}"
    );
    assert_eq!(h["gateway_peer_id"], info["peer_id"], "{h}");
    assert!(h["certificate_not_after_unix_s"].as_u64().is_some(), "{h}");
    let (status, h) = health(stranger.url.clone()).await;
    assert_eq!(status, 503, "{h}");
    assert_eq!(h["ready"], false, "{h}");
    assert!(
        h["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("no membership certificate")),
        "{h}"
    );
    let metrics = get_text(&http, &format!("{}/metrics", stranger.url)).await;
    assert!(metrics.contains("\nflotilla_node_ready 0\n"), "{metrics}");
    assert_eq!(
        a.swarm.fleet().map(|p| p.to_string()),
        info["peer_id"].as_str().map(str::to_owned)
    );

    // Members pull; the second gets pieces from the first.
    pull(&http, &a.url, &img).await;
    pull(&http, &b.url, &img).await;
    let sb = settled_stats(&http, &b.url).await;
    assert!(sb.peer_bytes > 0, "b got nothing from a: {sb:?}");
    let sa_before = settled_stats(&http, &a.url).await;

    // The stranger reaches `a` and asks it for a layer over the piece protocol: refused.
    for addr in a.swarm.listen_addrs() {
        stranger
            .swarm
            .add_address(a.swarm.local_peer_id(), addr)
            .await
            .unwrap();
    }
    let layer: Digest = img.blobs[1].0.parse().unwrap();
    // It may have met `a` in a lookup already; a fresh connection keeps the refusal well inside
    // the grace period. Its own swarm lets it open (it verified `a`'s certificate); `a`
    // answers with a refusal.
    stranger
        .swarm
        .disconnect(a.swarm.local_peer_id())
        .await
        .unwrap();
    wait_until(
        "the stranger's own disconnect",
        Duration::from_secs(10),
        || {
            let (a, s) = (a.swarm.clone(), stranger.swarm.clone());
            async move { !connected(&s, &a).await }
        },
    )
    .await;
    let stream = stranger
        .swarm
        .open_stream(a.swarm.local_peer_id())
        .await
        .expect("the stranger reaches a member");
    match transfer::fetch_table(stream, &layer).await {
        Err(TransferError::Remote { code, .. }) => assert_eq!(code, ErrorCode::NOT_MEMBER),
        other => panic!("a stranger got {other:?}"),
    }
    assert!(
        !a.swarm.is_member(&stranger.swarm.local_peer_id()),
        "the stranger became a member"
    );
    // Nor does the gateway's HTTP origin serve it the layer or its table.
    for path in [
        format!("/flotilla/v1/blobs/{layer}"),
        format!("/flotilla/v1/pieces/{layer}"),
    ] {
        let r = http
            .get(format!("{}{path}", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }

    // It announces a blob; the record is dropped and it is disconnected after the grace period.
    let poisoned = Digest::sha256_of(b"a stranger's blob");
    let _ = stranger.swarm.provide(&poisoned).await;
    wait_until(
        "the stranger's disconnection",
        Duration::from_secs(30),
        || {
            let (a, s) = (a.swarm.clone(), stranger.swarm.clone());
            async move { !connected(&a, &s).await }
        },
    )
    .await;
    for member in [&a, &b] {
        let found = member
            .swarm
            .find_providers(&poisoned, 8)
            .await
            .unwrap_or_default();
        assert!(
            !found.contains(&stranger.swarm.local_peer_id()),
            "stranger's provider record kept: {found:?}"
        );
    }
    // Members still find each other.
    let found = b.swarm.find_providers(&layer, 8).await.unwrap();
    assert!(found.contains(&a.swarm.local_peer_id()), "{found:?}");

    let ss = settled_stats(&http, &stranger.url).await;
    assert_eq!(ss.peer_bytes, 0, "the stranger got pieces: {ss:?}");
    let sa = settled_stats(&http, &a.url).await;
    assert_eq!(
        sa.served_bytes, sa_before.served_bytes,
        "a served the stranger"
    );

    for n in [a, b, stranger] {
        n.stop().await;
    }
}

#[test]
fn a_gateway_without_a_token_makes_a_private_one() {
    let gw = Gateway::start();
    let path = gw.data_dir.join("fleet.token");
    let token = std::fs::read_to_string(&path).expect("fleet.token created");
    assert_eq!(token.trim().len(), 64, "{token:?}");
    assert_ne!(token.trim(), FLEET_TOKEN);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(gw.log().contains("fleet.token"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_reaches_the_next_renewal() {
    let tmp = tempfile::tempdir().unwrap();
    // Certificates of the shortest life the gateway issues (60 s): renewal after 30.
    let mut gw = FleetGateway::start_with_config("member_cert_secs = 60\n");
    let http = client();
    gw.info(&http).await;
    let token_file = tmp.path().join("fleet.token");
    std::fs::write(&token_file, format!("{FLEET_TOKEN}\n")).unwrap();
    let file = token_file.clone();
    let node = InNode::start_tuned(
        &gw.url(),
        FLEET_TOKEN,
        &tmp.path().join("node"),
        NodeOptions::default(),
        |c| {
            c.fleet_token = None;
            c.fleet_token_file = Some(file);
        },
    )
    .await;
    let first = node.swarm.certificate().expect("enrolled").not_after;

    // The operator rotates the token: the gateway takes the new one, the file on the node's
    // host is replaced. The node is not restarted.
    gw.restart_with_token("a-rotated-fleet-token");
    std::fs::write(&token_file, "a-rotated-fleet-token\n").unwrap();
    wait_until(
        "a renewal with the rotated token",
        Duration::from_secs(60),
        || {
            let swarm = node.swarm.clone();
            async move { swarm.certificate().is_some_and(|c| c.not_after > first) }
        },
    )
    .await;
    let h = get_json(&http, &format!("{}/flotilla/v1/health", node.url)).await;
    assert_eq!(h["ready"], true, "{h}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rejoins_a_gateway_restarted_on_other_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = FleetGateway::start();
    let http = client();
    let before = gw.info(&http).await;
    let node = InNode::start(
        &gw.url(),
        &tmp.path().join("node"),
        NodeOptions {
            gateway_watch: Some(Duration::from_millis(500)),
            ..NodeOptions::default()
        },
    )
    .await;
    // The gateway comes back with the same identity on other swarm ports (ephemeral here, as
    // by default), and knows no node.
    assert!(gw.gw.stop(), "the gateway did not stop cleanly");
    gw.gw.restart();
    let after = gw.info(&http).await;
    assert_eq!(after["peer_id"], before["peer_id"]);
    assert_ne!(
        after["addrs"], before["addrs"],
        "the swarm ports did not change"
    );
    let health = |url: String| {
        let http = http.clone();
        async move {
            http.get(format!("{url}/flotilla/v1/health"))
                .send()
                .await
                .ok()?
                .json::<serde_json::Value>()
                .await
                .ok()
        }
    };
    wait_until(
        "the node's connection to the restarted gateway",
        Duration::from_secs(20),
        || {
            let h = health(node.url.clone());
            async move { h.await.is_some_and(|h| h["gateway_connected"] == true) }
        },
    )
    .await;
    node.stop().await;
}
