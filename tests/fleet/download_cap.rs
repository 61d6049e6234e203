//! A node with a download cap (`download_bytes_per_s`, SPEC §6.2): A holds an image and
//! serves it at full speed, B pulls it through its OCI endpoint from A and the gateway and
//! takes no more than its cap, however many sessions it runs — without giving up on its
//! peers for being slow (no bans, nothing fetched twice in bulk), and it says how long it
//! waited for the cap.

use std::path::Path;
use std::time::Instant;

use flotilla_node::NodeOptions;

use super::{
    FLEET_TOKEN, FleetGateway, Image, InNode, LogFile, MIB, PULL_LIMIT, check_honest_waste, client,
    get_text, log_runtime, print_stats, pull, report_egress, settled_stats, warnings,
};

/// B's cap: the 32-MiB image takes about 4 s at it.
const CAP: u64 = 8 << 20;
/// What a capped download may take beyond `CAP × elapsed`: one 50-ms burst, plus one chunk
/// per receiver read before it was booked (the sessions' 256 KiB, the origin's HTTP chunks).
const SLACK: u64 = 4 << 20;

/// Node A, which has pulled `img`, and node B, capped at `cap` and holding nothing yet.
async fn holder_and_capped(
    gw: &FleetGateway,
    dir: &Path,
    http: &reqwest::Client,
    img: &Image,
    cap: u64,
) -> (InNode, InNode) {
    let start = |name: &str, cap: Option<u64>| {
        let (url, data) = (gw.url(), dir.join(name));
        async move {
            InNode::start_tuned(&url, FLEET_TOKEN, &data, NodeOptions::default(), move |c| {
                c.download_bytes_per_s = cap
            })
            .await
        }
    };
    let a = start("a", None).await;
    pull(http, &a.url, img).await;
    (a, start("b", Some(cap)).await)
}

#[test]
fn a_node_keeps_its_downloads_to_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("download_cap.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(capped(tmp.path(), &log));
}

async fn capped(dir: &Path, log: &LogFile) {
    const WHAT: &str = "download_cap";
    let gw = FleetGateway::start();
    let http = client();
    let img = Image::push(
        &http,
        &gw.url(),
        "fleet/capped",
        "v1",
        &[24 * MIB, 8 * MIB],
        11,
    )
    .await;
    let (a, b) = holder_and_capped(&gw, dir, &http, &img, CAP).await;

    let t0 = Instant::now();
    let Ok(took) = tokio::time::timeout(PULL_LIMIT, pull(&http, &b.url, &img)).await else {
        for l in warnings(&log.read()) {
            println!("[{WHAT}] node log: {l}");
        }
        panic!("[{WHAT}] B did not pull the image within {PULL_LIMIT:?}");
    };
    let elapsed = t0.elapsed();
    let sb = settled_stats(&http, &b.url).await;
    print_stats(WHAT, "B", &sb);
    report_egress(WHAT, &http, &gw, &img).await;
    let received = sb.peer_bytes + sb.origin_bytes + sb.wasted_bytes;
    let allowed = CAP as f64 * elapsed.as_secs_f64() + SLACK as f64;
    let size = img.size();
    println!(
        "[{WHAT}] B pulled {size} B in {took:?} ({:.2} MiB/s against a cap of {} MiB/s), \
         received {received} B, waited {:.2} s for the cap",
        size as f64 / took.as_secs_f64() / MIB as f64,
        CAP >> 20,
        sb.download_cap_wait_s
    );
    let mut failures = Vec::new();
    if received as f64 > allowed {
        failures.push(format!(
            "B received {received} B in {elapsed:?}, more than its cap allows ({allowed:.0} B)"
        ));
    }
    // The image cannot have come faster than the cap allows (less the slack booked ahead).
    let fastest = (size.saturating_sub(SLACK)) as f64 / CAP as f64;
    if took.as_secs_f64() < fastest {
        failures.push(format!(
            "B pulled {size} B in {took:?}: faster than its cap allows ({fastest:.2} s)"
        ));
    }
    if sb.download_cap_wait_s <= 0.0 {
        failures.push("B reports no time waited for its cap".to_owned());
    }
    if sb.peers_banned != 0 {
        failures.push(format!(
            "B banned {} peers: a capped download must not take its own slowness for theirs",
            sb.peers_banned
        ));
    }
    if sb.peer_bytes == 0 {
        failures.push("B took nothing from A".to_owned());
    }
    check_honest_waste("B", &sb, &mut failures);
    let page = get_text(&http, &format!("{}/metrics", b.url)).await;
    let wait = page.lines().find_map(|l| {
        l.strip_prefix("flotilla_node_download_cap_wait_seconds_total ")?
            .parse::<f64>()
            .ok()
    });
    if !wait.is_some_and(|w| w > 0.0) {
        failures.push(format!(
            "B's /metrics: flotilla_node_download_cap_wait_seconds_total {wait:?}"
        ));
    }

    // An image only the gateway holds: B takes it from the gateway's swarm seed and its HTTP
    // origin, under the same cap.
    let img2 = Image::push(&http, &gw.url(), "fleet/capped", "v2", &[16 * MIB], 12).await;
    let t1 = Instant::now();
    let Ok(took2) = tokio::time::timeout(PULL_LIMIT, pull(&http, &b.url, &img2)).await else {
        panic!("[{WHAT}] B did not pull the gateway-only image within {PULL_LIMIT:?}");
    };
    let elapsed2 = t1.elapsed();
    let sb2 = settled_stats(&http, &b.url).await;
    print_stats(WHAT, "B after the second image", &sb2);
    let received2 = sb2.peer_bytes + sb2.origin_bytes + sb2.wasted_bytes - received;
    let allowed2 = CAP as f64 * elapsed2.as_secs_f64() + SLACK as f64;
    println!(
        "[{WHAT}] B pulled the gateway-only image ({} B) in {took2:?}, received {received2} B",
        img2.size()
    );
    if received2 as f64 > allowed2 {
        failures.push(format!(
            "B received {received2} B of the gateway-only image in {elapsed2:?}, more than its \
             cap allows ({allowed2:.0} B)"
        ));
    }
    assert!(failures.is_empty(), "[{WHAT}] {failures:#?}");
    drop(a);
}

/// A cap far below what peers send (512 KiB/s, a 4-MiB piece taking 8 s): every source looks
/// equally slow, and requests must not time out while their bytes flow, or each cancel throws
/// a partial piece away and the pull never ends (it did, before the scheduler sized its
/// pipeline and timeouts to the cap).
#[test]
fn a_low_download_cap_completes_without_throwing_bytes_away() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("download_cap_low.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(low_cap(tmp.path(), &log));
}

async fn low_cap(dir: &Path, log: &LogFile) {
    const WHAT: &str = "download_cap_low";
    const LOW: u64 = 512 << 10;
    let gw = FleetGateway::start();
    let http = client();
    let img = Image::push(&http, &gw.url(), "fleet/slow", "v1", &[5 * MIB, MIB], 13).await;
    let (a, b) = holder_and_capped(&gw, dir, &http, &img, LOW).await;
    let ideal = img.size() as f64 / LOW as f64;
    let t0 = Instant::now();
    let Ok(took) = tokio::time::timeout(PULL_LIMIT, pull(&http, &b.url, &img)).await else {
        for l in warnings(&log.read()) {
            println!("[{WHAT}] node log: {l}");
        }
        panic!("[{WHAT}] B did not pull the image within {PULL_LIMIT:?} (ideal {ideal:.1} s)");
    };
    let elapsed = t0.elapsed();
    let sb = settled_stats(&http, &b.url).await;
    print_stats(WHAT, "B", &sb);
    println!(
        "[{WHAT}] B pulled {} B in {took:?} at a cap of {} KiB/s (ideal {ideal:.1} s)",
        img.size(),
        LOW >> 10
    );
    let mut failures = Vec::new();
    if took.as_secs_f64() > 1.5 * ideal + 3.0 {
        failures.push(format!(
            "B took {took:?}, far beyond the cap's {ideal:.1} s: requests thrashed"
        ));
    }
    if sb.wasted_bytes > MIB as u64 {
        failures.push(format!(
            "B dropped {} B (duplicates {}, cut {}): requests were cancelled while their bytes flowed",
            sb.wasted_bytes, sb.duplicate_bytes, sb.cut_bytes
        ));
    }
    if sb.peers_banned != 0 {
        failures.push(format!(
            "B banned {} peers for its own cap",
            sb.peers_banned
        ));
    }
    let received = sb.peer_bytes + sb.origin_bytes + sb.wasted_bytes;
    let allowed = LOW as f64 * elapsed.as_secs_f64() + SLACK as f64;
    if received as f64 > allowed {
        failures.push(format!(
            "B received {received} B in {elapsed:?}, more than its cap allows ({allowed:.0} B)"
        ));
    }
    assert!(failures.is_empty(), "[{WHAT}] {failures:#?}");
    drop(a);
}
