//! The notifier against in-process receivers: event format, filters, retries, and a receiver
//! that never answers.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::*;
use crate::audit::Origin;

/// A receiver on 127.0.0.1 that answers `fail_first` requests with 500 (or never, if `hang`),
/// then 200, and forwards each request's headers and body.
async fn receiver(fail_first: usize, hang: bool) -> (String, mpsc::Receiver<(HeaderMap, Value)>) {
    let (tx, rx) = mpsc::channel(64);
    let seen = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: bytes::Bytes| {
            let (tx, seen) = (tx.clone(), seen.clone());
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let v: Value = serde_json::from_slice(&body).unwrap();
                let _ = tx.send((headers, v)).await;
                if n < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, rx)
}

fn config(url: &str, tweak: impl FnOnce(&mut EndpointConfig)) -> Config {
    let mut ep = EndpointConfig {
        name: "test".into(),
        url: url.to_owned(),
        headers: BTreeMap::from([("Authorization".to_owned(), "Bearer t0ken".to_owned())]),
        backoff_initial_ms: 20,
        backoff_max_ms: 100,
        timeout_ms: 300,
        ..EndpointConfig::default()
    };
    tweak(&mut ep);
    Config {
        listen: "127.0.0.1:5999".parse().unwrap(),
        notifications: NotificationsConfig {
            source_addr: None,
            endpoints: vec![ep],
        },
        ..Config::default()
    }
}

fn origin() -> Arc<Origin> {
    Arc::new(Origin {
        actor: Some("alice".into()),
        remote: Some("192.0.2.1:1234".into()),
        host: Some("reg.example:5000".into()),
        method: "PUT".into(),
        path: "/v2/a/manifests/v1".into(),
        user_agent: Some("docker/27".into()),
        request_id: "rid-1".into(),
    })
}

fn push(n: u64) -> Event {
    let d = flotilla_protocol::Digest::sha256_of(&n.to_be_bytes());
    let repo: flotilla_protocol::RepoName = "a".parse().unwrap();
    let tag: flotilla_protocol::Tag = "v1".parse().unwrap();
    Event::manifest(
        Action::ManifestPush,
        &origin(),
        &repo,
        &d,
        Some(&tag),
        "application/vnd.oci.image.manifest.v1+json",
        n,
    )
}

#[tokio::test]
async fn events_arrive_in_distributions_envelope() {
    let (url, mut rx) = receiver(0, false).await;
    let n = Notifier::start(&config(&url, |_| {})).unwrap().unwrap();
    let ev = push(42);
    n.offer(&ev);
    // Tag moves and authentication failures are not sent; deletes are.
    n.offer(&Event {
        action: Action::TagMove,
        ..push(1)
    });
    let mut del = Event::new(Action::BlobDelete, &origin());
    del.repository = Some("a".into());
    del.digest = Some("sha256:00".into());
    n.offer(&del);
    let mut events = Vec::new();
    let mut headers = None;
    while events.len() < 2 {
        let (h, body) = rx.recv().await.unwrap();
        headers = Some(h);
        events.extend(body["events"].as_array().unwrap().clone());
    }
    let h = headers.unwrap();
    assert_eq!(h["content-type"], EVENTS_MEDIA_TYPE);
    assert_eq!(h["authorization"], "Bearer t0ken");
    let e = &events[0];
    let d = ev.digest.clone().unwrap();
    assert_eq!(e["action"], "push");
    assert!(uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok());
    assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        e["target"],
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 42, "length": 42, "digest": d, "repository": "a", "tag": "v1",
            "url": format!("http://reg.example:5000/v2/a/manifests/{d}"),
        })
    );
    assert_eq!(
        e["request"],
        serde_json::json!({"id": "rid-1", "addr": "192.0.2.1:1234", "host": "reg.example:5000",
                           "method": "PUT", "useragent": "docker/27"})
    );
    assert_eq!(e["actor"], serde_json::json!({"name": "alice"}));
    assert_eq!(e["source"]["addr"], "127.0.0.1:5999");
    assert_eq!(events[1]["action"], "delete");
    assert_eq!(
        events[1]["target"]["url"],
        format!("http://reg.example:5000/v2/a/blobs/sha256:00")
    );
    assert!(events[1]["target"].get("mediaType").is_none());
    n.shutdown(Duration::from_secs(1)).await;
    let s = &n.stats()[0];
    assert_eq!((s.delivered, s.failed, s.dropped, s.pending), (2, 0, 0, 0));
}

#[tokio::test]
async fn failures_are_retried_until_delivered() {
    let (url, mut rx) = receiver(3, false).await;
    let n = Notifier::start(&config(&url, |_| {})).unwrap().unwrap();
    n.offer(&push(1));
    // Three 500s, then the same event again with a 200.
    for _ in 0..4 {
        let (_, body) = rx.recv().await.unwrap();
        assert_eq!(body["events"][0]["target"]["size"], 1);
    }
    n.shutdown(Duration::from_secs(1)).await;
    let s = &n.stats()[0];
    assert_eq!((s.delivered, s.failed), (1, 3));
}

#[tokio::test]
async fn a_hanging_endpoint_never_blocks_recording_and_drops_the_oldest() {
    let (url, _rx) = receiver(0, true).await;
    let cfg = config(&url, |e| {
        e.queue = 4;
        e.batch = 2;
        e.timeout_ms = 100;
    });
    let n = Notifier::start(&cfg).unwrap().unwrap();
    let start = std::time::Instant::now();
    for i in 0..100 {
        n.offer(&push(i));
    }
    assert!(start.elapsed() < Duration::from_millis(100), "offer waited");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while n.stats()[0].failed < 2 {
        assert!(std::time::Instant::now() < deadline, "no failed attempts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = n.stats()[0].clone();
    // At most one batch in flight and a full queue; everything else was dropped.
    assert_eq!(s.delivered, 0);
    assert!(s.pending <= 6 && s.dropped >= 94, "{s:?}");
    n.shutdown(Duration::from_millis(500)).await;
}

#[test]
fn filters_and_settings() {
    let cfg: Config = toml::from_str(
        r#"
        [notifications]
        source_addr = "registry.example.com"
        [[notifications.endpoints]]
        name = "a"
        url = "http://127.0.0.1:1/x"
        events = ["push", "pull"]
        media_types = ["application/vnd.oci.image.manifest.v1+json"]
        "#,
    )
    .unwrap();
    assert_eq!(
        cfg.notifications.endpoints[0].events,
        [NotifyAction::Push, NotifyAction::Pull]
    );
    let back: Config = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(back, cfg);
    assert!(toml::from_str::<Config>("[[notifications.endpoints]]\nevents = [\"pul\"]\n").is_err());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = Notifier::start(&cfg).unwrap().unwrap();
        assert!(n.wants_pulls());
        // A blob push has the octet-stream type: filtered out by media_types.
        let repo: flotilla_protocol::RepoName = "a".parse().unwrap();
        let d = flotilla_protocol::Digest::sha256_of(b"x");
        n.offer(&Event::blob_pushed(&origin(), &repo, &d, 1, None));
        n.offer(&Event {
            action: Action::ManifestPull,
            ..push(1)
        });
        assert_eq!(n.stats()[0].pending, 1);
        n.shutdown(Duration::from_millis(10)).await;
        let none = Config::default();
        assert!(Notifier::start(&none).unwrap().is_none());
        for bad in [
            config("ftp://x/", |_| {}),
            config("http://h/", |e| e.name.clear()),
            config("http://h/", |e| e.backoff_max_ms = 1),
            config("http://h/", |e| {
                e.headers.insert("bad name".into(), "v".into());
            }),
        ] {
            assert!(Notifier::start(&bad).is_err());
        }
        let mut twice = config("http://h/", |_| {});
        let again = twice.notifications.endpoints[0].clone();
        twice.notifications.endpoints.push(again);
        assert!(Notifier::start(&twice).is_err());
    });
}
