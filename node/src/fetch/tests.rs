//! The download driver against in-memory peers (real transfer servers and stores over pipes)
//! and a fake gateway on loopback.

use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::testkit::{CorruptSource, FakeGateway, FakeNetwork, SlowSource, TestBlob, TestStore};
use super::{FetchConfig, FetchError, Fetcher};
use crate::ports::PieceSource;

/// Everything one test needs: a gateway, a network of peers, the local store and the fetcher.
pub(crate) struct Rig {
    pub key: Keypair,
    pub gw: FakeGateway,
    pub net: Arc<FakeNetwork>,
    pub local: TestStore,
    pub fetcher: Fetcher,
}

pub(crate) fn config(gateway_url: String) -> FetchConfig {
    let mut cfg = FetchConfig::new(gateway_url);
    cfg.provider_refresh = Duration::from_millis(100);
    cfg.stall_timeout = Duration::from_secs(5);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.http_timeout = Duration::from_secs(2);
    cfg
}

impl Rig {
    pub async fn new() -> Rig {
        Rig::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut FetchConfig)) -> Rig {
        super::testkit::init_log();
        let key = Keypair::generate_ed25519();
        let gw = FakeGateway::start(key.clone()).await;
        let net = FakeNetwork::new();
        let local = TestStore::new().await;
        let mut cfg = config(gw.url());
        tweak(&mut cfg);
        let fetcher = Fetcher::new(cfg, net.clone(), local.store.clone(), local.store.clone())
            .expect("fetcher");
        let store = local.store.clone();
        assert!(fetcher.set_leases(Arc::new(move |d| {
            store.lease(d).map(|l| Box::new(l) as super::Lease)
        })));
        Rig {
            key,
            gw,
            net,
            local,
            fetcher,
        }
    }

    pub fn blob(&self, len: usize, piece_size: u32, seed: u64) -> TestBlob {
        let b = TestBlob::new(len, piece_size, seed, &self.key);
        self.gw.add(&b);
        b
    }

    /// Adds a peer holding `pieces` of `blob` (its store is kept alive by the server).
    pub async fn peer(&self, blob: &TestBlob, pieces: impl IntoIterator<Item = u32>) -> PeerId {
        self.peer_at(blob, pieces, None).await
    }

    /// Adds a peer of `site` holding `pieces` of `blob`.
    pub async fn peer_at(
        &self,
        blob: &TestBlob,
        pieces: impl IntoIterator<Item = u32>,
        site: Option<&str>,
    ) -> PeerId {
        let store = TestStore::new().await;
        store.seed(blob, pieces).await;
        let id = self.net.add_peer_at(store.source(), site);
        // The temporary directory must outlive the test's use of the peer.
        std::mem::forget(store);
        id
    }
}

impl Rig {
    /// Downloads `blob` to the end, checks every byte the local store holds, and returns the
    /// download's stats.
    pub async fn download(&self, blob: &TestBlob) -> super::TransferStats {
        let dl = within(20, self.fetcher.open(&blob.digest)).await.unwrap();
        within(20, dl.wait_complete()).await.unwrap();
        assert_eq!(
            read_back(&*self.local.store, blob).await,
            blob.data.as_slice()
        );
        dl.stats()
    }
}

/// The blob's bytes as the local store holds them.
pub(crate) async fn read_back(source: &dyn PieceSource, blob: &TestBlob) -> Vec<u8> {
    let mut out = Vec::with_capacity(blob.data.len());
    for i in 0..blob.pieces() {
        let f = source.piece_file(&blob.digest, i).await.unwrap();
        let mut buf = vec![0u8; f.len as usize];
        f.file.read_exact_at(&mut buf, f.offset).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn three_peers_give_the_right_bytes() {
    let rig = Rig::new().await;
    let blob = rig.blob(40 * 16384 - 100, 16384, 1);
    let n = blob.pieces();
    rig.peer(&blob, 0..n / 2).await;
    rig.peer(&blob, n / 3..n).await;
    rig.peer(&blob, (0..n).filter(|i| i % 2 == 0)).await;
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    assert_eq!(dl.piece_count(), n);
    within(20, dl.wait_complete()).await.unwrap();
    assert_eq!(
        read_back(&*rig.local.store, &blob).await,
        blob.data.as_slice()
    );
    let stats = dl.stats();
    assert_eq!(stats.peer_bytes, blob.data.len() as u64, "{stats:?}");
    assert_eq!(stats.origin_bytes, 0);
    assert_eq!(rig.gw.origin_bytes(), 0);
    assert_eq!(rig.fetcher.totals().peer_pieces, u64::from(n));
    assert!(rig.net.provided.lock().unwrap().contains(&blob.digest));
    // The gateway's identity was learned from /flotilla/v1/info.
    assert_eq!(rig.fetcher.gateway_peer().await.unwrap(), rig.gw.peer_id());
}

#[tokio::test]
async fn a_peer_sending_corrupted_pieces_is_banned() {
    let rig = Rig::new().await;
    let blob = rig.blob(32 * 16384, 16384, 2);
    let n = blob.pieces();
    let bad_store = TestStore::new().await;
    bad_store.seed(&blob, 0..n).await;
    let corrupt = CorruptSource::new(bad_store.store.clone(), &blob);
    let bad = rig.net.add_peer(corrupt.clone());
    let good = rig.peer(&blob, 0..n).await;
    // The corrupt peer is reached first, so it surely gets requests.
    rig.net
        .delays
        .lock()
        .unwrap()
        .insert(good, Duration::from_millis(300));
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    within(20, dl.wait_complete()).await.unwrap();
    assert_eq!(
        read_back(&*rig.local.store, &blob).await,
        blob.data.as_slice()
    );
    let stats = dl.stats();
    assert!(stats.invalid_bytes >= 2 * 16384, "{stats:?}");
    assert_eq!(
        stats.wasted_bytes,
        stats.duplicate_bytes + stats.cut_bytes + stats.invalid_bytes,
        "{stats:?}"
    );
    assert_eq!(stats.peer_bytes, blob.data.len() as u64);
    // Banned after its second bad piece: never asked again, never reopened.
    let reads = corrupt.reads.load(Ordering::Relaxed);
    assert!(
        (2..=4).contains(&reads),
        "{reads} pieces read from the corrupt peer"
    );
    assert_eq!(rig.net.opens_of(&bad), 1);
    assert!(rig.net.lookups.load(Ordering::Relaxed) >= 2);
}

#[tokio::test]
async fn pieces_no_peer_has_come_from_the_origin() {
    // The peer outranks this node for about half of the pieces it lacks, so this node leaves
    // those to it (it would fetch them from the origin in a real swarm) until the swarm looks
    // stalled: keep that short.
    let rig = Rig::with(|c| c.scheduler.origin_stall = Duration::from_secs(1)).await;
    let blob = rig.blob(24 * 16384 + 7, 16384, 3);
    let n = blob.pieces();
    rig.peer(&blob, 0..n / 2).await;
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    within(60, dl.wait_complete()).await.unwrap();
    assert_eq!(
        read_back(&*rig.local.store, &blob).await,
        blob.data.as_slice()
    );
    let half: u64 = (0..n / 2)
        .map(|i| u64::from(blob.signed.table.piece_len(i).unwrap()))
        .sum();
    let stats = dl.stats();
    assert_eq!(stats.peer_bytes, half, "{stats:?}");
    assert_eq!(
        stats.origin_bytes,
        blob.data.len() as u64 - half,
        "{stats:?}"
    );
    assert_eq!(rig.gw.origin_bytes(), stats.origin_bytes);
}

#[tokio::test]
async fn with_no_peer_everything_comes_from_the_origin() {
    let rig = Rig::with(|c| c.scheduler.origin_grace = Duration::ZERO).await;
    let blob = rig.blob(10 * 8192 + 1, 8192, 4);
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    dl.set_read_position(0);
    for i in 0..blob.pieces() {
        within(20, dl.wait_piece(i)).await.unwrap();
    }
    within(20, dl.wait_complete()).await.unwrap();
    assert_eq!(dl.stats().origin_bytes, blob.data.len() as u64);
    assert_eq!(
        read_back(&*rig.local.store, &blob).await,
        blob.data.as_slice()
    );
    assert!(matches!(
        dl.wait_piece(blob.pieces()).await,
        Err(FetchError::PieceOutOfRange { .. })
    ));
}

/// A blob the gateway has sent nothing of yet: nobody can hold a piece, and the download asks
/// the origin as soon as the gateway says so, not after its first lookup (SPEC §6.2).
#[tokio::test]
async fn an_unsent_blob_is_asked_of_the_origin_before_the_first_lookup_ends() {
    for unsent in [true, false] {
        // With `unsent`, a lookup and a grace longer than the test's patience: only the
        // gateway's answer can let the download reach the origin in time.
        let wait = if unsent {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        };
        let rig = Rig::with(|c| c.scheduler.origin_grace = wait).await;
        *rig.net.lookup_delay.lock().unwrap() = wait;
        rig.gw
            .state
            .unsent
            .store(unsent, std::sync::atomic::Ordering::Relaxed);
        let blob = rig.blob(4 * 8192, 8192, 6);
        let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
        within(20, dl.wait_complete()).await.unwrap();
        let stats = dl.stats();
        assert_eq!(stats.origin_bytes, blob.data.len() as u64);
        assert_eq!(stats.unsent_starts, u64::from(unsent), "{stats:?}");
        assert_eq!(rig.fetcher.totals().unsent_starts, u64::from(unsent));
    }
}

#[tokio::test]
async fn concurrent_openers_share_one_download() {
    let rig = Rig::new().await;
    let blob = rig.blob(16 * 16384, 16384, 5);
    let peer = rig.peer(&blob, 0..blob.pieces()).await;
    let (a, b) = tokio::join!(
        rig.fetcher.open(&blob.digest),
        rig.fetcher.open(&blob.digest)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(rig.fetcher.active_downloads(), 1);
    let (ra, rb) = within(20, async {
        tokio::join!(a.wait_complete(), b.wait_complete())
    })
    .await;
    ra.unwrap();
    rb.unwrap();
    assert_eq!(rig.gw.state.table_requests.load(Ordering::Relaxed), 1);
    assert_eq!(rig.net.opens_of(&peer), 1);
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.stats().peer_bytes, blob.data.len() as u64);
    drop((a, b));
    assert_eq!(rig.fetcher.active_downloads(), 0);

    // Complete in the store: a new handle starts no driver.
    let lookups = rig.net.lookups.load(Ordering::Relaxed);
    let c = rig.fetcher.open(&blob.digest).await.unwrap();
    assert!(c.is_complete());
    c.wait_complete().await.unwrap();
    assert_eq!(rig.fetcher.active_downloads(), 0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(rig.net.lookups.load(Ordering::Relaxed), lookups);
    assert_eq!(rig.gw.state.table_requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_unknown_blob_is_not_found() {
    let rig = Rig::new().await;
    let known = rig.blob(1000, 512, 6);
    rig.peer(&known, 0..known.pieces()).await;
    let other = TestBlob::new(1000, 512, 7, &rig.key);
    let err = within(10, rig.fetcher.open(&other.digest))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound(_)), "{err}");
    assert!(matches!(
        within(10, rig.fetcher.table(&other.digest)).await,
        Err(FetchError::NotFound(_))
    ));
    // Known blob: its table, without a download.
    let t = within(10, rig.fetcher.table(&known.digest)).await.unwrap();
    assert_eq!(t.table.size, 1000);
    assert_eq!(rig.fetcher.active_downloads(), 0);
}

#[tokio::test]
async fn a_table_signed_by_someone_else_is_refused() {
    let rig = Rig::with(|c| c.gateway_peer = Some(PeerId::random())).await;
    let blob = rig.blob(1000, 512, 8);
    let err = within(10, rig.fetcher.open(&blob.digest))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::BadTable { .. }), "{err}");
}

#[tokio::test]
async fn a_table_from_a_provider_when_the_gateway_is_down() {
    let key = Keypair::generate_ed25519();
    let net = FakeNetwork::new();
    let local = TestStore::new().await;
    let blob = TestBlob::new(5 * 4096, 4096, 9, &key);
    let seed = TestStore::new().await;
    seed.seed(&blob, 0..blob.pieces()).await;
    net.add_peer(seed.source());
    // Nothing listens there.
    let mut cfg = config("http://127.0.0.1:9".to_owned());
    cfg.gateway_peer = Some(key.public().to_peer_id());
    let fetcher = Fetcher::new(cfg, net.clone(), local.store.clone(), local.store.clone()).unwrap();
    let dl = within(20, fetcher.open(&blob.digest)).await.unwrap();
    within(20, dl.wait_complete()).await.unwrap();
    assert_eq!(dl.stats().peer_bytes, blob.data.len() as u64);
}

#[tokio::test]
async fn a_download_with_no_source_fails_for_every_waiter() {
    let key = Keypair::generate_ed25519();
    let net = FakeNetwork::new();
    let local = TestStore::new().await;
    let blob = TestBlob::new(6 * 4096, 4096, 10, &key);
    // Part of the blob is held, so the table is known without the gateway.
    local.seed(&blob, [0, 1]).await;
    let mut cfg = config("http://127.0.0.1:9".to_owned());
    cfg.gateway_peer = Some(key.public().to_peer_id());
    cfg.stall_timeout = Duration::from_secs(1);
    cfg.scheduler.origin_grace = Duration::ZERO;
    let fetcher = Fetcher::new(cfg, net, local.store.clone(), local.store.clone()).unwrap();
    let dl = within(10, fetcher.open(&blob.digest)).await.unwrap();
    dl.wait_piece(1).await.unwrap();
    let (a, b) = within(10, async {
        tokio::join!(dl.wait_piece(2), dl.wait_complete())
    })
    .await;
    assert!(matches!(a, Err(FetchError::Stalled { .. })), "{a:?}");
    assert!(matches!(b, Err(FetchError::Stalled { .. })), "{b:?}");
    // A failed download is not joined: a new open starts again (and fails the same way).
    let again = within(10, fetcher.open(&blob.digest)).await.unwrap();
    assert!(!again.is_complete());
}

#[tokio::test]
async fn nothing_reachable_fails_the_table() {
    let key = Keypair::generate_ed25519();
    let net = FakeNetwork::new();
    let local = TestStore::new().await;
    let blob = TestBlob::new(4096, 4096, 11, &key);
    let mut cfg = config("http://127.0.0.1:9".to_owned());
    cfg.gateway_peer = Some(key.public().to_peer_id());
    cfg.stall_timeout = Duration::from_secs(1);
    let fetcher = Fetcher::new(cfg, net, local.store.clone(), local.store.clone()).unwrap();
    let err = within(10, fetcher.open(&blob.digest)).await.unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
}

/// A peer that advertises a full copy, then misbehaves on every request.
struct Byzantine {
    inner: Arc<crate::store::Store>,
    stall: bool,
    reads: std::sync::atomic::AtomicUsize,
}

impl PieceSource for Byzantine {
    fn held(
        &self,
        digest: &flotilla_protocol::Digest,
    ) -> futures::future::BoxFuture<
        'static,
        Result<Option<crate::ports::Held>, crate::ports::SourceError>,
    > {
        self.inner.held(digest)
    }

    fn piece_file(
        &self,
        digest: &flotilla_protocol::Digest,
        index: u32,
    ) -> futures::future::BoxFuture<
        'static,
        Result<crate::ports::PieceFile, crate::ports::SourceError>,
    > {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let (stall, what) = (self.stall, format!("{digest} piece {index}"));
        Box::pin(async move {
            if stall {
                std::future::pending::<()>().await;
            }
            Err(crate::ports::SourceError::NotHeld(what))
        })
    }

    fn served(&self, _: &flotilla_protocol::Digest, _: u64) {}
}

async fn byzantine_peer_is_banned(stall: bool) {
    // Short timeouts before the first sample, so a stalled request expires three times well
    // before the honest peer (held back below) is reached.
    let rig = Rig::with(|c| {
        c.scheduler.initial_latency = Duration::from_millis(100);
        c.peer_stall = Duration::from_millis(500);
    })
    .await;
    let blob = rig.blob(48 * 16384, 16384, 21);
    let n = blob.pieces();
    let store = TestStore::new().await;
    store.seed(&blob, 0..n).await;
    let liar = Arc::new(Byzantine {
        inner: store.store.clone(),
        stall,
        reads: std::sync::atomic::AtomicUsize::new(0),
    });
    let bad = rig.net.add_peer(liar.clone());
    let good = rig.peer(&blob, 0..n).await;
    // The liar is reached first and the honest peer is slow, so the liar surely gets requests
    // and the download lasts long enough for its strikes to add up.
    rig.net
        .delays
        .lock()
        .unwrap()
        .insert(good, Duration::from_secs(if stall { 4 } else { 1 }));
    let dl = within(60, rig.fetcher.open(&blob.digest)).await.unwrap();
    within(60, dl.wait_complete()).await.unwrap();
    assert_eq!(
        read_back(&*rig.local.store, &blob).await,
        blob.data.as_slice()
    );
    let stats = dl.stats();
    assert!(
        liar.reads.load(Ordering::Relaxed) > 0,
        "the liar was never asked"
    );
    assert_eq!(stats.peers_banned, 1, "{stats:?}");
    // Every byte came once, from the honest peer or (while the liar was the only one) the origin.
    assert_eq!(
        stats.peer_bytes + stats.origin_bytes,
        blob.data.len() as u64,
        "{stats:?}"
    );
    assert_eq!(rig.net.opens_of(&bad), 1, "a banned peer was reopened");
    std::mem::forget(store);
}

#[tokio::test]
async fn a_peer_whose_bit_field_lies_is_banned() {
    byzantine_peer_is_banned(false).await;
}

#[tokio::test]
async fn a_peer_that_stalls_accepted_requests_is_banned() {
    byzantine_peer_is_banned(true).await;
}

#[tokio::test]
async fn a_full_disk_stops_the_download_and_the_next_one_completes() {
    let rig = Rig::new().await;
    let blob = rig.blob(24 * 16384, 16384, 22);
    let n = blob.pieces();
    rig.peer(&blob, 0..n).await;
    rig.local.store.inject_write_fault(Some(libc::ENOSPC));
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    let err = within(20, dl.wait_complete()).await.unwrap_err();
    assert!(
        matches!(&err, FetchError::Store(e) if matches!(**e, crate::ports::SourceError::NoSpace(_))),
        "{err}"
    );
    drop(dl);
    rig.local.store.inject_write_fault(None);
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    within(20, dl.wait_complete()).await.unwrap();
    assert_eq!(
        read_back(&*rig.local.store, &blob).await,
        blob.data.as_slice()
    );
}

#[tokio::test]
async fn a_download_that_found_nobody_looks_again_before_the_next_tick() {
    // A fleet starting together looks up before the others have announced: the first lookup
    // finds nobody. The housekeeping tick would look again only 0.25 s later; the driver looks
    // 25 ms after such a lookup ends, then 50, 100 … (`Rotation::lookup_retry`).
    let rig = Rig::new().await;
    let blob = rig.blob(16 * 16384, 16384, 9);
    // The origin refuses, so the download cannot finish before a peer turns up.
    rig.gw.state.refuse_blobs.store(true, Ordering::Relaxed);
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lookups = rig.net.lookups.load(Ordering::Relaxed);
    assert!(lookups >= 3, "{lookups} lookups in the first 0.2 s");
    // A provider announces: a later lookup finds it and the download completes from it.
    rig.peer(&blob, 0..blob.pieces()).await;
    within(20, dl.wait_complete()).await.unwrap();
    assert_eq!(dl.stats().peer_bytes, blob.data.len() as u64);
}

#[tokio::test]
async fn lookups_back_off_once_they_find_no_new_provider() {
    // A swarm smaller than the session limit: one provider holding half the blob, the origin
    // refusing the rest, so the download stays short of sessions and unfinished. Lookups that
    // keep finding only that provider stop counting it short (`FRUITLESS_LOOKUPS`) and back
    // off, instead of looking four times a second for as long as it runs.
    // The node's 10-s refresh (the rig's is 0.1 s, which would hide the back-off).
    let rig = Rig::with(|c| c.provider_refresh = Duration::from_secs(10)).await;
    let blob = rig.blob(16 * 16384, 16384, 10);
    rig.peer(&blob, 0..blob.pieces() / 2).await;
    rig.gw.state.refuse_blobs.store(true, Ordering::Relaxed);
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lookups = rig.net.lookups.load(Ordering::Relaxed);
    assert!(
        (usize::from(flotilla_protocol::scheduler::FRUITLESS_LOOKUPS) + 1..=8).contains(&lookups),
        "{lookups} lookups in 3 s (four a second without the back-off)"
    );
    assert!(!dl.is_complete());
}

#[tokio::test]
async fn with_a_site_pieces_come_from_its_members_and_far_bytes_are_counted() {
    let rig = Rig::new().await;
    rig.net.site.set("a".to_owned()).unwrap();
    let blob = rig.blob(64 * 16384, 16384, 7);
    let n = blob.pieces();
    // Every peer holds everything: one of another site, one without a label, one of ours.
    let far = rig.peer_at(&blob, 0..n, Some("b")).await;
    let unlabelled = rig.peer_at(&blob, 0..n, None).await;
    let near = rig.peer_at(&blob, 0..n, Some("a")).await;
    // Only the site key finds it (among thousands of providers, a random lookup rarely would).
    rig.net.hide_from_blob_lookups(&near);
    // The far sessions open after the near one: before a near peer is known to hold a piece,
    // a far one may be asked for it (a site must get what it lacks from somewhere).
    for p in [far, unlabelled] {
        rig.net
            .delays
            .lock()
            .unwrap()
            .insert(p, Duration::from_millis(300));
    }
    let stats = rig.download(&blob).await;
    assert_eq!(stats.peer_bytes, blob.data.len() as u64, "{stats:?}");
    // A far peer is asked only for pieces no near one holds: none here.
    assert_eq!(stats.far_peer_bytes, 0, "{stats:?}");
    assert!(rig.net.site_lookups.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        rig.net.opens_of(&near),
        1,
        "the member of our site is found"
    );
    assert_eq!(
        stats.peer_bytes - stats.far_peer_bytes,
        blob.data.len() as u64
    );
}

#[tokio::test]
async fn with_a_site_what_only_another_site_holds_still_comes_and_counts_as_far() {
    let rig = Rig::new().await;
    rig.net.site.set("a".to_owned()).unwrap();
    let blob = rig.blob(16 * 16384, 16384, 8);
    let n = blob.pieces();
    rig.peer_at(&blob, 0..n, Some("b")).await;
    let stats = rig.download(&blob).await;
    assert_eq!(stats.peer_bytes, blob.data.len() as u64, "{stats:?}");
    assert_eq!(stats.far_peer_bytes, stats.peer_bytes, "{stats:?}");
}

#[tokio::test]
async fn without_a_site_no_peer_is_far() {
    let rig = Rig::new().await;
    let blob = rig.blob(16 * 16384, 16384, 9);
    let n = blob.pieces();
    rig.peer_at(&blob, 0..n, Some("b")).await;
    let stats = rig.download(&blob).await;
    assert_eq!(stats.peer_bytes, blob.data.len() as u64, "{stats:?}");
    assert_eq!(stats.far_peer_bytes, 0, "{stats:?}");
    assert_eq!(rig.net.site_lookups.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_download_ranks_pieces_for_the_local_server_and_clears_the_rank_at_the_end() {
    let rig = Rig::new().await;
    let blob = rig.blob(12 * 16384, 16384, 31);
    let n = blob.pieces();
    // Every piece but the last at one peer, the even ones at a second; the last at the origin
    // only.
    rig.peer(&blob, 0..n - 1).await;
    rig.peer(&blob, (0..n - 1).filter(|i| i % 2 == 0)).await;
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    let held = within(5, rig.local.store.held(&blob.digest))
        .await
        .unwrap()
        .expect("registered");
    let rank = held.rank.expect("the store ranks its blobs");
    let want = |i: u32| match i {
        i if i == n - 1 => 0,
        i if i % 2 == 0 => 2,
        _ => 1,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (0..n).any(|i| rank.get(i) != want(i)) {
        assert!(
            std::time::Instant::now() < deadline,
            "rank {:?}",
            (0..n).map(|i| rank.get(i)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    within(20, dl.wait_complete()).await.unwrap();
    drop(dl);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (0..n).any(|i| rank.get(i) != 0) {
        assert!(std::time::Instant::now() < deadline, "rank not cleared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_replaced_session_finishes_the_piece_it_is_sending() {
    // A slow uploader and a quick one hold the sessions (2 per blob here); the scheduler keeps
    // four requests out, so the slow one always has one. A third provider appears. At the
    // rotation policy's first period judged (200 ms periods here) the slow session, far behind
    // the other, makes room for it: it is replaced, but first finishes the piece its peer is
    // sending, which is received and kept rather than cut off with the stream.
    let rig = Rig::with(|c| {
        c.max_peers_per_blob = 2;
        c.rotation.period = Duration::from_millis(200);
        // Requests queued behind the slow pieces are not to time out meanwhile.
        c.scheduler.min_timeout = Duration::from_secs(3);
    })
    .await;
    let blob = rig.blob(256 * 16384, 16384, 11);
    let n = blob.pieces();
    let add = |delay: u64| {
        let rig = &rig;
        let blob = &blob;
        async move {
            let store = TestStore::new().await;
            store.seed(blob, 0..n).await;
            let id = rig.net.add_peer(Arc::new(SlowSource {
                inner: store.source(),
                delay: Duration::from_millis(delay),
            }));
            std::mem::forget(store);
            id
        }
    };
    let slow = add(250).await;
    add(10).await;
    let dl = within(20, rig.fetcher.open(&blob.digest)).await.unwrap();
    let spare = add(10).await;
    within(30, dl.wait_complete()).await.unwrap();
    assert_eq!(
        read_back(&*rig.local.store, &blob).await,
        blob.data.as_slice()
    );
    let stats = dl.stats();
    assert_eq!(rig.net.opens_of(&slow), 1, "{stats:?}");
    assert_eq!(
        rig.net.opens_of(&spare),
        1,
        "the spare took its place: {stats:?}"
    );
    assert!(stats.retired_pieces >= 1, "{stats:?}");
    assert_eq!(stats.wasted_bytes, 0, "{stats:?}");
}
