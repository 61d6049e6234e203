//! The members the gateway revoked (SPEC §5.3), kept in `<data_dir>/revoked.json`.
//!
//! A revoked peer gets no certificate (`POST /flotilla/v1/join` answers `403 DENIED`), its
//! signed requests are refused (`401`), the gateway's swarm treats it as a stranger, and
//! the signed list (`GET /flotilla/v1/revoked`) tells every node to do the same. Restoring a
//! peer undoes all of that. Every change raises `seq`, which nodes use to never go back to an
//! older list: it becomes the time in ms, or one more than before if that is not higher, so
//! it never goes back across restarts (it is in the file) nor after the file is lost.
//!
//! The file is small (at most [`MAX_REVOKED`] entries) and written whole through a temporary
//! file and a rename at each change, so a crash leaves the old list or the new one.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};

use flotilla_protocol::revocation::{
    MAX_REVOKED, RevocationError, RevocationList, SignedRevocationList,
};
use libp2p::PeerId;
use libp2p_identity::Keypair;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The file's name in the data directory.
const FILE: &str = "revoked.json";
/// Longest reason kept.
pub const MAX_REASON: usize = 256;

/// Why a change to the list failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The file could not be read or written.
    #[error("revocation list file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not what this gateway writes.
    #[error("revocation list file {0}: {1}")]
    Corrupt(PathBuf, String),
    /// The list is full.
    #[error("the revocation list holds at most {MAX_REVOKED} peers")]
    Full,
    /// Signing the list failed.
    #[error(transparent)]
    Sign(#[from] RevocationError),
}

/// One revoked member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    /// When it was revoked (Unix seconds).
    pub revoked_unix_s: u64,
    /// What the admin said, if anything.
    pub reason: String,
}

/// The file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    seq: u64,
    peers: BTreeMap<String, Revoked>,
}

/// The list, its file, and who waits for changes.
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    stored: Mutex<Stored>,
    /// The revoked peers, for the hot checks (every member request, every join).
    set: RwLock<HashSet<PeerId>>,
    /// The signed list of the current `seq`, made on first request.
    signed: Mutex<Option<(u64, Vec<u8>)>>,
    changed: watch::Sender<u64>,
}

impl Revocations {
    /// Reads `<data_dir>/revoked.json` (none: nobody is revoked).
    ///
    /// # Errors
    /// [`RevokeError::Io`] or [`RevokeError::Corrupt`].
    pub fn open(data_dir: &Path) -> Result<Revocations, RevokeError> {
        let path = data_dir.join(FILE);
        let stored: Stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RevokeError::Corrupt(path.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(e.into()),
        };
        let set = stored
            .peers
            .keys()
            .map(|k| {
                k.parse::<PeerId>()
                    .map_err(|e| RevokeError::Corrupt(path.clone(), format!("{k:?}: {e}")))
            })
            .collect::<Result<HashSet<_>, _>>()?;
        let seq = stored.seq;
        Ok(Revocations {
            path,
            stored: Mutex::new(stored),
            set: RwLock::new(set),
            signed: Mutex::new(None),
            changed: watch::Sender::new(seq),
        })
    }

    /// Whether `peer` is revoked.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(peer)
    }

    /// The revoked peers.
    pub fn peers(&self) -> Vec<PeerId> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// The list's current `seq` (what `Flotilla-Revocations` tells nodes, SPEC §5.3).
    pub fn seq(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Wakes on every change (the value is the new `seq`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// `seq` and every revoked peer with its entry, for the admin's listing.
    pub fn listing(&self) -> (u64, BTreeMap<String, Revoked>) {
        let s = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        (s.seq, s.peers.clone())
    }

    /// Revokes `peer` (a second revocation keeps the first's time and reason); returns whether
    /// it was new. Blocks on the file write.
    ///
    /// # Errors
    /// [`RevokeError::Full`], or the write failed (then nothing changed).
    pub fn revoke(&self, peer: PeerId, reason: &str, now_s: u64) -> Result<bool, RevokeError> {
        let reason: String = reason.chars().take(MAX_REASON).collect();
        self.change(|s| {
            let key = peer.to_string();
            if s.peers.contains_key(&key) {
                return Ok(false);
            }
            if s.peers.len() >= MAX_REVOKED {
                return Err(RevokeError::Full);
            }
            s.peers.insert(
                key,
                Revoked {
                    revoked_unix_s: now_s,
                    reason,
                },
            );
            Ok(true)
        })
    }

    /// Restores `peer`; returns whether it was revoked.
    ///
    /// # Errors
    /// The write failed (then nothing changed).
    pub fn restore(&self, peer: PeerId) -> Result<bool, RevokeError> {
        self.change(|s| Ok(s.peers.remove(&peer.to_string()).is_some()))
    }

    /// Applies `edit` to a copy; if it changed something, bumps `seq`, writes the file, and
    /// only then makes the copy current.
    fn change(
        &self,
        edit: impl FnOnce(&mut Stored) -> Result<bool, RevokeError>,
    ) -> Result<bool, RevokeError> {
        let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = stored.clone();
        if !edit(&mut next)? {
            return Ok(false);
        }
        // Milliseconds since the epoch, or one more than before if the clock is behind: a
        // gateway whose list was lost (a data directory rebuilt around a restored identity
        // key) still numbers its next list above what nodes hold, and they take it.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        next.seq = now_ms.max(next.seq.saturating_add(1));
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| RevokeError::Corrupt(self.path.clone(), e.to_string()))?;
        super::write_private(&self.path, &bytes)?;
        let set = next
            .peers
            .keys()
            .filter_map(|k| k.parse::<PeerId>().ok())
            .collect();
        *self.set.write().unwrap_or_else(PoisonError::into_inner) = set;
        let seq = next.seq;
        *stored = next;
        drop(stored);
        self.changed.send_replace(seq);
        Ok(true)
    }

    /// The list signed with the gateway's key, and its `seq`.
    ///
    /// # Errors
    /// [`RevokeError::Sign`].
    pub fn signed(&self, key: &Keypair) -> Result<(u64, Vec<u8>), RevokeError> {
        let (seq, peers) = {
            let s = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
            (s.seq, s.peers.keys().cloned().collect::<Vec<_>>())
        };
        let mut cache = self.signed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, bytes)) = cache.as_ref()
            && *at == seq
        {
            return Ok((seq, bytes.clone()));
        }
        let peers = peers.iter().filter_map(|k| k.parse().ok()).collect();
        let list = RevocationList::new(seq, super::unix_now() * 1000, peers)?;
        let bytes = SignedRevocationList::sign(list, key)?.encode();
        *cache = Some((seq, bytes.clone()));
        Ok((seq, bytes))
    }
}
