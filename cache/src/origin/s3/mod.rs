//! `S3Origin`: the `Origin` trait over any S3 server (Tigris, AWS, MinIO, moto) with aws-sdk-s3,
//! its GETs and HEADs signed and sent beside the SDK (`get.rs`). Path-style, static keys or
//! anonymous, no SDK retries (`RetryingOrigin` retries), TCP_NODELAY sockets.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, IdentityCache, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, DateTime, Length};
use aws_sdk_s3::types::{
    BucketCannedAcl, BucketLocationConstraint, ChecksumAlgorithm, ChecksumType as SdkChecksumType,
    CompletedMultipartUpload, CompletedPart as SdkCompletedPart, CreateBucketConfiguration, EncodingType,
    MetadataDirective as SdkMetadataDirective, ObjectOwnership, StorageClass, TaggingDirective,
};
use aws_smithy_http_client::{Builder as HttpClientBuilder, Connector, tls};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::HttpConnectorSettings;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::HttpError;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use futures::Stream;

use super::*;
use crate::error::Doing;

/// How to reach an S3 origin.
#[derive(Clone)]
pub struct S3OriginConfig {
    /// `http(s)://host:port`.
    pub endpoint: String,
    /// The signing region; `auto` for Tigris.
    pub region: String,
    /// Both keys, or neither for anonymous (unsigned) requests.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Time to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time one attempt may wait for the origin's answer (uploads get extra time for their
    /// body, see [`MIN_UPLOAD_RATE`]), and the longest silence inside a GET body.
    pub read_timeout: Duration,
}

impl Default for S3OriginConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "auto".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for S3OriginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3OriginConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// The slowest upload an attempt tolerates: a PUT or part of `n` bytes gets
/// `read_timeout + n / MIN_UPLOAD_RATE` before it counts as timed out.
pub const MIN_UPLOAD_RATE: u64 = 1024 * 1024;

/// An S3 server as the origin.
///
/// Each trait call is exactly one HTTP request (the SDK's own retries are off) bounded by
/// `read_timeout`; `RetryingOrigin` decides what to retry. Connections are pooled and kept
/// alive, with TCP_NODELAY set on every socket.
///
/// Without keys the client sends unsigned requests, which S3 servers answer for public
/// buckets (or reject with 403, classified as `Rejected`). Giving only one of the two keys is
/// a configuration error.
#[derive(Clone, Debug)]
pub struct S3Origin {
    client: Client,
    /// `http(s)://host:port`, without a trailing `/`.
    endpoint: String,
    /// The connection pool of the GETs and HEADs sent beside the SDK (`get.rs`).
    direct: Arc<Connector>,
    region: String,
    read_timeout: Duration,
    /// The key pair requests are signed with; none for anonymous requests.
    keys: Option<OriginKeys>,
}

/// Applies `ContentHeaders` to any of the three SDK builders that take them.
macro_rules! with_headers {
    ($req:expr, $h:expr) => {{
        let h: &ContentHeaders = $h;
        let mut req = $req
            .set_content_type(h.content_type.clone())
            .set_cache_control(h.cache_control.clone())
            .set_content_encoding(h.content_encoding.clone())
            .set_content_disposition(h.content_disposition.clone())
            .set_content_language(h.content_language.clone())
            .set_storage_class(h.storage_class.as_deref().map(StorageClass::from))
            .set_tagging(h.tagging());
        for (k, v) in &h.metadata {
            req = req.metadata(k.clone(), v.clone());
        }
        req
    }};
}

mod body;
mod config;
mod convert;
mod errors;
mod get;
mod keys;
mod moto_workaround;
mod multipart;
mod region;

pub(crate) use errors::is_credential_code;

use body::*;
use convert::*;
use errors::*;
pub use keys::OriginKeys;
use moto_workaround::*;

impl S3Origin {
    pub fn new(cfg: S3OriginConfig) -> OriginResult<S3Origin> {
        let invalid = |msg: String| OriginError::Io(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if !(cfg.endpoint.starts_with("http://") || cfg.endpoint.starts_with("https://")) {
            return Err(invalid(format!(
                "origin endpoint {:?} must start with http:// or https://",
                cfg.endpoint
            )));
        }
        let region = if cfg.region.is_empty() {
            "auto".to_owned()
        } else {
            cfg.region.clone()
        };

        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(cfg.endpoint.trim_end_matches('/'))
            .region(Region::new(region.clone()))
            .force_path_style(true)
            .http_client(http_client())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                // Only the connect timeout lives in the connector; the per-attempt timeout is
                // applied by `S3Origin::call` so that uploads can get time for their body.
                TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .disable_read_timeout()
                    .disable_operation_timeout()
                    .disable_operation_attempt_timeout()
                    .build(),
            )
            // The SDK's stall detector would abort a GET whose reader (a slow client of the
            // gateway) stops pulling, and an upload an origin is slow to read; Perch watches
            // GET bodies itself (`OriginBody`) and bounds each attempt.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            // Send exactly the checksums the client gave, no SDK-made ones.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);

        let keys = match (cfg.access_key_id, cfg.secret_access_key) {
            (Some(id), Some(secret)) => {
                let keys = OriginKeys::new(id, secret);
                // No identity cache: a replaced pair signs the very next request.
                builder = builder
                    .credentials_provider(SharedCredentialsProvider::new(keys.clone()))
                    .identity_cache(IdentityCache::no_cache());
                Some(keys)
            }
            (None, None) => {
                builder = builder.allow_no_auth();
                None
            }
            _ => {
                return Err(invalid(
                    "origin credentials need both the access key id and the secret access key".to_owned(),
                ));
            }
        };

        Ok(S3Origin {
            client: Client::from_conf(builder.build()),
            endpoint: cfg.endpoint.trim_end_matches('/').to_owned(),
            direct: Arc::new(connector(Some(
                &HttpConnectorSettings::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .build(),
            ))),
            region,
            read_timeout: cfg.read_timeout,
            keys,
        })
    }

    /// The key pair this origin signs with, to replace it while it runs; none when anonymous.
    pub fn keys(&self) -> Option<OriginKeys> {
        self.keys.clone()
    }

    /// Runs one SDK request within `read_timeout + extra` and classifies its failure.
    async fn call<T, E>(
        &self,
        subject: Subject,
        extra: Duration,
        fut: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    ) -> OriginResult<T>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let limit = self.read_timeout + extra;
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(err)) => Err(classify(err, subject)),
            Err(_) => Err(OriginError::transient(format!(
                "no answer from the origin within {limit:?}"
            ))),
        }
    }

    /// The time an upload of `len` bytes gets on top of `read_timeout`.
    fn upload_allowance(len: u64) -> Duration {
        Duration::from_secs(len / MIN_UPLOAD_RATE)
    }
}

/// The SDK's hyper client (rustls with aws-lc, as its default), with TCP_NODELAY set explicitly:
/// without it a keep-alive request to a loopback S3 server can wait ~40 ms on delayed ACKs.
fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    HttpClientBuilder::new().build_with_connector_fn(|settings, _| connector(settings))
}

/// One connection pool to the origin (see `http_client`).
fn connector(settings: Option<&HttpConnectorSettings>) -> Connector {
    let mut conn = Connector::builder().enable_tcp_nodelay(true);
    if let Some(settings) = settings {
        conn = conn.connector_settings(settings.clone());
    }
    conn.tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .build()
}

#[async_trait]
impl Origin for S3Origin {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn list_buckets(&self) -> OriginResult<Vec<BucketInfo>> {
        let mut buckets = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .call(
                    Subject::Bucket,
                    Duration::ZERO,
                    self.client.list_buckets().set_continuation_token(token.take()).send(),
                )
                .await?;
            let owner = out.owner().and_then(|o| {
                Some(BucketOwner {
                    id: o.id()?.to_owned(),
                    display_name: o.display_name().map(str::to_owned),
                })
            });
            buckets.extend(out.buckets().iter().map(|b| BucketInfo {
                name: b.name().unwrap_or_default().to_owned(),
                created: to_system_time(b.creation_date()),
                owner: owner.clone(),
            }));
            match out.continuation_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(buckets),
            }
        }
    }

    async fn create_bucket(&self, bucket: &str) -> OriginResult<()> {
        self.create_bucket_in(bucket, &NewBucket::default()).await
    }

    async fn create_bucket_in(&self, bucket: &str, new: &NewBucket) -> OriginResult<()> {
        let mut req = self.client.create_bucket().bucket(bucket);
        for (name, value) in &new.acl {
            req = match name.as_str() {
                "x-amz-acl" => req.acl(BucketCannedAcl::from(value.as_str())),
                "x-amz-grant-full-control" => req.grant_full_control(value),
                "x-amz-grant-read" => req.grant_read(value),
                "x-amz-grant-read-acp" => req.grant_read_acp(value),
                "x-amz-grant-write" => req.grant_write(value),
                "x-amz-grant-write-acp" => req.grant_write_acp(value),
                _ => req,
            };
        }
        if let Some(o) = &new.object_ownership {
            req = req.object_ownership(ObjectOwnership::from(o.as_str()));
        }
        // The client's constraint, for the origin to take or refuse; without one, `auto` (Tigris)
        // and us-east-1 take none and other regions need theirs.
        let constraint = new
            .location
            .as_deref()
            .or((!matches!(self.region.as_str(), "auto" | "us-east-1")).then_some(self.region.as_str()));
        if let Some(c) = constraint {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(c))
                    .build(),
            );
        }
        self.call(Subject::Bucket, Duration::ZERO, req.send()).await?;
        Ok(())
    }

    async fn bucket_location(&self, bucket: &str) -> OriginResult<Option<String>> {
        let out = self
            .call(
                Subject::Bucket,
                Duration::ZERO,
                self.client.get_bucket_location().bucket(bucket).send(),
            )
            .await?;
        Ok(out
            .location_constraint()
            .map(|c| c.as_str().to_owned())
            .filter(|c| !c.is_empty()))
    }

    async fn head_bucket(&self, bucket: &str) -> OriginResult<Option<String>> {
        let out = self
            .call(
                Subject::Bucket,
                Duration::ZERO,
                self.client.head_bucket().bucket(bucket).send(),
            )
            .await?;
        Ok(out.bucket_region().filter(|r| !r.is_empty()).map(str::to_owned))
    }

    async fn delete_bucket(&self, bucket: &str) -> OriginResult<()> {
        self.call(
            Subject::Bucket,
            Duration::ZERO,
            self.client.delete_bucket().bucket(bucket).send(),
        )
        .await?;
        Ok(())
    }

    async fn head_object(&self, bucket: &str, key: &str, conditions: &Conditions) -> OriginResult<ObjectMeta> {
        self.head_direct(bucket, key, conditions).await
    }

    async fn head_part(&self, bucket: &str, key: &str, part: u32) -> OriginResult<PartHead> {
        self.head_part_direct(bucket, key, part).await
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<GetOutput> {
        self.get_direct(bucket, key, range, conditions).await
    }

    async fn put_object(&self, bucket: &str, key: &str, input: &PutInput) -> OriginResult<PutOutput> {
        let body = sdk_body(&input.body).await?;
        let c = &input.checksums;
        let req = with_headers!(self.client.put_object().bucket(bucket).key(key), &input.headers)
            .content_length(content_length(&input.body)?)
            .body(body)
            .set_checksum_crc32(c.crc32.clone())
            .set_checksum_crc32_c(c.crc32c.clone())
            .set_checksum_crc64_nvme(c.crc64nvme.clone())
            .set_checksum_sha1(c.sha1.clone())
            .set_checksum_sha256(c.sha256.clone())
            // Names the algorithm of the checksum given (S3 wants a single one); the SDK
            // computes nothing since the value is set.
            .set_checksum_algorithm(checksum_algorithm(c))
            .set_if_match(input.if_match.clone())
            .set_if_none_match(input.if_none_match.clone())
            .set_content_md5(input.content_md5.clone());
        let send = req
            .customize()
            .map_request(headers_mapper(
                input.headers.expires.clone(),
                input.extra_headers.clone(),
            ))
            .send();
        let out = self
            .call(Subject::Write, Self::upload_allowance(input.body.len()), send)
            .await?;
        Ok(PutOutput {
            etag: out.e_tag().unwrap_or_default().to_owned(),
            checksums: checksums_of(
                out.checksum_crc32(),
                out.checksum_crc32_c(),
                out.checksum_crc64_nvme(),
                out.checksum_sha1(),
                out.checksum_sha256(),
            ),
        })
    }

    async fn delete_object(&self, bucket: &str, key: &str, if_match: Option<&str>) -> OriginResult<()> {
        let request = self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .set_if_match(if_match.map(str::to_owned));
        // S3 answers a DELETE of a missing key 204, and names its errors: a bare 404 is a fault.
        self.call(Subject::Write, Duration::ZERO, request.send()).await?;
        Ok(())
    }

    async fn copy_object(&self, bucket: &str, key: &str, input: &CopyInput) -> OriginResult<CopyOutput> {
        let c = &input.conditions;
        // `Again`: the headers the source has, and its ETag as a condition, so that a write landing
        // between the HEAD and the copy fails it (412) rather than mix one's body with another's
        // headers.
        let again;
        let (directive, if_match) = match &input.directive {
            MetadataDirective::Again => {
                let src = self
                    .head_object(&input.src_bucket, &input.src_key, c)
                    .await
                    .map_err(|e| match e {
                        OriginError::NotModified { .. } => OriginError::PreconditionFailed,
                        e => e,
                    })?;
                again = MetadataDirective::Replace(src.headers);
                (&again, c.if_match.clone().or(Some(src.etag)))
            }
            directive => (directive, c.if_match.clone()),
        };
        // The copy's class, not the source's (S3: STANDARD unless the copy names one).
        let replaced;
        let directive = match directive {
            MetadataDirective::Replace(h) => {
                replaced = MetadataDirective::Replace(ContentHeaders {
                    storage_class: input.storage_class.clone(),
                    // The tags given (`with_headers!` sends them), none if none were.
                    tags: input.tags.clone().unwrap_or_default(),
                    ..h.clone()
                });
                &replaced
            }
            other => other,
        };
        let req = self
            .client
            .copy_object()
            .bucket(bucket)
            .key(key)
            .copy_source(copy_source(&input.src_bucket, &input.src_key))
            .set_copy_source_if_match(if_match)
            .set_copy_source_if_none_match(c.if_none_match.clone())
            .set_copy_source_if_modified_since(c.if_modified_since.map(DateTime::from))
            .set_copy_source_if_unmodified_since(c.if_unmodified_since.map(DateTime::from))
            .set_checksum_algorithm(input.checksum_algorithm.map(|a| ChecksumAlgorithm::from(a.as_str())));
        // The copy's tags: given (REPLACE), or the source's (S3's default).
        let req = match &input.tags {
            Some(tags) => req
                .tagging_directive(TaggingDirective::Replace)
                .set_tagging(crate::origin::tagging(tags)),
            None => req,
        };
        // (`Again` became a `Replace` above.)
        let send = match directive {
            MetadataDirective::Copy | MetadataDirective::Again => req
                .metadata_directive(SdkMetadataDirective::Copy)
                .set_storage_class(input.storage_class.as_deref().map(StorageClass::from))
                .customize()
                .map_request(expires_mapper(None))
                .send(),
            MetadataDirective::Replace(headers) => with_headers!(req, headers)
                .metadata_directive(SdkMetadataDirective::Replace)
                .customize()
                .map_request(expires_mapper(headers.expires.clone()))
                .send(),
        };
        // A copy of a large object takes the origin a while before it answers.
        let out = self.call(Subject::Object, self.read_timeout * 3, send).await?;
        let result = out.copy_object_result();
        let named = |v: Option<&str>| v.map(str::to_owned);
        Ok(CopyOutput {
            etag: result.and_then(|r| r.e_tag()).unwrap_or_default().to_owned(),
            last_modified: to_system_time(result.and_then(|r| r.last_modified())),
            checksums: Checksums {
                crc32: named(result.and_then(|r| r.checksum_crc32())),
                crc32c: named(result.and_then(|r| r.checksum_crc32_c())),
                crc64nvme: named(result.and_then(|r| r.checksum_crc64_nvme())),
                sha1: named(result.and_then(|r| r.checksum_sha1())),
                sha256: named(result.and_then(|r| r.checksum_sha256())),
            },
        })
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> OriginResult<ListPage> {
        let max_keys = i32::try_from(query.max_keys.min(1000)).unwrap_or(1000);
        let req = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .set_prefix(query.prefix.clone())
            .set_delimiter(query.delimiter.clone())
            .max_keys(max_keys)
            .set_start_after(query.start_after.clone())
            .set_continuation_token(query.continuation.clone())
            // Keys may hold characters XML 1.0 cannot carry; decode only if the origin
            // says it encoded.
            .encoding_type(EncodingType::Url);
        let out = self.call(Subject::Bucket, Duration::ZERO, req.send()).await?;
        let encoded = out.encoding_type() == Some(&EncodingType::Url);
        let text = |s: &str| if encoded { url_decode(s) } else { s.to_owned() };
        let objects = out
            .contents()
            .iter()
            .map(|o| ListEntry {
                key: text(o.key().unwrap_or_default()),
                size: non_negative(o.size()),
                etag: o.e_tag().unwrap_or_default().to_owned(),
                last_modified: to_system_time(o.last_modified()),
                storage_class: o
                    .storage_class()
                    .map(|c| c.as_str().to_owned())
                    .filter(|c| c != "STANDARD"),
                checksum: o.checksum_algorithm().first().and_then(|a| {
                    let algorithm = crate::origin::ChecksumAlgorithm::parse(a.as_str())?;
                    let kind = o
                        .checksum_type()
                        .and_then(|t| ChecksumType::parse(t.as_str()))
                        .unwrap_or(ChecksumType::FullObject);
                    Some((algorithm, kind))
                }),
            })
            .collect();
        let common_prefixes = out
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix())
            .map(text)
            .collect();
        let next = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        } else {
            None
        };
        Ok(ListPage {
            objects,
            common_prefixes,
            next,
        })
    }

    async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        extra_headers: &[(String, String)],
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        self.create_upload(bucket, key, headers, extra_headers, checksum).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> OriginResult<PutOutput> {
        self.store_part(bucket, key, upload_id, part_number, body, checksums)
            .await
    }

    async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> OriginResult<PutOutput> {
        self.complete_upload(bucket, key, upload_id, parts).await
    }

    async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        self.abort_upload(bucket, key, upload_id).await
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        self.upload_parts(bucket, key, upload_id).await
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        self.uploads_under(bucket, prefix).await
    }

    async fn get_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<Document> {
        self.get_configuration(bucket, key, sub).await
    }

    async fn put_config(&self, bucket: &str, key: Option<&str>, sub: Subresource, doc: &Document) -> OriginResult<()> {
        self.put_configuration(bucket, key, sub, doc).await
    }

    async fn delete_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<()> {
        self.delete_configuration(bucket, key, sub).await
    }
}
