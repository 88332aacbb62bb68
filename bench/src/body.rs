//! Streaming body wrapper for the origin proxy: counts the bytes that pass,
//! paces them to an optional bandwidth limit and reports once when the stream ends.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// How a metered body ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every byte was handed on.
    Complete,
    /// The inner body failed.
    Failed(String),
    /// The body was dropped before its end (e.g. the peer went away).
    Dropped,
}

/// Called exactly once when the body ends (or is dropped).
pub type EndHook = Box<dyn FnOnce(Outcome) + Send>;

/// Releases at most `rate` bytes per second, measured from the first byte.
struct Pace {
    rate: u64,
    piece: usize,
    start: Option<Instant>,
    released: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Pace {
    fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        Pace {
            rate,
            // ~20 pieces per second keeps pacing smooth without tiny writes.
            piece: (rate / 20).clamp(1024, 64 * 1024) as usize,
            start: None,
            released: 0,
            sleep: None,
        }
    }

    /// Waits until up to `want` more bytes may pass; returns how many.
    fn poll_release(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<usize> {
        let n = want.min(self.piece);
        let start = *self.start.get_or_insert_with(Instant::now);
        let secs = (self.released + n as u64) as f64 / self.rate as f64;
        let offset = Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(u32::MAX as u64));
        let due = start
            .checked_add(offset)
            .unwrap_or_else(|| start + Duration::from_secs(86_400));
        if Instant::now() < due {
            let sleep = match &mut self.sleep {
                Some(sleep) => {
                    if sleep.deadline() != due {
                        sleep.as_mut().reset(due);
                    }
                    sleep
                }
                None => self.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
            };
            ready!(sleep.as_mut().poll(cx));
        }
        self.released += n as u64;
        Poll::Ready(n)
    }
}

/// Wraps a body: counts bytes into `counter`, paces them, runs `hook` at the end.
pub struct Metered<B> {
    inner: B,
    pending: Bytes,
    counter: Arc<AtomicU64>,
    pace: Option<Pace>,
    hook: Option<EndHook>,
}

impl<B: Body<Data = Bytes> + Unpin> Metered<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>, bandwidth: Option<u64>, hook: Option<EndHook>) -> Self {
        let mut body = Metered {
            inner,
            pending: Bytes::new(),
            counter,
            pace: bandwidth.map(Pace::new),
            hook,
        };
        // An empty body may never be polled; report it right away.
        if body.inner.is_end_stream() {
            body.finish(Outcome::Complete);
        }
        body
    }
}

impl<B> Metered<B> {
    fn finish(&mut self, outcome: Outcome) {
        if let Some(hook) = self.hook.take() {
            hook(outcome);
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = match &mut this.pace {
                    Some(pace) => ready!(pace.poll_release(cx, this.pending.len())),
                    None => this.pending.len(),
                };
                let chunk = this.pending.split_to(n);
                this.counter.fetch_add(n as u64, Ordering::Relaxed);
                // Report before handing on the last bytes, so whoever sees the end
                // of the body also sees the finished record.
                if this.pending.is_empty() && this.inner.is_end_stream() {
                    this.finish(Outcome::Complete);
                }
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.finish(Outcome::Complete);
                    return Poll::Ready(None);
                }
                Some(Err(e)) => {
                    this.finish(Outcome::Failed(e.to_string()));
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pending = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let pending = self.pending.len() as u64;
        match inner.exact() {
            Some(n) => SizeHint::with_exact(n + pending),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + pending);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + pending);
                }
                hint
            }
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.finish(Outcome::Dropped);
    }
}
