//! Revoking a fleet member (SPEC §5.3): A and B hold an image; the gateway revokes A; within a
//! poll of the list B and the gateway refuse and disconnect A, A's own health says why, and C
//! pulls the image from B and the gateway without A sending it a byte. B keeps the list on
//! disk and holds the revocation again after a restart. And a node polling as in production
//! (every minute) hears of a revocation from the gateway's answers while it pulls.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_node::NodeOptions;
use libp2p_identity::PeerId;

use super::{
    FLEET_TOKEN, FleetGateway, Image, InNode, LogFile, MIB, PULL_LIMIT, client, log_runtime, pull,
    settled_stats, warnings,
};

/// Runs `flotilla fleet ARGS`, which must succeed; its output.
fn fleet_cli(args: &[&str]) -> String {
    let out = Command::new(crate::support::flotilla_bin())
        .arg("fleet")
        .args(args)
        .env_remove("FLOTILLA_USER")
        .output()
        .expect("run flotilla fleet");
    assert!(
        out.status.success(),
        "flotilla fleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How often the nodes here poll the list (60 s in production).
const POLL: Duration = Duration::from_millis(200);

#[test]
fn a_revoked_member_is_cut_off_by_its_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("revoke.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(revoke(tmp.path(), &log));
}

async fn start(gw: &FleetGateway, dir: &Path) -> InNode {
    let options = NodeOptions {
        revocation_poll: Some(POLL),
        ..NodeOptions::default()
    };
    InNode::start_tuned(&gw.url(), FLEET_TOKEN, dir, options, |_| {}).await
}

/// Waits up to 10 s for `cond`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "[revoke] {what} within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revoke(dir: &Path, log: &LogFile) {
    const WHAT: &str = "revoke";
    let gw = FleetGateway::start();
    let http = client();
    let img = Image::push(&http, &gw.url(), "fleet/revoke", "v1", &[16 * MIB], 21).await;
    let a = start(&gw, &dir.join("a")).await;
    let b = start(&gw, &dir.join("b")).await;
    pull(&http, &a.url, &img).await;
    pull(&http, &b.url, &img).await;
    let a_id: PeerId = a.peer_id.parse().unwrap();

    // An admin finds the host's peer id in the gateway's member list and revokes it, with
    // `flotilla fleet` (the HTTP endpoints under it: SPEC §5.3).
    let table = fleet_cli(&["members", "--gateway", &gw.url()]);
    let row = table
        .lines()
        .find(|l| l.starts_with(&a.peer_id))
        .unwrap_or_else(|| panic!("A is not in the member list:\n{table}"));
    assert!(row.contains("127.0.0.1:"), "{row}");
    assert!(
        row.trim_end().ends_with("no"),
        "A is listed as revoked already: {row}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&fleet_cli(&["members", "--json", "--gateway", &gw.url()])).unwrap();
    assert!(
        listed["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["peer_id"] == a.peer_id && m["revoked"] == false),
        "{listed}"
    );
    let said = fleet_cli(&[
        "revoke",
        &a.peer_id,
        "--reason",
        "decommissioned",
        "--gateway",
        &gw.url(),
    ]);
    assert!(said.contains(&format!("{} revoked", a.peer_id)), "{said}");
    let audit = gw.gw.data_dir.join("audit.log");
    eventually("the revocation is in the audit log", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| {
            t.lines().any(|l| {
                l.contains("\"member.revoke\"")
                    && l.contains(&a.peer_id)
                    && l.contains("decommissioned")
            })
        })
    })
    .await;
    let t0 = Instant::now();
    eventually("B takes the revocation", || b.swarm.is_revoked(&a_id)).await;
    eventually("B no longer counts A as a member", || {
        !b.swarm.is_member(&a_id)
    })
    .await;
    println!(
        "[{WHAT}] B dropped A {:?} after the revocation",
        t0.elapsed()
    );
    // A reads the list too and knows why nobody serves it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get(format!("{}/flotilla/v1/health", a.url))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        if status == 503 {
            let reasons = body["reasons"].to_string();
            assert!(reasons.contains("revoked"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's health stayed {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B disconnects A within a second of taking the list.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.swarm.connected_peers().await.unwrap().contains(&a_id) {
        assert!(Instant::now() < deadline, "B is still connected to A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // C pulls: from B and the gateway, not from A.
    let served_before = settled_stats(&http, &a.url).await.served_bytes;
    let c = start(&gw, &dir.join("c")).await;
    eventually("C takes the list", || c.swarm.is_revoked(&a_id)).await;
    if tokio::time::timeout(PULL_LIMIT, pull(&http, &c.url, &img))
        .await
        .is_err()
    {
        for l in warnings(&log.read()) {
            println!("[{WHAT}] node log: {l}");
        }
        panic!("[{WHAT}] C did not pull the image within {PULL_LIMIT:?}");
    }
    let sa = settled_stats(&http, &a.url).await;
    let sc = settled_stats(&http, &c.url).await;
    println!(
        "[{WHAT}] C: peer {} origin {}; A served {} B during C's pull",
        sc.peer_bytes,
        sc.origin_bytes,
        sa.served_bytes - served_before
    );
    assert_eq!(
        sa.served_bytes, served_before,
        "the revoked member A served pieces after its revocation"
    );
    assert!(
        !c.swarm.is_member(&a_id),
        "C counts the revoked A as a member"
    );

    // B restarted: the revocation holds before the gateway is asked again.
    let b_dir = dir.join("b");
    b.stop().await;
    let b = start(&gw, &b_dir).await;
    eventually("a restarted B keeps the revocation", || {
        b.swarm.is_revoked(&a_id)
    })
    .await;
    assert!(b_dir.join("revoked.bin").exists());

    // Restored: B takes the newer list, and A counts as a member again once it reconnects.
    let said = fleet_cli(&["restore", &a.peer_id, "--gateway", &gw.url()]);
    assert!(said.contains(&format!("{} restored", a.peer_id)), "{said}");
    eventually("B takes the restoration", || !b.swarm.is_revoked(&a_id)).await;
    eventually("the restoration is in the audit log", || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("\"member.restore\""))
    })
    .await;
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[test]
fn a_pulling_member_hears_of_a_revocation_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("heard.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(heard(tmp.path()));
}

async fn heard(dir: &Path) {
    let gw = FleetGateway::start();
    let http = client();
    let first = Image::push(&http, &gw.url(), "fleet/heard", "v1", &[4 * MIB], 22).await;
    // Both poll the list as in production: at start, then once a minute.
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let options = NodeOptions::default();
        nodes.push(
            InNode::start_tuned(&gw.url(), FLEET_TOKEN, &dir.join(name), options, |_| {}).await,
        );
    }
    let (b, a) = (nodes.pop().unwrap(), nodes.pop().unwrap());
    pull(&http, &b.url, &first).await;
    let a_id: PeerId = a.peer_id.parse().unwrap();
    fleet_cli(&["revoke", &a.peer_id, "--gateway", &gw.url()]);

    // B pulls something new: the gateway's answers to its table and swarm requests name the
    // newer list, and B takes it long before its next poll.
    let second = Image::push(&http, &gw.url(), "fleet/heard", "v2", &[4 * MIB], 23).await;
    let t0 = Instant::now();
    pull(&http, &b.url, &second).await;
    eventually("B takes the revocation it heard of", || {
        b.swarm.is_revoked(&a_id)
    })
    .await;
    println!(
        "[heard] B took the revocation {:?} after its pull began",
        t0.elapsed()
    );
    eventually("B no longer counts A as a member", || {
        !b.swarm.is_member(&a_id)
    })
    .await;
    // A node started after the revocation holds it from its first poll, pulling nothing.
    let d = InNode::start_tuned(
        &gw.url(),
        FLEET_TOKEN,
        &dir.join("d"),
        NodeOptions::default(),
        |_| {},
    )
    .await;
    eventually("a node started since takes the list", || {
        d.swarm.is_revoked(&a_id)
    })
    .await;
    for n in [a, b, d] {
        n.stop().await;
    }
}
