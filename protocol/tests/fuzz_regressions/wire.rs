//! Property of the `wire` fuzz target (and of the regression tests): the piece-transfer decoder,
//! fed a stream of frames the way a peer reads them, never panics; every decoded frame re-encodes
//! to exactly the bytes it was decoded from; every strict prefix of a good frame asks for more
//! bytes (never an error); and an error never turns into a frame when more bytes arrive.

use flotilla_protocol::wire::{Frame, PART_ABANDONED, PART_HEADER, decode, encode, frame_len};

/// Checks the properties above on one input; panics on a violation.
pub fn check(data: &[u8]) {
    let mut rest = data;
    loop {
        match decode(rest) {
            Ok(None) => {
                // Incomplete: more bytes of any kind can only complete it or fail it.
                break;
            }
            Err(e) => {
                let mut longer = rest.to_vec();
                longer.extend_from_slice(&[0; 16]);
                assert!(
                    decode(&longer).is_err(),
                    "{e} became a frame with more bytes"
                );
                break;
            }
            Ok(Some((frame, used))) => {
                assert!(used > 0 && used <= rest.len());
                assert_eq!(frame_len(rest), Some(used));
                let mut out = Vec::new();
                encode(&frame, &mut out).expect("a decoded frame encodes");
                assert_eq!(out, &rest[..used], "{} has a second encoding", frame.name());
                for k in 0..used {
                    assert_eq!(decode(&rest[..k]), Ok(None), "prefix of {k} bytes");
                }
                // Trailing bytes after the frame never change it.
                assert_eq!(decode(&rest[..used]), Ok(Some((frame.clone(), used))));
                rest = &rest[used..];
                // A Piece header is followed by its payload in parts, which the reader skips;
                // a part longer than what is due, or a cut-off part length, ends the stream.
                if let Frame::Piece { len, .. } = frame {
                    let mut due = len as usize;
                    while due > 0 {
                        let Some((head, tail)) = rest.split_first_chunk::<PART_HEADER>() else {
                            return;
                        };
                        let n = u32::from_be_bytes(*head) as usize;
                        rest = tail;
                        if n == PART_ABANDONED as usize {
                            break;
                        }
                        if n > due {
                            return;
                        }
                        let skip = n.min(rest.len());
                        rest = &rest[skip..];
                        due -= n;
                    }
                }
            }
        }
    }
}
