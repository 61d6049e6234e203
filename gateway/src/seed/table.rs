//! Computing one blob's signed piece table from its file: one sequential read, BLAKE3 per piece,
//! an ed25519 signature. Blocking: callers run it on the blocking pool.
//!
//! The blob's own digest is not recomputed: the file was verified against it before it was
//! installed, and is never written again.

use std::io::Read;
use std::path::Path;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{PieceTableBuilder, SignedPieceTable, piece_size_for};
use libp2p_identity::Keypair;

use crate::registry::RegistryError;

/// Bytes read per `read` call: large enough that syscalls cost nothing next to hashing, small
/// enough to stay in the L2/L3 cache while BLAKE3 runs over it.
const READ_BUF: usize = 1 << 20;

/// The signed table of the blob file at `path` (digest `d`) and its wire form; `None` if the file
/// is not there.
///
/// # Errors
/// [`RegistryError::Io`] if the file cannot be read or changes size while read,
/// [`RegistryError::PieceTable`] if the table cannot be built or signed.
pub(crate) fn compute(
    path: &Path,
    d: &Digest,
    keypair: &Keypair,
) -> Result<Option<(SignedPieceTable, Vec<u8>)>, RegistryError> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let size = file.metadata()?.len();
    let mut builder = PieceTableBuilder::new(piece_size_for(size))?;
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        builder.update(&buf[..n]);
    }
    if builder.size() != size {
        return Err(RegistryError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "blob file {} changed size while hashed ({} of {size} bytes)",
                path.display(),
                builder.size()
            ),
        )));
    }
    let signed = SignedPieceTable::sign(builder.finish(d.clone())?, keypair)?;
    let encoded = signed.encode()?;
    Ok(Some((signed, encoded)))
}
