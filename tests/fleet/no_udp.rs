//! A fleet on a network that drops UDP (SPEC §5.1: TCP + noise + yamux is the fallback for
//! QUIC). The test runs itself again inside a fresh network namespace (`unshare -n`) whose
//! loopback drops every UDP packet (`iptables -A INPUT -p udp -j DROP`), starts the gateway and
//! four nodes there — all listening on QUIC and TCP as everywhere else — and pulls one image on
//! every node at once. Every QUIC dial goes unanswered; the nodes must reach the gateway and
//! each other over TCP after QUIC's head start, fetch through the swarm (the gateway sends the
//! image about once, not four times), and get every byte right. The dropped-packet counter
//! shows QUIC was really tried and really blocked.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use flotilla_node::NodeOptions;

use super::{
    FleetGateway, Image, InNode, LogFile, MIB, client, log_runtime, print_stats, pull_all,
    report_egress, settled_stats, warnings,
};

/// Set in the namespaced run: do the work instead of starting it.
const INNER: &str = "FLOTILLA_TEST_NO_UDP_INNER";
const NAME: &str = "fleet::no_udp::a_fleet_pulls_over_tcp_where_udp_is_dropped";

#[test]
fn a_fleet_pulls_over_tcp_where_udp_is_dropped() {
    if std::env::var_os(INNER).is_some() {
        inner();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(&exe)
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .output()
        .expect("unshare (util-linux) runs: this test needs it and root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the run in a network namespace without UDP failed ({})",
        out.status
    );
    // The filter ran exactly this test, once, and it passed (not "0 passed": a renamed test).
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the namespaced run did not run the test"
    );
}

/// Runs `cmd args`, failing loudly if it cannot.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e} (install iproute2 and iptables)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// UDP packets the namespace's filter dropped so far.
fn dropped_udp() -> u64 {
    let table = run("iptables", &["-L", "INPUT", "-v", "-n", "-x"]);
    table
        .lines()
        .find(|l| l.contains("DROP"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the DROP rule's packet count")
}

fn inner() {
    run("ip", &["link", "set", "lo", "up"]);
    run("iptables", &["-A", "INPUT", "-p", "udp", "-j", "DROP"]);
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("no-udp.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(fleet(tmp.path(), &log));
}

async fn fleet(dir: &Path, log: &LogFile) {
    const WHAT: &str = "no udp";
    let gw = FleetGateway::start();
    let http = client();
    let info = gw.info(&http).await;
    println!("[{WHAT}] gateway swarm addresses: {info}");
    let img = Image::push(&http, &gw.url(), "fleet/no-udp", "v1", &[24 * MIB, MIB], 41).await;
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(
            InNode::start(
                &gw.url(),
                &dir.join(format!("node{i}")),
                NodeOptions::default(),
            )
            .await,
        );
    }
    let t0 = Instant::now();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    if let Err(e) = pull_all(&http, &urls, &img).await {
        for l in warnings(&log.read()) {
            println!("[{WHAT}] node log: {l}");
        }
        panic!("[{WHAT}] {e}");
    }
    println!(
        "[{WHAT}] 4 nodes pulled {} B each in {:?}",
        img.size(),
        t0.elapsed()
    );
    let stats = futures::future::join_all(urls.iter().map(|u| settled_stats(&http, u))).await;
    let mut from_peers = 0;
    for (i, s) in stats.iter().enumerate() {
        print_stats(WHAT, &format!("node{i}"), s);
        from_peers += s.peer_bytes;
    }
    let ratio = report_egress(WHAT, &http, &gw, &img).await;
    let dropped = dropped_udp();
    println!("[{WHAT}] UDP packets dropped: {dropped}");
    assert!(
        dropped > 0,
        "no QUIC packet was dropped: was QUIC tried at all?"
    );
    assert!(
        from_peers > 0,
        "no node got a byte from its peers: the swarm never came up over TCP"
    );
    // Four pulls straight from the gateway would be 4 ×.
    assert!(
        ratio <= 2.0,
        "the gateway sent {ratio:.2} × the image to 4 nodes: the swarm did not carry it"
    );
    for n in nodes {
        n.stop().await;
    }
}
