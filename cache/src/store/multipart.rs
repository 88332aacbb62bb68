//! The `Store`'s multipart uploads: staged on the data dir, completed into one version with its part
//! layout; on a replica, passed to its overlay.

use std::time::{Duration, SystemTime};

use super::Store;
use crate::body::PromisedDigest;
use crate::error::StoreResult;
use crate::key::ObjectKey;
use crate::origin::{
    Checksums, CompletedPart, ContentHeaders, Expected, MultipartChecksum, ObjectMeta, OriginError, PartInfo, PutBody,
    PutOutput, UploadInfo,
};

impl Store {
    pub async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        checksum: Option<MultipartChecksum>,
    ) -> StoreResult<String> {
        self.ensure_bucket(bucket).await?;
        if let Some(r) = &self.replica {
            return Ok(r.create_multipart_upload(bucket, key, headers, checksum).await?);
        }
        self.check_carried(bucket, headers.storage_class.as_deref(), !headers.tags.is_empty())
            .await?;
        self.multipart.create(bucket, key, headers, checksum).await
    }

    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> StoreResult<PutOutput> {
        self.ensure_bucket(bucket).await?;
        if let Some(r) = &self.replica {
            return Ok(r
                .upload_part(bucket, key, upload_id, part_number, body, checksums)
                .await?);
        }
        // The staging area copies the part: its bytes once more on the data dir's filesystem. A
        // copy a full disk cut (someone else took the room meanwhile) leaves nothing, and the
        // body is still whole in its spool file: it is tried again once there is room.
        let deadline = std::time::Instant::now() + self.journal.cfg.dirty_wait_max;
        loop {
            self.journal.wait_for_disk(body.len()).await?;
            match self
                .multipart
                .upload_part(bucket, key, upload_id, part_number, body, checksums)
                .await
            {
                Err(crate::error::StoreError::Origin(OriginError::Io(e)))
                    if crate::local::room::is_no_space(&e) && std::time::Instant::now() < deadline =>
                {
                    tracing::warn!(error = %e, "the data dir's filesystem is full: a part waits for room");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other,
            }
        }
    }

    /// Folds the staged parts into one object, committed as one version that records its part
    /// layout (it is uploaded with the same layout, so the origin ends with the same ETag and
    /// checksums the client is given here).
    pub async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expected: &Expected,
    ) -> StoreResult<PutOutput> {
        self.ensure_bucket(bucket).await?;
        if let Some(r) = &self.replica {
            return Ok(r
                .complete_multipart_upload(bucket, key, upload_id, parts, expected)
                .await?);
        }
        // A completion sent again (its answer was lost, or the client gave up waiting): the
        // first one's answer, once it has one. Upload ids are never reused, so an id completed
        // here is in the staging area no more.
        let _completing = self.claim_upload(upload_id).await?;
        if let Some(output) = self.multipart.completed_before(bucket, key, upload_id) {
            return Ok(output);
        }
        // The staging area folds the parts into one object, which is then read out: twice the
        // parts' bytes, on the data dir's filesystem.
        let staged = self.multipart.staged_bytes(bucket, key, upload_id).await?;
        self.journal.wait_for_disk(staged.saturating_mul(2)).await?;
        let temp = self.local.blobs.temp_path();
        let done = self
            .multipart
            .complete(bucket, key, upload_id, parts, expected, &temp)
            .await?;
        let meta = ObjectMeta {
            last_modified: SystemTime::now(),
            ..done.meta
        };
        let okey = ObjectKey::new(bucket, key);
        let digest = PromisedDigest::Ready(done.body.digest);
        self.put_version(&okey, done.body.body, meta, false, digest, Some(done.layout))
            .await?;
        self.multipart.finish(upload_id).await;
        self.multipart.remember_completed(bucket, key, upload_id, &done.output);
        Ok(done.output)
    }

    /// Aborts the multipart uploads begun more than `age` ago and not completed (staged here, or
    /// in a replica's overlay), as an AbortIncompleteMultipartUpload lifecycle rule would at the
    /// origin: their parts would otherwise hold the data dir's room for good. Returns how many.
    pub async fn expire_uploads(&self, age: Duration) -> StoreResult<usize> {
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
        let aborted = match &self.replica {
            Some(r) => r.expire_uploads(cutoff).await?,
            None => self.multipart.expire(cutoff).await?,
        };
        if aborted > 0 {
            tracing::info!(
                aborted,
                age_s = age.as_secs(),
                "multipart uploads never completed were aborted"
            );
        }
        Ok(aborted)
    }

    /// Aborts an upload, once no completion of it is under way: after one, the upload is gone
    /// (404 NoSuchUpload, as S3 answers), never told aborted while its object is committed.
    pub async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<()> {
        self.ensure_bucket(bucket).await?;
        if let Some(r) = &self.replica {
            return Ok(r.abort_multipart_upload(bucket, key, upload_id).await?);
        }
        let _claimed = self.claim_upload(upload_id).await?;
        if self.multipart.completed_before(bucket, key, upload_id).is_some() {
            return Err(OriginError::NoSuchUpload.into());
        }
        self.multipart.abort(bucket, key, upload_id).await
    }

    /// `upload_id`, for a completion or an abort, once no other completion of it is under way;
    /// `Timeout` past the wait limit.
    async fn claim_upload(&self, upload_id: &str) -> StoreResult<crate::multipart::Completing<'_>> {
        let limit = self.journal.cfg.wait_limit;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(claimed) = self.multipart.start_completing(upload_id) {
                return Ok(claimed);
            }
            if std::time::Instant::now() >= deadline {
                return Err(crate::error::StoreError::Timeout(limit));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<Vec<PartInfo>> {
        self.ensure_bucket(bucket).await?;
        if let Some(r) = &self.replica {
            return Ok(r.list_parts(bucket, key, upload_id).await?);
        }
        self.multipart.list_parts(bucket, key, upload_id).await
    }

    /// The checksum an upload's object will keep (ListParts names it).
    pub async fn upload_checksum(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> StoreResult<Option<MultipartChecksum>> {
        if let Some(r) = &self.replica {
            return Ok(r.upload_checksum(bucket, key, upload_id).await?);
        }
        self.multipart.upload_checksum(bucket, key, upload_id).await
    }

    /// The uploads staged in Perch (not any made directly at the origin).
    pub async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.ensure_bucket(bucket).await?;
        if let Some(r) = &self.replica {
            return Ok(r.list_multipart_uploads(bucket, prefix).await?);
        }
        self.multipart.list_uploads(bucket, prefix).await
    }
}
