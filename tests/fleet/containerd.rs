//! containerd pulls through a node both ways README *A fleet* shows: by the gateway's name with
//! a `hosts.toml` that makes the node its mirror, and by the node's own address. `ctr` talks to
//! the host's containerd (the one the Docker engine runs, when no other answers); each pull
//! lands in a namespace of its own, is unpacked by containerd's default snapshotter, read back
//! through a mount, and removed with its namespace at the end.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use super::docker::{EngineRig, Pushed};
use super::{digest_of, get_text, print_stats, settled_stats, warnings};
use crate::support::require_tool;

/// Where containerd listens: its own service, or the one the Docker engine starts.
const SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
];

/// The first containerd that answers (`$CONTAINERD_ADDRESS` first). Fails loudly: a host with
/// a Docker engine always has one.
fn containerd_address() -> String {
    let env = std::env::var("CONTAINERD_ADDRESS").ok();
    let candidates: Vec<&str> = env
        .iter()
        .map(String::as_str)
        .chain(SOCKETS.iter().copied())
        .collect();
    for a in &candidates {
        let answers = Path::new(a).exists()
            && Command::new("ctr")
                .args(["--address", a, "--timeout", "10s", "version"])
                .output()
                .is_ok_and(|o| o.status.success());
        if answers {
            return (*a).to_owned();
        }
    }
    panic!(
        "no containerd answers at {candidates:?}; the Docker engine runs one (set \
         CONTAINERD_ADDRESS to another)"
    )
}

/// `ctr` in one namespace of one containerd.
struct Ctr {
    address: String,
    namespace: String,
}

impl Ctr {
    fn output(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .args(["--address", &self.address, "--namespace", &self.namespace])
            .args(args)
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "`ctr -n {} {}` failed ({}):\n{}{}",
            self.namespace,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Ctr {
    /// Removes the namespace's images (`--sync` waits for containerd to collect their content
    /// and snapshots), then the namespace.
    fn drop(&mut self) {
        let listed = self.output(&["images", "ls", "-q"]);
        let refs = String::from_utf8_lossy(&listed.stdout).into_owned();
        let mut args = vec!["images", "rm", "--sync"];
        args.extend(refs.lines().filter(|l| !l.is_empty()));
        if args.len() > 3 {
            let _ = self.output(&args);
        }
        let _ = Command::new("ctr")
            .args([
                "--address",
                &self.address,
                "namespaces",
                "rm",
                &self.namespace,
            ])
            .output();
    }
}

/// `flotilla_node_http_response_bytes_total{method="GET",code="200"}` on the node's `/metrics`.
async fn node_get_bytes(http: &reqwest::Client, node: &str) -> u64 {
    let text = get_text(http, &format!("{node}/metrics")).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("flotilla_node_http_response_bytes_total{method=\"GET\",code=\"200\"} ")
        })
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Mounts `image` read-only, reads `/payload.bin` and `/etc/motd`, unmounts.
fn read_back(ctr: &Ctr, image: &str, dir: &Path) -> (Vec<u8>, String) {
    let mnt = dir.join(format!("mnt-{}", ctr.namespace));
    std::fs::create_dir_all(&mnt).unwrap();
    let m = mnt.display().to_string();
    ctr.run(&["images", "mount", image, &m]);
    let files = (
        std::fs::read(mnt.join("payload.bin")),
        std::fs::read_to_string(mnt.join("etc/motd")),
    );
    ctr.run(&["images", "unmount", "--rm", &m]);
    (files.0.unwrap(), files.1.unwrap())
}

#[test]
fn containerd_pulls_through_a_node() {
    const WHAT: &str = "containerd";
    require_tool("docker");
    require_tool("ctr");
    let address = containerd_address();
    let t0 = Instant::now();
    let EngineRig {
        rt,
        http,
        node,
        gw,
        unique,
        cleanup: _cleanup,
        pushed:
            Pushed {
                path,
                digest,
                motd,
                payload,
                ..
            },
        tmp,
    } = EngineRig::start();

    // As README *A fleet* configures it: the gateway's name, the node as its mirror.
    let hosts = tmp.path().join("certs.d");
    let gw_host = gw.gw.host();
    std::fs::create_dir_all(hosts.join(&gw_host)).unwrap();
    std::fs::write(
        hosts.join(&gw_host).join("hosts.toml"),
        format!(
            "server = \"http://{gw_host}\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            node.addr
        ),
    )
    .unwrap();
    let hosts_dir = hosts.display().to_string();

    let mirrored = Ctr {
        address: address.clone(),
        namespace: format!("flotilla-test-mirror-{unique}"),
    };
    let image = format!("{gw_host}/{path}:v1");
    let before = rt.block_on(node_get_bytes(&http, &node.url()));
    let t1 = Instant::now();
    let out = mirrored.output(&["images", "pull", "--hosts-dir", &hosts_dir, &image]);
    assert!(
        out.status.success(),
        "ctr pull {image} through the mirror failed: {}{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    println!("[{WHAT}] pull through the mirror took {:?}", t1.elapsed());
    let listed = mirrored.run(&["images", "ls"]);
    assert!(
        listed.contains(&image) && listed.contains(&digest),
        "ctr images ls lacks {image} at {digest}:\n{listed}"
    );
    let s = rt.block_on(settled_stats(&http, &node.url()));
    print_stats(WHAT, "node", &s);
    assert!(
        s.peer_bytes + s.origin_bytes > payload.len() as u64,
        "containerd went around its mirror: the node fetched nothing: {s:?}"
    );
    let served = rt.block_on(node_get_bytes(&http, &node.url())) - before;
    assert!(
        served > payload.len() as u64,
        "the node served containerd {served} bytes, less than the layer"
    );
    let (got, got_motd) = read_back(&mirrored, &image, tmp.path());
    assert_eq!(digest_of(&got), digest_of(&payload), "payload.bin differs");
    assert_eq!(got_motd, motd);

    // By the node's own address, into a second namespace (the node now holds the layers).
    // containerd shares content between namespaces, so the first pull's goes first: the
    // second must fetch every blob again.
    drop(mirrored);
    let direct = Ctr {
        address,
        namespace: format!("flotilla-test-direct-{unique}"),
    };
    let image = format!("{}/{path}:v1", node.addr);
    let before = rt.block_on(node_get_bytes(&http, &node.url()));
    let out = direct.output(&["images", "pull", "--plain-http", &image]);
    assert!(
        out.status.success(),
        "ctr pull {image} failed: {}{}\nnode log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let served = rt.block_on(node_get_bytes(&http, &node.url())) - before;
    assert!(
        served > payload.len() as u64,
        "the node served the direct pull {served} bytes, less than the layer"
    );
    let (got, got_motd) = read_back(&direct, &image, tmp.path());
    assert_eq!(digest_of(&got), digest_of(&payload), "payload.bin differs");
    assert_eq!(got_motd, motd);

    for l in warnings(&node.log()) {
        println!("[{WHAT}] node log: {l}");
    }
    println!("[{WHAT}] total {:?}", t0.elapsed());
}
