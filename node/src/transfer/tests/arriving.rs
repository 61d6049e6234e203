//! A piece passed on while it arrives: the uploader's store is receiving it (here fed by the
//! test, standing in for the uploader's own download), tells the downloader Arriving at its
//! first verified block, streams what has verified, and abandons the rest if its copy is lost.

use super::*;
use crate::store::{Store, StoreConfig, Tuning};

/// 64-KiB pieces of 4-KiB blocks; the store writes (and so publishes) 8 KiB at a time.
const PIECE: u32 = 64 << 10;
const BATCH: usize = 8 << 10;

async fn store(dir: &std::path::Path) -> Arc<Store> {
    Store::open_tuned(
        StoreConfig {
            dir: dir.to_path_buf(),
            capacity_bytes: 1 << 30,
            direct_io: true,
        },
        Tuning {
            flush_interval: None,
            write_batch: BATCH,
            first_batch: BATCH,
            max_buffered: 1 << 20,
        },
    )
    .await
    .unwrap()
}

/// Waits until the store offers `piece` of `digest` while it arrives, with at least `at_least`
/// bytes verified.
async fn arrived(store: &Store, digest: &Digest, piece: u32, at_least: u32) {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(a) = PieceSource::arriving(store, digest, piece)
                && *a.progress.borrow() >= at_least
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the piece arrives in time");
}

/// An uploader's store that holds none of a blob of `pieces` pieces yet (the test feeds its
/// copies), serving it, and a downloader's session to it.
struct Rig {
    _dir: tempfile::TempDir,
    data: Vec<u8>,
    table: Arc<SignedPieceTable>,
    digest: Digest,
    uploader: Arc<Store>,
    held: Held,
    sink: Arc<FakeSink>,
    c: Client,
}

async fn rig(pieces: usize) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(pieces * PIECE as usize);
    let table = Arc::new(signed_table(&data, PIECE));
    let digest = table.table.digest.clone();
    let uploader = store(dir.path()).await;
    let held = uploader.register(table.clone()).await.unwrap();
    let mut server = start_server(uploader.clone(), config(ServerLimits::default()));
    let sink = FakeSink::new(&table);
    let c = open(&mut server, &digest, sink.clone(), 16).await;
    Rig {
        _dir: dir,
        data,
        table,
        digest,
        uploader,
        held,
        sink,
        c,
    }
}

#[tokio::test]
async fn a_piece_is_passed_on_block_by_block_while_it_arrives() {
    let Rig {
        data,
        table,
        digest,
        uploader,
        held,
        sink,
        mut c,
        _dir,
    } = rig(3).await;
    assert_eq!(table.table.block_size, 4 << 10);
    assert_eq!(c.opened.have.count(), 0);

    // The uploader's own copy of piece 1 begins: nothing is offered before a block verified.
    let piece = &data[PIECE as usize..2 * PIECE as usize];
    let mut copy = uploader.receive(&digest, 1).unwrap();
    copy.write(&piece[..BATCH + 100]).await.unwrap();
    arrived(&uploader, &digest, 1, BATCH as u32).await;
    assert!(held.offer.borrow().get(1) && !held.have.borrow().get(1));
    assert_eq!(next(&mut c.events).await, SessionEventKind::Arriving(1));

    // Asked for now, it streams as the copy goes on; the downloader gets the whole piece,
    // verified, while the uploader's copy finishes behind it.
    c.session.request(1).unwrap();
    let mut at = BATCH + 100;
    copy.write(&piece[at..4 * BATCH]).await.unwrap();
    at = 4 * BATCH;
    // Bytes reach the downloader before the uploader holds the piece.
    tokio::time::timeout(WAIT, async {
        while c.session.payload_bytes() < 3 * BATCH as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("verified blocks are passed on while the piece arrives");
    assert!(!held.have.borrow().get(1));
    while at < piece.len() {
        let n = (piece.len() - at).min(3000);
        copy.write(&piece[at..at + n]).await.unwrap();
        at += n;
        tokio::task::yield_now().await;
    }
    assert_eq!(copy.finish().await.unwrap(), Verdict::Verified);
    let got = answers(&mut c.events, 1).await;
    assert_eq!(
        got,
        [SessionEventKind::Received {
            piece: 1,
            verdict: Verdict::Verified,
            bytes: PIECE,
        }]
    );
    assert_eq!(&sink.blob()[PIECE as usize..2 * PIECE as usize], piece);
    assert!(held.have.borrow().get(1));

    // A copy lost on the way: the downloader is told the rest is abandoned (no fault) and
    // the offer withdrawn; a request that crossed the Withdrawn is answered PieceBusy.
    let piece = &data[2 * PIECE as usize..];
    let mut copy = uploader.receive(&digest, 2).unwrap();
    copy.write(&piece[..2 * BATCH]).await.unwrap();
    arrived(&uploader, &digest, 2, BATCH as u32).await;
    loop {
        match next(&mut c.events).await {
            SessionEventKind::Arriving(2) => break,
            SessionEventKind::Have(1) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    c.session.request(2).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(copy);
    assert!(matches!(
        answers(&mut c.events, 1).await[..],
        [SessionEventKind::Abandoned { piece: 2, bytes }] if bytes < PIECE
    ));
    assert_eq!(next(&mut c.events).await, SessionEventKind::Withdrawn(2));
    assert!(PieceSource::arriving(&*uploader, &digest, 2).is_none());
    assert!(!held.offer.borrow().get(2) && !held.have.borrow().get(2));
    c.session.request(2).unwrap();
    assert_eq!(
        answers(&mut c.events, 1).await,
        [SessionEventKind::PieceBusy(2)]
    );
    // A new copy is offered again once its first block is in.
    let mut copy = uploader.receive(&digest, 2).unwrap();
    copy.write(&piece[..BATCH + 1]).await.unwrap();
    arrived(&uploader, &digest, 2, BATCH as u32).await;
    assert_eq!(next(&mut c.events).await, SessionEventKind::Arriving(2));
    copy.write(&piece[BATCH + 1..]).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(next(&mut c.events).await, SessionEventKind::Have(2));
    // A piece neither held nor arriving is still Missing.
    c.session.request(0).unwrap();
    assert_eq!(
        answers(&mut c.events, 1).await,
        [SessionEventKind::Missing(0)]
    );
}

/// A downloader that cancels a piece the uploader passes on while it arrives stops it at once,
/// even while the uploader waits for its own copy's next block; the uploader's copy goes on
/// and stays offered.
#[tokio::test]
async fn a_cancel_stops_a_piece_passed_on_while_it_arrives() {
    let Rig {
        data,
        digest,
        uploader,
        held,
        sink,
        mut c,
        _dir,
        ..
    } = rig(2).await;

    let piece = &data[..PIECE as usize];
    let mut copy = uploader.receive(&digest, 0).unwrap();
    copy.write(&piece[..2 * BATCH]).await.unwrap();
    arrived(&uploader, &digest, 0, 2 * BATCH as u32).await;
    assert_eq!(next(&mut c.events).await, SessionEventKind::Arriving(0));
    c.session.request(0).unwrap();
    tokio::time::timeout(WAIT, async {
        while c.session.payload_bytes() < 2 * BATCH as u64 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("what has verified arrives");
    // The uploader now waits for its copy; the cancel ends that wait.
    assert!(!c.session.cancel(0));
    assert!(matches!(
        answers(&mut c.events, 1).await[..],
        [SessionEventKind::Abandoned { piece: 0, bytes }] if bytes == 2 * BATCH as u32
    ));
    assert!(
        held.offer.borrow().get(0),
        "the uploader's own copy is not affected"
    );
    copy.write(&piece[2 * BATCH..]).await.unwrap();
    assert_eq!(copy.finish().await.unwrap(), Verdict::Verified);
    assert_eq!(next(&mut c.events).await, SessionEventKind::Have(0));
    assert!(!sink.inner.have.lock().unwrap().get(0));
}
