//! Benchmark payloads: deterministic pseudo-random bytes generated on the fly, never held whole.
//!
//! Byte `i` of blob `seed` is a pure function of `(seed, i)` (a counter-based wyrand), so any
//! range can be produced independently: a chunked upload generates each chunk from its offset,
//! and the digest is computed by streaming the same generator once. Generation runs at several
//! GB/s, far above anything it feeds, so the client does not bound the figures.

use std::io;

use bytes::Bytes;
use futures::Stream;

/// Size of the pieces the generator hands out (and of the buffers used to hash and copy).
pub const PIECE: usize = 1 << 20;

const WY_P0: u64 = 0xa076_1d64_78bd_642f;
const WY_P1: u64 = 0xe703_7ed1_a0b4_28db;

/// The 8-byte word at index `index` of the stream for `seed` (wyrand's output function applied
/// to the `index + 1`-th state, so the stream is seekable).
fn word(seed: u64, index: u64) -> u64 {
    let s = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(WY_P0));
    let m = u128::from(s) * u128::from(s ^ WY_P1);
    (m as u64) ^ ((m >> 64) as u64)
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of the stream for `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut start = 0usize;
    let head = (offset % 8) as usize;
    if head != 0 {
        let w = word(seed, offset / 8).to_le_bytes();
        let n = (8 - head).min(buf.len());
        buf[..n].copy_from_slice(&w[head..head + n]);
        start = n;
    }
    let mut index = (offset + start as u64) / 8;
    let mut words = buf[start..].chunks_exact_mut(8);
    for chunk in &mut words {
        chunk.copy_from_slice(&word(seed, index).to_le_bytes());
        index += 1;
    }
    let rest = words.into_remainder();
    if !rest.is_empty() {
        let n = rest.len();
        rest.copy_from_slice(&word(seed, index).to_le_bytes()[..n]);
    }
}

/// The bytes `start..start + len` of blob `seed`, as a stream of pieces of at most [`PIECE`].
pub fn body_stream(
    seed: u64,
    start: u64,
    len: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(start, move |pos| async move {
        let end = start + len;
        if pos >= end {
            return None;
        }
        let n = (end - pos).min(PIECE as u64) as usize;
        let mut piece = vec![0u8; n];
        fill(seed, pos, &mut piece);
        Some((Ok(Bytes::from(piece)), pos + n as u64))
    })
}

/// The whole of a small blob in memory (for configs, layers and other tiny payloads).
pub fn small_blob(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(seed, 0, &mut v);
    v
}

/// Parses a byte count: a plain integer, or one with a suffix `K`/`KiB`, `M`/`MiB`, `G`/`GiB`
/// (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000). Case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a byte count (examples: 1073741824, 1GiB, 512MiB, 16M)")
    })?;
    if suffix.starts_with('.') {
        return Err(format!(
            "{text:?}: fractions are not accepted, use a smaller unit (1536MiB)"
        ));
    }
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} in {text:?} (use KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A byte count for people: `1 GiB`, `16 MiB`, `3.5 MiB`, `123 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, unit) in UNITS {
        if n >= unit {
            return if n.is_multiple_of(unit) {
                format!("{} {name}", n / unit)
            } else {
                format!("{:.1} {name}", n as f64 / unit as f64)
            };
        }
    }
    format!("{n} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn any_range_matches_the_whole() {
        let whole = small_blob(7, 1000);
        for (off, len) in [
            (0usize, 1000usize),
            (3, 10),
            (8, 16),
            (13, 987),
            (999, 1),
            (5, 2),
        ] {
            let mut part = vec![0u8; len];
            fill(7, off as u64, &mut part);
            assert_eq!(part, whole[off..off + len], "offset {off} len {len}");
        }
        assert_ne!(small_blob(8, 64), whole[..64]);
    }

    #[tokio::test]
    async fn stream_yields_exactly_the_range() {
        let len = 2 * PIECE as u64 + 5;
        let pieces: Vec<Bytes> = body_stream(3, 11, len).map(|p| p.unwrap()).collect().await;
        assert_eq!(pieces.len(), 3);
        let joined: Vec<u8> = pieces.concat();
        let mut want = vec![0u8; len as usize];
        fill(3, 11, &mut want);
        assert_eq!(joined, want);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
    }
}
