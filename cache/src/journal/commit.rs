//! Commits: a version made durable (blob, directory, one synced batch) before its answer, behind
//! its key's gate and its place in the room queue.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use perch_policy::{Method, WriteMode};
use tokio::sync::watch;

use super::{Journal, fail_point};
use crate::body::PromisedDigest;
use crate::error::{CacheError, StoreError, StoreResult};
use crate::journal::record::{PartLayout, Record, RecordPut};
use crate::journal::state::{State, Version};
use crate::key::ObjectKey;
use crate::local::index::Entry;
use crate::local::room::{is_no_space, preallocate, preallocate_at};
use crate::local::{TempGuard, lock};
use crate::origin::ObjectMeta;

/// Where a new version's body is: a verified spool file on the data dir's filesystem (written,
/// perhaps not yet synced: the commit fsyncs it under its blob name), or memory.
pub(crate) enum NewBody {
    File(PathBuf),
    Bytes(Bytes),
}

/// A PUT version to commit: its verified body, its object metadata (ETag, headers, checksums),
/// its digest (the CRC32 of each block, and its MD5: the ETag when `etag_is_md5`, set by the
/// commit once the digest is done), and its part layout when it is a completed multipart upload.
pub(crate) struct NewVersion {
    pub body: NewBody,
    pub meta: ObjectMeta,
    pub etag_is_md5: bool,
    pub digest: PromisedDigest,
    pub parts: Option<Vec<PartLayout>>,
}

/// Per-key gates between commits and the requests the origin decides: commits of a key pass
/// shared, a conditional PUT or an origin-side copy holds its keys' gates exclusively from before
/// it waits for them to be clean until the origin has answered, so that no write of those keys
/// is acknowledged in between (it would be judged against, or overwritten by, a stale origin).
#[derive(Default)]
pub(super) struct Gates {
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
pub(super) struct Room {
    next: u64,
    waiting: std::collections::BTreeSet<u64>,
}

/// A write's place in the room queue; it leaves the queue when dropped (committed, or its client
/// went away and the request was dropped: never committed if that was before its commit started,
/// which then runs to its end).
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

pub(super) enum EpochGuard<'a> {
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
    /// Commits a PUT version of `okey` (its body already verified) and returns its sequence
    /// number and ETag once it is durable: blob renamed, blob and directory fsynced, batch synced.
    /// Waits for room first when more than `--dirty-bytes-max` is waiting for upload.
    pub(crate) async fn commit_put(
        self: &Arc<Self>,
        okey: &ObjectKey,
        version: NewVersion,
        mode: WriteMode,
    ) -> StoreResult<(u64, String)> {
        // A body in memory is written by the commit; a spooled one already has its room.
        let disk = match &version.body {
            NewBody::Bytes(b) => b.len() as u64,
            NewBody::File(_) => 0,
        };
        let _admitted = self.wait_for_room(version.meta.size, disk).await?;
        let pass = self.gates.pass(okey).await;
        self.run_commit(pass, okey, Some(version), mode)
            .await
            .map(|(seq, etag)| (seq, etag.unwrap_or_default()))
    }

    /// Holds back the commits of `keys` (see `Gates`) until the returned value is dropped.
    pub(crate) async fn hold_commits(&self, keys: &[&ObjectKey]) -> Held {
        self.gates.hold(keys).await
    }

    /// Commits a DELETE version of `okey`.
    pub(crate) async fn commit_delete(self: &Arc<Self>, okey: &ObjectKey, mode: WriteMode) -> StoreResult<u64> {
        let pass = self.gates.pass(okey).await;
        self.run_commit(pass, okey, None, mode).await.map(|(seq, _)| seq)
    }

    /// Runs `commit_blocking` on a blocking thread, then wakes the uploader from a task, which
    /// runs to its end even if the request is gone, holding the key's gate `pass` until then (a
    /// request that holds the key's commits back must see this commit, whether or not its own
    /// request is still there). Woken from the commit's thread, the uploader preempted the end
    /// of the commit on a busy machine (0.4 ms of a 1 MiB PUT's acknowledgement, two cores);
    /// woken from a task, it queues behind the answer.
    async fn run_commit(
        self: &Arc<Self>,
        pass: Passing,
        okey: &ObjectKey,
        version: Option<NewVersion>,
        mode: WriteMode,
    ) -> StoreResult<(u64, Option<String>)> {
        let journal = self.clone();
        let okey = okey.clone();
        let joined = tokio::spawn(async move {
            let committing = journal.clone();
            let out = tokio::task::spawn_blocking(move || committing.commit_blocking(&okey, version, mode)).await;
            drop(pass);
            journal.wake.notify_one();
            out
        })
        .await;
        joined
            .and_then(|committed| committed)
            .map_err(|e| StoreError::from(std::io::Error::other(e)))?
    }

    /// Waits until a write of `size` bytes fits under `--dirty-bytes-max` (one larger than the
    /// whole limit still goes, alone) and `disk` more bytes fit on the data dir's filesystem with
    /// its reserve left (clean entries are evicted for them), behind the writes that came before
    /// it; up to `--dirty-wait-max`. Keep the answer until the commit is done.
    async fn wait_for_room(&self, size: u64, disk: u64) -> StoreResult<Admitted<'_>> {
        let fits = |st: &State| st.dirty_bytes == 0 || st.dirty_bytes + size <= self.cfg.dirty_bytes_max;
        let ticket = {
            let disk_fits = self.disk_fits(disk).await?;
            let mut room = lock(&self.room);
            if room.waiting.is_empty() && disk_fits && fits(&lock(&self.state)) {
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
            let first = lock(&self.room).waiting.first().copied();
            // Only the first in line takes room (evicting for it), so that room made for it is
            // not taken by a later write.
            let disk_fits = first == Some(ticket) && self.disk_fits(disk).await?;
            {
                let st = lock(&self.state);
                if disk_fits && fits(&st) {
                    return Ok(admitted);
                }
                if !logged && first == Some(ticket) {
                    if fits(&st) {
                        tracing::warn!(
                            free_bytes = self.local.room.free().unwrap_or_default(),
                            reserve_bytes = self.local.room.reserve(),
                            "the data dir's filesystem is full: writes wait for uploads to free room, in arrival order"
                        );
                    } else {
                        tracing::warn!(
                            dirty_bytes = st.dirty_bytes,
                            limit = self.cfg.dirty_bytes_max,
                            "--dirty-bytes-max reached: writes wait for uploads, in arrival order"
                        );
                    }
                    logged = true;
                }
            }
            if !self.wait_released(&mut rx, deadline).await {
                return Err(StoreError::NoRoom(self.cfg.dirty_wait_max));
            }
        }
    }

    /// Waits for a release (or for half a second: space may come back by other means, e.g. an
    /// operator); `false` once `deadline` has passed.
    async fn wait_released(&self, rx: &mut watch::Receiver<u64>, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let tick = (now + Duration::from_millis(500)).min(deadline);
        match tokio::time::timeout_at(tick.into(), rx.changed()).await {
            Ok(Ok(())) | Err(_) => true,
            Ok(Err(_)) => false,
        }
    }

    /// Whether `need` more bytes fit on the data dir's filesystem with its reserve left, once
    /// clean entries were evicted for them.
    /// A write larger than the filesystem could ever hold beside the reserve is refused at once
    /// (`LargerThanVolume`), not waited for up to `--dirty-wait-max`: no upload or eviction makes
    /// room for it.
    async fn disk_fits(&self, need: u64) -> StoreResult<bool> {
        if let Some(max) = self.local.room.most()
            && need > max
        {
            return Err(StoreError::LargerThanVolume { need, max });
        }
        Ok(self.local.room_for(need).await?)
    }

    /// Allocates the `len` bytes of `file` from byte `at` (a body about to be written under the
    /// data dir) on disk, so that writing them cannot fail for want of space; while the filesystem
    /// is full, it waits (evicting clean entries, and as uploads free room) up to
    /// `--dirty-wait-max`.
    pub(crate) async fn allocate(&self, file: BorrowedFd<'_>, at: u64, len: u64) -> StoreResult<()> {
        let deadline = Instant::now() + self.cfg.dirty_wait_max;
        let mut rx = self.released.subscribe();
        let mut logged = false;
        loop {
            if self.disk_fits(len).await? {
                match preallocate_at(&file, at, len) {
                    Ok(_) => return Ok(()),
                    Err(e) if is_no_space(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !logged {
                tracing::warn!(
                    bytes = len,
                    free_bytes = self.local.room.free().unwrap_or_default(),
                    reserve_bytes = self.local.room.reserve(),
                    "the data dir's filesystem is full: a request body waits for room"
                );
                logged = true;
            }
            if !self.wait_released(&mut rx, deadline).await {
                return Err(StoreError::NoRoom(self.cfg.dirty_wait_max));
            }
        }
    }

    /// Waits (as `allocate`) until `need` more bytes fit on the data dir's filesystem.
    pub(crate) async fn wait_for_disk(&self, need: u64) -> StoreResult<()> {
        let deadline = Instant::now() + self.cfg.dirty_wait_max;
        let mut rx = self.released.subscribe();
        while !self.disk_fits(need).await? {
            if !self.wait_released(&mut rx, deadline).await {
                return Err(StoreError::NoRoom(self.cfg.dirty_wait_max));
            }
        }
        Ok(())
    }

    /// Runs a step of a commit again while it fails for want of space (a full filesystem, or
    /// RocksDB stopped by it until its error handler resumes it), up to `deadline`. It runs on a
    /// blocking thread holding the key's lock, so it leaves the evicting to the keeper of the
    /// reserve.
    fn while_no_space<T>(&self, deadline: Instant, mut step: impl FnMut() -> Result<T, CacheError>) -> StoreResult<T> {
        let mut logged = false;
        loop {
            match step() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_no_space() => {
                    if !logged {
                        tracing::warn!(error = %e, "the data dir's filesystem is full: a commit waits for room");
                        logged = true;
                    }
                    self.local.make_room_soon();
                    if Instant::now() >= deadline {
                        return Err(StoreError::NoRoom(self.cfg.dirty_wait_max));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The commit of a version (a PUT's, or a DELETE's when `version` is `None`) on a blocking
    /// thread: its sequence number, and the ETag of a PUT.
    fn commit_blocking(
        &self,
        okey: &ObjectKey,
        version: Option<NewVersion>,
        mode: WriteMode,
    ) -> StoreResult<(u64, Option<String>)> {
        let deadline = Instant::now() + self.cfg.dirty_wait_max;
        // 1. The body, written under a temp name (not synced yet: step 2 syncs it).
        let (temp, version) = match version {
            Some(v) => {
                let NewVersion {
                    body,
                    meta,
                    etag_is_md5,
                    digest,
                    parts,
                } = v;
                let temp = self.written_temp(body, deadline)?;
                (Some(temp), Some((meta, etag_is_md5, digest, parts)))
            }
            None => (None, None),
        };
        let _temp_guard = temp.clone().map(TempGuard);
        // Same-key commits are serialized (their order is their sequence order); commits after a
        // barrier wait until it is committed.
        let _key = self.local.key_lock(okey);
        let poisoned = || StoreError::Local(CacheError::Poisoned("epoch"));
        let mut epoch = match mode {
            WriteMode::Barrier => EpochGuard::Exclusive(self.epoch.write().map_err(|_| poisoned())?),
            _ => EpochGuard::Shared(self.epoch.read().map_err(|_| poisoned())?),
        };
        let seq = self.while_no_space(deadline, || self.local.index.next_blob_id())?;
        // 2. Renamed to its sequence number first, then the blob and its directory fsynced side
        // by side: both syncs are done before step 3 starts, and one filesystem journal commit
        // can serve both (the name is in place when the blob's fsync starts).
        if let Some(temp) = &temp {
            self.local.blobs.commit(temp, seq)?;
            fail_point("blob_renamed");
            self.sync_blob_and_dir(seq, deadline)?;
            fail_point("dir_synced");
        }
        // The digest of a large body may have been finishing meanwhile: the record needs it.
        let put = match version {
            Some((mut meta, etag_is_md5, digest, parts)) => {
                let digest = digest.wait_blocking()?;
                if etag_is_md5 {
                    meta.etag = format!("\"{}\"", digest.md5_hex());
                }
                Some(RecordPut {
                    meta,
                    crcs: digest.crcs,
                    parts,
                })
            }
            None => None,
        };
        let etag = put.as_ref().map(|p| p.meta.etag.clone());
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
                parts: p.parts.iter().flatten().map(|l| l.size).collect(),
            },
            None => Entry::tombstone(seq, acked),
        };
        // 3. Journal record and index entry: one synced batch. A batch that failed was not
        // applied; written again, it is the same batch.
        self.while_no_space(deadline, || {
            self.local.index.commit_version(okey, seq, &raw, &entry, replaced_clean)
        })?;
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
                    priority: self
                        .cfg
                        .policy
                        .decide(okey.bucket(), okey.key(), Method::Put)
                        .upload_priority,
                },
            );
            self.refresh_gauges(&st);
        }
        // Reads see this version from now on: no memory copy, no fill of an older body.
        self.local.forget_copies(okey);
        if let Some(old) = replaced_clean {
            self.local.remove_blob(old);
        }
        Ok((seq, etag))
    }

    /// Fsyncs blob `seq` (its data and size) on this thread and, at the same time on another,
    /// the directory its name is in; returns once both are done. A directory fsync that meets a
    /// full filesystem is tried again (up to `deadline`); a failed blob fsync is not (the pages
    /// it could not write may be gone: only writing the body again would be safe), it fails the
    /// commit.
    fn sync_blob_and_dir(&self, seq: u64, deadline: Instant) -> StoreResult<()> {
        let path = self.local.blobs.path(seq);
        std::thread::scope(|scope| {
            let dir = scope.spawn(|| self.while_no_space(deadline, || Ok(self.local.blobs.sync_dir(seq)?)));
            let blob = std::fs::File::open(&path).and_then(|f| crate::durable::sync_file(&f));
            if blob.is_ok() {
                fail_point("blob_synced");
            }
            let dir = dir
                .join()
                .unwrap_or_else(|_| Err(StoreError::from(std::io::Error::other("the directory fsync panicked"))));
            blob?;
            dir
        })
    }

    /// Writes (or moves) a body into a temp file of the blob directory, not synced (the commit
    /// syncs it under its blob name), its pages handed to the disk at once; a body in memory is
    /// written again while the filesystem is full, up to `deadline`.
    fn written_temp(&self, body: NewBody, deadline: Instant) -> StoreResult<PathBuf> {
        let temp = self.local.blobs.temp_path();
        match body {
            NewBody::Bytes(b) => {
                let guard = TempGuard(temp.clone());
                self.while_no_space(deadline, || {
                    let mut f = std::fs::File::create(&temp)?;
                    preallocate(&f, b.len() as u64)?;
                    std::io::Write::write_all(&mut f, &b)?;
                    crate::durable::start_writeback(&f, 0, b.len() as u64);
                    Ok(())
                })?;
                std::mem::forget(guard);
            }
            NewBody::File(spooled) => {
                // The spool is under the same data dir: a rename. Across filesystems, a copy.
                if std::fs::rename(&spooled, &temp).is_err() {
                    let len = std::fs::copy(&spooled, &temp)?;
                    crate::durable::start_writeback(&std::fs::File::open(&temp)?, 0, len);
                }
            }
        }
        fail_point("blob_written");
        Ok(temp)
    }
}
