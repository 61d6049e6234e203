//! The audit log and the event hub behind it and behind webhook notifications ([`crate::notify`]).
//!
//! Handlers report what changed (a blob or manifest pushed, a tag moved or deleted, a manifest or
//! blob deleted, a manifest pulled) and the access-control check reports refusals, each as one
//! [`Event`] carrying the [`Origin`] of its request. [`Events::record`] hands the event to:
//!
//! - the **audit log** (`[audit]`, on by default, `<data_dir>/audit.log`): one JSON object per
//!   line, appended (`O_APPEND`, never rewritten or truncated) by one writer thread fed by a
//!   bounded channel (see [`writer`]). Pulls are not audited.
//! - the **notifier** (`[[notifications.endpoints]]`): distribution's event envelope, per endpoint
//!   through its own bounded queue (see [`crate::notify`]).
//!
//! # When the audit channel is full
//! A request that finds the channel full waits at most [`AUDIT_WAIT`] for room, then the line is
//! dropped, counted (`audit.lines_dropped` in `/flotilla/v1/stats`) and a warning logged. A full
//! channel means the disk has stalled for longer than a thousand lines take to write; blocking
//! pushes for good behind it would turn a slow audit disk into a registry outage, while a short
//! wait absorbs bursts without losing anything.
//!
//! # Layout
//! - [`origin`]: who sent a request and from where (actor, client address, `X-Forwarded-For`
//!   behind trusted proxies, user agent, request id), and timestamps.
//! - [`writer`]: the append-only file writer thread.

mod origin;
#[cfg(test)]
mod tests;
mod writer;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use flotilla_protocol::{Digest, RepoName, Tag};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub(crate) use self::origin::{Origin, rfc3339_ms};
use crate::config::Config;
use crate::notify::{Notifier, NotifyError, NotifyStats};

/// The media type reported for blobs (their own type is only known to the manifests naming
/// them), as distribution reports it.
pub const BLOB_MEDIA_TYPE: &str = "application/octet-stream";

/// Longest a request waits for room in a full audit channel before its line is dropped.
pub const AUDIT_WAIT: Duration = Duration::from_millis(100);

/// The `[audit]` section: the append-only audit log.
///
/// ```
/// let cfg: flotilla_gateway::Config = toml::from_str(r#"
///     [audit]
///     path = "/var/log/flotilla/audit.log"
///     trusted_proxies = ["10.0.0.2"]
/// "#).unwrap();
/// assert!(cfg.audit.enabled);
/// assert_eq!(cfg.audit.queue, 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Write the audit log. Absent: true.
    pub enabled: bool,
    /// The log file; created (mode 0640, parent directories too) if missing, only ever appended
    /// to. Absent: `<data_dir>/audit.log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Lines that may wait for the writer before requests start waiting (see the module docs).
    /// Absent: 1024. 0 is treated as 1.
    pub queue: usize,
    /// Most lines written between two `fsync`s while lines keep coming (when the queue runs
    /// empty, the file is synced at once). Absent: 256. 0 is treated as 1.
    pub fsync_batch: usize,
    /// Addresses of reverse proxies whose `X-Forwarded-For` is believed: when a request comes
    /// from one of them, its client address (`remote` here, `request.addr` in notifications) is
    /// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Absent: none,
    /// so the header is ignored and the TCP peer is the client.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            path: None,
            queue: 1024,
            fsync_batch: 256,
            trusted_proxies: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// The file the log goes to for a gateway with data in `data_dir`.
    pub fn file(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join("audit.log"))
    }
}

/// Why the audit log or the notifier cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The audit file cannot be opened for appending.
    #[error("[audit]: cannot open {path}: {source}")]
    AuditFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread cannot be started.
    #[error("[audit]: cannot start the writer thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A `[[notifications.endpoints]]` entry is unusable.
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

/// What happened (the `action` of an audit line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// A blob upload completed, or a blob was mounted into a repository.
    BlobPush,
    /// A manifest was stored.
    ManifestPush,
    /// A tag now names a manifest (first set or moved).
    TagMove,
    /// A tag was removed.
    TagDelete,
    /// A manifest was removed (with its tags).
    ManifestDelete,
    /// A blob was unlinked from a repository.
    BlobDelete,
    /// A manifest was fetched (`GET`); notifications only, never audited.
    ManifestPull,
    /// A request was refused by access control (401 for presented credentials, 403).
    AuthFailure,
    /// A fleet member was revoked (`reason`: the peer id and the admin's reason).
    MemberRevoke,
    /// A revoked fleet member was restored (`reason`: the peer id).
    MemberRestore,
}

impl Action {
    /// The name in audit lines.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::BlobPush => "blob.push",
            Action::ManifestPush => "manifest.push",
            Action::TagMove => "tag.move",
            Action::TagDelete => "tag.delete",
            Action::ManifestDelete => "manifest.delete",
            Action::BlobDelete => "blob.delete",
            Action::ManifestPull => "manifest.pull",
            Action::AuthFailure => "auth.failure",
            Action::MemberRevoke => "member.revoke",
            Action::MemberRestore => "member.restore",
        }
    }

    fn audited(self) -> bool {
        self != Action::ManifestPull
    }
}

/// One thing that happened, with what is known about it; absent fields do not apply.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) time: SystemTime,
    pub(crate) action: Action,
    pub(crate) origin: Arc<Origin>,
    pub(crate) repository: Option<String>,
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
    /// `tag.move`: what the tag named before (`None` when it was first set).
    pub(crate) previous_digest: Option<String>,
    pub(crate) media_type: Option<String>,
    pub(crate) size: Option<u64>,
    /// `blob.push`: `"upload"` or `"mount"`.
    pub(crate) via: Option<&'static str>,
    /// `blob.push` by mount: the repository named by `from=`.
    pub(crate) from_repository: Option<String>,
    /// `auth.failure`: the HTTP status (401 or 403) and why.
    pub(crate) status: Option<u16>,
    pub(crate) reason: Option<String>,
}

impl Event {
    /// An event of `action` now, for the request `origin`, with every other field empty.
    pub(crate) fn new(action: Action, origin: &Arc<Origin>) -> Event {
        Event {
            time: SystemTime::now(),
            action,
            origin: origin.clone(),
            repository: None,
            tag: None,
            digest: None,
            previous_digest: None,
            media_type: None,
            size: None,
            via: None,
            from_repository: None,
            status: None,
            reason: None,
        }
    }

    /// The same event about `repository`.
    pub(crate) fn repo(mut self, repository: &impl std::fmt::Display) -> Event {
        self.repository = Some(repository.to_string());
        self
    }

    /// The same event about `digest`.
    pub(crate) fn digest(mut self, digest: &impl std::fmt::Display) -> Event {
        self.digest = Some(digest.to_string());
        self
    }

    /// `blob.push`: blob `d` of `size` bytes is now in `repo`, uploaded, or mounted (`mount`
    /// holds the `from=` repository, if one was named).
    pub(crate) fn blob_pushed(
        origin: &Arc<Origin>,
        repo: &RepoName,
        d: &Digest,
        size: u64,
        mount: Option<Option<&RepoName>>,
    ) -> Event {
        let mut ev = Event::new(Action::BlobPush, origin).repo(repo).digest(d);
        ev.size = Some(size);
        ev.media_type = Some(BLOB_MEDIA_TYPE.to_owned());
        ev.via = Some(if mount.is_some() { "mount" } else { "upload" });
        ev.from_repository = mount.flatten().map(|r| r.as_str().to_owned());
        ev
    }

    /// `manifest.push` or `manifest.pull` (`action`) of the manifest `d` in `repo`, by `tag` if
    /// one was used.
    pub(crate) fn manifest(
        action: Action,
        origin: &Arc<Origin>,
        repo: &RepoName,
        d: &Digest,
        tag: Option<&Tag>,
        media_type: &str,
        size: u64,
    ) -> Event {
        let mut ev = Event::new(action, origin).repo(repo).digest(d);
        ev.tag = tag.map(|t| t.as_str().to_owned());
        ev.media_type = Some(media_type.to_owned());
        ev.size = Some(size);
        ev
    }

    /// The audit line: one JSON object and a newline.
    fn audit_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let o = &*self.origin;
        let line = AuditLine {
            time: origin::rfc3339_ms(self.time),
            action: self.action.as_str(),
            actor: o.actor.as_deref().unwrap_or("anonymous"),
            remote: o.remote.as_deref(),
            method: &o.method,
            path: &o.path,
            repository: self.repository.as_deref(),
            tag: self.tag.as_deref(),
            digest: self.digest.as_deref(),
            previous_digest: match self.action {
                Action::TagMove => Some(self.previous_digest.as_deref()),
                _ => None,
            },
            media_type: self.media_type.as_deref(),
            size: self.size,
            via: self.via,
            from_repository: self.from_repository.as_deref(),
            status: self.status,
            reason: self.reason.as_deref(),
            request_id: &o.request_id,
            user_agent: o.user_agent.as_deref(),
        };
        let mut out = serde_json::to_vec(&line)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// The audit line's schema (see SPEC.md §3.9).
#[derive(Serialize)]
struct AuditLine<'a> {
    time: String,
    action: &'static str,
    actor: &'a str,
    remote: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    /// Present (possibly `null`) on `tag.move` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_digest: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_repository: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    request_id: &'a str,
    user_agent: Option<&'a str>,
}

/// The audit counters, as `/flotilla/v1/stats` shows them under `audit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AuditStats {
    /// Whether the audit log is on.
    pub enabled: bool,
    /// Lines written to the file.
    pub lines_written: u64,
    /// Lines lost: the channel stayed full for [`AUDIT_WAIT`], the writer had stopped, or the
    /// write failed.
    pub lines_dropped: u64,
    /// `write` or `fsync` calls that failed.
    pub write_errors: u64,
}

/// The counters the writer and the recording requests share.
#[derive(Debug, Default)]
pub(crate) struct AuditCounters {
    pub(crate) written: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl AuditCounters {
    /// Counts one dropped line; warns on the 1st, 2nd, 4th, 8th… so a stalled disk is visible
    /// without a warning per request.
    pub(crate) fn drop_line(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(dropped = n, why, "audit lines dropped");
        }
    }
}

/// The sending side of the audit log.
struct AuditSink {
    tx: mpsc::Sender<writer::Msg>,
    counters: Arc<AuditCounters>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The event hub: audit log and notifier (cheap to clone). [`Events::disabled`] records nothing.
#[derive(Clone)]
pub struct Events(Arc<Hub>);

struct Hub {
    audit: Option<AuditSink>,
    notifier: Option<Notifier>,
    trusted_proxies: Vec<IpAddr>,
}

impl Events {
    /// A hub that records nothing (no audit log, no endpoints).
    pub fn disabled() -> Events {
        Events(Arc::new(Hub {
            audit: None,
            notifier: None,
            trusted_proxies: Vec::new(),
        }))
    }

    /// Opens the audit log and starts the notifier's senders as `config` says.
    ///
    /// # Errors
    /// [`EventsError`] if the audit file cannot be opened or an endpoint is unusable.
    pub fn start(config: &Config) -> Result<Events, EventsError> {
        let audit = if config.audit.enabled {
            let path = config.audit.file(&config.data_dir);
            let file = writer::open(&path).map_err(|source| EventsError::AuditFile {
                path: path.clone(),
                source,
            })?;
            let (tx, rx) = mpsc::channel(config.audit.queue.max(1));
            let counters = Arc::new(AuditCounters::default());
            let thread = writer::spawn(file, rx, counters.clone(), config.audit.fsync_batch)
                .map_err(EventsError::Thread)?;
            tracing::info!(path = %path.display(), "audit log on");
            Some(AuditSink {
                tx,
                counters,
                thread: std::sync::Mutex::new(Some(thread)),
            })
        } else {
            None
        };
        let notifier = Notifier::start(config)?;
        Ok(Events(Arc::new(Hub {
            audit,
            notifier,
            trusted_proxies: config.audit.trusted_proxies.clone(),
        })))
    }

    /// Whether anything is recorded (otherwise origins need not be worked out).
    pub(crate) fn active(&self) -> bool {
        self.0.audit.is_some() || self.0.notifier.is_some()
    }

    /// Whether manifest pulls are wanted by some endpoint.
    pub(crate) fn wants_pulls(&self) -> bool {
        self.0.notifier.as_ref().is_some_and(Notifier::wants_pulls)
    }

    /// The origin of `req` (its TCP peer from `ConnectInfo`, if the server set it); an empty
    /// one when nothing is recorded.
    pub(crate) fn origin<B>(&self, req: &axum::http::Request<B>) -> Origin {
        if !self.active() {
            return Origin::default();
        }
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        Origin::of(
            req.method(),
            req.uri(),
            req.headers(),
            peer,
            &self.0.trusted_proxies,
        )
    }

    /// Hands `event` to the audit log (waiting at most [`AUDIT_WAIT`] for room) and to every
    /// endpoint that wants it (never waiting).
    pub(crate) async fn record(&self, event: Event) {
        if let Some(n) = &self.0.notifier {
            n.offer(&event);
        }
        let Some(a) = &self.0.audit else { return };
        if !event.action.audited() {
            return;
        }
        let line = match event.audit_line() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise an audit line");
                a.counters.drop_line("serialisation failed");
                return;
            }
        };
        match a.tx.try_send(writer::Msg::Line(line)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                if a.tx.send_timeout(msg, AUDIT_WAIT).await.is_err() {
                    a.counters.drop_line("audit channel full");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => a.counters.drop_line("writer stopped"),
        }
    }

    /// The audit counters.
    pub fn audit_stats(&self) -> AuditStats {
        match &self.0.audit {
            Some(a) => AuditStats {
                enabled: true,
                lines_written: a.counters.written.load(Ordering::Relaxed),
                lines_dropped: a.counters.dropped.load(Ordering::Relaxed),
                write_errors: a.counters.errors.load(Ordering::Relaxed),
            },
            None => AuditStats::default(),
        }
    }

    /// The per-endpoint notification counters, in configuration order.
    pub fn notify_stats(&self) -> Vec<NotifyStats> {
        self.0
            .notifier
            .as_ref()
            .map(Notifier::stats)
            .unwrap_or_default()
    }

    /// Stops both: the audit writer writes and syncs what it was sent, the senders get `grace`
    /// to deliver what is queued. Events recorded afterwards are dropped (and counted).
    pub async fn shutdown(&self, grace: Duration) {
        if let Some(n) = &self.0.notifier {
            n.shutdown(grace).await;
        }
        let Some(a) = &self.0.audit else { return };
        if a.tx.send_timeout(writer::Msg::Stop, grace).await.is_err() {
            tracing::warn!("audit writer did not take the stop request; some lines may be lost");
            return;
        }
        let thread = a.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let joined = tokio::time::timeout(grace, tokio::task::spawn_blocking(move || t.join()));
            match joined.await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => tracing::error!("the audit writer thread panicked"),
                Err(_) => tracing::warn!("the audit writer did not finish within the grace period"),
            }
        }
    }
}
