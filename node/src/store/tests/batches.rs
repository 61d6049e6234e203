//! Store tests of the receiver's batches: where direct-I/O batches land, how big they are, and
//! what a stale claimant's, a cancelled or a dropped write leaves behind.

use super::*;

/// Pieces and batches of whole 4 KiB blocks go to the file direct; chunks that straddle batches
/// (odd sizes, or a whole piece in one write) must land at their offsets all the same.
#[tokio::test]
async fn aligned_batches_land_at_their_offsets_whatever_the_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let piece_size = 4 * crate::direct_io::ALIGN as u32;
    let mut t = tuning();
    // A first batch of one block, then two: batches of both sizes land where they belong.
    t.first_batch = crate::direct_io::ALIGN;
    t.write_batch = 2 * crate::direct_io::ALIGN;
    let store = open_with(dir.path(), 1 << 24, t).await;
    // Three whole pieces and a short last one.
    let blob = data(3 * piece_size as usize + 1234, 9);
    let table = table(&blob, piece_size);
    let d = table.table.digest.clone();
    store.register(table).await.unwrap();
    for (i, chunk) in [(0u32, 5000usize), (1, 1 << 20), (2, 4096), (3, 777)] {
        let range = i as usize * piece_size as usize
            ..((i as usize + 1) * piece_size as usize).min(blob.len());
        let mut r = store.receive(&d, i).unwrap();
        for c in blob[range].chunks(chunk) {
            r.write(c).await.unwrap();
        }
        assert_eq!(r.finish().await.unwrap(), Verdict::Verified, "piece {i}");
    }
    assert_eq!(on_disk(dir.path(), &d), blob);
    // And they read back through the same paths the server and the OCI endpoint use.
    for i in 0..4 {
        let pf = store.piece_file(&d, i).await.unwrap();
        let mut buf = crate::direct_io::AlignedBuf::with_capacity(pf.len as usize);
        crate::direct_io::read_at(
            &pf.file,
            pf.direct.as_deref(),
            &mut buf,
            pf.len as usize,
            pf.offset,
        )
        .unwrap();
        let start = i as usize * piece_size as usize;
        assert_eq!(buf.as_slice(), &blob[start..start + pf.len as usize]);
    }
}

/// Bytes read straight into a receiver's room (`spare` + `commit`, as the transfer client
/// does) land exactly as written ones, mixed with `write`s, and a corrupt piece still fails;
/// a receiver that buffers (a second copy of a piece) offers no room.
#[tokio::test]
async fn bytes_read_into_the_receiver_s_room_land_as_written_ones() {
    let dir = tempfile::tempdir().unwrap();
    let piece_size = 4 * crate::direct_io::ALIGN as u32;
    let mut t = tuning();
    // A first batch of one block, then two: batches of both sizes land where they belong.
    t.first_batch = crate::direct_io::ALIGN;
    t.write_batch = 2 * crate::direct_io::ALIGN;
    t.max_buffered = u64::from(piece_size);
    let store = open_with(dir.path(), 1 << 24, t).await;
    let blob = data(2 * piece_size as usize + 999, 11);
    let table_of = table;
    let table = table_of(&blob, piece_size);
    let d = table.table.digest.clone();
    store.register(table).await.unwrap();
    let range = |i: u32| {
        i as usize * piece_size as usize..((i as usize + 1) * piece_size as usize).min(blob.len())
    };
    for i in 0..3u32 {
        let bytes = &blob[range(i)];
        let mut r = store.receive(&d, i).unwrap();
        let mut at = 0;
        let mut step = 0;
        while at < bytes.len() {
            step += 1;
            let want = [3000, 1, 5000, 700][step % 4].min(bytes.len() - at);
            if step % 3 == 0 {
                r.write(&bytes[at..at + want]).await.unwrap();
                at += want;
                continue;
            }
            let room = r.spare(want).expect("a claimant offers room");
            assert!(!room.is_empty() && room.len() <= want);
            let k = room.len();
            room.copy_from_slice(&bytes[at..at + k]);
            r.commit(k).await.unwrap();
            at += k;
        }
        assert!(r.spare(1).is_none(), "no room past the piece");
        assert_eq!(r.finish().await.unwrap(), Verdict::Verified, "piece {i}");
    }
    assert_eq!(on_disk(dir.path(), &d), blob);

    // A second copy of a held piece hashes only; a corrupt one through the room is refused.
    let mut r = store.receive(&d, 1).unwrap();
    let bad = garbage(piece_size as usize);
    let mut at = 0;
    while let Some(room) = r.spare(bad.len() - at) {
        let k = room.len();
        room.copy_from_slice(&bad[at..at + k]);
        r.commit(k).await.unwrap();
        at += k;
    }
    assert_eq!(at, bad.len());
    assert_eq!(r.finish().await.unwrap(), Verdict::Invalid);
    assert_eq!(on_disk(dir.path(), &d), blob);

    // While one copy claims a piece, a second one buffers whole and takes bytes only by write.
    let other = data(piece_size as usize, 12);
    let t2 = table_of(&other, piece_size);
    let d2 = t2.table.digest.clone();
    store.register(t2).await.unwrap();
    let mut first = store.receive(&d2, 0).unwrap();
    assert!(first.spare(10).is_some());
    let mut second = store.receive(&d2, 0).unwrap();
    assert!(
        second.spare(10).is_none(),
        "a buffering copy offers no room"
    );
    send(&mut second, &other).await;
    assert_eq!(second.finish().await.unwrap(), Verdict::Verified);
    drop(first);
}

/// `direct_io = false` keeps every blob file on the page cache path, for new and recovered
/// blobs alike; `true` takes the direct path wherever this file system allows it.
#[tokio::test]
async fn direct_io_switch_decides_the_path_for_new_and_recovered_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let supported = crate::direct_io::open(&probe).is_some();
    let piece_size = 4 * crate::direct_io::ALIGN as u32;
    let blob = data(2 * piece_size as usize + 100, 3);
    for direct_io in [false, true] {
        let sub = dir.path().join(format!("store-{direct_io}"));
        let config = || StoreConfig {
            dir: sub.clone(),
            capacity_bytes: 1 << 24,
            direct_io,
        };
        let store = Store::open_tuned(config(), tuning()).await.unwrap();
        let t = table(&blob, piece_size);
        let d = t.table.digest.clone();
        store.register(t).await.unwrap();
        for i in 0..3 {
            let range = i as usize * piece_size as usize
                ..((i as usize + 1) * piece_size as usize).min(blob.len());
            let mut r = store.receive(&d, i).unwrap();
            r.write(&blob[range]).await.unwrap();
            assert_eq!(r.finish().await.unwrap(), Verdict::Verified);
        }
        let pf = store.piece_file(&d, 0).await.unwrap();
        assert_eq!(
            pf.direct.is_some(),
            direct_io && supported,
            "new blob, {direct_io}"
        );
        drop(pf);
        drop(store);
        let mut reopened = None;
        for _ in 0..100 {
            if let Ok(s) = Store::open_tuned(config(), tuning()).await {
                reopened = Some(s);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let store = reopened.expect("the store reopens");
        let pf = store.piece_file(&d, 1).await.unwrap();
        assert_eq!(
            pf.direct.is_some(),
            direct_io && supported,
            "recovered, {direct_io}"
        );
        assert_eq!(on_disk(&sub, &d), blob);
    }
}

#[test]
fn stale_claimant_batches_are_refused() {
    use std::sync::Mutex;

    use crate::store::receiver::write_claimed;
    use crate::store::state::Writer;

    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("f")).unwrap();
    let w = Mutex::new(Writer::Nobody);
    // Claimant 5 starts; a batch of dead claimant 3 arriving late is refused, even its first.
    assert!(write_claimed(&w, 5, true, &file, None, 0, b"aa", None).unwrap());
    assert!(!write_claimed(&w, 3, true, &file, None, 0, b"zz", None).unwrap());
    assert!(write_claimed(&w, 5, false, &file, None, 2, b"bb", None).unwrap());
    // A newer claimant (5 went away) takes the slot with its first batch; 5 is locked out.
    assert!(write_claimed(&w, 8, true, &file, None, 0, b"cc", None).unwrap());
    assert!(!write_claimed(&w, 5, false, &file, None, 0, b"zz", None).unwrap());
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"ccbb");
    // Done is final.
    *w.lock().unwrap() = Writer::Done;
    assert!(!write_claimed(&w, 8, false, &file, None, 0, b"zz", None).unwrap());
    assert!(!write_claimed(&w, 9, true, &file, None, 0, b"zz", None).unwrap());
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"ccbb");
}

#[tokio::test]
async fn a_cancelled_write_poisons_the_receiver() {
    use futures::FutureExt;

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20).await;
    let blob = data(1000, 80);
    let t = table(&blob, PIECE);
    let d = t.table.digest.clone();
    store.register(t).await.unwrap();
    let mut r = store.receive(&d, 0).unwrap();
    // The first poll hands the batch to a blocking thread and returns pending; dropping the
    // future then loses track of what reached the file.
    if r.write(&blob[..100]).now_or_never().is_none() {
        assert!(r.write(&blob[100..200]).await.is_err());
        assert!(r.finish().await.is_err());
        assert!(held_bits(&store, &d).is_empty());
    }
    assert_eq!(receive(&store, &d, 0, &blob).await, Verdict::Verified);
}

/// A store whose claims write a first batch of `first` bytes, then `batch`, holding the table
/// of a blob of two 64-KiB pieces (4-KiB blocks) and nothing of it yet.
async fn two_64k_pieces(
    dir: &Path,
    first: usize,
    batch: usize,
    seed: u8,
) -> (Arc<Store>, Vec<u8>, Digest, Held) {
    let tuning = Tuning {
        flush_interval: None,
        write_batch: batch,
        first_batch: first,
        max_buffered: 1 << 20,
    };
    let store = open_with(dir, 1 << 30, tuning).await;
    let d = data(2 * 65536, seed);
    let t = table(&d, 65536);
    let digest = t.table.digest.clone();
    let held = store.register(t).await.unwrap();
    (store, d, digest, held)
}

#[tokio::test]
async fn a_dropped_claim_leaves_its_piece_unoffered() {
    // 64-KiB pieces of 4-KiB blocks, written 8 KiB at a time.
    let dir = tempfile::tempdir().unwrap();
    let (store, d, digest, held) = two_64k_pieces(dir.path(), 8 << 10, 8 << 10, 9).await;
    for _ in 0..20 {
        let mut r = store.receive(&digest, 1).unwrap();
        // A batch goes to the blocking pool; the receiver is dropped before it settles: the
        // batch may finish after the claim is gone, and must not offer the piece then.
        r.write(&d[65536..65536 + (8 << 10) + 1]).await.unwrap();
        drop(r);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            !held.offer.borrow().get(1),
            "a lost claim's piece stays unoffered"
        );
        assert!(PieceSource::arriving(&*store, &digest, 1).is_none());
    }
    // A claim that completes offers and holds it.
    let mut r = store.receive(&digest, 1).unwrap();
    r.write(&d[65536..]).await.unwrap();
    assert_eq!(r.finish().await.unwrap(), Verdict::Verified);
    assert!(held.offer.borrow().get(1) && held.have.borrow().get(1));
}

/// A claim's first batch is the small one: the piece is offered, and its verified prefix
/// readable, once that much is written; later batches are the bigger size.
#[tokio::test]
async fn the_first_batch_is_small_and_the_rest_are_big() {
    // 64-KiB pieces of 4-KiB blocks: a first batch of 8 KiB, then 32 KiB.
    let dir = tempfile::tempdir().unwrap();
    let (store, d, digest, held) = two_64k_pieces(dir.path(), 8 << 10, 32 << 10, 12).await;
    let piece = &d[65536..];
    let mut r = store.receive(&digest, 1).unwrap();
    let progress = |store: &Arc<Store>| {
        PieceSource::arriving(&**store, &digest, 1).map(|a| *a.progress.borrow())
    };
    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    r.write(&piece[..8 << 10]).await.unwrap();
    until(|| held.offer.borrow().get(1)).await;
    assert!(held.offer.borrow().get(1), "offered after the first 8 KiB");
    assert_eq!(progress(&store), Some(8 << 10));
    // 24 KiB more fill most of a big batch: nothing new is written yet.
    r.write(&piece[8 << 10..32 << 10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(progress(&store), Some(8 << 10));
    // The 32nd KiB of the second batch sends it: 40 KiB verified and written.
    r.write(&piece[32 << 10..40 << 10]).await.unwrap();
    until(|| progress(&store) == Some(40 << 10)).await;
    assert_eq!(progress(&store), Some(40 << 10));
    r.write(&piece[40 << 10..]).await.unwrap();
    assert_eq!(r.finish().await.unwrap(), Verdict::Verified);
    assert!(held.have.borrow().get(1));
    assert_eq!(&on_disk(dir.path(), &digest)[65536..], piece);
}
