//! The driver's side of the origin: piece requests to the gateway over HTTP (with the
//! alternatives the gateway may send instead, SPEC §3.7) and their outcomes, which become
//! scheduler events; a refusal naming a holder opens a session to it.

use std::ops::Range;

use flotilla_protocol::scheduler::Source;
use libp2p::PeerId;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::super::gateway::{OriginAsk, OriginOutcome};
use super::{Driver, Internal, Substitution};
use crate::fetch::Waste;
use crate::ports::Verdict;

impl Driver {
    pub(super) fn request_origin(&mut self, piece: u32) {
        let table = &self.table.table;
        let Some(range) = table.piece_range(piece) else {
            let now = self.now();
            self.sched.request_failed(Source::Origin, piece, now);
            return;
        };
        // Pieces the gateway may send instead, if another member has this one (SPEC §3.7).
        let alternatives: Vec<(u32, Range<u64>)> = self
            .sched
            .origin_alternatives(piece)
            .iter()
            .filter_map(|&x| table.piece_range(x).map(|r| (x, r)))
            .collect();
        self.origin_seq += 1;
        let seq = self.origin_seq;
        let gateway = self.inner.gateway.clone();
        let sink = self.inner.sink.clone();
        let digest = self.digest.clone();
        let size = table.size;
        let subst = self.subst_tx.clone();
        // Their copies are no use to us: the gateway should not refuse a piece because one of
        // them has it. A ban by another download of this node counts too (it never opens a
        // session to that peer either).
        let mut banned: Vec<PeerId> = self.banned.iter().copied().collect();
        for p in self.inner.banned_peers(32) {
            if !banned.contains(&p) {
                banned.push(p);
            }
        }
        let task = self.tasks.spawn(async move {
            let tell = |got: u32| async move {
                // Bounded and drained by the driver's loop; a full queue is reported with the
                // outcome instead.
                let _ = subst.try_send(Substitution {
                    asked: piece,
                    seq,
                    got,
                });
            };
            let (got, outcome) = gateway
                .fetch_piece(
                    &*sink,
                    &digest,
                    OriginAsk {
                        piece: (piece, range),
                        alternatives: &alternatives,
                        banned: &banned,
                        blob_size: size,
                    },
                    tell,
                )
                .await;
            Internal::Origin {
                piece,
                got,
                seq,
                outcome,
            }
        });
        if let Some((_, old)) = self.origin_tasks.insert(piece, (seq, task)) {
            old.abort();
        }
        self.outstanding.insert((Source::Origin, piece));
    }

    /// The origin answers the request for `asked` (sequence `seq`) with piece `got`: the
    /// request stands for `got` from now on. Told once by the request's task before the body
    /// streams, and again with its outcome; a request no longer running (cancelled, or told
    /// already) is left alone.
    pub(super) fn on_substituted(&mut self, asked: u32, seq: u64, got: u32) {
        if self.origin_tasks.get(&asked).is_none_or(|(s, _)| *s != seq) {
            return;
        }
        let now = self.now();
        if let Some((_, other)) = self.origin_tasks.remove(&got) {
            // Another request of ours asked for `got` itself (the gateway refuses it while
            // this copy streams): it is answered by this one.
            other.abort();
            self.sched.request_refused(Source::Origin, got, now);
        }
        if let Some(task) = self.origin_tasks.remove(&asked) {
            self.origin_tasks.insert(got, task);
        }
        self.outstanding.remove(&(Source::Origin, asked));
        self.outstanding.insert((Source::Origin, got));
        self.sched.origin_substituted(asked, got, now);
    }

    pub(super) fn on_origin(&mut self, piece: u32, seq: u64, outcome: OriginOutcome) {
        let current = self
            .origin_tasks
            .get(&piece)
            .is_some_and(|(s, _)| *s == seq);
        if current {
            self.origin_tasks.remove(&piece);
            self.outstanding.remove(&(Source::Origin, piece));
        }
        self.reconcile = true;
        let now = self.now();
        match outcome {
            OriginOutcome::Received { verdict, bytes } => match verdict {
                Verdict::Verified | Verdict::Duplicate if self.counted.set(piece) => {
                    self.last_origin_ok = Instant::now();
                    self.stats.origin(bytes);
                    self.inner.totals.origin(bytes);
                    // Welcome even if it was cancelled meanwhile.
                    self.sched.piece_received(Source::Origin, piece, now);
                }
                Verdict::Verified | Verdict::Duplicate => {
                    self.last_origin_ok = Instant::now();
                    self.wasted(bytes, Waste::Duplicate);
                    if current {
                        self.sched.piece_received(Source::Origin, piece, now);
                    }
                }
                Verdict::Invalid => {
                    warn!(digest = %self.digest, piece, "the gateway sent a piece that does not match its table");
                    self.wasted(bytes, Waste::Invalid);
                    self.last_origin_error = Some(format!("piece {piece} failed verification"));
                    if current {
                        self.sched.request_failed(Source::Origin, piece, now);
                    }
                }
            },
            OriginOutcome::Refused { holder } => {
                self.last_origin_ok = Instant::now();
                if current {
                    self.sched.request_refused(Source::Origin, piece, now);
                }
                if let Some(peer) = holder {
                    self.connect_to_holder(peer);
                }
            }
            OriginOutcome::Failed { reason } => {
                debug!(digest = %self.digest, piece, error = %reason, "origin request failed");
                self.last_origin_error = Some(reason);
                if current {
                    self.sched.request_failed(Source::Origin, piece, now);
                }
            }
        }
    }
}
