//! The Docker engine as a client: `docker push`, `docker rmi`, `docker pull`, `docker image
//! inspect` against the gateway, with an image made by `docker import` (nothing is pulled from any
//! other registry). Docker treats 127.0.0.0/8 as insecure registries, so plain HTTP works.

use std::process::Command;

use crate::support::{Gateway, require_tool, run};

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

#[test]
fn docker_push_rmi_pull_inspect() {
    require_tool("docker");
    require_tool("tar");
    let g = Gateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/motd"), "pushed through flotilla\n").unwrap();
    let payload: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("payload.bin"), &payload).unwrap();
    let tar = tmp.path().join("rootfs.tar");
    run(
        "tar",
        &[
            "-C",
            &root.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ],
    );

    let unique = format!("{}-{}", std::process::id(), g.addr.port());
    let repo = format!("{}/flotilla-test/docker-{unique}", g.host());
    let image = format!("{repo}:v1");
    let mut cleanup = Cleanup {
        images: vec![image.clone()],
        containers: Vec::new(),
    };
    run("docker", &["import", &tar.display().to_string(), &image]);

    let pushed = run("docker", &["push", &image]);
    let digest = pushed
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{pushed}"))
        .to_owned();

    // The gateway now serves that manifest under the tag.
    let head = run(
        "curl",
        &[
            "-sfI",
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
            &format!("{}/v2/flotilla-test/docker-{unique}/manifests/v1", g.url()),
        ],
    );
    assert!(
        head.to_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{head}"
    );

    run("docker", &["rmi", &image]);
    let gone = Command::new("docker")
        .args(["image", "inspect", &image])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "image still present after rmi");

    run("docker", &["pull", &image]);
    let repo_digests = run(
        "docker",
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image,
        ],
    );
    assert!(
        repo_digests.contains(&format!("{repo}@{digest}")),
        "pulled image's RepoDigests {repo_digests} lack {digest}"
    );

    // Read the files back out of the pulled image and compare bytes.
    let name = format!("flotilla-test-{unique}");
    cleanup.containers.push(name.clone());
    run("docker", &["create", "--name", &name, &image, "/none"]);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    run(
        "docker",
        &[
            "cp",
            &format!("{name}:/payload.bin"),
            &out.display().to_string(),
        ],
    );
    run(
        "docker",
        &[
            "cp",
            &format!("{name}:/etc/motd"),
            &out.display().to_string(),
        ],
    );
    assert_eq!(std::fs::read(out.join("payload.bin")).unwrap(), payload);
    assert_eq!(
        std::fs::read_to_string(out.join("motd")).unwrap(),
        "pushed through flotilla\n"
    );
    drop(cleanup);
}
