//! `Multipart`: client multipart uploads staged locally until completed, in a directory store under
//! `<data-dir>/multipart` (the same code as the directory origin, so the same checks and checksum
//! rules). A completion folds the parts there and hands the object and its part layout out, to
//! become one version uploaded with the same layout; the upload goes only once that version is
//! committed, so a crash before leaves it to be completed again, as S3 keeps an upload whose
//! completion failed.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::body::{Spooled, spool};
use crate::error::StoreResult;
use crate::journal::record::PartLayout;
use crate::key::ObjectKey;
use crate::origin::{
    Checksums, CompletedPart, ContentHeaders, Expected, FsOrigin, MultipartChecksum, ObjectMeta, Origin, OriginError,
    PartInfo, PutBody, PutOutput, UploadInfo,
};

pub(crate) struct Multipart {
    staging: Arc<FsOrigin>,
    /// Completions of one key run one at a time: the staging area folds an upload into the key's
    /// object, which is read out before the next completion of that key may fold another.
    folding: Vec<tokio::sync::Mutex<()>>,
    /// The last uploads completed here, newest last: a completion repeated (a client that lost
    /// the first answer retries it) gets the same answer, as on S3, instead of NoSuchUpload.
    completed: std::sync::Mutex<VecDeque<(String, ObjectKey, PutOutput)>>,
    /// Uploads whose completion is under way (it may wait on the origin, for a write-through
    /// key): the same completion sent again meanwhile waits for the first one's answer.
    completing: std::sync::Mutex<HashSet<String>>,
}

/// A completion under way (`Multipart::start_completing`), until dropped.
pub(crate) struct Completing<'a> {
    multipart: &'a Multipart,
    upload_id: String,
}

impl Drop for Completing<'_> {
    fn drop(&mut self) {
        let mut completing = self.multipart.completing.lock().unwrap_or_else(|e| e.into_inner());
        completing.remove(&self.upload_id);
    }
}

/// How many completed uploads `Multipart` remembers for a repeated completion.
const COMPLETED_REMEMBERED: usize = 1024;

/// A completed upload, read out of the staging area.
pub(crate) struct Completed {
    pub output: PutOutput,
    pub meta: ObjectMeta,
    pub body: Spooled,
    pub layout: Vec<PartLayout>,
}

impl Multipart {
    pub(crate) fn open(dir: &Path) -> std::io::Result<Multipart> {
        let staging = FsOrigin::open(dir)?;
        // A completion folds its upload into an object here and reads it out at once
        // (`complete`): one found at open is what a kill in between left, as large as the upload.
        // Only space: a failure is no reason not to start.
        let (removed, failed) = staging.remove_every_object();
        if removed > 0 {
            tracing::info!(
                objects = removed,
                "removed the folded objects of completions a stop cut short"
            );
        }
        if let Some(error) = failed {
            tracing::warn!(%error, "cannot remove a folded object of a completion a stop cut short");
        }
        Ok(Multipart {
            staging: Arc::new(staging),
            folding: (0..16).map(|_| tokio::sync::Mutex::new(())).collect(),
            completed: Default::default(),
            completing: Default::default(),
        })
    }

    /// Makes sure the staging area has a bucket named `bucket`.
    async fn bucket(&self, bucket: &str) -> StoreResult<()> {
        match self.staging.create_bucket(bucket).await {
            Ok(()) | Err(OriginError::Rejected { status: 409, .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn create(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        checksum: Option<MultipartChecksum>,
    ) -> StoreResult<String> {
        self.bucket(bucket).await?;
        Ok(self
            .staging
            .create_multipart_upload(bucket, key, headers, &[], checksum)
            .await?)
    }

    pub(crate) async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> StoreResult<PutOutput> {
        self.bucket(bucket).await?;
        Ok(self
            .staging
            .upload_part(bucket, key, upload_id, part_number, body, checksums)
            .await?)
    }

    /// The bytes of the parts staged for `upload_id`.
    pub(crate) async fn staged_bytes(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<u64> {
        self.bucket(bucket).await?;
        let parts = self.staging.list_parts(bucket, key, upload_id).await?;
        Ok(parts.iter().map(|p| p.size).sum())
    }

    /// Folds the parts named into the object and reads it out into `temp` (with its digest),
    /// with the layout of those parts.
    pub(crate) async fn complete(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expected: &Expected,
        temp: &Path,
    ) -> StoreResult<Completed> {
        self.bucket(bucket).await?;
        let stripe = (ObjectKey::new(bucket, key).hash64() % self.folding.len() as u64) as usize;
        let _one_at_a_time = self.folding[stripe].lock().await;
        // The layout of the parts named, before the staging area folds them into one object.
        let listed = self.staging.list_parts(bucket, key, upload_id).await?;
        // The upload stays until its version is committed (`finish`).
        let output = self
            .staging
            .fold_upload(bucket, key, upload_id, parts, expected)
            .await?;
        crate::journal::fail_point("upload_folded");
        crate::journal::pause_point_async("upload_folded").await;
        let layout = parts
            .iter()
            .map(|p| {
                let part = listed.iter().find(|l| l.part_number == p.part_number).ok_or_else(|| {
                    OriginError::rejected(
                        400,
                        "InvalidPart",
                        "One or more of the specified parts could not be found.",
                    )
                })?;
                Ok(PartLayout {
                    size: part.size,
                    checksums: part.checksums.clone(),
                })
            })
            .collect::<Result<Vec<_>, OriginError>>();
        let staged = self.staging.get_object(bucket, key, None, &Default::default()).await;
        let read = match staged {
            Ok(staged) => spool(staged.body, staged.meta.size, temp)
                .await
                .map(|body| (staged.meta, body))
                .map_err(OriginError::Io),
            Err(e) => Err(e),
        };
        if let Err(error) = self.staging.delete_object(bucket, key, None).await {
            // Only space, and taken back at the next start (`open`).
            tracing::warn!(bucket, key, %error, "cannot remove a folded upload from the staging area");
        }
        let (meta, body) = read?;
        Ok(Completed {
            output,
            meta,
            body,
            layout: layout?,
        })
    }

    /// Removes an upload whose object's version is committed.
    pub(crate) async fn finish(&self, upload_id: &str) {
        self.staging.remove_upload(upload_id).await;
    }

    /// Marks `upload_id`'s completion as under way; `None` when one already is.
    pub(crate) fn start_completing(&self, upload_id: &str) -> Option<Completing<'_>> {
        let mut completing = self.completing.lock().unwrap_or_else(|e| e.into_inner());
        completing.insert(upload_id.to_owned()).then(|| Completing {
            multipart: self,
            upload_id: upload_id.to_owned(),
        })
    }

    /// Notes that `upload_id` completed into `bucket/key` with `output`.
    pub(crate) fn remember_completed(&self, bucket: &str, key: &str, upload_id: &str, output: &PutOutput) {
        let mut completed = self.completed.lock().unwrap_or_else(|e| e.into_inner());
        if completed.len() == COMPLETED_REMEMBERED {
            completed.pop_front();
        }
        completed.push_back((upload_id.to_owned(), ObjectKey::new(bucket, key), output.clone()));
    }

    /// The answer `upload_id` was given when it completed into `bucket/key`, if it did lately.
    pub(crate) fn completed_before(&self, bucket: &str, key: &str, upload_id: &str) -> Option<PutOutput> {
        let okey = ObjectKey::new(bucket, key);
        let completed = self.completed.lock().unwrap_or_else(|e| e.into_inner());
        completed
            .iter()
            .rev()
            .find(|(id, k, _)| id == upload_id && *k == okey)
            .map(|(_, _, out)| out.clone())
    }

    pub(crate) async fn abort(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<()> {
        self.bucket(bucket).await?;
        Ok(self.staging.abort_multipart_upload(bucket, key, upload_id).await?)
    }

    pub(crate) async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> StoreResult<Vec<PartInfo>> {
        self.bucket(bucket).await?;
        Ok(self.staging.list_parts(bucket, key, upload_id).await?)
    }

    pub(crate) async fn upload_checksum(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> StoreResult<Option<MultipartChecksum>> {
        Ok(self.staging.upload_checksum(bucket, key, upload_id).await?)
    }

    /// Aborts every upload begun before `cutoff` whose completion is not under way; returns how
    /// many.
    pub(crate) async fn expire(&self, cutoff: SystemTime) -> StoreResult<usize> {
        Ok(abort_begun_before(&self.staging, cutoff, |id| self.start_completing(id)).await?)
    }

    pub(crate) async fn list_uploads(&self, bucket: &str, prefix: &str) -> StoreResult<Vec<UploadInfo>> {
        self.bucket(bucket).await?;
        Ok(self.staging.list_multipart_uploads(bucket, prefix).await?)
    }
}

/// Aborts the uploads `staging` holds that began before `cutoff`, each while holding what
/// `claim` gives for its id (none: it is busy, and stays); returns how many went.
pub(crate) async fn abort_begun_before<G>(
    staging: &FsOrigin,
    cutoff: SystemTime,
    claim: impl Fn(&str) -> Option<G>,
) -> Result<usize, OriginError> {
    let mut aborted = 0;
    for bucket in staging.list_buckets().await? {
        for upload in staging.list_multipart_uploads(&bucket.name, "").await? {
            if upload.initiated >= cutoff {
                continue;
            }
            let Some(_claimed) = claim(&upload.upload_id) else {
                continue;
            };
            match staging
                .abort_multipart_upload(&bucket.name, &upload.key, &upload.upload_id)
                .await
            {
                Ok(()) => aborted += 1,
                Err(OriginError::NoSuchUpload) => {}
                // The others still go; this one is tried again at the next pass.
                Err(error) => tracing::warn!(
                    upload = %upload.upload_id,
                    %error,
                    "cannot expire a multipart upload"
                ),
            }
        }
    }
    Ok(aborted)
}
