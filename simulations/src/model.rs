//! What a simulated fleet is: sites and their latencies and WAN links, hosts with their
//! bandwidth and schedule, the origin servers, the image's layers, and the node parameters the
//! simulation mirrors (see README.md for the model these numbers feed).

use crate::SimError;

/// Bytes per second in one gigabit per second.
pub const GBIT: f64 = 125e6;
/// Bytes per second in one megabit per second.
pub const MBIT: f64 = 125e3;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// A site: a LAN whose hosts share a WAN link to everything outside it.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub name: String,
    /// Capacity of the site's WAN uplink in bytes/s (`None`: not a bottleneck).
    pub wan_up: Option<f64>,
    /// Capacity of the site's WAN downlink in bytes/s (`None`: not a bottleneck).
    pub wan_down: Option<f64>,
}

/// One fleet host: a node pulling the image.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    pub site: u16,
    /// Upload capacity, bytes/s.
    pub up: f64,
    /// Download capacity (NIC), bytes/s.
    pub down: f64,
    /// Disk write rate, bytes/s, if it is slower than the NIC (it caps the download).
    pub disk: Option<f64>,
    /// When the host starts pulling, seconds from the start of the run.
    pub join_s: f64,
    /// When the host leaves for good (churn), if it does.
    pub leave_s: Option<f64>,
}

impl HostSpec {
    /// The rate at which the host can take bytes in: its NIC or its disk, whichever is slower.
    pub fn effective_down(&self) -> f64 {
        self.disk.map_or(self.down, |d| d.min(self.down))
    }
}

/// One origin server (a gateway replica); several share the origin's load by piece.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginSpec {
    pub site: u16,
    /// Upload capacity, bytes/s.
    pub up: f64,
}

/// The node behaviour the simulation mirrors (defaults: the node's and the brief's).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub seed: u64,
    /// Most sessions (candidate peers) per blob: the node's `max_peers_per_blob`.
    pub max_peers: usize,
    /// Most providers one DHT lookup returns (the node asks for 2 × its peers per blob, at
    /// least 8).
    pub lookup_limit: usize,
    /// Longest time between provider lookups of a running download (the node's
    /// `provider_refresh`; the first lookups come 0.25 s apart, doubling up to it).
    pub refresh_s: f64,
    /// Pieces a host sends at once over all its streams; a request reaching the front of its
    /// stream beyond this is refused (Busy).
    pub max_sends: u16,
    /// Sessions a host serves at once; more fail to open.
    pub max_streams: u16,
    /// Sessions a host serves at once for one blob; more fail to open (the downloader tries
    /// another provider).
    pub max_sessions_per_blob: u16,
    /// Requests queued per stream; more are refused (Busy).
    pub max_requests_per_stream: usize,
    /// A host streams at most this many pieces of one layer at once; a request reaching the
    /// front of its stream beyond that waits for a slot, and a free slot goes to the waiting
    /// request whose piece the host's own scheduler counts rarest (first come for a host that
    /// completed the layer), as the node's `max_sends_per_blob`.
    pub max_sends_per_blob: u16,
    /// Requests of one layer waiting for a send slot at a host beyond which a request that would
    /// wait is answered Busy instead (a stream that just sent and queues again for its slot is
    /// not counted against it), as the node's `max_waiting_per_blob`.
    pub max_waiting_per_blob: u16,
    /// What-if: every download keeps exactly this many requests in flight (the scheduler's
    /// `min_in_flight` = `max_in_flight`) instead of the node's 4.
    pub fixed_in_flight: Option<u32>,
    /// Downloaders a host sends one piece to at once; a request for it beyond this is answered
    /// PieceBusy (the node's `max_copies_per_piece`).
    pub max_copies_per_piece: u16,
    /// The origin refuses a piece it is sending or sent this many seconds ago.
    pub origin_dedup_s: Option<f64>,
    /// Requests per second one origin server can answer (served or refused); requests beyond
    /// that wait in its accept queue, first come, first answered.
    pub origin_rps: f64,
    /// Most piece sends one origin server runs at once, as the gateway's `origin_max_sends`
    /// (32); a request it answers while its limit's worth are in progress waits for a send
    /// slot, first come first served (or, without `origin_queue_excess`, is refused: the node
    /// hears `request_refused`, as from the dedup window). `None`: no cap (every accepted
    /// transfer runs at once, sharing the server's upload).
    pub origin_max_sends: Option<usize>,
    /// With `origin_max_sends`: the limit adapts as the gateway's does
    /// (`flotilla_protocol::send_limit`, from 4 up to the most, every 10 ms); `false`: fixed at
    /// the most (the gateway before 2026-12-03).
    pub origin_adaptive_sends: bool,
    /// With `origin_max_sends`: a request beyond the cap waits for a send slot instead of being
    /// refused, as the gateway holds it (the default; refusing is a what-if).
    pub origin_queue_excess: bool,
    /// Give every scheduler the fleet's size as its swarm size from the start, instead of the
    /// number of providers its lookups found (the node's behaviour).
    pub fleet_size_hint: bool,
    /// The origin leaves once every piece of every layer is held by some host.
    pub origin_leaves: bool,
    /// In a fleet of more than one site, every host is configured with its site's label (the
    /// node's `site`, SPEC §6.2): it announces each layer under its site key too, looks that key
    /// up with every lookup, and tells its site in every Welcome. `false`: hosts without
    /// labels, as an unconfigured node runs (no locality inputs at all).
    pub site_labels: bool,
    /// A client reads each blob in order as it arrives (the scheduler's read position follows
    /// the first missing piece).
    pub streaming: bool,
    /// Hosts announce a blob when their download starts, holding nothing yet, as the node's
    /// driver does; `false`: at their first piece (the model before 2026-12-03).
    pub announce_at_start: bool,
    /// A host passes a piece on while it arrives, as the node does (SPEC §5.2): it offers the
    /// piece once its first batch is in and a copy it passes on is delivered with its own;
    /// `false`: only whole pieces are served (the node before pieces protocol 2).
    pub forward_arriving: bool,
    /// A Cancel that reaches an uploader while it sends the piece cuts the rest off, as the
    /// node's server does (SPEC §5.2); `false`: the piece is sent whole (the node before).
    pub cancel_cuts_short: bool,
    /// A session the rotation policy replaces finishes the piece it is sending before it
    /// closes, as the node's driver does (`Scheduler::peer_retiring`); `false`: it closes at
    /// once and the piece is cut off (the node before).
    pub retire_gracefully: bool,
    /// The gateway's swarm answer says whether it has sent any byte of the layer yet, and a
    /// node that hears "none" ends its origin grace at once (SPEC §6.2), as the node does;
    /// `false`: it waits for its first lookup (the node before).
    pub unsent_hint: bool,
    /// The run stops at this simulated time, finished or not.
    pub max_time_s: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            seed: 1,
            max_peers: 10,
            lookup_limit: 20,
            refresh_s: 10.0,
            max_sends: 16,
            max_streams: 256,
            max_sessions_per_blob: 12,
            max_copies_per_piece: 3,
            max_sends_per_blob: 4,
            max_waiting_per_blob: 1,
            fixed_in_flight: None,
            max_requests_per_stream: 32,
            origin_dedup_s: Some(2.0),
            origin_rps: 20_000.0,
            origin_max_sends: Some(32),
            origin_adaptive_sends: true,
            origin_queue_excess: true,
            fleet_size_hint: false,
            origin_leaves: false,
            site_labels: true,
            streaming: false,
            announce_at_start: true,
            forward_arriving: true,
            cancel_cuts_short: true,
            retire_gracefully: true,
            unsent_hint: true,
            max_time_s: 3600.0,
        }
    }
}

/// Figures an anchor published for the same setup, printed beside the simulated ones.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Published {
    pub source: String,
    pub p50_s: f64,
    pub p99_s: f64,
    pub p999_s: f64,
}

/// A whole simulated fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub name: String,
    pub sites: Vec<Site>,
    /// Round-trip times between sites in seconds (`rtt[a][b]`; the diagonal is intra-site).
    pub rtt: Vec<Vec<f64>>,
    pub hosts: Vec<HostSpec>,
    pub origins: Vec<OriginSpec>,
    /// Layer (blob) sizes in bytes; each host pulls all of them at once.
    pub layers: Vec<u64>,
    pub params: Params,
    pub published: Option<Published>,
}

impl Fleet {
    /// The image's size in bytes.
    pub fn image_bytes(&self) -> u64 {
        self.layers.iter().sum()
    }

    /// Checks that every number makes sense and every index is in range.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::InvalidFleet(m));
        let rate_ok = |r: f64| r.is_finite() && r > 0.0;
        let n_sites = self.sites.len();
        if n_sites == 0 || n_sites > usize::from(u16::MAX) {
            return bad(format!("{n_sites} sites"));
        }
        if self.rtt.len() != n_sites || self.rtt.iter().any(|row| row.len() != n_sites) {
            return bad("the RTT matrix must be sites × sites".into());
        }
        if self
            .rtt
            .iter()
            .flatten()
            .any(|&r| !r.is_finite() || r < 0.0)
        {
            return bad("RTTs must be finite and non-negative".into());
        }
        for s in &self.sites {
            if s.wan_up.is_some_and(|r| !rate_ok(r)) || s.wan_down.is_some_and(|r| !rate_ok(r)) {
                return bad(format!("site {}: WAN capacities must be positive", s.name));
            }
        }
        if self.hosts.is_empty() || self.hosts.len() >= u32::MAX as usize / 2 {
            return bad(format!("{} hosts", self.hosts.len()));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if usize::from(h.site) >= n_sites {
                return bad(format!("host {i}: site {} out of range", h.site));
            }
            if !rate_ok(h.up) || !rate_ok(h.down) || h.disk.is_some_and(|d| !rate_ok(d)) {
                return bad(format!("host {i}: rates must be positive and finite"));
            }
            if !h.join_s.is_finite() || h.join_s < 0.0 {
                return bad(format!("host {i}: join time {}", h.join_s));
            }
            if h.leave_s.is_some_and(|l| !l.is_finite() || l < h.join_s) {
                return bad(format!("host {i}: leaves before it joins"));
            }
        }
        if self.origins.is_empty() || self.origins.len() > 1024 {
            return bad(format!("{} origin servers", self.origins.len()));
        }
        for o in &self.origins {
            if usize::from(o.site) >= n_sites || !rate_ok(o.up) {
                return bad("origin: site out of range or capacity not positive".into());
            }
        }
        if self.layers.is_empty() || self.layers.len() > 64 || self.layers.contains(&0) {
            return bad("an image has 1 to 64 layers, none empty".into());
        }
        for &size in &self.layers {
            let piece = u64::from(flotilla_protocol::piece::piece_size_for(size));
            if size.div_ceil(piece) > u64::from(u32::MAX) {
                return bad(format!("layer of {size} bytes has too many pieces"));
            }
        }
        let p = &self.params;
        if p.max_peers == 0 || p.lookup_limit == 0 || p.max_sends == 0 || p.max_streams == 0 {
            return bad(
                "max_peers, lookup_limit, max_sends and max_streams must be positive".into(),
            );
        }
        if p.max_sends_per_blob == 0 || p.fixed_in_flight == Some(0) {
            return bad("sends per blob and requests in flight must be positive".into());
        }
        if p.max_requests_per_stream == 0 {
            return bad("max_requests_per_stream must be positive".into());
        }
        if !p.refresh_s.is_finite() || p.refresh_s <= 0.0 {
            return bad(format!("refresh period {}", p.refresh_s));
        }
        if !p.origin_rps.is_finite() || p.origin_rps <= 0.0 {
            return bad(format!("origin request rate {}", p.origin_rps));
        }
        if p.origin_max_sends == Some(0) {
            return bad("origin_max_sends 0 (no send could ever start)".to_string());
        }
        if p.origin_dedup_s.is_some_and(|d| !d.is_finite() || d < 0.0) {
            return bad("origin dedup window must be non-negative".into());
        }
        if !p.max_time_s.is_finite() || p.max_time_s <= 0.0 || p.max_time_s > 1e7 {
            return bad(format!("max time {}", p.max_time_s));
        }
        Ok(())
    }
}

/// Parses a size such as `1GiB`, `3GB`, `512MiB`, `4096` (bytes).
pub fn parse_size(text: &str) -> Result<u64, SimError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| SimError::InvalidSize(text.to_owned()))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => MIB as f64,
        "gib" => GIB as f64,
        "tib" => (GIB as f64) * 1024.0,
        _ => return Err(SimError::InvalidSize(text.to_owned())),
    };
    let bytes = (value * mult).round();
    if !bytes.is_finite() || !(1.0..=1e15).contains(&bytes) {
        return Err(SimError::InvalidSize(text.to_owned()));
    }
    Ok(bytes as u64)
}
