//! Store tests: receiving and verifying pieces, concurrent duplicate receivers, recovery after a
//! crash, eviction, pins, leases, a full disk, and the accounting.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{PieceTableBuilder, SignedPieceTable};
use libp2p_identity::Keypair;

use super::*;
use crate::ports::{PieceReceiver, PieceSink, PieceSource, SourceError, Verdict};

mod batches;

const PIECE: u32 = 1000;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn table(data: &[u8], piece_size: u32) -> Arc<SignedPieceTable> {
    let mut b = PieceTableBuilder::new(piece_size).unwrap();
    b.update(data);
    let t = b.finish(Digest::sha256_of(data)).unwrap();
    let key = Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
    Arc::new(SignedPieceTable::sign(t, &key).unwrap())
}

fn tuning() -> Tuning {
    Tuning {
        flush_interval: None,
        write_batch: 64,
        first_batch: 64,
        max_buffered: 4 * u64::from(PIECE),
    }
}

async fn open(dir: &Path, capacity: u64) -> Arc<Store> {
    open_with(dir, capacity, tuning()).await
}

async fn open_with(dir: &Path, capacity: u64, tuning: Tuning) -> Arc<Store> {
    Store::open_tuned(
        StoreConfig {
            dir: dir.to_path_buf(),
            capacity_bytes: capacity,
            direct_io: true,
        },
        tuning,
    )
    .await
    .unwrap()
}

/// Opens the store in `dir` again after a `Store` there was dropped: its background tasks and
/// sled's flusher may still hold the database lock for a while (seen for more than 5 s while
/// another process wrote gigabytes), which a restarted process never meets.
async fn reopen(dir: &Path, capacity: u64) -> Arc<Store> {
    for _ in 0..1200 {
        let config = StoreConfig {
            dir: dir.to_path_buf(),
            capacity_bytes: capacity,
            direct_io: true,
        };
        if let Ok(store) = Store::open_tuned(config, tuning()).await {
            return store;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    open(dir, capacity).await
}

fn piece(data: &[u8], index: u32) -> &[u8] {
    let start = index as usize * PIECE as usize;
    &data[start..(start + PIECE as usize).min(data.len())]
}

async fn send(r: &mut Box<dyn PieceReceiver>, bytes: &[u8]) {
    for c in bytes.chunks(100) {
        r.write(c).await.unwrap();
    }
}

async fn receive(store: &Store, d: &Digest, index: u32, bytes: &[u8]) -> Verdict {
    let mut r = store.receive(d, index).unwrap();
    send(&mut r, bytes).await;
    r.finish().await.unwrap()
}

fn on_disk(dir: &Path, d: &Digest) -> Vec<u8> {
    std::fs::read(dir.join("blobs").join(d.hex())).unwrap()
}

fn held_bits(store: &Store, d: &Digest) -> Vec<u32> {
    store
        .held_now(d)
        .unwrap()
        .have
        .borrow()
        .iter_ones()
        .collect()
}

fn garbage(len: usize) -> Vec<u8> {
    vec![0xAB; len]
}

#[tokio::test]
async fn receives_all_pieces_to_a_complete_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let blob = data(2500, 1);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    let held = store.register(t.clone()).await.unwrap();
    assert_eq!(held.have.borrow().count(), 0);
    assert!(!store.entry(&d).unwrap().complete);
    assert!(matches!(
        store.piece_file_now(&d, 0),
        Err(StoreError::PieceNotHeld { .. })
    ));
    for i in [2, 0, 1] {
        assert_eq!(
            receive(&store, &d, i, piece(&blob, i)).await,
            Verdict::Verified
        );
    }
    let info = store.entry(&d).unwrap();
    assert_eq!(
        (info.size, info.piece_count, info.pieces_held, info.complete),
        (2500, 3, 3, true)
    );
    assert_eq!(on_disk(dir.path(), &d), blob);
    let pf = store.piece_file(&d, 2).await.unwrap();
    let mut buf = vec![0; pf.len as usize];
    pf.file.read_exact_at(&mut buf, pf.offset).unwrap();
    assert_eq!(buf, piece(&blob, 2));
    // Registering again is idempotent and sees everything.
    assert!(store.register(t).await.unwrap().have.borrow().is_complete());
    assert_eq!(store.held_blobs(), vec![d.clone()]);
    // Receiving a held piece again: a duplicate, or invalid if the bytes are wrong.
    assert_eq!(
        receive(&store, &d, 1, piece(&blob, 1)).await,
        Verdict::Duplicate
    );
    assert_eq!(
        receive(&store, &d, 1, &garbage(1000)).await,
        Verdict::Invalid
    );
    assert!(store.receive(&d, 3).is_err());

    // Complete blobs are trusted across a restart.
    drop(store);
    let store = open(dir.path(), 1 << 20).await;
    assert!(store.entry(&d).unwrap().complete);
    assert_eq!(held_bits(&store, &d), vec![0, 1, 2]);
}

#[tokio::test]
async fn empty_blob_is_complete_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 100).await;
    let t = table(&[], PIECE);
    let held = store.register(t.clone()).await.unwrap();
    assert!(held.have.borrow().is_complete());
    assert!(store.entry(&t.table.digest).unwrap().complete);
}

#[tokio::test]
async fn invalid_pieces_leave_the_bit_unset() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let blob = data(2500, 2);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    store.register(t).await.unwrap();
    assert_eq!(
        receive(&store, &d, 0, &garbage(1000)).await,
        Verdict::Invalid
    );
    // Too short, too long, the last piece's bytes for the first.
    assert_eq!(
        receive(&store, &d, 0, &piece(&blob, 0)[..999]).await,
        Verdict::Invalid
    );
    let mut long = piece(&blob, 0).to_vec();
    long.push(0);
    assert_eq!(receive(&store, &d, 0, &long).await, Verdict::Invalid);
    assert_eq!(
        receive(&store, &d, 2, piece(&blob, 0)).await,
        Verdict::Invalid
    );
    // An abandoned receiver keeps nothing.
    let mut r = store.receive(&d, 1).unwrap();
    send(&mut r, &piece(&blob, 1)[..500]).await;
    drop(r);
    assert!(held_bits(&store, &d).is_empty());
    assert!(store.piece_file_now(&d, 0).is_err());
    assert_eq!(store.entry(&d).unwrap().pieces_held, 0);
    // The right bytes still go in afterwards.
    for i in 0..3 {
        assert_eq!(
            receive(&store, &d, i, piece(&blob, i)).await,
            Verdict::Verified
        );
    }
    assert_eq!(on_disk(dir.path(), &d), blob);
}

/// Writes `a` and `b` into two receivers alternately, chunk by chunk.
async fn interleave(
    ra: &mut Box<dyn PieceReceiver>,
    a: &[u8],
    rb: &mut Box<dyn PieceReceiver>,
    b: &[u8],
) {
    let (mut ca, mut cb) = (a.chunks(100), b.chunks(100));
    loop {
        let (x, y) = (ca.next(), cb.next());
        if x.is_none() && y.is_none() {
            break;
        }
        if let Some(x) = x {
            ra.write(x).await.unwrap();
        }
        if let Some(y) = y {
            rb.write(y).await.unwrap();
        }
    }
}

#[tokio::test]
async fn concurrent_duplicates_never_corrupt_a_verified_piece() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let blob = data(6000, 3);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    store.register(t).await.unwrap();
    let bad = garbage(1000);
    let disk_piece = |i: u32| on_disk(dir.path(), &d)[i as usize * 1000..][..1000].to_vec();

    // 0: a lying claimant streams into the file, an honest copy buffers and wins; the liar's
    // later writes are refused.
    let mut liar = store.receive(&d, 0).unwrap();
    let mut honest = store.receive(&d, 0).unwrap();
    interleave(&mut liar, &bad[..500], &mut honest, piece(&blob, 0)).await;
    assert_eq!(honest.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(disk_piece(0), piece(&blob, 0));
    send(&mut liar, &bad[500..]).await;
    assert_eq!(liar.finish().await.unwrap(), Verdict::Invalid);
    assert_eq!(disk_piece(0), piece(&blob, 0));

    // 1: an honest claimant and a lying buffer; the liar finishes first.
    let mut honest = store.receive(&d, 1).unwrap();
    let mut liar = store.receive(&d, 1).unwrap();
    interleave(&mut honest, piece(&blob, 1), &mut liar, &bad).await;
    assert_eq!(liar.finish().await.unwrap(), Verdict::Invalid);
    assert_eq!(honest.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(disk_piece(1), piece(&blob, 1));

    // 2: the lying claimant writes all of it and fails; the buffered honest copy then wins.
    let mut liar = store.receive(&d, 2).unwrap();
    let mut honest = store.receive(&d, 2).unwrap();
    interleave(&mut liar, &bad, &mut honest, piece(&blob, 2)).await;
    assert_eq!(liar.finish().await.unwrap(), Verdict::Invalid);
    assert_eq!(held_bits(&store, &d), vec![0, 1]);
    assert_eq!(honest.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(disk_piece(2), piece(&blob, 2));

    // 3: two honest copies: the first to finish wins, the other is a duplicate (both orders).
    let mut a = store.receive(&d, 3).unwrap();
    let mut b = store.receive(&d, 3).unwrap();
    interleave(&mut a, piece(&blob, 3), &mut b, piece(&blob, 3)).await;
    assert_eq!(a.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(b.finish().await.unwrap(), Verdict::Duplicate);
    let mut a = store.receive(&d, 4).unwrap();
    let mut b = store.receive(&d, 4).unwrap();
    interleave(&mut a, piece(&blob, 4), &mut b, piece(&blob, 4)).await;
    assert_eq!(b.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(a.finish().await.unwrap(), Verdict::Duplicate);

    // 5: a lying claimant goes away mid-piece while a buffer runs; a new claimant takes the
    // file over and wins, and the buffer is then a duplicate.
    let mut liar = store.receive(&d, 5).unwrap();
    let mut buffered = store.receive(&d, 5).unwrap();
    interleave(
        &mut liar,
        &bad[..600],
        &mut buffered,
        &piece(&blob, 5)[..300],
    )
    .await;
    drop(liar);
    let mut fresh = store.receive(&d, 5).unwrap();
    interleave(
        &mut fresh,
        piece(&blob, 5),
        &mut buffered,
        &piece(&blob, 5)[300..],
    )
    .await;
    assert_eq!(fresh.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(buffered.finish().await.unwrap(), Verdict::Duplicate);

    assert_eq!(on_disk(dir.path(), &d), blob);
    assert!(store.entry(&d).unwrap().complete);
}

#[tokio::test]
async fn buffered_duplicates_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tuning();
    t.max_buffered = 2 * u64::from(PIECE);
    let store = open_with(dir.path(), 1 << 20, t).await;
    let blob = data(1000, 4);
    let tab = table(&blob, PIECE);
    let d = tab.table.digest.clone();
    store.register(tab).await.unwrap();
    let _claimant = store.receive(&d, 0).unwrap();
    let b1 = store.receive(&d, 0).unwrap();
    let _b2 = store.receive(&d, 0).unwrap();
    assert!(matches!(store.receive(&d, 0), Err(SourceError::Other(_))));
    drop(b1);
    assert!(store.receive(&d, 0).is_ok());
}

#[tokio::test]
async fn restart_keeps_pieces_on_disk_and_drops_torn_ones() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(5500, 5);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    {
        let store = open(dir.path(), 1 << 20).await;
        store.register(t.clone()).await.unwrap();
        for i in [0, 1] {
            assert_eq!(
                receive(&store, &d, i, piece(&blob, i)).await,
                Verdict::Verified
            );
        }
        store.flush().await.unwrap();
        // Verified in memory, never persisted: 2 and 3; 4 half-written by an abandoned receiver.
        for i in [2, 3] {
            assert_eq!(
                receive(&store, &d, i, piece(&blob, i)).await,
                Verdict::Verified
            );
        }
        let mut r = store.receive(&d, 4).unwrap();
        send(&mut r, &piece(&blob, 4)[..700]).await;
        drop(r);
        assert_eq!(held_bits(&store, &d), vec![0, 1, 2, 3]);
    }
    // The crash tore piece 2 (its bits were not persisted, so its bytes are not trusted).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("blobs").join(d.hex()))
        .unwrap();
    f.write_all_at(&garbage(300), 2200).unwrap();
    // Leftovers a crash can leave: an orphan file.
    std::fs::write(dir.path().join("blobs").join("deadbeef"), b"x").unwrap();

    let store = reopen(dir.path(), 1 << 20).await;
    assert_eq!(held_bits(&store, &d), vec![0, 1, 3]);
    assert!(!dir.path().join("blobs").join("deadbeef").exists());
    assert!(!store.entry(&d).unwrap().complete);
    for i in [2, 4, 5] {
        assert_eq!(
            receive(&store, &d, i, piece(&blob, i)).await,
            Verdict::Verified
        );
    }
    assert!(store.entry(&d).unwrap().complete);
    assert_eq!(on_disk(dir.path(), &d), blob);

    // A record whose file vanished: an incomplete blob restarts empty, a complete one goes.
    let other = data(1500, 6);
    let t2 = table(&other, PIECE);
    let d2 = t2.table.digest.clone();
    store.register(t2).await.unwrap();
    store.flush().await.unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join("blobs").join(d2.hex())).unwrap();
    std::fs::remove_file(dir.path().join("blobs").join(d.hex())).unwrap();
    let store = open(dir.path(), 1 << 20).await;
    assert_eq!(store.held_blobs(), vec![d2.clone()]);
    assert_eq!(store.entry(&d2).unwrap().pieces_held, 0);
    assert_eq!(on_disk(dir.path(), &d2).len(), 1500);
}

#[tokio::test]
async fn recovery_finds_a_blob_completed_but_not_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(2000, 7);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    {
        let store = open(dir.path(), 1 << 20).await;
        store.register(t).await.unwrap();
        store.flush().await.unwrap();
        // Write the bytes behind the store's back, as a crash after the writes would leave them.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("blobs").join(d.hex()))
            .unwrap();
        f.write_all_at(&blob, 0).unwrap();
    }
    let store = reopen(dir.path(), 1 << 20).await;
    let info = store.entry(&d).unwrap();
    assert!(info.complete);
    assert_eq!(info.pieces_held, 2);
}

async fn register_sized(store: &Store, len: usize, seed: u8) -> Digest {
    let t = table(&data(len, seed), PIECE);
    let d = t.table.digest.clone();
    store.register(t).await.unwrap();
    d
}

#[tokio::test]
async fn eviction_is_lru_and_spares_pins_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3000).await;
    let mut evicted = store.subscribe_evictions();
    let a = register_sized(&store, 1000, 10).await;
    let b = register_sized(&store, 1000, 11).await;
    let c = register_sized(&store, 1000, 12).await;
    assert_eq!(store.usage(), (3000, 3000));
    assert!(store.touch(&a));
    // b is the least recently used.
    let d = register_sized(&store, 1000, 13).await;
    assert_eq!(evicted.try_recv().unwrap(), b);
    assert!(store.entry(&b).is_none());
    assert!(!dir.path().join("blobs").join(b.hex()).exists());
    let mut held = vec![a.clone(), c.clone(), d.clone()];
    held.sort();
    assert_eq!(store.held_blobs(), held);

    // c is now the oldest, but pinned; a is next, but leased: d goes.
    assert!(!store.pin(&c).await.unwrap(), "c was not pinned before");
    assert!(store.pin(&c).await.unwrap(), "a second pin finds it pinned");
    let lease = store.lease(&a).unwrap();
    assert_eq!(lease.digest(), &a);
    store.touch(&d);
    let before = store.evicted_total();
    let e = register_sized(&store, 1000, 14).await;
    assert_eq!(evicted.try_recv().unwrap(), d);
    assert_eq!(store.evicted_total(), (before.0 + 1, before.1 + 1000));
    // The listing: most recently used first, e (just registered) at the head.
    let listed = store.blobs();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].0, e);
    assert!(listed.iter().any(|(d, i)| *d == c && i.pinned));
    assert!(store.remove(&a).await.is_err());
    // Everything left is pinned or leased: no room, and nothing is evicted trying.
    store.pin(&e).await.unwrap();
    let t = table(&data(1000, 15), PIECE);
    assert!(matches!(
        store.register(t.clone()).await,
        Err(SourceError::NoSpace(_))
    ));
    assert!(evicted.try_recv().is_err());
    assert_eq!(store.held_blobs().len(), 3);
    // The lease released, a can go.
    drop(lease);
    store.register(t).await.unwrap();
    assert_eq!(evicted.try_recv().unwrap(), a);
    // Bigger than the whole budget.
    let big = table(&data(3001, 16), PIECE);
    assert!(matches!(
        store.register(big).await,
        Err(SourceError::NoSpace(_))
    ));

    // Pins survive a restart; a smaller budget at open sheds the unpinned.
    drop(store);
    let store = reopen(dir.path(), 2000).await;
    let mut pinned = vec![c.clone(), e.clone()];
    pinned.sort();
    assert_eq!(store.held_blobs(), pinned);
    assert!(store.entry(&c).unwrap().pinned);
    assert_eq!(store.pinned_usage(), (2, 2000));
    assert!(store.unpin(&c).await.unwrap(), "c was pinned");
    assert!(!store.unpin(&c).await.unwrap());
    assert_eq!(store.pinned_usage(), (1, 1000));
    assert!(store.remove(&c).await.unwrap());
    assert!(!store.remove(&c).await.unwrap());
    assert_eq!(store.usage(), (1000, 2000));
}

#[tokio::test]
async fn an_active_receiver_blocks_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2000).await;
    let blob = data(1000, 20);
    let t = table(&blob, PIECE);
    let a = t.table.digest.clone();
    store.register(t).await.unwrap();
    let b = register_sized(&store, 1000, 21).await;
    store.touch(&b);
    let mut r = store.receive(&a, 0).unwrap();
    send(&mut r, &blob[..300]).await;
    let c = register_sized(&store, 1000, 22).await;
    // a was older, but in use.
    assert!(store.entry(&b).is_none());
    send(&mut r, &blob[300..]).await;
    assert_eq!(r.finish().await.unwrap(), Verdict::Verified);
    let _d = register_sized(&store, 1000, 23).await;
    assert!(store.entry(&a).is_none() || store.entry(&c).is_none());
}

#[tokio::test]
async fn watch_sees_new_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let blob = data(3000, 30);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    let mut have = store.register(t).await.unwrap().have;
    let mut served_view = store.held(&d).await.unwrap().unwrap().have;
    let waiter = tokio::spawn(async move {
        have.changed().await.unwrap();
        have.borrow_and_update().iter_ones().collect::<Vec<_>>()
    });
    assert_eq!(
        receive(&store, &d, 1, piece(&blob, 1)).await,
        Verdict::Verified
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, vec![1]);
    assert!(served_view.has_changed().unwrap());
    assert!(served_view.borrow_and_update().get(1));
    assert!(
        store
            .held(&Digest::sha256_of(b"nope"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn served_bytes_are_counted_and_count_as_use() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2000).await;
    let a = register_sized(&store, 1000, 40).await;
    let b = register_sized(&store, 1000, 41).await;
    store.served(&a, 500);
    store.served(&a, 250);
    store.served(&Digest::sha256_of(b"unknown"), 1);
    let info = store.entry(&a).unwrap();
    assert_eq!(info.served_bytes, 750);
    assert!(info.last_used_ms > store.entry(&b).unwrap().last_used_ms);
    assert_eq!(store.served_total(), 751);
    // Serving a made it the most recently used: b goes first.
    register_sized(&store, 1000, 42).await;
    assert!(store.entry(&b).is_none());
    assert!(store.entry(&a).is_some());
}

#[tokio::test]
async fn a_full_disk_fails_the_piece_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let blob = data(2000, 50);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    store.register(t).await.unwrap();

    store.inject_write_fault(Some(libc::ENOSPC));
    let mut r = store.receive(&d, 0).unwrap();
    let mut err = None;
    for c in piece(&blob, 0).chunks(100) {
        if let Err(e) = r.write(c).await {
            err = Some(e);
            break;
        }
    }
    assert!(matches!(err, Some(SourceError::NoSpace(_))), "{err:?}");
    assert!(r.finish().await.is_err());
    // A buffered copy fails the same way when it writes.
    let mut claimant = store.receive(&d, 1).unwrap();
    let mut buffered = store.receive(&d, 1).unwrap();
    send(&mut buffered, piece(&blob, 1)).await;
    assert!(matches!(
        buffered.finish().await,
        Err(SourceError::NoSpace(_))
    ));
    drop(claimant.write(b"x").await);
    drop(claimant);
    assert!(held_bits(&store, &d).is_empty());

    store.inject_write_fault(None);
    for i in 0..2 {
        assert_eq!(
            receive(&store, &d, i, piece(&blob, i)).await,
            Verdict::Verified
        );
    }
    assert_eq!(on_disk(dir.path(), &d), blob);
}

#[tokio::test]
async fn a_claimant_interrupted_by_a_failed_takeover_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let blob = data(1000, 60);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    store.register(t).await.unwrap();
    let mut claimant = store.receive(&d, 0).unwrap();
    let mut buffered = store.receive(&d, 0).unwrap();
    send(&mut claimant, &piece(&blob, 0)[..500]).await;
    send(&mut buffered, piece(&blob, 0)).await;
    store.inject_write_fault(Some(libc::EIO));
    assert!(matches!(buffered.finish().await, Err(SourceError::Io(_))));
    store.inject_write_fault(None);
    send(&mut claimant, &piece(&blob, 0)[500..]).await;
    assert!(claimant.finish().await.is_err());
    assert!(held_bits(&store, &d).is_empty());
    assert_eq!(
        receive(&store, &d, 0, piece(&blob, 0)).await,
        Verdict::Verified
    );
    assert_eq!(on_disk(dir.path(), &d), blob);
}

#[tokio::test]
async fn inconsistent_tables_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let mut t = (*table(&data(2500, 70), PIECE)).clone();
    t.table.block_hashes.pop();
    assert!(store.register(Arc::new(t)).await.is_err());
    assert!(store.held_blobs().is_empty());
}

#[tokio::test]
async fn the_flusher_persists_bits_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let blob = data(2000, 90);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    {
        let mut tn = tuning();
        tn.flush_interval = Some(Duration::from_millis(20));
        let store = open_with(dir.path(), 1 << 20, tn).await;
        store.register(t).await.unwrap();
        assert_eq!(
            receive(&store, &d, 0, piece(&blob, 0)).await,
            Verdict::Verified
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A persisted bit is trusted without re-hashing: proof the flusher wrote it (after syncing).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("blobs").join(d.hex()))
        .unwrap();
    f.write_all_at(&garbage(10), 0).unwrap();
    let store = open(dir.path(), 1 << 20).await;
    assert_eq!(held_bits(&store, &d), vec![0]);
}

/// The idle eviction: blobs last used before the cutoff go (partial ones too), pinned and
/// leased ones stay, and each is announced and counted like any eviction.
#[tokio::test]
async fn idle_blobs_are_evicted_but_pins_and_leases_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 10_000).await;
    let mut evicted = store.subscribe_evictions();
    let old = register_sized(&store, 1000, 20).await;
    let pinned = register_sized(&store, 1000, 21).await;
    let leased = register_sized(&store, 1000, 22).await;
    store.pin(&pinned).await.unwrap();
    let lease = store.lease(&leased).unwrap();
    let cutoff = store.entry(&leased).unwrap().last_used_ms + 1;
    // Used after the cutoff: stays.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let fresh = register_sized(&store, 1000, 23).await;
    store.touch(&fresh);
    assert!(store.entry(&fresh).unwrap().last_used_ms >= cutoff);

    let before = store.evicted_total();
    assert_eq!(store.evict_unused(cutoff).await, (1, 1000));
    assert_eq!(evicted.try_recv().unwrap(), old);
    assert!(evicted.try_recv().is_err());
    assert!(store.entry(&old).is_none());
    assert!(!dir.path().join("blobs").join(old.hex()).exists());
    assert_eq!(store.evicted_total(), (before.0 + 1, before.1 + 1000));
    for d in [&pinned, &leased, &fresh] {
        assert!(store.entry(d).is_some());
    }
    // The lease released, the leased blob is idle too.
    drop(lease);
    assert_eq!(store.evict_unused(cutoff).await, (1, 1000));
    assert!(store.entry(&leased).is_none());
    assert!(store.entry(&pinned).is_some() && store.entry(&fresh).is_some());
}
