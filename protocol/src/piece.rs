//! Piece tables: a blob cut into fixed-size pieces of fixed-size blocks, one BLAKE3 hash per
//! block, signed by the gateway, so a node can verify every byte it receives from an untrusted
//! peer on its own, a block at a time.
//!
//! # Block hash: BLAKE3
//! The blob's sha256 digest only proves the *whole* blob; pieces need their own hashes. Those
//! hashes come from the gateway's signed table, so they need no collision-resistance story beyond
//! "a strong 256-bit hash", and speed is what matters. Measured single-threaded over 256 MiB in
//! release (`bench_piece_hash`, 3 rounds each): BLAKE3 4.6 GB/s, aws-lc-rs SHA-256 1.8 GB/s on an
//! AMD EPYC with SHA-NI and AVX-512. On CPUs without SHA-NI (the machine behind FACTS.md)
//! SHA-256 falls to ~0.2 GB/s, as slow as the QUIC link, while BLAKE3 only needs SIMD. The
//! gateway hashes the blob once at push (alongside the sha256 it computes in the same pass);
//! nodes hash each received block once.
//!
//! # Piece size: [`piece_size_for`]
//! 4 MiB, doubled until the table has at most [`MAX_PIECES_TARGET`] pieces, capped at 64 MiB.
//! The trade-off:
//! - *Per-piece overhead* favours big pieces: each piece costs a request round trip, a scheduler
//!   decision, a bitfield bit and a 32-byte hash; 4 MiB amortises these to noise at ~0.2–2 GB/s.
//! - *Parallelism across peers* favours small pieces: a peer can serve a piece only after it holds
//!   all of it, so the pipeline depth of a swarm is one piece per hop, and a blob must have many
//!   more pieces than a node has peers to keep them all busy (a 10 MiB layer is only 3 pieces).
//! - *In-order streaming latency* favours small pieces: a client reading the blob waits for the
//!   whole next piece to be verified before it gets its first byte of it.
//! - The table (and a peer's bitfield) grows with the piece count, so the doubling bounds it to
//!   2048 pieces; only blobs over 8 GiB use pieces larger than 4 MiB, and the 64 MiB cap bounds
//!   what a receiver buffers per piece (blobs over 128 GiB get more than 2048 pieces).
//!
//! # Blocks: [`block_size_for`]
//! The table holds one hash per *block*, a fixed fraction of a piece (a 16th: 256 KiB of a
//! 4-MiB piece), not one per piece. A piece stays the unit of requests, bit fields and
//! scheduling; the block is the unit of verification, so a receiver knows each 256 KiB good as
//! soon as it is in, and can pass it on (to a reading client, or to a peer asking for a piece
//! still arriving) without waiting for the rest of the piece. The price is the table's size:
//! 16 × 32 B per piece, 128 KiB per GiB of blob (at most 1 MiB below 128 GiB). A block is at
//! least 4 KiB (pieces under 64 KiB are one block) and a piece at most 64 blocks.

mod bitfield;
mod signed;

use std::ops::Range;

pub use bitfield::Bitfield;
pub use signed::{SIGNING_CONTEXT, SignedPieceTable};

use crate::digest::{Algorithm, Digest};

/// Smallest default piece size (Kraken's 4 MB, Dragonfly's lower bound).
pub const MIN_DEFAULT_PIECE_SIZE: u32 = 4 << 20;
/// Largest piece size flotilla accepts anywhere (bounds what a receiver buffers per piece).
pub const MAX_PIECE_SIZE: u32 = 64 << 20;
/// [`piece_size_for`] doubles the piece size until a table has at most this many pieces.
pub const MAX_PIECES_TARGET: u64 = 2048;
/// Version byte that starts the encoded [`PieceTable`] (2: one hash per block; 1, one per
/// piece, is no longer read).
pub const TABLE_FORMAT_VERSION: u8 = 2;
/// [`block_size_for`] cuts a piece into this many blocks where it can.
pub const BLOCKS_PER_PIECE: u32 = 16;
/// Smallest block [`block_size_for`] chooses (pieces smaller than 16 of these are one block).
pub const MIN_BLOCK_SIZE: u32 = 4 << 10;
/// Most blocks a piece may have in any table (bounds a receiver's per-piece hash list).
pub const MAX_BLOCKS_PER_PIECE: u32 = 64;

/// Why a piece table, bit field or piece was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// The bytes are not a well-formed encoding.
    #[error("malformed piece encoding: {0}")]
    Malformed(&'static str),
    /// An encoding version this build does not speak.
    #[error("unsupported piece table format version {0}")]
    UnsupportedVersion(u8),
    /// A piece size of 0 or above [`MAX_PIECE_SIZE`].
    #[error("piece size {0} is outside 1..={MAX_PIECE_SIZE}")]
    InvalidPieceSize(u32),
    /// A block size that does not divide the piece size into 1..=[`MAX_BLOCKS_PER_PIECE`] blocks.
    #[error(
        "block size {block_size} does not cut pieces of {piece_size} bytes into 1..={MAX_BLOCKS_PER_PIECE} blocks"
    )]
    InvalidBlockSize { piece_size: u32, block_size: u32 },
    /// More pieces than a `u32` index can name.
    #[error("blob of {size} bytes has too many pieces of {piece_size} bytes")]
    TooManyPieces { size: u64, piece_size: u32 },
    /// A piece index past the end of the table.
    #[error("piece {index} out of range (table has {count})")]
    IndexOutOfRange { index: u32, count: u32 },
    /// A piece of the wrong length.
    #[error("piece {index} is {got} bytes, expected {expected}")]
    WrongLength {
        index: u32,
        expected: u32,
        got: usize,
    },
    /// Two bit fields over different piece counts.
    #[error("bit field covers {got} pieces, expected {expected}")]
    LengthMismatch { expected: u32, got: u32 },
    /// A piece whose hash differs from the table's.
    #[error("piece {index} does not match its hash")]
    HashMismatch { index: u32 },
    /// The signature does not verify, or the signer key cannot be decoded.
    #[error("piece table signature invalid: {0}")]
    BadSignature(&'static str),
    /// Signed by a valid key, but not the expected one.
    #[error("piece table signed by an unexpected peer")]
    UnexpectedSigner,
    /// The keypair could not sign.
    #[error("signing the piece table failed: {0}")]
    Signing(String),
}

/// The default piece size for a blob of `blob_size` bytes (see the module docs).
pub fn piece_size_for(blob_size: u64) -> u32 {
    let mut size = MIN_DEFAULT_PIECE_SIZE;
    while size < MAX_PIECE_SIZE && blob_size.div_ceil(u64::from(size)) > MAX_PIECES_TARGET {
        size *= 2;
    }
    size
}

/// The default block size for pieces of `piece_size` bytes (see the module docs): a 16th of
/// the piece if that is a whole number of at least [`MIN_BLOCK_SIZE`] bytes, else the piece.
pub fn block_size_for(piece_size: u32) -> u32 {
    let block = piece_size / BLOCKS_PER_PIECE;
    if piece_size.is_multiple_of(BLOCKS_PER_PIECE) && block >= MIN_BLOCK_SIZE {
        block
    } else {
        piece_size
    }
}

/// Checks a piece and block size pair: pieces of 1..=[`MAX_PIECE_SIZE`] bytes, cut into
/// 1..=[`MAX_BLOCKS_PER_PIECE`] blocks of equal size.
fn check_sizes(piece_size: u32, block_size: u32) -> Result<(), PieceError> {
    if piece_size == 0 || piece_size > MAX_PIECE_SIZE {
        return Err(PieceError::InvalidPieceSize(piece_size));
    }
    if block_size == 0
        || !piece_size.is_multiple_of(block_size)
        || piece_size / block_size > MAX_BLOCKS_PER_PIECE
    {
        return Err(PieceError::InvalidBlockSize {
            piece_size,
            block_size,
        });
    }
    Ok(())
}

/// The hash of one block's bytes.
pub fn block_hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Checks one piece fed in parts of any size, block by block, for a receiver that writes a
/// piece to disk (or passes it on) as it arrives instead of holding it whole.
///
/// ```
/// use flotilla_protocol::Digest;
/// use flotilla_protocol::piece::{PieceChecker, PieceTableBuilder};
/// let data = vec![7u8; 100 << 10];
/// let mut b = PieceTableBuilder::with_block_size(64 << 10, 16 << 10).unwrap();
/// b.update(&data);
/// let table = b.finish(Digest::sha256_of(&data)).unwrap();
/// let mut c = PieceChecker::new(&table, 1).unwrap();
/// c.update(&data[64 << 10..80 << 10]);
/// assert_eq!(c.verified_len(), 16 << 10);
/// c.update(&data[80 << 10..]);
/// assert!(c.is_complete());
/// ```
#[derive(Debug, Clone)]
pub struct PieceChecker {
    index: u32,
    /// The piece's block hashes, in order.
    expected: Vec<[u8; 32]>,
    block_size: u32,
    len: u32,
    hasher: blake3::Hasher,
    /// Bytes fed so far (may pass `len`: then the piece is bad).
    fed: u64,
    /// Blocks that matched, all from the first.
    good: u32,
    bad: bool,
}

impl PieceChecker {
    /// A checker for piece `index` of `table`, fed nothing yet.
    ///
    /// # Errors
    /// [`PieceError::IndexOutOfRange`].
    pub fn new(table: &PieceTable, index: u32) -> Result<Self, PieceError> {
        let count = table.piece_count();
        let len = table
            .piece_len(index)
            .ok_or(PieceError::IndexOutOfRange { index, count })?;
        Ok(PieceChecker {
            index,
            expected: table.block_hashes[table.piece_blocks(index)].to_vec(),
            block_size: table.block_size,
            len,
            hasher: blake3::Hasher::new(),
            fed: 0,
            good: 0,
            bad: false,
        })
    }

    /// Feeds the next bytes of the piece. Bytes past a block that did not match, or past the
    /// piece's end, are not looked at: the piece is bad.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.bad {
            let block = self.good as usize;
            if block >= self.expected.len() {
                self.bad = true;
                break;
            }
            let start = u64::from(self.good) * u64::from(self.block_size);
            let end = (start + u64::from(self.block_size)).min(u64::from(self.len));
            // At most a block (a u32) is left of it.
            let room = (end - self.fed) as usize;
            let n = room.min(data.len());
            self.hasher.update(&data[..n]);
            self.fed += n as u64;
            data = &data[n..];
            if self.fed == end {
                if *self.hasher.finalize().as_bytes() == self.expected[block] {
                    self.good += 1;
                } else {
                    self.bad = true;
                }
                self.hasher.reset();
            }
        }
        if !data.is_empty() {
            self.fed += data.len() as u64;
        }
    }

    /// Bytes of the piece, from its start, in blocks that matched.
    pub fn verified_len(&self) -> u32 {
        (u64::from(self.good) * u64::from(self.block_size)).min(u64::from(self.len)) as u32
    }

    /// Whether a block failed to match or more bytes came than the piece holds.
    pub fn is_bad(&self) -> bool {
        self.bad
    }

    /// Whether exactly the piece's bytes came and every block matched.
    pub fn is_complete(&self) -> bool {
        !self.bad && self.fed == u64::from(self.len) && self.good as usize == self.expected.len()
    }

    /// [`PieceChecker::is_complete`] as a result.
    ///
    /// # Errors
    /// [`PieceError::WrongLength`] if too few or too many bytes came, else
    /// [`PieceError::HashMismatch`].
    pub fn finish(&self) -> Result<(), PieceError> {
        if self.is_complete() {
            Ok(())
        } else if self.fed != u64::from(self.len) {
            Err(PieceError::WrongLength {
                index: self.index,
                expected: self.len,
                got: usize::try_from(self.fed).unwrap_or(usize::MAX),
            })
        } else {
            Err(PieceError::HashMismatch { index: self.index })
        }
    }
}

/// Number of pieces of `piece_size` bytes in a blob of `size` bytes, if it fits a `u32`.
fn count_pieces(size: u64, piece_size: u32) -> Option<u32> {
    if piece_size == 0 {
        return None;
    }
    u32::try_from(size.div_ceil(u64::from(piece_size))).ok()
}

/// A blob cut into fixed-size pieces, each cut into fixed-size blocks (the last piece and the
/// last block may be shorter), with one hash per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceTable {
    /// The blob's content digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Size of every piece but the last.
    pub piece_size: u32,
    /// Size of every block but the last; divides `piece_size`.
    pub block_size: u32,
    /// BLAKE3 of each block of the blob, in order (⌈size / block_size⌉ of them).
    pub block_hashes: Vec<[u8; 32]>,
}

impl PieceTable {
    /// Number of pieces (0 for a 0-byte blob).
    pub fn piece_count(&self) -> u32 {
        // Constructors guarantee the piece count fits a u32.
        count_pieces(self.size, self.piece_size).unwrap_or(0)
    }

    /// Blocks in a whole piece.
    pub fn blocks_per_piece(&self) -> u32 {
        self.piece_size / self.block_size.max(1)
    }

    /// Positions in [`PieceTable::block_hashes`] of piece `index`'s blocks (empty out of range).
    pub fn piece_blocks(&self, index: u32) -> Range<usize> {
        let Some(r) = self.piece_range(index) else {
            return 0..0;
        };
        let bs = u64::from(self.block_size);
        // Both are at most the hash list's length.
        (r.start / bs) as usize..r.end.div_ceil(bs) as usize
    }

    /// Byte range of piece `index` within the blob.
    pub fn piece_range(&self, index: u32) -> Option<Range<u64>> {
        if index >= self.piece_count() {
            return None;
        }
        let start = u64::from(index) * u64::from(self.piece_size);
        let end = (start + u64::from(self.piece_size)).min(self.size);
        Some(start..end)
    }

    /// Length of piece `index` in bytes.
    pub fn piece_len(&self, index: u32) -> Option<u32> {
        // A piece is at most piece_size (a u32) long.
        self.piece_range(index).map(|r| (r.end - r.start) as u32)
    }

    /// The piece holding byte `offset`.
    pub fn piece_at(&self, offset: u64) -> Option<u32> {
        if offset >= self.size {
            return None;
        }
        u32::try_from(offset / u64::from(self.piece_size)).ok()
    }

    /// The pieces overlapping the byte range `bytes` (clamped to the blob; empty if it is empty).
    pub fn pieces_for(&self, bytes: Range<u64>) -> Range<u32> {
        let end = bytes.end.min(self.size);
        if bytes.start >= end {
            return 0..0;
        }
        let ps = u64::from(self.piece_size);
        // Both bounds are at most piece_count, which fits a u32.
        (bytes.start / ps) as u32..end.div_ceil(ps) as u32
    }

    /// Checks one piece's bytes against the table.
    ///
    /// # Errors
    /// [`PieceError::IndexOutOfRange`], [`PieceError::WrongLength`] or
    /// [`PieceError::HashMismatch`].
    pub fn verify_piece(&self, index: u32, data: &[u8]) -> Result<(), PieceError> {
        let mut checker = PieceChecker::new(self, index)?;
        if data.len() != checker.len as usize {
            return Err(PieceError::WrongLength {
                index,
                expected: checker.len,
                got: data.len(),
            });
        }
        checker.update(data);
        checker.finish()
    }

    /// The versioned binary form: `u8 version (2), u8 algorithm (1 sha256, 2 sha512), digest
    /// bytes, u64 size, u32 piece_size, u32 block_size, u32 piece_count, ⌈size / block_size⌉ ×
    /// 32-byte block hashes`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let digest = self.digest.bytes();
        let mut out = Vec::with_capacity(2 + digest.len() + 20 + 32 * self.block_hashes.len());
        out.push(TABLE_FORMAT_VERSION);
        out.push(match self.digest.algorithm() {
            Algorithm::Sha256 => 1,
            Algorithm::Sha512 => 2,
        });
        out.extend_from_slice(&digest);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.piece_size.to_be_bytes());
        out.extend_from_slice(&self.block_size.to_be_bytes());
        out.extend_from_slice(&self.piece_count().to_be_bytes());
        for h in &self.block_hashes {
            out.extend_from_slice(h);
        }
        out
    }

    /// Parses [`PieceTable::encode`]'s form; the input must be exactly one table.
    ///
    /// # Errors
    /// [`PieceError::Malformed`], [`PieceError::UnsupportedVersion`],
    /// [`PieceError::InvalidPieceSize`] or [`PieceError::InvalidBlockSize`]; never panics,
    /// allocates at most the input's size.
    pub fn decode(input: &[u8]) -> Result<Self, PieceError> {
        let mut r = Reader(input);
        let version = r.u8()?;
        if version != TABLE_FORMAT_VERSION {
            return Err(PieceError::UnsupportedVersion(version));
        }
        let algorithm = match r.u8()? {
            1 => Algorithm::Sha256,
            2 => Algorithm::Sha512,
            _ => return Err(PieceError::Malformed("unknown digest algorithm")),
        };
        let digest = Digest::from_bytes(algorithm, r.take(algorithm.digest_len())?)
            .map_err(|_| PieceError::Malformed("bad digest"))?;
        let size = u64::from_be_bytes(r.array()?);
        let piece_size = u32::from_be_bytes(r.array()?);
        let block_size = u32::from_be_bytes(r.array()?);
        check_sizes(piece_size, block_size)?;
        let count = u32::from_be_bytes(r.array()?);
        if count_pieces(size, piece_size) != Some(count) {
            return Err(PieceError::Malformed("piece count does not match size"));
        }
        // At most 64 blocks per piece and a u32 piece count: this fits a u64.
        if r.0.len() as u64 != size.div_ceil(u64::from(block_size)) * 32 {
            return Err(PieceError::Malformed(
                "hash list length does not match the block count",
            ));
        }
        let block_hashes =
            r.0.chunks_exact(32)
                .map(|c| {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(c);
                    h
                })
                .collect();
        Ok(PieceTable {
            digest,
            size,
            piece_size,
            block_size,
            block_hashes,
        })
    }
}

/// A bounds-checked cursor over untrusted bytes.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], PieceError> {
        if self.0.len() < n {
            return Err(PieceError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], PieceError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, PieceError> {
        Ok(self.array::<1>()?[0])
    }
}

/// Builds a [`PieceTable`] while a blob streams past, holding at most one block's hash state.
pub struct PieceTableBuilder {
    piece_size: u32,
    block_size: u32,
    current: blake3::Hasher,
    in_current: u32,
    size: u64,
    hashes: Vec<[u8; 32]>,
}

impl PieceTableBuilder {
    /// A builder cutting pieces of `piece_size` bytes (usually [`piece_size_for`] of the blob)
    /// into blocks of [`block_size_for`] that.
    ///
    /// # Errors
    /// [`PieceError::InvalidPieceSize`] for 0 or more than [`MAX_PIECE_SIZE`].
    pub fn new(piece_size: u32) -> Result<Self, PieceError> {
        Self::with_block_size(piece_size, block_size_for(piece_size))
    }

    /// A builder with an explicit block size.
    ///
    /// # Errors
    /// [`PieceError::InvalidPieceSize`] or [`PieceError::InvalidBlockSize`].
    pub fn with_block_size(piece_size: u32, block_size: u32) -> Result<Self, PieceError> {
        check_sizes(piece_size, block_size)?;
        Ok(PieceTableBuilder {
            piece_size,
            block_size,
            current: blake3::Hasher::new(),
            in_current: 0,
            size: 0,
            hashes: Vec::new(),
        })
    }

    /// Feeds the next bytes of the blob.
    pub fn update(&mut self, mut data: &[u8]) {
        // Blocks tile pieces exactly, so cutting the blob into blocks cuts every piece.
        while !data.is_empty() {
            let room = (self.block_size - self.in_current) as usize;
            let n = room.min(data.len());
            self.current.update(&data[..n]);
            // n <= room <= block_size, a u32.
            self.in_current += n as u32;
            self.size += n as u64;
            data = &data[n..];
            if self.in_current == self.block_size {
                self.hashes.push(*self.current.finalize().as_bytes());
                self.current.reset();
                self.in_current = 0;
            }
        }
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The table, for a blob whose digest the caller computed over the same bytes.
    ///
    /// # Errors
    /// [`PieceError::TooManyPieces`] if the piece count does not fit a `u32`.
    pub fn finish(mut self, blob_digest: Digest) -> Result<PieceTable, PieceError> {
        if self.in_current > 0 {
            self.hashes.push(*self.current.finalize().as_bytes());
        }
        if count_pieces(self.size, self.piece_size).is_none() {
            return Err(PieceError::TooManyPieces {
                size: self.size,
                piece_size: self.piece_size,
            });
        }
        Ok(PieceTable {
            digest: blob_digest,
            size: self.size,
            piece_size: self.piece_size,
            block_size: self.block_size,
            block_hashes: self.hashes,
        })
    }
}

#[cfg(test)]
mod tests;
