//! Shared by the gateway's integration tests: starts the real `perch` binary in front of either
//! origin (the embedded directory origin, or a real moto S3 server), builds aws-sdk-s3 clients for
//! it, and runs one async test body against both origins.

#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use perch_testkit::servers::{DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, MotoServer, PerchOptions, PerchServer};
use tempfile::TempDir;

pub use aws_sdk_s3::config::http::HttpResponse;

/// The keys perch signs its requests to moto with (moto accepts any).
pub const MOTO_ACCESS_KEY_ID: &str = "test";
pub const MOTO_SECRET_ACCESS_KEY: &str = "test";

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

/// The `perch` binary cargo built for these tests.
pub fn perch_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_perch"))
}

/// Flags and environment that point perch at `moto`. The signing region is named: with the
/// default (`auto`, for Tigris) moto takes `auto` for the bucket's region and refuses a
/// CreateBucket without a location constraint (400 IllegalLocationConstraintException).
pub fn moto_origin(moto: &MotoServer) -> (Vec<String>, Vec<(String, String)>) {
    (
        vec![
            "--origin".to_owned(),
            moto.endpoint.clone(),
            "--origin-region".to_owned(),
            "us-east-1".to_owned(),
        ],
        vec![
            ("PERCH_ORIGIN_ACCESS_KEY_ID".to_owned(), MOTO_ACCESS_KEY_ID.to_owned()),
            (
                "PERCH_ORIGIN_SECRET_ACCESS_KEY".to_owned(),
                MOTO_SECRET_ACCESS_KEY.to_owned(),
            ),
        ],
    )
}

/// Starts perch on `data_dir`, in front of `moto` when given (the directory origin otherwise),
/// with `extra` flags such as `--role replica`.
pub fn start_perch(data_dir: &Path, moto: Option<&MotoServer>, extra: &[&str]) -> PerchServer {
    let (mut args, mut env) = match moto {
        Some(m) => moto_origin(m),
        None => (Vec::new(), Vec::new()),
    };
    args.extend(extra.iter().map(|s| s.to_string()));
    // Plain text in the log file.
    env.push(("NO_COLOR".to_owned(), "1".to_owned()));
    PerchServer::start(PerchOptions {
        binary: perch_binary(),
        data_dir: data_dir.to_owned(),
        args,
        env,
    })
}

/// An aws-sdk-s3 client for `endpoint`: path style, us-east-1, the given keys, no retries
/// (so that every error is the first answer the server gave).
pub fn client_with(endpoint: &str, access_key_id: &str, secret_access_key: &str) -> Client {
    let creds = Credentials::new(access_key_id, secret_access_key, None, None, "perch-tests");
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .force_path_style(true)
        .credentials_provider(creds)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

/// A client of perch signing with the development key pair.
pub fn perch_client(perch: &PerchServer) -> Client {
    client_with(&perch.endpoint, DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
}

/// A client talking to moto directly, past perch.
pub fn moto_client(moto: &MotoServer) -> Client {
    client_with(&moto.endpoint, MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)
}

/// One perch under test, and what it needs kept alive.
pub struct Gateway {
    pub kind: OriginKind,
    /// A client of perch (dev keys).
    pub client: Client,
    pub perch: PerchServer,
    /// The moto server behind perch, for `OriginKind::Moto`.
    pub moto: Option<Arc<MotoServer>>,
    pub data_dir: PathBuf,
    _tmp: TempDir,
}

impl Gateway {
    /// Starts perch with the directory origin on a fresh data dir.
    pub fn dir() -> Gateway {
        Self::start(OriginKind::Dir, None)
    }

    /// Starts perch in front of a new moto server.
    pub fn moto() -> Gateway {
        Self::start(OriginKind::Moto, Some(Arc::new(MotoServer::start())))
    }

    pub fn start(kind: OriginKind, moto: Option<Arc<MotoServer>>) -> Gateway {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("perch");
        let perch = start_perch(&data_dir, moto.as_deref(), &[]);
        Gateway {
            kind,
            client: perch_client(&perch),
            perch,
            moto,
            data_dir,
            _tmp: tmp,
        }
    }

    /// perch's log so far, for failure messages.
    pub fn log(&self) -> String {
        self.perch.log_text()
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
        let guard = LogOnPanic { gw: gw.clone() };
        body(gw).await;
        drop(guard);
    }
}

/// Prints which origin a test body failed with, and the end of perch's log, when it panics.
/// It holds the gateway, so the log is still there when it is dropped.
struct LogOnPanic {
    gw: Arc<Gateway>,
}

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.gw.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!(
                "!!! failed with the {} origin; last lines of perch's log:\n{tail}",
                self.gw.kind.name()
            );
        }
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

/// A deterministic pseudo-random body of `len` bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The quoted hex MD5 of `data`: the ETag S3 gives a single-part object.
pub fn md5_etag(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

/// The ETag S3 gives a multipart object made of `parts`.
pub fn multipart_etag(parts: &[&[u8]]) -> String {
    use md5::{Digest, Md5};
    let mut all = Md5::new();
    for p in parts {
        all.update(Md5::digest(p));
    }
    format!("\"{}-{}\"", hex::encode(all.finalize()), parts.len())
}

pub fn b64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

/// A plain HTTP/1.0 exchange on a new connection: (status, lower-case headers, body).
pub fn raw_http(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    raw_http_with_body(method, url, headers, b"")
}

/// As `raw_http`, sending `body` after the headers (give its Content-Length among `headers`).
pub fn raw_http_with_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set_read_timeout");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req).expect("send the request");
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("read the response");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(&all)));
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let body = all[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body)
}

/// The value of `name` (lower case) among `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
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
