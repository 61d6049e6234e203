//! Idle eviction (`evict_unused_after_secs`, SPEC §6.1): a node that pulled an image gives its
//! disk back once the blobs sit unused for the configured time, and pulls the image again
//! afterwards.

use std::time::{Duration, Instant};

use flotilla_node::NodeOptions;

use super::{FLEET_TOKEN, FleetGateway, Image, InNode, MIB, client, node_stats, pull};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_image_is_evicted_and_pulled_again() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = FleetGateway::start();
    let http = client();
    let img = Image::push(&http, &gw.url(), "fleet/idle", "v1", &[8 * MIB, MIB], 31).await;
    let node = InNode::start_tuned(
        &gw.url(),
        FLEET_TOKEN,
        tmp.path(),
        NodeOptions::default(),
        |c| c.evict_unused_after_secs = Some(1),
    )
    .await;
    pull(&http, &node.url, &img).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = node_stats(&http, &node.url).await;
        if s.stored_bytes == 0 {
            assert!(
                s.evicted_bytes >= img.size(),
                "evicted {} B of an image of {} B",
                s.evicted_bytes,
                img.size()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle image is still stored: {} B",
            s.stored_bytes
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pull(&http, &node.url, &img).await;
    assert!(node_stats(&http, &node.url).await.stored_bytes > 0);
    node.stop().await;
}
