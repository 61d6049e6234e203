//! Content-addressed blob files, and the streaming writer that hashes bytes as they arrive.
//!
//! A push is bounded by hashing (SHA-256) and by the kernel's copy into the page cache, both
//! CPU-bound. The request body is therefore handed over small bounded channels to two blocking
//! threads, one hashing and one writing through a large buffer, while the async side keeps
//! receiving: network receive, hashing and disk writes overlap, and each byte is hashed once.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use flotilla_protocol::{Algorithm, Digest, Hasher};
use futures::StreamExt;

use crate::registry::{BodyStream, RegistryError};

/// Batches queued between the receiving task and each of the hashing and writing threads.
const PIPE_DEPTH: usize = 8;
/// Body frames are gathered into batches of this size before they are handed over.
const BATCH: usize = 1 << 20;
/// Write buffer of the hashing thread; large writes keep syscalls off the profile.
const WRITE_BUF: usize = 1 << 20;

/// The blob files under `<data_dir>/blobs`.
#[derive(Debug, Clone)]
pub struct BlobFiles {
    root: PathBuf,
    tmp: PathBuf,
}

impl BlobFiles {
    /// Opens (creating) `<data_dir>/blobs` and `<data_dir>/tmp`, emptying `tmp` of whatever a crash
    /// left there.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        let root = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(BlobFiles { root, tmp })
    }

    /// Where the blob with digest `d` lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join(d.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    /// The size of the stored blob, if it is stored.
    pub fn size(&self, d: &Digest) -> Result<Option<u64>, RegistryError> {
        match std::fs::metadata(self.path(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the stored blob for reading.
    pub fn open_file(&self, d: &Digest) -> Result<Option<(File, u64)>, RegistryError> {
        match File::open(self.path(d)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A fresh temp path for a monolithic push.
    pub fn temp_path(&self) -> PathBuf {
        self.tmp.join(uuid::Uuid::new_v4().to_string())
    }

    /// Moves a verified, fsynced file into place as blob `d`; idempotent when the blob is already
    /// stored (the content is the same by definition). Returns the blob's size.
    pub fn install(&self, from: &Path, d: &Digest) -> Result<u64, RegistryError> {
        let to = self.path(d);
        let dir = to
            .parent()
            .ok_or_else(|| RegistryError::Corrupt("blob path has no parent".into()))?;
        std::fs::create_dir_all(dir)?;
        if let Ok(m) = std::fs::metadata(&to) {
            std::fs::remove_file(from)?;
            return Ok(m.len());
        }
        std::fs::rename(from, &to)?;
        File::open(dir)?.sync_all()?;
        Ok(std::fs::metadata(&to)?.len())
    }
}

/// Appends `body` to `file` while feeding the same bytes to `hasher`, off the async threads.
///
/// Two blocking threads share the work: one hashes, one writes (on our VMs the kernel's copy into
/// the page cache costs more than SHA-256 with SHA-NI, so doing both on one thread halved push
/// throughput). Body frames are gathered into batches of up to [`BATCH`] bytes first, so each
/// thread wakes once per batch rather than once per frame; each batch is shared, not copied twice.
///
/// Returns the file, the hasher, the number of bytes appended and, if the client's body failed
/// part-way, that failure: the bytes before it are written and hashed, so the caller can keep the
/// state and let the client resume. The file is not fsynced.
///
/// # Errors
/// [`RegistryError::Io`] if the disk fails.
pub async fn append_stream(
    file: File,
    hasher: Hasher,
    mut body: BodyStream,
) -> Result<Appended, RegistryError> {
    let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
    let (write_tx, mut write_rx) = tokio::sync::mpsc::channel::<Bytes>(PIPE_DEPTH);
    let hashing = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        while let Some(chunk) = hash_rx.blocking_recv() {
            hasher.update(&chunk);
        }
        hasher
    });
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64)> {
        let mut out = BufWriter::with_capacity(WRITE_BUF, file);
        let mut n = 0u64;
        while let Some(chunk) = write_rx.blocking_recv() {
            out.write_all(&chunk)?;
            n += chunk.len() as u64;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        Ok((file, n))
    });
    let mut body_err = None;
    let mut batch = BytesMut::new();
    let mut ended = false;
    while !ended {
        match body.next().await {
            Some(Ok(chunk)) => {
                if batch.is_empty() && chunk.len() >= BATCH {
                    // Already big: pass it on without a copy.
                    if !send_both(&hash_tx, &write_tx, chunk).await {
                        break;
                    }
                    continue;
                }
                batch.extend_from_slice(&chunk);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Some(Err(e)) => {
                body_err = Some(e);
                ended = true;
            }
            None => ended = true,
        }
        if !batch.is_empty() && !send_both(&hash_tx, &write_tx, batch.split().freeze()).await {
            break;
        }
    }
    drop((hash_tx, write_tx));
    let joined = |e: tokio::task::JoinError| {
        RegistryError::Corrupt(format!("blob pipeline thread failed: {e}"))
    };
    let hasher = hashing.await.map_err(joined)?;
    let (file, len) = writer.await.map_err(joined)??;
    Ok(Appended {
        file,
        hasher,
        len,
        body_error: body_err,
    })
}

/// Hands one batch to the hashing and the writing thread; false if either has stopped (the
/// writer's own error then explains why).
async fn send_both(
    hash_tx: &tokio::sync::mpsc::Sender<Bytes>,
    write_tx: &tokio::sync::mpsc::Sender<Bytes>,
    chunk: Bytes,
) -> bool {
    write_tx.send(chunk.clone()).await.is_ok() && hash_tx.send(chunk).await.is_ok()
}

/// What [`append_stream`] did.
#[derive(Debug)]
pub struct Appended {
    /// The file, positioned after the appended bytes.
    pub file: File,
    /// The hasher, fed every byte appended.
    pub hasher: Hasher,
    /// Bytes appended.
    pub len: u64,
    /// The client's body failed after `len` bytes.
    pub body_error: Option<std::io::Error>,
}

/// Hashes a whole file with `algorithm` (used once after a restart lost the in-memory state).
pub fn hash_file(path: &Path, algorithm: Algorithm) -> Result<(Hasher, u64), RegistryError> {
    let mut f = File::open(path)?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; WRITE_BUF];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h, n))
}
