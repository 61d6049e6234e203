//! The two baselines every scenario is compared with, on the same network model and host
//! schedule as the swarm run:
//!
//! - **registry**: every host pulls every layer whole from the origin (a plain registry);
//!   the origin's upload is shared by all of them.
//! - **whole blob from one peer** (Spegel's way): after a DHT lookup, a host fetches each layer
//!   whole from one random live host that holds it *completely*, else from the origin; if that
//!   peer leaves mid-transfer, it looks again and starts over.
//!
//! The origin never leaves in a baseline (in `gateway-gone` it would strand them).

use crate::flow::{Check, Nanos};
use crate::model::Fleet;
use crate::net::{Net, nanos, secs};
use crate::queue::Queue;
use crate::rng::{Rng, mix};

/// `src` of a transfer from the origin.
const ORIGIN: u32 = u32::MAX;

/// Which baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Registry,
    WholeBlobPeer,
}

/// What a baseline run produced.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineOutcome {
    /// Per host: seconds from its start to its last layer, if it got there.
    pub completion: Vec<Option<f64>>,
    pub origin_bytes: f64,
    pub peer_bytes: f64,
    /// Per site: bytes into the site over its WAN (`None`: no WAN link).
    pub wan_in: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Join(u32),
    Leave(u32),
    Start {
        host: u32,
        layer: u16,
    },
    /// The request reached `src` (a host, or [`ORIGIN`]): the transfer begins.
    Begin {
        host: u32,
        layer: u16,
        src: u32,
    },
    FlowEnd {
        flow: u32,
        version: u32,
    },
    Arrive {
        host: u32,
        layer: u16,
    },
}

#[derive(Debug, Clone, Copy)]
struct Fetch {
    host: u32,
    layer: u16,
    src: u32,
}

#[derive(Debug, Default)]
struct Host {
    alive: bool,
    done: usize,
    done_at: Option<Nanos>,
    inbound: Vec<u32>,
    outbound: Vec<u32>,
}

/// Longest simulated time of a baseline (a registry serving 100,000 hosts takes a day).
const LIMIT_S: f64 = 1e8;

/// Runs one baseline for `fleet` (assumed validated).
pub fn run(fleet: &Fleet, which: Baseline) -> BaselineOutcome {
    let mut net: Net<Fetch> = Net::new(fleet);
    let mut rng = Rng::new(mix(fleet.params.seed ^ 0xba5e));
    let mut queue: Queue<Ev> = Queue::default();
    let push = |q: &mut Queue<Ev>, at: Nanos, ev: Ev| q.push(at, ev);
    let n_layers = fleet.layers.len();
    let mut hosts: Vec<Host> = (0..fleet.hosts.len()).map(|_| Host::default()).collect();
    let mut holders: Vec<Vec<u32>> = vec![Vec::new(); n_layers];
    let hops = crate::net::lookup_hops(fleet.hosts.len());
    let lookup: Vec<Nanos> = (0..fleet.sites.len())
        .map(|a| {
            let mean = fleet
                .hosts
                .iter()
                .map(|h| fleet.rtt[a][usize::from(h.site)])
                .sum::<f64>()
                / fleet.hosts.len() as f64;
            nanos(hops * mean)
        })
        .collect();
    for (i, h) in fleet.hosts.iter().enumerate() {
        push(&mut queue, nanos(h.join_s), Ev::Join(i as u32));
        if let Some(l) = h.leave_s {
            push(&mut queue, nanos(l), Ev::Leave(i as u32));
        }
    }
    let limit = nanos(LIMIT_S);
    let mut due: Vec<(u32, u32, Nanos)> = Vec::new();
    while let Some((t, ev)) = queue.pop() {
        if t > limit {
            break;
        }
        let now = t;
        match ev {
            Ev::Join(h) => {
                hosts[h as usize].alive = true;
                let delay = match which {
                    Baseline::Registry => 0,
                    Baseline::WholeBlobPeer => lookup[usize::from(fleet.hosts[h as usize].site)],
                };
                for layer in 0..n_layers as u16 {
                    push(&mut queue, now + delay, Ev::Start { host: h, layer });
                }
            }
            Ev::Start { host, layer } => {
                if !hosts[host as usize].alive {
                    continue;
                }
                let mut src = ORIGIN;
                if which == Baseline::WholeBlobPeer {
                    let list = &holders[usize::from(layer)];
                    for _ in 0..8 {
                        if list.is_empty() {
                            break;
                        }
                        let p = list[rng.below(list.len() as u64) as usize];
                        if p != host && hosts[p as usize].alive {
                            src = p;
                            break;
                        }
                    }
                }
                let owd = if src == ORIGIN {
                    net.owd_origin(usize::from(layer) % net.origin_servers(), host)
                } else {
                    net.owd_hosts(src, host)
                };
                push(&mut queue, now + owd, Ev::Begin { host, layer, src });
            }
            Ev::Begin { host, layer, src } => {
                if !hosts[host as usize].alive {
                    continue;
                }
                if src != ORIGIN && !hosts[src as usize].alive {
                    // The peer left while the request was on its way: look again.
                    push(&mut queue, now, Ev::Start { host, layer });
                    continue;
                }
                let bytes = fleet.layers[usize::from(layer)] as f64;
                let tag = Fetch { host, layer, src };
                let flow = if src == ORIGIN {
                    let server = usize::from(layer) % net.origin_servers();
                    net.start_origin(server, host, bytes, tag, now)
                } else {
                    let f = net.start_peer(src, host, bytes, tag, now);
                    hosts[src as usize].outbound.push(f);
                    f
                };
                hosts[host as usize].inbound.push(flow);
            }
            Ev::FlowEnd { flow, version } => {
                match net.engine.check(flow, version, now) {
                    Check::Stale => continue,
                    Check::Later { version, at } => {
                        push(&mut queue, at, Ev::FlowEnd { flow, version });
                        continue;
                    }
                    Check::Done => {}
                }
                let Some(ended) = net.engine.finish(flow) else {
                    continue;
                };
                let Fetch { host, layer, src } = ended.tag;
                hosts[host as usize].inbound.retain(|&f| f != flow);
                let owd = if src == ORIGIN {
                    let server = usize::from(layer) % net.origin_servers();
                    net.owd_origin(server, host)
                } else {
                    hosts[src as usize].outbound.retain(|&f| f != flow);
                    net.owd_hosts(src, host)
                };
                push(&mut queue, now + owd, Ev::Arrive { host, layer });
            }
            Ev::Arrive { host, layer } => {
                let h = &mut hosts[host as usize];
                if !h.alive {
                    continue;
                }
                h.done += 1;
                if h.done == n_layers {
                    h.done_at = Some(now);
                }
                holders[usize::from(layer)].push(host);
            }
            Ev::Leave(h) => {
                let host = &mut hosts[h as usize];
                host.alive = false;
                let inbound = std::mem::take(&mut host.inbound);
                let outbound = std::mem::take(&mut host.outbound);
                for f in inbound {
                    if let Some(e) = net.engine.abort(f, now)
                        && e.tag.src != ORIGIN
                    {
                        hosts[e.tag.src as usize].outbound.retain(|&x| x != f);
                    }
                }
                for f in outbound {
                    if let Some(e) = net.engine.abort(f, now) {
                        let Fetch { host, layer, .. } = e.tag;
                        hosts[host as usize].inbound.retain(|&x| x != f);
                        let at = now
                            + net.owd_hosts(h, host)
                            + lookup[usize::from(net.host_site[host as usize])];
                        push(&mut queue, at, Ev::Start { host, layer });
                    }
                }
            }
        }
        if queue.next_time().is_none_or(|n| n > now) {
            net.engine.flush(now, |f, v, at| due.push((f, v, at)));
            for (flow, version, at) in due.drain(..) {
                push(&mut queue, at, Ev::FlowEnd { flow, version });
            }
        }
    }
    BaselineOutcome {
        completion: fleet
            .hosts
            .iter()
            .zip(&hosts)
            .map(|(spec, h)| h.done_at.map(|d| secs(d) - spec.join_s))
            .collect(),
        origin_bytes: net.origin_bytes(),
        peer_bytes: net.host_upload_bytes(),
        wan_in: net.wan_bytes().into_iter().map(|(i, _)| i).collect(),
    }
}
