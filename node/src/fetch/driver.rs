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
//!
//! This file holds the loop, the housekeeping tick and the store's side; `peers.rs` the
//! lookups, sessions and strikes, `origin.rs` the requests to the gateway.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use flotilla_protocol::scheduler::{Action, ProviderMemory, Rotation, Scheduler, Source};
use flotilla_protocol::site::label_rtt;
use libp2p::PeerId;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::gateway::{OriginOutcome, SwarmAnswer};
use super::table;
use super::{Counters, FetchError, Inner, Outcome, Ready, State, Waste};
use crate::ports::{NetworkError, PieceRank, SourceError};
use crate::transfer::{Opened, Session, SessionEvent, TransferError};

/// Session events buffered between the sessions and the driver.
mod origin;
mod peers;

/// How many downloads a download cap is assumed to be shared by, at least, when a capped
/// download sizes its pipeline and timeouts — more if more are running as it starts (docker and
/// containerd pull 3 layers at a time by default, and start them together, so the first may
/// not see the others yet): with fewer, the timeouts are merely generous.
const CAPPED_DOWNLOADS: u32 = 3;
const EVENT_QUEUE: usize = 256;
/// Longest wait, after the last piece, for answers already arriving.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Longest period of the housekeeping tick (provider refresh, session rotation, swarm size,
/// stall check). The first lookups are due 0.25 s apart: a 1-s tick held them to 1 s, and in a
/// cold start nodes then opened no session for the first second (simulated).
const MAX_TICK: Duration = Duration::from_millis(250);
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
    if let Some(cap) = inner.cfg.download_bytes_per_s {
        let sharing = CAPPED_DOWNLOADS.max(inner.active_downloads().try_into().unwrap_or(u32::MAX));
        cfg.fit_download_cap(table.table.piece_size, cap, sharing);
    }
    let start = Instant::now();
    let have = held.have.borrow().clone();
    let rotation = Rotation::new(inner.cfg.rotation.clone(), cfg.seed, Duration::ZERO);
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
        providers_seen: ProviderMemory::default(),
        counted: have.clone(),
        digest,
        table,
        stats,
        sched,
        start,
        store_have: held.have,
        rank: held.rank.map(RankGuard),
        rank_dirty: true,
        sessions: HashMap::new(),
        retiring: HashMap::new(),
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
    /// The gateway's answer about this blob's swarm: nodes it saw start this download
    /// recently, and whether no byte of it has left the gateway yet.
    Swarm(SwarmAnswer),
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
    /// Sessions the rotation policy replaced that finish the piece their peer is sending
    /// (`Scheduler::peer_retiring`, at most `max_peers` of them), with that piece: closed
    /// (dropped) once it is answered or the scheduler cancels it.
    retiring: HashMap<PeerId, (Session, u32)>,
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
    /// Whether lookups still find new providers (see `short_of_sessions`).
    providers_seen: ProviderMemory<PeerId>,
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
    /// Strikes against peers (see `peers.rs`).
    strikes: HashMap<PeerId, peers::Strikes>,
    /// Set while the actions of a scheduler timeout sweep are carried out: its cancels are
    /// expired requests, not end-game duplicates.
    expiry_sweep: bool,
    /// Which sessions to keep: a session that keeps answering Busy, or delivers far less than
    /// the others, makes room for a random spare provider (the protocol crate's policy, which
    /// the simulator runs too).
    rotation: Rotation<PeerId>,
    /// Whether the first lookup's sessions were checked for a cold start.
    grace_checked: bool,
    /// Where our transfer server reads how rare each piece is: the scheduler's availability,
    /// copied as it changes (see `rank_piece`).
    rank: Option<RankGuard>,
    /// The peer set changed: copy every piece's availability before the next wait.
    rank_dirty: bool,
}

/// The blob's [`PieceRank`], cleared when the download ends (nothing is known to be rare then).
struct RankGuard(Arc<PieceRank>);

impl Drop for RankGuard {
    fn drop(&mut self) {
        self.0.clear();
    }
}

impl Driver {
    /// Copies `piece`'s availability to the rank our server orders waiting requests by.
    /// Counts `bytes` received and dropped, in this download's stats and the node's.
    fn wasted(&self, bytes: u64, why: Waste) {
        self.stats.wasted(bytes, why);
        self.inner.totals.wasted(bytes, why);
    }

    fn rank_piece(&self, piece: u32) {
        if let Some(r) = &self.rank {
            r.0.set(piece, self.sched.availability(piece));
        }
    }

    /// Copies every piece's availability (after the peer set changed).
    fn publish_rank(&mut self) {
        self.rank_dirty = false;
        if let Some(r) = &self.rank {
            for piece in 0..r.0.len() {
                r.0.set(piece, self.sched.availability(piece));
            }
        }
    }

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
            if self.rank_dirty {
                self.publish_rank();
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

    /// Fewer sessions than `max_peers_per_blob`, and lookups still turn up new providers: a
    /// download in a swarm smaller than that limit (a fleet of 8) stops counting as short
    /// after `FRUITLESS_LOOKUPS` lookups in a row that found only providers found before, and
    /// its lookups back off to `provider_refresh` (measured: 26 provider lookups per blob per
    /// node in an 8-node fleet otherwise, four a second).
    fn short_of_sessions(&self) -> bool {
        self.sessions.len() + self.connecting.len() < self.inner.cfg.max_peers_per_blob
            && !self.providers_seen.exhausted()
    }

    /// The swarm size the scheduler's origin rule uses: the largest count heard, at least the
    /// sessions plus ourselves.
    fn set_swarm_size(&mut self) {
        let size = self.swarm_hint.max(self.sessions.len() + 1);
        self.sched.set_swarm_size(size as u64);
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
                debug!(digest = %self.digest, ?source, piece, timed_out = self.expiry_sweep, "request cancelled");
                // An answer that has begun to arrive still comes as an event: keep expecting
                // it, so the piece is attributed (and counted) when it does.
                let answer_coming = match source {
                    // The piece a retiring session waited for came from elsewhere or timed
                    // out: the session closes (dropping it resets the stream).
                    Source::Peer(peer) if self.retiring_for(peer) == Some(piece) => {
                        self.close_retiring(peer, "its piece was cancelled");
                        false
                    }
                    Source::Peer(peer) => self.session(peer).is_some_and(|s| !s.cancel(piece)),
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
                        let (gateway, local) = (self.gateway, self.local);
                        self.providers_seen.answered(
                            peers
                                .iter()
                                .copied()
                                .filter(|p| Some(*p) != gateway && *p != local),
                        );
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
            Internal::Swarm(answer) => {
                self.swarm_hint = self.swarm_hint.max(answer.fetchers as usize);
                // At once: the origin rule needs it before a cold start ends the grace.
                self.set_swarm_size();
                // A node with a site waits for its lookup all the same: it needs its site's
                // members to know which of them fetches a piece from outside (SPEC §6.2).
                if answer.unsent && self.site.is_none() && !self.grace_checked {
                    // Every piece starts at the gateway, and it has sent none: nobody holds one,
                    // and the first lookup (log2 N round trips) has nothing to find.
                    self.grace_checked = true;
                    let now = self.now();
                    self.sched.end_origin_grace(now);
                    self.stats.unsent_start();
                    self.inner.totals.unsent_start();
                }
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
