//! Byzantine peers (issue 5): a node that advertises every piece and then answers `Missing`
//! for each (its bit field lies), and a node that accepts requests and never answers them. In
//! both cases the honest nodes must deliver zero bad bytes to their clients, ban the peer, and
//! complete the pull from the others and the gateway. (A peer that sends garbage is
//! `in_process::corrupting_peer_is_banned_and_pull_completes`.)

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use flotilla_node::NodeOptions;
use flotilla_node::ports::{Held, PieceFile, PieceSource, SourceError};
use flotilla_protocol::Digest;
use futures::future::BoxFuture;

use super::{
    FleetGateway, Image, InNode, LogFile, MIB, client, log_runtime, print_stats, pull_all,
    settled_stats, warnings,
};

/// How the byzantine peer misbehaves once it holds the image.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Advertises every piece (its real, complete bit field) but answers `Missing` to every
    /// request: to a downloader that is a bit field that lies.
    Missing,
    /// Accepts every request and never answers.
    Stall,
}

/// Serves the real holdings and bit fields, then misbehaves on every piece request.
struct Byzantine {
    real: Arc<dyn PieceSource>,
    lie: Lie,
}

impl PieceSource for Byzantine {
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>> {
        self.real.held(digest)
    }

    fn piece_file(
        &self,
        digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>> {
        let lie = self.lie;
        let what = format!("{digest} piece {index}");
        Box::pin(async move {
            match lie {
                Lie::Missing => Err(SourceError::NotHeld(what)),
                Lie::Stall => std::future::pending().await,
            }
        })
    }

    fn served(&self, digest: &Digest, bytes: u64) {
        self.real.served(digest, bytes);
    }
}

#[test]
fn peer_whose_bit_field_lies_is_banned_and_pull_completes() {
    run("lying bit field", Lie::Missing);
}

#[test]
fn peer_that_stalls_after_accepting_requests_is_banned_and_pull_completes() {
    run("staller", Lie::Stall);
}

fn run(what: &'static str, lie: Lie) {
    let tmp = tempfile::tempdir().unwrap();
    let log = LogFile::create(&tmp.path().join("byzantine.log"));
    let (rt, dispatch) = log_runtime(&log);
    let _default = tracing::dispatcher::set_default(&dispatch);
    rt.block_on(byzantine(what, lie, tmp.path(), &log));
}

async fn byzantine(what: &str, lie: Lie, dir: &Path, log: &LogFile) {
    let t0 = Instant::now();
    let gw = FleetGateway::start();
    let http = client();
    gw.info(&http).await;
    // Enough pieces (4 MiB each) that every honest node asks the liar more than a few times.
    let layers = [20 * MIB, 13 * MIB, 2048];
    let img = Image::push(&http, &gw.url(), "fleet/byzantine", "v1", &layers, 2).await;

    let wrap: flotilla_node::WrapSource =
        Arc::new(move |real| Arc::new(Byzantine { real, lie }) as Arc<dyn PieceSource>);
    let liar = super::in_process::start_liar(what, &gw, &dir.join("liar"), wrap, &http, &img).await;

    let mut honest = Vec::new();
    for name in ["b", "c", "d"] {
        // A short stall limit, so the staller is caught within this small pull; the default
        // (10 s) leaves room for overloaded honest peers.
        honest.push(
            InNode::start_tuned(
                &gw.url(),
                super::FLEET_TOKEN,
                &dir.join(name),
                NodeOptions::default(),
                |c| c.peer_stall_secs = 1,
            )
            .await,
        );
    }
    let t1 = Instant::now();
    let urls: Vec<String> = honest.iter().map(|n| n.url.clone()).collect();
    // pull_all checks every blob's sha256 against its digest: a single bad byte fails here.
    let times = pull_all(&http, &urls, &img).await.unwrap_or_else(|e| {
        for l in warnings(&log.read()) {
            println!("[{what}] node log: {l}");
        }
        panic!(
            "[{what}] honest pull failed: {e}; log {}",
            log.path.display()
        )
    });
    println!(
        "[{what}] b, c, d pulled correct bytes in {:?} ({times:?})",
        t1.elapsed()
    );

    let sl = settled_stats(&http, &liar.url).await;
    print_stats(what, "liar", &sl);
    let mut banned = 0;
    for (name, n) in ["b", "c", "d"].iter().zip(&honest) {
        let s = settled_stats(&http, &n.url).await;
        print_stats(what, name, &s);
        banned += s.peers_banned;
    }
    let text = log.read();
    let bans: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("banning peer") && l.contains(&liar.peer_id))
        .collect();
    for l in &bans {
        println!("[{what}] {l}");
    }
    let liar_id = liar.peer_id.clone();
    liar.stop().await;
    for n in honest {
        n.stop().await;
    }
    println!("[{what}] total {:?}", t0.elapsed());

    assert_eq!(
        sl.served_bytes, 0,
        "the byzantine peer served {} B although it never answers a request",
        sl.served_bytes
    );
    assert!(
        !bans.is_empty() && banned > 0,
        "no honest node banned the byzantine peer {liar_id} ({banned} bans counted in the \
         stats); log {}",
        log.path.display()
    );
}
