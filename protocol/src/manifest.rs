//! OCI and Docker manifests: media types, parsing, validation, and what a manifest refers to.
//!
//! A registry stores manifests as the exact bytes it was given (the digest covers those bytes), so
//! this module never re-serialises a manifest: it parses one to learn its media type, the blobs and
//! child manifests it references (which must exist before it is accepted), its `subject` (for the
//! referrers API) and its artifact type.
//!
//! Accepted kinds: OCI image manifest, OCI image index, Docker schema2 manifest and Docker manifest
//! list. Docker schema1 is refused (no client of this decade needs it and it cannot be verified the
//! same way).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, DigestError};

/// Media type strings.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker schema 1 (refused).
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    /// Docker schema 1, signed (refused).
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    /// The OCI empty descriptor's media type (`{}` config of artifacts).
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

    /// Every manifest media type the registry accepts.
    pub const ACCEPTED: [&str; 4] = [
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ];

    /// Whether `mt` is an index or list (its references are manifests, not blobs).
    pub fn is_index(mt: &str) -> bool {
        mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
    }
}

/// A content descriptor as it appears in manifests and in the referrers index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Where else the content can be fetched (foreign layers); such blobs need not be in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Embedded content (base64), rarely used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The artifact type of the referenced manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Platform of an index entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("manifest is not valid JSON of the expected shape: {0}")]
    Json(String),
    /// `schemaVersion` missing or not 2.
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    /// The body's `mediaType` and the request's Content-Type disagree.
    #[error("manifest mediaType {body:?} does not match Content-Type {header:?}")]
    MediaTypeMismatch {
        /// The Content-Type header.
        header: String,
        /// The body's `mediaType` field.
        body: String,
    },
    /// A media type this registry does not store (schema1, unknown types).
    #[error("unsupported manifest media type {0:?}")]
    Unsupported(String),
    /// A required field is missing.
    #[error("manifest lacks required field {0:?}")]
    MissingField(&'static str),
    /// A descriptor with an invalid digest.
    #[error("descriptor has an invalid digest: {0}")]
    BadDigest(#[from] DigestError),
}

/// What the registry needs to know about a manifest it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The effective media type (body `mediaType`, else the Content-Type, else inferred).
    pub media_type: String,
    /// sha256 of the exact bytes.
    pub digest: Digest,
    /// Blobs that must be present in the repository: config and layers, without foreign layers
    /// (descriptors that carry `urls`).
    pub blobs: Vec<Descriptor>,
    /// Child manifests (indexes and lists only); each must be present in the repository.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to, for the referrers API.
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for image manifests without one the config's media type (as the
    /// distribution spec's referrers section requires).
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<BTreeMap<String, String>>,
}

impl ParsedManifest {
    /// The descriptor under which this manifest is listed by `GET /v2/<name>/referrers/<subject>`.
    pub fn referrer_descriptor(&self, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size,
            urls: None,
            annotations: self.annotations.clone(),
            data: None,
            artifact_type: self.artifact_type.clone(),
            platform: None,
        }
    }
}

/// The superset of fields of all accepted manifest kinds.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // Present only in schema1, used to give a precise refusal.
    fs_layers: Option<serde_json::Value>,
}

/// Strips parameters (`; charset=utf-8`) and whitespace from a Content-Type value.
fn essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Parses and validates a manifest pushed with the given Content-Type.
///
/// # Errors
/// A [`ManifestError`] saying what is wrong; the registry answers it as `MANIFEST_INVALID`.
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ParsedManifest, ManifestError> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let header = content_type.map(essence).filter(|h| !h.is_empty());
    if raw.fs_layers.is_some()
        || header.is_some_and(|h| {
            h == media_type::DOCKER_SCHEMA1 || h == media_type::DOCKER_SCHEMA1_SIGNED
        })
    {
        return Err(ManifestError::Unsupported(
            media_type::DOCKER_SCHEMA1.to_owned(),
        ));
    }
    match &raw.schema_version {
        Some(v) if v.as_u64() == Some(2) => {}
        _ => return Err(ManifestError::SchemaVersion),
    }
    // Generic JSON Content-Types carry no information; clients such as older tools send them.
    let header = header.filter(|h| *h != "application/json" && *h != "application/octet-stream");
    let media_type = match (&raw.media_type, header) {
        (Some(body_mt), Some(h)) if body_mt != h => {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.to_owned(),
                body: body_mt.clone(),
            });
        }
        (Some(body_mt), _) => body_mt.clone(),
        (None, Some(h)) => h.to_owned(),
        // Neither says: OCI allows an absent mediaType, so infer from the shape.
        (None, None) if raw.manifests.is_some() => media_type::OCI_INDEX.to_owned(),
        (None, None) => media_type::OCI_MANIFEST.to_owned(),
    };
    if !media_type::ACCEPTED.contains(&media_type.as_str()) {
        return Err(ManifestError::Unsupported(media_type));
    }
    let digest = Digest::sha256_of(body);
    let (blobs, manifests, artifact_type) = if media_type::is_index(&media_type) {
        let manifests = raw
            .manifests
            .ok_or(ManifestError::MissingField("manifests"))?;
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Json(
                "an index has no config or layers".into(),
            ));
        }
        (Vec::new(), manifests, raw.artifact_type)
    } else {
        let config = raw.config.ok_or(ManifestError::MissingField("config"))?;
        let layers = raw.layers.ok_or(ManifestError::MissingField("layers"))?;
        if raw.manifests.is_some() {
            return Err(ManifestError::Json(
                "an image manifest has no manifests list".into(),
            ));
        }
        let artifact_type = raw
            .artifact_type
            .or_else(|| Some(config.media_type.clone()));
        let blobs = std::iter::once(config)
            .chain(layers)
            .filter(|d| d.urls.as_ref().is_none_or(|u| u.is_empty()))
            .collect();
        (blobs, Vec::new(), artifact_type)
    };
    if media_type.starts_with("application/vnd.docker") && raw.subject.is_some() {
        return Err(ManifestError::Json(
            "Docker manifests cannot carry a subject".into(),
        ));
    }
    Ok(ParsedManifest {
        media_type,
        digest,
        blobs,
        manifests,
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(s: &str) -> String {
        Digest::sha256_of(s.as_bytes()).to_string()
    }

    fn image(extra: serde_json::Value) -> Vec<u8> {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("c"), "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l1"), "size": 2},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l2"), "size": 3,
                 "urls": ["https://example.invalid/l2"]}
            ]
        });
        if let (Some(o), Some(e)) = (m.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn image_manifest_blobs_skip_foreign_layers() {
        let body = image(json!({}));
        let p = parse_manifest(Some(media_type::OCI_MANIFEST), &body).unwrap();
        assert_eq!(p.media_type, media_type::OCI_MANIFEST);
        assert_eq!(p.digest, Digest::sha256_of(&body));
        let got: Vec<_> = p.blobs.iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(got, vec![d("c"), d("l1")]);
        assert!(p.manifests.is_empty());
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn subject_and_artifact_type() {
        let body = image(json!({
            "artifactType": "application/vnd.example.sbom",
            "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": d("s"), "size": 10},
            "annotations": {"org.example": "x"}
        }));
        let p = parse_manifest(None, &body).unwrap();
        assert_eq!(p.subject.as_ref().unwrap().digest.to_string(), d("s"));
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        let r = p.referrer_descriptor(body.len() as u64);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["artifactType"], "application/vnd.example.sbom");
        assert_eq!(j["annotations"]["org.example"], "x");
        assert!(j.get("urls").is_none());
    }

    #[test]
    fn index_and_docker_list() {
        for mt in [media_type::OCI_INDEX, media_type::DOCKER_MANIFEST_LIST] {
            let body = serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": mt,
                "manifests": [{"mediaType": media_type::OCI_MANIFEST, "digest": d("m"), "size": 5,
                               "platform": {"architecture": "amd64", "os": "linux"}}]
            }))
            .unwrap();
            let p = parse_manifest(Some(mt), &body).unwrap();
            assert_eq!(p.manifests.len(), 1);
            assert!(p.blobs.is_empty());
        }
    }

    #[test]
    fn media_type_from_header_or_shape() {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "config": {"mediaType": "x", "digest": d("c"), "size": 1},
            "layers": []
        }))
        .unwrap();
        assert_eq!(
            parse_manifest(Some(media_type::DOCKER_MANIFEST), &body)
                .unwrap()
                .media_type,
            media_type::DOCKER_MANIFEST
        );
        assert_eq!(
            parse_manifest(Some("application/json; charset=utf-8"), &body)
                .unwrap()
                .media_type,
            media_type::OCI_MANIFEST
        );
        let idx = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": []})).unwrap();
        assert_eq!(
            parse_manifest(None, &idx).unwrap().media_type,
            media_type::OCI_INDEX
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            parse_manifest(None, b"not json"),
            Err(ManifestError::Json(_))
        ));
        assert!(matches!(
            parse_manifest(None, b"[]"),
            Err(ManifestError::Json(_))
        ));
        let no_version = br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
        assert!(parse_manifest(None, no_version).is_err());
        assert!(matches!(
            parse_manifest(Some(media_type::OCI_INDEX), &image(json!({}))),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            parse_manifest(None, br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Unsupported(_))
        ));
        assert!(matches!(
            parse_manifest(None, &image(json!({"mediaType": "application/x-nope"}))),
            Err(ManifestError::Unsupported(_))
        ));
        let bad_digest =
            image(json!({"config": {"mediaType": "x", "digest": "sha256:zz", "size": 1}}));
        assert!(matches!(
            parse_manifest(None, &bad_digest),
            Err(ManifestError::Json(_))
        ));
        let neg = image(json!({"config": {"mediaType": "x", "digest": d("c"), "size": -1}}));
        assert!(parse_manifest(None, &neg).is_err());
        let missing = serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST, "layers": []}),
        )
        .unwrap();
        assert_eq!(
            parse_manifest(None, &missing),
            Err(ManifestError::MissingField("config"))
        );
        let docker_subject = image(json!({
            "mediaType": media_type::DOCKER_MANIFEST,
            "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": d("s"), "size": 10}
        }));
        assert!(parse_manifest(None, &docker_subject).is_err());
    }
}
