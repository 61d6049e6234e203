//! A small virtual-time swarm for the scheduler tests. Every uploader (node or origin) serves its
//! queue of requests one at a time at `min(its upload, the receiver's download)` pieces/s; a
//! request reaches its uploader, a piece its receiver and a `have` its neighbours half a round
//! trip after being sent; a cancel removes a request that has not started yet. Nodes know either
//! everyone (full mesh) or a random set of about `degree` neighbours.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::super::{Action, Config, Scheduler, Source, peer::XorShift};
use crate::piece::Bitfield;

/// Origin's index in `uploaders`.
const ORIGIN: usize = usize::MAX;

pub(super) struct Node {
    /// `None` for a seed.
    pub(super) sched: Option<Scheduler<u32>>,
    pub(super) up: f64,
    pub(super) down: f64,
    pub(super) done_at: Option<Duration>,
    /// Most requests this node had in flight at once.
    pub(super) max_in_flight: usize,
    neighbours: Vec<u32>,
}

#[derive(Default)]
struct Uploader {
    queue: VecDeque<(usize, u32)>,
    busy: bool,
    served: u32,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive { src: usize, dst: usize, piece: u32 },
    Finish { src: usize, dst: usize, piece: u32 },
    Deliver { src: usize, dst: usize, piece: u32 },
    Have { from: usize, to: usize, piece: u32 },
    Refused { dst: usize, piece: u32 },
    Timer { node: usize },
}

/// What a swarm looks like.
pub(super) struct Spec {
    pub(super) pieces: u32,
    /// (upload, download) in pieces/s of each leecher.
    pub(super) leechers: Vec<(f64, f64)>,
    /// Upload in pieces/s of each seed.
    pub(super) seeds: Vec<f64>,
    pub(super) origin_up: f64,
    /// `None`: everyone knows everyone; `Some(k)`: about `k` random neighbours each.
    pub(super) degree: Option<usize>,
    pub(super) rtt: Duration,
    pub(super) cfg: Config,
    /// Give every leecher this swarm size estimate.
    pub(super) swarm_hint: bool,
    /// The origin refuses a piece it accepted a request for this recently (a gateway that
    /// deduplicates what it sends to the swarm).
    pub(super) origin_dedup: Option<Duration>,
}

pub(super) struct Swarm {
    pub(super) nodes: Vec<Node>,
    origin_up: f64,
    half_rtt: Duration,
    uploaders: Vec<Uploader>,
    origin: Uploader,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    seq: u64,
    pub(super) log: Vec<(usize, Action<u32>)>,
    keep_log: bool,
    /// Pieces received that the receiver already held (lost end-game races).
    pub(super) wasted: u64,
    pub(super) handled: u64,
    /// Requests that reached the origin, refused ones included.
    pub(super) origin_requests: u64,
    pub(super) origin_last: Duration,
    origin_dedup: Option<Duration>,
    /// Per piece: the origin refuses it until then (`Duration::MAX` while it is being sent).
    origin_refuse_until: Vec<Duration>,
}

impl Swarm {
    /// A full mesh with no latency.
    pub(super) fn new(
        pieces: u32,
        leechers: &[(f64, f64)],
        seeds: &[f64],
        origin_up: f64,
        cfg: &Config,
    ) -> Swarm {
        Swarm::build(Spec {
            pieces,
            leechers: leechers.to_vec(),
            seeds: seeds.to_vec(),
            origin_up,
            degree: None,
            rtt: Duration::ZERO,
            cfg: cfg.clone(),
            swarm_hint: false,
            origin_dedup: None,
        })
    }

    pub(super) fn build(spec: Spec) -> Swarm {
        let leechers = spec.leechers.len();
        let total = leechers + spec.seeds.len();
        let mut neighbours: Vec<Vec<u32>> = vec![Vec::new(); total];
        match spec.degree {
            None => {
                for (i, n) in neighbours.iter_mut().enumerate() {
                    n.extend((0..total as u32).filter(|&j| j as usize != i));
                }
            }
            Some(k) => {
                let mut rng = XorShift::new(spec.cfg.seed ^ 0x5eed);
                for i in 0..total {
                    for _ in 0..k.div_ceil(2) {
                        let j = (rng.next() % total as u64) as usize;
                        if j != i && !neighbours[i].contains(&(j as u32)) {
                            neighbours[i].push(j as u32);
                            neighbours[j].push(i as u32);
                        }
                    }
                }
            }
        }
        let mut nodes = Vec::new();
        for (i, &(up, down)) in spec.leechers.iter().enumerate() {
            let c = Config {
                seed: spec.cfg.seed.wrapping_mul(1000).wrapping_add(i as u64),
                ..spec.cfg.clone()
            };
            let mut s = Scheduler::new(i as u32, Bitfield::new(spec.pieces), c, Duration::ZERO);
            if spec.swarm_hint {
                s.set_swarm_size(total as u64);
            }
            for &j in &neighbours[i] {
                let have = if (j as usize) < leechers {
                    Bitfield::new(spec.pieces)
                } else {
                    Bitfield::full(spec.pieces)
                };
                s.peer_added(j, have, Duration::ZERO);
            }
            nodes.push(Node {
                sched: Some(s),
                up,
                down,
                done_at: None,
                max_in_flight: 0,
                neighbours: std::mem::take(&mut neighbours[i]),
            });
        }
        for (k, &up) in spec.seeds.iter().enumerate() {
            nodes.push(Node {
                sched: None,
                up,
                down: f64::INFINITY,
                done_at: None,
                max_in_flight: 0,
                neighbours: std::mem::take(&mut neighbours[leechers + k]),
            });
        }
        let mut swarm = Swarm {
            uploaders: (0..total).map(|_| Uploader::default()).collect(),
            nodes,
            origin_up: spec.origin_up,
            half_rtt: spec.rtt / 2,
            origin: Uploader::default(),
            events: BinaryHeap::new(),
            seq: 0,
            log: Vec::new(),
            keep_log: total <= 64,
            wasted: 0,
            handled: 0,
            origin_requests: 0,
            origin_last: Duration::ZERO,
            origin_dedup: spec.origin_dedup,
            origin_refuse_until: vec![Duration::ZERO; spec.pieces as usize],
        };
        for i in 0..leechers {
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

    /// Completion times of the leechers that finished.
    pub(super) fn done_times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.nodes.iter().filter_map(|n| n.done_at).collect();
        t.sort();
        t
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
            if self.keep_log {
                self.log.push((i, action));
            }
            match action {
                Action::Request { source, piece } => {
                    let src = match source {
                        Source::Origin => ORIGIN,
                        Source::Peer(p) => p as usize,
                    };
                    self.push(now + self.half_rtt, Event::Arrive { src, dst: i, piece });
                }
                Action::Cancel { source, piece } => {
                    let src = match source {
                        Source::Origin => ORIGIN,
                        Source::Peer(p) => p as usize,
                    };
                    let queue = &mut self.uploader(src).queue;
                    let before = queue.len();
                    queue.retain(|&q| q != (i, piece));
                    if src == ORIGIN && queue.len() < before {
                        // Withdrawn before it was sent: a peer has the piece, it is spreading.
                        self.origin_sent(piece, now);
                    }
                }
                Action::Ban { .. } => {}
                Action::Done => self.nodes[i].done_at = Some(now),
            }
        }
        let node = &mut self.nodes[i];
        if let Some(s) = node.sched.as_ref() {
            node.max_in_flight = node.max_in_flight.max(s.in_flight());
        }
        if let Some(t) = self.nodes[i].sched.as_mut().and_then(|s| s.poll_timeout()) {
            self.push(t.max(now), Event::Timer { node: i });
        }
    }

    /// Runs until no events remain (or `limit` events, which fails the test).
    pub(super) fn run(&mut self, limit: u64) {
        while let Some(Reverse((now, _, event))) = self.events.pop() {
            self.handled += 1;
            assert!(self.handled < limit, "event limit reached: livelock?");
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
                Event::Arrive { src, dst, piece } => {
                    if src == ORIGIN {
                        self.origin_requests += 1;
                    }
                    if src == ORIGIN && self.origin_dedup.is_some() {
                        let until = &mut self.origin_refuse_until[piece as usize];
                        if now < *until {
                            self.push(now + self.half_rtt, Event::Refused { dst, piece });
                            continue;
                        }
                        *until = Duration::MAX;
                    }
                    self.uploader(src).queue.push_back((dst, piece));
                    self.start_next(src, now);
                }
                Event::Finish { src, dst, piece } => {
                    if src == ORIGIN {
                        self.origin_last = now;
                        self.origin_sent(piece, now);
                    }
                    self.uploader(src).busy = false;
                    self.start_next(src, now);
                    self.push(now + self.half_rtt, Event::Deliver { src, dst, piece });
                }
                Event::Deliver { src, dst, piece } => {
                    let source = if src == ORIGIN {
                        Source::Origin
                    } else {
                        Source::Peer(src as u32)
                    };
                    let Some(s) = self.nodes[dst].sched.as_mut() else {
                        continue;
                    };
                    let new = !s.have().get(piece);
                    if !new {
                        self.wasted += 1;
                    }
                    s.piece_received(source, piece, now);
                    self.drain(dst, now);
                    if new {
                        if self.half_rtt.is_zero() {
                            for k in 0..self.nodes[dst].neighbours.len() {
                                let to = self.nodes[dst].neighbours[k] as usize;
                                self.have(dst, to, piece, now);
                            }
                        } else {
                            for k in 0..self.nodes[dst].neighbours.len() {
                                let to = self.nodes[dst].neighbours[k] as usize;
                                let from = dst;
                                self.push(now + self.half_rtt, Event::Have { from, to, piece });
                            }
                        }
                    }
                }
                Event::Have { from, to, piece } => self.have(from, to, piece, now),
                Event::Refused { dst, piece } => {
                    if let Some(s) = self.nodes[dst].sched.as_mut() {
                        s.request_refused(Source::Origin, piece, now);
                        self.drain(dst, now);
                    }
                }
            }
        }
    }

    fn origin_sent(&mut self, piece: u32, now: Duration) {
        if let Some(window) = self.origin_dedup {
            self.origin_refuse_until[piece as usize] = now + window;
        }
    }

    fn have(&mut self, from: usize, to: usize, piece: u32, now: Duration) {
        if let Some(s) = self.nodes[to].sched.as_mut() {
            s.peer_have(from as u32, piece, now);
            self.drain(to, now);
        }
    }

    /// Kumar–Ross lower bound for this swarm, in seconds (rates in pieces/s).
    pub(super) fn bound(&self, pieces: u32) -> f64 {
        let f = f64::from(pieces);
        let leechers: Vec<&Node> = self.nodes.iter().filter(|n| n.sched.is_some()).collect();
        let d_min = leechers
            .iter()
            .map(|n| n.down)
            .fold(f64::INFINITY, f64::min);
        let seeds_up: f64 = self
            .nodes
            .iter()
            .filter(|n| n.sched.is_none())
            .map(|n| n.up)
            .sum();
        let u_s = self.origin_up + seeds_up;
        let sum_up: f64 = leechers.iter().map(|n| n.up).sum();
        (f / u_s)
            .max(f / d_min)
            .max(leechers.len() as f64 * f / (u_s + sum_up))
    }
}
