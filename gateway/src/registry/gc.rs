//! Garbage collection: deletes the blob files that no manifest references (with their links and
//! piece tables) and the manifest records no repository holds (SPEC §2.4).
//!
//! *Mark*: every manifest some repository holds, tagged or not, is parsed; the blobs it names
//! (its config and layers) are live. *Sweep*: a blob file that is not live and was neither
//! written nor used within `min_age` — linked, mounted, uploaded again, or asked for with
//! `HEAD`/`GET` in a repository — is unlinked from every repository (durably), then deleted, and
//! the swarm stops providing it.
//!
//! It runs while the gateway serves. A push uploads its blobs first and names them in a manifest
//! last, sometimes minutes later (docker checks a layer it already pushed with `HEAD` and skips
//! it); `min_age` covers that window. Operations that link a blob or make a manifest reference
//! one (upload finish, monolithic push, mount, manifest `PUT`) hold the registry's GC lock
//! shared; the sweep holds it exclusively and marks again under it (re-parsing only manifests
//! that are new since the first mark), so nothing can come to reference a blob between the
//! sweep's last look and the deletion. Pushes wait for the sweep, which costs a scan of the
//! metadata and blob directories, not a read of any blob.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use flotilla_protocol::Digest;
use flotilla_protocol::manifest::parse_manifest;
use serde::Serialize;

use super::{Inner, Registry, RegistryError, blocking};

/// Most blobs remembered as recently used; past it the oldest uses are forgotten (such a blob
/// is then protected only by its file's age).
const TOUCHED_MAX: usize = 1 << 18;

/// When and how the gateway collects garbage on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcConfig {
    /// Time between two collections; `None`: never on its own.
    pub interval: Option<Duration>,
    /// An unreferenced blob written or used more recently than this is kept.
    pub min_age: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: None,
            min_age: Duration::from_secs(3600),
        }
    }
}

/// One collection's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// An unreferenced blob written or used more recently than this is kept.
    pub min_age: Duration,
    /// Only report what would be removed.
    pub dry_run: bool,
}

/// What a collection found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Nothing was removed; the counts say what would have been.
    pub dry_run: bool,
    /// Distinct manifests some repository holds (all kept).
    pub manifests_held: usize,
    /// Stored manifest records no repository holds any more, removed.
    pub manifest_records_removed: usize,
    /// Blob files some held manifest references.
    pub blobs_live: usize,
    /// Unreferenced blob files kept because they were written or used within `min_age`.
    pub blobs_recent: usize,
    /// Unreferenced blob files removed.
    pub blobs_removed: usize,
    /// Their bytes.
    pub bytes_removed: u64,
    /// Repository links to them, removed.
    pub links_removed: usize,
}

/// What every collection since start removed (`GET /flotilla/v1/stats`, `GET /metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GcTotals {
    /// Collections that ran to the end (dry runs not counted).
    pub runs: u64,
    /// Blob files removed.
    pub blobs_removed: u64,
    /// Their bytes.
    pub bytes_removed: u64,
    /// When the last collection ended (Unix seconds; 0: none yet).
    pub last_run_unix_s: u64,
}

/// When each blob was last used through the API (in memory: after a restart only file ages
/// count, and a push cut by the restart starts again).
#[derive(Debug, Default)]
pub(super) struct Touched(Mutex<HashMap<Digest, Instant>>);

impl Touched {
    /// Notes a use of `d` now.
    pub(super) fn touch(&self, d: &Digest) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(d.clone(), Instant::now());
        if map.len() > TOUCHED_MAX {
            // Forget the older half.
            let mut ages: Vec<Instant> = map.values().copied().collect();
            let mid = ages.len() / 2;
            let (_, cut, _) = ages.select_nth_unstable(mid);
            let cut = *cut;
            map.retain(|_, t| *t >= cut);
        }
    }

    /// Whether `d` was used within `age`.
    fn within(&self, d: &Digest, age: Duration) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(d).is_some_and(|t| t.elapsed() < age)
    }

    /// Forgets uses older than `age`.
    fn prune(&self, age: Duration) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, t| t.elapsed() < age);
    }
}

/// The blobs each held manifest names, parsed once per collection.
type Parsed = HashMap<Digest, Vec<Digest>>;

/// What a mark found: the snapshot it read and the live blobs.
struct Marked {
    snap: crate::storage::meta::GcSnapshot,
    live: HashSet<Digest>,
}

/// What a collection did: its report, the blobs whose files are gone, and the first failure
/// (the sweep goes on past a file it cannot delete; that blob is unlinked, and the next
/// collection deletes its file).
struct Swept {
    report: GcReport,
    removed: Vec<Digest>,
    failure: Option<RegistryError>,
}

/// What a sweep would remove.
struct Plan {
    report: GcReport,
    /// Blobs to remove, with the repositories linking them and their sizes.
    doomed: Vec<(Digest, Vec<String>, u64)>,
    /// Manifest records no repository holds.
    dead_manifests: Vec<Digest>,
}

impl Registry {
    /// Collects garbage now (see the module docs).
    ///
    /// # Errors
    /// [`RegistryError::Io`] or [`RegistryError::Db`] on a storage failure (what was removed
    /// before it stays removed; nothing referenced is ever removed), [`RegistryError::Corrupt`]
    /// if a held manifest is missing or does not parse (then nothing is removed).
    pub async fn collect_garbage(&self, opts: GcOptions) -> Result<GcReport, RegistryError> {
        let inner = self.inner.clone();
        let Swept {
            report,
            removed,
            failure,
        } = blocking(move || inner.collect_garbage(opts)).await?;
        // What was removed is withdrawn and counted even when the sweep failed part way.
        for d in &removed {
            self.inner.seed.blob_removed(d);
        }
        if !report.dry_run {
            let mut t = self
                .inner
                .gc_totals
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            t.runs += 1;
            t.blobs_removed += report.blobs_removed as u64;
            t.bytes_removed += report.bytes_removed;
            t.last_run_unix_s = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// What every collection since start removed.
    pub fn gc_totals(&self) -> GcTotals {
        *self
            .inner
            .gc_totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn collect_garbage(&self, opts: GcOptions) -> Result<Swept, RegistryError> {
        let mut parsed = Parsed::new();
        let first = self.mark(&mut parsed)?;
        if opts.dry_run {
            let mut plan = self.plan(&first, opts.min_age)?;
            plan.report.dry_run = true;
            return Ok(Swept {
                report: plan.report,
                removed: Vec::new(),
                failure: None,
            });
        }
        let _sweeping = self.gc_lock.write().unwrap_or_else(PoisonError::into_inner);
        // Marked again under the lock: manifests pushed and blobs linked since the first mark
        // count (only the new manifests are parsed).
        let marked = self.mark(&mut parsed)?;
        let plan = self.plan(&marked, opts.min_age)?;
        // The plan's removal counts are predictions; the sweep counts what it really removes.
        let mut report = GcReport {
            blobs_removed: 0,
            bytes_removed: 0,
            ..plan.report
        };
        let unlink: Vec<(Digest, Vec<String>)> = plan
            .doomed
            .iter()
            .map(|(d, repos, _)| (d.clone(), repos.clone()))
            .collect();
        // Links go first and durably: a crash between the two leaves an unlinked file, which
        // the next collection removes, never a link to a missing file.
        report.links_removed = self.meta.gc_unlink_blobs(&unlink)?;
        let mut removed = Vec::with_capacity(plan.doomed.len());
        let mut failure = None;
        for (d, _, size) in plan.doomed {
            match self.blobs.remove(&d) {
                Ok(was_there) => {
                    if was_there {
                        report.blobs_removed += 1;
                        report.bytes_removed += size;
                        tracing::info!(digest = %d, bytes = size, "garbage collection removed a blob");
                    }
                    removed.push(d);
                }
                Err(e) => {
                    tracing::warn!(digest = %d, error = %e, "garbage collection cannot delete a blob file");
                    failure.get_or_insert(e);
                }
            }
        }
        match self.meta.gc_remove_manifests(&plan.dead_manifests) {
            Ok(n) => report.manifest_records_removed = n,
            Err(e) => {
                report.manifest_records_removed = 0;
                failure.get_or_insert(e);
            }
        }
        self.touched.prune(opts.min_age);
        Ok(Swept {
            report,
            removed,
            failure,
        })
    }

    /// Reads what references what; parses the held manifests not in `parsed` yet.
    fn mark(&self, parsed: &mut Parsed) -> Result<Marked, RegistryError> {
        let snap = self.meta.gc_snapshot()?;
        let mut live = HashSet::new();
        for m in &snap.held_manifests {
            if !parsed.contains_key(m) {
                let (media_type, bytes) = self.meta.manifest(m)?.ok_or_else(|| {
                    RegistryError::Corrupt(format!("manifest {m} is held but not stored"))
                })?;
                let p = parse_manifest(Some(&media_type), &bytes).map_err(|e| {
                    RegistryError::Corrupt(format!("stored manifest {m} does not parse: {e}"))
                })?;
                parsed.insert(m.clone(), p.blobs.into_iter().map(|b| b.digest).collect());
            }
            live.extend(parsed[m].iter().cloned());
        }
        Ok(Marked { snap, live })
    }

    /// Sorts every blob file into live, recent and doomed.
    fn plan(&self, marked: &Marked, min_age: Duration) -> Result<Plan, RegistryError> {
        let mut report = GcReport {
            manifests_held: marked.snap.held_manifests.len(),
            ..GcReport::default()
        };
        let now = SystemTime::now();
        let mut doomed = Vec::new();
        for d in self.blobs.list()? {
            if marked.live.contains(&d) {
                report.blobs_live += 1;
                continue;
            }
            let Some((size, modified)) = self.blobs.stat(&d)? else {
                continue;
            };
            // A clock set back makes a file look new: kept, which is the safe side.
            let written_recently = now
                .duration_since(modified)
                .map_or(true, |age| age < min_age);
            if written_recently || self.touched.within(&d, min_age) {
                report.blobs_recent += 1;
                continue;
            }
            let repos = marked.snap.links.get(&d).cloned().unwrap_or_default();
            report.blobs_removed += 1;
            report.bytes_removed += size;
            report.links_removed += repos.len();
            doomed.push((d, repos, size));
        }
        let dead_manifests: Vec<Digest> = marked
            .snap
            .stored_manifests
            .iter()
            .filter(|m| !marked.snap.held_manifests.contains(*m))
            .cloned()
            .collect();
        report.manifest_records_removed = dead_manifests.len();
        Ok(Plan {
            report,
            doomed,
            dead_manifests,
        })
    }
}

/// Collects garbage every `every` until the registry is dropped (the first after one interval,
/// not at start: uses from before a restart are not known).
pub(super) fn spawn_collector(inner: std::sync::Weak<Inner>, every: Duration, min_age: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            let registry = Registry { inner };
            let opts = GcOptions {
                min_age,
                dry_run: false,
            };
            match registry.collect_garbage(opts).await {
                Ok(r) => tracing::info!(
                    blobs_removed = r.blobs_removed,
                    bytes_removed = r.bytes_removed,
                    blobs_live = r.blobs_live,
                    blobs_recent = r.blobs_recent,
                    manifest_records_removed = r.manifest_records_removed,
                    "garbage collection done"
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests;
