//! oras (the OCI artifacts SDK, PyPI `oras`) and python-dxf, driven by tests/clients/oras_dxf.py:
//! artifacts pushed with a `subject` are found through `/v2/<name>/referrers/<digest>` with the
//! right descriptors, filtered by `artifactType`; everything pulls back byte for byte; tags list,
//! paginated. (oras-py has no referrers call, so the API is queried here directly.)

use serde_json::{Value, json};

use super::get;
use super::registry::TestRegistry;
use crate::support::{require_tool, run};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The referrers of `subject`, checked to be an OCI index.
fn referrers(r: &TestRegistry, subject: &str, artifact_type: Option<&str>) -> (Value, bool) {
    let filter = artifact_type.map_or(String::new(), |t| format!("?artifactType={t}"));
    let a = get(
        &format!("{}/v2/oras/artifact/referrers/{subject}{filter}", r.url()),
        None,
    );
    assert_eq!(a.status, 200, "referrers of {subject}{filter}");
    assert_eq!(
        a.header("content-type").map(|c| c.starts_with(OCI_INDEX)),
        Some(true),
        "referrers Content-Type"
    );
    let index = a.json();
    assert_eq!(index["schemaVersion"], 2, "{index}");
    assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
    let applied = a.header("oci-filters-applied") == Some("artifactType");
    (index, applied)
}

/// `manifests` of an index, sorted by digest (the spec leaves the order open).
fn sorted(index: &Value) -> Vec<Value> {
    let mut v = index["manifests"].as_array().cloned().unwrap_or_default();
    v.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    v
}

#[test]
fn oras_artifacts_referrers_and_dxf() {
    require_tool("python3");
    // A missing module must fail loudly, like a missing tool.
    run("python3", &["-c", "import oras.client, dxf, requests"]);
    let r = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/oras_dxf.py");
    let out = run(
        "python3",
        &[script, &r.host(), &tmp.path().display().to_string()],
    );
    let seen: Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {out}"));
    let subject = seen["subject"]["digest"].as_str().unwrap();

    r.assert_tags(&seen["oras_tags"], &["sbom", "v1"], "oras get_tags");
    let dxf_tags = ["t1", "t2", "t3", "t4", "t5"];
    r.assert_tags(
        &seen["dxf"]["tags"],
        &dxf_tags,
        "dxf list_aliases, 2 a page",
    );

    // The stored SBOM names its subject.
    let sbom = get(
        &format!(
            "{}/v2/oras/artifact/manifests/{}",
            r.url(),
            seen["sbom"]["digest"].as_str().unwrap()
        ),
        Some(OCI_MANIFEST),
    );
    assert_eq!(sbom.status, 200);
    assert_eq!(sbom.json()["subject"]["digest"], subject);

    if !r.has_referrers_api() {
        eprintln!("the target predates the referrers API: referrers not checked");
        return;
    }
    for pushed in ["sbom", "signature"] {
        assert_eq!(
            seen[pushed]["oci_subject"], subject,
            "OCI-Subject answering the {pushed} push: {seen}"
        );
    }
    let sbom_desc = json!({
        "mediaType": OCI_MANIFEST,
        "digest": seen["sbom"]["digest"],
        "size": seen["sbom"]["size"],
        "artifactType": "application/vnd.example.sbom",
        "annotations": {"org.example.kind": "sbom"},
    });
    let sig_desc = json!({
        "mediaType": OCI_MANIFEST,
        "digest": seen["signature"]["digest"],
        "size": seen["signature"]["size"],
        "artifactType": "application/vnd.example.signature",
        "annotations": {"org.example.signer": "test"},
    });
    let mut want = vec![sbom_desc.clone(), sig_desc];
    want.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));

    let (all, _) = referrers(&r, subject, None);
    assert_eq!(sorted(&all), want, "referrers of the subject");
    let (only_sbom, applied) = referrers(&r, subject, Some("application/vnd.example.sbom"));
    assert_eq!(
        sorted(&only_sbom),
        vec![sbom_desc],
        "filtered by artifactType"
    );
    assert!(applied, "no `OCI-Filters-Applied: artifactType`");
    let (none, _) = referrers(&r, seen["sbom"]["digest"].as_str().unwrap(), None);
    assert_eq!(
        sorted(&none),
        Vec::<Value>::new(),
        "the SBOM has no referrers"
    );
}
