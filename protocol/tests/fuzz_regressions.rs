//! Regression inputs for the parsers of untrusted input, checked against the same properties the
//! cargo-fuzz targets in `fuzz/` check (never panic; what parses re-encodes or re-displays to the
//! input; ranges stay inside the blob). Each property lives once, in `fuzz_regressions/<target>.rs`,
//! which the fuzz target of that name includes; CI runs these tests, not the fuzzers.
//!
//! Every input a fuzzer ever failed on is kept here as a byte literal (`found_*` tests, with the
//! date and what was wrong), next to hand-written nasty inputs per parser: empty, truncated, huge
//! claimed lengths, overflowing numbers, non-UTF-8. The seeds in `fuzz/seeds/` are run too.

#[path = "fuzz_regressions/manifest.rs"]
mod manifest;
#[path = "fuzz_regressions/member_header.rs"]
mod member_header;
#[path = "fuzz_regressions/piece_table.rs"]
mod piece_table;
#[path = "fuzz_regressions/range.rs"]
mod range;
#[path = "fuzz_regressions/reference.rs"]
mod reference;
#[path = "fuzz_regressions/wire.rs"]
mod wire;

use std::path::Path;

use flotilla_protocol::piece::{Bitfield, PieceTable, SignedPieceTable};
use flotilla_protocol::wire::decode;

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

fn be64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// A range-target input: the blob size as 8 little-endian bytes, then the header.
fn sized(size: u64, header: &[u8]) -> Vec<u8> {
    [&size.to_le_bytes()[..], header].concat()
}

/// A wire frame: length prefix, then the body (type byte first).
fn frame(body: &[u8]) -> Vec<u8> {
    [&be32(body.len() as u32)[..], body].concat()
}

/// Raw sha256 digest bytes (any 32 bytes are a valid sha256 digest).
const DIGEST: [u8; 32] = [0xab; 32];
const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A plain piece table with consistent geometry: `count` hashes of `0x11`.
/// A version-2 table of `count` one-block pieces (block size = piece size).
fn table(size: u64, piece_size: u32, count: u32) -> Vec<u8> {
    blocks_table(size, piece_size, piece_size, count, count)
}

/// A version-2 table with `hashes` block hashes.
fn blocks_table(size: u64, piece_size: u32, block_size: u32, count: u32, hashes: u32) -> Vec<u8> {
    let mut t = vec![2, 1];
    t.extend_from_slice(&DIGEST);
    t.extend_from_slice(&be64(size));
    t.extend_from_slice(&be32(piece_size));
    t.extend_from_slice(&be32(block_size));
    t.extend_from_slice(&be32(count));
    t.extend(std::iter::repeat_n(0x11, 32 * hashes as usize));
    t
}

// ---------------------------------------------------------------------------------------------
// Inputs the fuzzers found.
// ---------------------------------------------------------------------------------------------

/// 2026-12-03 (range target, within 15 s): `parse_content_range` accepted a Content-Range whose
/// complete length is at or below its last byte (`bytes=0-1844677304/709551614`), which RFC 9110
/// section 14.4 calls invalid; the gateway took the chunk. Now `Malformed` (400
/// BLOB_UPLOAD_INVALID).
#[test]
fn found_content_range_total_below_end() {
    let input = b"\xff\xff\xff\xff\xff\xff\xff\xffbytes=0-1844677304/709551614";
    range::check(input);
    assert!(flotilla_protocol::range::parse_content_range("bytes=0-1844677304/709551614").is_err());
}

// ---------------------------------------------------------------------------------------------
// Hand-written nasty inputs.
// ---------------------------------------------------------------------------------------------

#[test]
fn reference_nasty_inputs() {
    let long_name = "a/".repeat(127) + "a";
    let long_tag = format!("x/manifests/{}", "t".repeat(129));
    let upper = format!("sha256:{}", HEX.to_uppercase());
    let short = format!("sha256:{}", &HEX[1..]);
    let newline = format!("a/blobs/sha256:{HEX}\n");
    let upload_dot = "a/blobs/uploads/..".to_owned();
    for input in [
        &b""[..],
        b"/",
        b"//",
        b"_catalog/",
        b"a//b/manifests/x",
        b"a/manifests/",
        b"/manifests/latest",
        b"a/blobs/uploads//",
        b"a/tags/list/",
        b"../manifests/x",
        b"a/../b/tags/list",
        b"\xff\xfe/manifests/latest",
        b"a/manifests/\xc3",
        "\u{e9}/manifests/latest".as_bytes(),
        "a/manifests/\u{0130}".as_bytes(),
        b"a/manifests/sha256:",
        b"a/manifests/:",
        b"a/blobs/sha256",
        b"a/blobs/md5:00",
        b"a/referrers/sha512:00",
        long_name.as_bytes(),
        long_tag.as_bytes(),
        upper.as_bytes(),
        short.as_bytes(),
        newline.as_bytes(),
        upload_dot.as_bytes(),
        "a".repeat(10_000).as_bytes(),
    ] {
        reference::check(input);
    }
}

#[test]
fn manifest_nasty_inputs() {
    let deep_array = "[".repeat(100_000);
    let deep_object = r#"{"annotations":"#.repeat(10_000);
    let d = format!("sha256:{HEX}");
    let image = |extra: &str| {
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{d}","size":1}},"layers":[]{extra}}}"#
        )
    };
    let cases = [
        image(""),
        image(r#","mediaType":"application/vnd.docker.distribution.manifest.v2+json""#),
        image(r#","manifests":[]"#),
        image(r#","subject":{"mediaType":"x","digest":"sha256:00","size":1}"#),
        image(r#","annotations":{"k":"\ud800"}"#),
        image(r#","annotations":{"k":"\u0000"}"#),
        image(r#","schemaVersion":2"#),
        image(r#","layers":[{"mediaType":"l","digest":"sha256:zz","size":1}]"#),
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{d}","size":18446744073709551616}},"layers":[]}}"#
        ),
        format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{d}","size":1e400}},"layers":[]}}"#
        ),
        r#"{"schemaVersion":2.0,"manifests":[]}"#.to_owned(),
        r#"{"schemaVersion":"2","manifests":[]}"#.to_owned(),
        r#"{"schemaVersion":2,"mediaType":null,"manifests":[]}"#.to_owned(),
        r#"{"schemaVersion":2,"mediaType":7,"manifests":[]}"#.to_owned(),
        r#"{"schemaVersion":2,"manifests":[],"config":null}"#.to_owned(),
        r#"{"schemaVersion":1,"fsLayers":null}"#.to_owned(),
        deep_array,
        deep_object,
    ];
    for case in &cases {
        manifest::check(case.as_bytes());
    }
    for input in [
        &b""[..],
        b"{}",
        b"null",
        b"[]",
        b"\"x\"",
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{\"schemaVersion\":2,\"manifests\":[]}",
        b"{\"schemaVersion\":2,\"manifests\":[]}\x00",
        b"{\"schemaVersion\":2,\"manifests\":[]} trailing",
        b"{\"schemaVersion\":2,\"manifests\":[\xff]}",
    ] {
        manifest::check(input);
    }
}

#[test]
fn piece_table_nasty_inputs() {
    let good = table(1000, 512, 2);
    let mut sha512 = vec![2, 2];
    sha512.extend_from_slice(&[0xcd; 64]);
    sha512.extend_from_slice(&be64(0));
    sha512.extend_from_slice(&be32(4 << 20));
    sha512.extend_from_slice(&be32(256 << 10));
    sha512.extend_from_slice(&be32(0));
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![1, 1],
        vec![2, 1],
        vec![1, 3],
        vec![0, 0, 0, 0],
        good.clone(),
        good[..good.len() - 1].to_vec(),
        [&good[..], &[0]].concat(),
        sha512,
        // Geometry lies: count beyond the hashes, count not matching size, piece sizes 0 and huge.
        table(1000, 512, 3)[..good.len()].to_vec(),
        table(1000, 512, 1),
        table(u64::MAX, 1, 0),
        table(u64::MAX, 64 << 20, 0),
        table(1 << 58, 64 << 20, 0),
        table(10, 0, 0),
        table(10, (64 << 20) + 1, 1),
        table(0, 1, 0),
        // Signed: lengths past the input, an empty signer and signature, a trailing byte.
        [&[1][..], &be16(u16::MAX)].concat(),
        [&[1][..], &be16(0), &be16(0), &be32(u32::MAX)].concat(),
        [
            &[1][..],
            &be16(0),
            &be16(0),
            &be32(good.len() as u32),
            &good,
        ]
        .concat(),
        [
            &[1][..],
            &be16(4),
            &[8, 1, 0x12, 0],
            &be16(1),
            &[0],
            &be32(good.len() as u32),
            &good,
            &[0],
        ]
        .concat(),
        [&[1][..], &be16(2), &[0xff, 0xff], &be16(0), &be32(0)].concat(),
        // Blocks: a good 4-block table, then too few hashes, a block size that does not divide
        // the piece, 65 blocks per piece, a zero block size, version 1.
        blocks_table(1000, 512, 128, 2, 8),
        blocks_table(1000, 512, 128, 2, 7),
        blocks_table(1000, 512, 100, 2, 10),
        blocks_table(650, 650, 10, 1, 65),
        blocks_table(1000, 512, 0, 2, 2),
        [&[1][..], &table(1000, 512, 2)[1..]].concat(),
        // Bit fields: a huge length, spare bits, exactly full, one short.
        [&be32(u32::MAX)[..]].concat(),
        [&be32(13)[..], &[0x40, 0x09]].concat(),
        [&be32(16)[..], &[0xff, 0xff]].concat(),
        [&be32(17)[..], &[0xff, 0xff]].concat(),
        [&be32(1)[..], &[0x80]].concat(),
        vec![0xff; 300],
    ];
    for case in &cases {
        piece_table::check(case);
    }
    // Controls: the well-formed cases above do reach the round-trip checks.
    assert!(PieceTable::decode(&cases[6]).is_ok() && PieceTable::decode(&cases[9]).is_ok());
    assert!(SignedPieceTable::decode(&cases[20]).is_ok());
    assert!(Bitfield::decode(&cases[31]).is_ok() && Bitfield::decode(&cases[30]).is_err());
    assert!(PieceTable::decode(&cases[23]).is_ok());
    for bad in &cases[24..=28] {
        assert!(PieceTable::decode(bad).is_err());
    }
}

#[test]
fn wire_nasty_inputs() {
    let hello = [&[0x01, 2, 1, 1][..], &DIGEST].concat();
    let welcome = |flags: u8, size: u64, piece_size: u32, rest: &[u8]| {
        frame(&[&[0x81, 2, flags][..], &be64(size), &be32(piece_size), rest].concat())
    };
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0],
        vec![0, 0, 0, 0],
        vec![0xff, 0xff, 0xff, 0xff, 0x84],
        [&be32((4 << 20) + 1)[..], &[0x81]].concat(),
        [&be32(4 << 20)[..], &[0x81]].concat(),
        [&be32(4 << 20)[..], &[0x99]].concat(),
        frame(&hello),
        frame(&hello)[..20].to_vec(),
        frame(&[&[0x01, 2, 1, 2][..], &DIGEST].concat()),
        frame(&[&[0x01, 1, 1, 1][..], &DIGEST].concat()),
        frame(&[&[0x01, 2, 0x81, 1][..], &DIGEST].concat()),
        frame(&[0x02, 0, 0, 0]),
        frame(&[0x02, 0xff, 0xff, 0xff, 0xff]),
        frame(&[0x82, 0]),
        frame(&[0x84, 0, 0, 0, 0, 0, 0, 0, 0]),
        frame(&[&[0x84][..], &be32(0), &be32((64 << 20) + 1)].concat()),
        // A Piece header promising more payload than arrives, then one with the payload.
        frame(&[&[0x84][..], &be32(0), &be32(64 << 20)].concat()),
        [
            frame(&[&[0x84][..], &be32(3), &be32(2)].concat()),
            be32(2).to_vec(),
            b"ab".to_vec(),
            frame(&[0x82]),
        ]
        .concat(),
        frame(&[0x87, 0, 1, 0xff, 0xfe]),
        frame(&[&[0x87, 0, 1][..], &[b'x'; 1025]].concat()),
        frame(&[&[0x87, 0, 1][..], &[b'x'; 1024]].concat()),
        welcome(0, 10, 4, &[&be32(3)[..], &[0xe0]].concat()),
        welcome(0, 10, 4, &[&be32(3)[..], &[0xe1]].concat()),
        welcome(0, 10, 4, &[&be32(2)[..], &[0xc0]].concat()),
        welcome(0, 10, 0, &be32(0)),
        welcome(0, u64::MAX, 1, &be32(u32::MAX)),
        welcome(0, 0, 1, &be32(0)),
        welcome(1, 0, 1, &[&be32(u32::MAX)[..], &be32(0)].concat()),
        welcome(1, 0, 1, &[&be32(3)[..], b"tbl", &be32(0)].concat()),
        welcome(2, 0, 1, &be32(0)),
        [
            frame(&[0x83, 0, 0, 0, 1]),
            frame(&[0x85, 0, 0, 0, 1]),
            vec![0, 0],
        ]
        .concat(),
        // Parts: abandoned after one byte, then a frame; a part longer than the piece; a part
        // length cut off.
        [
            frame(&[&[0x84][..], &be32(1), &be32(4)].concat()),
            be32(1).to_vec(),
            b"a".to_vec(),
            be32(0).to_vec(),
            frame(&[0x89, 0, 0, 0, 1]),
        ]
        .concat(),
        [
            frame(&[&[0x84][..], &be32(1), &be32(4)].concat()),
            be32(5).to_vec(),
            b"abcde".to_vec(),
        ]
        .concat(),
        [
            frame(&[&[0x84][..], &be32(1), &be32(4)].concat()),
            vec![0, 0],
        ]
        .concat(),
    ];
    for case in &cases {
        wire::check(case);
    }
    // Controls: the well-formed cases above do reach the re-encoding checks.
    for i in [7, 13, 17, 18, 21, 22, 27, 29, 31] {
        assert!(matches!(decode(&cases[i]), Ok(Some(_))), "case {i}");
    }
}

#[test]
fn range_nasty_inputs() {
    let huge = b"99999999999999999999999999";
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 7],
        sized(0, b""),
        sized(0, b"bytes=0-0"),
        sized(0, b"bytes=-1"),
        sized(1, b"bytes=0-"),
        sized(u64::MAX, b"bytes=0-18446744073709551615"),
        sized(u64::MAX, b"bytes=-18446744073709551616"),
        sized(u64::MAX, b"bytes=18446744073709551614-"),
        sized(10, &[b"bytes=-".as_slice(), huge].concat()),
        sized(10, &[b"bytes=3-".as_slice(), huge].concat()),
        sized(10, b"bytes=,,,,,"),
        sized(10, b"bytes=1-2,"),
        sized(10, b"bytes=1-2, 20-30"),
        sized(10, b"bytes = -\xff"),
        sized(10, b"\xffbytes=1-2"),
        sized(10, "bytes=\u{661}-2".as_bytes()),
        sized(10, "bytes=1-2\u{a0}".as_bytes()),
        sized(10, b"items=1-2"),
        sized(10, b"=1-2"),
        sized(0, b"bytes 0-99/100"),
        sized(0, b"bytes 0-99/99"),
        sized(0, b"bytes 0-99/*"),
        sized(0, b"bytes 0-99/18446744073709551616"),
        sized(0, b"bytes */100"),
        sized(0, b"bytes=5-9/"),
        sized(0, b"bytes==  =5-9"),
        sized(0, b"0-18446744073709551615/18446744073709551615"),
        sized(0, b"18446744073709551615-18446744073709551615"),
        sized(0, b"10-9"),
        sized(0, b"0-1/2/3"),
    ];
    for case in &cases {
        range::check(case);
    }
}

#[test]
fn member_header_nasty_inputs() {
    let valid = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/member_header/valid"),
    )
    .expect("the valid seed");
    // The seed, made by fuzz/make_seeds.py with Python's ed25519, verifies here: the format in
    // SPEC §5.3 is what the code does.
    let fleet = libp2p_identity::Keypair::ed25519_from_bytes([1; 32]).unwrap();
    let node = libp2p_identity::Keypair::ed25519_from_bytes([2; 32]).unwrap();
    let path = format!("/flotilla/v1/blobs/sha256:{}", "ab".repeat(32));
    let h = flotilla_protocol::membership::http::MemberHeader::decode(&valid).unwrap();
    assert_eq!(
        h.verify(&fleet.public().to_peer_id(), "GET", &path, 1_800_000_000)
            .unwrap(),
        node.public().to_peer_id()
    );
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"v1".to_vec(),
        b"v1 ".to_vec(),
        b"v1  1 00 00 00".to_vec(),
        b"v1 18446744073709551616 00 00 00".to_vec(),
        b"v1 1 0 0 0".to_vec(),
        b"v1 1 \xff\xfe 00 00".to_vec(),
        format!("v1 1 {} 00 00", "ff".repeat(5000)).into_bytes(),
        vec![b' '; 100_000],
    ];
    for n in 0..valid.len() {
        cases.push(valid.as_bytes()[..n].to_vec());
    }
    for case in &cases {
        member_header::check(case);
    }
}

/// One target's property check.
type Property = fn(&[u8]);

/// The seed inputs checked in under `fuzz/seeds/<target>/` satisfy the properties too.
#[test]
fn fuzz_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let checks: [(&str, Property); 6] = [
        ("member_header", member_header::check),
        ("reference", reference::check),
        ("manifest", manifest::check),
        ("piece_table", piece_table::check),
        ("wire", wire::check),
        ("range", range::check),
    ];
    let mut seen = 0;
    for (target, check) in checks {
        let Ok(dir) = std::fs::read_dir(seeds.join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.expect("readable seed directory").path();
            check(&std::fs::read(&path).expect("readable seed"));
            seen += 1;
        }
    }
    // The seeds ship with the repository; none found means the path above went stale.
    assert!(seen > 0, "no seeds under {}", seeds.display());
    // A format change must come with new seeds (fuzz/make_seeds.py), or the fuzzers start from
    // inputs rejected at the version byte.
    let seed = |name: &str| std::fs::read(seeds.join("piece_table").join(name)).expect("seed");
    assert!(PieceTable::decode(&seed("table_sha256")).is_ok());
    assert!(PieceTable::decode(&seed("table_sha512_empty")).is_ok());
    assert!(SignedPieceTable::decode(&seed("signed")).is_ok_and(|s| s.verify(None).is_ok()));
}
