//! flotilla's protocol crate: pure types and logic, no I/O.
//!
//! Everything that both ends of a conversation must agree on lives here, so the gateway, the node
//! and the simulator share one definition of it.
//!
//! # Layout
//! - [`digest`]: `sha256:…` digests, the streaming [`digest::Hasher`], and the CIDv1 form used as
//!   the swarm's key.
//! - [`range`]: how to answer an HTTP `Range` on a blob (gateway and node alike), and how to
//!   read an upload chunk's `Content-Range`.
//! - [`reference`](mod@reference): repository names, tags, references and the one parser for `/v2/` paths.
//! - [`manifest`]: OCI and Docker manifests and indexes: media types, parsing, validation, and the
//!   blobs and child manifests a manifest refers to.
//! - [`membership`]: fleet membership certificates (signed by the gateway's key) and the
//!   proof a node gives to be issued one.
//! - [`piece`]: piece tables (BLAKE3 per piece, built while a blob streams), their signed wire form,
//!   the default piece size, and the bit fields peers exchange.
//! - [`scheduler`]: the sans-IO download scheduler for one blob, driven by the node and the
//!   simulator alike.
//! - [`send_limit`]: how many piece answers the gateway streams at once, adapted to what its
//!   uplink shows (the gateway and the simulator run it alike).
//! - [`tagrecord`]: tag → manifest records signed by the gateway, with a sequence number, so
//!   nodes can resolve tags from peers while the gateway is unreachable.
//! - [`wire`]: the piece-transfer wire protocol (`/flotilla/pieces/2.0.0`): frames, their
//!   byte layout and an incremental, strict decoder.
//!
//! # Example
//! ```
//! use flotilla_protocol::digest::Digest;
//! let d = Digest::sha256_of(b"hello");
//! assert_eq!(Digest::from_cid(&d.to_cid()).unwrap(), d);
//! ```

pub mod digest;
pub mod manifest;
pub mod membership;
pub mod piece;
pub mod range;
pub mod reference;
pub mod revocation;
pub mod scheduler;
pub mod send_limit;
pub mod site;
pub mod tagrecord;
pub mod wire;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use reference::{Reference, ReferenceError, RepoName, Tag};
