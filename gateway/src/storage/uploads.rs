//! Upload session data files and the in-memory hashing state that spares a rehash at the end.
//!
//! A session's data lives in `<data_dir>/uploads/<uuid>`; its offset is the file's length. While
//! the gateway runs, each session keeps the hasher fed with every byte so far, behind a per-session
//! lock that also serialises concurrent requests on one session. After a restart that state is
//! gone and is rebuilt by hashing the file once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flotilla_protocol::Hasher;

use crate::registry::RegistryError;

/// The hashing state of one session: a hasher fed with the first `len` bytes of its file.
#[derive(Debug, Default)]
pub struct UploadState {
    /// `(hasher, bytes hashed)`, or `None` when it must be rebuilt from the file.
    pub hashed: Option<(Hasher, u64)>,
}

/// The session files under `<data_dir>/uploads` and their in-memory states.
#[derive(Debug)]
pub struct UploadFiles {
    dir: PathBuf,
    states: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadState>>>>,
}

impl UploadFiles {
    /// Opens (creating) `<data_dir>/uploads`.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        let dir = data_dir.join("uploads");
        std::fs::create_dir_all(&dir)?;
        Ok(UploadFiles {
            dir,
            states: Mutex::new(HashMap::new()),
        })
    }

    /// The data file of session `id` (the caller has checked `id` is a UUID).
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates the empty data file of a new session.
    pub fn create(&self, id: &str) -> Result<(), RegistryError> {
        std::fs::File::create_new(self.path(id))?;
        Ok(())
    }

    /// Bytes received so far, or `None` if the file is gone.
    pub fn len(&self, id: &str) -> Result<Option<u64>, RegistryError> {
        match std::fs::metadata(self.path(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The lock guarding session `id`'s state (created on first use).
    pub fn state(&self, id: &str) -> Arc<tokio::sync::Mutex<UploadState>> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.entry(id.to_owned()).or_default().clone()
    }

    /// Forgets the in-memory state of session `id`.
    pub fn forget(&self, id: &str) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.remove(id);
    }

    /// Drops the states of sessions that no longer exist and that no request holds.
    pub fn prune(&self, live: &std::collections::HashSet<String>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|id, st| live.contains(id) || Arc::strong_count(st) > 1);
    }

    /// Deletes session `id`'s file and state.
    pub fn remove(&self, id: &str) -> Result<(), RegistryError> {
        self.forget(id);
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Names of every session file on disk.
    pub fn files(&self) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }
}
