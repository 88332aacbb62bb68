//! `Lease`: one writer per bucket. The primary holds `.perch/lease` in its bucket (created with
//! `If-None-Match: *`, renewed with `If-Match`), and acknowledges or uploads a write only while a
//! renewal it sent is younger than the lease period on its own clocks; after any gap it first wins
//! a renewal. A taker declares the lease expired only after seeing one ETag unchanged for the
//! period plus a margin. docs/lease.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::local::lock;
use crate::origin::{Conditions, ContentHeaders, Origin, OriginError, PutBody, PutInput};

/// The lease's key in the bucket.
pub const LEASE_KEY: &str = ".perch/lease";

/// What the lease object holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// Who holds it: `--lease-holder` (host and data dir instance).
    pub holder: String,
    /// Counts the takes: each new holding of the lease is a new epoch.
    pub epoch: u64,
    /// Counts the renewals of this epoch (so that each renewal has a new ETag).
    pub renewal: u64,
    /// The period the holder promises to renew within.
    pub period_ms: u64,
    /// The holder's wall clock at the renewal, for people (nobody trusts it).
    pub written_at: String,
    /// Set by a clean stop: the next primary may take it at once.
    pub released: bool,
}

/// The lease as read from the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub body: LeaseBody,
    pub etag: String,
    pub last_modified: SystemTime,
}

/// Which writes of the journal belong to which holding of the lease: written in the data dir
/// when the lease is taken, compared at the next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalBinding {
    pub holder: String,
    pub epoch: u64,
    /// Set by `perch journal adopt`: upload this journal under whatever lease comes next.
    #[serde(default)]
    pub adopted: bool,
    /// The epoch this holder is about to take, written (synced) before its `PUT` is sent: a take
    /// that reached the origin but whose answer was lost (a timeout, a crash before the binding
    /// was rewritten) leaves the lease at this holder and epoch, which is then still this
    /// journal's own lease, not a newer holding.
    #[serde(default)]
    pub taking: Option<u64>,
}

impl JournalBinding {
    /// Whether the bucket's lease at `holder` and `epoch` is the one this journal's writes
    /// belong to: the holding they were made under, or the take of it this journal recorded
    /// before sending (whose answer may have been lost).
    pub fn owns(&self, holder: &str, epoch: u64) -> bool {
        holder == self.holder && (epoch == self.epoch || self.taking == Some(epoch))
    }
}

impl JournalBinding {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("journal-lease.json")
    }

    pub fn read(data_dir: &Path) -> Result<Option<JournalBinding>, LeaseError> {
        match std::fs::read(Self::path(data_dir)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| LeaseError::Unreadable {
                    what: Self::path(data_dir).display().to_string(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LeaseError::Local(e)),
        }
    }

    /// Written durably (temp file synced, renamed, directory synced).
    pub fn write(&self, data_dir: &Path) -> Result<(), LeaseError> {
        let path = Self::path(data_dir);
        let temp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| LeaseError::Local(e.into()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&temp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&temp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()
        };
        write().map_err(LeaseError::Local)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the bucket's lease is held by `{holder}` (epoch {epoch}), renewed while we watched: another primary \
         is running on this bucket (stop it, or see `perch lease status`)"
    )]
    Held { holder: String, epoch: u64 },
    #[error(
        "the journal holds {writes} writes made under lease epoch {bound_epoch} of `{bound_holder}`, but the \
         bucket's lease has since been held by `{holder}` (epoch {epoch}): uploading them could overwrite \
         newer data. Decide with `perch journal adopt` (upload them anyway) or `perch journal discard` (lose them)"
    )]
    JournalMismatch {
        writes: u64,
        bound_holder: String,
        bound_epoch: u64,
        holder: String,
        epoch: u64,
    },
    #[error("the lease is not held yet")]
    NotHeld,
    /// Another holder (or an operator's break) has the lease now: `why` says who.
    #[error("{why}")]
    Lost { why: String },
    #[error("the lease object is not Perch's: {0}")]
    Corrupt(String),
    /// A lease or a journal binding JSON cannot read (`what`: which).
    #[error("{what} is not Perch's: {source}")]
    Unreadable {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// The origin's own words (its error, with its sources, once: not repeated as this one's).
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error("local: {0}")]
    Local(#[source] std::io::Error),
}

/// Settings of the lease.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub bucket: String,
    pub holder: String,
    /// The holder renews every third of it; it acts only within it of a renewal it sent.
    pub period: Duration,
    /// What a taker waits beyond the period, for clocks running at different rates.
    pub margin: Duration,
    pub data_dir: PathBuf,
}

/// A reading of the two clocks: the boot clock (counts suspended time, never steps) and the wall
/// clock (steps, and is corrected after a restore). A pause shows as a late renewal or as the
/// two clocks' deltas disagreeing.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    boot: Duration,
    real: Duration,
}

fn clock(id: libc::clockid_t) -> Duration {
    // SAFETY: clock_gettime writes only into the timespec we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Tests only: `PERCH_TEST_REALTIME_OFFSET_FILE` names a file holding milliseconds added to the
/// wall clock, to make it jump as a restored snapshot's does.
fn realtime_offset() -> Duration {
    let Some(path) = std::env::var_os("PERCH_TEST_REALTIME_OFFSET_FILE") else {
        return Duration::ZERO;
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

fn now() -> Stamp {
    Stamp {
        boot: clock(libc::CLOCK_BOOTTIME),
        real: clock(libc::CLOCK_REALTIME) + realtime_offset(),
    }
}

/// How far the two clocks may disagree over one renewal before it counts as a gap.
const CLOCK_DISAGREEMENT: Duration = Duration::from_secs(1);

/// One lease call's time limit.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// How often `Lease::stale` looks at the clocks at least.
const STALE_LOOK: Duration = Duration::from_millis(250);

struct Held {
    etag: String,
    body: LeaseBody,
    /// When the renewal that produced `etag` was sent; `None` when not known (a renewal of ours
    /// that landed late, its answer given up on): not fresh until the next one.
    sent: Option<Stamp>,
}

pub struct Lease {
    cfg: LeaseConfig,
    origin: Arc<dyn Origin>,
    held: Mutex<Option<Held>>,
    /// Serializes renewals.
    renewing: tokio::sync::Mutex<()>,
    /// Set once another holder is seen to have the lease: nothing is acknowledged or uploaded
    /// any more; the process is told through `lost()` and exits.
    lost: AtomicBool,
    lost_tx: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("cfg", &self.cfg)
            .field("lost", &self.lost.load(Ordering::SeqCst))
            .finish()
    }
}

fn body_bytes(b: &LeaseBody) -> PutInput {
    let bytes = serde_json::to_vec(b).unwrap_or_default();
    PutInput {
        headers: ContentHeaders {
            content_type: Some("application/json".into()),
            ..ContentHeaders::default()
        },
        checksums: Default::default(),
        body: PutBody::Bytes(bytes.into()),
        if_match: None,
        if_none_match: None,
        content_md5: None,
        extra_headers: Vec::new(),
    }
}

fn wall_clock() -> String {
    httpdate::fmt_http_date(SystemTime::now())
}

/// Reads the lease of `bucket`: `None` when there is none.
pub async fn read_lease(origin: &dyn Origin, bucket: &str) -> Result<Option<LeaseView>, LeaseError> {
    let got = tokio::time::timeout(
        CALL_LIMIT,
        origin.get_object(bucket, LEASE_KEY, None, &Conditions::default()),
    )
    .await
    .map_err(|_| OriginError::transient("reading the lease took over 5 s"))?;
    let out = match got {
        Ok(out) => out,
        Err(OriginError::NoSuchKey) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let meta = out.meta.clone();
    let mut bytes = Vec::new();
    let mut stream = out.body;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| LeaseError::Origin(OriginError::Io(e)))?;
        bytes.extend_from_slice(&chunk);
        if bytes.len() > 64 << 10 {
            return Err(LeaseError::Corrupt(format!("{bucket}/{LEASE_KEY} is over 64 KiB")));
        }
    }
    let body: LeaseBody = serde_json::from_slice(&bytes).map_err(|source| LeaseError::Unreadable {
        what: format!("{bucket}/{LEASE_KEY}"),
        source,
    })?;
    Ok(Some(LeaseView {
        body,
        etag: meta.etag,
        last_modified: meta.last_modified,
    }))
}

/// Breaks the lease `seen` (`perch lease break`): marks it released, on the condition that it is
/// still the one read, so that the next primary takes it at once and its holder, if it still runs,
/// fails its next renewal and stops. `Ok(false)`: the lease was renewed or taken since it was read
/// (its holder is alive, or a new one took it), and is left as it is.
pub async fn break_lease(origin: &dyn Origin, bucket: &str, seen: &LeaseView) -> Result<bool, LeaseError> {
    // Tests hold the break here, for the holder to renew meanwhile (lease.rs).
    crate::journal::pause_point_async("lease_break").await;
    let mut body = seen.body.clone();
    body.released = true;
    body.renewal += 1;
    body.written_at = wall_clock();
    let mut input = body_bytes(&body);
    input.if_match = Some(seen.etag.clone());
    let put = tokio::time::timeout(CALL_LIMIT, origin.put_object(bucket, LEASE_KEY, &input))
        .await
        .map_err(|_| OriginError::transient("breaking the lease took over 5 s"))?;
    match put {
        Ok(_) => Ok(true),
        // Ours may have landed with its answer lost, then been retried: look.
        Err(OriginError::PreconditionFailed | OriginError::NoSuchKey) => {
            Ok(read_lease(origin, bucket).await?.is_some_and(|v| v.body == body))
        }
        Err(e) => Err(e.into()),
    }
}

impl Lease {
    pub fn new(cfg: LeaseConfig, origin: Arc<dyn Origin>) -> Arc<Lease> {
        Arc::new(Lease {
            cfg,
            origin,
            held: Mutex::new(None),
            renewing: tokio::sync::Mutex::new(()),
            lost: AtomicBool::new(false),
            lost_tx: watch::channel(None).0,
        })
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// Resolves with the reason once the lease is lost to another holder.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost_tx.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn declare_lost(&self, why: String) {
        self.lost.store(true, Ordering::SeqCst);
        *lock(&self.held) = None;
        tracing::error!(bucket = %self.cfg.bucket, "{why}");
        self.lost_tx.send_replace(Some(why));
    }

    /// Takes the lease at start. `journal_writes`: the versions the journal holds, which must
    /// belong to the last holding of the lease (or be adopted).
    pub async fn acquire(&self, journal_writes: u64) -> Result<u64, LeaseError> {
        let mut binding = JournalBinding::read(&self.cfg.data_dir)?;
        loop {
            let found = read_lease(&*self.origin, &self.cfg.bucket).await?;
            if journal_writes > 0
                && let Some(b) = &binding
                && !b.adopted
            {
                let (holder, epoch) = found
                    .as_ref()
                    .map_or(("nobody".to_owned(), 0), |f| (f.body.holder.clone(), f.body.epoch));
                if !b.owns(&holder, epoch) {
                    return Err(LeaseError::JournalMismatch {
                        writes: journal_writes,
                        bound_holder: b.holder.clone(),
                        bound_epoch: b.epoch,
                        holder,
                        epoch,
                    });
                }
            }
            let last_epoch = found.as_ref().map_or(0, |f| f.body.epoch);
            let epoch = last_epoch.max(binding.as_ref().map_or(0, |b| b.epoch)) + 1;
            let condition = match &found {
                None => None,
                Some(f) if f.body.holder == self.cfg.holder || f.body.released => Some(f.etag.clone()),
                Some(f) => {
                    self.wait_expiry(f).await?;
                    Some(f.etag.clone())
                }
            };
            let body = LeaseBody {
                holder: self.cfg.holder.clone(),
                epoch,
                renewal: 0,
                period_ms: self.cfg.period.as_millis() as u64,
                written_at: wall_clock(),
                released: false,
            };
            let mut input = body_bytes(&body);
            match &condition {
                None => input.if_none_match = Some("*".into()),
                Some(etag) => input.if_match = Some(etag.clone()),
            }
            // The journal's writes stay bound to their holding; the take about to be sent is
            // recorded beside it, so that its landing without an answer is known for ours.
            if let Some(b) = &binding
                && b.taking != Some(epoch)
            {
                let intent = JournalBinding {
                    taking: Some(epoch),
                    ..b.clone()
                };
                intent.write(&self.cfg.data_dir)?;
                binding = Some(intent);
            }
            let sent = now();
            match self.origin.put_object(&self.cfg.bucket, LEASE_KEY, &input).await {
                Ok(out) => {
                    JournalBinding {
                        holder: self.cfg.holder.clone(),
                        epoch,
                        adopted: false,
                        taking: None,
                    }
                    .write(&self.cfg.data_dir)?;
                    *lock(&self.held) = Some(Held {
                        etag: out.etag,
                        body,
                        sent: Some(sent),
                    });
                    tracing::info!(bucket = %self.cfg.bucket, holder = %self.cfg.holder, epoch, "lease taken");
                    return Ok(epoch);
                }
                // Someone else moved first: look again.
                Err(OriginError::PreconditionFailed | OriginError::NoSuchKey) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Watches another holder's lease: `Ok` once one ETag stayed for its period plus our margin
    /// on our own clock; `Held` as soon as it changes.
    async fn wait_expiry(&self, seen: &LeaseView) -> Result<(), LeaseError> {
        let period = Duration::from_millis(seen.body.period_ms).max(self.cfg.period);
        let wait = period + self.cfg.margin;
        tracing::warn!(
            holder = %seen.body.holder,
            epoch = seen.body.epoch,
            wait_s = wait.as_secs_f64(),
            "the bucket's lease names another holder; taking it if it is not renewed"
        );
        let start = tokio::time::Instant::now();
        let poll = (period / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        while start.elapsed() < wait {
            tokio::time::sleep(poll).await;
            match read_lease(&*self.origin, &self.cfg.bucket).await? {
                Some(v) if v.etag == seen.etag => {}
                // Released (a clean stop, or `perch lease break`) meanwhile: take it at once.
                Some(v) if v.body.released => return Ok(()),
                Some(v) => {
                    return Err(LeaseError::Held {
                        holder: v.body.holder,
                        epoch: v.body.epoch,
                    });
                }
                // Broken meanwhile: start over from what is there now.
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Whether a renewal we sent is recent on both clocks: no gap since.
    fn fresh(&self) -> bool {
        self.fresh_for().is_some()
    }

    /// How much longer the last renewal we sent keeps the lease fresh on the boot clock; `None`
    /// once it does not (overdue, the clocks apart, none known).
    fn fresh_for(&self) -> Option<Duration> {
        let held = lock(&self.held);
        let sent = held.as_ref().and_then(|h| h.sent)?;
        let t = now();
        let boot = t.boot.saturating_sub(sent.boot);
        let real = t.real.checked_sub(sent.real);
        let agree = real.is_some_and(|r| r.abs_diff(boot) <= CLOCK_DISAGREEMENT);
        (agree && boot < self.cfg.period).then(|| self.cfg.period - boot)
    }

    /// Resolves once the lease stops being fresh (no renewal within the period, the clocks
    /// apart, or lost): an upload under way is cut then (`Uploader`), so that a holder cut off
    /// from the origin (a partition) sends no more of it once a taker may count its period as
    /// over. Looked at every `STALE_LOOK` at least, as a timer does not run while the machine
    /// is suspended and the boot clock does.
    pub async fn stale(&self) {
        while !self.lost.load(Ordering::SeqCst)
            && let Some(left) = self.fresh_for()
        {
            tokio::time::sleep(left.min(STALE_LOOK)).await;
        }
    }

    /// Waits until this process may acknowledge or upload a write: at once while a recent renewal
    /// stands; otherwise (a gap, an overdue renewal) after winning an `If-Match` renewal. Holds the
    /// caller through origin faults; never returns once the lease is lost (the process exits).
    pub async fn writable(&self) {
        let mut attempt = 0u32;
        loop {
            if self.lost.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.fresh() {
                return;
            }
            if attempt == 0 && lock(&self.held).is_some() {
                tracing::info!(
                    "a gap since the last lease renewal (overdue, or the clocks disagree): renewing before \
                     acknowledging or uploading"
                );
            }
            match self.renew(false).await {
                Ok(()) => attempt = 0,
                Err(LeaseError::NotHeld) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 || attempt.is_multiple_of(20) {
                        tracing::warn!(error = %e, "cannot renew the lease; writes wait");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Renews now (`If-Match` the ETag we hold), whatever the clocks say: before a barrier.
    pub async fn renew_now(&self) {
        loop {
            if self.lost.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            match self.renew(true).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease before a barrier; it waits");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// One renewal: `Ok` once the origin took ours; a refusal by the origin means another holder
    /// (or an operator's break) has it: the lease is lost.
    async fn renew(&self, force: bool) -> Result<(), LeaseError> {
        let _one = self.renewing.lock().await;
        // Another caller may have renewed while this one waited for its turn.
        if !force && self.fresh() {
            return Ok(());
        }
        let Some((etag, mut body)) = lock(&self.held).as_ref().map(|h| (h.etag.clone(), h.body.clone())) else {
            return Err(LeaseError::NotHeld);
        };
        body.renewal += 1;
        body.written_at = wall_clock();
        let mut input = body_bytes(&body);
        input.if_match = Some(etag);
        let sent = now();
        let put = tokio::time::timeout(CALL_LIMIT, self.origin.put_object(&self.cfg.bucket, LEASE_KEY, &input)).await;
        match put {
            Ok(Ok(out)) => {
                *lock(&self.held) = Some(Held {
                    etag: out.etag,
                    body,
                    sent: Some(sent),
                });
                Ok(())
            }
            Ok(Err(OriginError::PreconditionFailed | OriginError::NoSuchKey)) => {
                // Ours may have landed with its answer lost, then been retried: look.
                match read_lease(&*self.origin, &self.cfg.bucket).await? {
                    Some(v) if v.body == body => {
                        *lock(&self.held) = Some(Held {
                            etag: v.etag,
                            body,
                            sent: Some(sent),
                        });
                        Ok(())
                    }
                    // An earlier renewal of ours, given up on after its time limit while the
                    // origin held it (a stall), landed since: the lease is still ours, at this
                    // epoch (another holder's take would have made it fail). Its ETag is taken,
                    // but not its time (unknown): the next renewal, against it, must succeed
                    // before anything is acknowledged or uploaded.
                    Some(v)
                        if v.body.holder == body.holder
                            && v.body.epoch == body.epoch
                            && !v.body.released
                            && v.body.renewal >= body.renewal.saturating_sub(1) =>
                    {
                        tracing::info!(
                            renewal = v.body.renewal,
                            "an earlier lease renewal of ours landed late (the origin held it); renewing against it"
                        );
                        *lock(&self.held) = Some(Held {
                            etag: v.etag,
                            body: v.body,
                            sent: None,
                        });
                        Err(LeaseError::Origin(OriginError::transient(
                            "an earlier renewal of ours landed late; renewing again",
                        )))
                    }
                    other => {
                        // Released under our name and epoch while we run: `perch lease break`.
                        let who = match other {
                            None => "nobody (the lease was broken)".to_owned(),
                            Some(v)
                                if v.body.released && v.body.holder == body.holder && v.body.epoch == body.epoch =>
                            {
                                "nobody (the lease was broken)".to_owned()
                            }
                            Some(v) if v.body.released => {
                                format!(
                                    "nobody (`{}`, epoch {}, took it and released it since)",
                                    v.body.holder, v.body.epoch
                                )
                            }
                            Some(v) => format!("`{}` (epoch {})", v.body.holder, v.body.epoch),
                        };
                        let why = format!(
                            "lease lost: the bucket's lease is now held by {who}; this Perch stops acknowledging \
                             and uploading writes and exits; its journal stays in the data dir (perch journal)"
                        );
                        self.declare_lost(why.clone());
                        Err(LeaseError::Lost { why })
                    }
                }
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(LeaseError::Origin(OriginError::transient(
                "renewing the lease took over 5 s",
            ))),
        }
    }

    /// Renews every third of the period, for as long as the process holds the lease.
    pub fn start_renewing(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.cfg.period / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(lease) = weak.upgrade() else { return };
                if lease.lost.load(Ordering::SeqCst) {
                    return;
                }
                if let Err(e) = lease.renew(true).await {
                    tracing::warn!(error = %e, "lease renewal failed; retrying");
                }
            }
        });
    }

    /// A clean stop: marks the lease released, so that the next primary takes it at once.
    pub async fn release(&self) {
        let _one = self.renewing.lock().await;
        let Some((etag, mut body)) = lock(&self.held).take().map(|h| (h.etag, h.body)) else {
            return;
        };
        body.released = true;
        body.renewal += 1;
        body.written_at = wall_clock();
        let mut input = body_bytes(&body);
        input.if_match = Some(etag);
        match tokio::time::timeout(CALL_LIMIT, self.origin.put_object(&self.cfg.bucket, LEASE_KEY, &input)).await {
            Ok(Ok(_)) => tracing::info!(bucket = %self.cfg.bucket, "lease released"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease; it expires by itself"),
            Err(_) => tracing::warn!("could not release the lease in 5 s; it expires by itself"),
        }
    }
}
