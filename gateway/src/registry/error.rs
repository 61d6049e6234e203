//! The registry's typed error: each variant except the internal ones maps to one OCI error
//! code in [`crate::error`].

use flotilla_protocol::Digest;

/// Why a registry operation failed. Each variant except the internal ones maps to one OCI error
/// code in [`crate::error`].
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The blob is not linked in this repository.
    #[error("blob unknown to registry")]
    BlobUnknown,
    /// No such upload session in this repository.
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    /// The upload cannot continue as asked.
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// The content does not have the digest the client named.
    #[error("provided digest {expected} does not match uploaded content ({actual})")]
    DigestInvalid {
        /// What the client said.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A chunk that does not start where the upload stands.
    #[error("chunk out of order: the upload stands at byte {offset}")]
    RangeInvalid {
        /// Bytes received so far.
        offset: u64,
    },
    /// A size that does not fit.
    #[error("size invalid: {0}")]
    SizeInvalid(String),
    /// No such manifest (or tag) in this repository.
    #[error("manifest unknown")]
    ManifestUnknown,
    /// The manifest does not parse or validate.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The manifest references a blob or manifest this repository does not hold.
    #[error("manifest references {0}, which this repository does not hold")]
    ManifestBlobUnknown(Digest),
    /// The manifest exceeds the configured limit.
    #[error("manifest larger than {limit} bytes")]
    ManifestTooLarge {
        /// The limit.
        limit: usize,
    },
    /// No such repository.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// Invalid tag.
    #[error("manifest tag did not match URI")]
    TagInvalid,
    /// Something this registry does not do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The client's request body broke off.
    #[error("reading the request body failed: {0}")]
    BodyRead(std::io::Error),
    /// The blob being pushed is larger than the configured limit.
    #[error("blob larger than the limit of {limit} bytes")]
    BlobTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Too many upload sessions are open.
    #[error("{limit} upload sessions are open already; finish or cancel some, or retry later")]
    TooManyUploads {
        /// The limit.
        limit: usize,
    },
    /// A disk failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A database failure.
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    /// Stored data that cannot be what this code wrote.
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// The gateway's identity (`identity.key`) cannot be read or created.
    #[error(transparent)]
    Identity(#[from] flotilla_node::identity::IdentityError),
    /// A piece table could not be built or signed.
    #[error("piece table: {0}")]
    PieceTable(#[from] flotilla_protocol::piece::PieceError),
    /// A tag record could not be signed.
    #[error("tag record: {0}")]
    TagRecord(#[from] flotilla_protocol::tagrecord::TagRecordError),
}
