//! Fleet membership between real swarms on loopback: members exchange bytes and find each
//! other's records; a stranger (an open swarm that skips every check, as a modified node would)
//! gets an Error frame instead of bytes, leaves no provider record and is disconnected; forged,
//! borrowed and expired certificates are refused.

use std::time::Duration;

use flotilla_protocol::membership::MemberCertificate;
use flotilla_protocol::wire::{self, ErrorCode, Frame};
use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::super::membership::{push, unix_now};
use super::super::{FleetConfig, SwarmConfig, SwarmHandle};
use super::{blob, config, exchange, find_until, start, wait_connected};
use crate::ports::Network as _;

/// Strangers are dropped this long after connecting.
const GRACE: Duration = Duration::from_secs(2);

/// A fleet key (the gateway's identity) issuing certificates.
struct Fleet {
    key: Keypair,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            key: Keypair::generate_ed25519(),
        }
    }

    fn id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    fn cert(&self, member: PeerId, issued_at: u64, life: u64) -> MemberCertificate {
        MemberCertificate::issue(&self.key, member, issued_at, life).unwrap()
    }

    /// The gateway's swarm: the fleet key itself, no certificate.
    fn gateway(&self) -> SwarmConfig {
        let mut c = config();
        c.keypair = self.key.clone();
        c.fleet = Some(FleetConfig {
            fleet: Some(self.id()),
            certificate: None,
            stranger_grace: GRACE,
        });
        c
    }

    /// A member bootstrapping from `boot`.
    fn member(&self, boot: &SwarmHandle) -> SwarmConfig {
        let mut c = config();
        let me = c.keypair.public().to_peer_id();
        c.bootstrap = boot.listen_addrs();
        c.fleet = Some(FleetConfig {
            fleet: Some(self.id()),
            certificate: Some(self.cert(me, unix_now(), 3600)),
            stranger_grace: GRACE,
        });
        c
    }
}

/// Waits until `from` has no connection to `peer` any more.
async fn wait_disconnected(from: &SwarmHandle, peer: PeerId) {
    let deadline = tokio::time::Instant::now() + GRACE * 4;
    while from.connected_peers().await.unwrap().contains(&peer) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} still connected to {}",
            from.local_peer_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_trade_and_strangers_get_nothing() {
    let fleet = Fleet::new();
    let gw = start(fleet.gateway()).await;
    let a = start(fleet.member(&gw)).await;
    let b = start(fleet.member(&gw)).await;
    let (ida, idb) = (a.local_peer_id(), b.local_peer_id());
    assert!(a.membership_enforced());
    assert_eq!(a.fleet(), Some(fleet.id()));
    assert!(
        a.is_member(&fleet.id()),
        "the gateway is a member by definition"
    );

    // Members: records found, streams echo.
    let held = blob("held by a member");
    a.provide(&held).await.unwrap();
    find_until(&b, &held, 4, ida).await;
    exchange(&b, ida).await;
    assert!(a.wait_member(&idb, Duration::from_secs(5)).await);
    assert!(gw.wait_member(&ida, Duration::from_secs(5)).await);

    // A stranger that skips every check of its own: an open swarm, bootstrapping from `a`.
    let mut c = config();
    c.bootstrap = a.listen_addrs();
    let stranger = start(c).await;
    let ids = stranger.local_peer_id();
    wait_connected(&stranger, ida).await;
    assert!(!a.is_member(&ids));

    // It asks `a` for a blob and gets an Error frame (not a member), never an echo.
    let mut s = stranger.open_stream(ida).await.unwrap();
    let mut hello = Vec::new();
    wire::encode(
        &Frame::Hello {
            digest: held.clone(),
            want_table: true,
        },
        &mut hello,
    )
    .unwrap();
    s.write_all(&hello).await.unwrap();
    let _ = s.close().await;
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back).await;
    let (frame, used) = wire::decode(&back).unwrap().expect("a whole frame");
    assert_eq!(used, back.len(), "nothing after the refusal");
    assert!(
        matches!(frame, Frame::Error { code, .. } if code == ErrorCode::NOT_MEMBER),
        "{frame:?}"
    );

    // Its announcement reaches `a` but is not kept.
    let poisoned = blob("announced by a stranger");
    stranger.provide(&poisoned).await.unwrap();
    // Members do not open streams to it either.
    let refused = a.open_stream(ids).await;
    assert!(refused.is_err(), "a member opened a stream to a stranger");

    // After the grace period it is disconnected everywhere it connected.
    wait_disconnected(&a, ids).await;
    for seeker in [&a, &b, &gw] {
        let found = seeker
            .find_providers(&poisoned, 8)
            .await
            .unwrap_or_default();
        assert!(!found.contains(&ids), "stranger's record kept: {found:?}");
    }
    // The members' own records still resolve.
    find_until(&gw, &held, 4, ida).await;

    for n in [&gw, &a, &b, &stranger] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_borrowed_and_expired_certificates_are_refused() {
    let fleet = Fleet::new();
    let gw = start(fleet.gateway()).await;
    let a = start(fleet.member(&gw)).await;
    let ida = a.local_peer_id();

    let thief_key = Keypair::generate_ed25519();
    let mut c = config();
    c.keypair = thief_key.clone();
    c.bootstrap = a.listen_addrs();
    let thief = start(c).await;
    let idt = thief.local_peer_id();
    wait_connected(&thief, ida).await;

    let now = unix_now();
    let self_made = MemberCertificate::issue(&thief_key, idt, now, 3600).unwrap();
    let borrowed = fleet.cert(ida, now, 3600);
    let expired = fleet.cert(idt, now - 7200, 3600);
    for (what, cert) in [
        ("self-made", &self_made),
        ("another peer's", &borrowed),
        ("expired", &expired),
    ] {
        let verdict = push(thief.control(), ida, cert.encode()).await;
        assert_eq!(verdict, Ok(false), "{what} certificate");
        assert!(!a.is_member(&idt), "{what} certificate made a member");
    }
    // Garbage is refused too.
    assert_eq!(push(thief.control(), ida, vec![1, 2, 3]).await, Ok(false));

    // A node cannot even take a certificate that is not its own.
    let mut c = config();
    c.fleet = Some(FleetConfig {
        fleet: Some(fleet.id()),
        certificate: Some(borrowed.clone()),
        stranger_grace: GRACE,
    });
    assert!(matches!(
        super::super::spawn(c).await,
        Err(super::super::SwarmError::Membership(_))
    ));

    // A real certificate for it makes it a member, and the record it announced while its
    // handshake was pending is kept then.
    let announced = blob("announced before its certificate");
    thief.provide(&announced).await.unwrap();
    let genuine = fleet.cert(idt, now, 3600);
    assert_eq!(push(thief.control(), ida, genuine.encode()).await, Ok(true));
    assert!(a.is_member(&idt));
    find_until(&a, &announced, 4, idt).await;

    for n in [&gw, &a, &thief] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_learning_its_fleet_late_joins_once_it_has_a_certificate() {
    let fleet = Fleet::new();
    let gw = start(fleet.gateway()).await;
    // Starts knowing nothing, as a node whose gateway was down.
    let mut c = config();
    c.fleet = Some(FleetConfig::new(None));
    let me = c.keypair.public().to_peer_id();
    let late = start(c).await;
    assert!(!late.is_member(&fleet.id()));
    assert!(late.certificate().is_none());
    // A certificate before the fleet is known is refused.
    assert!(
        late.set_certificate(fleet.cert(me, unix_now(), 3600))
            .await
            .is_err()
    );

    late.set_fleet(fleet.id()).await.unwrap();
    assert!(late.is_member(&fleet.id()));
    late.set_certificate(fleet.cert(me, unix_now(), 3600))
        .await
        .unwrap();
    assert!(late.certificate().is_some());
    for a in gw.listen_addrs() {
        late.add_address(fleet.id(), a).await.unwrap();
    }
    assert_eq!(late.bootstrap().await.unwrap(), 1);
    assert!(gw.wait_member(&me, Duration::from_secs(5)).await);
    let d = blob("late");
    late.provide(&d).await.unwrap();
    find_until(&gw, &d, 4, me).await;
    for n in [&gw, &late] {
        n.shutdown().await.unwrap();
    }
}
