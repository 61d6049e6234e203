//! The origin side of the swarm: the gateway's HTTP `Range` GETs. Pieces are spread over the
//! origin servers; a server answers requests one after the other at `origin_rps` (a request
//! waits in its accept queue until then), and every transfer it has accepted runs at once,
//! sharing its upload. With a dedup window the origin refuses a piece it is sending or sent that
//! recently, which the scheduler hears as `request_refused`; a cancel drops a queued request or
//! aborts the transfer (the HTTP request is dropped), and an aborted piece counts as sent for the
//! window.

use super::{Ev, ORIGIN, State, Swarm, Tag};

impl Swarm<'_> {
    /// A request reaches the origin server's accept queue.
    pub(super) fn origin_arrive(&mut self, t: u32, piece: u32) {
        self.origin.requests += 1;
        let server = self.server(self.tasks[t as usize].blob, piece);
        let free = &mut self.origin.next_free[server];
        let at = self.now.max(*free);
        *free = at + self.origin.service;
        self.origin.queued.insert((t, piece));
        self.push(at, Ev::OriginAdmit { task: t, piece });
    }

    /// The server answers a request: refuses it, fails it (gone) or starts the transfer.
    pub(super) fn origin_admit(&mut self, t: u32, piece: u32) {
        if !self.origin.queued.remove(&(t, piece)) {
            // Cancelled while it waited.
            return;
        }
        let task = &self.tasks[t as usize];
        if task.state != State::Running {
            return;
        }
        let (host, blob) = (task.host, task.blob);
        let server = self.server(blob, piece);
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
        let until = &mut self.origin.refuse_until[usize::from(blob)][piece as usize];
        if let Some(_window) = self.fleet.params.origin_dedup_s {
            if self.now < *until {
                self.origin.refusals += 1;
                let ev = Ev::Refused {
                    task: t,
                    src: ORIGIN,
                    piece,
                };
                self.push(back, ev);
                return;
            }
            *until = u64::MAX;
        }
        let len = self.blobs[usize::from(blob)].piece_len(piece);
        let flow =
            self.net
                .start_origin(server, host, len, Tag::Origin { task: t, piece }, self.now);
        if let Some(old) = self.origin.active.insert((t, piece), flow) {
            // A repeat of a request still being served (only without dedup): the newer wins.
            if let Some(ended) = self.net.engine.abort(old, self.now) {
                self.stats.aborted_bytes += ended.bytes;
                self.account_wan(ended.tag, ended.bytes);
            }
        }
    }

    /// Starts the refusal window of a piece the origin finished (or stopped) sending.
    fn origin_window(&mut self, t: u32, piece: u32) {
        if let Some(window) = self.fleet.params.origin_dedup_s {
            let blob = usize::from(self.tasks[t as usize].blob);
            self.origin.refuse_until[blob][piece as usize] = self.now + crate::net::nanos(window);
        }
    }

    pub(super) fn origin_cancel(&mut self, t: u32, piece: u32) {
        if !self.origin.queued.remove(&(t, piece)) {
            self.abort_origin(t, piece);
        }
    }

    /// Stops an origin transfer early; the bytes sent so far count.
    pub(super) fn abort_origin(&mut self, t: u32, piece: u32) -> bool {
        let Some(flow) = self.origin.active.remove(&(t, piece)) else {
            return false;
        };
        if let Some(ended) = self.net.engine.abort(flow, self.now) {
            self.stats.aborted_bytes += ended.bytes;
            self.account_wan(ended.tag, ended.bytes);
        }
        self.origin_window(t, piece);
        true
    }

    /// An origin transfer ended: the piece reaches the host one delay later.
    pub(super) fn origin_sent(&mut self, t: u32, piece: u32) {
        self.origin.active.remove(&(t, piece));
        self.origin_window(t, piece);
        let task = &self.tasks[t as usize];
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
