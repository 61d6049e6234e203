//! Tests of the seed on real data directories: identity persistence, tables after pushes and on
//! demand (single flight), the piece source, counters, and a 1 GiB timing run (ignored; run it
//! in release: `cargo test --release -p flotilla-gateway --lib bench_table_1gib -- --ignored
//! --nocapture`).

use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_node::ports::SourceError;
use flotilla_protocol::piece::{PieceTable, PieceTableBuilder, piece_size_for};
use flotilla_protocol::{Algorithm, RepoName};
use futures::StreamExt;

use super::*;
use crate::registry::{BodyStream, Registry, StorageConfig};
use crate::storage::meta::SledMeta;

fn cfg(dir: &Path) -> StorageConfig {
    StorageConfig {
        data_dir: dir.to_path_buf(),
        max_manifest_bytes: 4 << 20,
        upload_ttl: Duration::from_secs(3600),
        limits: crate::registry::Limits::default(),
        gc: crate::registry::GcConfig::default(),
        upload_bytes_per_s: None,
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

fn body(data: &[u8], chunk: usize) -> BodyStream {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

/// The table of `bytes`, built independently of the seed.
fn table_of(bytes: &[u8]) -> PieceTable {
    let mut b = PieceTableBuilder::new(piece_size_for(bytes.len() as u64)).unwrap();
    for c in bytes.chunks(777_777) {
        b.update(c);
    }
    b.finish(Digest::sha256_of(bytes)).unwrap()
}

async fn wait_computed(seed: &Seed, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while seed.stats().tables_computed < n {
        assert!(
            Instant::now() < deadline,
            "tables not computed: {:?}",
            seed.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A seed over `dir` whose blobs were installed without telling it (as if pushed before it
/// existed): nothing is queued, so every table is computed on demand.
struct Bare {
    seed: Seed,
    blobs: BlobFiles,
    meta: Arc<dyn MetaStore>,
    dir: tempfile::TempDir,
}

impl Bare {
    fn new() -> Bare {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(SledMeta::open(&dir.path().join("meta")).unwrap());
        let blobs = BlobFiles::open(dir.path()).unwrap();
        let seed = Seed::start(
            Keypair::generate_ed25519(),
            blobs.clone(),
            meta.clone(),
            None,
        );
        Bare {
            seed,
            blobs,
            meta,
            dir,
        }
    }

    fn install(&self, bytes: &[u8]) -> Digest {
        let d = Digest::sha256_of(bytes);
        let tmp = self.dir.path().join("incoming");
        std::fs::write(&tmp, bytes).unwrap();
        self.blobs.install(&tmp, &d).unwrap();
        d
    }

    /// Another seed on the same storage, with an empty cache and the given identity.
    fn sibling(&self, keypair: Keypair) -> Seed {
        Seed::start(keypair, self.blobs.clone(), self.meta.clone(), None)
    }
}

#[tokio::test]
async fn identity_persists_across_reopen_and_a_corrupt_key_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let first = {
        let reg = Registry::open(cfg(tmp.path())).await.unwrap();
        reg.seed().peer_id()
    };
    let key = tmp.path().join("identity.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    assert_eq!(reg.seed().peer_id(), first);
    assert_eq!(reg.seed().keypair().public().to_peer_id(), first);
    drop(reg);

    std::fs::write(&key, b"not a key").unwrap();
    let err = Registry::open(cfg(tmp.path())).await.unwrap_err();
    assert!(matches!(err, RegistryError::Identity(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("identity.key") && text.contains("not a libp2p keypair"),
        "{text}"
    );
}

#[tokio::test]
async fn tables_are_computed_after_pushes_and_match_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let seed = reg.seed().clone();
    let mut landed = seed.subscribe_new_blobs();
    let r = repo("a/b");

    // Monolithic: three pieces (4 MiB, 4 MiB, the rest).
    let big = data((8 << 20) + 1000, 1);
    let d_big = Digest::sha256_of(&big);
    reg.blob_put(&r, &d_big, body(&big, 65536)).await.unwrap();
    // Chunked upload session.
    let small = data(12345, 2);
    let d_small = Digest::sha256_of(&small);
    let up = reg.upload_start(&r).await.unwrap();
    reg.upload_append(&r, &up.id, None, body(&small[..5000], 999))
        .await
        .unwrap();
    reg.upload_finish(&r, &up.id, &d_small, None, Some(body(&small[5000..], 999)))
        .await
        .unwrap();

    assert_eq!(landed.recv().await.unwrap(), d_big);
    assert_eq!(landed.recv().await.unwrap(), d_small);
    wait_computed(&seed, 2).await;

    for (bytes, d) in [(&big, &d_big), (&small, &d_small)] {
        let stored = seed.core().meta.piece_table(d).unwrap().expect("stored");
        let signed = SignedPieceTable::decode(&stored).unwrap();
        let table = signed.verify(Some(&seed.peer_id())).unwrap();
        assert_eq!(*table, table_of(bytes));
        assert_eq!(seed.piece_table_bytes(d).await.unwrap().unwrap(), stored);
    }
    assert_eq!(
        seed.piece_table(&d_big)
            .await
            .unwrap()
            .unwrap()
            .table
            .piece_count(),
        3
    );
    // Served from what was stored: nothing computed again.
    assert_eq!(seed.stats().tables_computed, 2);
    assert_eq!(seed.held_digests().await.unwrap(), {
        let mut v = vec![d_big, d_small];
        v.sort();
        v
    });
    assert!(
        seed.piece_table(&Digest::sha256_of(b"absent"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_tables_are_computed_once_for_concurrent_askers() {
    let bare = Bare::new();
    let bytes = data((4 << 20) * 2 + 17, 3);
    let d = bare.install(&bytes);
    let askers: Vec<_> = (0..16)
        .map(|_| {
            let (seed, d) = (bare.seed.clone(), d.clone());
            tokio::spawn(async move { seed.piece_table_bytes(&d).await.unwrap().unwrap() })
        })
        .collect();
    let mut answers = Vec::new();
    for a in askers {
        answers.push(a.await.unwrap());
    }
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(bare.seed.stats().tables_computed, 1);
    let signed = SignedPieceTable::decode(&answers[0]).unwrap();
    assert_eq!(
        *signed.verify(Some(&bare.seed.peer_id())).unwrap(),
        table_of(&bytes)
    );
    assert!(lock(&bare.seed.core().flights).is_empty());

    // A fresh cache finds the stored table; a new identity does not trust it and re-signs.
    let same = bare.sibling(bare.seed.keypair().clone());
    assert_eq!(
        same.piece_table_bytes(&d).await.unwrap().unwrap(),
        answers[0]
    );
    assert_eq!(same.stats().tables_computed, 0);
    let other = bare.sibling(Keypair::generate_ed25519());
    let resigned = other.piece_table(&d).await.unwrap().unwrap();
    assert_eq!(other.stats().tables_computed, 1);
    assert_eq!(resigned.signer_peer_id(), Some(other.peer_id()));
    assert_eq!(resigned.table, signed.table);

    // A garbled stored table is recomputed, not served.
    bare.meta.put_piece_table(&d, b"garbage").unwrap();
    let fresh = bare.sibling(bare.seed.keypair().clone());
    assert_eq!(
        fresh.piece_table_bytes(&d).await.unwrap().unwrap(),
        answers[0]
    );
    assert_eq!(fresh.stats().tables_computed, 1);
}

#[tokio::test]
async fn a_full_queue_skips_without_blocking_and_on_demand_covers_it() {
    let bare = Bare::new();
    let seed = Seed::with_queue(
        bare.seed.keypair().clone(),
        bare.blobs.clone(),
        bare.meta.clone(),
        None,
        1,
    );
    let digests: Vec<Digest> = (0..5u8)
        .map(|i| bare.install(&data(1000 + usize::from(i), i)))
        .collect();
    // The worker cannot run in between (one thread, no await): all but the first are dropped.
    for d in &digests {
        seed.blob_landed(d);
    }
    wait_computed(&seed, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(seed.stats().tables_computed, 1);
    for d in &digests {
        assert!(seed.piece_table(d).await.unwrap().is_some());
    }
    assert_eq!(seed.stats().tables_computed, 5);
}

#[tokio::test]
async fn a_blob_is_unsent_from_its_push_until_any_of_it_leaves() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    let seed = reg.seed().clone();
    let r = repo("a/b");
    let (one, two, three) = (data(9000, 1), data(5000 << 10, 2), data(7000, 3));
    let (d1, d2, d3) = (
        Digest::sha256_of(&one),
        Digest::sha256_of(&two),
        Digest::sha256_of(&three),
    );
    for (bytes, d) in [(&one, &d1), (&two, &d2), (&three, &d3)] {
        reg.blob_put(&r, d, body(bytes, 4096)).await.unwrap();
        assert!(seed.unsent(d), "a blob pushed anew has not been sent");
    }
    // A client's GET, a peer's piece: either may give a node bytes of it.
    reg.blob_open(&r, &d1).await.unwrap();
    assert!(!seed.unsent(&d1));
    seed.source().piece_file(&d2, 1).await.unwrap();
    assert!(!seed.unsent(&d2));
    assert!(seed.unsent(&d3), "the others are unaffected");
    // Pushed again after being sent: still sent (nodes may hold it).
    reg.blob_put(&r, &d1, body(&one, 4096)).await.unwrap();
    assert!(!seed.unsent(&d1));
    // A restarted gateway cannot know what left before: nothing is unsent.
    drop((seed, reg));
    let reg = Registry::open(cfg(tmp.path())).await.unwrap();
    assert!(!reg.seed().unsent(&d3));
}

#[tokio::test]
async fn the_gateway_source_serves_pieces_that_verify() {
    let bare = Bare::new();
    let bytes = data((4 << 20) * 3 + 5, 4);
    let d = bare.install(&bytes);
    let source = bare.seed.source();

    let held = source.held(&d).await.unwrap().expect("held");
    let table = held
        .table
        .verify(Some(&bare.seed.peer_id()))
        .unwrap()
        .clone();
    assert_eq!(table, table_of(&bytes));
    assert!(held.have.borrow().is_complete());
    assert_eq!(held.have.borrow().len(), 4);
    // A complete blob never changes, and its channel does not close under the receiver.
    let mut have = held.have.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), have.changed())
            .await
            .is_err()
    );

    for index in 0..table.piece_count() {
        let p = source.piece_file(&d, index).await.unwrap();
        let mut buf = vec![0u8; p.len as usize];
        p.file.read_exact_at(&mut buf, p.offset).unwrap();
        table.verify_piece(index, &buf).unwrap();
        source.served(&d, u64::from(p.len));
    }
    assert_eq!(bare.seed.stats().swarm_bytes, bytes.len() as u64);
    // The file is opened once and shared.
    let a = source.piece_file(&d, 0).await.unwrap();
    let b = source.piece_file(&d, 1).await.unwrap();
    assert!(Arc::ptr_eq(&a.file, &b.file));

    assert!(matches!(
        source.piece_file(&d, 4).await,
        Err(SourceError::NotHeld(_))
    ));
    let absent = Digest::sha256_of(b"nope");
    assert!(source.held(&absent).await.unwrap().is_none());
    assert!(matches!(
        source.piece_file(&absent, 0).await,
        Err(SourceError::NotHeld(_))
    ));
}

#[tokio::test]
async fn empty_blobs_have_empty_tables() {
    let bare = Bare::new();
    let d = bare.install(b"");
    let held = bare.seed.source().held(&d).await.unwrap().unwrap();
    assert_eq!(held.table.table.piece_count(), 0);
    assert_eq!(held.table.table.size, 0);
    assert!(held.have.borrow().is_empty());
}

#[tokio::test]
async fn held_digests_lists_blob_files_and_skips_strays() {
    let bare = Bare::new();
    let a = bare.install(b"one");
    let b = bare.install(b"two");
    let root = bare.dir.path().join("blobs").join("sha256");
    std::fs::create_dir_all(root.join("zz")).unwrap();
    std::fs::write(root.join("zz").join("not-a-digest"), b"x").unwrap();
    // A valid digest in the wrong shard is not a blob file.
    let c = Digest::sha256_of(b"three");
    std::fs::write(root.join("zz").join(c.hex()), b"three").unwrap();
    std::fs::write(root.join("stray-file"), b"x").unwrap();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(bare.seed.held_digests().await.unwrap(), want);
}

#[tokio::test]
async fn swarm_addrs_get_the_peer_id() {
    let bare = Bare::new();
    assert!(bare.seed.swarm_addrs().is_empty());
    let id = bare.seed.peer_id();
    bare.seed.set_swarm_addrs(vec![
        "/ip4/10.0.0.1/udp/4001/quic-v1".into(),
        format!("/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{id}"),
    ]);
    assert_eq!(
        bare.seed.swarm_addrs(),
        [
            format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{id}"),
            format!("/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{id}"),
        ]
    );
}

/// Times computing the table of a 1 GiB blob (page cache warm, then as the worker runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing run: 1 GiB on disk; run in release with --ignored --nocapture"]
async fn bench_table_1gib() {
    use std::io::Write as _;
    let bare = Bare::new();
    let tmp = bare.dir.path().join("incoming");
    let mut f = std::fs::File::create(&tmp).unwrap();
    let mut chunk = data(1 << 20, 9);
    let mut h = flotilla_protocol::Hasher::new(Algorithm::Sha256);
    for i in 0..1024u32 {
        chunk[..4].copy_from_slice(&i.to_be_bytes());
        h.update(&chunk);
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let d = h.finish();
    bare.blobs.install(&tmp, &d).unwrap();
    let path = bare.blobs.path(&d);
    let keypair = bare.seed.keypair().clone();
    for round in 0..3 {
        let t = Instant::now();
        let (signed, encoded) = table::compute(&path, &d, &keypair).unwrap().unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: 1 GiB table ({} pieces of {} MiB, {} B signed) in {:.3} s = {:.2} GB/s",
            signed.table.piece_count(),
            signed.table.piece_size >> 20,
            encoded.len(),
            s,
            (1u64 << 30) as f64 / s / 1e9
        );
    }
    let t = Instant::now();
    bare.seed.piece_table(&d).await.unwrap().unwrap();
    println!(
        "through the seed (flight, blocking pool, sled store): {:.3} s",
        t.elapsed().as_secs_f64()
    );
}
