//! A node whose disk fills (issue 5): its data directory is on a small tmpfs mounted for the
//! test (the suite runs as root, as CI does; the mount fails the test loudly otherwise). With
//! the disk filled by another file, a layer that does not fit is refused with a clear error
//! before any byte is streamed, a blob that fits is still served, nothing in the cache is
//! corrupted, and once the space is back the same pull completes with correct bytes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use flotilla_node::NodeOptions;

use super::{FleetGateway, Image, InNode, LogFile, MIB, client, log_runtime, pull, pull_blob};

/// A tmpfs mounted on a directory for the life of the value.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {bytes}-byte tmpfs on {} for the full-disk test (it needs root, as \
             in CI): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file the node still holds open must not keep the mount (and the test) alive.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes real bytes (tmpfs does not count holes) until `leave` bytes are free.
fn fill(fs: &Tmpfs, path: &Path, leave: u64) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a_u8; MIB];
    while fs.available() > leave + MIB as u64 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn a_full_disk_refuses_clearly_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("disk-full.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(disk_full(tmp.path()));
}

async fn disk_full(dir: &Path) {
    const WHAT: &str = "disk full";
    let t0 = Instant::now();
    let fs = Tmpfs::mount(&dir.join("mnt"), 64 << 20);
    let gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    let img = Image::push(&http, &gw.url(), "fleet/full", "v1", &[24 * MIB], 2).await;
    let (config_digest, config) = &img.blobs[0];
    let (layer_digest, layer) = &img.blobs[1];
    let node = InNode::start(&gw.url(), &fs.dir.join("node"), NodeOptions::default()).await;

    let filler = fs.dir.join("filler");
    fill(&fs, &filler, 6 << 20);
    println!("[{WHAT}] disk filled: {} B free", fs.available());

    // The layer does not fit: refused before the body, with an OCI error that says why.
    let url = format!("{}/v2/{}/blobs/{layer_digest}", node.url, img.repo);
    let r = http.get(&url).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    println!("[{WHAT}] GET layer with the disk full: {status} {body}");
    assert_eq!(status, 507, "GET {url} with a full disk: {body}");
    assert!(
        body.contains("UNAVAILABLE") && body.contains("disk space"),
        "the error does not say the disk is full: {body}"
    );
    // What fits is still served.
    pull_blob(
        &http,
        &node.url,
        &img.repo,
        config_digest,
        config.len() as u64,
    )
    .await;
    // The node is healthy otherwise.
    let r = http.get(format!("{}/v2/", node.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    std::fs::remove_file(&filler).unwrap();
    println!("[{WHAT}] space back: {} B free", fs.available());
    let took = pull(&http, &node.url, &img).await;
    println!(
        "[{WHAT}] after the space came back the image ({} B layer) pulled, verified, in {took:?}",
        layer.len()
    );
    node.stop().await;
    println!("[{WHAT}] total {:?}", t0.elapsed());
}
