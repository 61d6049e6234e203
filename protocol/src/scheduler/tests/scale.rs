//! Swarm-scale measurements of the scheduler (origin egress, completion against the Kumar–Ross
//! bound, events per second, cost per event): `cargo test -p flotilla-protocol --release --
//! --ignored scale --nocapture`. Printed, not asserted beyond completion: the simulator owns the
//! targets. For exploring, `scale_report` reads `ONLY` (a label substring), `DEDUP` (seconds the
//! origin refuses a piece it is sending or sent), `FANOUT`, `STEP`, `MIN_IF`, `MAX_WIN` and
//! `INIT_WIN` from the environment.

use std::time::{Duration, Instant};

use super::super::Config;
use super::driver::{Spec, Swarm};
use crate::scheduler::peer::XorShift;

/// One swarm: `n` leechers with uploads in 0.5–1.5 × 10 pieces/s and downloads 2× that.
struct Case {
    label: &'static str,
    n: usize,
    degree: Option<usize>,
    rtt: Duration,
    origin_up: f64,
    swarm_hint: bool,
}

/// Runs `case` and prints one line; returns how many leechers completed.
fn run(case: &Case, pieces: u32, seed: u64) -> usize {
    let &Case {
        label,
        n,
        degree,
        rtt,
        origin_up,
        swarm_hint,
    } = case;
    let mut rng = XorShift::new(seed);
    let leechers: Vec<(f64, f64)> = (0..n)
        .map(|_| {
            let up = 10.0 * (0.5 + (rng.next() % 1000) as f64 / 1000.0);
            (up, 2.0 * up)
        })
        .collect();
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    let d = Config::default();
    let cfg = Config {
        seed,
        origin_grace: Duration::from_millis(200),
        origin_fanout: env("FANOUT").unwrap_or(d.origin_fanout),
        origin_step: env("STEP").map_or(d.origin_step, Duration::from_secs_f64),
        min_in_flight: env("MIN_IF").map_or(d.min_in_flight, |v| v as u32),
        initial_in_flight: env("MIN_IF").map_or(d.initial_in_flight, |v| v as u32),
        max_window: env("MAX_WIN").map_or(d.max_window, |v| v as u32),
        initial_window: env("INIT_WIN").map_or(d.initial_window, |v| v as u32),
        read_ahead: 0,
        ..d
    };
    let start = Instant::now();
    let mut swarm = Swarm::build(Spec {
        pieces,
        leechers,
        seeds: Vec::new(),
        origin_up,
        degree,
        rtt,
        cfg,
        swarm_hint,
        origin_dedup: env("DEDUP").map(Duration::from_secs_f64),
    });
    swarm.run(u64::MAX);
    let wall = start.elapsed();
    let times = swarm.done_times();
    let bound = swarm.bound(pieces);
    let pct = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize].as_secs_f64();
    let origin_ratio = f64::from(swarm.origin_served()) / f64::from(pieces);
    println!(
        "{label:<34} n={n:<5} done={:<5} origin×{origin_ratio:<5.2} p50/T={:<5.2} p99/T={:<5.2} \
         max/T={:<5.2} T={bound:.1}s origin-until={:.1}s origin-requests={} wasted={} \
         events={} ({:.1} M/s, {wall:.1?})",
        times.len(),
        pct(0.5) / bound,
        pct(0.99) / bound,
        pct(1.0) / bound,
        swarm.origin_last.as_secs_f64(),
        swarm.origin_requests,
        swarm.wasted,
        swarm.handled,
        swarm.handled as f64 / wall.as_secs_f64() / 1e6,
    );
    times.len()
}

#[test]
#[ignore = "measurement; run in release"]
fn scale_report() {
    let ms = Duration::from_millis;
    let only = std::env::var("ONLY").ok();
    let case = |label, n, degree, rtt, origin_up, swarm_hint| Case {
        label,
        n,
        degree,
        rtt,
        origin_up,
        swarm_hint,
    };
    for c in [
        case("full mesh, 16, origin=node", 16, None, ms(0), 10.0, false),
        case("full mesh, 16, rtt 50ms", 16, None, ms(50), 10.0, false),
        case("k=16, 100, origin=node", 100, Some(16), ms(5), 10.0, false),
        case(
            "k=16, 100, origin=node, hint",
            100,
            Some(16),
            ms(5),
            10.0,
            true,
        ),
        case("k=32, 500, origin=node", 500, Some(32), ms(2), 10.0, false),
        case(
            "k=32, 500, origin=node, hint",
            500,
            Some(32),
            ms(2),
            10.0,
            true,
        ),
        case(
            "k=32, 2000, origin=5 nodes",
            2000,
            Some(32),
            ms(2),
            50.0,
            false,
        ),
        case(
            "k=32, 2000, origin=5 nodes, hint",
            2000,
            Some(32),
            ms(2),
            50.0,
            true,
        ),
    ] {
        if only.as_deref().is_some_and(|o| !c.label.contains(o)) {
            continue;
        }
        assert_eq!(run(&c, 256, 1), c.n, "{}: every leecher completes", c.label);
    }
}

/// Cost of the scheduler's hot paths on a 1 GiB blob (256 pieces) with 32 peers:
/// `cargo test -p flotilla-protocol --release -- --ignored scale_event_cost --nocapture`.
#[test]
#[ignore = "measurement; run in release"]
fn scale_event_cost() {
    use super::super::{Action, Scheduler};
    use crate::piece::Bitfield;
    const PIECES: u32 = 256;
    let ms = Duration::from_millis;
    let time = |label: &str, n: u64, f: &mut dyn FnMut(u64)| {
        let start = Instant::now();
        for k in 0..n {
            f(k);
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!("{label:<58} {per:>8.0} ns");
    };
    // A mid-download node: half the pieces held, 32 peers holding random halves, windows full.
    let build = || {
        let mut rng = XorShift::new(3);
        let mut have = Bitfield::new(PIECES);
        for i in 0..PIECES / 2 {
            have.set(i * 2);
        }
        let mut s = Scheduler::new(0u32, have, Config::default(), ms(0));
        for p in 1..=32u32 {
            let mut b = Bitfield::new(PIECES);
            for i in 0..PIECES {
                if rng.next().is_multiple_of(2) {
                    b.set(i);
                }
            }
            s.peer_added(p, b, ms(0));
        }
        let mut out = Vec::new();
        while let Some(a) = s.poll_action() {
            if let Action::Request { source, piece } = a {
                out.push((source, piece));
            }
        }
        (s, out)
    };
    let (mut s, _) = build();
    time(
        "peer_have, piece already known + poll_action (no-op)",
        2_000_000,
        &mut |k| {
            s.peer_have(1 + (k % 32) as u32, (k % 128) as u32 * 2, ms(1));
            assert!(s.poll_action().is_none());
        },
    );
    // Whole downloads, timed event by event: receive a piece, drain, re-arm the timer.
    let mut events = 0u64;
    let mut spent = Duration::ZERO;
    for _ in 0..200 {
        let (mut s, mut out) = build();
        let mut t = 10;
        let start = Instant::now();
        while let Some((source, piece)) = out.pop() {
            t += 1;
            events += 1;
            s.piece_received(source, piece, ms(t));
            while let Some(a) = s.poll_action() {
                if let Action::Request { source, piece } = a {
                    out.insert(0, (source, piece));
                }
            }
            let _ = s.poll_timeout();
        }
        spent += start.elapsed();
        assert!(s.is_done());
    }
    println!(
        "{:<58} {:>8.0} ns",
        "piece_received + poll_action until None + poll_timeout",
        spent.as_nanos() as f64 / events as f64
    );
    let (mut s, _) = build();
    time("poll_timeout (cached)", 2_000_000, &mut |_| {
        let _ = s.poll_timeout();
    });
    // Peers learning pieces one at a time (their windows are full: no request follows).
    let mut events = 0u64;
    let mut spent = Duration::ZERO;
    for _ in 0..200 {
        let (mut s, _) = build();
        let start = Instant::now();
        for p in 1..=32u32 {
            for x in 0..PIECES {
                events += 1;
                s.peer_have(p, x, ms(2));
                while s.poll_action().is_some() {}
            }
        }
        spent += start.elapsed();
    }
    println!(
        "{:<58} {:>8.0} ns",
        "peer_have (any piece, windows full) + poll_action",
        spent.as_nanos() as f64 / events as f64
    );
    let start = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(build());
    }
    println!(
        "{:<58} {:>8.0} ns",
        "new + 32 × peer_added(half full) + first requests",
        start.elapsed().as_nanos() as f64 / 1000.0
    );
    // Heap: have + rarity (order, pos: 4 B; availability: 2 B) + claims (1 B) per piece; per
    // peer its state and bit field; per request an `InFlight`.
    let (sched, peer, req) = (
        std::mem::size_of::<Scheduler<u32>>(),
        std::mem::size_of::<crate::scheduler::peer::PeerState<u32>>(),
        std::mem::size_of::<crate::scheduler::peer::InFlight>(),
    );
    let per_piece = 4 + 4 + 2 + 1;
    let total = sched
        + PIECES as usize * per_piece
        + PIECES as usize / 8
        + 32 * (peer + PIECES as usize / 8)
        + 64 * req;
    println!(
        "Scheduler<u32> {sched} B, PeerState {peer} B, InFlight {req} B: ≈{} KB for {PIECES} \
         pieces, 32 peers, 64 requests",
        total / 1024
    );
}
