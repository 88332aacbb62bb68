//! `Index`: the cache's RocksDB, which says which objects are on local disk, in which blob, with
//! what metadata. Column families: `objects` (bucket NUL key → `Entry`), `blobs` (blob id → bucket
//! NUL key), `access` (bucket NUL key → last read, seconds) and `meta` (the blob id high-water mark).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::CacheError;
use crate::origin::ObjectMeta;

const OBJECTS: &str = "objects";
const BLOBS: &str = "blobs";
const ACCESS: &str = "access";
const META: &str = "meta";
const NEXT_BLOB: &[u8] = b"next_blob";
/// Blob ids are reserved in runs of this many, so the counter is written once per run.
const ID_RUN: u64 = 4096;

/// One cached object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub blob: u64,
    pub meta: ObjectMeta,
    /// CRC32 of each `blobs::BLOCK` of the body.
    pub crcs: Vec<u32>,
    /// When the origin last confirmed this copy (for keys that are revalidated).
    pub validated: SystemTime,
}

/// The cache key of an object: bucket names cannot hold NUL, and Perch refuses keys that do.
pub fn object_key(bucket: &str, key: &str) -> String {
    let mut k = String::with_capacity(bucket.len() + 1 + key.len());
    k.push_str(bucket);
    k.push('\0');
    k.push_str(key);
    k
}

/// What `scan` yields for each entry.
#[derive(Debug, Clone, Copy)]
pub struct Scanned {
    pub blob: u64,
    pub key_hash: u64,
    pub size: u64,
    pub last_read: SystemTime,
}

pub struct Index {
    db: DB,
    next: AtomicU64,
    /// The first id not yet covered by the persisted high-water mark.
    reserved: Mutex<u64>,
    /// The first id this process may hand out: every blob of an earlier run has a lower id.
    first_of_run: u64,
}

fn db_err(e: rocksdb::Error) -> CacheError {
    CacheError::Index(e.to_string())
}

fn no_sync() -> WriteOptions {
    // The cache holds clean copies: losing the last writes in a power cut only loses cache
    // entries (their blobs are checked block by block when read), never data.
    let mut w = WriteOptions::default();
    w.set_sync(false);
    w
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, CacheError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let cfs = [OBJECTS, BLOBS, ACCESS, META].map(|name| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(db_err)?;
        let meta = db
            .cf_handle(META)
            .ok_or_else(|| CacheError::Index("no meta column family".into()))?;
        let next = match db.get_cf(meta, NEXT_BLOB).map_err(db_err)? {
            Some(v) => u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| CacheError::Index("bad next_blob".into()))?,
            ),
            None => 1,
        };
        Ok(Index {
            db,
            next: AtomicU64::new(next),
            reserved: Mutex::new(next),
            first_of_run: next,
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, CacheError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| CacheError::Index(format!("no {name} column family")))
    }

    /// Blob ids below this one were handed out by an earlier run (ids at or above it are this
    /// run's, and may be on disk a moment before the index names them).
    pub fn first_id_of_this_run(&self) -> u64 {
        self.first_of_run
    }

    /// A blob id never handed out before, across restarts.
    pub fn next_blob_id(&self) -> Result<u64, CacheError> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let mut reserved = self
            .reserved
            .lock()
            .map_err(|_| CacheError::Index("id lock poisoned".into()))?;
        if id >= *reserved {
            let mark = id + ID_RUN;
            let mut w = WriteOptions::default();
            w.set_sync(true);
            self.db
                .put_cf_opt(self.cf(META)?, NEXT_BLOB, mark.to_be_bytes(), &w)
                .map_err(db_err)?;
            *reserved = mark;
        }
        Ok(id)
    }

    pub fn get(&self, okey: &str) -> Result<Option<Entry>, CacheError> {
        match self
            .db
            .get_pinned_cf(self.cf(OBJECTS)?, okey.as_bytes())
            .map_err(db_err)?
        {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    /// Records `entry` for `okey`; `replaced` is the blob of the entry it replaces, if any.
    pub fn put(&self, okey: &str, entry: &Entry, replaced: Option<u64>) -> Result<(), CacheError> {
        let value = serde_json::to_vec(entry).map_err(|e| CacheError::Index(e.to_string()))?;
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(OBJECTS)?, okey.as_bytes(), value);
        b.put_cf(self.cf(BLOBS)?, entry.blob.to_be_bytes(), okey.as_bytes());
        if let Some(old) = replaced.filter(|&o| o != entry.blob) {
            b.delete_cf(self.cf(BLOBS)?, old.to_be_bytes());
        }
        self.db.write_opt(b, &no_sync()).map_err(db_err)
    }

    /// Forgets `okey` if it still names `blob`; returns whether it did.
    pub fn remove_if(&self, okey: &str, blob: u64) -> Result<bool, CacheError> {
        let current = self.get(okey)?;
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(BLOBS)?, blob.to_be_bytes());
        let matched = current.as_ref().is_some_and(|e| e.blob == blob);
        if matched {
            b.delete_cf(self.cf(OBJECTS)?, okey.as_bytes());
            b.delete_cf(self.cf(ACCESS)?, okey.as_bytes());
        }
        self.db.write_opt(b, &no_sync()).map_err(db_err)?;
        Ok(matched)
    }

    /// The object a blob belongs to.
    pub fn key_of_blob(&self, blob: u64) -> Result<Option<String>, CacheError> {
        Ok(self
            .db
            .get_cf(self.cf(BLOBS)?, blob.to_be_bytes())
            .map_err(db_err)?
            .and_then(|v| String::from_utf8(v).ok()))
    }

    /// Writes the last-read times of objects (not synced: only the eviction order depends on them).
    pub fn record_access(&self, reads: &[(String, SystemTime)]) -> Result<(), CacheError> {
        let cf = self.cf(ACCESS)?;
        let mut b = WriteBatch::default();
        for (okey, at) in reads {
            let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            b.put_cf(cf, okey.as_bytes(), secs.to_be_bytes());
        }
        self.db.write_opt(b, &no_sync()).map_err(db_err)
    }

    /// Every entry in compact form, for rebuilding the eviction order (32 bytes an entry, so a
    /// million entries cost 32 MB while this runs). Walks `objects` and `access` side by side.
    pub fn scan(&self, hash: impl Fn(&str) -> u64) -> Result<Vec<Scanned>, CacheError> {
        let mut access = self.db.iterator_cf(self.cf(ACCESS)?, IteratorMode::Start).peekable();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(OBJECTS)?, IteratorMode::Start) {
            let (k, v) = item.map_err(db_err)?;
            let Ok(entry) = serde_json::from_slice::<Entry>(&v) else {
                continue;
            };
            let mut last_read = entry.validated;
            while let Some(Ok((ak, av))) = access.peek() {
                match ak.as_ref().cmp(k.as_ref()) {
                    std::cmp::Ordering::Less => {
                        access.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if let Ok(b) = <[u8; 8]>::try_from(av.as_ref()) {
                            last_read = UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(b));
                        }
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            let okey = String::from_utf8_lossy(&k);
            out.push(Scanned {
                blob: entry.blob,
                key_hash: hash(&okey),
                size: entry.meta.size,
                last_read,
            });
        }
        Ok(out)
    }

    /// Every blob id the index names.
    pub fn blob_ids(&self) -> Result<Vec<u64>, CacheError> {
        let mut ids = Vec::new();
        for item in self.db.iterator_cf(self.cf(BLOBS)?, IteratorMode::Start) {
            let (k, _) = item.map_err(db_err)?;
            if let Ok(b) = <[u8; 8]>::try_from(k.as_ref()) {
                ids.push(u64::from_be_bytes(b));
            }
        }
        Ok(ids)
    }
}
