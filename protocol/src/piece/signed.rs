//! A piece table signed by the gateway's libp2p identity, so a node can take the table from any
//! peer and still trust it.
//!
//! Wire form (big-endian): `u8 version (1), u16 signer_len, signer (protobuf public key),
//! u16 signature_len, signature, u32 table_len, table (PieceTable::encode)`. The signature covers
//! [`SIGNING_CONTEXT`] followed by the encoded table; the table encoding is canonical, so a decoded
//! table re-encodes to the signed bytes.

use libp2p_identity::{Keypair, PeerId, PublicKey};

use super::{PieceError, PieceTable, Reader};

/// Domain separation prefix of every piece table signature.
pub const SIGNING_CONTEXT: &[u8] = b"flotilla-piece-table-v1";
const SIGNED_FORMAT_VERSION: u8 = 1;

/// A [`PieceTable`] with the signer's public key and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPieceTable {
    /// The table.
    pub table: PieceTable,
    /// The signer's libp2p public key, protobuf-encoded.
    pub signer: Vec<u8>,
    /// Signature over [`SIGNING_CONTEXT`] || `table.encode()`.
    pub signature: Vec<u8>,
}

fn message(table: &PieceTable) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(&table.encode());
    m
}

impl SignedPieceTable {
    /// Signs `table` with `keypair` (the gateway's identity).
    ///
    /// # Errors
    /// [`PieceError::Signing`] if the key type cannot sign.
    pub fn sign(table: PieceTable, keypair: &Keypair) -> Result<Self, PieceError> {
        let signature = keypair
            .sign(&message(&table))
            .map_err(|e| PieceError::Signing(e.to_string()))?;
        Ok(SignedPieceTable {
            signer: keypair.public().encode_protobuf(),
            table,
            signature,
        })
    }

    /// The signer's peer id, if the key decodes.
    pub fn signer_peer_id(&self) -> Option<PeerId> {
        PublicKey::try_decode_protobuf(&self.signer)
            .ok()
            .map(|k| k.to_peer_id())
    }

    /// Checks the signature and, if given, that the signer is `expected_signer`.
    ///
    /// # Errors
    /// [`PieceError::BadSignature`] or [`PieceError::UnexpectedSigner`].
    pub fn verify(&self, expected_signer: Option<&PeerId>) -> Result<&PieceTable, PieceError> {
        let key = PublicKey::try_decode_protobuf(&self.signer)
            .map_err(|_| PieceError::BadSignature("signer key does not decode"))?;
        if let Some(expected) = expected_signer
            && key.to_peer_id() != *expected
        {
            return Err(PieceError::UnexpectedSigner);
        }
        if !key.verify(&message(&self.table), &self.signature) {
            return Err(PieceError::BadSignature("signature does not verify"));
        }
        Ok(&self.table)
    }

    /// The wire form (see the module docs).
    ///
    /// # Errors
    /// [`PieceError::Malformed`] if the key or signature exceeds 64 KiB (no libp2p key type does).
    pub fn encode(&self) -> Result<Vec<u8>, PieceError> {
        let table = self.table.encode();
        let signer_len = u16::try_from(self.signer.len())
            .map_err(|_| PieceError::Malformed("signer key too long"))?;
        let sig_len = u16::try_from(self.signature.len())
            .map_err(|_| PieceError::Malformed("signature too long"))?;
        let table_len =
            u32::try_from(table.len()).map_err(|_| PieceError::Malformed("table too long"))?;
        let mut out =
            Vec::with_capacity(9 + self.signer.len() + self.signature.len() + table.len());
        out.push(SIGNED_FORMAT_VERSION);
        out.extend_from_slice(&signer_len.to_be_bytes());
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&sig_len.to_be_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&table_len.to_be_bytes());
        out.extend_from_slice(&table);
        Ok(out)
    }

    /// Parses the wire form (does not verify: call [`SignedPieceTable::verify`]).
    ///
    /// # Errors
    /// [`PieceError::Malformed`] or [`PieceError::UnsupportedVersion`], or the table's errors.
    pub fn decode(input: &[u8]) -> Result<Self, PieceError> {
        let mut r = Reader(input);
        let version = r.u8()?;
        if version != SIGNED_FORMAT_VERSION {
            return Err(PieceError::UnsupportedVersion(version));
        }
        let signer_len = u16::from_be_bytes(r.array()?);
        let signer = r.take(signer_len.into())?.to_vec();
        let sig_len = u16::from_be_bytes(r.array()?);
        let signature = r.take(sig_len.into())?.to_vec();
        let table_len = u32::from_be_bytes(r.array()?);
        let table_bytes = r.take(
            usize::try_from(table_len).map_err(|_| PieceError::Malformed("table too long"))?,
        )?;
        if !r.0.is_empty() {
            return Err(PieceError::Malformed("trailing bytes after signed table"));
        }
        Ok(SignedPieceTable {
            table: PieceTable::decode(table_bytes)?,
            signer,
            signature,
        })
    }
}
