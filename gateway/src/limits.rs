//! Bounds on what one client can hold: connections and requests in flight, the time to send a
//! header or a body, idle keep-alive time, a response the client stops reading, and body sizes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// S3's largest single PUT and largest part: 5 GiB.
pub const S3_BODY_MAX: u64 = 5 << 30;

/// The bounds, as `perch serve` flags set them (docs/configuration.md, "Limits").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once on each listener; further ones wait in the listen queue.
    pub connections_max: usize,
    /// S3 requests served at once (to the end of their answer); further ones wait their turn.
    pub requests_max: usize,
    /// Size of a request's header section (start line included); larger: 431, connection closed.
    pub header_bytes_max: usize,
    /// Size of a request body (PUT, UploadPart); at most `S3_BODY_MAX`.
    pub body_bytes_max: u64,
    /// Time from a new connection, or from the first byte of a request, to its complete header.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may stay silent between an answer and the next request.
    pub idle_timeout: Duration,
    /// The longest a request body, or the sending of an answer, may stall on the client.
    pub body_timeout: Duration,
    /// Slowest average rate (bytes/s) a request body may arrive at, after `body_timeout` of
    /// grace; 0: no rate bound.
    pub body_rate_min: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 512,
            requests_max: 128,
            header_bytes_max: 64 << 10,
            body_bytes_max: S3_BODY_MAX,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            body_rate_min: 16 << 10,
        }
    }
}

/// What a connection is waiting for, which says how long it may stay silent.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// A request's header, since the connection opened or the request's first byte came.
    Header(Instant),
    /// The next request on a kept-alive connection, since the last answer ended.
    Idle(Instant),
    /// Nothing from the client: this many requests are being served (their bodies have their
    /// own clock, `GuardedBody`).
    Busy(usize),
}

/// One accepted connection's state, shared by its socket (`GuardedIo`) and its requests.
pub struct Connection {
    phase: Mutex<Phase>,
    limits: Arc<Limits>,
    /// The socket's reader, parked with no deadline while requests were served: woken when the
    /// last one ends, so that it starts the idle clock (nothing else may poll it again).
    reader: Mutex<Option<Waker>>,
    /// An answer ended the connection before its request's body was read (a refusal): the close
    /// lingers (`GuardedIo::poll_shutdown`).
    linger: AtomicBool,
}

impl Connection {
    pub fn new(limits: Arc<Limits>) -> Arc<Connection> {
        Arc::new(Connection {
            phase: Mutex::new(Phase::Header(Instant::now())),
            limits,
            reader: Mutex::new(None),
            linger: AtomicBool::new(false),
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The phase is a plain value: a panic elsewhere cannot leave it half-written.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Option<Waker>> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time by which the client must have sent more, and what it failed to send. None while
    /// requests are served: then `waker` is woken when the last one ends.
    fn read_deadline(&self, waker: &Waker) -> Option<(Instant, &'static str)> {
        let phase = self.phase();
        match *phase {
            Phase::Header(t) => Some((
                t + self.limits.header_timeout,
                "no complete request header within --header-timeout",
            )),
            Phase::Idle(t) => Some((t + self.limits.idle_timeout, "idle for --idle-timeout")),
            Phase::Busy(_) => {
                // Under the phase's lock, as the request's end takes it: no end slips between.
                *self.reader() = Some(waker.clone());
                None
            }
        }
    }

    /// Bytes came: on an idle connection, a request has begun.
    fn bytes_arrived(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Header(Instant::now());
        }
    }

    /// A request's header is complete: the connection is busy until the returned guard (held to
    /// the end of the answer's body) is dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestSpan {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        RequestSpan {
            conn: self.clone(),
            _permit: None,
        }
    }
}

/// A request being served, to the end of its answer; holds its place under --requests-max.
pub struct RequestSpan {
    conn: Arc<Connection>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl RequestSpan {
    pub fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self._permit = Some(permit);
    }

    /// The answer closes the connection with the request's body maybe unread: the close lingers.
    pub fn linger_at_close(&self) {
        self.conn.linger.store(true, Ordering::Release);
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        let reader = {
            let mut phase = self.conn.phase();
            *phase = match *phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle(Instant::now()),
            };
            match *phase {
                Phase::Idle(_) => self.conn.reader().take(),
                _ => None,
            }
        };
        // The reader may have been polled, and parked with no deadline, before this request's
        // answer ended: it must look again, or an idle connection would be kept forever.
        if let Some(w) = reader {
            w.wake();
        }
    }
}

/// Whether `deadline` has passed; if not, `timer` wakes the task at it.
fn expired(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if Instant::now() >= deadline {
        return true;
    }
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

fn idle_timer() -> Pin<Box<Sleep>> {
    Box::pin(tokio::time::sleep(Duration::from_secs(86_400)))
}

/// A connection's socket, failing a read when the client is silent past the phase's bound and a
/// write that stays blocked (the client stopped reading) past --body-timeout.
pub struct GuardedIo<T> {
    inner: T,
    conn: Arc<Connection>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    write_blocked_since: Option<Instant>,
    /// A lingering close under way (`poll_shutdown`).
    lingering: Option<Lingering>,
}

/// How long a close lingers at most, reading what the client still sends: a client writing a
/// body Perch refused (SDKs that do not wait for `100 Continue`, or send no `Expect`) then reads
/// the answer instead of failing its write on a reset (EPIPE, ECONNRESET), which would lose the
/// answer. nginx's `lingering_close` does the same (30 s; 5 s of silence).
const LINGER_FOR: Duration = Duration::from_secs(10);
/// A lingering close ends once the client has sent nothing for this long.
const LINGER_SILENCE: Duration = Duration::from_secs(2);

/// A lingering close: the answer is sent and the write half shut (the client sees the end of
/// the answer); what the client still sends is read and dropped until it closes its own side.
struct Lingering {
    write_shut: bool,
    until: Instant,
    silent_since: Instant,
    scratch: Box<[u8]>,
}

impl<T> GuardedIo<T> {
    pub fn new(inner: T, conn: Arc<Connection>) -> Self {
        GuardedIo {
            inner,
            conn,
            read_timer: idle_timer(),
            write_timer: idle_timer(),
            write_blocked_since: None,
            lingering: None,
        }
    }

    /// After a write attempt: `Pending` past --body-timeout becomes a `TimedOut` error.
    fn after_write<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => {
                let since = *self.write_blocked_since.get_or_insert_with(Instant::now);
                let deadline = since + self.conn.limits.body_timeout;
                if expired(&mut self.write_timer, deadline, cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing of the answer for --body-timeout",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.write_blocked_since = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.conn.read_deadline(cx.waker()) {
                Some((deadline, what)) if expired(&mut this.read_timer, deadline, cx) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                }
                _ => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.conn.linger.load(Ordering::Acquire) {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        }
        let now = Instant::now();
        let linger = this.lingering.get_or_insert_with(|| Lingering {
            write_shut: false,
            until: now + LINGER_FOR,
            silent_since: now,
            scratch: vec![0; 64 << 10].into_boxed_slice(),
        });
        if !linger.write_shut {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            linger.write_shut = true;
        }
        loop {
            let mut buf = ReadBuf::new(&mut linger.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                // The client closed its side (or the socket failed): nothing is left to reset.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => linger.silent_since = Instant::now(),
                Poll::Pending => {
                    let deadline = linger.until.min(linger.silent_since + LINGER_SILENCE);
                    if expired(&mut this.read_timer, deadline, cx) {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
            }
            if Instant::now() >= linger.until {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The error a request body ends with when the client is too slow; `spool` answers it with
/// 400 RequestTimeout. s3s wraps body errors in its own types, so it is also told by its text.
#[derive(Debug, thiserror::Error)]
#[error("{MARK}: {0}")]
pub struct BodyTooSlow(&'static str);

/// The start of `BodyTooSlow`'s text.
pub const MARK: &str = "perch: request body too slow";

/// A request body that fails when the client leaves it stalled for --body-timeout, or falls
/// behind --body-rate-min after that much grace. Its clock starts when the body is first read,
/// so a request waiting its turn (or for `100 Continue`) is not counted against the client.
pub struct GuardedBody<B> {
    inner: B,
    timeout: Duration,
    rate_min: u64,
    started: Option<Instant>,
    last: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
    /// Set once the whole body was read (see `with_end_flag`).
    end: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, limits: &Limits) -> Self {
        GuardedBody {
            inner,
            timeout: limits.body_timeout,
            rate_min: limits.body_rate_min,
            started: None,
            last: Instant::now(),
            received: 0,
            timer: idle_timer(),
            end: None,
        }
    }

    /// Sets `flag` once the body has been read to its end: an answer given before that must
    /// close the connection (the rest of the body is still on it).
    pub fn with_end_flag(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.end = Some(flag);
        self
    }

    fn ended(&self) {
        if let Some(f) = &self.end {
            f.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// When the client is too slow, given what it sent so far, and why.
    fn deadline(&self, started: Instant) -> (Instant, &'static str) {
        let stalled = (self.last + self.timeout, "no body bytes for --body-timeout");
        if self.rate_min == 0 {
            return stalled;
        }
        let behind = started + self.timeout + Duration::from_secs_f64(self.received as f64 / self.rate_min as f64);
        if behind < stalled.0 {
            (behind, "the body arrives slower than --body-rate-min")
        } else {
            stalled
        }
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let started = match this.started {
            Some(t) => t,
            None => {
                let now = Instant::now();
                this.started = Some(now);
                this.last = now;
                now
            }
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.last = Instant::now();
                }
                if this.inner.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let (deadline, why) = this.deadline(started);
                if expired(&mut this.timer, deadline, cx) {
                    return Poll::Ready(Some(Err(Box::new(BodyTooSlow(why)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body that keeps its request counted (`RequestSpan`) until it has been sent.
pub struct SpanBody<B> {
    inner: B,
    span: Option<RequestSpan>,
}

impl<B> SpanBody<B> {
    pub fn new(inner: B, span: RequestSpan) -> Self {
        SpanBody {
            inner,
            span: Some(span),
        }
    }
}

impl<B: Body + Unpin> Body for SpanBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.span = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The largest file a browser form (PostObject) may carry: s3s holds it in memory whole before
/// Perch sees it, so it is bounded well under the memory budget (and by `--body-bytes-max`).
pub const POST_OBJECT_FILE_MAX: u64 = 64 << 20;

/// The body size a request declares (`x-amz-decoded-content-length` for an aws-chunked body,
/// else `Content-Length`), when it is over `max`. A decoded length on a body that is not
/// aws-chunked (its `x-amz-content-sha256` not `STREAMING-*`) is not its length, as s3s and the
/// spool read it: the `Content-Length` is (a signed `x-amz-decoded-content-length: 1` on a 6 GiB
/// PUT let the body in, to be acknowledged and refused by the origin for ever).
pub fn declared_over(headers: &http::HeaderMap, max: u64) -> Option<u64> {
    let number = |name| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let aws_chunked = headers
        .get("x-amz-content-sha256")
        .is_some_and(|v| v.as_bytes().starts_with(b"STREAMING-"));
    let decoded = aws_chunked.then(|| number("x-amz-decoded-content-length")).flatten();
    let n = decoded.or_else(|| number(http::header::CONTENT_LENGTH.as_str()))?;
    (n > max).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_sizes() {
        let mut h = http::HeaderMap::new();
        assert_eq!(declared_over(&h, 10), None);
        h.insert(http::header::CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(declared_over(&h, 10), Some(11));
        assert_eq!(declared_over(&h, 11), None);
        // A decoded length on a body that is not aws-chunked is not its length.
        h.insert("x-amz-decoded-content-length", "10".parse().unwrap());
        assert_eq!(declared_over(&h, 10), Some(11));
        h.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        assert_eq!(declared_over(&h, 10), Some(11));
        // An aws-chunked body's Content-Length counts its framing; the decoded length decides.
        h.insert(
            "x-amz-content-sha256",
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER".parse().unwrap(),
        );
        assert_eq!(declared_over(&h, 10), None);
    }

    /// A body fed by a channel: `Some(bytes)` is sent, the sender's drop ends it.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.get_mut().0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// Feeds `chunk` bytes every `every` for `count` times, then ends the body.
    fn trickle(chunk: usize, every: Duration, count: usize) -> Fed {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            for _ in 0..count {
                if tx.send(Bytes::from(vec![0u8; chunk])).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        Fed(rx)
    }

    /// Reads `body` to its end: the bytes, or the error with the bytes before it.
    async fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B) -> (usize, Result<(), B::Error>) {
        use http_body_util::BodyExt;
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => got += f.into_data().map(|d| d.len()).unwrap_or(0),
                Err(e) => return (got, Err(e)),
            }
        }
        (got, Ok(()))
    }

    #[tokio::test]
    async fn a_stalled_or_too_slow_body_fails_and_a_steady_one_does_not() {
        let limits = Limits {
            body_timeout: Duration::from_millis(500),
            body_rate_min: 1000,
            ..Limits::default()
        };
        // 1,000 bytes, then silence: cut after 0.5 s of it (the rate bound would wait 1.5 s).
        let start = Instant::now();
        let (got, end) = drain(GuardedBody::new(trickle(1000, Duration::from_secs(60), 2), &limits)).await;
        let err = end.unwrap_err();
        assert_eq!(got, 1000);
        assert!(err.to_string().starts_with(MARK), "{err}");
        assert!(err.to_string().contains("--body-timeout"), "{err}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(1400),
            "{took:?}"
        );

        // 10 bytes every 100 ms never stalls for 0.5 s, but is 100 bytes/s: behind the floor of
        // 1,000 bytes/s once 0.5 s of grace and received/1000 s have passed (about 0.57 s).
        let start = Instant::now();
        let (_, end) = drain(GuardedBody::new(trickle(10, Duration::from_millis(100), 100), &limits)).await;
        let err = end.unwrap_err();
        assert!(err.to_string().contains("--body-rate-min"), "{err}");
        assert!(start.elapsed() < Duration::from_millis(1400), "{:?}", start.elapsed());

        // The same pace over a floor of 50 bytes/s is never behind: the whole body arrives.
        let steady = Limits {
            body_rate_min: 50,
            ..limits
        };
        let (got, end) = drain(GuardedBody::new(trickle(10, Duration::from_millis(100), 15), &steady)).await;
        assert!(end.is_ok());
        assert_eq!(got, 150);
    }
}
