//! The locality rules: near peers first, one fetch across the WAN per site and piece (the
//! rendezvous winner among the near nodes), its fallback, one far request at a time, far
//! requests cancelled once a near peer holds the piece, patient far timeouts, round trips
//! heard before a peer is added, and no end-game copy across the WAN.

use super::*;
use crate::scheduler::peer::{rank, stable_hash};

const NEAR: Duration = Duration::from_millis(1);
const FAR: Duration = Duration::from_millis(80);

/// A scheduler for node 0 that never uses the origin, with a near and a far candidate.
fn two_sites(pieces: u32, near_has: Bitfield, far_has: Bitfield) -> Scheduler<u32> {
    let mut s = Scheduler::new(0, Bitfield::new(pieces), cfg(), ms(0));
    s.peer_rtt(1, NEAR, ms(0));
    s.peer_rtt(2, FAR, ms(0));
    s.peer_added(1, near_has, ms(0));
    s.peer_added(2, far_has, ms(0));
    s
}

/// Whether node `me` outranks every node of `others` for `piece`.
fn wins(me: u32, others: &[u32], piece: u32) -> bool {
    let mine = rank(stable_hash(&me), piece);
    others.iter().all(|o| rank(stable_hash(o), piece) < mine)
}

fn sources(actions: &[Action<u32>]) -> Vec<(Source<u32>, u32)> {
    requests(actions)
}

#[test]
fn a_piece_a_near_peer_holds_is_never_asked_of_a_far_one() {
    let mut s = two_sites(8, full(8), full(8));
    let r = sources(&drain(&mut s));
    assert!(!r.is_empty());
    assert!(r.iter().all(|r| r.0 == Source::Peer(1)), "{r:?}");
}

/// Receives everything asked (all from the far peer 2) until nothing more is asked, at 10 ms.
fn fetch_all(s: &mut Scheduler<u32>) -> HashSet<u32> {
    let mut asked = HashSet::new();
    loop {
        let r = sources(&drain(s));
        if r.is_empty() {
            return asked;
        }
        for (source, piece) in r {
            assert_eq!(source, Source::Peer(2));
            asked.insert(piece);
            s.piece_received(source, piece, ms(10));
        }
    }
}

#[test]
fn only_the_sites_rendezvous_winner_fetches_across_the_wan() {
    // The near peer holds nothing; among {0, 1} only pieces node 0 wins come from afar.
    let n = 32;
    let mut s = two_sites(n, Bitfield::new(n), full(n));
    let asked = fetch_all(&mut s);
    let expect: HashSet<u32> = (0..n).filter(|&x| wins(0, &[1], x)).collect();
    assert!(!expect.is_empty() && expect.len() < n as usize);
    assert_eq!(asked, expect);
    // Naming more near nodes narrows it further (none of them is a candidate).
    let mut s = two_sites(n, Bitfield::new(n), full(n));
    s.set_near_nodes([3, 4, 5, 0]);
    let asked = fetch_all(&mut s);
    let expect: HashSet<u32> = (0..n).filter(|&x| wins(0, &[1, 3, 4, 5], x)).collect();
    assert_eq!(asked, expect);
}

#[test]
fn without_news_from_near_peers_the_next_node_of_the_site_steps_in() {
    let n = 32;
    let mut s = two_sites(n, Bitfield::new(n), full(n));
    let patience = Config::default().near_patience;
    // Receive what we may fetch; the rest waits for the near peer.
    fetch_all(&mut s);
    let lost: Vec<u32> = (0..n).filter(|&x| !wins(0, &[1], x)).collect();
    assert!(lost.iter().all(|&x| !s.have().get(x)));
    // The timer covers the fallback: one near node ahead is allowed after one patience.
    let t = s.poll_timeout().expect("a timer for the fallback");
    assert_eq!(t, ms(10) + patience);
    s.handle_timeout(t);
    let r = sources(&drain(&mut s));
    assert!(!r.is_empty());
    assert!(
        r.iter()
            .all(|r| r.0 == Source::Peer(2) && lost.contains(&r.1))
    );
}

#[test]
fn one_far_request_at_a_time() {
    let n = 32;
    let c = Config {
        initial_window: 4,
        ..cfg()
    };
    let mut s = Scheduler::new(0, Bitfield::new(n), c, ms(0));
    s.peer_rtt(2, FAR, ms(0));
    s.peer_rtt(3, FAR, ms(0));
    s.peer_added(2, full(n), ms(0));
    s.peer_added(3, full(n), ms(0));
    let r = sources(&drain(&mut s));
    assert_eq!(r.len(), 1, "{r:?}");
    s.piece_received(r[0].0, r[0].1, ms(10));
    assert_eq!(sources(&drain(&mut s)).len(), 1);
}

#[test]
fn a_near_peer_getting_a_piece_cancels_its_far_request() {
    let n = 16;
    let mut s = two_sites(n, Bitfield::new(n), full(n));
    let r = sources(&drain(&mut s));
    let (_, piece) = *r.first().expect("a far request");
    s.peer_have(1, piece, ms(5));
    let a = drain(&mut s);
    assert!(
        a.contains(&Action::Cancel {
            source: Source::Peer(2),
            piece
        }),
        "{a:?}"
    );
    assert!(a.contains(&req(1, piece)), "{a:?}");
}

#[test]
fn far_requests_wait_for_the_shared_link_near_ones_time_out() {
    let n = 16;
    let mut s = two_sites(n, some(n, [0]), full(n));
    let r = sources(&drain(&mut s));
    assert!(r.contains(&(Source::Peer(1), 0)));
    assert!(r.iter().any(|r| r.0 == Source::Peer(2)));
    // Past every first deadline but below max_timeout: only the near request is cancelled.
    s.handle_timeout(Duration::from_secs(20));
    let cancels: Vec<_> = drain(&mut s)
        .into_iter()
        .filter(|a| matches!(a, Action::Cancel { .. }))
        .collect();
    assert_eq!(
        cancels,
        vec![Action::Cancel {
            source: Source::Peer(1),
            piece: 0
        }]
    );
    // At max_timeout the far ones go too.
    s.handle_timeout(Config::default().max_timeout);
    let a = drain(&mut s);
    assert!(a.iter().any(|a| matches!(
        a,
        Action::Cancel {
            source: Source::Peer(2),
            ..
        }
    )));
}

#[test]
fn a_round_trip_heard_before_the_bit_field_keeps_a_far_peer_far() {
    let n = 16;
    let mut s = two_sites(n, Bitfield::new(n), some(n, 0..8));
    let r = sources(&drain(&mut s));
    let (_, piece) = *r.first().expect("a far request");
    // Another far peer connects: its bit field must not cancel the far request.
    s.peer_rtt(3, FAR, ms(1));
    assert!(s.peer_added(3, full(n), ms(1)));
    let a = drain(&mut s);
    assert!(
        !a.contains(&Action::Cancel {
            source: Source::Peer(2),
            piece
        }),
        "{a:?}"
    );
}

#[test]
fn without_round_trips_nothing_changes() {
    // Every peer counts as near: the far peer of the other tests is asked like any other.
    let mut s = Scheduler::new(0, Bitfield::new(8), cfg(), ms(0));
    s.peer_added(1, Bitfield::new(8), ms(0));
    s.peer_added(2, full(8), ms(0));
    let r = sources(&drain(&mut s));
    assert!(
        r.iter().filter(|r| r.0 == Source::Peer(2)).count() >= 2,
        "{r:?}"
    );
}

#[test]
fn no_end_game_copy_across_the_wan_and_no_wake_up_for_one() {
    let mut s = two_sites(1, full(1), full(1));
    assert_eq!(sources(&drain(&mut s)), vec![(Source::Peer(1), 0)]);
    // Every missing piece is in flight and only a far peer could take a second copy: none
    // goes, and the scheduler does not wake for one. Its next timer is the request's own
    // deadline, which cancels it.
    let t = s.poll_timeout().expect("the request's deadline");
    assert!(
        t > cfg().initial_latency,
        "woke at {t:?} for a copy it will not send"
    );
    s.handle_timeout(t);
    let actions = drain(&mut s);
    assert!(
        actions.contains(&Action::Cancel {
            source: Source::Peer(1),
            piece: 0
        }),
        "{actions:?}"
    );
}
