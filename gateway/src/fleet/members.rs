//! Who joined the fleet (SPEC §5.3): every enrollment the gateway answered, by peer id — when
//! it first and last joined, from which address, and until when its certificate runs — so an
//! admin can tell the fleet's hosts apart and find the peer id to revoke even when the host
//! itself is gone or cannot be trusted to say.
//!
//! Kept in memory and written to `<data_dir>/members.json` by a flusher at most every
//! [`FLUSH_EVERY`] after a change (joins come in bursts when a fleet starts; one file write per
//! join would rewrite the whole file thousands of times), and at shutdown. A crash loses at
//! most the last few seconds of joins, which the nodes' next renewals record again. At most
//! [`MAX_MEMBERS`] entries: when full, entries whose certificates ran out longest ago go
//! first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// The file's name in the data directory.
const FILE: &str = "members.json";
/// Most members remembered.
pub const MAX_MEMBERS: usize = 100_000;
/// Longest a change waits before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// One member as the gateway saw it join.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Its first enrollment here (Unix seconds).
    pub first_joined_unix_s: u64,
    /// Its latest enrollment or renewal.
    pub last_joined_unix_s: u64,
    /// When the certificate issued then runs out.
    pub certificate_not_after_unix_s: u64,
    /// The address its latest join came from (the client address, or `X-Forwarded-For` from a
    /// trusted proxy).
    pub addr: String,
    /// Enrollments and renewals answered.
    pub joins: u64,
}

#[derive(Debug, Default)]
struct State {
    members: HashMap<PeerId, Member>,
    dirty: bool,
}

/// The members, and their file.
#[derive(Debug)]
pub struct Members {
    path: PathBuf,
    state: Mutex<State>,
}

impl Members {
    /// Reads `<data_dir>/members.json`; a missing file is an empty fleet, an unreadable one is
    /// logged and started afresh (the list is a record, not a control: nodes re-enroll).
    pub fn open(data_dir: &Path) -> Members {
        let path = data_dir.join(FILE);
        let members = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<HashMap<String, Member>>(&bytes) {
                Ok(m) => m
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.parse::<PeerId>().ok()?, v)))
                    .collect(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the members file does not parse; starting a new one");
                    HashMap::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the members file cannot be read; starting a new one");
                HashMap::new()
            }
        };
        Members {
            path,
            state: Mutex::new(State {
                members,
                dirty: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an answered join of `peer` from `addr` at `now`, its certificate valid until
    /// `not_after`.
    pub fn joined(&self, peer: PeerId, addr: &str, now: u64, not_after: u64) {
        let mut st = self.lock();
        if !st.members.contains_key(&peer) && st.members.len() >= MAX_MEMBERS {
            // Room for the newcomer: the member whose certificate ran out longest ago.
            if let Some(oldest) = st
                .members
                .iter()
                .min_by_key(|(p, m)| (m.certificate_not_after_unix_s, p.to_bytes()))
                .map(|(p, _)| *p)
            {
                st.members.remove(&oldest);
            }
        }
        let m = st.members.entry(peer).or_insert_with(|| Member {
            first_joined_unix_s: now,
            last_joined_unix_s: now,
            certificate_not_after_unix_s: not_after,
            addr: String::new(),
            joins: 0,
        });
        m.last_joined_unix_s = now;
        m.certificate_not_after_unix_s = not_after;
        m.addr = addr.to_owned();
        m.joins += 1;
        st.dirty = true;
    }

    /// Every member, latest join first.
    pub fn list(&self) -> Vec<(PeerId, Member)> {
        let mut v: Vec<(PeerId, Member)> = self
            .lock()
            .members
            .iter()
            .map(|(p, m)| (*p, m.clone()))
            .collect();
        v.sort_by(|a, b| {
            b.1.last_joined_unix_s
                .cmp(&a.1.last_joined_unix_s)
                .then_with(|| a.0.to_bytes().cmp(&b.0.to_bytes()))
        });
        v
    }

    /// Writes the file if something changed since the last write. Blocks.
    ///
    /// # Errors
    /// The write failed (the change stays pending).
    pub fn flush(&self) -> std::io::Result<()> {
        let bytes = {
            let mut st = self.lock();
            if !st.dirty {
                return Ok(());
            }
            st.dirty = false;
            let by_id: std::collections::BTreeMap<String, &Member> =
                st.members.iter().map(|(p, m)| (p.to_string(), m)).collect();
            serde_json::to_vec_pretty(&by_id).map_err(std::io::Error::other)?
        };
        let written = super::write_private(&self.path, &bytes);
        if written.is_err() {
            self.lock().dirty = true;
        }
        written
    }
}

/// Writes `members` every [`FLUSH_EVERY`] while something changed; stops when the last
/// other holder drops it.
pub async fn flusher(members: std::sync::Weak<Members>) {
    loop {
        tokio::time::sleep(FLUSH_EVERY).await;
        let Some(m) = members.upgrade() else {
            return;
        };
        match tokio::task::spawn_blocking(move || m.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the members file"),
            Err(e) => tracing::warn!(error = %e, "the members flush failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8) -> PeerId {
        libp2p_identity::Keypair::ed25519_from_bytes([i; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    #[test]
    fn joins_are_recorded_listed_newest_first_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let m = Members::open(dir.path());
        m.joined(peer(1), "10.0.0.1", 100, 1_000);
        m.joined(peer(2), "10.0.0.2", 200, 2_000);
        m.joined(peer(1), "10.0.0.9", 300, 3_000);
        let list = m.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].0, peer(1));
        assert_eq!(
            list[0].1,
            Member {
                first_joined_unix_s: 100,
                last_joined_unix_s: 300,
                certificate_not_after_unix_s: 3_000,
                addr: "10.0.0.9".into(),
                joins: 2,
            }
        );
        m.flush().unwrap();
        let again = Members::open(dir.path());
        assert_eq!(again.list(), list);
        // A broken file is a fresh start, not a failure.
        std::fs::write(dir.path().join(FILE), b"{oops").unwrap();
        assert!(Members::open(dir.path()).list().is_empty());
    }
}
