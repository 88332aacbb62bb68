//! `Journal`: every acknowledged write is a version (a sequence number, an immutable blob, a
//! journal record) committed durably before the answer, and released once the origin has it.
//!
//! Life of a version (docs/write-back.md): the body is written to a temp file and fsynced, renamed
//! to the blob named by its sequence number, the directory is fsynced, then the journal record and
//! the index entry (the blob, or a tombstone for a delete) are written in one synced RocksDB batch;
//! only then is the client answered. Versions are cut into epochs by barriers; the `Uploader` sends
//! them in the order `state` allows. A released version leaves the journal and stays as a clean
//! cache entry if it is still the newest of its key.

mod commit;
pub(crate) mod offline;
mod ops;
pub(crate) mod record;
mod release;
pub(crate) mod state;

use commit::{Gates, Room};
pub(crate) use commit::{Held, NewBody, NewVersion};
pub use ops::{JournalEntry, JournalOpError};
pub(crate) use release::OriginCopy;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use perch_policy::{Method, SharedPolicy, WriteMode};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::error::{CacheError, StoreError, StoreResult};
use crate::journal::record::Record;
use crate::journal::state::{Pick, Slots, State, Version};
use crate::key::ObjectKey;
use crate::local::index::Entry;
use crate::local::{Local, lock};
use crate::metrics::WriteStats;
use crate::origin::{ListEntry, OriginError};

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
    /// Every version left waits on a refused one (`failed`): nothing uploads until an operator
    /// retries or drops them (`perch journal`).
    #[serde(default)]
    pub blocked_by_refusals: bool,
    /// The origin fault the uploader is retrying, else the fault of the origin's last call while
    /// its calls keep failing (a read's too).
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

/// Test-only pause: `PERCH_PAUSE_POINT=<name>:<millis>` holds the thread that first reaches the
/// point `<name>` for that long (later passes go on at once), so that a test can make something
/// else happen at that moment; `<name>#<n>:<millis>` holds the `n`th pass instead. It says so on
/// stderr when it starts and ends. Read once.
pub(crate) fn pause_point(name: &str) {
    if let Some(pause) = pause_at(name) {
        std::thread::sleep(pause);
        eprintln!("perch: pause point {name} passed");
    }
}

/// `pause_point` on an async task (the task waits; its thread goes on with others).
pub(crate) async fn pause_point_async(name: &str) {
    if let Some(pause) = pause_at(name) {
        tokio::time::sleep(pause).await;
        eprintln!("perch: pause point {name} passed");
    }
}

/// How long to pause at `name`: at its one pass named (the first, unless `#n` says which) when
/// `PERCH_PAUSE_POINT` names it.
fn pause_at(name: &str) -> Option<Duration> {
    static POINT: std::sync::OnceLock<Option<(String, u64, Duration)>> = std::sync::OnceLock::new();
    static PASSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let point = POINT.get_or_init(|| {
        let v = std::env::var("PERCH_PAUSE_POINT").ok()?;
        let (point, millis) = v.split_once(':')?;
        let (point, pass) = match point.split_once('#') {
            Some((point, pass)) => (point, pass.parse().ok()?),
            None => (point, 1),
        };
        Some((point.to_owned(), pass, Duration::from_millis(millis.parse().ok()?)))
    });
    let (point, pass, pause) = point.as_ref()?;
    if point != name || PASSES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 != *pass {
        return None;
    }
    eprintln!("perch: pause point {name} reached; pausing {} ms", pause.as_millis());
    Some(*pause)
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
    /// Wakes uploads waiting to try again: an operator gave one up (`give_up`).
    pub(crate) give_ups: Notify,
    /// Wakes uploads waiting to try again after a fault: the origin answered another upload
    /// again (`note_origin_fault`), or a client started waiting on uploads (`wait_until`).
    pub(crate) hurry: Notify,
    /// How many times `hurry` was sent: an upload that failed looks at it when it starts to wait,
    /// so that one sent while it was not listening yet (its blob being checked) still counts.
    hurries: std::sync::atomic::AtomicU64,
    /// How many times the origin answered an upload again after a fault (a part of `hurries`):
    /// an upload's fault older than such an answer is no news of the origin.
    returns: std::sync::atomic::AtomicU64,
    /// Clients waiting on uploads now (`wait_until`): an upload tried again through faults then
    /// waits at most as long as a client's own request would between attempts.
    clients_waiting: std::sync::atomic::AtomicUsize,
    /// Bumped whenever a version is released or fails: writers waiting for room, for a key to
    /// be clean or for a confirmation look again.
    released: watch::Sender<u64>,
    pub(crate) stats: WriteStats,
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
            give_ups: Notify::new(),
            hurry: Notify::new(),
            hurries: std::sync::atomic::AtomicU64::new(0),
            returns: std::sync::atomic::AtomicU64::new(0),
            clients_waiting: std::sync::atomic::AtomicUsize::new(0),
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
                let len = match std::fs::metadata(&path) {
                    Ok(m) => Some(m.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(source) => {
                        return Err(CacheError::UnreadableBlob {
                            seq,
                            object: format!("{}/{}", record.bucket, record.key),
                            path: path.display().to_string(),
                            source,
                        });
                    }
                };
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
                    priority: self
                        .cfg
                        .policy
                        .decide(okey.bucket(), okey.key(), Method::Put)
                        .upload_priority,
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

    /// Waits until version `seq` is in the origin (write-through, strict barriers), up to `limit`.
    pub(crate) async fn wait_confirmed(&self, seq: u64, limit: Duration) -> StoreResult<()> {
        self.wait_until(
            limit,
            |st| {
                // The origin answered its upload: it holds the version (the uploader's check of
                // what it keeps, and any upload again, follow with the version still in the journal).
                if st.in_origin.contains(&seq) {
                    return Some(Ok(()));
                }
                if let Some(error) = st.failed.get(&seq) {
                    return Some(Err(StoreError::Refused {
                        seq,
                        error: error.clone(),
                        answer: st.answers.get(&seq).cloned(),
                    }));
                }
                // Gone from the journal: released once the origin held it, or dropped by an operator.
                if st.dropped.contains(&seq) {
                    return Some(Err(StoreError::Refused {
                        seq,
                        error: "dropped by an operator (perch journal drop): the write is lost".to_owned(),
                        answer: None,
                    }));
                }
                (!st.versions.contains_key(&seq)).then_some(Ok(()))
            },
            // The older versions of its key go up before it; a barrier's, every version before it.
            |st| {
                let v = st.versions.get(&seq)?;
                if v.mode == WriteMode::Barrier {
                    return Some(st.pending_upto(seq) as usize);
                }
                Some(st.keys.get(&v.okey)?.range(..=seq).count())
            },
        )
        .await
    }

    /// The origin answered the upload of `seq`: a client waiting on it (write-through) need not
    /// wait for the uploader's check that follows.
    pub(crate) fn mark_in_origin(&self, seq: u64) {
        if lock(&self.state).mark_in_origin(seq) {
            self.released.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Waits until `okey` has no unconfirmed version (before a conditional request or a copy goes
    /// to the origin), up to `limit`. A version the origin refused waits for an operator (`perch
    /// journal retry` or `drop`), and so does this: the origin cannot decide without it, and a
    /// client told at once would only ask again (OrioleDB in a tight loop). Past `limit` with a
    /// refusal still there, the error names it.
    pub(crate) async fn wait_clean(&self, okey: &ObjectKey, limit: Duration) -> StoreResult<()> {
        let waited = self
            .wait_until(
                limit,
                |st| (!st.keys.contains_key(okey)).then_some(Ok(())),
                // Everything committed before its newest version: a barrier goes up after it all.
                |st| Some(st.pending_upto(*st.keys.get(okey)?.last()?) as usize),
            )
            .await;
        match waited {
            Err(StoreError::Timeout(_)) => {
                let st = lock(&self.state);
                if !st.keys.contains_key(okey) {
                    return Ok(());
                }
                let refused = st.keys.get(okey).into_iter().flatten().find_map(|seq| {
                    st.failed.get(seq).map(|error| StoreError::Refused {
                        seq: *seq,
                        error: error.clone(),
                        answer: st.answers.get(seq).cloned(),
                    })
                });
                Err(refused.unwrap_or(StoreError::Timeout(limit)))
            }
            other => other,
        }
    }

    /// Waits until the origin holds every version committed so far, as a barrier's upload would
    /// (a request the origin decides for a barrier key: the lock's release with `If-Match`), up
    /// to `limit`. A version the origin refused holds it back, as it holds a barrier back: past
    /// `limit` with a refusal still there, the error names it, as `wait_clean`'s does.
    pub(crate) async fn wait_all_in_origin(&self, limit: Duration) -> StoreResult<()> {
        let cut = lock(&self.state).last_seq;
        let left = |st: &State| -> Vec<u64> {
            st.versions
                .range(..=cut)
                .map(|(seq, _)| *seq)
                .filter(|seq| !st.in_origin.contains(seq))
                .collect()
        };
        let waited = self
            .wait_until(
                limit,
                |st| {
                    st.versions
                        .range(..=cut)
                        .all(|(seq, _)| st.in_origin.contains(seq))
                        .then_some(Ok(()))
                },
                // Not a walk of the backlog at each release: the versions in the origin but not
                // yet released are few (about those in flight).
                |st| {
                    let in_origin = st.in_origin.iter().filter(|seq| **seq <= cut).count();
                    Some((st.pending_upto(cut) as usize).saturating_sub(in_origin))
                },
            )
            .await;
        match waited {
            Err(StoreError::Timeout(_)) => {
                let st = lock(&self.state);
                let refused = left(&st).into_iter().find_map(|seq| {
                    st.failed.get(&seq).map(|error| StoreError::Refused {
                        seq,
                        error: error.clone(),
                        answer: st.answers.get(&seq).cloned(),
                    })
                });
                match refused {
                    Some(refused) => Err(refused),
                    None if left(&st).is_empty() => Ok(()),
                    None => Err(StoreError::Timeout(limit)),
                }
            }
            other => other,
        }
    }

    /// Waits until no key of `bucket` has an unconfirmed version that may still go up (before
    /// DeleteBucket or a configuration the bucket's writes depend on), up to `limit`. Versions the
    /// origin refused are not waited for: they wait for an operator, and the configuration may be
    /// what the refusal needs changed.
    pub(crate) async fn wait_bucket_clean(&self, bucket: &str, limit: Duration) -> StoreResult<()> {
        let start = ObjectKey::prefix(bucket, "");
        // Done too when nothing at all can go up any more (the rest waits behind refusals).
        self.wait_until(
            limit,
            |st| (!st.uploading_under(&start) || st.blocked_by_refusals()).then_some(Ok(())),
            |_| None,
        )
        .await
    }

    /// Whether `bucket` has a version the origin refused (kept here, not in the origin).
    pub(crate) fn refused_in(&self, bucket: &str) -> bool {
        lock(&self.state).refused_under(&ObjectKey::prefix(bucket, ""))
    }

    /// Whether `bucket` has any version not yet in the origin.
    pub(crate) fn pending_in(&self, bucket: &str) -> bool {
        lock(&self.state).any_under(&ObjectKey::prefix(bucket, ""))
    }

    /// Waits until `done` says so, up to `limit` without progress. `left` counts what the wait
    /// still waits for (`None`: not counted); each time that count falls below its lowest yet, the
    /// limit starts again, and the whole wait never lasts more than `--dirty-wait-max` (or
    /// `limit`, if longer). A wait behind a backlog the origin takes slowly but steadily (the
    /// lock's release behind a checkpoint's parts) is still answered, where an answer of 503
    /// would be fatal to OrioleDB; a backlog that does not move is answered after `limit`. Only
    /// versions already there are counted, so the wait ends with the backlog it met.
    async fn wait_until<F, L>(&self, limit: Duration, mut done: F, mut left: L) -> StoreResult<()>
    where
        F: FnMut(&State) -> Option<StoreResult<()>>,
        L: FnMut(&State) -> Option<usize>,
    {
        let mut rx = self.released.subscribe();
        let started = Instant::now();
        let ceiling = started + limit.max(self.cfg.dirty_wait_max);
        let mut deadline = started + limit;
        let mut lowest = usize::MAX;
        // Counted only once the wait must wait: a request on a clean key wakes no upload.
        let mut waiting = None;
        loop {
            {
                let st = lock(&self.state);
                if let Some(r) = done(&st) {
                    return r;
                }
                if let Some(n) = left(&st)
                    && n < lowest
                {
                    if lowest != usize::MAX {
                        deadline = (Instant::now() + limit).min(ceiling);
                    }
                    lowest = n;
                }
            }
            if waiting.is_none() {
                waiting = Some(ClientWaiting::start(self));
            }
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    // What ended at the deadline itself still counts.
                    return done(&lock(&self.state)).unwrap_or(Err(StoreError::Timeout(limit)));
                }
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
            pending_upto: upto.map(|u| st.pending_upto(u)),
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
            blocked_by_refusals: st.blocked_by_refusals(),
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
                        storage_class: p.meta.headers.storage_class.clone(),
                        checksum: p.meta.checksums.kept(),
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

    /// The uploader met a transient origin fault (`None`: the origin answered). An answer after
    /// a fault wakes the uploads waiting to try again (`hurry`): the origin is back, and a client
    /// waiting on one of them must not wait out a backoff drawn while it was down. Not after a
    /// throttle (503 SlowDown, 429): answers between throttles are no return of the origin, and
    /// hurried uploads would press an origin that asked for less.
    pub(crate) fn note_origin_fault(&self, fault: Option<&OriginError>) {
        let now = fault.map(|e| (SystemTime::now(), e.to_string()));
        let mut st = lock(&self.state);
        let was_down = st.origin_fault.is_some() && !st.origin_throttled;
        st.origin_throttled = fault.is_some_and(OriginError::is_throttle);
        st.origin_fault = now;
        drop(st);
        if was_down && fault.is_none() {
            self.returns.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.hurry_uploads();
        }
    }

    /// How many times the origin answered again after a fault so far (`returns`).
    pub(crate) fn returns(&self) -> u64 {
        self.returns.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wakes the uploads waiting to try again (`hurry`), and counts it (`hurries`).
    fn hurry_uploads(&self) {
        self.hurries.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.hurry.notify_waiters();
    }

    /// How many times uploads were hurried so far (`hurries`).
    pub(crate) fn hurries(&self) -> u64 {
        self.hurries.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a client waits on uploads now.
    pub(crate) fn clients_waiting(&self) -> bool {
        self.clients_waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// The upload of `seq` met a transient fault and will be tried again.
    pub(crate) fn note_retry(&self, seq: u64, fault: String) {
        let mut st = lock(&self.state);
        if st.versions.contains_key(&seq) {
            st.retrying.insert(seq, fault);
        }
    }

    /// Whether an operator gave up `seq` (`give_up`).
    pub(crate) fn given_up(&self, seq: u64) -> bool {
        lock(&self.state).given_up.contains(&seq)
    }
}

/// A client waiting on uploads, counted while it waits: uploads tried again through faults wake
/// to wait less between attempts (`Journal::hurry`).
struct ClientWaiting<'a>(&'a Journal);

impl<'a> ClientWaiting<'a> {
    fn start(journal: &'a Journal) -> Self {
        journal
            .clients_waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        journal.hurry_uploads();
        ClientWaiting(journal)
    }
}

impl Drop for ClientWaiting<'_> {
    fn drop(&mut self) {
        self.0
            .clients_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl crate::local::Pending for Journal {
    fn has_pending(&self, okey: &ObjectKey) -> bool {
        Journal::has_pending(self, okey)
    }
}
