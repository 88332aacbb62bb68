//! The HTTP listeners: the S3 endpoint (hyper HTTP/1.1 in front of the s3s service) and the admin
//! endpoint (/healthz, /readyz, /metrics, /status), both stopping gracefully on shutdown.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
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
use tokio::sync::watch;
use tracing::{Instrument, field};

use crate::front::{REQUEST, RequestInfo};
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

/// Accepts connections until shutdown, serving each with `handle`, then waits for in-flight ones.
async fn serve<F, Fut, B>(name: &'static str, listener: TcpListener, shutdown: watch::Receiver<bool>, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
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
        let handle = handle.clone();
        let conn = http.serve_connection(TokioIo::new(stream), service_fn(handle));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
            }
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

/// Serves S3 on `listener` until shutdown.
pub async fn serve_s3(listener: TcpListener, s3: S3Service, metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>) {
    let handle = move |req: Request<Incoming>| {
        let s3 = s3.clone();
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(s3_request(s3, metrics, req).await) }
    };
    serve("s3", listener, shutdown, handle).await;
}

async fn s3_request(s3: S3Service, metrics: Arc<Metrics>, req: Request<Incoming>) -> Response<s3s::Body> {
    let start = Instant::now();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        op = field::Empty,
        bucket = field::Empty,
        key = field::Empty,
        status = field::Empty,
    );
    metrics.in_flight.inc();
    let expects_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let empty_body = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0");
    let mut response = REQUEST
        .scope(RefCell::new(RequestInfo::default()), async {
            let response = match s3.call(merge_content_encoding(req).map(s3s::Body::from)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = ?e, "request failed inside s3s");
                    let mut r = Response::new(s3s::Body::from(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                         <Message>Perch failed to handle the request.</Message></Error>"
                            .to_owned(),
                    ));
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            };
            let info = REQUEST.with(|r| r.borrow().clone());
            let op = if info.op.is_empty() { "Unknown" } else { info.op };
            let status = response.status().as_u16();
            let span = tracing::Span::current();
            span.record("op", op);
            span.record("bucket", info.bucket.as_str());
            span.record("key", info.key.as_str());
            span.record("status", status);
            let elapsed = start.elapsed();
            metrics.observe(op, status, elapsed);
            tracing::info!(ms = elapsed.as_secs_f64() * 1000.0, "done");
            response
        })
        .instrument(span)
        .await;
    // A client that sent `Expect: 100-continue` and got its final answer without a `100 Continue`
    // (an empty body, or an early refusal) may misread the next response on the same connection
    // (botocore does), so such a connection ends with its answer.
    if expects_continue && (empty_body || !response.status().is_success()) {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    metrics.in_flight.dec();
    response
}

/// Joins repeated `Content-Encoding` lines into one. The AWS SDKs send `Content-Encoding: gzip` and
/// `Content-Encoding: aws-chunked` as two lines for a streaming upload of an encoded body, which
/// HTTP allows (RFC 9110 §5.3) but s3s refuses as a duplicate header.
fn merge_content_encoding<B>(mut req: Request<B>) -> Request<B> {
    let headers = req.headers_mut();
    if headers.get_all(http::header::CONTENT_ENCODING).iter().nth(1).is_some() {
        let joined: Vec<&str> = headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if let Ok(value) = http::HeaderValue::from_str(&joined.join(",")) {
            headers.insert(http::header::CONTENT_ENCODING, value);
        }
    }
    req
}

/// Serves the admin endpoints on `listener` until shutdown.
pub async fn serve_admin(
    listener: TcpListener,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let handle = move |req: Request<Incoming>| {
        let metrics = metrics.clone();
        let store = store.clone();
        async move { Ok::<_, Infallible>(admin_request(&store, &metrics, req).await) }
    };
    serve("admin", listener, shutdown, handle).await;
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
/// operator's decision about a version the origin refused.
fn journal_request(store: &Store, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(seq) = query_param(req, "seq").and_then(|v| v.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "text/plain", "seq=N is required\n".into());
    };
    let done = match req.uri().path() {
        "/journal/retry" => store
            .retry_version(seq)
            .map(|()| format!("version {seq} will be uploaded again\n")),
        "/journal/drop" if query_param(req, "confirm") == Some("lose-this-write") => store
            .drop_version(seq)
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
        Err(e @ perch_cache::JournalOpError::NotRefused(_)) => {
            text(StatusCode::CONFLICT, "text/plain", format!("{e}\n"))
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
    }
}

async fn admin_request(store: &Store, metrics: &Metrics, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == http::Method::POST && req.uri().path().starts_with("/journal/") {
        return journal_request(store, &req);
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
