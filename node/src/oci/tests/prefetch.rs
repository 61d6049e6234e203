//! The prefetch and unpin routes: one platform of an index fetched and pinned, unpinned again,
//! who may call them, their errors, and the node-wide cap on prefetched blobs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{Node, error_code, header_str};
use crate::fetch::testkit::TestBlob;
use crate::fetch::tests::Rig;
use crate::oci::OciState;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";

fn image_manifest(blobs: &[&TestBlob]) -> String {
    let desc = |b: &TestBlob, mt: &str| serde_json::json!({"mediaType": mt, "digest": b.digest.as_str(), "size": b.data.len()});
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": IMAGE,
        "config": desc(blobs[0], "application/vnd.oci.image.config.v1+json"),
        "layers": blobs[1..].iter().map(|b| desc(b, "application/vnd.oci.image.layer.v1.tar")).collect::<Vec<_>>(),
    })
    .to_string()
}

fn index_entry(manifest: &str, platform: Value) -> Value {
    serde_json::json!({
        "mediaType": IMAGE,
        "digest": flotilla_protocol::Digest::sha256_of(manifest.as_bytes()).as_str(),
        "size": manifest.len(),
        "platform": platform,
    })
}

async fn prefetch(node: &Node, body: Value) -> (StatusCode, Value) {
    post(node, "/flotilla/v1/prefetch", body).await
}

async fn unpin(node: &Node, body: Value) -> (StatusCode, Value) {
    post(node, "/flotilla/v1/unpin", body).await
}

async fn post(node: &Node, path: &str, body: Value) -> (StatusCode, Value) {
    let res = node
        .req(Method::POST, path)
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

/// Pins and unpins in the rig's local store, as the node wires its store.
fn pinning(rig: &Rig) -> crate::oci::PinFn {
    rig.local.store.pinning()
}

#[tokio::test]
async fn prefetch_fetches_one_platform_of_an_index_and_pins_it() {
    let rig = Rig::new().await;
    let config_amd = rig.blob(300, 4096, 31);
    let shared = rig.blob(5 * 4096 + 7, 4096, 32);
    let only_amd = rig.blob(3 * 4096, 4096, 33);
    let config_arm = rig.blob(200, 4096, 34);
    let only_arm = rig.blob(2 * 4096 + 1, 4096, 35);
    rig.peer(&shared, 0..shared.pieces()).await;
    let amd = image_manifest(&[&config_amd, &shared, &only_amd]);
    let arm = image_manifest(&[&config_arm, &shared, &only_arm]);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            index_entry(&arm, serde_json::json!({"os": "linux", "architecture": "arm64"})),
            index_entry(&amd, serde_json::json!({"os": "linux", "architecture": "amd64"})),
            index_entry(&amd, serde_json::json!({"os": "unknown", "architecture": "unknown"})),
        ],
    })
    .to_string();
    for m in [&amd, &arm] {
        let d = flotilla_protocol::Digest::sha256_of(m.as_bytes());
        rig.gw.add_manifest("team/app", d.as_str(), IMAGE, m);
    }
    rig.gw.add_manifest("team/app", "v1", INDEX, &index);
    let node = Node::start_with(&rig, |s| s.with_pinning(pinning(&rig))).await;

    let (status, report) = prefetch(
        &node,
        serde_json::json!({"image": "localhost:5000/team/app:v1", "platform": "linux/amd64", "pin": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["image"], "team/app:v1");
    assert_eq!(report["platform"], "linux/amd64");
    let index_digest = flotilla_protocol::Digest::sha256_of(index.as_bytes());
    let amd_digest = flotilla_protocol::Digest::sha256_of(amd.as_bytes());
    assert_eq!(
        report["manifests"],
        serde_json::json!([index_digest.as_str(), amd_digest.as_str()])
    );
    let want = [&config_amd, &shared, &only_amd];
    let blobs = report["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 3, "{report}");
    let size: u64 = want.iter().map(|b| b.data.len() as u64).sum();
    assert_eq!(report["bytes"], size);
    assert_eq!(report["fetched_bytes"], size);
    assert_eq!(report["pinned"], true);
    for (b, r) in want.iter().zip(blobs) {
        assert_eq!(r["digest"], b.digest.as_str());
        assert_eq!(r["held_before"], false);
        let e = rig.local.store.entry(&b.digest).expect("held");
        assert!(e.complete && e.pinned, "{}: {e:?}", b.digest);
    }
    // The shared layer came from its peer, the others from the origin (nobody else has them).
    assert_eq!(blobs[1]["peer_bytes"], shared.data.len() as u64);
    assert_eq!(
        rig.gw.origin_bytes(),
        (config_amd.data.len() + only_amd.data.len()) as u64
    );
    for b in [&config_arm, &only_arm] {
        assert!(
            rig.local.store.entry(&b.digest).is_none(),
            "arm64 blob fetched"
        );
    }

    // Again: everything is held, nothing moves.
    let (status, again) = prefetch(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "linux/amd64"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["fetched_bytes"], 0);
    assert_eq!(again["pinned"], false);
    assert!(
        again["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["held_before"] == true)
    );

    // `all` takes every entry (the shared layer and the amd64 image once).
    let (status, all) = prefetch(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "all"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["blobs"].as_array().unwrap().len(), 5, "{all}");
    assert_eq!(
        all["fetched_bytes"],
        (config_arm.data.len() + only_arm.data.len()) as u64
    );
    assert!(!rig.local.store.entry(&only_arm.digest).unwrap().pinned);

    // One blob by digest, and an image by digest.
    let (status, one) =
        prefetch(&node, serde_json::json!({"blob": only_arm.digest.as_str()})).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["blobs"][0]["held_before"], true);
    assert!(one.get("image").is_none());
    let (status, by_digest) = prefetch(
        &node,
        serde_json::json!({"image": format!("team/app@{arm_digest}", arm_digest = flotilla_protocol::Digest::sha256_of(arm.as_bytes()))}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{by_digest}");
    assert_eq!(by_digest["blobs"].as_array().unwrap().len(), 3);

    // Unpinning the image as it was pinned: its three blobs become evictable again; the
    // arm64 blobs, never pinned, are not named.
    let (status, undone) = unpin(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "linux/amd64"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{undone}");
    assert_eq!(undone["image"], "team/app:v1");
    assert_eq!(undone["unpinned"], 3, "{undone}");
    for (b, r) in want.iter().zip(undone["blobs"].as_array().unwrap()) {
        assert_eq!(r["digest"], b.digest.as_str());
        assert_eq!(
            (r["held"].clone(), r["was_pinned"].clone()),
            (true.into(), true.into())
        );
        assert!(!rig.local.store.entry(&b.digest).unwrap().pinned);
    }
    assert_eq!(rig.local.store.pinned_usage(), (0, 0));
    // Again: nothing was pinned; and a blob the node does not hold is reported, not refused.
    let (status, again) = unpin(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "all"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["unpinned"], 0, "{again}");
    let absent = TestBlob::new(100, 64, 49, &rig.key);
    let (status, one) = unpin(&node, serde_json::json!({"blob": absent.digest.as_str()})).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["blobs"][0]["held"], false);
    assert_eq!(one["unpinned"], 0);
    // A blob pinned by itself, unpinned by itself.
    let (status, _) = prefetch(
        &node,
        serde_json::json!({"blob": only_arm.digest.as_str(), "pin": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        rig.local.store.pinned_usage(),
        (1, only_arm.data.len() as u64)
    );
    let (status, one) = unpin(&node, serde_json::json!({"blob": only_arm.digest.as_str()})).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["unpinned"], 1, "{one}");
    assert_eq!(rig.local.store.pinned_usage(), (0, 0));
}

#[tokio::test]
async fn unpin_errors_are_a_prefetch_s() {
    let rig = Rig::new().await;
    let guarded = Node::start_with(&rig, |s| s.with_pinning(pinning(&rig))).await;
    let cases = [
        (
            serde_json::json!({"image": "team/none:v1"}),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            serde_json::json!({"image": "Team/App"}),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            serde_json::json!({"blob": "sha256:abc"}),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            serde_json::json!({}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({"blob": "sha256:abc", "pin": true}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = unpin(&guarded, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["errors"][0]["code"], code, "{body} -> {answer}");
    }
    // A node that cannot pin cannot unpin either.
    let plain = Node::start(&rig).await;
    let (got, answer) = unpin(&plain, serde_json::json!({"blob": "sha256:abc"})).await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{answer}");
    let res = plain
        .req(Method::GET, "/flotilla/v1/unpin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// A prefetch whose TCP peer is `peer`, straight into the route's handler (a test cannot
/// connect from another host's address).
async fn prefetch_from(
    state: &OciState,
    peer: &str,
    bearer: Option<&str>,
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let mut req = axum::http::Request::post("/flotilla/v1/prefetch");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(axum::body::Body::from("{}")).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo::<std::net::SocketAddr>(
            peer.parse().unwrap(),
        ));
    let res = crate::oci::prefetch::handle(axum::extract::State(state.clone()), req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap(), headers)
}

#[tokio::test]
async fn prefetch_from_another_host_needs_the_fleet_token() {
    let rig = Rig::new().await;
    let open = OciState::new(rig.fetcher.clone(), rig.gw.url(), rig.local.source()).unwrap();
    let guarded = open.clone().with_prefetch_token("s3cret-fleet-token");
    // The body `{}` is malformed: an admitted caller gets 400 UNSUPPORTED, past the check.
    let cases = [
        (
            &open,
            "127.0.0.1:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &open,
            "[::1]:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &open,
            "[::ffff:127.0.0.1]:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &open,
            "10.1.2.3:40000",
            None,
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            &open,
            "10.1.2.3:40000",
            Some("s3cret-fleet-token"),
            StatusCode::FORBIDDEN,
            "DENIED",
        ),
        (
            &guarded,
            "127.0.0.2:40000",
            None,
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            &guarded,
            "10.1.2.3:40000",
            None,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            &guarded,
            "10.1.2.3:40000",
            Some("s3cret-fleet-token-"),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            &guarded,
            "[2001:db8::1]:40000",
            Some("wrong"),
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            &guarded,
            "10.1.2.3:40000",
            Some("s3cret-fleet-token"),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
    ];
    for (state, peer, bearer, status, code) in cases {
        let (got, answer, headers) = prefetch_from(state, peer, bearer).await;
        let what = format!("{peer} with {bearer:?}, token {:?}", state.prefetch_token);
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["errors"][0]["code"], code, "{what}: {answer}");
        if got == StatusCode::UNAUTHORIZED {
            assert_eq!(
                headers["www-authenticate"], "Bearer realm=\"flotilla-node\"",
                "{what}"
            );
        }
    }
    // Without the server's peer address the caller counts as another host's.
    let req = axum::http::Request::post("/flotilla/v1/prefetch")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let res = crate::oci::prefetch::handle(axum::extract::State(open), req).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn prefetch_errors_are_the_registry_s() {
    let rig = Rig::new().await;
    let config = rig.blob(100, 4096, 41);
    let amd = image_manifest(&[&config]);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [index_entry(&amd, serde_json::json!({"os": "linux", "architecture": "amd64"}))],
    })
    .to_string();
    let d = flotilla_protocol::Digest::sha256_of(amd.as_bytes());
    rig.gw.add_manifest("team/app", d.as_str(), IMAGE, &amd);
    rig.gw.add_manifest("team/app", "v1", INDEX, &index);
    let node = Node::start(&rig).await;
    let unknown = TestBlob::new(100, 64, 42, &rig.key);

    let cases = [
        (
            serde_json::json!({"image": "team/app:v1", "platform": "linux/s390x"}),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            serde_json::json!({"image": "team/app:v2"}),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            serde_json::json!({"image": "Team/App"}),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            serde_json::json!({"image": "team/app:v1", "platform": "linux"}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({"blob": unknown.digest.as_str()}),
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
        ),
        (
            serde_json::json!({"blob": "sha256:abc"}),
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            serde_json::json!({"blob": unknown.digest.as_str(), "platform": "all"}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({"image": "team/app:v1", "blob": unknown.digest.as_str()}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        (
            serde_json::json!({"image": "team/app:v1", "layers": 1}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
        // This endpoint was given no way to pin.
        (
            serde_json::json!({"image": "team/app:v1", "platform": "all", "pin": true}),
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = prefetch(&node, body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["errors"][0]["code"], code, "{body} -> {answer}");
    }
    let (_, answer) = prefetch(
        &node,
        serde_json::json!({"image": "team/app:v1", "platform": "linux/s390x"}),
    )
    .await;
    let detail = answer["errors"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("linux/amd64"), "{detail}");
    // Not JSON at all, and the wrong method.
    let res = node
        .req(Method::POST, "/flotilla/v1/prefetch")
        .body("image=x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(res).await, "UNSUPPORTED");
    let res = node.get("/flotilla/v1/prefetch").await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header_str(&res, "allow"), Some("POST"));
    assert_eq!(error_code(res).await, "UNSUPPORTED");
    // Nothing was fetched for any of them.
    assert_eq!(rig.gw.origin_bytes(), 0);
    assert!(rig.local.store.entry(&config.digest).is_none());
}

#[tokio::test]
async fn prefetches_together_fetch_at_most_their_node_wide_share_of_blobs_at_once() {
    let rig = Rig::new().await;
    // Nobody has these and the origin refuses for now: their downloads stay open.
    let blobs: Vec<TestBlob> = (0..6).map(|i| rig.blob(5000, 4096, 60 + i)).collect();
    rig.gw
        .state
        .refuse_blobs
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let node = Node::start_with(&rig, |s| s.with_prefetch_slots(2)).await;
    let asks = blobs
        .iter()
        .map(|b| prefetch(&node, serde_json::json!({"blob": b.digest.as_str()})));
    let all = futures::future::join_all(asks);
    tokio::pin!(all);
    let mut most = 0;
    for _ in 0..20 {
        tokio::select! {
            _ = &mut all => panic!("prefetches finished while the origin refused"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        most = most.max(rig.fetcher.active_downloads());
    }
    assert_eq!(most, 2, "six prefetched blobs, two slots");
    rig.gw
        .state
        .refuse_blobs
        .store(false, std::sync::atomic::Ordering::Relaxed);
    for (status, report) in all.await {
        assert_eq!(status, StatusCode::OK, "{report}");
    }
    for b in &blobs {
        assert!(rig.local.store.entry(&b.digest).is_some_and(|e| e.complete));
    }
}
