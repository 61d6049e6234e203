//! `flotilla prefetch` against a `flotilla node` process: one platform of a multi-platform
//! image fetched into the node's store before any pull, pinned, and then pulled through the
//! node with the gateway stopped — the edge site filled before its WAN goes down.

use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use super::{
    FleetGateway, Image, MIB, NodeProc, client, get_json, node_stats, pull, settled_stats,
};
use crate::support::flotilla_bin;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `flotilla prefetch ARGS… --node URL`: exit status, stdout, stderr.
fn prefetch(node: &str, args: &[&str]) -> (bool, String, String) {
    flotilla("prefetch", node, args)
}

/// `flotilla COMMAND ARGS… --node URL`: exit status, stdout, stderr.
fn flotilla(command: &str, node: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(flotilla_bin())
        .arg(command)
        .args(args)
        .args(["--node", node])
        .output()
        .expect("run flotilla prefetch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_image_pulls_from_the_node_with_the_gateway_stopped() {
    const WHAT: &str = "prefetch";
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    let repo = "fleet/prefetch";
    let amd = Image::push(&http, &gw.url(), repo, "amd64", &[3 * MIB, 1024], 71).await;
    let arm = Image::push(&http, &gw.url(), repo, "arm64", &[2 * MIB], 72).await;
    let entry = |img: &Image, arch: &str| {
        json!({"mediaType": OCI_MANIFEST, "digest": img.digest, "size": img.manifest.len(),
               "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry(&arm, "arm64"), entry(&amd, "amd64")],
    }))
    .unwrap();
    let url = format!("{}/v2/{repo}/manifests/v1", gw.url());
    let r = http
        .put(&url)
        .header("Content-Type", OCI_INDEX)
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "PUT {url}");
    let dir = tmp.path().join("node");
    std::fs::create_dir_all(&dir).unwrap();
    let node = NodeProc::start(&gw.url(), &dir);
    let base = node.url();
    println!("[{WHAT}] pushed and started the node in {:?}", t0.elapsed());

    // A tag nobody pushed: the registry's error, and a failing exit.
    let (ok, _, err) = prefetch(&base, &[&format!("{repo}:nope")]);
    assert!(!ok, "prefetch of a missing tag succeeded");
    assert!(err.contains("MANIFEST_UNKNOWN"), "{err}");
    // A fleet token that cannot be read is said so before anything is asked.
    let missing = dir.join("no-such.token");
    let (ok, _, err) = prefetch(
        &base,
        &[
            &format!("{repo}:v1"),
            "--fleet-token-file",
            &missing.display().to_string(),
        ],
    );
    assert!(!ok, "prefetch with an unreadable token file succeeded");
    assert!(err.contains("reading the fleet token from"), "{err}");

    let t1 = Instant::now();
    let image = format!("localhost:5000/{repo}:v1");
    let (ok, out, err) = prefetch(
        &base,
        &[&image, "--platform", "linux/amd64", "--pin", "--json"],
    );
    assert!(
        ok,
        "flotilla prefetch failed: {err}\nnode log:\n{}",
        node.log()
    );
    println!("[{WHAT}] prefetched in {:?}: {out}", t1.elapsed());
    let report: Value = serde_json::from_str(out.trim()).expect("prefetch JSON");
    assert_eq!(report["image"], format!("{repo}:v1"));
    assert_eq!(report["pinned"], true);
    let digests: Vec<&str> = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = amd.blobs.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        digests, want,
        "the amd64 image's config and layers, in order"
    );
    assert_eq!(report["bytes"], amd.size());
    assert_eq!(report["fetched_bytes"], amd.size());
    let warmed = settled_stats(&http, &base).await;
    assert_eq!(
        warmed.peer_bytes + warmed.origin_bytes,
        amd.size(),
        "{warmed:?}"
    );
    assert_eq!(warmed.pinned_bytes, amd.size(), "{warmed:?}");
    let listed = get_json(&http, &format!("{base}/flotilla/v1/store")).await;
    assert_eq!(listed["pinned_bytes"], amd.size(), "{listed}");
    let mut held: Vec<&str> = listed["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|b| {
            assert_eq!(
                (b["complete"].clone(), b["pinned"].clone()),
                (true.into(), true.into()),
                "{b}"
            );
        })
        .map(|b| b["digest"].as_str().unwrap())
        .collect();
    held.sort_unstable();
    let mut want_sorted = want.clone();
    want_sorted.sort_unstable();
    assert_eq!(held, want_sorted, "{listed}");

    // Again, as tables, with the same image under its own tag: everything was held already.
    let amd_tag = format!("{repo}:amd64");
    let (ok, out, err) = prefetch(&base, &[&image, &amd_tag, "--platform", "linux/amd64"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("| yes |").count(), 2 * amd.blobs.len(), "{out}");
    assert_eq!(out.matches("0.0 MiB fetched now").count(), 2, "{out}");
    // One target failing does not stop the next; the exit status says so.
    let (ok, out, err) = prefetch(&base, &[&format!("{repo}:nope"), &amd_tag]);
    assert!(!ok, "a failed target went unreported");
    assert!(err.contains("1 of 2 prefetches failed"), "{err}");
    assert!(out.contains(&format!("{amd_tag} (linux/")), "{out}");

    // The gateway goes away; the node still answers the tag and the image, from its store.
    assert!(gw.gw.stop(), "the gateway did not stop cleanly");
    let r = http
        .get(format!("{base}/v2/{repo}/manifests/v1"))
        .header("Accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the index by tag, gateway stopped");
    assert!(r.bytes().await.unwrap() == index, "index bytes differ");
    let by_digest = Image {
        repo: amd.repo.clone(),
        tag: amd.digest.clone(),
        blobs: amd.blobs.clone(),
        manifest: amd.manifest.clone(),
        digest: amd.digest.clone(),
    };
    pull(&http, &base, &by_digest).await;
    let after = node_stats(&http, &base).await;
    assert_eq!(
        (after.peer_bytes, after.origin_bytes),
        (warmed.peer_bytes, warmed.origin_bytes),
        "the pull moved bytes: it should have read the store"
    );
    // The other platform was never fetched, and cannot be now.
    let (ok, _, err) = prefetch(&base, &[&image, "--platform", "linux/arm64"]);
    assert!(!ok, "arm64 prefetched with the gateway stopped");
    println!("[{WHAT}] arm64 without the gateway: {}", err.trim());

    // Unpinned as it was pinned (the manifests come from the node's kept copies): evictable
    // again, and held still.
    let (ok, out, err) = flotilla("unpin", &base, &[&image, "--platform", "linux/amd64"]);
    assert!(ok, "flotilla unpin failed: {err}");
    assert!(
        out.contains(&format!("{} blob(s) unpinned", amd.blobs.len())),
        "{out}"
    );
    let unpinned = node_stats(&http, &base).await;
    assert_eq!(unpinned.pinned_bytes, 0, "{unpinned:?}");
    assert_eq!(unpinned.stored_bytes, warmed.stored_bytes, "{unpinned:?}");
    let (ok, out, err) = flotilla("unpin", &base, &[&image, "--platform", "linux/amd64"]);
    assert!(ok, "{err}");
    assert!(out.contains("0 blob(s) unpinned"), "{out}");
    println!("[{WHAT}] total {:?}", t0.elapsed());
}
