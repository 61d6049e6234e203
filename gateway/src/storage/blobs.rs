//! Content-addressed blob files, and the streaming writer that hashes bytes as they arrive.
//!
//! A push is bounded by hashing (SHA-256) and by the kernel's copy into the page cache, both
//! CPU-bound. The request body is therefore handed over small bounded channels to two blocking
//! threads, one hashing and one writing 1 MiB batches, while the async side keeps receiving:
//! network receive, hashing and disk writes overlap, and each byte is hashed once. A third thread
//! writes back to disk what is already written, so the fsync before a blob is installed does not
//! add a pass over the whole blob at the end.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use flotilla_protocol::{Algorithm, Digest, Hasher};
use futures::StreamExt;

use crate::registry::{BodyStream, RegistryError};

/// Batches queued between the receiving task and each of the hashing and writing threads.
const PIPE_DEPTH: usize = 8;
/// Body frames are gathered into batches of about this size before they are handed over.
const BATCH: usize = 1 << 20;
/// At most this many frames in one batch (one `writev`; the kernel takes at most 1024).
const MAX_FRAMES: usize = 512;
/// Frames smaller than this are copied together rather than referenced one by one.
const SMALL: usize = 16 << 10;
/// Read buffer for rehashing an upload's file after a restart.
const READ_BUF: usize = 1 << 20;
/// Bytes written between two background writebacks (see [`append_stream`]).
const WRITEBACK_EVERY: u64 = 32 << 20;

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
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            std::fs::create_dir_all(root.join(algorithm.name()))?;
        }
        // Made durable once here, so that `install` only has to sync the shard directories.
        File::open(&root)?.sync_all()?;
        File::open(data_dir)?.sync_all()?;
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

    /// `<data_dir>/blobs`.
    pub fn root(&self) -> &Path {
        &self.root
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
        if !dir.is_dir() {
            std::fs::create_dir_all(dir)?;
            // The new shard directory's own entry must be durable too, or a crash could lose it
            // together with every blob renamed into it.
            if let Some(algo_dir) = dir.parent() {
                File::open(algo_dir)?.sync_all()?;
            }
        }
        if let Ok(m) = std::fs::metadata(&to) {
            std::fs::remove_file(from)?;
            // Another push may have renamed it in a moment ago and not yet fsynced the directory;
            // our caller is about to link it, so make sure the entry is durable first.
            File::open(dir)?.sync_all()?;
            return Ok(m.len());
        }
        // Renaming over a blob a concurrent push installed meanwhile is harmless: same content.
        std::fs::rename(from, &to)?;
        File::open(dir)?.sync_all()?;
        Ok(std::fs::metadata(&to)?.len())
    }

    /// Every stored blob, sorted by digest (files that are not named as a blob are ignored).
    ///
    /// # Errors
    /// [`RegistryError::Io`] if the blob directories cannot be read.
    pub fn list(&self) -> Result<Vec<Digest>, RegistryError> {
        let mut out = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            for shard in read_dir_if_any(&self.root.join(algorithm.name()))? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    continue;
                }
                for file in read_dir_if_any(&shard.path())? {
                    let file = file?;
                    let Some(name) = file.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    let Ok(d) = format!("{}:{name}", algorithm.name()).parse::<Digest>() else {
                        continue;
                    };
                    if self.path(&d) == file.path() && file.file_type()?.is_file() {
                        out.push(d);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The size and last modification (its install, or its upload's last write) of blob `d`.
    pub fn stat(&self, d: &Digest) -> Result<Option<(u64, std::time::SystemTime)>, RegistryError> {
        match std::fs::metadata(self.path(d)) {
            Ok(m) => Ok(Some((m.len(), m.modified()?))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes blob `d`'s file durably (its directory is synced); whether it was there.
    pub fn remove(&self, d: &Digest) -> Result<bool, RegistryError> {
        let path = self.path(d);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    File::open(dir)?.sync_all()?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// The entries of `dir`, or none if it does not exist.
fn read_dir_if_any(
    dir: &Path,
) -> Result<impl Iterator<Item = std::io::Result<std::fs::DirEntry>>, RegistryError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Some(rd).into_iter().flatten()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None.into_iter().flatten()),
        Err(e) => Err(e.into()),
    }
}

/// Appends `body` to `file` while feeding the same bytes to `hasher`, off the async threads.
///
/// Two blocking threads share the work: one hashes, one writes (on our VMs the kernel's copy into
/// the page cache costs more than SHA-256 with SHA-NI, so doing both on one thread halved push
/// throughput). Body frames are gathered into batches of about [`BATCH`] bytes first, so each
/// thread wakes once per batch rather than once per frame. Frames are not copied into a batch,
/// only referenced (the writer hands them to one `writev`); only frames smaller than [`SMALL`] are
/// coalesced, so a body of tiny frames does not become a syscall per frame.
///
/// Returns the file, the hasher, the number of bytes appended and, if the client's body failed
/// part-way, that failure: the bytes before it are written and hashed, so the caller can keep the
/// state and let the client resume. The file is not fsynced (but written back early, see below).
///
/// # Errors
/// [`RegistryError::Io`] if the disk fails.
pub async fn append_stream(
    file: File,
    hasher: Hasher,
    mut body: BodyStream,
) -> Result<Appended, RegistryError> {
    let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Batch>(PIPE_DEPTH);
    let (write_tx, mut write_rx) = tokio::sync::mpsc::channel::<Batch>(PIPE_DEPTH);
    let hashing = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        while let Some(batch) = hash_rx.blocking_recv() {
            for frame in batch.iter() {
                hasher.update(frame);
            }
        }
        hasher
    });
    // Early writeback: the caller's fsync at the end would otherwise flush the whole blob while
    // nothing else happens. A third thread asks the kernel to write back what is already written
    // while more arrives, so that fsync finds little left.
    let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let sync_file = file.try_clone()?;
    let syncer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        while sync_rx.recv().is_ok() {
            sync_file.sync_data()?;
        }
        Ok(())
    });
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64)> {
        let mut file = file;
        let mut n = 0u64;
        let mut unsynced = 0u64;
        while let Some(batch) = write_rx.blocking_recv() {
            let len = write_batch(&mut file, &batch)?;
            n += len;
            unsynced += len;
            if unsynced >= WRITEBACK_EVERY {
                // Never waits: if a writeback is still running, the next one covers these bytes.
                if sync_tx.try_send(()).is_ok() {
                    unsynced = 0;
                }
            }
        }
        drop(sync_tx);
        Ok((file, n))
    });
    let mut body_err = None;
    let mut frames: Vec<Bytes> = Vec::new();
    let mut frames_len = 0usize;
    let mut small = BytesMut::new();
    let mut ended = false;
    while !ended {
        match body.next().await {
            Some(Ok(frame)) if frame.len() < SMALL => {
                small.extend_from_slice(&frame);
                if small.len() >= SMALL {
                    frames_len += small.len();
                    frames.push(small.split().freeze());
                }
            }
            Some(Ok(frame)) => {
                if !small.is_empty() {
                    frames_len += small.len();
                    frames.push(small.split().freeze());
                }
                frames_len += frame.len();
                frames.push(frame);
            }
            Some(Err(e)) => {
                body_err = Some(e);
                ended = true;
            }
            None => ended = true,
        }
        if ended && !small.is_empty() {
            frames_len += small.len();
            frames.push(small.split().freeze());
        }
        let full = frames_len >= BATCH || frames.len() >= MAX_FRAMES;
        if (full || ended) && !frames.is_empty() {
            let batch: Batch = std::mem::take(&mut frames).into();
            frames_len = 0;
            if !send_both(&hash_tx, &write_tx, batch).await {
                break;
            }
        }
    }
    drop((hash_tx, write_tx));
    let joined = |e: tokio::task::JoinError| {
        RegistryError::Corrupt(format!("blob pipeline thread failed: {e}"))
    };
    let hasher = hashing.await.map_err(joined)?;
    let (file, len) = writer.await.map_err(joined)??;
    // A failed background fsync must fail the push: the kernel may not report it again.
    syncer.await.map_err(joined)??;
    Ok(Appended {
        file,
        hasher,
        len,
        body_error: body_err,
    })
}

/// Frames handed to both pipeline threads at once; shared, never copied.
type Batch = std::sync::Arc<[Bytes]>;

/// Writes every frame of `batch` with as few `writev` calls as the kernel allows.
fn write_batch(file: &mut File, batch: &[Bytes]) -> std::io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    let mut n = 0u64;
    while !rest.is_empty() {
        let k = file.write_vectored(rest)?;
        if k == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        n += k as u64;
        IoSlice::advance_slices(&mut rest, k);
    }
    Ok(n)
}

/// Hands one batch to the hashing and the writing thread; false if either has stopped (the
/// writer's own error then explains why).
async fn send_both(
    hash_tx: &tokio::sync::mpsc::Sender<Batch>,
    write_tx: &tokio::sync::mpsc::Sender<Batch>,
    batch: Batch,
) -> bool {
    write_tx.send(batch.clone()).await.is_ok() && hash_tx.send(batch).await.is_ok()
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
    let mut buf = vec![0u8; READ_BUF];
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
