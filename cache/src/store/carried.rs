//! What a write carries to the origin beyond its body and headers (a storage class, tags): such a
//! write is acknowledged only in a bucket whose origin was seen to take it, so that its upload is
//! never refused for it, nor stored without it.

use bytes::Bytes;
use perch_policy::RESERVED_PREFIX;

use super::Store;
use crate::error::StoreResult;
use crate::local::lock;
use crate::origin::{ContentHeaders, OriginError, PutBody, PutInput, Subresource};

/// The entry of `Store::carried` for tags (a storage class's is its name).
const TAGS: &str = "x-amz-tagging";

/// The tag the probe of tags gives its object.
const PROBE_TAG: (&str, &str) = ("perch", "probe");

impl Store {
    /// Checks, before a write is acknowledged (PutObject, CreateMultipartUpload, CopyObject),
    /// that the origin takes what it carries in `bucket`: its storage class `class` (none for
    /// STANDARD), and tags if `tagged`. The first time a bucket and such a thing meet, Perch writes
    /// an empty object carrying it under its own prefix (`.perch/storage-class/CLASS`,
    /// `.perch/tagging/<uuid>`: one per check, as it is read back), reads the tags back (an origin
    /// may drop them silently), and deletes it.
    /// The origin's refusal (S3's 400 InvalidStorageClass for a class it does not offer) is the
    /// client's answer, and nothing is stored; tags it did not keep are 501 NotImplemented. A
    /// replica's writes stay in its overlay: nothing to check.
    pub async fn check_carried(&self, bucket: &str, class: Option<&str>, tagged: bool) -> StoreResult<()> {
        if self.replica.is_some() {
            return Ok(());
        }
        if let Some(class) = class {
            let headers = ContentHeaders {
                storage_class: Some(class.to_owned()),
                ..Default::default()
            };
            self.probe(bucket, class, &format!("storage-class/{class}"), headers)
                .await?;
        }
        if tagged {
            let headers = ContentHeaders {
                tags: vec![(PROBE_TAG.0.to_owned(), PROBE_TAG.1.to_owned())],
                ..Default::default()
            };
            let name = format!("tagging/{}", uuid::Uuid::new_v4());
            self.probe(bucket, TAGS, &name, headers).await?;
        }
        Ok(())
    }

    /// Writes an empty object with `headers` at `.perch/NAME` and deletes it, once per bucket and
    /// `what` while Perch runs.
    async fn probe(&self, bucket: &str, what: &str, name: &str, headers: ContentHeaders) -> StoreResult<()> {
        let seen = (bucket.to_owned(), what.to_owned());
        if lock(&self.carried).contains(&seen) {
            return Ok(());
        }
        self.ensure_bucket(bucket).await?;
        let key = format!("{RESERVED_PREFIX}{name}");
        let tagged = !headers.tags.is_empty();
        let probe = PutInput {
            headers,
            checksums: Default::default(),
            body: PutBody::Bytes(Bytes::new()),
            if_match: None,
            if_none_match: None,
            content_md5: None,
            extra_headers: Vec::new(),
        };
        // Objects in the bucket: written and removed under the lease, as any write.
        self.fenced(self.asked(self.origin.put_object(bucket, &key, &probe)))
            .await?;
        let kept = if tagged {
            let tags = self.asked(self.origin.get_config(bucket, Some(&key), Subresource::Tagging));
            let tags = tags.await?;
            String::from_utf8_lossy(&tags.body).contains(&format!("<Key>{}</Key>", PROBE_TAG.0))
        } else {
            true
        };
        if let Err(error) = self
            .fenced(self.asked(self.origin.delete_object(bucket, &key, None)))
            .await
        {
            tracing::warn!(bucket, key, %error, "cannot delete the probe of what the origin takes");
        }
        if !kept {
            return Err(OriginError::rejected(
                501,
                "NotImplemented",
                "The origin does not keep object tags: a write with tags (x-amz-tagging) would lose them.",
            )
            .into());
        }
        tracing::info!(bucket, what, "the origin takes it with a write");
        lock(&self.carried).insert(seen);
        Ok(())
    }
}
