//! Fleet membership over HTTP: the `Flotilla-Member` request header, with which a node shows the
//! gateway's HTTP origin (`/flotilla/v1/blobs`, `pieces`, `tags`, `swarm`, and reads under
//! `/v2/`) that it is a member, as the `/flotilla/member/1.0.0` handshake does on the swarm.
//!
//! # Header form
//! `Flotilla-Member: v1 <timestamp> <certificate> <public key> <signature>`, fields separated by
//! one space, binary fields in lowercase hex: the timestamp in decimal Unix seconds, the
//! [`MemberCertificate`] wire form, the member's libp2p public key (protobuf) and its signature
//! over [`HTTP_SIGNING_CONTEXT`] || gateway peer id bytes || member peer id bytes || `u64`
//! timestamp (big-endian) || method || `0x00` || path (as sent on the request line, without the
//! query).
//!
//! The signature binds the header to one gateway, one method and path, and
//! [`super::MAX_CLOCK_SKEW_SECS`] either side of the timestamp: a header seen on the wire can be
//! replayed for that same path within that window (so use TLS where the network is not trusted:
//! then nobody sees one), never used for another blob, another gateway, or later.

use libp2p_identity::{Keypair, PeerId, PublicKey};

use super::{
    MAX_CERT_BYTES, MAX_KEY_BYTES, MAX_SIGNATURE_BYTES, MemberCertificate, MembershipError,
    within_skew,
};

/// The header's name (lowercase, as HTTP/2 and the `http` crate want it).
pub const MEMBER_HEADER: &str = "flotilla-member";
/// Domain separation prefix of every HTTP member signature.
pub const HTTP_SIGNING_CONTEXT: &[u8] = b"flotilla-http-v1";
/// Longest header value [`MemberHeader::decode`] accepts.
pub const MAX_HEADER_BYTES: usize = 2 * (MAX_CERT_BYTES + MAX_KEY_BYTES + MAX_SIGNATURE_BYTES) + 64;

/// A decoded `Flotilla-Member` header (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHeader {
    /// When it was signed, Unix seconds.
    pub timestamp: u64,
    /// The member's certificate.
    pub certificate: MemberCertificate,
    /// The member's public key, protobuf-encoded.
    pub public_key: Vec<u8>,
    /// The signature over the request.
    pub signature: Vec<u8>,
}

fn message(gateway: &PeerId, member: &PeerId, ts: u64, method: &str, path: &str) -> Vec<u8> {
    let mut m = HTTP_SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(&gateway.to_bytes());
    m.extend_from_slice(&member.to_bytes());
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(method.as_bytes());
    m.push(0);
    m.extend_from_slice(path.as_bytes());
    m
}

impl MemberHeader {
    /// Signs a header for `method` on `path` (no query) at the gateway `gateway`, at `now`.
    ///
    /// # Errors
    /// [`MembershipError::Signing`] if the key cannot sign; [`MembershipError::WrongPeer`] if the
    /// certificate is not the key's.
    pub fn sign(
        key: &Keypair,
        certificate: &MemberCertificate,
        gateway: &PeerId,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<Self, MembershipError> {
        let me = key.public().to_peer_id();
        if certificate.member != me {
            return Err(MembershipError::WrongPeer {
                named: certificate.member.to_string(),
                presenter: me.to_string(),
            });
        }
        let signature = key
            .sign(&message(gateway, &me, now, method, path))
            .map_err(|e| MembershipError::Signing(e.to_string()))?;
        Ok(MemberHeader {
            timestamp: now,
            certificate: certificate.clone(),
            public_key: key.public().encode_protobuf(),
            signature,
        })
    }

    /// The header value.
    pub fn encode(&self) -> String {
        format!(
            "v1 {} {} {} {}",
            self.timestamp,
            hex::encode(self.certificate.encode()),
            hex::encode(&self.public_key),
            hex::encode(&self.signature)
        )
    }

    /// Parses a header value strictly (does not verify: call [`MemberHeader::verify`]).
    ///
    /// # Errors
    /// [`MembershipError::Malformed`] (or the certificate's decoding error).
    pub fn decode(value: &str) -> Result<Self, MembershipError> {
        if value.len() > MAX_HEADER_BYTES {
            return Err(MembershipError::Malformed("member header too long"));
        }
        let mut fields = value.split(' ');
        let bad = MembershipError::Malformed;
        if fields.next() != Some("v1") {
            return Err(bad("member header is not v1"));
        }
        let mut next = |what| fields.next().ok_or(bad(what));
        let ts_text = next("member header has no timestamp")?;
        if ts_text.is_empty() || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("member header timestamp is not a number"));
        }
        let timestamp = ts_text
            .parse()
            .map_err(|_| bad("member header timestamp is not a number"))?;
        let hex_field = |text: &str, max: usize, what| {
            if text.len() > 2 * max {
                return Err(bad(what));
            }
            hex::decode(text).map_err(|_| bad(what))
        };
        let cert = hex_field(
            next("member header has no certificate")?,
            MAX_CERT_BYTES,
            "member header certificate is not hex",
        )?;
        let public_key = hex_field(
            next("member header has no key")?,
            MAX_KEY_BYTES,
            "member header key is not hex",
        )?;
        let signature = hex_field(
            next("member header has no signature")?,
            MAX_SIGNATURE_BYTES,
            "member header signature is not hex",
        )?;
        if fields.next().is_some() {
            return Err(bad("trailing fields in member header"));
        }
        Ok(MemberHeader {
            timestamp,
            certificate: MemberCertificate::decode(&cert)?,
            public_key,
            signature,
        })
    }

    /// Checks the header for `method` on `path` at the gateway whose peer id (the fleet key) is
    /// `gateway`, at `now`: the certificate is the fleet's, valid, and names the key that
    /// signed this request within [`super::MAX_CLOCK_SKEW_SECS`] of now. Returns the member.
    ///
    /// # Errors
    /// Any [`MembershipError`] of the certificate, [`MembershipError::BadSignature`] or
    /// [`MembershipError::ClockSkew`].
    pub fn verify(
        &self,
        gateway: &PeerId,
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<PeerId, MembershipError> {
        let key = PublicKey::try_decode_protobuf(&self.public_key)
            .map_err(|_| MembershipError::BadSignature("member key does not decode"))?;
        let member = key.to_peer_id();
        self.certificate.verify(gateway, &member, now)?;
        if !key.verify(
            &message(gateway, &member, self.timestamp, method, path),
            &self.signature,
        ) {
            return Err(MembershipError::BadSignature(
                "request signature does not verify",
            ));
        }
        within_skew(self.timestamp, now)?;
        Ok(member)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::MAX_CLOCK_SKEW_SECS;

    const NOW: u64 = 1_800_000_000;
    const PATH: &str = "/flotilla/v1/blobs/sha256:00";

    fn key(n: u8) -> Keypair {
        Keypair::ed25519_from_bytes([n; 32]).unwrap()
    }

    /// Fleet key, its peer id, a member key and its certificate.
    fn setup() -> (Keypair, PeerId, Keypair, MemberCertificate) {
        let fleet = key(1);
        let node = key(2);
        let cert = MemberCertificate::issue(&fleet, node.public().to_peer_id(), NOW, 3600).unwrap();
        let id = fleet.public().to_peer_id();
        (fleet, id, node, cert)
    }

    #[test]
    fn a_signed_header_round_trips_and_verifies_for_its_request_only() {
        let (_, gw, node, cert) = setup();
        let h = MemberHeader::sign(&node, &cert, &gw, "GET", PATH, NOW).unwrap();
        let text = h.encode();
        assert!(text.starts_with(&format!("v1 {NOW} ")));
        let back = MemberHeader::decode(&text).unwrap();
        assert_eq!(back, h);
        let me = node.public().to_peer_id();
        assert_eq!(back.verify(&gw, "GET", PATH, NOW + 60).unwrap(), me);
        // Another path, method, gateway, or too late: refused.
        let other = "/flotilla/v1/blobs/sha256:01";
        assert!(back.verify(&gw, "GET", other, NOW).is_err());
        assert!(back.verify(&gw, "HEAD", PATH, NOW).is_err());
        let other_gw = key(3).public().to_peer_id();
        assert!(back.verify(&other_gw, "GET", PATH, NOW).is_err());
        assert!(matches!(
            back.verify(&gw, "GET", PATH, NOW + MAX_CLOCK_SKEW_SECS + 1),
            Err(MembershipError::ClockSkew { .. })
        ));
    }

    #[test]
    fn a_stolen_certificate_or_a_self_signed_one_is_refused() {
        let (_, gw, node, cert) = setup();
        // A stranger with the member's certificate but its own key.
        let thief = key(4);
        assert!(matches!(
            MemberHeader::sign(&thief, &cert, &gw, "GET", PATH, NOW),
            Err(MembershipError::WrongPeer { .. })
        ));
        let mut forged = MemberHeader::sign(&node, &cert, &gw, "GET", PATH, NOW).unwrap();
        forged.public_key = thief.public().encode_protobuf();
        forged.signature = thief
            .sign(&message(
                &gw,
                &thief.public().to_peer_id(),
                NOW,
                "GET",
                PATH,
            ))
            .unwrap();
        assert!(matches!(
            forged.verify(&gw, "GET", PATH, NOW),
            Err(MembershipError::WrongPeer { .. })
        ));
        // A certificate the stranger signed for itself.
        let own = MemberCertificate::issue(&thief, thief.public().to_peer_id(), NOW, 60).unwrap();
        let h = MemberHeader::sign(&thief, &own, &gw, "GET", PATH, NOW).unwrap();
        assert!(matches!(
            h.verify(&gw, "GET", PATH, NOW),
            Err(MembershipError::WrongFleet { .. })
        ));
        // An expired certificate.
        let h = MemberHeader::sign(&node, &cert, &gw, "GET", PATH, NOW + 7200).unwrap();
        assert!(matches!(
            h.verify(&gw, "GET", PATH, NOW + 7200),
            Err(MembershipError::Expired { .. })
        ));
    }

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let (_, gw, node, cert) = setup();
        let good = MemberHeader::sign(&node, &cert, &gw, "GET", PATH, NOW)
            .unwrap()
            .encode();
        let parts: Vec<&str> = good.split(' ').collect();
        let cases = [
            String::new(),
            "v2 1 00 00 00".to_owned(),
            "v1".to_owned(),
            format!("v1 -1 {} {} {}", parts[2], parts[3], parts[4]),
            format!("v1 +1 {} {} {}", parts[2], parts[3], parts[4]),
            format!("v1 {NOW} zz {} {}", parts[3], parts[4]),
            format!("v1 {NOW} {} {}", parts[2], parts[3]),
            format!("{good} extra"),
            format!("{good} "),
            "v1 99999999999999999999999 00 00 00".to_owned(),
            format!(
                "v1 {NOW} {} {} {}",
                "00".repeat(MAX_CERT_BYTES + 1),
                parts[3],
                parts[4]
            ),
            "x".repeat(MAX_HEADER_BYTES + 1),
        ];
        for c in cases {
            assert!(MemberHeader::decode(&c).is_err(), "{c:.80}");
        }
        // Every truncation of a good header is refused or fails verification.
        for n in 0..good.len() {
            if let Ok(h) = MemberHeader::decode(&good[..n]) {
                assert!(h.verify(&gw, "GET", PATH, NOW).is_err(), "{n}");
            }
        }
    }
}
