//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and their CIDv1 form.
//!
//! The OCI spec names blobs and manifests by `algorithm:encoded`. flotilla requires sha256 (what
//! every client uses) and accepts sha512 as the spec allows. In the swarm a blob is keyed by a
//! CIDv1 with the `raw` codec whose multihash carries the same digest bytes, so the conversion is
//! lossless both ways.

use std::fmt;
use std::str::FromStr;

use cid::Cid;
use multihash::Multihash;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Multicodec code of the `raw` binary codec used for blob CIDs.
pub const RAW_CODEC: u64 = 0x55;
/// Multihash code for sha2-256.
pub const SHA2_256_CODE: u64 = 0x12;
/// Multihash code for sha2-512.
pub const SHA2_512_CODE: u64 = 0x13;

/// A digest algorithm that flotilla accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the algorithm every registry and client must support.
    Sha256,
    /// SHA-512, which the spec allows.
    Sha512,
}

impl Algorithm {
    /// The name used in the `algorithm:encoded` form.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    fn multihash_code(self) -> u64 {
        match self {
            Algorithm::Sha256 => SHA2_256_CODE,
            Algorithm::Sha512 => SHA2_512_CODE,
        }
    }
}

/// Why a string or CID is not a digest flotilla accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `:` separating algorithm and encoded part.
    #[error("digest {0:?} has no algorithm prefix")]
    MissingAlgorithm(String),
    /// An algorithm flotilla does not implement (the spec lets registries refuse these).
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The encoded part is not lowercase hex of the right length.
    #[error("digest {0:?} is not lowercase hex of the algorithm's length")]
    BadEncoding(String),
    /// A CID that is not a v1 raw CID with a sha2 multihash.
    #[error("CID {0} is not a raw CIDv1 with a sha2-256 or sha2-512 multihash")]
    BadCid(String),
}

/// A validated content digest, stored in its canonical `algorithm:hex` text form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    text: String,
}

impl Digest {
    /// Builds a digest from raw hash bytes.
    ///
    /// # Errors
    /// [`DigestError::BadEncoding`] when `bytes` has the wrong length for `algorithm`.
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, DigestError> {
        if bytes.len() != algorithm.digest_len() {
            return Err(DigestError::BadEncoding(hex::encode(bytes)));
        }
        Ok(Digest {
            algorithm,
            text: format!("{}:{}", algorithm.name(), hex::encode(bytes)),
        })
    }

    /// The sha256 digest of `data` (for small in-memory things such as manifests).
    pub fn sha256_of(data: &[u8]) -> Self {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(data);
        h.finish()
    }

    /// The digest of `data` under `algorithm`.
    pub fn compute(algorithm: Algorithm, data: &[u8]) -> Self {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex-encoded part after the `:`.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.name().len() + 1..]
    }

    /// The canonical `algorithm:hex` form.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The raw hash bytes.
    pub fn bytes(&self) -> Vec<u8> {
        // The constructor validated the hex, so decoding cannot fail.
        hex::decode(self.hex()).unwrap_or_default()
    }

    /// The CIDv1 (raw codec) under which this blob is keyed in the swarm.
    pub fn to_cid(&self) -> Cid {
        let mh = Multihash::<64>::wrap(self.algorithm.multihash_code(), &self.bytes())
            .expect("digest lengths (32, 64) fit a 64-byte multihash");
        Cid::new_v1(RAW_CODEC, mh)
    }

    /// The digest carried by a raw CIDv1 with a sha2-256 or sha2-512 multihash.
    ///
    /// # Errors
    /// [`DigestError::BadCid`] for any other CID.
    pub fn from_cid(cid: &Cid) -> Result<Self, DigestError> {
        if cid.version() != cid::Version::V1 || cid.codec() != RAW_CODEC {
            return Err(DigestError::BadCid(cid.to_string()));
        }
        let mh = cid.hash();
        let algorithm = match mh.code() {
            SHA2_256_CODE => Algorithm::Sha256,
            SHA2_512_CODE => Algorithm::Sha512,
            _ => return Err(DigestError::BadCid(cid.to_string())),
        };
        Digest::from_bytes(algorithm, mh.digest()).map_err(|_| DigestError::BadCid(cid.to_string()))
    }

    /// A short form for logs: algorithm and the first 12 hex characters.
    pub fn short(&self) -> &str {
        let end = (self.algorithm.name().len() + 1 + 12).min(self.text.len());
        &self.text[..end]
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, enc) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_owned()))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            // The spec's grammar for other algorithms: [a-z0-9]+([+._-][a-z0-9]+)*
            _ => {
                let ok = !alg.is_empty()
                    && alg.split(['+', '.', '_', '-']).all(|c| {
                        !c.is_empty()
                            && c.bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    });
                return Err(if ok {
                    DigestError::UnsupportedAlgorithm(alg.to_owned())
                } else {
                    DigestError::BadEncoding(s.to_owned())
                });
            }
        };
        if enc.len() != algorithm.digest_len() * 2
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadEncoding(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            text: s.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Streaming hasher producing a [`Digest`].
///
/// Backed by aws-lc-rs, the fastest SHA-256 measured on our CPUs (see docs/benchmarks.md:
/// `flotilla bench registry` measures sha2, ring and aws-lc-rs side by side). Feed it the bytes
/// exactly once, as they stream past; never hash the same bytes twice.
#[derive(Clone)]
pub struct Hasher {
    algorithm: Algorithm,
    ctx: aws_lc_rs::digest::Context,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        let alg = match algorithm {
            Algorithm::Sha256 => &aws_lc_rs::digest::SHA256,
            Algorithm::Sha512 => &aws_lc_rs::digest::SHA512,
        };
        Hasher {
            algorithm,
            ctx: aws_lc_rs::digest::Context::new(alg),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        let out = self.ctx.finish();
        Digest::from_bytes(self.algorithm, out.as_ref())
            .expect("aws-lc-rs returns the algorithm's length")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_canonical_form() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855a",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ":e3b0",
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            "blake3:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn sha512_accepted() {
        let d = Digest::compute(Algorithm::Sha512, b"abc");
        assert!(d.as_str().starts_with("sha512:ddaf35a193617aba"));
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn cid_round_trip() {
        for d in [
            Digest::sha256_of(b"hello"),
            Digest::compute(Algorithm::Sha512, b"hello"),
        ] {
            let cid = d.to_cid();
            assert_eq!(cid.codec(), RAW_CODEC);
            assert_eq!(Digest::from_cid(&cid).unwrap(), d);
            let text = cid.to_string();
            let back: Cid = text.parse().unwrap();
            assert_eq!(Digest::from_cid(&back).unwrap(), d);
        }
        // A dag-pb CIDv1 is not a blob CID.
        let d = Digest::sha256_of(b"x");
        let mh = Multihash::<64>::wrap(SHA2_256_CODE, &d.bytes()).unwrap();
        assert!(Digest::from_cid(&Cid::new_v1(0x70, mh)).is_err());
    }

    #[test]
    fn streaming_matches_sha2_crate() {
        use sha2::Digest as _;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = Hasher::new(Algorithm::Sha256);
        for chunk in data.chunks(4093) {
            h.update(chunk);
        }
        let expect = hex::encode(sha2::Sha256::digest(&data));
        assert_eq!(h.finish().hex(), expect);
    }

    #[test]
    fn serde_as_string() {
        let d = Digest::sha256_of(b"a");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(j, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&j).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}
