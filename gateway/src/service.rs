//! `Gateway`: Perch's S3 front door. Each S3 operation is one method of s3s's `S3` trait: reads go
//! through the cache, writes are committed to the write-back journal, the rest goes to the origin.

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use perch_cache::{
    CacheStatus, CompletedPart as OriginPart, ContentHeaders, CopyInput, Expected, MetadataDirective as Directive,
    PageQuery, PutInput, Store, Subresource,
};
use perch_policy::is_reserved;
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

use crate::bucket_config;
use crate::convert::{self, origin_error, store_error};
use crate::front::{self, PerchHost};
use crate::owners::Owners;
use crate::spool::{self, Declared, SpoolSync};

pub struct Gateway {
    /// Every object, listing, multipart and bucket call goes to the store.
    store: Arc<Store>,
    /// Where request bodies too large for memory wait while they are verified.
    spool_dir: PathBuf,
    /// Each bucket's owner as its ACL at the origin names it: the owner of every object listed
    /// (as on S3 with object ownership enforced).
    owners: Owners,
    /// The virtual-hosted addressing of the front door, for the URLs an answer names.
    host: PerchHost,
}

impl Gateway {
    pub fn new(store: Arc<Store>, spool_dir: PathBuf, domain: &str) -> Self {
        Self {
            store,
            spool_dir,
            owners: Owners::default(),
            host: PerchHost::new(domain),
        }
    }

    /// Receives a part's body (a client's, or a range copied from an object), verified as
    /// `declared`, and stages it as part `at.3` of upload `at.2` of `at.0/at.1`.
    async fn stage_part(
        &self,
        at: (&str, &str, &str, i32),
        body: Option<StreamingBlob>,
        declared: Declared<'_>,
        trailers: Option<&s3s::TrailingHeaders>,
    ) -> S3Result<perch_cache::PutOutput> {
        let (bucket, key, upload_id, part_number) = at;
        let body = spool::receive(body, declared, trailers, &self.spool_dir, &self.store, SpoolSync::Here).await?;
        self.store
            .upload_part(bucket, key, upload_id, part_number, &body.body, &body.checksums)
            .await
            .map_err(store_error)
    }

    /// The owner listings give the objects of `bucket` (`Owners`).
    async fn owner(&self, bucket: &str) -> Option<Owner> {
        self.owners.of(&self.store, bucket).await
    }

    /// A v1 listing (or ListObjectVersions) page resuming after `marker`.
    async fn list_v1(
        &self,
        bucket: &str,
        prefix: &Option<String>,
        delimiter: &Option<String>,
        max_keys: Option<i32>,
        marker: &Option<String>,
    ) -> S3Result<perch_cache::Page> {
        let q = PageQuery {
            prefix: prefix.clone().unwrap_or_default(),
            delimiter: delimiter.clone().filter(|d| !d.is_empty()),
            max_keys: max_keys_of(max_keys)?,
            after: marker.clone().filter(|m| !m.is_empty()),
        };
        check_list_query(&q)?;
        self.store.list(bucket, &q).await.map_err(store_error)
    }
}

/// Builds a GET or HEAD output (s3s gives them two types with the same object fields): the stored
/// headers, overridden by `response-*` query parameters, and the checksums when asked for.
macro_rules! object_output {
    ($ty:ident, $meta:expr, $input:expr, $with_checksums:expr, { $($field:ident: $value:expr),* $(,)? }) => {{
        let meta: &perch_cache::ObjectMeta = $meta;
        let m = convert::meta_out(meta);
        let c = if $with_checksums { meta.checksums.clone() } else { Default::default() };
        $ty {
            $($field: $value,)*
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(m.e_tag),
            last_modified: Some(m.last_modified),
            content_type: $input.response_content_type.or(m.content_type),
            cache_control: $input.response_cache_control.or(m.cache_control),
            content_encoding: $input.response_content_encoding.or(m.content_encoding),
            content_disposition: $input.response_content_disposition.or(m.content_disposition),
            content_language: $input.response_content_language.or(m.content_language),
            expires: $input.response_expires.or(m.expires),
            metadata: m.metadata,
            storage_class: m.storage_class,
            checksum_type: c.checksum_type().map(|t| ChecksumType::from_static(t.as_str())),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }
    }};
}

/// The content headers of a PUT, CopyObject (REPLACE) or CreateMultipartUpload input (s3s gives
/// them three types with the same fields).
macro_rules! content_headers {
    ($input:expr) => {
        convert::content_headers(
            $input.content_type,
            $input.cache_control,
            $input.content_encoding,
            $input.content_disposition,
            $input.content_language,
            $input.expires,
            $input.metadata,
        )
    };
}

/// The answer to a PUT: its ETag and the checksums it keeps.
fn put_output(etag: &str, c: perch_cache::Checksums) -> PutObjectOutput {
    PutObjectOutput {
        e_tag: Some(convert::etag(etag)),
        checksum_type: c.checksum_type().map(|t| ChecksumType::from_static(t.as_str())),
        checksum_crc32: c.crc32,
        checksum_crc32c: c.crc32c,
        checksum_crc64nvme: c.crc64nvme,
        checksum_sha1: c.sha1,
        checksum_sha256: c.sha256,
        ..Default::default()
    }
}

/// The request's `Content-MD5` as sent: s3s reads an empty one as none, which S3 refuses (400
/// InvalidDigest), as any value that is not 16 bytes in base64.
fn content_md5<'a>(headers: &'a http::HeaderMap, parsed: Option<&'a str>) -> Option<&'a str> {
    parsed.or_else(|| headers.get("content-md5").map(|v| v.to_str().unwrap_or_default()))
}

/// Whether the request asked for checksums (`x-amz-checksum-mode: ENABLED`).
fn checksum_mode(mode: &Option<ChecksumMode>) -> bool {
    mode.as_ref().is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
}

/// Adds the stored `Expires` s3s cannot write (`convert::expires_text`).
fn with_expires<T>(mut resp: S3Response<T>, expires: Option<http::HeaderValue>) -> S3Response<T> {
    if let Some(v) = expires {
        resp.headers.insert(http::header::EXPIRES, v);
    }
    resp
}

/// Adds `X-Cache: HIT | MISS | REVALIDATED | BYPASS`.
fn with_cache_status<T>(mut resp: S3Response<T>, status: CacheStatus) -> S3Response<T> {
    resp.headers
        .insert("x-cache", http::HeaderValue::from_static(status.as_str()));
    resp
}

/// The part a GET or HEAD asks for by `partNumber`, checked as S3 checks it: 1 to 10,000, and
/// never with a `Range`.
fn part_number(part: Option<i32>, with_range: bool) -> S3Result<Option<u32>> {
    let Some(n) = part else {
        return Ok(None);
    };
    if with_range {
        return Err(s3_error!(
            InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter."
        ));
    }
    match u32::try_from(n) {
        Ok(n @ 1..=10_000) => Ok(Some(n)),
        _ => Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        )),
    }
}

fn max_keys_of(max_keys: Option<i32>) -> S3Result<usize> {
    match max_keys {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must be between 0 and 2147483647")),
        Some(n) => Ok((n as usize).min(1000)),
    }
}

fn encode(s: String, url: bool) -> String {
    if url { perch_cache::url_encode(&s) } else { s }
}

/// Whether a listing asks for its keys URL-encoded; an encoding S3 does not know is 400
/// InvalidArgument, as S3 answers it.
fn wants_url(e: &Option<EncodingType>) -> S3Result<bool> {
    match e.as_ref().map(|e| e.as_str()) {
        None => Ok(false),
        Some(EncodingType::URL) => Ok(true),
        Some(_) => Err(s3_error!(
            InvalidArgument,
            "Invalid Encoding Method specified in Request"
        )),
    }
}

/// A listing's count or marker, which S3 takes from 0 up; a negative one is 400 InvalidArgument.
fn not_negative(name: &str, value: Option<i32>) -> S3Result<()> {
    match value {
        Some(n) if n < 0 => Err(s3_error!(
            InvalidArgument,
            "Argument {name} must be an integer between 0 and 2147483647"
        )),
        _ => Ok(()),
    }
}

fn objects_of(page: &perch_cache::Page, url: bool, owner: Option<&Owner>) -> Vec<Object> {
    page.objects
        .iter()
        .map(|o| Object {
            key: Some(encode(o.key.clone(), url)),
            size: Some(o.size as i64),
            e_tag: Some(convert::etag(&o.etag)),
            last_modified: Some(convert::timestamp(o.last_modified)),
            storage_class: Some(o.storage_class.clone().map_or_else(
                || ObjectStorageClass::from_static(ObjectStorageClass::STANDARD),
                ObjectStorageClass::from,
            )),
            owner: owner.cloned(),
            checksum_algorithm: o
                .checksum
                .map(|(a, _)| vec![ChecksumAlgorithm::from_static(a.as_str())]),
            checksum_type: o.checksum.map(|(_, t)| ChecksumType::from_static(t.as_str())),
            ..Default::default()
        })
        .collect()
}

/// Who started a multipart upload: the bucket's owner, the one account behind Perch's keys at the
/// origin (as on S3 when the owner's own keys start it).
fn initiator_of(owner: &Owner) -> Initiator {
    Initiator {
        display_name: owner.display_name.clone(),
        id: owner.id.clone(),
    }
}

/// A listing whose prefix, delimiter or starting point holds NUL is 400 InvalidArgument at once:
/// no key holds one (`check_key`), an XML answer cannot carry one, and an origin need not answer
/// it (moto echoes it raw, which its client cannot read, so the listing was retried to its
/// deadline).
fn check_list_query(q: &PageQuery) -> S3Result<()> {
    let nul = |s: &str| s.contains('\0');
    if nul(&q.prefix) || q.delimiter.as_deref().is_some_and(nul) || q.after.as_deref().is_some_and(nul) {
        return Err(s3_error!(
            InvalidArgument,
            "A listing's prefix, delimiter, marker, start-after or continuation token cannot hold NUL."
        ));
    }
    Ok(())
}

/// The delimiter a listing answers with: none for an empty one, as S3 (which ignores it).
fn delimiter_out(delimiter: Option<String>, url: bool) -> Option<String> {
    delimiter.filter(|d| !d.is_empty()).map(|d| encode(d, url))
}

fn prefixes_of(page: &perch_cache::Page, url: bool) -> Option<Vec<CommonPrefix>> {
    (!page.common_prefixes.is_empty()).then(|| {
        page.common_prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(encode(p.clone(), url)),
            })
            .collect()
    })
}

fn copy_source(src: &CopySource) -> S3Result<(String, String)> {
    match src {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            convert::check_version(version_id.as_deref())?;
            convert::check_key(key)?;
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(s3_error!(
            NotImplemented,
            "Access point copy sources are not supported."
        )),
    }
}

/// What UploadPart and UploadPartCopy check first: the key, the part number (1 to 10,000), and
/// no customer's encryption key (`customer_key`: the part's or its source's).
fn check_part(key: &str, part_number: i32, customer_key: bool) -> S3Result<()> {
    convert::check_key(key)?;
    convert::check_kept(convert::Unkept {
        customer_key,
        ..Default::default()
    })?;
    if !(1..=10000).contains(&part_number) {
        return Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ));
    }
    Ok(())
}

/// `x-amz-copy-source-range`: `bytes=first-last`, both offsets given, as S3 takes it.
fn copy_source_range(text: &str) -> S3Result<(u64, u64)> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )
    };
    let (first, last) = text
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if last < first {
        return Err(bad());
    }
    Ok((first, last))
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let input = req.input;
        let max = match input.max_buckets {
            None => usize::MAX,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(_) => return Err(s3_error!(InvalidArgument, "max-buckets must be between 1 and 10000")),
        };
        let after = match input.continuation_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => Some(
                perch_cache::list_untoken(t)
                    .ok_or_else(|| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))?,
            ),
            None => None,
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut all = self.store.list_buckets().await.map_err(store_error)?;
        // The origin names one owner for all its buckets; with none listed, it named none here.
        let owner = all.first().and_then(|b| b.owner.clone()).map(|o| Owner {
            id: Some(o.id),
            display_name: o.display_name,
        });
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let mut rest = all
            .into_iter()
            .filter(|b| b.name.starts_with(&prefix) && after.as_ref().is_none_or(|a| b.name > *a));
        let buckets: Vec<Bucket> = rest
            .by_ref()
            .take(max)
            .map(|b| Bucket {
                name: Some(b.name),
                creation_date: Some(convert::timestamp(b.created)),
                ..Default::default()
            })
            .collect();
        let more = rest.next().is_some();
        let continuation_token = buckets
            .last()
            .and_then(|b| b.name.as_deref())
            .filter(|_| more)
            .map(perch_cache::list_token);
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            continuation_token,
            owner,
            prefix: input.prefix,
        }))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let input = req.input;
        convert::check_canned_acl(input.acl.as_ref().map(|a| a.as_str()))?;
        if input.object_lock_enabled_for_bucket == Some(true) {
            // Perch keeps no object lock (its object calls are 501): a bucket it could not serve.
            return Err(s3_error!(NotImplemented, "Object lock is not supported by Perch."));
        }
        let new = perch_cache::NewBucket {
            location: input
                .create_bucket_configuration
                .as_ref()
                .and_then(|c| c.location_constraint.as_ref())
                .map(|l| l.as_str().to_owned()),
            acl: bucket_config::create_bucket_acl(&input),
            object_ownership: input.object_ownership.as_ref().map(|o| o.as_str().to_owned()),
        };
        let bucket = input.bucket;
        self.store.create_bucket(&bucket, &new).await.map_err(store_error)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        let region = self.store.head_bucket(&req.input.bucket).await.map_err(store_error)?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: region,
            ..Default::default()
        }))
    }

    async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.store.delete_bucket(&req.input.bucket).await.map_err(store_error)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        let location = self
            .store
            .bucket_location(&req.input.bucket)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: location.map(BucketLocationConstraint::from),
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let range = convert::requested_range(input.range, &req.headers);
        convert::check_key(&input.key)?;
        convert::check_version(input.version_id.as_deref())?;
        let part = part_number(input.part_number, range.is_some())?;
        let conditions = convert::conditions(
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since,
            input.if_unmodified_since,
        );
        let (cached, parts_count) = match part {
            Some(n) => {
                let (cached, at) = self
                    .store
                    .get_part(&input.bucket, &input.key, n, &conditions)
                    .await
                    .map_err(store_error)?;
                (cached, at.parts_count)
            }
            None => {
                let range = range.map(convert::range);
                let cached = self
                    .store
                    .get(&input.bucket, &input.key, range, &conditions)
                    .await
                    .map_err(store_error)?;
                (cached, None)
            }
        };
        let status = cached.status;
        let out = cached.output;
        let size = out.meta.size;
        let (content_length, content_range) = match out.range {
            Some((first, last)) => (last - first + 1, Some(format!("bytes {first}-{last}/{size}"))),
            None => (size, None),
        };
        let with_checksums = out.range.is_none() && checksum_mode(&input.checksum_mode);
        let expires = convert::expires_text(&out.meta, input.response_expires.is_some());
        let output = object_output!(GetObjectOutput, &out.meta, input, with_checksums, {
            body: Some(StreamingBlob::wrap(out.body)),
            content_length: Some(content_length as i64),
            content_range: content_range,
            parts_count: parts_count.map(|n| n as i32),
            tag_count: out.meta.headers.tag_count().and_then(|n| i32::try_from(n).ok()),
        });
        Ok(with_cache_status(
            with_expires(S3Response::new(output), expires),
            status,
        ))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let range = convert::requested_range(input.range, &req.headers);
        convert::check_key(&input.key)?;
        convert::check_version(input.version_id.as_deref())?;
        let part = part_number(input.part_number, range.is_some())?;
        convert::check_overrides([
            ("content-type", input.response_content_type.as_deref()),
            ("cache-control", input.response_cache_control.as_deref()),
            ("content-encoding", input.response_content_encoding.as_deref()),
            ("content-disposition", input.response_content_disposition.as_deref()),
            ("content-language", input.response_content_language.as_deref()),
        ])?;
        let conditions = convert::conditions(
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since,
            input.if_unmodified_since,
        );
        let Some(n) = part else {
            let (meta, status) = self
                .store
                .head(&input.bucket, &input.key, &conditions)
                .await
                .map_err(store_error)?;
            // A HEAD with a Range answers as the GET would: the range's length and span, 206
            // (set by the door from the Content-Range), or 416 when it cannot be satisfied.
            let (content_length, content_range) = match range.map(convert::range) {
                None => (meta.size, None),
                Some(r) => match r.resolve(meta.size).map_err(convert::origin_error)? {
                    Some((first, last)) => (last - first + 1, Some(format!("bytes {first}-{last}/{}", meta.size))),
                    None => (meta.size, None),
                },
            };
            let with_checksums = content_range.is_none() && checksum_mode(&input.checksum_mode);
            let expires = convert::expires_text(&meta, input.response_expires.is_some());
            let output = object_output!(HeadObjectOutput, &meta, input, with_checksums, {
                content_length: Some(content_length as i64),
                content_range: content_range,
            });
            return Ok(with_cache_status(
                with_expires(S3Response::new(output), expires),
                status,
            ));
        };
        let (meta, status, at) = self
            .store
            .head_part(&input.bucket, &input.key, n, &conditions)
            .await
            .map_err(store_error)?;
        // As S3 answers a HEAD by part number: the part's length and span, 206.
        let (content_length, content_range) = match at.span {
            Some((first, last)) => (last - first + 1, Some(format!("bytes {first}-{last}/{}", meta.size))),
            None => (0, None),
        };
        let expires = convert::expires_text(&meta, input.response_expires.is_some());
        let output = object_output!(HeadObjectOutput, &meta, input, false, {
            content_length: Some(content_length as i64),
            content_range: content_range,
            parts_count: at.parts_count.map(|n| n as i32),
        });
        // 206: the door sets it from the Content-Range (`server::part_head_partial`).
        Ok(with_cache_status(
            with_expires(S3Response::new(output), expires),
            status,
        ))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let trailers = req.trailing_headers;
        let headers = req.headers;
        let input = req.input;
        convert::check_key(&input.key)?;
        convert::check_metadata(&input.metadata)?;
        convert::check_canned_acl(input.acl.as_ref().map(|a| a.as_str()))?;
        convert::check_kept(convert::unkept!(input))?;
        let encryption = input.server_side_encryption.clone();
        // `AccessCheck` refuses these by their path; a browser form (PostObject) names its key in
        // the form, which s3s hands here.
        if is_reserved(&input.key) {
            return Err(front::reserved_error());
        }
        if input.write_offset_bytes.is_some() {
            return Err(s3_error!(NotImplemented, "Appending to an object is not supported."));
        }
        let stored = ContentHeaders {
            storage_class: convert::storage_class(input.storage_class.as_ref()),
            tags: convert::tags(input.tagging.as_deref())?,
            ..content_headers!(input)
        };
        convert::check_headers(&self.store, &input.bucket, &input.key, &stored)?;
        let declared = Declared {
            content_length: input.content_length,
            content_md5: content_md5(&headers, input.content_md5.as_deref()),
            algorithm: input.checksum_algorithm.as_ref(),
            checksums: convert::checksums(
                input.checksum_crc32.clone(),
                input.checksum_crc32c.clone(),
                input.checksum_crc64nvme.clone(),
                input.checksum_sha1.clone(),
                input.checksum_sha256.clone(),
            ),
            ..Default::default()
        }
        .with_headers(&headers)?;
        // `_file` removes the spool file once the store is done with it (a commit renames it).
        let spool::Spooled {
            body,
            checksums,
            digest,
            file: _file,
        } = spool::receive(
            input.body,
            declared,
            trailers.as_ref(),
            &self.spool_dir,
            &self.store,
            SpoolSync::InCommit,
        )
        .await?;
        let put = PutInput {
            headers: stored,
            checksums,
            body,
            if_match: input.if_match.as_ref().map(convert::etag_condition),
            if_none_match: input.if_none_match.as_ref().map(convert::etag_condition),
            content_md5: None,
            extra_headers: Vec::new(),
        };
        let out = self
            .store
            .put(&input.bucket, &input.key, put, digest)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(PutObjectOutput {
            server_side_encryption: encryption,
            ..put_output(&out.etag, out.checksums)
        }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        convert::check_key(&input.key)?;
        convert::check_version(input.version_id.as_deref())?;
        convert::check_unconditional(
            "deletes",
            "by modification time or size",
            input.if_match_last_modified_time.is_some() || input.if_match_size.is_some(),
        )?;
        let if_match = input.if_match.as_ref().map(convert::etag_condition);
        self.store
            .delete(&input.bucket, &input.key, if_match.as_deref())
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "A DeleteObjects request names at most 1000 keys."
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let bucket = input.bucket.as_str();
        // A bucket that does not exist fails the whole request (404), as in S3, not key by key.
        self.store.ensure_bucket(bucket).await.map_err(store_error)?;
        // The keys the origin decides (those with an ETag) share one deadline: each would
        // otherwise wait its own, 16 at a time, and a request of 1,000 keys in an outage lasted
        // 63 of them. Past it, the keys left are SlowDown at once.
        let until = tokio::time::Instant::now() + self.store.wait_limit();
        let results: Vec<(ObjectIdentifier, Result<(), s3s::S3Error>)> =
            futures::stream::iter(input.delete.objects.into_iter().map(|o| async move {
                let conditioned = convert::check_unconditional(
                    "deletes",
                    "by modification time or size",
                    o.last_modified_time.is_some() || o.size.is_some(),
                );
                let if_match = o
                    .e_tag
                    .as_ref()
                    .map(|e| convert::etag_condition(&ETagCondition::ETag(e.clone())));
                let result = match (convert::check_key(&o.key), o.version_id.as_deref()) {
                    (Err(e), _) => Err(e),
                    (Ok(()), _) if conditioned.is_err() => conditioned,
                    (Ok(()), _) if is_reserved(&o.key) => Err(front::reserved_error()),
                    (Ok(()), Some(v)) if v != "null" => {
                        Err(s3_error!(NoSuchVersion, "Buckets behind Perch are not versioned."))
                    }
                    (Ok(()), _) if if_match.is_some() => {
                        // A task of its own: past the deadline the answer is not waited for, but
                        // a delete the origin may be carrying out is never cut short.
                        let (store, key) = (self.store.clone(), o.key.clone());
                        let owned = bucket.to_owned();
                        let late = || {
                            s3_error!(
                                SlowDown,
                                "The origin did not decide this key's delete within the request's time: send it again."
                            )
                        };
                        if tokio::time::Instant::now() >= until {
                            Err(late())
                        } else {
                            let delete =
                                tokio::spawn(async move { store.delete(&owned, &key, if_match.as_deref()).await });
                            match tokio::time::timeout_at(until, delete).await {
                                Ok(Ok(done)) => done.map_err(store_error),
                                Ok(Err(failed)) => Err(s3_error!(InternalError, "the delete failed: {failed}")),
                                Err(_) => Err(late()),
                            }
                        }
                    }
                    (Ok(()), _) => self.store.delete(bucket, &o.key, None).await.map_err(store_error),
                };
                (o, result)
            }))
            .buffered(16)
            .collect()
            .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (o, result) in results {
            match result {
                Ok(()) if !quiet => deleted.push(DeletedObject {
                    key: Some(o.key),
                    version_id: o.version_id,
                    ..Default::default()
                }),
                Ok(()) => {}
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_owned()),
                    key: Some(o.key),
                    message: e.message().map(str::to_owned),
                    version_id: o.version_id,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        // s3s has no field for a copy's conditions on its destination: read from the headers.
        convert::check_unconditional(
            "copies",
            "If-Match, If-None-Match",
            req.headers.contains_key(http::header::IF_MATCH) || req.headers.contains_key(http::header::IF_NONE_MATCH),
        )?;
        let input = req.input;
        convert::check_key(&input.key)?;
        convert::check_canned_acl(input.acl.as_ref().map(|a| a.as_str()))?;
        convert::check_kept(convert::Unkept {
            customer_key: input.sse_customer_algorithm.is_some() || input.copy_source_sse_customer_algorithm.is_some(),
            ..convert::unkept!(input)
        })?;
        let encryption = input.server_side_encryption.clone();
        let checksum_algorithm = match input.checksum_algorithm.as_ref() {
            Some(a) => Some(perch_cache::ChecksumAlgorithm::parse(a.as_str()).ok_or_else(|| {
                s3_error!(
                    InvalidRequest,
                    "Checksum algorithm provided is unsupported. Please try again with any of the valid types: \
                     [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]"
                )
            })?),
            None => None,
        };
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        let replace = match input.metadata_directive.as_ref().map(|d| d.as_str()) {
            None | Some(MetadataDirective::COPY) => false,
            Some(MetadataDirective::REPLACE) => true,
            Some(_) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "Unknown metadata directive: x-amz-metadata-directive must be COPY or REPLACE."
                ));
            }
        };
        let conditions = convert::conditions(
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since,
            input.copy_source_if_unmodified_since,
        );
        let directive = if replace {
            convert::check_metadata(&input.metadata)?;
            let headers = content_headers!(input);
            convert::check_headers(&self.store, &input.bucket, &input.key, &headers)?;
            Directive::Replace(headers)
        } else if src_bucket == input.bucket
            && src_key == input.key
            && (input.storage_class.is_some() || input.server_side_encryption.is_some())
        {
            // A copy onto itself that names a storage class or an encryption S3 takes as a change
            // (the way to rewrite an object in place, or to change its class): the object's own
            // headers again, with the class named (an encryption named is `AES256`, what every
            // object gets), a change no origin refuses.
            Directive::Again
        } else {
            Directive::Copy
        };
        let tags = match input.tagging_directive.as_ref().map(|d| d.as_str()) {
            None | Some(TaggingDirective::COPY) => None,
            Some(TaggingDirective::REPLACE) => Some(convert::tags(input.tagging.as_deref())?),
            Some(_) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "Unknown tagging directive: x-amz-tagging-directive must be COPY or REPLACE."
                ));
            }
        };
        let copy = CopyInput {
            src_bucket,
            src_key,
            conditions,
            directive,
            storage_class: convert::storage_class(input.storage_class.as_ref()),
            tags,
            checksum_algorithm,
        };
        let out = self
            .store
            .copy(&input.bucket, &input.key, copy)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(convert::etag(&out.etag)),
                last_modified: Some(convert::timestamp(out.last_modified)),
                checksum_type: out
                    .checksums
                    .checksum_type()
                    .map(|t| ChecksumType::from_static(t.as_str())),
                checksum_crc32: out.checksums.crc32,
                checksum_crc32c: out.checksums.crc32c,
                checksum_crc64nvme: out.checksums.crc64nvme,
                checksum_sha1: out.checksums.sha1,
                checksum_sha256: out.checksums.sha256,
            }),
            server_side_encryption: encryption,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let url = wants_url(&input.encoding_type)?;
        let after = match input.continuation_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => Some(
                perch_cache::list_untoken(t)
                    .ok_or_else(|| s3_error!(InvalidArgument, "The continuation token provided is incorrect"))?,
            ),
            None => input.start_after.clone().filter(|s| !s.is_empty()),
        };
        let query = PageQuery {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone().filter(|d| !d.is_empty()),
            max_keys: max_keys_of(input.max_keys)?,
            after,
        };
        check_list_query(&query)?;
        let page = self.store.list(&input.bucket, &query).await.map_err(store_error)?;
        let key_count = (page.objects.len() + page.common_prefixes.len()) as i32;
        let owner = if input.fetch_owner == Some(true) && !page.objects.is_empty() {
            self.owner(&input.bucket).await
        } else {
            None
        };
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(encode(input.prefix.unwrap_or_default(), url)),
            delimiter: delimiter_out(input.delimiter, url),
            max_keys: Some(query.max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            start_after: input.start_after.map(|s| encode(s, url)),
            is_truncated: Some(page.next_after.is_some()),
            next_continuation_token: page.next_after.as_deref().map(perch_cache::list_token),
            contents: Some(objects_of(&page, url, owner.as_ref())),
            common_prefixes: prefixes_of(&page, url),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let url = wants_url(&input.encoding_type)?;
        let page = self
            .list_v1(
                &input.bucket,
                &input.prefix,
                &input.delimiter,
                input.max_keys,
                &input.marker,
            )
            .await?;
        let truncated = page.next_after.is_some();
        // S3 names a NextMarker only with a delimiter; without one, a client goes on from the
        // page's last key. A page that ends elsewhere (one left empty by pending deletes that
        // hide the origin's names, which S3 never answers) names it all the same.
        let delimited = input.delimiter.as_deref().is_some_and(|d| !d.is_empty());
        let last_key = page.objects.last().map(|o| o.key.as_str());
        let next_marker = page
            .next_after
            .clone()
            .filter(|after| delimited || Some(after.as_str()) != last_key);
        // Version 1 lists every object with its owner.
        let owner = if page.objects.is_empty() {
            None
        } else {
            self.owner(&input.bucket).await
        };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            // S3 answers version 1's Prefix as given, even with encoding-type=url (boto3 asks for
            // that encoding by itself and decodes every other field but this one).
            prefix: Some(input.prefix.unwrap_or_default()),
            delimiter: delimiter_out(input.delimiter, url),
            marker: Some(encode(input.marker.unwrap_or_default(), url)),
            max_keys: Some(max_keys_of(input.max_keys)? as i32),
            is_truncated: Some(truncated),
            next_marker: next_marker.map(|m| encode(m, url)),
            contents: Some(objects_of(&page, url, owner.as_ref())),
            common_prefixes: prefixes_of(&page, url),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        let url = wants_url(&input.encoding_type)?;
        let page = self
            .list_v1(
                &input.bucket,
                &input.prefix,
                &input.delimiter,
                input.max_keys,
                &input.key_marker,
            )
            .await?;
        let truncated = page.next_after.is_some();
        let next_key_marker = page.next_after.clone();
        let owner = if page.objects.is_empty() {
            None
        } else {
            self.owner(&input.bucket).await
        };
        let versions = page
            .objects
            .iter()
            .map(|o| ObjectVersion {
                owner: owner.clone(),
                key: Some(encode(o.key.clone(), url)),
                size: Some(o.size as i64),
                e_tag: Some(convert::etag(&o.etag)),
                last_modified: Some(convert::timestamp(o.last_modified)),
                is_latest: Some(true),
                version_id: Some("null".to_owned()),
                checksum_algorithm: o
                    .checksum
                    .map(|(a, _)| vec![ChecksumAlgorithm::from_static(a.as_str())]),
                checksum_type: o.checksum.map(|(_, t)| ChecksumType::from_static(t.as_str())),
                storage_class: Some(o.storage_class.clone().map_or_else(
                    || ObjectVersionStorageClass::from_static(ObjectVersionStorageClass::STANDARD),
                    ObjectVersionStorageClass::from,
                )),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(encode(input.prefix.unwrap_or_default(), url)),
            delimiter: delimiter_out(input.delimiter, url),
            key_marker: Some(encode(input.key_marker.unwrap_or_default(), url)),
            version_id_marker: input.version_id_marker,
            max_keys: Some(max_keys_of(input.max_keys)? as i32),
            is_truncated: Some(truncated),
            next_version_id_marker: next_key_marker.as_ref().map(|_| "null".to_owned()),
            next_key_marker: next_key_marker.map(|m| encode(m, url)),
            versions: Some(versions),
            common_prefixes: prefixes_of(&page, url),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        convert::check_key(&input.key)?;
        convert::check_metadata(&input.metadata)?;
        convert::check_canned_acl(input.acl.as_ref().map(|a| a.as_str()))?;
        convert::check_kept(convert::unkept!(input))?;
        let encryption = input.server_side_encryption.clone();
        let headers = ContentHeaders {
            storage_class: convert::storage_class(input.storage_class.as_ref()),
            tags: convert::tags(input.tagging.as_deref())?,
            ..content_headers!(input)
        };
        convert::check_headers(&self.store, &input.bucket, &input.key, &headers)?;
        let checksum = multipart_checksum(input.checksum_algorithm.as_ref(), input.checksum_type.as_ref())?;
        let upload_id = self
            .store
            .create_multipart_upload(&input.bucket, &input.key, &headers, checksum)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            checksum_algorithm: checksum.map(|c| ChecksumAlgorithm::from_static(c.algorithm.as_str())),
            checksum_type: checksum.map(|c| ChecksumType::from_static(c.checksum_type.as_str())),
            server_side_encryption: encryption,
            ..Default::default()
        }))
    }

    /// A part copied from a range of an object (the AWS CLI's and boto3's copies over their
    /// multipart threshold): the source is read as a GET reads it (cache, pending writes, origin)
    /// and the bytes are staged as an uploaded part.
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        check_part(
            &input.key,
            input.part_number,
            input.sse_customer_algorithm.is_some() || input.copy_source_sse_customer_algorithm.is_some(),
        )?;
        let (src_bucket, src_key) = copy_source(&input.copy_source)?;
        // An upload that is not there is NoSuchUpload before the source is read and spooled.
        self.store
            .list_parts(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(store_error)?;
        let wanted = match input.copy_source_range.as_deref() {
            None => None,
            Some(text) => Some(copy_source_range(text)?),
        };
        let conditions = convert::conditions(
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since,
            input.copy_source_if_unmodified_since,
        );
        let source = self
            .store
            .get(
                &src_bucket,
                &src_key,
                wanted.map(|(first, last)| perch_cache::ByteRange::FromTo {
                    first,
                    last: Some(last),
                }),
                &conditions,
            )
            .await
            .map_err(|e| match e {
                // A copy's conditions that do not hold are 412, If-None-Match included.
                perch_cache::StoreError::Origin(perch_cache::OriginError::NotModified { .. }) => {
                    s3_error!(
                        PreconditionFailed,
                        "At least one of the pre-conditions you specified did not hold"
                    )
                }
                e => store_error(e),
            })?
            .output;
        let size = source.meta.size;
        let len = match (wanted, source.range) {
            (None, _) => size,
            // The range must lie within the source: a GET would answer its part that does.
            (Some((first, last)), Some(got)) if got == (first, last) => last - first + 1,
            (Some(_), _) => {
                return Err(s3_error!(
                    InvalidRange,
                    "Range specified is not valid for source object of size: {size}"
                ));
            }
        };
        if len > crate::limits::S3_BODY_MAX {
            return Err(s3_error!(
                InvalidRequest,
                "The specified copy source is larger than the maximum allowable size for a copy source: {}",
                crate::limits::S3_BODY_MAX
            ));
        }
        let declared = Declared {
            content_length: Some(len as i64),
            content_md5: None,
            algorithm: None,
            ..Default::default()
        };
        // A source that fails midway (the origin, a damaged copy) is Perch's fault, not the
        // client's body: 500, which SDKs retry, never the 400 a short client body gets.
        let body = Some(StreamingBlob::wrap(source.body.map(|chunk| {
            chunk.map_err(|e| {
                let mut err = s3_error!(InternalError, "Reading the copy source failed: {e}");
                err.set_source(Box::new(e));
                err
            })
        })));
        let at = (&*input.bucket, &*input.key, &*input.upload_id, input.part_number);
        let out = self.stage_part(at, body, declared, None).await?;
        let c = out.checksums;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(convert::etag(&out.etag)),
                last_modified: Some(convert::timestamp(std::time::SystemTime::now())),
                checksum_crc32: c.crc32,
                checksum_crc32c: c.crc32c,
                checksum_crc64nvme: c.crc64nvme,
                checksum_sha1: c.sha1,
                checksum_sha256: c.sha256,
            }),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let trailers = req.trailing_headers;
        let headers = req.headers;
        let input = req.input;
        check_part(&input.key, input.part_number, input.sse_customer_algorithm.is_some())?;
        let declared = Declared {
            content_length: input.content_length,
            content_md5: content_md5(&headers, input.content_md5.as_deref()),
            algorithm: input.checksum_algorithm.as_ref(),
            checksums: convert::checksums(
                input.checksum_crc32.clone(),
                input.checksum_crc32c.clone(),
                input.checksum_crc64nvme.clone(),
                input.checksum_sha1.clone(),
                input.checksum_sha256.clone(),
            ),
            ..Default::default()
        }
        .with_headers(&headers)?;
        let at = (&*input.bucket, &*input.key, &*input.upload_id, input.part_number);
        let out = self.stage_part(at, input.body, declared, trailers.as_ref()).await?;
        // The part's checksum the upload keeps (of its algorithm, computed if the client sent none).
        let c = out.checksums;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(convert::etag(&out.etag)),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (input, headers) = (req.input, req.headers);
        convert::check_key(&input.key)?;
        convert::check_unconditional(
            "multipart completions",
            "If-Match, If-None-Match",
            input.if_match.is_some() || input.if_none_match.is_some(),
        )?;
        let parts = input
            .multipart_upload
            .and_then(|m| m.parts)
            .ok_or_else(|| s3_error!(MalformedXML, "The XML names no parts."))?;
        let parts = parts
            .into_iter()
            .map(|p| {
                let part_number = p
                    .part_number
                    .ok_or_else(|| s3_error!(MalformedXML, "A part has no PartNumber."))?;
                let etag = p.e_tag.ok_or_else(|| s3_error!(MalformedXML, "A part has no ETag."))?;
                Ok(OriginPart {
                    part_number,
                    etag: format!("\"{}\"", etag.value()),
                    checksums: convert::checksums(
                        p.checksum_crc32,
                        p.checksum_crc32c,
                        p.checksum_crc64nvme,
                        p.checksum_sha1,
                        p.checksum_sha256,
                    ),
                })
            })
            .collect::<S3Result<Vec<_>>>()?;
        // What the client says the object will be: checked before anything is written.
        let size = match input.mpu_object_size {
            Some(n) => Some(u64::try_from(n).map_err(|_| {
                s3_error!(
                    InvalidArgument,
                    "x-amz-mp-object-size must be a size in bytes, not {n}."
                )
            })?),
            None => None,
        };
        let expected = Expected {
            checksums: convert::checksums(
                input.checksum_crc32,
                input.checksum_crc32c,
                input.checksum_crc64nvme,
                input.checksum_sha1,
                input.checksum_sha256,
            ),
            size,
        };
        let out = self
            .store
            .complete_multipart_upload(&input.bucket, &input.key, &input.upload_id, &parts, &expected)
            .await
            .map_err(store_error)?;
        let c = out.checksums;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            location: Some(
                self.host.object_url(
                    headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default(),
                    &input.bucket,
                    &input.key,
                ),
            ),
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(convert::etag(&out.etag)),
            checksum_type: c.checksum_type().map(|t| ChecksumType::from_static(t.as_str())),
            checksum_crc32: c.crc32,
            checksum_crc32c: c.crc32c,
            checksum_crc64nvme: c.crc64nvme,
            checksum_sha1: c.sha1,
            checksum_sha256: c.sha256,
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.store
            .abort_multipart_upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        not_negative("max-parts", input.max_parts)?;
        not_negative("part-number-marker", input.part_number_marker)?;
        let all = self
            .store
            .list_parts(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(store_error)?;
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let marker = input.part_number_marker.unwrap_or(0);
        let mut rest = all.into_iter().filter(|p| p.part_number > marker);
        let parts: Vec<Part> = rest
            .by_ref()
            .take(max)
            .map(|p| Part {
                part_number: Some(p.part_number),
                e_tag: Some(convert::etag(&p.etag)),
                size: Some(p.size as i64),
                last_modified: Some(convert::timestamp(p.last_modified)),
                checksum_crc32: p.checksums.crc32,
                checksum_crc32c: p.checksums.crc32c,
                checksum_crc64nvme: p.checksums.crc64nvme,
                checksum_sha1: p.checksums.sha1,
                checksum_sha256: p.checksums.sha256,
            })
            .collect();
        let truncated = rest.next().is_some();
        let owner = self.owner(&input.bucket).await;
        let checksum = self
            .store
            .upload_checksum(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(store_error)?;
        Ok(S3Response::new(ListPartsOutput {
            checksum_algorithm: checksum.map(|c| ChecksumAlgorithm::from_static(c.algorithm.as_str())),
            checksum_type: checksum.map(|c| ChecksumType::from_static(c.checksum_type.as_str())),
            initiator: owner.as_ref().map(initiator_of),
            owner,
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated {
                parts.last().and_then(|p| p.part_number)
            } else {
                None
            },
            is_truncated: Some(truncated),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        not_negative("max-uploads", input.max_uploads)?;
        let url = wants_url(&input.encoding_type)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut all = self
            .store
            .list_multipart_uploads(&input.bucket, &prefix)
            .await
            .map_err(store_error)?;
        // By key, then a key's uploads in the order they began, as S3 lists them.
        all.sort_by(|a, b| (&a.key, a.initiated, &a.upload_id).cmp(&(&b.key, b.initiated, &b.upload_id)));
        let max = input.max_uploads.unwrap_or(1000).clamp(0, 1000) as usize;
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let id_marker = input.upload_id_marker.clone().unwrap_or_default();
        // The page starts after the marker's upload; with no upload id, after every upload of the
        // marker's key (or of the common prefix it names); an upload id no longer listed starts
        // the page at its key's first upload (repeated rather than lost).
        let start = if key_marker.is_empty() {
            0
        } else if id_marker.is_empty() {
            let past = |u: &perch_cache::UploadInfo| {
                u.key > key_marker
                    && !(delimiter
                        .as_deref()
                        .is_some_and(|d| key_marker.ends_with(d) && u.key.starts_with(&key_marker)))
            };
            all.iter().position(past).unwrap_or(all.len())
        } else {
            match all.iter().position(|u| u.key == key_marker && u.upload_id == id_marker) {
                Some(i) => i + 1,
                None => all.iter().position(|u| u.key >= key_marker).unwrap_or(all.len()),
            }
        };
        let owner = self.owner(&input.bucket).await;
        let mut uploads: Vec<MultipartUpload> = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut last: Option<(String, Option<String>)> = None;
        let mut truncated = false;
        for u in all.into_iter().skip(start) {
            let common = delimiter.as_deref().and_then(|d| {
                let rest = u.key.get(prefix.len()..)?;
                rest.find(d).map(|at| u.key[..prefix.len() + at + d.len()].to_owned())
            });
            if let Some(p) = &common
                && prefixes.last() == Some(p)
            {
                continue;
            }
            if uploads.len() + prefixes.len() == max {
                truncated = true;
                break;
            }
            match common {
                Some(p) => {
                    last = Some((p.clone(), None));
                    prefixes.push(p);
                }
                None => {
                    last = Some((u.key.clone(), Some(u.upload_id.clone())));
                    uploads.push(MultipartUpload {
                        key: Some(encode(u.key, url)),
                        upload_id: Some(u.upload_id),
                        initiated: Some(convert::timestamp(u.initiated)),
                        initiator: owner.as_ref().map(initiator_of),
                        owner: owner.clone(),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        checksum_algorithm: u.checksum.map(|c| ChecksumAlgorithm::from_static(c.algorithm.as_str())),
                        checksum_type: u.checksum.map(|c| ChecksumType::from_static(c.checksum_type.as_str())),
                    });
                }
            }
        }
        let (next_key_marker, next_upload_id_marker) = match last.filter(|_| truncated) {
            Some((key, id)) => (Some(encode(key, url)), id),
            None => (None, None),
        };
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix.map(|p| encode(p, url)),
            delimiter: delimiter.map(|d| encode(d, url)),
            key_marker: input.key_marker.map(|k| encode(k, url)),
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker,
            next_upload_id_marker,
            common_prefixes: (!prefixes.is_empty()).then(|| {
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(encode(p, url)),
                    })
                    .collect()
            }),
            encoding_type: input.encoding_type,
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    // ----- bucket configurations and object ACLs: the origin's (bucket_config.rs) -----

    async fn put_bucket_acl(&self, req: S3Request<PutBucketAclInput>) -> S3Result<S3Response<PutBucketAclOutput>> {
        bucket_config::put_bucket_acl(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn get_object_acl(&self, req: S3Request<GetObjectAclInput>) -> S3Result<S3Response<GetObjectAclOutput>> {
        bucket_config::get_object_acl(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    /// An object's attributes, from its HEAD: ETag, size, storage class (`STANDARD` unless the
    /// object names another), the checksums it keeps, and for an object uploaded in parts their count
    /// (the parts themselves are not listed: S3 lists them only for objects with additional
    /// checksums, and Perch does not keep a part's checksum).
    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let input = req.input;
        convert::check_key(&input.key)?;
        convert::check_version(input.version_id.as_deref())?;
        let mut asked = [false; 5];
        // SDKs send one comma-separated header, which s3s keeps as one value.
        for a in input.object_attributes.iter().flat_map(|a| a.as_str().split(',')) {
            let i = match a.trim() {
                ObjectAttributes::ETAG => 0,
                ObjectAttributes::CHECKSUM => 1,
                ObjectAttributes::OBJECT_PARTS => 2,
                ObjectAttributes::STORAGE_CLASS => 3,
                ObjectAttributes::OBJECT_SIZE => 4,
                other => {
                    return Err(s3_error!(InvalidArgument, "Invalid attribute name specified: {other}"));
                }
            };
            asked[i] = true;
        }
        let [etag, checksum, parts, storage_class, size] = asked;
        if !asked.contains(&true) {
            return Err(s3_error!(
                InvalidArgument,
                "The x-amz-object-attributes header names no attribute."
            ));
        }
        let (meta, _) = self
            .store
            .head(&input.bucket, &input.key, &perch_cache::Conditions::default())
            .await
            .map_err(store_error)?;
        let c = &meta.checksums;
        let checksum = (checksum && c.checksum_type().is_some()).then(|| Checksum {
            checksum_type: c.checksum_type().map(|t| ChecksumType::from_static(t.as_str())),
            checksum_crc32: c.crc32.clone(),
            checksum_crc32c: c.crc32c.clone(),
            checksum_crc64nvme: c.crc64nvme.clone(),
            checksum_sha1: c.sha1.clone(),
            checksum_sha256: c.sha256.clone(),
        });
        let parts_count = meta
            .etag
            .trim_matches('"')
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<i32>().ok());
        let object_parts = parts
            .then_some(parts_count)
            .flatten()
            .map(|n| GetObjectAttributesParts {
                total_parts_count: Some(n),
                ..Default::default()
            });
        Ok(S3Response::new(GetObjectAttributesOutput {
            e_tag: etag.then(|| convert::etag(&meta.etag)),
            checksum,
            object_parts,
            storage_class: storage_class.then(|| {
                meta.headers
                    .storage_class
                    .clone()
                    .map_or_else(|| StorageClass::from_static(StorageClass::STANDARD), StorageClass::from)
            }),
            object_size: size.then_some(meta.size as i64),
            last_modified: Some(Timestamp::from(meta.last_modified)),
            ..Default::default()
        }))
    }

    /// Perch sets no object lock; one set at the origin is read there (`bucket_config::ConfigRead`).
    async fn put_object_lock_configuration(
        &self,
        _req: S3Request<PutObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
        Err(s3s::S3Error::with_message(
            s3s::S3ErrorCode::NotImplemented,
            perch_cache::NO_OBJECT_LOCK,
        ))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        bucket_config::get_object_tagging(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        bucket_config::put_object_tagging(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        bucket_config::delete_object_tagging(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_object_acl(&self, req: S3Request<PutObjectAclInput>) -> S3Result<S3Response<PutObjectAclOutput>> {
        bucket_config::put_object_acl(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_policy(
        &self,
        req: S3Request<PutBucketPolicyInput>,
    ) -> S3Result<S3Response<PutBucketPolicyOutput>> {
        bucket_config::put_bucket_policy(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        bucket_config::put_bucket_versioning(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        bucket_config::put_bucket_lifecycle_configuration(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_ownership_controls(
        &self,
        req: S3Request<PutBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<PutBucketOwnershipControlsOutput>> {
        bucket_config::put_bucket_ownership_controls(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_cors(&self, req: S3Request<PutBucketCorsInput>) -> S3Result<S3Response<PutBucketCorsOutput>> {
        bucket_config::put_bucket_cors(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        bucket_config::put_bucket_tagging(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn delete_bucket_policy(
        &self,
        req: S3Request<DeleteBucketPolicyInput>,
    ) -> S3Result<S3Response<DeleteBucketPolicyOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::Policy).await?;
        Ok(S3Response::new(DeleteBucketPolicyOutput::default()))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::Lifecycle).await?;
        Ok(S3Response::new(DeleteBucketLifecycleOutput::default()))
    }

    async fn delete_bucket_ownership_controls(
        &self,
        req: S3Request<DeleteBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<DeleteBucketOwnershipControlsOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::OwnershipControls).await?;
        Ok(S3Response::new(DeleteBucketOwnershipControlsOutput::default()))
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::Cors).await?;
        Ok(S3Response::new(DeleteBucketCorsOutput::default()))
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::Tagging).await?;
        Ok(S3Response::new(DeleteBucketTaggingOutput::default()))
    }

    async fn put_bucket_encryption(
        &self,
        req: S3Request<PutBucketEncryptionInput>,
    ) -> S3Result<S3Response<PutBucketEncryptionOutput>> {
        bucket_config::put_bucket_encryption(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_public_access_block(
        &self,
        req: S3Request<PutPublicAccessBlockInput>,
    ) -> S3Result<S3Response<PutPublicAccessBlockOutput>> {
        bucket_config::put_public_access_block(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_notification_configuration(
        &self,
        req: S3Request<PutBucketNotificationConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketNotificationConfigurationOutput>> {
        bucket_config::put_bucket_notification_configuration(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_request_payment(
        &self,
        req: S3Request<PutBucketRequestPaymentInput>,
    ) -> S3Result<S3Response<PutBucketRequestPaymentOutput>> {
        bucket_config::put_bucket_request_payment(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_accelerate_configuration(
        &self,
        req: S3Request<PutBucketAccelerateConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketAccelerateConfigurationOutput>> {
        bucket_config::put_bucket_accelerate_configuration(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_website(
        &self,
        req: S3Request<PutBucketWebsiteInput>,
    ) -> S3Result<S3Response<PutBucketWebsiteOutput>> {
        bucket_config::put_bucket_website(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_logging(
        &self,
        req: S3Request<PutBucketLoggingInput>,
    ) -> S3Result<S3Response<PutBucketLoggingOutput>> {
        bucket_config::put_bucket_logging(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn put_bucket_replication(
        &self,
        req: S3Request<PutBucketReplicationInput>,
    ) -> S3Result<S3Response<PutBucketReplicationOutput>> {
        bucket_config::put_bucket_replication(&self.store, req.input)
            .await
            .map(S3Response::new)
    }

    async fn delete_bucket_encryption(
        &self,
        req: S3Request<DeleteBucketEncryptionInput>,
    ) -> S3Result<S3Response<DeleteBucketEncryptionOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::Encryption).await?;
        Ok(S3Response::new(DeleteBucketEncryptionOutput::default()))
    }

    async fn delete_public_access_block(
        &self,
        req: S3Request<DeletePublicAccessBlockInput>,
    ) -> S3Result<S3Response<DeletePublicAccessBlockOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::PublicAccessBlock).await?;
        Ok(S3Response::new(DeletePublicAccessBlockOutput::default()))
    }

    async fn delete_bucket_website(
        &self,
        req: S3Request<DeleteBucketWebsiteInput>,
    ) -> S3Result<S3Response<DeleteBucketWebsiteOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::Website).await?;
        Ok(S3Response::new(DeleteBucketWebsiteOutput::default()))
    }

    async fn delete_bucket_replication(
        &self,
        req: S3Request<DeleteBucketReplicationInput>,
    ) -> S3Result<S3Response<DeleteBucketReplicationOutput>> {
        bucket_config::delete(&self.store, &req.input.bucket, Subresource::Replication).await?;
        Ok(S3Response::new(DeleteBucketReplicationOutput::default()))
    }
}

/// The checksum a CreateMultipartUpload asks its object to keep (`x-amz-checksum-algorithm`,
/// `x-amz-checksum-type`), refused as S3 refuses it.
fn multipart_checksum(
    algorithm: Option<&ChecksumAlgorithm>,
    checksum_type: Option<&ChecksumType>,
) -> S3Result<Option<perch_cache::MultipartChecksum>> {
    use perch_cache::{ChecksumAlgorithm as Algorithm, ChecksumType as Type, MultipartChecksum};
    let Some(algorithm) = algorithm else {
        if checksum_type.is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."
            ));
        }
        return Ok(None);
    };
    let algorithm = Algorithm::parse(algorithm.as_str()).ok_or_else(|| {
        s3_error!(
            InvalidRequest,
            "Checksum algorithm provided is unsupported. Please try again with any of the valid types: \
             [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]"
        )
    })?;
    let checksum_type = checksum_type
        .map(|t| {
            Type::parse(t.as_str())
                .ok_or_else(|| s3_error!(InvalidRequest, "Value for x-amz-checksum-type header is invalid."))
        })
        .transpose()?;
    MultipartChecksum::new(algorithm, checksum_type)
        .map(Some)
        .map_err(origin_error)
}
