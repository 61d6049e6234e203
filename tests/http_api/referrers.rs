//! The referrers API (spec "Pushing Manifests with Subject", "Listing Referrers", end-12a/12b):
//! `OCI-Subject` on push, the listed descriptors, `artifactType` filtering, unknown subjects,
//! subjects pushed after their referrers, repository scoping, and deletion.

use serde_json::{Value, json};

use super::util::{
    Api, Image, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Resp, blob, desc, manifest_bytes, sha256,
};

const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG: &str = "application/vnd.example.signature.v1";
const CUSTOM_CONFIG: &str = "application/vnd.example.config.v1+json";
const BUNDLE: &str = "application/vnd.example.bundle.v1";

/// A referrer as pushed: bytes, media type, and what its referrers descriptor must say.
struct Referrer {
    bytes: Vec<u8>,
    media_type: &'static str,
    artifact_type: Option<&'static str>,
    annotations: Value,
}

impl Referrer {
    fn digest(&self) -> String {
        sha256(&self.bytes)
    }
}

/// An artifact manifest (empty config) with `artifactType` and `subject`; its blobs pushed.
async fn artifact(
    api: &Api,
    repo: &str,
    subject: &Value,
    artifact_type: &'static str,
    seed: u64,
) -> Referrer {
    api.push_blob(repo, b"{}").await;
    let payload = blob(seed, 512);
    api.push_blob(repo, &payload).await;
    let annotations = json!({
        "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
        "org.example.seed": seed.to_string(),
    });
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": desc(OCI_EMPTY, b"{}"),
        "layers": [desc("application/octet-stream", &payload)],
        "subject": subject,
        "annotations": annotations,
    });
    Referrer {
        bytes: manifest_bytes(&v),
        media_type: OCI_MANIFEST,
        artifact_type: Some(artifact_type),
        annotations,
    }
}

/// Pushes `r` under `reference`, expecting `201` and `OCI-Subject: <subject>`.
async fn push(api: &Api, repo: &str, reference: &str, r: &Referrer, subject: &str) {
    let res = api
        .put_manifest(repo, reference, r.media_type, &r.bytes)
        .await;
    res.expect(201);
    assert_eq!(res.digest(), r.digest());
    // "a registry implementation that supports the referrers API MUST respond with the response
    // header OCI-Subject: <subject digest>".
    assert_eq!(
        res.header("oci-subject"),
        Some(subject),
        "{}: OCI-Subject on a manifest with a subject",
        res.what
    );
}

/// `GET /v2/<repo>/referrers/<digest>[?artifactType=…]`, checked to be the spec's image index.
async fn referrers(
    api: &Api,
    repo: &str,
    subject: &str,
    filter: Option<&str>,
) -> (Resp, Vec<Value>) {
    let mut rb = api.req(
        reqwest::Method::GET,
        &format!("/v2/{repo}/referrers/{subject}"),
    );
    if let Some(t) = filter {
        rb = rb.query(&[("artifactType", t)]);
    }
    let r = api.send(rb).await;
    r.expect(200);
    assert_eq!(
        super::util::content_type(&r),
        OCI_INDEX,
        "{}: Content-Type MUST be the image index type",
        r.what
    );
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2, "{}: {v}", r.what);
    assert_eq!(v["mediaType"], OCI_INDEX, "{}: {v}", r.what);
    let list = v["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: `manifests` must be a list: {v}", r.what))
        .clone();
    (r, list)
}

/// Asserts that `list` describes exactly `want` (in any order), field by field.
fn assert_lists(list: &[Value], want: &[&Referrer]) {
    let mut got: Vec<&Value> = list.iter().collect();
    got.sort_by_key(|d| d["digest"].as_str().unwrap_or_default().to_owned());
    let mut want: Vec<&&Referrer> = want.iter().collect();
    want.sort_by_key(|r| r.digest());
    let digests: Vec<&Value> = got.iter().map(|d| &d["digest"]).collect();
    assert_eq!(got.len(), want.len(), "referrers {digests:?}");
    for (d, r) in got.iter().zip(want) {
        assert_eq!(d["digest"], r.digest(), "referrers {digests:?}");
        assert_eq!(d["mediaType"], r.media_type, "{d}");
        assert_eq!(d["size"], r.bytes.len(), "{d}");
        match r.artifact_type {
            Some(t) => assert_eq!(d["artifactType"], t, "{d}"),
            // "If the artifactType is empty or missing in an index, the artifactType MUST be
            // omitted."
            None => assert!(
                d.get("artifactType").is_none(),
                "{d}: artifactType not omitted"
            ),
        }
        // "The descriptors MUST include annotations from the image manifest or index."
        assert_eq!(d["annotations"], r.annotations, "{d}");
    }
}

#[tokio::test]
async fn referrers_are_listed_and_filtered() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 1).await;
    let subject = img.descriptor();
    let sbom = artifact(&api, "repo", &subject, SBOM, 2).await;
    let sig = artifact(&api, "repo", &subject, SIG, 3).await;
    push(&api, "repo", &sbom.digest(), &sbom, &img.digest).await;
    push(&api, "repo", "sig-tag", &sig, &img.digest).await;

    // An image manifest without artifactType: listed with its config's media type.
    let cfg = br#"{"custom":true}"#;
    api.push_blob("repo", cfg).await;
    let annotations = json!({ "kind": "custom" });
    let plain = Referrer {
        bytes: manifest_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(CUSTOM_CONFIG, cfg),
            "layers": [],
            "subject": subject,
            "annotations": annotations,
        })),
        media_type: OCI_MANIFEST,
        artifact_type: Some(CUSTOM_CONFIG),
        annotations,
    };
    push(&api, "repo", &plain.digest(), &plain, &img.digest).await;

    // An index with a subject and no artifactType.
    let annotations = json!({ "org.opencontainers.image.created": "2023-01-01T07:21:33Z" });
    let index = Referrer {
        bytes: manifest_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [desc(OCI_MANIFEST, &sbom.bytes)],
            "subject": subject,
            "annotations": annotations,
        })),
        media_type: OCI_INDEX,
        artifact_type: None,
        annotations,
    };
    push(&api, "repo", &index.digest(), &index, &img.digest).await;

    // An index that does declare an artifactType (image-spec 1.1) is listed with it.
    let annotations = json!({ "bundle": "yes" });
    let bundle = Referrer {
        bytes: manifest_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": BUNDLE,
            "manifests": [desc(OCI_MANIFEST, &sig.bytes)],
            "subject": subject,
            "annotations": annotations,
        })),
        media_type: OCI_INDEX,
        artifact_type: Some(BUNDLE),
        annotations,
    };
    push(&api, "repo", &bundle.digest(), &bundle, &img.digest).await;

    let (r, list) = referrers(&api, "repo", &img.digest, None).await;
    assert!(
        r.header("oci-filters-applied").is_none(),
        "filters applied without a filter"
    );
    assert_lists(&list, &[&sbom, &sig, &plain, &index, &bundle]);

    // "If filtering is requested and applied, the response MUST include a header
    // OCI-Filters-Applied: artifactType".
    for (t, want) in [
        (SBOM, vec![&sbom]),
        (SIG, vec![&sig]),
        (CUSTOM_CONFIG, vec![&plain]),
        (BUNDLE, vec![&bundle]),
    ] {
        let (r, list) = referrers(&api, "repo", &img.digest, Some(t)).await;
        assert_eq!(
            r.header("oci-filters-applied"),
            Some("artifactType"),
            "{}",
            r.what
        );
        assert_lists(&list, &want);
    }
    let (r, list) = referrers(&api, "repo", &img.digest, Some("application/vnd.none")).await;
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert!(
        list.is_empty(),
        "filter matched nothing yet listed {list:?}"
    );

    // Manifests without a subject never appear; the subject itself has no referrers.
    let (_, list) = referrers(&api, "repo", &sbom.digest(), None).await;
    assert!(list.is_empty());
}

#[tokio::test]
async fn unknown_subject_is_an_empty_index() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 4).await;
    // "If a query results in no matching referrers, an empty manifest list MUST be returned."
    // and "the registry MUST NOT return a 404 Not Found to a referrers API request".
    for d in [
        img.digest.clone(),
        Image::new(5).digest,
        sha256(b"not a manifest"),
    ] {
        let (_, list) = referrers(&api, "repo", &d, None).await;
        assert!(list.is_empty(), "{d}: {list:?}");
        let (_, list) = referrers(&api, "repo", &d, Some(SBOM)).await;
        assert!(list.is_empty(), "{d}: {list:?}");
    }
    let (_, list) = referrers(&api, "never-pushed", &img.digest, None).await;
    assert!(list.is_empty());
}

#[tokio::test]
async fn referrer_may_be_pushed_before_its_subject() {
    // "A registry MUST initially accept an otherwise valid manifest with a subject field that
    // references a manifest that does not exist in the repository".
    let api = Api::start();
    let later = Image::new(6);
    let sig = artifact(&api, "repo", &later.descriptor(), SIG, 7).await;
    push(&api, "repo", "early-sig", &sig, &later.digest).await;
    let (_, list) = referrers(&api, "repo", &later.digest, None).await;
    assert_lists(&list, &[&sig]);
    let pushed = api.push_image("repo", "v1", 6).await;
    assert_eq!(pushed.digest, later.digest);
    let (_, list) = referrers(&api, "repo", &later.digest, None).await;
    assert_lists(&list, &[&sig]);
    // The referrer is an ordinary manifest too.
    api.assert_manifest("repo", "early-sig", OCI_MANIFEST, &sig.bytes)
        .await;
}

#[tokio::test]
async fn referrers_are_scoped_to_their_repository() {
    // "Each descriptor is of an image manifest or index in the same <name> namespace".
    let api = Api::start();
    let img = api.push_image("a", "v1", 8).await;
    api.push_image("b", "v1", 8).await;
    let sbom = artifact(&api, "a", &img.descriptor(), SBOM, 9).await;
    push(&api, "a", &sbom.digest(), &sbom, &img.digest).await;
    let (_, list) = referrers(&api, "a", &img.digest, None).await;
    assert_lists(&list, &[&sbom]);
    let (_, list) = referrers(&api, "b", &img.digest, None).await;
    assert!(list.is_empty(), "a's referrer listed under b: {list:?}");
}

#[tokio::test]
async fn deleting_a_referrer_removes_it() {
    let api = Api::start();
    let img = api.push_image("repo", "v1", 10).await;
    let sbom = artifact(&api, "repo", &img.descriptor(), SBOM, 11).await;
    let sig = artifact(&api, "repo", &img.descriptor(), SIG, 12).await;
    push(&api, "repo", "sbom", &sbom, &img.digest).await;
    push(&api, "repo", "sig", &sig, &img.digest).await;
    let (_, list) = referrers(&api, "repo", &img.digest, None).await;
    assert_lists(&list, &[&sbom, &sig]);

    api.delete(&format!("/v2/repo/manifests/{}", sbom.digest()))
        .await
        .expect(202);
    let (_, list) = referrers(&api, "repo", &img.digest, None).await;
    assert_lists(&list, &[&sig]);
    let (_, list) = referrers(&api, "repo", &img.digest, Some(SBOM)).await;
    assert!(
        list.is_empty(),
        "deleted referrer still listed under its filter"
    );

    // Deleting only a tag does not remove the manifest, so it stays a referrer.
    api.delete("/v2/repo/manifests/sig").await.expect(202);
    let (_, list) = referrers(&api, "repo", &img.digest, None).await;
    assert_lists(&list, &[&sig]);

    // Pushed again, it is listed again (once).
    push(&api, "repo", &sbom.digest(), &sbom, &img.digest).await;
    push(&api, "repo", &sbom.digest(), &sbom, &img.digest).await;
    let (_, list) = referrers(&api, "repo", &img.digest, None).await;
    assert_lists(&list, &[&sbom, &sig]);
}

#[tokio::test]
async fn referrers_survive_a_restart() {
    let mut api = Api::start();
    let img = api.push_image("repo", "v1", 13).await;
    let sbom = artifact(&api, "repo", &img.descriptor(), SBOM, 14).await;
    let sig = artifact(&api, "repo", &img.descriptor(), SIG, 15).await;
    push(&api, "repo", &sbom.digest(), &sbom, &img.digest).await;
    push(&api, "repo", &sig.digest(), &sig, &img.digest).await;
    api.delete(&format!("/v2/repo/manifests/{}", sig.digest()))
        .await
        .expect(202);
    api.restart();
    let (_, list) = referrers(&api, "repo", &img.digest, None).await;
    assert_lists(&list, &[&sbom]);
}
