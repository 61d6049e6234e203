//! Garbage collection with real images: two images built with umoci and pushed with skopeo, one
//! deleted with `skopeo delete`. `flotilla gc` on the stopped gateway's data directory removes
//! exactly the blobs only the deleted image used, and skopeo pulls the other back byte for byte;
//! the gateway's own periodic collection, and one asked for with `POST /flotilla/v1/gc`, do the
//! same while it serves. Flotilla only:
//! distribution collects with its own offline command.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::skopeo::{
    assert_same_tree, build_image, copy, layout_blob, layout_descriptor, require_tools,
};
use crate::support::{Gateway, flotilla_bin, http_status, run};

const REPO: &str = "gc/app";

/// Hex names of the blob files in the gateway's storage.
fn stored(gw: &Gateway) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for shard in std::fs::read_dir(gw.data_dir.join("blobs/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.insert(f.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The config and layer digests (hex) of manifest `digest` in the layout, with their sizes.
fn blobs_of(layout: &Path, digest: &str) -> Vec<(String, u64)> {
    let m: Value = serde_json::from_slice(&layout_blob(layout, digest)).unwrap();
    let layers = m["layers"].as_array().unwrap().iter();
    std::iter::once(&m["config"])
        .chain(layers)
        .map(|d| {
            let hex = d["digest"].as_str().unwrap().strip_prefix("sha256:");
            (hex.unwrap().to_owned(), d["size"].as_u64().unwrap())
        })
        .collect()
}

/// What [`push_two`] set up.
struct Pushed {
    src: std::path::PathBuf,
    keep: String,
    keep_blobs: BTreeSet<String>,
    /// Blobs only the deleted image used, with their sizes.
    dropped: Vec<(String, u64)>,
}

/// Pushes images `keep` and `drop` (distinct configs and layers) and deletes `drop` by digest.
fn push_two(gw: &Gateway, tmp: &Path) -> Pushed {
    let src = tmp.join("src");
    build_image(&src, "keep", "amd64", 11);
    build_image(&src, "drop", "arm64", 12);
    let digest = |tag| {
        layout_descriptor(&src, tag)["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (keep, drop) = (digest("keep"), digest("drop"));
    for tag in ["keep", "drop"] {
        copy(
            &[
                "--preserve-digests",
                "--dest-tls-verify=false",
                &format!("oci:{}:{tag}", src.display()),
                &format!("docker://{}/{REPO}:{tag}", gw.host()),
            ],
            tmp,
        );
    }
    let keep_blobs: BTreeSet<String> = blobs_of(&src, &keep).into_iter().map(|b| b.0).collect();
    let dropped: Vec<(String, u64)> = blobs_of(&src, &drop)
        .into_iter()
        .filter(|b| !keep_blobs.contains(&b.0))
        .collect();
    assert_eq!(dropped.len(), 3, "the two images share no blob");
    let all: BTreeSet<String> = keep_blobs
        .iter()
        .cloned()
        .chain(dropped.iter().map(|b| b.0.clone()))
        .collect();
    assert_eq!(stored(gw), all);
    run(
        "skopeo",
        &[
            "delete",
            "--tls-verify=false",
            &format!("docker://{}/{REPO}@{drop}", gw.host()),
        ],
    );
    Pushed {
        src,
        keep,
        keep_blobs,
        dropped,
    }
}

/// skopeo pulls `keep` back and it is the image that was pushed, blob for blob; the dropped
/// blobs are unknown to the registry.
fn check_after(gw: &Gateway, tmp: &Path, p: &Pushed) {
    let back = tmp.join("back");
    copy(
        &[
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{}/{REPO}:keep", gw.host()),
            &format!("oci:{}:keep", back.display()),
        ],
        tmp,
    );
    assert_eq!(assert_same_tree(&p.src, &back, &p.keep), 4);
    for (hex, _) in &p.dropped {
        let path = format!("/v2/{REPO}/blobs/sha256:{hex}");
        assert_eq!(http_status(gw.addr, "HEAD", &path), Some(404), "{path}");
    }
}

/// `flotilla gc …` with the data directory of `gw`: its exit status, stdout and stderr.
fn flotilla_gc(gw: &Gateway, extra: &[&str]) -> (bool, String, String) {
    let data = gw.data_dir.display().to_string();
    let out = Command::new(flotilla_bin())
        .args(["gc", "--data-dir", &data, "--min-age-secs", "0"])
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("FLOTILLA_CONFIG")
        .output()
        .expect("run flotilla gc");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn last_json(stdout: &str) -> Value {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn flotilla_gc_removes_what_only_a_deleted_image_used() {
    require_tools();
    let mut gw = Gateway::start_with_args(&["--gc-interval-secs", "0"]);
    let tmp = tempfile::tempdir().unwrap();
    let p = push_two(&gw, tmp.path());

    // A running gateway holds its database: a clear refusal, nothing touched.
    let (ok, _, err) = flotilla_gc(&gw, &[]);
    assert!(!ok, "flotilla gc ran beside a running gateway");
    assert!(err.contains("stop it"), "{err}");
    assert!(gw.stop(), "the gateway did not stop cleanly:\n{}", gw.log());

    let dropped_bytes: u64 = p.dropped.iter().map(|b| b.1).sum();
    let (ok, out, err) = flotilla_gc(&gw, &["--dry-run", "--json"]);
    assert!(ok, "{err}");
    let dry = last_json(&out);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["blobs_removed"], 3, "{dry}");
    assert_eq!(dry["bytes_removed"], dropped_bytes, "{dry}");
    assert_eq!(stored(&gw).len(), 6, "a dry run removed files");

    let (ok, out, err) = flotilla_gc(&gw, &["--json"]);
    assert!(ok, "{err}");
    let report = last_json(&out);
    assert_eq!(report["dry_run"], false, "{report}");
    assert_eq!(report["blobs_removed"], 3, "{report}");
    assert_eq!(report["bytes_removed"], dropped_bytes, "{report}");
    assert_eq!(report["blobs_live"], 3, "{report}");
    assert_eq!(report["manifests_held"], 1, "{report}");
    assert_eq!(report["manifest_records_removed"], 1, "{report}");
    assert_eq!(stored(&gw), p.keep_blobs);

    // The table form, once more: nothing left to remove.
    let (ok, out, err) = flotilla_gc(&gw, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("blobs removed"), "{out}");

    gw.restart();
    check_after(&gw, tmp.path(), &p);
}

#[test]
fn the_gateway_collects_on_its_own() {
    require_tools();
    // Every second, sparing blobs written or used in the last 5 s: skopeo names its blobs in
    // the manifest well within that.
    let gw = Gateway::start_with_args(&["--gc-interval-secs", "1", "--gc-min-age-secs", "5"]);
    let tmp = tempfile::tempdir().unwrap();
    let p = push_two(&gw, tmp.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored(&gw) != p.keep_blobs {
        assert!(
            Instant::now() < deadline,
            "still stored after 60 s: {:?}\nlog:\n{}",
            stored(&gw),
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        gw.log().contains("garbage collection removed a blob"),
        "{}",
        gw.log()
    );
    // Counted in the stats and on the metrics page (once the collection that deleted the
    // files has returned).
    let stats_url = format!("{}/flotilla/v1/stats", gw.url());
    let mut stats = super::get(&stats_url, None).json();
    while stats["gc"]["blobs_removed"] != 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        stats = super::get(&stats_url, None).json();
    }
    assert_eq!(stats["gc"]["blobs_removed"], 3, "{stats}");
    let dropped_bytes: u64 = p.dropped.iter().map(|b| b.1).sum();
    assert_eq!(stats["gc"]["bytes_removed"], dropped_bytes, "{stats}");
    let page = super::get(&format!("{}/metrics", gw.url()), None).body;
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("\nflotilla_gateway_gc_blobs_removed_total 3\n"),
        "{page}"
    );
    check_after(&gw, tmp.path(), &p);
}

#[test]
fn an_http_request_collects_now() {
    require_tools();
    let gw = Gateway::start_with_args(&["--gc-interval-secs", "0", "--gc-min-age-secs", "0"]);
    let tmp = tempfile::tempdir().unwrap();
    let p = push_two(&gw, tmp.path());
    let url = format!("{}/flotilla/v1/gc", gw.url());
    let post = |q: &str| super::request(reqwest::Method::POST, &format!("{url}{q}"), None);

    assert_eq!(post("?dry_run=maybe").status, 400);
    assert_eq!(super::get(&url, None).status, 405);
    let dry = post("?dry_run=true");
    assert_eq!(dry.status, 200);
    let dry = dry.json();
    assert_eq!(
        (dry["dry_run"].clone(), dry["blobs_removed"].clone()),
        (true.into(), 3.into()),
        "{dry}"
    );
    assert_eq!(stored(&gw).len(), 6, "a dry run removed files");

    let done = post("");
    assert_eq!(done.status, 200);
    let done = done.json();
    assert_eq!(done["blobs_removed"], 3, "{done}");
    let dropped_bytes: u64 = p.dropped.iter().map(|b| b.1).sum();
    assert_eq!(done["bytes_removed"], dropped_bytes, "{done}");
    assert_eq!(stored(&gw), p.keep_blobs);
    check_after(&gw, tmp.path(), &p);
}
