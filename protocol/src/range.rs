//! HTTP range headers, decided once for every endpoint that reads or writes part of a blob.
//!
//! - [`parse_range`]: a blob `GET` with `Range` (RFC 9110 section 14), for the gateway's and the
//!   node's blob endpoints alike: one `bytes` range is honoured, other units and multi-range
//!   requests get the whole blob, malformed or unsatisfiable ranges get 416.
//! - [`parse_content_range`]: the `Content-Range` of an upload chunk (`PATCH`/`PUT` on an upload
//!   session), in the distribution spec's `<start>-<end>` form or RFC 9110's.
//!
//! Both take header text from anyone on the network: they never panic, never overflow, and
//! every range they return is well formed (see `fuzz/` at the repository root, which checks
//! exactly that, and `tests/fuzz_regressions.rs`).

/// The answer to a blob `GET` with a `Range` header, for a blob of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Send the whole blob with 200 (no header, another unit, or several ranges).
    Full,
    /// Send bytes `start..=end` with 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// Answer 416 with `Content-Range: bytes */<size>`.
    Unsatisfiable,
}

/// Parses one `first-last`, `first-` or `-suffix` range for a blob of `size` bytes.
/// `None` means unsatisfiable or malformed (both answered 416).
fn one_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let (first, last) = spec.trim().split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let n = digits(last)?;
        if n == 0 || size == 0 {
            return None;
        }
        return Some((size - n.min(size), size - 1));
    }
    let start = digits(first)?;
    let end = if last.is_empty() {
        u64::MAX
    } else {
        digits(last)?
    };
    if end < start || start >= size {
        return None;
    }
    Some((start, end.min(size - 1)))
}

/// A run of ASCII digits as a number; values beyond `u64` saturate (they are past any blob's end
/// anyway). `None` for empty input or any other character.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Decides how to answer `Range: <header>` on a blob of `size` bytes (RFC 9110 section 14).
///
/// Only the `bytes` unit is understood; another unit is ignored (full 200), as the RFC requires.
/// A malformed or unsatisfiable single range is answered 416. Several ranges are answered with the
/// full blob (a server may ignore `Range`), unless none of them is satisfiable (416): flotilla never
/// sends `multipart/byteranges`.
pub fn parse_range(header: &str, size: u64) -> RangeAnswer {
    let header = header.trim();
    let Some((unit, set)) = header.split_once('=') else {
        return RangeAnswer::Unsatisfiable;
    };
    let unit = unit.trim();
    if unit.is_empty() {
        return RangeAnswer::Unsatisfiable;
    }
    if !unit.eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let specs: Vec<&str> = set.split(',').filter(|s| !s.trim().is_empty()).collect();
    match specs.as_slice() {
        [] => RangeAnswer::Unsatisfiable,
        [one] => match one_range(one, size) {
            Some((start, end)) => RangeAnswer::Partial { start, end },
            None => RangeAnswer::Unsatisfiable,
        },
        many => {
            if many.iter().any(|s| one_range(s, size).is_some()) {
                RangeAnswer::Full
            } else {
                RangeAnswer::Unsatisfiable
            }
        }
    }
}

/// Most ranges one `Flotilla-Alternatives` header may offer.
pub const MAX_ALTERNATIVES: usize = 32;

/// Why a `Flotilla-Alternatives` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AlternativesError {
    /// Not `bytes=<first>-<last>[,<first>-<last>…]` with each range inside the blob.
    #[error("malformed Flotilla-Alternatives; expected bytes=<first>-<last>,… inside the blob")]
    Malformed,
    /// More than [`MAX_ALTERNATIVES`] ranges.
    #[error("Flotilla-Alternatives offers more than {MAX_ALTERNATIVES} ranges")]
    TooMany,
}

/// Parses a `Flotilla-Alternatives` header (SPEC §3.7): byte ranges of a blob of `size` bytes
/// that an origin request would take in place of its `Range`, in order of preference. Only
/// closed ranges (`first-last`, inclusive) that lie inside the blob are accepted.
///
/// # Errors
/// [`AlternativesError::Malformed`] for anything else, [`AlternativesError::TooMany`] beyond
/// [`MAX_ALTERNATIVES`] ranges.
pub fn parse_alternatives(header: &str, size: u64) -> Result<Vec<(u64, u64)>, AlternativesError> {
    let (unit, set) = header
        .trim()
        .split_once('=')
        .ok_or(AlternativesError::Malformed)?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Err(AlternativesError::Malformed);
    }
    let mut out = Vec::new();
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if out.len() == MAX_ALTERNATIVES {
            return Err(AlternativesError::TooMany);
        }
        let (first, last) = spec.split_once('-').ok_or(AlternativesError::Malformed)?;
        let first = digits(first.trim()).ok_or(AlternativesError::Malformed)?;
        let last = digits(last.trim()).ok_or(AlternativesError::Malformed)?;
        if last < first || last >= size {
            return Err(AlternativesError::Malformed);
        }
        out.push((first, last));
    }
    Ok(out)
}

/// The `Flotilla-Alternatives` value offering `ranges` (inclusive byte ranges, at most
/// [`MAX_ALTERNATIVES`] of them are written); `None` for none.
pub fn format_alternatives(ranges: &[(u64, u64)]) -> Option<String> {
    if ranges.is_empty() {
        return None;
    }
    let parts: Vec<String> = ranges
        .iter()
        .take(MAX_ALTERNATIVES)
        .map(|(a, b)| format!("{a}-{b}"))
        .collect();
    Some(format!("bytes={}", parts.join(",")))
}

/// Why an upload chunk's `Content-Range` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContentRangeError {
    /// Not `<start>-<end>` (optionally as `bytes <start>-<end>[/<total>]`), or a stated total at
    /// or below `end`.
    #[error("malformed Content-Range; expected <start>-<end>")]
    Malformed,
    /// `end` before `start`: no byte range can be satisfied by it.
    #[error("Content-Range ends before it starts")]
    Backwards,
}

/// Parses an upload chunk's `Content-Range` into `(start, end)`, both inclusive.
///
/// The spec's form is `<start>-<end>`; the RFC 9110 form `bytes <start>-<end>/<total|*>` (and
/// `bytes=<start>-<end>`, which some clients send) is accepted too. A start or end that
/// overflows `u64` is malformed, and so is a total at or below `end`.
///
/// # Errors
/// [`ContentRangeError::Backwards`] when `end < start`, [`ContentRangeError::Malformed`] for
/// anything else that is not such a range.
pub fn parse_content_range(header: &str) -> Result<(u64, u64), ContentRangeError> {
    let mut s = header.trim();
    if let Some(rest) = s
        .strip_prefix("bytes")
        .map(|r| r.trim_start_matches([' ', '=']))
    {
        s = rest;
    }
    let (s, total) = match s.split_once('/') {
        Some((range, total)) => {
            let total = total.trim();
            let number = !total.is_empty() && total.bytes().all(|b| b.is_ascii_digit());
            if total != "*" && !number {
                return Err(ContentRangeError::Malformed);
            }
            // A total past u64 is past any last byte, so it saturates.
            (range, number.then(|| total.parse().unwrap_or(u64::MAX)))
        }
        None => (s, None),
    };
    let (a, b) = s
        .trim()
        .split_once('-')
        .ok_or(ContentRangeError::Malformed)?;
    let num = |x: &str| -> Result<u64, ContentRangeError> {
        if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ContentRangeError::Malformed);
        }
        x.parse().map_err(|_| ContentRangeError::Malformed)
    };
    let (start, end) = (num(a)?, num(b)?);
    if end < start {
        return Err(ContentRangeError::Backwards);
    }
    // RFC 9110 section 14.4: a complete length at or below the last byte makes the field invalid
    // (`bytes 0-99/50` cannot describe any blob).
    if total.is_some_and(|total| total <= end) {
        return Err(ContentRangeError::Malformed);
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternatives() {
        assert_eq!(
            parse_alternatives("bytes=0-9, 20-29,", 100),
            Ok(vec![(0, 9), (20, 29)])
        );
        assert_eq!(parse_alternatives("bytes=", 100), Ok(vec![]));
        for bad in [
            "0-9",
            "items=0-9",
            "bytes=9-0",
            "bytes=0-100",
            "bytes=-5",
            "bytes=5-",
            "bytes=a-b",
        ] {
            assert_eq!(
                parse_alternatives(bad, 100),
                Err(AlternativesError::Malformed),
                "{bad}"
            );
        }
        let many: Vec<(u64, u64)> = (0..=MAX_ALTERNATIVES as u64).map(|i| (i, i)).collect();
        let text = format!(
            "bytes={}",
            many.iter()
                .map(|(a, b)| format!("{a}-{b}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            parse_alternatives(&text, 100),
            Err(AlternativesError::TooMany)
        );
        // Writing keeps the first MAX_ALTERNATIVES.
        let written = format_alternatives(&many).expect("some");
        assert_eq!(
            parse_alternatives(&written, 100).map(|v| v.len()),
            Ok(MAX_ALTERNATIVES)
        );
        assert_eq!(format_alternatives(&[]), None);
    }

    #[test]
    fn single_ranges() {
        assert_eq!(
            parse_range("bytes=0-9", 100),
            RangeAnswer::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range("bytes=90-", 100),
            RangeAnswer::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            RangeAnswer::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-1000", 100),
            RangeAnswer::Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("items=0-1", 100), RangeAnswer::Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAnswer::Full);
        assert_eq!(parse_range("bytes=x-1", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(parse_range("bytes=9-1", 100), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn ranges_in_bounds() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-0", 10), Partial { start: 0, end: 0 });
        assert_eq!(parse_range("bytes=0-9", 10), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=2-5", 10), Partial { start: 2, end: 5 });
        assert_eq!(parse_range("bytes=5-", 10), Partial { start: 5, end: 9 });
        assert_eq!(parse_range("bytes=-3", 10), Partial { start: 7, end: 9 });
        assert_eq!(parse_range("BYTES = 1-2", 10), Partial { start: 1, end: 2 });
        assert_eq!(parse_range(" bytes=1-2 ", 10), Partial { start: 1, end: 2 });
    }

    #[test]
    fn ranges_clamped_at_the_end() {
        use RangeAnswer::*;
        // The conformance suite asks for bytes=2000-5000 of a shorter blob and expects 206.
        assert_eq!(parse_range("bytes=2-500", 10), Partial { start: 2, end: 9 });
        assert_eq!(parse_range("bytes=-500", 10), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=-10", 10), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=9-9", 10), Partial { start: 9, end: 9 });
    }

    #[test]
    fn ranges_unsatisfiable() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn ranges_overflow() {
        use RangeAnswer::*;
        let huge = "99999999999999999999999999";
        assert_eq!(parse_range(&format!("bytes={huge}-"), 10), Unsatisfiable);
        assert_eq!(
            parse_range(&format!("bytes=3-{huge}"), 10),
            Partial { start: 3, end: 9 }
        );
        assert_eq!(
            parse_range(&format!("bytes=-{huge}"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(&format!("bytes=0-{}", u64::MAX), u64::MAX),
            Partial {
                start: 0,
                end: u64::MAX - 1
            }
        );
    }

    #[test]
    fn ranges_garbage() {
        use RangeAnswer::*;
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-b",
            "bytes=+1-2",
            "bytes=1--2",
            "bytes=1-2-3",
            "bytes=0x1-2",
            "bytes=1 2",
            "bytes=,",
            "bytes=-1-2",
            "=1-2",
        ] {
            assert_eq!(parse_range(bad, 10), Unsatisfiable, "{bad:?}");
        }
        // Unknown units are ignored, as RFC 9110 requires.
        assert_eq!(parse_range("items=0-1", 10), Full);
        assert_eq!(parse_range("none", 10), Unsatisfiable);
    }

    #[test]
    fn multiple_ranges_get_the_whole_blob() {
        use RangeAnswer::*;
        assert_eq!(parse_range("bytes=0-1,4-5", 10), Full);
        assert_eq!(parse_range("bytes=0-1, 40-50", 10), Full);
        assert_eq!(parse_range("bytes=20-30,40-50", 10), Unsatisfiable);
        // An empty element is tolerated (RFC 9110 list syntax).
        assert_eq!(parse_range("bytes=1-2,", 10), Partial { start: 1, end: 2 });
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-0"), Ok((0, 0)));
        assert_eq!(parse_content_range("0-99"), Ok((0, 99)));
        assert_eq!(parse_content_range(" 100-199 "), Ok((100, 199)));
        assert_eq!(parse_content_range("bytes 0-99/100"), Ok((0, 99)));
        assert_eq!(parse_content_range("bytes 0-99/*"), Ok((0, 99)));
        assert_eq!(parse_content_range("bytes=5-9"), Ok((5, 9)));
        assert_eq!(
            parse_content_range("bytes 0-99/99999999999999999999999"),
            Ok((0, 99))
        );
        assert_eq!(
            parse_content_range(&format!("0-{}", u64::MAX)),
            Ok((0, u64::MAX))
        );
        assert_eq!(
            parse_content_range("10-9"),
            Err(ContentRangeError::Backwards)
        );
        for bad in [
            "",
            "-",
            "0-",
            "-5",
            "a-b",
            "0-9a",
            "+0-9",
            "0 - x",
            "0-1-2",
            "bytes 0-99/abc",
            "bytes 0-99/",
            "18446744073709551616-18446744073709551617",
            "0-18446744073709551616",
            // A total at or below the last byte (RFC 9110 section 14.4).
            "bytes 0-99/99",
            "bytes 0-99/0",
            "bytes 5-5/5",
        ] {
            assert_eq!(
                parse_content_range(bad),
                Err(ContentRangeError::Malformed),
                "{bad:?}"
            );
        }
    }
}
