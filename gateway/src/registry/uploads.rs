//! Upload sessions (`POST`, `PATCH`, `PUT`, `GET`, `DELETE` of `/v2/<name>/blobs/uploads/…`) as
//! the registry runs them: appending under the session's lock on a detached task, resuming
//! from the stored length, and finishing into a verified, linked blob.

use super::*;

impl Registry {
    /// Starts an upload session in `repo`.
    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadInfo, RegistryError> {
        let id = uuid::Uuid::new_v4().to_string();
        let (inner, repo, id2) = (self.inner.clone(), repo.clone(), id.clone());
        blocking(move || {
            // Sessions are persistent and few (bounded right here), so counting them is cheap.
            let limit = inner.cfg.limits.max_uploads;
            if inner.meta.uploads()?.len() >= limit {
                return Err(RegistryError::TooManyUploads { limit });
            }
            inner.uploads.create(&id2)?;
            let now = now_ms();
            inner.meta.put_upload(
                &id2,
                &UploadRecord {
                    repo: repo.as_str().to_owned(),
                    created_ms: now,
                    touched_ms: now,
                },
            )
        })
        .await?;
        Ok(UploadInfo { id, offset: 0 })
    }

    /// The session `id` of `repo`, touched; its data file must exist.
    fn session(&self, repo: &RepoName, id: &str) -> Result<(UploadRecord, u64), RegistryError> {
        // Only our own UUIDs name files: anything else (`../x`) never reaches the filesystem.
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(RegistryError::BlobUploadUnknown);
        }
        let rec = self
            .inner
            .meta
            .upload(id)?
            .filter(|r| r.repo == repo.as_str())
            .ok_or(RegistryError::BlobUploadUnknown)?;
        let len = self
            .inner
            .uploads
            .len(id)?
            .ok_or(RegistryError::BlobUploadUnknown)?;
        Ok((rec, len))
    }

    fn touch(&self, id: &str, mut rec: UploadRecord) -> Result<(), RegistryError> {
        rec.touched_ms = now_ms();
        self.inner.meta.touch_upload(id, &rec)
    }

    /// Where upload `id` stands.
    pub async fn upload_status(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<UploadInfo, RegistryError> {
        let (_, offset) = self.session(repo, id)?;
        Ok(UploadInfo {
            id: id.to_owned(),
            offset,
        })
    }

    /// Appends `body` to upload `id`; `start`, when the client sent a Content-Range, must be where
    /// the upload stands.
    pub async fn upload_append(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: BodyStream,
    ) -> Result<UploadInfo, RegistryError> {
        // Checked before the state exists, so unknown ids never leave an entry behind.
        self.session(repo, id)?;
        let (this, repo, id) = (self.clone(), repo.clone(), id.to_owned());
        detached(|dropped| async move {
            let body = abort_on(body, dropped, this.inner.cfg.limits.body_idle);
            let state = this.inner.uploads.state(&id);
            let mut st = state.lock().await;
            this.append_locked(&repo, &id, start, body, &mut st).await
        })
        .await
    }

    /// The body of [`Registry::upload_append`], run with the session's lock held.
    async fn append_locked(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: BodyStream,
        st: &mut UploadState,
    ) -> Result<UploadInfo, RegistryError> {
        let (rec, len) = self.session(repo, id)?;
        if let Some(s) = start
            && s != len
        {
            return Err(RegistryError::RangeInvalid { offset: len });
        }
        let hasher = self
            .hasher_at(id, st.hashed.take(), len, Algorithm::Sha256)
            .await?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.inner.uploads.path(id))?;
        // On a disk error `st.hashed` stays empty: the file may hold bytes the hasher never saw
        // (or the reverse), so the next request rebuilds it from the file.
        let limits = &self.inner.cfg.limits;
        let body = capped(body, limits.max_blob_bytes.saturating_sub(len));
        let done = blobs::append_stream(file, hasher, body).await?;
        // No fsync per chunk: the offset is the file's length, a crash can only lose a suffix
        // the client will resend, and content is re-verified (rehash) after a restart and
        // fsynced before the blob is installed.
        let offset = len + done.len;
        drop(done.file);
        st.hashed = Some((done.hasher, offset));
        self.touch(id, rec)?;
        match done.body_error {
            Some(e) => Err(body_failure(e, limits)),
            None => Ok(UploadInfo {
                id: id.to_owned(),
                offset,
            }),
        }
    }

    /// A hasher over the first `len` bytes of upload `id`: the kept one if it is current and of the
    /// right algorithm, else rebuilt from the file.
    async fn hasher_at(
        &self,
        id: &str,
        kept: Option<(Hasher, u64)>,
        len: u64,
        algorithm: Algorithm,
    ) -> Result<Hasher, RegistryError> {
        if let Some((h, n)) = kept
            && n == len
            && h.algorithm() == algorithm
        {
            return Ok(h);
        }
        let path = self.inner.uploads.path(id);
        let (h, n) = blocking(move || blobs::hash_file(&path, algorithm)).await?;
        if n != len {
            return Err(RegistryError::BlobUploadInvalid(
                "upload data changed while hashing".into(),
            ));
        }
        Ok(h)
    }

    /// Ends upload `id`: appends the optional last chunk, checks the digest, stores and links the
    /// blob, and removes the session. On a digest mismatch the session stays, so the client may
    /// retry or cancel.
    pub async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &str,
        d: &Digest,
        start: Option<u64>,
        body: Option<BodyStream>,
    ) -> Result<u64, RegistryError> {
        // Checked before the state exists, so unknown ids never leave an entry behind.
        self.session(repo, id)?;
        let (this, repo, id, d) = (self.clone(), repo.clone(), id.to_owned(), d.clone());
        // One lock hold for the last chunk and the install: no other request can slip between.
        detached(|dropped| async move {
            let state = this.inner.uploads.state(&id);
            let mut st = state.lock().await;
            if let Some(body) = body {
                let body = abort_on(body, dropped, this.inner.cfg.limits.body_idle);
                this.append_locked(&repo, &id, start, body, &mut st).await?;
            }
            let (_, len) = this.session(&repo, &id)?;
            let hasher = this
                .hasher_at(&id, st.hashed.take(), len, d.algorithm())
                .await?;
            let actual = hasher.clone().finish();
            if actual != d {
                st.hashed = Some((hasher, len));
                return Err(RegistryError::DigestInvalid {
                    expected: d,
                    actual,
                });
            }
            let (inner, d2) = (this.inner.clone(), d.clone());
            let size = blocking(move || {
                let path = inner.uploads.path(&id);
                std::fs::File::open(&path)?.sync_all()?;
                let _linking = inner.gc_shared();
                inner.touched.touch(&d2);
                inner.note_unsent(&d2)?;
                let size = inner.blobs.install(&path, &d2)?;
                // A crash right here leaves a session without data: dropped at the next start.
                inner.meta.finish_upload(&id, &repo, &d2, size)?;
                inner.uploads.forget(&id);
                Ok(size)
            })
            .await?;
            this.inner.seed.blob_landed(&d);
            Ok(size)
        })
        .await
    }

    /// Abandons upload `id` and deletes its data.
    pub async fn upload_cancel(&self, repo: &RepoName, id: &str) -> Result<(), RegistryError> {
        // Checked before the state exists, so unknown ids never leave an entry behind.
        self.session(repo, id)?;
        let (this, repo, id) = (self.clone(), repo.clone(), id.to_owned());
        detached(|_| async move {
            let state = this.inner.uploads.state(&id);
            let _st = state.lock().await;
            this.session(&repo, &id)?;
            let inner = this.inner.clone();
            blocking(move || {
                inner.meta.remove_upload(&id)?;
                inner.uploads.remove(&id)
            })
            .await
        })
        .await
    }
}
