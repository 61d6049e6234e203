//! The origin's refusal window (SPEC §3.7): a piece range of a blob that the gateway is sending
//! to one member over `/flotilla/v1/blobs`, or finished sending within the last window
//! (`origin_dedup_ms`, 8 s by default; `origin_dedup_connected_ms`, 60 s, while that member is
//! still connected to the gateway's swarm and so can serve it), is refused to the other members, with `429 TOOMANYREQUESTS` and `Retry-After`: that copy will
//! be in the swarm moments later, and a node's scheduler treats the refusal as "not from the
//! origin for now" (`request_refused`) and takes the piece from the peer that announces it.
//!
//! Without it, a fleet pulling at once under load asks the origin for the same pieces many
//! times over (each node's rendezvous rank is a guess about who else is pulling): 2.7 × the
//! image's bytes left the gateway for 16 nodes on two cores, and the simulator's cold start of
//! 1000 hosts shows 3.3 × without the window and 1.03 × with it.
//!
//! A request may offer alternatives (`Flotilla-Alternatives`): when its range is refused, the
//! first alternative NOBODY is being sent or was sent within the window is sent instead, so
//! the members whose guesses collide on a piece still take distinct pieces from the origin
//! (simulated, 1000 hosts: the last first copy left the origin at 5.9 s without them, at
//! 0.86 s — the origin's own bound — with them).
//!
//! The longer window for a connected holder is for fleets slower than the window: 16 nodes on two
//! cores spread a piece in tens of seconds, so after 8 s the others asked again and were sent
//! it again (gateway egress 1.7 × the image); a holder that went away frees the range after
//! the short window.
//!
//! The member asking again for a range it was sent (a retry after a lost answer) is not
//! refused, unless that range is still streaming to it (another of its requests took it as an
//! alternative). Requests without a member identity (a gateway without a fleet) are not deduplicated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_protocol::Digest;
use libp2p_identity::PeerId;

/// Most ranges remembered at once; beyond it the oldest finished one is forgotten early (a
/// burst that big is 64 K pieces, 256 GiB of 4 MiB pieces, in one window).
const MAX_RANGES: usize = 65_536;

type Key = (Digest, u64, u64);

/// One range sent: to whom, and when its answer ended (`None` while it streams).
#[derive(Debug, Clone, Copy)]
struct Sent {
    to: PeerId,
    done: Option<Instant>,
}

/// What the gateway knows of the members a range went to, for one request.
pub(crate) struct Holders<'a> {
    /// Whether a member is connected to the gateway's swarm now.
    pub(crate) connected: &'a dyn Fn(&PeerId) -> bool,
    /// Members the asker banned (`Flotilla-Banned`): their copies are no use to it, so a range
    /// sent to them is not refused to it. Without this, a member that corrupts the pieces it
    /// was sent would keep the others from the origin for as long as it stays connected.
    pub(crate) distrusted: &'a [PeerId],
}

/// Which ranges went to whom recently (see the module docs).
#[derive(Debug)]
pub(crate) struct OriginDedup {
    window: Duration,
    /// How long the window lasts while the member sent the range is connected.
    connected_window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    sent: HashMap<Key, Sent>,
    last_prune: Instant,
    refused: u64,
}

/// Held by a range's answer while it streams: dropping it (the body ended, or the client went
/// away) starts the window in which other members are refused that range.
pub(crate) struct SendGuard {
    dedup: Arc<OriginDedup>,
    key: Key,
    /// Waiting for a send slot ([`SendGuard::queued`]): dropped now, nothing was sent.
    queued: bool,
}

impl SendGuard {
    fn new(dedup: &Arc<OriginDedup>, key: Key) -> Self {
        SendGuard {
            dedup: Arc::clone(dedup),
            key,
            queued: false,
        }
    }

    /// The answer waits for a send slot (`send_pool.rs`): others are still refused the range
    /// (it is on its way), but if the request goes away before its send starts, the range is
    /// free at once, as if never admitted.
    pub(crate) fn queued(&mut self) {
        self.queued = true;
    }

    /// The send started: from now on dropping the guard starts the window.
    pub(crate) fn sending(&mut self) {
        self.queued = false;
    }
}

impl Drop for SendGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = self.dedup.lock();
        if self.queued {
            // Still ours: no one else is admitted a range while its entry has no end.
            if st.sent.get(&self.key).is_some_and(|s| s.done.is_none()) {
                st.sent.remove(&self.key);
            }
        } else if let Some(s) = st.sent.get_mut(&self.key) {
            s.done = Some(now);
        }
    }
}

impl OriginDedup {
    /// A window of `window` after each send ends, `connected_window` while the member it went
    /// to is connected (never shorter than `window`); a zero `window` turns refusals off.
    pub(crate) fn new(window: Duration, connected_window: Duration) -> Self {
        OriginDedup {
            window,
            connected_window: connected_window.max(window),
            state: Mutex::new(State {
                sent: HashMap::new(),
                last_prune: Instant::now(),
                refused: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `member` may be sent bytes `start..=end` of `digest` now: `Ok` with a guard to
    /// keep with the answer's body (`None` when refusals are off) if so. When it is refused
    /// (another member is being sent that range or was sent it within the window), the first of
    /// `alternatives` (byte ranges of the same blob, the member's order of preference) that
    /// NOBODY is being sent or was sent within the window is admitted instead: `Ok` carries the
    /// range admitted. `Err(holder)` only when every one of them is taken.
    pub(crate) fn admit_any(
        self: &Arc<Self>,
        digest: &Digest,
        (start, end): (u64, u64),
        alternatives: &[(u64, u64)],
        member: PeerId,
        holders: &Holders<'_>,
    ) -> Result<(Option<SendGuard>, (u64, u64)), PeerId> {
        if self.window.is_zero() {
            return Ok((None, (start, end)));
        }
        let now = Instant::now();
        let key = (digest.clone(), start, end);
        let holder = match self.admit_at(&key, member, now, holders) {
            None => return Ok((Some(SendGuard::new(self, key)), (start, end))),
            Some(holder) => holder,
        };
        for &(s, e) in alternatives {
            let key = (digest.clone(), s, e);
            if self.claim_unsent(&key, member, now, holders) {
                return Ok((Some(SendGuard::new(self, key)), (s, e)));
            }
        }
        self.lock().refused += 1;
        Err(holder)
    }

    /// Claims `key` for `member` if no one (the member included: its own copy may be on the
    /// way under another request) is being sent it or was sent it within the window.
    fn claim_unsent(&self, key: &Key, member: PeerId, now: Instant, holders: &Holders<'_>) -> bool {
        let taken = self
            .lock()
            .sent
            .get(key)
            .is_some_and(|s| !self.expired(s, now, holders));
        !taken && self.admit_at(key, member, now, holders).is_none()
    }

    /// Whether the refusal window of `s` is over for `asker`: `window` after its send ended,
    /// or `connected_window` if the member it went to is still connected (it can serve it) —
    /// at once if `asker` does not trust that member (see [`Holders`]).
    fn expired(&self, s: &Sent, now: Instant, holders: &Holders<'_>) -> bool {
        if holders.distrusted.contains(&s.to) {
            return true;
        }
        let connected = holders.connected;
        s.done.is_some_and(|d| {
            let since = now.saturating_duration_since(d);
            since >= self.connected_window || (since >= self.window && !connected(&s.to))
        })
    }

    /// `None` if admitted, else the holder.
    fn admit_at(
        &self,
        key: &Key,
        member: PeerId,
        now: Instant,
        holders: &Holders<'_>,
    ) -> Option<PeerId> {
        let mut st = self.lock();
        if now.saturating_duration_since(st.last_prune) >= self.window {
            let horizon = self.connected_window;
            st.sent.retain(|_, s| {
                s.done
                    .is_none_or(|d| now.saturating_duration_since(d) < horizon)
            });
            st.last_prune = now;
        }
        match st.sent.get(key).copied() {
            // Another member's copy, or our own still streaming (under a request whose answer
            // carries it as an alternative): it is on its way.
            Some(s) if !self.expired(&s, now, holders) && (s.to != member || s.done.is_none()) => {
                Some(s.to)
            }
            _ => {
                if st.sent.len() >= MAX_RANGES
                    && !st.sent.contains_key(key)
                    && let Some(oldest) = st
                        .sent
                        .iter()
                        .filter_map(|(k, s)| s.done.map(|d| (d, k)))
                        .min()
                        .map(|(_, k)| k.clone())
                {
                    st.sent.remove(&oldest);
                }
                st.sent.insert(
                    key.clone(),
                    Sent {
                        to: member,
                        done: None,
                    },
                );
                None
            }
        }
    }

    /// Requests refused since start (answered 429: neither their range nor an alternative).
    pub(crate) fn refused(&self) -> u64 {
        self.lock().refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &PeerId) -> bool {
        false
    }

    const NOBODY: Holders<'static> = Holders {
        connected: &none,
        distrusted: &[],
    };

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn key(d: &Digest, start: u64) -> Key {
        (d.clone(), start, start + 99)
    }

    fn finish(dedup: &OriginDedup, k: &Key, at: Instant) {
        dedup.lock().sent.get_mut(k).unwrap().done = Some(at);
    }

    #[test]
    fn a_range_goes_to_one_member_while_it_streams_and_for_a_window_after() {
        let d = Digest::sha256_of(b"blob");
        let other = Digest::sha256_of(b"other");
        let dedup = OriginDedup::new(Duration::from_secs(2), Duration::ZERO);
        let (a, b) = (peer(), peer());
        let t0 = Instant::now();
        let k = key(&d, 0);
        assert!(dedup.admit_at(&k, a, t0, &NOBODY).is_none());
        // The same member again while it streams: no (it is on its way). Another member: no,
        // while it streams (however long) and until the window after it ended has passed.
        assert_eq!(
            dedup.admit_at(&k, a, t0 + Duration::from_millis(10), &NOBODY),
            Some(a)
        );
        assert_eq!(
            dedup.admit_at(&k, b, t0 + Duration::from_secs(30), &NOBODY),
            Some(a)
        );
        finish(&dedup, &k, t0 + Duration::from_secs(30));
        assert_eq!(
            dedup.admit_at(&k, b, t0 + Duration::from_millis(31_999), &NOBODY),
            Some(a)
        );
        // Other ranges and other blobs are independent.
        assert!(dedup.admit_at(&key(&d, 100), b, t0, &NOBODY).is_none());
        assert!(dedup.admit_at(&key(&other, 0), b, t0, &NOBODY).is_none());
        assert!(
            dedup
                .admit_at(&k, b, t0 + Duration::from_secs(32), &NOBODY)
                .is_none()
        );
        // Now b holds that range.
        assert_eq!(
            dedup.admit_at(&k, a, t0 + Duration::from_secs(33), &NOBODY),
            Some(b)
        );
    }

    #[test]
    fn dropping_the_guard_starts_the_window() {
        let d = Digest::sha256_of(b"blob");
        let dedup = Arc::new(OriginDedup::new(Duration::from_secs(3600), Duration::ZERO));
        let (a, b) = (peer(), peer());
        let guard = dedup
            .admit_any(&d, (0, 9), &[], a, &NOBODY)
            .expect("first send")
            .0
            .expect("a guard");
        assert!(dedup.lock().sent[&(d.clone(), 0, 9)].done.is_none());
        drop(guard);
        assert!(dedup.lock().sent[&(d.clone(), 0, 9)].done.is_some());
        assert_eq!(dedup.admit_any(&d, (0, 9), &[], b, &NOBODY).err(), Some(a));
        let off = Arc::new(OriginDedup::new(Duration::ZERO, Duration::ZERO));
        assert!(matches!(
            off.admit_any(&d, (0, 9), &[], a, &NOBODY),
            Ok((None, _))
        ));
        assert!(matches!(
            off.admit_any(&d, (0, 9), &[], b, &NOBODY),
            Ok((None, _))
        ));
    }

    #[test]
    fn a_request_that_leaves_while_queued_frees_its_range_at_once() {
        let d = Digest::sha256_of(b"blob");
        let dedup = Arc::new(OriginDedup::new(Duration::from_secs(3600), Duration::ZERO));
        let (a, b) = (peer(), peer());
        let admit = |m| dedup.admit_any(&d, (0, 9), &[], m, &NOBODY);
        let mut guard = admit(a).expect("first").0.expect("a guard");
        guard.queued();
        // Waiting for a send slot, the range is on its way: others are refused.
        assert_eq!(admit(b).err(), Some(a));
        drop(guard);
        // Its client went away before the send started: nothing went out.
        let mut guard = admit(b).expect("free again").0.expect("a guard");
        guard.queued();
        guard.sending();
        drop(guard);
        assert_eq!(
            admit(a).err(),
            Some(b),
            "a send that started starts the window"
        );
    }

    #[test]
    fn a_refused_range_is_answered_with_the_first_unsent_alternative() {
        let d = Digest::sha256_of(b"blob");
        let dedup = Arc::new(OriginDedup::new(Duration::from_secs(3600), Duration::ZERO));
        let (a, b) = (peer(), peer());
        let (_g0, r) = dedup.admit_any(&d, (0, 9), &[], a, &NOBODY).expect("first");
        assert_eq!(r, (0, 9));
        let (_g1, r) = dedup
            .admit_any(&d, (10, 19), &[], a, &NOBODY)
            .expect("second");
        assert_eq!(r, (10, 19));
        // b asks for 0-9 (being sent to a): 10-19 is taken too, 20-29 is free.
        let (_g2, r) = dedup
            .admit_any(&d, (0, 9), &[(10, 19), (20, 29), (30, 39)], b, &NOBODY)
            .expect("an alternative");
        assert_eq!(r, (20, 29));
        // a itself is not given a range it is already being sent under another request.
        let (_g3, r) = dedup
            .admit_any(&d, (20, 29), &[(10, 19), (30, 39)], a, &NOBODY)
            .expect("an alternative");
        assert_eq!(r, (30, 39));
        // Nothing left: refused, naming the holder of the range asked for (only this answer
        // counts as a refusal).
        assert_eq!(
            dedup
                .admit_any(&d, (0, 9), &[(10, 19), (20, 29)], b, &NOBODY)
                .err(),
            Some(a)
        );
        assert_eq!(dedup.refused(), 1);
        // Off: everything is admitted as asked.
        let off = Arc::new(OriginDedup::new(Duration::ZERO, Duration::ZERO));
        let (g, r) = off
            .admit_any(&d, (0, 9), &[(10, 19)], b, &NOBODY)
            .expect("off");
        assert!(g.is_none());
        assert_eq!(r, (0, 9));
    }

    #[test]
    fn the_window_lasts_longer_while_the_holder_is_connected() {
        let d = Digest::sha256_of(b"blob");
        let dedup = OriginDedup::new(Duration::from_secs(2), Duration::from_secs(60));
        let (a, b) = (peer(), peer());
        let t0 = Instant::now();
        let k = key(&d, 0);
        assert!(dedup.admit_at(&k, a, t0, &NOBODY).is_none());
        finish(&dedup, &k, t0);
        let is_a = |p: &PeerId| *p == a;
        let up = Holders {
            connected: &is_a,
            distrusted: &[],
        };
        // a is connected: refused past the 2-s window, until 60 s.
        assert_eq!(
            dedup.admit_at(&k, b, t0 + Duration::from_secs(30), &up),
            Some(a)
        );
        assert!(!dedup.claim_unsent(&k, b, t0 + Duration::from_secs(30), &up));
        // a is gone: the 2-s window applies.
        assert!(
            dedup
                .admit_at(&k, b, t0 + Duration::from_secs(3), &NOBODY)
                .is_none()
        );
        // And past 60 s, connected or not, it is anyone's again.
        let k2 = key(&d, 100);
        assert!(dedup.admit_at(&k2, a, t0, &NOBODY).is_none());
        finish(&dedup, &k2, t0);
        assert!(
            dedup
                .admit_at(&k2, b, t0 + Duration::from_secs(61), &up)
                .is_none()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let d = Digest::sha256_of(b"blob");
        let dedup = OriginDedup::new(Duration::from_secs(3600), Duration::ZERO);
        let a = peer();
        let t0 = Instant::now();
        for i in 0..(MAX_RANGES as u64 + 10) {
            let k = key(&d, i * 100);
            assert!(dedup.admit_at(&k, a, t0, &NOBODY).is_none());
            finish(&dedup, &k, t0);
        }
        assert_eq!(dedup.lock().sent.len(), MAX_RANGES);
    }
}
