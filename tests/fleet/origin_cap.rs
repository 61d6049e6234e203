//! A gateway whose uploads are capped (`upload_bytes_per_s`, SPEC §3.6): three nodes pull one
//! image at once and get it byte for byte, while the gateway's blob bytes — HTTP bodies, which is
//! how nodes take first copies, and its swarm's pieces, counted too should any node ask it there
//! — keep to the cap (uncapped, the same pull takes ~0.2 s here).

use std::path::Path;
use std::time::Instant;

use flotilla_node::NodeOptions;

use super::{
    FleetGateway, Image, InNode, LogFile, MIB, client, log_runtime, pull_all, report_egress,
};

/// The gateway's cap: the image leaves it in four seconds at the least (uncapped, a second).
const CAP: u64 = 3 << 20;

#[test]
fn a_capped_gateway_keeps_its_blob_bytes_to_its_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("origin_cap.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(capped(tmp.path()));
}

async fn capped(dir: &Path) {
    const WHAT: &str = "origin_cap";
    let gw = FleetGateway::start_capped(CAP);
    let http = client();
    let img = Image::push(
        &http,
        &gw.url(),
        "fleet/capped",
        "v1",
        &[8 * MIB, 4 * MIB],
        11,
    )
    .await;
    let (before_http, before_swarm) = gw.egress(&http).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            InNode::start(
                &gw.url(),
                &dir.join(format!("n{i}")),
                NodeOptions::default(),
            )
            .await,
        );
    }
    let bases: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let t0 = Instant::now();
    let took = pull_all(&http, &bases, &img).await;
    let elapsed = t0.elapsed();
    if let Err(e) = took {
        panic!("[{WHAT}] {e}");
    }
    report_egress(WHAT, &http, &gw, &img).await;
    let (after_http, after_swarm) = gw.egress(&http).await;
    let sent = (after_http - before_http) + (after_swarm - before_swarm);
    println!(
        "[{WHAT}] the gateway sent {sent} B (http {}, swarm {}) in {elapsed:?} under a cap of {} MiB/s",
        after_http - before_http,
        after_swarm - before_swarm,
        CAP >> 20
    );
    // The cap, one burst (50 ms) lent by the idle uplink, and a chunk booked before the clock
    // started.
    let allowed = CAP as f64 * (elapsed.as_secs_f64() + 0.05) + (1 << 20) as f64;
    assert!(
        sent as f64 <= allowed,
        "[{WHAT}] the gateway sent {sent} B in {elapsed:?}, more than its cap allows ({allowed:.0} B)"
    );
    assert!(
        sent >= img.size(),
        "[{WHAT}] the image left the gateway only in part"
    );
    for n in nodes {
        n.stop().await;
    }
}
