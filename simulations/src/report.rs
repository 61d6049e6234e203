//! What a run reports: completion-time percentiles against the Kumar–Ross bound, origin and WAN
//! traffic relative to the image, the baselines, as a Markdown table and one JSON object.

use std::fmt::Write as _;

use serde::Serialize;

use crate::baseline::BaselineOutcome;
use crate::model::{Fleet, Published};
use crate::swarm::{SwarmOutcome, SwarmStats};

/// Completion-time percentiles (nearest rank) over the hosts that stayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub completed: usize,
    pub incomplete: usize,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub p999_s: Option<f64>,
    pub max_s: Option<f64>,
}

impl Percentiles {
    /// From per-host completion times, leaving out hosts that left (`left[i]`).
    pub fn of(times: &[Option<f64>], left: &[bool]) -> Self {
        let mut done: Vec<f64> = Vec::new();
        let mut incomplete = 0;
        for (i, t) in times.iter().enumerate() {
            if left.get(i).copied().unwrap_or(false) {
                continue;
            }
            match t {
                Some(t) => done.push(*t),
                None => incomplete += 1,
            }
        }
        done.sort_by(f64::total_cmp);
        let n = done.len() + incomplete;
        // Over all stayers: a host that never finished ranks above every finished one.
        let pct = |q: f64| -> Option<f64> {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n.max(1));
            done.get(rank - 1).copied()
        };
        Percentiles {
            completed: done.len(),
            incomplete,
            p50_s: pct(0.5),
            p90_s: pct(0.9),
            p99_s: pct(0.99),
            p999_s: pct(0.999),
            max_s: if incomplete == 0 {
                done.last().copied()
            } else {
                None
            },
        }
    }
}

/// The Kumar–Ross lower bound on the last completion (see README.md for its terms).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bound {
    pub total_s: f64,
    /// F / u_s: every byte leaves the origin at least once.
    pub origin_s: f64,
    /// F / d_min: the slowest host takes in the whole image.
    pub download_s: f64,
    /// N·F / (u_s + Σ u_i): all uploads together deliver N copies.
    pub swarm_s: f64,
    /// F / the slowest WAN downlink of a site without an origin.
    pub wan_s: Option<f64>,
    /// Hosts start at different times: only F / d (of the fastest host) holds for each.
    pub staggered: bool,
}

impl Bound {
    /// The bound of `fleet` for the hosts that stay (`left[i]` false).
    pub fn of(fleet: &Fleet, left: &[bool]) -> Self {
        let f = fleet.image_bytes() as f64;
        let u_s: f64 = fleet.origins.iter().map(|o| o.up).sum();
        let stay = || {
            fleet
                .hosts
                .iter()
                .enumerate()
                .filter(|(i, _)| !left.get(*i).copied().unwrap_or(false))
                .map(|(_, h)| h)
        };
        let n = stay().count() as f64;
        let d_min = stay()
            .map(|h| h.effective_down())
            .fold(f64::INFINITY, f64::min);
        let d_max = stay().map(|h| h.effective_down()).fold(0.0, f64::max);
        let sum_up: f64 = fleet.hosts.iter().map(|h| h.up).sum();
        let staggered = fleet
            .hosts
            .iter()
            .any(|h| h.join_s != fleet.hosts[0].join_s);
        let origin_sites: Vec<u16> = fleet.origins.iter().map(|o| o.site).collect();
        let wan_s = fleet
            .sites
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                !origin_sites.contains(&(*i as u16)) && stay().any(|h| usize::from(h.site) == *i)
            })
            .filter_map(|(_, s)| s.wan_down)
            .fold(None, |acc: Option<f64>, c| {
                Some(acc.map_or(c, |a| a.min(c)))
            })
            .map(|c| f / c);
        let origin_s = f / u_s;
        let download_s = if n > 0.0 { f / d_min } else { 0.0 };
        let swarm_s = n * f / (u_s + sum_up);
        let total_s = if staggered {
            if n > 0.0 { f / d_max } else { 0.0 }
        } else {
            origin_s
                .max(download_s)
                .max(swarm_s)
                .max(wan_s.unwrap_or(0.0))
        };
        Bound {
            total_s,
            origin_s,
            download_s,
            swarm_s,
            wan_s,
            staggered,
        }
    }
}

/// One baseline's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineSummary {
    #[serde(flatten)]
    pub times: Percentiles,
    pub p50_over_bound: Option<f64>,
    pub p99_over_bound: Option<f64>,
    pub origin_egress_ratio: f64,
    /// Largest bytes into one site over its WAN, per image.
    pub wan_in_ratio_max: Option<f64>,
}

/// Both baselines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baselines {
    pub registry: BaselineSummary,
    pub whole_blob_peer: BaselineSummary,
}

/// Traffic over one site's WAN link, relative to the image (and per layer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WanSite {
    pub site: String,
    pub in_ratio: f64,
    pub out_ratio: f64,
    /// Largest number of times one layer crossed into the site.
    pub layer_in_max: f64,
}

/// One host's line of the CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub site: String,
    pub start_s: f64,
    pub left: bool,
    pub swarm_s: Option<f64>,
    pub registry_s: Option<f64>,
    pub whole_blob_peer_s: Option<f64>,
}

/// Everything a run reports (`wall_s` is the only field that differs between runs of a seed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub nodes: usize,
    pub seed: u64,
    pub image_bytes: u64,
    pub layers: Vec<u64>,
    pub piece_bytes: Vec<u32>,
    pub origins: usize,
    pub bound_s: f64,
    pub bound: Bound,
    #[serde(flatten)]
    pub times: Percentiles,
    pub p50_over_bound: Option<f64>,
    pub p90_over_bound: Option<f64>,
    pub p99_over_bound: Option<f64>,
    pub p999_over_bound: Option<f64>,
    pub max_over_bound: Option<f64>,
    pub origin_egress_ratio: f64,
    /// Delivered bytes the receiver already had, per image per stayer.
    pub wasted_ratio: f64,
    /// Bytes hosts uploaded / (their upload capacity × time to the last completion).
    pub peer_upload_utilisation: f64,
    pub wan: Vec<WanSite>,
    pub wan_layer_crossings_max: Option<f64>,
    pub left: usize,
    pub origin_gone_s: Option<f64>,
    pub sim_end_s: f64,
    pub wall_s: f64,
    pub stats: SwarmStats,
    pub baselines: Option<Baselines>,
    pub published: Option<Published>,
    #[serde(skip)]
    pub hosts: Vec<HostRow>,
}

fn ratio(x: Option<f64>, bound: f64) -> Option<f64> {
    x.filter(|_| bound > 0.0).map(|x| x / bound)
}

fn baseline_summary(
    fleet: &Fleet,
    b: &BaselineOutcome,
    left: &[bool],
    bound: f64,
) -> BaselineSummary {
    let f = fleet.image_bytes() as f64;
    let times = Percentiles::of(&b.completion, left);
    BaselineSummary {
        p50_over_bound: ratio(times.p50_s, bound),
        p99_over_bound: ratio(times.p99_s, bound),
        times,
        origin_egress_ratio: b.origin_bytes / f,
        wan_in_ratio_max: b
            .wan_in
            .iter()
            .flatten()
            .fold(None, |a: Option<f64>, &x| Some(a.map_or(x, |a| a.max(x))))
            .map(|x| x / f),
    }
}

/// Puts a run's outcomes together.
pub fn build(
    fleet: &Fleet,
    swarm: &SwarmOutcome,
    baselines: Option<(&BaselineOutcome, &BaselineOutcome)>,
    wall_s: f64,
) -> Report {
    let f = fleet.image_bytes() as f64;
    let left = &swarm.left;
    let bound = Bound::of(fleet, left);
    let t = bound.total_s;
    let times = Percentiles::of(&swarm.completion, left);
    let stayers = left.iter().filter(|l| !**l).count().max(1) as f64;
    let last = fleet
        .hosts
        .iter()
        .zip(&swarm.completion)
        .filter_map(|(h, c)| c.map(|c| h.join_s + c))
        .fold(0.0, f64::max);
    let up_capacity: f64 = fleet.hosts.iter().map(|h| h.up).sum();
    let wan: Vec<WanSite> = fleet
        .sites
        .iter()
        .enumerate()
        .filter(|(_, s)| s.wan_down.is_some() || s.wan_up.is_some())
        .map(|(i, s)| WanSite {
            site: s.name.clone(),
            in_ratio: swarm.wan_in[i].iter().sum::<f64>() / f,
            out_ratio: swarm.wan_out[i].iter().sum::<f64>() / f,
            layer_in_max: swarm.wan_in[i]
                .iter()
                .zip(&fleet.layers)
                .map(|(b, &l)| b / l as f64)
                .fold(0.0, f64::max),
        })
        .collect();
    let wan_layer_crossings_max = wan
        .iter()
        .map(|w| w.layer_in_max)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
    let hosts = fleet
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| HostRow {
            site: fleet.sites[usize::from(h.site)].name.clone(),
            start_s: h.join_s,
            left: left[i],
            swarm_s: swarm.completion[i],
            registry_s: baselines.and_then(|(r, _)| r.completion[i]),
            whole_blob_peer_s: baselines.and_then(|(_, w)| w.completion[i]),
        })
        .collect();
    Report {
        scenario: fleet.name.clone(),
        nodes: fleet.hosts.len(),
        seed: fleet.params.seed,
        image_bytes: fleet.image_bytes(),
        layers: fleet.layers.clone(),
        piece_bytes: fleet
            .layers
            .iter()
            .map(|&l| flotilla_protocol::piece::piece_size_for(l))
            .collect(),
        origins: fleet.origins.len(),
        bound_s: t,
        p50_over_bound: ratio(times.p50_s, t),
        p90_over_bound: ratio(times.p90_s, t),
        p99_over_bound: ratio(times.p99_s, t),
        p999_over_bound: ratio(times.p999_s, t),
        max_over_bound: ratio(times.max_s, t),
        times,
        bound,
        origin_egress_ratio: swarm.origin_bytes / f,
        wasted_ratio: swarm.stats.wasted_bytes / (f * stayers),
        peer_upload_utilisation: if last > 0.0 {
            swarm.peer_upload_bytes / (up_capacity * last)
        } else {
            0.0
        },
        wan,
        wan_layer_crossings_max,
        left: left.iter().filter(|l| **l).count(),
        origin_gone_s: swarm.origin_gone_s,
        sim_end_s: swarm.end_s,
        wall_s,
        stats: swarm.stats.clone(),
        baselines: baselines.map(|(r, w)| Baselines {
            registry: baseline_summary(fleet, r, left, t),
            whole_blob_peer: baseline_summary(fleet, w, left, t),
        }),
        published: fleet.published.clone(),
        hosts,
    }
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_owned(), |x| format!("{x:.2}"))
}

fn bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

impl Report {
    /// The Markdown summary (wall time included).
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let piece = self.piece_bytes.first().copied().unwrap_or(0) >> 20;
        let _ = writeln!(
            out,
            "## flotilla sim {} — {} hosts, image {} in {} layer(s), {piece} MiB pieces, {} origin server(s), seed {}\n",
            self.scenario,
            self.nodes,
            bytes(self.image_bytes as f64),
            self.layers.len(),
            self.origins,
            self.seed
        );
        let b = &self.bound;
        let wan = b
            .wan_s
            .map_or(String::new(), |w| format!(", F/WAN {w:.2} s"));
        let _ = writeln!(
            out,
            "Bound T = max{{F/u_s {:.2} s, F/d_min {:.2} s, N·F/(u_s+Σu_i) {:.2} s{wan}}} = **{:.2} s**{}\n",
            b.origin_s,
            b.download_s,
            b.swarm_s,
            self.bound_s,
            if b.staggered {
                " (staggered starts: only F/d holds per host)"
            } else {
                ""
            }
        );
        out.push_str("| run | done | p50 s | p90 s | p99 s | p99.9 s | max s | p50/T | p99/T | origin egress / image |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        let t = &self.times;
        let total = t.completed + t.incomplete;
        let _ = writeln!(
            out,
            "| flotilla swarm | {}/{total} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            t.completed,
            cell(t.p50_s),
            cell(t.p90_s),
            cell(t.p99_s),
            cell(t.p999_s),
            cell(t.max_s),
            cell(self.p50_over_bound),
            cell(self.p99_over_bound),
            self.origin_egress_ratio
        );
        if let Some(bl) = &self.baselines {
            for (name, s) in [
                ("registry only", &bl.registry),
                ("whole blob from one peer (Spegel)", &bl.whole_blob_peer),
            ] {
                let t = &s.times;
                let _ = writeln!(
                    out,
                    "| {name} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
                    t.completed,
                    t.completed + t.incomplete,
                    cell(t.p50_s),
                    cell(t.p90_s),
                    cell(t.p99_s),
                    cell(t.p999_s),
                    cell(t.max_s),
                    cell(s.p50_over_bound),
                    cell(s.p99_over_bound),
                    s.origin_egress_ratio
                );
            }
        }
        if let Some(p) = &self.published {
            let _ = writeln!(
                out,
                "| {} | – | {:.2} | – | {:.2} | {:.2} | – | {} | {} | – |",
                p.source,
                p.p50_s,
                p.p99_s,
                p.p999_s,
                cell(ratio(Some(p.p50_s), self.bound_s)),
                cell(ratio(Some(p.p99_s), self.bound_s)),
            );
        }
        if !self.wan.is_empty() {
            out.push_str("\n| site | WAN in / image | WAN out / image | worst layer crossings in |\n|---|---|---|---|\n");
            for w in &self.wan {
                let _ = writeln!(
                    out,
                    "| {} | {:.3} | {:.3} | {:.3} |",
                    w.site, w.in_ratio, w.out_ratio, w.layer_in_max
                );
            }
            if let Some(bl) = &self.baselines {
                let _ = writeln!(
                    out,
                    "\nBaselines, largest WAN in / image: registry {}, whole blob from one peer {}",
                    cell(bl.registry.wan_in_ratio_max),
                    cell(bl.whole_blob_peer.wan_in_ratio_max)
                );
            }
        }
        let s = &self.stats;
        let _ = writeln!(
            out,
            "\nSwarm: {} left early, {} of {} left in all; wasted {:.3} × image per host; host upload utilisation {:.2}; \
             origin requests {} ({} refused); Busy answers {}, PieceBusy {}; {} pieces offered while arriving, {} copies abandoned, {} cut short by a cancel; \
             sessions {} opened, {} failed, {} replaced ({} finishing their piece first){}.",
            s.left_early,
            self.left,
            self.nodes,
            self.wasted_ratio,
            self.peer_upload_utilisation,
            s.origin_requests,
            s.origin_refusals,
            s.busy_refusals,
            s.piece_busy,
            s.arriving_offers,
            s.abandoned,
            s.cut_short,
            s.sessions_opened,
            s.sessions_failed,
            s.sessions_replaced,
            s.sessions_retired,
            self.origin_gone_s
                .map_or(String::new(), |g| format!("; the origin left at {g:.2} s"))
        );
        if let (Some(half), Some(most)) = (s.piece_spread_half_ms, s.piece_spread_most_ms) {
            let ms = |x: Option<f64>| x.map_or("–".to_owned(), |v| format!("{v:.1} ms"));
            let _ = writeln!(
                out,
                "Spread: after its first copy landed, a piece reached half the hosts in {half:.1} ms and 99 % of them in {most:.1} ms \
                 (medians over pieces); the last piece to land, in {} and {}.",
                ms(s.last_piece_spread_ms[0]),
                ms(s.last_piece_spread_ms[1])
            );
        }
        let _ = writeln!(
            out,
            "Simulation: {} events, peak queue {}, simulated {:.2} s in {:.2} s wall.",
            s.events, s.peak_queue, self.sim_end_s, self.wall_s
        );
        out
    }

    /// The CSV of completion times, one line per host.
    pub fn csv(&self) -> String {
        let mut out = String::from("host,site,start_s,left,swarm_s,registry_s,whole_blob_peer_s\n");
        let f = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.6}"));
        for (i, h) in self.hosts.iter().enumerate() {
            let _ = writeln!(
                out,
                "{i},{},{:.6},{},{},{},{}",
                h.site,
                h.start_s,
                h.left,
                f(h.swarm_s),
                f(h.registry_s),
                f(h.whole_blob_peer_s)
            );
        }
        out
    }
}
