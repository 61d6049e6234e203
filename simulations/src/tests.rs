//! The simulator's tests: hand-computed answers, determinism, conservation of bytes, the bound
//! never beaten, and that the hosts run the protocol crate's scheduler.

use crate::flow::Engine;
use crate::model::{Fleet, HostSpec, MIB, OriginSpec, Params, Site};
use crate::{
    Baseline, HostScheduler, Overrides, RunOptions, Scenario, build_scenario, run, run_baseline,
    run_swarm,
};

/// One site with `rtt`, one origin server of `origin_up`, and `hosts`.
fn tiny(rtt: f64, origin_up: f64, hosts: Vec<HostSpec>, layers: Vec<u64>) -> Fleet {
    Fleet {
        name: "tiny".into(),
        sites: vec![Site {
            name: "dc".into(),
            wan_up: None,
            wan_down: None,
        }],
        rtt: vec![vec![rtt]],
        hosts,
        origins: vec![OriginSpec {
            site: 0,
            up: origin_up,
        }],
        layers,
        params: Params::default(),
        published: None,
    }
}

fn host(up: f64, down: f64) -> HostSpec {
    HostSpec {
        site: 0,
        up,
        down,
        disk: None,
        join_s: 0.0,
        leave_s: None,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn one_host_one_piece_from_the_origin() {
    // The first lookup (one hop, one round trip) finds nobody: a cold start, so the origin
    // grace ends then; the request takes half a round trip, the piece crosses at
    // min(origin up, host down), and lands half a round trip after its last byte left.
    let piece = 4 * MIB;
    let fleet = tiny(0.010, 50e6, vec![host(100e6, 100e6)], vec![piece]);
    let out = run_swarm(&fleet).unwrap();
    let expected = 0.010 + 0.010 + piece as f64 / 50e6;
    let got = out.completion[0].unwrap();
    assert!(close(got, expected), "{got} vs {expected}");
    assert!(close(out.origin_bytes, piece as f64));
    // Downloads capped below the origin: the host's rate decides.
    let fleet = tiny(0.010, 50e6, vec![host(100e6, 20e6)], vec![piece]);
    let got = run_swarm(&fleet).unwrap().completion[0].unwrap();
    assert!(close(got, 0.010 + 0.010 + piece as f64 / 20e6), "{got}");
    // The registry baseline has no grace: one round trip plus the transfer.
    let reg = run_baseline(&fleet, Baseline::Registry).unwrap();
    let got = reg.completion[0].unwrap();
    assert!(close(got, 0.005 + piece as f64 / 20e6 + 0.005), "{got}");
}

#[test]
fn two_pieces_share_the_origin() {
    // The origin window (2) sends both pieces at once; they share the origin's upload equally
    // and finish together.
    let fleet = tiny(0.010, 50e6, vec![host(100e6, 100e6)], vec![8 * MIB]);
    let out = run_swarm(&fleet).unwrap();
    let expected = 0.010 + 0.010 + (8 * MIB) as f64 / 50e6;
    let got = out.completion[0].unwrap();
    assert!(close(got, expected), "{got} vs {expected}");
}

#[test]
fn flows_share_resources_equally_and_account_bytes() {
    let mut e: Engine<u8> = Engine::new();
    let a = e.add_resource(100.0);
    let b = e.add_resource(30.0);
    let c = e.add_resource(1000.0);
    let f1 = e.start(&[a, b], 300.0, 1, 0);
    let f2 = e.start(&[a, c], 300.0, 2, 0);
    let mut due = Vec::new();
    e.flush(0, |f, v, at| due.push((f, v, at)));
    due.sort_by_key(|d| d.2);
    // f1: min(100/2, 30) = 30 B/s → 10 s; f2: min(100/2, 1000) = 50 B/s → 6 s.
    assert_eq!(due.len(), 2);
    assert_eq!((due[0].0, due[0].2), (f2, 6_000_000_000));
    assert_eq!((due[1].0, due[1].2), (f1, 10_000_000_000));
    let ended = e.finish(f2).unwrap();
    assert_eq!(ended.bytes, 300.0);
    assert_eq!(e.load(a), 1);
    // f1 alone on `a` now, still capped by `b`: its rate does not change, nothing is due.
    due.clear();
    e.flush(6_000_000_000, |f, v, at| due.push((f, v, at)));
    assert!(due.is_empty());
    let aborted = e.abort(f1, 7_000_000_000).unwrap();
    assert!(close(aborted.bytes, 210.0), "{}", aborted.bytes);
    assert_eq!(e.live_flows(), 0);
    assert!(close(e.bytes_through(a), 510.0));
    assert!(close(e.bytes_through(b), 210.0));
}

fn small(scenario: Scenario, seed: u64) -> Fleet {
    let nodes = if scenario == Scenario::Edge20x50 {
        60
    } else {
        40
    };
    build_scenario(
        scenario,
        &Overrides {
            nodes: Some(nodes),
            seed: Some(seed),
            size: Some(48 * MIB),
            refresh_s: Some(2.0),
            ..Overrides::default()
        },
    )
    .unwrap()
}

#[test]
fn same_seed_same_results() {
    let fleet = small(Scenario::Churn, 7);
    let mut a = run(&fleet, RunOptions::default()).unwrap();
    let mut b = run(&fleet, RunOptions::default()).unwrap();
    a.wall_s = 0.0;
    b.wall_s = 0.0;
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    assert_eq!(a.markdown(), b.markdown());
    assert_eq!(a.csv(), b.csv());
    assert_eq!(crate::svg(&a).unwrap(), crate::svg(&b).unwrap());
    // A different seed is a different run.
    let c = run_swarm(&small(Scenario::Churn, 8)).unwrap();
    let a = run_swarm(&fleet).unwrap();
    assert_ne!(a.completion, c.completion);
}

#[test]
fn bytes_are_conserved() {
    for scenario in [Scenario::Cold, Scenario::Churn, Scenario::Edge20x50] {
        let fleet = small(scenario, 3);
        let out = run_swarm(&fleet).unwrap();
        let s = &out.stats;
        let sent = out.origin_bytes + out.peer_upload_bytes;
        assert!(close(sent, out.host_download_bytes), "{scenario}: {out:?}");
        assert!(close(sent, s.sent_bytes), "{scenario}");
        assert!(close(s.sent_bytes, s.received_bytes), "{scenario}");
        // Every byte sent either arrived in a whole piece or was cut short.
        assert!(
            close(s.delivered_bytes + s.aborted_bytes, s.sent_bytes),
            "{scenario}: {s:?}"
        );
        // Each host that finished received at least the image.
        let finished = out.completion.iter().filter(|c| c.is_some()).count() as f64;
        let image = fleet.image_bytes() as f64;
        assert!(s.delivered_bytes - s.wasted_bytes >= finished * image * (1.0 - 1e-9));
    }
}

#[test]
fn no_scenario_beats_the_bound() {
    for scenario in Scenario::ALL {
        let fleet = small(scenario, 5);
        let report = run(&fleet, RunOptions::default()).unwrap();
        let t = report.bound_s;
        assert!(t > 0.0, "{scenario}");
        assert_eq!(
            report.times.incomplete,
            0,
            "{scenario}: {}",
            report.markdown()
        );
        let max = report.times.max_s.unwrap();
        assert!(max >= t * (1.0 - 1e-9), "{scenario}: max {max} < bound {t}");
        let f = fleet.image_bytes() as f64;
        let u_s: f64 = fleet.origins.iter().map(|o| o.up).sum();
        for (i, h) in fleet.hosts.iter().enumerate() {
            let Some(c) = report.hosts[i].swarm_s else {
                continue;
            };
            // No host takes in the image faster than its download allows, nor (starting with
            // everyone else) faster than the origin can send one copy.
            assert!(
                c >= f / h.effective_down() * (1.0 - 1e-9),
                "{scenario}: host {i}"
            );
            if !report.bound.staggered {
                assert!(c >= f / u_s * (1.0 - 1e-9), "{scenario}: host {i}");
            }
        }
        let bl = report.baselines.as_ref().unwrap();
        for b in [&bl.registry, &bl.whole_blob_peer] {
            let max = b.times.max_s.unwrap();
            assert!(max >= t * (1.0 - 1e-9), "{scenario}: baseline {max} < {t}");
        }
    }
}

#[test]
fn the_gateway_can_leave_once_every_piece_is_out() {
    let fleet = small(Scenario::GatewayGone, 2);
    let report = run(&fleet, RunOptions { baselines: false }).unwrap();
    let gone = report.origin_gone_s.unwrap();
    assert!(gone > 0.0);
    assert_eq!(report.times.incomplete, 0);
    assert!(report.times.max_s.unwrap() > gone);
}

#[test]
fn hosts_run_the_nodes_scheduler() {
    use std::marker::PhantomData;

    use flotilla_protocol::scheduler::{Config, Scheduler};

    // Compile-time: the simulated hosts' type is the protocol crate's generic `Scheduler`
    // (the node's driver holds a `Scheduler<PeerId>` of it), and the configuration the node
    // hands its scheduler is the protocol crate's `Config` type.
    fn is_protocol_scheduler<P>(_: PhantomData<Scheduler<P>>) {}
    is_protocol_scheduler(PhantomData::<HostScheduler>);
    let node_cfg: Config = flotilla_node::fetch::FetchConfig::new("http://gateway").scheduler;
    // Run time: with the same values the simulator gives every host (the seed aside).
    assert_eq!(
        format!("{node_cfg:?}"),
        format!("{:?}", Config::default()),
        "the node's default scheduler configuration differs from the simulator's"
    );
    // The world around the scheduler mirrors the node's defaults too.
    let fetch = flotilla_node::fetch::FetchConfig::new("http://gateway");
    let limits = flotilla_node::transfer::ServerLimits::default();
    let p = Params::default();
    assert_eq!(p.max_peers, fetch.max_peers_per_blob);
    assert_eq!(p.lookup_limit, (fetch.max_peers_per_blob * 2).max(8));
    assert_eq!(p.refresh_s, fetch.provider_refresh.as_secs_f64());
    assert_eq!(usize::from(p.max_streams), limits.max_streams);
    assert_eq!(
        usize::from(p.max_sessions_per_blob),
        limits.max_streams_per_blob
    );
    assert_eq!(usize::from(p.max_sends), limits.max_concurrent_sends);
    assert_eq!(usize::from(p.max_sends_per_blob), limits.max_sends_per_blob);
    assert_eq!(
        usize::from(p.max_waiting_per_blob),
        limits.max_waiting_per_blob
    );
    assert_eq!(
        usize::from(p.max_copies_per_piece),
        limits.max_copies_per_piece
    );
    assert_eq!(p.max_requests_per_stream, limits.max_requests_per_stream);
    // Requests only come from the scheduler's actions: a run that completed made some.
    let out = run_swarm(&small(Scenario::Cold, 1)).unwrap();
    assert!(out.stats.origin_requests > 0);
    assert!(out.completion.iter().all(|c| c.is_some()));
}

#[test]
fn piece_spread_is_measured_from_the_first_copy() {
    // One host: a piece's first copy is also its half and its 99 % of the fleet.
    let fleet = tiny(0.010, 50e6, vec![host(100e6, 100e6)], vec![8 * MIB]);
    let s = run_swarm(&fleet).unwrap().stats;
    assert_eq!(s.piece_spread_half_ms, Some(0.0));
    assert_eq!(s.piece_spread_most_ms, Some(0.0));
    assert_eq!(s.last_piece_spread_ms, [Some(0.0), Some(0.0)]);
    // A fleet: half the hosts come no later than 99 % of them, and within the run.
    let out = run_swarm(&small(Scenario::Cold, 1)).unwrap();
    let s = &out.stats;
    let (half, most) = (
        s.piece_spread_half_ms.unwrap(),
        s.piece_spread_most_ms.unwrap(),
    );
    assert!(
        0.0 < half && half <= most && most <= out.end_s * 1e3,
        "{half} {most}"
    );
    let [last_half, last_most] = s.last_piece_spread_ms.map(Option::unwrap);
    assert!(
        0.0 < last_half && last_half <= last_most,
        "{last_half} {last_most}"
    );
}

#[test]
fn scenario_names_round_trip() {
    for s in Scenario::ALL {
        assert_eq!(s.name().parse::<Scenario>().unwrap(), s);
    }
    assert!("nope".parse::<Scenario>().is_err());
    assert_eq!(crate::parse_size("1GiB").unwrap(), 1 << 30);
    assert_eq!(crate::parse_size("3GB").unwrap(), 3_000_000_000);
    assert_eq!(crate::parse_size("512MiB").unwrap(), 512 << 20);
    assert!(crate::parse_size("12parsecs").is_err());
    assert!(crate::parse_size("0").is_err());
}

/// Most times any layer crossed any site's WAN link into the site.
fn worst_crossings(fleet: &Fleet) -> f64 {
    let out = run_swarm(fleet).unwrap();
    assert!(out.completion.iter().all(|c| c.is_some()));
    out.wan_in
        .iter()
        .flat_map(|site| site.iter().zip(&fleet.layers))
        .map(|(&bytes, &layer)| bytes / layer as f64)
        .fold(0.0, f64::max)
}

#[test]
fn each_layer_crosses_each_sites_wan_about_once() {
    // 20 sites of 5 hosts, 128 MiB in 2 layers. Without site labels (no locality inputs) each
    // layer crosses each site's link several times (6.9–8.7 before the scheduler told near
    // from far). With labels each host finds its site's members through the site key and
    // tells far from near by the Welcome: about once (1.00 at 50 hosts a site; here cancelled
    // transfers add their partial bytes, since a substituted origin piece is cancelled when a
    // near peer gets it first, and so do far copies lost while passed on as they arrive: 1.11
    // since a replaced session finishes its piece, 1.18 when it cut that piece off and so
    // abandoned every copy that followed it).
    let mut fleet = build_scenario(
        Scenario::Edge20x50,
        &Overrides {
            nodes: Some(100),
            size: Some(128 * MIB),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert!(fleet.params.site_labels, "labels are the default");
    let labelled = worst_crossings(&fleet);
    assert!(labelled <= 1.2, "{labelled}");
    fleet.params.site_labels = false;
    let unlabelled = worst_crossings(&fleet);
    assert!(unlabelled >= 1.5, "{unlabelled} (labelled: {labelled})");
}

#[test]
fn the_origin_send_cap_holds_and_runs_repeat() {
    // 40 hosts pull 48 MiB (12 pieces) cold from one origin server. Uncapped, the server runs
    // more than 2 sends at once; capped at 2 it never does, whether it refuses the requests
    // beyond the cap (the node hears `request_refused`) or holds them for a free slot, every
    // host still completes, and the same fleet gives the same run.
    let mut fleet = build_scenario(
        Scenario::Cold,
        &Overrides {
            nodes: Some(40),
            size: Some(48 * MIB),
            ..Overrides::default()
        },
    )
    .unwrap();
    // The gateway's default: up to 32 sends, adapting from 4, the rest held.
    assert_eq!(fleet.params.origin_max_sends, Some(32));
    assert!(fleet.params.origin_adaptive_sends);
    assert!(fleet.params.origin_queue_excess);
    let adaptive = run_swarm(&fleet).unwrap();
    assert!(adaptive.completion.iter().all(Option::is_some));
    fleet.params.origin_adaptive_sends = false;
    let fixed = run_swarm(&fleet).unwrap();
    // Fewer sends at once at first: the first piece leaves the origin sooner.
    let first = |o: &crate::SwarmOutcome| o.stats.origin_first_piece_s.unwrap();
    assert!(
        first(&adaptive) < first(&fixed) / 2.0,
        "{} vs {}",
        first(&adaptive),
        first(&fixed)
    );
    fleet.params.origin_max_sends = None;
    let free = run_swarm(&fleet).unwrap();
    assert!(free.stats.origin_peak_sends > 2, "{:?}", free.stats);
    assert_eq!(free.stats.origin_cap_refusals, 0);
    fleet.params.origin_max_sends = Some(2);
    for queue in [false, true] {
        fleet.params.origin_queue_excess = queue;
        let a = run_swarm(&fleet).unwrap();
        let b = run_swarm(&fleet).unwrap();
        assert_eq!(a, b);
        assert!(
            a.stats.origin_peak_sends <= 2,
            "queue {queue}: {:?}",
            a.stats
        );
        assert!(a.completion.iter().all(Option::is_some), "queue {queue}");
        assert_eq!(a.stats.origin_cap_refusals > 0, !queue, "{:?}", a.stats);
    }
    fleet.params.origin_max_sends = Some(0);
    assert!(fleet.validate().is_err());
}

#[test]
fn sends_per_blob_hold_and_every_host_completes() {
    // At most 2 pieces of the layer leave a host at once, the rest wait (rarest first), every
    // download keeps 3 requests out. With 16 slots (the node's cap on all sends) and 16 requests
    // out a host sends more at once.
    let mut fleet = small(Scenario::Cold, 4);
    fleet.params.max_sends_per_blob = 16;
    fleet.params.fixed_in_flight = Some(16);
    let free = run_swarm(&fleet).unwrap();
    assert!(free.stats.peak_blob_sends > 2, "{:?}", free.stats);
    fleet.params.max_sends_per_blob = 2;
    fleet.params.fixed_in_flight = Some(3);
    let a = run_swarm(&fleet).unwrap();
    assert!(a.stats.peak_blob_sends <= 2, "{:?}", a.stats);
    assert!(a.completion.iter().all(Option::is_some));
    let s = &a.stats;
    assert!(close(s.sent_bytes, s.received_bytes));
    assert!(close(s.delivered_bytes + s.aborted_bytes, s.sent_bytes));
    assert_eq!(a, run_swarm(&fleet).unwrap(), "the same run again");
    let report = run(&fleet, RunOptions::default()).unwrap();
    let (max, t) = (report.times.max_s.unwrap(), report.bound_s);
    assert!(max >= t * (1.0 - 1e-9), "max {max} < bound {t}");
    fleet.params.max_sends_per_blob = 0;
    assert!(fleet.validate().is_err());
}

#[test]
fn passing_pieces_on_while_they_arrive_spreads_them_sooner() {
    // 40 hosts pull 48 MiB cold: as the node does, a host offers a piece once its first batch
    // is in and passes it on as it arrives; the what-if without it (whole pieces only) is the
    // node before pieces protocol 2.
    let fleet = small(Scenario::Cold, 1);
    assert!(
        fleet.params.forward_arriving,
        "the node's behaviour is the default"
    );
    let with = run_swarm(&fleet).unwrap();
    let mut whole_only = fleet.clone();
    whole_only.params.forward_arriving = false;
    let without = run_swarm(&whole_only).unwrap();
    assert!(with.stats.arriving_offers > 0);
    assert_eq!(without.stats.arriving_offers, 0);
    let last = |o: &crate::swarm::SwarmOutcome| {
        o.completion
            .iter()
            .map(|c| c.expect("every host completes"))
            .fold(0.0, f64::max)
    };
    assert!(
        last(&with) < last(&without),
        "{} {}",
        last(&with),
        last(&without)
    );
    let half = |o: &crate::swarm::SwarmOutcome| o.stats.piece_spread_half_ms.unwrap();
    assert!(
        half(&with) < half(&without),
        "{} {}",
        half(&with),
        half(&without)
    );
    // Every copy passed on landed or was cut short (bytes_are_conserved checks the sums).
    assert_eq!(with.stats.abandoned, 0, "nothing fails in a cold pull");
}

#[test]
fn a_cancel_cuts_the_piece_being_sent_short() {
    // 40 hosts pull 48 MiB cold. The end game's duplicates are cancelled once one copy lands;
    // as the node's server does, the cancel stops the piece being sent, so less is wasted than
    // when every such piece crossed whole (the node before).
    let fleet = small(Scenario::Cold, 1);
    assert!(
        fleet.params.cancel_cuts_short,
        "the node's behaviour is the default"
    );
    let with = run_swarm(&fleet).unwrap();
    let mut whole = fleet.clone();
    whole.params.cancel_cuts_short = false;
    let without = run_swarm(&whole).unwrap();
    assert!(with.stats.cut_short > 0);
    assert_eq!(without.stats.cut_short, 0);
    // Duplicates delivered whole, plus what crossed of the pieces cut short.
    let spent = |o: &crate::swarm::SwarmOutcome| o.stats.wasted_bytes + o.stats.aborted_bytes;
    assert!(
        spent(&with) < spent(&without),
        "{} {}",
        spent(&with),
        spent(&without)
    );
    assert!(with.completion.iter().all(Option::is_some));
}

#[test]
fn a_replaced_session_finishes_the_piece_it_is_sending() {
    // 60 hosts in 20 sites pull 48 MiB; the rotation policy replaces hundreds of sessions (far
    // ones making room for near ones). As the node's driver does, such a session first
    // finishes the piece it is sending: far fewer bytes are cut off, and fewer copies passed
    // on from those pieces are abandoned, than when it closed at once (the node before).
    let fleet = small(Scenario::Edge20x50, 1);
    assert!(
        fleet.params.retire_gracefully,
        "the node's behaviour is the default"
    );
    let graceful = run_swarm(&fleet).unwrap();
    let mut abrupt = fleet.clone();
    abrupt.params.retire_gracefully = false;
    let cut = run_swarm(&abrupt).unwrap();
    assert!(graceful.stats.sessions_replaced > 100);
    assert!(graceful.stats.sessions_retired > 0);
    assert_eq!(cut.stats.sessions_retired, 0);
    assert!(
        graceful.stats.aborted_bytes * 10.0 < cut.stats.aborted_bytes,
        "{} {}",
        graceful.stats.aborted_bytes,
        cut.stats.aborted_bytes
    );
    assert!(graceful.stats.abandoned < cut.stats.abandoned);
    assert!(graceful.completion.iter().all(Option::is_some));
}

#[test]
fn lookup_hops_are_the_ceiling_of_log2() {
    use crate::net::lookup_hops;
    for (n, hops) in [
        (0, 1.0),
        (1, 1.0),
        (2, 2.0),
        (3, 2.0),
        (4, 3.0),
        (1023, 10.0),
        (1024, 11.0),
    ] {
        assert_eq!(lookup_hops(n), hops, "{n} nodes");
    }
    // 10,000 hosts: 14 hops, as the model says (simulations/README.md, *DHT*).
    assert_eq!(lookup_hops(10_000), 14.0);
    for n in 1..70_000usize {
        assert_eq!(lookup_hops(n), ((n + 1) as f64).log2().ceil(), "{n} nodes");
    }
}
