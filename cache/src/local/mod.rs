//! `Local`: what the engine keeps on this machine, shared by the reader and the journal: the index
//! (RocksDB), the blob files, the disk tier's eviction order, the memory tier, the fills under way,
//! the per-key locks, and the rule that the index log is synced before a blob file is unlinked.
//!
//! Lock order, everywhere: a key's stripe, then the journal's epoch, then the journal's state, then
//! the evictor (never held across I/O other than RocksDB's).

pub(crate) mod blobs;
pub(crate) mod evict;
pub(crate) mod fills;
pub(crate) mod index;
pub(crate) mod room;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::registry::Registry;

use crate::error::CacheError;
use crate::key::ObjectKey;
use crate::local::blobs::Blobs;
use crate::local::evict::Evictor;
use crate::local::fills::{Fill, Fills};
use crate::local::index::{Entry, INDEX_MEMORY, Index};
use crate::local::room::{DiskRoom, Spare};
use crate::memory::{MemoryObject, MemoryTier, memory_tier_limit, release_free_memory};
use crate::metrics::{CacheStats, DISK, MEMORY, ReasonLabel};
use crate::origin::ObjectMeta;

/// The disk tier's limit where the free space cannot be told.
const DISK_BYTES_UNKNOWN: u64 = 10 << 30;

/// The disk tier's default limit: 80% of the free space plus what the cache holds, at most 1 TiB.
fn default_disk_bytes(free: u64, held: u64) -> u64 {
    (free.saturating_add(held) / 10 * 8).min(1 << 40)
}

/// Reads whose times wait for the next flush, at most (beyond, the flush is started at once): a
/// burst of distinct reads must not grow the map without bound (~100 bytes a key).
const READS_FLUSH_AT: usize = 16_384;

/// Prefetched objects whose first use is watched, at most (beyond, the watch starts over).
const PREFETCHED_MAX: usize = 65_536;

/// Where and how much `Local` keeps.
#[derive(Debug, Clone)]
pub(crate) struct LocalConfig {
    /// `<data-dir>/cache`.
    pub dir: PathBuf,
    /// Limit of the disk tier; `None`: 80% of what the filesystem leaves it (its free space at
    /// open, plus what the cache already holds, known once the index was read), at most 1 TiB.
    pub disk_bytes: Option<u64>,
    /// The memory budget: the index's caches, the eviction order, the memory tier in the rest.
    pub memory_bytes: u64,
    /// Objects up to this size also live in memory.
    pub memory_object_max: u64,
    /// Free space kept on the data dir's filesystem (`--disk-reserve-bytes`): clean entries are
    /// evicted to keep it, and writes wait rather than take it.
    pub reserve_bytes: u64,
    /// Whether the policy pins a key's copies (`cache = "pin"`): never evicted.
    pub pinned: Option<Pinned>,
}

/// The policy's pin decision for a key.
#[derive(Clone)]
pub(crate) struct Pinned(pub Arc<dyn Fn(&ObjectKey) -> bool + Send + Sync>);

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pinned(policy)")
    }
}

pub(crate) struct Local {
    cfg: LocalConfig,
    /// The disk tier's limit (`LocalConfig::disk_bytes`, its default grown once the index was read).
    capacity: AtomicU64,
    /// The filesystem's free space at open, for that default.
    free_at_open: u64,
    pub index: Index,
    pub blobs: Blobs,
    pub memory: MemoryTier,
    pub fills: Fills,
    /// The data dir's disk budget: its filesystem's free space less the reserve.
    pub room: DiskRoom,
    /// Room held apart for a start on a full disk.
    spare: Spare,
    /// Wakes the keeper of the reserve at once (a write found the disk full).
    room_soon: Arc<tokio::sync::Notify>,
    evictor: Mutex<Evictor>,
    /// Striped per-key locks: a commit, a release and the keeping of a fetched copy of one key
    /// never interleave.
    key_locks: Vec<Mutex<()>>,
    /// While the start's rebuild of the eviction order runs: blobs removed meanwhile, which its
    /// snapshot of the index still names (`None` once it is done).
    removed_while_rebuilding: Mutex<Option<std::collections::HashSet<u64>>>,
    /// Reads since the last flush of access times.
    reads: Mutex<HashMap<ObjectKey, SystemTime>>,
    /// Wakes the flush of access times early, when `reads` has grown to `READS_FLUSH_AT`.
    flush_soon: Arc<tokio::sync::Notify>,
    /// Objects prefetched and not yet read by a client, with why they were fetched.
    prefetched: Mutex<HashMap<ObjectKey, &'static str>>,
    /// Keys with requests the origin decides under way (`Deciding`), and how many: no fill keeps a
    /// copy of them meanwhile.
    deciding: Mutex<HashMap<ObjectKey, usize>>,
    pub stats: CacheStats,
}

/// A request the origin decides for a key (a conditional PUT or DELETE, a copy the origin makes)
/// is under way, from before its cached copy is dropped (`Local::invalidate`) until this ends,
/// after the origin's answer (`Store::decide`, which runs the request to its end even if the
/// client goes): no fill keeps a copy of the key meanwhile. A read may fetch the old body then, before the origin applies the request: it is
/// served, never kept, for nothing would drop it again once the request is over (a kill before
/// the answer kept it for good).
pub(crate) struct Deciding {
    local: Arc<Local>,
    okey: ObjectKey,
    /// `end` ran: nothing left for `Drop`.
    ended: bool,
}

impl Deciding {
    /// Takes the key's lock: call it off the runtime's threads (a commit holds that lock through
    /// its syncs).
    pub(crate) fn new(local: Arc<Local>, okey: ObjectKey) -> Deciding {
        {
            // Under the key's lock: a fill's keeping is before it (its copy is seen, and dropped,
            // by `invalidate`) or after it (refused).
            let _key = local.key_lock(&okey);
            *lock(&local.deciding).entry(okey.clone()).or_default() += 1;
        }
        Deciding {
            local,
            okey,
            ended: false,
        }
    }

    /// Ends it once the origin has answered, before the client hears the answer: a read after
    /// that answer keeps its copy again. (Dropped instead, with a task that panicked or a runtime
    /// shutting down, it ends a moment later.)
    pub(crate) async fn end(mut self) {
        self.ended = true;
        let (local, okey) = (self.local.clone(), self.okey.clone());
        if let Err(error) = tokio::task::spawn_blocking(move || end_deciding(&local, &okey)).await {
            tracing::warn!(%error, "cannot end a request the origin decides");
        }
    }
}

/// The end of a `Deciding`, under the key's lock.
fn end_deciding(local: &Local, okey: &ObjectKey) {
    let _key = local.key_lock(okey);
    // Fills started meanwhile may hold the old body: none of them is kept.
    local.forget_copies(okey);
    let mut deciding = lock(&local.deciding);
    if let Some(n) = deciding.get_mut(okey) {
        *n -= 1;
        if *n == 0 {
            deciding.remove(okey);
        }
    }
}

impl Drop for Deciding {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (local, okey) = (self.local.clone(), self.okey.clone());
        let end = move || end_deciding(&local, &okey);
        // The key's lock, off the runtime's threads (until then, no fill keeps a copy: only a
        // lost chance to cache).
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(end)),
            Err(_) => end(),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (plain maps and counters).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a key has versions the origin does not have yet: the journal answers, the read path
/// asks (without knowing the journal).
pub(crate) trait Pending: Send + Sync {
    fn has_pending(&self, okey: &ObjectKey) -> bool;
}

/// Blobs the evictor chose to drop, to be removed once no key lock is held.
#[derive(Debug, Default)]
pub(crate) struct Evicted(Vec<u64>);

/// Removes a temp file when dropped, unless it was renamed away first.
pub(crate) struct TempGuard(pub(crate) PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Local {
    /// Opens the index and the blob directory under `cfg.dir`.
    pub(crate) fn open(cfg: LocalConfig, registry: Option<&mut Registry>) -> Result<Local, CacheError> {
        // RocksDB fsyncs what it writes in its directory, not the directory's own name.
        crate::durable::create_dirs(&cfg.dir.join("index"))?;
        let room = DiskRoom::new(&cfg.dir, cfg.reserve_bytes);
        let spare = Spare::new(&cfg.dir, cfg.reserve_bytes);
        spare.give_back_if_short(&room);
        let free_at_open = room.free().unwrap_or(DISK_BYTES_UNKNOWN);
        let capacity = cfg.disk_bytes.unwrap_or_else(|| default_disk_bytes(free_at_open, 0));
        let index = Index::open(&cfg.dir.join("index"))?;
        let blobs = Blobs::open(cfg.dir.join("blobs"))?;
        let stats = CacheStats::default();
        if let Some(r) = registry {
            stats.register(r);
        }
        if cfg.memory_bytes > 0 && memory_tier_limit(cfg.memory_bytes, 0) == 0 {
            tracing::warn!(
                memory_bytes = cfg.memory_bytes,
                index_bytes = INDEX_MEMORY,
                "the cache's memory budget leaves nothing for the memory tier after the index's caches and the allocator's share: every hit is a disk hit"
            );
        }
        Ok(Local {
            memory: MemoryTier::new(memory_tier_limit(cfg.memory_bytes, 0), stats.clone()),
            evictor: Mutex::new(Evictor::new(capacity)),
            capacity: AtomicU64::new(capacity),
            free_at_open,
            room,
            spare,
            room_soon: Arc::new(tokio::sync::Notify::new()),
            cfg,
            index,
            blobs,
            fills: Fills::default(),
            key_locks: (0..64).map(|_| Mutex::new(())).collect(),
            removed_while_rebuilding: Mutex::new(Some(Default::default())),
            reads: Mutex::new(HashMap::new()),
            flush_soon: Arc::new(tokio::sync::Notify::new()),
            prefetched: Mutex::new(HashMap::new()),
            deciding: Mutex::new(HashMap::new()),
            stats,
        })
    }

    /// Starts the background work: rebuilding the eviction order from the index, and flushing
    /// access times every 10 s (sooner after a burst of reads).
    pub(crate) fn start(self: &Arc<Self>) {
        let warm = self.clone();
        tokio::task::spawn_blocking(move || warm.rebuild_eviction_order());
        let flush = Arc::downgrade(self);
        let soon = self.flush_soon.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(Duration::from_secs(10), soon.notified()).await;
                let Some(local) = flush.upgrade() else { return };
                local.flush_access_times();
            }
        });
        // The keeper of the reserve: something other than a write Perch admitted (a fill, the
        // index, another program) may have taken it; clean entries go to give it back.
        let keeper = Arc::downgrade(self);
        let soon = self.room_soon.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(Duration::from_secs(1), soon.notified()).await;
                let Some(local) = keeper.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || {
                    // Clean entries give way to the spare too: it is what lets Perch start on a
                    // disk something else filled.
                    let wanted = local.spare.wanted();
                    local.make_room(wanted);
                    if wanted > 0 {
                        local.spare.take(&local.room);
                    }
                })
                .await;
            }
        });
    }

    /// Evicts clean entries, least valuable first, until `need` more bytes fit on the data dir's
    /// filesystem with the reserve left. Returns how many bytes are still missing (0: they fit);
    /// what is missing then is pending versions and files being written, which only uploads or
    /// their end free. Called holding no key lock.
    pub(crate) fn make_room(&self, need: u64) -> u64 {
        let mut short = self.room.shortfall(need);
        while short > 0 {
            let evicted = {
                let mut e = lock(&self.evictor);
                let target = e.used().saturating_sub(short);
                e.shrink_to(target)
            };
            if evicted.is_empty() {
                break;
            }
            tracing::info!(
                entries = evicted.len(),
                short_bytes = short,
                "the data dir's filesystem is short of room: clean cache entries evicted"
            );
            self.drop_evicted(Evicted(evicted));
            self.refresh_gauges();
            short = self.room.shortfall(need);
        }
        short
    }

    /// Asks the keeper of the reserve to look at once (from a thread that holds a key lock and so
    /// cannot evict itself).
    pub(crate) fn make_room_soon(&self) {
        self.room_soon.notify_one();
    }

    /// Objects larger than this pass through without being kept.
    pub(crate) fn keep_limit(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed) / 4
    }

    pub(crate) fn memory_object_max(&self) -> u64 {
        self.cfg.memory_object_max
    }

    /// The lock of `okey`'s stripe.
    /// Runs `f` on the blocking pool and waits for it: work that takes a key's lock (commits hold
    /// it across their syncs), syncs the index log or removes a file stays off the async threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Local) -> T + Send + 'static,
    ) -> Result<T, CacheError> {
        let local = self.clone();
        tokio::task::spawn_blocking(move || f(&local))
            .await
            .map_err(|e| CacheError::Io(std::io::Error::other(e)))
    }

    pub(crate) fn key_lock(&self, okey: &ObjectKey) -> MutexGuard<'_, ()> {
        lock(&self.key_locks[(okey.hash64() % self.key_locks.len() as u64) as usize])
    }

    /// Feeds every indexed entry to the evictor, least recently read first, so the eviction order
    /// survives a restart. Runs in the background: the cache serves from the index meanwhile.
    fn rebuild_eviction_order(&self) {
        let started = Instant::now();
        let pinned = |okey: &ObjectKey| self.cfg.pinned.as_ref().is_some_and(|p| (p.0)(okey));
        let (mut all, pending_bytes) = match self.index.scan(&pinned) {
            Ok(scanned) => scanned,
            Err(e) => {
                tracing::error!(error = %e, "cannot scan the cache index");
                return;
            }
        };
        all.sort_by_key(|e| e.last_read);
        let count = all.len();
        if self.cfg.disk_bytes.is_none() {
            // The free space at open left out what the cache held then, and the writes not yet
            // uploaded (clean entries once they are): a restart must not shrink the cache to 80%
            // of what they did not take.
            let held = all.iter().map(|e| e.size).sum::<u64>().saturating_add(pending_bytes);
            let capacity = default_disk_bytes(self.free_at_open, held);
            lock(&self.evictor).set_capacity(capacity);
            self.capacity.store(capacity, Ordering::Relaxed);
            tracing::info!(disk_bytes = capacity, held_bytes = held, "the disk tier's limit");
        }
        lock(&self.evictor).reserve(count);
        for e in all {
            // A blob removed since the scan (dropped, replaced, evicted) must not come back.
            let evicted = {
                let removed = lock(&self.removed_while_rebuilding);
                if removed.as_ref().is_some_and(|r| r.contains(&e.blob)) {
                    continue;
                }
                let mut evictor = lock(&self.evictor);
                if e.pinned {
                    evictor.insert_pinned(e.blob, e.size)
                } else {
                    evictor.insert(e.blob, e.key_hash, e.size)
                }
            };
            self.drop_evicted(Evicted(evicted));
        }
        *lock(&self.removed_while_rebuilding) = None;
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

    pub(crate) fn flush_access_times(&self) {
        // Taken whole, so that a burst of reads does not leave a large empty map behind.
        let reads: Vec<(ObjectKey, SystemTime)> = std::mem::take(&mut *lock(&self.reads))
            .into_iter()
            // Only keys the index holds: a miss that found nothing (a 404, a fill not kept) or a
            // read of a copy evicted since would leave a row nothing ever removes, and the hot
            // set would count it.
            .filter(|(okey, _)| matches!(self.index.get(okey), Ok(Some(_))))
            .collect();
        if !reads.is_empty()
            && let Err(e) = self.index.record_access(&reads)
        {
            tracing::warn!(error = %e, "cannot record cache access times");
        }
    }

    /// A clean stop: records the last access times and writes the index's memtables out, so the
    /// next start has no log to replay and is ready at once.
    pub(crate) fn close(&self) {
        self.flush_access_times();
        if let Err(e) = self.index.flush() {
            tracing::warn!(error = %e, "cannot flush the cache index");
        }
    }

    /// Gives the memory tier what the budget leaves after the index's caches and the disk tier's
    /// eviction state, once that moved enough to be worth emptying the tier for (see `memory`).
    pub(crate) fn fit_memory(&self) {
        let tracked = lock(&self.evictor).heap_bytes() as u64;
        let limit = memory_tier_limit(self.cfg.memory_bytes, tracked);
        let now = self.memory.capacity();
        if limit.abs_diff(now) > (self.cfg.memory_bytes / 32).max(1 << 20) || (limit < now && limit == 0) {
            tracing::info!(
                memory_tier_bytes = limit,
                eviction_state_bytes = tracked,
                "memory tier limit follows the disk tier"
            );
            self.memory.resize(limit);
        }
    }

    /// Brings the size and entry gauges up to date (also called before metrics are rendered).
    pub(crate) fn refresh_gauges(&self) {
        // moka counts inserts and removals lazily: settle them so that the gauges are current.
        let (memory_size, memory_entries) = self.memory.settle();
        self.stats.size.get_or_create(&MEMORY).set(memory_size as i64);
        self.stats.entries.get_or_create(&MEMORY).set(memory_entries as i64);
        self.stats
            .limit
            .get_or_create(&MEMORY)
            .set(self.memory.capacity() as i64);
        let e = lock(&self.evictor);
        self.stats.size.get_or_create(&DISK).set(e.used() as i64);
        self.stats.entries.get_or_create(&DISK).set(e.len() as i64);
        self.stats.limit.get_or_create(&DISK).set(e.capacity() as i64);
        self.stats.eviction_state.set(e.heap_bytes() as i64);
    }

    /// Forgets the memory copy of `okey` and makes sure a fill under way is not kept.
    pub(crate) fn forget_copies(&self, okey: &ObjectKey) {
        self.memory.invalidate(okey);
        self.fills.mark_stale(okey);
    }

    /// Whether `size` more bytes fit in the disk tier without evicting anything, with a tenth of
    /// it left for clients' misses: the only room a prefetch may take (`Prefetcher::take_room`
    /// adds the prefetch fills under way, which the tier does not count until each is kept).
    pub(crate) fn tier_has_room(&self, size: u64) -> bool {
        let e = lock(&self.evictor);
        e.used().saturating_add(size) <= e.capacity() - e.capacity() / 10
    }

    /// Whether the data dir's filesystem has `size` more bytes beside the reserve (a fill under way
    /// has already taken its own: it preallocates its temp file).
    pub(crate) fn filesystem_has_room(&self, size: u64) -> bool {
        self.room.shortfall(size) == 0
    }

    /// `okey` is being prefetched (`reason`): its first read by a client counts as a use.
    pub(crate) fn mark_prefetched(&self, okey: &ObjectKey, reason: &'static str) {
        let mut p = lock(&self.prefetched);
        if p.len() >= PREFETCHED_MAX {
            p.clear();
        }
        p.insert(okey.clone(), reason);
    }

    pub(crate) fn unmark_prefetched(&self, okey: &ObjectKey) {
        lock(&self.prefetched).remove(okey);
    }

    /// A client read `okey` (a hit, or a miss joining a fill): a prefetch of it was used.
    pub(crate) fn note_client_read(&self, okey: &ObjectKey) {
        let reason = {
            let mut p = lock(&self.prefetched);
            if p.is_empty() {
                return;
            }
            p.remove(okey)
        };
        if let Some(reason) = reason {
            self.stats.prefetch_used.get_or_create(&ReasonLabel { reason }).inc();
        }
    }

    /// Records a read of `okey`'s blob: its place in the eviction order, and its access time.
    pub(crate) fn note_read(&self, okey: &ObjectKey, blob: u64) {
        self.note_client_read(okey);
        self.note_head(okey, blob);
    }

    /// Records a HEAD of `okey`: as a read, but no use of a prefetch of it (its bytes were not
    /// read).
    pub(crate) fn note_head(&self, okey: &ObjectKey, blob: u64) {
        lock(&self.evictor).touch(blob);
        self.note_access(okey);
    }

    /// Records that a client read `okey` now (a hit, or a miss whose fill keeps it): the hot set
    /// is made of these times.
    pub(crate) fn note_access(&self, okey: &ObjectKey) {
        self.note_access_at(okey, SystemTime::now(), true);
    }

    /// A prewarmed object no client has read yet: `at` (older than any read here) keeps its place
    /// in the hot set this machine writes. A client's read of it sets its own time.
    pub(crate) fn note_carried_access(&self, okey: &ObjectKey, at: SystemTime) {
        self.note_access_at(okey, at, false);
    }

    fn note_access_at(&self, okey: &ObjectKey, at: SystemTime, replace: bool) {
        let mut reads = lock(&self.reads);
        if let Some(known) = reads.get_mut(okey) {
            if replace {
                *known = at;
            }
        } else {
            reads.insert(okey.clone(), at);
            if reads.len() == READS_FLUSH_AT {
                self.flush_soon.notify_one();
            }
        }
    }

    /// A version was released without a sync: the next blob removal syncs the log first.
    pub(crate) fn note_unsynced_release(&self) {
        self.index.note_release();
    }

    /// Makes every release so far durable (`Index::sync_releases`): before a blob file is
    /// removed, and before a request the origin decides is sent (a replay of a lost release
    /// would upload an old version over it).
    pub(crate) fn sync_releases(&self) -> Result<(), CacheError> {
        self.index.sync_releases()
    }

    /// Called before blob files are removed: whether they may go (`Index::sync_releases`). When
    /// the releases cannot be made durable, the files stay: a power cut could bring back a
    /// release's journal record, whose upload reads its blob. The start's sweep of blob files no
    /// entry names removes them later.
    fn before_unlink(&self) -> bool {
        match self.sync_releases() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sync the cache index log: a blob file stays until the next start");
                false
            }
        }
    }

    /// Removes a blob no index entry names any more.
    pub(crate) fn remove_blob(&self, blob: u64) {
        if let Some(removed) = lock(&self.removed_while_rebuilding).as_mut() {
            removed.insert(blob);
        }
        lock(&self.evictor).remove(blob);
        if self.before_unlink() {
            self.blobs.remove(blob);
        }
    }

    /// A clean entry of `okey` (a fetched copy, or a version the origin now has): the evictor may
    /// take it from here. Returns what it evicts to make room, for `drop_evicted` once the caller
    /// holds no key lock.
    #[must_use]
    pub(crate) fn track(&self, okey: &ObjectKey, blob: u64, size: u64) -> Evicted {
        let pinned = self.cfg.pinned.as_ref().is_some_and(|p| (p.0)(okey));
        let mut evictor = lock(&self.evictor);
        let evicted = if pinned {
            evictor.insert_pinned(blob, size)
        } else {
            evictor.insert(blob, okey.hash64(), size)
        };
        Evicted(evicted)
    }

    /// Removes evicted blobs from the index, the disk and the memory tier, each under its key's
    /// lock (a commit of that key in between keeps its entry). Called holding no key lock.
    pub(crate) fn drop_evicted(&self, evicted: Evicted) {
        if evicted.0.is_empty() {
            return;
        }
        for id in evicted.0 {
            self.stats.evictions.get_or_create(&DISK).inc();
            let may_unlink = match self.index.key_of_blob(id) {
                Ok(Some(okey)) => {
                    let _key = self.key_lock(&okey);
                    match self.index.remove_if(&okey, id) {
                        Ok(_) => self.memory.invalidate_blob(&okey, id),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot drop an evicted cache entry");
                            continue;
                        }
                    }
                    // Under the key lock a release holds until it is counted (`release_locked`).
                    self.before_unlink()
                }
                Ok(None) => self.before_unlink(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up an evicted blob");
                    continue;
                }
            };
            if may_unlink {
                self.blobs.remove(id);
            }
        }
        self.fit_memory();
    }

    /// Forgets `blob` of `okey` (corrupt, changed at the origin, or replaced), under the key's lock;
    /// a pending version is kept (the only copy of a write the origin does not have yet).
    pub(crate) fn drop_entry(&self, okey: &ObjectKey, blob: u64) {
        if self.unindex(okey, blob) {
            self.remove_blob(blob);
        }
        self.refresh_gauges();
    }

    /// Removes `blob` of `okey` from the index (unsynced) and from the memory tier, under the
    /// key's lock; a pending version is kept. Whether its blob file may go.
    fn unindex(&self, okey: &ObjectKey, blob: u64) -> bool {
        self.try_unindex(okey, blob).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot drop a cache entry");
            false
        })
    }

    /// `unindex`, its failure told: the caller must not go on as if the copy were gone.
    fn try_unindex(&self, okey: &ObjectKey, blob: u64) -> Result<bool, CacheError> {
        let _key = self.key_lock(okey);
        self.memory.invalidate_blob(okey, blob);
        match self.index.get(okey)? {
            Some(e) if e.blob == blob && e.pending => {
                tracing::error!(
                    blob,
                    "a version not yet uploaded failed a check; it is kept, not dropped"
                );
                Ok(false)
            }
            Some(e) if e.blob == blob => {
                self.index.remove_if(okey, blob)?;
                Ok(true)
            }
            // No longer the key's copy: what replaced it removes its file (a commit over a clean
            // copy, an eviction, a release once the journal is done with an earlier version it
            // still holds for its upload). Unlinked here, such a version would be lost.
            _ => Ok(false),
        }
    }

    /// Keeps with the clean copy `blob` of `okey` the part sizes learnt for it from the origin
    /// (reads by part number after a restart need not ask again). Nothing if the copy changed.
    pub(crate) fn keep_parts(&self, okey: &ObjectKey, blob: u64, parts: &[u64]) {
        let _key = self.key_lock(okey);
        let mut entry = match self.index.get(okey) {
            Ok(Some(e)) if e.blob == blob && !e.pending && e.parts.is_empty() => e,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cache index");
                return;
            }
        };
        entry.parts = parts.to_vec();
        if let Err(e) = self.index.put(okey, &entry, None) {
            tracing::warn!(error = %e, "cannot keep an object's part sizes");
        }
    }

    /// The origin confirmed that the clean copy `entry` of `okey` is current: it is marked so,
    /// under the key's lock, unless a write replaced it meanwhile.
    pub(crate) fn confirm(&self, okey: &ObjectKey, entry: &Entry) {
        let _key = self.key_lock(okey);
        match self.index.get(okey) {
            Ok(Some(current)) if current.blob == entry.blob && !current.pending => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cache index");
                return;
            }
        }
        let mut fresh = entry.clone();
        fresh.validated = SystemTime::now();
        if let Err(e) = self.index.put(okey, &fresh, None) {
            tracing::warn!(error = %e, "cannot record a revalidation");
        }
        if let Some(m) = self.memory.get(okey).filter(|m| m.entry.blob == entry.blob) {
            self.memory.insert(
                okey.clone(),
                Arc::new(MemoryObject {
                    entry: fresh,
                    body: m.body.clone(),
                }),
            );
        }
    }

    /// A request the origin decides (a conditional PUT or DELETE, a copy) may change `okey` there:
    /// every copy of it here goes, and the clean entry's removal is durable before this returns
    /// (and before its blob is unlinked). A power cut after the origin's change must not bring the
    /// old copy back: nothing would tell Perch to drop it again. The caller holds a `Deciding` of
    /// `okey`, so no fill keeps a copy from here on.
    pub(crate) fn invalidate(&self, okey: &ObjectKey) -> Result<(), CacheError> {
        self.forget_copies(okey);
        let Some(entry) = self.index.get(okey)?.filter(|e| !e.pending) else {
            return Ok(());
        };
        // Not dropped (the index refusing writes on a full disk), the old copy would be served
        // after the origin's change for good: the request is not sent.
        if self.try_unindex(okey, entry.blob)? {
            self.index.sync_wal()?;
            self.remove_blob(entry.blob);
            self.refresh_gauges();
        }
        Ok(())
    }

    /// The origin deleted `bucket` through Perch: its clean entries go, durably before their blobs
    /// (served, they would answer for a bucket that is gone, and prove it exists to the next
    /// write: `Store::ensure_bucket`).
    pub(crate) fn forget_bucket(&self, bucket: &str) -> Result<(), CacheError> {
        // A fill answered before the DeleteBucket (its object deleted at the origin since) must
        // not be kept after: its entry would prove the bucket again once the mark's file is gone.
        // Marked under the key's lock, a fill keeping its body now is done before the scan below.
        for okey in self.fills.keys_in(bucket) {
            let _key = self.key_lock(&okey);
            self.fills.mark_stale(&okey);
        }
        // An entry that cannot be dropped fails the call: it would answer for the bucket gone.
        let mut gone = Vec::new();
        for (okey, blob) in self.index.clean_entries_of(bucket)? {
            self.forget_copies(&okey);
            if self.try_unindex(&okey, blob)? {
                gone.push(blob);
            }
        }
        if !gone.is_empty() {
            self.index.sync_wal()?;
            for blob in gone {
                self.remove_blob(blob);
            }
            self.refresh_gauges();
        }
        Ok(())
    }

    /// Makes a fully fetched temp file the clean entry of `okey`, unless a write through Perch
    /// changed the key meanwhile (`fill` went stale, or a version is pending).
    pub(crate) fn keep_fetched(
        &self,
        okey: &ObjectKey,
        temp: &Path,
        meta: &ObjectMeta,
        crcs: Vec<u32>,
        fill: &Fill,
    ) -> Result<(), CacheError> {
        let evicted = self.keep_fetched_locked(okey, temp, meta, crcs, fill)?;
        self.drop_evicted(evicted);
        self.refresh_gauges();
        Ok(())
    }

    fn keep_fetched_locked(
        &self,
        okey: &ObjectKey,
        temp: &Path,
        meta: &ObjectMeta,
        crcs: Vec<u32>,
        fill: &Fill,
    ) -> Result<Evicted, CacheError> {
        let _key = self.key_lock(okey);
        if fill.stale.load(Ordering::SeqCst) || lock(&self.deciding).contains_key(okey) {
            return Ok(Evicted::default());
        }
        let previous = self.index.get(okey)?;
        if previous.as_ref().is_some_and(|p| p.pending) {
            return Ok(Evicted::default());
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
            deleted: false,
            parts: Vec::new(),
        };
        self.index.put(okey, &entry, previous.as_ref().map(|p| p.blob))?;
        if let Some(p) = previous.filter(|p| p.blob != id) {
            // No memory copy of the replaced one outlives it.
            self.memory.invalidate(okey);
            self.remove_blob(p.blob);
        }
        // The memory tier takes it at its first hit (a copy of the whole body now would cost more
        // than the miss's other work).
        Ok(self.track(okey, id, meta.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Local` on a new directory (kept alive by the returned guard).
    fn open_local() -> (tempfile::TempDir, Local) {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(
            LocalConfig {
                dir: dir.path().join("cache"),
                disk_bytes: Some(1 << 30),
                memory_bytes: 64 << 20,
                memory_object_max: 1 << 20,
                reserve_bytes: 0,
                pinned: None,
            },
            None,
        )
        .unwrap();
        (dir, local)
    }

    /// A blob file of `id` holding `body`.
    fn write_blob(local: &Local, id: u64, body: &[u8]) {
        let path = local.blobs.path(id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
    }

    /// An index entry naming blob `blob` of `size` bytes.
    fn entry(blob: u64, size: u64, pending: bool) -> Entry {
        let now = SystemTime::now();
        Entry {
            blob,
            meta: ObjectMeta {
                size,
                etag: "\"e\"".into(),
                last_modified: now,
                headers: Default::default(),
                checksums: Default::default(),
            },
            crcs: Vec::new(),
            validated: now,
            pending,
            origin_etag: None,
            deleted: false,
            parts: Vec::new(),
        }
    }

    /// A blob whose removal cannot first make the releases durable (the index log's sync fails)
    /// stays on disk, and goes once a sync succeeds.
    #[test]
    fn a_blob_stays_on_disk_while_the_sync_before_its_removal_fails() {
        let (_dir, local) = open_local();
        let id = local.index.next_blob_id().unwrap();
        write_blob(&local, id, b"the only copy of a version");
        let path = local.blobs.path(id);
        local.note_unsynced_release();
        local.index.fail_syncs(true);
        local.remove_blob(id);
        assert!(path.exists(), "the blob went while its release may still be lost");
        local.index.fail_syncs(false);
        local.remove_blob(id);
        assert!(!path.exists(), "the blob stayed after the sync succeeded");
    }

    /// Access times are kept only for keys the index holds: a miss of a key the origin does not
    /// have (OrioleDB's probes) used to leave a row for good, and the hot set, which takes the
    /// most recent rows, came out short of the objects really read.
    #[test]
    fn access_times_are_kept_only_for_objects_the_cache_holds() {
        let (_dir, local) = open_local();
        let held = ObjectKey::new("b", "held");
        let id = local.index.next_blob_id().unwrap();
        local.index.put(&held, &entry(id, 1, false), None).unwrap();
        local.note_access(&held);
        for i in 0..3 {
            local.note_access(&ObjectKey::new("b", &format!("missing/{i}")));
        }
        local.flush_access_times();
        let recent: Vec<String> = local
            .index
            .recent_reads(10)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.key().to_owned())
            .collect();
        assert_eq!(recent, vec!["held".to_owned()]);
    }

    /// A reader that fails on a version the key no longer names (a later write committed while it
    /// read) drops nothing: that version may be one the journal still holds for its upload. Its
    /// blob used to be unlinked.
    #[test]
    fn a_failed_read_of_a_replaced_version_leaves_its_blob_to_the_journal() {
        let (_dir, local) = open_local();
        let okey = ObjectKey::new("b", "orioledb_data/1/k");
        let earlier = local.index.next_blob_id().unwrap();
        let later = local.index.next_blob_id().unwrap();
        for id in [earlier, later] {
            write_blob(&local, id, b"a version not yet uploaded");
        }
        local.index.put(&okey, &entry(later, 26, true), None).unwrap();
        local.drop_entry(&okey, earlier);
        assert!(
            local.blobs.path(earlier).exists(),
            "the earlier version's blob was unlinked"
        );
        assert_eq!(local.index.get(&okey).unwrap().map(|e| e.blob), Some(later));
        local.drop_entry(&okey, later);
        assert!(
            local.blobs.path(later).exists(),
            "the pending version's blob was unlinked"
        );
    }
}
