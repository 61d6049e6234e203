//! Transfer tests over an in-memory pipe (`tokio::io::duplex`), with a fake piece source backed
//! by a temp file and a fake sink that verifies pieces against the table; plus a throughput
//! measurement (`bench_transfer_throughput`, ignored: run it in release).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, PieceTable, PieceTableBuilder, SignedPieceTable};
use flotilla_protocol::wire::{self, ErrorCode, Frame};
use futures::future::BoxFuture;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{FutureExt, SinkExt};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use tokio::sync::{mpsc, watch};
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::server::{ServerConfig, run_server_with, serve_with_slots};
use super::slots::Slots;
use super::*;
use crate::ports::{
    Held, PeerStream, PieceFile, PieceRank, PieceReceiver, PieceSink, PieceSource, SourceError,
    Verdict,
};

const WAIT: Duration = Duration::from_secs(20);

fn blob(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn signed_table(data: &[u8], piece_size: u32) -> SignedPieceTable {
    let mut b = PieceTableBuilder::new(piece_size).unwrap();
    b.update(data);
    let table = b.finish(Digest::sha256_of(data)).unwrap();
    SignedPieceTable::sign(table, &gateway_key()).unwrap()
}

fn gateway_key() -> Keypair {
    Keypair::ed25519_from_bytes([7; 32]).unwrap()
}

fn peer(n: u8) -> PeerId {
    Keypair::ed25519_from_bytes([n; 32])
        .unwrap()
        .public()
        .to_peer_id()
}

fn pipe() -> (PeerStream, PeerStream) {
    let (a, b) = tokio::io::duplex(256 << 10);
    (Box::new(a.compat()), Box::new(b.compat()))
}

/// A source serving one blob from a temp file, holding the pieces of its `have` watch.
struct FakeSource {
    table: Arc<SignedPieceTable>,
    file: Arc<std::fs::File>,
    have: watch::Sender<Bitfield>,
    served: AtomicU64,
    /// Pieces whose file was asked for, in order (a send is starting).
    opened: Mutex<Vec<u32>>,
    /// Ranks the pieces like a downloading holder's driver (tests set it).
    rank: Option<Arc<PieceRank>>,
    _tmp: tempfile::NamedTempFile,
}

impl FakeSource {
    /// `file_data` is what the file holds (may differ from what the table was built from).
    fn new(table: SignedPieceTable, file_data: &[u8], have: Bitfield) -> Arc<Self> {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(file_data).unwrap();
        tmp.flush().unwrap();
        let file = Arc::new(tmp.reopen().unwrap());
        Arc::new(FakeSource {
            rank: Some(Arc::new(PieceRank::new(table.table.piece_count()))),
            table: Arc::new(table),
            file,
            have: watch::channel(have).0,
            served: AtomicU64::new(0),
            opened: Mutex::new(Vec::new()),
            _tmp: tmp,
        })
    }

    fn seeder(data: &[u8], piece_size: u32) -> Arc<Self> {
        let table = signed_table(data, piece_size);
        let count = table.table.piece_count();
        Self::new(table, data, Bitfield::full(count))
    }

    fn gain(&self, piece: u32) {
        self.have.send_modify(|h| {
            h.set(piece);
        });
    }
}

impl PieceSource for FakeSource {
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>> {
        let held = (*digest == self.table.table.digest).then(|| Held {
            table: self.table.clone(),
            have: self.have.subscribe(),
            offer: self.have.subscribe(),
            rank: self.rank.clone(),
        });
        async move { Ok(held) }.boxed()
    }

    fn piece_file(
        &self,
        _digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>> {
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(index);
        let r = self.table.table.piece_range(index).map(|range| PieceFile {
            file: self.file.clone(),
            offset: range.start,
            len: (range.end - range.start) as u32,
            direct: None,
        });
        async move { r.ok_or_else(|| SourceError::NotHeld("no such piece".into())) }.boxed()
    }

    fn served(&self, _digest: &Digest, bytes: u64) {
        self.served.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A sink that verifies each piece with the table's piece hash and assembles the blob.
struct FakeSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    table: PieceTable,
    blob: Mutex<Vec<u8>>,
    have: Mutex<Bitfield>,
}

impl FakeSink {
    fn new(table: &SignedPieceTable) -> Arc<Self> {
        let t = table.table.clone();
        Arc::new(FakeSink {
            inner: Arc::new(SinkInner {
                blob: Mutex::new(vec![0; t.size as usize]),
                have: Mutex::new(Bitfield::new(t.piece_count())),
                table: t,
            }),
        })
    }

    fn blob(&self) -> Vec<u8> {
        self.inner.blob.lock().unwrap().clone()
    }
}

struct FakeReceiver {
    inner: Arc<SinkInner>,
    index: u32,
    data: Vec<u8>,
}

impl PieceReceiver for FakeReceiver {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SourceError>> {
        assert!(chunk.len() <= 256 << 10, "chunks stay small");
        self.data.extend_from_slice(chunk);
        async { Ok(()) }.boxed()
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Verdict, SourceError>> {
        let verdict = if self
            .inner
            .table
            .verify_piece(self.index, &self.data)
            .is_err()
        {
            Verdict::Invalid
        } else if self.inner.have.lock().unwrap().set(self.index) {
            let start = self.inner.table.piece_range(self.index).unwrap().start as usize;
            self.inner.blob.lock().unwrap()[start..start + self.data.len()]
                .copy_from_slice(&self.data);
            Verdict::Verified
        } else {
            Verdict::Duplicate
        };
        async move { Ok(verdict) }.boxed()
    }
}

impl PieceSink for FakeSink {
    fn register(
        &self,
        _table: Arc<SignedPieceTable>,
    ) -> BoxFuture<'static, Result<Held, SourceError>> {
        async { Err(SourceError::Other("not used by these tests".into())) }.boxed()
    }

    fn receive(&self, digest: &Digest, index: u32) -> Result<Box<dyn PieceReceiver>, SourceError> {
        if *digest != self.inner.table.digest {
            return Err(SourceError::NotHeld(digest.to_string()));
        }
        Ok(Box::new(FakeReceiver {
            inner: self.inner.clone(),
            index,
            data: Vec::new(),
        }))
    }
}

type Incoming = futures::channel::mpsc::Sender<(PeerId, PeerStream)>;

fn config(limits: ServerLimits) -> ServerConfig {
    ServerConfig {
        limits,
        site: None,
        hello_timeout: HELLO_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        write_stall: WRITE_STALL_TIMEOUT,
        contended_stall: CONTENDED_STALL_TIMEOUT,
        pace: limits
            .upload_bytes_per_s
            .map(|rate| Arc::new(super::Pace::new(rate))),
    }
}

fn start_server(source: Arc<dyn PieceSource>, config: ServerConfig) -> Incoming {
    let (tx, rx) = futures::channel::mpsc::channel(16);
    tokio::spawn(run_server_with(rx, source, config));
    tx
}

async fn connect(server: &mut Incoming) -> PeerStream {
    let (ours, theirs) = pipe();
    server.send((peer(1), theirs)).await.unwrap();
    ours
}

struct Client {
    session: Session,
    opened: Opened,
    events: mpsc::Receiver<SessionEvent>,
}

async fn open(
    server: &mut Incoming,
    digest: &Digest,
    sink: Arc<dyn PieceSink>,
    cap: usize,
) -> Client {
    let stream = connect(server).await;
    let (tx, events) = mpsc::channel(cap);
    let (session, opened) = Session::open(peer(2), stream, digest.clone(), sink, tx)
        .await
        .unwrap();
    Client {
        session,
        opened,
        events,
    }
}

async fn next(events: &mut mpsc::Receiver<SessionEvent>) -> SessionEventKind {
    let ev = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("event in time")
        .expect("channel open");
    assert_eq!(ev.peer, peer(2));
    ev.kind
}

/// Collects the answers to `n` requests (skipping Have), panicking on Closed.
async fn answers(events: &mut mpsc::Receiver<SessionEvent>, n: usize) -> Vec<SessionEventKind> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(events).await {
            SessionEventKind::Have(_) => {}
            SessionEventKind::Closed(why) => panic!("closed early: {why:?}"),
            other => out.push(other),
        }
    }
    out
}

#[tokio::test]
async fn the_welcome_tells_the_uploaders_site() {
    let data = blob(10_000);
    let source = FakeSource::seeder(&data, 4096);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    let c = open(&mut server, &digest, sink.clone(), 8).await;
    assert_eq!(c.opened.site, None);
    let mut cfg = config(ServerLimits::default());
    cfg.site = Some(Arc::from("fra-1"));
    let mut server = start_server(source, cfg);
    let c = open(&mut server, &digest, sink, 8).await;
    assert_eq!(c.opened.site.as_deref(), Some("fra-1"));
}

#[tokio::test]
async fn full_blob_transfer_in_chunks() {
    // Pieces span several send (512 KiB) and receive (256 KiB) chunks; the last is short.
    let data = blob(5 * 700_000 + 12_345);
    let source = FakeSource::seeder(&data, 700_000);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    let mut c = open(&mut server, &digest, sink.clone(), 8).await;
    assert!(c.opened.have.is_complete());
    assert_eq!(c.session.piece_count(), 6);
    for i in 0..6 {
        c.session.request(i).unwrap();
    }
    let got = answers(&mut c.events, 6).await;
    for (i, ev) in got.iter().enumerate() {
        let len = source.table.table.piece_len(i as u32).unwrap();
        assert_eq!(
            *ev,
            SessionEventKind::Received {
                piece: i as u32,
                verdict: Verdict::Verified,
                bytes: len
            }
        );
    }
    assert!(sink.blob() == data, "assembled blob differs");
    // A second copy is the sink's business: it says Duplicate.
    c.session.request(2).unwrap();
    assert!(matches!(
        answers(&mut c.events, 1).await[0],
        SessionEventKind::Received {
            piece: 2,
            verdict: Verdict::Duplicate,
            ..
        }
    ));
    assert_eq!(
        source.served.load(Ordering::Relaxed),
        data.len() as u64 + 700_000
    );
    // Dropping the session closes the stream; the server lets it go.
    drop(c);
}

#[tokio::test]
async fn pipelined_requests_answered_in_order() {
    let data = blob(64 * 4096);
    let source = FakeSource::seeder(&data, 4096);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    let mut c = open(&mut server, &digest, sink.clone(), 64).await;
    let order: Vec<u32> = (0..32).map(|i| (i * 7) % 64).collect();
    for &i in &order {
        c.session.request(i).unwrap();
    }
    assert!(matches!(
        c.session.request(order[0]),
        Err(TransferError::AlreadyRequested(_))
    ));
    assert!(matches!(
        c.session.request(64),
        Err(TransferError::OutOfRange { .. })
    ));
    let got = answers(&mut c.events, 32).await;
    let pieces: Vec<u32> = got
        .iter()
        .map(|e| match e {
            SessionEventKind::Received {
                piece,
                verdict: Verdict::Verified,
                ..
            } => *piece,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(pieces, order);
}

#[tokio::test]
async fn have_updates_follow_the_source() {
    let data = blob(8 * 1000);
    let table = signed_table(&data, 1000);
    let mut have = Bitfield::new(8);
    have.set(0);
    let source = FakeSource::new(table, &data, have);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    let mut c = open(&mut server, &digest, sink, 8).await;
    assert_eq!(c.opened.have.iter_ones().collect::<Vec<_>>(), vec![0]);
    // Not held yet: Missing.
    c.session.request(3).unwrap();
    assert_eq!(
        answers(&mut c.events, 1).await,
        vec![SessionEventKind::Missing(3)]
    );
    source.gain(3);
    source.gain(5);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match next(&mut c.events).await {
            SessionEventKind::Have(p) => seen.push(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![3, 5]);
    c.session.request(3).unwrap();
    assert!(matches!(
        answers(&mut c.events, 1).await[0],
        SessionEventKind::Received {
            piece: 3,
            verdict: Verdict::Verified,
            ..
        }
    ));
}

#[tokio::test]
async fn cancelled_requests_yield_no_events() {
    let data = blob(16 * 100_000);
    let source = FakeSource::seeder(&data, 100_000);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    // A one-slot event channel that nobody reads yet stalls the reader, so the server's
    // writes back up and the cancels reach it while requests are still queued.
    let mut c = open(&mut server, &digest, sink, 1).await;
    for i in 0..16 {
        c.session.request(i).unwrap();
    }
    // Let the requests leave before cancelling (else they are withdrawn unsent).
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A cancel returns false only when the answer was already arriving (then it is reported:
    // received, or cut short if the cancel reached the uploader first).
    let mut expected: Vec<u32> = (0..16).collect();
    let mut begun = Vec::new();
    for i in (1..16).step_by(2) {
        if c.session.cancel(i) {
            expected.retain(|&p| p != i);
        } else {
            begun.push(i);
        }
    }
    assert!(expected.len() < 12, "most cancels land: {expected:?}");
    assert!(!c.session.cancel(99), "not requested");
    let got = answers(&mut c.events, expected.len()).await;
    let pieces: Vec<u32> = got
        .iter()
        .map(|e| match e {
            SessionEventKind::Received { piece, .. } => *piece,
            SessionEventKind::Abandoned { piece, .. } if begun.contains(piece) => *piece,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(pieces, expected);
    // The server skipped queued cancelled requests rather than sending everything.
    let served = source.served.load(Ordering::Relaxed);
    assert!(served < 16 * 100_000, "served {served}");
    // Cancelled pieces can be asked for again, and the session is still healthy.
    c.session.request(1).unwrap();
    assert!(c.session.cancel(1));
    c.session.request(1).unwrap();
    c.session.request(3).unwrap();
    let got = answers(&mut c.events, 2).await;
    assert!(
        got.iter()
            .all(|e| matches!(e, SessionEventKind::Received { .. }))
    );
    assert!(!c.session.is_closed());
}

#[tokio::test]
async fn stale_answers_after_cancel_are_dropped() {
    // A scripted uploader answers a request that was cancelled, then the re-request: the
    // first answer is taken for the re-request, the second dropped as stale.
    let data = blob(3000);
    let table = signed_table(&data, 1000);
    let sink = FakeSink::new(&table);
    let (ours, mut theirs) = pipe();
    let (tx, mut events) = mpsc::channel(8);
    let digest = table.table.digest.clone();
    let uploader = tokio::spawn(async move {
        greet_as_uploader(&mut theirs).await;
        let mut out = Vec::new();
        // Request 1, Cancel 1, Request 1: 9 bytes each.
        let mut got = [0u8; 27];
        theirs.read_exact(&mut got).await.unwrap();
        for _ in 0..2 {
            out.clear();
            wire::encode(
                &Frame::Piece {
                    index: 1,
                    len: 1000,
                },
                &mut out,
            )
            .unwrap();
            out.extend_from_slice(&600u32.to_be_bytes());
            out.extend_from_slice(&data[1000..1600]);
            out.extend_from_slice(&400u32.to_be_bytes());
            out.extend_from_slice(&data[1600..2000]);
            theirs.write_all(&out).await.unwrap();
        }
        // A third, unrequested answer is a violation.
        out.clear();
        wire::encode(&Frame::Busy { piece: 1 }, &mut out).unwrap();
        theirs.write_all(&out).await.unwrap();
        theirs
    });
    let (session, _) = Session::open(peer(2), ours, digest, sink, tx)
        .await
        .unwrap();
    session.request(1).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(session.cancel(1));
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.request(1).unwrap();
    assert!(matches!(
        next(&mut events).await,
        SessionEventKind::Received {
            piece: 1,
            verdict: Verdict::Verified,
            ..
        }
    ));
    match next(&mut events).await {
        SessionEventKind::Closed(Some(why)) => assert!(why.contains("unrequested"), "{why}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(session.is_closed());
    assert!(matches!(session.request(0), Err(TransferError::Closed)));
    let _ = uploader.await.unwrap();
}

#[tokio::test]
async fn busy_over_limits() {
    let data = blob(20 * 50_000);
    let source = FakeSource::seeder(&data, 50_000);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);

    // No send slots at all: everything is refused (Busy); no copy of any piece may go out:
    // everything is answered PieceBusy. Nothing breaks either way.
    let no_sends = ServerLimits {
        max_concurrent_sends: 0,
        ..ServerLimits::default()
    };
    let no_copies = ServerLimits {
        max_copies_per_piece: 0,
        ..ServerLimits::default()
    };
    for (limits, piece_busy) in [(no_sends, false), (no_copies, true)] {
        let mut server = start_server(source.clone(), config(limits));
        let mut c = open(&mut server, &digest, sink.clone(), 8).await;
        for i in 0..4 {
            c.session.request(i).unwrap();
        }
        let got = answers(&mut c.events, 4).await;
        let want = (0..4).map(|i| {
            if piece_busy {
                SessionEventKind::PieceBusy(i)
            } else {
                SessionEventKind::Refused(i)
            }
        });
        assert_eq!(got, want.collect::<Vec<_>>());
    }

    // A queue of one per stream: requests beyond it are refused; each gets one answer.
    let limits = ServerLimits {
        max_requests_per_stream: 1,
        ..ServerLimits::default()
    };
    let mut server = start_server(source.clone(), config(limits));
    let mut c = open(&mut server, &digest, sink.clone(), 32).await;
    for i in 0..20 {
        c.session.request(i).unwrap();
    }
    let got = answers(&mut c.events, 20).await;
    let refused = got
        .iter()
        .filter(|e| matches!(e, SessionEventKind::Refused(_)))
        .count();
    let received = got
        .iter()
        .filter(|e| matches!(e, SessionEventKind::Received { .. }))
        .count();
    assert!(refused > 0, "{got:?}");
    assert_eq!(refused + received, 20);

    // One stream at a time: a second is refused with an Error frame.
    let limits = ServerLimits {
        max_streams: 1,
        ..ServerLimits::default()
    };
    let mut server = start_server(source.clone(), config(limits));
    let _first = open(&mut server, &digest, sink.clone(), 8).await;
    let stream = connect(&mut server).await;
    let (tx, _rx) = mpsc::channel(1);
    let err = Session::open(peer(2), stream, digest.clone(), sink.clone(), tx)
        .await
        .unwrap_err();
    assert_overloaded(&err);
}

/// Panics unless `err` is the uploader's Error frame with code overloaded.
fn assert_overloaded(err: &TransferError) {
    assert!(
        matches!(
            err,
            TransferError::Remote {
                code: ErrorCode::OVERLOADED,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn streams_per_blob_are_capped_and_freed_when_one_ends() {
    let data = blob(4 * 10_000);
    let source = FakeSource::seeder(&data, 10_000);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    let limits = ServerLimits {
        max_streams_per_blob: 2,
        ..ServerLimits::default()
    };
    let mut server = start_server(source.clone(), config(limits));
    let first = open(&mut server, &digest, sink.clone(), 8).await;
    let _second = open(&mut server, &digest, sink.clone(), 8).await;
    let try_open = |stream| {
        let (tx, _rx) = mpsc::channel(1);
        Session::open(peer(3), stream, digest.clone(), sink.clone(), tx)
    };
    let err = try_open(connect(&mut server).await).await.unwrap_err();
    assert_overloaded(&err);
    // The first session ends: its place is free again (once the server has seen it go).
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match try_open(connect(&mut server).await).await {
            Ok(_) => break,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn corrupted_piece_is_invalid() {
    let data = blob(4 * 10_000);
    let table = signed_table(&data, 10_000);
    let mut on_disk = data.clone();
    on_disk[25_000] ^= 1;
    let source = FakeSource::new(table, &on_disk, Bitfield::full(4));
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    let mut c = open(&mut server, &digest, sink, 8).await;
    for i in 1..4 {
        c.session.request(i).unwrap();
    }
    let got = answers(&mut c.events, 3).await;
    let verdicts: Vec<Verdict> = got
        .iter()
        .map(|e| match e {
            SessionEventKind::Received { verdict, .. } => *verdict,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![Verdict::Verified, Verdict::Invalid, Verdict::Verified]
    );
}

#[tokio::test]
async fn not_held_and_fetch_table() {
    let data = blob(10_000);
    let source = FakeSource::seeder(&data, 4096);
    let digest = source.table.table.digest.clone();
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    let table = fetch_table(connect(&mut server).await, &digest)
        .await
        .unwrap();
    assert_eq!(table, *source.table);
    table
        .verify(Some(&gateway_key().public().to_peer_id()))
        .unwrap();

    let other = Digest::sha256_of(b"other");
    let err = fetch_table(connect(&mut server).await, &other)
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::NotHeld), "{err}");
    let (tx, _rx) = mpsc::channel(1);
    let sink = FakeSink::new(&source.table);
    let err = Session::open(peer(2), connect(&mut server).await, other, sink, tx)
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::NotHeld), "{err}");
}

/// Plays a fake uploader's opening: reads the downloader's Hello and answers with a Welcome
/// for a 3000-byte blob of three 1000-byte pieces, all held.
async fn greet_as_uploader(theirs: &mut PeerStream) {
    let mut buf = vec![0u8; 64];
    let _ = theirs.read(&mut buf).await.unwrap();
    let mut out = Vec::new();
    let welcome = Frame::Welcome {
        size: 3000,
        piece_size: 1000,
        table: None,
        have: Bitfield::full(3),
        site: None,
    };
    wire::encode(&welcome, &mut out).unwrap();
    theirs.write_all(&out).await.unwrap();
}

fn frame(f: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(f, &mut out).unwrap();
    out
}

/// Polls `cond` every few milliseconds until it holds (panics after [`WAIT`]).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A sink that counts bytes and says Verified (the benchmark measures transfer, not hashing).
struct CountingSink(Arc<AtomicU64>);

struct CountingReceiver(Arc<AtomicU64>);

impl PieceReceiver for CountingReceiver {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SourceError>> {
        self.0.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        async { Ok(()) }.boxed()
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Verdict, SourceError>> {
        async { Ok(Verdict::Verified) }.boxed()
    }
}

impl PieceSink for CountingSink {
    fn register(
        &self,
        _table: Arc<SignedPieceTable>,
    ) -> BoxFuture<'static, Result<Held, SourceError>> {
        async { Err(SourceError::Other("unused".into())) }.boxed()
    }

    fn receive(
        &self,
        _digest: &Digest,
        _index: u32,
    ) -> Result<Box<dyn PieceReceiver>, SourceError> {
        Ok(Box::new(CountingReceiver(self.0.clone())))
    }
}

/// 256 MiB in 4 MiB pieces over the in-memory pipe, 8 requests in flight; prints MB/s.
/// `cargo test --release -p flotilla-node bench_transfer_throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run in release"]
async fn bench_transfer_throughput() {
    const SIZE: usize = 256 << 20;
    const PIECE: u32 = 4 << 20;
    let data = blob(SIZE);
    let source = FakeSource::seeder(&data, PIECE);
    drop(data);
    let digest = source.table.table.digest.clone();
    let count = source.table.table.piece_count();
    let bytes = Arc::new(AtomicU64::new(0));
    let sink = Arc::new(CountingSink(bytes.clone()));
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    for round in 0..3 {
        bytes.store(0, Ordering::Relaxed);
        let mut c = open(&mut server, &digest, sink.clone(), 64).await;
        let started = Instant::now();
        let mut next_piece = 0;
        let mut done = 0;
        let mut in_flight = HashMap::new();
        while done < count {
            while next_piece < count && in_flight.len() < 8 {
                c.session.request(next_piece).unwrap();
                in_flight.insert(next_piece, ());
                next_piece += 1;
            }
            match next(&mut c.events).await {
                SessionEventKind::Received { piece, .. } => {
                    in_flight.remove(&piece);
                    done += 1;
                }
                SessionEventKind::Have(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(bytes.load(Ordering::Relaxed), SIZE as u64);
        println!(
            "round {round}: {} MiB in {secs:.3} s = {:.0} MB/s",
            SIZE >> 20,
            SIZE as f64 / secs / 1e6
        );
    }
}

mod arriving;
mod errors;
mod slots;

/// A cancel that reaches the uploader while it sends the piece cuts the rest off: a downloader
/// that got the piece elsewhere (the end game's other copy) does not take it twice.
#[tokio::test]
async fn a_cancel_cuts_the_piece_being_sent_short() {
    const PIECE: usize = 2 << 20;
    let data = blob(PIECE);
    let source = FakeSource::seeder(&data, PIECE as u32);
    let digest = source.table.table.digest.clone();
    let sink = FakeSink::new(&source.table);
    // 1 MiB/s: a part of 512 KiB every half second, so the cancel lands mid-piece.
    let limits = ServerLimits {
        upload_bytes_per_s: Some(1 << 20),
        ..ServerLimits::default()
    };
    let mut server = start_server(source.clone(), config(limits));
    let mut c = open(&mut server, &digest, sink.clone(), 16).await;
    c.session.request(0).unwrap();
    until("the first part arrives", || c.session.payload_bytes() > 0).await;
    assert!(!c.session.cancel(0), "its answer has begun: it is reported");
    match answers(&mut c.events, 1).await[..] {
        [SessionEventKind::Abandoned { piece: 0, bytes }] => {
            assert!(bytes < PIECE as u32, "{bytes}");
            assert_eq!(u64::from(bytes), c.session.payload_bytes());
        }
        ref other => panic!("unexpected {other:?}"),
    }
    let served = source.served.load(Ordering::Relaxed);
    assert!(served < PIECE as u64, "served {served}");
    assert!(!sink.inner.have.lock().unwrap().get(0));
    // The session goes on: asked again, the piece comes whole.
    c.session.request(0).unwrap();
    assert!(matches!(
        answers(&mut c.events, 1).await[..],
        [SessionEventKind::Received { piece: 0, .. }]
    ));
    assert!(!c.session.is_closed());
}
