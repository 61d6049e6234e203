//! The origin: asked only for pieces no candidate holds and after the grace (or a cold start),
//! cancelled when a peer gets the piece whole, offered alternatives, and — with the swarm size
//! and a deduplicating origin — each piece sent about once.

use super::*;

#[test]
fn origin_only_for_unseen_pieces_and_after_grace() {
    let c = Config {
        origin_grace: ms(1000),
        ..Config::default()
    };
    let mut s = Scheduler::new(0, Bitfield::new(6), c, ms(0));
    s.peer_added(1, some(6, [0, 1]), ms(0));
    let r = requests(&drain(&mut s));
    assert!(r.iter().all(|r| r.0 == Source::Peer(1)), "{r:?}");
    assert_eq!(s.poll_timeout(), Some(ms(1000)), "grace end");
    // After the grace and the stall timeout anyone may use the origin, still never for 0 and 1.
    let mut origin = HashSet::new();
    for t in [1000, 6000, 12_000, 30_000] {
        s.handle_timeout(ms(t));
        for a in drain(&mut s) {
            match a {
                Action::Request {
                    source: Source::Origin,
                    piece,
                } => {
                    origin.insert(piece);
                    s.piece_received(Source::Origin, piece, ms(t));
                }
                Action::Request { .. } | Action::Cancel { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        origin.extend(
            requests(&drain(&mut s))
                .into_iter()
                .filter(|r| r.0 == Source::Origin)
                .map(|r| r.1),
        );
    }
    assert!(!origin.is_empty());
    assert!(origin.iter().all(|p| *p >= 2), "{origin:?}");
}

#[test]
fn lone_node_uses_origin_after_grace() {
    let c = Config {
        origin_grace: ms(500),
        ..Config::default()
    };
    let mut s = Scheduler::new(0u32, Bitfield::new(5), c, ms(0));
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(ms(500));
    let r = requests(&drain(&mut s));
    assert_eq!(r.len(), 2, "origin window");
    assert!(r.iter().all(|r| r.0 == Source::Origin));
}

#[test]
fn cold_start_ends_the_origin_grace() {
    let c = Config {
        origin_grace: ms(1000),
        ..Config::default()
    };
    let mut s = Scheduler::new(0u32, Bitfield::new(5), c, ms(0));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(ms(1000)), "grace end");
    s.end_origin_grace(ms(20));
    let r = requests(&drain(&mut s));
    assert_eq!(r.len(), 2, "origin window at 20 ms: {r:?}");
    assert!(r.iter().all(|r| r.0 == Source::Origin));
    // Reporting it again, or later, changes nothing.
    s.end_origin_grace(ms(30));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_piece_only_a_liar_holds_goes_to_the_origin() {
    // A one-piece blob: the liar cannot reach the ban threshold, and nobody else holds the
    // piece. Its bad copy must stop counting, or the piece is asked of nobody for ever.
    let c = Config {
        origin_grace: Duration::ZERO,
        ..Config::default()
    };
    let mut s = Scheduler::new(0, Bitfield::new(1), c, ms(0));
    s.peer_added(1, full(1), ms(0));
    assert_eq!(requests(&drain(&mut s)), vec![(Source::Peer(1), 0)]);
    s.piece_invalid(1, 0, ms(10));
    assert_eq!(s.availability(0), 0);
    let mut asked = requests(&drain(&mut s));
    let mut t = 10;
    while asked.is_empty() && t < 60_000 {
        t += 100;
        s.handle_timeout(ms(t));
        asked = requests(&drain(&mut s));
    }
    assert_eq!(asked, vec![(Source::Origin, 0)], "after {t} ms");
}

/// A download of 4 pieces with no grace and one peer holding nothing: it asks the origin first.
/// Returns the scheduler and the pieces asked of the origin (at least one).
fn asking_the_origin() -> (Scheduler<u32>, Vec<u32>) {
    let c = Config {
        origin_grace: ms(0),
        ..Config::default()
    };
    let mut s = Scheduler::new(0u32, Bitfield::new(4), c, ms(0));
    s.peer_added(1, Bitfield::new(4), ms(0));
    let r = requests(&drain(&mut s));
    let origin: Vec<u32> = r
        .iter()
        .filter(|r| r.0 == Source::Origin)
        .map(|r| r.1)
        .collect();
    assert!(!origin.is_empty(), "{r:?}");
    (s, origin)
}

#[test]
fn origin_request_is_cancelled_when_a_peer_gets_the_piece() {
    let (mut s, origin) = asking_the_origin();
    let x = origin[0];
    s.peer_have(1, x, ms(10));
    let next = drain(&mut s);
    assert_eq!(
        next[0],
        Action::Cancel {
            source: Source::Origin,
            piece: x
        }
    );
    assert!(next.contains(&req(1, x)), "{next:?}");
}

#[test]
fn a_piece_arriving_at_a_peer_cancels_the_origin_request_only_when_whole() {
    let (mut s, origin) = asking_the_origin();
    let x = origin[0];
    // The copy arriving at peer 1 may be fed by our own origin transfer (passed on to it while
    // it arrives here): cancelling now could starve both.
    s.peer_arriving(1, x, ms(10));
    let next = drain(&mut s);
    assert!(
        !next.iter().any(|a| matches!(a, Action::Cancel { .. })),
        "{next:?}"
    );
    assert!(s.is_requested(Source::Origin, x));
    // Pieces arriving there count as held there: another one is asked of peer 1.
    let y = (0..4).find(|p| !origin.contains(p)).unwrap();
    s.peer_arriving(1, y, ms(11));
    assert!(drain(&mut s).contains(&req(1, y)));
    // Whole now: the origin's transfer stops and peer 1 serves it.
    s.peer_have(1, x, ms(20));
    let next = drain(&mut s);
    assert_eq!(
        next[0],
        Action::Cancel {
            source: Source::Origin,
            piece: x
        }
    );
    assert!(next.contains(&req(1, x)), "{next:?}");
    // A Have after Arriving changes nothing more for a piece no longer in flight anywhere.
    s.peer_have(1, y, ms(21));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn origin_requests_offer_alternatives_and_take_the_substitute() {
    let c = Config {
        origin_grace: ms(0),
        origin_window: 1,
        origin_alternatives: 3,
        ..Config::default()
    };
    let mut s = Scheduler::new(0u32, Bitfield::new(8), c, ms(0));
    let r = requests(&drain(&mut s));
    assert_eq!(r.len(), 1);
    let asked = r[0].1;
    let alts = s.origin_alternatives(asked).to_vec();
    assert_eq!(alts.len(), 3, "{alts:?}");
    assert!(!alts.contains(&asked), "{alts:?}");
    assert!(s.origin_alternatives(99).is_empty());
    // The origin sends the second alternative instead: the request stands for it (the window
    // of one stays full), and the piece asked for is free again.
    let got = alts[1];
    s.origin_substituted(asked, got, ms(1));
    assert!(
        drain(&mut s).is_empty(),
        "window of one, taken by the substitute"
    );
    s.piece_received(Source::Origin, got, ms(2));
    assert!(s.have().get(got));
    let r = requests(&drain(&mut s));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, Source::Origin);
    // A refusal holds back the piece asked for and every alternative offered with it.
    let next = r[0].1;
    let offered = s.origin_alternatives(next).to_vec();
    s.request_refused(Source::Origin, next, ms(3));
    let r = requests(&drain(&mut s));
    for (_, x) in &r {
        assert!(*x != next && !offered.contains(x), "{x} was held: {r:?}");
    }
    // A substitute that a peer holds by then is cancelled at once.
    let c = Config {
        origin_grace: ms(0),
        origin_window: 1,
        ..Config::default()
    };
    let mut s = Scheduler::new(0u32, Bitfield::new(4), c, ms(0));
    let asked = requests(&drain(&mut s))[0].1;
    let got = s.origin_alternatives(asked)[0];
    s.peer_added(1, some(4, [got]), ms(1));
    let before = requests(&drain(&mut s)).len();
    s.origin_substituted(asked, got, ms(2));
    let a = drain(&mut s);
    assert!(
        a.contains(&Action::Cancel {
            source: Source::Origin,
            piece: got
        }),
        "{a:?}"
    );
    assert_eq!(s.in_flight(), before + requests(&a).len());
}

#[test]
fn swarm_size_limits_who_goes_to_the_origin() {
    // With 100,000 nodes in the swarm and none of them visible, a node fetches a piece first
    // only if fewer than `origin_fanout` unseen nodes are expected to outrank it: about
    // 2 / 100,000 of the pieces; the allowance grows by one per step after that.
    let pieces = 2000;
    let c = Config {
        origin_grace: ms(0),
        origin_window: 1,
        ..Config::default()
    };
    let step = c.origin_step;
    let mut counts = Vec::new();
    for node in 0..20u32 {
        let mut s = Scheduler::new(node, Bitfield::new(pieces), c.clone(), ms(0));
        s.set_swarm_size(100_000);
        counts.push(requests(&drain(&mut s)).len());
    }
    assert!(counts.iter().sum::<usize>() <= 2, "{counts:?}");
    // Small swarms (or no estimate): the node sees everyone and fetches its share at once.
    let mut s = Scheduler::new(0u32, Bitfield::new(pieces), c.clone(), ms(0));
    s.set_swarm_size(1);
    assert_eq!(requests(&drain(&mut s)).len(), 1);
    // The allowance grows with time: after enough steps every unseen piece is eligible.
    let mut s = Scheduler::new(7u32, Bitfield::new(pieces), c, ms(0));
    s.set_swarm_size(50);
    let mut t = Duration::ZERO;
    while requests(&drain(&mut s)).is_empty() {
        let next = s.poll_timeout().expect("a step timer while pieces wait");
        assert!(next > t && next <= t + step, "{next:?} after {t:?}");
        t = next;
        s.handle_timeout(t);
    }
    assert!(t <= step * 50, "{t:?}");
}

#[test]
fn partial_views_with_a_deduplicating_origin_send_each_piece_about_once() {
    // 100 nodes that each know ~16 others, told the swarm size, and an origin that refuses a
    // piece it is sending or sent in the last 2 s. Over six scheduler seeds: whether a piece
    // waits out a refusal window somewhere is chance, so one seed says little about idling.
    let mut rng = peer::XorShift::new(11);
    let leechers: Vec<(f64, f64)> = (0..100)
        .map(|_| {
            let up = 5.0 + (rng.next() % 100) as f64 / 10.0;
            (up, 2.0 * up)
        })
        .collect();
    let mut origin_last = Duration::ZERO;
    for seed in 1..=6 {
        let mut swarm = Swarm::build(driver::Spec {
            pieces: 64,
            leechers: leechers.clone(),
            seeds: Vec::new(),
            origin_up: 10.0,
            degree: Some(16),
            rtt: ms(5),
            cfg: swarm_config(seed),
            swarm_hint: true,
            origin_dedup: Some(Duration::from_secs(2)),
        });
        swarm.run(20_000_000);
        let times = swarm.done_times();
        assert_eq!(times.len(), 100, "everyone completes");
        let origin = swarm.origin_served();
        let bound = swarm.bound(64);
        let last = times[99].as_secs_f64();
        println!(
            "seed {seed}: origin served {origin}/64, its last send {:?}, last {last:.1} s, bound {bound:.1} s",
            swarm.origin_last
        );
        assert!(origin <= 64 * 9 / 8, "origin served {origin}");
        assert!(last < 2.0 * bound, "{last} vs bound {bound}");
        origin_last += swarm.origin_last;
    }
    // The origin alone needs 6.4 s; it must not sit idle while pieces wait for it.
    let mean = origin_last / 6;
    assert!(mean < Duration::from_secs(8), "{mean:?}");
}
