//! Multipart uploads through `S3Origin` (the uploader sends a multipart version with the layout
//! the client gave it).

use super::*;

impl S3Origin {
    pub(super) async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        extra_headers: &[(String, String)],
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        // `x-amz-checksum-type` only when it is not the algorithm's default, for S3 servers that
        // do not know the header.
        let default_type = checksum.and_then(|c| MultipartChecksum::new(c.algorithm, None).ok());
        let checksum_type = checksum
            .filter(|c| Some(*c) != default_type)
            .map(|c| match c.checksum_type {
                ChecksumType::Composite => SdkChecksumType::Composite,
                ChecksumType::FullObject => SdkChecksumType::FullObject,
            });
        let req = with_headers!(self.client.create_multipart_upload().bucket(bucket).key(key), headers)
            .set_checksum_algorithm(checksum.map(|c| sdk_algorithm(c.algorithm)))
            .set_checksum_type(checksum_type);
        let send = req
            .customize()
            .map_request(headers_mapper(headers.expires.clone(), extra_headers.to_vec()))
            .send();
        // A bare 404 is a proxy's, a fault (as for a PUT), not a bucket gone for good.
        let out = self.call(Subject::Write, Duration::ZERO, send).await?;
        match out.upload_id() {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(OriginError::transient(
                "CreateMultipartUpload answered without an upload id".to_owned(),
            )),
        }
    }

    pub(super) async fn store_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> OriginResult<PutOutput> {
        let c = checksums;
        let req = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .content_length(content_length(body)?)
            .body(sdk_body(body).await?)
            .set_checksum_crc32(c.crc32.clone())
            .set_checksum_crc32_c(c.crc32c.clone())
            .set_checksum_crc64_nvme(c.crc64nvme.clone())
            .set_checksum_sha1(c.sha1.clone())
            .set_checksum_sha256(c.sha256.clone())
            .set_checksum_algorithm(checksum_algorithm(c));
        let out = self
            .call(Subject::Upload, Self::upload_allowance(body.len()), req.send())
            .await?;
        let kept = checksums_of(
            out.checksum_crc32(),
            out.checksum_crc32_c(),
            out.checksum_crc64_nvme(),
            out.checksum_sha1(),
            out.checksum_sha256(),
        );
        Ok(PutOutput {
            etag: out.e_tag().unwrap_or_default().to_owned(),
            checksums: if kept.is_empty() { checksums.clone() } else { kept },
        })
    }

    pub(super) async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> OriginResult<PutOutput> {
        let declared = parts.iter().any(|p| !p.checksums.is_empty());
        let parts = parts
            .iter()
            .map(|p| {
                let c = &p.checksums;
                SdkCompletedPart::builder()
                    .part_number(p.part_number)
                    .e_tag(p.etag.clone())
                    .set_checksum_crc32(c.crc32.clone())
                    .set_checksum_crc32_c(c.crc32c.clone())
                    .set_checksum_crc64_nvme(c.crc64nvme.clone())
                    .set_checksum_sha1(c.sha1.clone())
                    .set_checksum_sha256(c.sha256.clone())
                    .build()
            })
            .collect();
        let req = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .customize()
            .interceptor(RootAlias {
                from: "CompleteMultipartUploadResponse",
                to: "CompleteMultipartUploadResult",
            });
        // Assembling many parts takes the origin a while.
        let out = self.call(Subject::Upload, self.read_timeout * 3, req.send()).await?;
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let mut checksums = checksums_of(
            out.checksum_crc32(),
            out.checksum_crc32_c(),
            out.checksum_crc64_nvme(),
            out.checksum_sha1(),
            out.checksum_sha256(),
        );
        // moto 5.2 keeps the object's checksum but does not put it in this answer: ask for it
        // (only when the parts had checksums, and only if the object is still the one just made).
        if checksums.is_empty() && declared {
            match self.head_object(bucket, key, &Conditions::default()).await {
                Ok(meta) if same_etag(&meta.etag, &etag) => checksums = meta.checksums,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "could not read the checksum of a completed upload"),
            }
        }
        Ok(PutOutput { etag, checksums })
    }

    pub(super) async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id);
        self.call(Subject::Upload, Duration::ZERO, req.send()).await?;
        Ok(())
    }

    pub(super) async fn upload_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let req = self
                .client
                .list_parts()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.take())
                .customize()
                .interceptor(RootAlias {
                    from: "ListPartsResponse",
                    to: "ListPartsResult",
                });
            let out = self.call(Subject::Upload, Duration::ZERO, req.send()).await?;
            parts.extend(out.parts().iter().map(|p| PartInfo {
                part_number: p.part_number().unwrap_or_default(),
                etag: p.e_tag().unwrap_or_default().to_owned(),
                size: non_negative(p.size()),
                last_modified: to_system_time(p.last_modified()),
                checksums: checksums_of(
                    p.checksum_crc32(),
                    p.checksum_crc32_c(),
                    p.checksum_crc64_nvme(),
                    p.checksum_sha1(),
                    p.checksum_sha256(),
                ),
            }));
            match out.next_part_number_marker() {
                Some(m) if out.is_truncated().unwrap_or(false) && !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    pub(super) async fn uploads_under(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        let mut uploads = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_id_marker: Option<String> = None;
        loop {
            let req = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .set_prefix((!prefix.is_empty()).then(|| prefix.to_owned()))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take());
            let out = self.call(Subject::Bucket, Duration::ZERO, req.send()).await?;
            uploads.extend(out.uploads().iter().map(|u| UploadInfo {
                key: u.key().unwrap_or_default().to_owned(),
                upload_id: u.upload_id().unwrap_or_default().to_owned(),
                initiated: to_system_time(u.initiated()),
                checksum: u.checksum_algorithm().and_then(|a| {
                    let algorithm = crate::origin::ChecksumAlgorithm::parse(a.as_str())?;
                    let kind = u.checksum_type().and_then(|t| ChecksumType::parse(t.as_str()));
                    MultipartChecksum::new(algorithm, kind).ok()
                }),
            }));
            let next_key = out.next_key_marker().filter(|m| !m.is_empty());
            if !out.is_truncated().unwrap_or(false) || next_key.is_none() {
                break;
            }
            key_marker = next_key.map(str::to_owned);
            upload_id_marker = out.next_upload_id_marker().filter(|m| !m.is_empty()).map(str::to_owned);
        }
        // The trait's order (S3's too): by key, then by initiation. A stable sort keeps the
        // origin's order between uploads initiated within the same second.
        uploads.sort_by(|a, b| a.key.cmp(&b.key).then(a.initiated.cmp(&b.initiated)));
        Ok(uploads)
    }
}
