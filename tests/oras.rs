//! oras (the OCI artifacts SDK, PyPI `oras`) and python-dxf: an artifact with a `subject` is found
//! through the referrers API and pulled back byte for byte (tests/clients/oras_referrers.py).

use crate::support::{Gateway, require_tool, run};

#[test]
fn oras_subject_referrers_and_dxf() {
    require_tool("python3");
    // A missing module must fail loudly, like a missing tool.
    run("python3", &["-c", "import oras, dxf, requests"]);
    let g = Gateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/oras_referrers.py"
    );
    let out = run(
        "python3",
        &[script, &g.host(), &tmp.path().display().to_string()],
    );
    let seen: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("script output is not JSON ({e}): {out}"));
    assert_eq!(
        seen["referrers"].as_array().map(Vec::len),
        Some(1),
        "{seen}"
    );
    assert!(
        seen["dxf_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{seen}"
    );
}
