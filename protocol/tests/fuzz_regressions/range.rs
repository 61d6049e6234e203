//! Property of the `range` fuzz target (and of the regression tests): `Range` (blob reads) and
//! `Content-Range` (upload chunks) never panic on any header text; a partial answer lies inside
//! the blob with `start <= end`; an accepted Content-Range has `start <= end` and, when it states
//! the blob's total length, ends before it. Both parsers give the same answer again for the
//! canonical form of what they returned. `Flotilla-Alternatives` never panics either; what it
//! accepts is at most `MAX_ALTERNATIVES` ranges inside the blob, each with `start <= end`, and
//! formatting them and parsing again gives them back.
//!
//! Input: 8 bytes of blob size (little-endian), then the header text.

use flotilla_protocol::range::{
    ContentRangeError, MAX_ALTERNATIVES, RangeAnswer, format_alternatives, parse_alternatives,
    parse_content_range, parse_range,
};

/// Checks the properties above on one input; panics on a violation.
pub fn check(data: &[u8]) {
    let (size, text) = match data.split_first_chunk::<8>() {
        Some((size, text)) => (u64::from_le_bytes(*size), text),
        None => (0, data),
    };
    let text = String::from_utf8_lossy(text);
    let header: &str = &text;

    for size in [size, size % 1024] {
        let answer = parse_range(header, size);
        if let RangeAnswer::Partial { start, end } = answer {
            assert!(start <= end, "{header:?} on {size}: {start} > {end}");
            assert!(end < size, "{header:?} on {size}: end {end} past the blob");
            assert_eq!(
                parse_range(&format!("bytes={start}-{end}"), size),
                answer,
                "{header:?} on {size}"
            );
        }
        // Surrounding whitespace is not significant.
        assert_eq!(parse_range(&format!(" {header}\t"), size), answer);

        if let Ok(ranges) = parse_alternatives(header, size) {
            assert!(ranges.len() <= MAX_ALTERNATIVES, "{header:?}");
            for &(start, end) in &ranges {
                assert!(start <= end && end < size, "{header:?} on {size}");
            }
            let again = format_alternatives(&ranges).map(|h| parse_alternatives(&h, size));
            match again {
                Some(again) => assert_eq!(again, Ok(ranges), "{header:?} on {size}"),
                None => assert!(ranges.is_empty()),
            }
        }
    }

    match parse_content_range(header) {
        Ok((start, end)) => {
            assert!(start <= end, "{header:?}: {start} > {end}");
            assert_eq!(
                parse_content_range(&format!("{start}-{end}")),
                Ok((start, end))
            );
            assert_eq!(
                parse_content_range(&format!("bytes {start}-{end}/*")),
                Ok((start, end))
            );
            // RFC 9110 section 14.4: a complete length at or below the last byte is invalid.
            if let Some(total) = header
                .rsplit_once('/')
                .and_then(|(_, t)| t.trim().parse::<u64>().ok())
            {
                assert!(end < total, "{header:?}: ends at {end}, total {total}");
            }
        }
        Err(ContentRangeError::Backwards | ContentRangeError::Malformed) => {}
    }
}
