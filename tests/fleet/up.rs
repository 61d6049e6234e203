//! `flotilla up`, the README's first command: a gateway and a node in one process with embedded
//! defaults. docker pushes to the gateway as `localhost:PORT/…` (as the README shows), pulls
//! through the node, and after a SIGTERM (a clean exit) and a second `up` on the same data
//! directory the image is still there and pulls through the node again.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::docker::{Cleanup, Pushed, build_and_push, unique_suffix};
use super::{client, print_stats, settled_stats, warnings};
use crate::support::{flotilla_bin, free_port, http_status, require_tool, run};

/// One `flotilla up` process.
struct Up {
    child: Child,
    log: std::path::PathBuf,
}

impl Up {
    /// Starts `flotilla up` on `gateway` and `node` with everything in `dir/data`, and waits
    /// until both answer `/v2/`.
    fn start(dir: &Path, gateway: SocketAddr, node: SocketAddr) -> Up {
        let log = dir.join("up.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(flotilla_bin())
            .arg("up")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--listen")
            .arg(gateway.to_string())
            .arg("--node-listen")
            .arg(node.to_string())
            .env("FLOTILLA_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut up = Up { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in [gateway, node] {
            while http_status(addr, "GET", "/v2/") != Some(200) {
                if let Ok(Some(status)) = up.child.try_wait() {
                    panic!("flotilla up exited early ({status}):\n{}", up.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "{addr} not answering /v2/ after 30 s:\n{}",
                    up.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        up
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (within the node's 10-s grace and a margin).
    fn stop(mut self) -> std::process::ExitStatus {
        run("kill", &["-TERM", &self.child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "flotilla up still running 20 s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn docker(args: &[&str]) -> String {
    run("docker", args)
}

#[test]
fn docker_pushes_to_flotilla_up_and_pulls_through_its_node() {
    const WHAT: &str = "up";
    require_tool("docker");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = client();
    let tmp = tempfile::tempdir().unwrap();
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let node_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let t0 = Instant::now();
    let up = Up::start(tmp.path(), gw_addr, node_addr);
    println!(
        "[{WHAT}] gateway and node answering after {:?}",
        t0.elapsed()
    );
    // The newcomer is told where to push and where to pull.
    let ready = format!(
        "ready: docker push localhost:{}/team/app:v1, then docker pull localhost:{}/team/app:v1",
        gw_addr.port(),
        node_addr.port()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up.log().contains(&ready) {
        assert!(Instant::now() < deadline, "no ready line:\n{}", up.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    let unique = unique_suffix(gw_addr.port());
    let mut cleanup = Cleanup {
        images: Vec::new(),
        containers: Vec::new(),
    };
    let gateway = format!("localhost:{}", gw_addr.port());
    let Pushed {
        path, id, payload, ..
    } = build_and_push(&gateway, tmp.path(), &unique, &mut cleanup);
    let pulled = format!("localhost:{}/{path}:v1", node_addr.port());
    cleanup.images.push(pulled.clone());
    let node_url = format!("http://{node_addr}");

    let pull = |round: &str| {
        docker(&["pull", &pulled]);
        let got = docker(&["image", "inspect", "--format", "{{.Id}}", &pulled]);
        assert_eq!(
            got.trim(),
            id,
            "{round}: the image pulled through the node differs"
        );
        docker(&["rmi", &pulled]);
    };
    pull("first pull");
    let s = rt.block_on(settled_stats(&http, &node_url));
    print_stats(WHAT, "node", &s);
    assert!(
        s.peer_bytes + s.origin_bytes >= payload.len() as u64,
        "the node fetched less than the layer it served: {s:?}"
    );
    let log = up.log();
    let status = up.stop();
    assert!(status.success(), "flotilla up exited with {status}:\n{log}");

    // The same data directory again: tags at the gateway, pieces in the node's store.
    let up = Up::start(tmp.path(), gw_addr, node_addr);
    pull("after a restart");
    // A new client: the old one's pooled connections went with the first process.
    let s = rt.block_on(settled_stats(&client(), &node_url));
    print_stats(WHAT, "node after the restart", &s);
    assert_eq!(
        s.peer_bytes + s.origin_bytes,
        0,
        "the restarted node fetched again what its store held: {s:?}"
    );
    let log = up.log();
    let status = up.stop();
    assert!(
        status.success(),
        "the second flotilla up exited with {status}:\n{log}"
    );
    for l in warnings(&log) {
        println!("[{WHAT}] log: {l}");
    }
    println!("[{WHAT}] total {:?}", t0.elapsed());
}
