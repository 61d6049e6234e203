//! The registry service: what the HTTP API asks of storage, in the API's own terms.
//!
//! [`Registry`] joins the blob files ([`crate::storage::blobs`]), the upload sessions
//! ([`crate::storage::uploads`]) and the metadata store ([`crate::storage::meta`]) and enforces the
//! rules of the distribution spec that do not depend on HTTP: a blob is visible in a repository only
//! when linked to it, a manifest is accepted only when everything it references is present, an
//! upload continues only from where it stands. Blocking work (disk, fsync, database flushes) runs on
//! the blocking pool so request tasks never stall the async threads.
//!
//! It also owns the gateway's [`Seed`] (identity, piece tables, blob files for the swarm) and tells
//! it about every blob that lands, after the blob is durable and linked.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use bytes::Bytes;
use flotilla_protocol::manifest::{Descriptor, ManifestError, parse_manifest};
use flotilla_protocol::tagrecord::{SignedTagRecord, TagRecord, TagTarget};
use flotilla_protocol::{Algorithm, Digest, Hasher, Reference, RepoName, Tag};
use futures::StreamExt;

use crate::seed::Seed;
use crate::storage::blobs::{self, BlobFiles};
use crate::storage::meta::{ManifestRecord, MetaStore, SledMeta, UploadRecord};
use crate::storage::uploads::{UploadFiles, UploadState};

/// A request body as the registry consumes it.
pub type BodyStream = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// The storage engine's configuration.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory holding blobs, uploads and the database.
    pub data_dir: PathBuf,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// How long an upload session may stay idle before it and its data are removed.
    pub upload_ttl: Duration,
    /// Bounds on what one client can make the storage hold.
    pub limits: Limits,
    /// Garbage collection on its own (see [`Registry::collect_garbage`]).
    pub gc: GcConfig,
    /// Blob bytes the gateway may upload per second, HTTP bodies and swarm pieces together
    /// (`None`: no cap); see [`Seed::egress_pace`].
    pub upload_bytes_per_s: Option<u64>,
}

/// Bounds that keep one client (or a stalled one) from holding the gateway's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest blob accepted; a push that goes past it gets `413 SIZE_INVALID`.
    pub max_blob_bytes: u64,
    /// Most upload sessions open at once (all repositories); more get `429 TOOMANYREQUESTS`.
    pub max_uploads: usize,
    /// Longest pause between two pieces of a request body; a body that stalls longer is cut off
    /// (what arrived is kept, so the upload can resume).
    pub body_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blob_bytes: 1 << 40,
            max_uploads: 1024,
            body_idle: Duration::from_secs(60),
        }
    }
}

/// Where an upload session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// The session id (a UUID).
    pub id: String,
    /// Bytes received so far.
    pub offset: u64,
}

/// A manifest as stored.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its exact bytes.
    pub bytes: Bytes,
}

/// The outcome of a manifest PUT.
#[derive(Debug, Clone)]
pub struct ManifestPut {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its subject, for the `OCI-Subject` header.
    pub subject: Option<Digest>,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Pushed by tag: the manifest the tag named just before (`None`: the tag is new). Read in
    /// the same storage task as the write, so only a concurrent push of the same tag can make
    /// it stale. Always `None` for pushes by digest.
    pub previous: Option<Digest>,
}

/// The registry service (cheap to clone).
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: StorageConfig,
    blobs: BlobFiles,
    uploads: UploadFiles,
    meta: Arc<dyn MetaStore>,
    seed: Seed,
    /// Fleet members the gateway revoked (`crate::fleet::Revocations`).
    revocations: Arc<crate::fleet::Revocations>,
    /// Who joined the fleet (`crate::fleet::Members`).
    members: Arc<crate::fleet::Members>,
    /// Held shared by whatever links a blob or makes a manifest reference one, exclusively by
    /// garbage collection's sweep (see `gc`).
    gc_lock: std::sync::RwLock<()>,
    /// When blobs were last used through the API (garbage collection spares them).
    touched: gc::Touched,
    /// What collections removed since start.
    gc_totals: std::sync::Mutex<GcTotals>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the future `work` builds as a task of its own, so that it runs to completion even if the
/// caller's future is dropped (the client went away, a timeout fired). Work holding an upload
/// session's lock runs this way: otherwise the lock would be released while the hashing and
/// writing threads of a dropped append still run, and the next request on the session would see
/// its file grow under it.
///
/// `work` gets a signal that fires when the caller is dropped; [`abort_on`] turns it into the end
/// of the request body, so an abandoned request stops at once (keeping what it wrote, consistently
/// hashed) instead of holding the session while its body stalls.
async fn detached<T, F>(work: impl FnOnce(oneshot::Receiver<()>) -> F) -> Result<T, RegistryError>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, RegistryError>> + Send + 'static,
{
    let (dropped_tx, dropped_rx) = oneshot::channel();
    let result = tokio::spawn(work(dropped_rx)).await;
    drop(dropped_tx);
    result.map_err(|e| RegistryError::Corrupt(format!("storage task failed: {e}")))?
}

/// `body`, cut short by an error once `dropped` fires (see [`detached`]) or when no bytes come
/// for `idle`: a stalled client must not hold an upload session's lock forever.
fn abort_on(body: BodyStream, dropped: oneshot::Receiver<()>, idle: Duration) -> BodyStream {
    futures::stream::unfold(Some((body, dropped)), move |state| async move {
        let (mut body, mut dropped) = state?;
        tokio::select! {
            biased;
            _ = &mut dropped => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "request abandoned",
                )),
                None,
            )),
            item = tokio::time::timeout(idle, body.next()) => match item {
                Ok(item) => {
                    let item = item?;
                    Some((item, Some((body, dropped))))
                }
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no request body bytes for {} s", idle.as_secs()),
                    )),
                    None,
                )),
            }
        }
    })
    .boxed()
}

/// `body`, cut short before any chunk that would take the blob past `room` more bytes. The
/// error's kind ([`std::io::ErrorKind::FileTooLarge`]) tells [`body_failure`] what happened.
fn capped(body: BodyStream, room: u64) -> BodyStream {
    futures::stream::unfold(Some((body, room)), |state| async move {
        let (mut body, room) = state?;
        match body.next().await? {
            Ok(chunk) if chunk.len() as u64 > room => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::FileTooLarge,
                    "blob size limit reached",
                )),
                None,
            )),
            Ok(chunk) => {
                let left = room - chunk.len() as u64;
                Some((Ok(chunk), Some((body, left))))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// The error for a body that ended in `e`.
fn body_failure(e: std::io::Error, limits: &Limits) -> RegistryError {
    if e.kind() == std::io::ErrorKind::FileTooLarge {
        RegistryError::BlobTooLarge {
            limit: limits.max_blob_bytes,
        }
    } else {
        RegistryError::BodyRead(e)
    }
}

/// Runs blocking storage work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Corrupt(format!("storage task failed: {e}")))?
}

impl Registry {
    /// Opens the storage in `cfg.data_dir`, cleans what a crash left behind, loads (or creates)
    /// the gateway's identity, and starts the tasks that remove idle upload sessions and compute
    /// piece tables.
    ///
    /// # Errors
    /// [`RegistryError::Io`] or [`RegistryError::Db`] if the directory or database cannot be opened,
    /// [`RegistryError::Identity`] if `identity.key` cannot be read, decoded or created.
    pub async fn open(cfg: StorageConfig) -> Result<Registry, RegistryError> {
        let dir = cfg.data_dir.clone();
        let (blobs, uploads, meta, keypair, revocations, members) = blocking(move || {
            std::fs::create_dir_all(&dir)?;
            // The database first: its lock file makes a second gateway on the same directory fail
            // here, before it could empty `tmp/` under the first one's pushes.
            let meta = SledMeta::open(&dir.join("meta"))?;
            let blobs = BlobFiles::open(&dir)?;
            let uploads = UploadFiles::open(&dir)?;
            let keypair = flotilla_node::identity::load_or_create(&dir)?;
            let revocations = crate::fleet::Revocations::open(&dir)
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            let members = crate::fleet::Members::open(&dir);
            Ok((blobs, uploads, meta, keypair, revocations, members))
        })
        .await?;
        let meta: Arc<dyn MetaStore> = Arc::new(meta);
        let egress = cfg
            .upload_bytes_per_s
            .map(|rate| Arc::new(flotilla_node::transfer::Pace::new(rate)));
        let seed = Seed::start(keypair, blobs.clone(), meta.clone(), egress);
        let reg = Registry {
            inner: Arc::new(Inner {
                cfg,
                blobs,
                uploads,
                meta,
                seed,
                revocations: Arc::new(revocations),
                members: Arc::new(members),
                gc_lock: std::sync::RwLock::new(()),
                touched: gc::Touched::default(),
                gc_totals: std::sync::Mutex::default(),
            }),
        };
        let r = reg.clone();
        blocking(move || {
            r.inner.reconcile_uploads()?;
            r.inner.reap_idle_uploads()
        })
        .await?;
        spawn_reaper(Arc::downgrade(&reg.inner), reg.inner.cfg.upload_ttl);
        tokio::spawn(crate::fleet::members_flusher(Arc::downgrade(
            &reg.inner.members,
        )));
        if let Some(every) = reg.inner.cfg.gc.interval {
            gc::spawn_collector(Arc::downgrade(&reg.inner), every, reg.inner.cfg.gc.min_age);
        }
        Ok(reg)
    }

    /// The gateway's seed service: identity, piece tables, and blob files for the swarm.
    pub fn seed(&self) -> &Seed {
        &self.inner.seed
    }

    /// The fleet members this gateway revoked.
    pub fn revocations(&self) -> &Arc<crate::fleet::Revocations> {
        &self.inner.revocations
    }

    /// The fleet members that joined through this gateway.
    pub fn members(&self) -> &Arc<crate::fleet::Members> {
        &self.inner.members
    }

    // ---- blobs ----

    /// Size of blob `d` in `repo`.
    pub async fn blob_stat(&self, repo: &RepoName, d: &Digest) -> Result<u64, RegistryError> {
        let size = self
            .inner
            .meta
            .blob_link(repo, d)?
            .ok_or(RegistryError::BlobUnknown)?;
        // A client that finds a blob here may name it in a manifest soon.
        self.inner.touched.touch(d);
        Ok(size)
    }

    /// Opens blob `d` of `repo` for reading; returns the file and its size.
    pub async fn blob_open(
        &self,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<(std::fs::File, u64), RegistryError> {
        let (inner, repo2, d2) = (self.inner.clone(), repo.clone(), d.clone());
        let opened = blocking(move || {
            // Shared, so a collection cannot delete the file between the link and the open.
            let _reading = inner.gc_shared();
            if inner.meta.blob_link(&repo2, &d2)?.is_none() {
                return Err(RegistryError::BlobUnknown);
            }
            inner.touched.touch(&d2);
            inner.blobs.open_file(&d2)
        });
        match opened.await? {
            Some(f) => {
                // Whoever opens a blob here is about to be sent it.
                self.inner.seed.note_sent(d);
                Ok(f)
            }
            None => {
                tracing::error!(digest = %d, "blob linked but its file is missing");
                Err(RegistryError::BlobUnknown)
            }
        }
    }

    /// Unlinks blob `d` from `repo` (the file stays; see the storage docs).
    pub async fn blob_delete(&self, repo: &RepoName, d: &Digest) -> Result<(), RegistryError> {
        let (inner, repo, d) = (self.inner.clone(), repo.clone(), d.clone());
        if blocking(move || inner.meta.unlink_blob(&repo, &d)).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown)
        }
    }

    /// Mounts blob `d` into `repo` from `from`, or (with no `from`) from wherever it is stored.
    /// `Ok(None)` means it cannot be mounted and the client should upload it.
    pub async fn blob_mount(
        &self,
        repo: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
    ) -> Result<Option<u64>, RegistryError> {
        let (inner, repo, d, from) = (self.inner.clone(), repo.clone(), d.clone(), from.cloned());
        blocking(move || {
            let _linking = inner.gc_shared();
            inner.touched.touch(&d);
            if let Some(size) = inner.meta.blob_link(&repo, &d)? {
                return Ok(Some(size));
            }
            let size = match &from {
                Some(from) => inner.meta.blob_link(from, &d)?,
                None => inner.blobs.size(&d)?,
            };
            if let Some(size) = size {
                inner.meta.link_blob(&repo, &d, size)?;
            }
            Ok(size)
        })
        .await
    }

    /// A monolithic upload: `body` is the whole blob, which must hash to `d`.
    pub async fn blob_put(
        &self,
        repo: &RepoName,
        d: &Digest,
        body: BodyStream,
    ) -> Result<u64, RegistryError> {
        let (this, repo, d) = (self.clone(), repo.clone(), d.clone());
        // Detached, so the temp file is removed even if the client goes away mid-body.
        detached(|dropped| async move {
            let limits = &this.inner.cfg.limits;
            let body = capped(
                abort_on(body, dropped, limits.body_idle),
                limits.max_blob_bytes,
            );
            let tmp = this.inner.blobs.temp_path();
            let file = std::fs::File::create_new(&tmp)?;
            let result = this.ingest(tmp.clone(), file, &repo, &d, body).await;
            if result.is_err()
                && let Err(e) = std::fs::remove_file(&tmp)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot remove temp file");
            }
            result
        })
        .await
    }

    async fn ingest(
        &self,
        tmp: PathBuf,
        file: std::fs::File,
        repo: &RepoName,
        d: &Digest,
        body: BodyStream,
    ) -> Result<u64, RegistryError> {
        let done = blobs::append_stream(file, Hasher::new(d.algorithm()), body).await?;
        if let Some(e) = done.body_error {
            return Err(body_failure(e, &self.inner.cfg.limits));
        }
        let actual = done.hasher.finish();
        if &actual != d {
            return Err(RegistryError::DigestInvalid {
                expected: d.clone(),
                actual,
            });
        }
        let (inner, repo, d2) = (self.inner.clone(), repo.clone(), d.clone());
        let file = done.file;
        let size = blocking(move || {
            file.sync_all()?;
            let _linking = inner.gc_shared();
            inner.touched.touch(&d2);
            inner.note_unsent(&d2)?;
            let size = inner.blobs.install(&tmp, &d2)?;
            inner.meta.link_blob(&repo, &d2, size)?;
            Ok(size)
        })
        .await?;
        self.inner.seed.blob_landed(d);
        Ok(size)
    }

    // ---- manifests ----

    /// Validates and stores a manifest pushed as `reference` (see [`MetaStore::put_manifest`]).
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestPut, RegistryError> {
        let limit = self.inner.cfg.max_manifest_bytes;
        if body.len() > limit {
            return Err(RegistryError::ManifestTooLarge { limit });
        }
        let parsed = parse_manifest(content_type, &body)
            .map_err(|e: ManifestError| RegistryError::ManifestInvalid(e.to_string()))?;
        let (digest, tag) = match reference {
            Reference::Digest(d) => {
                // parse_manifest has hashed the bytes with sha256 already.
                let actual = if d.algorithm() == parsed.digest.algorithm() {
                    parsed.digest.clone()
                } else {
                    Digest::compute(d.algorithm(), &body)
                };
                if &actual != d {
                    return Err(RegistryError::DigestInvalid {
                        expected: d.clone(),
                        actual,
                    });
                }
                (actual, None)
            }
            Reference::Tag(t) => (parsed.digest.clone(), Some(t.clone())),
        };
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        let mut referrer: Option<Descriptor> = subject
            .as_ref()
            .map(|_| parsed.referrer_descriptor(body.len() as u64));
        if let Some(r) = referrer.as_mut() {
            r.digest = digest.clone();
        }
        let required_blobs: Vec<Digest> = parsed.blobs.iter().map(|b| b.digest.clone()).collect();
        let required_manifests: Vec<Digest> =
            parsed.manifests.iter().map(|m| m.digest.clone()).collect();
        let (inner, repo, d2, s2) = (
            self.inner.clone(),
            repo.clone(),
            digest.clone(),
            subject.clone(),
        );
        let media_type = parsed.media_type.clone();
        let size = body.len() as u64;
        let previous = blocking(move || {
            let _referencing = inner.gc_shared();
            let previous = match &tag {
                Some(t) => inner.meta.tag(&repo, t)?,
                None => None,
            };
            inner.meta.put_manifest(&ManifestRecord {
                repo: &repo,
                digest: &d2,
                media_type: &parsed.media_type,
                bytes: &body,
                tag: tag.as_ref(),
                referrer: s2.as_ref().zip(referrer.as_ref()),
                required_blobs: &required_blobs,
                required_manifests: &required_manifests,
            })?;
            Ok(previous)
        })
        .await?;
        Ok(ManifestPut {
            digest,
            subject,
            media_type,
            size,
            previous,
        })
    }

    /// The digest `reference` names in `repo`, if the manifest is there.
    fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest, RegistryError> {
        let d = match reference {
            Reference::Tag(t) => self
                .inner
                .meta
                .tag(repo, t)?
                .ok_or(RegistryError::ManifestUnknown)?,
            Reference::Digest(d) => d.clone(),
        };
        if self.inner.meta.has_manifest(repo, &d)? {
            Ok(d)
        } else {
            Err(RegistryError::ManifestUnknown)
        }
    }

    /// The manifest `reference` names in `repo`.
    pub async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, RegistryError> {
        let digest = self.resolve(repo, reference)?;
        let (media_type, bytes) = self.inner.meta.manifest(&digest)?.ok_or_else(|| {
            RegistryError::Corrupt(format!("manifest {digest} linked but not stored"))
        })?;
        Ok(StoredManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// By digest: removes the manifest from `repo` with its tags and referrers entry. By tag:
    /// removes the tag only.
    pub async fn manifest_delete(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), RegistryError> {
        let (inner, repo, reference) = (self.inner.clone(), repo.clone(), reference.clone());
        let removed = blocking(move || match &reference {
            Reference::Digest(d) => inner.meta.delete_manifest(&repo, d),
            Reference::Tag(t) => inner.meta.delete_tag(&repo, t),
        })
        .await?;
        if removed {
            Ok(())
        } else {
            Err(RegistryError::ManifestUnknown)
        }
    }

    /// The signed record of `tag` in `repo` (§6.4 of the spec): what it points at or that it was
    /// deleted, with the sequence number of that tag write, signed now with the gateway's
    /// identity. `None` if the tag never existed.
    pub async fn tag_record(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<SignedTagRecord>, RegistryError> {
        let (inner, repo, tag) = (self.inner.clone(), repo.clone(), tag.clone());
        blocking(move || {
            let Some(state) = inner.meta.tag_state(&repo, &tag)? else {
                return Ok(None);
            };
            let record = TagRecord {
                repo,
                tag,
                target: state.target.map_or(TagTarget::Deleted, TagTarget::Manifest),
                seq: state.seq,
                issued_ms: state.issued_ms,
            };
            Ok(Some(SignedTagRecord::sign(record, inner.seed.keypair())?))
        })
        .await
    }

    // ---- listings ----

    /// Up to `n` tags of `repo` after `last`, sorted.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Vec<String>, RegistryError> {
        self.inner
            .meta
            .tags(repo, last, n.unwrap_or(usize::MAX))?
            .ok_or(RegistryError::NameUnknown)
    }

    /// Up to `n` repository names after `last`, sorted.
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Vec<String>, RegistryError> {
        self.inner.meta.repos(last, n.unwrap_or(usize::MAX))
    }

    /// Referrers of `subject` in `repo`, optionally only those of one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        let mut all = self.inner.meta.referrers(repo, subject)?;
        if let Some(t) = artifact_type {
            all.retain(|d| d.artifact_type.as_deref() == Some(t));
        }
        Ok(all)
    }
}

impl Inner {
    /// Before blob `d` is installed: marks it unsent if no node can hold a piece of it — it
    /// is not held here, and garbage collection never removed it (nodes keep what they
    /// fetched of a collected blob, so a push of it again starts nowhere near empty).
    fn note_unsent(&self, d: &Digest) -> Result<(), RegistryError> {
        if self.blobs.size(d)?.is_none() && !self.meta.was_collected(d)? {
            self.seed.mark_unsent(d);
        }
        Ok(())
    }

    /// The GC lock, shared (see the field).
    fn gc_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gc_lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After a crash: sessions without data are dropped, data without a session is deleted.
    fn reconcile_uploads(&self) -> Result<(), RegistryError> {
        let sessions = self.meta.uploads()?;
        for (id, _) in &sessions {
            if self.uploads.len(id)?.is_none() {
                self.meta.remove_upload(id)?;
            }
        }
        for file in self.uploads.files()? {
            if !sessions.iter().any(|(id, _)| *id == file) {
                self.uploads.remove(&file)?;
            }
        }
        Ok(())
    }

    /// Removes sessions idle for longer than the TTL. A session in use right now is skipped.
    fn reap_idle_uploads(&self) -> Result<(), RegistryError> {
        let ttl = self.cfg.upload_ttl.as_millis() as u64;
        let now = now_ms();
        let sessions = self.meta.uploads()?;
        self.uploads
            .prune(&sessions.iter().map(|(id, _)| id.clone()).collect());
        for (id, rec) in sessions {
            if rec.touched_ms.saturating_add(ttl) > now {
                continue;
            }
            let state = self.uploads.state(&id);
            let Ok(_guard) = state.try_lock() else {
                continue;
            };
            // Re-read under the lock: a request may have touched it meanwhile.
            match self.meta.upload(&id)? {
                Some(r) if r.touched_ms.saturating_add(ttl) <= now => {
                    tracing::info!(upload = %id, repo = %r.repo, "removing idle upload session");
                    self.meta.remove_upload(&id)?;
                    self.uploads.remove(&id)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Reaps idle sessions every quarter TTL (between 1 s and 60 s) until the registry is dropped.
fn spawn_reaper(inner: Weak<Inner>, ttl: Duration) {
    let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            let reaped = tokio::task::spawn_blocking(move || inner.reap_idle_uploads()).await;
            match reaped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "reaping idle uploads failed"),
                Err(e) => tracing::warn!(error = %e, "the upload reaper failed"),
            }
        }
    });
}

mod error;
mod gc;
mod health;
mod uploads;
pub use error::RegistryError;
pub use gc::{GcConfig, GcOptions, GcReport, GcTotals};
pub use health::StorageHealth;

#[cfg(test)]
#[path = "registry/tests.rs"]
mod tests;
