//! Prefix-aware balancing: which worker has most likely kept a prompt's prefix in its KV cache.
//!
//! The router cannot see the workers' prefix caches, so it keeps its own approximate record: the
//! prompts it sent to each worker, as chained hashes of their full [`BLOCK_TOKENS`]-token blocks
//! (block k's hash covers tokens `[0, (k + 1) * BLOCK_TOKENS)`), with the workers that were sent
//! each one. A new prompt's match on a worker is the number of leading blocks recorded for it.
//! The record holds as many blocks as the ready workers' KV caches hold tokens together (until
//! they report it, [`DEFAULT_CAPACITY`]), forgetting the least recently used first, and within a
//! prompt its last blocks first (its leading blocks are what later prompts share); a worker that
//! is lost (it may restart with an empty cache) is forgotten entirely.
//!
//! The rule ([`choose`]): while the load is balanced, a prompt goes to the ready worker with the
//! longest match when that match covers at least [`BalanceOptions::min_match`] of the prompt;
//! otherwise, and whenever the load is unbalanced, to the least loaded worker.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Tokens per hashed block: the granularity of a match.
pub const BLOCK_TOKENS: usize = 16;

/// Blocks the record holds until the workers report their KV capacity.
pub const DEFAULT_CAPACITY: usize = 1 << 16;

/// Workers past this index are balanced by load only (one bit per worker in a block's mask).
pub const MAX_INDEXED_WORKERS: usize = 64;

/// How requests are spread over several workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BalancePolicy {
    /// The worker holding the longest prefix of the prompt while the load is balanced, else the
    /// least loaded one.
    #[default]
    Prefix,
    /// The worker with the fewest requests in flight.
    LeastLoaded,
}

/// The policy and its thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceOptions {
    pub policy: BalancePolicy,
    /// The load is unbalanced when the busiest worker has more than this many requests in flight
    /// beyond the least busy one...
    pub max_load_gap: usize,
    /// ... and more than this factor times its load.
    pub max_load_ratio: f64,
    /// Smallest fraction of the prompt a match must cover to decide the worker.
    pub min_match: f64,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        Self {
            policy: BalancePolicy::Prefix,
            max_load_gap: 32,
            max_load_ratio: 1.5,
            min_match: 0.5,
        }
    }
}

/// The chained hashes of `ids`' full blocks, the chain seeded by `salt` (the prompts of one salt
/// share blocks only with each other, as in the workers' caches).
pub fn block_hashes(ids: &[u32], salt: Option<&str>) -> Vec<u64> {
    let mut prev = salt.map_or(0, |s| {
        let mut h = DefaultHasher::new();
        s.hash(&mut h);
        h.finish()
    });
    ids.chunks_exact(BLOCK_TOKENS)
        .map(|block| {
            let mut h = DefaultHasher::new();
            prev.hash(&mut h);
            block.hash(&mut h);
            prev = h.finish();
            prev
        })
        .collect()
}

/// One recorded block: the workers it was sent to and when it was last used.
#[derive(Debug, Clone, Copy)]
struct Entry {
    workers: u64,
    stamp: u64,
}

/// The approximate record of the prompts sent to each worker.
#[derive(Debug)]
pub struct PrefixIndex {
    capacity: usize,
    entries: HashMap<u64, Entry>,
    /// `(hash, stamp)` in use order; an entry whose stamp is newer was used again later.
    order: VecDeque<(u64, u64)>,
    clock: u64,
}

impl PrefixIndex {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            clock: 0,
        }
    }

    /// Leading blocks of `hashes` recorded for each of the first `workers` workers.
    pub fn matches(&self, hashes: &[u64], workers: usize) -> Vec<usize> {
        let mut matched = vec![0; workers];
        let mut alive = u64::MAX;
        for (k, h) in hashes.iter().enumerate() {
            alive &= self.entries.get(h).map_or(0, |e| e.workers);
            if alive == 0 {
                break;
            }
            for (w, m) in matched.iter_mut().enumerate().take(MAX_INDEXED_WORKERS) {
                if alive >> w & 1 == 1 {
                    *m = k + 1;
                }
            }
        }
        matched
    }

    /// Sets how many blocks the record holds, dropping the least recently used beyond it.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        self.evict();
    }

    /// Records that `worker` was sent a prompt with these block hashes. The last block is
    /// stamped first, so that a prompt's leading blocks are the last of it to be dropped.
    pub fn insert(&mut self, hashes: &[u64], worker: usize) {
        if worker >= MAX_INDEXED_WORKERS {
            return;
        }
        for &h in hashes.iter().rev() {
            self.clock += 1;
            let entry = self.entries.entry(h).or_insert(Entry {
                workers: 0,
                stamp: 0,
            });
            entry.workers |= 1 << worker;
            entry.stamp = self.clock;
            self.order.push_back((h, self.clock));
        }
        self.evict();
    }

    /// Forgets everything recorded for `worker`.
    pub fn forget(&mut self, worker: usize) {
        if worker >= MAX_INDEXED_WORKERS {
            return;
        }
        self.entries.retain(|_, e| {
            e.workers &= !(1 << worker);
            e.workers != 0
        });
        self.compact();
    }

    /// Drops the least recently used blocks beyond the capacity.
    fn evict(&mut self) {
        while self.entries.len() > self.capacity {
            let Some((h, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&h).is_some_and(|e| e.stamp == stamp) {
                self.entries.remove(&h);
            }
        }
        if self.order.len() > 2 * self.capacity.max(self.entries.len()) {
            self.compact();
        }
    }

    /// Drops the use records that no longer count (the block was used again, or is gone).
    fn compact(&mut self) {
        let entries = &self.entries;
        self.order
            .retain(|(h, stamp)| entries.get(h).is_some_and(|e| e.stamp == *stamp));
    }
}

/// The worker for a prompt, and whether its match decided: `loads[i]` is `Some(requests in
/// flight)` for a ready worker, `None` for one that is not ready; `matched[i]` its match in
/// blocks; `prompt_len` in tokens. `None` when no worker is ready. Ties go to the lower index.
pub fn choose(
    loads: &[Option<usize>],
    matched: &[usize],
    prompt_len: usize,
    options: &BalanceOptions,
) -> Option<(usize, bool)> {
    let ready = || {
        loads
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, (*l)?)))
    };
    let (least, min_load) = ready().min_by_key(|&(i, load)| (load, i))?;
    let max_load = ready().map(|(_, load)| load).max().unwrap_or(min_load);
    let unbalanced = max_load - min_load > options.max_load_gap
        && max_load as f64 > options.max_load_ratio * min_load as f64;
    if options.policy == BalancePolicy::LeastLoaded || unbalanced || prompt_len == 0 {
        return Some((least, false));
    }
    let (best, best_blocks) = ready()
        .map(|(i, load)| (i, load, matched.get(i).copied().unwrap_or(0)))
        .max_by_key(|&(i, load, blocks)| (blocks, std::cmp::Reverse(load), std::cmp::Reverse(i)))
        .map(|(i, _, blocks)| (i, blocks))?;
    let covered = (best_blocks * BLOCK_TOKENS) as f64 / prompt_len as f64;
    Some(if best_blocks > 0 && covered >= options.min_match {
        (best, true)
    } else {
        (least, false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 1000 + i).collect()
    }

    #[test]
    fn a_match_counts_the_leading_blocks_recorded_for_each_worker() {
        let mut index = PrefixIndex::new(1000);
        let a = prompt(1, 64); // 4 blocks
        index.insert(&block_hashes(&a, None), 0);
        index.insert(&block_hashes(&a[..32], None), 2);
        let mut b = a.clone();
        b[40] = 7; // differs in block 2
        assert_eq!(index.matches(&block_hashes(&a, None), 3), vec![4, 0, 2]);
        assert_eq!(index.matches(&block_hashes(&b, None), 3), vec![2, 0, 2]);
        // A prompt that shares a later block but not the first matches nothing: hashes chain.
        let mut c = a.clone();
        c[0] = 9;
        assert_eq!(index.matches(&block_hashes(&c, None), 3), vec![0, 0, 0]);
        assert_eq!(
            block_hashes(&a[..15], None),
            Vec::<u64>::new(),
            "only full blocks"
        );
        // the prompts of a salt match only each other's blocks
        let salted = |salt| block_hashes(&a, Some(salt));
        index.insert(&salted("tenant-1"), 1);
        assert_eq!(index.matches(&salted("tenant-1"), 3), vec![0, 4, 0]);
        assert_eq!(index.matches(&salted("tenant-2"), 3), vec![0, 0, 0]);
        assert_eq!(index.matches(&block_hashes(&a, None), 3), vec![4, 0, 2]);
    }

    #[test]
    fn the_least_recently_used_blocks_go_first_and_a_lost_worker_is_forgotten() {
        let mut index = PrefixIndex::new(6);
        let (a, b) = (prompt(1, 64), prompt(2, 64));
        index.insert(&block_hashes(&a, None), 0);
        index.insert(&block_hashes(&a[..16], None), 1); // a's first block used again
        index.insert(&block_hashes(&b[..48], None), 1);
        assert_eq!(index.entries.len(), 6);
        // a's last block was the least recently used: a now matches three blocks on worker 0,
        // and its first one on worker 1.
        assert_eq!(index.matches(&block_hashes(&a, None), 2), vec![3, 1]);
        assert_eq!(index.matches(&block_hashes(&b, None), 2), vec![0, 3]);
        index.forget(1);
        assert_eq!(index.matches(&block_hashes(&a, None), 2), vec![3, 0]);
        assert_eq!(index.entries.len(), 3, "a's blocks 0 to 2 stay, worker 0's");
        index.set_capacity(2);
        assert_eq!(
            index.matches(&block_hashes(&a, None), 2),
            vec![2, 0],
            "its tail goes first"
        );
        for k in 0..100 {
            index.insert(&block_hashes(&prompt(10 + k, 32), None), (k % 2) as usize);
        }
        assert_eq!(index.entries.len(), 2);
        assert!(index.order.len() <= 2 * 2 + 2, "use records stay bounded");
    }

    #[test]
    fn the_longest_match_wins_while_the_load_is_balanced() {
        let opts = BalanceOptions::default();
        // Worker 1 holds 3 of the prompt's 4 blocks: it wins though it is busier.
        assert_eq!(
            choose(&[Some(0), Some(5)], &[0, 3], 64, &opts),
            Some((1, true))
        );
        // A match under half the prompt does not decide: least loaded.
        assert_eq!(
            choose(&[Some(0), Some(5)], &[0, 1], 64, &opts),
            Some((0, false))
        );
        // Equal matches: the less loaded one.
        assert_eq!(
            choose(&[Some(4), Some(2)], &[2, 2], 64, &opts),
            Some((1, true))
        );
        // Not ready workers are never chosen, whatever they match.
        assert_eq!(
            choose(&[None, Some(9)], &[4, 0], 64, &opts),
            Some((1, false))
        );
        assert_eq!(choose(&[None, None], &[4, 0], 64, &opts), None);
    }

    #[test]
    fn an_unbalanced_load_or_the_least_loaded_policy_ignores_matches() {
        let opts = BalanceOptions::default();
        assert_eq!(
            choose(&[Some(0), Some(40)], &[0, 4], 64, &opts),
            Some((0, false))
        );
        // A large gap that is not a large ratio is still balanced.
        assert_eq!(
            choose(&[Some(100), Some(140)], &[0, 4], 64, &opts),
            Some((1, true))
        );
        let least = BalanceOptions {
            policy: BalancePolicy::LeastLoaded,
            ..opts
        };
        assert_eq!(
            choose(&[Some(0), Some(5)], &[0, 4], 64, &least),
            Some((0, false))
        );
    }
}
