//! The metadata side of garbage collection (`crate::gc`): reading what everything references,
//! and removing what nothing does.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_protocol::Digest;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::{SledMeta, digest, key2, now_ms, text, tx_err};
use crate::registry::RegistryError;

/// What garbage collection marks from, read in one pass over three trees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcSnapshot {
    /// Manifests some repository holds (`repo_manifests`), tagged or not.
    pub held_manifests: BTreeSet<Digest>,
    /// Every stored manifest record (`manifests`), held or not.
    pub stored_manifests: Vec<Digest>,
    /// Every blob link: the repositories that link each blob.
    pub links: BTreeMap<Digest, Vec<String>>,
}

/// Splits a `<name> \0 <digest>` key.
fn split_key(k: &[u8]) -> Result<(String, Digest), RegistryError> {
    let at = k
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| RegistryError::Corrupt("metadata key without a separator".into()))?;
    Ok((text(&k[..at])?, digest(&k[at + 1..])?))
}

impl SledMeta {
    pub(super) fn snapshot_for_gc(&self) -> Result<GcSnapshot, RegistryError> {
        let mut snap = GcSnapshot::default();
        for item in self.repo_manifests.iter() {
            let (k, _) = item?;
            snap.held_manifests.insert(split_key(&k)?.1);
        }
        for item in self.manifests.iter() {
            let (k, _) = item?;
            snap.stored_manifests.push(digest(&k)?);
        }
        for item in self.blob_links.iter() {
            let (k, _) = item?;
            let (repo, d) = split_key(&k)?;
            snap.links.entry(d).or_default().push(repo);
        }
        Ok(snap)
    }

    pub(super) fn unlink_everywhere(
        &self,
        blobs: &[(Digest, Vec<String>)],
    ) -> Result<usize, RegistryError> {
        let mut removed = 0;
        let at = now_ms().to_be_bytes();
        for (d, repos) in blobs {
            removed += (&self.blob_links, &self.piece_tables, &self.collected)
                .transaction(|(links, tables, collected)| {
                    let mut n = 0;
                    for repo in repos {
                        if links.remove(key2(repo, d.as_str()))?.is_some() {
                            n += 1;
                        }
                    }
                    tables.remove(d.as_str().as_bytes())?;
                    collected.insert(d.as_str().as_bytes(), &at)?;
                    Ok::<_, ConflictableTransactionError<RegistryError>>(n)
                })
                .map_err(tx_err)?;
        }
        self.flush()?;
        Ok(removed)
    }

    pub(super) fn remove_manifest_records(&self, ds: &[Digest]) -> Result<usize, RegistryError> {
        let mut removed = 0;
        for d in ds {
            if self.manifests.remove(d.as_str().as_bytes())?.is_some() {
                removed += 1;
            }
        }
        self.flush()?;
        Ok(removed)
    }
}
