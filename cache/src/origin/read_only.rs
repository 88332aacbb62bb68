//! `ReadOnlyOrigin`: the origin as a replica holds it: every read passes through, every write is
//! refused before it leaves the process, so no code path of a replica can change the shared bucket.

use std::sync::Arc;

use async_trait::async_trait;

use super::*;

pub(crate) struct ReadOnlyOrigin(pub Arc<dyn Origin>);

fn refused(what: &str) -> OriginError {
    OriginError::rejected(
        403,
        "AccessDenied",
        format!("This Perch is a read replica: it never writes to the shared bucket ({what} refused)."),
    )
}

#[async_trait]
impl Origin for ReadOnlyOrigin {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    fn fault(&self) -> Option<String> {
        self.0.fault()
    }

    async fn list_buckets(&self) -> OriginResult<Vec<BucketInfo>> {
        self.0.list_buckets().await
    }

    async fn create_bucket(&self, _bucket: &str) -> OriginResult<()> {
        Err(refused("CreateBucket"))
    }

    async fn head_bucket(&self, bucket: &str) -> OriginResult<Option<String>> {
        self.0.head_bucket(bucket).await
    }

    async fn delete_bucket(&self, _bucket: &str) -> OriginResult<()> {
        Err(refused("DeleteBucket"))
    }

    async fn head_object(&self, bucket: &str, key: &str, conditions: &Conditions) -> OriginResult<ObjectMeta> {
        self.0.head_object(bucket, key, conditions).await
    }

    async fn bucket_location(&self, bucket: &str) -> OriginResult<Option<String>> {
        self.0.bucket_location(bucket).await
    }

    async fn head_part(&self, bucket: &str, key: &str, part: u32) -> OriginResult<PartHead> {
        self.0.head_part(bucket, key, part).await
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<GetOutput> {
        self.0.get_object(bucket, key, range, conditions).await
    }

    async fn put_object(&self, _bucket: &str, _key: &str, _input: &PutInput) -> OriginResult<PutOutput> {
        Err(refused("PutObject"))
    }

    async fn delete_object(&self, _bucket: &str, _key: &str, _if_match: Option<&str>) -> OriginResult<()> {
        Err(refused("DeleteObject"))
    }

    async fn copy_object(&self, _bucket: &str, _key: &str, _input: &CopyInput) -> OriginResult<CopyOutput> {
        Err(refused("CopyObject"))
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> OriginResult<ListPage> {
        self.0.list_objects(bucket, query).await
    }

    async fn create_multipart_upload(
        &self,
        _bucket: &str,
        _key: &str,
        _headers: &ContentHeaders,
        _extra_headers: &[(String, String)],
        _checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        Err(refused("CreateMultipartUpload"))
    }

    async fn upload_part(
        &self,
        _bucket: &str,
        _key: &str,
        _upload_id: &str,
        _part_number: i32,
        _body: &PutBody,
        _checksums: &Checksums,
    ) -> OriginResult<PutOutput> {
        Err(refused("UploadPart"))
    }

    async fn complete_multipart_upload(
        &self,
        _bucket: &str,
        _key: &str,
        _upload_id: &str,
        _parts: &[CompletedPart],
    ) -> OriginResult<PutOutput> {
        Err(refused("CompleteMultipartUpload"))
    }

    async fn abort_multipart_upload(&self, _bucket: &str, _key: &str, _upload_id: &str) -> OriginResult<()> {
        Err(refused("AbortMultipartUpload"))
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        self.0.list_parts(bucket, key, upload_id).await
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        self.0.list_multipart_uploads(bucket, prefix).await
    }

    async fn get_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<Document> {
        self.0.get_config(bucket, key, sub).await
    }

    async fn put_config(
        &self,
        _bucket: &str,
        _key: Option<&str>,
        _sub: Subresource,
        _doc: &Document,
    ) -> OriginResult<()> {
        Err(refused("a bucket or object configuration change"))
    }

    async fn delete_config(&self, _bucket: &str, _key: Option<&str>, _sub: Subresource) -> OriginResult<()> {
        Err(refused("a bucket or object configuration deletion"))
    }
}
