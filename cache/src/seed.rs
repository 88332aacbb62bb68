//! `Seeder`: fills a stopped Perch's data dir with clean cache entries, straight into the index and
//! the blob directory (no origin, no HTTP), as if they had been fetched and read at given times.
//! For benchmarks of large caches (`perch-bench cache-restart`: a million entries in a minute).

use std::path::Path;
use std::time::SystemTime;

use crate::error::CacheError;
use crate::key::ObjectKey;
use crate::local::blobs::{Blobs, BlockCrcs};
use crate::local::index::{Entry, Index};
use crate::origin::ObjectMeta;

pub struct Seeder {
    index: Index,
    blobs: Blobs,
}

impl Seeder {
    /// Opens the cache of the data dir `data_dir` (no Perch may be running on it).
    pub fn open(data_dir: &Path) -> Result<Seeder, CacheError> {
        let dir = data_dir.join("cache");
        std::fs::create_dir_all(&dir)?;
        Ok(Seeder {
            index: Index::open(&dir.join("index"))?,
            blobs: Blobs::open(dir.join("blobs"))?,
        })
    }

    /// Adds `body` as the clean cached copy of `bucket/key`, described by `meta` (its size must be
    /// the body's), confirmed by the origin at `validated`. Safe to call from several threads.
    pub fn add(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
        body: &[u8],
        validated: SystemTime,
    ) -> Result<(), CacheError> {
        if meta.size != body.len() as u64 {
            return Err(CacheError::Corrupt(format!(
                "{bucket}/{key}: meta says {} bytes, the body has {}",
                meta.size,
                body.len()
            )));
        }
        let id = self.index.next_blob_id()?;
        let temp = self.blobs.temp_path();
        std::fs::write(&temp, body)?;
        self.blobs.commit(&temp, id)?;
        let mut crcs = BlockCrcs::default();
        crcs.update(body);
        let entry = Entry {
            blob: id,
            meta: meta.clone(),
            crcs: crcs.finish(),
            validated,
            pending: false,
            origin_etag: None,
            deleted: false,
            parts: Vec::new(),
        };
        self.index.put(&ObjectKey::new(bucket, key), &entry, None)?;
        Ok(())
    }

    /// Records when objects were last read (the eviction order a restart rebuilds).
    pub fn record_reads(&self, bucket: &str, reads: &[(String, SystemTime)]) -> Result<(), CacheError> {
        let reads: Vec<(ObjectKey, SystemTime)> = reads
            .iter()
            .map(|(key, at)| (ObjectKey::new(bucket, key), *at))
            .collect();
        self.index.record_access(&reads)
    }

    /// Writes the index out as a clean stop of Perch leaves it (no log to replay).
    pub fn finish(self) -> Result<(), CacheError> {
        self.index.flush()
    }
}
