//! What a swarm run counts and produces ([`SwarmStats`], [`SwarmOutcome`]), and the model of
//! the gateway's count of nodes pulling a layer ([`Demand`]).

use std::collections::BTreeMap;

use super::Ev;
use crate::flow::Nanos;

/// The gateway's count of a blob's piece-table fetches (`gateway/src/seed/demand.rs`): two
/// 30-s windows, the current and the previous one.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Demand {
    window_start: Option<Nanos>,
    current: u32,
    previous: u32,
}

/// The length of one of [`Demand`]'s windows.
const DEMAND_WINDOW: Nanos = 30_000_000_000;

impl Demand {
    fn rotate(&mut self, now: Nanos) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_sub(start);
        if elapsed >= 2 * DEMAND_WINDOW {
            self.previous = 0;
            self.current = 0;
            self.window_start = Some(now);
        } else if elapsed >= DEMAND_WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.window_start = Some(start + DEMAND_WINDOW);
        }
    }

    pub(super) fn note(&mut self, now: Nanos) {
        self.rotate(now);
        self.current = self.current.saturating_add(1);
    }

    pub(super) fn total(&mut self, now: Nanos) -> u32 {
        self.rotate(now);
        self.current.saturating_add(self.previous)
    }
}

/// How one piece spread over the fleet: hosts holding it, and when the first one, half of
/// them and 99 % of them (of the hosts in the fleet) had it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Spread {
    pub(super) holders: u32,
    pub(super) first: Nanos,
    pub(super) half: Option<Nanos>,
    pub(super) most: Option<Nanos>,
}

/// The median of `spans` in milliseconds (the lower middle of an even count), if any.
fn median_ms(spans: impl Iterator<Item = Nanos>) -> Option<f64> {
    let mut v: Vec<Nanos> = spans.collect();
    v.sort_unstable();
    let mid = v.len().checked_sub(1)? / 2;
    Some(v[mid] as f64 / 1e6)
}

/// Counters of a run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SwarmStats {
    pub events: u64,
    pub peak_queue: usize,
    /// Bytes that crossed host and origin uploads (ended flows, aborted ones in part).
    pub sent_bytes: f64,
    /// Bytes that crossed host downloads.
    pub received_bytes: f64,
    /// Bytes of whole pieces handed to receivers.
    pub delivered_bytes: f64,
    /// Bytes of flows cut short (cancels, departures).
    pub aborted_bytes: f64,
    /// Delivered bytes of pieces the receiver already had or no longer wanted.
    pub wasted_bytes: f64,
    pub origin_requests: u64,
    pub origin_refusals: u64,
    /// Origin refusals because the server was at `Params::origin_max_sends` (also counted in
    /// `origin_refusals`).
    pub origin_cap_refusals: u64,
    /// Origin requests answered with one of the alternatives offered.
    pub origin_substitutions: u64,
    /// Most piece sends one origin server had in progress at once.
    pub origin_peak_sends: usize,
    /// Simulated seconds when the origin finished its first piece send, and when every piece
    /// of every layer had been sent whole at least once.
    pub origin_first_piece_s: Option<f64>,
    pub origin_all_pieces_s: Option<f64>,
    /// Median over pieces of the time from a piece's first copy landing anywhere to half of
    /// the fleet's hosts holding it, and to 99 % of them (pieces that got there).
    pub piece_spread_half_ms: Option<f64>,
    pub piece_spread_most_ms: Option<f64>,
    /// The same two times for the piece whose first copy landed last.
    pub last_piece_spread_ms: [Option<f64>; 2],
    /// Peer requests answered Busy.
    pub busy_refusals: u64,
    /// Peer requests answered PieceBusy (the piece was going to enough others already, or
    /// was offered while arriving and that copy was lost).
    pub piece_busy: u64,
    /// Pieces offered to subscribers while still arriving (SPEC §5.2).
    pub arriving_offers: u64,
    /// Copies passed on while arriving that were abandoned because the uploader's own copy
    /// was lost.
    pub abandoned: u64,
    /// Pieces being sent that a Cancel cut short.
    pub cut_short: u64,
    /// Most pieces of one layer one host sent at once.
    pub peak_blob_sends: u16,
    pub sessions_opened: u64,
    pub sessions_failed: u64,
    /// Sessions closed by the rotation policy to make room for a fresh provider.
    pub sessions_replaced: u64,
    /// Of those, sessions that finished the piece being sent before closing.
    pub sessions_retired: u64,
    /// Hosts that left before completing.
    pub left_early: u64,
    /// Events handled, by kind.
    pub events_by_kind: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    kinds: [u64; Ev::KINDS.len()],
}

impl SwarmStats {
    pub(super) fn count(&mut self, kind: usize) {
        if let Some(k) = self.kinds.get_mut(kind) {
            *k += 1;
        }
    }

    /// Sums up how the pieces spread (see the `piece_spread_*` fields).
    pub(super) fn note_spread(&mut self, pieces: impl Iterator<Item = Spread>) {
        let spreads: Vec<Spread> = pieces.filter(|p| p.holders > 0).collect();
        self.piece_spread_half_ms =
            median_ms(spreads.iter().filter_map(|p| p.half.map(|t| t - p.first)));
        self.piece_spread_most_ms =
            median_ms(spreads.iter().filter_map(|p| p.most.map(|t| t - p.first)));
        // The piece whose first copy landed last: a cold fleet ends about when it has spread.
        if let Some(last) = spreads.iter().max_by_key(|p| p.first) {
            self.last_piece_spread_ms =
                [last.half, last.most].map(|at| at.map(|t| (t - last.first) as f64 / 1e6));
        }
    }

    pub(super) fn finish(&mut self) {
        self.events_by_kind = Ev::KINDS
            .iter()
            .zip(self.kinds)
            .filter(|(name, n)| !name.is_empty() && *n > 0)
            .map(|(name, n)| (*name, n))
            .collect();
    }
}

/// What the swarm run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmOutcome {
    /// Per host: seconds from its start to its last layer, if it got there.
    pub completion: Vec<Option<f64>>,
    /// Per host: whether it left during the run.
    pub left: Vec<bool>,
    pub origin_bytes: f64,
    pub peer_upload_bytes: f64,
    /// Bytes host downloads took in (equals origin plus peer uploads: nothing is created or lost).
    pub host_download_bytes: f64,
    /// Per site: bytes into and out of the site over its WAN, per layer.
    pub wan_in: Vec<Vec<f64>>,
    pub wan_out: Vec<Vec<f64>>,
    pub origin_gone_s: Option<f64>,
    /// Simulated time of the last event handled.
    pub end_s: f64,
    pub stats: SwarmStats,
}
