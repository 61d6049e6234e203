//! Pieces arriving: a delivered piece goes to the receiver's scheduler, becomes a `have` for
//! every session that subscribes to the receiver (one event per destination site, fanned out
//! when it fires), starts the receiver's announcement with its first piece, and may complete
//! the layer, which closes the receiver's download sessions and drops its scheduler.

use super::{ALL_SITES, Ev, State, Swarm, Tell, source};

impl Swarm<'_> {
    pub(super) fn deliver(&mut self, t: u32, src: u32, piece: u32) {
        let blob = self.host_blob(t).1;
        let len = self.blobs[usize::from(blob)].piece_len(piece);
        self.stats.delivered_bytes += len;
        let now = self.at();
        let Some(sched) = self.sched(t) else {
            self.stats.wasted_bytes += len;
            return;
        };
        let new = !sched.have().get(piece);
        sched.piece_received(source(src), piece, now);
        self.retired_answer(t, src, piece);
        if src != super::ORIGIN
            && let Some(r) = self.tasks[t as usize].rotation.as_deref_mut()
        {
            r.delivered(src);
        }
        if !new {
            self.stats.wasted_bytes += len;
            self.drain(t);
            return;
        }
        let streaming = self.fleet.params.streaming;
        let task = &mut self.tasks[t as usize];
        task.held += 1;
        let first = task.held == 1;
        if streaming
            && piece == task.read_pos
            && let Some(s) = self.scheds[t as usize].as_deref_mut()
        {
            let next = s.have().next_zero(piece).unwrap_or(s.have().len());
            task.read_pos = next;
            s.set_read_position(next);
        }
        if first && !self.fleet.params.announce_at_start {
            let site = self.net.host_site[task.host as usize];
            let at = self.now + self.announce_time[usize::from(site)];
            self.push(at, Ev::Announce(t));
        }
        self.arrival_done(t, piece);
        self.broadcast(t, piece, Tell::Have);
        let hosts = self.hosts.len() as u64;
        let b = &mut self.blobs[usize::from(blob)];
        if let Some(sp) = b.spread.get_mut(piece as usize) {
            sp.holders += 1;
            let held = u64::from(sp.holders);
            if held == 1 {
                sp.first = self.now;
            }
            // Half and 99 % of the fleet's hosts, rounded up (every host pulls every layer).
            if sp.half.is_none() && 2 * held >= hosts {
                sp.half = Some(self.now);
            }
            if sp.most.is_none() && 100 * held >= 99 * hosts {
                sp.most = Some(self.now);
            }
        }
        if b.copies.set(piece) && self.fleet.params.origin_leaves && self.origin.alive {
            let all = self.blobs.iter().all(|b| b.copies.is_complete());
            if all && self.origin.gone_at.is_none() {
                self.origin.gone_at = Some(self.now);
                self.push(self.now, Ev::OriginGone);
            }
        }
        self.drain(t);
    }

    /// Tells every subscriber of task `t` about `piece`, one event per site.
    pub(super) fn broadcast(&mut self, t: u32, piece: u32, tell: Tell) {
        let task = &self.tasks[t as usize];
        if task.subscribers.is_empty() {
            return;
        }
        let from = self.net.host_site[task.host as usize];
        if self.single_site {
            let at = self.now + self.net.owd_sites(from, from);
            self.push(at, tell_event(t, piece, ALL_SITES, tell));
            return;
        }
        let mut sites: Vec<u16> = task
            .subscribers
            .iter()
            .map(|sub| self.net.host_site[self.host_blob(sub.down).0 as usize])
            .collect();
        sites.sort_unstable();
        sites.dedup();
        for site in sites {
            let at = self.now + self.net.owd_sites(from, site);
            self.push(at, tell_event(t, piece, site, tell));
        }
    }

    /// Hands a `have` to the subscribers of task `t` in `site`. This loop is most of a large
    /// fleet's cost, and most of that is waiting for memory (each subscriber's scheduler is
    /// somewhere else in a few GiB), so the subscribers' schedulers are first touched all
    /// at once — independent loads the CPU overlaps — then what `peer_have` reads of each
    /// ([`Scheduler::warm_have`](flotilla_protocol::scheduler::Scheduler::warm_have)), and
    /// only then used one after the other.
    pub(super) fn have(&mut self, t: u32, piece: u32, site: u16, tell: Tell) {
        let (host, _) = self.host_blob(t);
        if !self.hosts[host as usize].alive {
            return;
        }
        let mut subs = std::mem::take(&mut self.sub_scratch);
        subs.clear();
        subs.extend_from_slice(&self.tasks[t as usize].subscribers);
        let mut warm = 0usize;
        for sub in &subs {
            if let Some(s) = self.scheds[sub.down as usize].as_deref() {
                warm ^= s.peer_count() ^ s.have().len() as usize;
            }
        }
        // Then what their `peer_have` reads, which the first pass found the addresses of.
        for sub in &subs {
            if let Some(s) = self.scheds[sub.down as usize].as_deref() {
                warm ^= s.warm_have(host, piece);
            }
        }
        std::hint::black_box(warm);
        let now = self.at();
        for sub in &subs {
            if !self.stream_open[sub.stream as usize] {
                continue;
            }
            let down = sub.down;
            if site != ALL_SITES {
                let (down_host, _) = self.host_blob(down);
                if self.net.host_site[down_host as usize] != site {
                    continue;
                }
            }
            if let Some(sched) = self.sched(down) {
                match tell {
                    Tell::Have => sched.peer_have(host, piece, now),
                    Tell::Arriving => sched.peer_arriving(host, piece, now),
                    Tell::Withdrawn => sched.peer_withdrew(host, piece, now),
                }
                self.drain(down);
            }
        }
        self.sub_scratch = subs;
    }

    /// The task's layer is complete: record it, close its download sessions, drop the
    /// scheduler (the host keeps serving).
    pub(super) fn complete(&mut self, t: u32) {
        let now = self.now;
        let task = &mut self.tasks[t as usize];
        task.state = State::Done;
        task.rotation = None;
        self.scheds[t as usize] = None;
        self.timers[t as usize] = None;
        let host = task.host;
        let sessions = std::mem::take(&mut task.sessions);
        let retiring = std::mem::take(&mut task.retiring);
        for s in sessions
            .iter()
            .map(|&(s, _)| s)
            .chain(retiring.iter().map(|r| r.0))
        {
            self.close_stream(s, false);
        }
        let n_blobs = self.blobs.len();
        let h = &mut self.hosts[host as usize];
        h.done_tasks += 1;
        if h.done_tasks == n_blobs {
            h.done_at = Some(now);
        }
    }
}

/// The event that tells subscribers in `site` about `piece` at task `t`.
fn tell_event(task: u32, piece: u32, site: u16, tell: Tell) -> Ev {
    match tell {
        Tell::Have => Ev::Have { task, piece, site },
        Tell::Arriving => Ev::Arriving { task, piece, site },
        Tell::Withdrawn => Ev::Withdrawn { task, piece, site },
    }
}
