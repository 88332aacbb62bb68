//! `Prefetcher`: fills nobody asked for yet, at the lowest priority: the objects of a listing a
//! rule marks (a restore lists a checkpoint, then reads all of it), the next parts of a table read
//! in order (read-ahead), and the hot set a previous machine left (prewarm). Bounded in bytes
//! queued and fills in flight, never into space the disk tier would have to evict for, dropped
//! when stale or cancelled; a failed one leaves nothing behind (a fill keeps only whole, checked
//! bodies), so the next GET simply asks the origin.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use perch_policy::Prefetch;
use tokio::sync::Notify;

use crate::key::ObjectKey;
use crate::local::fills::FillError;
use crate::local::lock;
use crate::metrics::PrefetchLabel;
use crate::read::Reader;

/// Fills of prefetched objects in flight at most.
const IN_FLIGHT: usize = 8;
/// Queued items at most (beyond, new ones are dropped).
const QUEUE_MAX: usize = 65_536;
/// A queued read-ahead or listing item is dropped once no client has read its table, or listed or
/// read under its listing, for this long (prewarm items wait their turn, or a `cancel`).
const STALE: Duration = Duration::from_secs(10);
/// The size a read-ahead part is assumed to have before it is fetched (OrioleDB's parts).
const PART_SIZE: u64 = 1 << 20;
/// Read-ahead runs remembered at most.
const RUNS_MAX: usize = 4096;

/// Why an object is prefetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    List = 0,
    ReadAhead = 1,
    Prewarm = 2,
}

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
    queue: std::sync::Mutex<VecDeque<Item>>,
    wake: Arc<Notify>,
    tables: std::sync::Mutex<HashMap<(String, String), Table>>,
    /// Listings being prefetched: when a client last listed or read under each.
    listings: std::sync::Mutex<HashMap<(String, String), Instant>>,
    /// Bumped by `cancel`: items of an older generation are dropped.
    generation: AtomicU64,
    /// Items queued or in flight, by reason (`Reason as usize`).
    outstanding: [AtomicUsize; 3],
}

impl Prefetcher {
    pub(crate) fn start(reader: Arc<Reader>, policy: Prefetch, bytes_max: u64) -> Arc<Prefetcher> {
        let p = Arc::new(Prefetcher {
            reader,
            policy,
            bytes_max,
            bytes: AtomicU64::new(0),
            queue: std::sync::Mutex::new(VecDeque::new()),
            wake: Arc::new(Notify::new()),
            tables: std::sync::Mutex::new(HashMap::new()),
            listings: std::sync::Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            outstanding: Default::default(),
        });
        for _ in 0..IN_FLIGHT {
            let weak = Arc::downgrade(&p);
            let wake = p.wake.clone();
            tokio::spawn(async move {
                loop {
                    let Some(p) = weak.upgrade() else { return };
                    let notified = wake.notified();
                    match p.pop() {
                        Some(item) => p.run(item).await,
                        None => {
                            drop(p);
                            // Woken by a push, or every second to let go of a dropped store.
                            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                        }
                    }
                }
            });
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

    /// Queues `okey` (of `size` bytes) unless the byte budget or the queue is full.
    fn push(&self, okey: ObjectKey, size: u64, reason: Reason, run: Option<Run>) {
        let budget = self.bytes.fetch_add(size, Ordering::SeqCst) + size;
        let mut queue = lock(&self.queue);
        if budget > self.bytes_max || queue.len() >= QUEUE_MAX {
            drop(queue);
            self.bytes.fetch_sub(size, Ordering::SeqCst);
            self.count(reason, "dropped");
            return;
        }
        self.outstanding[reason as usize].fetch_add(1, Ordering::SeqCst);
        queue.push_back(Item {
            okey,
            size,
            reason,
            run,
            generation: self.generation.load(Ordering::SeqCst),
        });
        drop(queue);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Item> {
        lock(&self.queue).pop_front()
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
        if self.stale(&item) {
            self.release(&item);
            self.count(reason, "cancelled");
            return;
        }
        let local = &self.reader.local;
        let cached = matches!(local.index.get(&item.okey), Ok(Some(_)));
        if cached || local.fills.get(&item.okey).is_some() {
            self.release(&item);
            self.count(reason, "skipped");
            return;
        }
        if !local.has_room(item.size) {
            self.release(&item);
            self.count(reason, "no_room");
            return;
        }
        local.mark_prefetched(&item.okey, reason.as_str());
        let (fill, _) = self.reader.join_fill(&item.okey);
        let mut rx = fill.progress.subscribe();
        drop(fill);
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

    /// A listing page of `bucket` under `prefix` was answered: its objects are prefetched if a
    /// rule marks the prefix, for as long as a client keeps listing or reading under it.
    pub(crate) fn on_list(&self, bucket: &str, prefix: &str, objects: &[(String, u64)]) {
        let Some(keys) = self.policy.list_rule(prefix) else {
            return;
        };
        let id = (bucket.to_owned(), prefix.to_owned());
        {
            let mut listings = lock(&self.listings);
            if listings.len() >= RUNS_MAX {
                listings.retain(|_, last| last.elapsed() <= STALE);
            }
            listings.insert(id.clone(), Instant::now());
        }
        for (key, size) in objects {
            if keys.matches(key) && !key.ends_with('/') && *size > 0 {
                let run = Run::Listing(id.0.clone(), id.1.clone());
                self.push(ObjectKey::new(bucket, key), *size, Reason::List, Some(run));
            }
        }
    }

    /// Prewarms the objects of a hot set (hottest first).
    pub(crate) fn prewarm(&self, bucket: &str, objects: &[(String, u64)]) {
        for (key, size) in objects {
            self.push(ObjectKey::new(bucket, key), *size, Reason::Prewarm, None);
        }
    }

    /// A client read `okey`: it keeps the listing it lies under wanted, and when it continues a
    /// run of nearby parts of one table, the next parts are fetched ahead.
    pub(crate) fn on_read(&self, okey: &ObjectKey) {
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
            let to = t.front + self.policy.read_ahead_parts;
            t.ahead = t.ahead.max(to);
            from..=to
        };
        for p in want {
            let key = Prefetch::part_key(name, p);
            let run = Run::Table(id.0.clone(), id.1.clone());
            self.push(
                ObjectKey::new(okey.bucket(), &key),
                PART_SIZE,
                Reason::ReadAhead,
                Some(run),
            );
        }
    }

    /// Drops everything queued (fills already under way finish).
    pub(crate) fn cancel(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let dropped: Vec<Item> = lock(&self.queue).drain(..).collect();
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
