//! Signed tag records: what a tag pointed at, as the gateway vouches for it, so nodes can answer
//! pulls of a tag while the gateway is unreachable and take the answer from any peer.
//!
//! A [`TagRecord`] says "in repository `repo`, tag `tag` points at manifest `d`" (or "was
//! deleted"), with the gateway's sequence number `seq` and the time it was written. The gateway
//! bumps one counter for every tag write, so of two records of the same tag the one with the
//! higher `seq` is newer ([`TagRecord::supersedes`]); an old record never replaces a newer one,
//! whichever peer offers it.
//!
//! # Encoding v1 (big-endian, strict)
//! ```text
//! record = u8 version (1)
//!          u16 repo_len, repo (UTF-8, a valid repository name)
//!          u8 tag_len, tag (a valid tag)
//!          u8 target: 0 deleted | 1 sha256 + 32 bytes | 2 sha512 + 64 bytes
//!          u64 seq, u64 issued_ms (ms since the Unix epoch)
//! signed = u8 version (1), u16 signer_len, signer (libp2p protobuf public key),
//!          u16 signature_len, signature, u16 record_len, record
//! ```
//! The signature covers [`SIGNING_CONTEXT`] followed by the encoded record; decoding accepts only
//! the canonical form (valid names, no trailing bytes), so a decoded record re-encodes to the
//! signed bytes. [`MAX_SIGNED_LEN`] bounds every encoding.

use libp2p_identity::{Keypair, PeerId, PublicKey};

use crate::digest::{Algorithm, Digest};
use crate::reference::{RepoName, Tag};

/// Domain separation prefix of every tag record signature.
pub const SIGNING_CONTEXT: &[u8] = b"flotilla-tag-v1";
/// The largest encoded signed record (name, tag, digest, key and signature at their limits).
pub const MAX_SIGNED_LEN: usize = 4096;
const FORMAT_VERSION: u8 = 1;

/// Why a tag record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagRecordError {
    /// The bytes are not a well-formed encoding.
    #[error("malformed tag record: {0}")]
    Malformed(&'static str),
    /// An encoding version this build does not speak.
    #[error("unsupported tag record version {0}")]
    UnsupportedVersion(u8),
    /// The key could not sign.
    #[error("signing a tag record failed: {0}")]
    Signing(String),
    /// The signature does not verify, or the signer key does not decode.
    #[error("tag record signature invalid: {0}")]
    BadSignature(&'static str),
    /// Signed by someone other than the gateway.
    #[error("tag record signed by another peer than the gateway")]
    UnexpectedSigner,
}

/// What a tag points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TagTarget {
    /// A manifest, by digest.
    Manifest(Digest),
    /// The tag was deleted (nodes learn deletions as they learn moves).
    Deleted,
}

/// One tag's state as the gateway recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagRecord {
    /// Repository.
    pub repo: RepoName,
    /// Tag.
    pub tag: Tag,
    /// What the tag points at.
    pub target: TagTarget,
    /// The gateway's tag-write sequence number when this state was written.
    pub seq: u64,
    /// When it was written (ms since the Unix epoch); informative only, `seq` orders records.
    pub issued_ms: u64,
}

impl TagRecord {
    /// Whether `self` should replace `other`: the same tag, and a strictly higher `seq`.
    pub fn supersedes(&self, other: &TagRecord) -> bool {
        self.repo == other.repo && self.tag == other.tag && self.seq > other.seq
    }

    /// The manifest digest, unless the tag was deleted.
    pub fn digest(&self) -> Option<&Digest> {
        match &self.target {
            TagTarget::Manifest(d) => Some(d),
            TagTarget::Deleted => None,
        }
    }

    /// The canonical encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let repo = self.repo.as_str().as_bytes();
        let tag = self.tag.as_str().as_bytes();
        let mut out = Vec::with_capacity(24 + repo.len() + tag.len() + 66);
        out.push(FORMAT_VERSION);
        // Names are at most 255 bytes and tags 128 (checked when parsed), so the casts hold.
        out.extend_from_slice(&(repo.len() as u16).to_be_bytes());
        out.extend_from_slice(repo);
        out.push(tag.len() as u8);
        out.extend_from_slice(tag);
        match &self.target {
            TagTarget::Deleted => out.push(0),
            TagTarget::Manifest(d) => {
                out.push(match d.algorithm() {
                    Algorithm::Sha256 => 1,
                    Algorithm::Sha512 => 2,
                });
                out.extend_from_slice(&d.bytes());
            }
        }
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.issued_ms.to_be_bytes());
        out
    }

    /// Parses [`TagRecord::encode`]'s form; the input must be exactly one record.
    ///
    /// # Errors
    /// [`TagRecordError::Malformed`] or [`TagRecordError::UnsupportedVersion`].
    pub fn decode(input: &[u8]) -> Result<Self, TagRecordError> {
        let mut r = Cursor(input);
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(TagRecordError::UnsupportedVersion(version));
        }
        let repo_len = u16::from_be_bytes(r.array()?);
        let repo = std::str::from_utf8(r.take(repo_len.into())?)
            .ok()
            .and_then(|s| s.parse::<RepoName>().ok())
            .ok_or(TagRecordError::Malformed("invalid repository name"))?;
        let tag_len = r.u8()?;
        let tag = std::str::from_utf8(r.take(tag_len.into())?)
            .ok()
            .and_then(|s| s.parse::<Tag>().ok())
            .ok_or(TagRecordError::Malformed("invalid tag"))?;
        let target = match r.u8()? {
            0 => TagTarget::Deleted,
            code @ (1 | 2) => {
                let alg = if code == 1 {
                    Algorithm::Sha256
                } else {
                    Algorithm::Sha512
                };
                let d = Digest::from_bytes(alg, r.take(alg.digest_len())?)
                    .map_err(|_| TagRecordError::Malformed("bad digest"))?;
                TagTarget::Manifest(d)
            }
            _ => return Err(TagRecordError::Malformed("unknown target kind")),
        };
        let seq = u64::from_be_bytes(r.array()?);
        let issued_ms = u64::from_be_bytes(r.array()?);
        if !r.0.is_empty() {
            return Err(TagRecordError::Malformed("trailing bytes after record"));
        }
        Ok(TagRecord {
            repo,
            tag,
            target,
            seq,
            issued_ms,
        })
    }
}

/// A [`TagRecord`] with its signer's public key and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTagRecord {
    /// The record.
    pub record: TagRecord,
    /// The signer's libp2p public key, protobuf-encoded.
    pub signer: Vec<u8>,
    /// Signature over [`SIGNING_CONTEXT`] || `record.encode()`.
    pub signature: Vec<u8>,
}

fn message(record: &TagRecord) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(&record.encode());
    m
}

impl SignedTagRecord {
    /// Signs `record` with `keypair` (the gateway's identity).
    ///
    /// # Errors
    /// [`TagRecordError::Signing`] if the key type cannot sign.
    pub fn sign(record: TagRecord, keypair: &Keypair) -> Result<Self, TagRecordError> {
        let signature = keypair
            .sign(&message(&record))
            .map_err(|e| TagRecordError::Signing(e.to_string()))?;
        Ok(SignedTagRecord {
            signer: keypair.public().encode_protobuf(),
            record,
            signature,
        })
    }

    /// The signer's peer id, if the key decodes (not a check: see [`SignedTagRecord::verify`]).
    pub fn signer_peer_id(&self) -> Option<PeerId> {
        PublicKey::try_decode_protobuf(&self.signer)
            .ok()
            .map(|k| k.to_peer_id())
    }

    /// Checks that the signer is `gateway` and the signature holds; only then is the record
    /// worth anything.
    ///
    /// # Errors
    /// [`TagRecordError::BadSignature`] or [`TagRecordError::UnexpectedSigner`].
    pub fn verify(&self, gateway: &PeerId) -> Result<&TagRecord, TagRecordError> {
        let key = PublicKey::try_decode_protobuf(&self.signer)
            .map_err(|_| TagRecordError::BadSignature("signer key does not decode"))?;
        if key.to_peer_id() != *gateway {
            return Err(TagRecordError::UnexpectedSigner);
        }
        if !key.verify(&message(&self.record), &self.signature) {
            return Err(TagRecordError::BadSignature("signature does not verify"));
        }
        Ok(&self.record)
    }

    /// The wire form (see the module docs).
    ///
    /// # Errors
    /// [`TagRecordError::Malformed`] if the result would exceed [`MAX_SIGNED_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, TagRecordError> {
        let record = self.record.encode();
        let total = 7 + self.signer.len() + self.signature.len() + record.len();
        if total > MAX_SIGNED_LEN {
            return Err(TagRecordError::Malformed("signed record too long"));
        }
        let mut out = Vec::with_capacity(total);
        out.push(FORMAT_VERSION);
        // Each part is below MAX_SIGNED_LEN, so it fits a u16.
        out.extend_from_slice(&(self.signer.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signer);
        out.extend_from_slice(&(self.signature.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&(record.len() as u16).to_be_bytes());
        out.extend_from_slice(&record);
        Ok(out)
    }

    /// Parses the wire form (does not verify: call [`SignedTagRecord::verify`]).
    ///
    /// # Errors
    /// [`TagRecordError::Malformed`] or [`TagRecordError::UnsupportedVersion`].
    pub fn decode(input: &[u8]) -> Result<Self, TagRecordError> {
        if input.len() > MAX_SIGNED_LEN {
            return Err(TagRecordError::Malformed("signed record too long"));
        }
        let mut r = Cursor(input);
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(TagRecordError::UnsupportedVersion(version));
        }
        let signer_len = u16::from_be_bytes(r.array()?);
        let signer = r.take(signer_len.into())?.to_vec();
        let sig_len = u16::from_be_bytes(r.array()?);
        let signature = r.take(sig_len.into())?.to_vec();
        let record_len = u16::from_be_bytes(r.array()?);
        let record = TagRecord::decode(r.take(record_len.into())?)?;
        if !r.0.is_empty() {
            return Err(TagRecordError::Malformed(
                "trailing bytes after signed record",
            ));
        }
        Ok(SignedTagRecord {
            record,
            signer,
            signature,
        })
    }
}

/// A bounds-checked cursor over untrusted bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TagRecordError> {
        if self.0.len() < n {
            return Err(TagRecordError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TagRecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, TagRecordError> {
        Ok(self.take(1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, target: TagTarget) -> TagRecord {
        TagRecord {
            repo: "team/app".parse().unwrap(),
            tag: "v1".parse().unwrap(),
            target,
            seq,
            issued_ms: 1_700_000_000_000,
        }
    }

    fn key(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    fn manifest() -> TagTarget {
        TagTarget::Manifest(Digest::sha256_of(b"manifest"))
    }

    #[test]
    fn round_trip_and_verify() {
        let key = key(1);
        let gateway = key.public().to_peer_id();
        for target in [
            manifest(),
            TagTarget::Deleted,
            TagTarget::Manifest(Digest::compute(Algorithm::Sha512, b"m")),
        ] {
            let signed = SignedTagRecord::sign(record(7, target.clone()), &key).unwrap();
            let bytes = signed.encode().unwrap();
            let back = SignedTagRecord::decode(&bytes).unwrap();
            assert_eq!(back, signed);
            let r = back.verify(&gateway).unwrap();
            assert_eq!(r.target, target);
            assert_eq!(r.seq, 7);
            assert_eq!(TagRecord::decode(&r.encode()).unwrap(), *r);
        }
    }

    #[test]
    fn tampering_is_detected() {
        let key = key(1);
        let gateway = key.public().to_peer_id();
        let signed = SignedTagRecord::sign(record(3, manifest()), &key).unwrap();
        // A higher sequence number to win against the real record.
        let mut forged = signed.clone();
        forged.record.seq = 4;
        assert!(matches!(
            forged.verify(&gateway),
            Err(TagRecordError::BadSignature(_))
        ));
        // Another manifest.
        let mut forged = signed.clone();
        forged.record.target = TagTarget::Manifest(Digest::sha256_of(b"evil"));
        assert!(forged.verify(&gateway).is_err());
        // Every single-byte flip of the wire form either fails to decode or to verify.
        let bytes = signed.encode().unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(s) = SignedTagRecord::decode(&b) {
                assert!(s.verify(&gateway).is_err(), "flip at byte {i} verified");
            }
        }
    }

    #[test]
    fn wrong_signer_is_refused() {
        let gateway = key(1);
        let other = key(2);
        let signed = SignedTagRecord::sign(record(1, manifest()), &other).unwrap();
        assert_eq!(
            signed.verify(&gateway.public().to_peer_id()),
            Err(TagRecordError::UnexpectedSigner)
        );
        // The other key's signature with the gateway's key swapped in does not verify either.
        let mut swapped = signed;
        swapped.signer = gateway.public().encode_protobuf();
        assert!(matches!(
            swapped.verify(&gateway.public().to_peer_id()),
            Err(TagRecordError::BadSignature(_))
        ));
    }

    #[test]
    fn newer_supersedes_older_never_the_reverse() {
        let old = record(5, manifest());
        let new = record(9, TagTarget::Deleted);
        assert!(new.supersedes(&old));
        assert!(!old.supersedes(&new));
        assert!(!old.supersedes(&old));
        let mut other_tag = record(10, manifest());
        other_tag.tag = "v2".parse().unwrap();
        assert!(!other_tag.supersedes(&old));
    }

    #[test]
    fn strict_decoding() {
        let key = key(1);
        let signed = SignedTagRecord::sign(record(1, manifest()), &key).unwrap();
        let mut bytes = signed.encode().unwrap();
        bytes.push(0);
        assert!(SignedTagRecord::decode(&bytes).is_err());
        let enc = record(1, manifest()).encode();
        for n in 0..enc.len() {
            assert!(TagRecord::decode(&enc[..n]).is_err());
        }
        let mut bad_version = enc.clone();
        bad_version[0] = 2;
        assert_eq!(
            TagRecord::decode(&bad_version),
            Err(TagRecordError::UnsupportedVersion(2))
        );
        // An invalid repository name (upper case) inside an otherwise well-formed record.
        let mut bad_name = enc.clone();
        bad_name[3] = b'T';
        assert_eq!(
            TagRecord::decode(&bad_name),
            Err(TagRecordError::Malformed("invalid repository name"))
        );
        let mut bad_kind = enc;
        let kind_at = 1 + 2 + "team/app".len() + 1 + "v1".len();
        bad_kind[kind_at] = 7;
        assert!(TagRecord::decode(&bad_kind).is_err());
        assert!(SignedTagRecord::decode(&vec![1u8; MAX_SIGNED_LEN + 1]).is_err());
    }
}
