//! The `Store`'s bucket calls and configurations: the origin's, passed through, after the pending
//! writes they bear on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use perch_policy::is_reserved;

use super::Store;
use crate::error::{CacheError, StoreResult};
use crate::journal::Held;
use crate::key::ObjectKey;
use crate::origin::{
    BucketInfo, Conditions, Document, ListQuery, NewBucket, Origin, OriginError, OriginResult, Subresource,
    tags_document,
};

/// The longest a bucket or configuration call waits for pending writes (`Store::config_wait`).
const CONFIG_WAIT_MAX: Duration = Duration::from_secs(30);

/// A bucket holding more objects than this under Perch's prefix is not Perch's alone: a
/// DeleteBucket removes Perch's own objects only from a bucket that holds nothing else.
const PERCHS_OBJECTS_MAX: usize = 100;

/// The longest a bucket or configuration call retries the origin's faults (`Store::asked`).
const ASKED_MAX: Duration = Duration::from_secs(10);

impl Store {
    // ----- buckets (the origin's) -----

    pub async fn list_buckets(&self) -> StoreResult<Vec<BucketInfo>> {
        Ok(self.asked(self.origin.list_buckets()).await?)
    }

    /// The origin's buckets for Perch's own use (which to prewarm at start): retried for the
    /// whole retry deadline, not cut short as a client's ListBuckets is.
    pub async fn origin_buckets(&self) -> StoreResult<Vec<BucketInfo>> {
        Ok(self.origin.list_buckets().await?)
    }

    /// CreateBucket, with the client's `LocationConstraint` for the origin to take or refuse.
    pub async fn create_bucket(&self, bucket: &str, new: &NewBucket) -> StoreResult<()> {
        let since = self.buckets.deletes(bucket);
        self.fenced(self.asked(self.origin.create_bucket_in(bucket, new)))
            .await?;
        // Unless a DeleteBucket was sent meanwhile (`ensure_bucket` asks again then).
        let _ = self.buckets.seen(bucket, since).await;
        Ok(())
    }

    /// HeadBucket: the bucket's region, as the origin names it.
    pub async fn head_bucket(&self, bucket: &str) -> StoreResult<Option<String>> {
        Ok(self.asked(self.origin.head_bucket(bucket)).await?)
    }

    /// GetBucketLocation: the origin's answer (`None`: us-east-1, or no regions).
    pub async fn bucket_location(&self, bucket: &str) -> StoreResult<Option<String>> {
        Ok(self.asked(self.origin.bucket_location(bucket)).await?)
    }

    /// The origin decides whether the bucket is empty: first it must hold every write to it.
    /// Perch's own objects (the hot set, a storage class probe a kill left behind) are no
    /// client's: a bucket that holds nothing else is empty to its clients, so they go with it.
    /// The lease (`.perch/lease`) does not: a bucket a primary holds is not deleted from under it.
    pub async fn delete_bucket(self: &Arc<Self>, bucket: &str) -> StoreResult<()> {
        // No write into the bucket is acknowledged from here until the origin's answer: one
        // committed after the wait below would be refused at its upload for good. The gate goes
        // with the request's own task, which runs to the origin's answer even if its client hangs
        // up: the origin may delete the bucket whenever the request reaches it.
        let gate = self.bucket_gate(bucket).write_owned().await;
        let store = self.clone();
        let bucket = bucket.to_owned();
        super::joined(tokio::spawn(async move {
            let deleted = store.delete_bucket_at_origin(&bucket).await;
            // On an error, unless the origin said it holds the bucket still
            // (`delete_bucket_at_origin`), the answer may have come after the origin deleted it:
            // its mark stays.
            if deleted.is_ok() {
                let owned = bucket.clone();
                match store.local.blocking(move |l| l.forget_bucket(&owned)).await? {
                    Ok(()) => store.buckets.forgotten(&bucket).await,
                    Err(error) => tracing::warn!(bucket, %error, "cannot drop a deleted bucket's cached objects"),
                }
            }
            drop(gate);
            deleted
        }))
        .await?
    }

    async fn delete_bucket_at_origin(&self, bucket: &str) -> StoreResult<()> {
        // A write of it the origin refused: no need to wait for the rest.
        if !self.journal.refused_in(bucket) {
            self.settle_bucket(bucket, self.config_wait()).await?;
        }
        if self.journal.pending_in(bucket) {
            // Left after the wait: writes the origin refused, or that wait behind a refusal.
            // Objects clients read and list here, which the origin does not have: the bucket is
            // not empty (it used to wait for them and answer 503 SlowDown, at every try).
            return Err(OriginError::rejected(
                409,
                "BucketNotEmpty",
                "The bucket you tried to delete is not empty: it holds writes the origin refused, or that wait \
                 behind one, kept by Perch (perch status; perch journal retry or drop)",
            )
            .into());
        }
        // A primary whose lease is not writable (a stale one, or one that lost it) changes nothing
        // in the bucket.
        self.fence().await;
        // From here the bucket may be gone, whatever becomes of this request and of Perch.
        self.buckets.mark(bucket).await.map_err(CacheError::Io)?;
        let answer = self.fenced(self.asked(self.origin.delete_bucket(bucket))).await;
        self.buckets.sent(bucket);
        match answer {
            Err(OriginError::Rejected {
                status: 409,
                code,
                message,
            }) if code == "BucketNotEmpty" => {
                // The origin holds the bucket still.
                self.buckets.kept(bucket).await;
                let Some(own) = self.only_perchs_objects(bucket).await? else {
                    return Err(OriginError::Rejected {
                        status: 409,
                        code,
                        message,
                    }
                    .into());
                };
                tracing::info!(
                    bucket,
                    objects = own.len(),
                    "removing Perch's own objects to delete the bucket"
                );
                for key in &own {
                    self.fenced(self.asked(self.origin.delete_object(bucket, key, None)))
                        .await?;
                }
                self.buckets.mark(bucket).await.map_err(CacheError::Io)?;
                let answer = self.fenced(self.asked(self.origin.delete_bucket(bucket))).await;
                self.buckets.sent(bucket);
                match answer {
                    // Written again meanwhile: the client's answer is the origin's.
                    Err(OriginError::Rejected { status: 409, .. }) => {
                        self.buckets.kept(bucket).await;
                        Err(OriginError::Rejected {
                            status: 409,
                            code,
                            message,
                        }
                        .into())
                    }
                    other => Ok(other?),
                }
            }
            other => Ok(other?),
        }
    }

    /// The objects `bucket` holds at the origin if every one is Perch's own, under its reserved
    /// prefix, which clients never see nor write (the hot set, a storage class probe a kill left
    /// behind), and none is a primary's lease; `None` if it holds anything else.
    async fn only_perchs_objects(&self, bucket: &str) -> StoreResult<Option<Vec<String>>> {
        let query = ListQuery {
            max_keys: PERCHS_OBJECTS_MAX,
            ..Default::default()
        };
        let page = self.asked(self.origin.list_objects(bucket, &query)).await?;
        let own = page.next.is_none()
            && page
                .objects
                .iter()
                .all(|o| is_reserved(&o.key) && o.key != crate::LEASE_KEY);
        Ok(own.then(|| page.objects.into_iter().map(|o| o.key).collect()))
    }

    /// How long a bucket call or a configuration call waits for the pending writes it must come
    /// after before its 503 SlowDown: the retry deadline, but never so long that the client's own
    /// read timeout ends the wait first with no answer at all (60 s for botocore and the AWS CLI,
    /// 50 s for the Java SDK). People and their tools make these calls, never OrioleDB, and SDKs
    /// retry a SlowDown.
    fn config_wait(&self) -> Duration {
        self.journal.cfg.wait_limit.min(CONFIG_WAIT_MAX)
    }

    /// A bucket or configuration call to the origin, its transient faults retried for at most
    /// `ASKED_MAX` (or the retry deadline, if shorter), then 503 SlowDown: people and their tools
    /// make these calls, never OrioleDB; an SDK retries a SlowDown itself, and a person waits for
    /// the answer. An attempt under way is not cut short: a slow origin's answer is still taken
    /// (a CreateBucket cut short and sent again would find its own bucket). OrioleDB's own
    /// requests retry for the whole deadline (ADR 0003).
    pub(super) async fn asked<T>(&self, call: impl Future<Output = OriginResult<T>>) -> OriginResult<T> {
        crate::origin::retry::retrying_for(ASKED_MAX, call).await
    }

    /// `asked`, for a request about `okey`'s `sub` (its ACL or tags) while `held` holds its
    /// commits: on its own task, to its end, with the hold, even if the client goes: the origin
    /// may apply it whenever it arrives, after a write of the key acknowledged meanwhile (as
    /// `Store::decide`). A change of its tags changes what a GET of it answers (their count,
    /// `x-amz-tagging-count`), so it is decided as a conditional write is: every copy of the
    /// object kept here goes first, and no fill keeps one until the origin has answered.
    async fn asked_holding<T, F, Fut>(&self, okey: ObjectKey, sub: Subresource, held: Held, call: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Origin>) -> Fut + Send + 'static,
        Fut: Future<Output = OriginResult<T>> + Send + 'static,
    {
        let retried = move |origin| crate::origin::retry::retrying_for(ASKED_MAX, call(origin));
        self.fence().await;
        if sub == Subresource::Tagging {
            return self.decide(okey, held, retried).await;
        }
        let lease = self.journal.cfg.lease.clone();
        let request = crate::origin::retry::fenced(lease, retried(self.origin.clone()));
        super::to_its_end(request, held, None).await
    }

    // ----- configurations (the origin's, passed through) -----

    /// A configuration of `bucket` as the origin answers it, or with `key` that object's ACL, once
    /// the origin holds the object's pending writes.
    pub async fn get_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> StoreResult<Document> {
        if let Some(key) = key {
            if let Some(r) = &self.replica {
                return Ok(self.asked(r.object_config(bucket, key, sub)).await?);
            }
            self.settle(&ObjectKey::new(bucket, key), self.config_wait()).await?;
        }
        Ok(self.asked(self.origin.get_config(bucket, key, sub)).await?)
    }

    /// An object's tags (GetObjectTagging): while the object has writes the origin does not hold
    /// yet, those its newest write gave it, at once (PutObjectTagging waits for those writes), so
    /// that a copy that asks for them (the AWS CLI's of 8 MiB and more) never waits for an
    /// upload; 404 for a key whose newest write deletes it; else the origin's (the replica's view
    /// on a replica).
    pub async fn object_tagging(&self, bucket: &str, key: &str) -> StoreResult<Document> {
        if self.replica.is_none() && self.journal.has_pending(&ObjectKey::new(bucket, key)) {
            let (meta, _) = self.head(bucket, key, &Conditions::default()).await?;
            return Ok(tags_document(&meta.headers.tags));
        }
        self.get_config(bucket, Some(key), Subresource::Tagging).await
    }

    /// Replaces a configuration at the origin: an object's ACL or tags once the origin holds the
    /// object's pending writes (further writes of the key wait meanwhile), a bucket's once it holds the
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
            let held = self.journal.hold_commits(&[&okey]).await;
            self.settle(&okey, self.config_wait()).await?;
            let (bucket, key, doc) = (bucket.to_owned(), key.to_owned(), doc.clone());
            return self
                .asked_holding(okey, sub, held, move |origin| async move {
                    origin.put_config(&bucket, Some(&key), sub, &doc).await
                })
                .await;
        }
        if sub.orders_writes() {
            self.settle_bucket(bucket, self.config_wait()).await?;
        }
        Ok(self
            .fenced(self.asked(self.origin.put_config(bucket, None, sub, doc)))
            .await?)
    }

    /// Removes a configuration at the origin (with `key`, that object's tags), after the pending
    /// writes it bears on, as for `put_config`.
    pub async fn delete_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> StoreResult<()> {
        if let Some(key) = key {
            let okey = ObjectKey::new(bucket, key);
            let held = self.journal.hold_commits(&[&okey]).await;
            self.settle(&okey, self.config_wait()).await?;
            let (bucket, key) = (bucket.to_owned(), key.to_owned());
            return self
                .asked_holding(okey, sub, held, move |origin| async move {
                    origin.delete_config(&bucket, Some(&key), sub).await
                })
                .await;
        }
        if sub.orders_writes() {
            self.settle_bucket(bucket, self.config_wait()).await?;
        }
        Ok(self
            .fenced(self.asked(self.origin.delete_config(bucket, None, sub)))
            .await?)
    }
}
