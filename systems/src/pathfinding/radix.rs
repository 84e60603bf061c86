//! A radix heap: a priority queue for searches whose popped keys never decrease (Dijkstra, A*
//! with a consistent estimate). Pushing is O(1), popping amortised O(log key range); much
//! cheaper than a binary heap on the large open lists of grid searches.

/// Min-queue of `(key, value)`; every pushed key must be at least the last popped one.
#[derive(Debug)]
pub(crate) struct RadixHeap {
    last: u64,
    len: usize,
    /// Bucket `b > 0` holds keys whose highest bit differing from `last` is bit `b − 1`;
    /// bucket 0 holds keys equal to `last` (popped last in, first out).
    buckets: [Vec<(u64, u32)>; 65],
}

impl Default for RadixHeap {
    fn default() -> Self {
        Self { last: 0, len: 0, buckets: std::array::from_fn(|_| Vec::new()) }
    }
}

impl RadixHeap {
    /// Empties the queue (keeping its memory) and resets the floor to 0.
    pub(crate) fn clear(&mut self) {
        self.buckets.iter_mut().for_each(Vec::clear);
        self.last = 0;
        self.len = 0;
    }

    #[inline]
    fn bucket(&self, key: u64) -> usize {
        (64 - (key ^ self.last).leading_zeros()) as usize
    }

    /// Adds `value` with `key` (`key` ≥ the last popped key).
    #[inline]
    pub(crate) fn push(&mut self, key: u64, value: u32) {
        debug_assert!(key >= self.last, "radix heap keys must not decrease");
        let b = self.bucket(key.max(self.last));
        self.buckets[b].push((key.max(self.last), value));
        self.len += 1;
    }

    /// Removes an entry with the smallest key.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<(u64, u32)> {
        if self.len == 0 {
            return None;
        }
        if self.buckets[0].is_empty() {
            let i = self.buckets.iter().position(|b| !b.is_empty()).expect("len > 0");
            let items = std::mem::take(&mut self.buckets[i]);
            self.last = items.iter().map(|&(k, _)| k).min().expect("bucket is not empty");
            for &(k, v) in &items {
                let b = self.bucket(k);
                self.buckets[b].push((k, v));
            }
            // Hand the emptied allocation back, so buckets keep their memory.
            let mut items = items;
            items.clear();
            if self.buckets[i].is_empty() {
                self.buckets[i] = items;
            }
        }
        self.len -= 1;
        self.buckets[0].pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_key_order_with_interleaved_pushes() {
        let mut h = RadixHeap::default();
        let mut reference = std::collections::BinaryHeap::new();
        let mut state = 7u64;
        let mut floor = 0;
        for round in 0..2_000u32 {
            for _ in 0..3 {
                state = terrarium_engine::rng::mix64(state);
                let key = floor + state % 1_000_000;
                h.push(key, round);
                reference.push(std::cmp::Reverse(key));
            }
            let (k, _) = h.pop().unwrap();
            assert_eq!(std::cmp::Reverse(k), reference.pop().unwrap());
            floor = k;
        }
        while let Some((k, _)) = h.pop() {
            assert_eq!(std::cmp::Reverse(k), reference.pop().unwrap());
        }
        assert!(reference.is_empty());
        h.clear();
        assert!(h.pop().is_none());
    }
}
