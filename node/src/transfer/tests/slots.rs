//! A blob's send slots: a freed slot goes to the rarest waiting request, a waiting request can
//! be cancelled, and a stalled send gives its slot up only when another request wants it.

use super::*;

/// A downloader that asks for one piece and reads nothing until told: the server's write
/// blocks once the pipe is full, and its send slot stays taken.
async fn stalled_downloader(server: &mut Incoming, digest: &Digest, piece: u32) -> PeerStream {
    let mut raw = connect(server).await;
    let hello = Frame::Hello {
        digest: digest.clone(),
        want_table: false,
    };
    raw.write_all(&[frame(&hello), frame(&Frame::Request { piece })].concat())
        .await
        .unwrap();
    raw
}

/// A server with one send slot per blob (a line of up to 8) over a seeder of six 600-KB pieces
/// (larger than the pipe's 256 KiB buffer), whose slot table the test watches.
struct OneSlot {
    source: Arc<FakeSource>,
    digest: Digest,
    sink: Arc<FakeSink>,
    server: Incoming,
    slots: Arc<Slots>,
}

impl OneSlot {
    fn start() -> OneSlot {
        Self::with(|c| c)
    }

    /// The same, with `tune` applied to its server's settings.
    fn with(tune: impl FnOnce(ServerConfig) -> ServerConfig) -> OneSlot {
        let data = blob(6 * 600_000);
        let source = FakeSource::seeder(&data, 600_000);
        let digest = source.table.table.digest.clone();
        let sink = FakeSink::new(&source.table);
        let limits = ServerLimits {
            max_sends_per_blob: 1,
            max_waiting_per_blob: 8,
            ..ServerLimits::default()
        };
        let slots = Slots::new(limits.max_sends_per_blob, limits.max_waiting_per_blob);
        let (server, rx) = futures::channel::mpsc::channel(16);
        tokio::spawn(serve_with_slots(
            rx,
            source.clone(),
            tune(config(limits)),
            slots.clone(),
        ));
        OneSlot {
            source,
            digest,
            sink,
            server,
            slots,
        }
    }

    /// Pieces whose send started, in order.
    fn opened(&self) -> Vec<u32> {
        self.source.opened.lock().unwrap().clone()
    }

    fn waiting(&self) -> usize {
        self.slots.waiting(&self.digest)
    }

    fn sends(&self) -> usize {
        self.slots.sends(&self.digest)
    }
}

/// Reads everything a stalled downloader is sent, so its send slot frees.
fn drain(mut stalled: PeerStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0; 64 << 10];
        while stalled.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
}

#[tokio::test]
async fn a_freed_send_slot_goes_to_the_rarest_waiting_request() {
    let mut t = OneSlot::start();
    let rank = t.source.rank.clone().unwrap();
    // This host's download sees piece 3 at five peers, piece 4 at one.
    rank.set(3, 5);
    rank.set(4, 1);
    let stalled = stalled_downloader(&mut t.server, &t.digest, 0).await;
    until("piece 0 is being sent", || t.opened() == [0]).await;
    // The common piece is asked for first, the rare one second: both wait.
    let mut common = open(&mut t.server, &t.digest, t.sink.clone(), 8).await;
    common.session.request(3).unwrap();
    until("one request waits", || t.waiting() == 1).await;
    let mut rare = open(&mut t.server, &t.digest, t.sink.clone(), 8).await;
    rare.session.request(4).unwrap();
    until("two requests wait", || t.waiting() == 2).await;
    assert_eq!(
        t.opened(),
        [0],
        "nothing else starts while the slot is taken"
    );

    // The stalled downloader reads its piece: the slot frees and goes to the rare piece.
    let drain = drain(stalled);
    let got = answers(&mut rare.events, 1).await;
    assert!(
        matches!(got[0], SessionEventKind::Received { piece: 4, .. }),
        "{got:?}"
    );
    let got = answers(&mut common.events, 1).await;
    assert!(
        matches!(got[0], SessionEventKind::Received { piece: 3, .. }),
        "{got:?}"
    );
    assert_eq!(t.opened(), [0, 4, 3], "the rarer piece went first");
    drain.abort();
}

#[tokio::test]
async fn a_request_waiting_for_a_send_slot_can_be_cancelled() {
    let mut t = OneSlot::start();
    let stalled = stalled_downloader(&mut t.server, &t.digest, 0).await;
    until("piece 0 is being sent", || t.opened() == [0]).await;
    let mut c = open(&mut t.server, &t.digest, t.sink.clone(), 8).await;
    c.session.request(1).unwrap();
    c.session.request(2).unwrap();
    until("the stream waits", || t.waiting() == 1).await;
    // Cancelling the waiting front request puts the next one in line instead; cancelling
    // that too leaves the line.
    assert!(c.session.cancel(1));
    assert!(c.session.cancel(2));
    until("the line is empty", || t.waiting() == 0).await;
    // A new request waits again, and is sent once the slot frees.
    c.session.request(5).unwrap();
    until("the stream waits again", || t.waiting() == 1).await;
    let drain = drain(stalled);
    let got = answers(&mut c.events, 1).await;
    assert!(
        matches!(got[0], SessionEventKind::Received { piece: 5, .. }),
        "{got:?}"
    );
    assert_eq!(t.opened(), [0, 5], "cancelled requests were never sent");
    drain.abort();
}

/// Reads what is left of a stream the server gave up: the bytes, until it ends.
async fn read_to_end(mut stream: PeerStream) -> usize {
    let mut buf = vec![0; 64 << 10];
    let mut total = 0;
    loop {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf)).await;
        match read.expect("the given-up stream ends") {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[tokio::test]
async fn a_stalled_send_gives_its_slot_up_only_when_another_request_wants_it() {
    let stall = Duration::from_millis(200);
    let mut t = OneSlot::with(|c| ServerConfig {
        contended_stall: stall,
        ..c
    });
    let stalled = stalled_downloader(&mut t.server, &t.digest, 0).await;
    until("piece 0 is being sent", || t.opened() == [0]).await;
    // Nobody else wants the slot: a reader that stops for several stall limits keeps it.
    tokio::time::sleep(stall * 4).await;
    assert_eq!(t.sends(), 1, "an uncontended stall is tolerated");

    // Another request waits for the slot: the stalled send is given up within a few limits
    // (it took no byte for longer than one already), and the waiting request is sent.
    let started = Instant::now();
    let mut c = open(&mut t.server, &t.digest, t.sink.clone(), 8).await;
    c.session.request(1).unwrap();
    let got = answers(&mut c.events, 1).await;
    assert!(
        matches!(got[0], SessionEventKind::Received { piece: 1, .. }),
        "{got:?}"
    );
    assert!(started.elapsed() < WAIT / 2, "{:?}", started.elapsed());
    assert_eq!(t.opened(), [0, 1]);
    // The stalled downloader got a cut-off piece 0, then the stream ended.
    let header = frame(&Frame::Piece {
        index: 0,
        len: 600_000,
    })
    .len();
    let got = read_to_end(stalled).await;
    assert!(got < 600_000 + header, "{got} bytes");
}

#[tokio::test]
async fn a_stalled_send_gives_up_its_host_send_when_all_are_taken() {
    let stall = Duration::from_millis(200);
    // One send at a time for the whole host; the blob itself would allow four.
    let mut t = OneSlot::with(|c| ServerConfig {
        contended_stall: stall,
        limits: ServerLimits {
            max_sends_per_blob: 4,
            max_concurrent_sends: 1,
            ..c.limits
        },
        ..c
    });
    let stalled = stalled_downloader(&mut t.server, &t.digest, 0).await;
    until("piece 0 is being sent", || t.opened() == [0]).await;
    // The host's one send is taken, so a request is answered Busy; the stalled send holding
    // it is given up and the next request is sent.
    let mut c = open(&mut t.server, &t.digest, t.sink.clone(), 8).await;
    c.session.request(1).unwrap();
    let got = answers(&mut c.events, 1).await;
    assert!(matches!(got[0], SessionEventKind::Refused(1)), "{got:?}");
    until("the stalled send is given up", || t.sends() == 0).await;
    assert!(read_to_end(stalled).await < 600_000);
    c.session.request(1).unwrap();
    let got = answers(&mut c.events, 1).await;
    assert!(
        matches!(got[0], SessionEventKind::Received { piece: 1, .. }),
        "{got:?}"
    );
}
