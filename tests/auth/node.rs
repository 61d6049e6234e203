//! A node behind a gateway that serves HTTPS with access control: the node trusts the gateway's
//! private CA (`gateway_ca_file`), pins its identity (`gateway_peer_id`), and pulls a repository
//! no anonymous user may read, for a local client that shows no credentials: the gateway lets
//! it read as a fleet member (the `Flotilla-Member` signature, SPEC §5.3).

use std::net::SocketAddr;

use flotilla_node::{Node, NodeConfig, NodeOptions};

use super::harness::{AuthGateway, Pki, Setup, basic};
use crate::fleet::{InNode, client, loopback_p2p, pull_blob};
use crate::support::noise;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[tokio::test]
async fn a_node_pulls_a_locked_repository_through_an_https_gateway() {
    let pki = Pki::new(&["localhost".to_owned(), "127.0.0.1".to_owned()]);
    let ca_pem = pki.ca_pem.clone();
    let gw = AuthGateway::start_with(Setup {
        tls: Some(pki),
        ..Setup::default()
    })
    .await;
    let layer = noise(3 << 20, 9);
    let manifest = gw
        .push_image("locked/app", "v1", &basic("root", "r00t-pw"), &layer)
        .await;
    // Nobody without credentials reads it at the gateway.
    gw.get("/v2/locked/app/manifests/v1", None)
        .await
        .expect(401);
    let fleet = gw.get("/flotilla/v1/info", None).await.json()["peer_id"]
        .as_str()
        .expect("peer_id")
        .to_owned();
    let token = std::fs::read_to_string(gw.data_dir.join("fleet.token"))
        .expect("fleet.token")
        .trim()
        .to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("gateway-ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();

    // A node pinned to another identity refuses this gateway at start.
    let someone_else = libp2p_identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let config = |dir: &str| NodeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: tmp.path().join(dir),
        gateway: gw.url(),
        p2p_listen: loopback_p2p(),
        shutdown_grace_secs: 2,
        fleet_token: Some(token.clone()),
        gateway_ca_file: Some(ca.clone()),
        ..NodeConfig::default()
    };
    let refused = Node::start_with(
        NodeConfig {
            gateway_peer_id: Some(someone_else),
            ..config("pinned-wrong")
        },
        NodeOptions::default(),
    )
    .await
    .err()
    .expect("a node pinned to another gateway identity must not start");
    assert!(refused.to_string().contains("gateway_peer_id"), "{refused}");

    let node = InNode::start_tuned(
        &gw.url(),
        &token,
        &tmp.path().join("node"),
        NodeOptions::default(),
        |c| {
            c.gateway_ca_file = Some(ca.clone());
            c.gateway_peer_id = Some(fleet.clone());
        },
    )
    .await;
    let http = client();
    let r = http
        .get(format!("{}/v2/locked/app/manifests/v1", node.url))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", gw.log());
    assert_eq!(
        r.headers()["docker-content-digest"].to_str().unwrap(),
        manifest
    );
    let m: serde_json::Value = r.json().await.unwrap();
    for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
        pull_blob(
            &http,
            &node.url,
            "locked/app",
            d["digest"].as_str().unwrap(),
            d["size"].as_u64().unwrap(),
        )
        .await;
    }
    node.stop().await;
}
