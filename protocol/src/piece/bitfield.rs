//! Which pieces of a blob a peer holds: a fixed-length bit set with a compact wire form.
//!
//! Wire form (big-endian): `u32 len` then `ceil(len / 8)` bytes, piece 0 in the high bit of the
//! first byte (BitTorrent's order). Spare bits in the last byte must be zero, so every bit field
//! has exactly one encoding.

use super::PieceError;

/// A set of piece indices `0..len`, with its population count kept up to date.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bitfield {
    len: u32,
    ones: u32,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

impl Bitfield {
    /// An empty bit field for `len` pieces.
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            ones: 0,
            bytes: vec![0; byte_len(len)],
        }
    }

    /// A bit field with every piece set (a seeder's).
    pub fn full(len: u32) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Number of pieces the field covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the field covers no pieces (a 0-byte blob).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether piece `index` is set; `false` past the end.
    pub fn get(&self, index: u32) -> bool {
        if index >= self.len {
            return false;
        }
        self.bytes[(index / 8) as usize] & mask(index) != 0
    }

    /// Sets piece `index`; returns whether it was newly set (`false` if already set or out of range).
    pub fn set(&mut self, index: u32) -> bool {
        if index >= self.len || self.get(index) {
            return false;
        }
        self.bytes[(index / 8) as usize] |= mask(index);
        self.ones += 1;
        true
    }

    /// Clears piece `index`; returns whether it was set.
    pub fn clear(&mut self, index: u32) -> bool {
        if !self.get(index) {
            return false;
        }
        self.bytes[(index / 8) as usize] &= !mask(index);
        self.ones -= 1;
        true
    }

    /// Number of pieces set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether every piece is set (true for a 0-piece field).
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Set pieces, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// Unset pieces, ascending.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.bytes.len());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.bytes);
        out
    }

    /// Parses the wire form; the input must be exactly one bit field.
    ///
    /// # Errors
    /// [`PieceError::Malformed`] on a short or long input or non-zero spare bits.
    pub fn decode(input: &[u8]) -> Result<Self, PieceError> {
        let (len_bytes, rest) = input
            .split_first_chunk::<4>()
            .ok_or(PieceError::Malformed("bitfield shorter than its length"))?;
        let len = u32::from_be_bytes(*len_bytes);
        // Compare in u64 so a huge declared length cannot allocate: the bytes must already be here.
        if rest.len() as u64 != byte_len(len) as u64 {
            return Err(PieceError::Malformed(
                "bitfield length does not match its bytes",
            ));
        }
        let spare = (byte_len(len) * 8) as u64 - u64::from(len);
        if let Some(last) = rest.last()
            && spare > 0
            && last & ((1u8 << spare) - 1) != 0
        {
            return Err(PieceError::Malformed("bitfield has spare bits set"));
        }
        let ones = rest.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield {
            len,
            ones,
            bytes: rest.to_vec(),
        })
    }
}

fn byte_len(len: u32) -> usize {
    len.div_ceil(8) as usize
}

fn mask(index: u32) -> u8 {
    0x80 >> (index % 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_iter() {
        let mut b = Bitfield::new(10);
        assert!(!b.is_complete());
        assert!(b.set(0) && b.set(9) && !b.set(9) && !b.set(10));
        assert_eq!(b.count(), 2);
        assert!(b.get(9) && !b.get(8) && !b.get(100));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(b.iter_zeros().count(), 8);
        assert!(b.clear(0) && !b.clear(0));
        assert_eq!(b.count(), 1);
        assert!(Bitfield::full(10).is_complete());
        assert!(Bitfield::new(0).is_complete() && Bitfield::new(0).is_empty());
    }

    #[test]
    fn round_trip_and_bounds() {
        let mut b = Bitfield::new(13);
        b.set(1);
        b.set(12);
        let wire = b.encode();
        assert_eq!(wire, vec![0, 0, 0, 13, 0x40, 0x08]);
        assert_eq!(Bitfield::decode(&wire).unwrap(), b);
        assert!(Bitfield::decode(&wire[..5]).is_err());
        assert!(
            Bitfield::decode(&[0, 0, 0, 13, 0x40, 0x09]).is_err(),
            "spare bit"
        );
        assert!(
            Bitfield::decode(&[0xff, 0xff, 0xff, 0xff]).is_err(),
            "huge length"
        );
        assert!(Bitfield::decode(&[0, 0]).is_err());
        assert_eq!(Bitfield::decode(&[0, 0, 0, 0]).unwrap(), Bitfield::new(0));
    }
}
