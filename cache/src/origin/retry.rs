//! `RetryingOrigin`: wraps any `Origin` so transient faults (5xx, throttling, resets, timeouts) are
//! retried with capped exponential backoff and full jitter until a deadline, and counts every origin call.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rand::Rng;

use super::*;
use crate::md5_asm::Md5;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    op: &'static str,
    outcome: &'static str,
}

/// Counters of every call Perch makes to its origin.
#[derive(Clone)]
pub struct OriginStats {
    requests: Family<OutcomeLabel, Counter>,
    duration: Family<OpLabel, Histogram>,
    retries: Family<OpLabel, Counter>,
    gave_up: Family<OpLabel, Counter>,
    /// The fault of the last call the origin did not answer (a 5xx, throttling, a reset, a
    /// timeout), until a call is answered again: reads count, not only uploads (`perch status`).
    fault: Arc<std::sync::Mutex<Option<(Instant, String)>>>,
    /// Whether `fault` holds one: an answered call takes its lock only then.
    faulted: Arc<std::sync::atomic::AtomicBool>,
}

/// How long the origin's last fault is reported without another: calls that keep failing renew
/// it within their backoff (5 s at most); an idle Perch (a replica nobody reads) stops saying the
/// origin is failing once it has not asked for this long.
const FAULT_SHOWN_FOR: Duration = Duration::from_secs(60);

impl OriginStats {
    /// Registers the origin metrics under `perch_origin_*`.
    pub fn new(registry: &mut Registry) -> Self {
        let stats = Self::unregistered();
        registry.register(
            "perch_origin_requests",
            "Origin calls by operation and outcome (ok, not_found, precondition, rejected, transient, io)",
            stats.requests.clone(),
        );
        registry.register(
            "perch_origin_request_duration_seconds",
            "Time of one origin call (one attempt)",
            stats.duration.clone(),
        );
        registry.register(
            "perch_origin_retries",
            "Origin calls retried after a transient fault",
            stats.retries.clone(),
        );
        registry.register(
            "perch_origin_gave_up",
            "Origin calls that failed after retrying until the deadline",
            stats.gave_up.clone(),
        );
        stats
    }

    /// Stats that nothing exports (for tests and tools).
    pub fn unregistered() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            retries: Family::default(),
            gave_up: Family::default(),
            fault: Arc::default(),
            faulted: Arc::default(),
        }
    }

    /// The origin's fault while its calls keep failing; `None` once one is answered, or once
    /// none has failed for `FAULT_SHOWN_FOR`.
    pub fn fault(&self) -> Option<String> {
        let last = self.fault.lock().ok()?;
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < FAULT_SHOWN_FOR)
            .map(|(_, f)| f.clone())
    }

    fn record<T>(&self, op: &'static str, elapsed: Duration, result: &OriginResult<T>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(OriginError::NoSuchKey | OriginError::NoSuchBucket | OriginError::NoSuchUpload) => "not_found",
            Err(OriginError::PreconditionFailed | OriginError::NotModified { .. }) => "precondition",
            Err(OriginError::InvalidRange { .. } | OriginError::Rejected { .. }) => "rejected",
            Err(OriginError::Transient { .. } | OriginError::Unavailable { .. }) => "transient",
            Err(OriginError::Io(_)) => "io",
        };
        self.requests.get_or_create(&OutcomeLabel { op, outcome }).inc();
        use std::sync::atomic::Ordering;
        let fault = match result {
            Err(e @ (OriginError::Transient { .. } | OriginError::Unavailable { .. })) => {
                Some(Some((Instant::now(), e.to_string())))
            }
            Err(OriginError::Io(_)) => None,
            // An answer: nothing to clear, and no lock taken, unless a fault is held.
            _ if !self.faulted.load(Ordering::Acquire) => None,
            _ => Some(None),
        };
        if let (Some(fault), Ok(mut last)) = (fault, self.fault.lock()) {
            self.faulted.store(fault.is_some(), Ordering::Release);
            *last = fault;
        }
        self.duration
            .get_or_create(&OpLabel { op })
            .observe(elapsed.as_secs_f64());
    }
}

/// How long and how fast to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Give up (503 SlowDown to the client) once this much time has passed since the first attempt.
    pub deadline: Duration,
    /// First backoff; doubles each attempt up to `max_backoff`, and each wait is drawn in [0, backoff].
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            deadline,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// The wait before retry `attempt` (1 for the first): `base_backoff × 2^attempt`, at most
    /// `max_backoff`, drawn in [0, that] (full jitter, so that many clients spread out).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        if backoff_at_cap() {
            return cap;
        }
        cap.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

/// Test-only: `PERCH_TEST_BACKOFF_AT_CAP=1` draws every backoff at its cap, so that a test of
/// retry timing is not a draw. Read once.
fn backoff_at_cap() -> bool {
    static AT_CAP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AT_CAP.get_or_init(|| {
        let at_cap = std::env::var("PERCH_TEST_BACKOFF_AT_CAP").is_ok_and(|v| v == "1");
        if at_cap {
            tracing::warn!(
                "PERCH_TEST_BACKOFF_AT_CAP=1: retries wait their whole backoff, without jitter (for tests only)"
            );
        }
        at_cap
    })
}

tokio::task_local! {
    /// How long the calls of the current task retry transient faults, when less than the
    /// policy's deadline (`retrying_for`).
    static RETRY_FOR: Duration;
}

/// Runs `calls` with their transient origin faults retried for at most `limit` (or the retry
/// deadline, if shorter): no new attempt starts after it, while an attempt under way still runs
/// to its end (cut only at the deadline, as always), so a slow answer is still taken. For the
/// calls people make, never OrioleDB (`Store::asked`).
pub async fn retrying_for<F: Future>(limit: Duration, calls: F) -> F::Output {
    RETRY_FOR.scope(limit, calls).await
}

tokio::task_local! {
    /// The lease each attempt of the current task's calls waits to hold (`fenced`).
    static FENCE: Arc<crate::lease::Lease>;
}

/// Runs `calls` so that each of their attempts, retries of a transient fault included, first
/// waits until `lease` is writable (`Lease::writable`): a primary whose lease turned stale while
/// it retried (a pause, a partition) does not send a request that changes the bucket again until
/// a renewal proves the lease still its own, and never once another holder took it (the process
/// exits). For the calls that change the bucket at the origin (`Store::fenced`), never reads.
pub async fn fenced<F: Future>(lease: Option<Arc<crate::lease::Lease>>, calls: F) -> F::Output {
    match lease {
        Some(lease) => FENCE.scope(lease, calls).await,
        None => calls.await,
    }
}

/// An `Origin` that retries the transient faults of the one inside it.
pub struct RetryingOrigin {
    inner: Arc<dyn Origin>,
    policy: RetryPolicy,
    stats: OriginStats,
}

impl RetryingOrigin {
    pub fn new(inner: Arc<dyn Origin>, policy: RetryPolicy, stats: OriginStats) -> Self {
        Self { inner, policy, stats }
    }

    pub fn inner(&self) -> &Arc<dyn Origin> {
        &self.inner
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
    /// The second value says whether an earlier attempt failed in a way that may have been carried
    /// out all the same (`OriginError::may_have_taken_effect`): its refusal now may be its own doing.
    async fn run<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> (OriginResult<T>, bool)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = OriginResult<T>>,
    {
        let mut start = Instant::now();
        let retry_for = RETRY_FOR
            .try_with(|d| *d)
            .map_or(self.policy.deadline, |d| d.min(self.policy.deadline));
        let mut tries: u32 = 0;
        // Whether an attempt that failed may have been carried out all the same.
        let mut uncertain = false;
        // The fault of the attempt before, told instead of a last attempt the deadline cut.
        let mut earlier: Option<OriginError> = None;
        loop {
            // Every attempt under the lease, the first too (its caller's check may be old by
            // now); the wait for it is no part of the retry deadline: a request held through a
            // stale lease is sent with its whole time left, not answered 503 once it may go.
            if let Ok(lease) = FENCE.try_with(Arc::clone) {
                let held = Instant::now();
                lease.writable().await;
                start += held.elapsed();
            }
            let remaining = self.policy.deadline.saturating_sub(start.elapsed());
            let t = Instant::now();
            // An attempt that hangs is cut at the deadline like any other fault.
            let (result, cut) = match tokio::time::timeout(remaining.max(Duration::from_millis(1)), attempt()).await {
                Ok(r) => (r, false),
                Err(_) => (Err(OriginError::transient(format!("{op} timed out"))), true),
            };
            self.stats.record(op, t.elapsed(), &result);
            let mut err = match result {
                // The origin does not implement what the request asks (S3's answer to a header
                // it does not support): no retry changes that; the client is told at once.
                Err(e) if e.is_not_implemented() => return (Err(e.as_not_implemented()), uncertain),
                Err(e) if e.is_transient() => e,
                other => return (other, uncertain),
            };
            tries += 1;
            uncertain |= err.may_have_taken_effect();
            let elapsed = start.elapsed();
            if elapsed >= retry_for {
                // A last attempt cut short by the deadline says less than the fault that made
                // the attempts go on (an origin's 500, say).
                if cut && let Some(e) = earlier {
                    err = e;
                }
                self.stats.gave_up.get_or_create(&OpLabel { op }).inc();
                tracing::warn!(op, tries, error = %err, "origin still failing at the retry deadline");
                let seconds = retry_for.as_secs();
                return (Err(OriginError::unavailable(seconds, Arc::new(err))), uncertain);
            }
            self.stats.retries.get_or_create(&OpLabel { op }).inc();
            let wait = self.policy.backoff(tries).min(retry_for.saturating_sub(elapsed));
            tracing::debug!(op, tries, ?wait, error = %err, "origin fault, retrying");
            earlier = Some(err);
            tokio::time::sleep(wait).await;
        }
    }
}

/// The quoted hex MD5 S3 gives a single-part object.
pub async fn body_etag(body: &PutBody) -> io::Result<String> {
    let mut md5 = Md5::new();
    let mut stream = body.stream().await?;
    while let Some(chunk) = stream.next().await {
        md5.update(&chunk?);
    }
    Ok(format!("\"{}\"", hex::encode(md5.finalize())))
}

#[async_trait]
impl Origin for RetryingOrigin {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn fault(&self) -> Option<String> {
        self.stats.fault()
    }

    async fn list_buckets(&self) -> OriginResult<Vec<BucketInfo>> {
        self.run("list_buckets", || self.inner.list_buckets()).await.0
    }

    async fn create_bucket(&self, bucket: &str) -> OriginResult<()> {
        self.create_bucket_in(bucket, &NewBucket::default()).await
    }

    async fn create_bucket_in(&self, bucket: &str, new: &NewBucket) -> OriginResult<()> {
        let (result, uncertain) = self
            .run("create_bucket", || self.inner.create_bucket_in(bucket, new))
            .await;
        match result {
            // Our own earlier attempt created it.
            Err(OriginError::Rejected { ref code, .. }) if uncertain && code == "BucketAlreadyOwnedByYou" => Ok(()),
            other => other,
        }
    }

    async fn head_bucket(&self, bucket: &str) -> OriginResult<Option<String>> {
        self.run("head_bucket", || self.inner.head_bucket(bucket)).await.0
    }

    async fn bucket_location(&self, bucket: &str) -> OriginResult<Option<String>> {
        self.run("bucket_location", || self.inner.bucket_location(bucket))
            .await
            .0
    }

    async fn delete_bucket(&self, bucket: &str) -> OriginResult<()> {
        let (result, uncertain) = self.run("delete_bucket", || self.inner.delete_bucket(bucket)).await;
        match result {
            Err(OriginError::NoSuchBucket) if uncertain => Ok(()),
            other => other,
        }
    }

    async fn head_object(&self, bucket: &str, key: &str, conditions: &Conditions) -> OriginResult<ObjectMeta> {
        self.run("head_object", || self.inner.head_object(bucket, key, conditions))
            .await
            .0
    }

    async fn head_part(&self, bucket: &str, key: &str, part: u32) -> OriginResult<PartHead> {
        self.run("head_part", || self.inner.head_part(bucket, key, part))
            .await
            .0
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<GetOutput> {
        self.run("get_object", || self.inner.get_object(bucket, key, range, conditions))
            .await
            .0
    }

    async fn put_object(&self, bucket: &str, key: &str, input: &PutInput) -> OriginResult<PutOutput> {
        let sent = SystemTime::now();
        let (result, uncertain) = self
            .run("put_object", || self.inner.put_object(bucket, key, input))
            .await;
        match result {
            // A conditional PUT whose first attempt landed but whose answer was lost: the retry
            // sees 412. If the origin now holds exactly our body, written since our first attempt
            // was sent, the write is ours and succeeded. (The same body written before it is
            // another writer's: OrioleDB's lock holds the same bytes whoever takes it.)
            Err(OriginError::PreconditionFailed) if uncertain => {
                let ours = body_etag(&input.body).await?;
                let meta = self.head_object(bucket, key, &Conditions::default()).await;
                match meta {
                    Ok(meta) if same_etag(&meta.etag, &ours) && written_since(meta.last_modified, sent) => {
                        Ok(PutOutput {
                            etag: meta.etag,
                            checksums: input.checksums.clone(),
                        })
                    }
                    _ => Err(OriginError::PreconditionFailed),
                }
            }
            other => other,
        }
    }

    async fn delete_object(&self, bucket: &str, key: &str, if_match: Option<&str>) -> OriginResult<()> {
        let (result, uncertain) = self
            .run("delete_object", || self.inner.delete_object(bucket, key, if_match))
            .await;
        match result {
            // A conditional DELETE whose first attempt landed but whose answer was lost: the retry
            // finds no object. It is gone, as asked.
            Err(OriginError::NoSuchKey) if uncertain && if_match.is_some() => Ok(()),
            other => other,
        }
    }

    async fn copy_object(&self, bucket: &str, key: &str, input: &CopyInput) -> OriginResult<CopyOutput> {
        self.run("copy_object", || self.inner.copy_object(bucket, key, input))
            .await
            .0
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> OriginResult<ListPage> {
        self.run("list_objects", || self.inner.list_objects(bucket, query))
            .await
            .0
    }

    async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        extra_headers: &[(String, String)],
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        self.run("create_multipart_upload", || {
            self.inner
                .create_multipart_upload(bucket, key, headers, extra_headers, checksum)
        })
        .await
        .0
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> OriginResult<PutOutput> {
        self.run("upload_part", || {
            self.inner
                .upload_part(bucket, key, upload_id, part_number, body, checksums)
        })
        .await
        .0
    }

    async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> OriginResult<PutOutput> {
        let (result, uncertain) = self
            .run("complete_multipart_upload", || {
                self.inner.complete_multipart_upload(bucket, key, upload_id, parts)
            })
            .await;
        match result {
            // The first attempt completed it but the answer was lost.
            Err(OriginError::NoSuchUpload) if uncertain => {
                let meta = self.head_object(bucket, key, &Conditions::default()).await?;
                Ok(PutOutput {
                    etag: meta.etag,
                    checksums: meta.checksums,
                })
            }
            other => other,
        }
    }

    async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        let (result, uncertain) = self
            .run("abort_multipart_upload", || {
                self.inner.abort_multipart_upload(bucket, key, upload_id)
            })
            .await;
        match result {
            Err(OriginError::NoSuchUpload) if uncertain => Ok(()),
            other => other,
        }
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        self.run("list_parts", || self.inner.list_parts(bucket, key, upload_id))
            .await
            .0
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        self.run("list_multipart_uploads", || {
            self.inner.list_multipart_uploads(bucket, prefix)
        })
        .await
        .0
    }

    // Reading or replacing a whole configuration is idempotent: every one is retried.
    async fn get_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<Document> {
        self.run("get_config", || self.inner.get_config(bucket, key, sub))
            .await
            .0
    }

    async fn put_config(&self, bucket: &str, key: Option<&str>, sub: Subresource, doc: &Document) -> OriginResult<()> {
        self.run("put_config", || self.inner.put_config(bucket, key, sub, doc))
            .await
            .0
    }

    async fn delete_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<()> {
        self.run("delete_config", || self.inner.delete_config(bucket, key, sub))
            .await
            .0
    }
}
