//! Swarms in one process on loopback: lookups and streams across a small fleet, dialing a
//! provider known only from a lookup, the TCP fallback, and withdrawing an announcement.
//! Fleet membership is tested in `tests/membership.rs`.

mod membership;

use std::time::Duration;

use flotilla_protocol::Digest;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};

use super::{Incoming, SwarmConfig, SwarmHandle, addr, spawn};
use crate::ports::Network as _;

/// A fresh identity with the defaults; also turns on `RUST_LOG`-driven logging.
fn config() -> SwarmConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    SwarmConfig::new(Keypair::generate_ed25519())
}

fn blob(name: &str) -> Digest {
    Digest::sha256_of(name.as_bytes())
}

/// Starts a swarm whose inbound streams echo what they receive.
async fn start(config: SwarmConfig) -> SwarmHandle {
    let (handle, incoming) = spawn(config).await.unwrap();
    tokio::spawn(echo(incoming));
    handle
}

async fn echo(mut incoming: Incoming) {
    while let Some((_, mut stream)) = incoming.next().await {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await?;
            stream.write_all(&buf).await?;
            stream.close().await?;
            Ok::<_, std::io::Error>(())
        });
    }
}

/// Opens a stream to `peer` and checks that it echoes a message.
async fn exchange(from: &SwarmHandle, peer: PeerId) {
    let mut stream = from
        .open_stream(peer)
        .await
        .unwrap_or_else(|e| panic!("{} -> {peer}: {e}", from.local_peer_id()));
    let msg = format!("{} says hello to {peer}", from.local_peer_id());
    stream.write_all(msg.as_bytes()).await.unwrap();
    stream.close().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, msg.as_bytes());
}

/// Looks `digest` up until `want` is among the providers (an announcement is fire-and-forget,
/// so the first lookup right after may miss it).
async fn find_until(
    from: &SwarmHandle,
    digest: &Digest,
    limit: usize,
    want: PeerId,
) -> Vec<PeerId> {
    // Generous: on a loaded two-core machine a lookup round can take seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = from.find_providers(digest, limit).await;
        if let Ok(found) = &found
            && found.contains(&want)
        {
            assert!(
                !found.contains(&from.local_peer_id()),
                "self among providers"
            );
            assert!(found.len() <= limit);
            return found.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never found {want} for {digest}: {found:?}",
            from.local_peer_id()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_connected(from: &SwarmHandle, peer: PeerId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !from.connected_peers().await.unwrap().contains(&peer) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never connected to {peer}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn addresses_to(from: &SwarmHandle, peer: PeerId) -> Vec<Multiaddr> {
    from.connections()
        .await
        .unwrap()
        .into_iter()
        .filter(|(p, _)| *p == peer)
        .map(|(_, a)| a)
        .collect()
}

fn tcp_only(mut config: SwarmConfig) -> SwarmConfig {
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_find_each_other_and_exchange_bytes() {
    let first = start(config()).await;
    let boot = first.listen_addrs();
    assert!(boot.iter().any(addr::is_quic) && boot.iter().any(addr::is_tcp));
    assert!(
        boot.iter()
            .all(|a| addr::split_p2p(a).map(|(p, _)| p) == Some(first.local_peer_id()))
    );
    let mut nodes = vec![first];
    for _ in 1..8 {
        let mut c = config();
        c.bootstrap = boot.clone();
        nodes.push(start(c).await);
    }
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.local_peer_id()).collect();

    // Bootstrap dials prefer QUIC although node 0's TCP address is known as well.
    for node in &nodes[1..] {
        wait_connected(node, ids[0]).await;
        let to_first = addresses_to(node, ids[0]).await;
        assert!(to_first.iter().all(addr::is_quic), "{to_first:?}");
    }

    let digests: Vec<Digest> = (0..8).map(|i| blob(&format!("layer {i}"))).collect();
    for (node, digest) in nodes.iter().zip(&digests) {
        node.provide(digest).await.unwrap();
        assert!(node.is_providing(digest).await.unwrap());
    }

    for (i, node) in nodes.iter().enumerate() {
        for (j, digest) in digests.iter().enumerate() {
            if i != j {
                find_until(node, digest, 8, ids[j]).await;
                exchange(node, ids[j]).await;
            }
        }
    }

    assert_eq!(nodes[0].bootstrap().await.unwrap(), 7);
    for node in &nodes {
        assert!(node.known_peers() >= 1, "{}", node.known_peers());
    }
    for node in &nodes {
        node.shutdown().await.unwrap();
    }
    assert!(nodes[0].connected_peers().await.is_err());
}

/// A seeker that meets the provider only through a GET_PROVIDERS answer can dial it: the
/// provider's announced addresses travel in its record and are kept after the lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_known_only_from_a_lookup_is_dialable() {
    let relay = start(config()).await;
    let mut c = config();
    c.bootstrap = relay.listen_addrs();
    let provider = start(c).await;
    let digest = blob("only through the relay");
    // An announcement goes to the peers in the routing table at that moment: on a loaded
    // machine the bootstrap may not have put the relay there yet, so announce again until the
    // relay holds the record.
    wait_connected(&provider, relay.local_peer_id()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        provider.provide(&digest).await.unwrap();
        let found = relay.find_providers(&digest, 1).await;
        if found
            .as_ref()
            .is_ok_and(|f| f.contains(&provider.local_peer_id()))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never learned the provider's record: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The relay keeps the record but forgets the provider as a routing peer, so it cannot hand
    // the seeker the provider's address any other way.
    relay.disconnect(provider.local_peer_id()).await.unwrap();
    let mut c = config();
    c.bootstrap = relay.listen_addrs();
    let seeker = start(c).await;
    wait_connected(&seeker, relay.local_peer_id()).await;

    let found = find_until(&seeker, &digest, 1, provider.local_peer_id()).await;
    assert_eq!(found, vec![provider.local_peer_id()]);
    // What each did of it is counted (`/metrics`).
    let (_, announced, _, _) = provider.dht_counters().snapshot();
    let (looked_up, _, bootstraps, _) = seeker.dht_counters().snapshot();
    let (_, _, _, answered) = relay.dht_counters().snapshot();
    assert!(announced >= 1 && looked_up >= 1 && bootstraps >= 1 && answered >= 2);
    // Under load the provider's own DHT traffic may have reached the seeker meanwhile: cut that
    // connection, so the exchange below must dial from the lookup's addresses.
    let connected = seeker.connected_peers().await.unwrap();
    if connected.contains(&provider.local_peer_id()) {
        seeker.disconnect(provider.local_peer_id()).await.unwrap();
        // The close takes effect a moment later; a stream opened before that would be opened
        // on the closing connection and fail (seen once under a loaded test run).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seeker
            .connected_peers()
            .await
            .unwrap()
            .contains(&provider.local_peer_id())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    exchange(&seeker, provider.local_peer_id()).await;
    assert!(
        addresses_to(&seeker, provider.local_peer_id())
            .await
            .iter()
            .all(addr::is_quic)
    );

    for node in [&relay, &provider, &seeker] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_only_node_talks_to_a_dual_stack_node() {
    let dual = start(config()).await;
    let mut c = tcp_only(config());
    // Both of the dual node's addresses: the QUIC one must be skipped, not hung on.
    c.bootstrap = dual.listen_addrs();
    let tcp = start(c).await;
    assert!(tcp.listen_addrs().iter().all(addr::is_tcp));
    wait_connected(&tcp, dual.local_peer_id()).await;

    let (d_dual, d_tcp) = (blob("held by dual"), blob("held by tcp"));
    dual.provide(&d_dual).await.unwrap();
    tcp.provide(&d_tcp).await.unwrap();
    find_until(&tcp, &d_dual, 4, dual.local_peer_id()).await;
    find_until(&dual, &d_tcp, 4, tcp.local_peer_id()).await;
    exchange(&tcp, dual.local_peer_id()).await;
    exchange(&dual, tcp.local_peer_id()).await;

    let both = [
        addresses_to(&tcp, dual.local_peer_id()).await,
        addresses_to(&dual, tcp.local_peer_id()).await,
    ];
    for addrs in both {
        assert!(
            !addrs.is_empty() && addrs.iter().all(addr::is_tcp),
            "{addrs:?}"
        );
    }
    for node in [&dual, &tcp] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprovided_blob_disappears_once_its_records_expire() {
    // Short record lifetimes; the provider re-announces what it still holds much more often.
    let quick = |mut c: SwarmConfig| {
        c.provider_ttl = Duration::from_secs(2);
        c.reprovide_interval = Duration::from_millis(500);
        c
    };
    let relay = start(quick(config())).await;
    let mut c = quick(config());
    c.bootstrap = relay.listen_addrs();
    let provider = start(c).await;
    let (kept, dropped) = (blob("kept"), blob("dropped"));
    for d in [&kept, &dropped] {
        provider.provide(d).await.unwrap();
        find_until(&relay, d, 4, provider.local_peer_id()).await;
    }

    provider.unprovide(&dropped).await.unwrap();
    assert!(!provider.is_providing(&dropped).await.unwrap());
    assert!(provider.is_providing(&kept).await.unwrap());
    // Other peers' copies of the record live on until their TTL.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut c = quick(config());
    c.bootstrap = relay.listen_addrs();
    let seeker = start(c).await;
    find_until(&seeker, &kept, 4, provider.local_peer_id()).await;
    let found = seeker.find_providers(&dropped, 4).await.unwrap();
    assert!(found.is_empty(), "{found:?}");
    let found = relay.find_providers(&dropped, 4).await.unwrap();
    assert!(found.is_empty(), "{found:?}");

    for node in [&relay, &provider, &seeker] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let mut c = config();
    c.bootstrap = vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()];
    assert!(matches!(
        spawn(c).await,
        Err(super::SwarmError::BootstrapAddress(_))
    ));

    let mut c = config();
    c.listen = vec!["/ip4/127.0.0.1/udp/0/quic".parse().unwrap()];
    assert!(matches!(
        spawn(c).await,
        Err(super::SwarmError::Listen { .. })
    ));
}

#[tokio::test]
async fn a_lone_node_answers_without_peers() {
    let node = start(config()).await;
    assert_eq!(
        node.find_providers(&blob("nobody"), 4).await.unwrap(),
        Vec::<PeerId>::new()
    );
    node.provide(&blob("mine")).await.unwrap();
    // Its own announcement is never returned to itself.
    assert!(
        node.find_providers(&blob("mine"), 4)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(node.open_stream(node.local_peer_id()).await.is_err());
    assert!(node.open_stream(PeerId::random()).await.is_err());
    assert!(matches!(
        node.bootstrap().await,
        Err(super::SwarmError::NoKnownPeers)
    ));
    node.shutdown().await.unwrap();
    node.shutdown().await.unwrap();
    assert!(node.find_providers(&blob("nobody"), 4).await.is_err());
}

/// A node with a site announces each blob under its site key too: a node of the same site
/// finds it there, a node of another site does not (its own site key is another key), and
/// every node still finds it under the blob's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_member_is_found_under_the_site_key() {
    let relay = start(config()).await;
    let mut c = config();
    c.bootstrap = relay.listen_addrs();
    c.site = Some("fra-1".to_owned());
    let provider = start(c).await;
    assert_eq!(provider.site(), Some("fra-1"));
    let digest = blob("layer of a site");
    wait_connected(&provider, relay.local_peer_id()).await;
    let mut c = config();
    c.bootstrap = relay.listen_addrs();
    c.site = Some("fra-1".to_owned());
    let same = start(c).await;
    let mut c = config();
    c.bootstrap = relay.listen_addrs();
    c.site = Some("ams-2".to_owned());
    let other = start(c).await;
    wait_connected(&same, relay.local_peer_id()).await;
    wait_connected(&other, relay.local_peer_id()).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let found = loop {
        provider.provide(&digest).await.unwrap();
        let found = same.find_site_providers(&digest, 8).await;
        if found
            .as_ref()
            .is_ok_and(|f| f.contains(&provider.local_peer_id()))
        {
            break found.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the site key never led to the provider: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(found, vec![provider.local_peer_id()]);
    let found = find_until(&other, &digest, 8, provider.local_peer_id()).await;
    assert!(found.contains(&provider.local_peer_id()));
    assert_eq!(other.find_site_providers(&digest, 8).await.unwrap(), vec![]);
    // No site, no site lookup.
    assert_eq!(relay.site(), None);
    assert_eq!(relay.find_site_providers(&digest, 8).await.unwrap(), vec![]);

    for node in [&relay, &provider, &same, &other] {
        node.shutdown().await.unwrap();
    }
}
