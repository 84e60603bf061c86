//! The one door to parallelism: every rayon call of the systems goes through here, on the
//! engine's own worker pool ([`ParPool`]). With the `parallel` feature off, the same calls run
//! sequentially, with identical results.
//!
//! Work is split into chunks by the caller, independently of the thread count, and results come
//! back in input order, so what a system computes never depends on how many threads ran it.

#[cfg(feature = "parallel")]
use rayon::prelude::*;
use terrarium_engine::ParPool;

/// Entities per chunk for per-entity kernels: big enough to amortise scheduling, small enough
/// to balance two to sixteen threads.
pub const CHUNK: usize = 16 * 1024;

/// Runs `f` on every item, in parallel on `pool`.
pub fn for_each<T: Send>(pool: &ParPool, items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    #[cfg(feature = "parallel")]
    pool.0.install(|| items.into_par_iter().for_each(f));
    #[cfg(not(feature = "parallel"))]
    {
        let _ = pool;
        items.into_iter().for_each(f);
    }
}

/// Maps every item in parallel on `pool`; the results are in input order.
pub fn map<T: Send, R: Send>(pool: &ParPool, items: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    #[cfg(feature = "parallel")]
    return pool.0.install(|| items.into_par_iter().map(f).collect());
    #[cfg(not(feature = "parallel"))]
    {
        let _ = pool;
        items.into_iter().map(f).collect()
    }
}

/// Maps every item of a slice in parallel, with one scratch value per worker (made by `init`);
/// the results are in input order.
pub fn map_with<T: Sync, S, R: Send>(
    pool: &ParPool,
    items: &[T],
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, &T) -> R + Sync + Send,
) -> Vec<R> {
    #[cfg(feature = "parallel")]
    return pool.0.install(|| items.par_iter().map_init(&init, |s, t| f(s, t)).collect());
    #[cfg(not(feature = "parallel"))]
    {
        let _ = pool;
        let mut s = init();
        items.iter().map(|t| f(&mut s, t)).collect()
    }
}

/// Sorts `items` by `key` (unstable, so keys should be unique for a deterministic result).
pub fn sort_by_key<T: Send, K: Ord>(pool: &ParPool, items: &mut [T], key: impl Fn(&T) -> K + Sync + Send) {
    #[cfg(feature = "parallel")]
    pool.0.install(|| items.par_sort_unstable_by_key(key));
    #[cfg(not(feature = "parallel"))]
    {
        let _ = pool;
        items.sort_unstable_by_key(key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pool(threads: usize) -> ParPool {
        ParPool(Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()))
    }

    #[test]
    fn results_keep_input_order_for_any_thread_count() {
        let items: Vec<u64> = (0..10_000).collect();
        let one = map(&pool(1), items.clone(), |x| x * x);
        let two = map(&pool(2), items.clone(), |x| x * x);
        assert_eq!(one, two);
        assert_eq!(one[9_999], 9_999 * 9_999);
        let with = map_with(
            &pool(2),
            &items,
            || 0u64,
            |acc, x| {
                *acc += 1;
                x + 1
            },
        );
        assert_eq!(with[0], 1);
    }

    #[test]
    fn for_each_visits_every_chunk() {
        let mut data = vec![1u32; 100_000];
        let chunks: Vec<&mut [u32]> = data.chunks_mut(CHUNK).collect();
        for_each(&pool(2), chunks, |c| c.iter_mut().for_each(|v| *v *= 3));
        assert!(data.iter().all(|&v| v == 3));
        let mut keys = vec![5u32, 1, 4, 2, 3];
        sort_by_key(&pool(2), &mut keys, |k| *k);
        assert_eq!(keys, [1, 2, 3, 4, 5]);
    }
}
