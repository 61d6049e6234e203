//! Header names and the small parsers and builders the handlers share: `Range` (blob reads),
//! `Content-Range` (upload chunks), the upload `Range` answer, `Accept` negotiation for manifests,
//! ETags and `If-None-Match`/`If-Range`, and `Location` paths.
//!
//! Everything here is pure (no I/O) and unit-tested on its edges: garbage, overflow, empty input.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use flotilla_protocol::manifest::media_type;
use flotilla_protocol::{Digest, RepoName};

/// `Docker-Content-Digest`: the digest of the blob or manifest a response is about.
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// `Docker-Upload-UUID`: the id of an upload session.
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
/// `Docker-Distribution-API-Version`, sent on every response.
pub const DOCKER_API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
/// `OCI-Subject`: the subject digest of a pushed manifest (referrers API support).
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
/// `OCI-Filters-Applied`: which referrers filters were applied.
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// A header value from text that is known to be visible ASCII (digests, names, numbers, paths).
/// Anything else (which the validated types never produce) becomes an empty value rather than a
/// panic.
pub fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `/v2/<name>/blobs/<digest>`.
pub fn blob_location(repo: &RepoName, d: &Digest) -> HeaderValue {
    value(&format!("/v2/{repo}/blobs/{d}"))
}

/// `/v2/<name>/manifests/<digest>`.
pub fn manifest_location(repo: &RepoName, d: &Digest) -> HeaderValue {
    value(&format!("/v2/{repo}/manifests/{d}"))
}

/// `/v2/<name>/blobs/uploads/<id>`.
pub fn upload_location(repo: &RepoName, id: &str) -> HeaderValue {
    value(&format!("/v2/{repo}/blobs/uploads/{id}"))
}

/// The upload `Range` answer for `offset` bytes received: `0-<offset-1>`.
///
/// For an empty upload this is `0-0`, as distribution (and so every client tested against it)
/// sends; `0--1` would be the literal formula and confuses clients that parse the header.
pub fn upload_range(offset: u64) -> HeaderValue {
    value(&format!("0-{}", offset.saturating_sub(1)))
}

/// The strong ETag of content named by `d`: the quoted digest.
pub fn etag(d: &Digest) -> HeaderValue {
    value(&format!("\"{d}\""))
}

/// Whether `If-None-Match` matches the ETag of `d` (weak comparison, as RFC 9110 asks for it).
pub fn if_none_match(headers: &HeaderMap, d: &Digest) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| {
            if tag == "*" {
                return true;
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .is_some_and(|t| t == d.as_str())
        })
}

/// Whether a `Range` must be honoured given `If-Range` (absent, or equal to our strong ETag).
pub fn if_range_allows(headers: &HeaderMap, d: &Digest) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.as_bytes() == etag(d).as_bytes(),
    }
}

pub use flotilla_protocol::range::{RangeAnswer, parse_range};

/// Why an upload's `Content-Range` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRangeError {
    /// Not `<start>-<end>` (optionally as `bytes <start>-<end>[/<total>]`).
    Malformed,
    /// `end` before `start`: no byte range can be satisfied by it.
    Backwards,
}

/// Parses an upload chunk's `Content-Range` into `(start, end)`, both inclusive.
///
/// The spec's form is `<start>-<end>`; the RFC 9110 form `bytes <start>-<end>/<total|*>` (and
/// `bytes=<start>-<end>`, which some clients send) is accepted too. Numbers that overflow `u64`
/// are malformed.
pub fn parse_content_range(header: &str) -> Result<(u64, u64), ContentRangeError> {
    let mut s = header.trim();
    if let Some(rest) = s
        .strip_prefix("bytes")
        .map(|r| r.trim_start_matches([' ', '=']))
    {
        s = rest;
    }
    let s = match s.split_once('/') {
        Some((range, total)) => {
            let total = total.trim();
            let number = !total.is_empty() && total.bytes().all(|b| b.is_ascii_digit());
            if total != "*" && !number {
                return Err(ContentRangeError::Malformed);
            }
            range
        }
        None => s,
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
    Ok((start, end))
}

/// Every manifest media type this module recognises in an `Accept` list (what the registry stores,
/// plus the ones it refuses), so that a list naming only such types is a real statement of what
/// the client can parse.
const KNOWN_MANIFEST_TYPES: [&str; 7] = [
    media_type::OCI_MANIFEST,
    media_type::OCI_INDEX,
    media_type::DOCKER_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
    media_type::DOCKER_SCHEMA1,
    media_type::DOCKER_SCHEMA1_SIGNED,
    "application/vnd.oci.artifact.manifest.v1+json",
];

/// Whether a stored manifest of media type `stored` may be returned to a client with these
/// `Accept` headers.
///
/// The registry never converts manifests, so negotiation can only say yes or no. It says no
/// (answered `404 MANIFEST_UNKNOWN`, as distribution does) only when the client listed manifest
/// media types, every one of them a manifest type we know, and none of them is `stored`: such a
/// client has said precisely what it can parse. Any other `Accept` (absent, empty, `*/*`,
/// `application/*`, `application/json`, types we do not know) gets the stored manifest with its
/// own `Content-Type`. Entries with `q=0` count as not listed.
pub fn manifest_acceptable(headers: &HeaderMap, stored: &str) -> bool {
    let mut listed_any = false;
    for entry in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = entry.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if essence.is_empty() {
            continue;
        }
        let refused = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        if essence == stored || !KNOWN_MANIFEST_TYPES.contains(&essence.as_str()) {
            return true;
        }
        listed_any = true;
    }
    !listed_any
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn d() -> Digest {
        D.parse().unwrap()
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
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
        ] {
            assert_eq!(
                parse_content_range(bad),
                Err(ContentRangeError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn upload_range_values() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(1), "0-0");
        assert_eq!(upload_range(100), "0-99");
        assert_eq!(
            upload_range(u64::MAX),
            format!("0-{}", u64::MAX - 1).as_str()
        );
    }

    #[test]
    fn etags() {
        assert_eq!(etag(&d()), format!("\"{D}\"").as_str());
        let h = |v: &str| headers(&[(header::IF_NONE_MATCH, v)]);
        assert!(if_none_match(&h(&format!("\"{D}\"")), &d()));
        assert!(if_none_match(&h(&format!("W/\"{D}\"")), &d()));
        assert!(if_none_match(&h(&format!("\"x\", \"{D}\"")), &d()));
        assert!(if_none_match(&h("*"), &d()));
        assert!(!if_none_match(&h(D), &d()));
        assert!(!if_none_match(&h("\"sha256:00\""), &d()));
        assert!(!if_none_match(&HeaderMap::new(), &d()));
        assert!(if_range_allows(&HeaderMap::new(), &d()));
        assert!(if_range_allows(
            &headers(&[(header::IF_RANGE, &format!("\"{D}\""))]),
            &d()
        ));
        assert!(!if_range_allows(
            &headers(&[(header::IF_RANGE, "Wed, 21 Oct 2015 07:28:00 GMT")]),
            &d()
        ));
    }

    #[test]
    fn accept_negotiation() {
        let oci = media_type::OCI_MANIFEST;
        let accept = |vals: &[&str]| {
            headers(
                &vals
                    .iter()
                    .map(|v| (header::ACCEPT, *v))
                    .collect::<Vec<_>>(),
            )
        };
        // No Accept, wildcards, generic JSON, unknown types: the stored type is served.
        assert!(manifest_acceptable(&HeaderMap::new(), oci));
        assert!(manifest_acceptable(&accept(&[""]), oci));
        assert!(manifest_acceptable(&accept(&["*/*"]), oci));
        assert!(manifest_acceptable(&accept(&["application/*"]), oci));
        assert!(manifest_acceptable(&accept(&["application/json"]), oci));
        // Docker's and containerd's lists, in one header or several.
        let docker = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v1+prettyjws";
        assert!(manifest_acceptable(&accept(&[docker]), oci));
        assert!(manifest_acceptable(
            &accept(&[media_type::OCI_INDEX, media_type::OCI_MANIFEST]),
            oci
        ));
        assert!(manifest_acceptable(
            &accept(&["application/vnd.oci.image.manifest.v1+json; q=0.5"]),
            oci
        ));
        // An explicit list of known manifest types without the stored one: refused.
        assert!(!manifest_acceptable(
            &accept(&[
                media_type::DOCKER_MANIFEST,
                media_type::DOCKER_SCHEMA1_SIGNED
            ]),
            oci
        ));
        assert!(!manifest_acceptable(
            &accept(&[
                "application/vnd.oci.image.manifest.v1+json;q=0, application/vnd.oci.image.index.v1+json"
            ]),
            oci
        ));
        // Case-insensitive essence.
        assert!(manifest_acceptable(
            &accept(&["Application/Vnd.OCI.Image.Manifest.v1+JSON"]),
            oci
        ));
    }

    #[test]
    fn locations() {
        let repo: RepoName = "a/b".parse().unwrap();
        assert_eq!(
            blob_location(&repo, &d()),
            format!("/v2/a/b/blobs/{D}").as_str()
        );
        assert_eq!(
            manifest_location(&repo, &d()),
            format!("/v2/a/b/manifests/{D}").as_str()
        );
        assert_eq!(upload_location(&repo, "u-1"), "/v2/a/b/blobs/uploads/u-1");
    }
}
