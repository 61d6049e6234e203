//! The swarm simulation: every host runs one production
//! [`Scheduler`](flotilla_protocol::scheduler::Scheduler) per layer, and this module plays the
//! world around them — DHT lookups and announcements, transfer sessions with the node's
//! server limits, the origin (with its refusal window), bandwidth (the [`flow`](crate::flow)
//! engine), latency, churn — as a discrete-event simulation in virtual time.
//!
//! # Determinism
//! Events live in one queue ordered by (time, sequence number); every collection is a
//! `Vec`, `VecDeque` or `BTreeMap`, and all randomness comes from one seeded [`Rng`]. The same
//! fleet gives the same run, event for event.
//!
//! # Cost
//! A `have` is one event per (piece, destination site), fanned out to the subscribers when it
//! fires; a host's timer is re-armed only when the scheduler's next deadline moves earlier
//! (a stale timer event is dropped when it fires); flows are re-rated once per distinct event
//! time. A scheduler is dropped as soon as its blob is complete. At 100,000 hosts the state is
//! a few GiB and most of an event's cost is cache misses, so what every event touches — a
//! task's scheduler and timer, a stream's open flag — is kept in dense per-task and
//! per-stream arrays rather than in [`Task`] and [`Stream`], a session and a subscriber entry
//! carry the host and task at their other end, and the `have` fan-out touches all its
//! subscribers' schedulers before handing any of them the `have` (the loads overlap).

mod event;
mod forward;
mod origin;
mod peers;
mod pieces;
mod stats;

use event::Ev;
use stats::{Demand, Spread};
pub use stats::{SwarmOutcome, SwarmStats};

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use flotilla_protocol::piece::{Bitfield, piece_size_for};
use flotilla_protocol::scheduler::{
    Action, Config, ProviderMemory, Rotation, RotationConfig, Scheduler, Source,
};
use flotilla_protocol::send_limit::SendLimit;

use crate::flow::{Check, Nanos};
use crate::model::Fleet;
use crate::net::{Net, nanos, secs};
use crate::queue::Queue;
use crate::rng::{Rng, mix};

/// `src` of an answer that came from the origin.
const ORIGIN: u32 = u32::MAX;
/// `site` of a `have` meant for every subscriber.
const ALL_SITES: u16 = u16::MAX;

/// What a host tells its subscribers about one of its pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tell {
    /// It holds it whole.
    Have,
    /// It can pass it on while it arrives.
    Arriving,
    /// The copy it offered while arriving was lost.
    Withdrawn,
}

/// What a flow carries.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Peer { stream: u32, piece: u32 },
    Origin { task: u32, piece: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
    Gone,
}

#[derive(Debug)]
struct Host {
    alive: bool,
    left: bool,
    /// Pieces being sent now, over all streams.
    sends: u16,
    /// Sessions served now.
    streams_in: u16,
    /// (task, piece, downloaders it is being sent to) for the pieces being sent now: at most
    /// `sends` entries.
    copies: Vec<(u32, u32, u16)>,
    done_tasks: usize,
    join: Nanos,
    done_at: Option<Nanos>,
}

impl Host {
    /// A send of `piece` of task `task`'s layer ended.
    fn copy_done(&mut self, task: u32, piece: u32) {
        if let Some(k) = self
            .copies
            .iter()
            .position(|&(t, p, _)| t == task && p == piece)
        {
            self.copies[k].2 -= 1;
            if self.copies[k].2 == 0 {
                self.copies.swap_remove(k);
            }
        }
    }
}

/// One host's download of one layer.
#[derive(Debug)]
struct Task {
    host: u32,
    blob: u16,
    state: State,
    /// Streams this task downloads through.
    /// With the host at the other end (so finding a peer's stream touches no stream).
    sessions: Vec<(u32, u32)>,
    /// Sessions the rotation policy replaced that finish one piece before they close:
    /// (stream, host at the other end, the piece).
    retiring: Vec<(u32, u32, u32)>,
    /// Hosts a session is being opened to.
    connecting: Vec<u32>,
    /// Streams this task's host serves this layer on.
    subscribers: Vec<Sub>,
    held: u32,
    swarm_hint: u64,
    read_pos: u32,
    /// Provider lookups started so far, when the last one started, whether one is running.
    lookups: u32,
    last_lookup: Option<Nanos>,
    lookup_running: bool,
    /// Whether lookups still find new providers (the node's `Driver::short_of_sessions`).
    providers_seen: ProviderMemory<u32>,
    /// Which sessions the download keeps (the node's policy, from the protocol crate).
    rotation: Option<Box<Rotation<u32>>>,
    /// Whether the first lookup's sessions were checked for a cold start.
    grace_checked: bool,
    /// Pieces arriving at the host that it may pass on (see `forward.rs`).
    arrivals: Vec<forward::Arrival>,
    /// Pieces ever offered to subscribers while arriving (allocated at the first): a request
    /// for one not offered now is answered PieceBusy, as the node's server answers a request
    /// that crossed its Withdrawn.
    offered: Option<Bitfield>,
}

/// Per task: pieces of its layer its host is sending (at most `max_sends_per_blob`), and the
/// streams whose next request waits for a slot. Kept out of [`Task`], which the hot loops
/// touch far more often.
#[derive(Debug, Default)]
struct BlobSlots {
    sends: u16,
    waiting: VecDeque<u32>,
}

/// A stream served by a task, with the task downloading through it (so the `have` fan-out
/// need not look the stream up).
#[derive(Debug, Clone, Copy)]
struct Sub {
    stream: u32,
    down: u32,
}

/// One transfer session: a downloader task and an uploader task of the same layer. Whether it
/// is open lives in [`Swarm::stream_open`].
#[derive(Debug)]
struct Stream {
    down: u32,
    up: u32,
    queue: VecDeque<u32>,
    active: Option<u32>,
    /// Index in the uploader's `subscribers`.
    slot: u32,
    /// Bytes of the piece being sent already reported to the downloader's rotation policy.
    reported: f64,
    /// In its uploader task's `waiting`.
    parked: bool,
    /// Its piece is all sent but was passed on while arriving at the uploader: it is delivered
    /// (or abandoned) with the uploader's own copy, and holds its send slot until then.
    forwarding: bool,
    /// The piece it waits with, while `forwarding`.
    forwarding_piece: u32,
    /// The piece of its `active` flow.
    active_piece: u32,
}

#[derive(Debug)]
struct Blob {
    size: u64,
    piece_size: u32,
    pieces: u32,
    /// Hosts announced as providers, in announcement order (records outlive their hosts).
    providers: Vec<u32>,
    /// Per site, the hosts announced under its site key (with labels only, else empty).
    site_providers: Vec<Vec<u32>>,
    /// Pieces some host has received.
    copies: Bitfield,
    /// Per piece: how it spread (see [`Spread`]).
    spread: Vec<Spread>,
}

impl Blob {
    fn piece_len(&self, piece: u32) -> f64 {
        let start = u64::from(piece) * u64::from(self.piece_size);
        (self.size - start).min(u64::from(self.piece_size)) as f64
    }
}

/// The origin: its servers' refusal windows and the flows it is sending.
#[derive(Debug)]
struct Origin {
    alive: bool,
    gone_at: Option<Nanos>,
    /// Per layer and piece: requests for it are refused until then.
    refuse_until: Vec<Vec<Nanos>>,
    /// Per layer: whether a piece transfer of it ever started (the gateway's `unsent` answer).
    sent_any: Vec<bool>,
    active: BTreeMap<(u32, u32), u32>,
    /// Requests in a server's accept queue.
    queued: std::collections::BTreeSet<(u32, u32)>,
    /// Per server: when it can answer the next request.
    next_free: Vec<Nanos>,
    /// Time to answer one request.
    service: Nanos,
    /// Per server: piece sends in progress (entries of `active` it serves).
    sending: Vec<usize>,
    /// Per server, with `Params::origin_max_sends`: sends allowed at once (adapting or fixed),
    /// whether its period timer is armed, and its bytes sent when the period began.
    limit: Vec<SendLimit>,
    period_armed: Vec<bool>,
    period_mark: Vec<f64>,
    /// Per server, with `origin_queue_excess`: requests waiting for a send slot, oldest first
    /// (an entry no longer in `parked` was cancelled).
    waiting: Vec<std::collections::VecDeque<(u32, u32)>>,
    parked: std::collections::BTreeSet<(u32, u32)>,
    /// Requests taken off `waiting` and queued to be answered: already past the dedup window.
    unparked: std::collections::BTreeSet<(u32, u32)>,
    /// Per request in flight (task, piece asked): the alternatives its scheduler offered.
    alternatives: std::collections::HashMap<(u32, u32), Vec<u32>>,
    /// Requests answered with an alternative whose task has not heard so yet: (task, piece
    /// asked) → piece sent, so that a cancel of the piece asked stops the right transfer.
    substituted: std::collections::HashMap<(u32, u32), u32>,
    /// Requests answered with an alternative.
    substitutions: u64,
    requests: u64,
    refusals: u64,
    /// Refusals because the server was at `Params::origin_max_sends`.
    cap_refusals: u64,
    /// Most sends one server had in progress at once.
    peak_sends: usize,
    /// Per layer and piece: sent whole at least once; and how many pieces are not yet.
    sent_once: Vec<Vec<bool>>,
    unsent: usize,
    /// Per layer: the gateway's count of nodes that fetched its piece table recently.
    demand: Vec<Demand>,
}

/// The simulation state.
pub(crate) struct Swarm<'f> {
    fleet: &'f Fleet,
    now: Nanos,
    max_time: Nanos,
    queue: Queue<Ev>,
    net: Net<Tag>,
    hosts: Vec<Host>,
    tasks: Vec<Task>,
    /// Per task, the scheduler while it runs (`Some` exactly when the task is
    /// [`State::Running`]) and its pending timer event: kept apart from [`Task`] in dense
    /// arrays, since every event touches them and a 100,000-host run's tasks do not fit in a
    /// cache.
    scheds: Vec<Option<Box<Scheduler<u32>>>>,
    timers: Vec<Option<Nanos>>,
    streams: Vec<Stream>,
    /// Per stream: open (see [`Swarm::scheds`] for why it is not in [`Stream`]).
    stream_open: Vec<bool>,
    blobs: Vec<Blob>,
    origin: Origin,
    rng: Rng,
    cfg: Config,
    /// Per site: a DHT lookup's duration, and an announcement's.
    lookup_time: Vec<Nanos>,
    announce_time: Vec<Nanos>,
    single_site: bool,
    /// Hosts carry site labels (`Params::site_labels` in a fleet of more than one site).
    labels: bool,
    wan_in: Vec<Vec<f64>>,
    wan_out: Vec<Vec<f64>>,
    due: Vec<(u32, u32, Nanos)>,
    /// Per task.
    blob_slots: Vec<BlobSlots>,
    scratch: Vec<u32>,
    sub_scratch: Vec<Sub>,
    stats: SwarmStats,
}

/// Runs the swarm simulation of `fleet` (assumed validated).
pub fn run(fleet: &Fleet) -> SwarmOutcome {
    let mut s = Swarm::new(fleet);
    s.run();
    s.outcome()
}

impl<'f> Swarm<'f> {
    fn new(fleet: &'f Fleet) -> Self {
        let net = Net::new(fleet);
        let n_hosts = fleet.hosts.len();
        let n_sites = fleet.sites.len();
        // A lookup takes ~log2(N) hops, each a round trip to a random node.
        let hops = crate::net::lookup_hops(n_hosts);
        let mut per_site = vec![0usize; n_sites];
        for h in &fleet.hosts {
            per_site[usize::from(h.site)] += 1;
        }
        let mean_rtt: Vec<f64> = (0..n_sites)
            .map(|a| {
                per_site
                    .iter()
                    .enumerate()
                    .map(|(b, &k)| fleet.rtt[a][b] * k as f64)
                    .sum::<f64>()
                    / n_hosts as f64
            })
            .collect();
        let lookup_time: Vec<Nanos> = mean_rtt.iter().map(|&r| nanos(hops * r)).collect();
        // Announcing is a lookup for the closest nodes, then one more round trip to store.
        let announce_time = mean_rtt.iter().map(|&r| nanos((hops + 1.0) * r)).collect();
        let mut blobs: Vec<Blob> = fleet
            .layers
            .iter()
            .map(|&size| {
                let piece_size = piece_size_for(size);
                let pieces = size.div_ceil(u64::from(piece_size)) as u32;
                Blob {
                    size,
                    piece_size,
                    pieces,
                    providers: Vec::new(),
                    site_providers: Vec::new(),
                    copies: Bitfield::new(pieces),
                    spread: vec![Spread::default(); pieces as usize],
                }
            })
            .collect();
        let n_blobs = blobs.len();
        let hosts = fleet
            .hosts
            .iter()
            .map(|h| Host {
                alive: false,
                left: false,
                sends: 0,
                streams_in: 0,
                copies: Vec::new(),
                done_tasks: 0,
                join: nanos(h.join_s),
                done_at: None,
            })
            .collect();
        let tasks: Vec<Task> = (0..n_hosts * n_blobs)
            .map(|t| Task {
                host: (t / n_blobs) as u32,
                blob: (t % n_blobs) as u16,
                state: State::Waiting,
                sessions: Vec::new(),
                retiring: Vec::new(),
                connecting: Vec::new(),
                subscribers: Vec::new(),
                held: 0,
                swarm_hint: 1,
                read_pos: 0,
                lookups: 0,
                last_lookup: None,
                lookup_running: false,
                providers_seen: ProviderMemory::default(),
                rotation: None,
                grace_checked: false,
                arrivals: Vec::new(),
                offered: None,
            })
            .collect();
        let origin = Origin {
            alive: true,
            gone_at: None,
            refuse_until: blobs.iter().map(|b| vec![0; b.pieces as usize]).collect(),
            sent_any: vec![false; blobs.len()],
            active: BTreeMap::new(),
            queued: Default::default(),
            next_free: vec![0; fleet.origins.len()],
            service: nanos(1.0 / fleet.params.origin_rps).max(1),
            sending: vec![0; fleet.origins.len()],
            limit: vec![
                SendLimit::new(fleet.params.origin_max_sends.unwrap_or(1));
                fleet.origins.len()
            ],
            period_armed: vec![false; fleet.origins.len()],
            period_mark: vec![0.0; fleet.origins.len()],
            waiting: vec![Default::default(); fleet.origins.len()],
            parked: Default::default(),
            unparked: Default::default(),
            alternatives: Default::default(),
            substituted: Default::default(),
            substitutions: 0,
            requests: 0,
            refusals: 0,
            cap_refusals: 0,
            peak_sends: 0,
            sent_once: blobs
                .iter()
                .map(|b| vec![false; b.pieces as usize])
                .collect(),
            unsent: blobs.iter().map(|b| b.pieces as usize).sum(),
            demand: vec![Demand::default(); n_blobs],
        };
        let single_site = fleet.hosts.iter().all(|h| h.site == fleet.hosts[0].site);
        let labels = fleet.params.site_labels && !single_site;
        if labels {
            for b in &mut blobs {
                b.site_providers = vec![Vec::new(); n_sites];
            }
        }
        let mut s = Swarm {
            fleet,
            now: 0,
            max_time: nanos(fleet.params.max_time_s),
            queue: Queue::default(),
            net,
            hosts,
            scheds: (0..tasks.len()).map(|_| None).collect(),
            timers: vec![None; tasks.len()],
            tasks,
            streams: Vec::new(),
            stream_open: Vec::new(),
            blobs,
            origin,
            rng: Rng::new(mix(fleet.params.seed)),
            cfg: {
                let mut cfg = Config::default();
                if let Some(k) = fleet.params.fixed_in_flight {
                    cfg.min_in_flight = k;
                    cfg.max_in_flight = k;
                }
                cfg
            },
            lookup_time,
            announce_time,
            single_site,
            labels,
            wan_in: vec![vec![0.0; n_blobs]; n_sites],
            wan_out: vec![vec![0.0; n_blobs]; n_sites],
            due: Vec::new(),
            blob_slots: (0..n_hosts * n_blobs)
                .map(|_| BlobSlots::default())
                .collect(),
            scratch: Vec::new(),
            sub_scratch: Vec::new(),
            stats: SwarmStats::default(),
        };
        for (i, h) in fleet.hosts.iter().enumerate() {
            s.push(nanos(h.join_s), Ev::Join(i as u32));
            if let Some(l) = h.leave_s {
                s.push(nanos(l), Ev::Leave(i as u32));
            }
        }
        s
    }

    fn push(&mut self, at: Nanos, ev: Ev) {
        self.queue.push(at, ev);
    }

    fn run(&mut self) {
        // `FLOTILLA_SIM_PROGRESS=1`: a line on stderr every 2^24 events (simulated time, events,
        // events/s), to see how far a long run gets.
        let progress = std::env::var_os("FLOTILLA_SIM_PROGRESS").is_some();
        let started = std::time::Instant::now();
        while let Some((t, ev)) = self.queue.pop() {
            if t > self.max_time {
                break;
            }
            self.now = t;
            self.stats.events += 1;
            if progress && self.stats.events.trailing_zeros() >= 24 {
                let wall = started.elapsed().as_secs_f64();
                eprintln!(
                    "progress: simulated {:.3} s, {} events, {:.0} s wall, {:.0} events/s, queue {}",
                    secs(t),
                    self.stats.events,
                    wall,
                    self.stats.events as f64 / wall,
                    self.queue.len()
                );
            }
            self.stats.count(ev.kind());
            if let Some(&next) = self.queue.peek() {
                std::hint::black_box(self.warm(next));
            }
            self.handle(ev);
            if self.queue.next_time().is_none_or(|n| n > t) {
                self.flush();
            }
            self.stats.peak_queue = self.stats.peak_queue.max(self.queue.len());
        }
    }

    /// Re-rates flows whose resources changed and schedules their completions.
    fn flush(&mut self) {
        let mut due = std::mem::take(&mut self.due);
        self.net
            .engine
            .flush(self.now, |f, v, at| due.push((f, v, at)));
        for &(flow, version, at) in &due {
            self.push(at, Ev::FlowEnd { flow, version });
        }
        due.clear();
        self.due = due;
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(h) => self.join(h),
            Ev::Leave(h) => self.leave(h),
            Ev::Tick(t) => self.tick(t),
            Ev::SwarmCount {
                task,
                nodes,
                unsent,
            } => self.swarm_count(task, nodes, unsent),
            Ev::LookupDone(t) => self.lookup_done(t),
            Ev::Relookup(t) => self.relookup(t),
            Ev::Open { task, peer } => self.open(task, peer),
            Ev::Announce(t) => self.announce(t),
            Ev::PeerRequest { stream, piece } => self.peer_request(stream, piece),
            Ev::PeerCancel { stream, piece } => self.peer_cancel(stream, piece),
            Ev::OriginRequest { task, piece } => self.origin_arrive(task, piece),
            Ev::OriginAdmit { task, piece } => self.origin_admit(task, piece),
            Ev::OriginCancel { task, piece } => self.origin_cancel(task, piece),
            Ev::FlowEnd { flow, version } => self.flow_end(flow, version),
            Ev::Deliver { task, src, piece } => self.deliver(task, src, piece),
            // The refusal of a request whose piece is streaming to the task as another
            // request's alternative: the node aborted that request (see OriginSubst).
            Ev::Refused { task, src, piece }
                if src == ORIGIN && self.origin.active.contains_key(&(task, piece)) => {}
            Ev::Refused { task, src, piece } => {
                let now = self.at();
                if let Some(s) = self.sched(task) {
                    s.request_refused(source(src), piece, now);
                    self.retired_answer(task, src, piece);
                    if src != ORIGIN {
                        self.busy(task, src);
                    }
                    self.drain(task);
                }
            }
            Ev::PieceBusy { task, src, piece } => {
                let now = self.at();
                if let Some(s) = self.sched(task) {
                    s.piece_busy(source(src), piece, now);
                    self.retired_answer(task, src, piece);
                    self.drain(task);
                }
            }
            Ev::Failed { task, src, piece } => {
                let now = self.at();
                if let Some(s) = self.sched(task) {
                    s.request_failed(source(src), piece, now);
                    self.retired_answer(task, src, piece);
                    self.drain(task);
                }
            }
            Ev::PeerGone { task, peer } => self.peer_gone(task, peer),
            Ev::Have { task, piece, site } => self.have(task, piece, site, Tell::Have),
            Ev::Arriving { task, piece, site } => self.have(task, piece, site, Tell::Arriving),
            Ev::Withdrawn { task, piece, site } => {
                self.have(task, piece, site, Tell::Withdrawn);
            }
            Ev::FirstBatch { task, piece, flow } => self.first_batch(task, piece, flow),
            Ev::Timer(t) => self.timer(t),
            Ev::OriginGone => self.origin_gone(),
            Ev::OriginPeriod(server) => self.origin_period(server as usize),
            Ev::OriginSubst { task, asked, got } => {
                self.origin.substituted.remove(&(task, asked));
                let now = self.at();
                if let Some(s) = self.sched(task) {
                    // As the node's driver does: our own request for `got` is refused by the
                    // origin while this copy streams (its refusal, when it comes, is stale).
                    if s.is_requested(Source::Origin, got) {
                        s.request_refused(Source::Origin, got, now);
                    }
                    s.origin_substituted(asked, got, now);
                    self.drain(task);
                }
            }
        }
    }

    /// Reads the first thing event `ev` will read, and changes nothing: called for the next
    /// event before the current one is handled, so that its cache miss (at 100,000 hosts most
    /// state is cold) overlaps the current event's work.
    fn warm(&self, ev: Ev) -> usize {
        match ev {
            Ev::FlowEnd { flow, .. } => self.net.engine.warm(flow) as usize,
            Ev::Deliver { task, .. }
            | Ev::Refused { task, .. }
            | Ev::Failed { task, .. }
            | Ev::PieceBusy { task, .. }
            | Ev::OriginSubst { task, .. } => self.scheds[task as usize]
                .as_deref()
                .map_or(0, |s| s.peer_count()),
            Ev::Have { task, .. } | Ev::Arriving { task, .. } | Ev::Withdrawn { task, .. } => {
                self.tasks[task as usize].subscribers.len()
            }
            Ev::PeerRequest { stream, .. } | Ev::PeerCancel { stream, .. } => {
                self.streams[stream as usize].queue.len()
            }
            Ev::Timer(t) => usize::from(self.timers[t as usize].is_some()),
            _ => 0,
        }
    }

    /// The task's scheduler, while it runs.
    fn sched(&mut self, task: u32) -> Option<&mut Scheduler<u32>> {
        self.scheds[task as usize].as_deref_mut()
    }

    /// The host and layer of task `t` (tasks are numbered host by host), without touching the
    /// task.
    fn host_blob(&self, t: u32) -> (u32, u16) {
        let n = self.blobs.len() as u32;
        if n == 1 {
            (t, 0)
        } else {
            (t / n, (t % n) as u16)
        }
    }

    fn at(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    fn join(&mut self, h: u32) {
        let host = &mut self.hosts[h as usize];
        if host.alive || host.done_at.is_some() {
            return;
        }
        host.alive = true;
        let n_blobs = self.blobs.len() as u32;
        for b in 0..n_blobs {
            let t = h * n_blobs + b;
            let cfg = Config {
                seed: mix(self.fleet.params.seed ^ mix(u64::from(t))),
                ..self.cfg.clone()
            };

            let have = Bitfield::new(self.blobs[b as usize].pieces);
            let mut sched = Scheduler::new(h, have, cfg, self.at());
            if self.fleet.params.streaming {
                sched.set_read_position(0);
            }
            let hint = if self.fleet.params.fleet_size_hint {
                let n = self.hosts.len() as u64;
                sched.set_swarm_size(n);
                n
            } else {
                1
            };
            let rotation = Rotation::new(RotationConfig::default(), mix(u64::from(t)), self.at());
            let task = &mut self.tasks[t as usize];
            task.swarm_hint = hint;
            task.rotation = Some(Box::new(rotation));
            task.state = State::Running;
            self.scheds[t as usize] = Some(Box::new(sched));
            // The download starts by fetching the piece table: the gateway counts it.
            self.origin.demand[b as usize].note(self.now);
            if self.fleet.params.announce_at_start {
                // As the node's driver does (`provide` at the start): holding nothing yet.
                let site = self.net.host_site[h as usize];
                let at = self.now + self.announce_time[usize::from(site)];
                self.push(at, Ev::Announce(t));
            }
            self.push(self.now, Ev::Tick(t));
            self.drain(t);
        }
    }

    /// Carries out everything the task's scheduler wants now, then arms its timer.
    fn drain(&mut self, t: u32) {
        let now = self.now;
        let (host, blob) = self.host_blob(t);
        let mut done = false;
        loop {
            let Some(sched) = self.scheds[t as usize].as_deref_mut() else {
                return;
            };
            let Some(action) = sched.poll_action() else {
                break;
            };
            match action {
                Action::Request {
                    source: Source::Origin,
                    piece,
                } => {
                    let alts = sched.origin_alternatives(piece);
                    if alts.is_empty() {
                        self.origin.alternatives.remove(&(t, piece));
                    } else {
                        self.origin.alternatives.insert((t, piece), alts.to_vec());
                    }
                    let owd = self.net.owd_origin(self.server(blob, piece), host);
                    self.push(now + owd, Ev::OriginRequest { task: t, piece });
                }
                Action::Cancel {
                    source: Source::Origin,
                    piece,
                } => {
                    let owd = self.net.owd_origin(self.server(blob, piece), host);
                    self.push(now + owd, Ev::OriginCancel { task: t, piece });
                }
                Action::Request {
                    source: Source::Peer(p),
                    piece,
                } => match self.stream_to(t, p) {
                    Some(stream) => {
                        let owd = self.net.owd_hosts(host, p);
                        self.push(now + owd, Ev::PeerRequest { stream, piece });
                    }
                    // The session is gone; its PeerGone is on the way or was handled.
                    None => self.push(
                        now,
                        Ev::Failed {
                            task: t,
                            src: p,
                            piece,
                        },
                    ),
                },
                Action::Cancel {
                    source: Source::Peer(p),
                    piece,
                } => {
                    if self.retired_answer(t, p, piece) {
                        // The kept piece timed out or came from elsewhere: the session closes
                        // (its stream's reset stops the piece at the uploader).
                    } else if let Some(stream) = self.stream_to(t, p) {
                        let owd = self.net.owd_hosts(host, p);
                        self.push(now + owd, Ev::PeerCancel { stream, piece });
                    }
                }
                Action::Ban { .. } => {}
                Action::Done => done = true,
            }
        }
        if done {
            self.complete(t);
            return;
        }
        let next = self.scheds[t as usize]
            .as_deref_mut()
            .and_then(|s| s.poll_timeout());
        if let Some(at) = next {
            let at = (at.as_nanos() as Nanos).max(now);
            let timer = &mut self.timers[t as usize];
            if timer.is_none_or(|armed| at < armed) {
                *timer = Some(at);
                self.push(at, Ev::Timer(t));
            }
        }
    }

    fn timer(&mut self, t: u32) {
        let now = self.now;
        let timer = &mut self.timers[t as usize];
        if *timer != Some(now) {
            return;
        }
        *timer = None;
        let at = self.at();
        if let Some(s) = self.sched(t) {
            if s.poll_timeout().is_some_and(|d| d <= at) {
                s.handle_timeout(at);
            }
            self.drain(t);
        }
    }

    /// The origin server that holds `piece` of `blob`.
    fn server(&self, blob: u16, piece: u32) -> usize {
        let k = self.net.origin_servers() as u64;
        ((u64::from(piece) + u64::from(blob) * 7) % k) as usize
    }

    /// Accounts the bytes of an ended flow on the WAN links it crossed.
    fn account_wan(&mut self, tag: Tag, bytes: f64) {
        let (from, to, blob) = match tag {
            Tag::Peer { stream, .. } => {
                let s = &self.streams[stream as usize];
                let up = self.host_blob(s.up).0;
                let down = &self.tasks[s.down as usize];
                (
                    self.net.host_site[up as usize],
                    self.net.host_site[down.host as usize],
                    down.blob,
                )
            }
            Tag::Origin { task, piece } => {
                let down = &self.tasks[task as usize];
                let server = self.server(down.blob, piece);
                (
                    self.fleet.origins[server].site,
                    self.net.host_site[down.host as usize],
                    down.blob,
                )
            }
        };
        self.stats.sent_bytes += bytes;
        self.stats.received_bytes += bytes;
        if from != to {
            self.wan_out[usize::from(from)][usize::from(blob)] += bytes;
            self.wan_in[usize::from(to)][usize::from(blob)] += bytes;
        }
    }

    fn flow_end(&mut self, flow: u32, version: u32) {
        match self.net.engine.check(flow, version, self.now) {
            Check::Stale => return,
            Check::Later { version, at } => {
                self.push(at, Ev::FlowEnd { flow, version });
                return;
            }
            Check::Done => {}
        }
        let Some(ended) = self.net.engine.finish(flow) else {
            return;
        };
        self.account_wan(ended.tag, ended.bytes);
        match ended.tag {
            Tag::Peer { stream, piece } => self.peer_sent(stream, piece),
            Tag::Origin { task, piece } => self.origin_sent(task, piece),
        }
    }

    fn outcome(self) -> SwarmOutcome {
        let completion = self
            .hosts
            .iter()
            .map(|h| h.done_at.map(|d| secs(d.saturating_sub(h.join))))
            .collect();
        let left = self.hosts.iter().map(|h| h.left).collect();
        let mut stats = self.stats;
        stats.note_spread(self.blobs.iter().flat_map(|b| b.spread.iter().copied()));
        stats.origin_requests = self.origin.requests;
        stats.finish();
        stats.origin_refusals = self.origin.refusals;
        stats.origin_substitutions = self.origin.substitutions;
        stats.origin_cap_refusals = self.origin.cap_refusals;
        stats.origin_peak_sends = self.origin.peak_sends;
        SwarmOutcome {
            completion,
            left,
            origin_bytes: self.net.origin_bytes(),
            peer_upload_bytes: self.net.host_upload_bytes(),
            host_download_bytes: self.net.host_download_bytes(),
            wan_in: self.wan_in,
            wan_out: self.wan_out,
            origin_gone_s: self.origin.gone_at.map(secs),
            end_s: secs(self.now),
            stats,
        }
    }
}

pub(super) fn source(src: u32) -> Source<u32> {
    if src == ORIGIN {
        Source::Origin
    } else {
        Source::Peer(src)
    }
}
