//! Webhook notifications in distribution's event format (`[[notifications.endpoints]]`).
//!
//! Every push, mount and delete (and, for endpoints that ask, every manifest `GET`) becomes one
//! event of distribution's envelope, `Content-Type: application/vnd.docker.distribution.events.v1+json`:
//!
//! ```json
//! {"events": [{"id": "…", "timestamp": "…", "action": "push",
//!   "target": {"mediaType": "…", "size": 1, "digest": "sha256:…", "length": 1,
//!              "repository": "…", "url": "http://host/v2/…", "tag": "…"},
//!   "request": {"id": "…", "addr": "ip:port", "host": "…", "method": "PUT", "useragent": "…"},
//!   "actor": {"name": "…"}, "source": {"addr": "…", "instanceID": "…"}}]}
//! ```
//!
//! # Delivery
//! Each endpoint has its own bounded queue and one sender task ([`sender`]). Recording an event
//! never waits: when the queue is full the oldest queued event is dropped and counted, so a
//! failing or hanging endpoint costs memory up to its queue and nothing else. The sender posts
//! up to `batch` events per request; any 2xx or 3xx answer is a delivery (as in distribution;
//! redirects are not followed). A failure (error status, connection error, timeout) is retried
//! after an exponential backoff with jitter (`backoff_initial_ms` doubling up to
//! `backoff_max_ms`) until it succeeds or the events are older than `max_age_secs`, after which
//! they are dropped and counted as expired. Events are delivered in order per endpoint. Queued
//! events live in memory only: a restart loses them.
//!
//! # Layout
//! - [`sender`]: the queue and the sender task. [`client`]: one HTTP/1.1 POST over TCP or TLS.

mod client;
mod sender;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use self::sender::{Item, Queue};
use crate::audit::{Action, Event};
use crate::config::Config;

/// The media type of distribution's event envelope.
pub const EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// The `[notifications]` section.
///
/// ```
/// let cfg: flotilla_gateway::Config = toml::from_str(r#"
///     [[notifications.endpoints]]
///     name = "ci"
///     url = "https://hooks.example.com/registry"
///     headers = { Authorization = "Bearer s3cret" }
///     events = ["push", "delete"]
/// "#).unwrap();
/// let ep = &cfg.notifications.endpoints[0];
/// assert_eq!(ep.timeout_ms, 5000);
/// assert_eq!(ep.backoff_max_ms, 60_000);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// `source.addr` of events: how receivers should name this gateway. Absent: the `listen`
    /// address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_addr: Option<String>,
    /// The receivers (`[[notifications.endpoints]]`). Absent: none, nothing is sent.
    pub endpoints: Vec<EndpointConfig>,
}

/// One `[[notifications.endpoints]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Names the endpoint in logs and stats; unique.
    pub name: String,
    /// Where events are POSTed: an `http://` or `https://` URL.
    pub url: String,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: BTreeMap<String, String>,
    /// Skip this endpoint. Absent: false.
    pub disabled: bool,
    /// The longest one delivery attempt may take (connect, send, answer), in milliseconds.
    /// Absent: 5000.
    pub timeout_ms: u64,
    /// Which actions to send: `push`, `mount`, `delete`, `pull` (manifest `GET`s only). Absent:
    /// push, mount and delete.
    pub events: Vec<NotifyAction>,
    /// Only events whose `target.mediaType` is listed (blob deletes have none). Absent or empty:
    /// all.
    pub media_types: Vec<String>,
    /// Events waiting for delivery; when full, the oldest is dropped. Absent: 1024. 0 is 1.
    pub queue: usize,
    /// Most events per request. Absent: 16. 0 is 1.
    pub batch: usize,
    /// The wait after the first failed attempt, in milliseconds; doubled after each further
    /// failure (with jitter: a random wait between half and all of it). Absent: 1000.
    pub backoff_initial_ms: u64,
    /// The longest wait between attempts, in milliseconds. Absent: 60000.
    pub backoff_max_ms: u64,
    /// Events older than this (seconds since recorded) are dropped instead of retried.
    /// Absent: 3600.
    pub max_age_secs: u64,
    /// PEM file of CA certificates that `https://` endpoints are verified against. Absent: the
    /// system bundle (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt` and the other
    /// usual places).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            name: String::new(),
            url: String::new(),
            headers: BTreeMap::new(),
            disabled: false,
            timeout_ms: 5000,
            events: vec![
                NotifyAction::Push,
                NotifyAction::Mount,
                NotifyAction::Delete,
            ],
            media_types: Vec::new(),
            queue: 1024,
            batch: 16,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            max_age_secs: 3600,
            ca_file: None,
        }
    }
}

/// The `action` of a distribution event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyAction {
    /// A blob upload completed or a manifest was stored.
    Push,
    /// A blob was mounted from another repository.
    Mount,
    /// A manifest, tag or blob was deleted.
    Delete,
    /// A manifest was fetched.
    Pull,
}

impl NotifyAction {
    fn as_str(self) -> &'static str {
        match self {
            NotifyAction::Push => "push",
            NotifyAction::Mount => "mount",
            NotifyAction::Delete => "delete",
            NotifyAction::Pull => "pull",
        }
    }
}

/// Why an endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A setting of `[[notifications.endpoints]]` is unusable.
    #[error("[[notifications.endpoints]] {name:?}: {problem}")]
    Endpoint {
        /// The endpoint's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// One endpoint's counters, as `/flotilla/v1/stats` shows them under `notifications`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotifyStats {
    /// The endpoint's name.
    pub name: String,
    /// Events delivered (answered 2xx or 3xx).
    pub delivered: u64,
    /// Delivery attempts that failed (error status, connection error or timeout).
    pub failed: u64,
    /// Events dropped because the queue was full (or the gateway stopped).
    pub dropped: u64,
    /// Events dropped after `max_age_secs` of failed attempts.
    pub expired: u64,
    /// Events waiting now (queued or in the attempt under way).
    pub pending: u64,
}

/// A distribution event (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct NotifyEvent {
    pub(crate) id: String,
    pub(crate) timestamp: String,
    pub(crate) action: &'static str,
    pub(crate) target: Target,
    pub(crate) request: RequestRecord,
    pub(crate) actor: ActorRecord,
    pub(crate) source: SourceRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Target {
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none")]
    pub(crate) media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) length: Option<u64>,
    pub(crate) repository: String,
    #[serde(rename = "fromRepository", skip_serializing_if = "Option::is_none")]
    pub(crate) from_repository: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RequestRecord {
    pub(crate) id: String,
    pub(crate) addr: String,
    pub(crate) host: String,
    pub(crate) method: String,
    pub(crate) useragent: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ActorRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SourceRecord {
    pub(crate) addr: String,
    #[serde(rename = "instanceID")]
    pub(crate) instance_id: String,
}

/// The envelope POSTed to endpoints.
#[derive(Serialize)]
pub(crate) struct Envelope<'a> {
    pub(crate) events: Vec<&'a NotifyEvent>,
}

/// An endpoint's filters and queue.
struct Endpoint {
    actions: Vec<NotifyAction>,
    media_types: Vec<String>,
    queue: Arc<Queue>,
}

/// The notifier: builds events and queues them per endpoint.
pub(crate) struct Notifier {
    endpoints: Vec<Endpoint>,
    source: SourceRecord,
    scheme: &'static str,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Notifier {
    /// Checks the endpoints and starts one sender task each; `None` when none is enabled.
    pub(crate) fn start(config: &Config) -> Result<Option<Notifier>, NotifyError> {
        let cfg = &config.notifications;
        let enabled: Vec<&EndpointConfig> = cfg.endpoints.iter().filter(|e| !e.disabled).collect();
        if enabled.is_empty() {
            return Ok(None);
        }
        let mut names = std::collections::BTreeSet::new();
        let mut prepared = Vec::with_capacity(enabled.len());
        for ep in &enabled {
            let bad = |problem: String| NotifyError::Endpoint {
                name: ep.name.clone(),
                problem,
            };
            if ep.name.is_empty() || !names.insert(ep.name.as_str()) {
                return Err(bad("every endpoint needs a unique, non-empty name".into()));
            }
            if ep.timeout_ms == 0 || ep.backoff_initial_ms == 0 {
                return Err(bad(
                    "timeout_ms and backoff_initial_ms must be at least 1".into()
                ));
            }
            if ep.backoff_max_ms < ep.backoff_initial_ms {
                return Err(bad(
                    "backoff_max_ms must be at least backoff_initial_ms".into()
                ));
            }
            let target = client::Target::new(&ep.url, &ep.headers, ep.ca_file.as_deref())
                .map_err(|e| bad(e.to_string()))?;
            prepared.push((ep, target));
        }
        let (stop, stop_rx) = watch::channel(false);
        let mut endpoints = Vec::with_capacity(prepared.len());
        let mut tasks = Vec::with_capacity(prepared.len());
        for (ep, target) in prepared {
            let queue = Arc::new(Queue::new(ep.name.clone(), ep.queue.max(1)));
            let policy = sender::Policy {
                batch: ep.batch.max(1),
                timeout: Duration::from_millis(ep.timeout_ms),
                backoff_initial: Duration::from_millis(ep.backoff_initial_ms),
                backoff_max: Duration::from_millis(ep.backoff_max_ms),
                max_age: Duration::from_secs(ep.max_age_secs),
            };
            tasks.push(tokio::spawn(sender::run(
                queue.clone(),
                target,
                policy,
                stop_rx.clone(),
            )));
            tracing::info!(endpoint = %ep.name, url = %ep.url, "notification endpoint on");
            endpoints.push(Endpoint {
                actions: ep.events.clone(),
                media_types: ep.media_types.clone(),
                queue,
            });
        }
        Ok(Some(Notifier {
            endpoints,
            source: SourceRecord {
                addr: cfg
                    .source_addr
                    .clone()
                    .unwrap_or_else(|| config.listen.to_string()),
                instance_id: uuid::Uuid::new_v4().to_string(),
            },
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            stop,
            tasks: std::sync::Mutex::new(tasks),
        }))
    }

    /// Whether some endpoint wants manifest pulls.
    pub(crate) fn wants_pulls(&self) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.actions.contains(&NotifyAction::Pull))
    }

    /// Queues `event` for every endpoint whose filters let it through (never waits).
    pub(crate) fn offer(&self, event: &Event) {
        let Some((action, ev)) = self.convert(event) else {
            return;
        };
        let ev = Arc::new(ev);
        for ep in &self.endpoints {
            if !ep.actions.contains(&action) {
                continue;
            }
            if !ep.media_types.is_empty()
                && !ev
                    .target
                    .media_type
                    .as_ref()
                    .is_some_and(|m| ep.media_types.contains(m))
            {
                continue;
            }
            ep.queue.push(Item::new(ev.clone()));
        }
    }

    /// The distribution event for `event`, if it has one (tag moves are told by the manifest
    /// push that carries the tag; authentication failures and fleet revocations are not told:
    /// distribution has no such events).
    fn convert(&self, event: &Event) -> Option<(NotifyAction, NotifyEvent)> {
        let action = match event.action {
            Action::BlobPush if event.via == Some("mount") => NotifyAction::Mount,
            Action::BlobPush | Action::ManifestPush => NotifyAction::Push,
            Action::TagDelete | Action::ManifestDelete | Action::BlobDelete => NotifyAction::Delete,
            Action::ManifestPull => NotifyAction::Pull,
            Action::TagMove
            | Action::AuthFailure
            | Action::MemberRevoke
            | Action::MemberRestore => return None,
        };
        let o = &event.origin;
        let repository = event.repository.clone()?;
        let host = o.host.clone().unwrap_or_else(|| self.source.addr.clone());
        let kind = match event.action {
            Action::BlobPush | Action::BlobDelete => "blobs",
            _ => "manifests",
        };
        let url = event
            .digest
            .as_ref()
            .map(|d| format!("{}://{host}/v2/{repository}/{kind}/{d}", self.scheme));
        let ev = NotifyEvent {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: crate::audit::rfc3339_ms(event.time),
            action: action.as_str(),
            target: Target {
                media_type: event.media_type.clone(),
                size: event.size,
                digest: event.digest.clone(),
                length: event.size,
                repository,
                from_repository: event.from_repository.clone(),
                url,
                tag: event.tag.clone(),
            },
            request: RequestRecord {
                id: o.request_id.clone(),
                addr: o.remote.clone().unwrap_or_default(),
                host,
                method: o.method.clone(),
                useragent: o.user_agent.clone().unwrap_or_default(),
            },
            actor: ActorRecord {
                name: o.actor.clone(),
            },
            source: self.source.clone(),
        };
        Some((action, ev))
    }

    /// The counters of every endpoint.
    pub(crate) fn stats(&self) -> Vec<NotifyStats> {
        self.endpoints.iter().map(|e| e.queue.stats()).collect()
    }

    /// Tells the senders to deliver what is queued and stop; waits at most `grace`, then stops
    /// them where they are.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        if tokio::time::timeout(grace, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("notification senders still busy after the grace period; stopping them");
            for a in aborts {
                a.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests;
