//! Garbage collection on a real data directory: what stays, what goes, dry runs, the grace for
//! blobs written or used recently, and manifest pushes racing a sweep.

use std::time::{Duration, Instant, SystemTime};

use flotilla_protocol::Reference;
use serde_json::json;

use super::super::tests::{blob_files, body, cfg, data, image_manifest, push, read_blob, repo};
use super::*;

/// A collection that spares nothing for its age.
fn now() -> GcOptions {
    GcOptions {
        min_age: Duration::ZERO,
        dry_run: false,
    }
}

fn tag(s: &str) -> Reference {
    Reference::Tag(s.parse().unwrap())
}

fn gone(r: Result<u64, RegistryError>) -> bool {
    matches!(r, Err(RegistryError::BlobUnknown))
}

#[tokio::test]
async fn only_what_no_held_manifest_references_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let (app, base) = (repo("team/app"), repo("team/base"));
    let config = push(&reg, &app, b"{}").await;
    let shared = push(&reg, &app, &data(5000, 1)).await;
    let own = push(&reg, &app, &data(7000, 2)).await;
    let loose = push(&reg, &app, &data(3000, 3)).await;
    reg.blob_mount(&base, &config, Some(&app)).await.unwrap();
    reg.blob_mount(&base, &shared, Some(&app)).await.unwrap();
    let v1 = image_manifest(&config, &[&shared, &own], json!({}));
    let v1_digest = reg
        .manifest_put(&app, &tag("v1"), None, v1)
        .await
        .unwrap()
        .digest;
    let latest = image_manifest(&config, &[&shared], json!({}));
    reg.manifest_put(&base, &tag("latest"), None, latest.clone())
        .await
        .unwrap();
    // An untagged manifest is held too (pushed by digest).
    let untagged = image_manifest(&config, &[&shared], json!({"annotations": {"a": "b"}}));
    let by_digest = Reference::Digest(Digest::sha256_of(&untagged));
    reg.manifest_put(&app, &by_digest, None, untagged)
        .await
        .unwrap();
    assert_eq!(blob_files(tmp.path()), 4);
    let mut removed = reg.seed().subscribe_removed_blobs();

    // Only the loose blob (pushed, never named by a manifest) is unreferenced.
    let r = reg.collect_garbage(now()).await.unwrap();
    assert_eq!(
        r,
        GcReport {
            dry_run: false,
            manifests_held: 3,
            manifest_records_removed: 0,
            blobs_live: 3,
            blobs_recent: 0,
            blobs_removed: 1,
            bytes_removed: 3000,
            links_removed: 1,
        }
    );
    assert!(gone(reg.blob_stat(&app, &loose).await));
    assert_eq!(removed.try_recv().unwrap(), loose);

    // v1 deleted: its own layer goes, what `latest` and the untagged manifest use stays.
    reg.manifest_delete(&app, &Reference::Digest(v1_digest.clone()))
        .await
        .unwrap();
    let dry = reg
        .collect_garbage(GcOptions {
            dry_run: true,
            ..now()
        })
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        (
            dry.blobs_removed,
            dry.bytes_removed,
            dry.links_removed,
            dry.manifest_records_removed
        ),
        (1, 7000, 1, 1)
    );
    assert_eq!(blob_files(tmp.path()), 3, "a dry run removes nothing");
    assert_eq!(reg.blob_stat(&app, &own).await.unwrap(), 7000);

    let r = reg.collect_garbage(now()).await.unwrap();
    assert_eq!(
        r,
        GcReport {
            dry_run: false,
            ..dry
        }
    );
    assert_eq!(blob_files(tmp.path()), 2);
    assert!(gone(reg.blob_stat(&app, &own).await));
    assert_eq!(removed.try_recv().unwrap(), own);
    assert!(reg.inner.meta.manifest(&v1_digest).unwrap().is_none());
    assert!(reg.seed().piece_table(&own).await.unwrap().is_none());
    assert!(reg.seed().blob_open(&own).await.is_err());
    // What is still referenced reads back whole, in both repositories.
    for r in [&app, &base] {
        assert_eq!(read_blob(&reg, r, &shared).await, data(5000, 1));
        assert_eq!(read_blob(&reg, r, &config).await, b"{}");
    }
    let got = reg.manifest_get(&base, &tag("latest")).await.unwrap();
    assert_eq!(got.bytes, latest);

    // Nothing is left to collect; a removed blob can be pushed again.
    let again = reg.collect_garbage(now()).await.unwrap();
    assert_eq!(
        (
            again.blobs_removed,
            again.links_removed,
            again.manifest_records_removed
        ),
        (0, 0, 0)
    );
    assert_eq!(push(&reg, &app, &data(7000, 2)).await, own);
    assert_eq!(read_blob(&reg, &app, &own).await, data(7000, 2));
}

#[tokio::test]
async fn a_collected_blob_pushed_again_is_not_unsent() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let app = repo("team/app");
    let (sent, quiet) = (data(5000, 1), data(6000, 2));
    let (ds, dq) = (
        push(&reg, &app, &sent).await,
        push(&reg, &app, &quiet).await,
    );
    assert!(reg.seed().unsent(&ds) && reg.seed().unsent(&dq));
    // A node fetches a piece of one; then both go, since nothing references them.
    reg.seed().source().piece_file(&ds, 0).await.unwrap();
    assert_eq!(reg.collect_garbage(now()).await.unwrap().blobs_removed, 2);

    // Nodes keep what they fetched of a collected blob: pushed again, it is not unsent.
    assert_eq!(push(&reg, &app, &sent).await, ds);
    assert!(!reg.seed().unsent(&ds));
    // The record survives a restart, and holds for a chunked upload too (and for a collected
    // blob nobody fetched: the gateway cannot tell that apart from one fetched before a restart).
    drop(reg);
    // The piece-table worker of the last push may hold the database for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reg = loop {
        match Registry::open(cfg(tmp.path())).await {
            Ok(reg) => break reg,
            Err(e) if Instant::now() > deadline => panic!("cannot reopen: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let up = reg.upload_start(&app).await.unwrap();
    reg.upload_finish(&app, &up.id, &dq, Some(0), Some(body(&quiet, 1000)))
        .await
        .unwrap();
    assert!(!reg.seed().unsent(&dq));
    // A blob never held here is unsent, after a restart as before it.
    let fresh = push(&reg, &app, &data(7000, 3)).await;
    assert!(reg.seed().unsent(&fresh));
}

#[tokio::test]
async fn blobs_written_or_used_recently_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let app = repo("app");
    let used = push(&reg, &app, &data(1000, 1)).await;
    let unused = push(&reg, &app, &data(1000, 2)).await;
    let grace = GcOptions {
        min_age: Duration::from_secs(2),
        dry_run: false,
    };
    let r = reg.collect_garbage(grace).await.unwrap();
    assert_eq!((r.blobs_recent, r.blobs_removed), (2, 0), "{r:?}");

    // Written an hour ago, and their pushes' uses have expired by now.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for d in [&used, &unused] {
        std::fs::File::options()
            .write(true)
            .open(reg.inner.blobs.path(d))
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let fresh = push(&reg, &app, &data(1000, 3)).await;
    // A client finds `used` with HEAD, as docker does before it skips uploading a layer.
    reg.blob_stat(&app, &used).await.unwrap();

    let r = reg.collect_garbage(grace).await.unwrap();
    assert_eq!((r.blobs_recent, r.blobs_removed), (2, 1), "{r:?}");
    assert!(gone(reg.blob_stat(&app, &unused).await));
    assert_eq!(read_blob(&reg, &app, &used).await, data(1000, 1));
    assert_eq!(read_blob(&reg, &app, &fresh).await, data(1000, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_racing_a_sweep_never_names_a_removed_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let app = repo("app");
    let config = push(&reg, &app, b"{}").await;
    let base = image_manifest(&config, &[], json!({}));
    reg.manifest_put(&app, &tag("base"), None, base)
        .await
        .unwrap();
    let (mut stored, mut refused) = (0, 0);
    for i in 0..40u8 {
        let layer = push(&reg, &app, &data(2000, i)).await;
        let m = image_manifest(&config, &[&layer], json!({}));
        let t = tag(&format!("t{i}"));
        // The manifest comes a little later each time, so both orders happen.
        let (put, swept) = tokio::join!(
            async {
                let late = Instant::now() + Duration::from_micros(u64::from(i) * 20);
                while Instant::now() < late {
                    tokio::task::yield_now().await;
                }
                reg.manifest_put(&app, &t, None, m).await
            },
            reg.collect_garbage(now())
        );
        swept.unwrap();
        match put {
            // Stored: the sweep saw it and kept the layer.
            Ok(_) => {
                stored += 1;
                assert_eq!(read_blob(&reg, &app, &layer).await, data(2000, i));
            }
            // Refused: the sweep came first, and the client is told to push the layer again.
            Err(RegistryError::ManifestBlobUnknown(d)) => {
                refused += 1;
                assert_eq!(d, layer);
                assert!(gone(reg.blob_stat(&app, &layer).await));
            }
            Err(e) => panic!("iteration {i}: {e}"),
        }
    }
    assert_eq!(stored + refused, 40);
    // Every stored manifest's blobs survive a last collection.
    reg.collect_garbage(now()).await.unwrap();
    for i in 0..40u8 {
        if let Ok(m) = reg.manifest_get(&app, &tag(&format!("t{i}"))).await {
            let p = parse_manifest(Some(&m.media_type), &m.bytes).unwrap();
            for b in p.blobs {
                reg.blob_stat(&app, &b.digest).await.unwrap();
            }
        }
    }
}
