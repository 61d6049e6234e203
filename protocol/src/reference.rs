//! Repository names, tags and references, by the grammar of the OCI distribution spec.
//!
//! ```text
//! name      = component ("/" component)*            (at most 255 characters in all)
//! component = [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! tag       = [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
//! reference = tag | digest
//! ```
//!
//! [`split_v2_path`] is the one parser for the part of a URL after `/v2/`: names may hold any
//! number of `/` segments, so the route is found from the end (`…/manifests/<ref>`,
//! `…/blobs/uploads/<id>`, …) and whatever precedes it is parsed as a name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted (docker's limit; the spec suggests clients keep under 255).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted.
pub const MAX_TAG_LEN: usize = 128;

/// Why a name, tag or reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The repository name breaks the grammar.
    #[error("invalid repository name {0:?}")]
    BadName(String),
    /// The tag breaks the grammar.
    #[error("invalid tag {0:?}")]
    BadTag(String),
    /// A reference that looked like a digest but is not a valid one.
    #[error(transparent)]
    BadDigest(#[from] DigestError),
}

/// A validated repository name such as `library/alpine` or `team/app/service`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl RepoName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoName {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(ReferenceError::BadName(s.to_owned()));
        }
        Ok(RepoName(s.to_owned()))
    }
}

/// A validated tag such as `latest` or `v1.2.3-rc_1`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ReferenceError::BadTag(s.to_owned()))
        }
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable digest.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Tags cannot contain ':', digests always do.
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t.as_str()),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype_impls!(RepoName);
string_newtype_impls!(Tag);

/// The route of a `/v2/...` request, with the repository name already split off and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Route {
    /// `/v2/` itself.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`.
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/` (start an upload).
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`; the id is opaque here and checked by the upload store.
    Upload(RepoName, String),
    /// `/v2/<name>/tags/list`.
    Tags(RepoName),
    /// `/v2/<name>/referrers/<digest>`.
    Referrers(RepoName, Digest),
}

/// Why a `/v2/` path could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path matches no endpoint of the API.
    #[error("no such endpoint")]
    NotFound,
    /// The endpoint matched but the name is invalid.
    #[error(transparent)]
    Name(ReferenceError),
    /// The endpoint matched but the tag or digest is invalid.
    #[error(transparent)]
    Reference(ReferenceError),
}

/// Routes the part of a path after `/v2/` (without a leading `/`; query string removed).
///
/// # Errors
/// [`RouteError::NotFound`] for unknown shapes, [`RouteError::Name`] for a bad repository name,
/// [`RouteError::Reference`] for a bad tag or digest.
pub fn split_v2_path(rest: &str) -> Result<V2Route, RouteError> {
    if rest.is_empty() {
        return Ok(V2Route::Base);
    }
    if rest == "_catalog" {
        return Ok(V2Route::Catalog);
    }
    let name = |n: &str| n.parse::<RepoName>().map_err(RouteError::Name);
    if let Some(n) = rest.strip_suffix("/tags/list") {
        return Ok(V2Route::Tags(name(n)?));
    }
    if let Some(n) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(V2Route::UploadStart(name(n)?));
    }
    // The last segment is the reference/id; the one or two before it say which endpoint.
    let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
    if let Some(n) = head.strip_suffix("/blobs/uploads") {
        if last.is_empty() {
            return Err(RouteError::NotFound);
        }
        return Ok(V2Route::Upload(name(n)?, last.to_owned()));
    }
    let (n, kind) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
    match kind {
        "manifests" => {
            let n = name(n)?;
            let r = last.parse::<Reference>().map_err(RouteError::Reference)?;
            Ok(V2Route::Manifest(n, r))
        }
        "blobs" => {
            let n = name(n)?;
            let d = last
                .parse::<Digest>()
                .map_err(|e| RouteError::Reference(ReferenceError::BadDigest(e)))?;
            Ok(V2Route::Blob(n, d))
        }
        "referrers" => {
            let n = name(n)?;
            let d = last
                .parse::<Digest>()
                .map_err(|e| RouteError::Reference(ReferenceError::BadDigest(e)))?;
            Ok(V2Route::Referrers(n, d))
        }
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/alpine",
            "a/b/c/d/e",
            "my-app",
            "my--app",
            "my__app",
            "my_app.v2",
            "0",
            "team/app/service-1.2",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok} refused");
        }
        for bad in [
            "",
            "A",
            "Library/alpine",
            "/a",
            "a/",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a___b",
            "a._b",
            "a/../b",
            "..",
            "a b",
            "a:b",
            "a%2fb",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad} accepted");
        }
        let long = "a".repeat(256);
        assert!(long.parse::<RepoName>().is_err());
        assert!("a".repeat(255).parse::<RepoName>().is_ok());
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"x".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok} refused");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129), "é"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn references() {
        assert!(matches!(
            "latest".parse::<Reference>(),
            Ok(Reference::Tag(_))
        ));
        assert!(matches!(D.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!(matches!(
            "sha256:nothex".parse::<Reference>(),
            Err(ReferenceError::BadDigest(_))
        ));
    }

    #[test]
    fn routes() {
        assert_eq!(split_v2_path(""), Ok(V2Route::Base));
        assert_eq!(split_v2_path("_catalog"), Ok(V2Route::Catalog));
        let n = |s: &str| s.parse::<RepoName>().unwrap();
        assert_eq!(
            split_v2_path("a/b/c/manifests/latest"),
            Ok(V2Route::Manifest(n("a/b/c"), "latest".parse().unwrap()))
        );
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            split_v2_path("x/manifests/manifests/v1"),
            Ok(V2Route::Manifest(n("x/manifests"), "v1".parse().unwrap()))
        );
        assert_eq!(
            split_v2_path(&format!("a/blobs/{D}")),
            Ok(V2Route::Blob(n("a"), D.parse().unwrap()))
        );
        assert_eq!(
            split_v2_path("a/b/blobs/uploads/"),
            Ok(V2Route::UploadStart(n("a/b")))
        );
        assert_eq!(
            split_v2_path("a/b/blobs/uploads"),
            Ok(V2Route::UploadStart(n("a/b")))
        );
        assert_eq!(
            split_v2_path("a/b/blobs/uploads/abc-123"),
            Ok(V2Route::Upload(n("a/b"), "abc-123".into()))
        );
        assert_eq!(split_v2_path("a/tags/list"), Ok(V2Route::Tags(n("a"))));
        assert_eq!(
            split_v2_path(&format!("a/referrers/{D}")),
            Ok(V2Route::Referrers(n("a"), D.parse().unwrap()))
        );
        assert!(matches!(
            split_v2_path("A/manifests/latest"),
            Err(RouteError::Name(_))
        ));
        assert!(matches!(
            split_v2_path("a/manifests/-bad"),
            Err(RouteError::Reference(_))
        ));
        assert!(matches!(
            split_v2_path("a/blobs/sha256:00"),
            Err(RouteError::Reference(_))
        ));
        assert_eq!(split_v2_path("a/unknown/x"), Err(RouteError::NotFound));
        assert_eq!(split_v2_path("manifests/latest"), Err(RouteError::NotFound));
        assert!(split_v2_path("../../etc/manifests/latest").is_err());
    }
}
