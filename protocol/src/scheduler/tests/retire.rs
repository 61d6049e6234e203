//! Retiring a peer gracefully (`retire.rs`): the piece it is sending finishes, the rest moves on.

use super::*;

fn cancel(p: u32, piece: u32) -> Action<u32> {
    Action::Cancel {
        source: Source::Peer(p),
        piece,
    }
}

/// Peer 1 holds all 4 pieces and has two requests (window 2): its oldest and the next.
fn two_requests_at_peer_1() -> (Scheduler<u32>, u32, u32) {
    let c = Config {
        initial_window: 2,
        ..cfg()
    };
    let mut s = Scheduler::new(0, Bitfield::new(4), c, ms(0));
    s.peer_added(1, full(4), ms(0));
    let r = requests(&drain(&mut s));
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r.iter().all(|&(src, _)| src == Source::Peer(1)));
    (s, r[0].1, r[1].1)
}

#[test]
fn a_retired_peer_finishes_its_oldest_piece_and_gets_nothing_else() {
    let (mut s, oldest, next) = two_requests_at_peer_1();
    assert_eq!(s.peer_retiring(1, ms(1)), Some(oldest));
    assert_eq!(
        drain(&mut s),
        vec![cancel(1, next)],
        "only the later one is cancelled"
    );
    assert_eq!(s.in_flight(), 1, "the kept request still counts");
    assert!(s.is_requested(Source::Peer(1), oldest));
    assert_eq!(s.availability(next), 0, "its pieces no longer count");
    // A new peer gets the requeued piece and the others, never the kept one.
    s.peer_added(2, full(4), ms(2));
    let r = requests(&drain(&mut s));
    assert!(
        r.iter()
            .all(|&(src, p)| src == Source::Peer(2) && p != oldest),
        "{r:?}"
    );
    assert!(r.iter().any(|&(_, p)| p == next), "{r:?}");
    // The kept piece lands from the retired peer: held, and nothing more is asked of peer 1.
    s.piece_received(Source::Peer(1), oldest, ms(3));
    assert!(s.have().get(oldest));
    assert!(!s.is_requested(Source::Peer(1), oldest));
    assert!(
        requests(&drain(&mut s))
            .iter()
            .all(|&(src, _)| src == Source::Peer(2))
    );
    assert_eq!(s.peer_retiring(1, ms(4)), None, "no longer a candidate");
}

#[test]
fn a_retired_peer_without_requests_is_simply_removed() {
    let mut s = Scheduler::new(0, Bitfield::new(4), cfg(), ms(0));
    s.peer_added(1, some(4, [3]), ms(0));
    s.peer_added(2, full(4), ms(0));
    drain(&mut s);
    s.piece_received(Source::Peer(1), 3, ms(1));
    assert_eq!(s.peer_retiring(1, ms(2)), None);
    assert_eq!(s.peer_count(), 1);
}

#[test]
fn a_kept_request_that_times_out_is_cancelled_and_asked_elsewhere() {
    let (mut s, oldest, _) = two_requests_at_peer_1();
    assert_eq!(s.peer_retiring(1, ms(1)), Some(oldest));
    drain(&mut s);
    s.peer_added(2, full(4), ms(2));
    let at_2 = requests(&drain(&mut s));
    assert!(!at_2.contains(&(Source::Peer(2), oldest)));
    let deadline = s.poll_timeout().expect("the kept request's deadline");
    assert!(deadline < ms(5_000), "{deadline:?}");
    s.handle_timeout(deadline);
    let actions = drain(&mut s);
    assert!(actions.contains(&cancel(1, oldest)), "{actions:?}");
    assert!(!s.is_requested(Source::Peer(1), oldest));
    // Requeued: peer 2 gets it once its window has room.
    let mut asked = requests(&actions);
    for (_, p) in at_2 {
        s.piece_received(Source::Peer(2), p, deadline + ms(1));
        asked.extend(requests(&drain(&mut s)));
    }
    assert!(asked.contains(&(Source::Peer(2), oldest)), "{asked:?}");
}

#[test]
fn a_kept_piece_that_lands_elsewhere_first_cancels_the_retired_request() {
    let (mut s, oldest, _) = two_requests_at_peer_1();
    assert_eq!(s.peer_retiring(1, ms(1)), Some(oldest));
    drain(&mut s);
    // The same piece arrives from the origin (as a buffered duplicate would).
    s.piece_received(Source::Origin, oldest, ms(2));
    assert_eq!(drain(&mut s), vec![cancel(1, oldest)]);
    assert_eq!(s.in_flight(), 0);
    assert!(!s.is_requested(Source::Peer(1), oldest));
}

#[test]
fn a_retired_peer_that_goes_away_requeues_its_kept_piece() {
    let (mut s, oldest, _) = two_requests_at_peer_1();
    assert_eq!(s.peer_retiring(1, ms(1)), Some(oldest));
    drain(&mut s);
    s.peer_removed(1, ms(2));
    assert_eq!(s.in_flight(), 0);
    s.peer_added(2, full(4), ms(3));
    let r = requests(&drain(&mut s));
    assert!(r.contains(&(Source::Peer(2), oldest)), "{r:?}");
}

#[test]
fn answers_of_a_kept_request_settle_it() {
    for answer in 0..3 {
        let (mut s, oldest, _) = two_requests_at_peer_1();
        assert_eq!(s.peer_retiring(1, ms(1)), Some(oldest));
        drain(&mut s);
        match answer {
            0 => s.request_refused(Source::Peer(1), oldest, ms(2)),
            1 => s.request_failed(Source::Peer(1), oldest, ms(2)),
            _ => s.piece_busy(Source::Peer(1), oldest, ms(2)),
        }
        assert_eq!(s.in_flight(), 0, "answer {answer}");
        assert!(!s.is_requested(Source::Peer(1), oldest));
        assert!(s.poll_timeout().is_none_or(|t| t > ms(2)));
    }
}
