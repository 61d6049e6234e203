//! The audit log and webhook notifications against the real gateway binary (with `[auth]`, so
//! actors and authentication failures are real): the audit file's lines after pushes, a tag
//! move, deletes and refused logins; a local webhook receiver getting distribution's event
//! envelope; retries after errors; and a receiver that never answers, which must not slow
//! pushes down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::auth::harness::{AuthGateway, Setup, basic, digest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const EVENTS_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// The manifest `AuthGateway::push_image` pushes for `layer`.
fn manifest_len(layer: &[u8]) -> usize {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": layer.len()}],
    });
    serde_json::to_vec(&manifest).unwrap().len()
}

/// One request a receiver got.
struct Received {
    content_type: String,
    authorization: String,
    events: Vec<Value>,
}

/// How a receiver answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 500 for the first `n` requests, then 200.
    FailFirst(usize),
    /// Reads the request and never answers.
    Hang,
}

/// A webhook receiver on 127.0.0.1 (plain HTTP/1.1, one request per connection); its URL and
/// what it received.
async fn receiver(b: Behaviour) -> (String, mpsc::Receiver<Received>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel(256);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let (tx, count) = (tx.clone(), count.clone());
            tokio::spawn(async move {
                let _ = serve_one(s, b, &count, &tx).await;
            });
        }
    });
    (url, rx)
}

async fn serve_one(
    mut s: TcpStream,
    b: Behaviour,
    count: &AtomicUsize,
    tx: &mpsc::Sender<Received>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if let Behaviour::Hang = b {
        // Keep the connection open, say nothing.
        std::future::pending::<()>().await;
    }
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
    let n = count.fetch_add(1, Ordering::SeqCst);
    let status = match b {
        Behaviour::FailFirst(k) if n < k => "500 Internal Server Error",
        _ => "200 OK",
    };
    // Report the request only when it is answered with success (or it is one of the failures).
    let _ = tx
        .send(Received {
            content_type: header("content-type"),
            authorization: header("authorization"),
            events: body["events"].as_array().cloned().unwrap_or_default(),
        })
        .await;
    s.write_all(
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    s.shutdown().await
}

/// A gateway with `[auth]` (the harness's users and rules) plus `extra` top-level TOML.
async fn gateway(extra: &str) -> AuthGateway {
    // The harness puts `auth_extra` between `[auth]`'s keys and its rules; a table header there
    // starts a new section, and `[[auth.rules]]` after it still belongs to `[auth]`.
    AuthGateway::start_with(Setup {
        auth_extra: extra.to_owned(),
        ..Setup::default()
    })
    .await
}

fn endpoint(url: &str, more: &str) -> String {
    format!(
        "\n[[notifications.endpoints]]\nname = \"hook\"\nurl = \"{url}\"\n\
         headers = {{ Authorization = \"Bearer hook-secret\" }}\n{more}\n"
    )
}

async fn stats(gw: &AuthGateway) -> Value {
    let r = gw.get("/flotilla/v1/stats", None).await;
    r.expect(200);
    r.json()
}

/// Collects events until `n` arrived (in requests answered 200 when `failures_first` is set).
async fn collect(rx: &mut mpsc::Receiver<Received>, n: usize) -> Vec<(Received, Vec<Value>)> {
    let mut got = Vec::new();
    let mut total = 0;
    while total < n {
        let r = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("events within 30 s")
            .expect("receiver running");
        total += r.events.len();
        let events = r.events.clone();
        got.push((r, events));
    }
    got
}

/// Drops the run-dependent fields of an audit line after checking them.
fn stable(line: &Value) -> Value {
    let mut l = line.clone();
    let o = l.as_object_mut().unwrap();
    let t = o.remove("time").unwrap();
    let t = t.as_str().unwrap();
    assert!(t.len() == 24 && t.ends_with('Z'), "time {t}");
    assert!(!o.remove("request_id").unwrap().as_str().unwrap().is_empty());
    let remote = o.remove("remote").unwrap();
    assert!(
        remote.as_str().unwrap().starts_with("127.0.0.1:"),
        "remote {remote}"
    );
    l
}

#[tokio::test]
async fn audit_log_has_one_line_per_push_move_delete_and_refusal() {
    let mut gw = gateway("").await;
    let root = basic("root", "r00t-pw");
    let (l1, l2) = (b"layer one".to_vec(), b"layer two".to_vec());
    let d1 = gw.push_image("public/app", "v1", &root, &l1).await;
    let d2 = gw.push_image("public/app", "v1", &root, &l2).await;
    gw.send(
        "DELETE",
        &format!("/v2/public/app/manifests/{d1}"),
        &[("authorization", &root)],
        Bytes::new(),
    )
    .await
    .expect(202);
    // A wrong password, at /v2/ and at the token endpoint; a user without the right (403);
    // an anonymous challenge (not a failure, not audited).
    gw.get("/v2/", Some(&basic("root", "wrong")))
        .await
        .expect(401);
    gw.token_answer(&["repository:public/app:pull"], Some(("alice", "nope")))
        .await
        .expect(401);
    gw.send(
        "POST",
        "/v2/public/app/blobs/uploads/",
        &[("authorization", &basic("bob", "bob-pw"))],
        Bytes::new(),
    )
    .await
    .expect(403);
    gw.get("/v2/", None).await.expect(401);
    let s = stats(&gw).await;
    assert_eq!(s["audit"]["enabled"], true);
    assert!(gw.stop(), "graceful stop");

    let text = std::fs::read_to_string(gw.data_dir.join("audit.log")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let blob = |b: &[u8]| {
        json!({"action": "blob.push", "actor": "root", "method": "POST",
               "path": "/v2/public/app/blobs/uploads/", "repository": "public/app",
               "digest": digest(b), "size": b.len(), "media_type": "application/octet-stream",
               "via": "upload", "user_agent": null})
    };
    let manifest = |action: &str, d: &str, layer: &[u8], prev: Option<Value>| {
        let mut v = json!({"action": action, "actor": "root", "method": "PUT",
               "path": "/v2/public/app/manifests/v1", "repository": "public/app", "tag": "v1",
               "digest": d, "size": manifest_len(layer), "media_type": OCI_MANIFEST,
               "user_agent": null});
        if let Some(p) = prev {
            v["previous_digest"] = p;
        }
        v
    };
    let failure = |actor: &str, method: &str, path: &str, status: u16, extra: Value| {
        let mut v = json!({"action": "auth.failure", "actor": actor, "method": method,
               "path": path, "status": status, "user_agent": null});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let want = vec![
        blob(config),
        blob(&l1),
        manifest("manifest.push", &d1, &l1, None),
        manifest("tag.move", &d1, &l1, Some(Value::Null)),
        blob(config),
        blob(&l2),
        manifest("manifest.push", &d2, &l2, None),
        manifest("tag.move", &d2, &l2, Some(json!(d1))),
        json!({"action": "manifest.delete", "actor": "root", "method": "DELETE",
               "path": format!("/v2/public/app/manifests/{d1}"), "repository": "public/app",
               "digest": d1, "size": manifest_len(&l1), "media_type": OCI_MANIFEST,
               "user_agent": null}),
        failure(
            "root",
            "GET",
            "/v2/",
            401,
            json!({"reason": "invalid username or password (log in)"}),
        ),
        failure("alice", "GET", "/auth/token", 401, json!({})),
        failure(
            "bob",
            "POST",
            "/v2/public/app/blobs/uploads/",
            403,
            json!({"repository": "public/app"}),
        ),
    ];
    let mut got: Vec<Value> = lines.iter().map(stable).collect();
    // The token endpoint's and the 403's wording belong to the auth module; only their
    // presence is pinned.
    for g in &mut got[10..] {
        let r = g.as_object_mut().unwrap().remove("reason").unwrap();
        assert!(!r.as_str().unwrap().is_empty());
    }
    let mut want = want;
    for w in &mut want[10..] {
        w.as_object_mut().unwrap().remove("reason");
    }
    assert_eq!(got.len(), want.len(), "{text}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "line {i}:\n{text}");
    }
}

#[tokio::test]
async fn webhooks_get_distributions_envelope() {
    let (url, mut rx) = receiver(Behaviour::FailFirst(0)).await;
    let gw = gateway(&endpoint(&url, "")).await;
    let root = basic("root", "r00t-pw");
    let layer = b"webhook layer".to_vec();
    let d = gw
        .push_image("public/hooked", "latest", &root, &layer)
        .await;
    gw.send(
        "DELETE",
        &format!("/v2/public/hooked/manifests/{d}"),
        &[("authorization", &root)],
        Bytes::new(),
    )
    .await
    .expect(202);
    let got = collect(&mut rx, 4).await;
    for (r, _) in &got {
        assert_eq!(r.content_type, EVENTS_TYPE);
        assert_eq!(r.authorization, "Bearer hook-secret");
    }
    let events: Vec<Value> = got.into_iter().flat_map(|(_, e)| e).collect();
    assert_eq!(events.len(), 4);
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["push", "push", "push", "delete"]);
    let m = &events[2];
    let host = gw.host();
    assert_eq!(
        m["target"],
        json!({"mediaType": OCI_MANIFEST, "size": manifest_len(&layer), "length": manifest_len(&layer),
               "digest": d, "repository": "public/hooked", "tag": "latest",
               "url": format!("http://{host}/v2/public/hooked/manifests/{d}")})
    );
    assert_eq!(m["actor"], json!({"name": "root"}));
    assert_eq!(m["request"]["method"], "PUT");
    assert_eq!(m["request"]["host"], host);
    assert!(
        m["request"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(!m["request"]["id"].as_str().unwrap().is_empty());
    assert_eq!(m["source"]["addr"], host);
    assert!(!m["source"]["instanceID"].as_str().unwrap().is_empty());
    assert!(
        !m["id"].as_str().unwrap().is_empty() && m["timestamp"].as_str().unwrap().ends_with('Z')
    );
    assert_eq!(events[1]["target"]["digest"], digest(&layer));
    assert_eq!(events[1]["target"]["mediaType"], "application/octet-stream");
    assert_eq!(events[3]["target"]["digest"], d);
    // The receiver has the events; the sender counts a delivery once it has read the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let s = loop {
        let s = stats(&gw).await;
        if s["notifications"][0]["delivered"] == 4 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let n = &s["notifications"][0];
    assert_eq!(
        (
            n["name"].as_str(),
            n["delivered"].as_u64(),
            n["dropped"].as_u64()
        ),
        (Some("hook"), Some(4), Some(0))
    );
}

#[tokio::test]
async fn webhooks_are_retried_with_backoff_until_the_receiver_accepts() {
    let (url, mut rx) = receiver(Behaviour::FailFirst(3)).await;
    let gw = gateway(&endpoint(
        &url,
        "backoff_initial_ms = 50\nbackoff_max_ms = 200\nbatch = 16",
    ))
    .await;
    let root = basic("root", "r00t-pw");
    let d = gw
        .push_image("public/retry", "v1", &root, b"retry layer")
        .await;
    // Each attempt carries what was queued when it started; collect until the manifest push
    // arrived in an accepted (4th or later) request.
    let mut requests = 0;
    let mut delivered = Vec::new();
    while !delivered.iter().any(|e: &Value| e["target"]["digest"] == d) {
        let r = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a request within 30 s")
            .unwrap();
        requests += 1;
        if requests > 3 {
            delivered.extend(r.events);
        }
    }
    assert!(requests >= 4);
    // Once accepted, every event was delivered exactly once, in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = stats(&gw).await;
        let n = &s["notifications"][0];
        if n["delivered"] == 3 {
            assert_eq!(n["failed"], 3);
            assert_eq!(n["dropped"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_hanging_receiver_does_not_slow_pushes() {
    let (url, _rx) = receiver(Behaviour::Hang).await;
    let gw = gateway(&endpoint(&url, "timeout_ms = 300\nqueue = 2\nbatch = 1")).await;
    let root = basic("root", "r00t-pw");
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        gw.push_image(
            "public/slow",
            &format!("v{i}"),
            &root,
            format!("layer {i}").as_bytes(),
        )
        .await;
        slowest = slowest.max(t.elapsed());
    }
    let total = start.elapsed();
    // Ten image pushes (30 events) against an endpoint that holds each attempt for 300 ms:
    // if pushes waited for it they would take at least 9 s.
    assert!(total < Duration::from_secs(6), "10 pushes took {total:?}");
    eprintln!("10 pushes with a hanging webhook: {total:?}, slowest {slowest:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = stats(&gw).await;
        let n = &s["notifications"][0];
        let (failed, dropped, pending) = (
            n["failed"].as_u64().unwrap(),
            n["dropped"].as_u64().unwrap(),
            n["pending"].as_u64().unwrap(),
        );
        if failed >= 1 {
            assert_eq!(n["delivered"], 0);
            // The queue holds 2 and one is in flight; the other 27 or more were dropped.
            assert!(pending <= 3 && dropped >= 27, "{s}");
            assert_eq!(dropped + pending, 30, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
