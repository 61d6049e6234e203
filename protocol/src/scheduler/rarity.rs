//! The rarest-first order of the pieces that can be requested right now.
//!
//! Pieces live in one array sorted by availability (how many candidate peers hold them), with the
//! start of each availability bucket recorded. Raising or lowering a piece's availability by one
//! swaps it across the nearest bucket boundary in O(1); inserting or removing a piece costs
//! O(number of buckets) ≤ max peers + 1. Within a bucket the order comes from a seeded shuffle at
//! start and the swaps after it, which is the deterministic random tie-break.

const NONE: u32 = u32::MAX;

/// Pickable pieces, rarest first; availability is tracked for every piece, pickable or not.
pub(super) struct RarityIndex {
    order: Vec<u32>,
    pos: Vec<u32>,
    avail: Vec<u16>,
    /// `starts[a]` = first position with availability ≥ a; the last entry is `order.len()`.
    starts: Vec<u32>,
}

impl RarityIndex {
    /// An index over `piece_count` pieces holding `initial` (all at availability 0), in that order.
    pub(super) fn new(piece_count: u32, initial: Vec<u32>) -> Self {
        let mut pos = vec![NONE; piece_count as usize];
        for (i, &p) in initial.iter().enumerate() {
            pos[p as usize] = i as u32;
        }
        RarityIndex {
            starts: vec![0, initial.len() as u32],
            order: initial,
            pos,
            avail: vec![0; piece_count as usize],
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn contains(&self, piece: u32) -> bool {
        self.pos[piece as usize] != NONE
    }

    pub(super) fn availability(&self, piece: u32) -> u16 {
        self.avail[piece as usize]
    }

    /// Pickable pieces that no candidate peer holds.
    pub(super) fn unseen(&self) -> &[u32] {
        &self.order[..self.starts[1] as usize]
    }

    /// Pickable pieces that some candidate peer holds, rarest first.
    pub(super) fn seen(&self) -> &[u32] {
        &self.order[self.starts[1] as usize..]
    }

    /// Position (in the rarest-first order) just past the pieces of availability `a`.
    pub(super) fn bucket_end(&self, a: u16) -> usize {
        self.starts
            .get(usize::from(a) + 1)
            .map_or(self.order.len(), |&s| s as usize)
    }

    fn swap(&mut self, i: u32, j: u32) {
        self.order.swap(i as usize, j as usize);
        self.pos[self.order[i as usize] as usize] = i;
        self.pos[self.order[j as usize] as usize] = j;
    }

    /// Makes bucket `a` addressable (`starts[a + 1]` exists).
    fn ensure_bucket(&mut self, a: u16) {
        while self.starts.len() < usize::from(a) + 2 {
            self.starts.push(self.order.len() as u32);
        }
    }

    pub(super) fn insert(&mut self, piece: u32) {
        if self.contains(piece) {
            return;
        }
        let a = self.avail[piece as usize];
        self.ensure_bucket(a);
        let top = self.starts.len() - 1;
        let at = self.order.len() as u32;
        self.order.push(piece);
        self.pos[piece as usize] = at;
        self.starts[top] += 1;
        // The new piece sits at the end of the highest bucket; walk it down to bucket `a`.
        for b in (usize::from(a) + 1..top).rev() {
            let first = self.starts[b];
            let here = self.pos[piece as usize];
            self.swap(here, first);
            self.starts[b] += 1;
        }
    }

    pub(super) fn remove(&mut self, piece: u32) {
        if !self.contains(piece) {
            return;
        }
        let a = usize::from(self.avail[piece as usize]);
        let top = self.starts.len() - 1;
        // Walk the piece up to the very end, one bucket boundary at a time, then pop it.
        for b in a..top {
            let last = self.starts[b + 1] - 1;
            let here = self.pos[piece as usize];
            self.swap(here, last);
            self.starts[b + 1] -= 1;
        }
        self.order.pop();
        self.pos[piece as usize] = NONE;
    }

    pub(super) fn increment(&mut self, piece: u32) {
        let a = self.avail[piece as usize];
        if a == u16::MAX {
            return;
        }
        if self.contains(piece) {
            self.ensure_bucket(a + 1);
            let b = usize::from(a) + 1;
            let last = self.starts[b] - 1;
            self.swap(self.pos[piece as usize], last);
            self.starts[b] -= 1;
        }
        self.avail[piece as usize] = a + 1;
    }

    pub(super) fn decrement(&mut self, piece: u32) {
        let a = self.avail[piece as usize];
        if a == 0 {
            return;
        }
        if self.contains(piece) {
            let b = usize::from(a);
            let first = self.starts[b];
            self.swap(self.pos[piece as usize], first);
            self.starts[b] += 1;
        }
        self.avail[piece as usize] = a - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(ix: &RarityIndex) {
        let av: Vec<u16> = ix.order.iter().map(|&p| ix.availability(p)).collect();
        assert_eq!(ix.unseen().len() + ix.seen().len(), ix.len());
        assert!(ix.unseen().iter().all(|&p| ix.availability(p) == 0));
        assert!(ix.seen().iter().all(|&p| ix.availability(p) > 0));
        assert!(av.windows(2).all(|w| w[0] <= w[1]), "{av:?}");
        for (i, &p) in ix.order.iter().enumerate() {
            assert_eq!(ix.pos[p as usize], i as u32);
        }
        for (a, &s) in ix.starts.iter().enumerate().take(ix.starts.len() - 1) {
            assert!(av[..s as usize].iter().all(|&x| usize::from(x) < a));
            assert!(av[s as usize..].iter().all(|&x| usize::from(x) >= a));
        }
        assert_eq!(*ix.starts.last().unwrap() as usize, ix.order.len());
    }

    proptest! {
        #[test]
        fn stays_sorted(ops in proptest::collection::vec((0u8..4, 0u32..10), 0..200)) {
            let mut ix = RarityIndex::new(10, (0..10).collect());
            for (op, p) in ops {
                match op {
                    0 => ix.increment(p),
                    1 => ix.decrement(p),
                    2 => ix.insert(p),
                    _ => ix.remove(p),
                }
                check(&ix);
            }
        }
    }
}
