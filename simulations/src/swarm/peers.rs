//! The peer side of the swarm: provider lookups and announcements (the DHT), transfer sessions
//! with the node server's limits, and hosts leaving.
//!
//! A session is one stream from a downloader task to an uploader of the same layer. The
//! uploader serves each stream's requests in order, one piece at a time, with at most
//! `max_sends` pieces in flight over all its streams: a request reaching the front of its
//! stream beyond that, or arriving at a stream with `max_requests_per_stream` queued, is
//! answered Busy (the scheduler's `request_refused`); one for a piece already being sent to
//! `max_copies_per_piece` downloaders is answered PieceBusy (`piece_busy`). A cancel removes a queued request but
//! never cuts a piece short, as in the node.

use std::time::Duration;

use flotilla_protocol::piece::Bitfield;
use flotilla_protocol::site::{SITE_LOOKUP_LIMIT, label_rtt};

use super::{Ev, Nanos, State, Stream, Swarm, Tag};

impl Swarm<'_> {
    /// The stream task `t` downloads from host `peer` through, if the session is up.
    pub(super) fn stream_to(&self, t: u32, peer: u32) -> Option<u32> {
        let task = &self.tasks[t as usize];
        task.sessions
            .iter()
            .find(|&&(_, p)| p == peer)
            .map(|&(s, _)| s)
            .or_else(|| {
                task.retiring
                    .iter()
                    .find(|&&(_, p, _)| p == peer)
                    .map(|&(s, _, _)| s)
            })
    }

    /// Task `t` heard the answer to (or cancelled) its request for `piece` from `peer`: if that
    /// was the piece a retiring session waited for, the session closes now. Whether it was.
    pub(super) fn retired_answer(&mut self, t: u32, peer: u32, piece: u32) -> bool {
        let task = &mut self.tasks[t as usize];
        let Some(k) = task
            .retiring
            .iter()
            .position(|&(_, p, x)| p == peer && x == piece)
        else {
            return false;
        };
        let (stream, _, _) = task.retiring.swap_remove(k);
        self.close_stream(stream, true);
        true
    }

    /// The node's housekeeping tick (every `refresh`, at most 0.25 s apart): the swarm size goes to
    /// the scheduler, and a provider lookup starts if none is running and one is due — 0.25 s
    /// after the first, doubling up to `refresh` — together with a question to the gateway for
    /// its count of nodes pulling the layer (during the first six lookups, and later only once
    /// that count said the node is not alone), as `node/src/fetch/driver.rs` does.
    pub(super) fn tick(&mut self, t: u32) {
        let task = &self.tasks[t as usize];
        if task.state != State::Running {
            return;
        }
        let (host, blob) = (task.host, task.blob);
        let refresh = crate::net::nanos(self.fleet.params.refresh_s);
        let period = refresh.clamp(10_000_000, 250_000_000);
        self.push(self.now + period, Ev::Tick(t));
        let now = self.now;
        self.set_swarm_size(t);
        self.report_progress(t);
        self.share_near_nodes(t);
        // The rotation policy: the slowest session, if far behind, makes room for a spare.
        let at = self.at();
        let stuck = self.scheds[t as usize]
            .as_deref()
            .is_some_and(|s| s.have().iter_zeros().all(|p| s.availability(p) == 0));
        let task = &mut self.tasks[t as usize];
        let slow = task.rotation.as_deref_mut().and_then(|r| r.tick(at, stuck));
        if let Some(peer) = slow {
            self.replace_session(t, peer);
        }
        self.fill(t);
        // Short of sessions, look again every 0.25 s; else back off (see `lookup_due` in the
        // node's driver).
        let short = self.short_of_sessions(t);
        let task = &mut self.tasks[t as usize];
        let due = if short {
            250_000_000u64.min(refresh)
        } else {
            (250_000_000u64 << task.lookups.min(16)).min(refresh)
        };
        let early = task
            .rotation
            .as_deref_mut()
            .is_some_and(|r| !task.lookup_running && r.wants_lookup(at));
        let lookup = !task.lookup_running
            && (early
                || task
                    .last_lookup
                    .is_none_or(|at| now.saturating_sub(at) >= due));
        if lookup {
            self.start_lookup(t, host, blob, now);
        }
        self.drain(t);
    }

    /// Tells the rotation policy how far each session's piece in progress got (the node counts
    /// piece bytes as they stream in).
    fn report_progress(&mut self, t: u32) {
        if !self.labels {
            return;
        }
        let now = self.now;
        for k in 0..self.tasks[t as usize].sessions.len() {
            let stream = self.tasks[t as usize].sessions[k].0;
            let s = &self.streams[stream as usize];
            let Some(flow) = s.active else {
                continue;
            };
            let moved = self.net.engine.moved(flow, now);
            let new = (moved - s.reported).max(0.0);
            let peer = self.host_blob(s.up).0;
            self.streams[stream as usize].reported = moved;
            if let Some(r) = self.tasks[t as usize].rotation.as_deref_mut() {
                r.progress(peer, new as u64);
            }
        }
    }

    /// Hands the scheduler the members of its site known to download the layer (from lookups of
    /// the site key and Welcomes), as the node's driver does (`share_near_nodes`); only with
    /// site labels.
    fn share_near_nodes(&mut self, t: u32) {
        if !self.labels {
            return;
        }
        let Some(r) = self.tasks[t as usize].rotation.as_deref() else {
            return;
        };
        let near: Vec<u32> = r.near_providers().collect();
        if let Some(s) = self.scheds[t as usize].as_deref_mut() {
            s.set_near_nodes(near);
        }
    }

    /// The swarm size the node's driver hands its scheduler: the largest count heard, at
    /// least the sessions plus itself.
    fn set_swarm_size(&mut self, t: u32) {
        let task = &self.tasks[t as usize];
        let size = task.swarm_hint.max(task.sessions.len() as u64 + 1);
        if let Some(s) = self.scheds[t as usize].as_deref_mut() {
            s.set_swarm_size(size);
        }
    }

    fn start_lookup(&mut self, t: u32, host: u32, blob: u16, now: Nanos) {
        let task = &mut self.tasks[t as usize];
        task.lookup_running = true;
        task.last_lookup = Some(now);
        task.lookups = task.lookups.saturating_add(1);
        let ask_gateway = task.lookups <= 6 || task.swarm_hint > 1;
        let site = self.net.host_site[host as usize];
        self.push(now + self.lookup_time[usize::from(site)], Ev::LookupDone(t));
        if ask_gateway && self.origin.alive {
            // One HTTP round trip to the gateway (its first server answers).
            // Both figures as of the request, like the count (half a round trip early).
            let nodes = self.origin.demand[usize::from(blob)].total(now);
            let unsent = self.fleet.params.unsent_hint && !self.origin.sent_any[usize::from(blob)];
            let rtt = 2 * self.net.owd_origin(0, host);
            self.push(
                now + rtt,
                Ev::SwarmCount {
                    task: t,
                    nodes,
                    unsent,
                },
            );
        }
    }

    /// `peer` answered one of task `t`'s requests Busy: the rotation policy may replace it.
    pub(super) fn busy(&mut self, t: u32, peer: u32) {
        let at = self.at();
        let replace = self.tasks[t as usize]
            .rotation
            .as_deref_mut()
            .and_then(|r| r.refused(peer, at));
        if let Some(peer) = replace {
            self.replace_session(t, peer);
        }
    }

    /// Closes task `t`'s session to `peer` and opens one to a spare provider. As the node's
    /// driver does, the session first finishes the piece the peer is sending
    /// (`Scheduler::peer_retiring`: its other requests are cancelled) and closes when that
    /// piece's answer comes or the scheduler cancels it; without
    /// `Params::retire_gracefully` it closes at once, cutting that piece off.
    fn replace_session(&mut self, t: u32, peer: u32) {
        self.stats.sessions_replaced += 1;
        let now = self.at();
        let graceful = self.fleet.params.retire_gracefully;
        let kept = match self.sched(t) {
            Some(s) if graceful => s.peer_retiring(peer, now),
            Some(s) => {
                s.peer_removed(peer, now);
                None
            }
            None => None,
        };
        let task = &mut self.tasks[t as usize];
        if let Some(k) = task.sessions.iter().position(|&(_, p)| p == peer) {
            let (stream, _) = task.sessions.remove(k);
            match kept {
                Some(piece) => {
                    task.retiring.push((stream, peer, piece));
                    self.stats.sessions_retired += 1;
                }
                None => self.close_stream(stream, true),
            }
        } else if let Some(piece) = kept
            && let Some(s) = self.sched(t)
        {
            // No session to finish it on (cannot happen: the policy replaces open ones).
            s.request_failed(super::source(peer), piece, now);
        }
        self.fill(t);
    }

    /// Opens sessions to spare providers (chosen at random by the rotation policy) until the
    /// task has `max_peers`.
    fn fill(&mut self, t: u32) {
        let max_peers = self.fleet.params.max_peers;
        let host = self.host_blob(t).0;
        loop {
            let task = &mut self.tasks[t as usize];
            if task.state != State::Running
                || task.sessions.len() + task.connecting.len() >= max_peers
            {
                return;
            }
            let Some(p) = task.rotation.as_deref_mut().and_then(|r| r.take_spare()) else {
                return;
            };
            if task.connecting.contains(&p) || self.stream_to(t, p).is_some() {
                continue;
            }
            self.tasks[t as usize].connecting.push(p);
            // A connection handshake and the session's Hello/Welcome: two round trips.
            let at = self.now + 4 * self.net.owd_hosts(host, p);
            self.push(at, Ev::Open { task: t, peer: p });
        }
    }

    /// The node's cold-start rule: once the first lookup's sessions are settled, if none of
    /// them holds a piece (or none was found), the scheduler's origin grace ends.
    fn check_cold_start(&mut self, t: u32) {
        let task = &mut self.tasks[t as usize];
        if task.grace_checked
            || task.state != State::Running
            || task.lookups == 0
            || task.lookup_running
            || !task.connecting.is_empty()
        {
            return;
        }
        task.grace_checked = true;
        let now = Duration::from_nanos(self.now);
        if let Some(s) = self.scheds[t as usize].as_deref_mut() {
            let cold = s.have().iter_zeros().all(|p| s.availability(p) == 0);
            if cold {
                s.end_origin_grace(now);
            }
        }
    }

    /// The gateway's count of nodes pulling the layer arrived, and whether it had sent any of
    /// it yet.
    pub(super) fn swarm_count(&mut self, t: u32, nodes: u32, unsent: bool) {
        let task = &mut self.tasks[t as usize];
        if task.state == State::Running {
            task.swarm_hint = task.swarm_hint.max(u64::from(nodes));
            // The node hands it on at once: the origin rule needs it before the grace ends.
            self.set_swarm_size(t);
            let task = &mut self.tasks[t as usize];
            // A labelled host waits for its lookup all the same: it needs its site's members to
            // know which of them fetches a piece across the WAN.
            if unsent && !self.labels && !task.grace_checked {
                // Nobody holds a piece yet: the first lookup has nothing to find.
                task.grace_checked = true;
                let now = Duration::from_nanos(self.now);
                if let Some(s) = self.scheds[t as usize].as_deref_mut() {
                    s.end_origin_grace(now);
                }
            }
            self.drain(t);
        }
    }

    /// A lookup answered: learn the swarm size, open sessions to new providers.
    pub(super) fn lookup_done(&mut self, t: u32) {
        self.tasks[t as usize].lookup_running = false;
        if self.tasks[t as usize].state != State::Running {
            return;
        }
        let host = self.host_blob(t).0;
        let blob = usize::from(self.host_blob(t).1);
        let limit = self.fleet.params.lookup_limit;
        // The lookup's answer: up to `limit` random provider records other than our own.
        let mut found = std::mem::take(&mut self.scratch);
        found.clear();
        sample(
            &self.blobs[blob].providers,
            host,
            limit,
            &mut self.rng,
            &mut found,
        );
        // How many of `found`'s first entries the site key's lookup returned.
        let mut members = 0;
        if self.labels {
            // The lookup of the site key, run alongside: up to `SITE_LOOKUP_LIMIT` random
            // members of our site that announced the layer, near from now on and offered first.
            let site = usize::from(self.net.host_site[host as usize]);
            let roster = &self.blobs[blob].site_providers[site];
            let mut near = Vec::new();
            sample(roster, host, SITE_LOOKUP_LIMIT, &mut self.rng, &mut near);
            let task = &mut self.tasks[t as usize];
            if let Some(r) = task.rotation.as_deref_mut() {
                for &p in &near {
                    r.peer_rtt(p, label_rtt(true));
                }
            }
            members = near.len();
            for &p in &found {
                if !near[..members].contains(&p) {
                    near.push(p);
                }
            }
            found = near;
        }
        let task = &mut self.tasks[t as usize];
        task.swarm_hint = task.swarm_hint.max(found.len() as u64 + 1);
        task.providers_seen.answered(found.iter().copied());
        if let Some(r) = task.rotation.as_deref_mut() {
            r.offer(
                found
                    .iter()
                    .copied()
                    .filter(|p| !task.connecting.contains(p)),
            );
            // Members of our site come back even if replaced lately (`add_spare`): `offer`
            // keeps recently replaced providers out, and a small site has few members.
            for &p in &found[..members] {
                if !task.connecting.contains(&p) {
                    r.add_spare(p);
                }
            }
        }
        self.scratch = found;
        self.share_near_nodes(t);
        self.fill(t);
        // Short of sessions: look again soon (`Rotation::lookup_retry`, as the node's driver).
        let short = self.short_of_sessions(t);
        let task = &self.tasks[t as usize];
        if short && let Some(r) = task.rotation.as_deref() {
            let retry = crate::net::nanos(r.lookup_retry(task.lookups).as_secs_f64())
                .min(crate::net::nanos(self.fleet.params.refresh_s));
            self.push(self.now + retry, Ev::Relookup(t));
        }
        self.check_cold_start(t);
        self.drain(t);
    }

    /// A task still short of sessions after its last lookup looks again, unless a lookup is
    /// already running (the tick started one) or sessions came meanwhile.
    pub(super) fn relookup(&mut self, t: u32) {
        let task = &self.tasks[t as usize];
        if task.state != State::Running || task.lookup_running || !self.short_of_sessions(t) {
            return;
        }
        let (host, blob) = self.host_blob(t);
        self.start_lookup(t, host, blob, self.now);
    }

    /// Fewer sessions than `max_peers` while lookups still find new providers (the node's
    /// `Driver::short_of_sessions`).
    fn short_of_sessions(&self, t: u32) -> bool {
        let task = &self.tasks[t as usize];
        task.sessions.len() + task.connecting.len() < self.fleet.params.max_peers
            && !task.providers_seen.exhausted()
    }

    /// A session to host `peer` is up, unless it left, is full or no longer has the layer.
    pub(super) fn open(&mut self, t: u32, peer: u32) {
        let task = &mut self.tasks[t as usize];
        task.connecting.retain(|&p| p != peer);
        if task.state != State::Running {
            return;
        }
        let n_blobs = self.blobs.len() as u32;
        let up = peer * n_blobs + u32::from(task.blob);
        let pieces = self.blobs[usize::from(task.blob)].pieces;
        let ph = &self.hosts[peer as usize];
        let have = match self.tasks[up as usize].state {
            _ if !ph.alive
                || ph.streams_in >= self.fleet.params.max_streams
                || self.tasks[up as usize].subscribers.len()
                    >= usize::from(self.fleet.params.max_sessions_per_blob) =>
            {
                None
            }
            State::Done => Some(Bitfield::full(pieces)),
            State::Running => self.scheds[up as usize]
                .as_deref()
                .map(|s| s.have().clone()),
            State::Waiting | State::Gone => None,
        };
        let Some(have) = have else {
            self.stats.sessions_failed += 1;
            // The node tries a spare in its place.
            self.fill(t);
            self.check_cold_start(t);
            self.drain(t);
            return;
        };
        let stream = self.streams.len() as u32;
        let slot = self.tasks[up as usize].subscribers.len() as u32;
        self.streams.push(Stream {
            down: t,
            up,
            queue: Default::default(),
            active: None,
            slot,
            reported: 0.0,
            parked: false,
            forwarding: false,
            forwarding_piece: 0,
            active_piece: 0,
        });
        self.stream_open.push(true);
        self.tasks[up as usize]
            .subscribers
            .push(super::Sub { stream, down: t });
        self.tasks[t as usize].sessions.push((stream, peer));
        self.hosts[peer as usize].streams_in += 1;
        self.stats.sessions_opened += 1;
        let now = self.at();
        // With labels, the Welcome tells the uploader's site.
        let labels = self.labels;
        let host = self.host_blob(t).0;
        let rtt = label_rtt(self.net.host_site[host as usize] == self.net.host_site[peer as usize]);
        let added = self.sched(t).is_some_and(|s| {
            if labels {
                s.peer_rtt(peer, rtt, now);
            }
            s.peer_added(peer, have, now)
        });
        if added {
            if let Some(r) = self.tasks[t as usize].rotation.as_deref_mut() {
                if labels {
                    r.peer_rtt(peer, rtt);
                }
                r.opened(peer, now);
            }
            self.share_near_nodes(t);
        } else {
            self.tasks[t as usize]
                .sessions
                .retain(|&(s, _)| s != stream);
            self.close_stream(stream, true);
        }
        self.check_cold_start(t);
        self.drain(t);
    }

    pub(super) fn announce(&mut self, t: u32) {
        let task = &self.tasks[t as usize];
        if matches!(task.state, State::Running | State::Done)
            && self.hosts[task.host as usize].alive
        {
            let blob = &mut self.blobs[usize::from(task.blob)];
            blob.providers.push(task.host);
            if self.labels {
                let site = usize::from(self.net.host_site[task.host as usize]);
                blob.site_providers[site].push(task.host);
            }
        }
    }

    fn answer(&mut self, stream: u32, piece: u32, refused: bool) {
        let s = &self.streams[stream as usize];
        let up_host = self.host_blob(s.up).0;
        let down = s.down;
        let owd = self.net.owd_hosts(up_host, self.host_blob(down).0);
        let ev = if refused {
            self.stats.busy_refusals += 1;
            Ev::Refused {
                task: down,
                src: up_host,
                piece,
            }
        } else {
            Ev::Failed {
                task: down,
                src: up_host,
                piece,
            }
        };
        self.push(self.now + owd, ev);
    }

    pub(super) fn peer_request(&mut self, stream: u32, piece: u32) {
        if !self.stream_open[stream as usize] {
            return;
        }
        let s = &mut self.streams[stream as usize];
        if s.queue.len() >= self.fleet.params.max_requests_per_stream {
            self.answer(stream, piece, true);
            return;
        }
        s.queue.push_back(piece);
        if s.active.is_none() && !s.parked {
            self.start_next(stream);
        }
    }

    /// A Cancel reached the uploader: a queued request is dropped; the piece being sent (or
    /// passed on, waiting for the uploader's own copy) is cut short, as the node's server does
    /// at its next part (SPEC §5.2), and the stream goes on with its next request.
    pub(super) fn peer_cancel(&mut self, stream: u32, piece: u32) {
        if !self.stream_open[stream as usize] {
            return;
        }
        let s = &mut self.streams[stream as usize];
        s.queue.retain(|&p| p != piece);
        let sending = (s.active.is_some() && s.active_piece == piece)
            || (s.forwarding && s.forwarding_piece == piece);
        if !sending || !self.fleet.params.cancel_cuts_short {
            return;
        }
        self.stats.cut_short += 1;
        self.abort_stream_flow(stream);
        let s = &self.streams[stream as usize];
        if !s.parked && s.active.is_none() && !s.forwarding {
            self.start_next(stream);
        }
    }

    /// Serves the stream's next request: sends it, or answers Busy or Missing and moves on.
    pub(super) fn start_next(&mut self, stream: u32) {
        loop {
            if !self.stream_open[stream as usize] {
                return;
            }
            let s = &mut self.streams[stream as usize];
            if s.active.is_some() || s.forwarding {
                return;
            }
            let Some(piece) = s.queue.pop_front() else {
                return;
            };
            let (up, down) = (s.up, s.down);
            // A running task has a scheduler; otherwise only a finished one holds the piece.
            let held = match self.scheds[up as usize].as_deref() {
                Some(x) => x.have().get(piece),
                None => self.tasks[up as usize].state == State::Done,
            };
            let up_host = self.host_blob(up).0;
            let follow = !held && self.serves_arriving(up, piece) == Some(true);
            if !held && !follow {
                if self.serves_arriving(up, piece) == Some(false) {
                    // Offered while arriving, and that copy was lost.
                    self.stats.piece_busy += 1;
                    self.piece_busy_on(stream, piece);
                } else {
                    self.answer(stream, piece, false);
                }
                continue;
            }
            let k = self.fleet.params.max_sends_per_blob;
            let max_sends = usize::from(self.fleet.params.max_sends);
            let line = usize::from(self.fleet.params.max_waiting_per_blob);
            let b = &mut self.blob_slots[up as usize];
            let h = &mut self.hosts[up_host as usize];
            if b.sends >= k {
                // It would wait: it may if the host's sends and this line stay within
                // `max_sends` and the line is shorter than `max_waiting_per_blob`.
                if usize::from(h.sends) + b.waiting.len() >= max_sends || b.waiting.len() >= line {
                    self.answer(stream, piece, true);
                    continue;
                }
                b.waiting.push_back(stream);
                let s = &mut self.streams[stream as usize];
                s.queue.push_front(piece);
                s.parked = true;
                return;
            }
            if usize::from(h.sends) >= max_sends {
                self.answer(stream, piece, true);
                continue;
            }
            // As the node's server: a piece already going to enough downloaders is answered
            // PieceBusy, and the stream moves on to its next request.
            let copy = h.copies.iter().position(|&(t, p, _)| t == up && p == piece);
            if copy.map_or(0, |k| h.copies[k].2) >= self.fleet.params.max_copies_per_piece {
                self.stats.piece_busy += 1;
                self.piece_busy_on(stream, piece);
                continue;
            }
            match copy {
                Some(k) => h.copies[k].2 += 1,
                None => h.copies.push((up, piece, 1)),
            }
            h.sends += 1;
            let b = &mut self.blob_slots[up as usize];
            b.sends += 1;
            self.stats.peak_blob_sends = self.stats.peak_blob_sends.max(b.sends);
            let down_host = self.host_blob(down).0;
            let len = self.blobs[usize::from(self.host_blob(down).1)].piece_len(piece);
            let flow = self.net.start_peer(
                up_host,
                down_host,
                len,
                Tag::Peer { stream, piece },
                self.now,
            );
            let s = &mut self.streams[stream as usize];
            s.active = Some(flow);
            s.active_piece = piece;
            s.reported = 0.0;
            if follow {
                self.follow(up, piece, stream, flow);
            }
            let owd = self.net.owd_hosts(up_host, down_host);
            self.claim(down, piece, flow, owd);
            return;
        }
    }

    /// A piece left the uploader completely: it reaches the downloader one delay later.
    pub(super) fn peer_sent(&mut self, stream: u32, piece: u32) {
        let s = &mut self.streams[stream as usize];
        let flow = s.active.take();
        let (up, down) = (s.up, s.down);
        let reported = std::mem::take(&mut s.reported);
        let up_host = self.host_blob(up).0;
        let len = self.blobs[usize::from(self.host_blob(down).1)].piece_len(piece);
        let rest = (len - reported).max(0.0);
        if let Some(r) = self.tasks[down as usize].rotation.as_deref_mut() {
            r.progress(up_host, rest as u64);
        }
        if let Some(flow) = flow {
            self.claim_sent(down, piece, flow);
            if self.follower_sent(up, piece, stream, flow) {
                // Passed on while arriving: it lands with the uploader's own copy.
                return;
            }
        }
        self.free_send(up, piece);
        let owd = self.net.owd_hosts(up_host, self.host_blob(down).0);
        self.push(
            self.now + owd,
            Ev::Deliver {
                task: down,
                src: up_host,
                piece,
            },
        );
        self.next_after_send(stream, up);
    }

    /// A send of `piece` by task `up` ended: its host's and its layer's slots free.
    pub(super) fn free_send(&mut self, up: u32, piece: u32) {
        let up_host = self.host_blob(up).0;
        let h = &mut self.hosts[up_host as usize];
        h.sends = h.sends.saturating_sub(1);
        h.copy_done(up, piece);
        let b = &mut self.blob_slots[up as usize];
        b.sends = b.sends.saturating_sub(1);
    }

    /// After a send on `stream` ended: its next request competes for the slot, and waiting
    /// streams of uploader `up` get the free ones.
    pub(super) fn next_after_send(&mut self, stream: u32, up: u32) {
        if self.stream_open[stream as usize] {
            let queued = !self.streams[stream as usize].queue.is_empty();
            let b = &mut self.blob_slots[up as usize];
            // Those that waited for a slot compete for it first.
            if queued && !b.waiting.is_empty() {
                b.waiting.push_back(stream);
                self.streams[stream as usize].parked = true;
            } else {
                self.start_next(stream);
            }
        }
        self.wake(up);
    }

    /// Gives task `t`'s free slots to waiting streams, the one
    /// whose next piece `t`'s scheduler counts rarest first (first come among equals, and for
    /// a task that completed).
    fn wake(&mut self, t: u32) {
        let k = self.fleet.params.max_sends_per_blob;
        loop {
            let b = &self.blob_slots[t as usize];
            if b.sends >= k || b.waiting.is_empty() {
                return;
            }
            let mut best = (u16::MAX, 0);
            if let Some(sched) = self.scheds[t as usize].as_deref() {
                for (i, &st) in b.waiting.iter().enumerate() {
                    if let Some(&p) = self.streams[st as usize].queue.front() {
                        best = best.min((sched.availability(p), i));
                    }
                }
            }
            let Some(stream) = self.blob_slots[t as usize].waiting.remove(best.1) else {
                return;
            };
            self.streams[stream as usize].parked = false;
            self.start_next(stream);
        }
    }

    /// Takes a stream out of its uploader's waiting list.
    fn unpark(&mut self, stream: u32) {
        let s = &mut self.streams[stream as usize];
        if std::mem::take(&mut s.parked) {
            let up = s.up;
            self.blob_slots[up as usize]
                .waiting
                .retain(|&x| x != stream);
        }
    }

    /// Closes a stream on both sides (the downloader's `sessions` is the caller's business).
    /// A piece being sent runs to its end unless `abort`.
    pub(super) fn close_stream(&mut self, stream: u32, abort: bool) {
        if !self.stream_open[stream as usize] {
            return;
        }
        self.stream_open[stream as usize] = false;
        self.unpark(stream);
        let s = &mut self.streams[stream as usize];
        s.queue = Default::default();
        let (up, slot) = (s.up, s.slot as usize);
        let subs = &mut self.tasks[up as usize].subscribers;
        if subs.get(slot).is_some_and(|x| x.stream == stream) {
            subs.swap_remove(slot);
            if let Some(moved) = subs.get(slot) {
                self.streams[moved.stream as usize].slot = slot as u32;
            }
        }
        let up_host = self.host_blob(up).0;
        let h = &mut self.hosts[up_host as usize];
        h.streams_in = h.streams_in.saturating_sub(1);
        if abort {
            self.abort_stream_flow(stream);
        }
    }

    pub(super) fn abort_stream_flow(&mut self, stream: u32) {
        let Some(flow) = self.streams[stream as usize].active.take() else {
            self.drop_follower(stream);
            return;
        };
        let (up, down) = {
            let s = &self.streams[stream as usize];
            (s.up, s.down)
        };
        let up_host = self.tasks[up as usize].host;
        let h = &mut self.hosts[up_host as usize];
        h.sends = h.sends.saturating_sub(1);
        let b = &mut self.blob_slots[up as usize];
        b.sends = b.sends.saturating_sub(1);
        if let Some(ended) = self.net.engine.abort(flow, self.now) {
            if let Tag::Peer { piece, .. } = ended.tag {
                self.hosts[up_host as usize].copy_done(up, piece);
                self.unfollow(up, piece, stream);
                self.claim_lost(down, piece, flow);
            }
            self.stats.aborted_bytes += ended.bytes;
            self.account_wan(ended.tag, ended.bytes);
        }
        if self.hosts[up_host as usize].alive {
            self.wake(up);
        }
    }

    /// The downloader noticed that the uploader `peer` is gone.
    pub(super) fn peer_gone(&mut self, t: u32, peer: u32) {
        let task = &mut self.tasks[t as usize];
        task.sessions.retain(|&(_, p)| p != peer);
        task.retiring.retain(|&(_, p, _)| p != peer);
        if let Some(r) = self.tasks[t as usize].rotation.as_deref_mut() {
            r.closed(peer);
        }
        let now = self.at();
        if let Some(s) = self.sched(t) {
            s.peer_removed(peer, now);
            self.drain(t);
        }
    }

    /// Host `h` leaves for good: its uploads and downloads stop, its downloaders notice one
    /// delay later, its provider records stay behind (stale) in the DHT.
    pub(super) fn leave(&mut self, h: u32) {
        let host = &mut self.hosts[h as usize];
        if !host.alive {
            return;
        }
        host.alive = false;
        host.left = true;
        if host.done_at.is_none() {
            self.stats.left_early += 1;
        }
        let n_blobs = self.blobs.len() as u32;
        for b in 0..n_blobs {
            let t = h * n_blobs + b;
            let subs = std::mem::take(&mut self.tasks[t as usize].subscribers);
            for sub in subs {
                let s = sub.stream;
                self.unpark(s);
                self.abort_stream_flow(s);
                self.stream_open[s as usize] = false;
                let stream = &mut self.streams[s as usize];
                stream.queue = Default::default();
                let down = stream.down;
                let owd = self.net.owd_hosts(h, self.host_blob(down).0);
                self.push(
                    self.now + owd,
                    Ev::PeerGone {
                        task: down,
                        peer: h,
                    },
                );
            }
            let sessions = std::mem::take(&mut self.tasks[t as usize].sessions);
            let retiring = std::mem::take(&mut self.tasks[t as usize].retiring);
            for s in sessions
                .iter()
                .map(|&(s, _)| s)
                .chain(retiring.iter().map(|r| r.0))
            {
                self.close_stream(s, true);
            }
            let keys: Vec<(u32, u32)> = self
                .origin
                .active
                .range((t, 0)..=(t, u32::MAX))
                .map(|(&k, _)| k)
                .collect();
            for (task, piece) in keys {
                self.abort_origin(task, piece);
            }
            self.scheds[t as usize] = None;
            self.timers[t as usize] = None;
            let task = &mut self.tasks[t as usize];
            task.rotation = None;
            task.connecting.clear();
            task.state = State::Gone;
        }
        self.hosts[h as usize].streams_in = 0;
    }
}

/// A lookup's answer from a key's provider records: up to `limit` random ones other than
/// `host`'s own, into `out` (all of them, shuffled, when there are few).
fn sample(
    providers: &[u32],
    host: u32,
    limit: usize,
    rng: &mut crate::rng::Rng,
    out: &mut Vec<u32>,
) {
    if providers.len() <= limit + 1 {
        out.extend(providers.iter().copied().filter(|&p| p != host));
        for i in (1..out.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            out.swap(i, j);
        }
    } else {
        let mut tries = limit * 4;
        while out.len() < limit && tries > 0 {
            tries -= 1;
            let p = providers[rng.below(providers.len() as u64) as usize];
            if p != host && !out.contains(&p) {
                out.push(p);
            }
        }
    }
}
