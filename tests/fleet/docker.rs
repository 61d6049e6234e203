//! The Docker engine pulls through a node: an image built `FROM scratch` (nothing is pulled from
//! anywhere else) is pushed to the gateway, removed, pulled from the node's OCI endpoint,
//! inspected and read through a container. Both addresses are on 127.0.0.0/8, which the daemon
//! treats as insecure registries, so plain HTTP needs no daemon configuration.

use std::process::{Command, Output};
use std::time::Instant;

use super::{FleetGateway, NodeProc, client, digest_of, print_stats, settled_stats, warnings};
use crate::support::{noise, require_tool, run};

/// Removes the images and containers the test made, even when it fails.
pub(super) struct Cleanup {
    pub images: Vec<String>,
    pub containers: Vec<String>,
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

/// An image built by the Docker engine `FROM scratch` (nothing is pulled from anywhere) and
/// pushed to a gateway, then removed from the engine, so a later pull must fetch it.
pub(super) struct Pushed {
    /// `flotilla-test/fleet-…`: the repository, unique to this run.
    pub path: String,
    /// The manifest digest `docker push` printed.
    pub digest: String,
    /// The image id (its config's digest).
    pub id: String,
    pub motd: String,
    pub payload: Vec<u8>,
}

/// A string no other run of the tests shares: process, gateway port and clock.
pub(super) fn unique_suffix(port: u16) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{port}-{nanos}", std::process::id())
}

/// Builds an image of a small file and a 9-MiB one in `dir`, pushes it as
/// `{gateway}/flotilla-test/fleet-{unique}:v1`, and removes it from the engine again.
pub(super) fn build_and_push(
    gateway: &str,
    dir: &std::path::Path,
    unique: &str,
    cleanup: &mut Cleanup,
) -> Pushed {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let motd = format!("pulled through a flotilla node {unique}\n");
    let payload = noise(9 << 20, 11);
    std::fs::write(ctx.join("motd"), &motd).unwrap();
    std::fs::write(ctx.join("payload.bin"), &payload).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY motd /etc/motd\nCOPY payload.bin /payload.bin\n",
    )
    .unwrap();

    let path = format!("flotilla-test/fleet-{unique}");
    let pushed = format!("{gateway}/{path}:v1");
    cleanup.images.push(pushed.clone());
    // The classic builder needs nothing but the daemon (no buildx plugin, no base image).
    let built = Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "-t", &pushed, &ctx.display().to_string()])
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "docker build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &pushed])
        .trim()
        .to_owned();
    cleanup.images.push(id.clone());
    let digest = pushed_digest(&docker(&["push", &pushed]));
    docker(&["rmi", &pushed]);
    assert!(
        !docker_output(&["image", "inspect", &id]).status.success(),
        "image still present after rmi"
    );
    Pushed {
        path,
        digest,
        id,
        motd,
        payload,
    }
}

/// Where each container-engine test starts: a gateway, a `flotilla node` process, and an image
/// built by the Docker engine and pushed to the gateway (then removed from the engine).
pub(super) struct EngineRig {
    pub rt: tokio::runtime::Runtime,
    pub http: reqwest::Client,
    /// Dropped (killed) before the gateway and the directory it writes in.
    pub node: NodeProc,
    pub gw: FleetGateway,
    pub unique: String,
    pub cleanup: Cleanup,
    pub pushed: Pushed,
    pub tmp: tempfile::TempDir,
}

impl EngineRig {
    pub(super) fn start() -> EngineRig {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let http = client();
        let gw = FleetGateway::start();
        rt.block_on(gw.info(&http));
        let tmp = tempfile::tempdir().unwrap();
        let node = NodeProc::start(&gw.url(), tmp.path());
        let unique = unique_suffix(gw.gw.addr.port());
        let mut cleanup = Cleanup {
            images: Vec::new(),
            containers: Vec::new(),
        };
        let pushed = build_and_push(&gw.gw.host(), tmp.path(), &unique, &mut cleanup);
        EngineRig {
            rt,
            http,
            node,
            gw,
            unique,
            cleanup,
            pushed,
            tmp,
        }
    }
}

#[test]
fn docker_pulls_through_a_node() {
    const WHAT: &str = "docker";
    require_tool("docker");
    let t0 = Instant::now();
    let EngineRig {
        rt,
        http,
        node,
        gw: _gw,
        unique,
        mut cleanup,
        pushed:
            Pushed {
                path,
                digest,
                id,
                motd,
                payload,
            },
        tmp,
    } = EngineRig::start();
    let pulled = format!("{}/{path}:v1", node.addr);
    cleanup.images.push(pulled.clone());

    let t1 = Instant::now();
    let out = docker_output(&["pull", &pulled]);
    assert!(
        out.status.success(),
        "docker pull {pulled} failed: {}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    println!(
        "[{WHAT}] docker pull through the node took {:?}",
        t1.elapsed()
    );
    let pulled_id = docker(&["image", "inspect", "--format", "{{.Id}}", &pulled]);
    assert_eq!(pulled_id.trim(), id, "the pulled image has another id");
    let repo_digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &pulled,
    ]);
    let want = format!("{}/{path}@{digest}", node.addr);
    assert!(
        repo_digests.contains(&want),
        "RepoDigests {repo_digests} lack {want}"
    );

    // Read the files back out of the pulled image.
    let name = format!("flotilla-fleet-{unique}");
    cleanup.containers.push(name.clone());
    docker(&["create", "--name", &name, &pulled, "/none"]);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let out_s = out.display().to_string();
    docker(&["cp", &format!("{name}:/payload.bin"), &out_s]);
    docker(&["cp", &format!("{name}:/etc/motd"), &out_s]);
    let got = std::fs::read(out.join("payload.bin")).unwrap();
    assert_eq!(digest_of(&got), digest_of(&payload), "payload.bin differs");
    assert_eq!(std::fs::read_to_string(out.join("motd")).unwrap(), motd);

    let s = rt.block_on(settled_stats(&http, &node.url()));
    print_stats(WHAT, "node", &s);
    assert!(
        s.peer_bytes + s.origin_bytes > payload.len() as u64,
        "the node did not fetch the layers it served to docker: {s:?}"
    );
    for l in warnings(&node.log()) {
        println!("[{WHAT}] node log: {l}");
    }
    println!("[{WHAT}] total {:?}", t0.elapsed());
}
