//! The gateway's configuration: one serde struct, read from TOML by the binary and overridden by
//! flags and environment variables there.
//!
//! Every field may be left out of a file; an absent field takes its [`Default`] value, and the
//! defaults together are a working local setup (`127.0.0.1:5000`, data in `./flotilla-data`).
//! Unknown keys are refused so that a misspelt setting is an error, not a silent default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./flotilla-data"),
            max_manifest_bytes: 4 * 1024 * 1024,
            upload_ttl_secs: 3600,
            max_list_entries: 10_000,
            shutdown_grace_secs: 30,
            p2p_listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
                "/ip4/0.0.0.0/tcp/0".to_owned(),
            ],
            udp_buffer_bytes: 4 << 20,
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
}
