//! Bad input on either side: garbage and protocol breaches sent to the server, uploaders that
//! break the protocol towards a downloader, and the Hello and idle timeouts.

use super::*;

/// Sends `bytes` to a fresh server stream and returns what the server says before closing.
async fn server_reply(server: &mut Incoming, bytes: &[u8]) -> Vec<Frame> {
    let mut s = connect(server).await;
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .expect("server closes")
        .unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((f, used)) = wire::decode(&got[at..]).unwrap() {
        frames.push(f);
        at += used;
    }
    frames
}

fn error_code(frames: &[Frame]) -> Option<ErrorCode> {
    match frames.last() {
        Some(Frame::Error { code, .. }) => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn garbage_to_the_server_is_answered_with_an_error() {
    let data = blob(10_000);
    let source = FakeSource::seeder(&data, 4096);
    let digest = source.table.table.digest.clone();
    let mut server = start_server(source.clone(), config(ServerLimits::default()));
    let garbage: [&[u8]; 4] = [
        &[0xff; 64],
        &[0, 0, 0, 5, 0x02, 0, 0, 0, 1], // a Request before any Hello
        &[0, 0, 0, 0],
        &[0, 0, 0, 1, 0x77],
    ];
    for g in garbage {
        let frames = server_reply(&mut server, g).await;
        assert_eq!(
            error_code(&frames),
            Some(ErrorCode::PROTOCOL),
            "{g:?}: {frames:?}"
        );
    }
    // A Hello of version 1 (whole pieces, no parts).
    let mut hello = Vec::new();
    wire::encode(
        &Frame::Hello {
            digest: digest.clone(),
            want_table: false,
        },
        &mut hello,
    )
    .unwrap();
    let mut v1 = hello.clone();
    v1[5] = 1;
    assert_eq!(
        error_code(&server_reply(&mut server, &v1).await),
        Some(ErrorCode::VERSION)
    );
    // Garbage after a good Hello, and an out-of-range request.
    for tail in [&[0xee; 16][..], &[0, 0, 0, 5, 0x02, 0, 0, 0, 9][..]] {
        let mut bytes = hello.clone();
        bytes.extend_from_slice(tail);
        let frames = server_reply(&mut server, &bytes).await;
        assert!(matches!(frames[0], Frame::Welcome { .. }));
        assert_eq!(error_code(&frames), Some(ErrorCode::PROTOCOL), "{frames:?}");
    }
    // The server survived all of it.
    assert!(
        fetch_table(connect(&mut server).await, &digest)
            .await
            .is_ok()
    );
}

/// Opens a session against a scripted uploader that sends the Welcome and then `script`.
async fn scripted(script: Vec<u8>) -> Vec<SessionEventKind> {
    let data = blob(3000);
    let table = signed_table(&data, 1000);
    let sink = FakeSink::new(&table);
    let (ours, mut theirs) = pipe();
    let uploader = tokio::spawn(async move {
        greet_as_uploader(&mut theirs).await;
        // Wait for the request, then play the script and hang up.
        let mut req = [0u8; 9];
        theirs.read_exact(&mut req).await.unwrap();
        theirs.write_all(&script).await.unwrap();
        theirs.close().await.unwrap();
    });
    let (tx, mut events) = mpsc::channel(8);
    let (session, _) = Session::open(peer(2), ours, table.table.digest.clone(), sink, tx)
        .await
        .unwrap();
    session.request(1).unwrap();
    let mut got = Vec::new();
    loop {
        let ev = next(&mut events).await;
        let done = matches!(ev, SessionEventKind::Closed(_));
        got.push(ev);
        if done {
            break;
        }
    }
    uploader.await.unwrap();
    got
}

fn closed_with(events: &[SessionEventKind], needle: &str) -> bool {
    matches!(events.last(), Some(SessionEventKind::Closed(Some(why))) if why.contains(needle))
}

#[tokio::test]
async fn bad_uploaders_close_the_session() {
    // Garbage instead of a frame.
    let got = scripted(vec![0xff; 32]).await;
    assert!(closed_with(&got, "wire"), "{got:?}");
    // A piece of the wrong length, and one past the end.
    let got = scripted(frame(&Frame::Piece { index: 1, len: 999 })).await;
    assert!(closed_with(&got, "does not fit"), "{got:?}");
    let got = scripted(frame(&Frame::Have { piece: 3 })).await;
    assert!(closed_with(&got, "out of range"), "{got:?}");
    // A frame only a downloader sends.
    let got = scripted(frame(&Frame::Request { piece: 0 })).await;
    assert!(closed_with(&got, "unexpected Request"), "{got:?}");
    // An unrequested piece.
    let got = scripted(frame(&Frame::Missing { piece: 0 })).await;
    assert!(closed_with(&got, "unrequested"), "{got:?}");
    // The payload breaks off: the piece fails, then the stream is closed.
    let mut cut = frame(&Frame::Piece {
        index: 1,
        len: 1000,
    });
    cut.extend_from_slice(&1000u32.to_be_bytes());
    cut.extend_from_slice(&[0; 400]);
    let got = scripted(cut).await;
    assert_eq!(got[0], SessionEventKind::Failed(1));
    assert!(closed_with(&got, "inside piece 1"), "{got:?}");
    // A part longer than the piece is a violation.
    let mut long = frame(&Frame::Piece {
        index: 1,
        len: 1000,
    });
    long.extend_from_slice(&1001u32.to_be_bytes());
    long.extend_from_slice(&[0; 1001]);
    let got = scripted(long).await;
    assert_eq!(got[0], SessionEventKind::Failed(1));
    assert!(closed_with(&got, "overruns piece 1"), "{got:?}");
    // An abandoned piece is no fault: the session goes on (here to a clean close).
    let mut gone = frame(&Frame::Piece {
        index: 1,
        len: 1000,
    });
    gone.extend_from_slice(&300u32.to_be_bytes());
    gone.extend_from_slice(&[0; 300]);
    gone.extend_from_slice(&0u32.to_be_bytes());
    gone.extend_from_slice(&frame(&Frame::Arriving { piece: 2 }));
    let got = scripted(gone).await;
    assert_eq!(
        got,
        [
            SessionEventKind::Abandoned {
                piece: 1,
                bytes: 300
            },
            SessionEventKind::Arriving(2),
            SessionEventKind::Closed(None)
        ]
    );
    // An Error frame ends it with the peer's reason; a clean close with none.
    let got = scripted(frame(&Frame::Error {
        code: ErrorCode::INTERNAL,
        message: "disk".into(),
    }))
    .await;
    assert!(closed_with(&got, "disk"), "{got:?}");
    let got = scripted(Vec::new()).await;
    assert_eq!(got, vec![SessionEventKind::Closed(None)]);
}

#[tokio::test]
async fn hello_and_idle_timeouts() {
    let data = blob(10_000);
    let source = FakeSource::seeder(&data, 4096);
    let digest = source.table.table.digest.clone();
    let cfg = ServerConfig {
        hello_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(300),
        ..config(ServerLimits::default())
    };
    let mut server = start_server(source.clone(), cfg);
    assert_eq!(
        error_code(&server_reply(&mut server, &[]).await),
        Some(ErrorCode::TIMEOUT)
    );
    let sink = FakeSink::new(&source.table);
    let mut c = open(&mut server, &digest, sink, 8).await;
    c.session.request(0).unwrap();
    assert!(matches!(
        answers(&mut c.events, 1).await[0],
        SessionEventKind::Received { .. }
    ));
    // Nothing more is asked: the server hangs up, saying why.
    match next(&mut c.events).await {
        SessionEventKind::Closed(Some(why)) => assert!(why.contains("timeout"), "{why}"),
        other => panic!("unexpected {other:?}"),
    }
}
