//! The load generator's HTTP/1.1 client: a keep-alive pool or one new TCP connection per request
//! (TCP_NODELAY either way), SigV4 in the header with the real payload hash, and body checks.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant, SystemTime},
};

use aws_sigv4::{
    http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign,
    },
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::{net::TcpStream, sync::Notify};

use perch_testkit::bodies::{Digest32, EMPTY_SHA256_HEX, Object};

use crate::target::{Kind, Target};

/// How requests get a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConnMode {
    /// A keep-alive pool: connections are reused.
    Pool,
    /// One new TCP connection per request, closed after the response (as OrioleDB does).
    New,
}

/// How long to wait for `100 Continue` before sending the body anyway (curl's default).
const EXPECT_CONTINUE_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of an unexpected error response is kept for the report.
const ERROR_SNIPPET: usize = 300;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub mode: ConnMode,
    /// Idle connections kept per target in pool mode.
    pub pool_size: usize,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// Send `Expect: 100-continue` (and wait for it) on bodies larger than this.
    pub expect_continue_over: Option<u64>,
    /// Per-request limit, connect to last body byte.
    pub timeout: Duration,
    /// Compare the SHA-256 of every checked GET body (lengths are always checked).
    pub verify: bool,
}

/// What a request must get back to count as a success.
#[derive(Debug, Clone)]
pub enum Expect {
    Status(u16),
    OneOf(&'static [u16]),
    /// This status and exactly this body.
    Body {
        status: u16,
        digest: Digest32,
    },
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    /// The object key; `None` addresses the bucket.
    pub key: Option<String>,
    /// Already-encoded query string, without `?`.
    pub query: Option<String>,
    pub body: Option<Object>,
    /// A `Range` header value, e.g. `bytes=0-1023`.
    pub range: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub expect: Expect,
}

impl Req {
    pub fn get(key: impl Into<String>, expect: Expect) -> Req {
        Req {
            method: Method::GET,
            key: Some(key.into()),
            query: None,
            body: None,
            range: None,
            headers: Vec::new(),
            expect,
        }
    }

    pub fn put(key: impl Into<String>, body: Object) -> Req {
        Req {
            method: Method::PUT,
            key: Some(key.into()),
            query: None,
            body: Some(body),
            range: None,
            headers: Vec::new(),
            expect: Expect::Status(200),
        }
    }
}

/// How a request went.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// 0 when no response arrived.
    pub status: u16,
    /// From the start of the connect (or pool checkout) to the last body byte.
    pub latency: Duration,
    /// From the same start to the first body byte (to the response head when there is no body).
    pub ttfb: Duration,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// `X-Cache: HIT` (true) or `MISS` (false), when the server sent one.
    pub cache: Option<bool>,
    /// Why the request failed: transport error, unexpected status, wrong length or checksum.
    pub error: Option<String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The request body: the bytes in one frame, optionally held back until `100 Continue`.
pub struct ReqBody {
    data: Option<Bytes>,
    gate: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl ReqBody {
    fn new(data: Option<Bytes>) -> ReqBody {
        ReqBody {
            data: data.filter(|d| !d.is_empty()),
            gate: None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(gate) = &mut this.gate {
            ready!(gate.as_mut().poll(cx));
            this.gate = None;
        }
        Poll::Ready(this.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Sends requests to targets.
pub struct HttpClient {
    opts: ClientOptions,
    pool: Client<HttpConnector, ReqBody>,
    identity: Identity,
}

/// Aborts the connection task of a one-shot connection when the request is done or dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HttpClient {
    pub fn new(opts: ClientOptions) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let pool = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(opts.pool_size.max(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let identity = aws_credential_types::Credentials::new(
            opts.access_key.clone(),
            opts.secret_key.clone(),
            None,
            None,
            "perch-bench",
        )
        .into();
        HttpClient { opts, pool, identity }
    }

    /// Sends `req` to `target` and checks the answer; never panics, never fails: errors are in the outcome.
    pub async fn execute(&self, target: &Target, req: &Req) -> Outcome {
        let start = Instant::now();
        let bytes_up = req.body.as_ref().map_or(0, |b| b.len());
        match tokio::time::timeout(self.opts.timeout, self.exchange(target, req, start)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Outcome {
                status: 0,
                latency: start.elapsed(),
                ttfb: start.elapsed(),
                bytes_up,
                bytes_down: 0,
                cache: None,
                error: Some(format!("{} {}: {e}", req.method, describe(req))),
            },
            Err(_) => Outcome {
                status: 0,
                latency: start.elapsed(),
                ttfb: start.elapsed(),
                bytes_up,
                bytes_down: 0,
                cache: None,
                error: Some(format!(
                    "{} {}: no complete answer within {:?}",
                    req.method,
                    describe(req),
                    self.opts.timeout
                )),
            },
        }
    }

    async fn exchange(&self, target: &Target, req: &Req, start: Instant) -> Result<Outcome, String> {
        let request = self.build(target, req)?;
        let bytes_up = req.body.as_ref().map_or(0, |b| b.len());
        let (response, _conn) = match self.opts.mode {
            ConnMode::Pool => (self.pool.request(request).await.map_err(error_chain)?, None),
            ConnMode::New => {
                let stream = TcpStream::connect(target.addr)
                    .await
                    .map_err(|e| format!("connect {}: {e}", target.addr))?;
                stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(stream))
                    .await
                    .map_err(error_chain)?;
                let task = AbortOnDrop(tokio::spawn(async move {
                    let _ = conn.await;
                }));
                let response = sender.send_request(request).await.map_err(error_chain)?;
                (response, Some(task))
            }
        };
        let status = response.status().as_u16();
        let cache = response
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // Perch: HIT | MISS | REVALIDATED | BYPASS; nginx: also EXPIRED, STALE, UPDATING.
                let v = v.trim().to_ascii_uppercase();
                let word = v.split([' ', ',', ';']).next().unwrap_or("");
                match word {
                    "HIT" | "REVALIDATED" | "STALE" | "UPDATING" => Some(true),
                    "MISS" | "EXPIRED" | "BYPASS" => Some(false),
                    _ => None,
                }
            });
        let content_length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let status_ok = match &req.expect {
            Expect::Status(s) | Expect::Body { status: s, .. } => status == *s,
            Expect::OneOf(list) => list.contains(&status),
        };
        let want_digest = match &req.expect {
            Expect::Body { digest, .. } if status_ok && self.opts.verify && req.method != Method::HEAD => Some(*digest),
            _ => None,
        };
        let head = start.elapsed();
        let (bytes_down, sha, snippet, first) =
            read_body(response.into_body(), want_digest.is_some(), !status_ok).await?;
        let latency = start.elapsed();
        let mut outcome = Outcome {
            status,
            latency,
            ttfb: first.map_or(head, |at| at.duration_since(start)),
            bytes_up,
            bytes_down,
            cache,
            error: None,
        };
        if !status_ok {
            let wanted = match &req.expect {
                Expect::Status(s) | Expect::Body { status: s, .. } => s.to_string(),
                Expect::OneOf(list) => format!("{list:?}"),
            };
            outcome.error = Some(format!(
                "{} {} on {}: status {status}, expected {wanted}: {}",
                req.method,
                describe(req),
                target.name,
                String::from_utf8_lossy(&snippet)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            return Ok(outcome);
        }
        if let Expect::Body { digest, .. } = &req.expect {
            let got_len = if req.method == Method::HEAD {
                content_length.unwrap_or(0)
            } else {
                bytes_down
            };
            if got_len != digest.len {
                outcome.error = Some(format!(
                    "{} {} on {}: {got_len} bytes, expected {}",
                    req.method,
                    describe(req),
                    target.name,
                    digest.len
                ));
            } else if let Some(sha) = sha
                && sha != digest.sha256
            {
                outcome.error = Some(format!(
                    "{} {} on {}: body SHA-256 {} differs from the {} that was written",
                    req.method,
                    describe(req),
                    target.name,
                    hex::encode(sha),
                    hex::encode(digest.sha256)
                ));
            }
        }
        Ok(outcome)
    }

    fn build(&self, target: &Target, req: &Req) -> Result<http::Request<ReqBody>, String> {
        let path = target.path(req.key.as_deref());
        let path_and_query = match req.query.as_deref() {
            Some(q) if !q.is_empty() => format!("{path}?{q}"),
            _ => path,
        };
        let host = target.host();
        let uri = match self.opts.mode {
            ConnMode::Pool => format!("http://{}{path_and_query}", target.addr),
            ConnMode::New => path_and_query.clone(),
        };
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(uri)
            .header(header::HOST, host.as_str())
            .header(header::ACCEPT, "*/*");
        if target.kind == Kind::S3 || target.sign_plain {
            let payload = req
                .body
                .as_ref()
                .map_or_else(|| EMPTY_SHA256_HEX.to_owned(), |b| b.sha256_hex());
            let url = format!("http://{host}{path_and_query}");
            // The request's own `x-amz-*` headers are signed too, as S3 requires.
            let amz: Vec<(&str, &str)> = req
                .headers
                .iter()
                .filter(|(n, _)| n.as_str().starts_with("x-amz-"))
                .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
                .collect();
            for (name, value) in self.sign(req.method.as_str(), &url, &host, &payload, &amz)? {
                builder = builder.header(name, value);
            }
        } else if req.method != Method::GET && req.method != Method::HEAD {
            return Err(format!("{} is a plain HTTP target: only GET and HEAD", target.name));
        }
        let body_len = req.body.as_ref().map_or(0, |b| b.len());
        if req.method == Method::PUT || req.method == Method::POST {
            builder = builder
                .header(header::CONTENT_LENGTH, body_len)
                .header(header::CONTENT_TYPE, "application/octet-stream");
        }
        if let Some(range) = &req.range {
            builder = builder.header(header::RANGE, range.as_str());
        }
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        let mut body = ReqBody::new(req.body.as_ref().map(|b| b.bytes.clone()));
        let gated = self.opts.expect_continue_over.is_some_and(|limit| body_len > limit);
        if gated {
            builder = builder.header(header::EXPECT, "100-continue");
        }
        let mut request = builder.body(ReqBody::new(None)).map_err(|e| e.to_string())?;
        if gated {
            let notify = Arc::new(Notify::new());
            let continued = Arc::new(AtomicBool::new(false));
            let (n, c) = (notify.clone(), continued.clone());
            hyper::ext::on_informational(&mut request, move |res| {
                if res.status() == http::StatusCode::CONTINUE {
                    c.store(true, Ordering::Release);
                    n.notify_one();
                }
            });
            body.gate = Some(Box::pin(async move {
                if !continued.load(Ordering::Acquire) {
                    let _ = tokio::time::timeout(EXPECT_CONTINUE_TIMEOUT, notify.notified()).await;
                }
            }));
        }
        *request.body_mut() = body;
        Ok(request)
    }

    /// SigV4 headers over `host;x-amz-content-sha256;x-amz-date` and the `amz` headers, with the
    /// given payload hash.
    fn sign(
        &self,
        method: &str,
        url: &str,
        host: &str,
        payload: &str,
        amz: &[(&str, &str)],
    ) -> Result<Vec<(&'static str, String)>, String> {
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.opts.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| format!("signing parameters: {e}"))?
            .into();
        let signable = SignableRequest::new(
            method,
            url,
            [("host", host)].into_iter().chain(amz.iter().copied()),
            SignableBody::Precomputed(payload.to_owned()),
        )
        .map_err(|e| format!("signing {url}: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing {url}: {e}"))?
            .into_parts();
        let (headers, _) = instructions.into_parts();
        Ok(headers.into_iter().map(|h| (h.name(), h.value().to_owned())).collect())
    }
}

/// What `read_body` returns: length, SHA-256, the start of the body, when its first byte came.
type BodyRead = (u64, Option<[u8; 32]>, Vec<u8>, Option<Instant>);

/// Reads a response body: its length, its SHA-256 when `hash`, its start when `keep`, and when
/// its first byte arrived.
async fn read_body(mut body: Incoming, hash: bool, keep: bool) -> Result<BodyRead, String> {
    let mut hasher = hash.then(Sha256::new);
    let mut n = 0u64;
    let mut snippet = Vec::new();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body after {n} bytes: {}", error_chain(e)))?;
        if let Some(data) = frame.data_ref() {
            if first.is_none() && !data.is_empty() {
                first = Some(Instant::now());
            }
            n += data.len() as u64;
            if let Some(h) = &mut hasher {
                h.update(data);
            }
            if keep && snippet.len() < ERROR_SNIPPET {
                let room = ERROR_SNIPPET - snippet.len();
                snippet.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }
    Ok((n, hasher.map(|h| h.finalize().into()), snippet, first))
}

fn describe(req: &Req) -> String {
    let mut s = req.key.clone().unwrap_or_else(|| "(bucket)".to_owned());
    if let Some(q) = &req.query {
        s.push('?');
        s.push_str(q);
    }
    if let Some(r) = &req.range {
        s.push_str(&format!(" [{r}]"));
    }
    s
}

fn error_chain(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `GET http://ADDR/PATH` on a fresh connection, returning the body text (Perch's `/metrics`).
pub async fn get_text(addr: std::net::SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let fetch = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(error_chain)?;
        let _task = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        let request = http::Request::builder()
            .uri(path)
            .header(header::HOST, addr.to_string())
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(error_chain)?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(error_chain)?.to_bytes();
        if !status.is_success() {
            return Err(format!("GET http://{addr}{path}: status {status}"));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("GET http://{addr}{path}: no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> HttpClient {
        HttpClient::new(ClientOptions {
            mode: ConnMode::Pool,
            pool_size: 1,
            access_key: "AK".into(),
            secret_key: "SK".into(),
            region: "us-east-1".into(),
            expect_continue_over: None,
            timeout: Duration::from_secs(1),
            verify: false,
        })
    }

    #[tokio::test]
    async fn a_plain_target_is_signed_only_when_asked() {
        let c = client();
        let req = Req::get("k", Expect::Status(200));
        let mut plain = Target::new("nginx", "127.0.0.1:9".parse().expect("addr"), "bench", Kind::Plain);
        let unsigned = c.build(&plain, &req).expect("request");
        assert!(unsigned.headers().get(header::AUTHORIZATION).is_none());
        plain.sign_plain = true;
        let signed = c.build(&plain, &req).expect("request");
        let s3 = Target::new("perch", "127.0.0.1:9".parse().expect("addr"), "bench", Kind::S3);
        let as_s3 = c.build(&s3, &req).expect("request");
        // The same request bytes as the S3 target's: same path and host, so the same signature
        // (both signed in the same second, nearly always; the header names at least).
        let names = |r: &http::Request<ReqBody>| {
            let mut n: Vec<String> = r.headers().keys().map(|k| k.to_string()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&signed), names(&as_s3));
        assert!(
            signed
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential=AK/"))
        );
    }
}
