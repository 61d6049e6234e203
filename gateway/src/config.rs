//! The gateway's configuration: one serde struct, read from TOML by the binary and overridden by
//! flags and environment variables there.
//!
//! Every field may be left out of a file; an absent field takes its [`Default`] value, and the
//! defaults together are a working local setup (`127.0.0.1:5000`, data in `./flotilla-data`).
//! Unknown keys are refused so that a misspelt setting is an error, not a silent default.
//!
//! Access control (`[auth]`, see [`AuthConfig`]) and HTTPS (`[tls]`, see [`TlsConfig`]) are off
//! unless their section is present: without them the registry is open, over plain HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::audit::AuditConfig;
pub use crate::notify::{EndpointConfig, NotificationsConfig, NotifyAction};
use crate::registry::StorageConfig;

/// Everything the gateway can be told at start-up.
///
/// ```
/// let cfg: flotilla_gateway::Config = toml::from_str("listen = \"0.0.0.0:5000\"").unwrap();
/// assert_eq!(cfg.max_manifest_bytes, 4 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port to listen on. Absent: `127.0.0.1:5000` (loopback only, which docker
    /// treats as an insecure registry, so plain HTTP needs no daemon configuration).
    pub listen: SocketAddr,
    /// Directory holding blob files and the metadata database; created if missing. Absent:
    /// `./flotilla-data`, relative to the working directory.
    pub data_dir: PathBuf,
    /// Largest manifest accepted by `PUT /v2/<name>/manifests/<ref>`, in bytes; larger pushes get
    /// `413 Payload Too Large`. Absent: 4 MiB, the size the distribution spec says clients and
    /// registries should expect to support.
    pub max_manifest_bytes: usize,
    /// Seconds an upload session may sit idle (no PATCH/PUT) before it and its partial data are
    /// removed. Absent: 3600 (one hour).
    pub upload_ttl_secs: u64,
    /// Seconds between two garbage collections (SPEC §2.4: blob files no manifest references
    /// are deleted, with their links). 0: never on its own (`flotilla gc` still runs one).
    /// Absent: 86400 (daily).
    pub gc_interval_secs: u64,
    /// A blob no manifest references is kept while it was written or used (linked, mounted,
    /// asked for) within this many seconds: a push names its blobs in a manifest only at the
    /// end. Absent: 3600.
    pub gc_min_age_secs: u64,
    /// Blob bytes per second the gateway may send, HTTP blob bodies (to docker and to nodes)
    /// and swarm pieces together, so the origin never takes more of its host's uplink than
    /// given. Absent: no cap; 0 is refused at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_bytes_per_s: Option<u64>,
    /// Largest blob accepted, in bytes; a push past it gets `413 SIZE_INVALID`. Absent: 1 TiB.
    pub max_blob_bytes: u64,
    /// Most upload sessions open at once; more get `429 TOOMANYREQUESTS`. Absent: 1024.
    pub max_uploads: usize,
    /// Milliseconds during which a piece range the gateway began sending to one fleet member
    /// over `/flotilla/v1/blobs` is refused to the others (`429`; they take it from the swarm).
    /// 0 turns it off. Absent: 8000.
    pub origin_dedup_ms: u64,
    /// Milliseconds the refusal lasts instead while the member it went to is still connected to
    /// the gateway's swarm (it can serve the range; the refusal names it). Not below
    /// `origin_dedup_ms`; 0: no longer than that. Absent: 60000.
    pub origin_dedup_connected_ms: u64,
    /// Most piece answers of `/flotilla/v1/blobs` streaming at once; later piece requests wait
    /// for one to end, first come first served (the first pieces of a fleet-wide pull land early
    /// instead of all together). 0: no limit. Absent: 32.
    pub origin_max_sends: usize,
    /// Seconds a request body may pause before it is cut off (the bytes that arrived stay in
    /// the upload, which can resume). Absent: 60.
    pub body_idle_secs: u64,
    /// Most client connections open at once; beyond it new ones wait in the kernel's backlog
    /// until one closes. Absent: 4096.
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers, and may sit idle between
    /// requests. Absent: 30.
    pub header_timeout_secs: u64,
    /// Most entries returned by one page of `GET /v2/<name>/tags/list` or `GET /v2/_catalog`, even
    /// when the client asks for more or sets no `n`; a `Link: <…>; rel="next"` header then points
    /// at the rest. Absent: 10000. A value of 0 is treated as 1.
    pub max_list_entries: usize,
    /// Seconds to keep serving in-flight requests after a shutdown signal (new connections are
    /// refused at once); requests still running after that are cut off. Absent: 30.
    pub shutdown_grace_secs: u64,
    /// libp2p addresses the gateway's swarm listens on, to seed its blobs to nodes (QUIC, and
    /// TCP for networks that drop UDP). Nodes learn them from `GET /flotilla/v1/info`. An empty
    /// list runs no swarm (nodes then fetch from the gateway over HTTP only). Absent: every
    /// interface, ephemeral ports.
    pub p2p_listen: Vec<String>,
    /// Requested UDP socket buffer size for QUIC, in bytes. Absent: 4 MiB.
    pub udp_buffer_bytes: usize,
    /// The fleet join token nodes present to `POST /flotilla/v1/join` for their membership
    /// certificate (SPEC §5.3). Absent: the token in `<data_dir>/fleet.token`, created with a
    /// random one on first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_token: Option<String>,
    /// Seconds a membership certificate is valid (nodes renew at half life). Absent: 86400.
    pub member_cert_secs: u64,
    /// Authentication and authorisation of the registry API. Absent: everyone may do everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Serve HTTPS with this certificate instead of plain HTTP. Absent: plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The append-only audit log (`[audit]`). Absent: on, in `<data_dir>/audit.log`.
    pub audit: AuditConfig,
    /// Webhook notifications (`[[notifications.endpoints]]`). Absent: none.
    pub notifications: NotificationsConfig,
}

/// The `[auth]` section: who may do what to which repository.
///
/// Identities come from an htpasswd file (bcrypt entries) and reach the gateway either as
/// `Authorization: Basic` on every request or, the docker way, as a short-lived bearer token
/// from the gateway's own token endpoint (`GET /auth/token`). What an identity may do is decided
/// by [`AuthConfig::rules`]: the first rule whose pattern matches the repository name decides;
/// when none matches, nothing is allowed (except to [`AuthConfig::admins`]).
///
/// ```
/// let cfg: flotilla_gateway::Config = toml::from_str(r#"
///     [auth]
///     htpasswd = "/etc/flotilla/htpasswd"
///     admins = ["root"]
///
///     [[auth.rules]]
///     repository = "public/**"
///     anonymous = ["pull"]
///     users = { alice = ["pull", "push", "delete"] }
///
///     [[auth.rules]]
///     repository = "team-*/**"
///     authenticated = ["pull", "push"]
/// "#).unwrap();
/// let auth = cfg.auth.unwrap();
/// assert_eq!(auth.rules.len(), 2);
/// assert_eq!(auth.token.lifetime_secs, 300);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The htpasswd file (`user:$2y$…` lines, bcrypt only; make entries with `htpasswd -nB`).
    /// Read once at start-up. Absent: no users, so only anonymous rights exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Users allowed everything on every repository, and the catalog (`GET /v2/_catalog`).
    pub admins: Vec<String>,
    /// Users who may read `GET /metrics`, besides the admins (a Prometheus scraper's account;
    /// it sends Basic credentials or a bearer token). Absent: `/metrics` is open to anyone, as
    /// `/flotilla/v1/stats` is; `[]`: admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_users: Option<Vec<String>>,
    /// Seconds a successful Basic password check is remembered, so that clients sending
    /// `Authorization: Basic` on every request do not pay a bcrypt verification each time.
    /// 0 disables the cache. Absent: 60.
    pub credential_cache_secs: u64,
    /// The bearer-token service docker uses (`[auth.token]`).
    pub token: TokenConfig,
    /// Access rules, first match wins (`[[auth.rules]]`). Absent: none, so only admins may do
    /// anything.
    pub rules: Vec<AccessRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            admins: Vec::new(),
            metrics_users: None,
            credential_cache_secs: 60,
            token: TokenConfig::default(),
            rules: Vec::new(),
        }
    }
}

/// The `[auth.token]` section: the token endpoint and the tokens it signs (Ed25519 JWTs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The `service` of challenges and the audience (`aud`) of tokens. Absent: `"flotilla"`.
    pub service: String,
    /// The issuer (`iss`) of tokens. Absent: `"flotilla-gateway"`.
    pub issuer: String,
    /// Seconds a token is valid. Absent: 300.
    pub lifetime_secs: u64,
    /// The absolute URL of the token endpoint put in challenges
    /// (`https://registry.example.com/auth/token`); set it when the gateway sits behind a proxy.
    /// Absent: built from the request's `Host` and the gateway's scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// PEM PKCS#8 Ed25519 private key that signs tokens; created (mode 0600) if missing. Give
    /// every gateway behind one name the same key. Absent: `<data_dir>/auth/token-key.pem`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            service: "flotilla".to_owned(),
            issuer: "flotilla-gateway".to_owned(),
            lifetime_secs: 300,
            realm: None,
            key_file: None,
        }
    }
}

/// One `[[auth.rules]]` entry: the rights on repositories whose name matches `repository`.
///
/// A user gets the union of `anonymous`, `authenticated` and their own entry in `users`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A glob over repository names: `*` matches within one `/`-separated segment, a `**`
    /// segment matches any number of segments (zero included): `team/*`, `team/**`, `**`.
    pub repository: String,
    /// What requests without credentials may do.
    #[serde(default)]
    pub anonymous: Vec<Action>,
    /// What any user of the htpasswd file may do.
    #[serde(default)]
    pub authenticated: Vec<Action>,
    /// What each named user may do.
    #[serde(default)]
    pub users: BTreeMap<String, Vec<Action>>,
}

/// What a request does to a repository. `GET`/`HEAD` are `pull`; `POST`/`PUT`/`PATCH` and every
/// upload-session request are `push`; `DELETE` of a blob or manifest is `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read manifests, blobs, tags and referrers.
    Pull,
    /// Upload blobs and manifests.
    Push,
    /// Delete blobs, manifests and tags.
    Delete,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The name used in configs and token scopes.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// The `[tls]` section: serve HTTPS (TLS 1.2 and 1.3, rustls) on `listen`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./flotilla-data"),
            max_manifest_bytes: 4 * 1024 * 1024,
            upload_ttl_secs: 3600,
            gc_interval_secs: 24 * 3600,
            gc_min_age_secs: 3600,
            upload_bytes_per_s: None,
            max_blob_bytes: 1 << 40,
            max_uploads: 1024,
            origin_dedup_ms: 8000,
            origin_dedup_connected_ms: 60_000,
            origin_max_sends: 32,
            body_idle_secs: 60,
            max_connections: 4096,
            header_timeout_secs: 30,
            max_list_entries: 10_000,
            shutdown_grace_secs: 30,
            p2p_listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
                "/ip4/0.0.0.0/tcp/0".to_owned(),
            ],
            udp_buffer_bytes: 4 << 20,
            fleet_token: None,
            member_cert_secs: 24 * 3600,
            auth: None,
            tls: None,
            audit: AuditConfig::default(),
            notifications: NotificationsConfig::default(),
        }
    }
}

impl Config {
    /// The storage engine's part of the configuration.
    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            data_dir: self.data_dir.clone(),
            max_manifest_bytes: self.max_manifest_bytes,
            upload_ttl: Duration::from_secs(self.upload_ttl_secs),
            limits: crate::registry::Limits {
                max_blob_bytes: self.max_blob_bytes,
                max_uploads: self.max_uploads.max(1),
                body_idle: Duration::from_secs(self.body_idle_secs.max(1)),
            },
            gc: crate::registry::GcConfig {
                interval: (self.gc_interval_secs > 0)
                    .then(|| Duration::from_secs(self.gc_interval_secs)),
                min_age: Duration::from_secs(self.gc_min_age_secs),
            },
            upload_bytes_per_s: self.upload_bytes_per_s,
        }
    }

    /// [`Config::max_list_entries`], never below 1.
    pub(crate) fn page_limit(&self) -> usize {
        self.max_list_entries.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = Config {
            listen: "0.0.0.0:5001".parse().unwrap(),
            max_list_entries: 7,
            ..Config::default()
        };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), cfg);
    }

    #[test]
    fn auth_and_tls_round_trip_through_toml() {
        let cfg = Config {
            auth: Some(AuthConfig {
                htpasswd: Some("/etc/htpasswd".into()),
                admins: vec!["root".to_owned()],
                rules: vec![AccessRule {
                    repository: "team/**".to_owned(),
                    anonymous: vec![Action::Pull],
                    authenticated: vec![],
                    users: BTreeMap::from([("alice".to_owned(), Action::ALL.to_vec())]),
                }],
                ..AuthConfig::default()
            }),
            tls: Some(TlsConfig {
                cert: "/c.pem".into(),
                key: "/k.pem".into(),
            }),
            ..Config::default()
        };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), cfg);
    }

    #[test]
    fn misspelt_actions_and_keys_are_refused() {
        let bad_action = "[auth]\n[[auth.rules]]\nrepository = \"x\"\nanonymous = [\"pul\"]\n";
        assert!(toml::from_str::<Config>(bad_action).is_err());
        assert!(toml::from_str::<Config>("[auth]\nhtpasswdd = \"x\"\n").is_err());
        assert!(toml::from_str::<Config>("[tls]\ncert = \"c\"\n").is_err());
        let empty: Config = toml::from_str("[auth]\n").unwrap();
        assert_eq!(empty.auth, Some(AuthConfig::default()));
    }
}
