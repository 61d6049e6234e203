//! flotilla's fleet node: finds who holds a blob through a libp2p Kademlia DHT over QUIC, fetches
//! pieces from many peers at once, verifies every piece, serves what it has while it downloads,
//! and offers a local read-only OCI endpoint.
//!
//! # Layout
//! - [`NodeConfig`], [`Node`], [`run`]: configuration and assembly of a running node.
//! - [`identity`]: the libp2p keypair kept in the data directory.
//! - [`ports`]: the traits between the parts (piece source and sink, network).
//! - [`swarm`]: the one task that owns the libp2p `Swarm`, and its cloneable handle.
//! - [`transfer`]: the piece-transfer protocol over libp2p streams (server and client side).
//! - [`direct_io`]: piece bytes to and from blob files around the page cache (`O_DIRECT`).
//! - [`store`]: blobs and partial blobs on disk with piece bitmaps, LRU eviction and pins.
//! - [`fetch`]: the download driver: runs the protocol scheduler for one blob over the network.
//! - [`tags`]: the signed tag records and manifests a node keeps to answer pulls while the
//!   gateway is unreachable.
//! - [`meta`]: `/flotilla/meta/1.0.0`, asking peers for tag records and manifests (and
//!   answering them), and resolving tags through a partition.
//! - [`oci`]: the read-only OCI endpoint (manifests from the gateway, blobs from the swarm).

pub mod config;
pub mod direct_io;
pub mod fetch;
pub mod gateway_http;
pub mod identity;
pub mod meta;
pub mod metrics;
mod node;
pub mod oci;
pub mod ports;
pub mod store;
pub mod swarm;
pub mod tags;
pub mod transfer;

pub use config::NodeConfig;
pub use node::{Node, NodeError, NodeOptions, NodeStats, WrapSource, run};
