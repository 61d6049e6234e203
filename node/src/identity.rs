//! A process's libp2p identity kept on disk: `<data_dir>/identity.key`, an ed25519 keypair in
//! libp2p's protobuf encoding, created on first start and reused after, so a node's peer id (and
//! the gateway's table-signing key) survive restarts. The node's fleet membership certificate
//! lives next to it ([`membership`]).

pub mod membership;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// File name of the identity inside a data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists but does not hold a keypair.
    #[error(
        "identity file {path} is not a libp2p keypair ({reason}); move it away to create a new identity"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
}

/// Loads the keypair in `dir/identity.key`, or creates one there (mode 0600, written to a temp
/// file, fsynced and renamed, so a crash never leaves half a key).
///
/// # Errors
/// [`IdentityError`] if the file cannot be read or written, or does not decode.
pub fn load_or_create(dir: &Path) -> Result<Keypair, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            return Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    write_private(dir, IDENTITY_FILE, &bytes).map_err(|(_, source)| io(source))?;
    Ok(keypair)
}

/// Writes `dir/name` readable by the owner only (0600): a temp file, fsynced, renamed over the
/// old one, and the directory fsynced, so a crash leaves the old file or the new one, never half.
/// Errors name the file that failed.
pub(crate) fn write_private(
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), (PathBuf, std::io::Error)> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(at(&tmp))?;
        f.write_all(bytes).map_err(at(&tmp))?;
        f.sync_all().map_err(at(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(at(&path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Make the rename itself durable; a failure here only risks the old file after a crash.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
    }
}
