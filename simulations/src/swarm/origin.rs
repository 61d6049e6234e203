//! The origin side of the swarm: the gateway's HTTP `Range` GETs. Pieces are spread over the
//! origin servers; a server answers requests one after the other at `origin_rps` (a request
//! waits in its accept queue until then), and every transfer it has accepted runs at once,
//! sharing its upload. With a dedup window the origin refuses a piece it is sending or sent that
//! recently, which the scheduler hears as `request_refused`; a cancel drops a queued request or
//! aborts the transfer (the HTTP request is dropped), and an aborted piece counts as sent for the
//! window. With `Params::origin_max_sends` a server runs at most that many sends at once and
//! refuses requests it answers beyond them, the same way — or, with
//! `Params::origin_queue_excess`, holds them (first come, first served) until a send ends.

use flotilla_protocol::send_limit;

use super::{Ev, ORIGIN, State, Swarm, Tag};

impl Swarm<'_> {
    /// A request reaches the origin server's accept queue.
    pub(super) fn origin_arrive(&mut self, t: u32, piece: u32) {
        self.origin.requests += 1;
        let server = self.server(self.host_blob(t).1, piece);
        let free = &mut self.origin.next_free[server];
        let at = self.now.max(*free);
        *free = at + self.origin.service;
        self.origin.queued.insert((t, piece));
        self.push(at, Ev::OriginAdmit { task: t, piece });
    }

    /// The server answers a request: refuses it, fails it (gone), parks it (at its send cap,
    /// with `origin_queue_excess`) or starts the transfer.
    pub(super) fn origin_admit(&mut self, t: u32, asked: u32) {
        if !self.origin.queued.remove(&(t, asked)) {
            // Cancelled while it waited.
            self.origin.alternatives.remove(&(t, asked));
            return;
        }
        let alternatives = self.origin.alternatives.remove(&(t, asked));
        let mut piece = asked;
        // Taken off the send queue: the dedup window was checked (and claimed) when it parked.
        let unparked = self.origin.unparked.remove(&(t, piece));
        let task = &self.tasks[t as usize];
        let (host, blob) = (task.host, task.blob);
        let server = self.server(blob, piece);
        if task.state != State::Running {
            if unparked {
                self.origin.refuse_until[usize::from(blob)][piece as usize] = self.now;
                self.origin_unpark(server);
            }
            return;
        }
        let back = self.now + self.net.owd_origin(server, host);
        if !self.origin.alive {
            let ev = Ev::Failed {
                task: t,
                src: ORIGIN,
                piece,
            };
            self.push(back, ev);
            return;
        }
        // A repeat of a request still being served takes over its send slot.
        let repeat = self.origin.active.contains_key(&(t, piece));
        let full =
            !repeat
                && self.fleet.params.origin_max_sends.is_some_and(|most| {
                    self.origin.sending[server] >= self.origin_limit(server, most)
                });
        let dedup = self.fleet.params.origin_dedup_s.is_some();
        let mut recent = !unparked
            && dedup
            && self.now < self.origin.refuse_until[usize::from(blob)][piece as usize];
        if recent && !repeat {
            // SPEC §3.7: the first alternative this server holds and has not sent lately.
            let now = self.now;
            let found = alternatives.iter().flatten().copied().find(|&x| {
                self.server(blob, x) == server
                    && now >= self.origin.refuse_until[usize::from(blob)][x as usize]
                    && !self.origin.active.contains_key(&(t, x))
            });
            if let Some(x) = found {
                piece = x;
                recent = false;
                self.origin.substitutions += 1;
                self.origin.substituted.insert((t, asked), x);
                self.push(
                    back,
                    Ev::OriginSubst {
                        task: t,
                        asked,
                        got: x,
                    },
                );
            }
        }
        let until = &mut self.origin.refuse_until[usize::from(blob)][piece as usize];
        if full && !recent && self.fleet.params.origin_queue_excess {
            if dedup {
                *until = u64::MAX;
            }
            self.origin.parked.insert((t, piece));
            self.origin.waiting[server].push_back((t, piece));
            self.arm_origin_period(server);
            return;
        }
        if recent || full {
            self.origin.refusals += 1;
            if full && !recent {
                self.origin.cap_refusals += 1;
            }
            let ev = Ev::Refused {
                task: t,
                src: ORIGIN,
                piece,
            };
            self.push(back, ev);
            return;
        }
        if dedup {
            *until = u64::MAX;
        }
        let len = self.blobs[usize::from(blob)].piece_len(piece);
        self.origin.sent_any[usize::from(blob)] = true;
        let flow =
            self.net
                .start_origin(server, host, len, Tag::Origin { task: t, piece }, self.now);
        if let Some(old) = self.origin.active.insert((t, piece), flow) {
            // A repeat of a request still being served (only without dedup): the newer wins.
            if let Some(ended) = self.net.engine.abort(old, self.now) {
                self.stats.aborted_bytes += ended.bytes;
                self.account_wan(ended.tag, ended.bytes);
            }
            self.claim_lost(t, piece, old);
        } else {
            let sending = &mut self.origin.sending[server];
            *sending += 1;
            self.origin.peak_sends = self.origin.peak_sends.max(*sending);
            self.arm_origin_period(server);
        }
        let owd = self.net.owd_origin(server, host);
        self.claim(t, piece, flow, owd);
    }

    /// Sends `server` may run at once, of at most `most`.
    fn origin_limit(&self, server: usize, most: usize) -> usize {
        if self.fleet.params.origin_adaptive_sends {
            self.origin.limit[server].limit()
        } else {
            most
        }
    }

    /// Starts measuring a period of `server`'s sends, unless one runs or its limit is fixed.
    fn arm_origin_period(&mut self, server: usize) {
        let p = &self.fleet.params;
        if !p.origin_adaptive_sends || p.origin_max_sends.is_none() {
            return;
        }
        if !std::mem::replace(&mut self.origin.period_armed[server], true) {
            self.origin.period_mark[server] = self.origin_sent_bytes(server);
            let period = crate::net::nanos(send_limit::PERIOD.as_secs_f64());
            self.push(self.now + period, Ev::OriginPeriod(server as u32));
        }
    }

    /// Bytes `server` has sent so far, of ended and running transfers.
    fn origin_sent_bytes(&self, server: usize) -> f64 {
        let running: f64 = self
            .origin
            .active
            .iter()
            .filter(|&(&(t, piece), _)| self.server(self.host_blob(t).1, piece) == server)
            .map(|(_, &flow)| self.net.engine.moved(flow, self.now))
            .sum();
        self.net.origin_bytes_of(server) + running
    }

    /// A period of `server`'s sends ended: its limit is reconsidered from the rate it sent at,
    /// as the gateway does (`flotilla_protocol::send_limit`), and requests waiting get the
    /// slots it grew by.
    pub(super) fn origin_period(&mut self, server: usize) {
        self.origin.period_armed[server] = false;
        let sent = self.origin_sent_bytes(server) - self.origin.period_mark[server];
        let rate = sent / send_limit::PERIOD.as_secs_f64();
        let parked = &self.origin.parked;
        let waiting = self.origin.waiting[server]
            .iter()
            .any(|k| parked.contains(k));
        let in_use = self.origin.sending[server];
        let before = self.origin.limit[server].limit();
        let after = self.origin.limit[server].period_end(rate, waiting, in_use);
        for _ in before..after {
            self.origin_unpark(server);
        }
        if waiting || in_use > 0 {
            self.arm_origin_period(server);
        }
    }

    /// A send of `piece` to task `t` stopped: its server has one more slot (not handed on
    /// while the server is at or above its limit, which may have fallen since the slot was
    /// taken: the oldest request keeps its place, as at the gateway).
    fn origin_slot_freed(&mut self, t: u32, piece: u32) {
        let server = self.server(self.host_blob(t).1, piece);
        self.origin.sending[server] -= 1;
        let most = self.fleet.params.origin_max_sends.unwrap_or(usize::MAX);
        if self.origin.sending[server] < self.origin_limit(server, most) {
            self.origin_unpark(server);
        }
    }

    /// Answers the oldest request waiting for a send slot of `server`, if any.
    fn origin_unpark(&mut self, server: usize) {
        while let Some(key) = self.origin.waiting[server].pop_front() {
            if self.origin.parked.remove(&key) {
                self.origin.queued.insert(key);
                self.origin.unparked.insert(key);
                let (task, piece) = key;
                self.push(self.now, Ev::OriginAdmit { task, piece });
                return;
            }
        }
    }

    /// Starts the refusal window of a piece the origin finished (or stopped) sending.
    fn origin_window(&mut self, t: u32, piece: u32) {
        if let Some(window) = self.fleet.params.origin_dedup_s {
            let blob = usize::from(self.host_blob(t).1);
            self.origin.refuse_until[blob][piece as usize] = self.now + crate::net::nanos(window);
        }
    }

    pub(super) fn origin_cancel(&mut self, t: u32, piece: u32) {
        // Dropping the request stops whatever the origin answered it with.
        let piece = self.origin.substituted.remove(&(t, piece)).unwrap_or(piece);
        if self.origin.queued.remove(&(t, piece)) {
            self.origin.alternatives.remove(&(t, piece));
            if self.origin.unparked.remove(&(t, piece)) {
                // Its send slot goes to the next in line; nothing was sent.
                let blob = self.host_blob(t).1;
                self.origin.refuse_until[usize::from(blob)][piece as usize] = self.now;
                self.origin_unpark(self.server(blob, piece));
            }
        } else if self.origin.parked.remove(&(t, piece)) {
            let blob = usize::from(self.host_blob(t).1);
            self.origin.refuse_until[blob][piece as usize] = self.now;
        } else {
            self.abort_origin(t, piece);
        }
    }

    /// Stops an origin transfer early; the bytes sent so far count.
    pub(super) fn abort_origin(&mut self, t: u32, piece: u32) -> bool {
        let Some(flow) = self.origin.active.remove(&(t, piece)) else {
            return false;
        };
        self.origin_slot_freed(t, piece);
        if let Some(ended) = self.net.engine.abort(flow, self.now) {
            self.stats.aborted_bytes += ended.bytes;
            self.account_wan(ended.tag, ended.bytes);
        }
        self.claim_lost(t, piece, flow);
        self.origin_window(t, piece);
        true
    }

    /// An origin transfer ended: the piece reaches the host one delay later.
    pub(super) fn origin_sent(&mut self, t: u32, piece: u32) {
        if let Some(flow) = self.origin.active.remove(&(t, piece)) {
            self.origin_slot_freed(t, piece);
            self.claim_sent(t, piece, flow);
        }
        self.origin_window(t, piece);
        let task = &self.tasks[t as usize];
        let sent = &mut self.origin.sent_once[usize::from(task.blob)][piece as usize];
        if !*sent {
            *sent = true;
            self.origin.unsent -= 1;
            let now = crate::net::secs(self.now);
            self.stats.origin_first_piece_s.get_or_insert(now);
            if self.origin.unsent == 0 {
                self.stats.origin_all_pieces_s = Some(now);
            }
        }
        let server = self.server(task.blob, piece);
        let at = self.now + self.net.owd_origin(server, task.host);
        self.push(
            at,
            Ev::Deliver {
                task: t,
                src: ORIGIN,
                piece,
            },
        );
    }

    /// The gateway leaves: its transfers stop and their requests fail; later requests fail too.
    pub(super) fn origin_gone(&mut self) {
        self.origin.alive = false;
        // Requests waiting for a send slot are answered now, and fail.
        for server in 0..self.origin.waiting.len() {
            while !self.origin.waiting[server].is_empty() {
                self.origin_unpark(server);
            }
        }
        let keys: Vec<(u32, u32)> = self.origin.active.keys().copied().collect();
        for (t, piece) in keys {
            if self.abort_origin(t, piece) {
                let task = &self.tasks[t as usize];
                let server = self.server(task.blob, piece);
                let at = self.now + self.net.owd_origin(server, task.host);
                self.push(
                    at,
                    Ev::Failed {
                        task: t,
                        src: ORIGIN,
                        piece,
                    },
                );
            }
        }
    }
}
