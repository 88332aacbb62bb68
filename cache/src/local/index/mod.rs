//! `Index`: the local store's RocksDB: which objects are on local disk, in which blob, with what
//! metadata. Column families: `objects` (`ObjectKey` → `Entry`), `blobs` (blob id → `ObjectKey`),
//! `access` (`ObjectKey` → last read, seconds), `meta` (the blob id high-water mark) and `journal`
//! (write-back: sequence number → the record of a version not yet in the origin).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, FlushOptions, Options, ReadOptions, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::error::CacheError;
use crate::key::{ObjectKey, hash_of};
use crate::origin::ObjectMeta;

const OBJECTS: &str = "objects";
const BLOBS: &str = "blobs";
const ACCESS: &str = "access";
const META: &str = "meta";
const JOURNAL: &str = "journal";
const ALL_CFS: [&str; 5] = [OBJECTS, BLOBS, ACCESS, META, JOURNAL];
const NEXT_BLOB: &[u8] = b"next_blob";
/// Blob ids are reserved in runs of this many, so the counter is written once per run.
const ID_RUN: u64 = 4096;
/// One block cache for every column family (left alone, RocksDB gives each its own 32 MiB, which
/// the start-up scan fills): index lookups mostly find their blocks in the page cache anyway.
const BLOCK_CACHE: usize = 8 << 20;
/// Memtables: small, so that they cost little memory and a restart after a crash has little log
/// to replay (a clean stop flushes them: `Index::flush`).
const WRITE_BUFFER: usize = 4 << 20;
const ALL_WRITE_BUFFERS: usize = 16 << 20;
/// Past this much log, the column families holding its oldest writes are flushed (RocksDB's
/// default is 4 times all write buffers: gigabytes, kept alive by the rarely written `meta`).
const MAX_WAL: u64 = 8 << 20;
/// What RocksDB may hold in memory at most: its block cache and memtables.
pub(crate) const INDEX_MEMORY: u64 = (BLOCK_CACHE + ALL_WRITE_BUFFERS) as u64;

/// One object on local disk: a clean cached copy, the newest version of a write not yet uploaded
/// (`pending`), or the tombstone of a delete not yet uploaded (`pending` and `deleted`: reads answer
/// 404 at once, and nothing fetched from the origin replaces it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub blob: u64,
    pub meta: ObjectMeta,
    /// CRC32 of each `blobs::BLOCK` of the body.
    pub crcs: Vec<u32>,
    /// When the origin last confirmed this copy (for keys that are revalidated).
    pub validated: SystemTime,
    /// A version written through Perch and not yet confirmed by the origin: never evicted,
    /// never revalidated, never replaced by a fetch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// The origin's ETag of this copy when it differs from `meta.etag`, the one the client was
    /// given (an origin that does not answer a single PUT with the body's MD5): conditional reads
    /// of clients use `meta.etag`, conditional requests to the origin this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_etag: Option<String>,
    /// A pending delete: no blob, no body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The part sizes of a multipart upload completed through Perch, in order (a GET by
    /// `partNumber` reads them); empty for every other copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
}

impl Entry {
    /// The index entry of delete version `seq`, acknowledged at `at`.
    pub(crate) fn tombstone(seq: u64, at: SystemTime) -> Entry {
        Entry {
            blob: seq,
            meta: ObjectMeta {
                size: 0,
                etag: String::new(),
                last_modified: at,
                headers: Default::default(),
                checksums: Default::default(),
            },
            crcs: Vec::new(),
            validated: at,
            pending: true,
            origin_etag: None,
            deleted: true,
            parts: Vec::new(),
        }
    }

    /// The ETag the origin knows this copy by.
    pub(crate) fn etag_at_origin(&self) -> &str {
        self.origin_etag.as_deref().unwrap_or(&self.meta.etag)
    }
}

/// What `scan` yields for each entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scanned {
    pub blob: u64,
    pub key_hash: u64,
    pub size: u64,
    pub last_read: SystemTime,
    /// The policy pins its key (`cache = "pin"`).
    pub pinned: bool,
}

pub(crate) struct Index {
    db: DB,
    next: AtomicU64,
    /// The first id not yet covered by the persisted high-water mark.
    reserved: Mutex<u64>,
    /// The first id this process may hand out: every blob of an earlier run has a lower id.
    first_of_run: u64,
    /// Releases written to the log without a sync, counted after each write (`note_release`).
    releases_written: AtomicU64,
    /// How many of those a completed sync of the log covers: a synced write covers every write
    /// before it, whoever made it.
    releases_synced: AtomicU64,
    /// Syncs of the log made for releases alone (`sync_releases`).
    release_syncs: AtomicU64,
    /// Tests: `sync_wal` fails while set.
    #[cfg(test)]
    failing_syncs: std::sync::atomic::AtomicBool,
}

fn no_sync() -> WriteOptions {
    // The cache holds clean copies: losing the last writes in a power cut only loses cache
    // entries (their blobs are checked block by block when read), never data.
    let mut w = WriteOptions::default();
    w.set_sync(false);
    w
}

/// A write that is on disk when it returns (the journal's commits, the blob id mark).
fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(!crate::durable::skips_sync(crate::durable::SyncStep::Journal));
    w
}

/// What the index keeps of a key once one of its versions is released.
pub(crate) enum Released<'a> {
    /// The version was the newest: it stays, as this clean entry.
    Clean(&'a Entry),
    /// The version was the newest and goes with its entry (a delete's tombstone, or a version
    /// an operator dropped).
    Gone,
    /// A newer version is the entry; this one's blob name goes when `forget_blob`.
    Superseded { forget_blob: bool },
}

/// Reads of whole column families: read ahead, and leave the block cache to lookups.
fn scan_options() -> ReadOptions {
    let mut o = ReadOptions::default();
    o.fill_cache(false);
    o.set_readahead_size(2 << 20);
    o
}

impl Index {
    pub(crate) fn open(path: &Path) -> Result<Index, CacheError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        opts.set_db_write_buffer_size(ALL_WRITE_BUFFERS);
        opts.set_max_total_wal_size(MAX_WAL);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE));
        // The default column family is unused, but named here with the same options: left out,
        // rust-rocksdb opens it with RocksDB's defaults, whose 64 MiB write buffer sets how much
        // RocksDB preallocates for each log file and how much free space it waits for before it
        // resumes after a full disk (a data dir given back less would stay stopped:
        // `a_full_disk_stops_the_index_and_it_resumes_by_itself_once_room_returns`).
        let cfs = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME]
            .into_iter()
            .chain(ALL_CFS)
            .map(|name| {
                let mut o = Options::default();
                o.set_compression_type(rocksdb::DBCompressionType::Lz4);
                o.set_write_buffer_size(WRITE_BUFFER);
                o.set_block_based_table_factory(&table);
                ColumnFamilyDescriptor::new(name, o)
            });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let meta = db
            .cf_handle(META)
            .ok_or_else(|| CacheError::Corrupt("no meta column family".into()))?;
        let next = match db.get_cf(meta, NEXT_BLOB)? {
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| CacheError::Corrupt("bad next_blob".into()))?,
            ),
            None => 1,
        };
        Ok(Index {
            db,
            next: AtomicU64::new(next),
            reserved: Mutex::new(next),
            first_of_run: next,
            releases_written: AtomicU64::new(0),
            releases_synced: AtomicU64::new(0),
            release_syncs: AtomicU64::new(0),
            #[cfg(test)]
            failing_syncs: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, CacheError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| CacheError::Corrupt(format!("no {name} column family")))
    }

    /// Blob ids below this one were handed out by an earlier run (ids at or above it are this
    /// run's, and may be on disk a moment before the index names them).
    pub(crate) fn first_id_of_this_run(&self) -> u64 {
        self.first_of_run
    }

    /// A blob id never handed out before, across restarts.
    pub(crate) fn next_blob_id(&self) -> Result<u64, CacheError> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let mut reserved = self.reserved.lock().map_err(|_| CacheError::Poisoned("blob id"))?;
        if id >= *reserved {
            let mark = id + ID_RUN;
            let mut b = WriteBatch::default();
            b.put_cf(self.cf(META)?, NEXT_BLOB, mark.to_be_bytes());
            self.write_synced(b)?;
            *reserved = mark;
        }
        Ok(id)
    }

    pub(crate) fn get(&self, okey: &ObjectKey) -> Result<Option<Entry>, CacheError> {
        match self.db.get_pinned_cf(self.cf(OBJECTS)?, okey.as_bytes())? {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    /// Records `entry` for `okey`; `replaced` is the blob of the entry it replaces, if any.
    pub(crate) fn put(&self, okey: &ObjectKey, entry: &Entry, replaced: Option<u64>) -> Result<(), CacheError> {
        let value = serde_json::to_vec(entry)?;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(OBJECTS)?, okey.as_bytes(), value);
        b.put_cf(self.cf(BLOBS)?, entry.blob.to_be_bytes(), okey.as_bytes());
        if let Some(old) = replaced.filter(|&o| o != entry.blob) {
            b.delete_cf(self.cf(BLOBS)?, old.to_be_bytes());
        }
        self.db.write_opt(b, &no_sync())?;
        Ok(())
    }

    /// Forgets `okey` if it still names `blob`; returns whether it did.
    pub(crate) fn remove_if(&self, okey: &ObjectKey, blob: u64) -> Result<bool, CacheError> {
        let current = self.get(okey)?;
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(BLOBS)?, blob.to_be_bytes());
        let matched = current.as_ref().is_some_and(|e| e.blob == blob);
        if matched {
            b.delete_cf(self.cf(OBJECTS)?, okey.as_bytes());
            b.delete_cf(self.cf(ACCESS)?, okey.as_bytes());
        }
        self.db.write_opt(b, &no_sync())?;
        Ok(matched)
    }

    /// The object a blob belongs to.
    pub(crate) fn key_of_blob(&self, blob: u64) -> Result<Option<ObjectKey>, CacheError> {
        Ok(self
            .db
            .get_cf(self.cf(BLOBS)?, blob.to_be_bytes())?
            .and_then(|v| ObjectKey::from_stored(&v)))
    }

    /// Writes the last-read times of objects. Only the eviction order depends on them, so they
    /// skip the log: a crash loses the ones not yet flushed, and a restart has none to replay (a
    /// busy minute's worth would otherwise take longer to replay than the rest of the start-up).
    pub(crate) fn record_access(&self, reads: &[(ObjectKey, SystemTime)]) -> Result<(), CacheError> {
        let cf = self.cf(ACCESS)?;
        let mut b = WriteBatch::default();
        for (okey, at) in reads {
            let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            b.put_cf(cf, okey.as_bytes(), secs.to_be_bytes());
        }
        let mut w = no_sync();
        w.disable_wal(true);
        self.db.write_opt(b, &w)?;
        Ok(())
    }

    /// Every clean entry in compact form, for rebuilding the eviction order (40 bytes an entry,
    /// so a million entries cost 40 MB while this runs), and the bytes of the pending ones (not
    /// the cache's to evict, but on the disk it counts). Walks `objects` and `access` side by
    /// side, decoding only the fields it needs, without filling the block cache.
    pub(crate) fn scan(&self, pinned: &dyn Fn(&ObjectKey) -> bool) -> Result<(Vec<Scanned>, u64), CacheError> {
        /// The part of an `Entry` a scan needs (serde skips the rest without allocating it).
        #[derive(Deserialize)]
        struct SizeOnly {
            size: u64,
        }
        #[derive(Deserialize)]
        struct Compact {
            blob: u64,
            meta: SizeOnly,
            validated: SystemTime,
            #[serde(default)]
            pending: bool,
        }
        let objects_cf = self.cf(OBJECTS)?;
        let expected = self
            .db
            .property_int_value_cf(objects_cf, "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0);
        let mut out = Vec::with_capacity(expected as usize + expected as usize / 16);
        let mut access = self.db.raw_iterator_cf_opt(self.cf(ACCESS)?, scan_options());
        access.seek_to_first();
        let mut objects = self.db.raw_iterator_cf_opt(objects_cf, scan_options());
        objects.seek_to_first();
        let mut pending_bytes = 0u64;
        while let (Some(k), Some(v)) = (objects.key(), objects.value()) {
            let entry = serde_json::from_slice::<Compact>(v);
            if let Ok(e) = &entry
                && e.pending
            {
                pending_bytes = pending_bytes.saturating_add(e.meta.size);
            }
            if let Ok(entry) = entry
                && !entry.pending
            {
                let mut last_read = entry.validated;
                while let Some(ak) = access.key() {
                    match ak.cmp(k) {
                        std::cmp::Ordering::Less => access.next(),
                        std::cmp::Ordering::Equal => {
                            if let Some(b) = access.value().and_then(|v| <[u8; 8]>::try_from(v).ok()) {
                                last_read = UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(b));
                            }
                            break;
                        }
                        std::cmp::Ordering::Greater => break,
                    }
                }
                out.push(Scanned {
                    blob: entry.blob,
                    key_hash: hash_of(&String::from_utf8_lossy(k)),
                    size: entry.meta.size,
                    last_read,
                    pinned: ObjectKey::from_stored(k).is_some_and(|okey| pinned(&okey)),
                });
            }
            objects.next();
        }
        objects.status()?;
        access.status()?;
        Ok((out, pending_bytes))
    }

    /// Whether the index holds no object at all (a new volume).
    pub(crate) fn is_empty(&self) -> Result<bool, CacheError> {
        let mut it = self.db.raw_iterator_cf(self.cf(OBJECTS)?);
        it.seek_to_first();
        it.status()?;
        Ok(!it.valid())
    }

    /// The `limit` objects read most recently (as far as flushed access times tell), newest
    /// first, with their last-read time in seconds.
    pub(crate) fn recent_reads(&self, limit: usize) -> Result<Vec<(ObjectKey, u64)>, CacheError> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let mut heap: BinaryHeap<Reverse<(u64, Vec<u8>)>> = BinaryHeap::with_capacity(limit + 1);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(ACCESS)?, scan_options());
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Ok(b) = <[u8; 8]>::try_from(v) {
                let at = u64::from_be_bytes(b);
                if heap.len() < limit {
                    heap.push(Reverse((at, k.to_vec())));
                } else if heap.peek().is_some_and(|Reverse((min, _))| at > *min) {
                    heap.pop();
                    heap.push(Reverse((at, k.to_vec())));
                }
            }
            it.next();
        }
        it.status()?;
        let mut out: Vec<(ObjectKey, u64)> = heap
            .into_iter()
            .filter_map(|Reverse((at, k))| Some((ObjectKey::from_stored(&k)?, at)))
            .collect();
        out.sort_by_key(|&(_, at)| Reverse(at));
        Ok(out)
    }

    /// Every blob id the index names.
    pub(crate) fn blob_ids(&self) -> Result<Vec<u64>, CacheError> {
        let mut ids = Vec::new();
        let mut it = self.db.raw_iterator_cf_opt(self.cf(BLOBS)?, scan_options());
        it.seek_to_first();
        while let Some(k) = it.key() {
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                ids.push(u64::from_be_bytes(b));
            }
            it.next();
        }
        it.status()?;
        Ok(ids)
    }

    /// Commits version `seq` of `okey` as ONE synced batch: its journal `record` and the index
    /// entry naming it (its blob, or a tombstone for a delete). `drop_blob`: the blob of the clean
    /// entry it replaces, no longer named. The write is on disk when this returns.
    pub(crate) fn commit_version(
        &self,
        okey: &ObjectKey,
        seq: u64,
        record: &[u8],
        entry: &Entry,
        drop_blob: Option<u64>,
    ) -> Result<(), CacheError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(JOURNAL)?, seq.to_be_bytes(), record);
        b.put_cf(self.cf(OBJECTS)?, okey.as_bytes(), serde_json::to_vec(entry)?);
        if entry.deleted {
            b.delete_cf(self.cf(ACCESS)?, okey.as_bytes());
        } else {
            b.put_cf(self.cf(BLOBS)?, seq.to_be_bytes(), okey.as_bytes());
        }
        if let Some(old) = drop_blob {
            b.delete_cf(self.cf(BLOBS)?, old.to_be_bytes());
        }
        self.write_synced(b)
    }

    /// Releases version `seq` of `okey` (the origin has it, or a newer one replaced it) as one
    /// batch: its journal record goes, and the index entry changes as `after` says. Synced when
    /// `sync` (see `Journal::release`).
    pub(crate) fn release_version(
        &self,
        seq: u64,
        okey: &ObjectKey,
        after: &Released<'_>,
        sync: bool,
    ) -> Result<(), CacheError> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(JOURNAL)?, seq.to_be_bytes());
        match after {
            Released::Clean(e) => b.put_cf(self.cf(OBJECTS)?, okey.as_bytes(), serde_json::to_vec(e)?),
            Released::Gone => {
                b.delete_cf(self.cf(OBJECTS)?, okey.as_bytes());
                b.delete_cf(self.cf(BLOBS)?, seq.to_be_bytes());
            }
            Released::Superseded { forget_blob } => {
                if *forget_blob {
                    b.delete_cf(self.cf(BLOBS)?, seq.to_be_bytes());
                }
            }
        }
        // Tests hold the write here, to race an eviction against it (power_cut.rs).
        crate::journal::pause_point("release_write");
        if sync {
            return self.write_synced(b);
        }
        self.db.write_opt(b, &no_sync())?;
        Ok(())
    }

    /// Releases superseded versions (`(seq, is_put)`) in ONE synced batch: their records and the
    /// names of their blobs go (a newer version of their key is its entry).
    pub(crate) fn release_superseded(&self, versions: &[(u64, bool)]) -> Result<(), CacheError> {
        let mut b = WriteBatch::default();
        for (seq, is_put) in versions {
            b.delete_cf(self.cf(JOURNAL)?, seq.to_be_bytes());
            if *is_put {
                b.delete_cf(self.cf(BLOBS)?, seq.to_be_bytes());
            }
        }
        self.write_synced(b)
    }

    /// Deletes journal record `seq` alone, synced (an unreadable record an operator dropped).
    pub(crate) fn delete_record(&self, seq: u64) -> Result<(), CacheError> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(JOURNAL)?, seq.to_be_bytes());
        self.write_synced(b)
    }

    /// Writes the entry of `okey` in a synced batch (a tombstone restored at start).
    pub(crate) fn put_synced(&self, okey: &ObjectKey, entry: &Entry) -> Result<(), CacheError> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(OBJECTS)?, okey.as_bytes(), serde_json::to_vec(entry)?);
        self.write_synced(b)
    }

    /// Whether any object of `bucket` is indexed (proof enough that the bucket exists).
    pub(crate) fn has_bucket(&self, bucket: &str) -> Result<bool, CacheError> {
        let prefix = ObjectKey::prefix(bucket, "");
        let mut it = self.db.raw_iterator_cf(self.cf(OBJECTS)?);
        it.seek(prefix.as_bytes());
        Ok(it.key().is_some_and(|k| k.starts_with(prefix.as_bytes())))
    }

    /// The clean entries of `bucket` (key and blob): what a deleted bucket leaves in the cache.
    pub(crate) fn clean_entries_of(&self, bucket: &str) -> Result<Vec<(ObjectKey, u64)>, CacheError> {
        #[derive(Deserialize)]
        struct BlobOnly {
            blob: u64,
            #[serde(default)]
            pending: bool,
        }
        let prefix = ObjectKey::prefix(bucket, "");
        let mut it = self.db.raw_iterator_cf(self.cf(OBJECTS)?);
        it.seek(prefix.as_bytes());
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if let (Some(okey), Ok(e)) = (ObjectKey::from_stored(k), serde_json::from_slice::<BlobOnly>(v))
                && !e.pending
            {
                out.push((okey, e.blob));
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The keys whose pending entries name one of `seqs` (a blob or a tombstone), by version:
    /// what unreadable journal records left in the index. One walk over every entry (an offline
    /// repair's cost, never a request's).
    pub(crate) fn pending_keys_of(&self, seqs: &HashSet<u64>) -> Result<HashMap<u64, ObjectKey>, CacheError> {
        #[derive(Deserialize)]
        struct BlobOnly {
            blob: u64,
            #[serde(default)]
            pending: bool,
        }
        let mut found = HashMap::new();
        if seqs.is_empty() {
            return Ok(found);
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(OBJECTS)?, scan_options());
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Ok(e) = serde_json::from_slice::<BlobOnly>(v)
                && e.pending
                && seqs.contains(&e.blob)
                && let Some(okey) = ObjectKey::from_stored(k)
            {
                found.insert(e.blob, okey);
            }
            it.next();
        }
        it.status()?;
        Ok(found)
    }

    /// Writes `b` and syncs the log: the releases written before it are durable too.
    fn write_synced(&self, b: WriteBatch) -> Result<(), CacheError> {
        let written = self.releases_written.load(Ordering::SeqCst);
        self.db.write_opt(b, &synced())?;
        self.releases_synced.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    /// A release was written without a sync (after its write): the next blob removal syncs the
    /// log first, unless a synced write has covered it meanwhile.
    pub(crate) fn note_release(&self) {
        self.releases_written.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes every release noted so far durable: one sync of the log, unless a sync that
    /// completed since covers them all (a commit's synced batch, as a rule). A sync still under
    /// way covers nothing yet, so a racing caller syncs too rather than unlink before it ends.
    pub(crate) fn sync_releases(&self) -> Result<(), CacheError> {
        let written = self.releases_written.load(Ordering::SeqCst);
        if self.releases_synced.load(Ordering::SeqCst) >= written {
            return Ok(());
        }
        self.sync_wal()?;
        self.release_syncs.fetch_add(1, Ordering::Relaxed);
        self.releases_synced.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    /// Tests: makes `sync_wal` fail (`true`) or work again.
    #[cfg(test)]
    pub(crate) fn fail_syncs(&self, fail: bool) {
        self.failing_syncs.store(fail, Ordering::SeqCst);
    }

    /// Syncs of the log `sync_releases` has made.
    #[cfg(test)]
    pub(crate) fn release_syncs(&self) -> u64 {
        self.release_syncs.load(Ordering::Relaxed)
    }

    /// Makes every write so far durable (one fsync of the log). `PERCH_UNSAFE_SKIP_SYNC=journal`
    /// (tests only) skips it, as it skips the commits' syncs, so that no sync of the log is left.
    pub(crate) fn sync_wal(&self) -> Result<(), CacheError> {
        #[cfg(test)]
        if self.failing_syncs.load(Ordering::SeqCst) {
            return Err(CacheError::Io(std::io::Error::other("a sync made to fail (test)")));
        }
        if crate::durable::skips_sync(crate::durable::SyncStep::Journal) {
            return Ok(self.db.flush_wal(false)?);
        }
        Ok(self.db.flush_wal(true)?)
    }

    /// Every journal record, in sequence order.
    pub(crate) fn journal(&self) -> Result<Vec<(u64, Vec<u8>)>, CacheError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf_opt(self.cf(JOURNAL)?, scan_options());
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Ok(b) = <[u8; 8]>::try_from(k) {
                out.push((u64::from_be_bytes(b), v.to_vec()));
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Writes every memtable out, so that the next open has no log to replay (a clean stop).
    pub(crate) fn flush(&self) -> Result<(), CacheError> {
        let cfs = ALL_CFS
            .into_iter()
            .map(|name| self.cf(name))
            .collect::<Result<Vec<_>, _>>()?;
        let mut o = FlushOptions::default();
        o.set_wait(true);
        Ok(self.db.flush_cfs_opt(&cfs, &o)?)
    }
}

#[cfg(test)]
mod tests;
