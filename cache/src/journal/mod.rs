//! `Journal`: every acknowledged write is a version (a sequence number, an immutable blob, a
//! journal record) committed durably before the answer, and released once the origin has it.
//!
//! Life of a version (docs/write-back.md): the body is written to a temp file and fsynced, renamed
//! to the blob named by its sequence number, the directory is fsynced, then the journal record and
//! the index entry (the blob, or a tombstone for a delete) are written in one synced RocksDB batch;
//! only then is the client answered. Versions are cut into epochs by barriers; the `Uploader` sends
//! them in the order `state` allows. A released version leaves the journal and stays as a clean
//! cache entry if it is still the newest of its key.

pub(crate) mod offline;
pub(crate) mod record;
pub(crate) mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use perch_policy::{Method, SharedPolicy, WriteMode};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::error::{CacheError, StoreError, StoreResult};
use crate::journal::record::{PartLayout, Record, RecordPut};
use crate::journal::state::{Pick, Slots, State, Version};
use crate::key::ObjectKey;
use crate::local::index::{Entry, Released};
use crate::local::{Evicted, Local, TempGuard, lock};
use crate::metrics::{UploadLabel, WriteStats};
use crate::origin::{ListEntry, ObjectMeta};

/// Settings of the write path: modes, limits, and the uploader's.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// The policy: each key's write mode, and the headers and priority of its uploads.
    pub policy: Arc<SharedPolicy>,
    /// The bucket's lease (a primary's): no write is acknowledged or uploaded without it.
    pub lease: Option<Arc<crate::lease::Lease>>,
    /// A barrier's acknowledgement waits for the origin too (`--strict-barriers`).
    pub strict_barriers: bool,
    /// The longest a request waits for the origin to confirm writes (`--origin-retry-deadline`).
    pub wait_limit: Duration,
    /// Ordered uploads in flight at once (`--upload-concurrency`, 16).
    pub upload_concurrency: usize,
    /// Write-through uploads in flight at once, beside the ordered ones.
    pub write_through_concurrency: usize,
    /// Past this many unuploaded bytes, a write waits for room (`--dirty-bytes-max`).
    pub dirty_bytes_max: u64,
    /// The longest a write waits for room before it is refused (`--dirty-wait-max`, 30 min).
    pub dirty_wait_max: Duration,
    /// Upload lag past which Perch reports itself unhealthy (`--dirty-age-max`, 60 s).
    pub dirty_age_max: Duration,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            policy: Arc::new(SharedPolicy::default()),
            lease: None,
            strict_barriers: false,
            wait_limit: Duration::from_secs(300),
            upload_concurrency: 16,
            write_through_concurrency: 4,
            dirty_bytes_max: 10 << 30,
            dirty_wait_max: Duration::from_secs(1800),
            dirty_age_max: Duration::from_secs(60),
        }
    }
}

/// Where a new version's body is: a verified spool file, already fsynced (renamed into place), or
/// memory.
pub(crate) enum NewBody {
    File(PathBuf),
    Bytes(Bytes),
}

/// A PUT version to commit: its verified body, its object metadata (ETag, headers, checksums),
/// the CRC32 of each block, and its part layout when it is a completed multipart upload.
pub(crate) struct NewVersion {
    pub body: NewBody,
    pub meta: ObjectMeta,
    pub crcs: Vec<u32>,
    pub parts: Option<Vec<PartLayout>>,
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
pub(crate) struct DirtyKey {
    pub key: String,
    /// `None`: the newest version is a delete.
    pub object: Option<ListEntry>,
}

/// Test-only crash points between the steps of a commit: `PERCH_FAIL_POINT=<name>` aborts the
/// process there (see docs/write-back.md). Read once.
pub(crate) fn fail_point(name: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let point = POINT.get_or_init(|| std::env::var("PERCH_FAIL_POINT").ok().filter(|v| !v.is_empty()));
    if point.as_deref() == Some(name) {
        eprintln!("perch: fail point {name} reached; aborting");
        std::process::abort();
    }
}

/// Per-key gates between commits and the requests the origin decides: commits of a key pass
/// shared, a conditional PUT or an origin-side copy holds its keys' gates exclusively from before
/// it waits for them to be clean until the origin has answered, so that no write of those keys
/// is acknowledged in between (it would be judged against, or overwritten by, a stale origin).
#[derive(Default)]
struct Gates {
    map: Mutex<HashMap<ObjectKey, Arc<tokio::sync::RwLock<()>>>>,
}

/// A held gate (or several); dropping it opens them.
pub(crate) struct Held {
    _guards: Vec<tokio::sync::OwnedRwLockWriteGuard<()>>,
}

/// A commit's pass through its key's gate.
struct Passing {
    _guard: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl Gates {
    fn gate(&self, okey: &ObjectKey) -> Arc<tokio::sync::RwLock<()>> {
        let mut map = lock(&self.map);
        // Gates nobody holds or waits on go, so the map stays as small as what is in flight.
        if map.len() > 64 {
            map.retain(|_, g| Arc::strong_count(g) > 1);
        }
        map.entry(okey.clone()).or_default().clone()
    }

    async fn pass(&self, okey: &ObjectKey) -> Passing {
        Passing {
            _guard: self.gate(okey).read_owned().await,
        }
    }

    async fn hold(&self, keys: &[&ObjectKey]) -> Held {
        let mut keys: Vec<&ObjectKey> = keys.to_vec();
        keys.sort();
        keys.dedup();
        let mut guards = Vec::with_capacity(keys.len());
        for k in keys {
            guards.push(self.gate(k).write_owned().await);
        }
        Held { _guards: guards }
    }
}

/// Writes waiting for room under `--dirty-bytes-max`, served in arrival order: a large write is
/// never starved by smaller ones, and a write never commits after a later write of its key.
#[derive(Default)]
struct Room {
    next: u64,
    waiting: std::collections::BTreeSet<u64>,
}

/// A write's place in the room queue; it leaves the queue when dropped (committed, or its client
/// went away and the request was dropped: then it is never committed).
pub(crate) struct Admitted<'a> {
    journal: &'a Journal,
    ticket: Option<u64>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket {
            lock(&self.journal.room).waiting.remove(&t);
            self.journal.released.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

pub(crate) struct Journal {
    pub(crate) cfg: WriteConfig,
    pub(crate) local: Arc<Local>,
    gates: Gates,
    room: Mutex<Room>,
    state: Mutex<State>,
    /// The current epoch. Ordinary commits hold it shared, a barrier exclusively, so a version
    /// committed after a barrier was acknowledged always belongs to a later epoch.
    epoch: RwLock<u64>,
    /// Wakes the uploader's dispatcher.
    pub(crate) wake: Arc<Notify>,
    /// Bumped whenever a version is released or fails: writers waiting for room, for a key to
    /// be clean or for a confirmation look again.
    released: watch::Sender<u64>,
    pub(crate) stats: WriteStats,
}

enum EpochGuard<'a> {
    Shared(RwLockReadGuard<'a, u64>),
    Exclusive(RwLockWriteGuard<'a, u64>),
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

impl Journal {
    /// The journal over `local`, its state rebuilt from the records on disk. A record whose blob
    /// is missing or short is an error: Perch refuses to start rather than skip an acknowledged
    /// write.
    pub(crate) fn open(
        cfg: WriteConfig,
        local: Arc<Local>,
        registry: Option<&mut prometheus_client::registry::Registry>,
    ) -> Result<Journal, CacheError> {
        let stats = WriteStats::default();
        if let Some(r) = registry {
            stats.register(r);
        }
        let journal = Journal {
            cfg,
            local,
            state: Mutex::new(State::default()),
            gates: Gates::default(),
            room: Mutex::new(Room::default()),
            epoch: RwLock::new(0),
            wake: Arc::new(Notify::new()),
            released: watch::channel(0).0,
            stats,
        };
        let replayed = journal.replay()?;
        if replayed > 0 {
            tracing::info!(versions = replayed, "journal replayed; uploads resume");
        }
        Ok(journal)
    }

    fn replay(&self) -> Result<usize, CacheError> {
        let records = self.local.index.journal()?;
        let mut st = lock(&self.state);
        let mut max_stage = 0;
        for (seq, raw) in records {
            let record: Record = serde_json::from_slice(&raw)?;
            if let Some(put) = &record.put {
                let path = self.local.blobs.path(seq);
                let len = std::fs::metadata(&path).map(|m| m.len()).ok();
                if len != Some(put.meta.size) {
                    return Err(CacheError::MissingBlob {
                        seq,
                        object: format!("{}/{}", record.bucket, record.key),
                        path: path.display().to_string(),
                        size: put.meta.size,
                        found: len.map_or("missing".to_owned(), |l| format!("{l} bytes long")),
                    });
                }
            }
            let okey = ObjectKey::new(&record.bucket, &record.key);
            max_stage = max_stage.max(record.stage);
            st.add(
                seq,
                Version {
                    priority: self.cfg.policy.decide(okey.bucket(), okey.key(), Method::Put).upload_priority,
                    okey,
                    mode: record.mode(),
                    put: record.put,
                    stage: record.stage,
                    acked: record.acked,
                },
            );
        }
        // A data dir written before deletes had tombstones: the newest pending delete of a key
        // gets its tombstone now, so that reads answer 404 at once.
        for (okey, seqs) in &st.keys {
            if let Some(seq) = seqs.last()
                && let Some(v) = st.versions.get(seq)
                && v.put.is_none()
                && self.local.index.get(okey)?.is_none_or(|e| e.blob != *seq)
            {
                self.local.index.put_synced(okey, &Entry::tombstone(*seq, v.acked))?;
            }
        }
        let count = st.versions.len();
        self.refresh_gauges(&st);
        drop(st);
        // A barrier closed epoch `stage / 2`: new versions belong to the next one.
        if let Ok(mut e) = self.epoch.write() {
            *e = max_stage / 2 + max_stage % 2;
        }
        Ok(count)
    }

    fn bump(&self) {
        self.released.send_modify(|n| *n = n.wrapping_add(1));
        self.wake.notify_one();
    }

    /// Called under the state lock after every change of the versions.
    fn refresh_gauges(&self, st: &State) {
        self.stats.dirty_objects.set(st.versions.len() as i64);
        self.stats.dirty_bytes.set(st.dirty_bytes as i64);
        self.stats.failed.set(st.failed.len() as i64);
        self.stats.dirty_age.set(st.oldest_age().as_secs() as i64);
    }

    /// Refreshes the backlog gauges (the age moves with time alone).
    pub(crate) fn refresh(&self) {
        let st = lock(&self.state);
        self.refresh_gauges(&st);
    }

    /// The write mode of a PUT or DELETE of `okey`.
    pub(crate) fn mode(&self, method: Method, okey: &ObjectKey) -> WriteMode {
        self.cfg.policy.decide(okey.bucket(), okey.key(), method).write
    }

    /// Commits a PUT version of `okey` (its body already verified) and returns its sequence
    /// number once it is durable: blob fsynced, renamed, directory fsynced, batch synced. Waits
    /// for room first when more than `--dirty-bytes-max` is waiting for upload.
    pub(crate) async fn commit_put(
        self: &Arc<Self>,
        okey: &ObjectKey,
        version: NewVersion,
        mode: WriteMode,
    ) -> StoreResult<u64> {
        let NewVersion {
            body,
            meta,
            crcs,
            parts,
        } = version;
        let _admitted = self.wait_for_room(meta.size).await?;
        let _pass = self.gates.pass(okey).await;
        let journal = self.clone();
        let okey = okey.clone();
        let put = RecordPut { meta, crcs, parts };
        tokio::task::spawn_blocking(move || journal.commit_blocking(&okey, Some((body, put)), mode))
            .await
            .map_err(|e| StoreError::from(std::io::Error::other(e)))?
    }

    /// Holds back the commits of `keys` (see `Gates`) until the returned value is dropped.
    pub(crate) async fn hold_commits(&self, keys: &[&ObjectKey]) -> Held {
        self.gates.hold(keys).await
    }

    /// Commits a DELETE version of `okey`.
    pub(crate) async fn commit_delete(self: &Arc<Self>, okey: &ObjectKey, mode: WriteMode) -> StoreResult<u64> {
        let _pass = self.gates.pass(okey).await;
        let journal = self.clone();
        let okey = okey.clone();
        tokio::task::spawn_blocking(move || journal.commit_blocking(&okey, None, mode))
            .await
            .map_err(|e| StoreError::from(std::io::Error::other(e)))?
    }

    /// Waits until a write of `size` bytes fits under `--dirty-bytes-max` (one larger than the
    /// whole limit still goes, alone), behind the writes that came before it; up to
    /// `--dirty-wait-max`. Keep the answer until the commit is done.
    async fn wait_for_room(&self, size: u64) -> StoreResult<Admitted<'_>> {
        let fits = |st: &State| st.dirty_bytes == 0 || st.dirty_bytes + size <= self.cfg.dirty_bytes_max;
        let ticket = {
            let mut room = lock(&self.room);
            if room.waiting.is_empty() && fits(&lock(&self.state)) {
                return Ok(Admitted {
                    journal: self,
                    ticket: None,
                });
            }
            room.next += 1;
            let t = room.next;
            room.waiting.insert(t);
            t
        };
        let admitted = Admitted {
            journal: self,
            ticket: Some(ticket),
        };
        let mut rx = self.released.subscribe();
        let deadline = Instant::now() + self.cfg.dirty_wait_max;
        let mut logged = false;
        loop {
            {
                let first = lock(&self.room).waiting.first().copied();
                let st = lock(&self.state);
                if first == Some(ticket) && fits(&st) {
                    return Ok(admitted);
                }
                if !logged {
                    tracing::warn!(
                        dirty_bytes = st.dirty_bytes,
                        limit = self.cfg.dirty_bytes_max,
                        "--dirty-bytes-max reached: writes wait for uploads, in arrival order"
                    );
                    logged = true;
                }
            }
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(StoreError::NoRoom(self.cfg.dirty_wait_max)),
            }
        }
    }

    fn commit_blocking(
        &self,
        okey: &ObjectKey,
        put: Option<(NewBody, RecordPut)>,
        mode: WriteMode,
    ) -> StoreResult<u64> {
        // 1. The body, durable under a temp name.
        let (temp, put) = match put {
            Some((body, put)) => (Some(self.durable_temp(body)?), Some(put)),
            None => (None, None),
        };
        let _temp_guard = temp.clone().map(TempGuard);
        // Same-key commits are serialized (their order is their sequence order); commits after a
        // barrier wait until it is committed.
        let _key = self.local.key_lock(okey);
        let poisoned = || StoreError::Local(CacheError::Corrupt("epoch lock poisoned".into()));
        let mut epoch = match mode {
            WriteMode::Barrier => EpochGuard::Exclusive(self.epoch.write().map_err(|_| poisoned())?),
            _ => EpochGuard::Shared(self.epoch.read().map_err(|_| poisoned())?),
        };
        let seq = self.local.index.next_blob_id()?;
        // 2. Renamed to its sequence number, and the name made durable.
        if let Some(temp) = &temp {
            self.local.blobs.commit(temp, seq)?;
            fail_point("blob_renamed");
            self.local.blobs.sync_dir(seq)?;
            fail_point("dir_synced");
        }
        let stage = epoch.get() * 2 + u64::from(mode == WriteMode::Barrier);
        let acked = SystemTime::now();
        let record = Record {
            bucket: okey.bucket().to_owned(),
            key: okey.key().to_owned(),
            put,
            mode: mode.as_str().to_owned(),
            stage,
            acked,
        };
        let raw = serde_json::to_vec(&record).map_err(CacheError::from)?;
        let previous = self.local.index.get(okey)?;
        // The clean copy this version replaces goes; a pending one stays until it is uploaded.
        let replaced_clean = previous.filter(|p| !p.pending && p.blob != seq).map(|p| p.blob);
        let entry = match &record.put {
            Some(p) => Entry {
                blob: seq,
                meta: p.meta.clone(),
                crcs: p.crcs.clone(),
                validated: acked,
                pending: true,
                origin_etag: None,
                deleted: false,
            },
            None => Entry::tombstone(seq, acked),
        };
        // 3. Journal record and index entry: one synced batch.
        self.local
            .index
            .commit_version(okey, seq, &raw, &entry, replaced_clean)?;
        fail_point("batch_committed");
        if mode == WriteMode::Barrier {
            epoch.advance();
        }
        drop(epoch);
        {
            let mut st = lock(&self.state);
            st.add(
                seq,
                Version {
                    okey: okey.clone(),
                    put: record.put,
                    mode,
                    stage,
                    acked,
                    priority: self.cfg.policy.decide(okey.bucket(), okey.key(), Method::Put).upload_priority,
                },
            );
            self.refresh_gauges(&st);
        }
        // Reads see this version from now on: no memory copy, no fill of an older body.
        self.local.forget_copies(okey);
        if let Some(old) = replaced_clean {
            self.local.remove_blob(old);
        }
        self.wake.notify_one();
        Ok(seq)
    }

    /// Writes (or moves) a body into a temp file of the blob directory and fsyncs it.
    fn durable_temp(&self, body: NewBody) -> StoreResult<PathBuf> {
        let temp = self.local.blobs.temp_path();
        match body {
            NewBody::Bytes(b) => {
                let guard = TempGuard(temp.clone());
                let mut f = std::fs::File::create(&temp)?;
                std::io::Write::write_all(&mut f, &b)?;
                fail_point("blob_written");
                crate::durable::sync_file(&f)?;
                std::mem::forget(guard);
            }
            NewBody::File(spooled) => {
                // The spool is under the same data dir and already fsynced: a rename. Across
                // filesystems, a copy, synced here.
                if std::fs::rename(&spooled, &temp).is_err() {
                    std::fs::copy(&spooled, &temp)?;
                    crate::durable::sync_file(&std::fs::File::open(&temp)?)?;
                }
                fail_point("blob_written");
            }
        }
        fail_point("blob_synced");
        Ok(temp)
    }

    /// Waits until version `seq` is in the origin (write-through, strict barriers), up to `limit`.
    pub(crate) async fn wait_confirmed(&self, seq: u64, limit: Duration) -> StoreResult<()> {
        self.wait_until(limit, |st| {
            if let Some(error) = st.failed.get(&seq) {
                return Some(Err(StoreError::Refused {
                    seq,
                    error: error.clone(),
                }));
            }
            (!st.versions.contains_key(&seq)).then_some(Ok(()))
        })
        .await
    }

    /// Waits until `okey` has no unconfirmed version (before a conditional request or a copy goes
    /// to the origin), up to `limit`.
    pub(crate) async fn wait_clean(&self, okey: &ObjectKey, limit: Duration) -> StoreResult<()> {
        self.wait_until(limit, |st| match st.keys.get(okey) {
            None => Some(Ok(())),
            Some(seqs) => seqs.iter().find_map(|seq| {
                st.failed.get(seq).map(|error| {
                    Err(StoreError::Refused {
                        seq: *seq,
                        error: error.clone(),
                    })
                })
            }),
        })
        .await
    }

    /// Waits until no key of `bucket` has an unconfirmed version (before DeleteBucket), up to `limit`.
    pub(crate) async fn wait_bucket_clean(&self, bucket: &str, limit: Duration) -> StoreResult<()> {
        let start = ObjectKey::prefix(bucket, "");
        self.wait_until(limit, |st| (!st.any_under(&start)).then_some(Ok(())))
            .await
    }

    async fn wait_until<F>(&self, limit: Duration, mut done: F) -> StoreResult<()>
    where
        F: FnMut(&State) -> Option<StoreResult<()>>,
    {
        let mut rx = self.released.subscribe();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(r) = done(&lock(&self.state)) {
                return r;
            }
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(StoreError::Timeout(limit)),
            }
        }
    }

    /// Whether `okey` has versions not yet in the origin.
    pub(crate) fn has_pending(&self, okey: &ObjectKey) -> bool {
        lock(&self.state).keys.contains_key(okey)
    }

    /// The backlog; `upto`: also count the versions at or below that sequence number.
    pub(crate) fn status(&self, upto: Option<u64>) -> WriteStatus {
        let st = lock(&self.state);
        let age = st.oldest_age();
        WriteStatus {
            dirty_objects: st.versions.len() as u64,
            dirty_bytes: st.dirty_bytes,
            oldest_age_seconds: age.as_secs_f64(),
            last_seq: st.last_seq,
            in_flight: st.in_flight() as u64,
            pending_upto: upto.map(|u| st.versions.range(..=u).count() as u64),
            failed: st
                .failed
                .iter()
                .filter_map(|(seq, error)| {
                    st.versions.get(seq).map(|v| FailedVersion {
                        seq: *seq,
                        bucket: v.okey.bucket().to_owned(),
                        key: v.okey.key().to_owned(),
                        error: error.clone(),
                    })
                })
                .collect(),
            origin_fault: st.origin_fault.as_ref().map(|(_, e)| e.clone()),
            healthy: age <= self.cfg.dirty_age_max && st.failed.is_empty(),
        }
    }

    /// The newest unconfirmed version of every key of `bucket` that starts with `prefix`, in key
    /// order, for merging into the origin's listing.
    pub(crate) fn dirty_keys(&self, bucket: &str, prefix: &str) -> Vec<DirtyKey> {
        let start = ObjectKey::prefix(bucket, prefix);
        let st = lock(&self.state);
        st.keys
            .range(start.clone()..)
            .take_while(|(okey, _)| okey.starts_with(&start))
            .filter_map(|(_, seqs)| {
                let v = st.versions.get(seqs.last()?)?;
                let key = v.okey.key().to_owned();
                Some(DirtyKey {
                    object: v.put.as_ref().map(|p| ListEntry {
                        key: key.clone(),
                        size: p.meta.size,
                        etag: p.meta.etag.clone(),
                        last_modified: p.meta.last_modified,
                    }),
                    key,
                })
            })
            .collect()
    }

    /// Hands out the versions the uploader may start now.
    pub(crate) fn next_uploads(&self) -> Vec<Pick> {
        let mut st = lock(&self.state);
        let picked = st.next_uploads(Slots {
            ordered: self.cfg.upload_concurrency,
            write_through: self.cfg.write_through_concurrency,
        });
        self.refresh_gauges(&st);
        picked
    }

    /// Version `seq`, if still unconfirmed.
    pub(crate) fn version(&self, seq: u64) -> Option<Version> {
        lock(&self.state).versions.get(&seq).cloned()
    }

    /// Whether `seq` is the newest unconfirmed version of `okey`.
    pub(crate) fn is_newest(&self, okey: &ObjectKey, seq: u64) -> bool {
        lock(&self.state).newest(okey).is_some_and(|(s, _)| s == seq)
    }

    /// The uploader met a transient origin fault (`None`: it passed).
    pub(crate) fn note_origin_fault(&self, fault: Option<String>) {
        lock(&self.state).origin_fault = fault.map(|f| (SystemTime::now(), f));
    }

    /// The origin refused `seq` for good: it is kept (and still served), shown by `perch status`,
    /// and blocks the later stages (the order cannot be kept without it).
    pub(crate) fn refuse(&self, seq: u64, error: String) {
        self.stats
            .uploads
            .get_or_create(&UploadLabel { result: "failed" })
            .inc();
        {
            let mut st = lock(&self.state);
            st.fail(seq, error);
            self.refresh_gauges(&st);
        }
        self.bump();
    }

    /// Version `seq` is in the origin (or replaced inside its stage): out of the journal; its blob
    /// stays as the clean cache entry if it is still the newest of its key, else goes. `stored`:
    /// what the origin holds of it (ETag, Last-Modified), when known.
    pub(crate) fn release(&self, seq: u64, result: &'static str, stored: Option<OriginCopy>) {
        match self.release_blocking(seq, stored) {
            Ok(()) => {
                self.stats.uploads.get_or_create(&UploadLabel { result }).inc();
            }
            Err(e) => {
                // The version stays in the journal; the next start uploads it again (idempotent).
                tracing::error!(seq, error = %e, "cannot record an upload in the journal");
                let mut st = lock(&self.state);
                st.fail(seq, format!("cannot record the upload locally: {e}"));
                self.refresh_gauges(&st);
            }
        }
        self.bump();
    }

    /// Version `seq` is replaced inside its stage: it and the versions of its key that the same
    /// stage replaces too go at once, in one synced batch (not one sync each).
    pub(crate) fn release_skipped(&self, seq: u64) {
        let (okey, run) = {
            let st = lock(&self.state);
            let Some(v) = st.versions.get(&seq) else { return };
            let run: Vec<(u64, bool)> = st
                .skippable_run(seq)
                .into_iter()
                .filter_map(|s| st.versions.get(&s).map(|v| (s, v.put.is_some())))
                .collect();
            (v.okey.clone(), run)
        };
        let released = {
            let _key = self.local.key_lock(&okey);
            self.local.index.release_superseded(&run).map(|()| {
                let mut st = lock(&self.state);
                for (s, _) in &run {
                    st.remove(*s);
                }
                self.refresh_gauges(&st);
            })
        };
        match released {
            Ok(()) => {
                for (s, is_put) in &run {
                    if *is_put {
                        self.local.blobs.remove(*s);
                    }
                }
                self.stats
                    .uploads
                    .get_or_create(&UploadLabel { result: "skipped" })
                    .inc_by(run.len() as u64);
            }
            Err(e) => {
                tracing::error!(seq, error = %e, "cannot record skipped versions in the journal");
                let mut st = lock(&self.state);
                st.fail(seq, format!("cannot record the skip locally: {e}"));
                self.refresh_gauges(&st);
            }
        }
        self.bump();
    }

    fn release_blocking(&self, seq: u64, stored: Option<OriginCopy>) -> Result<(), CacheError> {
        let Some(v) = self.version(seq) else {
            return Ok(());
        };
        let evicted = {
            let _key = self.local.key_lock(&v.okey);
            self.release_locked(seq, &v, stored)?
        };
        self.local.drop_evicted(evicted);
        Ok(())
    }

    /// The release of `seq`, under its key's lock; returns what the evictor dropped to make room.
    fn release_locked(&self, seq: u64, v: &Version, stored: Option<OriginCopy>) -> Result<Evicted, CacheError> {
        let current = self.local.index.get(&v.okey)?.filter(|e| e.blob == seq && e.pending);
        let newest = current.is_some();
        let clean = current.filter(|e| !e.deleted).map(|mut e| {
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
        let after = match (&clean, newest) {
            (Some(e), _) => Released::Clean(e),
            (None, true) => Released::Gone,
            (None, false) => Released::Superseded {
                forget_blob: v.put.is_some(),
            },
        };
        // A release is synced only when its blob goes at once; otherwise a power cut that loses
        // it makes the next start upload the version again (the same bytes). The flag is raised
        // after the write it stands for, and before the blob can be evicted (`track` below), so
        // that any later unlink syncs the log first.
        let forget_blob = matches!(after, Released::Superseded { forget_blob: true });
        self.local.index.release_version(seq, &v.okey, &after, forget_blob)?;
        if forget_blob {
            self.local.blobs.remove(seq);
        } else {
            self.local.note_unsynced_release();
        }
        {
            let mut st = lock(&self.state);
            st.remove(seq);
            self.refresh_gauges(&st);
        }
        let mut evicted = Evicted::default();
        if let Some(e) = clean {
            // Now an ordinary cache entry: the evictor may take it from here.
            self.local.memory.invalidate(&v.okey);
            evicted = self.local.track(&v.okey, seq, e.meta.size);
        }
        Ok(evicted)
    }
}

impl crate::local::Pending for Journal {
    fn has_pending(&self, okey: &ObjectKey) -> bool {
        Journal::has_pending(self, okey)
    }
}

/// One version of the journal, as `perch journal list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub bucket: String,
    pub key: String,
    /// `put` or `delete`.
    pub kind: String,
    pub size: u64,
    pub mode: String,
    pub stage: u64,
    pub age_seconds: f64,
    /// Why the origin refused it, if it did.
    pub refused: Option<String>,
}

/// What an operator's journal request could not do.
#[derive(Debug, thiserror::Error)]
pub enum JournalOpError {
    #[error("version {0} is not in the journal")]
    NotFound(u64),
    #[error("version {0} is not refused by the origin: only refused versions are retried or dropped")]
    NotRefused(u64),
    #[error(transparent)]
    Local(#[from] CacheError),
}

impl Journal {
    /// The oldest `limit` versions not yet in the origin.
    pub(crate) fn list(&self, limit: usize) -> Vec<JournalEntry> {
        let st = lock(&self.state);
        st.versions
            .iter()
            .take(limit)
            .map(|(seq, v)| JournalEntry {
                seq: *seq,
                bucket: v.okey.bucket().to_owned(),
                key: v.okey.key().to_owned(),
                kind: if v.put.is_some() { "put" } else { "delete" }.to_owned(),
                size: v.size(),
                mode: v.mode.as_str().to_owned(),
                stage: v.stage,
                age_seconds: v.acked.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0),
                refused: st.failed.get(seq).cloned(),
            })
            .collect()
    }

    /// Tries a refused version again (after the operator fixed what the origin refused).
    pub(crate) fn retry(&self, seq: u64) -> Result<(), JournalOpError> {
        let mut st = lock(&self.state);
        if !st.versions.contains_key(&seq) {
            return Err(JournalOpError::NotFound(seq));
        }
        if !st.retry(seq) {
            return Err(JournalOpError::NotRefused(seq));
        }
        self.refresh_gauges(&st);
        drop(st);
        self.bump();
        Ok(())
    }

    /// Drops a refused version for good: the write is lost (its key reads as the origin has it,
    /// or as its later versions say), and the versions behind it go on.
    pub(crate) fn drop_version(&self, seq: u64) -> Result<(), JournalOpError> {
        let v = {
            let st = lock(&self.state);
            let v = st.versions.get(&seq).cloned().ok_or(JournalOpError::NotFound(seq))?;
            if !st.failed.contains_key(&seq) {
                return Err(JournalOpError::NotRefused(seq));
            }
            v
        };
        {
            let _key = self.local.key_lock(&v.okey);
            record::drop_from_index(&self.local, seq, &v.okey, v.put.is_some())?;
            let mut st = lock(&self.state);
            st.remove(seq);
            self.refresh_gauges(&st);
        }
        tracing::warn!(seq, object = %v.okey, "a refused version was dropped by an operator: that write is lost");
        self.bump();
        Ok(())
    }
}

/// What the origin holds of an uploaded version.
pub(crate) struct OriginCopy {
    pub etag: String,
    pub last_modified: SystemTime,
}
