//! `flotilla node` processes against a gateway process: four pull one image at once, and a node
//! killed with SIGKILL halfway through a large layer resumes from what reached its disk.

use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::{
    FleetGateway, Image, MIB, NodeProc, assert_no_failures, check_fresh_node, client, node_stats,
    print_stats, pull_all, pull_blob, report_egress, settled_stats, warnings,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_node_processes_pull_at_once() {
    const WHAT: &str = "four processes";
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    let img = Image::push(
        &http,
        &gw.url(),
        "fleet/four",
        "v1",
        &[9 * MIB, 17 * MIB, 1024],
        3,
    )
    .await;
    let nodes: Vec<NodeProc> = (0..4)
        .map(|i| {
            let dir = tmp.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            NodeProc::start(&gw.url(), &dir)
        })
        .collect();
    println!("[{WHAT}] pushed and started 4 nodes in {:?}", t0.elapsed());

    let t1 = Instant::now();
    let urls: Vec<String> = nodes.iter().map(NodeProc::url).collect();
    let times = pull_all(&http, &urls, &img).await.unwrap_or_else(|e| {
        for (i, n) in nodes.iter().enumerate() {
            for l in warnings(&n.log()) {
                println!("[{WHAT}] node{i} log: {l}");
            }
        }
        panic!("[{WHAT}] {e}")
    });
    println!(
        "[{WHAT}] all 4 pulled {} B each in {:?} (per node: {times:?})",
        img.size(),
        t1.elapsed()
    );
    let mut failures = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let name = format!("node{i}");
        let s = settled_stats(&http, &n.url()).await;
        print_stats(WHAT, &name, &s);
        check_fresh_node(&name, &s, &img, &mut failures);
        for l in warnings(&n.log()) {
            println!("[{WHAT}] {name} log: {l}");
        }
    }
    let ratio = report_egress(WHAT, &http, &gw, &img).await;
    println!("[{WHAT}] total {:?}", t0.elapsed());
    if ratio > 2.0 {
        failures.push(format!(
            "the gateway sent {ratio:.2} x the image to 4 nodes pulling at once (want <= 2.0, target ~1.0)"
        ));
    }
    assert_no_failures(WHAT, &failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_download_resumes() {
    const WHAT: &str = "kill -9 mid-download";
    const PIECE: u64 = 4 << 20;
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    let img = Image::push(&http, &gw.url(), "fleet/resume", "v1", &[96 * MIB], 4).await;
    let (config_digest, config) = &img.blobs[0];
    let (layer_digest, layer) = &img.blobs[1];
    let layer_size = layer.len() as u64;
    let mut node = NodeProc::start(&gw.url(), tmp.path());
    let base = node.url();
    // The small config first, so that the counters below concern the layer alone.
    pull_blob(&http, &base, &img.repo, config_digest, config.len() as u64).await;
    let config_bytes = {
        let s = settled_stats(&http, &base).await;
        s.peer_bytes + s.origin_bytes
    };

    // Stream the layer and kill the node once 30 % of it verified (by the client's reading or
    // the node's counters, whichever shows it first).
    let t1 = Instant::now();
    let url = format!("{base}/v2/{}/blobs/{layer_digest}", img.repo);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    let mut body = r.bytes_stream();
    let mut read = 0u64;
    let mut last_poll = Instant::now();
    let before = loop {
        let next = tokio::time::timeout(Duration::from_millis(50), body.next()).await;
        match next {
            Ok(Some(Ok(chunk))) => {
                let at = read as usize;
                assert!(
                    chunk[..] == layer[at..at + chunk.len()],
                    "GET {url}: wrong bytes at offset {at}"
                );
                read += chunk.len() as u64;
            }
            Ok(Some(Err(e))) => panic!("GET {url}: body broke after {read} bytes: {e}"),
            Ok(None) => panic!("GET {url}: the whole layer arrived before the kill"),
            Err(_) => {}
        }
        if read * 10 >= layer_size * 3 || last_poll.elapsed() > Duration::from_millis(100) {
            last_poll = Instant::now();
            let s = node_stats(&http, &base).await;
            let fetched = s.peer_bytes + s.origin_bytes - config_bytes;
            if read * 10 >= layer_size * 3 || fetched * 10 >= layer_size * 3 {
                break s;
            }
        }
    };
    node.kill9();
    drop(body);
    let fetched_before = before.peer_bytes + before.origin_bytes - config_bytes;
    println!(
        "[{WHAT}] killed after {:?}: the client had read {read} B, the node had fetched {fetched_before} B of {layer_size}",
        t1.elapsed()
    );
    print_stats(WHAT, "before the kill", &before);
    assert!(
        fetched_before < layer_size,
        "the node had the whole layer before the kill; resuming was not exercised (make the layer larger)"
    );

    node.restart();
    let t2 = Instant::now();
    if let Err(e) = pull_all(&http, std::slice::from_ref(&base), &img).await {
        for l in warnings(&node.log()) {
            println!("[{WHAT}] node log: {l}");
        }
        panic!("[{WHAT}] after the restart: {e}");
    }
    let after = settled_stats(&http, &base).await;
    let refetched = after.peer_bytes + after.origin_bytes;
    println!(
        "[{WHAT}] after the restart the pull took {:?} and fetched {refetched} B again ({:.1} % of the layer)",
        t2.elapsed(),
        100.0 * refetched as f64 / layer_size as f64
    );
    print_stats(WHAT, "after the restart", &after);
    for l in warnings(&node.log()) {
        println!("[{WHAT}] node log: {l}");
    }
    report_egress(WHAT, &http, &gw, &img).await;
    println!("[{WHAT}] total {:?}", t0.elapsed());

    assert!(
        refetched < layer_size,
        "the restarted node fetched {refetched} B, the whole {layer_size} B layer again"
    );
    // Every piece the client had read was verified, hence written to the blob file, which a
    // SIGKILL does not undo: those pieces must not be fetched again.
    let kept = read / PIECE * PIECE;
    assert!(
        refetched <= layer_size - kept + config_bytes,
        "the client had read {read} B ({} whole pieces) before the kill, yet the restarted node \
         fetched {refetched} B of the {layer_size} B layer again",
        read / PIECE
    );
}

/// Issue 5: 30 % of the nodes killed (SIGKILL) during a fleet pull; every survivor completes
/// with verified bytes. The victims are the three nodes that had served the most to the others
/// at the moment of the kill, so the survivors lose the peers they were leaning on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_of_the_fleet_killed_mid_pull() {
    const WHAT: &str = "30 % killed";
    const NODES: usize = 10;
    const VICTIMS: usize = 3;
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    // Shared by the pull tasks without copying its 64 MiB.
    let img = std::sync::Arc::new(
        Image::push(
            &http,
            &gw.url(),
            "fleet/churn",
            "v1",
            &[40 * MIB, 24 * MIB, 1024],
            3,
        )
        .await,
    );
    let mut nodes: Vec<NodeProc> = (0..NODES)
        .map(|i| {
            let dir = tmp.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            NodeProc::start(&gw.url(), &dir)
        })
        .collect();
    println!(
        "[{WHAT}] pushed and started {NODES} nodes in {:?}",
        t0.elapsed()
    );

    // Every node pulls in its own task: a victim's pull breaks when it dies, which must not
    // take the others down. `pull` panics on a wrong byte, which the join below reports.
    let t1 = Instant::now();
    let pulls: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (http, base, img) = (http.clone(), n.url(), img.clone());
            tokio::spawn(async move { super::pull(&http, &base, &img).await })
        })
        .collect();

    // Kill once the fleet has fetched about a fifth of what it needs in all.
    let need = img.size() * NODES as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let served = loop {
        let mut fetched = 0;
        let mut served = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let s = node_stats(&http, &n.url()).await;
            fetched += s.peer_bytes + s.origin_bytes;
            served.push((s.served_bytes, i));
        }
        if fetched * 5 >= need {
            println!(
                "[{WHAT}] {fetched} B of {need} fetched after {:?}",
                t1.elapsed()
            );
            break served;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet fetched only {fetched} B of {need} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut ranked = served;
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    let victims: Vec<usize> = ranked.iter().take(VICTIMS).map(|&(_, i)| i).collect();
    for &v in &victims {
        println!(
            "[{WHAT}] kill -9 node{v} (it had served {} B)",
            ranked.iter().find(|r| r.1 == v).map_or(0, |r| r.0)
        );
        nodes[v].kill9();
    }

    let mut failures = Vec::new();
    let limit = Duration::from_secs(90);
    for (i, p) in pulls.into_iter().enumerate() {
        if victims.contains(&i) {
            p.abort();
            continue;
        }
        match tokio::time::timeout(limit.saturating_sub(t1.elapsed()), p).await {
            Ok(Ok(took)) => println!("[{WHAT}] node{i} completed, verified, in {took:?}"),
            Ok(Err(e)) => failures.push(format!("node{i}: the pull failed: {e}")),
            Err(_) => failures.push(format!("node{i}: no complete pull within {limit:?}")),
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if victims.contains(&i) {
            continue;
        }
        let s = settled_stats(&http, &n.url()).await;
        print_stats(WHAT, &format!("node{i}"), &s);
        if !failures.is_empty() {
            for l in warnings(&n.log()) {
                println!("[{WHAT}] node{i} log: {l}");
            }
        }
    }
    report_egress(WHAT, &http, &gw, &img).await;
    println!("[{WHAT}] total {:?}", t0.elapsed());
    assert_no_failures(WHAT, &failures);
}
