//! HTTP `Range` requests on blobs (RFC 9110 section 14), decided once for the gateway's and the
//! node's blob endpoints: one `bytes` range is honoured, other units and multi-range requests
//! get the whole blob, malformed or unsatisfiable ranges get 416.

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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
