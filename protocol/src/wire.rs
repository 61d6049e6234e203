//! The piece-transfer wire protocol (`/flotilla/pieces/2.0.0`), sans-IO: the frames two peers
//! exchange over one stream per (downloader, uploader, blob), their byte layout, and an
//! incremental decoder that never panics and never allocates for bytes that have not arrived.
//!
//! # Framing
//! Every frame is `u32 len` (big-endian, bytes after this field, 1..=[`MAX_FRAME_LEN`]), then
//! `u8 type`, then the type's fields, big-endian. Types below 0x80 go from the downloader to the
//! uploader, types from 0x80 up the other way. A [`Frame::Piece`] frame is only a header: its
//! `len` payload bytes follow it on the stream, outside any frame, as *parts* — each a `u32 n`
//! (1..=bytes still due) then `n` raw bytes — so a piece is never buffered whole and an uploader
//! can send a piece that is still arriving at it as its blocks verify. A part length of 0
//! ([`PART_ABANDONED`]) ends the piece early: the uploader lost the copy it was passing on (its
//! own source failed); the downloader drops what it got of the piece, and nobody is at fault.
//! [`decode`] returns the header and the caller reads the parts itself.
//!
//! | type | frame | fields after the type byte |
//! |---|---|---|
//! | 0x01 | Hello | `u8 version (2)`, `u8 flags (bit 0: want table)`, `u8 algorithm (1 sha256, 2 sha512)`, digest (32 or 64 bytes) |
//! | 0x02 | Request | `u32 piece` |
//! | 0x03 | Cancel | `u32 piece` |
//! | 0x81 | Welcome | `u8 version (2)`, `u8 flags (bit 0: table present, bit 1: site present)`, `u64 size`, `u32 piece_size`, [`u8 site_len`, site label], [`u32 table_len`, signed table], bit field (`u32 count`, bytes) |
//! | 0x82 | NotHeld | — |
//! | 0x83 | Have | `u32 piece` |
//! | 0x89 | Arriving | `u32 piece` |
//! | 0x8A | Withdrawn | `u32 piece` |
//! | 0x84 | Piece | `u32 index`, `u32 len` (1..=[`MAX_PIECE_SIZE`]), then `len` raw bytes |
//! | 0x85 | Busy | `u32 piece` |
//! | 0x86 | Missing | `u32 piece` |
//! | 0x87 | Error | `u16 code`, UTF-8 message (the rest, at most [`MAX_ERROR_MESSAGE`] bytes) |
//! | 0x88 | PieceBusy | `u32 piece` |
//!
//! Decoding is strict: unknown types, unknown flag bits, wrong lengths, trailing bytes, a bit
//! field whose count does not match `size / piece_size`, and unsupported versions are errors.
//! Fixed-size frames are checked as soon as their 5-byte header is in, so garbage is rejected
//! without waiting for (or buffering) a claimed multi-megabyte body.

use crate::digest::{Algorithm, Digest};
use crate::piece::{Bitfield, MAX_PIECE_SIZE, PieceError};
use crate::site::check_site;

/// The libp2p protocol name.
pub const PROTOCOL_NAME: &str = "/flotilla/pieces/2.0.0";
/// The version byte carried by Hello and Welcome.
pub const VERSION: u8 = 2;
/// Bytes of a payload part's length.
pub const PART_HEADER: usize = 4;
/// The part length that abandons the rest of a piece.
pub const PART_ABANDONED: u32 = 0;
/// Largest frame body (type byte and fields; the length prefix and piece payloads excluded).
/// A Welcome with its table is the largest frame: 4 MiB holds the table (16 block hashes per
/// piece) and bit field of a blob of about 8 000 pieces (512 GiB at the largest piece size);
/// a bigger blob's table comes only from the gateway over HTTP.
pub const MAX_FRAME_LEN: u32 = 4 << 20;
/// Longest message an Error frame carries; [`encode`] truncates longer ones.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

const T_HELLO: u8 = 0x01;
const T_REQUEST: u8 = 0x02;
const T_CANCEL: u8 = 0x03;
const T_WELCOME: u8 = 0x81;
const T_NOT_HELD: u8 = 0x82;
const T_HAVE: u8 = 0x83;
const T_PIECE: u8 = 0x84;
const T_BUSY: u8 = 0x85;
const T_MISSING: u8 = 0x86;
const T_ERROR: u8 = 0x87;
const T_PIECE_BUSY: u8 = 0x88;
const T_ARRIVING: u8 = 0x89;
const T_WITHDRAWN: u8 = 0x8A;

const HELLO_WANT_TABLE: u8 = 0x01;
const WELCOME_HAS_TABLE: u8 = 0x01;
const WELCOME_HAS_SITE: u8 = 0x02;

/// Why an uploader ends a conversation ([`Frame::Error`]). Unknown codes decode as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// A malformed or unexpected frame.
    pub const PROTOCOL: ErrorCode = ErrorCode(1);
    /// A Hello with a version this uploader does not speak.
    pub const VERSION: ErrorCode = ErrorCode(2);
    /// Too many streams open at this uploader; try again later or elsewhere.
    pub const OVERLOADED: ErrorCode = ErrorCode(3);
    /// No Hello in time, or the stream sat idle too long.
    pub const TIMEOUT: ErrorCode = ErrorCode(4);
    /// The uploader failed (e.g. a disk read) and cannot continue.
    pub const INTERNAL: ErrorCode = ErrorCode(5);
    /// The downloader has not shown a valid fleet membership certificate.
    pub const NOT_MEMBER: ErrorCode = ErrorCode(6);
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match *self {
            ErrorCode::PROTOCOL => "protocol",
            ErrorCode::VERSION => "version",
            ErrorCode::OVERLOADED => "overloaded",
            ErrorCode::TIMEOUT => "timeout",
            ErrorCode::INTERNAL => "internal",
            ErrorCode::NOT_MEMBER => "not a member",
            _ => "unknown",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// One frame of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Downloader, first frame: the blob it wants, and whether to send the signed table.
    Hello {
        /// The blob.
        digest: Digest,
        /// Ask for the signed piece table in the Welcome.
        want_table: bool,
    },
    /// Downloader: send piece `piece`.
    Request {
        /// Piece index.
        piece: u32,
    },
    /// Downloader: drop queued requests for `piece` (one already being sent still completes).
    Cancel {
        /// Piece index.
        piece: u32,
    },
    /// Uploader, answer to Hello: the blob's geometry, the signed table if asked for, and the
    /// pieces held now.
    Welcome {
        /// Blob size in bytes.
        size: u64,
        /// Size of every piece but the last.
        piece_size: u32,
        /// `SignedPieceTable::encode` bytes (only if the Hello asked; opaque here).
        table: Option<Vec<u8>>,
        /// Pieces held now; covers exactly `ceil(size / piece_size)` pieces.
        have: Bitfield,
        /// The uploader's site label ([`crate::site`]), if it has one: the downloader's
        /// scheduler then knows whether this peer is near before it asks for anything.
        site: Option<String>,
    },
    /// Uploader, answer to Hello: nothing of the blob is held. The uploader then closes.
    NotHeld,
    /// Uploader: it now holds `piece` too, whole.
    Have {
        /// Piece index.
        piece: u32,
    },
    /// Uploader: `piece` is arriving here and its first block verified; it can be asked for
    /// now and is sent as its blocks verify. A Have follows once it is whole; if the copy is
    /// lost instead, a Withdrawn.
    Arriving {
        /// Piece index.
        piece: u32,
    },
    /// Uploader: the copy of `piece` it announced as arriving was lost before it was whole; it
    /// does not hold the piece (until a later Arriving or Have). A request for it that crossed
    /// this frame is answered PieceBusy.
    Withdrawn {
        /// Piece index.
        piece: u32,
    },
    /// Uploader: piece `index` follows as exactly `len` raw bytes.
    Piece {
        /// Piece index.
        index: u32,
        /// Payload length.
        len: u32,
    },
    /// Uploader: request for `piece` refused for load (no fault; ask again later or elsewhere).
    Busy {
        /// Piece index.
        piece: u32,
    },
    /// Uploader: `piece` is being sent to enough other downloaders here already; ask for it
    /// again a little later, here or at one of them (no fault, and no pause for other pieces).
    PieceBusy {
        /// Piece index.
        piece: u32,
    },
    /// Uploader: `piece` is not held (or could not be read).
    Missing {
        /// Piece index.
        piece: u32,
    },
    /// Uploader: the conversation ends, and why. The uploader closes after it.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

impl Frame {
    /// The frame's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Request { .. } => "Request",
            Frame::Cancel { .. } => "Cancel",
            Frame::Welcome { .. } => "Welcome",
            Frame::NotHeld => "NotHeld",
            Frame::Have { .. } => "Have",
            Frame::Arriving { .. } => "Arriving",
            Frame::Withdrawn { .. } => "Withdrawn",
            Frame::Piece { .. } => "Piece",
            Frame::Busy { .. } => "Busy",
            Frame::PieceBusy { .. } => "PieceBusy",
            Frame::Missing { .. } => "Missing",
            Frame::Error { .. } => "Error",
        }
    }

    /// Whether the uploader sends this frame (else the downloader does).
    pub fn from_uploader(&self) -> bool {
        !matches!(
            self,
            Frame::Hello { .. } | Frame::Request { .. } | Frame::Cancel { .. }
        )
    }
}

/// Why bytes are not a valid frame, or a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A length prefix of 0 (no type byte).
    #[error("empty frame")]
    EmptyFrame,
    /// A length prefix above [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The claimed (or, when encoding, actual) length.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A type byte this version does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame whose length does not fit its type.
    #[error("{frame} frame has a bad length of {len} bytes")]
    BadLength {
        /// Frame name.
        frame: &'static str,
        /// Its body length.
        len: u32,
    },
    /// A Hello or Welcome of another protocol version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Any other malformation.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// A Welcome's bit field does not decode.
    #[error("bad bit field: {0}")]
    Bitfield(PieceError),
}

/// Appends `frame`'s encoding to `out`.
///
/// Only frames [`decode`] accepts are encoded: an Error message is truncated (at a character
/// boundary) to [`MAX_ERROR_MESSAGE`] bytes.
///
/// # Errors
/// [`WireError::FrameTooLarge`] for a Welcome over [`MAX_FRAME_LEN`], [`WireError::Malformed`]
/// for a Piece length outside 1..=[`MAX_PIECE_SIZE`] or a Welcome whose geometry does not match
/// its bit field. `out` is unchanged on error.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    match frame {
        Frame::Hello { digest, want_table } => {
            out.push(T_HELLO);
            out.push(VERSION);
            out.push(if *want_table { HELLO_WANT_TABLE } else { 0 });
            out.push(algorithm_code(digest.algorithm()));
            out.extend_from_slice(&digest.bytes());
        }
        Frame::Request { piece } => put_index(out, T_REQUEST, *piece),
        Frame::Cancel { piece } => put_index(out, T_CANCEL, *piece),
        Frame::Welcome {
            size,
            piece_size,
            table,
            have,
            site,
        } => {
            if let Err(e) = check_geometry(*size, *piece_size, have.len()) {
                out.truncate(start);
                return Err(e);
            }
            if site.as_deref().is_some_and(|s| check_site(s).is_err()) {
                out.truncate(start);
                return Err(WireError::Malformed("bad site label"));
            }
            out.push(T_WELCOME);
            out.push(VERSION);
            let mut flags = 0;
            if table.is_some() {
                flags |= WELCOME_HAS_TABLE;
            }
            if site.is_some() {
                flags |= WELCOME_HAS_SITE;
            }
            out.push(flags);
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&piece_size.to_be_bytes());
            if let Some(site) = site {
                // check_site: at most MAX_SITE_LEN (63) bytes.
                out.push(site.len() as u8);
                out.extend_from_slice(site.as_bytes());
            }
            if let Some(table) = table {
                let Ok(len) = u32::try_from(table.len()) else {
                    out.truncate(start);
                    return Err(WireError::FrameTooLarge {
                        len: table.len() as u64,
                        max: MAX_FRAME_LEN,
                    });
                };
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(table);
            }
            out.extend_from_slice(&have.encode());
        }
        Frame::NotHeld => out.push(T_NOT_HELD),
        Frame::Have { piece } => put_index(out, T_HAVE, *piece),
        Frame::Arriving { piece } => put_index(out, T_ARRIVING, *piece),
        Frame::Withdrawn { piece } => put_index(out, T_WITHDRAWN, *piece),
        Frame::Piece { index, len } => {
            if *len == 0 || *len > MAX_PIECE_SIZE {
                out.truncate(start);
                return Err(WireError::Malformed(
                    "piece length outside 1..=MAX_PIECE_SIZE",
                ));
            }
            put_index(out, T_PIECE, *index);
            out.extend_from_slice(&len.to_be_bytes());
        }
        Frame::Busy { piece } => put_index(out, T_BUSY, *piece),
        Frame::PieceBusy { piece } => put_index(out, T_PIECE_BUSY, *piece),
        Frame::Missing { piece } => put_index(out, T_MISSING, *piece),
        Frame::Error { code, message } => {
            out.push(T_ERROR);
            out.extend_from_slice(&code.0.to_be_bytes());
            out.extend_from_slice(truncate_utf8(message, MAX_ERROR_MESSAGE).as_bytes());
        }
    }
    let body = (out.len() - start - LEN_PREFIX) as u64;
    if body > u64::from(MAX_FRAME_LEN) {
        out.truncate(start);
        return Err(WireError::FrameTooLarge {
            len: body,
            max: MAX_FRAME_LEN,
        });
    }
    // body <= MAX_FRAME_LEN, a u32.
    out[start..start + LEN_PREFIX].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(())
}

/// Decodes the frame at the start of `input`.
///
/// Returns `Ok(None)` while `input` holds only part of a frame (read more and call again with
/// the longer input), or the frame and how many bytes of `input` it used. For
/// [`Frame::Piece`] only the header is used; the payload follows.
///
/// # Errors
/// A [`WireError`] as soon as the bytes cannot start a valid frame; the stream is then
/// unusable. Never panics; allocates only in proportion to the bytes present (a claimed
/// length is never trusted before its bytes are in `input`).
pub fn decode(input: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some((prefix, rest)) = input.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len == 0 {
        return Err(WireError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        });
    }
    let Some(&kind) = rest.first() else {
        return Ok(None);
    };
    check_length(kind, len)?;
    let total = LEN_PREFIX + len as usize;
    if input.len() < total {
        return Ok(None);
    }
    let frame = decode_body(kind, &input[LEN_PREFIX + 1..total])?;
    Ok(Some((frame, total)))
}

/// The encoded length of a frame whose first bytes are `input`, once its length prefix is in:
/// lets a reader size its buffer. `None` before 4 bytes.
pub fn frame_len(input: &[u8]) -> Option<usize> {
    input
        .split_first_chunk::<LEN_PREFIX>()
        .map(|(p, _)| LEN_PREFIX + u32::from_be_bytes(*p) as usize)
}

/// Rejects a frame whose body length cannot fit its type, before its body arrives.
fn check_length(kind: u8, len: u32) -> Result<(), WireError> {
    let (frame, ok) = match kind {
        T_HELLO => ("Hello", len == 4 + 32 || len == 4 + 64),
        T_REQUEST => ("Request", len == 5),
        T_CANCEL => ("Cancel", len == 5),
        // type, version, flags, size, piece_size, bit field count.
        T_WELCOME => ("Welcome", len >= 1 + 2 + 8 + 4 + 4),
        T_NOT_HELD => ("NotHeld", len == 1),
        T_HAVE => ("Have", len == 5),
        T_ARRIVING => ("Arriving", len == 5),
        T_WITHDRAWN => ("Withdrawn", len == 5),
        T_PIECE => ("Piece", len == 9),
        T_BUSY => ("Busy", len == 5),
        T_MISSING => ("Missing", len == 5),
        T_PIECE_BUSY => ("PieceBusy", len == 5),
        T_ERROR => ("Error", (3..=3 + MAX_ERROR_MESSAGE as u32).contains(&len)),
        other => return Err(WireError::UnknownType(other)),
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::BadLength { frame, len })
    }
}

/// Decodes a body whose length [`check_length`] accepted.
fn decode_body(kind: u8, body: &[u8]) -> Result<Frame, WireError> {
    let mut r = Cursor(body);
    let frame = match kind {
        T_HELLO => {
            version(r.u8()?)?;
            let flags = r.u8()?;
            if flags & !HELLO_WANT_TABLE != 0 {
                return Err(WireError::Malformed("unknown Hello flags"));
            }
            let algorithm = match r.u8()? {
                1 => Algorithm::Sha256,
                2 => Algorithm::Sha512,
                _ => return Err(WireError::Malformed("unknown digest algorithm")),
            };
            let digest = Digest::from_bytes(algorithm, r.take(algorithm.digest_len())?)
                .map_err(|_| WireError::Malformed("bad digest"))?;
            Frame::Hello {
                digest,
                want_table: flags & HELLO_WANT_TABLE != 0,
            }
        }
        T_REQUEST => Frame::Request { piece: r.u32()? },
        T_CANCEL => Frame::Cancel { piece: r.u32()? },
        T_WELCOME => {
            version(r.u8()?)?;
            let flags = r.u8()?;
            if flags & !(WELCOME_HAS_TABLE | WELCOME_HAS_SITE) != 0 {
                return Err(WireError::Malformed("unknown Welcome flags"));
            }
            let size = u64::from_be_bytes(r.array()?);
            let piece_size = r.u32()?;
            let site = if flags & WELCOME_HAS_SITE != 0 {
                let len = usize::from(r.u8()?);
                let label = std::str::from_utf8(r.take(len)?)
                    .map_err(|_| WireError::Malformed("bad site label"))?;
                check_site(label).map_err(|_| WireError::Malformed("bad site label"))?;
                Some(label.to_owned())
            } else {
                None
            };
            let table = if flags & WELCOME_HAS_TABLE != 0 {
                let len = r.u32()?;
                let len = usize::try_from(len).map_err(|_| WireError::Malformed("truncated"))?;
                Some(r.take(len)?.to_vec())
            } else {
                None
            };
            // The bit field is the rest of the frame; its decoder wants exactly one.
            let have = Bitfield::decode(r.rest()).map_err(WireError::Bitfield)?;
            check_geometry(size, piece_size, have.len())?;
            Frame::Welcome {
                size,
                piece_size,
                table,
                have,
                site,
            }
        }
        T_NOT_HELD => Frame::NotHeld,
        T_HAVE => Frame::Have { piece: r.u32()? },
        T_ARRIVING => Frame::Arriving { piece: r.u32()? },
        T_WITHDRAWN => Frame::Withdrawn { piece: r.u32()? },
        T_PIECE => {
            let index = r.u32()?;
            let len = r.u32()?;
            if len == 0 || len > MAX_PIECE_SIZE {
                return Err(WireError::Malformed(
                    "piece length outside 1..=MAX_PIECE_SIZE",
                ));
            }
            Frame::Piece { index, len }
        }
        T_BUSY => Frame::Busy { piece: r.u32()? },
        T_MISSING => Frame::Missing { piece: r.u32()? },
        T_PIECE_BUSY => Frame::PieceBusy { piece: r.u32()? },
        T_ERROR => {
            let code = ErrorCode(u16::from_be_bytes(r.array()?));
            let message = std::str::from_utf8(r.rest())
                .map_err(|_| WireError::Malformed("Error message is not UTF-8"))?
                .to_owned();
            Frame::Error { code, message }
        }
        other => return Err(WireError::UnknownType(other)),
    };
    if !r.0.is_empty() {
        return Err(WireError::Malformed("trailing bytes in frame"));
    }
    Ok(frame)
}

fn version(v: u8) -> Result<(), WireError> {
    if v == VERSION {
        Ok(())
    } else {
        Err(WireError::UnsupportedVersion(v))
    }
}

/// The blob geometry must be valid and name exactly as many pieces as the bit field covers.
fn check_geometry(size: u64, piece_size: u32, count: u32) -> Result<(), WireError> {
    if piece_size == 0 || piece_size > MAX_PIECE_SIZE {
        return Err(WireError::Malformed(
            "piece size outside 1..=MAX_PIECE_SIZE",
        ));
    }
    if size.div_ceil(u64::from(piece_size)) != u64::from(count) {
        return Err(WireError::Malformed(
            "bit field does not cover the blob's pieces",
        ));
    }
    Ok(())
}

/// Length of piece `index` in a blob of `size` bytes cut in `piece_size` pieces, if it exists.
pub fn piece_len(size: u64, piece_size: u32, index: u32) -> Option<u32> {
    if piece_size == 0 {
        return None;
    }
    let start = u64::from(index).checked_mul(u64::from(piece_size))?;
    if start >= size {
        return None;
    }
    // At most piece_size, a u32.
    Some((size - start).min(u64::from(piece_size)) as u32)
}

fn algorithm_code(a: Algorithm) -> u8 {
    match a {
        Algorithm::Sha256 => 1,
        Algorithm::Sha512 => 2,
    }
}

fn put_index(out: &mut Vec<u8>, kind: u8, index: u32) {
    out.push(kind);
    out.extend_from_slice(&index.to_be_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A bounds-checked cursor over one frame body.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests;
