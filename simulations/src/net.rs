//! The fleet's network as the flow engine sees it: one resource per host upload and download,
//! per origin server, and per WAN link direction, plus the one-way delays between sites. Shared
//! by the swarm simulation and the baselines, so all three run on the same model.

use crate::flow::{Engine, Nanos};
use crate::model::Fleet;

/// Seconds to [`Nanos`].
pub fn nanos(secs: f64) -> Nanos {
    (secs.max(0.0) * 1e9).round() as Nanos
}

/// [`Nanos`] to seconds.
pub fn secs(t: Nanos) -> f64 {
    t as f64 / 1e9
}

/// Round trips a DHT lookup takes among `n` nodes: ⌈log2(n + 1)⌉, at least 1. Counted in
/// integers (the bits of `n`), so no libm's `log2` can tip a power of two over the ceiling.
pub fn lookup_hops(n: usize) -> f64 {
    f64::from((usize::BITS - n.leading_zeros()).max(1))
}

/// Resources and delays of a fleet.
#[derive(Debug, Clone)]
pub struct Net<T> {
    pub engine: Engine<T>,
    pub host_site: Vec<u16>,
    host_up: Vec<u32>,
    host_down: Vec<u32>,
    origin_up: Vec<u32>,
    origin_site: Vec<u16>,
    wan_up: Vec<Option<u32>>,
    wan_down: Vec<Option<u32>>,
    /// One-way delay between sites.
    owd: Vec<Vec<Nanos>>,
}

impl<T: Copy> Net<T> {
    pub fn new(fleet: &Fleet) -> Self {
        let mut engine = Engine::new();
        let mut host_up = Vec::with_capacity(fleet.hosts.len());
        let mut host_down = Vec::with_capacity(fleet.hosts.len());
        for h in &fleet.hosts {
            host_up.push(engine.add_resource(h.up));
            host_down.push(engine.add_resource(h.effective_down()));
        }
        let origin_up = fleet
            .origins
            .iter()
            .map(|o| engine.add_resource(o.up))
            .collect();
        let wan_up = fleet
            .sites
            .iter()
            .map(|s| s.wan_up.map(|c| engine.add_resource(c)))
            .collect();
        let wan_down = fleet
            .sites
            .iter()
            .map(|s| s.wan_down.map(|c| engine.add_resource(c)))
            .collect();
        let owd = fleet
            .rtt
            .iter()
            .map(|row| row.iter().map(|&r| nanos(r / 2.0)).collect())
            .collect();
        Net {
            engine,
            host_site: fleet.hosts.iter().map(|h| h.site).collect(),
            host_up,
            host_down,
            origin_up,
            origin_site: fleet.origins.iter().map(|o| o.site).collect(),
            wan_up,
            wan_down,
            owd,
        }
    }

    /// The hops of a flow from resource `first` at site `from` into host `to`.
    fn hops(&self, first: u32, from: u16, to: u32) -> ([u32; 4], usize) {
        let mut hops = [first, self.host_down[to as usize], 0, 0];
        let mut n = 2;
        let to_site = self.host_site[to as usize];
        if from != to_site {
            for r in [
                self.wan_up[usize::from(from)],
                self.wan_down[usize::from(to_site)],
            ]
            .into_iter()
            .flatten()
            {
                hops[n] = r;
                n += 1;
            }
        }
        (hops, n)
    }

    /// Starts a flow of `bytes` from host `from` to host `to`.
    pub fn start_peer(&mut self, from: u32, to: u32, bytes: f64, tag: T, now: Nanos) -> u32 {
        let (hops, n) = self.hops(
            self.host_up[from as usize],
            self.host_site[from as usize],
            to,
        );
        self.engine.start(&hops[..n], bytes, tag, now)
    }

    /// Starts a flow of `bytes` from origin server `server` to host `to`.
    pub fn start_origin(&mut self, server: usize, to: u32, bytes: f64, tag: T, now: Nanos) -> u32 {
        let (hops, n) = self.hops(self.origin_up[server], self.origin_site[server], to);
        self.engine.start(&hops[..n], bytes, tag, now)
    }

    /// One-way delay between two hosts.
    pub fn owd_hosts(&self, a: u32, b: u32) -> Nanos {
        self.owd_sites(self.host_site[a as usize], self.host_site[b as usize])
    }

    /// One-way delay between origin server `server` and host `h`.
    pub fn owd_origin(&self, server: usize, h: u32) -> Nanos {
        self.owd_sites(self.origin_site[server], self.host_site[h as usize])
    }

    pub fn owd_sites(&self, a: u16, b: u16) -> Nanos {
        self.owd[usize::from(a)][usize::from(b)]
    }

    pub fn origin_servers(&self) -> usize {
        self.origin_up.len()
    }

    /// Bytes origin server `server` sent (flows that ended).
    pub fn origin_bytes_of(&self, server: usize) -> f64 {
        self.engine.bytes_through(self.origin_up[server])
    }

    /// Bytes the origin servers sent (flows that ended).
    pub fn origin_bytes(&self) -> f64 {
        self.origin_up
            .iter()
            .map(|&r| self.engine.bytes_through(r))
            .sum()
    }

    /// Bytes all host uploads sent (flows that ended).
    pub fn host_upload_bytes(&self) -> f64 {
        self.host_up
            .iter()
            .map(|&r| self.engine.bytes_through(r))
            .sum()
    }

    /// Bytes all host downloads took in (flows that ended).
    pub fn host_download_bytes(&self) -> f64 {
        self.host_down
            .iter()
            .map(|&r| self.engine.bytes_through(r))
            .sum()
    }

    /// Bytes into and out of each site over its WAN link (`None` for a site without one).
    pub fn wan_bytes(&self) -> Vec<(Option<f64>, Option<f64>)> {
        self.wan_down
            .iter()
            .zip(&self.wan_up)
            .map(|(d, u)| {
                (
                    d.map(|r| self.engine.bytes_through(r)),
                    u.map(|r| self.engine.bytes_through(r)),
                )
            })
            .collect()
    }
}
