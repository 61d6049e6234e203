//! The Docker engine as a client: an image built `FROM scratch` (nothing is pulled from anywhere
//! else) is pushed, mounted into a second repository, removed, pulled back, inspected, and read
//! through a container. The daemon treats 127.0.0.0/8 as insecure registries, so plain HTTP
//! works with no daemon configuration, provided the daemon shares this host's loopback.

use std::process::{Command, Output};

use super::registry::TestRegistry;
use super::{digest_of, get, sha256_hex};
use crate::support::{noise, require_tool, run};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Removes the images and containers a test made, even when it fails.
struct Cleanup {
    images: Vec<String>,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

fn docker(args: &[&str]) -> String {
    run("docker", args)
}

fn docker_output(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

/// The daemon must treat loopback as insecure and must reach this test's port: it answers a pull
/// of a missing tag with "not found" from the registry, not with a connection error.
fn preflight(r: &TestRegistry, unique: &str) {
    let cidrs = docker(&[
        "info",
        "--format",
        "{{json .RegistryConfig.InsecureRegistryCIDRs}}",
    ]);
    assert!(
        cidrs.contains("127.0.0.0/8"),
        "the Docker daemon does not treat 127.0.0.0/8 as insecure registries ({cidrs})"
    );
    let probe = format!("{}/flotilla-test/preflight-{unique}:absent", r.host());
    let out = docker_output(&["pull", &probe]);
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(!out.status.success(), "pulled a tag that was never pushed");
    assert!(
        err.contains("not found") || err.contains("manifest unknown"),
        "the Docker daemon cannot reach {} (it must run on this host and share its loopback; \
         a remote DOCKER_HOST or a daemon in another network namespace cannot work): {err}",
        r.host()
    );
}

/// The digest in `docker push` output (`v1: digest: sha256:… size: N`).
fn pushed_digest(out: &str) -> String {
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "digest:" {
            return words.next().unwrap().to_owned();
        }
    }
    panic!("no digest in docker push output:\n{out}")
}

#[test]
fn docker_build_push_mount_rmi_pull_inspect_cp() {
    require_tool("docker");
    let r = TestRegistry::start();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let unique = format!("{}-{}-{nanos}", std::process::id(), r.addr().port());
    preflight(&r, &unique);

    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let motd = format!("pushed through the registry under test {unique}\n");
    let payload = noise(3 << 20, 7);
    std::fs::write(ctx.join("motd"), &motd).unwrap();
    std::fs::write(ctx.join("payload.bin"), &payload).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY motd /etc/motd\nCOPY payload.bin /payload.bin\n",
    )
    .unwrap();

    let path_a = format!("flotilla-test/docker-a-{unique}");
    let path_b = format!("flotilla-test/docker-b-{unique}");
    let image_a = format!("{}/{path_a}:v1", r.host());
    let image_b = format!("{}/{path_b}:v1", r.host());
    let mut cleanup = Cleanup {
        images: vec![image_a.clone(), image_b.clone()],
        containers: Vec::new(),
    };
    // The classic builder needs nothing but the daemon (no buildx plugin, no base image).
    let built = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &image_a, &ctx.display().to_string()])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "docker build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &image_a])
        .trim()
        .to_owned();
    cleanup.images.push(id.clone());

    let digest = pushed_digest(&docker(&["push", &image_a]));

    // The registry serves that manifest under the tag, and every blob it names.
    let m = get(
        &format!("{}/v2/{path_a}/manifests/v1", r.url()),
        Some(DOCKER_MANIFEST),
    );
    assert_eq!(m.status, 200);
    assert_eq!(m.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(digest_of(&m.body), digest, "manifest bytes");
    let manifest = m.json();
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(
        manifest["config"]["digest"], id,
        "config digest is the image id"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{manifest}");
    for d in layers.iter().chain([&manifest["config"]]) {
        let digest = d["digest"].as_str().unwrap();
        let b = get(&format!("{}/v2/{path_a}/blobs/{digest}", r.url()), None);
        assert_eq!(b.status, 200, "GET blob {digest}");
        assert_eq!(b.body.len() as u64, d["size"].as_u64().unwrap());
        assert_eq!(format!("sha256:{}", sha256_hex(&b.body)), digest);
    }

    // A second repository: the daemon mounts the layers from the first instead of re-sending.
    docker(&["tag", &image_a, &image_b]);
    let out_b = docker(&["push", &image_b]);
    assert_eq!(pushed_digest(&out_b), digest);
    assert!(
        out_b.contains(&format!("Mounted from {path_a}")),
        "no cross-repository mount:\n{out_b}"
    );

    docker(&["rmi", &image_a, &image_b]);
    assert!(
        !docker_output(&["image", "inspect", &id]).status.success(),
        "image still present after rmi"
    );

    docker(&["pull", &image_a]);
    let pulled_id = docker(&["image", "inspect", "--format", "{{.Id}}", &image_a]);
    assert_eq!(pulled_id.trim(), id, "pulled image has another id");
    let repo_digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &image_a,
    ]);
    let want = format!("{}/{path_a}@{digest}", r.host());
    assert!(
        repo_digests.contains(&want),
        "RepoDigests {repo_digests} lack {want}"
    );

    // Read the files back out of the pulled image.
    let name = format!("flotilla-test-{unique}");
    cleanup.containers.push(name.clone());
    docker(&["create", "--name", &name, &image_a, "/none"]);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let out_s = out.display().to_string();
    docker(&["cp", &format!("{name}:/payload.bin"), &out_s]);
    docker(&["cp", &format!("{name}:/etc/motd"), &out_s]);
    assert!(std::fs::read(out.join("payload.bin")).unwrap() == payload);
    assert_eq!(std::fs::read_to_string(out.join("motd")).unwrap(), motd);
}
