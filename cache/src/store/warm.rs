//! The `Store`'s hot set and readiness: the hot set a primary leaves in each bucket, the prewarm
//! a start with an empty cache does from it, and `/readyz`, which waits for that prewarm a while.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{NotReady, Store};
use crate::error::{CacheError, StoreResult};
use crate::hot_set;
use crate::local::lock;
use crate::prefetch::Reason;

/// Clears a flag when dropped.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Objects a hot set names at most.
const HOT_SET_KEYS: usize = 100_000;
/// How long the answer of an adopted probe stands for the origin's (once).
const ADOPTED_PROBE_FRESH: Duration = Duration::from_secs(2);

impl Store {
    // ----- the hot set (hot_set.rs) -----

    /// Writes the hot set of every bucket with recent reads to its `.perch/hot-set` (a primary's
    /// job, never a replica's); returns how many objects it names.
    pub async fn record_hot_set(&self) -> StoreResult<usize> {
        let local = self.local.clone();
        let bytes = self.prefetch_bytes;
        let sets = tokio::task::spawn_blocking(move || hot_set::collect(&local, HOT_SET_KEYS, bytes))
            .await
            .map_err(|e| CacheError::Io(std::io::Error::other(e)))??;
        let mut named = 0;
        for (bucket, objects) in &sets {
            // Not while a DeleteBucket of the bucket is on its way (the hot set, landing first,
            // made it BucketNotEmpty), nor into one it may have removed.
            let gate = self.bucket_gate(bucket);
            let _gate = gate.read().await;
            if self.buckets.marked(bucket) {
                continue;
            }
            // Not by a primary whose lease is not writable (stale, or lost).
            self.fence().await;
            hot_set::write(self.unretried_origin.as_ref(), bucket, objects).await?;
            named += objects.len();
        }
        Ok(named)
    }

    /// Whether the cache holds nothing (a new volume, or one that lost its cache).
    pub fn cache_is_empty(&self) -> bool {
        self.local.index.is_empty().unwrap_or(false)
    }

    /// Queues the objects of the hot sets of `buckets` for prewarming (lowest priority, within
    /// the prefetch budget, never evicting); returns how many were queued. Call it after
    /// `hold_ready_for_prewarm`, even with no bucket: it ends the hold's reading phase.
    pub async fn prewarm(&self, buckets: &[String]) -> usize {
        self.prewarm_reading.store(true, Ordering::SeqCst);
        let _done = ClearOnDrop(&self.prewarm_reading);
        let mut queued = 0;
        for bucket in buckets {
            match hot_set::read(self.origin.as_ref(), bucket).await {
                Ok(Some(objects)) => {
                    tracing::info!(bucket, objects = objects.len(), "prewarming from the hot set");
                    queued += objects.len();
                    self.prefetcher.prewarm(bucket, &objects);
                }
                Ok(None) => tracing::info!(bucket, "no hot set to prewarm from"),
                Err(e) => tracing::warn!(bucket, error = %e, "cannot read the hot set"),
            }
        }
        queued
    }

    /// A prewarm is about to start: until it is done, or until `wait` has passed, `ready` says
    /// not yet. Reading the hot sets counts from now on, before the task that calls `prewarm` has
    /// run (or listed the buckets): a `/readyz` in between must not say ready.
    pub fn hold_ready_for_prewarm(&self, wait: Duration) {
        self.prewarm_reading.store(true, Ordering::SeqCst);
        *lock(&self.prewarm_until) = Some(std::time::Instant::now() + wait);
    }

    /// Whether prewarm fetches are still queued or under way.
    pub fn prewarming(&self) -> bool {
        self.prefetcher.outstanding(Reason::Prewarm) > 0
    }

    /// Ready to serve: the origin answers, and a prewarm is done (or has had its time).
    pub async fn ready(&self) -> Result<(), NotReady> {
        let until = *lock(&self.prewarm_until);
        if let Some(until) = until {
            if std::time::Instant::now() < until && (self.prewarming() || self.prewarm_reading.load(Ordering::SeqCst)) {
                return Err(NotReady::Prewarming);
            }
            *lock(&self.prewarm_until) = None;
        }
        let mut adopted = self.origin_probe.lock().await;
        if adopted.take().is_some_and(|at| at.elapsed() < ADOPTED_PROBE_FRESH) {
            return Ok(());
        }
        self.origin_ready().await
    }

    /// Adopts `probe`, a readiness probe of the origin started with the process (its connection
    /// set up while the store opened): the first `/readyz` waits for it instead of asking the
    /// origin again, which on a new connection costs a wake several round trips. Call it before
    /// the admin listener serves.
    pub fn adopt_origin_probe<F>(&self, probe: F)
    where
        F: std::future::Future<Output = Result<(), NotReady>> + Send + 'static,
    {
        let Ok(mut slot) = self.origin_probe.clone().try_lock_owned() else {
            return;
        };
        tokio::spawn(async move {
            match probe.await {
                Ok(()) => *slot = Some(std::time::Instant::now()),
                Err(e) => tracing::info!(error = %e, "the origin did not answer the first readiness probe"),
            }
        });
    }
}
