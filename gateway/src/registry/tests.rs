//! Tests of the registry service on a real data directory: uploads, crash-style reopen, manifests,
//! listings and concurrency.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use super::*;

fn cfg(dir: &std::path::Path) -> StorageConfig {
    StorageConfig {
        data_dir: dir.to_path_buf(),
        max_manifest_bytes: 4 << 20,
        upload_ttl: Duration::from_secs(3600),
    }
}

fn body(data: &[u8], chunk: usize) -> BodyStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

async fn read_blob(reg: &Registry, r: &RepoName, d: &Digest) -> Vec<u8> {
    use std::io::Read;
    let (mut f, size) = reg.blob_open(r, d).await.unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    assert_eq!(v.len() as u64, size);
    v
}

fn blob_files(dir: &std::path::Path) -> usize {
    fn walk(p: &std::path::Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&dir.join("blobs"))
}

#[tokio::test]
async fn monolithic_put_dedupes_and_links_per_repo() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let bytes = data(300_000, 1);
    let d = Digest::sha256_of(&bytes);
    let (a, b) = (repo("a"), repo("b/c"));
    assert_eq!(
        reg.blob_put(&a, &d, body(&bytes, 7000)).await.unwrap(),
        300_000
    );
    assert!(matches!(
        reg.blob_stat(&b, &d).await,
        Err(RegistryError::BlobUnknown)
    ));
    reg.blob_put(&b, &d, body(&bytes, 65536)).await.unwrap();
    assert_eq!(read_blob(&reg, &b, &d).await, bytes);
    assert_eq!(
        blob_files(tmp.path()),
        1,
        "a blob pushed twice is stored once"
    );
    reg.blob_delete(&a, &d).await.unwrap();
    assert!(matches!(
        reg.blob_stat(&a, &d).await,
        Err(RegistryError::BlobUnknown)
    ));
    assert_eq!(reg.blob_stat(&b, &d).await.unwrap(), 300_000);
}

#[tokio::test]
async fn wrong_digest_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let wrong = Digest::sha256_of(b"something else");
    let r = repo("a");
    let err = reg
        .blob_put(&r, &wrong, body(&data(5000, 2), 100))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestInvalid { .. }));
    assert!(reg.blob_stat(&r, &wrong).await.is_err());
    assert_eq!(blob_files(tmp.path()), 0);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn chunked_upload_checks_offsets_and_resumes_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = data(1_000_000, 3);
    let d = Digest::sha256_of(&bytes);
    let r = repo("x/y");
    let id = {
        let reg = Registry::open(cfg(tmp.path())).await.unwrap();
        let up = reg.upload_start(&r).await.unwrap();
        let info = reg
            .upload_append(&r, &up.id, Some(0), body(&bytes[..400_000], 9999))
            .await
            .unwrap();
        assert_eq!(info.offset, 400_000);
        let err = reg
            .upload_append(&r, &up.id, Some(0), body(&bytes[..10], 10))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            RegistryError::RangeInvalid { offset: 400_000 }
        ));
        assert!(matches!(
            reg.upload_status(&repo("other"), &up.id).await,
            Err(RegistryError::BlobUploadUnknown)
        ));
        up.id
    };
    // A new Registry has no in-memory hasher: it must rebuild it from the file.
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    assert_eq!(reg.upload_status(&r, &id).await.unwrap().offset, 400_000);
    reg.upload_append(&r, &id, None, body(&bytes[400_000..700_000], 4096))
        .await
        .unwrap();
    let size = reg
        .upload_finish(
            &r,
            &id,
            &d,
            Some(700_000),
            Some(body(&bytes[700_000..], 50_000)),
        )
        .await
        .unwrap();
    assert_eq!(size, 1_000_000);
    assert_eq!(read_blob(&reg, &r, &d).await, bytes);
    assert!(matches!(
        reg.upload_status(&r, &id).await,
        Err(RegistryError::BlobUploadUnknown)
    ));
}

#[tokio::test]
async fn finish_with_wrong_digest_keeps_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let r = repo("a");
    let bytes = data(1000, 4);
    let up = reg.upload_start(&r).await.unwrap();
    reg.upload_append(&r, &up.id, None, body(&bytes, 100))
        .await
        .unwrap();
    let wrong = Digest::sha256_of(b"nope");
    assert!(matches!(
        reg.upload_finish(&r, &up.id, &wrong, None, None).await,
        Err(RegistryError::DigestInvalid { .. })
    ));
    let right = Digest::sha256_of(&bytes);
    reg.upload_finish(&r, &up.id, &right, None, None)
        .await
        .unwrap();
    assert_eq!(read_blob(&reg, &r, &right).await, bytes);
}

#[tokio::test]
async fn sha512_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let r = repo("a");
    let bytes = data(5000, 5);
    let d = Digest::compute(Algorithm::Sha512, &bytes);
    let up = reg.upload_start(&r).await.unwrap();
    reg.upload_append(&r, &up.id, None, body(&bytes, 999))
        .await
        .unwrap();
    reg.upload_finish(&r, &up.id, &d, None, None).await.unwrap();
    assert_eq!(read_blob(&reg, &r, &d).await, bytes);
}

#[tokio::test]
async fn idle_sessions_are_reaped_and_bad_ids_never_touch_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path());
    c.upload_ttl = Duration::from_millis(1);
    let reg = Registry::open(c).await.unwrap();
    let r = repo("a");
    let up = reg.upload_start(&r).await.unwrap();
    reg.upload_append(&r, &up.id, None, body(b"abc", 3))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    reg.inner.reap_idle_uploads().await.unwrap();
    assert!(matches!(
        reg.upload_status(&r, &up.id).await,
        Err(RegistryError::BlobUploadUnknown)
    ));
    assert_eq!(
        std::fs::read_dir(tmp.path().join("uploads"))
            .unwrap()
            .count(),
        0
    );
    for bad in ["../meta", "..", "x/../../y", ""] {
        assert!(matches!(
            reg.upload_status(&r, bad).await,
            Err(RegistryError::BlobUploadUnknown)
        ));
    }
}

fn image_manifest(config: &Digest, layers: &[&Digest], extra: serde_json::Value) -> Bytes {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": layers.iter().map(|d| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": 3
        })).collect::<Vec<_>>(),
    });
    if let (Some(o), Some(e)) = (m.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

async fn push(reg: &Registry, r: &RepoName, bytes: &[u8]) -> Digest {
    let d = Digest::sha256_of(bytes);
    reg.blob_put(r, &d, body(bytes, 1024)).await.unwrap();
    d
}

#[tokio::test]
async fn manifests_tags_referrers() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let r = repo("app");
    let cfg_d = push(&reg, &r, b"{}").await;
    let layer = push(&reg, &r, b"layer").await;
    let missing = Digest::sha256_of(b"missing");

    let bad = image_manifest(&cfg_d, &[&missing], json!({}));
    let err = reg
        .manifest_put(&r, &"v1".parse().unwrap(), None, bad)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestBlobUnknown(d) if d == missing));
    assert!(matches!(
        reg.tags_list(&repo("nope"), None, None).await,
        Err(RegistryError::NameUnknown)
    ));

    let m = image_manifest(&cfg_d, &[&layer], json!({}));
    let put = reg
        .manifest_put(&r, &"v1".parse().unwrap(), None, m.clone())
        .await
        .unwrap();
    assert_eq!(put.digest, Digest::sha256_of(&m));
    let got = reg.manifest_get(&r, &"v1".parse().unwrap()).await.unwrap();
    assert_eq!(got.bytes, m);
    assert_eq!(got.media_type, "application/vnd.oci.image.manifest.v1+json");
    let by_digest = Reference::Digest(put.digest.clone());
    assert_eq!(reg.manifest_get(&r, &by_digest).await.unwrap().bytes, m);
    assert!(reg.manifest_get(&repo("other"), &by_digest).await.is_err());

    // A wrong digest reference is refused.
    let wrong = Reference::Digest(Digest::sha256_of(b"x"));
    assert!(matches!(
        reg.manifest_put(&r, &wrong, None, m.clone()).await,
        Err(RegistryError::DigestInvalid { .. })
    ));

    // Two referrers with different artifact types; the subject need not exist.
    let subject = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put.digest, "size": m.len()});
    let sbom = image_manifest(
        &cfg_d,
        &[],
        json!({"artifactType": "application/sbom", "subject": subject}),
    );
    let sig = image_manifest(
        &cfg_d,
        &[],
        json!({"artifactType": "application/sig", "subject": subject}),
    );
    let sbom_put = reg
        .manifest_put(&r, &Reference::Digest(Digest::sha256_of(&sbom)), None, sbom)
        .await
        .unwrap();
    assert_eq!(sbom_put.subject.as_ref(), Some(&put.digest));
    reg.manifest_put(&r, &"sig".parse().unwrap(), None, sig)
        .await
        .unwrap();
    assert_eq!(reg.referrers(&r, &put.digest, None).await.unwrap().len(), 2);
    let only = reg
        .referrers(&r, &put.digest, Some("application/sbom"))
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].digest, sbom_put.digest);
    reg.manifest_delete(&r, &Reference::Digest(sbom_put.digest.clone()))
        .await
        .unwrap();
    assert_eq!(reg.referrers(&r, &put.digest, None).await.unwrap().len(), 1);

    // Deleting by digest removes its tags; deleting a tag leaves the manifest.
    reg.manifest_put(&r, &"v2".parse().unwrap(), None, m.clone())
        .await
        .unwrap();
    reg.manifest_delete(&r, &"v2".parse().unwrap())
        .await
        .unwrap();
    assert!(reg.manifest_get(&r, &by_digest).await.is_ok());
    assert!(matches!(
        reg.manifest_delete(&r, &"v2".parse().unwrap()).await,
        Err(RegistryError::ManifestUnknown)
    ));
    reg.manifest_delete(&r, &by_digest).await.unwrap();
    assert!(matches!(
        reg.manifest_get(&r, &"v1".parse().unwrap()).await,
        Err(RegistryError::ManifestUnknown)
    ));
    assert_eq!(reg.tags_list(&r, None, None).await.unwrap(), vec!["sig"]);
}

#[tokio::test]
async fn index_requires_children_and_size_limit_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path());
    c.max_manifest_bytes = 2000;
    let reg = Registry::open(c).await.unwrap();
    let r = repo("multi");
    let cfg_d = push(&reg, &r, b"{}").await;
    let child = image_manifest(&cfg_d, &[], json!({}));
    let child_d = Digest::sha256_of(&child);
    let index = Bytes::from(
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": child_d, "size": child.len()}]
        }))
        .unwrap(),
    );
    assert!(matches!(
        reg.manifest_put(&r, &"i".parse().unwrap(), None, index.clone()).await,
        Err(RegistryError::ManifestBlobUnknown(d)) if d == child_d
    ));
    reg.manifest_put(&r, &Reference::Digest(child_d), None, child)
        .await
        .unwrap();
    reg.manifest_put(&r, &"i".parse().unwrap(), None, index)
        .await
        .unwrap();
    let big = Bytes::from(vec![b' '; 2001]);
    assert!(matches!(
        reg.manifest_put(&r, &"big".parse().unwrap(), None, big)
            .await,
        Err(RegistryError::ManifestTooLarge { limit: 2000 })
    ));
    assert!(matches!(
        reg.manifest_put(&r, &"bad".parse().unwrap(), None, Bytes::from_static(b"{"))
            .await,
        Err(RegistryError::ManifestInvalid(_))
    ));
}

#[tokio::test]
async fn pagination_edges() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let cfg_d = push(&reg, &repo("r"), b"{}").await;
    let m = image_manifest(&cfg_d, &[], json!({}));
    for t in ["b", "a", "c", "a1"] {
        reg.manifest_put(&repo("r"), &t.parse().unwrap(), None, m.clone())
            .await
            .unwrap();
    }
    let r = repo("r");
    assert_eq!(
        reg.tags_list(&r, None, None).await.unwrap(),
        ["a", "a1", "b", "c"]
    );
    assert_eq!(reg.tags_list(&r, Some(2), None).await.unwrap(), ["a", "a1"]);
    assert_eq!(
        reg.tags_list(&r, Some(2), Some("a1")).await.unwrap(),
        ["b", "c"]
    );
    assert!(reg.tags_list(&r, Some(0), None).await.unwrap().is_empty());
    assert!(
        reg.tags_list(&r, None, Some("zzz"))
            .await
            .unwrap()
            .is_empty()
    );
    push(&reg, &repo("r/sub"), b"x").await;
    push(&reg, &repo("q"), b"x").await;
    assert_eq!(reg.catalog(None, None).await.unwrap(), ["q", "r", "r/sub"]);
    assert_eq!(reg.catalog(Some(1), Some("q")).await.unwrap(), ["r"]);
    // `r` and `r/sub` share a prefix but not tags.
    assert!(
        reg.tags_list(&repo("r/sub"), None, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_pushes_of_one_blob_and_one_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let bytes = data(2_000_000, 9);
    let d = Digest::sha256_of(&bytes);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (reg, bytes, d) = (reg.clone(), bytes.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let r = repo(&format!("r{}", i % 3));
            if i % 2 == 0 {
                reg.blob_put(&r, &d, body(&bytes, 8192 + i)).await.unwrap();
            } else {
                let up = reg.upload_start(&r).await.unwrap();
                reg.upload_append(&r, &up.id, Some(0), body(&bytes[..1_000_000], 65536))
                    .await
                    .unwrap();
                reg.upload_finish(
                    &r,
                    &up.id,
                    &d,
                    Some(1_000_000),
                    Some(body(&bytes[1_000_000..], 30_000)),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(blob_files(tmp.path()), 1);
    assert_eq!(read_blob(&reg, &repo("r1"), &d).await, bytes);

    let r = repo("r0");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let reg = reg.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let m = image_manifest(&d, &[], json!({"annotations": {"n": i.to_string()}}));
            reg.manifest_put(&repo("r0"), &"latest".parse().unwrap(), None, m)
                .await
                .unwrap()
                .digest
        }));
    }
    let mut digests = Vec::new();
    for t in tasks {
        digests.push(t.await.unwrap());
    }
    let tagged = reg
        .manifest_get(&r, &"latest".parse().unwrap())
        .await
        .unwrap()
        .digest;
    assert!(digests.contains(&tagged));
    for d in digests {
        assert!(reg.manifest_get(&r, &Reference::Digest(d)).await.is_ok());
    }
}
