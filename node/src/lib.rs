//! flotilla's fleet node.
//!
//! Empty until the node issue lands: it will own the libp2p swarm (Kademlia over QUIC), the piece
//! transfer protocol, the local piece store and the node's read-only OCI endpoint. The gateway
//! depends on this crate so that it can seed its blobs into the swarm.
