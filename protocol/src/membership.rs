//! Fleet membership: who may exchange pieces and write DHT records.
//!
//! The *fleet key* is the gateway's libp2p identity, the same key that signs piece tables, so a
//! node that knows the gateway's peer id knows the fleet. A node becomes a member by asking the
//! gateway for a [`MemberCertificate`]: the gateway signs (member peer id, validity window) with
//! the fleet key. Peers present their certificate on every connection and treat anyone without a
//! valid one as a stranger. The gateway is a member by definition (its peer id *is* the fleet).
//!
//! To be issued a certificate, a node proves it holds the key of the peer id it asks for: a
//! [`JoinProof`] signs the gateway's peer id, the node's peer id and a timestamp, so a proof is
//! useless for another gateway, another node or (beyond [`MAX_CLOCK_SKEW_SECS`]) later.
//!
//! # Certificate wire form (big-endian)
//! `u8 version (1), u16 member_len, member (PeerId bytes), u64 issued_at, u64 not_after,
//! u16 signer_len, signer (protobuf public key), u16 signature_len, signature`.
//! The signature covers [`CERT_SIGNING_CONTEXT`] followed by the bytes from `version` through
//! `not_after`. Times are Unix seconds. Decoding is strict: nothing may follow, the member must
//! be a valid peer id, `issued_at <= not_after`, and no field is longer than its limit.
//!
//! Over HTTP (the gateway's origin endpoints), a member signs each request with its key and
//! sends its certificate along: see [`http`].

pub mod http;

use libp2p_identity::{Keypair, PeerId, PublicKey};

/// Domain separation prefix of every certificate signature.
pub const CERT_SIGNING_CONTEXT: &[u8] = b"flotilla-member-v1";
/// Domain separation prefix of every join proof signature.
pub const JOIN_SIGNING_CONTEXT: &[u8] = b"flotilla-join-v1";
/// How far apart two clocks may be: a certificate issued up to this far in the future, or
/// expired up to this long ago, still verifies, and a join proof may be this old or this early.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Longest encoded certificate [`MemberCertificate::decode`] accepts (ed25519 needs ~150 B).
pub const MAX_CERT_BYTES: usize = 4096;

const CERT_VERSION: u8 = 1;
/// Peer ids are multihashes of at most a few dozen bytes; anything longer is not one.
const MAX_PEER_ID_BYTES: usize = 128;
const MAX_KEY_BYTES: usize = 1024;
const MAX_SIGNATURE_BYTES: usize = 1024;

/// Why a certificate or a join proof is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The bytes are not a certificate.
    #[error("malformed certificate: {0}")]
    Malformed(&'static str),
    /// A certificate format this code does not know.
    #[error("unsupported certificate version {0}")]
    UnsupportedVersion(u8),
    /// The signer key does not decode or the signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// Signed by a valid key that is not the fleet's.
    #[error("signed by {signer}, not by the fleet key {fleet}")]
    WrongFleet {
        /// Who signed (base58 peer id).
        signer: String,
        /// Who should have.
        fleet: String,
    },
    /// The certificate names another peer than the one presenting it.
    #[error("the certificate names {named}, but was presented by {presenter}")]
    WrongPeer {
        /// The peer in the certificate (base58 peer id).
        named: String,
        /// The peer it came from.
        presenter: String,
    },
    /// Past its `not_after` (plus the clock skew allowance).
    #[error("certificate expired at {not_after} (now {now})")]
    Expired {
        /// End of validity, Unix seconds.
        not_after: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// Issued further in the future than the clock skew allowance (or a join proof too far
    /// from the verifier's clock).
    #[error("timestamp {at} is more than {MAX_CLOCK_SKEW_SECS} s away from now ({now})")]
    ClockSkew {
        /// The timestamp.
        at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// The key cannot sign (not ed25519, or a hardware key refused).
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// A fleet key's statement that `member` belongs to the fleet from `issued_at` to `not_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberCertificate {
    /// The member's peer id.
    pub member: PeerId,
    /// Start of validity, Unix seconds.
    pub issued_at: u64,
    /// End of validity, Unix seconds.
    pub not_after: u64,
    /// The fleet key (the gateway's libp2p public key), protobuf-encoded.
    pub signer: Vec<u8>,
    /// Signature over [`CERT_SIGNING_CONTEXT`] || the signed body.
    pub signature: Vec<u8>,
}

/// The signed part of a certificate: version, member, issued_at, not_after.
fn cert_body(member: &PeerId, issued_at: u64, not_after: u64) -> Vec<u8> {
    let id = member.to_bytes();
    let mut b = Vec::with_capacity(1 + 2 + id.len() + 16);
    b.push(CERT_VERSION);
    // Peer ids are far shorter than 64 KiB (checked on decode, true of every libp2p key type).
    b.extend_from_slice(&(id.len() as u16).to_be_bytes());
    b.extend_from_slice(&id);
    b.extend_from_slice(&issued_at.to_be_bytes());
    b.extend_from_slice(&not_after.to_be_bytes());
    b
}

fn signed_message(context: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + body.len());
    m.extend_from_slice(context);
    m.extend_from_slice(body);
    m
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MembershipError> {
        if self.0.len() < n {
            return Err(MembershipError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MembershipError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MembershipError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u64(&mut self) -> Result<u64, MembershipError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    /// A `u16`-length-prefixed field of at most `max` bytes.
    fn field(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], MembershipError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(MembershipError::Malformed(what));
        }
        self.take(n)
    }
}

/// Checks that `at` is within [`MAX_CLOCK_SKEW_SECS`] of `now`.
fn within_skew(at: u64, now: u64) -> Result<(), MembershipError> {
    if at.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(MembershipError::ClockSkew { at, now });
    }
    Ok(())
}

impl MemberCertificate {
    /// Signs a certificate for `member`, valid `lifetime_secs` from `issued_at`, with the fleet
    /// key.
    ///
    /// # Errors
    /// [`MembershipError::Signing`] if the key cannot sign.
    pub fn issue(
        fleet_key: &Keypair,
        member: PeerId,
        issued_at: u64,
        lifetime_secs: u64,
    ) -> Result<Self, MembershipError> {
        let not_after = issued_at.saturating_add(lifetime_secs);
        let body = cert_body(&member, issued_at, not_after);
        let signature = fleet_key
            .sign(&signed_message(CERT_SIGNING_CONTEXT, &body))
            .map_err(|e| MembershipError::Signing(e.to_string()))?;
        Ok(MemberCertificate {
            member,
            issued_at,
            not_after,
            signer: fleet_key.public().encode_protobuf(),
            signature,
        })
    }

    /// The signer's peer id, if its key decodes.
    pub fn signer_peer_id(&self) -> Option<PeerId> {
        PublicKey::try_decode_protobuf(&self.signer)
            .ok()
            .map(|k| k.to_peer_id())
    }

    /// Checks that the certificate is signed by the fleet key `fleet`, names `presenter`, and
    /// is valid at `now` (Unix seconds), allowing [`MAX_CLOCK_SKEW_SECS`] either way.
    ///
    /// # Errors
    /// [`MembershipError::BadSignature`], [`MembershipError::WrongFleet`],
    /// [`MembershipError::WrongPeer`], [`MembershipError::Expired`] or
    /// [`MembershipError::ClockSkew`].
    pub fn verify(
        &self,
        fleet: &PeerId,
        presenter: &PeerId,
        now: u64,
    ) -> Result<(), MembershipError> {
        let key = PublicKey::try_decode_protobuf(&self.signer)
            .map_err(|_| MembershipError::BadSignature("signer key does not decode"))?;
        let signer = key.to_peer_id();
        if signer != *fleet {
            return Err(MembershipError::WrongFleet {
                signer: signer.to_string(),
                fleet: fleet.to_string(),
            });
        }
        let body = cert_body(&self.member, self.issued_at, self.not_after);
        if !key.verify(
            &signed_message(CERT_SIGNING_CONTEXT, &body),
            &self.signature,
        ) {
            return Err(MembershipError::BadSignature("signature does not verify"));
        }
        if self.member != *presenter {
            return Err(MembershipError::WrongPeer {
                named: self.member.to_string(),
                presenter: presenter.to_string(),
            });
        }
        if self.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(MembershipError::ClockSkew {
                at: self.issued_at,
                now,
            });
        }
        if now > self.not_after.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(MembershipError::Expired {
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }

    /// The wire form (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = cert_body(&self.member, self.issued_at, self.not_after);
        for field in [&self.signer, &self.signature] {
            // Longer fields never decode; cut them so the output stays well-formed (and fails
            // verification) rather than wrapping the length.
            let n = field.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(&field[..n]);
        }
        out
    }

    /// Parses the wire form strictly (does not verify: call [`MemberCertificate::verify`]).
    ///
    /// # Errors
    /// [`MembershipError::Malformed`] or [`MembershipError::UnsupportedVersion`].
    pub fn decode(input: &[u8]) -> Result<Self, MembershipError> {
        if input.len() > MAX_CERT_BYTES {
            return Err(MembershipError::Malformed("certificate too long"));
        }
        let mut r = Reader(input);
        let version = r.u8()?;
        if version != CERT_VERSION {
            return Err(MembershipError::UnsupportedVersion(version));
        }
        let member = r.field(MAX_PEER_ID_BYTES, "member peer id too long")?;
        let member = PeerId::from_bytes(member)
            .map_err(|_| MembershipError::Malformed("member is not a peer id"))?;
        let issued_at = r.u64()?;
        let not_after = r.u64()?;
        if issued_at > not_after {
            return Err(MembershipError::Malformed("issued after it expires"));
        }
        let signer = r.field(MAX_KEY_BYTES, "signer key too long")?.to_vec();
        let signature = r.field(MAX_SIGNATURE_BYTES, "signature too long")?.to_vec();
        if !r.0.is_empty() {
            return Err(MembershipError::Malformed(
                "trailing bytes after certificate",
            ));
        }
        Ok(MemberCertificate {
            member,
            issued_at,
            not_after,
            signer,
            signature,
        })
    }

    /// When a holder should ask for a new certificate: half way through its validity.
    pub fn renew_at(&self) -> u64 {
        self.issued_at + (self.not_after - self.issued_at.min(self.not_after)) / 2
    }
}

/// A node's proof that it holds the key of the peer id it wants a certificate for: a signature
/// over [`JOIN_SIGNING_CONTEXT`] || gateway peer id bytes || node peer id bytes || `u64`
/// timestamp (big-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinProof {
    /// The node's libp2p public key, protobuf-encoded (its peer id derives from it).
    pub public_key: Vec<u8>,
    /// When the proof was made, Unix seconds.
    pub timestamp: u64,
    /// The signature.
    pub signature: Vec<u8>,
}

fn join_message(gateway: &PeerId, member: &PeerId, timestamp: u64) -> Vec<u8> {
    let mut m = JOIN_SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(&gateway.to_bytes());
    m.extend_from_slice(&member.to_bytes());
    m.extend_from_slice(&timestamp.to_be_bytes());
    m
}

impl JoinProof {
    /// Signs a proof for joining the fleet of `gateway` at `timestamp` with the node's key.
    ///
    /// # Errors
    /// [`MembershipError::Signing`] if the key cannot sign.
    pub fn sign(
        node_key: &Keypair,
        gateway: &PeerId,
        timestamp: u64,
    ) -> Result<Self, MembershipError> {
        let member = node_key.public().to_peer_id();
        let signature = node_key
            .sign(&join_message(gateway, &member, timestamp))
            .map_err(|e| MembershipError::Signing(e.to_string()))?;
        Ok(JoinProof {
            public_key: node_key.public().encode_protobuf(),
            timestamp,
            signature,
        })
    }

    /// Checks the proof for the fleet of `gateway` at `now` and returns the proven peer id.
    ///
    /// # Errors
    /// [`MembershipError::BadSignature`], [`MembershipError::ClockSkew`] or
    /// [`MembershipError::Malformed`] (key too long).
    pub fn verify(&self, gateway: &PeerId, now: u64) -> Result<PeerId, MembershipError> {
        if self.public_key.len() > MAX_KEY_BYTES || self.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(MembershipError::Malformed("key or signature too long"));
        }
        let key = PublicKey::try_decode_protobuf(&self.public_key)
            .map_err(|_| MembershipError::BadSignature("public key does not decode"))?;
        let member = key.to_peer_id();
        if !key.verify(
            &join_message(gateway, &member, self.timestamp),
            &self.signature,
        ) {
            return Err(MembershipError::BadSignature("signature does not verify"));
        }
        within_skew(self.timestamp, now)?;
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 24 * 3600;

    /// A fresh ed25519 key (the crate has no RNG feature: keys come from a counter).
    fn key() -> Keypair {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut seed = [7u8; 32];
        seed[..8].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        Keypair::ed25519_from_bytes(seed).unwrap()
    }

    fn random_peer() -> PeerId {
        key().public().to_peer_id()
    }

    fn setup() -> (Keypair, PeerId, Keypair, PeerId) {
        let fleet = key();
        let fleet_id = fleet.public().to_peer_id();
        let node = key();
        let node_id = node.public().to_peer_id();
        (fleet, fleet_id, node, node_id)
    }

    #[test]
    fn an_issued_certificate_round_trips_and_verifies() {
        let (fleet, fleet_id, _, node_id) = setup();
        let cert = MemberCertificate::issue(&fleet, node_id, NOW, DAY).unwrap();
        let bytes = cert.encode();
        let back = MemberCertificate::decode(&bytes).unwrap();
        assert_eq!(back, cert);
        assert_eq!(back.encode(), bytes);
        back.verify(&fleet_id, &node_id, NOW + 10).unwrap();
        assert_eq!(back.signer_peer_id(), Some(fleet_id));
        assert_eq!(back.renew_at(), NOW + DAY / 2);
    }

    #[test]
    fn a_certificate_for_another_peer_is_refused() {
        let (fleet, fleet_id, _, node_id) = setup();
        let cert = MemberCertificate::issue(&fleet, node_id, NOW, DAY).unwrap();
        let thief = random_peer();
        assert!(matches!(
            cert.verify(&fleet_id, &thief, NOW),
            Err(MembershipError::WrongPeer { .. })
        ));
    }

    #[test]
    fn a_self_made_certificate_is_refused() {
        let (_, fleet_id, node, node_id) = setup();
        let cert = MemberCertificate::issue(&node, node_id, NOW, DAY).unwrap();
        assert!(matches!(
            cert.verify(&fleet_id, &node_id, NOW),
            Err(MembershipError::WrongFleet { .. })
        ));
    }

    #[test]
    fn expired_and_future_certificates_are_refused() {
        let (fleet, fleet_id, _, node_id) = setup();
        let cert = MemberCertificate::issue(&fleet, node_id, NOW, DAY).unwrap();
        cert.verify(&fleet_id, &node_id, NOW + DAY + MAX_CLOCK_SKEW_SECS)
            .unwrap();
        assert!(matches!(
            cert.verify(&fleet_id, &node_id, NOW + DAY + MAX_CLOCK_SKEW_SECS + 1),
            Err(MembershipError::Expired { .. })
        ));
        cert.verify(&fleet_id, &node_id, NOW - MAX_CLOCK_SKEW_SECS)
            .unwrap();
        assert!(matches!(
            cert.verify(&fleet_id, &node_id, NOW - MAX_CLOCK_SKEW_SECS - 1),
            Err(MembershipError::ClockSkew { .. })
        ));
    }

    #[test]
    fn tampered_certificates_are_refused() {
        let (fleet, fleet_id, _, node_id) = setup();
        let cert = MemberCertificate::issue(&fleet, node_id, NOW, DAY).unwrap();
        // A longer life.
        let mut longer = cert.clone();
        longer.not_after += DAY;
        assert!(matches!(
            longer.verify(&fleet_id, &node_id, NOW),
            Err(MembershipError::BadSignature(_))
        ));
        // Another member under the same signature.
        let other = random_peer();
        let mut moved = cert.clone();
        moved.member = other;
        assert!(matches!(
            moved.verify(&fleet_id, &other, NOW),
            Err(MembershipError::BadSignature(_))
        ));
        // Any flipped signature bit.
        let bytes = cert.encode();
        for i in bytes.len() - cert.signature.len()..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let decoded = MemberCertificate::decode(&b).unwrap();
            assert!(
                decoded.verify(&fleet_id, &node_id, NOW).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn malformed_certificates_do_not_decode() {
        let (fleet, _, _, node_id) = setup();
        let bytes = MemberCertificate::issue(&fleet, node_id, NOW, DAY)
            .unwrap()
            .encode();
        for n in 0..bytes.len() {
            assert!(
                MemberCertificate::decode(&bytes[..n]).is_err(),
                "prefix {n}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(MemberCertificate::decode(&trailing).is_err());
        let mut version = bytes.clone();
        version[0] = 2;
        assert_eq!(
            MemberCertificate::decode(&version),
            Err(MembershipError::UnsupportedVersion(2))
        );
        // issued_at after not_after.
        let backwards = MemberCertificate {
            member: node_id,
            issued_at: NOW + 1,
            not_after: NOW,
            signer: vec![1],
            signature: vec![2],
        };
        assert!(MemberCertificate::decode(&backwards.encode()).is_err());
        assert!(MemberCertificate::decode(&vec![0u8; MAX_CERT_BYTES + 1]).is_err());
    }

    #[test]
    fn join_proofs_bind_gateway_node_and_time() {
        let (_, gateway, node, node_id) = setup();
        let proof = JoinProof::sign(&node, &gateway, NOW).unwrap();
        assert_eq!(proof.verify(&gateway, NOW + 60).unwrap(), node_id);
        assert!(matches!(
            proof.verify(&gateway, NOW + MAX_CLOCK_SKEW_SECS + 1),
            Err(MembershipError::ClockSkew { .. })
        ));
        assert!(matches!(
            proof.verify(&gateway, NOW - MAX_CLOCK_SKEW_SECS - 1),
            Err(MembershipError::ClockSkew { .. })
        ));
        assert!(matches!(
            proof.verify(&random_peer(), NOW),
            Err(MembershipError::BadSignature(_))
        ));
        let mut later = proof.clone();
        later.timestamp += 1;
        assert!(later.verify(&gateway, NOW).is_err());
        // Someone else's key with this node's signature.
        let mut swapped = proof.clone();
        swapped.public_key = key().public().encode_protobuf();
        assert!(swapped.verify(&gateway, NOW).is_err());
        let mut garbage = proof;
        garbage.public_key = vec![0; 8];
        assert!(garbage.verify(&gateway, NOW).is_err());
    }

    proptest! {
        /// Whatever decodes re-encodes to the same bytes, and decoding never panics.
        #[test]
        fn decode_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(cert) = MemberCertificate::decode(&bytes) {
                prop_assert_eq!(cert.encode(), bytes);
            }
        }

        /// Every issued certificate survives the wire and verifies for its member only.
        #[test]
        fn issued_certificates_round_trip(issued in 0u64..u64::MAX / 2, life in 0u64..10 * DAY) {
            let (fleet, fleet_id, _, node_id) = setup();
            let cert = MemberCertificate::issue(&fleet, node_id, issued, life).unwrap();
            let back = MemberCertificate::decode(&cert.encode()).unwrap();
            prop_assert_eq!(&back, &cert);
            prop_assert!(back.verify(&fleet_id, &node_id, issued).is_ok());
            prop_assert!(back.verify(&fleet_id, &random_peer(), issued).is_err());
        }
    }
}
