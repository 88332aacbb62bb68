//! Write-back: every acknowledged write is a version (a sequence number, an immutable blob, a
//! journal record) committed in one synced batch, and the uploader sends versions to the origin.
//!
//! Life of a version (docs/write-back.md): the body is written to a temp file and fsynced, renamed
//! to the blob named by its sequence number, the directory is fsynced, then the journal record and
//! the index entry are written in one synced RocksDB batch; only then is the client answered.
//! Versions are cut into epochs by barriers: inside an epoch uploads run in parallel (one per key
//! at a time, oldest first, a version superseded in its own stage skipped); a barrier goes up only
//! once everything before it is confirmed, and nothing after it goes up before it (write-through
//! versions excepted: they wait for no epoch). A confirmed version leaves the journal and stays as
//! a clean cache entry if it is still the newest of its key.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use perch_policy::{Glob, WriteMode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::CacheError;
use crate::index::{Entry, object_key};
use crate::origin::{ListEntry, ObjectMeta, OriginError, PutBody, PutInput};
use crate::read::{ReadCache, key_hash, lock};

/// Settings of the write-back journal and its uploader.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// Uploads in flight at once (`--upload-concurrency`, 16).
    pub upload_concurrency: usize,
    /// Past this many unuploaded bytes, a write waits for room (`--dirty-bytes-max`).
    pub dirty_bytes_max: u64,
    /// Upload lag past which Perch reports itself unhealthy (`--dirty-age-max`, 60 s).
    pub dirty_age_max: Duration,
    /// Headers added to the uploads of matching keys (`--upload-header 'GLOB=Name: value'`).
    pub upload_headers: Vec<UploadHeader>,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            upload_concurrency: 16,
            dirty_bytes_max: 10 << 30,
            dirty_age_max: Duration::from_secs(60),
            upload_headers: Vec::new(),
        }
    }
}

/// One `--upload-header` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHeader {
    pub glob: Glob,
    pub name: String,
    pub value: String,
}

impl std::str::FromStr for UploadHeader {
    type Err = String;
    /// `GLOB=Name: value`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (glob, header) = s
            .split_once('=')
            .ok_or_else(|| format!("upload header `{s}` is not GLOB=Name: value"))?;
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("upload header `{s}` is not GLOB=Name: value"))?;
        let (name, value) = (name.trim(), value.trim());
        let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if glob.is_empty() || !valid_name || value.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!("upload header `{s}` is not GLOB=Name: value"));
        }
        Ok(UploadHeader {
            glob: Glob::new(glob),
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        })
    }
}

/// Where a new version's body is: a verified spool file, already fsynced (renamed into place), or
/// memory.
pub enum NewBody {
    File(PathBuf),
    Bytes(Bytes),
}

/// A PUT version to commit: its verified body, its object metadata (ETag, headers, checksums),
/// the CRC32 of each 1 MiB block, and its part layout when it is a completed multipart upload.
pub struct NewVersion {
    pub body: NewBody,
    pub meta: ObjectMeta,
    pub crcs: Vec<u32>,
    pub parts: Option<Vec<PartLayout>>,
}

/// Why a write could not be committed or confirmed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("local storage: {0}")]
    Local(#[from] CacheError),
    #[error("the origin refused version {seq}: {error}")]
    Refused { seq: u64, error: String },
    #[error("the origin has not confirmed the write within {0:?}")]
    Timeout(Duration),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Local(CacheError::Io(e))
    }
}

/// The journal record of a version, as stored (JSON) in the `journal` column family.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    bucket: String,
    key: String,
    /// The object of a PUT; `None` for a DELETE.
    put: Option<RecordPut>,
    mode: String,
    /// 2 × epoch, plus 1 for the barrier that closes the epoch.
    stage: u64,
    acked: SystemTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RecordPut {
    meta: ObjectMeta,
    crcs: Vec<u32>,
    /// A completed multipart upload: its parts, uploaded with the same layout (so the origin's
    /// ETag and composite checksums are the ones the client was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parts: Option<Vec<PartLayout>>,
}

/// One part of a multipart version: its size and the checksums it was uploaded with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLayout {
    pub size: u64,
    pub checksums: crate::origin::Checksums,
}

/// A version not yet confirmed by the origin.
#[derive(Debug, Clone)]
struct Version {
    okey: String,
    bucket: String,
    key: String,
    put: Option<RecordPut>,
    mode: WriteMode,
    stage: u64,
    acked: SystemTime,
}

impl Version {
    fn size(&self) -> u64 {
        self.put.as_ref().map_or(0, |p| p.meta.size)
    }
}

#[derive(Default)]
struct State {
    versions: BTreeMap<u64, Version>,
    /// Unconfirmed versions of each key (object key → sequence numbers).
    keys: BTreeMap<String, BTreeSet<u64>>,
    in_flight: HashSet<u64>,
    busy_keys: HashSet<String>,
    /// Versions the origin refused for good: kept, shown, not retried until the next start.
    failed: BTreeMap<u64, String>,
    write_through: usize,
    dirty_bytes: u64,
    last_seq: u64,
    /// The last origin fault the uploader met, while it lasts.
    origin_fault: Option<(SystemTime, String)>,
}

impl State {
    /// Adds an unconfirmed version (at start from the journal, or just committed).
    fn add(&mut self, seq: u64, v: Version) {
        self.dirty_bytes += v.size();
        if v.mode == WriteMode::WriteThrough {
            self.write_through += 1;
        }
        self.keys.entry(v.okey.clone()).or_default().insert(seq);
        self.last_seq = self.last_seq.max(seq);
        self.versions.insert(seq, v);
    }
}

impl Version {
    fn of(okey: String, record: Record) -> Version {
        Version {
            okey,
            mode: parse_mode(&record.mode),
            bucket: record.bucket,
            key: record.key,
            put: record.put,
            stage: record.stage,
            acked: record.acked,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UploadLabel {
    result: &'static str,
}

#[derive(Clone, Default)]
struct WriteStats {
    dirty_objects: Gauge,
    dirty_bytes: Gauge,
    dirty_age: Gauge,
    uploads: Family<UploadLabel, Counter>,
    uploaded_bytes: Counter,
    failed: Gauge,
}

impl WriteStats {
    fn register(&self, r: &mut Registry) {
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

/// The write-back journal's in-memory side; its records live in the cache's `Index`.
pub(crate) struct Journal {
    cfg: WriteConfig,
    state: std::sync::Mutex<State>,
    /// The current epoch. Ordinary commits hold it shared, a barrier exclusively, so a version
    /// committed after a barrier was acknowledged always belongs to a later epoch.
    epoch: std::sync::RwLock<u64>,
    /// Wakes the dispatcher.
    wake: Arc<Notify>,
    /// How many versions are unconfirmed (`state.versions.len()`, kept beside it under the same
    /// lock), so that reads skip the lock when there are none.
    pending: std::sync::atomic::AtomicUsize,
    /// Bumped whenever a version is released or fails: writers waiting for room, for a key to
    /// be clean or for a confirmation look again.
    released: watch::Sender<u64>,
    stats: WriteStats,
}

/// A snapshot of the backlog, for `perch status` and `/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteStatus {
    pub dirty_objects: u64,
    pub dirty_bytes: u64,
    pub oldest_age_seconds: f64,
    pub last_seq: u64,
    pub in_flight: u64,
    /// Versions at or below `upto` (when asked) still pending.
    pub pending_upto: Option<u64>,
    pub failed: Vec<FailedVersion>,
    /// The origin fault the uploader is retrying, if any.
    pub origin_fault: Option<String>,
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedVersion {
    pub seq: u64,
    pub bucket: String,
    pub key: String,
    pub error: String,
}

/// What a listing must show of a key with unconfirmed versions: its newest version.
#[derive(Debug, Clone)]
pub struct DirtyKey {
    pub key: String,
    /// `None`: the newest version is a delete.
    pub object: Option<ListEntry>,
}

/// Test-only crash points between the steps of a commit: `PERCH_FAIL_POINT=<name>` aborts the
/// process there (see docs/write-back.md). Read once.
fn fail_point(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("PERCH_FAIL_POINT").ok().filter(|v| !v.is_empty()));
    if point.as_deref() == Some(name) {
        eprintln!("perch: fail point {name} reached; aborting");
        std::process::abort();
    }
}

fn parse_mode(s: &str) -> WriteMode {
    s.parse().unwrap_or(WriteMode::WriteBack)
}

/// Whether an origin error is final for a version (retrying cannot help).
fn is_permanent(e: &OriginError) -> bool {
    match e {
        OriginError::Rejected { status, .. } => (400..500).contains(status) && *status != 408 && *status != 429,
        OriginError::NoSuchBucket | OriginError::PreconditionFailed | OriginError::InvalidRange => true,
        _ => false,
    }
}

impl Journal {
    pub(crate) fn new(cfg: WriteConfig, registry: Option<&mut Registry>) -> Journal {
        let stats = WriteStats::default();
        if let Some(r) = registry {
            stats.register(r);
        }
        Journal {
            cfg,
            state: std::sync::Mutex::new(State::default()),
            epoch: std::sync::RwLock::new(0),
            pending: std::sync::atomic::AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            released: watch::channel(0).0,
            stats,
        }
    }

    /// Whether the newest unconfirmed version of `okey` is a delete.
    pub(crate) fn deleted(&self, okey: &str) -> bool {
        // Every GET and HEAD asks: without pending versions, the answer needs no lock.
        if self.pending.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return false;
        }
        let st = lock(&self.state);
        st.keys
            .get(okey)
            .and_then(|seqs| seqs.last())
            .and_then(|seq| st.versions.get(seq))
            .is_some_and(|v| v.put.is_none())
    }

    /// Whether `okey` has unconfirmed versions (a fetch from the origin must not be kept then).
    pub(crate) fn is_dirty(&self, okey: &str) -> bool {
        lock(&self.state).keys.contains_key(okey)
    }

    fn bump(&self) {
        self.released.send_modify(|n| *n = n.wrapping_add(1));
        self.wake.notify_one();
    }

    /// Called under the state lock after every change of `st.versions`.
    fn refresh_gauges(&self, st: &State) {
        self.pending
            .store(st.versions.len(), std::sync::atomic::Ordering::SeqCst);
        self.stats.dirty_objects.set(st.versions.len() as i64);
        self.stats.dirty_bytes.set(st.dirty_bytes as i64);
        self.stats.failed.set(st.failed.len() as i64);
        self.stats.dirty_age.set(oldest_age(st).as_secs() as i64);
    }
}

fn oldest_age(st: &State) -> Duration {
    st.versions
        .values()
        .map(|v| v.acked)
        .min()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

impl ReadCache {
    /// Rebuilds the journal's state from its records at start. A record whose blob is missing
    /// or short is an error: Perch refuses to start rather than skip an acknowledged write.
    pub(crate) fn replay_journal(&self) -> Result<usize, CacheError> {
        let records = self.index.journal()?;
        let mut st = lock(&self.journal.state);
        let mut max_stage = 0;
        for (seq, raw) in records {
            let record: Record = serde_json::from_slice(&raw)
                .map_err(|e| CacheError::Index(format!("journal record {seq} is unreadable: {e}")))?;
            if let Some(put) = &record.put {
                let len = std::fs::metadata(self.blobs.path(seq)).map(|m| m.len()).ok();
                if len != Some(put.meta.size) {
                    return Err(CacheError::Index(format!(
                        "journal record {seq} ({}/{}) names blob {} of {} bytes, which is {}; \
                         refusing to start without an acknowledged write",
                        record.bucket,
                        record.key,
                        self.blobs.path(seq).display(),
                        put.meta.size,
                        len.map_or("missing".to_owned(), |l| format!("{l} bytes long")),
                    )));
                }
            }
            let okey = object_key(&record.bucket, &record.key);
            max_stage = max_stage.max(record.stage);
            st.add(seq, Version::of(okey, record));
        }
        let count = st.versions.len();
        self.journal.refresh_gauges(&st);
        drop(st);
        // A barrier closed epoch `stage / 2`: new versions belong to the next one.
        if let Ok(mut e) = self.journal.epoch.write() {
            *e = max_stage / 2 + max_stage % 2;
        }
        Ok(count)
    }

    /// Commits a PUT version of `bucket/key` (its body already verified) and returns its sequence
    /// number once it is durable: blob fsynced, renamed, directory fsynced, batch synced. Waits
    /// for room first when more than `--dirty-bytes-max` is waiting for upload.
    pub async fn commit_put(
        self: &Arc<Self>,
        bucket: &str,
        key: &str,
        version: NewVersion,
        mode: WriteMode,
    ) -> Result<u64, WriteError> {
        let NewVersion {
            body,
            meta,
            crcs,
            parts,
        } = version;
        self.wait_for_room(meta.size).await;
        let cache = self.clone();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        let put = RecordPut { meta, crcs, parts };
        tokio::task::spawn_blocking(move || cache.commit_blocking(&bucket, &key, Some((body, put)), mode))
            .await
            .map_err(|e| WriteError::Local(CacheError::Io(std::io::Error::other(e))))?
    }

    /// Commits a DELETE version of `bucket/key`.
    pub async fn commit_delete(self: &Arc<Self>, bucket: &str, key: &str, mode: WriteMode) -> Result<u64, WriteError> {
        let cache = self.clone();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || cache.commit_blocking(&bucket, &key, None, mode))
            .await
            .map_err(|e| WriteError::Local(CacheError::Io(std::io::Error::other(e))))?
    }

    async fn wait_for_room(&self, size: u64) {
        let mut rx = self.journal.released.subscribe();
        let mut logged = false;
        loop {
            {
                let st = lock(&self.journal.state);
                // One object larger than the whole limit still goes, alone.
                if st.dirty_bytes == 0 || st.dirty_bytes + size <= self.journal.cfg.dirty_bytes_max {
                    return;
                }
                if !logged {
                    tracing::warn!(
                        dirty_bytes = st.dirty_bytes,
                        limit = self.journal.cfg.dirty_bytes_max,
                        "--dirty-bytes-max reached: writes wait for uploads"
                    );
                    logged = true;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    fn commit_blocking(
        &self,
        bucket: &str,
        key: &str,
        put: Option<(NewBody, RecordPut)>,
        mode: WriteMode,
    ) -> Result<u64, WriteError> {
        let okey = object_key(bucket, key);
        // 1. The body, durable under a temp name.
        let (temp, put) = match put {
            Some((body, put)) => {
                let temp = self.durable_temp(body)?;
                (Some(temp), Some(put))
            }
            None => (None, None),
        };
        let _temp_guard = temp.clone().map(crate::read::TempGuard);
        // Same-key commits are serialized (their order is their sequence order); commits after a
        // barrier wait until it is committed.
        let _key = self.key_lock(&okey);
        let mut epoch = match mode {
            WriteMode::Barrier => EpochGuard::Exclusive(self.journal.epoch.write().map_err(|_| poisoned())?),
            _ => EpochGuard::Shared(self.journal.epoch.read().map_err(|_| poisoned())?),
        };
        let seq = self.index.next_blob_id()?;
        // 2. Renamed to its sequence number, and the name made durable.
        if let Some(temp) = &temp {
            self.blobs.commit(temp, seq)?;
            fail_point("blob_renamed");
            self.blobs.sync_dir(seq)?;
            fail_point("dir_synced");
        }
        let stage = epoch.get() * 2 + u64::from(mode == WriteMode::Barrier);
        let acked = SystemTime::now();
        let record = Record {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            put: put.clone(),
            mode: mode.as_str().to_owned(),
            stage,
            acked,
        };
        let raw = serde_json::to_vec(&record).map_err(|e| CacheError::Index(e.to_string()))?;
        let previous = self.index.get(&okey)?;
        // The clean copy this version replaces goes; a pending one stays until it is uploaded.
        let replaced_clean = previous.filter(|p| !p.pending && p.blob != seq).map(|p| p.blob);
        let entry = put.as_ref().map(|p| Entry {
            blob: seq,
            meta: p.meta.clone(),
            crcs: p.crcs.clone(),
            validated: acked,
            pending: true,
            origin_etag: None,
        });
        // 3. Journal record and index entry: one synced batch.
        self.index
            .commit_version(&okey, seq, &raw, entry.as_ref(), replaced_clean)?;
        fail_point("batch_committed");
        if mode == WriteMode::Barrier {
            epoch.advance();
        }
        drop(epoch);
        {
            let mut st = lock(&self.journal.state);
            st.add(seq, Version::of(okey.clone(), record));
            self.journal.refresh_gauges(&st);
        }
        // Reads see this version from now on: no memory copy, no fill of an older body.
        self.forget_copies(&okey);
        if let Some(old) = replaced_clean {
            lock(&self.evictor).remove(old);
            self.blobs.remove(old);
        }
        self.journal.wake.notify_one();
        Ok(seq)
    }

    /// Writes (or moves) a body into a temp file of the blob directory and fsyncs it.
    fn durable_temp(&self, body: NewBody) -> Result<PathBuf, WriteError> {
        let temp = self.blobs.temp_path();
        match body {
            NewBody::Bytes(b) => {
                let guard = crate::read::TempGuard(temp.clone());
                let mut f = std::fs::File::create(&temp)?;
                std::io::Write::write_all(&mut f, &b)?;
                fail_point("blob_written");
                f.sync_all()?;
                std::mem::forget(guard);
            }
            NewBody::File(spooled) => {
                // The spool is under the same data dir and already fsynced: a rename. Across
                // filesystems, a copy, synced here.
                if std::fs::rename(&spooled, &temp).is_err() {
                    std::fs::copy(&spooled, &temp)?;
                    std::fs::File::open(&temp)?.sync_all()?;
                }
                fail_point("blob_written");
            }
        }
        fail_point("blob_synced");
        Ok(temp)
    }

    /// Waits until version `seq` is in the origin (write-through, strict barriers), up to `limit`.
    pub async fn wait_confirmed(&self, seq: u64, limit: Duration) -> Result<(), WriteError> {
        self.wait_until(limit, |st| {
            if let Some(error) = st.failed.get(&seq) {
                return Some(Err(WriteError::Refused {
                    seq,
                    error: error.clone(),
                }));
            }
            (!st.versions.contains_key(&seq)).then_some(Ok(()))
        })
        .await
    }

    /// Waits until `bucket/key` has no unconfirmed version (before a conditional request, a copy
    /// or a multipart completion goes to the origin), up to `limit`.
    pub async fn wait_clean(&self, bucket: &str, key: &str, limit: Duration) -> Result<(), WriteError> {
        let okey = object_key(bucket, key);
        self.wait_until(limit, |st| match st.keys.get(&okey) {
            None => Some(Ok(())),
            Some(seqs) => seqs.iter().find_map(|seq| {
                st.failed.get(seq).map(|error| {
                    Err(WriteError::Refused {
                        seq: *seq,
                        error: error.clone(),
                    })
                })
            }),
        })
        .await
    }

    /// Whether `bucket/key` has versions not yet in the origin.
    pub fn has_pending(&self, bucket: &str, key: &str) -> bool {
        self.journal.is_dirty(&object_key(bucket, key))
    }

    /// Whether Perch holds objects or unuploaded writes of `bucket`: then the bucket existed at the
    /// origin when they were written, and a write need not ask the origin again.
    pub fn knows_bucket(&self, bucket: &str) -> bool {
        let start = object_key(bucket, "");
        let pending = {
            let st = lock(&self.journal.state);
            st.keys
                .range(start.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&start))
        };
        pending || self.index.has_bucket(bucket).unwrap_or(false)
    }

    /// Waits until no key of `bucket` has an unconfirmed version (before DeleteBucket), up to `limit`.
    pub async fn wait_bucket_clean(&self, bucket: &str, limit: Duration) -> Result<(), WriteError> {
        let start = object_key(bucket, "");
        self.wait_until(limit, |st| {
            let dirty = st
                .keys
                .range(start.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&start));
            (!dirty).then_some(Ok(()))
        })
        .await
    }

    async fn wait_until<F>(&self, limit: Duration, mut done: F) -> Result<(), WriteError>
    where
        F: FnMut(&State) -> Option<Result<(), WriteError>>,
    {
        let mut rx = self.journal.released.subscribe();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(r) = done(&lock(&self.journal.state)) {
                return r;
            }
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(WriteError::Timeout(limit)),
            }
        }
    }

    /// The backlog; `upto`: also count the versions at or below that sequence number.
    pub fn write_status(&self, upto: Option<u64>) -> WriteStatus {
        let st = lock(&self.journal.state);
        let age = oldest_age(&st);
        WriteStatus {
            dirty_objects: st.versions.len() as u64,
            dirty_bytes: st.dirty_bytes,
            oldest_age_seconds: age.as_secs_f64(),
            last_seq: st.last_seq,
            in_flight: st.in_flight.len() as u64,
            pending_upto: upto.map(|u| st.versions.range(..=u).count() as u64),
            failed: st
                .failed
                .iter()
                .filter_map(|(seq, error)| {
                    st.versions.get(seq).map(|v| FailedVersion {
                        seq: *seq,
                        bucket: v.bucket.clone(),
                        key: v.key.clone(),
                        error: error.clone(),
                    })
                })
                .collect(),
            origin_fault: st.origin_fault.as_ref().map(|(_, e)| e.clone()),
            healthy: age <= self.journal.cfg.dirty_age_max && st.failed.is_empty(),
        }
    }

    /// The newest unconfirmed version of every key of `bucket` that starts with `prefix`, in key
    /// order, for merging into the origin's listing.
    pub fn dirty_keys(&self, bucket: &str, prefix: &str) -> Vec<DirtyKey> {
        let start = object_key(bucket, prefix);
        let st = lock(&self.journal.state);
        st.keys
            .range(start.clone()..)
            .take_while(|(okey, _)| okey.starts_with(&start))
            .filter_map(|(_, seqs)| {
                let v = st.versions.get(seqs.last()?)?;
                Some(DirtyKey {
                    key: v.key.clone(),
                    object: v.put.as_ref().map(|p| ListEntry {
                        key: v.key.clone(),
                        size: p.meta.size,
                        etag: p.meta.etag.clone(),
                        last_modified: p.meta.last_modified,
                    }),
                })
            })
            .collect()
    }

    /// Starts the uploader: a dispatcher that hands eligible versions to upload tasks.
    pub(crate) fn start_uploader(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let wake = self.journal.wake.clone();
        tokio::spawn(async move {
            loop {
                let Some(cache) = weak.upgrade() else { return };
                let notified = wake.notified();
                let work = cache.next_uploads();
                for (seq, skip) in work {
                    let c = cache.clone();
                    tokio::spawn(async move {
                        if skip {
                            c.release(seq, "skipped", None).await;
                        } else {
                            c.upload(seq).await;
                        }
                    });
                }
                {
                    let st = lock(&cache.journal.state);
                    cache.journal.refresh_gauges(&st);
                }
                drop(cache);
                // Woken by commits and releases; the timeout refreshes the age gauge.
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
        });
    }

    /// Picks the versions that may go now, marking them in flight. `true`: skip it (a newer
    /// version of its key in the same stage replaces it).
    fn next_uploads(&self) -> Vec<(u64, bool)> {
        let mut st = lock(&self.journal.state);
        let limit = self.journal.cfg.upload_concurrency.max(1);
        let min_stage = st
            .versions
            .values()
            .find(|v| v.mode != WriteMode::WriteThrough)
            .map(|v| v.stage);
        let mut picked = Vec::new();
        let mut slots = limit.saturating_sub(st.in_flight.len());
        for (&seq, v) in &st.versions {
            if slots == 0 {
                break;
            }
            let in_stage = v.mode == WriteMode::WriteThrough || min_stage.is_none_or(|m| v.stage <= m);
            if !in_stage {
                if st.write_through == 0 {
                    break;
                }
                continue;
            }
            if st.in_flight.contains(&seq) || st.failed.contains_key(&seq) || st.busy_keys.contains(&v.okey) {
                continue;
            }
            let Some(seqs) = st.keys.get(&v.okey) else { continue };
            if seqs.first() != Some(&seq) {
                continue; // an older version of the key goes first
            }
            let replaced_in_stage = v.mode != WriteMode::WriteThrough
                && seqs
                    .range(seq + 1..)
                    .next()
                    .and_then(|n| st.versions.get(n))
                    .is_some_and(|n| n.stage == v.stage);
            picked.push((seq, replaced_in_stage, v.okey.clone()));
            slots -= 1;
        }
        picked
            .into_iter()
            .map(|(seq, skip, okey)| {
                st.in_flight.insert(seq);
                st.busy_keys.insert(okey);
                (seq, skip)
            })
            .collect()
    }

    /// Uploads version `seq`, retrying transient faults for as long as it takes.
    async fn upload(self: &Arc<Self>, seq: u64) {
        let Some(v) = lock(&self.journal.state).versions.get(&seq).cloned() else {
            return;
        };
        let mut attempt = 0u32;
        loop {
            let result = match &v.put {
                None => self.upload_origin.delete_object(&v.bucket, &v.key).await.map(|()| None),
                Some(put) => match &put.parts {
                    None => {
                        let input = self.upload_input(&v, put, seq);
                        self.upload_origin.put_object(&v.bucket, &v.key, &input).await.map(Some)
                    }
                    Some(parts) => self.upload_parts(&v, put, parts, seq).await.map(Some),
                },
            };
            let result = match result {
                Err(OriginError::NoSuchKey) if v.put.is_none() => Ok(None),
                other => other,
            };
            match result {
                Ok(out) => {
                    if let (Some(out), Some(put)) = (&out, &v.put)
                        && !crate::origin::same_etag(&out.etag, &put.meta.etag)
                        && !out.etag.is_empty()
                    {
                        tracing::warn!(
                            key = v.key,
                            seq,
                            acked = put.meta.etag,
                            origin = out.etag,
                            "the origin gave another ETag than the one acknowledged"
                        );
                    }
                    self.journal.stats.uploaded_bytes.inc_by(v.size());
                    lock(&self.journal.state).origin_fault = None;
                    let stored = match (&out, &v.put) {
                        (Some(out), Some(put)) => self.origin_copy(&v, put, &out.etag, seq).await,
                        _ => None,
                    };
                    self.release(seq, "ok", stored).await;
                    return;
                }
                Err(e) if is_permanent(&e) => {
                    tracing::error!(
                        bucket = v.bucket,
                        key = v.key,
                        seq,
                        error = %e,
                        "the origin refused an upload for good; the version is kept (perch status)"
                    );
                    self.journal
                        .stats
                        .uploads
                        .get_or_create(&UploadLabel { result: "failed" })
                        .inc();
                    {
                        let mut st = lock(&self.journal.state);
                        st.failed.insert(seq, e.to_string());
                        st.in_flight.remove(&seq);
                        st.busy_keys.remove(&v.okey);
                        self.journal.refresh_gauges(&st);
                    }
                    self.journal.bump();
                    return;
                }
                Err(e) => {
                    attempt += 1;
                    self.journal
                        .stats
                        .uploads
                        .get_or_create(&UploadLabel { result: "retried" })
                        .inc();
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(key = v.key, seq, attempt, error = %e, "upload failed; retrying");
                    }
                    lock(&self.journal.state).origin_fault = Some((SystemTime::now(), e.to_string()));
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    /// Uploads a multipart version as a multipart upload with the same part layout: each part is
    /// cut from the blob into a temp file and sent with its checksums. A failure abandons the
    /// origin's upload (aborted, best effort) and the whole version is tried again.
    async fn upload_parts(
        &self,
        v: &Version,
        put: &RecordPut,
        parts: &[PartLayout],
        seq: u64,
    ) -> Result<crate::origin::PutOutput, OriginError> {
        let checksum = multipart_checksum(&put.meta.checksums);
        let origin = &self.upload_origin;
        let id = origin
            .create_multipart_upload(&v.bucket, &v.key, &put.meta.headers, checksum)
            .await?;
        let result = async {
            let mut done = Vec::with_capacity(parts.len());
            let mut offset = 0u64;
            for (i, part) in parts.iter().enumerate() {
                let number = i as i32 + 1;
                let temp = self.blobs.temp_path();
                let _guard = crate::read::TempGuard(temp.clone());
                let (blob, t, len) = (self.blobs.path(seq), temp.clone(), part.size);
                tokio::task::spawn_blocking(move || copy_range(&blob, &t, offset, len))
                    .await
                    .map_err(|e| OriginError::Io(std::io::Error::other(e)))??;
                let body = PutBody::File { path: temp, len };
                let out = origin
                    .upload_part(&v.bucket, &v.key, &id, number, &body, &part.checksums)
                    .await?;
                done.push(crate::origin::CompletedPart {
                    part_number: number,
                    etag: out.etag,
                    checksums: part.checksums.clone(),
                });
                offset += part.size;
            }
            origin.complete_multipart_upload(&v.bucket, &v.key, &id, &done).await
        }
        .await;
        if result.is_err() {
            let _ = origin.abort_multipart_upload(&v.bucket, &v.key, &id).await;
        }
        result
    }

    fn upload_input(&self, v: &Version, put: &RecordPut, seq: u64) -> PutInput {
        let mut headers = put.meta.headers.clone();
        let mut extra = Vec::new();
        for h in self
            .journal
            .cfg
            .upload_headers
            .iter()
            .filter(|h| h.glob.matches(&v.key))
        {
            let value = Some(h.value.clone());
            match h.name.as_str() {
                "cache-control" => headers.cache_control = value,
                "content-type" => headers.content_type = value,
                "content-encoding" => headers.content_encoding = value,
                "content-disposition" => headers.content_disposition = value,
                "content-language" => headers.content_language = value,
                "expires" => headers.expires = value,
                name => match name.strip_prefix("x-amz-meta-") {
                    Some(m) => {
                        headers.metadata.insert(m.to_owned(), h.value.clone());
                    }
                    None => extra.push((h.name.clone(), h.value.clone())),
                },
            }
        }
        PutInput {
            headers,
            checksums: put.meta.checksums.clone(),
            body: PutBody::File {
                path: self.blobs.path(seq),
                len: put.meta.size,
            },
            if_match: None,
            if_none_match: None,
            extra_headers: extra,
        }
    }

    /// Version `seq` is in the origin (or replaced inside its stage): out of the journal; its blob
    /// stays as the clean cache entry if it is still the newest of its key, else goes.
    async fn release(self: &Arc<Self>, seq: u64, result: &'static str, stored: Option<OriginCopy>) {
        let cache = self.clone();
        let released = tokio::task::spawn_blocking(move || cache.release_blocking(seq, stored)).await;
        match released {
            Ok(Ok(())) => {
                self.journal.stats.uploads.get_or_create(&UploadLabel { result }).inc();
            }
            Ok(Err(e)) => {
                // The version stays in the journal; the next start uploads it again (idempotent).
                tracing::error!(seq, error = %e, "cannot record an upload in the journal");
                let mut st = lock(&self.journal.state);
                st.failed.insert(seq, format!("cannot record the upload locally: {e}"));
                st.in_flight.remove(&seq);
                if let Some(v) = st.versions.get(&seq) {
                    let okey = v.okey.clone();
                    st.busy_keys.remove(&okey);
                }
            }
            Err(e) => tracing::error!(seq, error = %e, "release task failed"),
        }
        self.journal.bump();
    }

    /// The origin's ETag and Last-Modified of the copy an upload just stored, for the version that
    /// stays as the clean cache entry of its key (a HEAD; `None` when the version is no longer the
    /// newest, or the origin does not answer in time or holds another object by now).
    async fn origin_copy(&self, v: &Version, put: &RecordPut, put_etag: &str, seq: u64) -> Option<OriginCopy> {
        let newest = lock(&self.journal.state)
            .keys
            .get(&v.okey)
            .is_some_and(|seqs| seqs.last() == Some(&seq));
        if !newest {
            return None;
        }
        let unconditional = crate::origin::Conditions::default();
        let head = self.upload_origin.head_object(&v.bucket, &v.key, &unconditional);
        let meta = match tokio::time::timeout(Duration::from_secs(5), head).await {
            Ok(Ok(meta)) => meta,
            _ => return None,
        };
        let expected = if put_etag.is_empty() {
            put.meta.etag.as_str()
        } else {
            put_etag
        };
        let ours = crate::origin::same_etag(&meta.etag, expected) && meta.size == put.meta.size;
        ours.then_some(OriginCopy {
            etag: meta.etag,
            last_modified: meta.last_modified,
        })
    }

    fn release_blocking(&self, seq: u64, stored: Option<OriginCopy>) -> Result<(), CacheError> {
        let Some(v) = lock(&self.journal.state).versions.get(&seq).cloned() else {
            return Ok(());
        };
        let _key = self.key_lock(&v.okey);
        let current = self.index.get(&v.okey)?.filter(|e| e.blob == seq && e.pending);
        let clean = current.map(|mut e| {
            e.pending = false;
            e.validated = SystemTime::now();
            if let Some(copy) = stored {
                e.meta.last_modified = copy.last_modified;
                if !crate::origin::same_etag(&copy.etag, &e.meta.etag) {
                    e.origin_etag = Some(copy.etag);
                }
            }
            e
        });
        let forget_blob = v.put.is_some() && clean.is_none();
        if !forget_blob {
            self.unsynced_release.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.index.release_version(seq, &v.okey, clean.as_ref(), forget_blob)?;
        if forget_blob {
            self.blobs.remove(seq);
        }
        {
            let mut st = lock(&self.journal.state);
            if let Some(v) = st.versions.remove(&seq) {
                st.dirty_bytes = st.dirty_bytes.saturating_sub(v.size());
                if v.mode == WriteMode::WriteThrough {
                    st.write_through = st.write_through.saturating_sub(1);
                }
            }
            if let Some(seqs) = st.keys.get_mut(&v.okey) {
                seqs.remove(&seq);
                if seqs.is_empty() {
                    st.keys.remove(&v.okey);
                }
            }
            st.in_flight.remove(&seq);
            st.busy_keys.remove(&v.okey);
            st.failed.remove(&seq);
            self.journal.refresh_gauges(&st);
        }
        if let Some(e) = clean {
            // Now an ordinary cache entry: the evictor may take it from here.
            self.hot.invalidate(&v.okey);
            let evicted = lock(&self.evictor).insert(seq, key_hash(&v.okey), e.meta.size);
            self.drop_evicted(evicted);
            self.fit_memory();
        }
        Ok(())
    }
}

/// The multipart checksum of an object from its checksums: the algorithm that has a value, as
/// COMPOSITE (`…-N`) or FULL_OBJECT.
fn multipart_checksum(c: &crate::origin::Checksums) -> Option<crate::origin::MultipartChecksum> {
    let (algorithm, _) = c.iter().next()?;
    Some(crate::origin::MultipartChecksum {
        algorithm,
        checksum_type: c.checksum_type()?,
    })
}

/// Copies `len` bytes at `offset` of `from` into a new file `to`.
fn copy_range(from: &std::path::Path, to: &std::path::Path, offset: u64, len: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut src = std::fs::File::open(from)?;
    src.seek(SeekFrom::Start(offset))?;
    let mut dst = std::fs::File::create(to)?;
    let copied = std::io::copy(&mut src.take(len), &mut dst)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "blob shorter than its parts",
        ));
    }
    Ok(())
}

/// What the origin holds of an uploaded version.
struct OriginCopy {
    etag: String,
    last_modified: SystemTime,
}

enum EpochGuard<'a> {
    Shared(std::sync::RwLockReadGuard<'a, u64>),
    Exclusive(std::sync::RwLockWriteGuard<'a, u64>),
}

impl EpochGuard<'_> {
    fn get(&self) -> u64 {
        match self {
            EpochGuard::Shared(g) => **g,
            EpochGuard::Exclusive(g) => **g,
        }
    }

    fn advance(&mut self) {
        if let EpochGuard::Exclusive(g) = self {
            **g += 1;
        }
    }
}

fn poisoned() -> WriteError {
    WriteError::Local(CacheError::Index("epoch lock poisoned".into()))
}

/// Exponential backoff with full jitter: up to 100 ms × 2^attempt, at most 30 s.
fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(9))
        .min(Duration::from_secs(30));
    let jitter: f64 = rand::random::<f64>();
    cap.mul_f64(0.5 + jitter / 2.0)
}
