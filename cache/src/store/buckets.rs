//! The `Store`'s bucket calls and configurations: the origin's, passed through, after the pending
//! writes they bear on.

use std::time::Duration;

use super::Store;
use crate::error::StoreResult;
use crate::key::ObjectKey;
use crate::origin::{BucketInfo, Document, ListQuery, OriginError, Subresource};

/// The longest a bucket or configuration call waits for pending writes (`Store::config_wait`).
const CONFIG_WAIT_MAX: Duration = Duration::from_secs(30);

impl Store {
    // ----- buckets (the origin's) -----

    pub async fn list_buckets(&self) -> StoreResult<Vec<BucketInfo>> {
        Ok(self.origin.list_buckets().await?)
    }

    pub async fn create_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.origin.create_bucket(bucket).await?;
        self.known_buckets().insert(bucket.to_owned());
        Ok(())
    }

    pub async fn head_bucket(&self, bucket: &str) -> StoreResult<()> {
        Ok(self.origin.head_bucket(bucket).await?)
    }

    /// The origin decides whether the bucket is empty: first it must hold every write to it.
    /// Perch's own objects (under `.perch/`: the hot set) are no client's: a bucket that holds
    /// nothing else is empty to its clients, so they go with it.
    pub async fn delete_bucket(&self, bucket: &str) -> StoreResult<()> {
        self.settle_bucket(bucket, self.config_wait()).await?;
        self.known_buckets().remove(bucket);
        match self.origin.delete_bucket(bucket).await {
            Err(OriginError::Rejected {
                status: 409,
                code,
                message,
            }) if code == "BucketNotEmpty" => {
                let Some(own) = self.only_perchs_own(bucket).await? else {
                    return Err(OriginError::Rejected {
                        status: 409,
                        code,
                        message,
                    }
                    .into());
                };
                for key in &own {
                    self.origin.delete_object(bucket, key).await?;
                }
                tracing::info!(
                    bucket,
                    objects = own.len(),
                    "removed Perch's own objects to delete the bucket"
                );
                Ok(self.origin.delete_bucket(bucket).await?)
            }
            other => Ok(other?),
        }
    }

    /// The keys `bucket` holds at the origin when all of them are Perch's own (`.perch/`); `None`
    /// when a client's object is among them.
    async fn only_perchs_own(&self, bucket: &str) -> StoreResult<Option<Vec<String>>> {
        let mut own = Vec::new();
        let mut query = ListQuery {
            max_keys: 1000,
            ..Default::default()
        };
        loop {
            let page = self.origin.list_objects(bucket, &query).await?;
            for entry in page.objects {
                if !perch_policy::is_reserved(&entry.key) {
                    return Ok(None);
                }
                own.push(entry.key);
            }
            match page.next {
                Some(next) => query.continuation = Some(next),
                None => return Ok(Some(own)),
            }
        }
    }

    /// How long a bucket call or a configuration call waits for the pending writes it must come
    /// after before its 503 SlowDown: the retry deadline, but never so long that the client's own
    /// read timeout ends the wait first with no answer at all (60 s for botocore and the AWS CLI,
    /// 50 s for the Java SDK). People and their tools make these calls, never OrioleDB, and SDKs
    /// retry a SlowDown.
    fn config_wait(&self) -> Duration {
        self.journal.cfg.wait_limit.min(CONFIG_WAIT_MAX)
    }

    // ----- configurations (the origin's, passed through) -----

    /// A configuration of `bucket` as the origin answers it, or with `key` that object's ACL, once
    /// the origin holds the object's pending writes.
    pub async fn get_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> StoreResult<Document> {
        if let Some(key) = key {
            self.settle(&ObjectKey::new(bucket, key), self.config_wait()).await?;
        }
        Ok(self.origin.get_config(bucket, key, sub).await?)
    }

    /// Replaces a configuration at the origin: an object's ACL once the origin holds the object's
    /// pending writes (further writes of the key wait meanwhile), a bucket's once it holds the
    /// bucket's pending writes when the configuration bears on them (`Subresource::orders_writes`).
    pub async fn put_config(
        &self,
        bucket: &str,
        key: Option<&str>,
        sub: Subresource,
        doc: &Document,
    ) -> StoreResult<()> {
        if let Some(key) = key {
            let okey = ObjectKey::new(bucket, key);
            let _held = self.journal.hold_commits(&[&okey]).await;
            self.settle(&okey, self.config_wait()).await?;
            return Ok(self.origin.put_config(bucket, Some(key), sub, doc).await?);
        }
        if sub.orders_writes() {
            self.settle_bucket(bucket, self.config_wait()).await?;
        }
        Ok(self.origin.put_config(bucket, None, sub, doc).await?)
    }

    /// Removes a bucket configuration at the origin, after the bucket's pending writes as for
    /// `put_config`.
    pub async fn delete_config(&self, bucket: &str, sub: Subresource) -> StoreResult<()> {
        if sub.orders_writes() {
            self.settle_bucket(bucket, self.config_wait()).await?;
        }
        Ok(self.origin.delete_config(bucket, sub).await?)
    }
}
