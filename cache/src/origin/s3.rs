//! `S3Origin`: the `Origin` trait over any S3 server (Tigris, AWS, MinIO, moto) with aws-sdk-s3.
//! Path-style, static keys or anonymous, no SDK retries (`RetryingOrigin` retries), TCP_NODELAY sockets.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedCredentialsProvider, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream as SdkByteStream, DateTime, Length};
use aws_sdk_s3::types::{
    BucketLocationConstraint, ChecksumAlgorithm, ChecksumMode, ChecksumType as SdkChecksumType,
    CompletedMultipartUpload, CompletedPart as SdkCompletedPart, CreateBucketConfiguration, EncodingType,
    MetadataDirective as SdkMetadataDirective,
};
use aws_smithy_http_client::{Builder as HttpClientBuilder, Connector, tls};
use aws_smithy_runtime_api::box_error::BoxError;
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
    region: String,
    read_timeout: Duration,
}

/// What a 404 without an S3 error code (the answer to a HEAD) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    Bucket,
    Object,
    Upload,
}

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

        match (cfg.access_key_id, cfg.secret_access_key) {
            (Some(id), Some(secret)) => {
                let creds = Credentials::new(id, secret, None, None, "perch-static");
                builder = builder.credentials_provider(SharedCredentialsProvider::new(creds));
            }
            (None, None) => builder = builder.allow_no_auth(),
            _ => {
                return Err(invalid(
                    "origin credentials need both the access key id and the secret access key".to_owned(),
                ));
            }
        }

        Ok(S3Origin {
            client: Client::from_conf(builder.build()),
            region,
            read_timeout: cfg.read_timeout,
        })
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
            Err(_) => Err(OriginError::Transient(format!(
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
    HttpClientBuilder::new().build_with_connector_fn(|settings, components| {
        let mut conn = Connector::builder().enable_tcp_nodelay(true);
        if let Some(settings) = settings {
            conn = conn.connector_settings(settings.clone());
        }
        if let Some(sleep) = components.and_then(|c| c.sleep_impl()) {
            conn = conn.sleep_impl(sleep);
        }
        conn.tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
            .build()
    })
}

/// Turns any SDK failure into an `OriginError`. `subject` says what a bare 404 means.
fn classify<E>(err: SdkError<E, HttpResponse>, subject: Subject) -> OriginError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            if (200..300).contains(&status) {
                // A success whose body could not be read or parsed.
                return OriginError::Transient(format!("unreadable {status} answer: {}", DisplayErrorContext(&err)));
            }
            let code = ctx.err().code().unwrap_or_default().to_owned();
            let message = ctx
                .err()
                .message()
                .map_or_else(|| DisplayErrorContext(&err).to_string(), str::to_owned);
            classify_answer(status, code, message, subject)
        }
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let message = DisplayErrorContext(&err).to_string();
            if (200..300).contains(&status) {
                // A success whose body broke or could not be read: worth another try.
                OriginError::Transient(message)
            } else {
                classify_answer(status, String::new(), message, subject)
            }
        }
        SdkError::TimeoutError(_) => OriginError::Transient(format!("timed out: {}", DisplayErrorContext(&err))),
        SdkError::DispatchFailure(failure) => {
            let message = DisplayErrorContext(&err).to_string();
            if failure.is_user() {
                // The request could not be sent for a local reason (e.g. its body failed).
                OriginError::Io(io::Error::other(message))
            } else {
                OriginError::Transient(message)
            }
        }
        SdkError::ConstructionFailure(_) => OriginError::rejected(
            400,
            "InvalidArgument",
            format!("could not build the origin request: {}", DisplayErrorContext(&err)),
        ),
        _ => OriginError::Transient(DisplayErrorContext(&err).to_string()),
    }
}

/// Classifies an HTTP answer of the origin by status and S3 error code.
fn classify_answer(status: u16, code: String, message: String, subject: Subject) -> OriginError {
    const TRANSIENT_CODES: &[&str] = &[
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
    ];
    if status >= 500 || status == 429 || status == 408 || TRANSIENT_CODES.contains(&code.as_str()) {
        let code = if code.is_empty() { status.to_string() } else { code };
        return OriginError::Transient(format!("{status} {code}: {message}"));
    }
    match (status, code.as_str()) {
        (304, _) => OriginError::NotModified,
        (412, _) => OriginError::PreconditionFailed,
        (416, _) => OriginError::InvalidRange,
        (404, "NoSuchKey") => OriginError::NoSuchKey,
        (404, "NoSuchBucket") => OriginError::NoSuchBucket,
        (404, "NoSuchUpload") => OriginError::NoSuchUpload,
        (404, "" | "NotFound") => match subject {
            Subject::Bucket => OriginError::NoSuchBucket,
            Subject::Object => OriginError::NoSuchKey,
            Subject::Upload => OriginError::NoSuchUpload,
        },
        _ => {
            let code = if code.is_empty() { default_code(status) } else { code };
            OriginError::Rejected { status, code, message }
        }
    }
}

/// An S3-style code for an answer that came without one (a HEAD has no body).
fn default_code(status: u16) -> String {
    match status {
        400 => "BadRequest".to_owned(),
        403 => "AccessDenied".to_owned(),
        _ => http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map_or_else(|| status.to_string(), |r| r.replace([' ', '-'], "")),
    }
}

fn to_system_time(dt: Option<&DateTime>) -> SystemTime {
    dt.and_then(|dt| SystemTime::try_from(*dt).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn non_negative(n: Option<i64>) -> u64 {
    n.map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// `bytes first-last/total` → (first, last, total); `total` may be `*`.
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.trim().split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total))
}

fn metadata_map(meta: Option<&std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    meta.map(|m| m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect())
        .unwrap_or_default()
}

/// Sets the raw `Expires` header (the SDK only takes a parsed date; S3 keeps what it is given).
fn expires_mapper(
    expires: Option<String>,
) -> impl Fn(HttpRequest) -> Result<HttpRequest, HttpError> + Send + Sync + 'static {
    headers_mapper(expires, Vec::new())
}

/// `expires_mapper`, plus `extra` headers (`--upload-header`) set as given.
fn headers_mapper(
    expires: Option<String>,
    extra: Vec<(String, String)>,
) -> impl Fn(HttpRequest) -> Result<HttpRequest, HttpError> + Send + Sync + 'static {
    move |mut req: HttpRequest| {
        if let Some(value) = &expires {
            req.headers_mut().try_insert("expires", value.clone())?;
        }
        for (name, value) in &extra {
            req.headers_mut().try_insert(name.clone(), value.clone())?;
        }
        Ok(req)
    }
}

/// `bucket/key` for `x-amz-copy-source`, percent-encoded except for `/`.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for b in bucket.bytes().chain(std::iter::once(b'/')).chain(key.bytes()) {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a value S3 sent with `encoding-type=url` (`+` is a space, as boto reads it).
fn url_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn checksums_of(
    crc32: Option<&str>,
    crc32c: Option<&str>,
    crc64nvme: Option<&str>,
    sha1: Option<&str>,
    sha256: Option<&str>,
) -> Checksums {
    Checksums {
        crc32: crc32.map(str::to_owned),
        crc32c: crc32c.map(str::to_owned),
        crc64nvme: crc64nvme.map(str::to_owned),
        sha1: sha1.map(str::to_owned),
        sha256: sha256.map(str::to_owned),
    }
}

/// The algorithm of the checksum the client gave, as `x-amz-sdk-checksum-algorithm`.
fn checksum_algorithm(c: &Checksums) -> Option<ChecksumAlgorithm> {
    [
        (&c.crc64nvme, ChecksumAlgorithm::Crc64Nvme),
        (&c.crc32c, ChecksumAlgorithm::Crc32C),
        (&c.crc32, ChecksumAlgorithm::Crc32),
        (&c.sha1, ChecksumAlgorithm::Sha1),
        (&c.sha256, ChecksumAlgorithm::Sha256),
    ]
    .into_iter()
    .find_map(|(value, algorithm)| value.is_some().then_some(algorithm))
}

/// The SDK's name of an algorithm.
fn sdk_algorithm(a: super::ChecksumAlgorithm) -> ChecksumAlgorithm {
    match a {
        super::ChecksumAlgorithm::Crc32 => ChecksumAlgorithm::Crc32,
        super::ChecksumAlgorithm::Crc32c => ChecksumAlgorithm::Crc32C,
        super::ChecksumAlgorithm::Crc64nvme => ChecksumAlgorithm::Crc64Nvme,
        super::ChecksumAlgorithm::Sha1 => ChecksumAlgorithm::Sha1,
        super::ChecksumAlgorithm::Sha256 => ChecksumAlgorithm::Sha256,
    }
}

/// Builds an SDK body for a `PutBody`: a file is read from its path with its known length.
async fn sdk_body(body: &PutBody) -> OriginResult<SdkByteStream> {
    match body {
        PutBody::Bytes(b) => Ok(SdkByteStream::from(b.clone())),
        PutBody::File { path, len } => SdkByteStream::read_from()
            .path(path)
            .length(Length::Exact(*len))
            .buffer_size(256 * 1024)
            .build()
            .await
            .map_err(|e| OriginError::Io(io::Error::other(format!("{}: {e}", path.display())))),
    }
}

fn content_length(body: &PutBody) -> OriginResult<i64> {
    i64::try_from(body.len()).map_err(|_| OriginError::rejected(400, "EntityTooLarge", "body too large"))
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
            .set_content_language(h.content_language.clone());
        for (k, v) in &h.metadata {
            req = req.metadata(k.clone(), v.clone());
        }
        req
    }};
}

/// Builds `ObjectMeta` from a GET or HEAD output (both have the same accessors).
macro_rules! object_meta {
    ($out:expr, $size:expr) => {{
        let out = &$out;
        ObjectMeta {
            size: $size,
            etag: out.e_tag().unwrap_or_default().to_owned(),
            last_modified: to_system_time(out.last_modified()),
            headers: ContentHeaders {
                content_type: out.content_type().map(str::to_owned),
                cache_control: out.cache_control().map(str::to_owned),
                content_encoding: out.content_encoding().map(str::to_owned),
                content_disposition: out.content_disposition().map(str::to_owned),
                content_language: out.content_language().map(str::to_owned),
                expires: out.expires_string().map(str::to_owned),
                metadata: metadata_map(out.metadata()),
            },
            checksums: checksums_of(
                out.checksum_crc32(),
                out.checksum_crc32_c(),
                out.checksum_crc64_nvme(),
                out.checksum_sha1(),
                out.checksum_sha256(),
            ),
        }
    }};
}

/// Applies read `Conditions` to a GET or HEAD builder.
macro_rules! with_conditions {
    ($req:expr, $c:expr) => {{
        let c: &Conditions = $c;
        $req.set_if_match(c.if_match.clone())
            .set_if_none_match(c.if_none_match.clone())
            .set_if_modified_since(c.if_modified_since.map(DateTime::from))
            .set_if_unmodified_since(c.if_unmodified_since.map(DateTime::from))
    }};
}

/// Lets the SDK read an XML answer whose root element is `<{from}>` where S3 sends `<{to}>`.
///
/// moto 5.2 (the S3 server of the tests) answers ListParts and CompleteMultipartUpload with
/// `<ListPartsResponse>` and `<CompleteMultipartUploadResponse>`; aws-sdk-s3 checks the root
/// name and would refuse them. Real S3 never sends these names, so on it this only costs
/// holding the (small, and anyway buffered by the SDK) answer whole before it is parsed.
#[derive(Debug)]
struct RootAlias {
    from: &'static str,
    to: &'static str,
}

impl Intercept for RootAlias {
    fn name(&self) -> &'static str {
        "PerchRootAlias"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(());
        }
        let inner = SdkByteStream::new(std::mem::replace(response.body_mut(), SdkBody::taken()));
        let renamed = RenamedRoot {
            inner,
            buf: Vec::new(),
            from: self.from,
            to: self.to,
            done: false,
        };
        *response.body_mut() = SdkBody::from_body_1_x(renamed);
        Ok(())
    }
}

/// The body of `RootAlias`: the whole answer in one frame, its root element renamed.
struct RenamedRoot {
    inner: SdkByteStream,
    buf: Vec<u8>,
    from: &'static str,
    to: &'static str,
    done: bool,
}

impl http_body::Body for RenamedRoot {
    type Data = Bytes;
    type Error = aws_sdk_s3::primitives::ByteStreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(chunk)) => this.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let xml = rename_root(std::mem::take(&mut this.buf), this.from, this.to);
                    return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(xml)))));
                }
            }
        }
    }
}

/// Renames the element `from` to `to` when it is the document's root; anything else is
/// returned as it came.
fn rename_root(xml: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let open = format!("<{from}");
    let close = format!("</{from}>");
    // The root is the first element: skip blanks (S3 pads slow answers), the declaration and comments.
    let mut at = 0;
    loop {
        while at < xml.len() && xml[at].is_ascii_whitespace() {
            at += 1;
        }
        let rest = &xml[at..];
        let end = if rest.starts_with(b"<?") {
            find(rest, b"?>").map(|e| e + 2)
        } else if rest.starts_with(b"<!--") {
            find(rest, b"-->").map(|e| e + 3)
        } else {
            break;
        };
        match end {
            Some(e) => at += e,
            None => return xml,
        }
    }
    let rest = &xml[at..];
    let is_root = rest.starts_with(open.as_bytes())
        && matches!(rest.get(open.len()), Some(b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n'));
    let Some(close_at) = is_root
        .then(|| xml.windows(close.len()).rposition(|w| w == close.as_bytes()))
        .flatten()
    else {
        return xml;
    };
    let mut out = Vec::with_capacity(xml.len());
    out.extend_from_slice(&xml[..at]);
    out.extend_from_slice(format!("<{to}").as_bytes());
    out.extend_from_slice(&xml[at + open.len()..close_at]);
    out.extend_from_slice(format!("</{to}>").as_bytes());
    out.extend_from_slice(&xml[close_at + close.len()..]);
    out
}

/// A GET body from the SDK as Perch's `ByteStream`, chunk by chunk. An origin silent for
/// `idle` while Perch waits for the next chunk ends the stream with a `TimedOut` error.
struct OriginBody {
    inner: SdkByteStream,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl Stream for OriginBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.timer = None;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(io::Error::other(format!(
                    "origin body: {}",
                    DisplayErrorContext(&e)
                )))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("origin body: nothing received for {idle:?}"),
                    ))));
                }
                Poll::Pending
            }
        }
    }
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
            buckets.extend(out.buckets().iter().map(|b| BucketInfo {
                name: b.name().unwrap_or_default().to_owned(),
                created: to_system_time(b.creation_date()),
            }));
            match out.continuation_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(buckets),
            }
        }
    }

    async fn create_bucket(&self, bucket: &str) -> OriginResult<()> {
        let mut req = self.client.create_bucket().bucket(bucket);
        // `auto` (Tigris) and us-east-1 take no location constraint; other regions need one.
        if !matches!(self.region.as_str(), "auto" | "us-east-1") {
            req = req.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        self.call(Subject::Bucket, Duration::ZERO, req.send()).await?;
        Ok(())
    }

    async fn head_bucket(&self, bucket: &str) -> OriginResult<()> {
        self.call(
            Subject::Bucket,
            Duration::ZERO,
            self.client.head_bucket().bucket(bucket).send(),
        )
        .await?;
        Ok(())
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
        let req = with_conditions!(self.client.head_object().bucket(bucket).key(key), conditions)
            .checksum_mode(ChecksumMode::Enabled);
        let out = self.call(Subject::Object, Duration::ZERO, req.send()).await?;
        Ok(object_meta!(out, non_negative(out.content_length())))
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<GetOutput> {
        let mut req = with_conditions!(self.client.get_object().bucket(bucket).key(key), conditions)
            .set_range(range.map(ByteRange::header_value));
        // Stored checksums describe the whole object; ask for them (and let the SDK check the
        // body against them) only when the whole object comes back.
        if range.is_none() {
            req = req.checksum_mode(ChecksumMode::Enabled);
        }
        let mut out = self.call(Subject::Object, Duration::ZERO, req.send()).await?;
        let length = non_negative(out.content_length());
        let (served, size) = match out.content_range().and_then(parse_content_range) {
            Some((first, last, total)) => (Some((first, last)), total.unwrap_or(length)),
            None => (None, length),
        };
        let mut meta = object_meta!(out, size);
        if range.is_some() {
            meta.checksums = Checksums::default();
        }
        let inner = std::mem::take(&mut out.body);
        let body = OriginBody {
            inner,
            idle: self.read_timeout,
            timer: None,
            done: false,
        };
        Ok(GetOutput {
            meta,
            range: served,
            body: Box::pin(body),
        })
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
            .set_if_none_match(input.if_none_match.clone());
        let send = req
            .customize()
            .map_request(headers_mapper(
                input.headers.expires.clone(),
                input.extra_headers.clone(),
            ))
            .send();
        let out = self
            .call(Subject::Object, Self::upload_allowance(input.body.len()), send)
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

    async fn delete_object(&self, bucket: &str, key: &str) -> OriginResult<()> {
        self.call(
            Subject::Object,
            Duration::ZERO,
            self.client.delete_object().bucket(bucket).key(key).send(),
        )
        .await?;
        Ok(())
    }

    async fn copy_object(&self, bucket: &str, key: &str, input: &CopyInput) -> OriginResult<CopyOutput> {
        let c = &input.conditions;
        let req = self
            .client
            .copy_object()
            .bucket(bucket)
            .key(key)
            .copy_source(copy_source(&input.src_bucket, &input.src_key))
            .set_copy_source_if_match(c.if_match.clone())
            .set_copy_source_if_none_match(c.if_none_match.clone())
            .set_copy_source_if_modified_since(c.if_modified_since.map(DateTime::from))
            .set_copy_source_if_unmodified_since(c.if_unmodified_since.map(DateTime::from));
        let send = match &input.directive {
            MetadataDirective::Copy => req
                .metadata_directive(SdkMetadataDirective::Copy)
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
        Ok(CopyOutput {
            etag: result.and_then(|r| r.e_tag()).unwrap_or_default().to_owned(),
            last_modified: to_system_time(result.and_then(|r| r.last_modified())),
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
            .map_request(expires_mapper(headers.expires.clone()))
            .send();
        let out = self.call(Subject::Bucket, Duration::ZERO, send).await?;
        match out.upload_id() {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => Err(OriginError::Transient(
                "CreateMultipartUpload answered without an upload id".to_owned(),
            )),
        }
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

    async fn complete_multipart_upload(
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

    async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        let req = self
            .client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id);
        self.call(Subject::Upload, Duration::ZERO, req.send()).await?;
        Ok(())
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
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

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_alias_renames_only_the_root() {
        let r = |xml: &str| String::from_utf8(rename_root(xml.as_bytes().to_vec(), "AResponse", "AResult")).unwrap();
        assert_eq!(
            r("  \n<?xml version=\"1.0\"?>\n<AResponse xmlns=\"x\"><K>AResponse</K></AResponse>\n"),
            "  \n<?xml version=\"1.0\"?>\n<AResult xmlns=\"x\"><K>AResponse</K></AResult>\n"
        );
        assert_eq!(r("<AResponse><B/></AResponse>"), "<AResult><B/></AResult>");
        assert_eq!(r("<AResult><B/></AResult>"), "<AResult><B/></AResult>");
        assert_eq!(
            r("<Error><Code>AResponse</Code></Error>"),
            "<Error><Code>AResponse</Code></Error>"
        );
        assert_eq!(r("<AResponseX></AResponseX>"), "<AResponseX></AResponseX>");
        assert_eq!(r("<AResponse>"), "<AResponse>");
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 99, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn copy_source_is_encoded() {
        assert_eq!(copy_source("b", "a/b c+d%é"), "b/a/b%20c%2Bd%25%C3%A9");
    }

    #[test]
    fn url_decoding_matches_s3() {
        assert_eq!(url_decode("a+b%2Bc%20d%2"), "a b+c d%2");
        assert_eq!(url_decode("%C3%A9%0A"), "é\n");
        assert_eq!(url_decode("100%"), "100%");
    }

    #[test]
    fn answers_are_classified() {
        let c = |status, code: &str, subject| classify_answer(status, code.to_owned(), String::new(), subject);
        assert!(matches!(c(404, "", Subject::Object), OriginError::NoSuchKey));
        assert!(matches!(c(404, "", Subject::Bucket), OriginError::NoSuchBucket));
        assert!(matches!(
            c(404, "NoSuchBucket", Subject::Object),
            OriginError::NoSuchBucket
        ));
        assert!(matches!(
            c(404, "NoSuchUpload", Subject::Upload),
            OriginError::NoSuchUpload
        ));
        assert!(matches!(
            c(412, "PreconditionFailed", Subject::Object),
            OriginError::PreconditionFailed
        ));
        assert!(matches!(c(304, "", Subject::Object), OriginError::NotModified));
        assert!(matches!(
            c(416, "InvalidRange", Subject::Object),
            OriginError::InvalidRange
        ));
        assert!(c(503, "SlowDown", Subject::Object).is_transient());
        assert!(c(500, "", Subject::Object).is_transient());
        assert!(c(429, "", Subject::Object).is_transient());
        assert!(c(400, "RequestTimeout", Subject::Object).is_transient());
        match c(403, "", Subject::Object) {
            OriginError::Rejected { status: 403, code, .. } => assert_eq!(code, "AccessDenied"),
            other => panic!("{other:?}"),
        }
        match c(409, "BucketNotEmpty", Subject::Bucket) {
            OriginError::Rejected { status: 409, code, .. } => assert_eq!(code, "BucketNotEmpty"),
            other => panic!("{other:?}"),
        }
        match c(405, "", Subject::Bucket) {
            OriginError::Rejected { code, .. } => assert_eq!(code, "MethodNotAllowed"),
            other => panic!("{other:?}"),
        }
    }
}
