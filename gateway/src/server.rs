//! The HTTP listeners: the S3 endpoint (hyper HTTP/1.1 in front of the s3s service) and the admin
//! endpoint (/healthz, /readyz, /metrics, /status), both bounded by `Limits` and stopping
//! gracefully on shutdown.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use perch_cache::Store;
use s3s::service::S3Service;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, field};

use crate::chunked;
use crate::config::AdminToken;
use crate::document;
use crate::fast_get::FastGet;
use crate::front::{REQUEST, RequestInfo};
use crate::limits::{Connection, GuardedBody, GuardedIo, Limits, RequestSpan, SpanBody};
use crate::metrics::Metrics;

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_IN_FLIGHT: Duration = Duration::from_secs(30);

/// Resolves once shutdown has been asked for.
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts connections until shutdown, at most --connections-max at once (the rest wait in the
/// listen queue), serving each with the handler `make` gives it, then waits for in-flight ones.
async fn serve<M, F, Fut, B>(
    name: &'static str,
    listener: TcpListener,
    limits: Arc<Limits>,
    shutdown: watch::Receiver<bool>,
    make: M,
) where
    M: Fn(Arc<Connection>) -> F,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // Header and idle times are bounded by `GuardedIo`, which tells them apart (hyper's own header
    // timeout would also count a kept-alive connection's idle time).
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_header_size(limits.header_bytes_max);
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let mut warned: Option<Instant> = None;
    loop {
        if slots.available_permits() == 0 && warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(
                listener = name,
                connections = limits.connections_max,
                "--connections-max reached; new connections wait in the listen queue"
            );
            warned = Some(Instant::now());
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = stopped(shutdown.clone()) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(shutdown.clone()) => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection::new(limits.clone());
        let handle = make(connection.clone());
        let io = GuardedIo::new(stream, connection);
        let conn = http.serve_connection(TokioIo::new(io), service_fn(handle));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // Close the socket now, so new connections are refused at once instead of waiting unserved.
    drop(listener);
    tracing::info!(listener = name, "stopped accepting; finishing requests in flight");
    if tokio::time::timeout(DRAIN_IN_FLIGHT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "requests still in flight after {DRAIN_IN_FLIGHT:?}; closing them"
        );
    }
}

/// Serves S3 on `listener` until shutdown, at most --requests-max requests at once. `spool_dir`
/// holds chunked request bodies while they are given a length.
pub async fn serve_s3(
    listener: TcpListener,
    s3: S3Service,
    fast: Arc<FastGet>,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    spool_dir: PathBuf,
    shutdown: watch::Receiver<bool>,
) {
    let requests = Arc::new(Semaphore::new(limits.requests_max));
    let spool_dir = Arc::new(spool_dir);
    let ids = Arc::new(RequestIds::new());
    let make = {
        let limits = limits.clone();
        move |connection: Arc<Connection>| {
            let door = Door {
                s3: s3.clone(),
                fast: fast.clone(),
                metrics: metrics.clone(),
                limits: limits.clone(),
                spool_dir: spool_dir.clone(),
                ids: ids.clone(),
            };
            let requests = requests.clone();
            move |req: Request<Incoming>| {
                let (door, requests) = (door.clone(), requests.clone());
                let mut span = connection.request_started();
                async move {
                    // Waits its turn in arrival order (the semaphore is fair); it is never closed.
                    if let Ok(permit) = requests.acquire_owned().await {
                        span.hold(permit);
                    }
                    let response = s3_request(&door, req, &span).await;
                    Ok::<_, Infallible>(response.map(|body| SpanBody::new(body, span)))
                }
            }
        }
    };
    serve("s3", listener, limits, shutdown, make).await;
}

/// What the S3 listener hands every request.
#[derive(Clone)]
struct Door {
    s3: S3Service,
    fast: Arc<FastGet>,
    metrics: Arc<Metrics>,
    limits: Arc<Limits>,
    spool_dir: Arc<PathBuf>,
    ids: Arc<RequestIds>,
}

/// The ids of S3 answers (`x-amz-request-id`, and the `id` of the request's log lines): 16
/// uppercase hex digits, as S3's: the second the process started mixed with its process id, then
/// a counter, so that the ids of one run never repeat and those of two runs differ.
struct RequestIds {
    run: u32,
    next: AtomicU32,
}

impl RequestIds {
    fn new() -> RequestIds {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        RequestIds {
            run: (started as u32) ^ std::process::id().rotate_left(16),
            next: AtomicU32::new(0),
        }
    }

    fn next(&self) -> http::HeaderValue {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let both = (u64::from(self.run) << 32) | u64::from(n);
        let mut id = [0u8; 16];
        for (i, digit) in id.iter_mut().enumerate() {
            *digit = HEX[((both >> (60 - 4 * i)) & 0xF) as usize];
        }
        // Hex digits are always a valid header value.
        http::HeaderValue::from_bytes(&id).unwrap_or(http::HeaderValue::from_static("0"))
    }
}

/// 400 EntityTooLarge for a body declared larger than --body-bytes-max, before it is read.
fn too_large(declared: u64, max: u64) -> Response<s3s::Body> {
    let mut r = error_response(StatusCode::BAD_REQUEST, "EntityTooLarge", "");
    *r.body_mut() = s3s::Body::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>EntityTooLarge</Code>\
         <Message>Your proposed upload exceeds the maximum allowed size.</Message>\
         <ProposedSize>{declared}</ProposedSize><MaxSizeAllowed>{max}</MaxSizeAllowed></Error>"
    ));
    r
}

/// An XML answer with each carriage return written `&#13;`, as S3 writes it: s3s writes it raw,
/// and an XML parser reads a raw one as a line feed (a key `a\rb` would be listed as `a\nb`).
/// Only s3s's own documents (a body in one piece, no ETag header): never an object's bytes, whatever
/// its Content-Type.
fn carriage_returns_escaped(mut r: Response<s3s::Body>) -> Response<s3s::Body> {
    let xml = r
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/xml"))
        && !r.headers().contains_key(http::header::ETAG);
    let Some(body) = r.body().bytes().filter(|b| xml && b.contains(&b'\r')) else {
        return r;
    };
    let mut escaped = Vec::with_capacity(body.len() + 64);
    for &b in body.iter() {
        match b {
            b'\r' => escaped.extend_from_slice(b"&#13;"),
            _ => escaped.push(b),
        }
    }
    if r.headers().contains_key(http::header::CONTENT_LENGTH) {
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(escaped.len()));
    }
    *r.body_mut() = s3s::Body::from(Bytes::from(escaped));
    r
}

/// GetObjectAttributes names the ETag without its quotes, as S3 does (in every other document, and
/// in the header, S3 quotes it; s3s writes it quoted everywhere).
fn attributes_etag_unquoted(mut r: Response<s3s::Body>) -> Response<s3s::Body> {
    let Some(body) = r.body().bytes() else {
        return r;
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return r;
    };
    let unquoted = text
        .replacen("<ETag>\"", "<ETag>", 1)
        .replacen("\"</ETag>", "</ETag>", 1);
    if unquoted.len() == text.len() {
        return r;
    }
    if r.headers().contains_key(http::header::CONTENT_LENGTH) {
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(unquoted.len()));
    }
    *r.body_mut() = s3s::Body::from(unquoted);
    r
}

/// S3's message for the errors s3s answers without one (a client shows "Unknown" otherwise).
pub(crate) fn usual_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "SignatureDoesNotMatch" => {
            "The request signature we calculated does not match the signature you provided. Check your key and signing method."
        }
        "InvalidAccessKeyId" => "The AWS Access Key Id you provided does not exist in our records.",
        "AccessDenied" => "Access Denied",
        "InvalidBucketName" => "The specified bucket is not valid.",
        "NoSuchBucket" => "The specified bucket does not exist",
        "NoSuchKey" => "The specified key does not exist.",
        "MethodNotAllowed" => "The specified method is not allowed against this resource.",
        "MalformedXML" => "The XML you provided was not well-formed or did not validate against our published schema.",
        "MissingContentLength" => "You must provide the Content-Length HTTP header.",
        "RequestTimeTooSkewed" => "The difference between the request time and the current time is too large.",
        "KeyTooLongError" => "Your key is too long",
        "InvalidDigest" => "The Content-MD5 you specified was invalid.",
        "BadDigest" => "The Content-MD5 you specified did not match what we received.",
        "InvalidURI" => "Couldn't parse the specified URI.",
        _ => return None,
    })
}

/// The bucket and key of a request answered 404 or 409, which its error document names.
struct Missing {
    bucket: String,
    key: String,
}

/// `text` escaped for an XML element; `None` if it holds a character XML 1.0 cannot carry.
fn xml_text(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// An S3 XML error as S3 writes it: with its request id (`<RequestId>`, the `x-amz-request-id`
/// header's), a `<Message>` (s3s leaves some out), and for NoSuchKey, NoSuchBucket and the 409s of
/// a bucket (BucketNotEmpty, BucketAlreadyOwnedByYou, BucketAlreadyExists) the `<Key>` or
/// `<BucketName>` asked for. Only error documents in one piece.
fn error_completed(
    mut r: Response<s3s::Body>,
    id: &http::HeaderValue,
    missing: Option<&Missing>,
    range: Option<&str>,
) -> Response<s3s::Body> {
    let Some(body) = r
        .body()
        .bytes()
        .filter(|b| b.starts_with(b"<?xml") || b.starts_with(b"<Error>"))
    else {
        return r;
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return r;
    };
    let (Some(end), false) = (text.rfind("</Error>"), text.contains("<RequestId>")) else {
        return r;
    };
    let mut out = String::with_capacity(text.len() + 160);
    out.push_str(&text[..end]);
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("", |(code, _)| code);
    if !text.contains("<Message>")
        && let Some(message) = usual_message(code)
    {
        out.push_str("<Message>");
        out.push_str(message);
        out.push_str("</Message>");
    }
    let named = match (code, missing) {
        ("NoSuchKey", Some(m)) if !text.contains("<Key>") && !m.key.is_empty() => Some(("Key", &m.key)),
        ("NoSuchBucket" | "BucketNotEmpty" | "BucketAlreadyOwnedByYou" | "BucketAlreadyExists", Some(m))
            if !text.contains("<BucketName>") && !m.bucket.is_empty() =>
        {
            Some(("BucketName", &m.bucket))
        }
        _ => None,
    };
    if let Some((element, value)) = named
        && let Some(value) = xml_text(value)
    {
        out.push_str(&format!("<{element}>{value}</{element}>"));
    }
    // An InvalidRange names the range asked for and the object's size, as S3's does (the size
    // from the 416's `Content-Range: bytes */N`, where it is known).
    let size = r
        .headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes */"))
        .and_then(|n| n.parse::<u64>().ok());
    if code == "InvalidRange"
        && !text.contains("<ActualObjectSize>")
        && let (Some(range), Some(size)) = (range.and_then(xml_text), size)
    {
        out.push_str(&format!(
            "<RangeRequested>{range}</RangeRequested><ActualObjectSize>{size}</ActualObjectSize>"
        ));
    }
    out.push_str("<RequestId>");
    out.push_str(id.to_str().unwrap_or_default());
    out.push_str("</RequestId>");
    out.push_str(&text[end..]);
    if r.headers().contains_key(http::header::CONTENT_LENGTH) {
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(out.len()));
    }
    *r.body_mut() = s3s::Body::from(out);
    r
}

/// A HEAD by part number answers 206, as S3 does: s3s answers every HeadObject 200, whatever
/// the output, so the part's `Content-Range` (which only such a HEAD carries) says it here.
fn part_head_partial(mut r: Response<s3s::Body>) -> Response<s3s::Body> {
    if r.status() == StatusCode::OK && r.headers().contains_key(http::header::CONTENT_RANGE) {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    r
}

/// S3's answer to a presigned URL's `X-Amz-Expires` that s3s would take: not a number of seconds
/// from 0 to the 7 days S3 allows (400 AuthorizationQueryParametersError), or 0 (S3: expired at
/// once; s3s serves it until the end of its signing second); and to one signed over 15 minutes
/// ahead of Perch's clock: 403 AccessDenied, "Request is not valid yet" (s3s: 403
/// RequestTimeTooSkewed, a header-signed request's answer).
fn presigned_expiry_refused(query: Option<&str>) -> Option<Response<s3s::Body>> {
    const WEEK_SECS: u64 = 7 * 24 * 3600;
    let query = query?;
    let expires = crate::sigv4::query_param(query, "X-Amz-Expires")?;
    let signed_at = crate::sigv4::query_param(query, "X-Amz-Date").and_then(crate::sigv4::parse_amz_date);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    if signed_at.is_some_and(|t| t - now > crate::sigv4::MAX_SKEW_SECS) {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Request is not valid yet",
        ));
    }
    match expires.parse::<u64>() {
        Ok(0) => Some(error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Request has expired",
        )),
        Ok(secs) if secs <= WEEK_SECS => None,
        Ok(_) => Some(error_response(
            StatusCode::BAD_REQUEST,
            "AuthorizationQueryParametersError",
            "X-Amz-Expires must be less than a week (in seconds) that is 604800",
        )),
        Err(_) => Some(error_response(
            StatusCode::BAD_REQUEST,
            "AuthorizationQueryParametersError",
            "X-Amz-Expires should be a number of seconds from 0 to 604800",
        )),
    }
}

/// What SigV4 binds to its signature and s3s does not check: `host` must be signed (in
/// virtual-hosted style it alone names the bucket), and so must every `x-amz-*` header a request
/// carries (a copy source, tags, metadata, a storage class, a condition on a copy...). Without it,
/// a signed request seen once, or a presigned URL, could be sent on to another bucket or with
/// headers added that make it another request (a PUT made a copy of an object its holder may not
/// read). S3 refuses such a request: 403 AccessDenied, naming the headers not signed. A presigned
/// URL's client may add `x-amz-content-sha256` (the payload is unsigned there anyway). A request
/// that carries both a SigV4 `Authorization` header and a signature in its query is refused as S3
/// refuses it: 400 InvalidArgument; so is a header signed for another service than S3's: 400
/// AuthorizationHeaderMalformed.
fn unsigned_headers_refused<B>(req: &Request<B>) -> Option<Response<s3s::Body>> {
    let headers = req.headers();
    let query = req.uri().query().unwrap_or("");
    // By their decoded names, as s3s reads them.
    let in_query = |name: &str| crate::sigv4::query_param(query, name);
    let auth = headers.get(http::header::AUTHORIZATION);
    let query_signed = in_query("X-Amz-Algorithm").is_some() || in_query("Signature").is_some();
    if auth.is_some() && query_signed {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        ));
    }
    // A presigned query Perch cannot read gets s3s's answer (400
    // AuthorizationQueryParametersError). An `Authorization` header it cannot read is refused
    // here, with the answer S3 gives (`unreadable_auth_as_s3`): s3s takes any word for the
    // algorithm (`AWS4-HMAC-SHA256X`, `Bearer`) and signs with SigV4's whatever it says, so a
    // header s3s verifies but this check could not read would skip it.
    let malformed = || {
        Some(match AuthScheme::of(headers) {
            AuthScheme::SigV4 => refused_head("AuthorizationHeaderMalformed"),
            _ => refused_head("InvalidArgument"),
        })
    };
    let (signed, presigned): (std::borrow::Cow<'_, str>, bool) = match auth {
        Some(value) => {
            let Ok(text) = value.to_str() else { return malformed() };
            // SigV2 (`AWS AK:signature`) signs every `x-amz-*` header by definition.
            if text.starts_with("AWS ") {
                return None;
            }
            let Some(parsed) = crate::sigv4::parse_header(text, "") else {
                return malformed();
            };
            let dated = parsed.scope_date.len() == 8 && parsed.scope_date.bytes().all(|b| b.is_ascii_digit());
            if !dated {
                return None;
            }
            // Signed for another service (s3s answered 501 NotImplemented, naming STS).
            if parsed.service != "s3" && parsed.service != "sts" {
                let service = xml_text(parsed.service).unwrap_or_default();
                return Some(error_response(
                    StatusCode::BAD_REQUEST,
                    "AuthorizationHeaderMalformed",
                    &format!(
                        "The authorization header is malformed; incorrect service &quot;{service}&quot;. This endpoint belongs to &quot;s3&quot;."
                    ),
                ));
            }
            (parsed.signed_headers.into(), false)
        }
        None => {
            in_query("X-Amz-Algorithm")?;
            in_query("X-Amz-Credential")?;
            in_query("X-Amz-Signature")?;
            let list = in_query("X-Amz-SignedHeaders")?;
            // The list's `;` comes %-encoded from SDKs; copied only then.
            let list = if list.contains('%') {
                list.replace("%3B", ";").replace("%3b", ";").into()
            } else {
                list.into()
            };
            (list, true)
        }
    };
    // Exactly as listed: s3s looks each listed name up as it is written, and leaves out of the
    // signature one it does not find (` x-amz-copy-source` or `Host` would sign nothing).
    let is_signed = |name: &str| signed.split(';').any(|s| s == name);
    let mut not_signed: Vec<&str> = Vec::new();
    if !is_signed("host") {
        not_signed.push("host");
    }
    for name in headers.keys() {
        let name = name.as_str();
        let exempt = presigned && name == "x-amz-content-sha256";
        if name.starts_with("x-amz-") && !exempt && !is_signed(name) && !not_signed.contains(&name) {
            not_signed.push(name);
        }
    }
    if not_signed.is_empty() {
        return None;
    }
    let named = xml_text(&not_signed.join(", ")).map(|list| format!("<HeadersNotSigned>{list}</HeadersNotSigned>"));
    Some(error_response_naming(
        StatusCode::FORBIDDEN,
        "AccessDenied",
        "There were headers present in the request which were not signed",
        named.as_deref().unwrap_or_default(),
    ))
}

/// S3's answer to an `x-amz-content-sha256` that is neither a payload mode nor a SHA-256 (64
/// hexadecimal digits): 400 InvalidArgument (s3s answered 403 SignatureDoesNotMatch).
fn content_sha256_refused<B>(req: &Request<B>) -> Option<Response<s3s::Body>> {
    const MODES: [&str; 6] = [
        "UNSIGNED-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    ];
    let value = req.headers().get("x-amz-content-sha256")?.as_bytes();
    let hash = value.len() == 64 && value.iter().all(u8::is_ascii_hexdigit);
    if hash || MODES.iter().any(|m| m.as_bytes() == value) {
        return None;
    }
    Some(error_response(
        StatusCode::BAD_REQUEST,
        "InvalidArgument",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, \
         STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, \
         STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER or \
         a valid sha256 value.",
    ))
}

/// S3's answers to a request it cannot read as one: a path whose `%` is not followed by two
/// hexadecimal digits, 400 InvalidURI (s3s took it literally); a PUT of an object (or a part)
/// that frames no body at all, neither `Content-Length` nor `Transfer-Encoding`, 411
/// MissingContentLength (hyper reads it as empty, and s3s stored an empty object). A copy
/// (`x-amz-copy-source`) carries no body and is left to s3s.
fn unframed_or_unparsable<B>(req: &Request<B>, fast: &FastGet) -> Option<Response<s3s::Body>> {
    let path = req.uri().path();
    if path.contains('%') {
        let bytes = path.as_bytes();
        let malformed = bytes.iter().enumerate().any(|(i, &b)| {
            b == b'%'
                && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        });
        if malformed {
            return Some(error_response(
                StatusCode::BAD_REQUEST,
                "InvalidURI",
                "Couldn't parse the specified URI.",
            ));
        }
    }
    let h = req.headers();
    if req.method() != http::Method::PUT
        || h.contains_key(http::header::CONTENT_LENGTH)
        || h.contains_key(http::header::TRANSFER_ENCODING)
        || h.contains_key("x-amz-copy-source")
    {
        return None;
    }
    let virtual_hosted = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| fast.virtual_bucket(host).is_some());
    let names_a_key = if virtual_hosted {
        path.len() > 1
    } else {
        path.trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, key)| !key.is_empty())
    };
    names_a_key.then(|| {
        error_response(
            StatusCode::LENGTH_REQUIRED,
            "MissingContentLength",
            "You must provide the Content-Length HTTP header.",
        )
    })
}

/// How far a SigV2 request's date may be from Perch's clock, as S3 allows (15 minutes).
const SIGV2_SKEW_MAX_SECS: u64 = 15 * 60;

/// S3's check of the date of a request signed in its `Authorization` header with SigV2, which s3s
/// does not make (it only asks for a date header): without it a request seen once could be sent
/// again at any time. The date is `x-amz-date` if given, else `Date`, in any form SigV2 clients
/// write (`rfc2822_secs`, HTTP's, or `YYYYMMDDTHHMMSSZ`): none, or one that is no date, is 403
/// AccessDenied; one over 15 minutes from now is 403 RequestTimeTooSkewed. (SigV4 dates and
/// presigned expiries are checked by s3s.)
fn sigv2_date_refused(headers: &http::HeaderMap) -> Option<Response<s3s::Body>> {
    if !headers
        .get(http::header::AUTHORIZATION)?
        .as_bytes()
        .starts_with(b"AWS ")
    {
        return None;
    }
    let date = headers
        .get("x-amz-date")
        .or_else(|| headers.get(http::header::DATE))
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let when = date.and_then(|d| {
        httpdate::parse_http_date(d).ok().or_else(|| {
            let secs = crate::sigv4::parse_amz_date(d).or_else(|| rfc2822_secs(d))?;
            Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
        })
    });
    let Some(when) = when else {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "AWS authentication requires a valid Date or x-amz-date header",
        ));
    };
    let now = std::time::SystemTime::now();
    let skew = now.duration_since(when).unwrap_or_else(|e| e.duration());
    (skew.as_secs() > SIGV2_SKEW_MAX_SECS).then(|| {
        error_response(
            StatusCode::FORBIDDEN,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        )
    })
}

/// Seconds since the epoch of a date as SigV2 clients write it: RFC 822/1123/2822 with or without
/// its day of the week (not checked: S3 does not), a day of one or two digits, and a zone of
/// `GMT`, `UT`, `UTC`, `Z` or `±hhmm` (botocore: `GMT`; s3cmd: `+0000`; rclone: `UTC`; AWS's own
/// examples: `+0000`; Python's `formatdate()`: `-0000`).
fn rfc2822_secs(d: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let rest = d.split_once(',').map_or(d, |(_, rest)| rest);
    let mut parts = rest.split_ascii_whitespace();
    let (day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || !(1..=2).contains(&day.len()) || year.len() != 4 {
        return None;
    }
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? + 1;
    let mut hms = time.split(':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next().unwrap_or("00"));
    if hms.next().is_some() || [h, m, s].iter().any(|f| f.len() != 2) {
        return None;
    }
    let offset = match zone {
        "GMT" | "UT" | "UTC" | "Z" => 0,
        z if z.len() == 5
            && (z.starts_with('+') || z.starts_with('-'))
            && z[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            let (hours, minutes) = (z[1..3].parse::<i64>().ok()?, z[3..5].parse::<i64>().ok()?);
            let secs = hours * 3600 + minutes * 60;
            if z.starts_with('-') { -secs } else { secs }
        }
        _ => return None,
    };
    let local = crate::sigv4::parse_amz_date(&format!("{year}{month:02}{day:0>2}T{h}{m}{s}Z"))?;
    Some(local - offset)
}

/// What a request's `Authorization` header claims to be, for S3's answer when s3s cannot read it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthScheme {
    None,
    SigV4,
    Other,
}

impl AuthScheme {
    fn of(headers: &http::HeaderMap) -> AuthScheme {
        match headers.get(http::header::AUTHORIZATION) {
            None => AuthScheme::None,
            Some(v) if v.as_bytes().starts_with(b"AWS4-HMAC-SHA256") => AuthScheme::SigV4,
            Some(_) => AuthScheme::Other,
        }
    }
}

/// S3's message for a SigV4 `Authorization` header it cannot read (AuthorizationHeaderMalformed).
const AUTHORIZATION_MALFORMED: &str = "The authorization header that you provided is not valid.";
/// S3's message for an `Authorization` header of a scheme it does not know (InvalidArgument).
const AUTHORIZATION_UNSUPPORTED: &str = "Unsupported Authorization Type";

/// The answer to a request `FastGet::refused_by_its_head` refuses, by the code it names.
fn refused_head(code: &'static str) -> Response<s3s::Body> {
    match code {
        "AuthorizationHeaderMalformed" => error_response(StatusCode::BAD_REQUEST, code, AUTHORIZATION_MALFORMED),
        "InvalidArgument" => error_response(StatusCode::BAD_REQUEST, code, AUTHORIZATION_UNSUPPORTED),
        _ => error_response(StatusCode::FORBIDDEN, code, usual_message(code).unwrap_or_default()),
    }
}

/// S3's answer where s3s answers 400 InvalidRequest for a header of the signature it cannot parse:
/// a SigV4 `Authorization` header it cannot read is AuthorizationHeaderMalformed, a scheme that is
/// neither SigV4 nor SigV2 is InvalidArgument ("Unsupported Authorization Type"), and a signed
/// request without an `x-amz-date` that is a date is 403 AccessDenied, and so is a browser form
/// whose fields fail its policy's conditions. Every other answer is left as it is.
fn unreadable_auth_as_s3(r: Response<s3s::Body>, scheme: AuthScheme) -> Response<s3s::Body> {
    let says = |text: &str| answer_says(&r, text);
    if scheme != AuthScheme::None && says("<Message>invalid header: authorization</Message>") {
        return match scheme {
            AuthScheme::SigV4 => refused_head("AuthorizationHeaderMalformed"),
            _ => refused_head("InvalidArgument"),
        };
    }
    // A browser form (PostObject) whose fields fail its policy's conditions, which s3s answers
    // 400 InvalidPolicyDocument, as a policy it cannot read: S3 answers 403 AccessDenied.
    if says("<Code>InvalidPolicyDocument</Code>")
        && (says("<Message>Policy condition ") || says("does not match bucket in URL"))
    {
        let body = r.body().bytes().unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let why = text
            .split_once("<Message>")
            .and_then(|(_, rest)| rest.split_once("</Message>"))
            .map_or("", |(message, _)| message);
        return error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            &format!("Invalid according to Policy: Policy Condition failed: {why}"),
        );
    }
    if says("<Message>invalid header: x-amz-date</Message>") || says("<Message>missing header: x-amz-date</Message>") {
        return error_response(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "AWS authentication requires a valid Date or x-amz-date header",
        );
    }
    carriage_returns_escaped(r)
}

/// An S3 XML error answered before s3s sees the request.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response<s3s::Body> {
    error_response_naming(status, code, message, "")
}

/// The same, with more elements after the message (`elements`: XML already escaped), as S3 names
/// what it refused (`<HeadersNotSigned>`...).
fn error_response_naming(status: StatusCode, code: &str, message: &str, elements: &str) -> Response<s3s::Body> {
    let mut r = Response::new(s3s::Body::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message>{elements}</Error>"
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    r
}

/// One S3 request's answer; `served` is told when the answer ends the connection with the body
/// maybe unread, so that the close lingers.
async fn s3_request(door: &Door, req: Request<Incoming>, served: &RequestSpan) -> Response<s3s::Body> {
    let (metrics, limits) = (&door.metrics, &*door.limits);
    let start = Instant::now();
    let id = door.ids.next();
    let span = tracing::info_span!(
        "request",
        id = id.to_str().unwrap_or_default(),
        method = %req.method(),
        op = field::Empty,
        bucket = field::Empty,
        key = field::Empty,
        status = field::Empty,
    );
    let in_flight = metrics.request_started();
    let expects_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let empty_body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    let too_large_body = crate::limits::declared_over(req.headers(), limits.body_bytes_max);
    // A 416's document names the range asked for (`error_completed`).
    // (A header's value is shared, not copied.)
    let range_asked = req.headers().get(http::header::RANGE).cloned();
    let head = req.method() == http::Method::HEAD;
    // Whether the request's body was read to its end before the answer: if not (an answer given
    // early, e.g. a refusal), the rest of it is still on the connection, which hyper then closes;
    // the answer says so (`Connection: close`), so that a client never sends its next request on
    // a connection about to close.
    // (No flag for a request without a body, as every GET: nothing to allocate on the hit path.)
    let body_read =
        (!http_body::Body::is_end_stream(req.body())).then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let (mut response, missing) = REQUEST
        .scope(RefCell::new(RequestInfo::default()), async {
            let mut direct = false;
            let prepared = if let Some(declared) = too_large_body {
                Err(too_large(declared, limits.body_bytes_max))
            } else if document::too_large(&req) {
                Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "MaxMessageLengthExceeded",
                    document::TOO_LARGE,
                ))
            } else if let Some(refused) = presigned_expiry_refused(req.uri().query()) {
                Err(refused)
            } else if let Some(refused) = unsigned_headers_refused(&req)
                .or_else(|| content_sha256_refused(&req))
                .or_else(|| unframed_or_unparsable(&req, &door.fast))
            {
                Err(refused)
            } else if let Some(answer) = door.fast.answer(&req).await {
                direct = true;
                Err(answer)
            } else if let Some(refused) = sigv2_date_refused(req.headers()) {
                // After the hit fast path, which takes only SigV4.
                Err(refused)
            } else if document::is_streamed_document(&req) {
                Err(error_response(
                    StatusCode::NOT_IMPLEMENTED,
                    "NotImplemented",
                    document::STREAMED,
                ))
            } else {
                let req = req.map(|body| match &body_read {
                    Some(flag) => GuardedBody::new(body, limits).with_end_flag(flag.clone()),
                    None => GuardedBody::new(body, limits),
                });
                if chunked::lacks_length(&req) {
                    match door.fast.refused_by_its_head(&req) {
                        Some(code) => Err(refused_head(code)),
                        None => {
                            match chunked::with_length(req, &door.spool_dir, limits.body_bytes_max, door.fast.store())
                                .await
                            {
                                // Now of known length, a document is bounded and checked as any.
                                Ok(req) if document::too_large(&req) => Err(error_response(
                                    StatusCode::BAD_REQUEST,
                                    "MaxMessageLengthExceeded",
                                    document::TOO_LARGE,
                                )),
                                Ok(req) if document::is_held(&req) => document::checked(req)
                                    .await
                                    .map_err(|refused| error_response(refused.status, refused.code, &refused.message)),
                                Ok(req) => Ok(req),
                                Err(refused) => Err(error_response(refused.status, refused.code, &refused.message)),
                            }
                        }
                    }
                } else if document::is_held(&req) {
                    // Held whole before s3s checks its signature, as a chunked body is: refused on
                    // its head first when it can never pass.
                    match door.fast.refused_by_its_head(&req) {
                        Some(code) => Err(refused_head(code)),
                        None => document::checked(req)
                            .await
                            .map_err(|refused| error_response(refused.status, refused.code, &refused.message)),
                    }
                } else {
                    Ok(req.map(s3s::Body::http_body))
                }
            };
            let response = match prepared {
                Ok(req) => {
                    // Read before s3s takes the request: its answer may need it.
                    let scheme = AuthScheme::of(req.headers());
                    let method = req.method().clone();
                    let slashed = bucket_slashed_for_sigv2(&req, &door.fast);
                    let mut answer = door.s3.call(merge_repeated_headers(req)).await;
                    if let Some(again) = slashed
                        && answer.as_ref().is_ok_and(signature_mismatch)
                    {
                        answer = door.s3.call(merge_repeated_headers(again)).await;
                    }
                    match answer {
                        Ok(r) if r.status() == StatusCode::BAD_REQUEST => unreadable_auth_as_s3(r, scheme),
                        Ok(r) if unknown_operation(&r) => method_not_allowed(&method),
                        Ok(r) if head => part_head_partial(r),
                        Ok(r) if REQUEST.with(|i| i.borrow().op == "GetObjectAttributes") => {
                            attributes_etag_unquoted(r)
                        }
                        Ok(r) => carriage_returns_escaped(r),
                        Err(e) => {
                            tracing::error!(error = ?e, "request failed inside s3s");
                            error_response(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "InternalError",
                                "Perch failed to handle the request.",
                            )
                        }
                    }
                }
                // Answered before s3s: too large, by the hit fast path, or a chunked body refused.
                Err(answered) => answered,
            };
            let status = response.status().as_u16();
            let op = REQUEST.with(|r| {
                let info = r.borrow();
                let op = if info.op.is_empty() { "Unknown" } else { info.op };
                let span = tracing::Span::current();
                if !span.is_disabled() {
                    span.record("op", op);
                    span.record("bucket", info.bucket.as_str());
                    span.record("key", info.key.as_str());
                    span.record("status", status);
                }
                op
            });
            let elapsed = start.elapsed();
            if direct {
                metrics.answered_directly(op);
            }
            metrics.observe(op, status, elapsed);
            tracing::info!(ms = elapsed.as_secs_f64() * 1000.0, "done");
            // What a 404's or 409's error document names (its `<Key>` or `<BucketName>`): not for
            // a copy, whose 404 is its source's, where the request names its destination.
            let missing = (matches!(status, 404 | 409) && !matches!(op, "CopyObject" | "UploadPartCopy")).then(|| {
                REQUEST.with(|r| {
                    let info = r.borrow();
                    Missing {
                        bucket: info.bucket.clone(),
                        key: info.key.clone(),
                    }
                })
            });
            (response, missing)
        })
        .instrument(span)
        .await;
    // A client that sent `Expect: 100-continue` and got its final answer without a `100 Continue`
    // (an empty body, or an early refusal) may misread the next response on the same connection
    // (botocore does), so such a connection ends with its answer; so does one whose body was
    // refused unread for its size, or answered before its body was read to the end.
    let unread = body_read
        .as_ref()
        .is_some_and(|flag| !flag.load(std::sync::atomic::Ordering::Acquire));
    if (expects_continue && (empty_body || !response.status().is_success())) || too_large_body.is_some() || unread {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        served.linger_at_close();
    }
    if response.status().as_u16() >= 400 && !head {
        response = error_completed(
            response,
            &id,
            missing.as_ref(),
            range_asked.as_ref().and_then(|v| v.to_str().ok()),
        );
    }
    response.headers_mut().insert("x-amz-request-id", id);
    drop(in_flight);
    response
}

/// A SigV2 request for a bucket in path style (`/BUCKET`, nothing after it) with its path as
/// `/BUCKET/`, for s3s to try when it refused the first form's signature: botocore signs a
/// bucket's resource so (`/BUCKET/?location`), and S3 takes it, where s3s signs the path as it
/// came. Only a request whose whole body is at hand (none, or a document held whole).
fn bucket_slashed_for_sigv2(req: &Request<s3s::Body>, fast: &FastGet) -> Option<Request<s3s::Body>> {
    let sigv2 = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"AWS "))
        || req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("AWSAccessKeyId=")));
    let path = req.uri().path();
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok());
    // A `%` might decode to a slash: `/B%2FK/` would name another key than `/B%2FK`.
    if !sigv2
        || path.len() < 2
        || path[1..].contains(['/', '%'])
        || host.is_some_and(|h| fast.virtual_bucket(h).is_some())
    {
        return None;
    }
    let body = match req.body().bytes() {
        Some(bytes) => s3s::Body::from(bytes),
        None if http_body::Body::is_end_stream(req.body()) => s3s::Body::empty(),
        None => return None,
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}/?{q}"),
        None => format!("{path}/"),
    };
    let mut uri = req.uri().clone().into_parts();
    uri.path_and_query = Some(path_and_query.parse().ok()?);
    let mut again = Request::new(body);
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = http::Uri::from_parts(uri).ok()?;
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// Whether s3s found no operation for the request's method and resource (501 "Unknown
/// operation"): a POST to an object without `?uploads`, `?uploadId`, `?restore` or `?select`, a
/// method S3 has none for (PATCH).
fn unknown_operation(r: &Response<s3s::Body>) -> bool {
    r.status() == StatusCode::NOT_IMPLEMENTED && answer_says(r, "<Message>Unknown operation</Message>")
}

/// S3's answer to a method it has no operation for on the resource: 405 MethodNotAllowed, naming
/// the method (a client's mistake, where s3s answers 501, a feature missing).
fn method_not_allowed(method: &http::Method) -> Response<s3s::Body> {
    let mut r = Response::new(s3s::Body::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>MethodNotAllowed</Code><Message>The specified \
         method is not allowed against this resource.</Message><Method>{}</Method></Error>",
        xml_text(method.as_str()).unwrap_or_default()
    )));
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    // A 405 names what the resource takes (RFC 9110 §15.5.6): buckets and objects take these,
    // each with its subresources.
    r.headers_mut().insert(
        http::header::ALLOW,
        http::HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE"),
    );
    r
}

/// Whether s3s refused a request's signature (403 SignatureDoesNotMatch).
fn signature_mismatch(r: &Response<s3s::Body>) -> bool {
    r.status() == StatusCode::FORBIDDEN && answer_says(r, "<Code>SignatureDoesNotMatch</Code>")
}

/// Whether an answer's body, held whole as s3s's error documents are, holds `text`.
fn answer_says(r: &Response<s3s::Body>, text: &str) -> bool {
    r.body()
        .bytes()
        .is_some_and(|b| b.windows(text.len()).any(|w| w == text.as_bytes()))
}

/// Joins repeated header lines S3 reads as one comma-separated value, which s3s refuses as a
/// duplicate header: `Content-Encoding` (the AWS SDKs send `gzip` and `aws-chunked` as two lines for
/// a streaming upload of an encoded body, as HTTP allows: RFC 9110 §5.3) and user metadata
/// (`x-amz-meta-*`: S3 combines the lines of one name, as SigV4's canonical request does, so the
/// signature still holds).
fn merge_repeated_headers<B>(mut req: Request<B>) -> Request<B> {
    let headers = req.headers_mut();
    let repeated: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| *name == http::header::CONTENT_ENCODING || name.as_str().starts_with("x-amz-meta-"))
        .filter(|name| headers.get_all(*name).iter().nth(1).is_some())
        .cloned()
        .collect();
    for name in repeated {
        // As bytes: a value beyond ASCII is joined as s3s reads it (UTF-8), not left out.
        let joined: Vec<&[u8]> = headers
            .get_all(&name)
            .iter()
            .map(|v| v.as_bytes().trim_ascii())
            .collect();
        if let Ok(value) = http::HeaderValue::from_bytes(&joined.join(&b","[..])) {
            headers.insert(name, value);
        }
    }
    req
}

/// Serves the admin endpoints on `listener` until shutdown. With a token, every request but
/// /healthz, /readyz and /metrics must carry it as `Authorization: Bearer <token>`.
pub async fn serve_admin(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    token: Option<AdminToken>,
    limits: Arc<Limits>,
    shutdown: watch::Receiver<bool>,
) {
    let token = Arc::new(token);
    let make = move |connection: Arc<Connection>| {
        let (store, metrics, token) = (store.clone(), metrics.clone(), token.clone());
        move |req: Request<Incoming>| {
            let (store, metrics, token) = (store.clone(), metrics.clone(), token.clone());
            let span = connection.request_started();
            async move {
                let response = match refused(token.as_ref().as_ref(), &req) {
                    Some(refusal) => refusal,
                    None => admin_request(&store, &metrics, req).await,
                };
                Ok::<_, Infallible>(response.map(|body| SpanBody::new(body, span)))
            }
        }
    };
    serve("admin", listener, limits, shutdown, make).await;
}

/// Paths anyone who reaches the admin listener may read: probes and metrics, which name no key.
const ADMIN_OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// 401 for a request without the admin token (when there is one) on a path that needs it.
fn refused(token: Option<&AdminToken>, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let token = token?;
    if ADMIN_OPEN_PATHS.contains(&req.uri().path()) {
        return None;
    }
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| same_secret(g.as_bytes(), token.0.as_bytes())) {
        return None;
    }
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "this admin endpoint needs the admin token: Authorization: Bearer $PERCH_ADMIN_TOKEN\n".into(),
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"perch-admin\""),
    );
    Some(r)
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// The value of `name` in the request's query, if any.
fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// `POST /journal/retry?seq=N` and `POST /journal/drop?seq=N&confirm=lose-this-write`: an
/// operator's decision about a version the origin refused (or, to drop, one tried again through
/// faults).
async fn journal_request(store: &Store, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(seq) = query_param(req, "seq").and_then(|v| v.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "text/plain", "seq=N is required\n".into());
    };
    let done = match req.uri().path() {
        "/journal/retry" => store
            .retry_version(seq)
            .map(|()| format!("version {seq} will be uploaded again\n")),
        "/journal/drop" if query_param(req, "confirm") == Some("lose-this-write") => store
            .drop_version(seq)
            .await
            .map(|()| format!("version {seq} dropped: that write is lost\n")),
        "/journal/drop" => {
            return text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "dropping a version loses an acknowledged write: add confirm=lose-this-write\n".into(),
            );
        }
        _ => return text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    match done {
        Ok(msg) => text(StatusCode::OK, "text/plain", msg),
        Err(perch_cache::JournalOpError::NotFound(_)) => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("version {seq} is not in the journal\n"),
        ),
        Err(e @ (perch_cache::JournalOpError::NotRefused(_) | perch_cache::JournalOpError::GivingUp(..))) => {
            text(StatusCode::CONFLICT, "text/plain", format!("{e}\n"))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
    }
}

async fn admin_request(store: &Store, metrics: &Metrics, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == http::Method::POST && req.uri().path().starts_with("/journal/") {
        return journal_request(store, &req).await;
    }
    if req.method() != http::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/journal" => {
            let limit = query_param(&req, "limit").and_then(|v| v.parse().ok()).unwrap_or(100);
            match serde_json::to_string_pretty(&store.journal(limit)) {
                Ok(body) => text(StatusCode::OK, "application/json", body + "\n"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        // Alive, and uploading in time: past --dirty-age-max of lag, or with a version the
        // origin refused, Perch reports itself unhealthy (it keeps serving).
        "/healthz" => {
            let st = store.write_status(None);
            if st.healthy {
                text(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!(
                        "upload lag {:.0} s over {} versions, {} refused by the origin{}\n",
                        st.oldest_age_seconds,
                        st.dirty_objects,
                        st.failed.len(),
                        st.origin_fault.map(|f| format!("; origin: {f}")).unwrap_or_default()
                    ),
                )
            }
        }
        "/status" => {
            let upto = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("upto=")))
                .and_then(|v| v.parse().ok());
            match serde_json::to_string_pretty(&store.write_status(upto)) {
                Ok(body) => text(StatusCode::OK, "application/json", body + "\n"),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
            }
        }
        "/readyz" => match store.ready().await {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
        },
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::rfc2822_secs;

    /// 2026-12-07T03:10:05Z.
    const AT: i64 = 1_796_613_005;

    #[test]
    fn sigv2_dates_are_read_in_every_form_clients_write() {
        for (who, date) in [
            ("botocore", "Mon, 07 Dec 2026 03:10:05 GMT"),
            ("s3cmd", "Mon, 07 Dec 2026 03:10:05 +0000"),
            ("rclone", "Mon, 07 Dec 2026 03:10:05 UTC"),
            ("Python formatdate()", "Mon, 07 Dec 2026 03:10:05 -0000"),
            ("a one-digit day", "Mon, 7 Dec 2026 03:10:05 GMT"),
            ("no day of the week", "07 Dec 2026 03:10:05 GMT"),
            ("a wrong day of the week", "Tue, 07 Dec 2026 03:10:05 GMT"),
            ("another zone", "Mon, 07 Dec 2026 04:40:05 +0130"),
            ("a zone west", "Sun, 06 Dec 2026 22:10:05 -0500"),
            ("UT", "Mon, 07 Dec 2026 03:10:05 UT"),
        ] {
            assert_eq!(rfc2822_secs(date), Some(AT), "{who}: {date}");
        }
        for bad in [
            "Bad Date",
            "",
            "Mon, 07 Foo 2026 03:10:05 GMT",
            "Mon, 07 Dec 2026 03:10:05 CET",
            "Mon, 07 Dec 2026 3:10:05 GMT",
            "Mon, 32 Dec 2026 03:10:05 GMT",
            "Mon, 07 Dec 2026 03:10:05 GMT extra",
            "Mon, 07 Dec 26 03:10:05 GMT",
        ] {
            assert_eq!(rfc2822_secs(bad), None, "{bad:?}");
        }
    }
}
