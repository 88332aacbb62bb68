//! `Prefetcher`: fills nobody asked for yet, at the lowest priority: the objects of a listing a
//! rule marks (a restore lists a checkpoint, then reads all of it), the next parts of a table read
//! in order (read-ahead), and the hot set a previous machine left (prewarm). Bounded in bytes
//! queued, in fills in flight per reason and in the bytes those fills hold in memory, never into
//! space the disk tier would have to evict for, dropped when stale or cancelled; a failed one
//! leaves nothing behind (a fill keeps only whole, checked bodies), so the next GET simply asks
//! the origin.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use perch_policy::Prefetch;
use tokio::sync::{Notify, Semaphore};

use crate::fill::held_at_most;
use crate::key::ObjectKey;
use crate::local::fills::FillError;
use crate::local::lock;
use crate::metrics::PrefetchLabel;
use crate::origin::{ByteStream, ListQuery};
use crate::read::Reader;

/// Fills in flight at most, by reason (`Reason as usize`): a listing's objects are what a
/// restore reads next, all of them, and its loader asks for them a few dozen at a time; the
/// prewarm runs before `/readyz`, while no client waits, each fill over a new connection, so one
/// wave of handshakes is better than several; read-ahead is a guess beside clients' own misses.
const IN_FLIGHT: [usize; 3] = [32, 8, 32];
/// What the fills in flight may hold in memory together at most (each counted at the most it can
/// hold, `fill::held_at_most`), in KiB: 32 fills of 2 MiB, or 4 of a 16 MiB WAL segment.
const HELD_MAX_KIB: usize = 64 << 10;
/// Queued items at most (beyond, new ones are dropped).
const QUEUE_MAX: usize = 65_536;
/// A queued read-ahead or listing item is dropped once no client has read its table, or listed or
/// read under its listing, for this long (prewarm items wait their turn, or a `cancel`).
const STALE: Duration = Duration::from_secs(10);
/// The least a part read ahead is taken to be (OrioleDB's parts are 1 MiB).
const PART_SIZE_MIN: u64 = 1 << 20;
/// Read-ahead runs remembered at most.
const RUNS_MAX: usize = 4096;
/// A checksum list longer than this is not read for the files it names.
const NAMED_LIST_MAX: u64 = 4 << 20;
/// Directories (earlier checkpoints) one checksum list has fetched from at most.
const NAMED_DIRS_MAX: usize = 64;

/// Why an object is prefetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    List = 0,
    ReadAhead = 1,
    Prewarm = 2,
}

const REASONS: [Reason; 3] = [Reason::List, Reason::ReadAhead, Reason::Prewarm];

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::List => "list",
            Reason::ReadAhead => "read_ahead",
            Reason::Prewarm => "prewarm",
        }
    }
}

/// What keeps a queued item wanted: a client still reading the table it reads ahead of, or
/// still reading under the listing it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Run {
    Table(String, String),
    Listing(String, String),
}

struct Item {
    okey: ObjectKey,
    size: u64,
    reason: Reason,
    run: Option<Run>,
    generation: u64,
    /// A prewarmed object's access time until a client reads it (`Prefetcher::prewarm`).
    carried: Option<SystemTime>,
}

/// A table being read in order: the furthest part read, how many nearby reads, how far ahead it
/// is fetched, when it was last read.
struct Table {
    front: u64,
    reads: u32,
    ahead: u64,
    last: Instant,
}

pub(crate) struct Prefetcher {
    reader: Arc<Reader>,
    policy: Prefetch,
    /// Bytes queued or in flight at most.
    bytes_max: u64,
    bytes: AtomicU64,
    /// Queued items, by reason, each queue with its own workers.
    queues: [std::sync::Mutex<VecDeque<Item>>; 3],
    wakes: [Arc<Notify>; 3],
    /// KiB the fills in flight may still hold (`HELD_MAX_KIB` in all).
    held: Semaphore,
    tables: std::sync::Mutex<HashMap<(String, String), Table>>,
    /// Listings being prefetched: when a client last listed or read under each.
    listings: std::sync::Mutex<HashMap<(String, String), Instant>>,
    /// Checksum lists whose named files were queued, and when (read again within `STALE`, one
    /// is not listed again).
    named: std::sync::Mutex<HashMap<ObjectKey, Instant>>,
    /// Bumped by `cancel`: items of an older generation are dropped.
    generation: AtomicU64,
    /// Items queued or in flight, by reason (`Reason as usize`).
    outstanding: [AtomicUsize; 3],
    /// Bytes of the prefetch fills under way: room in the disk tier they are about to take, which
    /// its accounting does not show until each is kept.
    filling: std::sync::Mutex<u64>,
}

/// Room in the disk tier taken by a prefetch fill under way (`Prefetcher::take_room`), given back
/// when it ends (by then a kept body counts in the disk tier itself).
struct Room<'a> {
    filling: &'a std::sync::Mutex<u64>,
    size: u64,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        let mut filling = lock(self.filling);
        *filling = filling.saturating_sub(self.size);
    }
}

impl Prefetcher {
    pub(crate) fn start(reader: Arc<Reader>, policy: Prefetch, bytes_max: u64) -> Arc<Prefetcher> {
        let p = Arc::new(Prefetcher {
            reader,
            policy,
            bytes_max,
            bytes: AtomicU64::new(0),
            queues: Default::default(),
            wakes: Default::default(),
            held: Semaphore::new(HELD_MAX_KIB),
            tables: std::sync::Mutex::new(HashMap::new()),
            listings: std::sync::Mutex::new(HashMap::new()),
            named: std::sync::Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            outstanding: Default::default(),
            filling: std::sync::Mutex::new(0),
        });
        for reason in REASONS {
            for _ in 0..IN_FLIGHT[reason as usize] {
                let weak = Arc::downgrade(&p);
                let wake = p.wakes[reason as usize].clone();
                tokio::spawn(async move {
                    loop {
                        let Some(p) = weak.upgrade() else { return };
                        let notified = wake.notified();
                        match p.pop(reason) {
                            Some(item) => p.run(item).await,
                            None => {
                                drop(p);
                                // Woken by a push, or by the prefetcher's drop.
                                notified.await;
                            }
                        }
                    }
                });
            }
        }
        p
    }

    fn count(&self, reason: Reason, result: &'static str) {
        self.reader
            .local
            .stats
            .prefetches
            .get_or_create(&PrefetchLabel {
                reason: reason.as_str(),
                result,
            })
            .inc();
    }

    /// Queues `okey` (of `size` bytes) unless the byte budget or the queue is full (`false`:
    /// dropped for that).
    fn push(&self, okey: ObjectKey, size: u64, reason: Reason, run: Option<Run>, carried: Option<SystemTime>) -> bool {
        if self.reader.bypasses(&okey) || size > self.reader.local.keep_limit() {
            // Its fill would keep nothing (a hot set written before the policy changed may name
            // it, or it is larger than any object the cache keeps).
            self.count(reason, "skipped");
            return true;
        }
        let mut budget = self.bytes.fetch_add(size, Ordering::SeqCst) + size;
        if budget > self.bytes_max && reason != Reason::Prewarm {
            budget = budget.saturating_sub(self.shed_prewarm(budget - self.bytes_max));
        }
        let mut queue = lock(&self.queues[reason as usize]);
        if budget > self.bytes_max || queue.len() >= QUEUE_MAX {
            drop(queue);
            self.bytes.fetch_sub(size, Ordering::SeqCst);
            self.count(reason, "dropped");
            return false;
        }
        self.outstanding[reason as usize].fetch_add(1, Ordering::SeqCst);
        queue.push_back(Item {
            okey,
            size,
            reason,
            run,
            generation: self.generation.load(Ordering::SeqCst),
            carried,
        });
        drop(queue);
        self.wakes[reason as usize].notify_one();
        true
    }

    /// The prewarm is the lowest priority: its objects not yet started (the coldest of the hot
    /// set, queued last) give up at least `need` bytes of the budget to a listing or a
    /// read-ahead, which a client is waiting on. Without it a hot set as large as the budget
    /// (a primary writes one of `--prefetch-bytes`) left no room for a restore's listing on a
    /// new volume. Returns the bytes given back.
    fn shed_prewarm(&self, need: u64) -> u64 {
        let mut freed = 0;
        while freed < need {
            let Some(item) = lock(&self.queues[Reason::Prewarm as usize]).pop_back() else {
                break;
            };
            self.release(&item);
            self.count(Reason::Prewarm, "dropped");
            freed += item.size;
        }
        freed
    }

    fn pop(&self, reason: Reason) -> Option<Item> {
        lock(&self.queues[reason as usize]).pop_front()
    }

    fn release(&self, item: &Item) {
        self.bytes.fetch_sub(item.size, Ordering::SeqCst);
        self.outstanding[item.reason as usize].fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a queued item should no longer be fetched.
    fn stale(&self, item: &Item) -> bool {
        if item.generation != self.generation.load(Ordering::SeqCst) {
            return true;
        }
        match &item.run {
            Some(Run::Table(b, n)) => lock(&self.tables)
                .get(&(b.clone(), n.clone()))
                .is_none_or(|t| t.last.elapsed() > STALE),
            Some(Run::Listing(b, p)) => lock(&self.listings)
                .get(&(b.clone(), p.clone()))
                .is_none_or(|last| last.elapsed() > STALE),
            None => false,
        }
    }

    async fn run(&self, item: Item) {
        let reason = item.reason;
        let held = held_at_most(item.size, self.reader.local.memory_object_max()).div_ceil(1024);
        // Taken whole before the fill starts, given back when it ends (never closed).
        let Ok(_held) = self.held.acquire_many(held.min(HELD_MAX_KIB as u64) as u32).await else {
            self.release(&item);
            return;
        };
        if self.stale(&item) {
            self.release(&item);
            self.count(reason, "cancelled");
            return;
        }
        let local = &self.reader.local;
        let cached = matches!(local.index.get(&item.okey), Ok(Some(_)));
        if cached || local.fills.is_under_way(&item.okey) {
            self.release(&item);
            self.count(reason, "skipped");
            return;
        }
        let Some(_room) = self.take_room(item.size) else {
            self.release(&item);
            self.count(reason, "no_room");
            return;
        };
        local.mark_prefetched(&item.okey, reason.as_str());
        let (_, mut rx, _) = self.reader.join_fill(&item.okey);
        // Until the fill ends: it failed, or its last byte (released once kept) arrived.
        let absent = loop {
            let (done, absent) = {
                let p = rx.borrow_and_update();
                (
                    p.failed.is_some() || p.meta.as_ref().is_some_and(|m| p.received >= m.size),
                    matches!(p.failed.as_deref(), Some(FillError::NoSuchKey)),
                )
            };
            if done || rx.changed().await.is_err() {
                break absent;
            }
        };
        let kept = matches!(local.index.get(&item.okey), Ok(Some(_)));
        if !kept {
            local.unmark_prefetched(&item.okey);
        } else if let Some(at) = item.carried {
            local.note_carried_access(&item.okey, at);
        }
        self.release(&item);
        // A read-ahead guesses the next part of a table: a table without it is no failure.
        let result = match (kept, absent) {
            (true, _) => "fetched",
            (false, true) => "absent",
            (false, false) => "failed",
        };
        self.count(reason, result);
    }

    /// Room for a fill of `size` bytes that no eviction would have to make, beside the prefetch
    /// fills already under way: in the disk tier, and on the filesystem.
    fn take_room(&self, size: u64) -> Option<Room<'_>> {
        let local = &self.reader.local;
        let mut filling = lock(&self.filling);
        // The fills under way count on the filesystem too: they take their room only once the
        // origin answers, and a fill that then finds none would evict for it.
        if !local.filesystem_has_room(*filling + size) || !local.tier_has_room(*filling + size) {
            return None;
        }
        *filling += size;
        Some(Room {
            filling: &self.filling,
            size,
        })
    }

    /// A listing page of `bucket` under `prefix` was answered: its objects are prefetched if a
    /// rule marks the prefix, for as long as a client keeps listing or reading under it.
    pub(crate) fn on_list(&self, bucket: &str, prefix: &str, objects: &[(String, u64)]) {
        let Some((keys, under)) = self.policy.list_rule(prefix) else {
            return;
        };
        let id = (bucket.to_owned(), under.clone());
        {
            let mut listings = lock(&self.listings);
            if listings.len() >= RUNS_MAX {
                listings.retain(|_, last| last.elapsed() <= STALE);
            }
            listings.insert(id.clone(), Instant::now());
        }
        for (key, size) in objects {
            if key.starts_with(&under) && keys.matches(key) && !key.ends_with('/') && *size > 0 {
                let run = Run::Listing(id.0.clone(), id.1.clone());
                self.push(ObjectKey::new(bucket, key), *size, Reason::List, Some(run), None);
            }
        }
    }

    /// Prewarms the objects of a hot set (hottest first). Each one no client reads here keeps its
    /// place in the hot set this machine writes, after every object read here and in the same
    /// order: a Machine that wakes, answers a few queries and stops again does not leave a hot
    /// set of those few alone for the next wake.
    pub(crate) fn prewarm(&self, bucket: &str, objects: &[(String, u64)]) {
        // Older than any read from now on, a second apart (access times are kept in seconds) in
        // the set's order (and so, once a restart rebuilds the eviction order from them, evicted
        // before anything a client read).
        let now = SystemTime::now();
        for (rank, (key, size)) in objects.iter().enumerate() {
            let carried = now.checked_sub(Duration::from_secs(rank as u64 + 1));
            self.push(ObjectKey::new(bucket, key), *size, Reason::Prewarm, None, carried);
        }
    }

    /// A client read `okey` (an object of `size` bytes): it keeps the listing it lies under wanted,
    /// and when it continues a run of nearby parts of one table, the next parts are fetched ahead,
    /// each counted against the bounds as if as large as this one (at least 1 MiB).
    pub(crate) fn on_read(&self, okey: &ObjectKey, size: u64) {
        self.continue_runs(okey, size);
    }

    /// Whether `okey` is a checksum list whose named files are fetched when a client reads it.
    pub(crate) fn names_files(&self, okey: &ObjectKey) -> bool {
        self.policy.names_files(okey.key())
    }

    /// `body`, the whole of the checksum list `okey` on its way to a client (`names_files`);
    /// unless it is too long to read, the files it names are fetched once the client has had
    /// every byte of it: the client's own bytes, so nothing is read twice or counted twice.
    pub(crate) fn watch_list(self: &Arc<Self>, okey: &ObjectKey, size: u64, body: ByteStream) -> ByteStream {
        if size == 0 || size > NAMED_LIST_MAX {
            return body;
        }
        let p = Arc::clone(self);
        let list = okey.clone();
        let generation = self.generation.load(Ordering::SeqCst);
        let mut seen: Vec<u8> = Vec::with_capacity(size as usize);
        Box::pin(body.inspect(move |chunk| {
            let Ok(chunk) = chunk else { return };
            if seen.len() + chunk.len() > size as usize {
                return;
            }
            seen.extend_from_slice(chunk);
            if seen.len() == size as usize && p.first_read_of_list(&list) {
                let text = std::mem::take(&mut seen);
                let (p, list) = (Arc::clone(&p), list.clone());
                tokio::spawn(async move { p.fetch_named(list, text, generation).await });
            }
        }))
    }

    fn first_read_of_list(&self, okey: &ObjectKey) -> bool {
        let mut named = lock(&self.named);
        if named.len() >= RUNS_MAX {
            named.retain(|_, at| at.elapsed() <= STALE);
        }
        if named.get(okey).is_some_and(|at| at.elapsed() <= STALE) {
            return false;
        }
        named.insert(okey.clone(), Instant::now());
        true
    }

    /// Queues the files the checksum list `list` (its bytes `body`) names, from at most
    /// `NAMED_DIRS_MAX` directories, each listed at the origin for the sizes until every file
    /// named in it was found; each directory's run is kept wanted as a listing's is (while a
    /// client reads under it), and a `cancel` since the list was read stops it.
    async fn fetch_named(&self, list: ObjectKey, body: Vec<u8>, generation: u64) {
        let Ok(text) = std::str::from_utf8(&body) else { return };
        let bucket = list.bucket();
        for (dir, keys) in Prefetch::named_files(list.key(), text).into_iter().take(NAMED_DIRS_MAX) {
            let mut wanted: HashSet<String> = keys.into_iter().collect();
            let mut query = ListQuery {
                prefix: Some(dir.clone()),
                max_keys: 1000,
                ..Default::default()
            };
            {
                let mut listings = lock(&self.listings);
                if listings.len() >= RUNS_MAX {
                    listings.retain(|_, last| last.elapsed() <= STALE);
                }
                listings.insert((bucket.to_owned(), dir.clone()), Instant::now());
            }
            while !wanted.is_empty() {
                if self.generation.load(Ordering::SeqCst) != generation {
                    return;
                }
                let Ok(page) = self.reader.origin.list_objects(bucket, &query).await else {
                    break;
                };
                for o in &page.objects {
                    if o.size > 0 && wanted.remove(&o.key) {
                        let run = Run::Listing(bucket.to_owned(), dir.clone());
                        self.push(ObjectKey::new(bucket, &o.key), o.size, Reason::List, Some(run), None);
                    }
                }
                match page.next {
                    Some(next) => query.continuation = Some(next),
                    None => break,
                }
            }
        }
    }

    /// `okey` was read: the listing it lies under stays wanted, and a run of nearby parts of
    /// one table is read ahead.
    fn continue_runs(&self, okey: &ObjectKey, size: u64) {
        // The next parts are taken to be as large as this one, and at least an OrioleDB part:
        // guessing large only holds back more of the bounds than needed.
        let guess = size.max(PART_SIZE_MIN);
        {
            let mut listings = lock(&self.listings);
            for ((bucket, prefix), last) in listings.iter_mut() {
                if bucket == okey.bucket() && okey.key().starts_with(prefix.as_str()) {
                    *last = Instant::now();
                }
            }
        }
        let Some((name, part)) = self.policy.part_of(okey.key()) else {
            return;
        };
        let id = (okey.bucket().to_owned(), name.to_owned());
        let now = Instant::now();
        let want = {
            let mut tables = lock(&self.tables);
            if tables.len() >= RUNS_MAX && !tables.contains_key(&id) {
                tables.retain(|_, t| t.last.elapsed() <= STALE);
                if tables.len() >= RUNS_MAX {
                    tables.clear();
                }
            }
            let t = tables.entry(id.clone()).or_insert(Table {
                front: part,
                reads: 0,
                ahead: part,
                last: now,
            });
            // Reads come a few at a time and slightly out of order; a jump starts a new run.
            let near = part + 4 >= t.front && part <= t.front + 4;
            if !near || t.last.elapsed() > STALE {
                *t = Table {
                    front: part,
                    reads: 0,
                    ahead: part,
                    last: now,
                };
            }
            t.reads += 1;
            t.front = t.front.max(part);
            t.last = now;
            if t.reads < 2 {
                return;
            }
            let from = t.ahead.max(t.front) + 1;
            // Bounded whatever the setting: a run cannot ask for more than a queue holds.
            let to = t
                .front
                .saturating_add(self.policy.read_ahead_parts.min(QUEUE_MAX as u64));
            t.ahead = t.ahead.max(to);
            from..=to
        };
        for p in want {
            let key = Prefetch::part_key(name, p);
            let run = Run::Table(id.0.clone(), id.1.clone());
            if !self.push(
                ObjectKey::new(okey.bucket(), &key),
                guess,
                Reason::ReadAhead,
                Some(run),
                None,
            ) {
                // Dropped for the budget: the run's next read asks for it again.
                if let Some(t) = lock(&self.tables).get_mut(&id) {
                    t.ahead = t.ahead.min(p - 1);
                }
                break;
            }
        }
    }

    /// Drops everything queued (fills already under way finish).
    pub(crate) fn cancel(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let dropped: Vec<Item> = self
            .queues
            .iter()
            .flat_map(|q| lock(q).drain(..).collect::<Vec<_>>())
            .collect();
        for item in dropped {
            self.release(&item);
            self.count(item.reason, "cancelled");
        }
    }

    /// Items of `reason` queued or in flight.
    pub(crate) fn outstanding(&self, reason: Reason) -> usize {
        self.outstanding[reason as usize].load(Ordering::SeqCst)
    }
}

impl Drop for Prefetcher {
    /// Idle workers wait on their queue's `Notify` (registered before they let go of the
    /// prefetcher): woken, they find it gone and end.
    fn drop(&mut self) {
        for wake in &self.wakes {
            wake.notify_waiters();
        }
    }
}
