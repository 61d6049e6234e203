//! Pulling through a partition (spec §6.4): the gateway stopped after a push, and the fleet
//! still pulls that tag; when it returns, a newer tag wins, and an older record offered by a
//! peer never replaces it.
//!
//! A real gateway process and three nodes in the test process. Node A pulls `v1` while the
//! gateway is up; the gateway is killed; node B, which never pulled, pulls `v1` through its OCI
//! endpoint (manifest from A, config and layers from the swarm), byte for byte. The gateway
//! comes back on the same data directory and port, `v2` is pushed to the same tag, and B serves
//! `v2`. The gateway is killed again: B still serves `v2` although A and C only hold the older
//! record, and A (which had the older record) learns the newer one from B and pulls `v2`.

use std::path::Path;
use std::time::Duration;

use flotilla_node::NodeOptions;
use flotilla_protocol::tagrecord::SignedTagRecord;

use crate::fleet::{
    FLEET_TOKEN, FleetGateway, Image, InNode, LogFile, client, log_runtime, pull, settled_stats,
};
use crate::support::Member;

const MIB: usize = 1 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn the_gateway_stopped_after_a_push_the_fleet_still_pulls_that_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("partition.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(partition(tmp.path()));
    }));
    if let Err(panic) = outcome {
        let text = log.read();
        let tail: Vec<&str> = text.lines().rev().take(80).collect();
        eprintln!("--- last node log lines ---");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
        std::panic::resume_unwind(panic);
    }
}

/// The manifest `base` answers for `repo:tag`: status, digest header, bytes.
async fn manifest_at(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
) -> (u16, Option<String>, Vec<u8>) {
    let r = http
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .expect("manifest request");
    let status = r.status().as_u16();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, digest, r.bytes().await.expect("body").to_vec())
}

/// The sequence number of the gateway's signed record of `edge/app:<tag>`, after checking that
/// it verifies against the gateway's peer id.
async fn tag_record(http: &reqwest::Client, gateway: &str, tag: &str) -> u64 {
    let member = Member::enroll(http, gateway, FLEET_TOKEN).await;
    let info = crate::fleet::get_json(http, &format!("{gateway}/flotilla/v1/info")).await;
    let r = member
        .get(http, &format!("{gateway}/flotilla/v1/tags/edge/app/{tag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let signed = SignedTagRecord::decode(&r.bytes().await.unwrap()).unwrap();
    let peer = signed.signer_peer_id().unwrap();
    assert_eq!(peer.to_string(), info["peer_id"].as_str().unwrap());
    let record = signed.verify(&peer).unwrap();
    assert_eq!(record.tag.as_str(), tag);
    record.seq
}

async fn partition(dir: &Path) {
    let mut gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    let v1 = Image::push(
        &http,
        &gw.url(),
        "edge/app",
        "stable",
        &[3 * MIB, 5 * MIB + 17, 1000],
        1,
    )
    .await;
    let stable_seq = tag_record(&http, &gw.url(), "stable").await;
    let member = Member::enroll(&http, &gw.url(), FLEET_TOKEN).await;
    let never = member
        .get(
            &http,
            &format!("{}/flotilla/v1/tags/edge/app/never", gw.url()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(never.status(), 404);
    // Tag records are for members only.
    let anonymous = http
        .get(format!("{}/flotilla/v1/tags/edge/app/stable", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(InNode::start(&gw.url(), &dir.join(name), NodeOptions::default()).await);
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Node A pulls while the gateway is up: it keeps the signed record and the manifest.
    pull(&http, &a.url, &v1).await;

    // The gateway stops.
    gw.gw.kill9();
    assert!(
        http.get(format!("{}/v2/", gw.url())).send().await.is_err(),
        "the gateway still answers"
    );

    // Node B never pulled: the tag, the manifest and every blob come from the fleet.
    let took = pull(&http, &b.url, &v1).await;
    println!("[partition] node B pulled v1 without the gateway in {took:?}");
    let sb = settled_stats(&http, &b.url).await;
    assert_eq!(sb.origin_bytes, 0, "node B reached the gateway: {sb:?}");
    assert!(sb.peer_bytes >= v1.size(), "node B's bytes: {sb:?}");
    // HEAD answers from the record too.
    let head = http
        .head(format!("{}/v2/edge/app/manifests/stable", c.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["docker-content-digest"].to_str().unwrap(),
        v1.digest
    );
    // A tag nobody ever resolved cannot be answered, and says so.
    let (status, _, _) = manifest_at(&http, &c.url, "edge/app", "never").await;
    assert_eq!(status, 503);
    let listing = http
        .get(format!("{}/v2/edge/app/tags/list", c.url))
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 503);

    // The gateway returns (same data directory and port), and the tag moves.
    gw.gw.restart();
    let v2 = Image::push(&http, &gw.url(), "edge/app", "stable", &[2 * MIB, 700], 2).await;
    assert_ne!(v1.digest, v2.digest);
    // The sequence survived the restart and moved on with the tag.
    assert!(tag_record(&http, &gw.url(), "stable").await > stable_seq);
    // Catch-up: B resolves the tag at the gateway again.
    tokio::time::timeout(Duration::from_secs(60), pull(&http, &b.url, &v2))
        .await
        .expect("node B pulled v2 in time");

    // Partitioned again. A and C hold only v1's record; B holds v2's.
    gw.gw.kill9();
    // B keeps v2 whatever A and C offer.
    let (status, digest, body) = manifest_at(&http, &b.url, "edge/app", "stable").await;
    assert_eq!(status, 200);
    assert_eq!(digest.as_deref(), Some(v2.digest.as_str()));
    assert_eq!(body, v2.manifest);
    // A learns v2 from B (its own record is older) and pulls the whole image from peers.
    pull(&http, &a.url, &v2).await;

    // C restarts during the outage, bootstrapping from A and B as an edge site's config would
    // list them: it takes the fleet key from its tag records and its kept certificate, so the
    // others serve it, and pulls v2 from them.
    let mut nodes = nodes;
    let c = nodes.pop().expect("node C");
    let bootstrap: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            let id = n.swarm.local_peer_id();
            n.swarm
                .listen_addrs()
                .into_iter()
                .map(move |a| format!("{a}/p2p/{id}"))
        })
        .collect();
    c.stop().await;
    let c = InNode::start_tuned(
        &gw.url(),
        FLEET_TOKEN,
        &dir.join("c"),
        NodeOptions::default(),
        |cfg| cfg.bootstrap = bootstrap,
    )
    .await;
    // It answers from what it knows as soon as it is up; v2's record arrives with its first
    // member connection.
    let members: Vec<_> = nodes.iter().map(|n| n.swarm.local_peer_id()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !members.iter().any(|m| c.swarm.is_member(m)) {
        assert!(
            std::time::Instant::now() < deadline,
            "node C never verified a peer after its restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = tokio::time::timeout(Duration::from_secs(90), pull(&http, &c.url, &v2))
        .await
        .expect("node C, restarted in the outage, pulled v2 in time");
    println!("[partition] node C, restarted during the outage, pulled v2 in {took:?}");
    nodes.push(c);

    for n in nodes {
        n.stop().await;
    }
}
