//! A chain of three nodes: A holds an image and may upload only `CAP` bytes per second; B's
//! only bootstrap peer is A, C's only one is B, and the gateway runs no swarm (it is HTTP only),
//! so every piece B and C get crosses A's capped uplink once or comes from another node. C
//! starts pulling while B's pieces are still arriving from A: B must pass them on as they
//! arrive (pieces protocol 2, SPEC §5.2), and A must keep to its cap.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_node::NodeOptions;

use super::{
    FLEET_TOKEN, FleetGateway, Image, InNode, LogFile, MIB, PULL_LIMIT, check_honest_waste, client,
    log_runtime, print_stats, pull, report_egress, settled_stats, warnings,
};

/// A's upload cap: each 4-MiB piece takes a second or more to reach B, so C asks B for pieces
/// B is still receiving.
const CAP: u64 = 4 << 20;
/// How long after B starts pulling C starts.
const C_DELAY: Duration = Duration::from_millis(1500);

#[test]
fn a_node_passes_pieces_on_while_they_arrive_and_keeps_to_its_upload_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("chain.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(chain(tmp.path(), &log));
}

/// `/ip4/127.0.0.1/udp/PORT/quic-v1/p2p/ID` of `node`.
fn quic_addr(node: &InNode) -> String {
    let addr = node
        .swarm
        .listen_addrs()
        .into_iter()
        .map(|a| a.to_string())
        .find(|a| a.contains("/quic-v1"))
        .expect("the node listens on QUIC");
    format!("{addr}/p2p/{}", node.peer_id)
}

async fn chain(dir: &Path, log: &LogFile) {
    const WHAT: &str = "chain";
    let gw = FleetGateway::start_without_swarm();
    let http = client();
    let img = Image::push(&http, &gw.url(), "fleet/chain", "v1", &[24 * MIB], 7).await;
    let start = |name: &'static str, tune: Box<dyn FnOnce(&mut flotilla_node::NodeConfig)>| {
        let url = gw.url();
        let data = dir.join(name);
        async move { InNode::start_tuned(&url, FLEET_TOKEN, &data, NodeOptions::default(), tune).await }
    };
    let a = start("a", Box::new(|c| c.upload_bytes_per_s = Some(CAP))).await;
    pull(&http, &a.url, &img).await;
    let to_a = quic_addr(&a);
    let b = start("b", Box::new(move |c| c.bootstrap = vec![to_a])).await;
    let to_b = quic_addr(&b);
    let c = start("c", Box::new(move |c| c.bootstrap = vec![to_b])).await;
    let served_before = settled_stats(&http, &a.url).await.served_bytes;

    let t0 = Instant::now();
    let through_b = pull(&http, &b.url, &img);
    let through_c = async {
        tokio::time::sleep(C_DELAY).await;
        pull(&http, &c.url, &img).await
    };
    let Ok((took_b, took_c)) =
        tokio::time::timeout(PULL_LIMIT, futures::future::join(through_b, through_c)).await
    else {
        for l in warnings(&log.read()) {
            println!("[{WHAT}] node log: {l}");
        }
        panic!("[{WHAT}] B and C did not both pull the image within {PULL_LIMIT:?}");
    };
    println!("[{WHAT}] B pulled in {took_b:?}, C in {took_c:?} (started {C_DELAY:?} later)");

    let (sa, sb, sc) = futures::join!(
        settled_stats(&http, &a.url),
        settled_stats(&http, &b.url),
        settled_stats(&http, &c.url)
    );
    // End-game duplicates may still be on their way when the pulls end: A's bytes are counted
    // until its counters settle.
    let elapsed = t0.elapsed();
    for (name, s) in [("A", &sa), ("B", &sb), ("C", &sc)] {
        print_stats(WHAT, name, s);
    }
    report_egress(WHAT, &http, &gw, &img).await;
    let served = sa.served_bytes - served_before;
    // The cap, plus one burst (50 ms) and one part booked before the clock started.
    let allowed = CAP as f64 * (elapsed.as_secs_f64() + 0.05) + (512 << 10) as f64;
    println!(
        "[{WHAT}] A sent {served} B in {elapsed:?}: {:.2} MiB/s against a cap of {} MiB/s",
        served as f64 / elapsed.as_secs_f64() / MIB as f64,
        CAP >> 20
    );
    let mut failures = Vec::new();
    if served as f64 > allowed {
        failures.push(format!(
            "A sent {served} B in {elapsed:?}, more than its cap allows ({allowed:.0} B)"
        ));
    }
    if sa.served_arriving_bytes != 0 {
        failures.push(format!(
            "A held the image whole, yet reports {} B passed on while arriving",
            sa.served_arriving_bytes
        ));
    }
    if sb.served_arriving_bytes == 0 {
        failures.push(format!(
            "B passed nothing on while it arrived (served {} B in all): C waited for whole pieces",
            sb.served_bytes
        ));
    }
    if sc.peer_bytes == 0 {
        failures.push("C took nothing from its peers".to_owned());
    }
    for (name, s) in [("A", &sa), ("B", &sb), ("C", &sc)] {
        check_honest_waste(name, s, &mut failures);
    }
    // The same counters in the Prometheus text format (the stats have settled).
    let page = http
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics page");
    for (name, want) in [
        ("flotilla_node_peer_bytes_total", sb.peer_bytes),
        ("flotilla_node_served_bytes_total", sb.served_bytes),
        (
            "flotilla_node_served_arriving_bytes_total",
            sb.served_arriving_bytes,
        ),
        ("flotilla_node_wasted_bytes_total", sb.wasted_bytes),
        ("flotilla_node_duplicate_bytes_total", sb.duplicate_bytes),
        ("flotilla_node_cut_bytes_total", sb.cut_bytes),
        ("flotilla_node_invalid_bytes_total", sb.invalid_bytes),
    ] {
        let got = page
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok());
        if got != Some(want as f64) {
            failures.push(format!(
                "B's /metrics: {name} {got:?}, its stats say {want}"
            ));
        }
    }
    // B's OCI endpoint answered the pull: a manifest and the image's blobs, each counted and
    // timed.
    let count = |prefix: &str| {
        page.lines().find_map(|l| {
            l.strip_prefix(prefix)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
    };
    if count("flotilla_node_downloads_active") != Some(0.0) {
        failures.push("B's /metrics: downloads still active once its pull is done".to_owned());
    }
    let answered = count("flotilla_node_http_requests_total{method=\"GET\",code=\"200\"}");
    let timed = count("flotilla_node_http_request_duration_seconds_count{method=\"GET\"}");
    if answered.is_none_or(|n| n < 2.0) || timed < answered {
        failures.push(format!(
            "B's /metrics: {answered:?} GETs answered 200 and {timed:?} timed, for a pull"
        ));
    }
    for n in [a, b, c] {
        n.stop().await;
    }
    if !failures.is_empty() {
        for l in warnings(&log.read()) {
            println!("[{WHAT}] node log: {l}");
        }
    }
    super::assert_no_failures(WHAT, &failures);
}
