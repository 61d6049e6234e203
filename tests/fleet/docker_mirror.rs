//! A Docker engine with the node as its `registry-mirrors` entry (README *A fleet*) pulls a Docker
//! Hub name through it: `docker pull team/app:v1` asks the mirror for `team/app`, which the node
//! resolves at the gateway. The host's own engine is left alone: the test starts a second
//! `dockerd` with its own data and exec roots, socket and `--registry-mirror`, no bridge and no
//! iptables rules, sharing the host's containerd under namespaces of its own, and stops it at
//! the end. Nothing leaves loopback: a mirror that failed would send docker to Docker Hub, which
//! this machine cannot reach, and the pull would fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::docker::{EngineRig, Pushed};
use super::{print_stats, settled_stats, warnings};
use crate::support::require_tool;

/// The containerd the host's engine runs, which the second engine shares.
const CONTAINERD: &str = "/var/run/docker/containerd/containerd.sock";

/// A second `dockerd`, stopped and removed on drop.
struct Engine {
    child: Child,
    root: PathBuf,
    namespace: String,
}

impl Engine {
    /// Starts `dockerd` with everything under `root` and `mirror` as its registry mirror, and
    /// waits until it answers.
    fn start(root: &Path, mirror: &str, namespace: &str) -> Engine {
        std::fs::create_dir_all(root).unwrap();
        let config = root.join("daemon.json");
        std::fs::write(&config, "{}").unwrap();
        let log = std::fs::File::create(root.join("dockerd.log")).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", root.join("docker.sock").display()))
            .arg("--config-file")
            .arg(&config)
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"])
            .args(["--registry-mirror", mirror])
            .args(["--containerd-namespace", namespace])
            .args([
                "--containerd-plugins-namespace",
                &format!("{namespace}-plugins"),
            ]);
        // Its own containerd where the host's engine runs one; otherwise dockerd starts one.
        if Path::new(CONTAINERD).exists() {
            cmd.args(["--containerd", CONTAINERD]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut engine = Engine {
            child,
            root: root.to_owned(),
            namespace: namespace.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !engine.docker(&["info"]).status.success() {
            if let Ok(Some(status)) = engine.child.try_wait() {
                panic!("dockerd exited ({status}):\n{}", engine.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd not answering after 30 s:\n{}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
    }

    /// `docker ARGS…` against this engine.
    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.root.join("docker.sock").display()),
            )
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for ns in [
            self.namespace.clone(),
            format!("{}-plugins", self.namespace),
        ] {
            purge_namespace(&ns);
        }
    }
}

/// Removes containerd namespace `ns` with what dockerd left in it: the leases that keep its
/// pulled content (`--sync` collects what they held), any content left, then the namespace.
fn purge_namespace(ns: &str) {
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .args(["--address", CONTAINERD, "--namespace", ns])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for lease in ctr(&["leases", "ls", "-q"]).lines() {
        ctr(&["leases", "rm", "--sync", lease]);
    }
    for digest in ctr(&["content", "ls", "-q"]).lines() {
        ctr(&["content", "rm", digest]);
    }
    let _ = Command::new("ctr")
        .args(["--address", CONTAINERD, "namespaces", "rm", ns])
        .output();
}

#[test]
fn docker_pulls_docker_hub_names_through_a_node_as_its_mirror() {
    const WHAT: &str = "docker-mirror";
    require_tool("docker");
    require_tool("dockerd");
    let t0 = Instant::now();
    let EngineRig {
        rt,
        http,
        node,
        gw: _gw,
        unique,
        cleanup: _cleanup,
        pushed: Pushed { path, id, .. },
        tmp,
    } = EngineRig::start();

    let engine = Engine::start(
        &tmp.path().join("engine"),
        &node.url(),
        &format!("flotilla-test-{unique}"),
    );
    println!("[{WHAT}] second engine up after {:?}", t0.elapsed());
    // A Docker Hub name: docker asks its mirror, the node, for `{path}`.
    let name = format!("{path}:v1");
    let out = engine.docker(&["pull", &name]);
    assert!(
        out.status.success(),
        "docker pull {name} through the mirror failed: {}{}\nnode log:\n{}\ndockerd log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log(),
        engine.log()
    );
    let got = engine.docker(&["image", "inspect", "--format", "{{.Id}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        id,
        "the image pulled through the mirror differs"
    );
    let s = rt.block_on(settled_stats(&http, &node.url()));
    print_stats(WHAT, "node", &s);
    assert!(
        s.peer_bytes + s.origin_bytes > 9 << 20,
        "the node did not fetch the layers docker pulled through it: {s:?}"
    );
    for l in warnings(&node.log()) {
        println!("[{WHAT}] node log: {l}");
    }
    drop(engine);
    println!("[{WHAT}] total {:?}", t0.elapsed());
}
