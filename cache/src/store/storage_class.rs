//! Storage classes on writes: a write that names a class other than STANDARD is acknowledged only
//! in a bucket whose origin was seen to take that class, so that its upload is never refused for it.

use bytes::Bytes;
use perch_policy::RESERVED_PREFIX;

use super::Store;
use crate::error::StoreResult;
use crate::local::lock;
use crate::origin::{ContentHeaders, PutBody, PutInput};

impl Store {
    /// Checks, before a write that names `class` is acknowledged (PutObject,
    /// CreateMultipartUpload, CopyObject), that the origin takes it in `bucket`: the first time a
    /// bucket and a class meet, by writing an empty object of that class under Perch's prefix
    /// (`.perch/storage-class/CLASS`) and deleting it. The origin's refusal (S3's 400
    /// InvalidStorageClass for a class it does not offer) is the client's answer, and nothing is
    /// stored. A replica's writes stay in its overlay: nothing to check.
    pub async fn check_storage_class(&self, bucket: &str, class: Option<&str>) -> StoreResult<()> {
        let Some(class) = class else {
            return Ok(());
        };
        if self.replica.is_some() {
            return Ok(());
        }
        let seen = (bucket.to_owned(), class.to_owned());
        if lock(&self.storage_classes).contains(&seen) {
            return Ok(());
        }
        self.ensure_bucket(bucket).await?;
        let key = format!("{RESERVED_PREFIX}storage-class/{class}");
        let probe = PutInput {
            headers: ContentHeaders {
                storage_class: Some(class.to_owned()),
                ..Default::default()
            },
            checksums: Default::default(),
            body: PutBody::Bytes(Bytes::new()),
            if_match: None,
            if_none_match: None,
            content_md5: None,
            extra_headers: Vec::new(),
        };
        self.asked(self.origin.put_object(bucket, &key, &probe)).await?;
        if let Err(error) = self.asked(self.origin.delete_object(bucket, &key, None)).await {
            tracing::warn!(bucket, key, %error, "cannot delete the storage class probe");
        }
        tracing::info!(bucket, class, "the origin takes this storage class");
        lock(&self.storage_classes).insert(seen);
        Ok(())
    }
}
