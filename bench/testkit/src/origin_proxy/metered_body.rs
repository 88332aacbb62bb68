//! Streaming body wrapper for the origin proxy: counts the bytes that pass,
//! paces them to an optional bandwidth limit, optionally cuts the body short, and
//! reports once when the stream ends.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
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
    /// The body was cut after this many bytes (the `cut_body_after` fault).
    Cut(u64),
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

/// Where a body is cut: after `limit` bytes it stops (pending forever) and raises `signal`, which
/// the connection reads as "close once what was handed on is flushed".
struct CutAfter {
    limit: u64,
    left: u64,
    signal: Arc<AtomicBool>,
    done: bool,
}

/// Wraps a body: counts bytes into `counter`, paces them, runs `hook` at the end.
pub struct Metered<B> {
    inner: B,
    pending: Bytes,
    counter: Arc<AtomicU64>,
    pace: Option<Pace>,
    hook: Option<EndHook>,
    cut: Option<CutAfter>,
}

impl<B: Body<Data = Bytes> + Unpin> Metered<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>, bandwidth: Option<u64>, hook: Option<EndHook>) -> Self {
        let mut body = Metered {
            inner,
            pending: Bytes::new(),
            counter,
            pace: bandwidth.map(Pace::new),
            hook,
            cut: None,
        };
        // An empty body may never be polled; report it right away.
        if body.inner.is_end_stream() {
            body.finish(Outcome::Complete);
        }
        body
    }
}

impl<B> Metered<B> {
    /// Cuts the body after `limit` bytes: those are handed on, then the body never ends (nor
    /// fails: an error would make hyper drop what it has buffered), the hook reports
    /// `Outcome::Cut`, and `signal` is raised for the connection to close once it has flushed.
    /// A body of at most `limit` bytes passes whole.
    pub fn cut_after(mut self, limit: u64, signal: Arc<AtomicBool>) -> Self {
        self.cut = Some(CutAfter {
            limit,
            left: limit,
            signal,
            done: false,
        });
        self
    }

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
            if let Some(cut) = &mut this.cut {
                if cut.done {
                    // Never woken: the connection closes under this body.
                    return Poll::Pending;
                }
                if cut.left == 0 && !this.pending.is_empty() {
                    cut.done = true;
                    let limit = cut.limit;
                    let signal = cut.signal.clone();
                    // The record first, so that whoever sees the connection close sees it too.
                    this.finish(Outcome::Cut(limit));
                    signal.store(true, Ordering::SeqCst);
                    return Poll::Pending;
                }
            }
            if !this.pending.is_empty() {
                let mut want = this.pending.len();
                if let Some(cut) = &this.cut {
                    want = want.min(usize::try_from(cut.left).unwrap_or(usize::MAX));
                }
                let n = match &mut this.pace {
                    Some(pace) => ready!(pace.poll_release(cx, want)),
                    None => want,
                };
                let chunk = this.pending.split_to(n);
                this.counter.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(cut) = &mut this.cut {
                    cut.left -= n as u64;
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::task::Waker;

    /// A body made of the given data frames, always ready.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Runs a cut body until it ends or stops: (bytes passed, ended, signal raised, outcome).
    fn run(parts: &[&'static [u8]], limit: u64) -> (Vec<u8>, bool, bool, String) {
        let counter = Arc::new(AtomicU64::new(0));
        let outcome = Arc::new(Mutex::new(String::new()));
        let o = outcome.clone();
        let hook: EndHook = Box::new(move |out| *o.lock().unwrap() = format!("{out:?}"));
        let signal = Arc::new(AtomicBool::new(false));
        let frames = Frames(parts.iter().map(|p| Bytes::from_static(p)).collect());
        let mut body = Metered::new(frames, counter.clone(), None, Some(hook)).cut_after(limit, signal.clone());
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let ended = loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => out.extend_from_slice(&f.into_data().unwrap_or_default()),
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Ready(None) => break true,
                Poll::Pending => {
                    // A cut body stays pending.
                    assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
                    break false;
                }
            }
        };
        assert_eq!(counter.load(Ordering::Relaxed), out.len() as u64);
        let outcome = outcome.lock().unwrap().clone();
        (out, ended, signal.load(Ordering::SeqCst), outcome)
    }

    #[test]
    fn a_cut_body_passes_exactly_the_limit_then_stops() {
        assert_eq!(
            run(&[b"hello ", b"world", b"!"], 8),
            (b"hello wo".to_vec(), false, true, "Cut(8)".into())
        );
        // At a frame boundary, and before the first byte.
        assert_eq!(
            run(&[b"hello ", b"world"], 6),
            (b"hello ".to_vec(), false, true, "Cut(6)".into())
        );
        assert_eq!(run(&[b"hello"], 0), (Vec::new(), false, true, "Cut(0)".into()));
        // A body no longer than the limit passes whole.
        assert_eq!(
            run(&[b"ab", b"c"], 3),
            (b"abc".to_vec(), true, false, "Complete".into())
        );
        assert_eq!(run(&[b"abc"], 10), (b"abc".to_vec(), true, false, "Complete".into()));
    }
}
