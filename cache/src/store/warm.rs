//! The `Store`'s hot set and readiness: the hot set a primary leaves in each bucket, the prewarm
//! a start with an empty cache does from it, and `/readyz`, which waits for that prewarm a while.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Store;
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
            hot_set::write(self.upload_origin.as_ref(), bucket, objects).await?;
            named += objects.len();
        }
        Ok(named)
    }

    /// Whether the cache holds nothing (a new volume, or one that lost its cache).
    pub fn cache_is_empty(&self) -> bool {
        self.local.index.is_empty().unwrap_or(false)
    }

    /// Queues the objects of the hot sets of `buckets` for prewarming (lowest priority, within
    /// the prefetch budget, never evicting); returns how many were queued.
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
    /// not yet.
    pub fn hold_ready_for_prewarm(&self, wait: Duration) {
        *lock(&self.prewarm_until) = Some(std::time::Instant::now() + wait);
    }

    /// Whether prewarm fetches are still queued or under way.
    pub fn prewarming(&self) -> bool {
        self.prefetcher.outstanding(Reason::Prewarm) > 0
    }

    /// Ready to serve: the origin answers, and a prewarm is done (or has had its time).
    pub async fn ready(&self) -> Result<(), String> {
        let until = *lock(&self.prewarm_until);
        if let Some(until) = until {
            if std::time::Instant::now() < until && (self.prewarming() || self.prewarm_reading.load(Ordering::SeqCst)) {
                return Err("prewarming from the hot set".into());
            }
            *lock(&self.prewarm_until) = None;
        }
        self.origin_ready()
            .await
            .map_err(|e| format!("origin unreachable: {e}"))
    }
}
