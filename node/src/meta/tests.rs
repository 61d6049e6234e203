//! Asking peers for tag records and manifests over in-memory streams.

use std::collections::HashMap;
use std::sync::Mutex;

use flotilla_protocol::tagrecord::{TagRecord, TagTarget};
use futures::FutureExt as _;
use libp2p::identity::Keypair;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

use super::*;

type Inbox = mpsc::Sender<(PeerId, Compat<tokio::io::DuplexStream>)>;

/// Peers reachable in memory: some "connected", others only found as providers.
struct FakeNet {
    local: PeerId,
    peers: Mutex<HashMap<PeerId, Inbox>>,
    connected: Mutex<Vec<PeerId>>,
    providers: Mutex<Vec<PeerId>>,
    provided: Mutex<Vec<RecordKey>>,
    provided_changed: tokio::sync::Notify,
}

impl FakeNet {
    fn new() -> Arc<FakeNet> {
        Arc::new(FakeNet {
            local: PeerId::random(),
            peers: Mutex::new(HashMap::new()),
            connected: Mutex::new(Vec::new()),
            providers: Mutex::new(Vec::new()),
            provided: Mutex::new(Vec::new()),
            provided_changed: tokio::sync::Notify::new(),
        })
    }

    /// A peer answering from its own store; `connected` or only a DHT provider.
    fn add_peer(&self, dir: &std::path::Path, connected: bool) -> (PeerId, Meta) {
        let id = PeerId::random();
        let store = Arc::new(TagStore::open(dir, 1 << 20).unwrap());
        let (meta, _) = Meta::start(store, FakeNet::new());
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(meta.clone().serve(tokio_stream_of(rx), admit_all()));
        self.peers.lock().unwrap().insert(id, tx);
        if connected {
            self.connected.lock().unwrap().push(id);
        } else {
            self.providers.lock().unwrap().push(id);
        }
        (id, meta)
    }
}

impl FakeNet {
    /// Waits until `key` was announced.
    async fn wait_provided(&self, key: &RecordKey) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let changed = self.provided_changed.notified();
                tokio::pin!(changed);
                // Registered before the check, so an announcement in between is not missed.
                changed.as_mut().enable();
                if self.provided.lock().unwrap().contains(key) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .expect("never announced");
    }
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> futures::stream::BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

impl MetaNetwork for FakeNet {
    fn local_peer_id(&self) -> PeerId {
        self.local
    }

    fn connected_peers(&self) -> BoxFuture<'static, Vec<PeerId>> {
        futures::future::ready(self.connected.lock().unwrap().clone()).boxed()
    }

    fn find_providers(&self, _key: RecordKey, limit: usize) -> BoxFuture<'static, Vec<PeerId>> {
        let mut p = self.providers.lock().unwrap().clone();
        p.truncate(limit);
        futures::future::ready(p).boxed()
    }

    fn open_meta(&self, peer: PeerId) -> BoxFuture<'static, Result<PeerStream, NetworkError>> {
        let inbox = self.peers.lock().unwrap().get(&peer).cloned();
        let local = self.local;
        async move {
            let inbox = inbox.ok_or(NetworkError::Unreachable {
                peer,
                reason: "unknown".into(),
            })?;
            let (a, b) = tokio::io::duplex(64 << 10);
            inbox
                .send((local, b.compat()))
                .await
                .map_err(|_| NetworkError::Stopped)?;
            Ok(Box::new(a.compat()) as PeerStream)
        }
        .boxed()
    }

    fn provide(&self, key: RecordKey) -> BoxFuture<'static, ()> {
        self.provided.lock().unwrap().push(key);
        self.provided_changed.notify_waiters();
        futures::future::ready(()).boxed()
    }

    fn unprovide(&self, _key: RecordKey) -> BoxFuture<'static, ()> {
        futures::future::ready(()).boxed()
    }
}

fn record(key: &Keypair, seq: u64, target: TagTarget) -> SignedTagRecord {
    SignedTagRecord::sign(
        TagRecord {
            repo: "team/app".parse().unwrap(),
            tag: "v1".parse().unwrap(),
            target,
            seq,
            issued_ms: seq,
        },
        key,
    )
    .unwrap()
}

fn names() -> (RepoName, Tag) {
    ("team/app".parse().unwrap(), "v1".parse().unwrap())
}

#[tokio::test]
async fn the_highest_verified_record_wins_and_a_stale_peer_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let gateway = Keypair::generate_ed25519();
    let gw = gateway.public().to_peer_id();
    let impostor = Keypair::generate_ed25519();
    let (d_old, d_new, d_forged) = (
        Digest::sha256_of(b"old"),
        Digest::sha256_of(b"new"),
        Digest::sha256_of(b"forged"),
    );
    let net = FakeNet::new();
    let (_, stale) = net.add_peer(&tmp.path().join("stale"), true);
    let (_, fresh) = net.add_peer(&tmp.path().join("fresh"), true);
    let (_, liar) = net.add_peer(&tmp.path().join("liar"), true);
    stale
        .learn_record(
            &record(&gateway, 3, TagTarget::Manifest(d_old.clone())),
            &gw,
        )
        .unwrap();
    fresh
        .learn_record(
            &record(&gateway, 8, TagTarget::Manifest(d_new.clone())),
            &gw,
        )
        .unwrap();
    // The liar holds a record with a higher number, signed by someone else (put in its store
    // directly: its own `learn_record` would refuse it).
    liar.store()
        .offer_record(&record(&impostor, 99, TagTarget::Manifest(d_forged)))
        .unwrap();

    let store = Arc::new(TagStore::open(&tmp.path().join("me"), 1 << 20).unwrap());
    let (me, _) = Meta::start(store.clone(), net.clone());
    let (repo, tag) = names();
    let got = me.record_from_peers(&repo, &tag, &gw).await.unwrap();
    assert_eq!(got.record.seq, 8);
    assert_eq!(got.record.digest(), Some(&d_new));
    assert_eq!(store.record(&repo, &tag).unwrap().unwrap().record.seq, 8);

    // Only a stale peer around: asking again keeps the newer record.
    let stale_only = FakeNet::new();
    let (sid, stale2) = stale_only.add_peer(&tmp.path().join("stale2"), true);
    stale2
        .learn_record(&record(&gateway, 3, TagTarget::Manifest(d_old)), &gw)
        .unwrap();
    let (me2, _) = Meta::start(store.clone(), stale_only.clone());
    let got = me2.record_from_peers(&repo, &tag, &gw).await.unwrap();
    assert_eq!(
        got.record.seq, 8,
        "a stale record from {sid} replaced a newer one"
    );
}

#[tokio::test]
async fn providers_are_asked_when_no_connected_peer_knows() {
    let tmp = tempfile::tempdir().unwrap();
    let gateway = Keypair::generate_ed25519();
    let gw = gateway.public().to_peer_id();
    let net = FakeNet::new();
    let (_, empty) = net.add_peer(&tmp.path().join("empty"), true);
    let (_, holder) = net.add_peer(&tmp.path().join("holder"), false);
    let bytes = Bytes::from_static(br#"{"schemaVersion":2}"#);
    let d = Digest::sha256_of(&bytes);
    holder
        .learn_record(&record(&gateway, 5, TagTarget::Manifest(d.clone())), &gw)
        .unwrap();
    holder
        .learn_manifest(&d, "x/y", bytes.clone())
        .await
        .unwrap();
    // The connected peer knows nothing, so the DHT providers are asked.
    assert!(
        empty
            .store()
            .record(&names().0, &names().1)
            .unwrap()
            .is_none()
    );

    let store = Arc::new(TagStore::open(&tmp.path().join("me"), 1 << 20).unwrap());
    let (me, _) = Meta::start(store.clone(), net.clone());
    let (repo, tag) = names();
    let got = me.record_from_peers(&repo, &tag, &gw).await.unwrap();
    assert_eq!(got.record.seq, 5);
    let m = me.manifest_from_peers(&d, Some(&gw)).await.unwrap();
    assert_eq!(m.bytes, bytes);
    assert_eq!(m.media_type, "x/y");
    assert_eq!(store.manifest(&d).unwrap().unwrap().bytes, bytes);
    // What was learned is announced.
    net.wait_provided(&tag_key(&repo, &tag)).await;
    net.wait_provided(&manifest_key(&d)).await;
    // Nobody holds this one.
    assert!(
        me.manifest_from_peers(&Digest::sha256_of(b"none"), Some(&gw))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_manifest_that_does_not_hash_to_its_digest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let net = FakeNet::new();
    let (_, liar) = net.add_peer(&tmp.path().join("liar"), true);
    let (_, honest) = net.add_peer(&tmp.path().join("honest"), false);
    let real = Bytes::from_static(br#"{"schemaVersion":2,"real":true}"#);
    let d = Digest::sha256_of(&real);
    honest
        .learn_manifest(&d, "x/y", real.clone())
        .await
        .unwrap();
    // The liar's store is written under the digest with other bytes, bypassing the check.
    liar.store()
        .put_manifest(&Digest::sha256_of(b"{}"), "x/y", b"{}")
        .unwrap();
    let forged = CachedManifest {
        media_type: "x/y".into(),
        bytes: Bytes::from_static(b"{\"evil\":1}"),
    };
    let store = Arc::new(TagStore::open(&tmp.path().join("me"), 1 << 20).unwrap());
    let (me, _) = Meta::start(store.clone(), net.clone());
    // Serve the forged answer through the wire directly, as the liar would.
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut b = b.compat();
        let _ = wire::read_request(&mut b).await;
        wire::write_answer(&mut b, &Answer::Manifest(forged)).await
    });
    let mut a = a.compat();
    wire::write_request(&mut a, &Request::Manifest(d.clone()))
        .await
        .unwrap();
    let Answer::Manifest(m) = wire::read_answer(&mut a).await.unwrap() else {
        panic!("expected a manifest answer");
    };
    server.await.unwrap().unwrap();
    assert!(me.learn_manifest(&d, &m.media_type, m.bytes).await.is_err());
    assert!(store.manifest(&d).unwrap().is_none());
    // Through the service: the liar has nothing under `d`, the honest provider has it.
    let got = me.manifest_from_peers(&d, None).await.unwrap();
    assert_eq!(got.bytes, real);
}
