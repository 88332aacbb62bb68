//! The memory tier: small objects (up to 1 MiB, an OrioleDB data part) held as verified bytes in
//! moka (TinyLFU admission, LRU eviction), weighed in bytes.
//!
//! Its limit is what the cache's memory budget leaves (`memory_tier_limit`), so it changes as the
//! disk tier grows or shrinks: a new limit takes effect by starting an empty tier (moka's limit is
//! fixed), which `Local::fit_memory` does only when the limit moved by more than 1/32 of the budget
//! (after the start's rebuild, or every few hundred thousand disk entries).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;

use crate::key::ObjectKey;
use crate::local::index::{Entry, INDEX_MEMORY};
use crate::metrics::{CacheStats, MEMORY};

/// What a memory-tier object costs besides its key and body, so that the tier's limit is what it
/// really takes: its `Entry` with the strings it holds (~550 bytes) and moka's bookkeeping (~400
/// bytes). Measured: 1 KiB objects held ~2 KB of resident memory each.
const OVERHEAD: usize = 1024;

/// What `object` of `okey` takes in memory: its key, body and entry (a stored header's text too,
/// up to ~8 KB, which a tier of tiny objects would otherwise hold uncounted).
fn weight(okey: &ObjectKey, object: &MemoryObject) -> usize {
    let meta = &object.entry.meta;
    okey.as_bytes().len()
        + object.body.len()
        + OVERHEAD
        + meta.headers.text_bytes()
        + meta.etag.len()
        + object.entry.crcs.len() * 4
}

/// A small object held in memory, with the index entry it came from.
pub(crate) struct MemoryObject {
    pub entry: Entry,
    pub body: Bytes,
}

type Tier = moka::sync::Cache<ObjectKey, Arc<MemoryObject>>;

pub(crate) struct MemoryTier {
    cache: RwLock<Tier>,
    capacity: AtomicU64,
    stats: CacheStats,
}

/// What the memory budget leaves the memory tier: the budget less RocksDB's caches, the disk
/// tier's eviction order, and 1/16 of the budget for the allocator's own overhead (free memory
/// the memory tier's churn leaves inside malloc's arenas: 4–7% of the budget, measured at a
/// million entries), so that the budget bounds what the cache really makes the process hold.
pub(crate) fn memory_tier_limit(budget: u64, eviction_state: u64) -> u64 {
    budget.saturating_sub(INDEX_MEMORY + budget / 16 + eviction_state)
}

impl MemoryTier {
    pub(crate) fn new(capacity: u64, stats: CacheStats) -> MemoryTier {
        MemoryTier {
            cache: RwLock::new(Self::build(capacity, &stats)),
            capacity: AtomicU64::new(capacity),
            stats,
        }
    }

    fn build(capacity: u64, stats: &CacheStats) -> Tier {
        let stats = stats.clone();
        moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|k: &ObjectKey, v: &Arc<MemoryObject>| u32::try_from(weight(k, v)).unwrap_or(u32::MAX))
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    stats.evictions.get_or_create(&MEMORY).inc();
                }
            })
            .build()
    }

    fn read(&self) -> RwLockReadGuard<'_, Tier> {
        // The lock guards a plain swap: a panic cannot leave it inconsistent.
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, okey: &ObjectKey) -> Option<Arc<MemoryObject>> {
        self.read().get(okey)
    }

    pub(crate) fn contains_key(&self, okey: &ObjectKey) -> bool {
        self.read().contains_key(okey)
    }

    pub(crate) fn insert(&self, okey: ObjectKey, object: Arc<MemoryObject>) {
        self.read().insert(okey, object)
    }

    pub(crate) fn invalidate(&self, okey: &ObjectKey) {
        self.read().invalidate(okey)
    }

    /// Forgets the copy of `okey` if it holds blob `blob`.
    pub(crate) fn invalidate_blob(&self, okey: &ObjectKey, blob: u64) {
        if self.get(okey).is_some_and(|m| m.entry.blob == blob) {
            self.invalidate(okey);
        }
    }

    /// The limit, in weighed bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Settles moka's pending work; returns the weighed size and the entry count.
    pub(crate) fn settle(&self) -> (u64, u64) {
        let c = self.read();
        c.run_pending_tasks();
        (c.weighted_size(), c.entry_count())
    }

    /// Starts an empty tier with a new limit (the old one's objects are dropped: they would have
    /// to be re-admitted one by one, under a lock that every request takes).
    pub(crate) fn resize(&self, capacity: u64) {
        let fresh = Self::build(capacity, &self.stats);
        let old = std::mem::replace(&mut *self.cache.write().unwrap_or_else(|p| p.into_inner()), fresh);
        self.capacity.store(capacity, Ordering::Relaxed);
        drop(old);
        release_free_memory();
    }
}

/// Hands memory freed inside the allocator's arenas back to the kernel. The rebuild's scan and
/// merges free tens of MB in the middle of an arena, which glibc keeps unless asked (~1 ms).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    /// Tiny objects with large metadata (S3 lets a write carry ~8 KB of headers) are weighed with
    /// it: the tier holds no more of their bytes than its limit. They were weighed as 1 KiB each,
    /// and a tier of such objects held several times its limit.
    #[test]
    fn an_objects_stored_headers_count_against_the_limit() {
        const LIMIT: u64 = 1 << 20;
        const METADATA: usize = 6_000;
        let tier = MemoryTier::new(LIMIT, CacheStats::default());
        let mut entry = Entry::tombstone(1, SystemTime::now());
        (entry.deleted, entry.pending, entry.meta.size) = (false, false, 4);
        entry.meta.headers.metadata.insert("note".into(), "x".repeat(METADATA));
        let object = Arc::new(MemoryObject {
            entry,
            body: Bytes::from_static(b"tiny"),
        });
        // Each read twice, so that TinyLFU admits it over what it would evict.
        for round in 0..4 {
            for i in 0..1_000 {
                let okey = ObjectKey::new("b", &format!("k/{i}"));
                if round > 0 {
                    tier.get(&okey);
                }
                tier.insert(okey, object.clone());
            }
            tier.settle();
        }
        let (weighed, count) = tier.settle();
        assert!(weighed <= LIMIT, "weighed {weighed} over the limit {LIMIT}");
        assert!(
            count * METADATA as u64 <= LIMIT,
            "{count} objects of {METADATA} bytes of metadata each: more than the limit of {LIMIT}"
        );
        assert!(count > 0, "nothing was admitted");
    }
}
