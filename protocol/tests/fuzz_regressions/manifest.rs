//! Property of the `manifest` fuzz target (and of the regression tests): `parse_manifest` never
//! panics, with or without a Content-Type; whatever it accepts is named by the sha256 of the exact
//! input bytes and is internally consistent.

use flotilla_protocol::digest::Digest;
use flotilla_protocol::manifest::{Descriptor, ParsedManifest, media_type, parse_manifest};

/// The Content-Types clients actually send, plus the refused schema1 and a parameterised one.
const CONTENT_TYPES: [Option<&str>; 9] = [
    None,
    Some(""),
    Some("application/json"),
    Some(media_type::OCI_MANIFEST),
    Some(media_type::OCI_INDEX),
    Some(media_type::DOCKER_MANIFEST),
    Some(media_type::DOCKER_MANIFEST_LIST),
    Some(media_type::DOCKER_SCHEMA1_SIGNED),
    Some(" application/vnd.oci.image.index.v1+json ; charset=utf-8"),
];

/// Checks the properties above on one input; panics on a violation.
pub fn check(data: &[u8]) {
    let expected = Digest::sha256_of(data);
    for ct in CONTENT_TYPES {
        let Ok(p) = parse_manifest(ct, data) else {
            continue;
        };
        check_parsed(&p, &expected);
        // Pushing the same bytes again under the media type they were accepted as must give
        // the same answer (a client re-pushing what it pulled sends exactly that).
        assert_eq!(parse_manifest(Some(&p.media_type), data).as_ref(), Ok(&p));
        if let Some(ct) = ct.map(|c| c.split(';').next().unwrap_or("").trim())
            && !ct.is_empty()
            && ct != "application/json"
        {
            assert_eq!(p.media_type, ct, "accepted under another media type");
        }
    }
}

fn check_parsed(p: &ParsedManifest, expected: &Digest) {
    assert_eq!(&p.digest, expected, "digest is not the sha256 of the input");
    assert!(media_type::ACCEPTED.contains(&p.media_type.as_str()));
    if media_type::is_index(&p.media_type) {
        assert!(p.blobs.is_empty());
    } else {
        assert!(p.manifests.is_empty());
        assert!(p.artifact_type.is_some(), "image manifests always have one");
    }
    assert!(
        p.blobs
            .iter()
            .all(|b| b.urls.as_ref().is_none_or(Vec::is_empty))
    );
    if p.media_type.starts_with("application/vnd.docker") {
        assert!(p.subject.is_none());
    }
    // What the referrers API will list round-trips through its JSON.
    let d = p.referrer_descriptor(u64::MAX);
    let json = serde_json::to_vec(&d).expect("a descriptor serialises");
    let back: Descriptor = serde_json::from_slice(&json).expect("a descriptor deserialises");
    assert_eq!(back, d);
}
