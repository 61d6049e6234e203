//! The driver of one download: the task that turns the scheduler's decisions into transfer
//! sessions and origin requests, and everything that happens on the network and in the store
//! back into scheduler events.
//!
//! One `select!` loop owns all the state, so nothing here locks. Slow work never blocks it:
//! provider lookups, session opening and origin requests run as tasks in one [`JoinSet`]
//! (bounded: one lookup, at most `max_peers_per_blob` openings, the scheduler's origin window),
//! sessions report through one bounded channel, and dropping the driver aborts all of them.
//!
//! Attribution: the store sets a piece's bit before the receiver that delivered it hears the
//! verdict, so a new bit is reported to the scheduler only once no request of ours for that
//! piece is outstanding; the request's own outcome (which carries its source and feeds the
//! latency and rate estimates) normally arrives first. Bits set by any other path (another
//! process, a request already cancelled) are reported then.
//!
//! Sessions: a lookup's providers become spares of the protocol crate's `Rotation` policy;
//! sessions go to random spares, and one that keeps answering Busy or delivers far less than
//! the others is replaced (the fleet simulator runs the same policy).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use flotilla_protocol::scheduler::{Action, Rotation, RotationConfig, Scheduler, Source};
use flotilla_protocol::site::{SITE_LOOKUP_LIMIT, label_rtt};
use libp2p::PeerId;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::gateway::{OriginAsk, OriginOutcome};
use super::table;
use super::{Counters, FetchError, Inner, Outcome, Ready, State};
use crate::ports::{NetworkError, SourceError, Verdict};
use crate::transfer::{Opened, Session, SessionEvent, SessionEventKind, TransferError};

/// Sessions a download may open beyond `max_peers_per_blob` to holders the gateway names
/// when it refuses a piece (see `connect_to_holder`).
const HOLDER_EXTRA: usize = 4;

/// Session events buffered between the sessions and the driver.
const EVENT_QUEUE: usize = 256;
/// Longest wait, after the last piece, for answers already arriving.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Longest period of the housekeeping tick (provider refresh, session rotation, swarm size,
/// stall check). The first lookups are due 0.25 s apart: a 1-s tick held them to 1 s, and in a
/// cold start nodes then opened no session for the first second (simulated).
const MAX_TICK: Duration = Duration::from_millis(250);
/// `Missing` answers after which a peer is banned, as at the second corrupted piece. The
/// scheduler asks a peer only for pieces it advertised (in its Welcome or a Have), and an honest
/// node never loses a piece it announced while it serves the blob, so each such answer is a lie
/// about its bit field.
const MISSING_STRIKES: u32 = 2;
/// Timeout sweeps in a row in which a peer let requests expire without sending a byte of any
/// answer in between, after which it is banned: it accepts requests and then stalls them,
/// holding pieces hostage until the scheduler's timeouts (which double) fire again and again.
/// A slow but honest uploader keeps its session's progress counter moving and is never counted.
/// An overloaded one may still look like this, so the ban covers this download only.
const STALL_STRIKES: u32 = 3;

/// Everything a driver starts with.
pub(super) struct Job {
    pub(super) inner: Arc<Inner>,
    pub(super) digest: Digest,
    /// The table, if the store already holds part of the blob.
    pub(super) table: Option<Arc<SignedPieceTable>>,
    pub(super) state: watch::Sender<State>,
    /// Closes when the last handle drops.
    pub(super) read_pos: watch::Receiver<Option<u32>>,
    pub(super) stats: Arc<Counters>,
}

/// Runs one download to its end and publishes how it ended; stops early (quietly) when every
/// handle is gone, except while it collects the last answers after the last piece.
pub(super) async fn run(job: Job) {
    let Job {
        inner,
        digest,
        table,
        state,
        read_pos,
        stats,
    } = job;
    let result = drive(inner, digest.clone(), table, &state, read_pos, stats).await;
    match result {
        Ok(()) => {
            info!(%digest, "download complete");
            state.send_modify(|s| s.outcome = Outcome::Complete);
        }
        Err(FetchError::Stopped(_)) => debug!(%digest, "download abandoned: no handle left"),
        Err(e) => {
            warn!(%digest, error = %e, "download failed");
            state.send_modify(|s| s.outcome = Outcome::Failed(e));
        }
    }
}

/// Resolves when the sender side (held by the handles) is gone.
async fn handles_gone(mut rx: watch::Receiver<Option<u32>>) {
    while rx.changed().await.is_ok() {}
}

async fn drive(
    inner: Arc<Inner>,
    digest: Digest,
    table: Option<Arc<SignedPieceTable>>,
    state: &watch::Sender<State>,
    read_pos: watch::Receiver<Option<u32>>,
    stats: Arc<Counters>,
) -> Result<(), FetchError> {
    let table = match table {
        Some(t) => t,
        None => tokio::select! {
            t = table::obtain(&inner, &digest) => t?,
            () = handles_gone(read_pos.clone()) => return Err(FetchError::Stopped(digest)),
        },
    };
    let held = inner.sink.register(table.clone()).await?;
    state.send_modify(|s| {
        s.ready = Some(Ready {
            table: table.clone(),
            have: held.have.clone(),
            _lease: inner.lease(&digest),
        });
    });
    let local = inner.network.local_peer_id();
    // Known by now whenever the table was verified against it; `None` only if it never was.
    let gateway = inner.gateway_peer().await.ok();
    let mut cfg = inner.cfg.scheduler.clone();
    cfg.seed = seed(&local, &digest);
    let start = Instant::now();
    let have = held.have.borrow().clone();
    let rotation = Rotation::new(RotationConfig::default(), cfg.seed, Duration::ZERO);
    let sched = Scheduler::new(local, have.clone(), cfg, Duration::ZERO);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (subst_tx, subst_rx) = mpsc::channel(SUBSTITUTION_QUEUE);
    let driver = Driver {
        local,
        site: inner.network.site().map(str::to_owned),
        reported: HashMap::new(),
        far: HashSet::new(),
        gateway,
        swarm_hint: 1,
        lookups: 0,
        counted: have.clone(),
        digest,
        table,
        stats,
        sched,
        start,
        store_have: held.have,
        sessions: HashMap::new(),
        connecting: HashMap::new(),
        banned: HashSet::new(),
        refused: HashSet::new(),
        outstanding: HashSet::new(),
        origin_tasks: HashMap::new(),
        origin_seq: 0,
        tasks: JoinSet::new(),
        lookup_running: false,
        last_lookup: None,
        relookup_at: None,
        events_tx,
        subst_tx,
        provided: false,
        reconcile: true,
        last_progress: start,
        last_origin_ok: start,
        last_origin_error: None,
        held_count: 0,
        strikes: HashMap::new(),
        expiry_sweep: false,
        rotation,
        grace_checked: false,
        inner,
    };
    driver.run(events_rx, subst_rx, read_pos).await
}

/// A seed for the scheduler's tie-breaks, different per node and blob (FNV-1a).
fn seed(local: &PeerId, digest: &Digest) -> u64 {
    local
        .to_bytes()
        .iter()
        .chain(digest.as_str().as_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// What a background task reports.
enum Internal {
    /// A lookup's providers, and those of our site (empty without a site).
    Providers {
        found: Result<Vec<PeerId>, NetworkError>,
        near: Result<Vec<PeerId>, NetworkError>,
    },
    /// Nodes the gateway saw start this download recently.
    SwarmSize(u32),
    Connected {
        peer: PeerId,
        result: Result<(Session, Opened), String>,
    },
    /// An origin request for `piece` ended; `got` is the piece its answer carried (an
    /// alternative, SPEC §3.7, or `piece`).
    Origin {
        piece: u32,
        got: u32,
        seq: u64,
        outcome: OriginOutcome,
    },
}

/// An origin request's answer carries an alternative (told before its body streams).
struct Substitution {
    asked: u32,
    seq: u64,
    got: u32,
}

/// Substitutions buffered: at most one per origin request, which the scheduler's origin window
/// keeps to a few.
const SUBSTITUTION_QUEUE: usize = 16;

/// The state of one running download (see the module docs).
struct Driver {
    inner: Arc<Inner>,
    local: PeerId,
    /// Our site label: peers that tell the same one are near, all others far (SPEC §6.2).
    site: Option<String>,
    /// Per session, its payload bytes last reported to the rotation policy.
    reported: HashMap<PeerId, u64>,
    /// Peers with a session whose Welcome told another site, or none (with a site only).
    far: HashSet<PeerId>,
    digest: Digest,
    table: Arc<SignedPieceTable>,
    stats: Arc<Counters>,
    sched: Scheduler<PeerId>,
    start: Instant,
    /// The store's bit field of this blob.
    store_have: watch::Receiver<Bitfield>,
    sessions: HashMap<PeerId, Session>,
    /// Sessions being opened, with events that arrived before the session was handed over.
    connecting: HashMap<PeerId, Vec<SessionEvent>>,
    /// Never reopened for this blob: sent corrupted pieces.
    banned: HashSet<PeerId>,
    /// The gateway's peer id. The gateway is the scheduler's *origin*, reached over HTTP and
    /// only for pieces no peer has; as a swarm peer it holds everything, so opening a session
    /// to it would make every node take every piece from it.
    gateway: Option<PeerId>,
    /// Nodes known to take part in this blob's swarm: the most of the gateway's count of nodes
    /// that started it recently and the providers found plus ourselves.
    swarm_hint: usize,
    /// Provider lookups started so far (the first ones come quickly, see `lookup_due`).
    lookups: u32,
    /// Pieces counted in the stats (or held before the download started): each piece is
    /// counted once, by the first copy that landed, whichever path reported it.
    counted: Bitfield,
    /// Never reopened for this blob: the scheduler would not take them.
    refused: HashSet<PeerId>,
    /// Requests sent and not yet answered or cancelled.
    outstanding: HashSet<(Source<PeerId>, u32)>,
    /// Running origin requests by piece, with a sequence number so a late answer of an aborted
    /// request is not taken for a newer one's.
    origin_tasks: HashMap<u32, (u64, AbortHandle)>,
    origin_seq: u64,
    tasks: JoinSet<Internal>,
    lookup_running: bool,
    last_lookup: Option<Instant>,
    /// When a download short of sessions looks for providers again (`Rotation::lookup_retry`),
    /// sooner than the housekeeping tick would.
    relookup_at: Option<Instant>,
    events_tx: mpsc::Sender<SessionEvent>,
    subst_tx: mpsc::Sender<Substitution>,
    provided: bool,
    /// The store's bits may hold pieces the scheduler has not heard of.
    reconcile: bool,
    last_progress: Instant,
    /// Last time the origin delivered or refused (it is up).
    last_origin_ok: Instant,
    last_origin_error: Option<String>,
    held_count: u32,
    /// Strikes against peers (see [`MISSING_STRIKES`] and [`STALL_STRIKES`]).
    strikes: HashMap<PeerId, Strikes>,
    /// Set while the actions of a scheduler timeout sweep are carried out: its cancels are
    /// expired requests, not end-game duplicates.
    expiry_sweep: bool,
    /// Which sessions to keep: a session that keeps answering Busy, or delivers far less than
    /// the others, makes room for a random spare provider (the protocol crate's policy, which
    /// the simulator runs too).
    rotation: Rotation<PeerId>,
    /// Whether the first lookup's sessions were checked for a cold start.
    grace_checked: bool,
}

/// Misbehaviour seen from one peer during this download.
#[derive(Default)]
struct Strikes {
    missing: u32,
    /// Consecutive sweeps with an expired request and no progress in between.
    stalls: u32,
    /// The session's progress counter when the last stall was counted.
    progress: u64,
    /// Since when the peer has neither answered nor made progress while requests expired.
    quiet_since: Option<Instant>,
    /// The sweep (scheduler time) that last counted a stall, so a sweep counts once per peer.
    last_sweep: Option<Duration>,
}

impl Driver {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    async fn run(
        mut self,
        mut events: mpsc::Receiver<SessionEvent>,
        mut substitutions: mpsc::Receiver<Substitution>,
        mut read_pos: watch::Receiver<Option<u32>>,
    ) -> Result<(), FetchError> {
        let period = self
            .inner
            .cfg
            .provider_refresh
            .clamp(Duration::from_millis(10), MAX_TICK);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        if let Some(p) = *read_pos.borrow_and_update() {
            self.sched.set_read_position(p);
        }
        // Set once every handle is gone but the blob is complete in the store.
        let mut finish_by: Option<Instant> = None;
        loop {
            if self.reconcile {
                self.reconcile_store();
            }
            while let Some(action) = self.sched.poll_action() {
                if self.execute(action) {
                    self.drain(&mut events).await;
                    return Ok(());
                }
            }
            self.expiry_sweep = false;
            let wake = self.sched.poll_timeout().map(|t| self.start + t);
            let relookup = self.relookup_at;
            tokio::select! {
                Some(ev) = events.recv() => self.on_event(ev),
                Some(s) = substitutions.recv() => self.on_substituted(s.asked, s.seq, s.got),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.on_task(done);
                }
                changed = self.store_have.changed() => {
                    if changed.is_err() {
                        return Err(SourceError::NotHeld(format!(
                            "{} was removed from the store during its download",
                            self.digest
                        ))
                        .into());
                    }
                    self.reconcile = true;
                }
                changed = read_pos.changed(), if finish_by.is_none() => {
                    if changed.is_err() {
                        if !self.store_have.borrow().is_complete() {
                            // Every handle is gone: nobody wants the rest.
                            return Err(FetchError::Stopped(self.digest.clone()));
                        }
                        // The last readers left with the last piece, whose verdict is still on
                        // its way: hear it (briefly) so it is counted.
                        finish_by = Some(Instant::now() + DRAIN_LIMIT);
                    } else if let Some(p) = *read_pos.borrow_and_update() {
                        self.sched.set_read_position(p);
                    }
                }
                () = sleep_until(finish_by) => return Ok(()),
                () = sleep_until(relookup) => {
                    self.relookup_at = None;
                    if !self.lookup_running && self.short_of_sessions() {
                        self.lookup_providers();
                    }
                }
                () = sleep_until(wake) => {
                    let now = self.now();
                    self.sched.handle_timeout(now);
                    self.expiry_sweep = true;
                }
                _ = tick.tick() => self.housekeeping()?,
            }
        }
    }

    /// After the last piece: waits (briefly) for the answers still arriving, so every piece is
    /// counted where it came from.
    async fn drain(&mut self, events: &mut mpsc::Receiver<SessionEvent>) {
        let deadline = Instant::now() + DRAIN_LIMIT;
        while !self.outstanding.is_empty() {
            tokio::select! {
                Some(ev) = events.recv() => self.on_event(ev),
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.on_task(done);
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    /// Provider refresh, swarm size, and the stall check.
    fn housekeeping(&mut self) -> Result<(), FetchError> {
        if let Some(why) = self.inner.sink.disk_full(self.start.into_std()) {
            // Every piece fetched now would be thrown away: stop, keep what is verified, and
            // let the next request start over once space is back.
            return Err(FetchError::Store(Arc::new(SourceError::NoSpace(why))));
        }
        // The swarm for this blob is its providers, not the whole routing table: a node pulling
        // a blob nobody else wants would otherwise hold back from the origin as if thousands
        // of others were about to fetch each piece.
        self.set_swarm_size();
        self.report_progress();
        self.share_near_nodes();
        let now = self.now();
        let stuck = !self.peers_can_help();
        if let Some(peer) = self.rotation.tick(now, stuck) {
            self.replace_session(peer, "it delivered far less than the other sessions");
        }
        self.fill();
        let refresh_due = self
            .last_lookup
            .is_none_or(|t| t.elapsed() >= self.lookup_due());
        if !self.lookup_running && (refresh_due || self.rotation.wants_lookup(now)) {
            self.lookup_providers();
        }
        let limit = self.inner.cfg.stall_timeout;
        let idle = self.last_progress.elapsed();
        if idle >= limit
            && self.last_origin_ok.elapsed() >= limit
            // Connected peers that hold what we miss get twice as long (they may be slow).
            && (idle >= limit * 2 || !self.peers_can_help())
        {
            return Err(FetchError::Stalled {
                digest: self.digest.clone(),
                secs: limit.as_secs(),
                reason: self
                    .last_origin_error
                    .clone()
                    .unwrap_or_else(|| "no origin request answered".to_owned()),
            });
        }
        Ok(())
    }

    /// With a site, tells the rotation policy the payload bytes each session received since the
    /// last tick: it then compares far sessions by bytes, as a piece from another site may
    /// take longer than its 1-s period.
    fn report_progress(&mut self) {
        if self.site.is_none() {
            return;
        }
        for (&peer, session) in &self.sessions {
            let now = session.payload_bytes();
            let last = self.reported.insert(peer, now).unwrap_or(0);
            self.rotation.progress(peer, now.saturating_sub(last));
        }
        let sessions = &self.sessions;
        self.reported.retain(|p, _| sessions.contains_key(p));
    }

    /// Whether a connected peer holds a piece we still miss.
    fn peers_can_help(&self) -> bool {
        let have = self.sched.have();
        have.iter_zeros().any(|p| self.sched.availability(p) > 0)
    }

    /// Time between provider lookups: 0.25 s doubling up to `provider_refresh`. Nodes that start
    /// together announce only once their first pieces land, so a node that looked up once at
    /// the start and then waited the full refresh would pull everything from the origin alone.
    /// While short of sessions it stays at 0.25 s: in a cold start the first lookups find
    /// nobody (nodes are findable before they hold anything, but the first ones may not have
    /// announced yet), and a backed-off lookup left nodes without a session for a second; after a
    /// lookup that left it short it also looks again sooner (`relookup_at`: 25 ms doubling).
    fn lookup_due(&self) -> Duration {
        let quick = if self.short_of_sessions() {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(250).saturating_mul(1 << self.lookups.min(16))
        };
        quick.min(self.inner.cfg.provider_refresh)
    }

    fn short_of_sessions(&self) -> bool {
        self.sessions.len() + self.connecting.len() < self.inner.cfg.max_peers_per_blob
    }

    /// The swarm size the scheduler's origin rule uses: the largest count heard, at least the
    /// sessions plus ourselves.
    fn set_swarm_size(&mut self) {
        let size = self.swarm_hint.max(self.sessions.len() + 1);
        self.sched.set_swarm_size(size as u64);
    }

    /// Closes the session to `peer` for the rotation policy and opens one to a spare provider.
    fn replace_session(&mut self, peer: PeerId, why: &str) {
        debug!(digest = %self.digest, %peer, "replacing a session: {why}");
        self.drop_peer(peer);
        self.fill();
    }

    /// Opens sessions to spare providers (a random one each time) up to the per-blob limit.
    fn fill(&mut self) {
        while self.sessions.len() + self.connecting.len() < self.inner.cfg.max_peers_per_blob {
            let Some(peer) = self.rotation.take_spare() else {
                break;
            };
            if self.may_open(peer) {
                self.open_session(peer);
            }
        }
    }

    /// The cold-start rule: once the first lookup's sessions are settled, if none of them holds
    /// a piece we miss (or none was found), nobody's bit field is worth waiting for and the
    /// scheduler's origin grace ends.
    fn check_cold_start(&mut self) {
        if self.grace_checked
            || self.lookups == 0
            || self.lookup_running
            || !self.connecting.is_empty()
        {
            return;
        }
        self.grace_checked = true;
        if !self.peers_can_help() {
            let now = self.now();
            self.sched.end_origin_grace(now);
        }
    }

    fn lookup_providers(&mut self) {
        self.lookup_running = true;
        self.last_lookup = Some(Instant::now());
        self.lookups = self.lookups.saturating_add(1);
        if self.lookups <= 6 || self.swarm_hint > 1 {
            let inner = self.inner.clone();
            let digest = self.digest.clone();
            self.tasks.spawn(async move {
                Internal::SwarmSize(inner.gateway.swarm_size(&digest).await.unwrap_or(0))
            });
        }
        let limit = self.inner.cfg.max_peers_per_blob.saturating_mul(2).max(8);
        let lookup = self.inner.network.find_providers(&self.digest, limit);
        let site_lookup = self.site.is_some().then(|| {
            self.inner
                .network
                .find_site_providers(&self.digest, SITE_LOOKUP_LIMIT)
        });
        self.tasks.spawn(async move {
            let (found, near) = match site_lookup {
                Some(site) => futures::join!(lookup, site),
                None => (lookup.await, Ok(Vec::new())),
            };
            Internal::Providers { found, near }
        });
    }

    /// Tells the rotation policy (and, for a candidate about to be added, the scheduler) on
    /// which side of the site boundary `peer` is, as its site label says.
    fn set_site(&mut self, peer: PeerId, near: bool) {
        let rtt = label_rtt(near);
        if near {
            self.far.remove(&peer);
        } else {
            self.far.insert(peer);
        }
        self.rotation.peer_rtt(peer, rtt);
        let now = self.now();
        self.sched.peer_rtt(peer, rtt, now);
    }

    /// Hands the scheduler the members of our site known to download this blob (from lookups of
    /// the site key and Welcomes) for its one-fetch-per-site rule; only with a site, and from
    /// the first lookup on: a host may fetch from afar (the origin, which is no session) before
    /// its first far session opens. The simulator's driver does the same.
    fn share_near_nodes(&mut self) {
        if self.site.is_none() {
            return;
        }
        let near: Vec<PeerId> = self.rotation.near_providers().collect();
        self.sched.set_near_nodes(near);
    }

    /// Offers new providers to the rotation policy as spares and opens sessions to random ones,
    /// up to the per-blob limit (`None`: the lookup failed, the spares stay). Members of our
    /// site (`near`) come back as spares even if
    /// replaced lately: `offer` keeps recently replaced providers out, and a site has few
    /// members (simulated, 20 sites of 5 hosts: members that had been replaced once were never
    /// taken back, and pieces their site held came from afar after 30 s; p99 38 → 2 × the
    /// bound).
    fn connect_to(&mut self, peers: Option<Vec<PeerId>>, near: &[PeerId]) {
        if let Some(peers) = peers {
            let mut usable = Vec::with_capacity(peers.len());
            for peer in peers {
                if self.may_open(peer) {
                    usable.push(peer);
                }
            }
            self.rotation.offer(usable);
        }
        for &peer in near {
            if self.may_open(peer) {
                self.rotation.add_spare(peer);
            }
        }
        self.fill();
    }

    /// The gateway refused a piece because it just went to `peer`: that peer holds pieces
    /// nobody else has yet, and this node may have no session to it (sessions go to a few
    /// providers, not the whole swarm), so it would never see the piece announced. Opens one,
    /// beyond the per-blob limit if need be, by at most [`HOLDER_EXTRA`] sessions.
    fn connect_to_holder(&mut self, peer: PeerId) {
        if !self.may_open(peer) {
            return;
        }
        let limit = self.inner.cfg.max_peers_per_blob + HOLDER_EXTRA;
        if self.sessions.len() + self.connecting.len() >= limit {
            return;
        }
        debug!(digest = %self.digest, %peer, "opening a session to the holder the gateway named");
        self.open_session(peer);
    }

    /// Whether a session to `peer` may be opened: not ourselves, not the gateway (the origin),
    /// not one we have or are opening, nor one banned or refused.
    fn may_open(&self, peer: PeerId) -> bool {
        !(peer == self.local
            || Some(peer) == self.gateway
            || self.sessions.contains_key(&peer)
            || self.connecting.contains_key(&peer)
            || self.banned.contains(&peer)
            || self.inner.is_banned(&peer)
            || self.refused.contains(&peer))
    }

    /// Starts opening a session to `peer`.
    fn open_session(&mut self, peer: PeerId) {
        self.connecting.insert(peer, Vec::new());
        let network = self.inner.network.clone();
        let sink = self.inner.sink.clone();
        let digest = self.digest.clone();
        let events = self.events_tx.clone();
        let limit = self.inner.cfg.connect_timeout;
        self.tasks.spawn(async move {
            let opened = tokio::time::timeout(limit, async {
                let stream = network.open_stream(peer).await.map_err(|e| e.to_string())?;
                Session::open(peer, stream, digest, sink, events)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            Internal::Connected {
                peer,
                result: opened.unwrap_or_else(|_| Err("timed out".to_owned())),
            }
        });
    }

    /// Carries out one scheduler action; `true` once the download is complete.
    fn execute(&mut self, action: Action<PeerId>) -> bool {
        match action {
            Action::Request {
                source: Source::Peer(peer),
                piece,
            } => self.request_peer(peer, piece),
            Action::Request {
                source: Source::Origin,
                piece,
            } => self.request_origin(piece),
            Action::Cancel { source, piece } => {
                let was_outstanding = self.outstanding.contains(&(source, piece));
                // An answer that has begun to arrive still comes as an event: keep expecting
                // it, so the piece is attributed (and counted) when it does.
                let answer_coming = match source {
                    Source::Peer(peer) => {
                        self.sessions.get(&peer).is_some_and(|s| !s.cancel(piece))
                    }
                    Source::Origin => {
                        if let Some((_, task)) = self.origin_tasks.remove(&piece) {
                            task.abort();
                        }
                        false
                    }
                };
                if !answer_coming {
                    self.outstanding.remove(&(source, piece));
                    self.reconcile = true;
                    if self.expiry_sweep
                        && was_outstanding
                        && let Source::Peer(peer) = source
                    {
                        self.stalled(peer);
                    }
                }
            }
            Action::Ban { peer } => {
                // The scheduler has already forgotten the peer.
                self.ban(peer, "it sent corrupted pieces");
            }
            Action::Done => {
                self.provide();
                return true;
            }
        }
        false
    }

    fn request_peer(&mut self, peer: PeerId, piece: u32) {
        let now = self.now();
        let source = Source::Peer(peer);
        let Some(session) = self.sessions.get(&peer) else {
            self.sched.request_failed(source, piece, now);
            self.drop_peer(peer);
            return;
        };
        match session.request(piece) {
            Ok(()) => {
                self.outstanding.insert((source, piece));
            }
            // The session's own limits, not the peer's fault: try again a bit later.
            Err(TransferError::QueueFull | TransferError::AlreadyRequested(_)) => {
                self.sched.request_refused(source, piece, now);
            }
            Err(e) => {
                debug!(digest = %self.digest, %peer, piece, error = %e, "request not sent");
                self.sched.request_failed(source, piece, now);
                if session.is_closed() {
                    self.drop_peer(peer);
                }
            }
        }
    }

    fn request_origin(&mut self, piece: u32) {
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

    /// Drops `peer` for this blob and, since a peer that lies about one blob is not trusted
    /// with any other, for every download of this node. The caller tells the scheduler, unless
    /// the ban was the scheduler's own decision.
    fn ban(&mut self, peer: PeerId, why: &str) {
        self.ban_for(peer, why, true);
    }

    /// [`Driver::ban`], for every download (`everywhere`) or this one only.
    fn ban_for(&mut self, peer: PeerId, why: &str, everywhere: bool) {
        if !self.banned.insert(peer) {
            return;
        }
        warn!(digest = %self.digest, %peer, everywhere, "banning peer: {why}");
        self.sessions.remove(&peer);
        self.strikes.remove(&peer);
        self.rotation.closed(peer);
        self.rotation.forget(peer);
        if everywhere {
            self.inner.ban(peer);
        }
        self.stats.banned();
        self.inner.totals.banned();
        self.outstanding.retain(|(s, _)| *s != Source::Peer(peer));
        self.reconcile = true;
    }

    /// A ban the scheduler did not decide: it must forget the peer too.
    fn ban_and_remove(&mut self, peer: PeerId, why: &str, everywhere: bool) {
        if self.sessions.contains_key(&peer) {
            let now = self.now();
            self.sched.peer_removed(peer, now);
        }
        self.ban_for(peer, why, everywhere);
    }

    /// `peer` let a request expire in this timeout sweep.
    fn stalled(&mut self, peer: PeerId) {
        let now = self.now();
        let progress = self.sessions.get(&peer).map_or(0, Session::progress);
        let st = self.strikes.entry(peer).or_default();
        if st.last_sweep == Some(now) {
            return;
        }
        st.last_sweep = Some(now);
        if st.progress != progress {
            // Bytes arrived since the last count: slow, not silent.
            st.progress = progress;
            st.stalls = 0;
            st.quiet_since = None;
            return;
        }
        st.stalls += 1;
        let quiet = st.quiet_since.get_or_insert_with(Instant::now).elapsed();
        if st.stalls >= STALL_STRIKES && quiet >= self.inner.cfg.peer_stall {
            self.ban_and_remove(
                peer,
                "it accepted requests and answered none of them, sweep after sweep",
                false,
            );
        }
    }

    /// `peer` answered a request (whatever the answer): it is not stalling.
    fn answered(&mut self, peer: PeerId) {
        if let Some(st) = self.strikes.get_mut(&peer) {
            st.stalls = 0;
            st.quiet_since = None;
        }
    }

    /// Forgets a peer whose session is gone or unusable.
    fn drop_peer(&mut self, peer: PeerId) {
        self.sessions.remove(&peer);
        self.far.remove(&peer);
        self.rotation.closed(peer);
        self.outstanding.retain(|(s, _)| *s != Source::Peer(peer));
        let now = self.now();
        self.sched.peer_removed(peer, now);
        self.reconcile = true;
    }

    fn on_event(&mut self, ev: SessionEvent) {
        if let Some(early) = self.connecting.get_mut(&ev.peer) {
            // Bounded: a session announces each piece at most once, then closes.
            if early.len() <= self.table.table.piece_count() as usize + 8 {
                early.push(ev);
            }
            return;
        }
        let peer = ev.peer;
        if !self.sessions.contains_key(&peer) {
            // A session we dropped (banned or refused): nothing more to learn from it.
            return;
        }
        let now = self.now();
        let source = Source::Peer(peer);
        match ev.kind {
            SessionEventKind::Have(piece) => self.sched.peer_have(peer, piece, now),
            SessionEventKind::Received {
                piece,
                verdict,
                bytes,
            } => {
                self.answered(peer);
                self.outstanding.remove(&(source, piece));
                self.reconcile = true;
                if verdict != Verdict::Invalid {
                    self.rotation.delivered(peer);
                }
                let bytes = u64::from(bytes);
                match verdict {
                    // A duplicate whose winning copy was never reported (a late answer to a
                    // cancelled request) is counted as this source's.
                    Verdict::Verified | Verdict::Duplicate if self.counted.set(piece) => {
                        self.stats.peer(bytes);
                        self.inner.totals.peer(bytes);
                        if self.far.contains(&peer) {
                            self.stats.far(bytes);
                            self.inner.totals.far(bytes);
                        }
                        self.sched.piece_received(source, piece, now);
                    }
                    Verdict::Verified | Verdict::Duplicate => {
                        self.stats.wasted(bytes);
                        self.inner.totals.wasted(bytes);
                        self.sched.piece_received(source, piece, now);
                    }
                    Verdict::Invalid => {
                        warn!(digest = %self.digest, %peer, piece, "peer sent a corrupted piece");
                        self.stats.wasted(bytes);
                        self.inner.totals.wasted(bytes);
                        self.sched.piece_invalid(peer, piece, now);
                    }
                }
            }
            SessionEventKind::Refused(piece) => {
                self.answered(peer);
                self.outstanding.remove(&(source, piece));
                self.reconcile = true;
                self.sched.request_refused(source, piece, now);
                if self.rotation.refused(peer, now).is_some() {
                    self.replace_session(peer, "it keeps answering Busy");
                }
            }
            SessionEventKind::Failed(piece) => {
                self.answered(peer);
                self.outstanding.remove(&(source, piece));
                self.reconcile = true;
                self.sched.request_failed(source, piece, now);
            }
            SessionEventKind::Missing(piece) => {
                self.answered(peer);
                self.outstanding.remove(&(source, piece));
                self.reconcile = true;
                self.sched.request_failed(source, piece, now);
                let st = self.strikes.entry(peer).or_default();
                st.missing += 1;
                if st.missing >= MISSING_STRIKES {
                    self.ban_and_remove(
                        peer,
                        "it advertised pieces it then said it does not hold",
                        true,
                    );
                }
            }
            SessionEventKind::Closed(reason) => {
                debug!(digest = %self.digest, %peer, reason = ?reason, "session closed");
                self.drop_peer(peer);
            }
        }
    }

    fn on_task(&mut self, done: Result<Internal, JoinError>) {
        let report = match done {
            Ok(report) => report,
            Err(e) => {
                // A cancelled origin request, or a panic (the scheduler's timeout then requeues
                // whatever that task was doing).
                if !e.is_cancelled() {
                    warn!(digest = %self.digest, error = %e, "download task failed");
                }
                return;
            }
        };
        match report {
            Internal::Providers { found, near } => {
                self.lookup_running = false;
                let near = near.unwrap_or_else(|e| {
                    debug!(digest = %self.digest, error = %e, "site lookup failed");
                    Vec::new()
                });
                let near: Vec<PeerId> = near
                    .into_iter()
                    .filter(|&p| p != self.local && Some(p) != self.gateway)
                    .collect();
                for &p in &near {
                    self.rotation.peer_rtt(p, label_rtt(true));
                }
                // Members of our site first: the rotation policy takes near spares first, and
                // its list has room for a few.
                let found = found.map(|peers| {
                    let mut all = near.clone();
                    all.extend(peers.into_iter().filter(|p| !near.contains(p)));
                    all
                });
                match found {
                    Ok(peers) => {
                        let others = peers
                            .iter()
                            .filter(|p| Some(**p) != self.gateway && **p != self.local)
                            .count();
                        self.swarm_hint = self.swarm_hint.max(others + 1);
                        self.connect_to(Some(peers), &near);
                    }
                    Err(e) => {
                        debug!(digest = %self.digest, error = %e, "provider lookup failed");
                        self.connect_to(None, &near);
                    }
                }
                self.share_near_nodes();
                if self.short_of_sessions() {
                    let retry = self
                        .rotation
                        .lookup_retry(self.lookups)
                        .min(self.inner.cfg.provider_refresh);
                    self.relookup_at = Some(Instant::now() + retry);
                }
                self.check_cold_start();
            }
            Internal::SwarmSize(n) => {
                self.swarm_hint = self.swarm_hint.max(n as usize);
                // At once: the origin rule needs it before a cold start ends the grace.
                self.set_swarm_size();
            }
            Internal::Connected { peer, result } => self.on_connected(peer, result),
            Internal::Origin {
                piece,
                got,
                seq,
                outcome,
            } => {
                if got != piece {
                    self.on_substituted(piece, seq, got);
                }
                self.on_origin(got, seq, outcome);
            }
        }
    }

    fn on_connected(&mut self, peer: PeerId, result: Result<(Session, Opened), String>) {
        let early = self.connecting.remove(&peer).unwrap_or_default();
        let (session, opened) = match result {
            Ok(ok) => ok,
            Err(e) => {
                debug!(digest = %self.digest, %peer, error = %e, "cannot open a session");
                // Try a spare in its place.
                self.fill();
                self.check_cold_start();
                return;
            }
        };
        if self.banned.contains(&peer) || self.refused.contains(&peer) {
            self.check_cold_start();
            return;
        }
        if let Some(site) = &self.site {
            // Before `peer_added`, so its bit field is never counted as near by mistake.
            let near = opened.site.as_deref() == Some(site.as_str());
            self.set_site(peer, near);
        }
        let now = self.now();
        if !self.sched.peer_added(peer, opened.have, now) {
            debug!(digest = %self.digest, %peer, "scheduler refused the peer");
            self.refused.insert(peer);
            self.check_cold_start();
            return;
        }
        debug!(digest = %self.digest, %peer, "session open");
        self.sessions.insert(peer, session);
        self.rotation.opened(peer, now);
        self.share_near_nodes();
        for ev in early {
            self.on_event(ev);
        }
        self.check_cold_start();
    }

    /// The origin answers the request for `asked` (sequence `seq`) with piece `got`: the
    /// request stands for `got` from now on. Told once by the request's task before the body
    /// streams, and again with its outcome; a request no longer running (cancelled, or told
    /// already) is left alone.
    fn on_substituted(&mut self, asked: u32, seq: u64, got: u32) {
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

    fn on_origin(&mut self, piece: u32, seq: u64, outcome: OriginOutcome) {
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
                    self.stats.wasted(bytes);
                    self.inner.totals.wasted(bytes);
                    if current {
                        self.sched.piece_received(Source::Origin, piece, now);
                    }
                }
                Verdict::Invalid => {
                    warn!(digest = %self.digest, piece, "the gateway sent a piece that does not match its table");
                    self.stats.wasted(bytes);
                    self.inner.totals.wasted(bytes);
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

    /// Reports pieces the store holds that the scheduler has not heard of, unless a request of
    /// ours for them is still out (its answer will report them, with its source).
    fn reconcile_store(&mut self) {
        self.reconcile = false;
        let store = self.store_have.borrow().clone();
        let count = store.count();
        if count > self.held_count {
            self.held_count = count;
            self.last_progress = Instant::now();
        }
        // Announce at once, holding nothing yet, as a BitTorrent client announces to its
        // tracker: nodes that start together then see each other from the first second, and
        // the scheduler's origin rule (only the top-ranked node among those it sees asks the
        // origin for a piece) splits the origin's pieces among them instead of each node
        // taking them all because it believes it is alone. Pieces follow as `Have`s.
        self.provide();
        let mut new = store;
        if new.difference_with(self.sched.have()).is_err() {
            return;
        }
        let now = self.now();
        for piece in new.iter_ones() {
            let requested = self.outstanding.iter().any(|&(_, p)| p == piece);
            if !requested {
                self.sched.piece_received(Source::Origin, piece, now);
                // A piece whose request we cancelled but whose answer was already on the
                // wire: the session stores it without reporting it. Cancelled origin requests
                // are aborted, so such pieces come from peers; count them, or the totals would
                // fall short of what the store holds.
                if self.counted.set(piece) {
                    let bytes = u64::from(self.table.table.piece_len(piece).unwrap_or(0));
                    self.stats.peer(bytes);
                    self.inner.totals.peer(bytes);
                }
            }
        }
    }

    /// Announces the blob once, at the start of the download (peers learn pieces from `Have`s).
    fn provide(&mut self) {
        if self.provided {
            return;
        }
        self.provided = true;
        let announce = self.inner.network.provide(&self.digest);
        let digest = self.digest.clone();
        tokio::spawn(async move {
            if let Err(e) = announce.await {
                warn!(%digest, error = %e, "cannot announce the blob");
            }
        });
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
