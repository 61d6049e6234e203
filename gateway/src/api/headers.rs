//! Header names and the small parsers and builders the handlers share: `Range` (blob reads) and
//! `Content-Range` (upload chunks), both re-exported from `flotilla_protocol::range`, the upload
//! `Range` answer, `Accept` negotiation for manifests, ETags and `If-None-Match`/`If-Range`, and
//! `Location` paths.
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

// The range parsers are pure protocol logic, shared with the node and fuzzed there; the handlers
// keep calling them through this module.
pub use flotilla_protocol::range::{
    ContentRangeError, RangeAnswer, parse_content_range, parse_range,
};

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
