//! The origin proxy (`perch-bench origin-proxy`, and in-process in tests): an HTTP/1.1 reverse
//! proxy in front of a loopback S3 origin that injects latency and faults, records requests and
//! serves its control API under `/__proxy/`.

mod control;
mod faults;
mod metered_body;

pub use control::ProxyControl;

use std::{
    collections::{BTreeMap, VecDeque},
    convert::Infallible,
    error::Error as StdError,
    fs::{File, OpenOptions},
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Collected, Full, Limited, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::{debug, info, warn};

use faults::{FaultEngine, FaultKind, FaultSettings, parse_outage_schedule};
use metered_body::{EndHook, Metered, Outcome};

/// Requests under this prefix are answered by the proxy itself, never forwarded.
const CONTROL_PREFIX: &str = "/__proxy/";
/// Largest control-API request body.
const CONTROL_BODY_LIMIT: usize = 64 * 1024;
/// How much of a request body is read (and discarded) before answering it with an
/// injected error; past this the connection is closed after the response.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

type BoxError = Box<dyn StdError + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Command-line options of `perch-bench origin-proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Loopback address to listen on; port 0 picks a free port. The bound address is
    /// printed as the first line on stdout: `listening on 127.0.0.1:NNNNN`.
    #[arg(long)]
    listen: String,
    /// The S3 origin, `http://127.0.0.1:PORT` (loopback only, plain HTTP).
    #[arg(long)]
    upstream: String,
    /// Round-trip latency added to every forwarded request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Pace each request and response body to this many bytes per second.
    #[arg(long)]
    bandwidth_bytes_per_sec: Option<u64>,
    /// Extra round trips (of --latency-ms each) charged to the first forwarded request
    /// of every new client connection, simulating TLS setup.
    #[arg(long, default_value_t = 0)]
    new_conn_rtts: u32,
    /// Probability (0.0..=1.0) that a request gets an injected fault.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fault kinds to draw from: 500, 501, 503, 403, 404, slowdown, reset, stall, lost, late.
    #[arg(long, value_delimiter = ',', default_value = "503")]
    error_kinds: Vec<FaultKind>,
    /// How long a `stall` fault holds the request before resetting the connection (a `late` one,
    /// before forwarding it).
    #[arg(long, default_value_t = 5_000)]
    stall_ms: u64,
    /// Outage windows relative to proxy start, `START_S:DURATION_S,...`; during a window
    /// every forwarded request is answered with 503 (kind `outage`).
    #[arg(long)]
    outage_schedule: Option<String>,
    /// Append one JSON line per forwarded request to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Seed for the fault RNG (random if absent; the seed is logged on stderr).
    #[arg(long)]
    seed: Option<u64>,
    /// Records kept in memory for `GET /__proxy/log` (oldest dropped first).
    #[arg(long, default_value_t = 100_000)]
    max_log_records: usize,
    /// Concurrent client connections served at most.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Answer a request signed for any other region as AWS S3 does: 400
    /// AuthorizationHeaderMalformed naming this region (an origin that requires its region).
    #[arg(long)]
    require_region: Option<String>,
}

/// One forwarded (or fault-injected) request, as served by `GET /__proxy/log`.
#[derive(Debug, Clone, Serialize)]
struct Record {
    seq: u64,
    /// Client connection number (1-based, in accept order).
    conn: u64,
    t_start: f64,
    t_end: f64,
    method: String,
    path: String,
    key: String,
    bucket: Option<String>,
    query: Option<String>,
    req_bytes: u64,
    /// 0 when the connection was reset instead of answered.
    status: u16,
    resp_bytes: u64,
    injected: Option<FaultKind>,
    /// Set when the response body was cut by the `cut_body_after` fault after this many bytes.
    cut_body_after: Option<u64>,
    error: Option<String>,
}

/// Recorded requests and per-key counts.
struct RequestLog {
    records: VecDeque<Record>,
    counts: BTreeMap<String, u64>,
    /// Requests with a lower sequence number started before the last reset.
    floor: u64,
    max_records: usize,
    dropped: u64,
    file: Option<File>,
    file_failed: bool,
}

impl RequestLog {
    fn push(&mut self, record: Record) {
        if record.seq < self.floor {
            return;
        }
        if let Some(file) = &mut self.file {
            let written = serde_json::to_vec(&record)
                .map_err(io::Error::other)
                .and_then(|mut line| {
                    line.push(b'\n');
                    file.write_all(&line)
                });
            if let Err(e) = written
                && !self.file_failed
            {
                self.file_failed = true;
                warn!(error = %e, "cannot append to --log file; further errors suppressed");
            }
        }
        self.records.push_back(record);
        while self.records.len() > self.max_records {
            self.records.pop_front();
            self.dropped += 1;
        }
    }

    fn count(&mut self, seq: u64, method: &str, key: &str) {
        if seq >= self.floor {
            *self.counts.entry(format!("{method} {key}")).or_default() += 1;
        }
    }

    fn reset(&mut self, floor: u64) {
        self.records.clear();
        self.counts.clear();
        self.dropped = 0;
        self.floor = floor;
    }
}

struct Shared {
    upstream: Authority,
    client: Client<HttpConnector, Metered<ProxyBody>>,
    engine: Mutex<FaultEngine>,
    log: Mutex<RequestLog>,
    new_conn_rtts: u32,
    seed: u64,
    require_region: Option<String>,
}

/// Per-client-connection state shared by its requests.
#[derive(Clone)]
struct ConnCtx {
    id: u64,
    /// Set to make the connection close with a TCP RST when hyper drops it.
    abort: Arc<AtomicBool>,
    /// True until the first forwarded request has been charged the new-connection RTTs.
    fresh: Arc<AtomicBool>,
    /// Raised by a body cut by `cut_body_after`: close the connection once it is flushed.
    cut: Arc<AtomicBool>,
}

/// Returned by the service to make hyper drop the connection without a response.
#[derive(Debug)]
struct AbortConnection(FaultKind);

impl std::fmt::Display for AbortConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection aborted by injected fault {}", self.0)
    }
}

impl StdError for AbortConnection {}

/// The accepted client socket; resets (SO_LINGER 0) instead of closing when aborted, and fails
/// its first flush after a body was cut (hyper has then written out all it had buffered, and
/// closes the connection on the error).
struct ClientStream {
    stream: TcpStream,
    abort: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::other("response body cut by an injected fault")));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.abort.load(Ordering::Relaxed) {
            // No FIN: the drop below sends a RST.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        if self.abort.load(Ordering::Relaxed)
            && let Err(e) = self.stream.set_zero_linger()
        {
            debug!(error = %e, "cannot set SO_LINGER 0 for reset");
        }
    }
}

/// Runs the proxy until SIGINT/SIGTERM.
///
/// Forwarding keeps the method, path and query and every end-to-end header (Host and
/// Authorization included, header-name case preserved) so SigV4 still verifies; only the
/// hop-by-hop headers (`Connection` and the headers it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`) are dropped, as RFC 9110 requires of a
/// proxy. Bodies stream both ways. `Expect: 100-continue` is honoured towards the client:
/// `100 Continue` is sent only once the body is actually forwarded, so an injected error
/// is answered without the client ever uploading.
///
/// Faults are decided when a request arrives (in `seq` order, under the seeded RNG) and
/// before anything is forwarded, so an injected fault, `reset` and `stall` included,
/// never reaches the upstream. `reset` and `stall` close the client connection with a
/// TCP RST (SO_LINGER 0) and no response; they are recorded with status 0. The two
/// exceptions: `cut_body_after`, where such a GET is forwarded, and its response body is cut
/// after that many bytes (the connection closed mid-body; its record has `cut_body_after` set,
/// the upstream's status, and the bytes actually sent); and `lost`, where the request is
/// forwarded and the upstream's whole answer read, then the client connection reset (its record
/// has the upstream's status); and `late`, where the request is read whole, held, then forwarded
/// whether or not its client is still there.
pub async fn run(args: ProxyArgs) -> Result<(), ProxyError> {
    let proxy = Proxy::bind(&args).await?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening on {}", proxy.local_addr())
            .and_then(|()| out.flush())
            .map_err(|e| ProxyError::io("writing the address", e))?;
    }
    proxy.serve(shutdown_signal()).await
}

/// Why the origin proxy cannot start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// An option it cannot take: what is wrong, and the error found, if any.
    #[error("{what}")]
    Option {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A local failure: what the proxy was doing.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the connection slots were closed")]
    Closed(#[from] tokio::sync::AcquireError),
}

impl ProxyError {
    fn option(what: impl Into<String>) -> ProxyError {
        ProxyError::Option {
            what: what.into(),
            source: None,
        }
    }

    fn option_from(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> ProxyError {
        ProxyError::Option {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    fn io(what: impl Into<String>, source: io::Error) -> ProxyError {
        ProxyError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A bound proxy, ready to serve (run in-process by `servers::ProxyServer`).
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    local: SocketAddr,
    max_connections: usize,
}

impl Proxy {
    /// Binds the listener and prepares the upstream client.
    pub async fn bind(args: &ProxyArgs) -> Result<Proxy, ProxyError> {
        let listen = parse_listen(&args.listen)?;
        let upstream = parse_upstream(&args.upstream)?;
        let baseline = FaultSettings {
            error_rate: args.error_rate,
            error_kinds: args.error_kinds.clone(),
            latency_ms: args.latency_ms,
            stall_ms: args.stall_ms,
            bandwidth_bytes_per_sec: args.bandwidth_bytes_per_sec,
            outage: false,
            match_method: None,
            match_key_prefix: None,
            match_header: None,
            fail_next: 0,
            cut_body_after: None,
            ignore_range: false,
            kms_etags: false,
        };
        baseline
            .validate()
            .map_err(|e| ProxyError::option_from("invalid fault options", e))?;
        let schedule = match &args.outage_schedule {
            Some(spec) => parse_outage_schedule(spec).map_err(|e| ProxyError::option_from("--outage-schedule", e))?,
            None => Vec::new(),
        };
        let seed = args.seed.unwrap_or_else(rand::random);
        let file = match &args.log {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| ProxyError::io(format!("cannot open --log file {}", path.display()), e))?,
            ),
            None => None,
        };

        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ProxyError::io(format!("cannot listen on {listen}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| ProxyError::io("the listener's address", e))?;
        info!(%local, %upstream, seed, "origin proxy ready");

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .http1_preserve_header_case(true)
            .build(connector);

        let shared = Arc::new(Shared {
            upstream,
            client,
            engine: Mutex::new(FaultEngine::new(baseline, schedule, seed)),
            log: Mutex::new(RequestLog {
                records: VecDeque::new(),
                counts: BTreeMap::new(),
                floor: 0,
                max_records: args.max_log_records.max(1),
                dropped: 0,
                file,
                file_failed: false,
            }),
            new_conn_rtts: args.new_conn_rtts,
            seed,
            require_region: args.require_region.clone(),
        });

        Ok(Proxy {
            listener,
            shared,
            local,
            max_connections: args.max_connections.max(1),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ProxyError> {
        let Proxy {
            listener,
            shared,
            max_connections,
            ..
        } = self;
        let slots = Arc::new(Semaphore::new(max_connections));
        tokio::pin!(shutdown);
        let mut next_conn = 0u64;
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit?,
                _ = &mut shutdown => break,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            next_conn += 1;
            tokio::spawn(serve_connection(shared.clone(), stream, next_conn, permit));
        }
        info!("origin proxy shutting down");
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

fn parse_listen(spec: &str) -> Result<SocketAddr, ProxyError> {
    let addr = match spec.strip_prefix("localhost:") {
        Some(port) => SocketAddr::new(
            Ipv4Addr::LOCALHOST.into(),
            port.parse()
                .map_err(|e| ProxyError::option_from(format!("--listen {spec:?}: bad port"), e))?,
        ),
        None => spec
            .parse::<SocketAddr>()
            .map_err(|e| ProxyError::option_from(format!("--listen {spec:?} is not an IP:PORT address"), e))?,
    };
    if !addr.ip().is_loopback() {
        return Err(ProxyError::option(format!(
            "--listen {addr}: refused, only loopback addresses (127.0.0.0/8, ::1) are allowed"
        )));
    }
    Ok(addr)
}

fn parse_upstream(spec: &str) -> Result<Authority, ProxyError> {
    let uri: Uri = spec.parse().map_err(|e| {
        ProxyError::option_from(
            format!("--upstream {spec:?} is not a URL like http://127.0.0.1:PORT"),
            e,
        )
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(ProxyError::option(format!(
                "--upstream {spec}: https is not supported; the origin must be plain http on loopback"
            )));
        }
        _ => {
            return Err(ProxyError::option(format!(
                "--upstream {spec:?} must look like http://127.0.0.1:PORT"
            )));
        }
    }
    let host = uri
        .host()
        .ok_or_else(|| ProxyError::option(format!("--upstream {spec:?} has no host")))?;
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST.into()
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|e| {
                ProxyError::option_from(
                    format!("--upstream {spec}: refused, host {host:?} is not a loopback IP address or localhost"),
                    e,
                )
            })?
    };
    if !ip.is_loopback() {
        return Err(ProxyError::option(format!(
            "--upstream {spec}: refused, only loopback origins (127.0.0.0/8, ::1) are allowed"
        )));
    }
    if let Some(pq) = uri.path_and_query()
        && (pq.path() != "/" || pq.query().is_some())
    {
        return Err(ProxyError::option(format!(
            "--upstream {spec}: must not have a path or query"
        )));
    }
    let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
    addr.to_string()
        .parse()
        .map_err(|e| ProxyError::option_from(format!("--upstream {spec}"), e))
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, id: u64, _permit: OwnedSemaphorePermit) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(conn = id, error = %e, "cannot set TCP_NODELAY");
    }
    let ctx = ConnCtx {
        id,
        abort: Arc::new(AtomicBool::new(false)),
        fresh: Arc::new(AtomicBool::new(true)),
        cut: Arc::new(AtomicBool::new(false)),
    };
    let io = TokioIo::new(ClientStream {
        stream,
        abort: ctx.abort.clone(),
        cut: ctx.cut.clone(),
    });
    let service = service_fn(move |req| handle(shared.clone(), ctx.clone(), req));
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .preserve_header_case(true)
        .timer(TokioTimer::new());
    if let Err(e) = builder.serve_connection(io, service).await {
        debug!(conn = id, error = %e, "client connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    ctx: ConnCtx,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, AbortConnection> {
    if req.uri().path().starts_with(CONTROL_PREFIX) {
        return Ok(control(&shared, req).await);
    }
    if let Some(expected) = &shared.require_region
        && let Some(signed) = signed_region(req.headers())
        && signed != *expected
    {
        return Ok(wrong_region(&signed, expected));
    }
    let t_start = epoch_now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(Authority::as_str));
    let (bucket, key) = split_target(host, &path);
    let has_header = |name: &str| req.headers().contains_key(name);
    let decision = lock(&shared.engine).decide(&method, &key, &has_header, Instant::now());

    let mut delay = decision.latency;
    if shared.new_conn_rtts > 0 && ctx.fresh.swap(false, Ordering::Relaxed) {
        delay += decision
            .latency
            .checked_mul(shared.new_conn_rtts)
            .unwrap_or(Duration::from_secs(3600));
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut record = Record {
        seq: decision.seq,
        conn: ctx.id,
        t_start,
        t_end: 0.0,
        method,
        path,
        key,
        bucket,
        query,
        req_bytes: 0,
        status: 0,
        resp_bytes: 0,
        injected: decision.injected,
        cut_body_after: decision.cut_body_after,
        error: None,
    };
    debug!(seq = record.seq, method = %record.method, path = %record.path, injected = ?record.injected, "request");
    let mut req = req;
    if decision.ignore_range {
        req.headers_mut().remove(header::RANGE);
    }
    let Some(kind) = decision.injected else {
        let cut = decision.cut_body_after.map(|n| (n, ctx.cut.clone()));
        let mut answer = forward(shared, boxed(req), record, decision.bandwidth, cut).await;
        if decision.kms_etags {
            as_kms(answer.headers_mut());
        }
        return Ok(answer);
    };
    if let Some((status, code, message)) = kind.http_error() {
        return Ok(inject_error(&shared, req, record, kind, status, code, message).await);
    }
    if kind == FaultKind::Lost {
        // The origin takes the request and answers in full; the client gets a reset instead.
        let answer = forward(shared, boxed(req), record, decision.bandwidth, None).await;
        let _ = answer.into_body().collect().await;
        ctx.abort.store(true, Ordering::Relaxed);
        return Err(AbortConnection(kind));
    }
    if kind == FaultKind::Late {
        // Whole before it is held, so that the client may go: the task forwards it regardless.
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(Collected::to_bytes) else {
            record.t_end = epoch_now();
            record.error = Some("request body not fully received".into());
            lock(&shared.log).push(record);
            return Err(AbortConnection(kind));
        };
        let req = Request::from_parts(parts, full(body));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (stall, bandwidth) = (decision.stall, decision.bandwidth);
        tokio::spawn(async move {
            tokio::time::sleep(stall).await;
            let _ = tx.send(forward(shared, req, record, bandwidth, None).await);
        });
        return rx.await.map_err(|_| AbortConnection(kind));
    }
    if kind == FaultKind::Held {
        let answer = forward(shared, boxed(req), record, decision.bandwidth, None).await;
        let (parts, body) = answer.into_parts();
        let Ok(body) = body.collect().await.map(Collected::to_bytes) else {
            return Err(AbortConnection(kind));
        };
        tokio::time::sleep(decision.stall).await;
        return Ok(Response::from_parts(parts, full(body)));
    }
    // reset / stall: no response at all, the connection is reset.
    if kind == FaultKind::Stall {
        tokio::time::sleep(decision.stall).await;
    }
    record.t_end = epoch_now();
    lock(&shared.log).push(record);
    ctx.abort.store(true, Ordering::Relaxed);
    Err(AbortConnection(kind))
}

/// An answer as S3 gives it for an object encrypted with SSE-KMS: its ETag not the body's MD5
/// (the digits reversed: still 32 hex digits, as S3's are) and the encryption named.
fn as_kms(headers: &mut http::HeaderMap) {
    let opaque = headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|etag| etag.chars().rev().collect::<String>())
        .and_then(|etag| http::HeaderValue::from_str(&etag).ok());
    if let Some(etag) = opaque {
        headers.insert(header::ETAG, etag);
        headers.insert(
            "x-amz-server-side-encryption",
            http::HeaderValue::from_static("aws:kms"),
        );
    }
}

/// A client's request with its body boxed, as `forward` takes it.
fn boxed(req: Request<Incoming>) -> Request<ProxyBody> {
    req.map(|body| body.map_err(BoxError::from).boxed_unsync())
}

async fn forward(
    shared: Arc<Shared>,
    req: Request<ProxyBody>,
    mut record: Record,
    bandwidth: Option<u64>,
    cut: Option<(u64, Arc<AtomicBool>)>,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = match Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(shared.upstream.clone())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            return local_error(&shared, record, StatusCode::BAD_REQUEST, format!("bad target: {e}"));
        }
    };
    parts.version = Version::HTTP_11;
    let req_counter = Arc::new(AtomicU64::new(0));
    let body = Metered::new(body, req_counter.clone(), bandwidth, None);

    match shared.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            record.status = parts.status.as_u16();
            lock(&shared.log).count(record.seq, &record.method, &record.key);
            strip_hop_by_hop(&mut parts.headers);
            let resp_counter = Arc::new(AtomicU64::new(0));
            let hook = record_hook(shared.clone(), record, req_counter, resp_counter.clone());
            let mut body = Metered::new(body, resp_counter, bandwidth, Some(hook));
            // The `cut_body_after` fault: that many bytes reach the client, then the connection
            // closes with the response unfinished.
            if let Some((limit, signal)) = cut {
                body = body.cut_after(limit, signal);
            }
            Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
        }
        Err(e) => {
            record.req_bytes = req_counter.load(Ordering::Relaxed);
            let message = format!("upstream request failed: {}", error_chain(&e));
            warn!(seq = record.seq, "{message}");
            local_error(&shared, record, StatusCode::BAD_GATEWAY, message)
        }
    }
}

/// Finishes the record of a forwarded request once its response body has ended.
fn record_hook(
    shared: Arc<Shared>,
    mut record: Record,
    req_counter: Arc<AtomicU64>,
    resp_counter: Arc<AtomicU64>,
) -> EndHook {
    Box::new(move |outcome| {
        record.req_bytes = req_counter.load(Ordering::Relaxed);
        record.resp_bytes = resp_counter.load(Ordering::Relaxed);
        record.t_end = epoch_now();
        match outcome {
            Outcome::Complete => {}
            Outcome::Failed(e) => record.error = Some(format!("upstream body failed: {e}")),
            Outcome::Dropped => record.error = Some("response body not fully delivered to the client".into()),
            Outcome::Cut(n) => {
                record.error = Some(format!("response body cut by an injected fault after {n} bytes"));
            }
        }
        lock(&shared.log).push(record);
    })
}

/// Answers with a proxy-generated error (not an injected fault) and records it.
fn local_error(shared: &Shared, mut record: Record, status: StatusCode, message: String) -> Response<ProxyBody> {
    let body = Bytes::from(format!("perch-bench origin-proxy: {message}\n"));
    record.status = status.as_u16();
    record.resp_bytes = body.len() as u64;
    record.t_end = epoch_now();
    record.error = Some(message);
    lock(&shared.log).push(record);
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn inject_error(
    shared: &Shared,
    req: Request<Incoming>,
    mut record: Record,
    kind: FaultKind,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ProxyBody> {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let is_head = req.method() == Method::HEAD;
    if !expects_continue {
        // Read the upload so the client sees the error rather than a broken pipe.
        // With Expect: 100-continue the body is never asked for.
        record.req_bytes = drain(req.into_body(), DRAIN_LIMIT).await;
    }
    let request_id = format!("PERCHPROXY{:010}", record.seq);
    let body = if is_head || code.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(s3_error_xml(code, message, &record.path, &request_id))
    };
    record.status = status.as_u16();
    record.resp_bytes = body.len() as u64;
    record.t_end = epoch_now();
    lock(&shared.log).push(record);

    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(HeaderName::from_static("x-amz-request-id"), v);
    }
    headers.insert(
        HeaderName::from_static("x-perch-injected"),
        HeaderValue::from_static(kind.as_str()),
    );
    resp
}

async fn drain(mut body: Incoming, limit: u64) -> u64 {
    let mut n = 0u64;
    while n < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    n += data.len() as u64;
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    n
}

/// The region of a SigV4 `Authorization` header's credential scope (`KEY/DATE/REGION/s3/aws4_request`).
fn signed_region(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let scope = auth.split("Credential=").nth(1)?.split(',').next()?;
    scope.split('/').nth(2).map(str::to_owned)
}

/// AWS S3's answer to a request signed for the wrong region.
fn wrong_region(signed: &str, expected: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AuthorizationHeaderMalformed</Code><Message>The \
         authorization header is malformed; the region '{}' is wrong; expecting '{}'</Message><Region>{}</Region>\
         <RequestId>PERCHPROXYREGION</RequestId></Error>",
        xml_escape(signed),
        xml_escape(expected),
        xml_escape(expected)
    );
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    resp
}

fn s3_error_xml(code: &str, message: &str, resource: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>{}</RequestId></Error>",
        xml_escape(code),
        xml_escape(message),
        xml_escape(resource),
        xml_escape(request_id)
    )
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Serves `/__proxy/...`.
async fn control(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let route = path.strip_prefix(CONTROL_PREFIX.trim_end_matches('/')).unwrap_or("");
    match (route, &method) {
        ("/log", &Method::GET) => {
            let mut records: Vec<Record> = lock(&shared.log).records.iter().cloned().collect();
            records.sort_by_key(|r| r.seq);
            json_response(StatusCode::OK, &records)
        }
        ("/counts", &Method::GET) => {
            let counts = lock(&shared.log).counts.clone();
            json_response(StatusCode::OK, &counts)
        }
        ("/reset", &Method::POST) => {
            let floor = lock(&shared.engine).next_seq();
            lock(&shared.log).reset(floor);
            json_response(StatusCode::OK, &serde_json::json!({ "reset": true }))
        }
        ("/faults", &Method::GET) => {
            let settings = lock(&shared.engine).current().clone();
            json_response(StatusCode::OK, &settings)
        }
        ("/faults", &Method::PUT) | ("/faults", &Method::PATCH) => {
            let patch = match read_json(req.into_body()).await {
                Ok(v) => v,
                Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
            };
            let mut engine = lock(&shared.engine);
            // PUT: fields absent from the body take their command-line value.
            // PATCH: fields absent from the body keep their current value.
            let base = if method == Method::PUT {
                engine.baseline()
            } else {
                engine.current()
            };
            match base.overlay(&patch) {
                Ok(settings) => {
                    engine.set(settings.clone());
                    drop(engine);
                    info!(?settings, "fault settings replaced");
                    json_response(StatusCode::OK, &settings)
                }
                Err(e) => {
                    drop(engine);
                    json_error(StatusCode::BAD_REQUEST, &e.to_string())
                }
            }
        }
        ("/status", &Method::GET) => {
            let (next_seq, scheduled, outage) = {
                let engine = lock(&shared.engine);
                (
                    engine.next_seq(),
                    engine.scheduled_outage_active(Instant::now()),
                    engine.current().outage,
                )
            };
            let (records, dropped) = {
                let log = lock(&shared.log);
                (log.records.len(), log.dropped)
            };
            json_response(
                StatusCode::OK,
                &serde_json::json!({
                    "upstream": shared.upstream.as_str(),
                    "seed": shared.seed,
                    "next_seq": next_seq,
                    "outage": outage,
                    "scheduled_outage_active": scheduled,
                    "log_records": records,
                    "dropped_records": dropped,
                }),
            )
        }
        ("/log" | "/counts" | "/reset" | "/faults" | "/status", _) => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => json_error(StatusCode::NOT_FOUND, "unknown control endpoint"),
    }
}

async fn read_json(body: Incoming) -> Result<serde_json::Value, String> {
    let bytes = Limited::new(body, CONTROL_BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| format!("cannot read body: {e}"))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))
}

fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(Bytes::from(bytes)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            let mut resp = Response::new(full(Bytes::from(format!("serialization failed: {e}"))));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(status, &serde_json::json!({ "error": message }))
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1). Framing headers stay: hyper re-frames.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| {
            ![
                header::HOST,
                header::AUTHORIZATION,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
            ]
            .contains(n)
        })
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ] {
        headers.remove(&name);
    }
}

/// Splits a request target into (bucket, key). Path style: `/bucket/key...`. Virtual-hosted
/// style (Host `bucket.localhost[:port]`): the bucket is the Host prefix and the key the
/// whole path. The key is percent-decoded and has no leading slash.
fn split_target(host: Option<&str>, path: &str) -> (Option<String>, String) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if let Some(bucket) = host.and_then(virtual_host_bucket) {
        return (Some(bucket), percent_decode(trimmed));
    }
    let (bucket, key) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    let bucket = (!bucket.is_empty()).then(|| percent_decode(bucket));
    (bucket, percent_decode(key))
}

fn virtual_host_bucket(host: &str) -> Option<String> {
    if host.starts_with('[') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    const SUFFIX: &str = ".localhost";
    let split = name.len().checked_sub(SUFFIX.len())?;
    let (bucket, suffix) = (name.get(..split)?, name.get(split..)?);
    (suffix.eq_ignore_ascii_case(SUFFIX) && !bucket.is_empty()).then(|| bucket.to_owned())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
            (Some(b'%'), Some(&h), Some(&l)) => match (hex_val(h), hex_val(l)) {
                (Some(h), Some(l)) => Some(h << 4 | l),
                _ => None,
            },
            _ => None,
        };
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_targets() {
        assert_eq!(
            split_target(Some("127.0.0.1:9000"), "/bkt/a/b%20c.txt"),
            (Some("bkt".into()), "a/b c.txt".into())
        );
        assert_eq!(
            split_target(Some("localhost:9000"), "/bkt"),
            (Some("bkt".into()), String::new())
        );
        assert_eq!(split_target(None, "/"), (None, String::new()));
    }

    #[test]
    fn virtual_hosted_targets() {
        assert_eq!(
            split_target(Some("my.bucket.localhost:9000"), "/dir/k"),
            (Some("my.bucket".into()), "dir/k".into())
        );
        assert_eq!(
            split_target(Some("bkt.LOCALHOST"), "/"),
            (Some("bkt".into()), String::new())
        );
        assert_eq!(split_target(Some("[::1]:9000"), "/b/k"), (Some("b".into()), "k".into()));
    }

    #[test]
    fn loopback_only() {
        assert!(parse_listen("127.0.0.1:0").is_ok());
        assert!(parse_listen("[::1]:0").is_ok());
        assert!(parse_listen("localhost:0").is_ok());
        assert!(parse_listen("0.0.0.0:0").is_err());
        assert!(parse_listen("10.1.2.3:80").is_err());
        assert!(parse_upstream("http://127.0.0.1:9000").is_ok());
        assert_eq!(
            parse_upstream("http://localhost:9000").unwrap().as_str(),
            "127.0.0.1:9000"
        );
        assert!(parse_upstream("http://[::1]:9000/").is_ok());
        assert!(parse_upstream("http://192.168.1.1:9000").is_err());
        assert!(parse_upstream("http://example.com").is_err());
        assert!(parse_upstream("https://127.0.0.1:9000").is_err());
        assert!(parse_upstream("http://127.0.0.1:9000/prefix").is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("AWS4-HMAC-SHA256 x"));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key(header::AUTHORIZATION) && h.contains_key(header::HOST));
    }

    #[test]
    fn error_xml_is_escaped() {
        let xml = s3_error_xml("SlowDown", "m", "/b/a&b<c>", "id");
        assert!(xml.contains("<Code>SlowDown</Code>"));
        assert!(xml.contains("<Resource>/b/a&amp;b&lt;c&gt;</Resource>"));
    }
}
