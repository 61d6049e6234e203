//! The named scenarios (`flotilla sim <name>`) and the overrides every one of them takes.

use std::fmt;
use std::str::FromStr;

use crate::SimError;
use crate::model::{Fleet, GBIT, GIB, HostSpec, MBIT, MIB, OriginSpec, Params, Published, Site};
use crate::rng::Rng;

/// Round trip inside a data-centre site.
const LAN_RTT: f64 = 0.000_5;
/// Round trip between an edge site and the central site.
const EDGE_CORE_RTT: f64 = 0.040;
/// Round trip between two edge sites (through the centre).
const EDGE_EDGE_RTT: f64 = 0.080;

/// A named scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Cold,
    Rolling,
    Hetero,
    Churn,
    Edge20x50,
    GatewayGone,
    Kraken2600,
    Fleet10k,
    Fleet100k,
}

impl Scenario {
    /// Every scenario, in the order the docs list them.
    pub const ALL: [Scenario; 9] = [
        Scenario::Cold,
        Scenario::Rolling,
        Scenario::Hetero,
        Scenario::Churn,
        Scenario::Edge20x50,
        Scenario::GatewayGone,
        Scenario::Kraken2600,
        Scenario::Fleet10k,
        Scenario::Fleet100k,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Cold => "cold",
            Scenario::Rolling => "rolling",
            Scenario::Hetero => "hetero",
            Scenario::Churn => "churn",
            Scenario::Edge20x50 => "edge-20x50",
            Scenario::GatewayGone => "gateway-gone",
            Scenario::Kraken2600 => "kraken-2600",
            Scenario::Fleet10k => "fleet-10k",
            Scenario::Fleet100k => "fleet-100k",
        }
    }

    /// One line on what it models.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Cold => {
                "N hosts (10 Gbit/s) pull a 1 GiB image at once from one 10 Gbit/s gateway"
            }
            Scenario::Rolling => "as cold, but hosts start in batches of N/20 every 5 s",
            Scenario::Hetero => "as cold, hosts at 25 (20%), 10 (50%) or 1 Gbit/s (30%)",
            Scenario::Churn => "as cold, 20% of hosts leave at a random time during the pull",
            Scenario::Edge20x50 => {
                "20 sites x 50 hosts, 1 Gbit/s LAN, 100 Mbit/s WAN per site, origin at the centre"
            }
            Scenario::GatewayGone => "as cold, the gateway leaves once every piece is on some host",
            Scenario::Kraken2600 => {
                "Kraken's test: 3 GB in 2 layers, 2600 hosts capped at 300 MB/s, 5 origins"
            }
            Scenario::Fleet10k => "10,000 hosts (10 Gbit/s) pull 1 GiB at once from one gateway",
            Scenario::Fleet100k => "100,000 hosts (10 Gbit/s) pull 1 GiB at once from one gateway",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| SimError::UnknownScenario(s.to_owned()))
    }
}

/// Command-line overrides of a scenario's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Hosts (for edge-20x50: spread over the 20 sites).
    pub nodes: Option<usize>,
    pub seed: Option<u64>,
    /// Image size in bytes (split evenly over the scenario's layers).
    pub size: Option<u64>,
    /// Seconds between provider lookups.
    pub refresh_s: Option<f64>,
    pub max_peers: Option<usize>,
    /// Origin dedup window in seconds (0 turns it off).
    pub origin_dedup_s: Option<f64>,
    pub streaming: bool,
    pub max_time_s: Option<f64>,
    /// Requests per second each origin server answers.
    pub origin_rps: Option<f64>,
    /// Tell every scheduler the fleet's size up front.
    pub fleet_size_hint: bool,
}

/// A host pulling from time 0 with symmetric bandwidth.
fn host(site: u16, rate: f64) -> HostSpec {
    HostSpec {
        site,
        up: rate,
        down: rate,
        disk: None,
        join_s: 0.0,
        leave_s: None,
    }
}

fn one_site() -> (Vec<Site>, Vec<Vec<f64>>) {
    let site = Site {
        name: "dc".into(),
        wan_up: None,
        wan_down: None,
    };
    (vec![site], vec![vec![LAN_RTT]])
}

/// Splits `total` bytes into `n` layers of (nearly) equal size.
fn split_layers(total: u64, n: usize) -> Vec<u64> {
    let n = n.max(1) as u64;
    let n = n.min(total.max(1));
    (0..n)
        .map(|i| total / n + u64::from(i < total % n))
        .collect()
}

/// Builds `scenario` with its defaults, then applies `o`.
pub fn build(scenario: Scenario, o: &Overrides) -> Result<Fleet, SimError> {
    let seed = o.seed.unwrap_or(1);
    let mut rng = Rng::new(seed ^ 0x5ce7_a210);
    let default_nodes = match scenario {
        Scenario::Kraken2600 => 2600,
        Scenario::Fleet10k => 10_000,
        Scenario::Fleet100k => 100_000,
        _ => 1000,
    };
    let n = o.nodes.unwrap_or(default_nodes);
    if n == 0 || n > 10_000_000 {
        return Err(SimError::InvalidFleet(format!("{n} nodes")));
    }
    let mut params = Params {
        seed,
        ..Params::default()
    };
    let (mut sites, mut rtt) = one_site();
    let mut origins = vec![OriginSpec {
        site: 0,
        up: 10.0 * GBIT,
    }];
    let mut layers = vec![GIB];
    let mut published = None;
    let mut hosts: Vec<HostSpec> = Vec::with_capacity(n);
    match scenario {
        Scenario::Cold | Scenario::Fleet10k | Scenario::Fleet100k | Scenario::GatewayGone => {
            hosts.extend((0..n).map(|_| host(0, 10.0 * GBIT)));
            params.origin_leaves = scenario == Scenario::GatewayGone;
        }
        Scenario::Churn => hosts.extend((0..n).map(|_| host(0, 10.0 * GBIT))),
        Scenario::Rolling => {
            let batch = n.div_ceil(20).max(1);
            hosts.extend((0..n).map(|i| HostSpec {
                join_s: (i / batch) as f64 * 5.0,
                ..host(0, 10.0 * GBIT)
            }));
        }
        Scenario::Hetero => {
            for _ in 0..n {
                let x = rng.unit();
                let rate = if x < 0.2 {
                    25.0
                } else if x < 0.7 {
                    10.0
                } else {
                    1.0
                };
                hosts.push(host(0, rate * GBIT));
            }
        }
        Scenario::Edge20x50 => {
            const EDGE_SITES: usize = 20;
            sites = (0..EDGE_SITES)
                .map(|i| Site {
                    name: format!("edge{i:02}"),
                    wan_up: Some(100.0 * MBIT),
                    wan_down: Some(100.0 * MBIT),
                })
                .collect();
            sites.push(Site {
                name: "core".into(),
                wan_up: None,
                wan_down: None,
            });
            let core = EDGE_SITES;
            rtt = (0..=EDGE_SITES)
                .map(|a| {
                    (0..=EDGE_SITES)
                        .map(|b| match (a == b, a == core || b == core) {
                            (true, _) => LAN_RTT,
                            (false, true) => EDGE_CORE_RTT,
                            (false, false) => EDGE_EDGE_RTT,
                        })
                        .collect()
                })
                .collect();
            origins[0].site = core as u16;
            hosts.extend((0..n).map(|i| host((i % EDGE_SITES) as u16, GBIT)));
            layers = vec![256 * MIB, 256 * MIB];
        }
        Scenario::Kraken2600 => {
            const CAP: f64 = 300e6;
            hosts.extend((0..n).map(|_| host(0, CAP)));
            origins = (0..5).map(|_| OriginSpec { site: 0, up: CAP }).collect();
            layers = vec![1_500_000_000, 1_500_000_000];
            published = Some(Published {
                source: "Kraken (published)".into(),
                p50_s: 10.0,
                p99_s: 18.0,
                p999_s: 22.0,
            });
        }
    }
    if let Some(size) = o.size {
        layers = split_layers(size, layers.len());
    }
    if let Some(r) = o.refresh_s {
        params.refresh_s = r;
    }
    if let Some(p) = o.max_peers {
        params.max_peers = p;
        params.lookup_limit = p.saturating_mul(2).max(8);
    }
    if let Some(d) = o.origin_dedup_s {
        params.origin_dedup_s = (d > 0.0).then_some(d);
    }
    if let Some(t) = o.max_time_s {
        params.max_time_s = t;
    }
    params.streaming = o.streaming;
    params.fleet_size_hint = o.fleet_size_hint;
    if let Some(r) = o.origin_rps {
        params.origin_rps = r;
    }
    if scenario == Scenario::Churn {
        // Leave during the pull: between the end of the origin grace and one provider refresh
        // plus twice the transfer time at line rate later.
        let f = layers.iter().sum::<u64>() as f64;
        let span = params.refresh_s + 2.0 * f / (10.0 * GBIT);
        for h in &mut hosts {
            if rng.unit() < 0.2 {
                h.leave_s = Some(1.0 + rng.unit() * span);
            }
        }
    }
    let fleet = Fleet {
        name: scenario.name().to_owned(),
        sites,
        rtt,
        hosts,
        origins,
        layers,
        params,
        published,
    };
    fleet.validate()?;
    Ok(fleet)
}
