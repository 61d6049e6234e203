//! A tiny virtual-time swarm for the scheduler tests: every uploader (node or origin) serves its
//! queue of requests one at a time at `min(its upload, the receiver's download)` pieces/s;
//! cancelled requests leave the queue if they have not started. Bit field updates are instant.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::super::{Action, Config, Scheduler, Source};
use crate::piece::Bitfield;

/// Origin's index in `uploaders`.
const ORIGIN: usize = usize::MAX;

pub(super) struct Node {
    /// `None` for a seed.
    pub(super) sched: Option<Scheduler<u32>>,
    pub(super) up: f64,
    pub(super) down: f64,
    pub(super) done_at: Option<Duration>,
}

#[derive(Default)]
struct Uploader {
    queue: VecDeque<(usize, u32)>,
    busy: bool,
    served: u32,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Finish { src: usize, dst: usize, piece: u32 },
    Timer { node: usize },
}

pub(super) struct Swarm {
    pub(super) nodes: Vec<Node>,
    origin_up: f64,
    uploaders: Vec<Uploader>,
    origin: Uploader,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    seq: u64,
    pub(super) log: Vec<(usize, Action<u32>)>,
}

impl Swarm {
    /// `leechers` and `seeds` as (upload, download) in pieces/s; every node knows every other.
    pub(super) fn new(
        pieces: u32,
        leechers: &[(f64, f64)],
        seeds: &[f64],
        origin_up: f64,
        cfg: &Config,
    ) -> Swarm {
        let total = leechers.len() + seeds.len();
        let mut nodes = Vec::new();
        for (i, &(up, down)) in leechers.iter().enumerate() {
            let c = Config {
                seed: cfg.seed.wrapping_mul(1000).wrapping_add(i as u64),
                ..cfg.clone()
            };
            let mut s = Scheduler::new(i as u32, Bitfield::new(pieces), c, Duration::ZERO);
            for j in 0..total {
                if j != i {
                    let have = if j < leechers.len() {
                        Bitfield::new(pieces)
                    } else {
                        Bitfield::full(pieces)
                    };
                    assert!(s.peer_added(j as u32, have, Duration::ZERO));
                }
            }
            nodes.push(Node {
                sched: Some(s),
                up,
                down,
                done_at: None,
            });
        }
        for &up in seeds {
            nodes.push(Node {
                sched: None,
                up,
                down: 0.0,
                done_at: None,
            });
        }
        let mut swarm = Swarm {
            uploaders: (0..total).map(|_| Uploader::default()).collect(),
            nodes,
            origin_up,
            origin: Uploader::default(),
            events: BinaryHeap::new(),
            seq: 0,
            log: Vec::new(),
        };
        for i in 0..leechers.len() {
            swarm.drain(i, Duration::ZERO);
        }
        swarm
    }

    pub(super) fn origin_served(&self) -> u32 {
        self.origin.served
    }

    pub(super) fn served_by(&self, node: usize) -> u32 {
        self.uploaders[node].served
    }

    fn push(&mut self, at: Duration, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((at, self.seq, e)));
    }

    fn uploader(&mut self, src: usize) -> &mut Uploader {
        if src == ORIGIN {
            &mut self.origin
        } else {
            &mut self.uploaders[src]
        }
    }

    fn start_next(&mut self, src: usize, now: Duration) {
        let up = if src == ORIGIN {
            self.origin_up
        } else {
            self.nodes[src].up
        };
        let u = self.uploader(src);
        if u.busy {
            return;
        }
        let Some((dst, piece)) = u.queue.pop_front() else {
            return;
        };
        u.busy = true;
        u.served += 1;
        let rate = up.min(self.nodes[dst].down);
        let at = now + Duration::from_secs_f64(1.0 / rate);
        self.push(at, Event::Finish { src, dst, piece });
    }

    fn drain(&mut self, i: usize, now: Duration) {
        loop {
            let Some(sched) = self.nodes[i].sched.as_mut() else {
                return;
            };
            let Some(action) = sched.poll_action() else {
                break;
            };
            self.log.push((i, action));
            match action {
                Action::Request { source, piece } => {
                    let src = match source {
                        Source::Origin => ORIGIN,
                        Source::Peer(p) => p as usize,
                    };
                    self.uploader(src).queue.push_back((i, piece));
                    self.start_next(src, now);
                }
                Action::Cancel { source, piece } => {
                    let src = match source {
                        Source::Origin => ORIGIN,
                        Source::Peer(p) => p as usize,
                    };
                    self.uploader(src).queue.retain(|&q| q != (i, piece));
                }
                Action::Ban { .. } => {}
                Action::Done => self.nodes[i].done_at = Some(now),
            }
        }
        if let Some(t) = self.nodes[i].sched.as_ref().and_then(|s| s.poll_timeout()) {
            self.push(t.max(now), Event::Timer { node: i });
        }
    }

    /// Runs until no events remain (or `limit` events, which fails the test).
    pub(super) fn run(&mut self, limit: u64) {
        let mut handled = 0;
        while let Some(Reverse((now, _, event))) = self.events.pop() {
            handled += 1;
            assert!(handled < limit, "event limit reached: livelock?");
            match event {
                Event::Timer { node } => {
                    let Some(s) = self.nodes[node].sched.as_mut() else {
                        continue;
                    };
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                        self.drain(node, now);
                    }
                }
                Event::Finish { src, dst, piece } => {
                    self.uploader(src).busy = false;
                    self.start_next(src, now);
                    let source = if src == ORIGIN {
                        Source::Origin
                    } else {
                        Source::Peer(src as u32)
                    };
                    let Some(s) = self.nodes[dst].sched.as_mut() else {
                        continue;
                    };
                    let new = !s.have().get(piece);
                    s.piece_received(source, piece, now);
                    self.drain(dst, now);
                    if new {
                        for j in 0..self.nodes.len() {
                            if j != dst
                                && let Some(s) = self.nodes[j].sched.as_mut()
                            {
                                s.peer_have(dst as u32, piece, now);
                                self.drain(j, now);
                            }
                        }
                    }
                }
            }
        }
    }
}
