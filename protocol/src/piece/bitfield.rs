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
        let mut bytes = vec![0xff; byte_len(len)];
        if let Some(last) = bytes.last_mut()
            && !len.is_multiple_of(8)
        {
            *last = 0xff << (8 - len % 8);
        }
        Bitfield {
            len,
            ones: len,
            bytes,
        }
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

    /// Sets piece `index`; returns whether it was newly set (`false` if already set or out of
    /// range).
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

    /// Set pieces, ascending (skips empty bytes, so sparse fields are cheap to walk).
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0)
            .flat_map(|(i, &b)| {
                let base = i as u32 * 8;
                (0..8u32)
                    .filter(move |k| b & (0x80 >> k) != 0)
                    .map(move |k| base + k)
            })
    }

    /// Unset pieces ("missing"), ascending. Spare bits past `len` are always zero, hence the bound.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        let len = self.len;
        self.bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b != 0xff)
            .flat_map(|(i, &b)| {
                let base = i as u32 * 8;
                (0..8u32)
                    .filter(move |k| b & (0x80 >> k) == 0)
                    .map(move |k| base + k)
            })
            .take_while(move |&i| i < len)
    }

    /// The first unset piece at or after `from`: where an in-order reader has to wait.
    pub fn next_zero(&self, from: u32) -> Option<u32> {
        (from..self.len).find(|&i| !self.get(i))
    }

    /// Sets every piece set in `other` (e.g. folding a peer's `have`s into a view of the swarm).
    ///
    /// # Errors
    /// [`PieceError::LengthMismatch`] if the fields cover different piece counts.
    pub fn union_with(&mut self, other: &Bitfield) -> Result<(), PieceError> {
        self.combine(other, |a, b| a | b)
    }

    /// Keeps only the pieces also set in `other`.
    ///
    /// # Errors
    /// [`PieceError::LengthMismatch`] if the fields cover different piece counts.
    pub fn intersect_with(&mut self, other: &Bitfield) -> Result<(), PieceError> {
        self.combine(other, |a, b| a & b)
    }

    /// Clears every piece set in `other`: `peer.difference_with(&mine)` leaves what a peer can
    /// give us.
    ///
    /// # Errors
    /// [`PieceError::LengthMismatch`] if the fields cover different piece counts.
    pub fn difference_with(&mut self, other: &Bitfield) -> Result<(), PieceError> {
        self.combine(other, |a, b| a & !b)
    }

    /// Number of pieces set in both fields (0 if their lengths differ).
    pub fn count_common(&self, other: &Bitfield) -> u32 {
        if self.len != other.len {
            return 0;
        }
        self.bytes
            .iter()
            .zip(&other.bytes)
            .map(|(a, b)| (a & b).count_ones())
            .sum()
    }

    fn combine(&mut self, other: &Bitfield, op: impl Fn(u8, u8) -> u8) -> Result<(), PieceError> {
        if self.len != other.len {
            return Err(PieceError::LengthMismatch {
                expected: self.len,
                got: other.len,
            });
        }
        let mut ones = 0;
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            // Spare bits are zero in both, and every op here keeps zero & zero at zero.
            *a = op(*a, *b);
            ones += a.count_ones();
        }
        self.ones = ones;
        Ok(())
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
        assert_eq!(Bitfield::full(10).iter_ones().count(), 10);
        assert_eq!(Bitfield::full(10).encode(), vec![0, 0, 0, 10, 0xff, 0xc0]);
        assert_eq!(b.next_zero(0), Some(0));
        assert_eq!(Bitfield::full(3).next_zero(0), None);
        assert!(Bitfield::new(0).is_complete() && Bitfield::new(0).is_empty());
    }

    #[test]
    fn set_algebra() {
        let mut a = Bitfield::new(12);
        let mut b = Bitfield::new(12);
        for i in [0, 3, 5, 11] {
            a.set(i);
        }
        for i in [3, 4, 11] {
            b.set(i);
        }
        assert_eq!(a.count_common(&b), 2);
        let mut u = a.clone();
        u.union_with(&b).unwrap();
        assert_eq!(u.iter_ones().collect::<Vec<_>>(), vec![0, 3, 4, 5, 11]);
        assert_eq!(u.count(), 5);
        let mut i = a.clone();
        i.intersect_with(&b).unwrap();
        assert_eq!(i.iter_ones().collect::<Vec<_>>(), vec![3, 11]);
        let mut d = a.clone();
        d.difference_with(&b).unwrap();
        assert_eq!(d.iter_ones().collect::<Vec<_>>(), vec![0, 5]);
        assert_eq!(d.count(), 2);
        assert_eq!(
            a.union_with(&Bitfield::new(13)),
            Err(PieceError::LengthMismatch {
                expected: 12,
                got: 13
            })
        );
        assert_eq!(a.count_common(&Bitfield::full(13)), 0);
        assert_eq!(
            a.iter_zeros().collect::<Vec<_>>(),
            vec![1, 2, 4, 6, 7, 8, 9, 10]
        );
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
