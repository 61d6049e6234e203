//! Wire tests: exact layouts, strictness, incremental decoding, and proptest round trips and
//! garbage that must never panic.

use proptest::prelude::*;

use super::*;

fn digest() -> Digest {
    Digest::sha256_of(b"blob")
}

fn enc(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out).unwrap();
    out
}

fn welcome(size: u64, piece_size: u32, table: Option<Vec<u8>>) -> Frame {
    let mut have = Bitfield::new(size.div_ceil(u64::from(piece_size)) as u32);
    have.set(0);
    Frame::Welcome {
        size,
        piece_size,
        table,
        have,
        site: None,
    }
}

#[test]
fn exact_layouts() {
    assert_eq!(
        enc(&Frame::Request { piece: 258 }),
        [0, 0, 0, 5, 0x02, 0, 0, 1, 2]
    );
    assert_eq!(
        enc(&Frame::Cancel { piece: 1 }),
        [0, 0, 0, 5, 0x03, 0, 0, 0, 1]
    );
    assert_eq!(enc(&Frame::NotHeld), [0, 0, 0, 1, 0x82]);
    assert_eq!(
        enc(&Frame::Have { piece: 7 }),
        [0, 0, 0, 5, 0x83, 0, 0, 0, 7]
    );
    assert_eq!(
        enc(&Frame::Arriving { piece: 7 }),
        [0, 0, 0, 5, 0x89, 0, 0, 0, 7]
    );
    assert_eq!(
        enc(&Frame::Withdrawn { piece: 7 }),
        [0, 0, 0, 5, 0x8a, 0, 0, 0, 7]
    );
    assert_eq!(
        enc(&Frame::Piece {
            index: 1,
            len: 4 << 20
        }),
        [0, 0, 0, 9, 0x84, 0, 0, 0, 1, 0, 0x40, 0, 0]
    );
    assert_eq!(
        enc(&Frame::Busy { piece: 2 }),
        [0, 0, 0, 5, 0x85, 0, 0, 0, 2]
    );
    assert_eq!(
        enc(&Frame::Missing { piece: 3 }),
        [0, 0, 0, 5, 0x86, 0, 0, 0, 3]
    );
    assert_eq!(
        enc(&Frame::PieceBusy { piece: 4 }),
        [0, 0, 0, 5, 0x88, 0, 0, 0, 4]
    );
    assert_eq!(
        enc(&Frame::Error {
            code: ErrorCode::OVERLOADED,
            message: "hi".into()
        }),
        [0, 0, 0, 5, 0x87, 0, 3, b'h', b'i']
    );
    let hello = enc(&Frame::Hello {
        digest: digest(),
        want_table: true,
    });
    assert_eq!(&hello[..8], &[0, 0, 0, 36, 0x01, 2, 1, 1]);
    assert_eq!(&hello[8..], digest().bytes().as_slice());
    // 10 bytes in pieces of 4: 3 pieces, piece 0 held.
    assert_eq!(
        enc(&welcome(10, 4, Some(vec![9, 9]))),
        [
            0, 0, 0, 26, 0x81, 2, 1, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0, 0, 2, 9, 9, 0, 0,
            0, 3, 0x80
        ]
    );
}

#[test]
fn round_trips_and_consumed() {
    let frames = vec![
        Frame::Hello {
            digest: digest(),
            want_table: false,
        },
        Frame::Hello {
            digest: Digest::compute(Algorithm::Sha512, b"x"),
            want_table: true,
        },
        welcome(10, 4, None),
        welcome(0, 4 << 20, Some(Vec::new())),
        Frame::Piece { index: 0, len: 1 },
        Frame::Error {
            code: ErrorCode(999),
            message: "é".repeat(600),
        },
    ];
    let mut all = Vec::new();
    for f in &frames {
        encode(f, &mut all).unwrap();
    }
    let mut at = 0;
    for f in &frames {
        let (got, used) = decode(&all[at..]).unwrap().unwrap();
        assert_eq!(frame_len(&all[at..]), Some(used));
        at += used;
        match (f, &got) {
            (Frame::Error { message, .. }, Frame::Error { message: m, .. }) => {
                // Truncated to the limit at a character boundary.
                assert_eq!(m.len(), MAX_ERROR_MESSAGE);
                assert!(message.starts_with(m.as_str()));
            }
            _ => assert_eq!(&got, f),
        }
    }
    assert_eq!(at, all.len());
    assert_eq!(decode(&[]).unwrap(), None);
}

#[test]
fn every_prefix_is_incomplete() {
    let bytes = enc(&welcome(1000, 7, Some(vec![1; 50])));
    for n in 0..bytes.len() {
        assert_eq!(decode(&bytes[..n]), Ok(None), "prefix {n}");
    }
}

#[test]
fn strictness() {
    assert_eq!(decode(&[0, 0, 0, 0]), Err(WireError::EmptyFrame));
    assert!(matches!(
        decode(&[0, 0x40, 0, 1]),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert_eq!(
        decode(&[0, 0, 0, 5, 0x42]),
        Err(WireError::UnknownType(0x42))
    );
    // A fixed-size frame with a big claimed length is refused before its body arrives.
    assert!(matches!(
        decode(&[0, 0x10, 0, 0, 0x02]),
        Err(WireError::BadLength { .. })
    ));
    // Version, flags, algorithm.
    let mut hello = enc(&Frame::Hello {
        digest: digest(),
        want_table: false,
    });
    hello[5] = 1;
    assert_eq!(decode(&hello), Err(WireError::UnsupportedVersion(1)));
    hello[5] = 2;
    hello[6] = 2;
    assert!(matches!(decode(&hello), Err(WireError::Malformed(_))));
    hello[6] = 0;
    hello[7] = 9;
    assert!(matches!(decode(&hello), Err(WireError::Malformed(_))));
    // Piece length 0 and above the maximum.
    assert!(decode(&[0, 0, 0, 9, 0x84, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(decode(&[0, 0, 0, 9, 0x84, 0, 0, 0, 0, 4, 0, 0, 1]).is_err());
    assert!(encode(&Frame::Piece { index: 0, len: 0 }, &mut Vec::new()).is_err());
    // Welcome whose bit field disagrees with the geometry, on both sides.
    let bad = Frame::Welcome {
        size: 10,
        piece_size: 4,
        table: None,
        have: Bitfield::new(2),
        site: None,
    };
    let mut out = vec![7];
    assert!(encode(&bad, &mut out).is_err());
    assert_eq!(out, [7], "output unchanged on error");
    let mut w = enc(&welcome(10, 4, None));
    w[20..23].copy_from_slice(&[0, 0, 2]); // count 3 → 2, same byte length
    assert!(matches!(decode(&w), Err(WireError::Malformed(_))));
    // Trailing bytes inside a Welcome (bit field too long) and a non-UTF-8 message.
    let mut w = enc(&welcome(10, 4, None));
    w[3] += 1;
    w.push(0);
    assert!(decode(&w).is_err());
    assert!(decode(&[0, 0, 0, 4, 0x87, 0, 1, 0xff]).is_err());
    // A table length running past the frame.
    let mut w = enc(&welcome(10, 4, Some(vec![1, 2])));
    w[22] = 200;
    assert!(decode(&w).is_err());
}

#[test]
fn welcome_carries_the_site_label() {
    let mut frame = welcome(10, 4, Some(vec![7]));
    if let Frame::Welcome { site, .. } = &mut frame {
        *site = Some("fra-1".to_owned());
    }
    let bytes = enc(&frame);
    // type, version, flags (table | site), size, piece_size, then the label before the table.
    assert_eq!(&bytes[4..7], [0x81, 2, 0x03]);
    assert_eq!(&bytes[19..25], [5, b'f', b'r', b'a', b'-', b'1']);
    assert_eq!(&bytes[25..30], [0, 0, 0, 1, 7]);
    assert_eq!(decode(&bytes).unwrap(), Some((frame.clone(), bytes.len())));
    // A label that check_site refuses is neither encoded nor decoded.
    for bad in ["", "a b", "a/b"] {
        let mut f = frame.clone();
        if let Frame::Welcome { site, .. } = &mut f {
            *site = Some(bad.to_owned());
        }
        assert!(encode(&f, &mut Vec::new()).is_err(), "{bad:?}");
    }
    let mut b = bytes.clone();
    b[20] = b' ';
    assert!(matches!(decode(&b), Err(WireError::Malformed(_))));
    let mut b = bytes.clone();
    b[19] = 0;
    assert!(decode(&b).is_err(), "an empty label");
    // A label length running past the frame.
    let mut b = bytes;
    b[19] = 200;
    assert!(decode(&b).is_err());
}

#[test]
fn too_large_welcome_is_refused_by_encode() {
    let big = welcome(10, 4, Some(vec![0; MAX_FRAME_LEN as usize]));
    assert!(matches!(
        encode(&big, &mut Vec::new()),
        Err(WireError::FrameTooLarge { .. })
    ));
}

#[test]
fn piece_len_geometry() {
    assert_eq!(piece_len(10, 4, 0), Some(4));
    assert_eq!(piece_len(10, 4, 2), Some(2));
    assert_eq!(piece_len(10, 4, 3), None);
    assert_eq!(piece_len(0, 4, 0), None);
    assert_eq!(piece_len(u64::MAX, 4, u32::MAX), Some(4));
    assert_eq!(piece_len(10, 0, 0), None);
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let idx = any::<u32>();
    prop_oneof![
        (any::<[u8; 32]>(), any::<bool>()).prop_map(|(b, want_table)| Frame::Hello {
            digest: Digest::from_bytes(Algorithm::Sha256, &b).unwrap(),
            want_table,
        }),
        idx.prop_map(|piece| Frame::Request { piece }),
        idx.prop_map(|piece| Frame::Cancel { piece }),
        (
            0u64..5000,
            1u32..300,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
            any::<u64>(),
            proptest::option::of("[A-Za-z0-9._-]{1,63}"),
        )
            .prop_map(|(size, piece_size, table, seed, site)| {
                let count = size.div_ceil(u64::from(piece_size)) as u32;
                let mut have = Bitfield::new(count);
                for i in 0..count {
                    if (seed >> (i % 64)) & 1 == 1 {
                        have.set(i);
                    }
                }
                Frame::Welcome {
                    size,
                    piece_size,
                    table,
                    have,
                    site,
                }
            }),
        Just(Frame::NotHeld),
        idx.prop_map(|piece| Frame::Have { piece }),
        (idx, 1..=MAX_PIECE_SIZE).prop_map(|(index, len)| Frame::Piece { index, len }),
        idx.prop_map(|piece| Frame::Busy { piece }),
        idx.prop_map(|piece| Frame::Missing { piece }),
        idx.prop_map(|piece| Frame::PieceBusy { piece }),
        idx.prop_map(|piece| Frame::Arriving { piece }),
        idx.prop_map(|piece| Frame::Withdrawn { piece }),
        (any::<u16>(), "\\PC{0,200}").prop_map(|(c, message)| Frame::Error {
            code: ErrorCode(c),
            message
        }),
    ]
}

proptest! {
    #[test]
    fn round_trip(frames in proptest::collection::vec(arb_frame(), 1..8)) {
        let mut bytes = Vec::new();
        for f in &frames {
            encode(f, &mut bytes).unwrap();
        }
        let mut at = 0;
        for f in &frames {
            let (got, used) = decode(&bytes[at..]).unwrap().unwrap();
            prop_assert_eq!(&got, f);
            prop_assert_eq!(got.from_uploader(), f.from_uploader());
            at += used;
        }
        prop_assert_eq!(at, bytes.len());
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(Some((_, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn corrupted_frames_never_panic(
        frame in arb_frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = Vec::new();
        encode(&frame, &mut bytes).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let end = cut.index(bytes.len() + 1);
        if let Ok(Some((f, used))) = decode(&bytes[..end]) {
            prop_assert!(used <= end);
            // Whatever decodes re-encodes to the same bytes: the encoding is canonical.
            let mut again = Vec::new();
            encode(&f, &mut again).unwrap();
            prop_assert_eq!(&again[..], &bytes[..used]);
        }
    }
}
