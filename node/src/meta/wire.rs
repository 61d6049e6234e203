//! The bytes of `/flotilla/meta/1.0.0`: one request and one answer per stream (spec §6.4).
//!
//! ```text
//! request = u16 len (1..=512), then: u8 version (1), u8 kind,
//!             kind 1 (tag record): u16 name_len, name, u8 tag_len, tag
//!             kind 2 (manifest):   u8 algorithm (1 sha256, 2 sha512), digest bytes
//! answer  = u8 status
//!             0 not held
//!             1 tag record: u16 len (1..=4096), SignedTagRecord::encode
//!             2 manifest:   u16 media_type_len (1..=255), media type, u32 len (1..=4 MiB), bytes
//! ```
//! Decoding is strict (versions, kinds, names, lengths, nothing trailing in a request), and
//! nothing is allocated before its length was checked against the limit.

use flotilla_protocol::tagrecord::{MAX_SIGNED_LEN, SignedTagRecord};
use flotilla_protocol::{Algorithm, Digest, RepoName, Tag};
use futures::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::tags::{CachedManifest, MAX_MANIFEST_BYTES};

const VERSION: u8 = 1;
/// Largest request body.
const MAX_REQUEST: usize = 512;
/// Longest media type carried.
const MAX_MEDIA_TYPE: usize = 255;

/// Why a conversation failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream failed or ended early.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes break the format.
    #[error("malformed meta message: {0}")]
    Malformed(&'static str),
}

/// What a peer is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The newest signed record of a tag.
    TagRecord(RepoName, Tag),
    /// A manifest by digest.
    Manifest(Digest),
}

/// What a peer answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It holds nothing of the kind.
    NotHeld,
    /// The record (to be verified by the asker).
    TagRecord(SignedTagRecord),
    /// The manifest (to be checked against the digest by the asker).
    Manifest(CachedManifest),
}

fn alg_code(a: Algorithm) -> u8 {
    match a {
        Algorithm::Sha256 => 1,
        Algorithm::Sha512 => 2,
    }
}

impl Request {
    fn encode(&self) -> Vec<u8> {
        let mut body = vec![VERSION];
        match self {
            Request::TagRecord(repo, tag) => {
                body.push(1);
                // Names are at most 255 bytes and tags 128 (checked when parsed).
                body.extend_from_slice(&(repo.as_str().len() as u16).to_be_bytes());
                body.extend_from_slice(repo.as_str().as_bytes());
                body.push(tag.as_str().len() as u8);
                body.extend_from_slice(tag.as_str().as_bytes());
            }
            Request::Manifest(d) => {
                body.push(2);
                body.push(alg_code(d.algorithm()));
                body.extend_from_slice(&d.bytes());
            }
        }
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    fn decode(body: &[u8]) -> Result<Request, WireError> {
        let bad = WireError::Malformed;
        let (&version, rest) = body.split_first().ok_or(bad("empty request"))?;
        if version != VERSION {
            return Err(bad("unsupported version"));
        }
        let (&kind, rest) = rest.split_first().ok_or(bad("no kind"))?;
        match kind {
            1 => {
                let (len, rest) = rest.split_at_checked(2).ok_or(bad("truncated"))?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let (name, rest) = rest.split_at_checked(len).ok_or(bad("truncated"))?;
                let (&tag_len, rest) = rest.split_first().ok_or(bad("truncated"))?;
                let (tag, rest) = rest
                    .split_at_checked(usize::from(tag_len))
                    .ok_or(bad("truncated"))?;
                if !rest.is_empty() {
                    return Err(bad("trailing bytes"));
                }
                let repo = std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(bad("invalid name"))?;
                let tag = std::str::from_utf8(tag)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(bad("invalid tag"))?;
                Ok(Request::TagRecord(repo, tag))
            }
            2 => {
                let (&alg, rest) = rest.split_first().ok_or(bad("truncated"))?;
                let alg = match alg {
                    1 => Algorithm::Sha256,
                    2 => Algorithm::Sha512,
                    _ => return Err(bad("unknown digest algorithm")),
                };
                if rest.len() != alg.digest_len() {
                    return Err(bad("digest length"));
                }
                let d = Digest::from_bytes(alg, rest).map_err(|_| bad("bad digest"))?;
                Ok(Request::Manifest(d))
            }
            _ => Err(bad("unknown kind")),
        }
    }
}

/// Sends `request` (the asker's side).
pub(crate) async fn write_request(
    io: &mut (impl AsyncWrite + Unpin),
    request: &Request,
) -> Result<(), WireError> {
    io.write_all(&request.encode()).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one request (the answerer's side).
pub(crate) async fn read_request(io: &mut (impl AsyncRead + Unpin)) -> Result<Request, WireError> {
    let mut len = [0u8; 2];
    io.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > MAX_REQUEST {
        return Err(WireError::Malformed("request length"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Request::decode(&body)
}

/// Sends `answer` and closes the sending side.
pub(crate) async fn write_answer(
    io: &mut (impl AsyncWrite + Unpin),
    answer: &Answer,
) -> Result<(), WireError> {
    let mut out = Vec::new();
    match answer {
        Answer::NotHeld => out.push(0),
        Answer::TagRecord(signed) => {
            let bytes = signed
                .encode()
                .map_err(|_| WireError::Malformed("record too long"))?;
            out.push(1);
            // encode() keeps within MAX_SIGNED_LEN (4096).
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        Answer::Manifest(m) => {
            let mt = m.media_type.as_bytes();
            if mt.is_empty() || mt.len() > MAX_MEDIA_TYPE {
                return Err(WireError::Malformed("media type length"));
            }
            if m.bytes.is_empty() || m.bytes.len() > MAX_MANIFEST_BYTES {
                return Err(WireError::Malformed("manifest length"));
            }
            out.push(2);
            out.extend_from_slice(&(mt.len() as u16).to_be_bytes());
            out.extend_from_slice(mt);
            out.extend_from_slice(&(m.bytes.len() as u32).to_be_bytes());
            io.write_all(&out).await?;
            io.write_all(&m.bytes).await?;
            io.close().await?;
            return Ok(());
        }
    }
    io.write_all(&out).await?;
    io.close().await?;
    Ok(())
}

/// Reads one answer (not verified: the asker checks signatures and digests).
pub(crate) async fn read_answer(io: &mut (impl AsyncRead + Unpin)) -> Result<Answer, WireError> {
    let mut status = [0u8; 1];
    io.read_exact(&mut status).await?;
    match status[0] {
        0 => Ok(Answer::NotHeld),
        1 => {
            let mut len = [0u8; 2];
            io.read_exact(&mut len).await?;
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 || len > MAX_SIGNED_LEN {
                return Err(WireError::Malformed("record length"));
            }
            let mut bytes = vec![0u8; len];
            io.read_exact(&mut bytes).await?;
            let signed = SignedTagRecord::decode(&bytes)
                .map_err(|_| WireError::Malformed("record does not decode"))?;
            Ok(Answer::TagRecord(signed))
        }
        2 => {
            let mut len = [0u8; 2];
            io.read_exact(&mut len).await?;
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 || len > MAX_MEDIA_TYPE {
                return Err(WireError::Malformed("media type length"));
            }
            let mut mt = vec![0u8; len];
            io.read_exact(&mut mt).await?;
            let media_type =
                String::from_utf8(mt).map_err(|_| WireError::Malformed("media type"))?;
            let mut len = [0u8; 4];
            io.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 || len > MAX_MANIFEST_BYTES {
                return Err(WireError::Malformed("manifest length"));
            }
            let mut bytes = vec![0u8; len];
            io.read_exact(&mut bytes).await?;
            Ok(Answer::Manifest(CachedManifest {
                media_type,
                bytes: bytes.into(),
            }))
        }
        _ => Err(WireError::Malformed("unknown status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::tagrecord::{TagRecord, TagTarget};
    use futures::io::Cursor;

    #[tokio::test]
    async fn requests_and_answers_round_trip() {
        let requests = [
            Request::TagRecord("a/b".parse().unwrap(), "v1".parse().unwrap()),
            Request::Manifest(Digest::sha256_of(b"m")),
            Request::Manifest(Digest::compute(Algorithm::Sha512, b"m")),
        ];
        for r in requests {
            let mut buf = Cursor::new(Vec::new());
            write_request(&mut buf, &r).await.unwrap();
            let mut rd = Cursor::new(buf.into_inner());
            assert_eq!(read_request(&mut rd).await.unwrap(), r);
        }
        let key = libp2p::identity::Keypair::generate_ed25519();
        let signed = SignedTagRecord::sign(
            TagRecord {
                repo: "a/b".parse().unwrap(),
                tag: "v1".parse().unwrap(),
                target: TagTarget::Deleted,
                seq: 3,
                issued_ms: 4,
            },
            &key,
        )
        .unwrap();
        let answers = [
            Answer::NotHeld,
            Answer::TagRecord(signed),
            Answer::Manifest(CachedManifest {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                bytes: b"{}".to_vec().into(),
            }),
        ];
        for a in answers {
            let mut buf = Cursor::new(Vec::new());
            write_answer(&mut buf, &a).await.unwrap();
            let mut rd = Cursor::new(buf.into_inner());
            assert_eq!(read_answer(&mut rd).await.unwrap(), a);
        }
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_allocating() {
        // A manifest length over the limit.
        let mut msg = vec![2, 0, 1, b'x'];
        msg.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_answer(&mut Cursor::new(msg)).await,
            Err(WireError::Malformed("manifest length"))
        ));
        // A request length over the limit, an unknown kind, trailing bytes, a bad tag.
        assert!(
            read_request(&mut Cursor::new(vec![0xff, 0xff]))
                .await
                .is_err()
        );
        assert!(
            read_request(&mut Cursor::new(vec![0, 2, 1, 9]))
                .await
                .is_err()
        );
        let mut tr = Request::Manifest(Digest::sha256_of(b"m")).encode();
        tr[1] += 1;
        tr.push(0);
        assert!(read_request(&mut Cursor::new(tr)).await.is_err());
        let bad_tag = vec![0, 7, 1, 1, 0, 1, b'a', 1, b'-'];
        assert!(read_request(&mut Cursor::new(bad_tag)).await.is_err());
        // A truncated answer.
        assert!(
            read_answer(&mut Cursor::new(vec![1, 0, 9, 1]))
                .await
                .is_err()
        );
        assert!(read_answer(&mut Cursor::new(vec![7])).await.is_err());
    }
}
