//! The bandwidth model: transfers as fluid flows over shared resources.
//!
//! A *resource* is a capacity in bytes/s: a host's upload or download, an origin server's
//! upload, a site's WAN link in one direction. A *flow* moves a fixed number of bytes across up
//! to four resources (sender upload, receiver download, the sender site's WAN uplink and the
//! receiver site's WAN downlink when they differ). Each resource is shared equally among the
//! flows crossing it, and a flow runs at the smallest of its shares:
//!
//! ```text
//! rate(f) = min over resources r of f: capacity(r) / flows(r)
//! ```
//!
//! This never exceeds any capacity (so no run can beat the Kumar–Ross bound), and a flow's rate
//! depends only on the flow counts of its own resources: when a resource's flow set changes,
//! only the flows crossing it are re-rated. It is not max–min fair — capacity a flow cannot use
//! because another of its resources is tighter is not handed to the others — so it is a
//! slightly pessimistic model of TCP/QUIC sharing (the run's utilisation is reported).
//!
//! Changes are batched: starting, finishing or aborting flows marks their resources dirty, and
//! [`Engine::flush`] (called once per distinct event time) re-rates the flows of dirty resources.
//! A flow keeps one completion event pending. A re-rating that brings its end *earlier* asks for
//! a new event (the old one becomes stale: events carry the flow's version); one that pushes it
//! *later* asks for nothing — when the early event fires, [`Engine::check`] finds bytes left and
//! asks for a new event then. A flow re-rated many times thus costs few events.

/// Simulated time, in nanoseconds since the start of the run.
pub type Nanos = u64;

/// Most resources a flow crosses.
const MAX_HOPS: usize = 4;

/// One capacity shared by the flows crossing it.
#[derive(Debug, Clone)]
struct Resource {
    /// Bytes per second.
    capacity: f64,
    flows: Vec<u32>,
    /// Beside `flows`: each flow's rate as last set (infinite until its first re-rating), so a
    /// flush can tell without touching the flow that this resource does not limit it.
    rates: Vec<f64>,
    dirty: bool,
    /// The flow count the rates of this resource's flows were last computed with.
    rated_len: usize,
    /// The flush that found this resource dirty last, and its place in that flush's list.
    flush_epoch: u64,
    flush_rank: u32,
    /// Bytes moved across this resource by finished or aborted flows.
    bytes: f64,
}

impl Resource {
    /// Each flow's share of this resource with `n` flows crossing it.
    fn share(&self, n: usize) -> f64 {
        self.capacity / n.max(1) as f64
    }
}

#[derive(Debug, Clone)]
struct Flow<T> {
    hops: [u32; MAX_HOPS],
    /// Index of this flow in each hop's `flows` list.
    slots: [u32; MAX_HOPS],
    n_hops: u8,
    live: bool,
    total: f64,
    left: f64,
    /// Bytes per second; 0 until the first flush.
    rate: f64,
    /// When `left` was last brought up to date.
    since: Nanos,
    version: u32,
    /// When its pending completion event fires (`Nanos::MAX`: none yet).
    pending: Nanos,
    /// The flush that last re-rated this flow (so it is re-rated once per flush).
    epoch: u64,
    tag: T,
}

/// A finished or aborted flow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ended<T> {
    pub tag: T,
    /// Bytes that crossed before it ended (all of them for a finished flow).
    pub bytes: f64,
}

/// The set of resources and flows (see the module docs).
#[derive(Debug, Clone)]
pub struct Engine<T> {
    resources: Vec<Resource>,
    flows: Vec<Flow<T>>,
    free: Vec<u32>,
    dirty: Vec<u32>,
    epoch: u64,
    live: usize,
    /// Reused by [`Engine::flush`]: (first place, flow, version, completion) of the flows due.
    ends: Vec<((u32, u32), u32, u32, Nanos)>,
}

impl<T: Copy> Default for Engine<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> Engine<T> {
    /// An engine with no resources.
    pub fn new() -> Self {
        Engine {
            resources: Vec::new(),
            flows: Vec::new(),
            free: Vec::new(),
            dirty: Vec::new(),
            epoch: 0,
            live: 0,
            ends: Vec::new(),
        }
    }

    /// Adds a resource of `capacity` bytes/s (must be positive and finite) and returns its id.
    pub fn add_resource(&mut self, capacity: f64) -> u32 {
        self.resources.push(Resource {
            capacity,
            flows: Vec::new(),
            rates: Vec::new(),
            dirty: false,
            rated_len: 0,
            flush_epoch: 0,
            flush_rank: 0,
            bytes: 0.0,
        });
        (self.resources.len() - 1) as u32
    }

    /// Bytes moved across resource `r` by flows that have ended.
    pub fn bytes_through(&self, r: u32) -> f64 {
        self.resources[r as usize].bytes
    }

    /// Flows crossing resource `r` now.
    #[cfg(test)]
    pub fn load(&self, r: u32) -> usize {
        self.resources[r as usize].flows.len()
    }

    /// Flows not yet ended.
    #[cfg(test)]
    pub fn live_flows(&self) -> usize {
        self.live
    }

    fn mark(&mut self, r: u32) {
        let res = &mut self.resources[r as usize];
        if !res.dirty {
            res.dirty = true;
            self.dirty.push(r);
        }
    }

    /// Starts a flow of `bytes` across `hops` (1 to 4 distinct resources); its rate and
    /// completion time come with the next [`Engine::flush`].
    pub fn start(&mut self, hops: &[u32], bytes: f64, tag: T, now: Nanos) -> u32 {
        let n = hops.len().min(MAX_HOPS);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.flows.push(Flow {
                    hops: [0; MAX_HOPS],
                    slots: [0; MAX_HOPS],
                    n_hops: 0,
                    live: false,
                    total: 0.0,
                    left: 0.0,
                    rate: 0.0,
                    since: now,
                    version: 0,
                    pending: Nanos::MAX,
                    epoch: 0,
                    tag,
                });
                (self.flows.len() - 1) as u32
            }
        };
        let mut slots = [0u32; MAX_HOPS];
        let mut hop_ids = [0u32; MAX_HOPS];
        for (k, &r) in hops.iter().take(n).enumerate() {
            let res = &mut self.resources[r as usize];
            slots[k] = res.flows.len() as u32;
            res.flows.push(id);
            res.rates.push(f64::INFINITY);
            hop_ids[k] = r;
            self.mark(r);
        }
        let f = &mut self.flows[id as usize];
        f.hops = hop_ids;
        f.slots = slots;
        f.n_hops = n as u8;
        f.live = true;
        f.total = bytes;
        f.left = bytes;
        f.rate = 0.0;
        f.since = now;
        f.version = f.version.wrapping_add(1);
        f.pending = Nanos::MAX;
        f.tag = tag;
        self.live += 1;
        id
    }

    /// A completion event for `flow` at `version` fired at `now`: whether the flow is done, has
    /// bytes left (then its next event is due at the returned time and version), or the event
    /// was stale.
    pub fn check(&mut self, flow: u32, version: u32, now: Nanos) -> Check {
        let Some(f) = self
            .flows
            .get_mut(flow as usize)
            .filter(|f| f.live && f.version == version)
        else {
            return Check::Stale;
        };
        settle(f, now);
        let at = end_time(f.left, f.rate, now);
        if at <= now {
            return Check::Done;
        }
        f.version = f.version.wrapping_add(1);
        f.pending = at;
        Check::Later {
            version: f.version,
            at,
        }
    }

    /// Reads what [`Engine::check`] of `flow` reads (see `Swarm::warm`); changes nothing.
    pub fn warm(&self, flow: u32) -> u32 {
        self.flows.get(flow as usize).map_or(0, |f| f.version)
    }

    /// Bytes of live flow `flow` that have crossed by `now` (0 for an ended one).
    pub fn moved(&self, flow: u32, now: Nanos) -> f64 {
        let Some(f) = self.flows.get(flow as usize).filter(|f| f.live) else {
            return 0.0;
        };
        let dt = now.saturating_sub(f.since) as f64 / 1e9;
        f.total - (f.left - f.rate * dt).max(0.0)
    }

    /// The current rate of live flow `flow`, bytes/s (0 for an ended one, and for one started
    /// since the last [`Engine::flush`]: see [`Engine::share`]).
    pub fn rate(&self, flow: u32) -> f64 {
        self.flows
            .get(flow as usize)
            .filter(|f| f.live)
            .map_or(0.0, |f| f.rate)
    }

    /// The rate live flow `flow` gets at the next [`Engine::flush`] if nothing else changes:
    /// its smallest share of the resources it crosses (0 for an ended one).
    pub fn share(&self, flow: u32) -> f64 {
        match self.flows.get(flow as usize) {
            Some(f) if f.live => self.rate_of(flow),
            _ => 0.0,
        }
    }

    /// Ends a flow whose completion event fired: all its bytes crossed.
    pub fn finish(&mut self, flow: u32) -> Option<Ended<T>> {
        let f = self.flows.get_mut(flow as usize).filter(|f| f.live)?;
        f.left = 0.0;
        Some(self.remove(flow))
    }

    /// Ends a flow early (a cancel, a departure): the bytes that crossed so far count.
    pub fn abort(&mut self, flow: u32, now: Nanos) -> Option<Ended<T>> {
        let f = self.flows.get_mut(flow as usize).filter(|f| f.live)?;
        settle(f, now);
        Some(self.remove(flow))
    }

    fn remove(&mut self, flow: u32) -> Ended<T> {
        let (hops, slots, n, bytes, tag) = {
            let f = &mut self.flows[flow as usize];
            f.live = false;
            f.version = f.version.wrapping_add(1);
            (f.hops, f.slots, f.n_hops as usize, f.total - f.left, f.tag)
        };
        for k in 0..n {
            let r = hops[k];
            let slot = slots[k] as usize;
            let res = &mut self.resources[r as usize];
            res.bytes += bytes;
            res.flows.swap_remove(slot);
            res.rates.swap_remove(slot);
            if let Some(&moved) = res.flows.get(slot) {
                // The flow that took the freed place: point its slot for `r` there.
                let m = &mut self.flows[moved as usize];
                for j in 0..m.n_hops as usize {
                    if m.hops[j] == r {
                        m.slots[j] = slot as u32;
                    }
                }
            }
            self.mark(r);
        }
        self.free.push(flow);
        self.live -= 1;
        Ended { tag, bytes }
    }

    /// Re-rates every flow crossing a resource whose flow set changed since the last flush, and
    /// calls `due(flow, version, completion time)` for each flow that now ends before its
    /// pending event.
    ///
    /// A flow whose rate is below both the old and the new share of a changed resource is not
    /// limited by it either way, and is skipped there without being read (at 100,000 hosts
    /// reading it is a cache miss): if its rate changes, the resource that limits it, or one
    /// whose new share fell below its rate, changed too and re-rates it. Completions are
    /// reported in the order of each flow's first place among the changed resources' flows —
    /// the order of re-rating every flow there — so the events they become keep their order.
    pub fn flush(&mut self, now: Nanos, mut due: impl FnMut(u32, u32, Nanos)) {
        self.epoch += 1;
        let epoch = self.epoch;
        let dirty = std::mem::take(&mut self.dirty);
        for (rank, &r) in dirty.iter().enumerate() {
            let res = &mut self.resources[r as usize];
            res.dirty = false;
            res.flush_epoch = epoch;
            res.flush_rank = rank as u32;
        }
        let mut ends = std::mem::take(&mut self.ends);
        for &r in &dirty {
            let (old, new, n) = {
                let res = &mut self.resources[r as usize];
                let old = res.share(res.rated_len);
                res.rated_len = res.flows.len();
                (old, res.share(res.flows.len()), res.flows.len())
            };
            let unaffected = old.min(new);
            for k in 0..n {
                let res = &self.resources[r as usize];
                if res.rates[k] < unaffected {
                    continue;
                }
                let id = res.flows[k];
                if self.flows[id as usize].epoch == epoch {
                    continue;
                }
                let rate = self.rate_of(id);
                let f = &mut self.flows[id as usize];
                f.epoch = epoch;
                if rate == f.rate {
                    continue;
                }
                settle(f, now);
                f.rate = rate;
                let at = end_time(f.left, rate, now);
                let pending = at < f.pending;
                if pending {
                    f.version = f.version.wrapping_add(1);
                    f.pending = at;
                }
                let (hops, slots, n_hops, version) = (f.hops, f.slots, f.n_hops, f.version);
                let mut first = (u32::MAX, u32::MAX);
                for j in 0..n_hops as usize {
                    let hop = &mut self.resources[hops[j] as usize];
                    hop.rates[slots[j] as usize] = rate;
                    if hop.flush_epoch == epoch {
                        first = first.min((hop.flush_rank, slots[j]));
                    }
                }
                if pending {
                    ends.push((first, id, version, at));
                }
            }
        }
        ends.sort_unstable_by_key(|e| e.0);
        for &(_, id, version, at) in &ends {
            due(id, version, at);
        }
        ends.clear();
        self.ends = ends;
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn rate_of(&self, id: u32) -> f64 {
        let f = &self.flows[id as usize];
        f.hops[..f.n_hops as usize]
            .iter()
            .map(|&r| {
                let res = &self.resources[r as usize];
                res.capacity / res.flows.len().max(1) as f64
            })
            .fold(f64::INFINITY, f64::min)
    }
}

/// What a fired completion event means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Every byte crossed: call [`Engine::finish`].
    Done,
    /// Slowed down since the event was planned: the next one is due then.
    Later { version: u32, at: Nanos },
    /// Superseded by an earlier event, or the flow ended.
    Stale,
}

/// When `left` bytes at `rate` have crossed, rounded up to the next nanosecond so a flow never
/// ends before its bytes could have.
fn end_time(left: f64, rate: f64, now: Nanos) -> Nanos {
    if rate <= 0.0 {
        return Nanos::MAX;
    }
    let secs = left.max(0.0) / rate;
    now.saturating_add((secs * 1e9).ceil() as u64)
}

/// Brings a flow's remaining bytes up to `now` at its current rate.
fn settle<T>(f: &mut Flow<T>, now: Nanos) {
    let dt = now.saturating_sub(f.since) as f64 / 1e9;
    f.left = (f.left - f.rate * dt).max(0.0);
    f.since = now;
}
