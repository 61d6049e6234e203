//! What a node keeps so it can answer pulls of tags while the gateway is unreachable: the signed
//! tag records it has seen and the manifests it has served (spec §6.4).
//!
//! ```text
//! <data_dir>/tags/ (sled)
//! ├── records        <name> \0 <tag> → SignedTagRecord::encode   the newest record seen
//! ├── manifests      <digest>        → u16 BE len ‖ media type ‖ manifest bytes
//! ├── manifest_used  <digest>        → u64 BE ms since the epoch  last stored or served
//! └── state          "gateway_peer"  → the gateway's peer id (bytes) the records verified against
//! ```
//! - A record replaces the one held only if its sequence number is higher
//!   ([`TagRecord::supersedes`]): an old record offered by a peer (or a late answer of the
//!   gateway) never undoes a newer one. The caller verifies signatures; this store compares.
//! - A manifest is stored only if its bytes hash to the digest it is stored under and it is at
//!   most [`MAX_MANIFEST_BYTES`]; the manifests together stay under the configured byte cap, the
//!   least recently used going first.
//! - Records are few and small; beyond [`MAX_RECORDS`] the oldest-issued are dropped.
//! - Nothing here is flushed on purpose: it is a cache that sled persists within its flush
//!   interval; a record lost in a crash is learned again.

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_protocol::tagrecord::{SignedTagRecord, TagRecordError};
use flotilla_protocol::{Digest, RepoName, Tag};
use libp2p::PeerId;

/// Largest manifest kept (the gateway's default push limit).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Most tag records kept.
pub const MAX_RECORDS: usize = 100_000;
/// Default cap on the bytes of all kept manifests.
pub const DEFAULT_MANIFEST_CACHE_BYTES: u64 = 64 << 20;

const GATEWAY_PEER_KEY: &[u8] = b"gateway_peer";

/// Why the tag store failed.
#[derive(Debug, thiserror::Error)]
pub enum TagStoreError {
    /// The database failed.
    #[error("tag store database: {0}")]
    Db(#[from] sled::Error),
    /// A stored value does not decode.
    #[error("tag store holds a corrupt entry: {0}")]
    Corrupt(String),
    /// A manifest refused: too large, or not the bytes of its digest.
    #[error("manifest refused: {0}")]
    Refused(String),
    /// A record that does not encode.
    #[error(transparent)]
    Record(#[from] TagRecordError),
}

/// A manifest as kept: its media type and exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedManifest {
    /// The media type it was served with.
    pub media_type: String,
    /// The bytes (which hash to the digest it is kept under).
    pub bytes: Bytes,
}

/// What became of an offered record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Stored; `first` when no record of that tag was held before.
    Stored {
        /// No record of the tag was held before.
        first: bool,
    },
    /// A record with the same or a higher sequence number is held; nothing changed.
    Stale,
}

/// What storing a manifest did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestPut {
    /// It was not held before.
    pub new: bool,
    /// Manifests evicted to make room.
    pub evicted: Vec<Digest>,
}

/// The LRU order of the kept manifests.
#[derive(Default)]
struct Lru {
    /// digest → (size, last use).
    entries: HashMap<Digest, (u64, u64)>,
    /// (last use, digest), oldest first.
    order: BTreeSet<(u64, Digest)>,
    bytes: u64,
}

impl Lru {
    fn touch(&mut self, d: &Digest, size: u64, now: u64) {
        if let Some((old_size, old_used)) = self.entries.insert(d.clone(), (size, now)) {
            self.order.remove(&(old_used, d.clone()));
            self.bytes -= old_size;
        }
        self.order.insert((now, d.clone()));
        self.bytes += size;
    }

    fn remove(&mut self, d: &Digest) {
        if let Some((size, used)) = self.entries.remove(d) {
            self.order.remove(&(used, d.clone()));
            self.bytes -= size;
        }
    }

    fn oldest(&self) -> Option<Digest> {
        self.order.iter().next().map(|(_, d)| d.clone())
    }
}

/// The signed tag records and manifests a node keeps (see the module docs).
pub struct TagStore {
    db: sled::Db,
    records: sled::Tree,
    manifests: sled::Tree,
    used: sled::Tree,
    state: sled::Tree,
    cap_bytes: u64,
    /// Serialises read-compare-write of records, and every change of the manifest set.
    records_lock: Mutex<()>,
    lru: Mutex<Lru>,
}

impl std::fmt::Debug for TagStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagStore")
            .field("cap_bytes", &self.cap_bytes)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn record_key(repo: &RepoName, tag: &Tag) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.as_str().len() + 1 + tag.as_str().len());
    k.extend_from_slice(repo.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(tag.as_str().as_bytes());
    k
}

fn encode_manifest(media_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mt = media_type.as_bytes();
    let len = mt.len().min(usize::from(u16::MAX));
    let mut v = Vec::with_capacity(2 + len + bytes.len());
    // `len` is at most u16::MAX by the line above.
    v.extend_from_slice(&(len as u16).to_be_bytes());
    v.extend_from_slice(&mt[..len]);
    v.extend_from_slice(bytes);
    v
}

fn decode_manifest(v: &[u8]) -> Result<CachedManifest, TagStoreError> {
    let bad = || TagStoreError::Corrupt("truncated manifest entry".into());
    let len_bytes: [u8; 2] = v.get(..2).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
    let len = usize::from(u16::from_be_bytes(len_bytes));
    let mt = v.get(2..2 + len).ok_or_else(bad)?;
    let media_type = String::from_utf8(mt.to_vec()).map_err(|_| bad())?;
    Ok(CachedManifest {
        media_type,
        bytes: Bytes::copy_from_slice(&v[2 + len..]),
    })
}

fn stamp(v: &[u8]) -> u64 {
    <[u8; 8]>::try_from(v).map_or(0, u64::from_be_bytes)
}

impl TagStore {
    /// Opens (creating) the store in `dir`, keeping at most `cap_bytes` of manifests.
    ///
    /// # Errors
    /// [`TagStoreError::Db`] if the database cannot be opened.
    pub fn open(dir: &Path, cap_bytes: u64) -> Result<TagStore, TagStoreError> {
        let db = sled::Config::new().path(dir).open()?;
        let store = TagStore {
            records: db.open_tree("records")?,
            manifests: db.open_tree("manifests")?,
            used: db.open_tree("manifest_used")?,
            state: db.open_tree("state")?,
            db,
            cap_bytes,
            records_lock: Mutex::new(()),
            lru: Mutex::new(Lru::default()),
        };
        {
            let mut lru = store.lock_lru();
            for item in store.manifests.iter() {
                let (k, v) = item?;
                let Some(d) = std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| s.parse::<Digest>().ok())
                else {
                    store.manifests.remove(&k)?;
                    continue;
                };
                let used = store.used.get(&k)?.map_or(0, |u| stamp(&u));
                lru.touch(&d, v.len() as u64, used);
            }
        }
        Ok(store)
    }

    fn lock_lru(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest record held for `repo:tag` (not re-verified: only verified records are stored).
    ///
    /// # Errors
    /// [`TagStoreError::Db`] or [`TagStoreError::Corrupt`].
    pub fn record(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<SignedTagRecord>, TagStoreError> {
        self.records
            .get(record_key(repo, tag))?
            .map(|v| SignedTagRecord::decode(&v).map_err(|e| TagStoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Keeps `signed` (already verified by the caller) unless a record of that tag with the same
    /// or a higher sequence number is held.
    ///
    /// # Errors
    /// [`TagStoreError::Db`] or [`TagStoreError::Record`].
    pub fn offer_record(&self, signed: &SignedTagRecord) -> Result<Offer, TagStoreError> {
        let key = record_key(&signed.record.repo, &signed.record.tag);
        let encoded = signed.encode()?;
        let _guard = self.records_lock.lock().unwrap_or_else(|p| p.into_inner());
        let held = self
            .records
            .get(&key)?
            .and_then(|v| SignedTagRecord::decode(&v).ok());
        if let Some(held) = &held
            && !signed.record.supersedes(&held.record)
        {
            return Ok(Offer::Stale);
        }
        self.records.insert(key, encoded)?;
        if held.is_none() && self.records.len() > MAX_RECORDS {
            self.drop_oldest_record()?;
        }
        Ok(Offer::Stored {
            first: held.is_none(),
        })
    }

    /// Drops the record issued longest ago (only when over [`MAX_RECORDS`]: a scan).
    fn drop_oldest_record(&self) -> Result<(), TagStoreError> {
        let mut oldest: Option<(u64, sled::IVec)> = None;
        for item in self.records.iter() {
            let (k, v) = item?;
            let issued = SignedTagRecord::decode(&v).map_or(0, |s| s.record.issued_ms);
            if oldest.as_ref().is_none_or(|(t, _)| issued < *t) {
                oldest = Some((issued, k));
            }
        }
        if let Some((_, k)) = oldest {
            self.records.remove(k)?;
        }
        Ok(())
    }

    /// Every `repo:tag` a record is held for (to announce them after a restart).
    ///
    /// # Errors
    /// [`TagStoreError::Db`].
    pub fn record_names(&self) -> Result<Vec<(RepoName, Tag)>, TagStoreError> {
        let mut out = Vec::new();
        for item in self.records.iter() {
            let (_, v) = item?;
            if let Ok(s) = SignedTagRecord::decode(&v) {
                out.push((s.record.repo, s.record.tag));
            }
        }
        Ok(out)
    }

    /// The manifest kept under `d`, marking it used.
    ///
    /// # Errors
    /// [`TagStoreError::Db`] or [`TagStoreError::Corrupt`].
    pub fn manifest(&self, d: &Digest) -> Result<Option<CachedManifest>, TagStoreError> {
        // Under the lock, so an eviction cannot slip between the read and the touch.
        let _guard = self.records_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(v) = self.manifests.get(d.as_str().as_bytes())? else {
            return Ok(None);
        };
        let m = decode_manifest(&v)?;
        let now = now_ms();
        self.lock_lru().touch(d, v.len() as u64, now);
        self.used
            .insert(d.as_str().as_bytes(), &now.to_be_bytes()[..])?;
        Ok(Some(m))
    }

    /// Whether a manifest is kept under `d`.
    ///
    /// # Errors
    /// [`TagStoreError::Db`].
    pub fn has_manifest(&self, d: &Digest) -> Result<bool, TagStoreError> {
        Ok(self.manifests.contains_key(d.as_str().as_bytes())?)
    }

    /// Keeps manifest `bytes` under `d` after checking that they hash to it (blocking: hashes up
    /// to 4 MiB; call it off the async threads), evicting the least recently used manifests
    /// beyond the cap.
    ///
    /// # Errors
    /// [`TagStoreError::Refused`] for bytes that are too large or not those of `d`;
    /// [`TagStoreError::Db`].
    pub fn put_manifest(
        &self,
        d: &Digest,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<ManifestPut, TagStoreError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(TagStoreError::Refused(format!(
                "{} bytes, over the {MAX_MANIFEST_BYTES} limit",
                bytes.len()
            )));
        }
        let actual = Digest::compute(d.algorithm(), bytes);
        if actual != *d {
            return Err(TagStoreError::Refused(format!(
                "the bytes hash to {actual}"
            )));
        }
        let value = encode_manifest(media_type, bytes);
        let size = value.len() as u64;
        let now = now_ms();
        let _guard = self.records_lock.lock().unwrap_or_else(|p| p.into_inner());
        let new = self
            .manifests
            .insert(d.as_str().as_bytes(), value)?
            .is_none();
        self.used
            .insert(d.as_str().as_bytes(), &now.to_be_bytes()[..])?;
        let mut evicted = Vec::new();
        let mut lru = self.lock_lru();
        lru.touch(d, size, now);
        while lru.bytes > self.cap_bytes {
            let Some(victim) = lru.oldest() else { break };
            lru.remove(&victim);
            self.manifests.remove(victim.as_str().as_bytes())?;
            self.used.remove(victim.as_str().as_bytes())?;
            evicted.push(victim);
        }
        Ok(ManifestPut { new, evicted })
    }

    /// Every manifest digest kept (to announce them after a restart).
    pub fn manifest_digests(&self) -> Vec<Digest> {
        self.lock_lru().entries.keys().cloned().collect()
    }

    /// Bytes of manifests kept.
    pub fn manifest_bytes(&self) -> u64 {
        self.lock_lru().bytes
    }

    /// The gateway's peer id the records were last verified against, so a node started while
    /// the gateway is unreachable can still trust records and tables.
    pub fn gateway_peer(&self) -> Option<PeerId> {
        self.state
            .get(GATEWAY_PEER_KEY)
            .ok()
            .flatten()
            .and_then(|v| PeerId::from_bytes(&v).ok())
    }

    /// Remembers the gateway's peer id (only writes when it changed).
    ///
    /// # Errors
    /// [`TagStoreError::Db`].
    pub fn set_gateway_peer(&self, peer: &PeerId) -> Result<(), TagStoreError> {
        if self.gateway_peer().as_ref() != Some(peer) {
            self.state.insert(GATEWAY_PEER_KEY, peer.to_bytes())?;
        }
        Ok(())
    }

    /// Writes everything to disk (at shutdown).
    ///
    /// # Errors
    /// [`TagStoreError::Db`].
    pub fn flush(&self) -> Result<(), TagStoreError> {
        self.db.flush()?;
        Ok(())
    }
}
