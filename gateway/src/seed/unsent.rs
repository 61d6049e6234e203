//! Blobs this gateway process stored anew of which no byte has left it since: no node can hold
//! a piece of them, since every piece starts here (SPEC §3.7, `unsent`; §6.2).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use flotilla_protocol::Digest;

use super::lock;

/// Most blobs remembered; beyond it new ones are not (they answer `false`, which costs nothing
/// but a node's wait for its first lookup).
const MAX_UNSENT: usize = 65_536;

#[derive(Default)]
pub(crate) struct Unsent {
    set: Mutex<HashSet<Digest>>,
    /// The set's size, so that the send path (every piece served, every blob GET) takes no
    /// lock while nothing is unsent — the usual case once a fleet has pulled.
    len: AtomicUsize,
}

impl Unsent {
    /// `d` is about to be stored and was not held: nothing of it has been sent. Called before
    /// the file is installed, so a GET that finds the file always finds the mark to clear.
    pub(crate) fn mark(&self, d: &Digest) {
        let mut set = lock(&self.set);
        if set.len() < MAX_UNSENT && set.insert(d.clone()) {
            self.len.store(set.len(), Ordering::Release);
        }
    }

    /// Bytes of `d` are about to leave the gateway (or its file is gone).
    pub(crate) fn clear(&self, d: &Digest) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut set = lock(&self.set);
        if set.remove(d) {
            self.len.store(set.len(), Ordering::Release);
        }
    }

    pub(crate) fn contains(&self, d: &Digest) -> bool {
        self.len.load(Ordering::Acquire) > 0 && lock(&self.set).contains(d)
    }
}
