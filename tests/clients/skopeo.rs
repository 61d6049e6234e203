//! skopeo and umoci: images built locally with umoci are copied into the registry and back with
//! skopeo, in OCI format, in Docker v2s2 format and as a two-platform index; manifests and every
//! blob must come back byte-identical. Also `skopeo inspect`, `list-tags` and `delete`.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::registry::TestRegistry;
use super::{digest_of, sha256_hex};
use crate::support::{noise, require_tool, run};

/// An image `tag` in the OCI layout at `layout` (created if needed): two layers, a small text
/// file and then 3 MiB of noise, with `arch` in the config.
pub(super) fn build_image(layout: &Path, tag: &str, arch: &str, seed: u64) {
    let work = layout.parent().unwrap().join(format!("src-{tag}"));
    std::fs::create_dir_all(work.join("a")).unwrap();
    std::fs::create_dir_all(work.join("b")).unwrap();
    std::fs::write(work.join("a/hello.txt"), format!("hello from {tag}\n")).unwrap();
    std::fs::write(work.join("b/noise.bin"), noise(3 << 20, seed)).unwrap();
    let layout_s = layout.display().to_string();
    let img = format!("{layout_s}:{tag}");
    if !layout.join("index.json").exists() {
        run("umoci", &["init", "--layout", &layout_s]);
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
    for (dir, dest) in [("a", "/etc/flotilla"), ("b", "/data")] {
        let src = work.join(dir).display().to_string();
        run("umoci", &["insert", "--image", &img, &src, dest]);
    }
}

/// The descriptor tagged `tag` in an OCI layout's index.json.
pub(super) fn layout_descriptor(layout: &Path, tag: &str) -> Value {
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

/// A blob of an OCI layout, checked against its name.
pub(super) fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let b = std::fs::read(layout.join("blobs/sha256").join(hex))
        .unwrap_or_else(|e| panic!("blob {digest} missing from {}: {e}", layout.display()));
    assert_eq!(sha256_hex(&b), hex, "blob {digest} in {}", layout.display());
    b
}

/// Every blob reachable from manifest or index `digest` in layout `a` is in layout `b`, byte for
/// byte. Returns how many blobs (manifests included) were compared.
pub(super) fn assert_same_tree(a: &Path, b: &Path, digest: &str) -> usize {
    let m = layout_blob(a, digest);
    assert_eq!(layout_blob(b, digest), m, "manifest {digest} differs");
    let v: Value = serde_json::from_slice(&m).unwrap();
    let mut n = 1;
    let config = v["config"]["digest"].as_str().map(str::to_owned);
    let layers = v["layers"].as_array().into_iter().flatten();
    for d in config
        .into_iter()
        .chain(layers.map(|l| l["digest"].as_str().unwrap().to_owned()))
    {
        assert_eq!(layout_blob(a, &d), layout_blob(b, &d), "blob {d} differs");
        n += 1;
    }
    for child in v["manifests"].as_array().into_iter().flatten() {
        n += assert_same_tree(a, b, child["digest"].as_str().unwrap());
    }
    n
}

/// `skopeo inspect --raw`: the manifest bytes exactly as the registry serves them.
fn inspect_raw(reference: &str) -> String {
    run(
        "skopeo",
        &["inspect", "--tls-verify=false", "--raw", reference],
    )
}

/// `skopeo copy … --digestfile`: returns the digest skopeo says it pushed.
pub(super) fn copy(args: &[&str], tmp: &Path) -> String {
    let file = tmp.join("digestfile");
    let file_s = file.display().to_string();
    let mut all = vec!["copy", "--quiet", "--digestfile", &file_s];
    all.extend_from_slice(args);
    run("skopeo", &all);
    std::fs::read_to_string(&file).unwrap().trim().to_owned()
}

fn list_tags(registry: &TestRegistry, repo: &str) -> Value {
    let out = run(
        "skopeo",
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/{repo}", registry.host()),
        ],
    );
    serde_json::from_str::<Value>(&out).unwrap()["Tags"].clone()
}

pub(super) fn require_tools() {
    require_tool("skopeo");
    require_tool("umoci");
}

#[test]
fn oci_image_round_trip_inspect_tags_delete() {
    require_tools();
    let r = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "v1", "amd64", 1);
    let digest = layout_descriptor(&src, "v1")["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let repo = "skopeo/oci-image";
    let remote = |tag: &str| format!("docker://{}/{repo}:{tag}", r.host());
    let source = format!("oci:{}:v1", src.display());

    for tag in ["v1", "v2"] {
        let pushed = copy(
            &[
                "--preserve-digests",
                "--dest-tls-verify=false",
                &source,
                &remote(tag),
            ],
            tmp.path(),
        );
        assert_eq!(pushed, digest, "skopeo changed the manifest while pushing");
    }
    assert_eq!(
        digest_of(inspect_raw(&remote("v1")).as_bytes()),
        digest,
        "the registry serves other manifest bytes than were pushed"
    );
    let inspected: Value = serde_json::from_str(&run(
        "skopeo",
        &["inspect", "--tls-verify=false", &remote("v2")],
    ))
    .unwrap();
    assert_eq!(inspected["Digest"], digest, "{inspected}");
    assert_eq!(inspected["Architecture"], "amd64", "{inspected}");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(2));

    let back = tmp.path().join("back");
    let pulled = copy(
        &[
            "--preserve-digests",
            "--src-tls-verify=false",
            &remote("v1"),
            &format!("oci:{}:v1", back.display()),
        ],
        tmp.path(),
    );
    assert_eq!(pulled, digest);
    assert_eq!(layout_descriptor(&back, "v1")["digest"], digest);
    assert_eq!(assert_same_tree(&src, &back, &digest), 4);

    // A consumer of the pulled image sees the files that went in.
    let bundle = tmp.path().join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:v1", back.display()),
            &bundle.display().to_string(),
        ],
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/data/noise.bin")).unwrap(),
        noise(3 << 20, 1)
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/etc/flotilla/hello.txt")).unwrap(),
        "hello from v1\n"
    );

    r.assert_tags(&list_tags(&r, repo), &["v1", "v2"], "skopeo list-tags");
    run(
        "skopeo",
        &[
            "delete",
            "--tls-verify=false",
            &format!("docker://{}/{repo}@{digest}", r.host()),
        ],
    );
    for tag in ["v1", "v2"] {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--raw", &remote(tag)])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{tag} still served after its manifest was deleted"
        );
    }
    let left = list_tags(&r, repo);
    assert!(
        left.as_array().is_none_or(Vec::is_empty),
        "tags left after deleting their manifest: {left}"
    );
}

#[test]
fn docker_v2s2_round_trip() {
    require_tools();
    let r = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "v1", "amd64", 2);
    let remote = format!("docker://{}/skopeo/v2s2:v1", r.host());
    let pushed = copy(
        &[
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.display()),
            &remote,
        ],
        tmp.path(),
    );
    let raw = inspect_raw(&remote);
    let m: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        digest_of(raw.as_bytes()),
        pushed,
        "the registry serves other bytes than skopeo pushed"
    );

    // Pull into a `dir:` copy: the manifest bytes and every blob must verify.
    let dir = tmp.path().join("dir");
    let pulled = copy(
        &[
            "--src-tls-verify=false",
            &remote,
            &format!("dir:{}", dir.display()),
        ],
        tmp.path(),
    );
    assert_eq!(pulled, pushed);
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(digest_of(&manifest), pushed);
    let config = m["config"]["digest"].as_str().unwrap();
    let layers: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers.len(), 2);
    for d in std::iter::once(config).chain(layers.iter().copied()) {
        let hex = d.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(dir.join(hex)).unwrap();
        assert_eq!(sha256_hex(&bytes), hex, "pulled blob {d}");
    }
    // Only the manifest format changed: the layers are the bytes umoci made.
    for d in layers {
        let ours = layout_blob(&src, d);
        let theirs = std::fs::read(dir.join(d.strip_prefix("sha256:").unwrap())).unwrap();
        assert!(ours == theirs, "layer {d} changed");
    }
}

#[test]
fn two_platform_index_round_trip() {
    require_tools();
    let r = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build_image(&src, "amd", "amd64", 3);
    build_image(&src, "arm", "arm64", 4);
    let mut entries = Vec::new();
    for (tag, arch) in [("amd", "amd64"), ("arm", "arm64")] {
        let mut d = layout_descriptor(&src, tag);
        d.as_object_mut().unwrap().remove("annotations");
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        entries.push(d);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let index_digest = digest_of(&index);
    std::fs::write(src.join("blobs/sha256").join(sha256_hex(&index)), &index).unwrap();
    let mut layout: Value =
        serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    layout["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": index_digest,
        "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }));
    std::fs::write(src.join("index.json"), serde_json::to_vec(&layout).unwrap()).unwrap();

    let remote = format!("docker://{}/skopeo/multi:v1", r.host());
    let pushed = copy(
        &[
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", src.display()),
            &remote,
        ],
        tmp.path(),
    );
    assert_eq!(pushed, index_digest, "skopeo changed the index");
    assert_eq!(
        inspect_raw(&remote).as_bytes(),
        &index[..],
        "the registry serves another index"
    );
    // Each platform's manifest is served by digest.
    for e in index_children(&index) {
        let by_digest = format!("docker://{}/skopeo/multi@{e}", r.host());
        assert_eq!(digest_of(inspect_raw(&by_digest).as_bytes()), e);
    }

    let back = tmp.path().join("back");
    let pulled = copy(
        &[
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &remote,
            &format!("oci:{}:multi", back.display()),
        ],
        tmp.path(),
    );
    assert_eq!(pulled, index_digest);
    assert_eq!(layout_descriptor(&back, "multi")["digest"], index_digest);
    // The index, two manifests, two configs, four layers.
    assert_eq!(assert_same_tree(&src, &back, &index_digest), 9);
}

fn index_children(index: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(index).unwrap();
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .collect()
}
