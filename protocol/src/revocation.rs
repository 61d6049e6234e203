//! The fleet's revocation list: members whose certificates no longer count, as the gateway
//! vouches for it (SPEC §5.3). A membership certificate lasts 24 h; a member whose key was
//! stolen, or a host taken out of the fleet, must stop counting before that, so the gateway
//! keeps a list of revoked peer ids, signs it, and every node fetches it and treats the peers
//! on it as strangers.
//!
//! The gateway bumps `seq` at every change (revoking or restoring a peer), so of two lists the
//! one with the higher `seq` is newer and a node never goes back to an older one, whoever
//! serves it.
//!
//! # Encoding v1 (big-endian, strict)
//! ```text
//! list   = u8 version (1), u64 seq, u64 issued_ms (ms since the Unix epoch),
//!          u16 count, count × (u8 len, peer id bytes), peer ids in ascending byte order, distinct
//! signed = u8 version (1), u16 signer_len, signer (libp2p protobuf public key),
//!          u16 signature_len, signature, list (to the end)
//! ```
//! The signature covers [`SIGNING_CONTEXT`] followed by the encoded list. Decoding accepts
//! only the canonical form, so a decoded list re-encodes to the signed bytes.

use libp2p_identity::{Keypair, PeerId, PublicKey};

/// Domain separation prefix of every revocation list signature.
pub const SIGNING_CONTEXT: &[u8] = b"flotilla-revocations-v1";
/// Most peers one list may name.
pub const MAX_REVOKED: usize = 4096;
const FORMAT_VERSION: u8 = 1;

/// Why a revocation list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// The bytes are not a well-formed encoding.
    #[error("malformed revocation list: {0}")]
    Malformed(&'static str),
    /// An encoding version this build does not speak.
    #[error("unsupported revocation list version {0}")]
    UnsupportedVersion(u8),
    /// More peers than [`MAX_REVOKED`].
    #[error("a revocation list names at most {MAX_REVOKED} peers")]
    TooMany,
    /// The key could not sign.
    #[error("signing a revocation list failed: {0}")]
    Signing(String),
    /// The signature does not verify, or the signer key does not decode.
    #[error("revocation list signature invalid: {0}")]
    BadSignature(&'static str),
    /// Signed by someone other than the gateway.
    #[error("revocation list signed by another peer than the gateway")]
    UnexpectedSigner,
}

/// The revoked members at one point of the gateway's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// Bumped at every change.
    pub seq: u64,
    /// When this list was written (ms since the Unix epoch).
    pub issued_ms: u64,
    /// The revoked peers, in ascending byte order, each once.
    peers: Vec<PeerId>,
}

impl RevocationList {
    /// A list of `peers` (sorted and deduplicated here).
    ///
    /// # Errors
    /// [`RevocationError::TooMany`] past [`MAX_REVOKED`] peers.
    pub fn new(seq: u64, issued_ms: u64, peers: Vec<PeerId>) -> Result<Self, RevocationError> {
        let mut peers = peers;
        peers.sort_by_cached_key(|p| p.to_bytes());
        peers.dedup();
        if peers.len() > MAX_REVOKED {
            return Err(RevocationError::TooMany);
        }
        Ok(RevocationList {
            seq,
            issued_ms,
            peers,
        })
    }

    /// The revoked peers.
    pub fn peers(&self) -> &[PeerId] {
        &self.peers
    }

    /// The canonical encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(19 + self.peers.len() * 40);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.issued_ms.to_be_bytes());
        // `new` bounds the count by MAX_REVOKED, and a peer id's bytes by a multihash's 64.
        out.extend_from_slice(&(self.peers.len() as u16).to_be_bytes());
        for p in &self.peers {
            let b = p.to_bytes();
            out.push(b.len() as u8);
            out.extend_from_slice(&b);
        }
        out
    }

    /// Parses the canonical encoding.
    ///
    /// # Errors
    /// [`RevocationError::Malformed`], [`RevocationError::UnsupportedVersion`] or
    /// [`RevocationError::TooMany`].
    pub fn decode(input: &[u8]) -> Result<Self, RevocationError> {
        let mut r = Reader(input);
        r.version()?;
        let seq = u64::from_be_bytes(r.array()?);
        let issued_ms = u64::from_be_bytes(r.array()?);
        let count = usize::from(u16::from_be_bytes(r.array()?));
        if count > MAX_REVOKED {
            return Err(RevocationError::TooMany);
        }
        let mut peers = Vec::with_capacity(count);
        let mut last: Option<Vec<u8>> = None;
        for _ in 0..count {
            let len = usize::from(r.take(1)?[0]);
            let bytes = r.take(len)?;
            if last.as_deref().is_some_and(|l| l >= bytes) {
                return Err(RevocationError::Malformed("peers not in ascending order"));
            }
            let peer = PeerId::from_bytes(bytes)
                .map_err(|_| RevocationError::Malformed("a peer id does not decode"))?;
            last = Some(bytes.to_vec());
            peers.push(peer);
        }
        if !r.0.is_empty() {
            return Err(RevocationError::Malformed("trailing bytes"));
        }
        Ok(RevocationList {
            seq,
            issued_ms,
            peers,
        })
    }
}

/// A [`RevocationList`] with the gateway's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRevocationList {
    list: RevocationList,
    /// The signer's public key (libp2p protobuf encoding).
    signer: Vec<u8>,
    signature: Vec<u8>,
}

fn message(list: &RevocationList) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(&list.encode());
    m
}

impl SignedRevocationList {
    /// Signs `list` with `keypair` (the gateway's identity).
    ///
    /// # Errors
    /// [`RevocationError::Signing`] if the key type cannot sign.
    pub fn sign(list: RevocationList, keypair: &Keypair) -> Result<Self, RevocationError> {
        let signature = keypair
            .sign(&message(&list))
            .map_err(|e| RevocationError::Signing(e.to_string()))?;
        Ok(SignedRevocationList {
            list,
            signer: keypair.public().encode_protobuf(),
            signature,
        })
    }

    /// The list once the signer is `gateway` and the signature holds.
    ///
    /// # Errors
    /// [`RevocationError::BadSignature`] or [`RevocationError::UnexpectedSigner`].
    pub fn verify(&self, gateway: &PeerId) -> Result<&RevocationList, RevocationError> {
        let key = PublicKey::try_decode_protobuf(&self.signer)
            .map_err(|_| RevocationError::BadSignature("signer key does not decode"))?;
        if key.to_peer_id() != *gateway {
            return Err(RevocationError::UnexpectedSigner);
        }
        if !key.verify(&message(&self.list), &self.signature) {
            return Err(RevocationError::BadSignature("signature does not verify"));
        }
        Ok(&self.list)
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let list = self.list.encode();
        let mut out = Vec::with_capacity(5 + self.signer.len() + self.signature.len() + list.len());
        out.push(FORMAT_VERSION);
        // Keys and signatures of libp2p's key types are far below 64 KiB.
        out.extend_from_slice(&(self.signer.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&(self.signature.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&list);
        out
    }

    /// Parses the wire form (does not verify: call [`SignedRevocationList::verify`]).
    ///
    /// # Errors
    /// As [`RevocationList::decode`].
    pub fn decode(input: &[u8]) -> Result<Self, RevocationError> {
        let mut r = Reader(input);
        r.version()?;
        let signer_len = usize::from(u16::from_be_bytes(r.array()?));
        let signer = r.take(signer_len)?.to_vec();
        let sig_len = usize::from(u16::from_be_bytes(r.array()?));
        let signature = r.take(sig_len)?.to_vec();
        let list = RevocationList::decode(r.0)?;
        Ok(SignedRevocationList {
            list,
            signer,
            signature,
        })
    }
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RevocationError> {
        if self.0.len() < n {
            return Err(RevocationError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The leading version byte, which must be [`FORMAT_VERSION`].
    fn version(&mut self) -> Result<(), RevocationError> {
        match self.take(1)?[0] {
            FORMAT_VERSION => Ok(()),
            v => Err(RevocationError::UnsupportedVersion(v)),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RevocationError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    /// `n` distinct peer ids.
    fn peers(n: usize) -> Vec<PeerId> {
        (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1000).to_be_bytes());
                Keypair::ed25519_from_bytes(seed)
                    .unwrap()
                    .public()
                    .to_peer_id()
            })
            .collect()
    }

    #[test]
    fn a_signed_list_round_trips_and_verifies_only_for_its_gateway() {
        let gw = key(1);
        let other = key(2);
        let peers = peers(5);
        let mut doubled = peers.clone();
        doubled.push(peers[0]);
        let list = RevocationList::new(7, 1_000, doubled).unwrap();
        assert_eq!(list.peers().len(), 5, "duplicates dropped");
        let signed = SignedRevocationList::sign(list.clone(), &gw).unwrap();
        let bytes = signed.encode();
        let back = SignedRevocationList::decode(&bytes).unwrap();
        assert_eq!(back, signed);
        let verified = back.verify(&gw.public().to_peer_id()).unwrap();
        assert_eq!(verified, &list);
        for p in &peers {
            assert!(verified.peers().contains(p));
        }
        assert_eq!(
            back.verify(&other.public().to_peer_id()),
            Err(RevocationError::UnexpectedSigner)
        );
        // A list signed by another key but claiming the gateway's fails on the signature.
        let mut forged = SignedRevocationList::sign(list, &other).unwrap();
        forged.signer = gw.public().encode_protobuf();
        assert!(matches!(
            forged.verify(&gw.public().to_peer_id()),
            Err(RevocationError::BadSignature(_))
        ));
    }

    #[test]
    fn malformed_lists_are_refused() {
        let gw = key(1);
        let list = RevocationList::new(1, 2, peers(2)).unwrap();
        let bytes = SignedRevocationList::sign(list.clone(), &gw)
            .unwrap()
            .encode();
        for cut in 0..bytes.len() {
            assert!(
                SignedRevocationList::decode(&bytes[..cut]).is_err(),
                "{cut}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(SignedRevocationList::decode(&trailing).is_err());
        let mut version = bytes;
        version[0] = 2;
        assert_eq!(
            SignedRevocationList::decode(&version),
            Err(RevocationError::UnsupportedVersion(2))
        );
        // Out of order (not canonical).
        let mut raw = list.encode();
        let first = 19;
        let len = usize::from(raw[first]) + 1;
        let (a, b) = (
            raw[first..first + len].to_vec(),
            raw[first + len..].to_vec(),
        );
        raw.truncate(first);
        raw.extend_from_slice(&b);
        raw.extend_from_slice(&a);
        assert!(RevocationList::decode(&raw).is_err());
        let too_many = peers(MAX_REVOKED + 1);
        assert_eq!(
            RevocationList::new(1, 1, too_many),
            Err(RevocationError::TooMany)
        );
    }
}
