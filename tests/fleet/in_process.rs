//! Nodes in the test process against a gateway process: eight nodes pull one image at once and
//! the gateway sends it about once; a node that serves garbage for every piece is banned and the
//! others still get correct bytes.
//!
//! Each test runs its own multi-threaded runtime whose threads log into a file in the test's
//! temporary directory, so a test can look for the nodes' log lines (bans, warnings).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_node::NodeOptions;
use flotilla_node::ports::{Held, PieceFile, PieceSource, SourceError};
use flotilla_protocol::Digest;
use futures::future::BoxFuture;

use super::{
    FleetGateway, Image, InNode, LogFile, MIB, assert_no_failures, check_fresh_node, client,
    log_runtime, print_stats, pull, pull_all, report_egress, settled_stats, warnings,
};
use crate::support::noise;

#[test]
fn eight_nodes_in_one_process_pull_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("eight-nodes.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(eight_nodes(tmp.path(), &log));
}

async fn eight_nodes(dir: &Path, log: &LogFile) {
    const WHAT: &str = "eight in-process";
    let t0 = Instant::now();
    let gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    let img = Image::push(
        &http,
        &gw.url(),
        "fleet/eight",
        "v1",
        &[9 * MIB, 17 * MIB, 1024],
        1,
    )
    .await;
    let mut nodes = Vec::new();
    for i in 0..8 {
        nodes.push(
            InNode::start(
                &gw.url(),
                &dir.join(format!("node{i}")),
                NodeOptions::default(),
            )
            .await,
        );
    }
    println!("[{WHAT}] pushed and started 8 nodes in {:?}", t0.elapsed());

    let t1 = Instant::now();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let times = pull_all(&http, &urls, &img)
        .await
        .unwrap_or_else(|e| fail_with_log(WHAT, log, &e));
    println!(
        "[{WHAT}] all 8 pulled {} B each in {:?} (per node: {times:?})",
        img.size(),
        t1.elapsed()
    );

    let mut received = 0;
    let mut failures = Vec::new();
    let stats = futures::future::join_all(nodes.iter().map(|n| settled_stats(&http, &n.url))).await;
    for (i, s) in stats.iter().enumerate() {
        let name = format!("node{i}");
        print_stats(WHAT, &name, s);
        check_fresh_node(&name, s, &img, &mut failures);
        received += s.peer_bytes + s.origin_bytes;
    }
    let ratio = report_egress(WHAT, &http, &gw, &img).await;
    println!(
        "[{WHAT}] nodes received {received} verified bytes in total (8 x image = {})",
        8 * img.size()
    );
    for l in warnings(&log.read()) {
        println!("[{WHAT}] node log: {l}");
    }
    for n in nodes {
        n.stop().await;
    }
    println!("[{WHAT}] total {:?}", t0.elapsed());
    // The ~1.0 target is measured by `flotilla bench fleet` (release, 1 GiB). Here, eight debug
    // nodes share two loaded cores and the image has only eight pieces, so the scheduler's
    // origin timers (1 s grace, 1-5 s stall) are as long as the whole pull and a piece is
    // fetched by two or three nodes before their sessions are open (seen: 1.0 to 3.5 x);
    // what the test must catch is the failure mode of 8 x.
    if ratio > 4.0 {
        failures.push(format!(
            "the gateway sent {ratio:.2} x the image to 8 nodes pulling at once (want <= 4.0, half the failure mode, target ~1.0)"
        ));
    }
    assert_no_failures(WHAT, &failures);
}

/// Prints the warnings the nodes logged, then fails with `why`.
fn fail_with_log(what: &str, log: &LogFile, why: &str) -> ! {
    for l in warnings(&log.read()) {
        println!("[{what}] node log: {l}");
    }
    panic!("[{what}] {why}; node log: {}", log.path.display())
}

/// Serves the real holdings and bit fields but, for every piece, bytes from a file of garbage.
struct Liar {
    real: Arc<dyn PieceSource>,
    garbage: Arc<std::fs::File>,
}

impl PieceSource for Liar {
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>> {
        self.real.held(digest)
    }

    fn piece_file(
        &self,
        digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>> {
        let real = self.real.piece_file(digest, index);
        let garbage = self.garbage.clone();
        Box::pin(async move {
            let p = real.await?;
            Ok(PieceFile {
                file: garbage,
                offset: p.offset,
                len: p.len,
                // The garbage is what must be read, never the real file.
                direct: None,
            })
        })
    }

    fn served(&self, digest: &Digest, bytes: u64) {
        self.real.served(digest, bytes);
    }
}

#[test]
fn corrupting_peer_is_banned_and_pull_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("corrupting-peer.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(corrupting_peer(tmp.path(), &log));
}

async fn corrupting_peer(dir: &Path, log: &LogFile) {
    const WHAT: &str = "corrupting peer";
    let t0 = Instant::now();
    let gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    let layers = [9 * MIB, 17 * MIB, 1024];
    let img = Image::push(&http, &gw.url(), "fleet/liar", "v1", &layers, 2).await;

    // Garbage as large as the largest blob: every piece's offset and length fit in it.
    let garbage_path = dir.join("garbage");
    std::fs::write(&garbage_path, noise(17 * MIB, 0xbad)).unwrap();
    let garbage = Arc::new(std::fs::File::open(&garbage_path).unwrap());
    let wrap: flotilla_node::WrapSource = Arc::new(move |real| {
        Arc::new(Liar {
            real,
            garbage: garbage.clone(),
        }) as Arc<dyn PieceSource>
    });
    let a = start_liar(WHAT, &gw, &dir.join("liar"), wrap, &http, &img).await;
    let before = report_egress(WHAT, &http, &gw, &img).await;

    let mut honest = Vec::new();
    for name in ["b", "c", "d"] {
        honest.push(InNode::start(&gw.url(), &dir.join(name), NodeOptions::default()).await);
    }
    let t1 = Instant::now();
    let urls: Vec<String> = honest.iter().map(|n| n.url.clone()).collect();
    let times = pull_all(&http, &urls, &img)
        .await
        .unwrap_or_else(|e| fail_with_log(WHAT, log, &e));
    println!(
        "[{WHAT}] b, c, d pulled correct bytes in {:?} ({times:?})",
        t1.elapsed()
    );

    let sa = settled_stats(&http, &a.url).await;
    print_stats(WHAT, "liar", &sa);
    let mut wasted = Vec::new();
    for (name, n) in ["b", "c", "d"].iter().zip(&honest) {
        let s = settled_stats(&http, &n.url).await;
        print_stats(WHAT, name, &s);
        wasted.push(s.wasted_bytes);
    }
    let after = report_egress(WHAT, &http, &gw, &img).await;
    println!(
        "[{WHAT}] gateway egress for b, c, d: {:.3} x the image",
        after - before
    );
    let text = log.read();
    let bans: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("banning peer") && l.contains(&a.peer_id))
        .collect();
    for l in &bans {
        println!("[{WHAT}] {l}");
    }
    for l in warnings(&text) {
        if !l.contains("banning peer") {
            println!("[{WHAT}] node log: {l}");
        }
    }
    let liar = a.peer_id.clone();
    a.stop().await;
    for n in honest {
        n.stop().await;
    }
    println!("[{WHAT}] total {:?}", t0.elapsed());

    assert!(
        sa.served_bytes > 0,
        "nobody asked the liar for a piece, so this test proved nothing about bans"
    );
    assert!(
        wasted.iter().sum::<u64>() > 0,
        "the liar served {} B of garbage, yet no honest node counts wasted bytes: {wasted:?}",
        sa.served_bytes
    );
    assert!(
        !bans.is_empty(),
        "the liar {} served {} B of garbage but no node logged banning it",
        liar,
        sa.served_bytes
    );
}

/// Starts a node that serves through `wrap` and has it pull `img` honestly (its own reads come
/// from its store), so it holds, announces and advertises every piece; returns once it
/// provides every blob.
pub(super) async fn start_liar(
    what: &str,
    gw: &FleetGateway,
    dir: &Path,
    wrap: flotilla_node::WrapSource,
    http: &reqwest::Client,
    img: &Image,
) -> InNode {
    let liar = InNode::start(
        &gw.url(),
        dir,
        NodeOptions {
            wrap_served: Some(wrap),
            ..NodeOptions::default()
        },
    )
    .await;
    let t = pull(http, &liar.url, img).await;
    println!("[{what}] liar {} pulled the image in {t:?}", liar.peer_id);
    for (d, _) in &img.blobs {
        let d: Digest = d.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !liar.swarm.is_providing(&d).await.unwrap() {
            assert!(Instant::now() < deadline, "the liar does not announce {d}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    liar
}
