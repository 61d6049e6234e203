//! Property of the `piece_table` fuzz target (and of the regression tests): piece tables (plain
//! and signed) and bit fields never panic in decoding; anything that decodes re-encodes to exactly
//! the input (every value has one encoding) and decodes back to itself, and a decoded table's
//! geometry is consistent. The input also drives a small table built with `PieceTableBuilder`
//! (pieces of 1–4 blocks), which must round-trip and verify its own pieces.

use flotilla_protocol::digest::Digest;
use flotilla_protocol::piece::{
    Bitfield, PieceError, PieceTable, PieceTableBuilder, SignedPieceTable,
};

/// Per-piece checks are O(pieces); a fuzzed table can claim millions, so look at the first few.
const PIECES_CHECKED: u32 = 4096;

/// Checks the properties above on one input; panics on a violation.
pub fn check(data: &[u8]) {
    if let Ok(t) = PieceTable::decode(data) {
        assert_eq!(t.encode(), data, "table has a second encoding");
        assert_eq!(PieceTable::decode(&t.encode()).as_ref(), Ok(&t));
        check_geometry(&t);
    }

    if let Ok(s) = SignedPieceTable::decode(data) {
        let wire = s.encode().expect("a decoded signed table encodes");
        assert_eq!(wire, data, "signed table has a second encoding");
        assert_eq!(SignedPieceTable::decode(&wire).as_ref(), Ok(&s));
        // The signer key and signature are untrusted bytes too.
        let _ = s.signer_peer_id();
        if let Ok(t) = s.verify(None) {
            assert_eq!(t, &s.table);
        }
        check_geometry(&s.table);
    }

    if let Ok(b) = Bitfield::decode(data) {
        assert_eq!(b.encode(), data, "bit field has a second encoding");
        assert_eq!(Bitfield::decode(&b.encode()).as_ref(), Ok(&b));
        let ones: Vec<u32> = b.iter_ones().collect();
        assert_eq!(ones.len() as u64, u64::from(b.count()));
        assert!(ones.iter().all(|&i| i < b.len() && b.get(i)));
        assert!(ones.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            b.iter_zeros().count() as u64,
            u64::from(b.len() - b.count())
        );
        assert_eq!(b.next_zero(0), b.iter_zeros().next());
        assert_eq!(b.is_complete(), b.count() == b.len());
        let mut u = b.clone();
        assert_eq!(u.union_with(&Bitfield::full(b.len())), Ok(()));
        assert!(u.is_complete());
        assert_eq!(b.count_common(&b), b.count());
    }

    built_table(data);
}

fn check_geometry(t: &PieceTable) {
    let ps = u64::from(t.piece_size);
    assert!(t.piece_size > 0 && t.block_size > 0 && t.piece_size.is_multiple_of(t.block_size));
    assert!(t.blocks_per_piece() <= 64);
    assert_eq!(
        t.block_hashes.len() as u64,
        t.size.div_ceil(u64::from(t.block_size))
    );
    assert_eq!(u64::from(t.piece_count()), t.size.div_ceil(ps));
    assert_eq!(t.piece_range(t.piece_count()), None);
    assert_eq!(t.pieces_for(0..t.size), 0..t.piece_count());
    assert_eq!(t.piece_at(t.size), None);
    let mut next = 0u64;
    for i in 0..t.piece_count().min(PIECES_CHECKED) {
        let r = t.piece_range(i).expect("piece in range");
        assert_eq!(r.start, next);
        assert!(r.end > r.start && r.end - r.start <= ps && r.end <= t.size);
        assert_eq!(t.piece_len(i), Some((r.end - r.start) as u32));
        assert_eq!(t.piece_at(r.start), Some(i));
        assert_eq!(t.piece_at(r.end - 1), Some(i));
        assert_eq!(t.pieces_for(r.clone()), i..i + 1);
        let blocks = t.piece_blocks(i);
        assert_eq!(blocks.start as u64, r.start / u64::from(t.block_size));
        assert!(blocks.end <= t.block_hashes.len() && blocks.len() as u32 <= t.blocks_per_piece());
        assert!(matches!(
            t.verify_piece(i, &[]),
            Err(PieceError::WrongLength { .. })
        ));
        next = r.end;
    }
    if t.piece_count() <= PIECES_CHECKED {
        assert_eq!(next, t.size);
    }
}

/// Cuts `data[1..]` into pieces of `1 + data[0] % 64` bytes, feeding the builder in uneven parts.
fn built_table(data: &[u8]) {
    let Some((&first, blob)) = data.split_first() else {
        return;
    };
    // 1–16 bytes per block, 1–4 blocks per piece.
    let block_size = 1 + u32::from(first % 16);
    let piece_size = block_size * (1 + u32::from(first / 16 % 4));
    let mut b = PieceTableBuilder::with_block_size(piece_size, block_size).expect("valid sizes");
    let mut rest = blob;
    let mut step = 1 + usize::from(first / 32);
    while !rest.is_empty() {
        let n = step.min(rest.len());
        b.update(&rest[..n]);
        rest = &rest[n..];
        step = step * 3 % 97 + 1;
    }
    assert_eq!(b.size(), blob.len() as u64);
    let t = b
        .finish(Digest::sha256_of(blob))
        .expect("a small blob fits");
    check_geometry(&t);
    assert_eq!(PieceTable::decode(&t.encode()).as_ref(), Ok(&t));
    for i in 0..t.piece_count() {
        let r = t.piece_range(i).expect("piece in range");
        let piece = &blob[r.start as usize..r.end as usize];
        assert_eq!(t.verify_piece(i, piece), Ok(()));
        if let Some((&x, tail)) = piece.split_first() {
            let mut bad = vec![x ^ 1];
            bad.extend_from_slice(tail);
            assert_eq!(
                t.verify_piece(i, &bad),
                Err(PieceError::HashMismatch { index: i })
            );
        }
    }
}
