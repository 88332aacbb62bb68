//! Tests through aws-sdk-s3: perch in front of either origin, the SDK's answers checked exactly.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use perch_testkit::bodies::{md5_etag, multipart_etag};
use perch_testkit::raw_client::{Req, Resp};
use perch_testkit::sdk::perch_client;
use perch_testkit::servers::MotoServer;

use super::perch::{LogOnPanic, Perch};

pub use aws_sdk_s3::config::http::HttpResponse;

/// Which origin a perch under test passes requests to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginKind {
    /// The embedded directory origin (no `--origin` flag).
    Dir,
    /// A real moto S3 server (`--origin http://127.0.0.1:PORT`).
    Moto,
}

impl OriginKind {
    pub fn name(self) -> &'static str {
        match self {
            OriginKind::Dir => "dir",
            OriginKind::Moto => "moto",
        }
    }
}

/// One perch under test with an SDK client of it, and the moto behind it (dropped after perch).
pub struct Gateway {
    pub kind: OriginKind,
    /// A client of perch (dev keys).
    pub client: Client,
    pub perch: Perch,
    _moto: Option<MotoServer>,
}

impl Gateway {
    /// Starts perch with the directory origin on a fresh data dir.
    #[track_caller]
    pub fn dir() -> Gateway {
        let perch = Perch::dir(&[]);
        Gateway {
            kind: OriginKind::Dir,
            client: perch_client(&perch.server),
            perch,
            _moto: None,
        }
    }

    /// Starts perch in front of a new moto server.
    #[track_caller]
    pub fn moto() -> Gateway {
        let moto = MotoServer::start();
        let perch = Perch::s3(&moto.endpoint, &[]);
        Gateway {
            kind: OriginKind::Moto,
            client: perch_client(&perch.server),
            perch,
            _moto: Some(moto),
        }
    }
}

/// Runs `body` against a perch with the directory origin, then against a perch in front of moto.
/// A failure names the origin it happened with and shows the end of perch's log.
///
/// The body gets an `Arc` and this function keeps its own: a body that only uses `gw.client`
/// would otherwise capture just that field (closures capture disjoint fields), dropping, and so
/// killing, the servers as soon as it is called.
pub async fn for_each_origin<F, Fut>(body: F)
where
    F: Fn(Arc<Gateway>) -> Fut,
    Fut: Future<Output = ()>,
{
    for kind in [OriginKind::Dir, OriginKind::Moto] {
        eprintln!("=== origin: {}", kind.name());
        let gw = Arc::new(match kind {
            OriginKind::Dir => Gateway::dir(),
            OriginKind::Moto => Gateway::moto(),
        });
        let log = LogOnPanic::new(
            &format!("failed with the {} origin", kind.name()),
            gw.perch.server.log_path(),
        );
        body(gw.clone()).await;
        drop(log);
    }
}

/// Asserts that `result` failed with HTTP `status` and, when given, the S3 error `code`;
/// returns the error for further checks.
#[track_caller]
pub fn expect_err<T, E>(
    result: Result<T, SdkError<E, HttpResponse>>,
    status: u16,
    code: Option<&str>,
) -> SdkError<E, HttpResponse>
where
    T: Debug,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let err = match result {
        Ok(v) => panic!("expected an error {status} {code:?}, got success: {v:?}"),
        Err(e) => e,
    };
    let got = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(
        got,
        Some(status),
        "expected HTTP {status} {code:?}, got {got:?}: {}",
        DisplayErrorContext(&err)
    );
    if let Some(code) = code {
        assert_eq!(
            err.code(),
            Some(code),
            "expected S3 error code {code} (HTTP {status}): {}",
            DisplayErrorContext(&err)
        );
    }
    err
}

/// Unwraps an SDK result, showing the whole error chain on failure.
#[track_caller]
pub fn ok<T, E>(result: Result<T, SdkError<E, HttpResponse>>, what: &str) -> T
where
    E: std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: {}", DisplayErrorContext(&e)),
    }
}

/// Reads a whole body.
pub async fn bytes_of(body: ByteStream) -> Vec<u8> {
    body.collect()
        .await
        .expect("read the response body")
        .into_bytes()
        .to_vec()
}

pub async fn create_bucket(c: &Client, bucket: &str) {
    ok(
        c.create_bucket().bucket(bucket).send().await,
        &format!("create bucket {bucket}"),
    );
}

/// PutObject; the answer's ETag must be the body's MD5. Returns it.
pub async fn put(c: &Client, bucket: &str, key: &str, body: &[u8]) -> String {
    let out = ok(
        c.put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send()
            .await,
        &format!("put {bucket}/{key}"),
    );
    let etag = out.e_tag().expect("PutObject answers an ETag").to_owned();
    assert_eq!(etag, md5_etag(body), "ETag of {bucket}/{key}");
    etag
}

pub async fn get_bytes(c: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = ok(
        c.get_object().bucket(bucket).key(key).send().await,
        &format!("get {bucket}/{key}"),
    );
    bytes_of(out.body).await
}

/// Every key of a bucket (under `prefix`), through ListObjectsV2 pages of at most 1000.
pub async fn all_keys(c: &Client, bucket: &str, prefix: Option<&str>) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = ok(
            c.list_objects_v2()
                .bucket(bucket)
                .set_prefix(prefix.map(str::to_owned))
                .set_continuation_token(token.take())
                .send()
                .await,
            &format!("list {bucket}"),
        );
        keys.extend(out.contents().iter().map(|o| o.key().unwrap_or_default().to_owned()));
        match out.next_continuation_token() {
            Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => return keys,
        }
    }
}

pub async fn presigned_get(c: &Client, bucket: &str, key: &str, expires: Duration) -> PresignedRequest {
    c.get_object()
        .bucket(bucket)
        .key(key)
        .presigned(PresigningConfig::expires_in(expires).expect("presigning config"))
        .await
        .expect("presign GetObject")
}

/// Sends a presigned request with the raw client (no SDK), with `extra` headers and `body`.
#[track_caller]
pub fn send_presigned(req: &PresignedRequest, extra: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut raw = Req::for_url(req.method(), req.uri()).body(body.to_vec());
    for (name, value) in req.headers().filter(|(k, _)| !k.eq_ignore_ascii_case("host")) {
        raw = raw.header(name, value);
    }
    for (name, value) in extra {
        raw = raw.header(name, value);
    }
    raw.go(raw.host_addr())
}

/// Seconds since 1970, now.
pub fn now_secs() -> i64 {
    DateTime::from(SystemTime::now()).secs()
}

/// `t` is within the last two minutes (or a few seconds ahead).
#[track_caller]
pub fn assert_recent(t: Option<&DateTime>, what: &str) {
    let t = t.unwrap_or_else(|| panic!("{what}: no Last-Modified"));
    let now = now_secs();
    assert!(
        (now - 120..=now + 5).contains(&t.secs()),
        "{what}: Last-Modified {t:?} is not about now ({now})"
    );
}

/// User metadata as the SDK gives it.
pub fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Percent-encodes a key for `x-amz-copy-source` (everything but unreserved characters and `/`).
pub fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::new();
    for b in bucket.bytes().chain(std::iter::once(b'/')).chain(key.bytes()) {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a value of an `encoding-type=url` listing (`+` is a space, as boto reads S3's).
pub fn url_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii hex");
                out.push(u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad escape in {value:?}")));
                i += 3;
                continue;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| panic!("{value:?} does not decode to UTF-8"))
}

/// Uploads `parts` as one object through `c`, a multipart upload; returns its ETag.
pub async fn upload_in_parts(c: &aws_sdk_s3::Client, bucket: &str, key: &str, parts: &[&[u8]]) -> String {
    let id = ok(
        c.create_multipart_upload().bucket(bucket).key(key).send().await,
        "create upload",
    )
    .upload_id()
    .expect("upload id")
    .to_owned();
    let mut done = CompletedMultipartUpload::builder();
    for (i, part) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let out = ok(
            c.upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .part_number(n)
                .body(ByteStream::from(part.to_vec()))
                .send()
                .await,
            &format!("upload part {n}"),
        );
        done = done.parts(CompletedPart::builder().part_number(n).set_e_tag(out.e_tag).build());
    }
    let completed = c
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .multipart_upload(done.build())
        .send()
        .await;
    match completed {
        Ok(out) => out.e_tag().expect("etag").to_owned(),
        // moto's own answer names another root element, which the SDK cannot parse.
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => multipart_etag(parts),
        Err(e) => panic!("complete: {}", DisplayErrorContext(&e)),
    }
}
