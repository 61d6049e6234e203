//! The audit log through the API: the router on a real `Registry` with a real [`Events`] whose
//! log is in a temporary directory, driven with `tower::ServiceExt::oneshot`.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use flotilla_protocol::Digest;
use flotilla_protocol::manifest::media_type;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::registry::Registry;

struct Setup {
    app: Router,
    events: Events,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup(audit: AuditConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().join("data"),
        audit,
        ..Config::default()
    };
    let registry = Registry::open(config.storage()).await.unwrap();
    let events = Events::start(&config).unwrap();
    Setup {
        app: crate::api::router_with_events(registry, &config, None, events.clone()),
        events,
        log: config.audit.file(&config.data_dir),
        _dir: dir,
    }
}

const PEER: &str = "192.0.2.10:40000";

impl Setup {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> StatusCode {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(Body::from(body)).unwrap();
        let peer: SocketAddr = PEER.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        self.app.clone().oneshot(req).await.unwrap().status()
    }

    /// Stops the writer and returns every line of the log, parsed.
    async fn lines(&self) -> Vec<Value> {
        self.events.shutdown(Duration::from_secs(5)).await;
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::sha256_of(config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::sha256_of(layer).to_string(), "size": layer.len()}],
    }))
    .unwrap()
}

/// The fields of a line that do not change from run to run.
fn stable(line: &Value) -> Value {
    let mut l = line.clone();
    let o = l.as_object_mut().unwrap();
    let time = o.remove("time").unwrap();
    let t = time.as_str().unwrap();
    assert!(
        t.len() == 24 && t.ends_with('Z') && t.as_bytes()[19] == b'.',
        "{t}"
    );
    let id = o.remove("request_id").unwrap();
    assert!(!id.as_str().unwrap().is_empty());
    l
}

#[tokio::test]
async fn pushes_tag_moves_and_deletes_are_audited_one_line_each() {
    let s = setup(AuditConfig::default()).await;
    let (config, layer) = (b"{}".to_vec(), vec![7u8; 1000]);
    let (dc, dl) = (Digest::sha256_of(&config), Digest::sha256_of(&layer));
    let ua = [("user-agent", "test-client/1")];
    for blob in [&config, &layer] {
        let uri = format!("/v2/a/b/blobs/uploads/?digest={}", Digest::sha256_of(blob));
        assert_eq!(
            s.call(Method::POST, &uri, &ua, blob.clone()).await,
            StatusCode::CREATED
        );
    }
    let m1 = manifest(&config, &layer);
    let m2 = manifest(&config, &layer[..0]);
    let (d1, d2) = (Digest::sha256_of(&m1), Digest::sha256_of(&m2));
    let ct = [
        ("content-type", media_type::OCI_MANIFEST),
        ("user-agent", "test-client/1"),
    ];
    assert_eq!(
        s.call(Method::PUT, "/v2/a/b/manifests/v1", &ct, m1.clone())
            .await,
        StatusCode::CREATED
    );
    // The same manifest again: a push, but the tag does not move.
    assert_eq!(
        s.call(Method::PUT, "/v2/a/b/manifests/v1", &ct, m1.clone())
            .await,
        StatusCode::CREATED
    );
    // The empty layer must exist for m2.
    let empty = format!("/v2/a/b/blobs/uploads/?digest={}", Digest::sha256_of(b""));
    assert_eq!(
        s.call(Method::POST, &empty, &ua, Vec::new()).await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.call(Method::PUT, "/v2/a/b/manifests/v1", &ct, m2.clone())
            .await,
        StatusCode::CREATED
    );
    assert_eq!(
        s.call(
            Method::DELETE,
            &format!("/v2/a/b/manifests/{d1}"),
            &ua,
            vec![]
        )
        .await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        s.call(Method::DELETE, "/v2/a/b/manifests/v1", &ua, vec![])
            .await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        s.call(Method::DELETE, &format!("/v2/a/b/blobs/{dl}"), &ua, vec![])
            .await,
        StatusCode::ACCEPTED
    );
    // Mount into another repository, from a named one.
    let mount = format!("/v2/c/blobs/uploads/?mount={dc}&from=a/b");
    assert_eq!(
        s.call(Method::POST, &mount, &ua, vec![]).await,
        StatusCode::CREATED
    );
    // Reads and refused requests write nothing.
    assert_eq!(
        s.call(Method::GET, "/v2/a/b/manifests/v1", &ua, vec![])
            .await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.call(Method::GET, &format!("/v2/a/b/blobs/{dc}"), &ua, vec![])
            .await,
        StatusCode::OK
    );

    let lines = s.lines().await;
    let base = |action: &str, method: &str, path: String| {
        json!({"action": action, "actor": "anonymous", "remote": PEER, "method": method,
               "path": path, "repository": "a/b", "user_agent": "test-client/1"})
    };
    let with = |mut v: Value, extra: Value| {
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let blob = |d: &Digest, size: usize| {
        with(
            base("blob.push", "POST", "/v2/a/b/blobs/uploads/".into()),
            json!({"digest": d.to_string(), "size": size, "media_type": "application/octet-stream", "via": "upload"}),
        )
    };
    let mpush = |d: &Digest, len: usize| {
        with(
            base("manifest.push", "PUT", "/v2/a/b/manifests/v1".into()),
            json!({"tag": "v1", "digest": d.to_string(), "size": len, "media_type": media_type::OCI_MANIFEST}),
        )
    };
    let mv = |d: &Digest, len: usize, prev: Value| {
        with(
            base("tag.move", "PUT", "/v2/a/b/manifests/v1".into()),
            json!({"tag": "v1", "digest": d.to_string(), "size": len, "media_type": media_type::OCI_MANIFEST, "previous_digest": prev}),
        )
    };
    let want = vec![
        blob(&dc, config.len()),
        blob(&dl, layer.len()),
        mpush(&d1, m1.len()),
        mv(&d1, m1.len(), Value::Null),
        mpush(&d1, m1.len()),
        blob(&Digest::sha256_of(b""), 0),
        mpush(&d2, m2.len()),
        mv(&d2, m2.len(), json!(d1.to_string())),
        with(
            base(
                "manifest.delete",
                "DELETE",
                format!("/v2/a/b/manifests/{d1}"),
            ),
            json!({"digest": d1.to_string(), "size": m1.len(), "media_type": media_type::OCI_MANIFEST}),
        ),
        with(
            base("tag.delete", "DELETE", "/v2/a/b/manifests/v1".into()),
            json!({"tag": "v1", "digest": d2.to_string(), "size": m2.len(), "media_type": media_type::OCI_MANIFEST}),
        ),
        with(
            base("blob.delete", "DELETE", format!("/v2/a/b/blobs/{dl}")),
            json!({"digest": dl.to_string()}),
        ),
        with(
            base("blob.push", "POST", "/v2/c/blobs/uploads/".into()),
            json!({"repository": "c", "digest": dc.to_string(), "size": config.len(), "media_type": "application/octet-stream", "via": "mount", "from_repository": "a/b"}),
        ),
    ];
    let got: Vec<Value> = lines.iter().map(stable).collect();
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "line {i}");
    }
    // The two lines of one request share its id; different requests do not.
    assert_eq!(lines[2]["request_id"], lines[3]["request_id"]);
    assert_ne!(lines[3]["request_id"], lines[4]["request_id"]);
    let st = s.events.audit_stats();
    assert_eq!((st.lines_written, st.lines_dropped), (want.len() as u64, 0));
}

#[tokio::test]
async fn appends_to_an_existing_log_and_can_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/audit.jsonl");
    let s = setup(AuditConfig {
        path: Some(path.clone()),
        ..AuditConfig::default()
    })
    .await;
    assert_eq!(s.log, path);
    let uri = format!("/v2/x/blobs/uploads/?digest={}", Digest::sha256_of(b"a"));
    s.call(Method::POST, &uri, &[], b"a".to_vec()).await;
    assert_eq!(s.lines().await.len(), 1);
    // A second gateway on the same file appends after the first one's line.
    let s2 = setup(AuditConfig {
        path: Some(path.clone()),
        ..AuditConfig::default()
    })
    .await;
    s2.call(
        Method::POST,
        &uri,
        &[("x-request-id", "req-42")],
        b"a".to_vec(),
    )
    .await;
    let lines = s2.lines().await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["request_id"], "req-42");

    let off = setup(AuditConfig {
        enabled: false,
        ..AuditConfig::default()
    })
    .await;
    off.call(Method::POST, &uri, &[], b"a".to_vec()).await;
    off.events.shutdown(Duration::from_secs(1)).await;
    assert!(!off.log.exists());
    assert_eq!(off.events.audit_stats(), AuditStats::default());
}

#[tokio::test]
async fn a_stalled_writer_costs_requests_at_most_the_wait_then_lines_are_counted_as_dropped() {
    // A writer that never reads: a channel whose receiver is held but not polled.
    let (tx, _rx) = mpsc::channel(1);
    let counters = Arc::new(AuditCounters::default());
    let events = Events(Arc::new(Hub {
        audit: Some(AuditSink {
            tx,
            counters: counters.clone(),
            thread: std::sync::Mutex::new(None),
        }),
        notifier: None,
        trusted_proxies: Vec::new(),
    }));
    let origin = Arc::new(Origin::default());
    let start = std::time::Instant::now();
    for _ in 0..3 {
        events
            .record(Event::new(Action::BlobDelete, &origin).repo(&"r"))
            .await;
    }
    let took = start.elapsed();
    // One line fits; the other two wait AUDIT_WAIT each and are dropped.
    assert!(
        took >= AUDIT_WAIT * 2 && took < AUDIT_WAIT * 2 + Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(events.audit_stats().lines_dropped, 2);
}

#[test]
fn file_defaults_to_the_data_dir() {
    let c = AuditConfig::default();
    assert_eq!(c.file(Path::new("/d")), PathBuf::from("/d/audit.log"));
    let cfg: Config = toml::from_str("[audit]\nenabled = false\nqueue = 8\n").unwrap();
    assert!(!cfg.audit.enabled);
    assert!(toml::from_str::<Config>("[audit]\nnope = 1\n").is_err());
    let text = toml::to_string(&Config {
        audit: AuditConfig {
            path: Some("/x".into()),
            trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
            ..AuditConfig::default()
        },
        ..Config::default()
    })
    .unwrap();
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back.audit.trusted_proxies.len(), 1);
}
