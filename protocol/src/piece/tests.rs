//! Piece table, signing and size-policy tests, plus the hash speed measurement
//! (`bench_piece_hash`).

use libp2p_identity::Keypair;
use proptest::prelude::*;

use super::*;
use crate::digest::Hasher;

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn table_of(data: &[u8], piece_size: u32, chunk: usize) -> PieceTable {
    let mut b = PieceTableBuilder::new(piece_size).unwrap();
    for c in data.chunks(chunk.max(1)) {
        b.update(c);
    }
    b.finish(Digest::sha256_of(data)).unwrap()
}

fn key(seed: u8) -> Keypair {
    Keypair::ed25519_from_bytes([seed; 32]).unwrap()
}

#[test]
fn builder_cuts_pieces_and_last_is_shorter() {
    let data = blob(2500);
    let t = table_of(&data, 1000, 333);
    assert_eq!(t.piece_count(), 3);
    assert_eq!(t.size, 2500);
    assert_eq!(t.piece_range(2), Some(2000..2500));
    assert_eq!(t.piece_len(2), Some(500));
    assert_eq!(t.piece_len(3), None);
    assert_eq!(t.piece_at(1999), Some(1));
    assert_eq!(t.piece_at(2500), None);
    assert_eq!(t.pieces_for(999..1001), 0..2);
    assert_eq!(t.pieces_for(2400..9000), 2..3);
    assert_eq!(t.pieces_for(5..5), 0..0);
    for i in 0..3 {
        let r = t.piece_range(i).unwrap();
        t.verify_piece(i, &data[r.start as usize..r.end as usize])
            .unwrap();
    }
    assert_eq!(
        t.verify_piece(2, &data[..500]),
        Err(PieceError::HashMismatch { index: 2 })
    );
    assert!(matches!(
        t.verify_piece(0, &data[..10]),
        Err(PieceError::WrongLength { .. })
    ));
    assert!(matches!(
        t.verify_piece(7, &[]),
        Err(PieceError::IndexOutOfRange { .. })
    ));
    // Chunking must not change the table.
    assert_eq!(table_of(&data, 1000, 1), t);
    assert_eq!(table_of(&data, 1000, 5000), t);
}

#[test]
fn blocks_tile_pieces_and_verify_one_at_a_time() {
    // 10 KiB pieces of 2-KiB blocks; the last piece is 3 KiB + 100 bytes (2 blocks, the second
    // short).
    let data = blob(3 * 10240 + 3172);
    let mut b = PieceTableBuilder::with_block_size(10240, 2048).unwrap();
    for c in data.chunks(777) {
        b.update(c);
    }
    let t = b.finish(Digest::sha256_of(&data)).unwrap();
    assert_eq!(t.piece_count(), 4);
    assert_eq!(t.blocks_per_piece(), 5);
    assert_eq!(t.block_hashes.len(), 15 + 2);
    assert_eq!(t.piece_blocks(1), 5..10);
    assert_eq!(t.piece_blocks(3), 15..17);
    assert_eq!(t.piece_blocks(4), 0..0);
    assert_eq!(PieceTable::decode(&t.encode()).unwrap(), t);
    for (k, block) in data.chunks(2048).enumerate() {
        assert_eq!(t.block_hashes[k], block_hash(block));
    }
    for i in 0..4 {
        let r = t.piece_range(i).unwrap();
        t.verify_piece(i, &data[r.start as usize..r.end as usize])
            .unwrap();
    }

    // Fed in odd parts, a piece's good prefix grows a block at a time.
    let piece = &data[10240..20480];
    let mut c = PieceChecker::new(&t, 1).unwrap();
    c.update(&piece[..2047]);
    assert_eq!(c.verified_len(), 0);
    c.update(&piece[2047..4097]);
    assert_eq!(c.verified_len(), 4096);
    c.update(&piece[4097..]);
    assert!(c.is_complete());
    assert_eq!(c.finish(), Ok(()));

    // A bad byte in the third block: the first two stay good, nothing after counts.
    let mut bad = piece.to_vec();
    bad[4096 + 7] ^= 1;
    let mut c = PieceChecker::new(&t, 1).unwrap();
    c.update(&bad);
    assert!(c.is_bad());
    assert_eq!(c.verified_len(), 4096);
    assert_eq!(c.finish(), Err(PieceError::HashMismatch { index: 1 }));
    assert_eq!(
        t.verify_piece(1, &bad),
        Err(PieceError::HashMismatch { index: 1 })
    );

    // Too many bytes, or too few, are the wrong length.
    let mut c = PieceChecker::new(&t, 3).unwrap();
    c.update(&data[30720..]);
    c.update(b"x");
    assert!(c.is_bad() && !c.is_complete());
    assert!(matches!(c.finish(), Err(PieceError::WrongLength { .. })));
    let mut c = PieceChecker::new(&t, 3).unwrap();
    c.update(&data[30720..30720 + 2048]);
    assert!(!c.is_bad());
    assert_eq!(c.verified_len(), 2048);
    assert!(matches!(c.finish(), Err(PieceError::WrongLength { .. })));
    assert!(PieceChecker::new(&t, 4).is_err());

    // Sizes: blocks must tile a piece in at most 64.
    assert!(PieceTableBuilder::with_block_size(10240, 3000).is_err());
    assert!(PieceTableBuilder::with_block_size(6400, 50).is_err());
    assert!(PieceTableBuilder::with_block_size(6400, 100).is_ok());
    assert!(PieceTableBuilder::with_block_size(6400, 0).is_err());
    assert!(PieceTableBuilder::with_block_size(6400, 6400).is_ok());
}

#[test]
fn default_block_size_policy() {
    assert_eq!(block_size_for(4 << 20), 256 << 10);
    assert_eq!(block_size_for(64 << 20), 4 << 20);
    assert_eq!(block_size_for(64 << 10), 4 << 10);
    assert_eq!(block_size_for(32 << 10), 32 << 10);
    assert_eq!(block_size_for(1000), 1000);
    assert_eq!(block_size_for((4 << 20) + 1), (4 << 20) + 1);
    // A 1 GiB blob's table: 4096 blocks.
    let t = PieceTable {
        digest: Digest::sha256_of(b""),
        size: 1 << 30,
        piece_size: 4 << 20,
        block_size: 256 << 10,
        block_hashes: vec![[0; 32]; 4096],
    };
    assert_eq!(t.encode().len(), 2 + 32 + 20 + 4096 * 32);
}

#[test]
fn empty_blob_has_no_pieces_and_exact_multiple_has_no_empty_tail() {
    let t = table_of(&[], 1000, 10);
    assert_eq!(t.piece_count(), 0);
    assert_eq!(PieceTable::decode(&t.encode()).unwrap(), t);
    assert_eq!(table_of(&blob(3000), 1000, 7).piece_count(), 3);
    assert!(PieceTableBuilder::new(0).is_err());
    assert!(PieceTableBuilder::new(MAX_PIECE_SIZE + 1).is_err());
}

#[test]
fn default_piece_size_policy() {
    const MIB: u64 = 1 << 20;
    assert_eq!(piece_size_for(0), 4 << 20);
    assert_eq!(piece_size_for(100 * MIB), 4 << 20);
    assert_eq!(piece_size_for(8192 * MIB), 4 << 20);
    assert_eq!(piece_size_for(8192 * MIB + 1), 8 << 20);
    assert_eq!(piece_size_for(100_000 * MIB), 64 << 20);
    assert_eq!(piece_size_for(u64::MAX), MAX_PIECE_SIZE);
}

#[test]
fn table_round_trips_and_rejects_malformed() {
    let t = table_of(&blob(2500), 1000, 100);
    let wire = t.encode();
    // 1000-byte pieces are one block each.
    assert_eq!(wire.len(), 2 + 32 + 20 + 3 * 32);
    assert_eq!(PieceTable::decode(&wire).unwrap(), t);
    for cut in 0..wire.len() {
        assert!(PieceTable::decode(&wire[..cut]).is_err(), "prefix {cut}");
    }
    let mut long = wire.clone();
    long.push(0);
    assert!(PieceTable::decode(&long).is_err());
    // Version 1 (a hash per piece) is no longer read.
    let mut v1 = wire.clone();
    v1[0] = 1;
    assert_eq!(
        PieceTable::decode(&v1),
        Err(PieceError::UnsupportedVersion(1))
    );
    // A block size that does not divide the piece size.
    let mut odd = wire.clone();
    odd[2 + 32 + 12..2 + 32 + 16].copy_from_slice(&300u32.to_be_bytes());
    assert!(matches!(
        PieceTable::decode(&odd),
        Err(PieceError::InvalidBlockSize { .. })
    ));
    // Size that disagrees with the count.
    let mut bad = wire.clone();
    bad[2 + 32 + 6] = 0xff;
    assert!(PieceTable::decode(&bad).is_err());
    // A huge declared count with no bytes behind it fails without allocating.
    let mut huge = wire[..2 + 32].to_vec();
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&1u32.to_be_bytes());
    huge.extend_from_slice(&1u32.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(PieceTable::decode(&huge).is_err());
}

#[test]
fn signed_table_verifies_and_detects_tampering() {
    let t = table_of(&blob(5000), 1024, 100);
    let gw = key(1);
    let signed = SignedPieceTable::sign(t.clone(), &gw).unwrap();
    let gw_id = gw.public().to_peer_id();
    assert_eq!(signed.signer_peer_id(), Some(gw_id));
    assert_eq!(signed.verify(Some(&gw_id)).unwrap(), &t);
    assert_eq!(signed.verify(None).unwrap(), &t);
    let other = key(2).public().to_peer_id();
    assert_eq!(
        signed.verify(Some(&other)),
        Err(PieceError::UnexpectedSigner)
    );

    let wire = signed.encode().unwrap();
    let back = SignedPieceTable::decode(&wire).unwrap();
    assert_eq!(back, signed);
    back.verify(Some(&gw_id)).unwrap();
    for cut in 0..wire.len() {
        assert!(
            SignedPieceTable::decode(&wire[..cut]).is_err(),
            "prefix {cut}"
        );
    }

    let mut tampered = signed.clone();
    tampered.table.block_hashes[1][0] ^= 1;
    assert!(matches!(
        tampered.verify(None),
        Err(PieceError::BadSignature(_))
    ));
    // A table re-signed by someone else is valid, but not from the gateway.
    let forged = SignedPieceTable::sign(tampered.table, &key(3)).unwrap();
    assert!(forged.verify(None).is_ok());
    assert_eq!(
        forged.verify(Some(&gw_id)),
        Err(PieceError::UnexpectedSigner)
    );
    let mut garbage_key = signed;
    garbage_key.signer = vec![1, 2, 3];
    assert!(garbage_key.verify(None).is_err());
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = PieceTable::decode(&bytes);
        let _ = SignedPieceTable::decode(&bytes);
        let _ = Bitfield::decode(&bytes);
    }

    #[test]
    fn table_round_trip(len in 0usize..5000, piece_size in 1u32..2000, chunk in 1usize..700) {
        let data = blob(len);
        let t = table_of(&data, piece_size, chunk);
        prop_assert_eq!(u64::from(t.piece_count()), (len as u64).div_ceil(u64::from(piece_size)));
        prop_assert_eq!(PieceTable::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn bitfield_round_trip(
        len in 0u32..300,
        ones in proptest::collection::vec(any::<u32>(), 0..50),
    ) {
        let mut b = Bitfield::new(len);
        for i in ones {
            if len > 0 { b.set(i % len); }
        }
        let d = Bitfield::decode(&b.encode()).unwrap();
        prop_assert_eq!(d.count(), b.iter_ones().count() as u32);
        prop_assert_eq!(&d, &b);
        let naive_ones: Vec<u32> = (0..len).filter(|&i| b.get(i)).collect();
        let naive_zeros: Vec<u32> = (0..len).filter(|&i| !b.get(i)).collect();
        prop_assert_eq!(b.iter_ones().collect::<Vec<_>>(), naive_ones);
        prop_assert_eq!(b.iter_zeros().collect::<Vec<_>>(), naive_zeros);
    }

    #[test]
    fn bitfield_algebra(len in 1u32..100, x in any::<u128>(), y in any::<u128>()) {
        let field = |bits: u128| {
            let mut b = Bitfield::new(len);
            for i in 0..len { if bits >> i & 1 == 1 { b.set(i); } }
            b
        };
        let (a, b) = (field(x), field(y));
        let mask = if len >= 128 { u128::MAX } else { (1u128 << len) - 1 };
        let mut u = a.clone();
        u.union_with(&b).unwrap();
        prop_assert_eq!(&u, &field((x | y) & mask));
        let mut i = a.clone();
        i.intersect_with(&b).unwrap();
        prop_assert_eq!(&i, &field(x & y & mask));
        prop_assert_eq!(a.count_common(&b), i.count());
        let mut d = a.clone();
        d.difference_with(&b).unwrap();
        prop_assert_eq!(&d, &field(x & !y & mask));
        prop_assert_eq!(Bitfield::decode(&d.encode()).unwrap(), d);
    }
}

/// Single-threaded piece-hash throughput over 256 MiB:
/// `cargo test -p flotilla-protocol --release -- --ignored bench --nocapture`.
#[test]
#[ignore = "measurement; run in release"]
fn bench_piece_hash() {
    let data = blob(256 << 20);
    let gb_s = |t: std::time::Duration| (data.len() as f64) / t.as_secs_f64() / 1e9;
    for round in 0..3 {
        let start = std::time::Instant::now();
        let mut b = PieceTableBuilder::new(4 << 20).unwrap();
        b.update(&data);
        let t = b.finish(Digest::sha256_of(b"x")).unwrap();
        let blake = start.elapsed();
        assert_eq!(t.piece_count(), 64);

        let start = std::time::Instant::now();
        let mut h = Hasher::new(crate::Algorithm::Sha256);
        h.update(&data);
        let _ = h.finish();
        let sha = start.elapsed();
        println!(
            "round {round}: BLAKE3 piece table {:.2} GB/s, SHA-256 (aws-lc-rs) {:.2} GB/s",
            gb_s(blake),
            gb_s(sha)
        );
    }
}
