//! The metadata store: repositories, blob links, manifests, tags, referrers, upload sessions,
//! the signed piece tables of blobs, and the sequence-numbered tag records nodes resolve tags
//! from while the gateway is unreachable.
//!
//! [`MetaStore`] is the small interface the registry needs, so that another backend can replace
//! sled later; [`SledMeta`] implements it (the trees are drawn in the parent module's docs). Every
//! write that a client is told about is flushed to disk before the call returns.

use std::ops::Bound;

use bytes::Bytes;
use flotilla_protocol::manifest::Descriptor;
use flotilla_protocol::{Digest, RepoName, Tag};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::registry::RegistryError;

mod sweep;
pub use sweep::GcSnapshot;

/// An upload session as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The repository the upload belongs to.
    pub repo: String,
    /// When it started (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it last received bytes or was asked about (ms since the Unix epoch).
    pub touched_ms: u64,
}

/// What `repo_manifests` holds for one manifest in one repository: its subject (to find its
/// referrers entry) and the tags pointing at it (so a delete by digest removes exactly those, inside
/// its transaction, without a scan that a concurrent tag could slip past).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RepoManifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    /// Written by the first storage version (value = subject digest or ""), which kept no tag list:
    /// deleting such a manifest falls back to scanning the repository's tags.
    #[serde(skip)]
    legacy: bool,
}

impl RepoManifest {
    fn decode(v: &[u8]) -> Result<Self, RegistryError> {
        if v.first() == Some(&b'{') {
            return serde_json::from_slice(v).map_err(|e| RegistryError::Corrupt(e.to_string()));
        }
        Ok(RepoManifest {
            subject: (!v.is_empty()).then(|| String::from_utf8_lossy(v).into_owned()),
            tags: Vec::new(),
            legacy: true,
        })
    }

    fn encode(&self) -> Result<Vec<u8>, RegistryError> {
        serde_json::to_vec(self).map_err(|e| RegistryError::Corrupt(e.to_string()))
    }
}

/// What the gateway last recorded about a tag: the state a signed tag record vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagState {
    /// The value of the gateway's tag-write counter when this state was written.
    pub seq: u64,
    /// When it was written (ms since the Unix epoch).
    pub issued_ms: u64,
    /// The manifest the tag points at; `None` once deleted.
    pub target: Option<Digest>,
}

impl TagState {
    fn encode(seq: u64, issued_ms: u64, target: Option<&[u8]>) -> Vec<u8> {
        let target = target.unwrap_or_default();
        let mut v = Vec::with_capacity(16 + target.len());
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&issued_ms.to_be_bytes());
        v.extend_from_slice(target);
        v
    }

    fn decode(v: &[u8]) -> Result<Self, RegistryError> {
        let bad = || RegistryError::Corrupt("truncated tag record".into());
        let seq = u64::from_be_bytes(v.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let issued_ms = u64::from_be_bytes(
            v.get(8..16)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        let rest = &v[16..];
        let target = if rest.is_empty() {
            None
        } else {
            Some(digest(rest)?)
        };
        Ok(TagState {
            seq,
            issued_ms,
            target,
        })
    }
}

/// The key of the tag-write counter in the `counters` tree.
const TAG_SEQ_KEY: &[u8] = b"tag_seq";

/// Takes the next tag sequence number and records `target` (a digest's text, `None` for a
/// deletion) as the state of tag key `key`, inside a transaction: the counter and the record move
/// with the tag change they describe, or not at all.
fn record_tag(
    counters: &sled::transaction::TransactionalTree,
    tag_records: &sled::transaction::TransactionalTree,
    key: &[u8],
    target: Option<&[u8]>,
    issued_ms: u64,
) -> TxResult<()> {
    let current = match counters.get(TAG_SEQ_KEY)? {
        Some(v) => match <[u8; 8]>::try_from(v.as_ref()) {
            Ok(b) => u64::from_be_bytes(b),
            Err(_) => return abort(RegistryError::Corrupt("bad tag sequence counter".into())),
        },
        None => 0,
    };
    let seq = current + 1;
    counters.insert(TAG_SEQ_KEY, &seq.to_be_bytes()[..])?;
    tag_records.insert(key, TagState::encode(seq, issued_ms, target))?;
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Everything a manifest PUT writes, checked and stored at once.
#[derive(Debug)]
pub struct ManifestRecord<'a> {
    /// Repository.
    pub repo: &'a RepoName,
    /// Digest of `bytes` (in the algorithm the client named).
    pub digest: &'a Digest,
    /// Effective media type.
    pub media_type: &'a str,
    /// The exact bytes pushed.
    pub bytes: &'a [u8],
    /// Tag to point at it, if pushed by tag.
    pub tag: Option<&'a Tag>,
    /// Its subject and the descriptor to list under the subject's referrers.
    pub referrer: Option<(&'a Digest, &'a Descriptor)>,
    /// Blobs that must be linked in the repository.
    pub required_blobs: &'a [Digest],
    /// Manifests that must be present in the repository.
    pub required_manifests: &'a [Digest],
}

/// The registry's metadata operations.
pub trait MetaStore: Send + Sync + std::fmt::Debug + 'static {
    /// Size of blob `d` if it is linked into `repo`.
    fn blob_link(&self, repo: &RepoName, d: &Digest) -> Result<Option<u64>, RegistryError>;
    /// Links blob `d` (already durable on disk) into `repo`.
    fn link_blob(&self, repo: &RepoName, d: &Digest, size: u64) -> Result<(), RegistryError>;
    /// Unlinks blob `d` from `repo`; false if it was not linked.
    fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<bool, RegistryError>;
    /// Checks the references and stores a manifest, its tag and its referrers entry atomically.
    fn put_manifest(&self, m: &ManifestRecord<'_>) -> Result<(), RegistryError>;
    /// Whether manifest `d` is present in `repo`.
    fn has_manifest(&self, repo: &RepoName, d: &Digest) -> Result<bool, RegistryError>;
    /// Media type and bytes of manifest `d` (in any repository).
    fn manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>, RegistryError>;
    /// The digest a tag points at.
    fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, RegistryError>;
    /// Removes manifest `d` from `repo` with every tag pointing at it and its referrers entry.
    fn delete_manifest(&self, repo: &RepoName, d: &Digest) -> Result<bool, RegistryError>;
    /// Removes one tag.
    fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, RegistryError>;
    /// Up to `n` tags of `repo` after `last`, sorted; `None` if the repository does not exist.
    fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Option<Vec<String>>, RegistryError>;
    /// Up to `n` names after `last`, sorted, of repositories holding at least one blob link or
    /// manifest.
    fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<String>, RegistryError>;
    /// Descriptors of the manifests in `repo` whose subject is `subject`.
    fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, RegistryError>;
    /// Creates or updates an upload session, durably.
    fn put_upload(&self, id: &str, rec: &UploadRecord) -> Result<(), RegistryError>;
    /// Updates an upload session's record without waiting for the disk: used for the touched
    /// time, whose loss in a crash only makes the session look idle a little earlier.
    fn touch_upload(&self, id: &str, rec: &UploadRecord) -> Result<(), RegistryError>;
    /// An upload session.
    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, RegistryError>;
    /// Removes an upload session.
    fn remove_upload(&self, id: &str) -> Result<(), RegistryError>;
    /// Every upload session.
    fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, RegistryError>;
    /// Ends upload `id` by linking its (durable) blob into `repo`, atomically.
    fn finish_upload(
        &self,
        id: &str,
        repo: &RepoName,
        d: &Digest,
        size: u64,
    ) -> Result<(), RegistryError>;
    /// The stored signed piece table of blob `d` (`SignedPieceTable::encode`), if computed.
    fn piece_table(&self, d: &Digest) -> Result<Option<Bytes>, RegistryError>;
    /// Stores the signed piece table of blob `d`. Not flushed: a table lost in a crash is
    /// computed again from the blob when it is next asked for.
    fn put_piece_table(&self, d: &Digest, signed: &[u8]) -> Result<(), RegistryError>;
    /// The recorded state of `tag` in `repo` (also after its deletion), or `None` if the tag
    /// never existed. A tag older than the records gets its first record here, durably.
    fn tag_state(&self, repo: &RepoName, tag: &Tag) -> Result<Option<TagState>, RegistryError>;
    /// What garbage collection marks from: held manifests, stored manifest records, blob links.
    fn gc_snapshot(&self) -> Result<GcSnapshot, RegistryError>;
    /// Removes each blob's links from the repositories given and its piece table, and records
    /// it as collected ([`MetaStore::was_collected`]), flushed before it returns (the caller
    /// deletes the files after). The number of links removed.
    fn gc_unlink_blobs(&self, blobs: &[(Digest, Vec<String>)]) -> Result<usize, RegistryError>;
    /// Removes stored manifest records (which no repository holds), flushed; how many there were.
    fn gc_remove_manifests(&self, ds: &[Digest]) -> Result<usize, RegistryError>;
    /// Whether garbage collection ever removed blob `d` here: nodes may still hold pieces of
    /// it, so a push of it again is not a blob nobody holds (SPEC §3.7, `unsent`).
    fn was_collected(&self, d: &Digest) -> Result<bool, RegistryError>;
}

/// [`MetaStore`] on an embedded sled database.
#[derive(Debug, Clone)]
pub struct SledMeta {
    db: sled::Db,
    repos: sled::Tree,
    blob_links: sled::Tree,
    manifests: sled::Tree,
    repo_manifests: sled::Tree,
    tags: sled::Tree,
    referrers: sled::Tree,
    uploads: sled::Tree,
    piece_tables: sled::Tree,
    tag_records: sled::Tree,
    counters: sled::Tree,
    collected: sled::Tree,
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + 1 + b.len());
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn prefix(a: &str) -> Vec<u8> {
    key2(a, "")
}

fn text(v: &[u8]) -> Result<String, RegistryError> {
    String::from_utf8(v.to_vec())
        .map_err(|_| RegistryError::Corrupt("non-UTF-8 key in metadata".into()))
}

fn digest(v: &[u8]) -> Result<Digest, RegistryError> {
    text(v)?
        .parse()
        .map_err(|_| RegistryError::Corrupt("invalid digest in metadata".into()))
}

fn encode_manifest(media_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mt = media_type.as_bytes();
    let len = u16::try_from(mt.len()).unwrap_or(u16::MAX);
    let mut v = Vec::with_capacity(2 + mt.len() + bytes.len());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&mt[..usize::from(len)]);
    v.extend_from_slice(bytes);
    v
}

fn decode_manifest(v: sled::IVec) -> Result<(String, Bytes), RegistryError> {
    let bad = || RegistryError::Corrupt("truncated manifest record".into());
    let len = usize::from(u16::from_be_bytes(
        v.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?,
    ));
    let mt = text(v.get(2..2 + len).ok_or_else(bad)?)?;
    Ok((mt, Bytes::copy_from_slice(&v[2 + len..])))
}

type TxResult<T> = Result<T, ConflictableTransactionError<RegistryError>>;

fn tx_err(e: TransactionError<RegistryError>) -> RegistryError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => RegistryError::Db(e),
    }
}

fn abort<T>(e: RegistryError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

impl SledMeta {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, RegistryError> {
        let db = sled::Config::new().path(path).open()?;
        Ok(SledMeta {
            repos: db.open_tree("repos")?,
            blob_links: db.open_tree("blob_links")?,
            manifests: db.open_tree("manifests")?,
            repo_manifests: db.open_tree("repo_manifests")?,
            tags: db.open_tree("tags")?,
            referrers: db.open_tree("referrers")?,
            uploads: db.open_tree("uploads")?,
            piece_tables: db.open_tree("piece_tables")?,
            tag_records: db.open_tree("tag_records")?,
            counters: db.open_tree("counters")?,
            collected: db.open_tree("collected")?,
            db,
        })
    }

    fn flush(&self) -> Result<(), RegistryError> {
        self.db.flush()?;
        Ok(())
    }

    /// Removes one key and flushes; whether it was there.
    fn remove_durably(&self, tree: &sled::Tree, key: Vec<u8>) -> Result<bool, RegistryError> {
        let had = tree.remove(key)?.is_some();
        self.flush()?;
        Ok(had)
    }

    /// Keys after `last` under `pre` that `keep` accepts, at most `n`, with the prefix stripped. A
    /// range scan from `last`: a page costs what it returns (plus what `keep` skips), never the
    /// whole tree.
    fn page(
        tree: &sled::Tree,
        pre: &[u8],
        last: Option<&str>,
        n: usize,
        mut keep: impl FnMut(&str) -> Result<bool, RegistryError>,
    ) -> Result<Vec<String>, RegistryError> {
        let start = match last {
            Some(l) => {
                let mut k = pre.to_vec();
                k.extend_from_slice(l.as_bytes());
                Bound::Excluded(k)
            }
            None => Bound::Included(pre.to_vec()),
        };
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        for item in tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, _) = item?;
            if !k.starts_with(pre) {
                break;
            }
            let name = text(&k[pre.len()..])?;
            if keep(&name)? {
                out.push(name);
                if out.len() >= n {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Whether `tree` holds any key under `<name>\0`.
    fn any_under(tree: &sled::Tree, name: &str) -> Result<bool, RegistryError> {
        Ok(tree.scan_prefix(prefix(name)).next().transpose()?.is_some())
    }
}

/// Removes `tag` from the tag list of manifest `d` in `repo` (inside a transaction).
fn untag(
    repo_manifests: &sled::transaction::TransactionalTree,
    repo: &str,
    d: &[u8],
    tag: &str,
) -> TxResult<()> {
    let key = key2(repo, &String::from_utf8_lossy(d));
    let Some(v) = repo_manifests.get(&key)? else {
        return Ok(());
    };
    let mut rec = match RepoManifest::decode(&v) {
        Ok(r) => r,
        Err(e) => return abort(e),
    };
    if rec.legacy {
        // A legacy record keeps no tag list: nothing to update.
        return Ok(());
    }
    rec.tags.retain(|t| t != tag);
    match rec.encode() {
        Ok(v) => {
            repo_manifests.insert(key, v)?;
            Ok(())
        }
        Err(e) => abort(e),
    }
}

impl MetaStore for SledMeta {
    fn blob_link(&self, repo: &RepoName, d: &Digest) -> Result<Option<u64>, RegistryError> {
        match self.blob_links.get(key2(repo.as_str(), d.as_str()))? {
            Some(v) => {
                let b: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| RegistryError::Corrupt("bad blob link size".into()))?;
                Ok(Some(u64::from_be_bytes(b)))
            }
            None => Ok(None),
        }
    }

    fn link_blob(&self, repo: &RepoName, d: &Digest, size: u64) -> Result<(), RegistryError> {
        (&self.repos, &self.blob_links)
            .transaction(|(repos, links)| {
                repos.insert(repo.as_str().as_bytes(), &[][..])?;
                links.insert(key2(repo.as_str(), d.as_str()), &size.to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<RegistryError>>(())
            })
            .map_err(tx_err)?;
        self.flush()
    }

    fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<bool, RegistryError> {
        self.remove_durably(&self.blob_links, key2(repo.as_str(), d.as_str()))
    }

    fn put_manifest(&self, m: &ManifestRecord<'_>) -> Result<(), RegistryError> {
        let repo = m.repo.as_str();
        let digest = m.digest.as_str();
        let record = encode_manifest(m.media_type, m.bytes);
        let referrer = match m.referrer {
            Some((subject, desc)) => Some((
                subject,
                serde_json::to_vec(desc).map_err(|e| RegistryError::Corrupt(e.to_string()))?,
            )),
            None => None,
        };
        let issued_ms = now_ms();
        (
            &self.repos,
            &self.blob_links,
            &self.manifests,
            &self.repo_manifests,
            &self.tags,
            &self.referrers,
            &self.tag_records,
            &self.counters,
        )
            .transaction(
                |(
                    repos,
                    links,
                    manifests,
                    repo_manifests,
                    tags,
                    referrers,
                    tag_records,
                    counters,
                )| {
                    // Checked inside the transaction so a concurrent unlink cannot slip between.
                    for b in m.required_blobs {
                        if links.get(key2(repo, b.as_str()))?.is_none() {
                            return abort(RegistryError::ManifestBlobUnknown(b.clone()));
                        }
                    }
                    for c in m.required_manifests {
                        if repo_manifests.get(key2(repo, c.as_str()))?.is_none() {
                            return abort(RegistryError::ManifestBlobUnknown(c.clone()));
                        }
                    }
                    repos.insert(repo.as_bytes(), &[][..])?;
                    manifests.insert(digest.as_bytes(), record.as_slice())?;
                    let key = key2(repo, digest);
                    // A re-push keeps the tags already pointing at the manifest.
                    let mut rec = match repo_manifests.get(&key)? {
                        Some(v) => match RepoManifest::decode(&v) {
                            Ok(r) => r,
                            Err(e) => return abort(e),
                        },
                        None => RepoManifest::default(),
                    };
                    rec.subject = m.referrer.map(|(s, _)| s.as_str().to_owned());
                    if let Some(t) = m.tag {
                        let tag_key = key2(repo, t.as_str());
                        let previous = tags.insert(tag_key.clone(), digest.as_bytes())?;
                        if let Some(old) = &previous
                            && old.as_ref() != digest.as_bytes()
                        {
                            // The tag moves: the manifest it leaves no longer lists it.
                            untag(repo_manifests, repo, old, t.as_str())?;
                        }
                        // A re-push of the same manifest under the same tag changes nothing a
                        // record says, so it keeps its record (and sequence number).
                        let unchanged = previous
                            .as_ref()
                            .is_some_and(|o| o.as_ref() == digest.as_bytes());
                        if !unchanged || tag_records.get(&tag_key)?.is_none() {
                            record_tag(
                                counters,
                                tag_records,
                                &tag_key,
                                Some(digest.as_bytes()),
                                issued_ms,
                            )?;
                        }
                        if !rec.tags.iter().any(|x| x == t.as_str()) {
                            rec.tags.push(t.as_str().to_owned());
                        }
                    }
                    let value = match rec.encode() {
                        Ok(v) => v,
                        Err(e) => return abort(e),
                    };
                    repo_manifests.insert(key, value)?;
                    if let Some((s, desc)) = &referrer {
                        let k = key2(&key2_str(repo, s.as_str()), digest);
                        referrers.insert(k, desc.as_slice())?;
                    }
                    Ok(())
                },
            )
            .map_err(tx_err)?;
        self.flush()
    }

    fn has_manifest(&self, repo: &RepoName, d: &Digest) -> Result<bool, RegistryError> {
        Ok(self
            .repo_manifests
            .contains_key(key2(repo.as_str(), d.as_str()))?)
    }

    fn manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>, RegistryError> {
        self.manifests
            .get(d.as_str().as_bytes())?
            .map(decode_manifest)
            .transpose()
    }

    fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, RegistryError> {
        self.tags
            .get(key2(repo.as_str(), tag.as_str()))?
            .map(|v| digest(&v))
            .transpose()
    }

    fn delete_manifest(&self, repo: &RepoName, d: &Digest) -> Result<bool, RegistryError> {
        let repo_s = repo.as_str();
        let key = key2(repo_s, d.as_str());
        // Only a record of the first storage version lacks the tag list; its tags are found by a
        // scan before the transaction, which re-checks each one.
        let mut legacy_tags = Vec::new();
        if let Some(v) = self.repo_manifests.get(&key)?
            && RepoManifest::decode(&v)?.legacy
        {
            for item in self.tags.scan_prefix(prefix(repo_s)) {
                let (k, v) = item?;
                if v.as_ref() == d.as_str().as_bytes() {
                    legacy_tags.push(k.to_vec());
                }
            }
        }
        let issued_ms = now_ms();
        let removed = (
            &self.repo_manifests,
            &self.tags,
            &self.referrers,
            &self.tag_records,
            &self.counters,
        )
            .transaction(|(repo_manifests, tags, referrers, tag_records, counters)| {
                let Some(v) = repo_manifests.remove(key.clone())? else {
                    return Ok(false);
                };
                let rec = match RepoManifest::decode(&v) {
                    Ok(r) => r,
                    Err(e) => return abort(e),
                };
                let listed = rec.tags.iter().map(|t| key2(repo_s, t));
                for k in listed.chain(legacy_tags.iter().cloned()) {
                    if tags
                        .get(&k)?
                        .is_some_and(|v| v.as_ref() == d.as_str().as_bytes())
                    {
                        tags.remove(k.clone())?;
                        record_tag(counters, tag_records, &k, None, issued_ms)?;
                    }
                }
                if let Some(subject) = &rec.subject {
                    referrers.remove(key2(&key2_str(repo_s, subject), d.as_str()))?;
                }
                Ok(true)
            })
            .map_err(tx_err)?;
        self.flush()?;
        Ok(removed)
    }

    fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, RegistryError> {
        let repo_s = repo.as_str();
        let issued_ms = now_ms();
        let key = key2(repo_s, tag.as_str());
        let removed = (
            &self.repo_manifests,
            &self.tags,
            &self.tag_records,
            &self.counters,
        )
            .transaction(|(repo_manifests, tags, tag_records, counters)| {
                let Some(d) = tags.remove(key.clone())? else {
                    return Ok(false);
                };
                untag(repo_manifests, repo_s, &d, tag.as_str())?;
                record_tag(counters, tag_records, &key, None, issued_ms)?;
                Ok(true)
            })
            .map_err(tx_err)?;
        self.flush()?;
        Ok(removed)
    }

    fn tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<Option<Vec<String>>, RegistryError> {
        if !self.repos.contains_key(repo.as_str().as_bytes())? {
            return Ok(None);
        }
        Self::page(&self.tags, &prefix(repo.as_str()), last, n, |_| Ok(true)).map(Some)
    }

    fn repos(&self, last: Option<&str>, n: usize) -> Result<Vec<String>, RegistryError> {
        // `repos` remembers every repository that ever existed (so `tags/list` can tell "empty"
        // from "unknown"); the catalog shows only those still holding something.
        Self::page(&self.repos, b"", last, n, |name| {
            Ok(Self::any_under(&self.repo_manifests, name)?
                || Self::any_under(&self.blob_links, name)?)
        })
    }

    fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        let pre = prefix(&key2_str(repo.as_str(), subject.as_str()));
        let mut out = Vec::new();
        for item in self.referrers.scan_prefix(pre) {
            let (_, v) = item?;
            out.push(
                serde_json::from_slice(&v).map_err(|e| RegistryError::Corrupt(e.to_string()))?,
            );
        }
        Ok(out)
    }

    fn put_upload(&self, id: &str, rec: &UploadRecord) -> Result<(), RegistryError> {
        let v = serde_json::to_vec(rec).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        self.uploads.insert(id.as_bytes(), v)?;
        self.flush()
    }

    fn touch_upload(&self, id: &str, rec: &UploadRecord) -> Result<(), RegistryError> {
        let v = serde_json::to_vec(rec).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        self.uploads.insert(id.as_bytes(), v)?;
        Ok(())
    }

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>, RegistryError> {
        self.uploads
            .get(id.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| RegistryError::Corrupt(e.to_string())))
            .transpose()
    }

    fn remove_upload(&self, id: &str) -> Result<(), RegistryError> {
        self.uploads.remove(id.as_bytes())?;
        self.flush()
    }

    fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, RegistryError> {
        let mut out = Vec::new();
        for item in self.uploads.iter() {
            let (k, v) = item?;
            let rec =
                serde_json::from_slice(&v).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            out.push((text(&k)?, rec));
        }
        Ok(out)
    }

    fn finish_upload(
        &self,
        id: &str,
        repo: &RepoName,
        d: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        (&self.uploads, &self.repos, &self.blob_links)
            .transaction(|(uploads, repos, links)| {
                uploads.remove(id.as_bytes())?;
                repos.insert(repo.as_str().as_bytes(), &[][..])?;
                links.insert(key2(repo.as_str(), d.as_str()), &size.to_be_bytes()[..])?;
                Ok::<_, ConflictableTransactionError<RegistryError>>(())
            })
            .map_err(tx_err)?;
        self.flush()
    }

    fn piece_table(&self, d: &Digest) -> Result<Option<Bytes>, RegistryError> {
        Ok(self
            .piece_tables
            .get(d.as_str().as_bytes())?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn put_piece_table(&self, d: &Digest, signed: &[u8]) -> Result<(), RegistryError> {
        self.piece_tables.insert(d.as_str().as_bytes(), signed)?;
        Ok(())
    }

    fn gc_snapshot(&self) -> Result<GcSnapshot, RegistryError> {
        self.snapshot_for_gc()
    }

    fn gc_unlink_blobs(&self, blobs: &[(Digest, Vec<String>)]) -> Result<usize, RegistryError> {
        self.unlink_everywhere(blobs)
    }

    fn gc_remove_manifests(&self, ds: &[Digest]) -> Result<usize, RegistryError> {
        self.remove_manifest_records(ds)
    }

    fn was_collected(&self, d: &Digest) -> Result<bool, RegistryError> {
        Ok(self.collected.contains_key(d.as_str().as_bytes())?)
    }

    fn tag_state(&self, repo: &RepoName, tag: &Tag) -> Result<Option<TagState>, RegistryError> {
        let key = key2(repo.as_str(), tag.as_str());
        if let Some(v) = self.tag_records.get(&key)? {
            return TagState::decode(&v).map(Some);
        }
        if !self.tags.contains_key(&key)? {
            return Ok(None);
        }
        // A tag written before tag records existed: give it its first record, re-reading the tag
        // inside the transaction so a concurrent move or delete (which writes its own record)
        // wins.
        let issued_ms = now_ms();
        (&self.tags, &self.tag_records, &self.counters)
            .transaction(|(tags, tag_records, counters)| {
                if tag_records.get(&key)?.is_some() {
                    return Ok(());
                }
                if let Some(d) = tags.get(&key)? {
                    record_tag(counters, tag_records, &key, Some(&d), issued_ms)?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        // Flushed before anyone sees the number: a record handed out must never have its
        // sequence number reused after a crash.
        self.flush()?;
        self.tag_records
            .get(&key)?
            .map(|v| TagState::decode(&v))
            .transpose()
    }
}

fn key2_str(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(
        repo: &'a RepoName,
        d: &'a Digest,
        bytes: &'a [u8],
        tag: Option<&'a Tag>,
        referrer: Option<(&'a Digest, &'a Descriptor)>,
    ) -> ManifestRecord<'a> {
        ManifestRecord {
            repo,
            digest: d,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            bytes,
            tag,
            referrer,
            required_blobs: &[],
            required_manifests: &[],
        }
    }

    #[test]
    fn records_track_tags_and_legacy_records_still_delete_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let meta = SledMeta::open(&tmp.path().join("meta")).unwrap();
        let repo: RepoName = "a/b".parse().unwrap();
        let (t1, t2): (Tag, Tag) = ("one".parse().unwrap(), "two".parse().unwrap());
        let subject = Digest::sha256_of(b"subject");
        let bytes = b"{}";
        let d = Digest::sha256_of(bytes);
        let desc: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": 2, "artifactType": "x/y"
        }))
        .unwrap();
        meta.put_manifest(&record(
            &repo,
            &d,
            bytes,
            Some(&t1),
            Some((&subject, &desc)),
        ))
        .unwrap();
        meta.put_manifest(&record(
            &repo,
            &d,
            bytes,
            Some(&t2),
            Some((&subject, &desc)),
        ))
        .unwrap();
        let key = key2(repo.as_str(), d.as_str());
        let rec = RepoManifest::decode(&meta.repo_manifests.get(&key).unwrap().unwrap()).unwrap();
        assert_eq!(rec.tags, ["one", "two"]);
        assert_eq!(rec.subject.as_deref(), Some(subject.as_str()));
        assert!(meta.delete_tag(&repo, &t1).unwrap());
        let rec = RepoManifest::decode(&meta.repo_manifests.get(&key).unwrap().unwrap()).unwrap();
        assert_eq!(rec.tags, ["two"]);

        // The first storage version stored just the subject digest.
        meta.repo_manifests
            .insert(&key, subject.as_str().as_bytes())
            .unwrap();
        assert_eq!(meta.referrers(&repo, &subject).unwrap().len(), 1);
        assert!(meta.delete_manifest(&repo, &d).unwrap());
        assert!(meta.tag(&repo, &t2).unwrap().is_none());
        assert!(meta.referrers(&repo, &subject).unwrap().is_empty());
        assert!(!meta.has_manifest(&repo, &d).unwrap());
        assert!(!meta.delete_manifest(&repo, &d).unwrap());
    }

    #[test]
    fn tag_records_count_every_tag_write_and_survive_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("meta");
        let repo: RepoName = "a/b".parse().unwrap();
        let (t1, t2): (Tag, Tag) = ("one".parse().unwrap(), "two".parse().unwrap());
        let (b1, b2) = (&b"{\"a\":1}"[..], &b"{\"a\":2}"[..]);
        let (d1, d2) = (Digest::sha256_of(b1), Digest::sha256_of(b2));
        let last_seq;
        {
            let meta = SledMeta::open(&path).unwrap();
            assert_eq!(meta.tag_state(&repo, &t1).unwrap(), None);
            meta.put_manifest(&record(&repo, &d1, b1, Some(&t1), None))
                .unwrap();
            let s1 = meta.tag_state(&repo, &t1).unwrap().unwrap();
            assert_eq!(s1.target.as_ref(), Some(&d1));
            // The same manifest pushed again under the same tag: nothing changed.
            meta.put_manifest(&record(&repo, &d1, b1, Some(&t1), None))
                .unwrap();
            assert_eq!(meta.tag_state(&repo, &t1).unwrap().unwrap(), s1);
            // A push by digest touches no tag.
            meta.put_manifest(&record(&repo, &d2, b2, None, None))
                .unwrap();
            assert_eq!(meta.tag_state(&repo, &t1).unwrap().unwrap().seq, s1.seq);
            // The tag moves.
            meta.put_manifest(&record(&repo, &d2, b2, Some(&t1), None))
                .unwrap();
            let s2 = meta.tag_state(&repo, &t1).unwrap().unwrap();
            assert!(s2.seq > s1.seq);
            assert_eq!(s2.target.as_ref(), Some(&d2));
            // A second tag, then a delete by tag.
            meta.put_manifest(&record(&repo, &d2, b2, Some(&t2), None))
                .unwrap();
            let s3 = meta.tag_state(&repo, &t2).unwrap().unwrap();
            assert!(s3.seq > s2.seq);
            assert!(meta.delete_tag(&repo, &t2).unwrap());
            let s4 = meta.tag_state(&repo, &t2).unwrap().unwrap();
            assert!(s4.seq > s3.seq);
            assert_eq!(s4.target, None);
            // A delete by digest removes (and records) the tags pointing at it.
            assert!(meta.delete_manifest(&repo, &d2).unwrap());
            let s5 = meta.tag_state(&repo, &t1).unwrap().unwrap();
            assert!(s5.seq > s4.seq);
            assert_eq!(s5.target, None);
            // The deleted tag's record did not change.
            assert_eq!(meta.tag_state(&repo, &t2).unwrap().unwrap(), s4);
            last_seq = s5.seq;
        }
        let meta = SledMeta::open(&path).unwrap();
        assert_eq!(meta.tag_state(&repo, &t1).unwrap().unwrap().seq, last_seq);
        meta.put_manifest(&record(&repo, &d1, b1, Some(&t1), None))
            .unwrap();
        let after = meta.tag_state(&repo, &t1).unwrap().unwrap();
        assert_eq!(after.seq, last_seq + 1);
        assert_eq!(after.target.as_ref(), Some(&d1));

        // A tag written before records existed gets one on first request.
        meta.tag_records
            .remove(key2(repo.as_str(), t1.as_str()))
            .unwrap();
        let legacy = meta.tag_state(&repo, &t1).unwrap().unwrap();
        assert_eq!(legacy.seq, last_seq + 2);
        assert_eq!(legacy.target.as_ref(), Some(&d1));
        assert_eq!(meta.tag_state(&repo, &t1).unwrap().unwrap(), legacy);
    }
}
