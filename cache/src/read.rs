//! `ReadCache`: objects served from memory and local disk; a miss is filled from the origin once per
//! key while every waiter streams the fill as it lands, and survives restarts through the `Index`.
//!
//! Tiers: a memory tier (moka, TinyLFU, weighed in bytes) for objects up to `memory_object_max`,
//! and a disk tier (blobs + RocksDB index, S3-FIFO eviction). Every disk read is checked block by
//! block (CRC32) before a byte of the block is sent; a bad block drops the entry and the rest of
//! the body comes from the origin (Range + If-Match). A fill checks a single-part body against its
//! MD5 ETag and withholds the last byte from its readers until that check passed, so a corrupt
//! origin transfer reaches clients as a cut body, never as a complete wrong one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use perch_policy::Freshness;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::CacheError;
use crate::blobs::{BLOCK, Blobs, BlockCrcs, read_block, read_checked, read_checked_if_cached};
use crate::evict::Evictor;
use crate::index::{Entry, INDEX_MEMORY, Index, object_key};
use crate::journal::{Journal, WriteConfig};
use crate::origin::{ByteRange, ByteStream, Conditions, GetOutput, ObjectMeta, Origin, OriginError, OriginResult};

/// Settings of the read cache, with the defaults `perch serve` documents.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `<data-dir>/cache`.
    pub dir: PathBuf,
    /// Limit of the disk tier (`--cache-disk-bytes`).
    pub disk_bytes: u64,
    /// The cache's memory budget (`--cache-memory-bytes`, 256 MiB): the index's caches and the
    /// disk tier's eviction state, and the memory tier in what they leave.
    pub memory_bytes: u64,
    /// Objects up to this size also live in memory (1 MiB: an OrioleDB data part).
    pub memory_object_max: u64,
    /// Which keys may change behind Perch's back.
    pub freshness: Freshness,
    /// How long a copy of a mutable key is served before it is revalidated.
    pub revalidate_after: Duration,
    /// How long a broken fill keeps resuming.
    pub retry_deadline: Duration,
    /// A range miss fetches the whole object in the background up to this size.
    pub background_fill_max: u64,
    /// The write-back journal and its uploader.
    pub write: WriteConfig,
}

/// How an answer was produced, sent as `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Revalidated,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
        }
    }
}

pub struct CachedGet {
    pub output: GetOutput,
    pub status: CacheStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The cache's metrics (`perch_cache_*`).
#[derive(Clone, Default)]
struct CacheStats {
    hits: Family<TierLabel, Counter>,
    misses: Counter,
    bypass: Counter,
    revalidations: Family<ResultLabel, Counter>,
    bytes_served: Family<TierLabel, Counter>,
    evictions: Family<TierLabel, Counter>,
    corrupt: Counter,
    coalesced: Counter,
    resumed: Counter,
    size: Family<TierLabel, Gauge>,
    entries: Family<TierLabel, Gauge>,
    limit: Family<TierLabel, Gauge>,
    eviction_state: Gauge,
}

impl CacheStats {
    fn register(&self, r: &mut Registry) {
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
            "Fills resumed after the origin stream broke",
            self.resumed.clone(),
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
    }
}

const MEMORY: TierLabel = TierLabel { tier: "memory" };
const DISK: TierLabel = TierLabel { tier: "disk" };
const ORIGIN: TierLabel = TierLabel { tier: "origin" };

/// What a memory-tier object costs besides its key and body, so that the tier's limit is what it
/// really takes: its `Entry` with the strings it holds (~550 bytes) and moka's bookkeeping (~400
/// bytes). Measured: 1 KiB objects held ~2 KB of resident memory each.
const HOT_OVERHEAD: usize = 1024;

/// Reads whose times wait for the next flush, at most (beyond, the flush is started at once): a
/// burst of distinct reads must not grow the map without bound (~100 bytes a key).
const READS_FLUSH_AT: usize = 16_384;

/// A small object held in memory, with the entry it came from.
pub(crate) struct HotObject {
    entry: Entry,
    body: Bytes,
}

/// The memory tier: moka (TinyLFU admission, LRU eviction), weighed in bytes. Its limit is what
/// the cache's memory budget leaves, so it changes as the disk tier grows or shrinks: a new limit
/// takes effect by starting an empty tier (moka's limit is fixed), which `ReadCache::fit_memory`
/// does only when the limit moved by more than 1/32 of the budget (after the start's rebuild, or
/// every few hundred thousand disk entries).
pub(crate) struct HotTier {
    cache: RwLock<moka::sync::Cache<String, Arc<HotObject>>>,
    capacity: AtomicU64,
    stats: CacheStats,
}

impl HotTier {
    fn new(capacity: u64, stats: CacheStats) -> HotTier {
        HotTier {
            cache: RwLock::new(Self::build(capacity, &stats)),
            capacity: AtomicU64::new(capacity),
            stats,
        }
    }

    fn build(capacity: u64, stats: &CacheStats) -> moka::sync::Cache<String, Arc<HotObject>> {
        let stats = stats.clone();
        moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|k: &String, v: &Arc<HotObject>| {
                u32::try_from(k.len() + v.body.len() + HOT_OVERHEAD).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    stats.evictions.get_or_create(&MEMORY).inc();
                }
            })
            .build()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, moka::sync::Cache<String, Arc<HotObject>>> {
        // The lock guards a plain swap: a panic cannot leave it inconsistent.
        self.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, okey: &str) -> Option<Arc<HotObject>> {
        self.read().get(okey)
    }

    pub(crate) fn contains_key(&self, okey: &str) -> bool {
        self.read().contains_key(okey)
    }

    pub(crate) fn insert(&self, okey: String, object: Arc<HotObject>) {
        self.read().insert(okey, object)
    }

    pub(crate) fn invalidate(&self, okey: &str) {
        self.read().invalidate(okey)
    }

    /// The limit, in weighed bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Settles moka's pending work; returns the weighed size and the entry count.
    fn settle(&self) -> (u64, u64) {
        let c = self.read();
        c.run_pending_tasks();
        (c.weighted_size(), c.entry_count())
    }

    /// Starts an empty tier with a new limit (the old one's objects are dropped: they would have
    /// to be re-admitted one by one, under a lock that every request takes).
    fn resize(&self, capacity: u64) {
        let fresh = Self::build(capacity, &self.stats);
        let old = std::mem::replace(&mut *self.cache.write().unwrap_or_else(|p| p.into_inner()), fresh);
        self.capacity.store(capacity, Ordering::Relaxed);
        drop(old);
        release_free_memory();
    }
}

/// An origin fetch into a temp file that any number of readers stream from as it grows.
struct Fill {
    tx: watch::Sender<FillState>,
    /// Set when a write through Perch replaced the object: the fill must not be kept.
    stale: AtomicBool,
}

#[derive(Clone)]
enum FillState {
    Pending,
    Body {
        meta: Arc<ObjectMeta>,
        file: Arc<File>,
        written: u64,
        done: bool,
    },
    Failed(Arc<FillError>),
}

/// Why a fill failed, kept so that every waiter can be given the same error.
#[derive(Debug)]
enum FillError {
    NoSuchKey,
    NoSuchBucket,
    Rejected { status: u16, code: String, message: String },
    Unavailable(String),
    Corrupt(String),
}

impl FillError {
    fn from_origin(e: OriginError) -> FillError {
        match e {
            OriginError::NoSuchKey => FillError::NoSuchKey,
            OriginError::NoSuchBucket => FillError::NoSuchBucket,
            OriginError::Rejected { status, code, message } => FillError::Rejected { status, code, message },
            other => FillError::Unavailable(other.to_string()),
        }
    }

    fn to_origin(&self) -> OriginError {
        match self {
            FillError::NoSuchKey => OriginError::NoSuchKey,
            FillError::NoSuchBucket => OriginError::NoSuchBucket,
            FillError::Rejected { status, code, message } => OriginError::Rejected {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            FillError::Unavailable(m) | FillError::Corrupt(m) => OriginError::Unavailable {
                seconds: 0,
                last: m.clone(),
            },
        }
    }
}

pub struct ReadCache {
    cfg: CacheConfig,
    pub(crate) origin: Arc<dyn Origin>,
    pub(crate) upload_origin: Arc<dyn Origin>,
    pub(crate) index: Index,
    pub(crate) blobs: Blobs,
    pub(crate) hot: HotTier,
    pub(crate) evictor: Mutex<Evictor>,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    /// Versions written through Perch and not yet in the origin.
    pub(crate) journal: Journal,
    /// Striped per-key locks: a commit, a release and the keeping of a fetched copy of one key
    /// never interleave.
    key_locks: Vec<Mutex<()>>,
    /// Set when a version was released without a sync: before a blob file is removed, the log
    /// is synced, so that a crash never brings back a journal record whose blob is gone.
    pub(crate) unsynced_release: AtomicBool,
    /// Reads since the last flush of access times.
    reads: Mutex<HashMap<String, SystemTime>>,
    /// Wakes the flush of access times early, when `reads` has grown to `READS_FLUSH_AT`.
    flush_soon: Arc<tokio::sync::Notify>,
    stats: CacheStats,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (plain maps and counters).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn key_hash(okey: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    okey.hash(&mut h);
    h.finish()
}

/// What the memory budget leaves the memory tier: the budget less RocksDB's caches, the disk
/// tier's eviction order, and 1/16 of the budget for the allocator's own overhead (free memory
/// the memory tier's churn leaves inside malloc's arenas: 4–7% of the budget, measured at a
/// million entries), so that the budget bounds what the cache really makes the process hold.
pub(crate) fn memory_tier_limit(budget: u64, eviction_state: u64) -> u64 {
    budget.saturating_sub(INDEX_MEMORY + budget / 16 + eviction_state)
}

/// Hands memory freed inside the allocator's arenas back to the kernel. The rebuild's scan and
/// merges free tens of MB in the middle of an arena, which glibc keeps unless asked (~1 ms).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether an ETag is the plain MD5 of the body (single-part upload, no encryption).
fn md5_etag(etag: &str) -> Option<&str> {
    let e = etag.trim_matches('"');
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then_some(e)
}

/// Reads `len` bytes at `offset` off the async threads.
async fn read_at(file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cache file shorter than expected",
                ));
            }
            done += n;
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

impl ReadCache {
    /// Opens the cache under `cfg.dir` (index and blobs survive restarts) and starts its background
    /// work: rebuilding the eviction order from the index, and flushing access times.
    ///
    /// `upload_origin` is the origin without retries: the uploader retries by itself, for as long
    /// as it takes, and reports each fault as it happens.
    pub fn open(
        cfg: CacheConfig,
        origin: Arc<dyn Origin>,
        upload_origin: Arc<dyn Origin>,
        registry: Option<&mut Registry>,
    ) -> Result<Arc<ReadCache>, CacheError> {
        std::fs::create_dir_all(&cfg.dir)?;
        let index = Index::open(&cfg.dir.join("index"))?;
        let blobs = Blobs::open(cfg.dir.join("blobs"))?;
        let stats = CacheStats::default();
        let mut registry = registry;
        if let Some(r) = registry.as_mut() {
            stats.register(r);
        }
        let journal = Journal::new(cfg.write.clone(), registry);
        if cfg.memory_bytes > 0 && memory_tier_limit(cfg.memory_bytes, 0) == 0 {
            tracing::warn!(
                memory_bytes = cfg.memory_bytes,
                index_bytes = INDEX_MEMORY,
                "the cache's memory budget leaves nothing for the memory tier after the index's caches and the allocator's share: every hit is a disk hit"
            );
        }
        let hot = HotTier::new(memory_tier_limit(cfg.memory_bytes, 0), stats.clone());
        let cache = Arc::new(ReadCache {
            evictor: Mutex::new(Evictor::new(cfg.disk_bytes)),
            cfg,
            origin,
            upload_origin,
            index,
            blobs,
            hot,
            fills: Mutex::new(HashMap::new()),
            journal,
            key_locks: (0..64).map(|_| Mutex::new(())).collect(),
            unsynced_release: AtomicBool::new(false),
            reads: Mutex::new(HashMap::new()),
            flush_soon: Arc::new(tokio::sync::Notify::new()),
            stats,
        });
        let replayed = cache.replay_journal()?;
        if replayed > 0 {
            tracing::info!(versions = replayed, "journal replayed; uploads resume");
        }
        cache.start_uploader();
        let warm = cache.clone();
        tokio::task::spawn_blocking(move || warm.rebuild_eviction_order());
        let flush = Arc::downgrade(&cache);
        let soon = cache.flush_soon.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(Duration::from_secs(10), soon.notified()).await;
                let Some(cache) = flush.upgrade() else { return };
                cache.flush_access_times();
            }
        });
        Ok(cache)
    }

    /// Feeds every indexed entry to the evictor, least recently read first, so the eviction order
    /// survives a restart. Runs in the background: the cache serves from the index meanwhile.
    fn rebuild_eviction_order(&self) {
        let started = Instant::now();
        let mut all = match self.index.scan(key_hash) {
            Ok(all) => all,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the cache index");
                return;
            }
        };
        all.sort_by_key(|e| e.last_read);
        let count = all.len();
        lock(&self.evictor).reserve(count);
        for e in all {
            let evicted = lock(&self.evictor).insert(e.blob, e.key_hash, e.size);
            self.drop_evicted(evicted);
        }
        self.fit_memory();
        self.refresh_gauges();
        release_free_memory();
        tracing::info!(
            entries = count,
            ms = started.elapsed().as_millis() as u64,
            "cache eviction order rebuilt"
        );
        // Blob files no entry names (a crash between writing a blob and indexing it): remove them.
        // Only an earlier run's: a fill of this run commits its blob just before indexing it.
        let earlier = self.index.first_id_of_this_run();
        if let (Ok(on_disk), Ok(mut named)) = (self.blobs.ids(), self.index.blob_ids()) {
            // Sorted ids and a binary search: a hash set of a million ids would cost 18 MB more.
            named.sort_unstable();
            for id in on_disk
                .into_iter()
                .filter(|id| *id < earlier && named.binary_search(id).is_err())
            {
                self.blobs.remove(id);
            }
        }
    }

    fn flush_access_times(&self) {
        // Taken whole, so that a burst of reads does not leave a large empty map behind.
        let reads: Vec<(String, SystemTime)> = std::mem::take(&mut *lock(&self.reads)).into_iter().collect();
        if !reads.is_empty()
            && let Err(e) = self.index.record_access(&reads)
        {
            tracing::warn!(error = %e, "cannot record cache access times");
        }
    }

    /// A clean stop: records the last access times and writes the index's memtables out, so the
    /// next start has no log to replay and is ready at once.
    pub fn close(&self) {
        self.flush_access_times();
        if let Err(e) = self.index.flush() {
            tracing::warn!(error = %e, "cannot flush the cache index");
        }
    }

    /// Gives the memory tier what the budget leaves after the index's caches and the disk tier's
    /// eviction state, once that moved enough to be worth emptying the tier for (see `HotTier`).
    pub(crate) fn fit_memory(&self) {
        let tracked = lock(&self.evictor).heap_bytes() as u64;
        let limit = memory_tier_limit(self.cfg.memory_bytes, tracked);
        let now = self.hot.capacity();
        if limit.abs_diff(now) > (self.cfg.memory_bytes / 32).max(1 << 20) || (limit < now && limit == 0) {
            tracing::info!(
                memory_tier_bytes = limit,
                eviction_state_bytes = tracked,
                "memory tier limit follows the disk tier"
            );
            self.hot.resize(limit);
        }
    }

    /// Brings the size and entry gauges up to date (also called before metrics are rendered).
    pub fn refresh_gauges(&self) {
        // moka counts inserts and removals lazily: settle them so that the gauges are current.
        let (hot_size, hot_entries) = self.hot.settle();
        self.stats.size.get_or_create(&MEMORY).set(hot_size as i64);
        self.stats.entries.get_or_create(&MEMORY).set(hot_entries as i64);
        self.stats.limit.get_or_create(&MEMORY).set(self.hot.capacity() as i64);
        let e = lock(&self.evictor);
        self.stats.size.get_or_create(&DISK).set(e.used() as i64);
        self.stats.entries.get_or_create(&DISK).set(e.len() as i64);
        self.stats.limit.get_or_create(&DISK).set(e.capacity() as i64);
        self.stats.eviction_state.set(e.heap_bytes() as i64);
    }

    /// The lock of `okey`'s stripe.
    pub(crate) fn key_lock(&self, okey: &str) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.key_locks[(key_hash(okey) % self.key_locks.len() as u64) as usize])
    }

    /// Forgets the memory copy of `okey` and makes sure a fill under way is not kept.
    pub(crate) fn forget_copies(&self, okey: &str) {
        self.hot.invalidate(okey);
        if let Some(fill) = lock(&self.fills).remove(okey) {
            fill.stale.store(true, Ordering::SeqCst);
        }
    }

    fn note_read(&self, okey: &str, blob: u64) {
        lock(&self.evictor).touch(blob);
        let now = SystemTime::now();
        let mut reads = lock(&self.reads);
        if let Some(at) = reads.get_mut(okey) {
            *at = now;
        } else {
            reads.insert(okey.to_owned(), now);
            if reads.len() == READS_FLUSH_AT {
                self.flush_soon.notify_one();
            }
        }
    }

    /// Called before blob files are removed: see `unsynced_release`.
    fn before_unlink(&self) {
        if self.unsynced_release.swap(false, Ordering::SeqCst)
            && let Err(e) = self.index.sync_wal()
        {
            tracing::warn!(error = %e, "cannot sync the cache index log");
            self.unsynced_release.store(true, Ordering::SeqCst);
        }
    }

    /// Removes evicted blobs from the index, the disk and the memory tier.
    pub(crate) fn drop_evicted(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.before_unlink();
        }
        for id in ids {
            self.stats.evictions.get_or_create(&DISK).inc();
            match self.index.key_of_blob(id) {
                Ok(Some(okey)) => {
                    if let Err(e) = self.index.remove_if(&okey, id) {
                        tracing::warn!(error = %e, "cannot drop an evicted cache entry");
                        continue;
                    }
                    if self.hot.get(&okey).is_some_and(|h| h.entry.blob == id) {
                        self.hot.invalidate(&okey);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up an evicted blob");
                    continue;
                }
            }
            self.blobs.remove(id);
        }
    }

    /// Forgets `entry` of `okey` (corrupt, changed at the origin, or replaced).
    fn drop_entry(&self, okey: &str, blob: u64) {
        if self
            .index
            .get(okey)
            .ok()
            .flatten()
            .is_some_and(|e| e.blob == blob && e.pending)
        {
            // The only copy of a version the origin does not have yet: kept for the uploader.
            tracing::error!(
                blob,
                "a version not yet uploaded failed a check; it is kept, not dropped"
            );
            return;
        }
        if self.hot.get(okey).is_some_and(|h| h.entry.blob == blob) {
            self.hot.invalidate(okey);
        }
        match self.index.remove_if(okey, blob) {
            Ok(_) => {
                lock(&self.evictor).remove(blob);
                self.before_unlink();
                self.blobs.remove(blob);
            }
            Err(e) => tracing::warn!(error = %e, "cannot drop a cache entry"),
        }
        self.refresh_gauges();
    }

    /// A write or delete through Perch changed `bucket/key`: forget every cached copy at once,
    /// and make sure a fill already under way is not kept.
    pub fn invalidate(&self, bucket: &str, key: &str) {
        let okey = object_key(bucket, key);
        self.forget_copies(&okey);
        match self.index.get(&okey) {
            Ok(Some(entry)) if !entry.pending => self.drop_entry(&okey, entry.blob),
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the cache index"),
        }
    }

    fn needs_revalidation(&self, key: &str, entry: &Entry) -> bool {
        !entry.pending
            && self.cfg.freshness.is_mutable(key)
            && entry
                .validated
                .elapsed()
                .map_or(true, |age| age >= self.cfg.revalidate_after)
    }

    /// Asks the origin whether a cached copy is still current. `Ok(true)`: it is (and is marked
    /// so); `Ok(false)`: it changed or is gone, and was dropped; an unreachable origin leaves the
    /// copy in service (stale-if-error) and says `Ok(true)`.
    async fn revalidate(&self, okey: &str, bucket: &str, key: &str, entry: &Entry) -> OriginResult<bool> {
        let cond = Conditions {
            if_none_match: Some(entry.etag_at_origin().to_owned()),
            ..Default::default()
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), self.origin.head_object(bucket, key, &cond)).await;
        let unchanged = || -> OriginResult<bool> {
            let mut fresh = entry.clone();
            fresh.validated = SystemTime::now();
            if let Err(e) = self.index.put(okey, &fresh, None) {
                tracing::warn!(error = %e, "cannot record a revalidation");
            }
            if let Some(h) = self.hot.get(okey).filter(|h| h.entry.blob == entry.blob) {
                self.hot.insert(
                    okey.to_owned(),
                    Arc::new(HotObject {
                        entry: fresh,
                        body: h.body.clone(),
                    }),
                );
            }
            self.stats
                .revalidations
                .get_or_create(&ResultLabel { result: "unchanged" })
                .inc();
            Ok(true)
        };
        match answer {
            Ok(Err(OriginError::NotModified)) => unchanged(),
            // An origin that ignores If-None-Match on HEAD: same ETag, same object (and fresh
            // again, like a 304, rather than asked about on every read from now on).
            Ok(Ok(meta)) if crate::origin::same_etag(&meta.etag, entry.etag_at_origin()) => unchanged(),
            Ok(Ok(_)) | Ok(Err(OriginError::NoSuchKey)) => {
                self.drop_entry(okey, entry.blob);
                self.stats
                    .revalidations
                    .get_or_create(&ResultLabel { result: "changed" })
                    .inc();
                Ok(false)
            }
            Ok(Err(OriginError::NoSuchBucket)) => Err(OriginError::NoSuchBucket),
            Ok(Err(e)) => {
                tracing::warn!(key, error = %e, "revalidation failed; serving the cached copy");
                self.stats
                    .revalidations
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                Ok(true)
            }
            Err(_) => {
                tracing::warn!(key, "revalidation timed out; serving the cached copy");
                self.stats
                    .revalidations
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                Ok(true)
            }
        }
    }

    /// The cached entry of `okey` from either tier, revalidated if its key is mutable.
    /// `None` when nothing usable is cached.
    async fn lookup(
        &self,
        okey: &str,
        bucket: &str,
        key: &str,
    ) -> OriginResult<Option<(Entry, Option<Bytes>, CacheStatus)>> {
        let (entry, body) = match self.hot.get(okey) {
            Some(h) => (h.entry.clone(), Some(h.body.clone())),
            None => match self.index.get(okey) {
                Ok(Some(e)) => (e, None),
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cache index; going to the origin");
                    return Ok(None);
                }
            },
        };
        let mut status = CacheStatus::Hit;
        if self.needs_revalidation(key, &entry) {
            if !self.revalidate(okey, bucket, key, &entry).await? {
                return Ok(None);
            }
            status = CacheStatus::Revalidated;
        }
        Ok(Some((entry, body, status)))
    }

    /// HEAD: the cached metadata, or the origin's (a HEAD does not fill the cache).
    pub async fn head(
        &self,
        bucket: &str,
        key: &str,
        conditions: &Conditions,
    ) -> OriginResult<(ObjectMeta, CacheStatus)> {
        let okey = object_key(bucket, key);
        if self.journal.deleted(&okey) {
            return Err(OriginError::NoSuchKey);
        }
        if let Some((entry, _, status)) = self.lookup(&okey, bucket, key).await? {
            conditions.check(&entry.meta)?;
            self.stats
                .hits
                .get_or_create(if self.hot.contains_key(&okey) { &MEMORY } else { &DISK })
                .inc();
            self.note_read(&okey, entry.blob);
            return Ok((entry.meta, status));
        }
        self.stats.misses.inc();
        let meta = self.origin.head_object(bucket, key, conditions).await?;
        Ok((meta, CacheStatus::Miss))
    }

    /// GET through the cache.
    pub async fn get(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<CachedGet> {
        let okey = object_key(bucket, key);
        if self.journal.deleted(&okey) {
            return Err(OriginError::NoSuchKey);
        }
        if let Some((entry, body, status)) = self.lookup(&okey, bucket, key).await? {
            conditions.check(&entry.meta)?;
            let span = match range {
                Some(r) => Some(r.resolve(entry.meta.size).ok_or(OriginError::InvalidRange)?),
                None => None,
            };
            if let Some(body) = body {
                self.note_read(&okey, entry.blob);
                self.stats.hits.get_or_create(&MEMORY).inc();
                let (first, last) = span.unwrap_or((0, entry.meta.size.saturating_sub(1)));
                let slice = if entry.meta.size == 0 {
                    Bytes::new()
                } else {
                    body.slice(first as usize..=last as usize)
                };
                self.stats
                    .bytes_served
                    .get_or_create(&MEMORY)
                    .inc_by(slice.len() as u64);
                let stream: ByteStream = Box::pin(futures::stream::once(async move { Ok(slice) }));
                return Ok(CachedGet {
                    output: GetOutput {
                        meta: entry.meta,
                        range: span,
                        body: stream,
                    },
                    status,
                });
            }
            let pending = entry.pending;
            if let Some(output) = self.serve_disk(&okey, bucket, key, entry, span).await {
                return Ok(CachedGet { output, status });
            }
            if pending {
                // The only copy of a write the origin does not have yet failed its check: the
                // origin's older copy must not be served in its place.
                return Err(OriginError::Io(io::Error::other(
                    "a written version not yet uploaded failed its integrity check",
                )));
            }
            // Corrupt or missing: dropped; fall through to a miss.
        }
        self.stats.misses.inc();
        if let Some(r) = range {
            // A range miss is answered from the origin at once; the whole object follows in the background.
            let out = self.origin.get_object(bucket, key, Some(r), conditions).await?;
            if out.meta.size <= self.cfg.background_fill_max.min(self.cfg.disk_bytes) {
                let _ = self.join_fill(&okey, bucket, key);
            }
            self.stats
                .bytes_served
                .get_or_create(&ORIGIN)
                .inc_by(out.range.map_or(out.meta.size, |(a, b)| b - a + 1));
            return Ok(CachedGet {
                output: out,
                status: CacheStatus::Miss,
            });
        }
        let (fill, joined) = self.join_fill(&okey, bucket, key);
        if joined {
            self.stats.coalesced.inc();
        }
        let mut rx = fill.tx.subscribe();
        let (meta, file) = loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Body { meta, file, .. } => break (meta, file),
                FillState::Failed(e) => return Err(e.to_origin()),
                FillState::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err(OriginError::Unavailable {
                    seconds: 0,
                    last: "the origin fetch ended".into(),
                });
            }
        };
        conditions.check(&meta)?;
        let size = meta.size;
        let stats = self.stats.clone();
        let reader = FillReader {
            rx,
            file,
            pos: 0,
            end: size,
        };
        let body: ByteStream = Box::pin(futures::stream::unfold(reader, move |mut r| {
            let stats = stats.clone();
            async move {
                let item = r.next_chunk().await?;
                if let Ok(b) = &item {
                    stats.bytes_served.get_or_create(&ORIGIN).inc_by(b.len() as u64);
                }
                Some((item, r))
            }
        }));
        let status = if size > self.keep_limit() {
            self.stats.bypass.inc();
            CacheStatus::Bypass
        } else {
            CacheStatus::Miss
        };
        Ok(CachedGet {
            output: GetOutput {
                meta: (*meta).clone(),
                range: None,
                body,
            },
            status,
        })
    }

    /// Objects larger than this pass through without being kept.
    fn keep_limit(&self) -> u64 {
        self.cfg.disk_bytes / 4
    }

    /// Serves a disk entry, checking each block before sending it. `None` when the entry turned out
    /// corrupt or missing before anything was sent (it is dropped, and the caller fetches afresh).
    async fn serve_disk(
        self: &Arc<Self>,
        okey: &str,
        bucket: &str,
        key: &str,
        entry: Entry,
        span: Option<(u64, u64)>,
    ) -> Option<GetOutput> {
        let size = entry.meta.size;
        let opened = self
            .blobs
            .open_blob(entry.blob)
            .and_then(|f| Ok((f.metadata()?.len(), f)));
        let file = match opened {
            Ok((len, f)) if len == size => f,
            _ => {
                self.corrupt(okey, &entry, "missing or truncated blob");
                return None;
            }
        };
        if size == 0 {
            self.note_read(okey, entry.blob);
            self.stats.hits.get_or_create(&DISK).inc();
            return Some(GetOutput {
                meta: entry.meta,
                range: span,
                body: Box::pin(futures::stream::empty()),
            });
        }
        let (first, last) = span.unwrap_or((0, size - 1));
        // Small objects are checked whole and promoted to memory.
        if size <= self.cfg.memory_object_max {
            // In the page cache: read here. Otherwise on a blocking thread, as the disk may wait.
            let body = match read_checked_if_cached(&file, size, &entry.crcs) {
                Some(read) => read,
                None => {
                    let f = file.clone();
                    let crcs = entry.crcs.clone();
                    tokio::task::spawn_blocking(move || read_checked(&f, size, &crcs))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)))
                }
            };
            let body = match body {
                Ok(Some(b)) => Bytes::from(b),
                _ => {
                    self.corrupt(okey, &entry, "a block failed its check");
                    return None;
                }
            };
            self.hot.insert(
                okey.to_owned(),
                Arc::new(HotObject {
                    entry: entry.clone(),
                    body: body.clone(),
                }),
            );
            // A write committed meanwhile forgot the memory copy before this insert, or names
            // another blob now: either way no stale copy stays in memory.
            if self.index.get(okey).ok().flatten().is_none_or(|e| e.blob != entry.blob) {
                self.hot.invalidate(okey);
            }
            self.note_read(okey, entry.blob);
            self.stats.hits.get_or_create(&DISK).inc();
            let slice = body.slice(first as usize..=last as usize);
            self.stats.bytes_served.get_or_create(&DISK).inc_by(slice.len() as u64);
            return Some(GetOutput {
                meta: entry.meta,
                range: span,
                body: Box::pin(futures::stream::once(async move { Ok(slice) })),
            });
        }
        // Larger ones stream block by block; the first block is checked before answering.
        let first_block = first / BLOCK;
        let f = file.clone();
        let crcs = entry.crcs.clone();
        let checked = tokio::task::spawn_blocking(move || read_block(&f, size, &crcs, first_block)).await;
        let block0 = match checked {
            Ok(Ok(Some(b))) => b,
            _ => {
                self.corrupt(okey, &entry, "a block failed its check");
                return None;
            }
        };
        self.note_read(okey, entry.blob);
        self.stats.hits.get_or_create(&DISK).inc();
        let reader = DiskReader {
            cache: self.clone(),
            okey: okey.to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            entry: entry.clone(),
            file,
            pos: first,
            last,
            pending: Some(Bytes::from(block0)),
            fallback: None,
        };
        let body: ByteStream = Box::pin(futures::stream::unfold(reader, |mut r| async move {
            let item = r.next_chunk().await?;
            Some((item, r))
        }));
        Some(GetOutput {
            meta: entry.meta,
            range: span,
            body,
        })
    }

    fn corrupt(&self, okey: &str, entry: &Entry, why: &str) {
        tracing::warn!(
            key = okey.split('\0').nth(1).unwrap_or(""),
            blob = entry.blob,
            why,
            "dropping a corrupt cache entry"
        );
        self.stats.corrupt.inc();
        self.drop_entry(okey, entry.blob);
    }

    /// The fill of `okey`: the one under way (`true`: joined), or a new one.
    fn join_fill(self: &Arc<Self>, okey: &str, bucket: &str, key: &str) -> (Arc<Fill>, bool) {
        let mut fills = lock(&self.fills);
        if let Some(f) = fills.get(okey) {
            return (f.clone(), true);
        }
        let (tx, _) = watch::channel(FillState::Pending);
        let fill = Arc::new(Fill {
            tx,
            stale: AtomicBool::new(false),
        });
        fills.insert(okey.to_owned(), fill.clone());
        drop(fills);
        let cache = self.clone();
        let (okey, bucket, key) = (okey.to_owned(), bucket.to_owned(), key.to_owned());
        let f = fill.clone();
        tokio::spawn(async move {
            let result = cache.run_fill(&okey, &bucket, &key, &f).await;
            if let Err(e) = result {
                f.tx.send_replace(FillState::Failed(Arc::new(e)));
            }
            let mut fills = lock(&cache.fills);
            if fills.get(&okey).is_some_and(|cur| Arc::ptr_eq(cur, &f)) {
                fills.remove(&okey);
            }
        });
        (fill, false)
    }

    /// Fetches the whole object into a temp file, resuming a broken stream with Range + If-Match,
    /// then keeps it as a cache entry unless it went stale or is too large.
    async fn run_fill(&self, okey: &str, bucket: &str, key: &str, fill: &Fill) -> Result<(), FillError> {
        let started = Instant::now();
        let out = self
            .origin
            .get_object(bucket, key, None, &Conditions::default())
            .await
            .map_err(FillError::from_origin)?;
        let meta = Arc::new(out.meta);
        let size = meta.size;
        let temp = self.blobs.temp_path();
        let io_err = |e: io::Error| FillError::Unavailable(format!("cache temp file: {e}"));
        let writer = Arc::new(File::create(&temp).map_err(io_err)?);
        let _cleanup = TempGuard(temp.clone());
        let reader_file = Arc::new(File::open(&temp).map_err(io_err)?);
        fill.tx.send_replace(FillState::Body {
            meta: meta.clone(),
            file: reader_file,
            written: 0,
            done: false,
        });

        let mut body = out.body;
        let mut written = 0u64;
        let mut crcs = BlockCrcs::default();
        let mut md5 = Md5::new();
        let mut small = (size <= self.cfg.memory_object_max).then(|| BytesMut::with_capacity(size as usize));
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    if written + chunk.len() as u64 > size {
                        return Err(FillError::Corrupt("the origin sent more bytes than announced".into()));
                    }
                    let (w, c, at) = (writer.clone(), chunk.clone(), written);
                    tokio::task::spawn_blocking(move || w.write_all_at(&c, at))
                        .await
                        .map_err(|e| io_err(io::Error::other(e)))?
                        .map_err(io_err)?;
                    written += chunk.len() as u64;
                    crcs.update(&chunk);
                    md5.update(&chunk);
                    if let Some(s) = &mut small {
                        s.extend_from_slice(&chunk);
                    }
                    fill.tx.send_modify(|s| {
                        if let FillState::Body { written: w, .. } = s {
                            *w = written;
                        }
                    });
                }
                Some(Err(e)) => {
                    if started.elapsed() >= self.cfg.retry_deadline {
                        return Err(FillError::Unavailable(format!("origin stream broke: {e}")));
                    }
                    tracing::info!(key, written, error = %e, "origin stream broke; resuming with a range request");
                    self.stats.resumed.inc();
                    let cond = Conditions {
                        if_match: Some(meta.etag.clone()),
                        ..Default::default()
                    };
                    let range = ByteRange::FromTo {
                        first: written,
                        last: None,
                    };
                    let more = self
                        .origin
                        .get_object(bucket, key, Some(range), &cond)
                        .await
                        .map_err(|e| match e {
                            OriginError::PreconditionFailed => {
                                FillError::Unavailable("the object changed during the fetch".into())
                            }
                            other => FillError::from_origin(other),
                        })?;
                    if more.range.is_some_and(|(a, _)| a != written) {
                        return Err(FillError::Unavailable("the origin resumed at the wrong offset".into()));
                    }
                    body = more.body;
                }
                None => break,
            }
        }
        if written != size {
            return Err(FillError::Unavailable(format!(
                "the origin sent {written} of {size} bytes"
            )));
        }
        let digest = hex::encode(md5.finalize());
        if let Some(want) = md5_etag(&meta.etag)
            && !want.eq_ignore_ascii_case(&digest)
        {
            self.stats.corrupt.inc();
            return Err(FillError::Corrupt(format!(
                "body MD5 {digest} does not match the ETag {}",
                meta.etag
            )));
        }
        let keep = !fill.stale.load(Ordering::SeqCst) && size <= self.keep_limit();
        if keep && let Err(e) = self.keep(okey, &temp, &meta, crcs.finish(), small.map(BytesMut::freeze), fill) {
            tracing::warn!(key, error = %e, "could not keep a fetched object in the cache");
        }
        fill.tx.send_modify(|s| {
            if let FillState::Body { done, .. } = s {
                *done = true;
            }
        });
        Ok(())
    }

    /// Makes a fetched temp file a cache entry.
    fn keep(
        &self,
        okey: &str,
        temp: &std::path::Path,
        meta: &ObjectMeta,
        crcs: Vec<u32>,
        small: Option<Bytes>,
        fill: &Fill,
    ) -> Result<(), CacheError> {
        let _key = self.key_lock(okey);
        // A version written through Perch meanwhile is newer than what the origin sent.
        if self.journal.is_dirty(okey) || fill.stale.load(Ordering::SeqCst) {
            return Ok(());
        }
        let previous = self.index.get(okey)?;
        if previous.as_ref().is_some_and(|p| p.pending) {
            return Ok(());
        }
        let id = self.index.next_blob_id()?;
        self.blobs.commit(temp, id)?;
        let entry = Entry {
            blob: id,
            meta: meta.clone(),
            crcs,
            validated: SystemTime::now(),
            pending: false,
            origin_etag: None,
        };
        self.index.put(okey, &entry, previous.as_ref().map(|p| p.blob))?;
        if let Some(p) = previous.filter(|p| p.blob != id) {
            lock(&self.evictor).remove(p.blob);
            self.before_unlink();
            self.blobs.remove(p.blob);
        }
        let evicted = lock(&self.evictor).insert(id, key_hash(okey), meta.size);
        if let Some(body) = small.filter(|_| !evicted.contains(&id)) {
            self.hot.insert(okey.to_owned(), Arc::new(HotObject { entry, body }));
        }
        self.drop_evicted(evicted);
        self.fit_memory();
        self.refresh_gauges();
        Ok(())
    }
}

/// Removes a fill's temp file when the fill ends, kept or not (a kept one was renamed away).
pub(crate) struct TempGuard(pub(crate) PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One waiter's view of a fill: reads what has landed, waits for more.
struct FillReader {
    rx: watch::Receiver<FillState>,
    file: Arc<File>,
    pos: u64,
    end: u64,
}

const CHUNK: u64 = 256 * 1024;

impl FillReader {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            let state = self.rx.borrow_and_update().clone();
            match state {
                FillState::Failed(e) => return Some(Err(io::Error::other(format!("origin fetch failed: {e:?}")))),
                FillState::Body { written, done, .. } => {
                    // The last byte waits until the fill has checked the whole body.
                    let limit = if done { written } else { written.min(self.end - 1) };
                    if limit > self.pos {
                        let n = (limit - self.pos).min(CHUNK) as usize;
                        let chunk = read_at(self.file.clone(), self.pos, n).await;
                        if let Ok(c) = &chunk {
                            self.pos += c.len() as u64;
                        }
                        return Some(chunk);
                    }
                    if done {
                        return Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "origin fetch ended short",
                        )));
                    }
                }
                FillState::Pending => {}
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(io::Error::other("origin fetch ended")));
            }
        }
    }
}

/// Streams a disk entry block by block, each checked before it is sent; after a bad block the
/// rest comes from the origin (Range + If-Match on the cached ETag).
struct DiskReader {
    cache: Arc<ReadCache>,
    okey: String,
    bucket: String,
    key: String,
    entry: Entry,
    file: Arc<File>,
    /// Next byte to send.
    pos: u64,
    /// Last byte to send (inclusive).
    last: u64,
    /// The checked block that holds `pos`, when already read.
    pending: Option<Bytes>,
    fallback: Option<ByteStream>,
}

impl DiskReader {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(f) = &mut self.fallback {
            return f.next().await;
        }
        if self.pos > self.last {
            return None;
        }
        let size = self.entry.meta.size;
        let block_index = self.pos / BLOCK;
        let block = match self.pending.take() {
            Some(b) => b,
            None => {
                let (f, crcs) = (self.file.clone(), self.entry.crcs.clone());
                match tokio::task::spawn_blocking(move || read_block(&f, size, &crcs, block_index)).await {
                    Ok(Ok(Some(b))) => Bytes::from(b),
                    _ => return self.fall_back().await,
                }
            }
        };
        let block_start = block_index * BLOCK;
        let from = (self.pos - block_start) as usize;
        let to = ((self.last - block_start) as usize + 1).min(block.len());
        let out = block.slice(from..to);
        self.pos = block_start + to as u64;
        self.cache
            .stats
            .bytes_served
            .get_or_create(&DISK)
            .inc_by(out.len() as u64);
        Some(Ok(out))
    }

    async fn fall_back(&mut self) -> Option<io::Result<Bytes>> {
        self.cache
            .corrupt(&self.okey, &self.entry, "a block failed its check while streaming");
        let cond = Conditions {
            if_match: Some(self.entry.etag_at_origin().to_owned()),
            ..Default::default()
        };
        let range = ByteRange::FromTo {
            first: self.pos,
            last: Some(self.last),
        };
        // On a task of its own: a body stream must be `Sync`, and the origin's future is only
        // `Send` (a `JoinHandle` is both).
        let (origin, bucket, key) = (self.cache.origin.clone(), self.bucket.clone(), self.key.clone());
        let fetch = tokio::spawn(async move { origin.get_object(&bucket, &key, Some(range), &cond).await });
        let fetched = match fetch.await {
            Ok(r) => r,
            Err(e) => {
                return Some(Err(io::Error::other(format!(
                    "refetching a corrupt cache entry failed: {e}"
                ))));
            }
        };
        match fetched {
            Ok(out) => {
                let mut body = out.body;
                let first = body.next().await;
                self.fallback = Some(body);
                first
            }
            Err(e) => Some(Err(io::Error::other(format!(
                "refetching a corrupt cache entry failed: {e}"
            )))),
        }
    }
}
