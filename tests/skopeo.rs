//! skopeo and umoci: images built locally with umoci are copied into the gateway and back with
//! skopeo, in OCI format, in Docker v2s2 format and as a two-platform index; bytes and digests must
//! come back identical.

use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::support::{Gateway, noise, require_tool, run};

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Writes `n` deterministic pseudo-random bytes.
fn write_noise(path: &Path, n: usize, seed: u64) {
    std::fs::write(path, noise(n, seed)).unwrap();
}

/// An OCI layout at `layout` with image `tag`: two layers (a text file, then a few MiB of noise).
fn build_image(layout: &Path, tag: &str, arch: &str, seed: u64) {
    let work = layout.parent().unwrap().join(format!("src-{tag}"));
    std::fs::create_dir_all(work.join("a")).unwrap();
    std::fs::create_dir_all(work.join("b")).unwrap();
    std::fs::write(work.join("a/hello.txt"), format!("hello from {tag}\n")).unwrap();
    write_noise(&work.join("b/noise.bin"), 3 << 20, seed);
    let img = format!("{}:{tag}", layout.display());
    if !layout.join("index.json").exists() {
        run(
            "umoci",
            &["init", "--layout", &layout.display().to_string()],
        );
    }
    run("umoci", &["new", "--image", &img]);
    run(
        "umoci",
        &[
            "config",
            "--image",
            &img,
            "--architecture",
            arch,
            "--os",
            "linux",
        ],
    );
    run(
        "umoci",
        &[
            "insert",
            "--image",
            &img,
            &work.join("a").display().to_string(),
            "/etc/flotilla",
        ],
    );
    run(
        "umoci",
        &[
            "insert",
            "--image",
            &img,
            &work.join("b").display().to_string(),
            "/data",
        ],
    );
}

/// The manifest descriptor tagged `tag` in an OCI layout's index.json.
fn layout_descriptor(layout: &Path, tag: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
        .clone()
}

fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let b = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert_eq!(
        sha256_hex(&b),
        hex,
        "blob {digest} in {} does not verify",
        layout.display()
    );
    b
}

/// Every blob reachable from manifest `digest` in `a` is present, byte for byte, in `b`.
fn assert_same_tree(a: &Path, b: &Path, digest: &str) {
    let m = layout_blob(a, digest);
    assert_eq!(layout_blob(b, digest), m, "manifest {digest} differs");
    let v: Value = serde_json::from_slice(&m).unwrap();
    let mut children: Vec<String> = Vec::new();
    if let Some(c) = v["config"]["digest"].as_str() {
        children.push(c.to_owned());
    }
    for l in v["layers"].as_array().into_iter().flatten() {
        children.push(l["digest"].as_str().unwrap().to_owned());
    }
    for d in &children {
        assert_eq!(layout_blob(a, d), layout_blob(b, d), "blob {d} differs");
    }
    for child in v["manifests"].as_array().into_iter().flatten() {
        assert_same_tree(a, b, child["digest"].as_str().unwrap());
    }
}

fn raw_digest(reference: &str) -> String {
    let raw = run(
        "skopeo",
        &["inspect", "--tls-verify=false", "--raw", reference],
    );
    format!("sha256:{}", sha256_hex(raw.as_bytes()))
}

#[test]
fn oci_image_round_trip() {
    require_tool("skopeo");
    require_tool("umoci");
    let g = Gateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "v1", "amd64", 1);
    let desc = layout_descriptor(&src, "v1");
    let digest = desc["digest"].as_str().unwrap();
    let remote = format!("docker://{}/skopeo/oci-image:v1", g.host());

    run(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &remote,
        ],
    );
    assert_eq!(
        raw_digest(&remote),
        digest,
        "the registry changed the manifest"
    );

    let back = tmp.path().join("back");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &remote,
            &format!("oci:{}:v1", back.display()),
        ],
    );
    assert_eq!(layout_descriptor(&back, "v1")["digest"], digest);
    assert_same_tree(&src, &back, digest);

    let tags: Value = serde_json::from_str(&run(
        "skopeo",
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/skopeo/oci-image", g.host()),
        ],
    ))
    .unwrap();
    assert_eq!(tags["Tags"], json!(["v1"]));

    run(
        "skopeo",
        &[
            "delete",
            "--tls-verify=false",
            &format!("docker://{}/skopeo/oci-image@{digest}", g.host()),
        ],
    );
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", &remote])
        .output()
        .unwrap();
    assert!(!out.status.success(), "deleted manifest still served");
}

#[test]
fn docker_v2s2_round_trip() {
    require_tool("skopeo");
    require_tool("umoci");
    let g = Gateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "v1", "amd64", 2);
    let remote = format!("docker://{}/skopeo/v2s2:v1", g.host());
    run(
        "skopeo",
        &[
            "copy",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &remote,
        ],
    );
    let raw = run(
        "skopeo",
        &["inspect", "--tls-verify=false", "--raw", &remote],
    );
    let m: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let digest = format!("sha256:{}", sha256_hex(raw.as_bytes()));

    // Pull into a `dir:` copy: the manifest bytes and every blob must verify.
    let dir = tmp.path().join("dir");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &remote,
            &format!("dir:{}", dir.display()),
        ],
    );
    let pulled = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&pulled)), digest);
    let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    blobs.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for d in blobs {
        let hex = d.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(dir.join(hex)).unwrap();
        assert_eq!(sha256_hex(&bytes), hex);
    }
    // The layers are the same bytes umoci made (only the manifest format changed).
    for l in m["layers"].as_array().unwrap() {
        layout_blob(&src, l["digest"].as_str().unwrap());
    }
}

#[test]
fn two_platform_index_round_trip() {
    require_tool("skopeo");
    require_tool("umoci");
    let g = Gateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "amd", "amd64", 3);
    build_image(&src, "arm", "arm64", 4);
    let platform = |arch: &str| json!({"architecture": arch, "os": "linux"});
    let mut entries = Vec::new();
    for (tag, arch) in [("amd", "amd64"), ("arm", "arm64")] {
        let mut d = layout_descriptor(&src, tag);
        d.as_object_mut().unwrap().remove("annotations");
        d["platform"] = platform(arch);
        entries.push(d);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let index_hex = sha256_hex(&index);
    std::fs::write(src.join("blobs/sha256").join(&index_hex), &index).unwrap();
    let mut layout: Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    layout["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{index_hex}"),
        "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }));
    std::fs::write(src.join("index.json"), serde_json::to_vec(&layout).unwrap()).unwrap();

    let remote = format!("docker://{}/skopeo/multi:v1", g.host());
    run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", src.display()),
            &remote,
        ],
    );
    assert_eq!(
        raw_digest(&remote),
        format!("sha256:{index_hex}"),
        "index digest changed"
    );

    let back = tmp.path().join("back");
    run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &remote,
            &format!("oci:{}:multi", back.display()),
        ],
    );
    assert_eq!(
        layout_descriptor(&back, "multi")["digest"],
        format!("sha256:{index_hex}")
    );
    assert_same_tree(&src, &back, &format!("sha256:{index_hex}"));
}
