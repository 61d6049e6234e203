//! Repository-name globs of access rules: `*` matches within one `/`-separated segment, a `**`
//! segment matches any number of whole segments (zero included).
//!
//! | pattern      | matches                          | does not match        |
//! |--------------|----------------------------------|-----------------------|
//! | `team/*`     | `team/app`                       | `team`, `team/a/b`    |
//! | `team/**`    | `team`, `team/app`, `team/a/b`   | `teams/app`           |
//! | `team-*/**`  | `team-a/app`, `team-b`           | `team/app`            |
//! | `**/cache`   | `cache`, `a/b/cache`             | `a/cache/x`           |
//! | `**`         | every name                       |                       |
//!
//! Patterns are checked when the configuration is loaded: empty segments, a `**` inside a
//! segment, and characters no repository name can hold (names are lowercase) are refused, so a
//! rule that could never match is an error instead of a silent hole.

use std::fmt;

/// A compiled repository pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RepoPattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments.
    Any,
    /// One segment, `*` matching any run of characters within it.
    Glob(String),
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("repository pattern {pattern:?}: {reason}")]
pub(crate) struct PatternError {
    pattern: String,
    reason: &'static str,
}

impl RepoPattern {
    /// Compiles `text` (see the module docs).
    pub(crate) fn parse(text: &str) -> Result<RepoPattern, PatternError> {
        let fail = |reason| PatternError {
            pattern: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(fail("is empty"));
        }
        let mut segments = Vec::new();
        for seg in text.split('/') {
            if seg.is_empty() {
                return Err(fail(
                    "has an empty segment (leading, trailing or double `/`)",
                ));
            }
            if seg == "**" {
                // `**/**` means the same as `**`; keeping one keeps matching linear.
                if segments.last() != Some(&Segment::Any) {
                    segments.push(Segment::Any);
                }
                continue;
            }
            if seg.contains("**") {
                return Err(fail("`**` must be a whole segment"));
            }
            if !seg.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'-' | b'*')
            }) {
                return Err(fail(
                    "may hold only a-z, 0-9, `.`, `_`, `-`, `*` and `/` (repository names are lowercase)",
                ));
            }
            segments.push(Segment::Glob(seg.to_owned()));
        }
        Ok(RepoPattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether the repository `name` matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('/').collect();
        match_segments(&self.segments, &parts)
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn match_segments(pattern: &[Segment], name: &[&str]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=name.len()).any(|skip| match_segments(rest, &name[skip..]))
        }
        Some((Segment::Glob(g), rest)) => match name.split_first() {
            Some((first, tail)) => {
                glob_match(g.as_bytes(), first.as_bytes()) && match_segments(rest, tail)
            }
            None => false,
        },
    }
}

/// `*`-only wildcard match of one segment (iterative, with backtracking to the last `*`).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        RepoPattern::parse(pattern).unwrap().matches(name)
    }

    #[test]
    fn single_star_stays_within_a_segment() {
        assert!(m("team/*", "team/app"));
        assert!(!m("team/*", "team"));
        assert!(!m("team/*", "team/a/b"));
        assert!(!m("team/*", "other/app"));
        assert!(m("team-*/app", "team-a/app"));
        assert!(m("team-*/app", "team-/app"));
        assert!(!m("team-*/app", "team/app"));
        assert!(m("*-cache", "build-cache"));
        assert!(!m("*-cache", "build-cache/x"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("*", "x"));
        assert!(!m("*", "x/y"));
    }

    #[test]
    fn double_star_spans_segments() {
        assert!(m("team/**", "team"));
        assert!(m("team/**", "team/app"));
        assert!(m("team/**", "team/a/b/c"));
        assert!(!m("team/**", "teams/app"));
        assert!(m("**", "a"));
        assert!(m("**", "a/b/c"));
        assert!(m("**/cache", "cache"));
        assert!(m("**/cache", "a/b/cache"));
        assert!(!m("**/cache", "a/cache/x"));
        assert!(m("a/**/z", "a/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(!m("a/**/z", "a/b/c"));
        assert!(m("a/**/**/z", "a/z"));
        assert!(m("team-*/**", "team-b"));
        assert!(m("team-*/**", "team-b/x/y"));
    }

    #[test]
    fn exact_patterns_match_only_themselves() {
        assert!(m("library/alpine", "library/alpine"));
        assert!(!m("library/alpine", "library/alpine/x"));
        assert!(!m("library/alpine", "library"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "", "/a", "a/", "a//b", "a**", "**b/c", "Team/*", "a b", "a:b",
        ] {
            assert!(RepoPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = RepoPattern::parse("a//b").unwrap_err().to_string();
        assert!(e.contains("a//b") && e.contains("empty segment"), "{e}");
    }
}
