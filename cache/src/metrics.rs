//! The engine's metrics: `perch_cache_*` (the read cache's tiers) and `perch_dirty_*` /
//! `perch_upload*` (the write-back journal and its uploader), registered once at open.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TierLabel {
    pub tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PrefetchLabel {
    pub reason: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: &'static str,
}

/// The cache's metrics (`perch_cache_*`).
#[derive(Clone, Default)]
pub(crate) struct CacheStats {
    pub hits: Family<TierLabel, Counter>,
    pub misses: Counter,
    pub bypass: Counter,
    pub revalidations: Family<ResultLabel, Counter>,
    pub bytes_served: Family<TierLabel, Counter>,
    pub evictions: Family<TierLabel, Counter>,
    pub corrupt: Counter,
    pub coalesced: Counter,
    pub resumed: Counter,
    pub prefetches: Family<PrefetchLabel, Counter>,
    pub prefetch_used: Family<ReasonLabel, Counter>,
    pub size: Family<TierLabel, Gauge>,
    pub entries: Family<TierLabel, Gauge>,
    pub limit: Family<TierLabel, Gauge>,
    pub eviction_state: Gauge,
}

impl CacheStats {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "perch_cache_hits",
            "GET/HEAD answered from the cache, by tier",
            self.hits.clone(),
        );
        r.register(
            "perch_cache_misses",
            "GET/HEAD that went to the origin",
            self.misses.clone(),
        );
        r.register(
            "perch_cache_bypass",
            "GETs served without the cache (too large to keep)",
            self.bypass.clone(),
        );
        r.register(
            "perch_cache_revalidations",
            "Revalidations of mutable keys, by result",
            self.revalidations.clone(),
        );
        r.register(
            "perch_cache_served_bytes",
            "Body bytes served, by tier (memory, disk, origin)",
            self.bytes_served.clone(),
        );
        r.register(
            "perch_cache_evictions",
            "Entries evicted, by tier",
            self.evictions.clone(),
        );
        r.register(
            "perch_cache_corrupt",
            "Cached entries found corrupt or truncated, dropped and refetched",
            self.corrupt.clone(),
        );
        r.register(
            "perch_cache_coalesced",
            "Misses that joined a fill already under way",
            self.coalesced.clone(),
        );
        r.register(
            "perch_cache_resumed",
            "Origin streams resumed after they broke (fills and pass-through reads)",
            self.resumed.clone(),
        );
        r.register(
            "perch_cache_prefetches",
            "Objects prefetched nobody asked for yet, by reason (list, read_ahead, prewarm) and result (fetched, failed, skipped: already cached or under way, no_room: the disk tier would have had to evict, dropped: over the byte budget, cancelled)",
            self.prefetches.clone(),
        );
        r.register(
            "perch_cache_prefetch_used",
            "Prefetched objects a client then read, by reason",
            self.prefetch_used.clone(),
        );
        r.register("perch_cache_size_bytes", "Bytes held, by tier", self.size.clone());
        r.register("perch_cache_entries", "Objects held, by tier", self.entries.clone());
        r.register(
            "perch_cache_limit_bytes",
            "Limit of each tier; the memory tier's is what --cache-memory-bytes leaves after the index, the allocator's share and the eviction state",
            self.limit.clone(),
        );
        r.register(
            "perch_cache_eviction_state_bytes",
            "Memory of the disk tier's eviction order (part of --cache-memory-bytes)",
            self.eviction_state.clone(),
        );
        // Every series from the start, at 0, rather than appearing at its first event.
        for tier in [&MEMORY, &DISK] {
            let _ = self.hits.get_or_create(tier);
            let _ = self.evictions.get_or_create(tier);
            let _ = self.size.get_or_create(tier);
            let _ = self.entries.get_or_create(tier);
            let _ = self.limit.get_or_create(tier);
        }
        for tier in [&MEMORY, &DISK, &ORIGIN] {
            let _ = self.bytes_served.get_or_create(tier);
        }
        for result in ["unchanged", "changed", "failed"] {
            let _ = self.revalidations.get_or_create(&ResultLabel { result });
        }
        for reason in ["list", "read_ahead", "prewarm"] {
            let _ = self.prefetch_used.get_or_create(&ReasonLabel { reason });
            for result in ["fetched", "failed", "skipped", "no_room", "dropped", "cancelled"] {
                let _ = self.prefetches.get_or_create(&PrefetchLabel { reason, result });
            }
        }
    }
}

pub(crate) const MEMORY: TierLabel = TierLabel { tier: "memory" };
pub(crate) const DISK: TierLabel = TierLabel { tier: "disk" };
pub(crate) const ORIGIN: TierLabel = TierLabel { tier: "origin" };

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UploadLabel {
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub(crate) struct WriteStats {
    pub dirty_objects: Gauge,
    pub dirty_bytes: Gauge,
    pub dirty_age: Gauge,
    pub uploads: Family<UploadLabel, Counter>,
    pub uploaded_bytes: Counter,
    pub failed: Gauge,
}

impl WriteStats {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "perch_dirty_objects",
            "Versions acknowledged and not yet in the origin",
            self.dirty_objects.clone(),
        );
        r.register(
            "perch_dirty_bytes",
            "Bytes acknowledged and not yet in the origin",
            self.dirty_bytes.clone(),
        );
        r.register(
            "perch_dirty_age_seconds",
            "Age of the oldest version not yet in the origin",
            self.dirty_age.clone(),
        );
        r.register(
            "perch_uploads",
            "Versions handled by the uploader, by result (ok, skipped, retried, failed)",
            self.uploads.clone(),
        );
        r.register(
            "perch_uploaded_bytes",
            "Body bytes uploaded to the origin",
            self.uploaded_bytes.clone(),
        );
        r.register(
            "perch_upload_failed",
            "Versions the origin refused for good (kept; see perch status)",
            self.failed.clone(),
        );
        for result in ["ok", "skipped", "retried", "failed"] {
            let _ = self.uploads.get_or_create(&UploadLabel { result });
        }
    }
}
