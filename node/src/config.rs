//! The node's configuration: one serde struct, read from TOML by the binary and overridden by
//! flags and environment variables there. The defaults are a working single-host setup next to
//! a gateway on `127.0.0.1:5000`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything a node can be told at start-up.
///
/// ```
/// let cfg: flotilla_node::NodeConfig = toml::from_str("gateway = \"http://10.0.0.1:5000\"").unwrap();
/// assert_eq!(cfg.listen.port(), 5001);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Address of the node's read-only OCI endpoint, where docker and containerd on this host
    /// pull. Absent: `127.0.0.1:5001` (loopback only; docker treats it as an insecure registry).
    pub listen: SocketAddr,
    /// Directory for the node's identity, pieces and index; created if missing. Absent:
    /// `./flotilla-node-data`.
    pub data_dir: PathBuf,
    /// Base URL of the gateway, which holds tags and manifests and signs piece tables. Absent:
    /// `http://127.0.0.1:5000`.
    pub gateway: String,
    /// libp2p addresses the swarm listens on (QUIC first, TCP as the fallback for networks that
    /// drop UDP). Absent: every interface, ephemeral ports.
    pub p2p_listen: Vec<String>,
    /// Extra peers to bootstrap from (multiaddrs ending in `/p2p/<peer id>`); the gateway's own
    /// addresses, read from its `/flotilla/v1/info`, are always used. Absent: none.
    pub bootstrap: Vec<String>,
    /// Most bytes of blobs kept on disk; least recently used blobs are evicted beyond it, pinned
    /// ones never. Absent: 20 GiB.
    pub cache_bytes: u64,
    /// Blob digests never evicted (e.g. the layers of a base image every workload needs).
    pub pinned: Vec<String>,
    /// Piece bytes go to and from blob files around the page cache (`O_DIRECT`) where the file
    /// system allows it: each byte is copied once less, and on VMs that reclaim freed guest
    /// memory first touches of fresh cache pages cost ~3 CPU-s per GiB (SPEC §6.1). Every
    /// piece served to a peer or a client is then read from the disk, though: set `false` where
    /// reads are dear (network block devices) and the page cache should keep hot layers.
    /// Absent: `true`.
    pub direct_io: bool,
    /// Requested UDP socket buffer size for QUIC, in bytes. Absent: 4 MiB. The kernel caps it at
    /// `net.core.rmem_max` / `wmem_max` unless the process may override them.
    pub udp_buffer_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM. Absent: 10.
    pub shutdown_grace_secs: u64,
    /// Seconds a peer may hold requests it accepted without sending a byte of any answer (over
    /// three request timeouts in a row) before a download drops it for good. Absent: 10.
    pub peer_stall_secs: u64,
    /// The fleet join token, which the gateway asks for before it issues this node a
    /// membership certificate (SPEC §5.3); the gateway keeps it in `<data_dir>/fleet.token`.
    /// Without a token (here or in [`NodeConfig::fleet_token_file`]) the node does not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_token: Option<String>,
    /// A file holding the fleet join token (surrounding whitespace ignored); used when
    /// [`NodeConfig::fleet_token`] is absent, and read again at every enrollment and renewal,
    /// so a rotated token needs no restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an `https://` gateway, besides the system's
    /// (a private CA's). Absent: the system's CAs only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_ca_file: Option<PathBuf>,
    /// The gateway's peer id (base58), when known in advance: the node then refuses a gateway
    /// that answers with another identity (which would make it the fleet key). Absent: the node
    /// trusts the identity the gateway's `/flotilla/v1/info` gives on first contact, and keeps
    /// it (signed tag records and the certificate are bound to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_peer_id: Option<String>,
    /// This host's site: the name of the fast network it shares with some of the fleet (a data
    /// centre, an edge location), 1 to 63 of `A-Z a-z 0-9 . _ -`. Nodes with the same label
    /// find each other for every blob (SPEC §6.2) and take each piece from outside their site
    /// about once; a peer with another label, or none, is far. Absent: no site (every peer
    /// counts as near, as on one network).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Most bytes per second of pieces this node sends to peers, over all of them together
    /// (the uplink a fleet host lends the swarm). Absent: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_bytes_per_s: Option<u64>,
    /// Most bytes per second of pieces this node receives, from peers and the gateway
    /// together (the downlink a rollout may take from the host's own work). Absent: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_bytes_per_s: Option<u64>,
    /// Evict blobs unused for this many seconds (not read, not served, not being fetched;
    /// pinned ones stay), even with the cache below `cache_bytes`: the disk a rollout took
    /// is given back. Absent: blobs stay until the cache needs room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evict_unused_after_secs: Option<u64>,
    /// Threads that run the node's network, transfer and HTTP work (disk I/O runs on a separate
    /// pool). Absent: [`default_worker_threads`], half the CPUs the process may use, 1 to 4.
    /// Each thread carries ~0.6 GB/s of verified pieces here, and every thread beyond what the
    /// node needs costs CPU per byte in hand-offs between threads (docs/benchmarks.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
}

/// The node's worker threads when [`NodeConfig::worker_threads`] is absent: half the CPUs this
/// process may use (its cgroup's quota included), at least 1 and at most 4 — a fleet host's
/// node is a guest beside the host's own work, and 4 threads carry more than a 10-Gbit/s link.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4))
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5001)),
            data_dir: PathBuf::from("./flotilla-node-data"),
            gateway: "http://127.0.0.1:5000".to_owned(),
            p2p_listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1".to_owned(),
                "/ip4/0.0.0.0/tcp/0".to_owned(),
            ],
            bootstrap: Vec::new(),
            cache_bytes: 20 << 30,
            pinned: Vec::new(),
            direct_io: true,
            udp_buffer_bytes: 4 << 20,
            shutdown_grace_secs: 10,
            peer_stall_secs: 10,
            fleet_token: None,
            fleet_token_file: None,
            gateway_ca_file: None,
            gateway_peer_id: None,
            site: None,
            upload_bytes_per_s: None,
            download_bytes_per_s: None,
            evict_unused_after_secs: None,
            worker_threads: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let cfg: NodeConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, NodeConfig::default());
    }

    #[test]
    fn the_oci_endpoint_listens_on_loopback_by_default() {
        let cfg = NodeConfig::default();
        assert!(cfg.listen.ip().is_loopback(), "{}", cfg.listen);
        assert_eq!(cfg.listen, SocketAddr::from(([127, 0, 0, 1], 5001)));
        let from_file: NodeConfig = toml::from_str("gateway = \"http://10.0.0.1:5000\"").unwrap();
        assert!(from_file.listen.ip().is_loopback());
    }

    #[test]
    fn fleet_token_keys_parse() {
        let cfg: NodeConfig =
            toml::from_str("fleet_token = \"abc\"\nfleet_token_file = \"/t\"").unwrap();
        assert_eq!(cfg.fleet_token.as_deref(), Some("abc"));
        assert_eq!(cfg.fleet_token_file, Some(PathBuf::from("/t")));
    }

    #[test]
    fn the_site_label_parses() {
        let cfg: NodeConfig = toml::from_str("site = \"fra-1\"").unwrap();
        assert_eq!(cfg.site.as_deref(), Some("fra-1"));
        assert_eq!(NodeConfig::default().site, None);
    }

    #[test]
    fn the_upload_cap_parses() {
        let cfg: NodeConfig = toml::from_str("upload_bytes_per_s = 125000000").unwrap();
        assert_eq!(cfg.upload_bytes_per_s, Some(125_000_000));
        assert_eq!(NodeConfig::default().upload_bytes_per_s, None);
        let cfg: NodeConfig = toml::from_str("download_bytes_per_s = 50000000").unwrap();
        assert_eq!(cfg.download_bytes_per_s, Some(50_000_000));
        assert_eq!(NodeConfig::default().download_bytes_per_s, None);
        let cfg: NodeConfig = toml::from_str("evict_unused_after_secs = 86400").unwrap();
        assert_eq!(cfg.evict_unused_after_secs, Some(86_400));
        let cfg: NodeConfig = toml::from_str("worker_threads = 2").unwrap();
        assert_eq!(cfg.worker_threads, Some(2));
        assert!((1..=4).contains(&default_worker_threads()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<NodeConfig>("no_such_key = 1").is_err());
    }
}
