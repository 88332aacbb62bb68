//! Pass-through reads: a whole object streamed from the origin to one client with no copy kept (a
//! key the policy bypasses, or a data dir with no room for a copy), checked and resumed as a fill
//! is: the last bytes go out only once the whole body matched the object's checksum or MD5 ETag,
//! and a broken origin stream is resumed with Range + If-Match. A range miss's answer, streamed
//! from the origin the same way, is resumed alike (a range has no checksum to match).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use prometheus_client::metrics::counter::Counter;

use crate::error::Doing;
use crate::fill::Check;
use crate::key::ObjectKey;
use crate::origin::{Breaks, ByteStream, GetOutput, Origin, OriginError, OriginResult, rest_of};
use crate::segments::split_when_slow;

type Resumption = Pin<Box<dyn Future<Output = OriginResult<ByteStream>> + Send>>;

/// The body of a whole object (or of a range of it) from the origin, resumed where it breaks until `deadline` after
/// the break (a run of breaks without a byte between them counts as one). A resumed body is
/// pinned to the first answer's version by If-Match: an object replaced meanwhile ends the body
/// with an error, never a spliced one. Every byte, resumed or not, goes through the fill's
/// check (`Check`), and the chunk that completes the body is held back until it passed: a
/// corrupt transfer reaches the client as a cut body, never as a complete wrong one.
pub(crate) struct Passed {
    origin: Arc<dyn Origin>,
    okey: ObjectKey,
    etag: String,
    /// Where the body starts in the object, its length, and its last byte when it is a range.
    first: u64,
    size: u64,
    last: Option<u64>,
    received: u64,
    body: ByteStream,
    /// The ranged GET under way after a break (in a mutex only so that the stream is `Sync`).
    resuming: Mutex<Option<Resumption>>,
    check: Option<Check>,
    breaks: Breaks,
    resumed: Counter,
    ended: bool,
}

impl Passed {
    /// `out`, asked of the origin at `asked`, with its body passed through (split into ranged
    /// reads when slow, `segments`, and resumed where it breaks).
    pub(crate) fn wrap(
        origin: Arc<dyn Origin>,
        okey: ObjectKey,
        out: GetOutput,
        asked: Instant,
        deadline: Duration,
        resumed: Counter,
    ) -> GetOutput {
        let (first, size, last, check) = match out.range {
            Some((first, last)) => (first, last - first + 1, Some(last), None),
            None => (0, out.meta.size, None, Some(Check::of(&out.meta))),
        };
        let body = split_when_slow(
            origin.clone(),
            &okey,
            &out.meta.etag,
            first,
            first + size,
            out.body,
            asked,
        );
        let body = Passed {
            origin,
            okey,
            etag: out.meta.etag.clone(),
            first,
            size,
            last,
            received: 0,
            body,
            resuming: Mutex::new(None),
            check,
            breaks: Breaks::new(deadline),
            resumed,
            ended: false,
        };
        GetOutput {
            body: Box::pin(body),
            ..out
        }
    }

    /// Checks the whole body, once: `Err` when it is not the object's.
    fn verify(&mut self) -> Result<(), io::Error> {
        match self.check.take().map(Check::verify_hashed) {
            Some(Err(why)) => {
                tracing::warn!(key = self.okey.key(), error = %why, "a body read through from the origin is not the object's");
                Err(io::Error::other(why))
            }
            _ => Ok(()),
        }
    }

    /// Ends the body with `e`.
    fn fail(&mut self, e: io::Error) -> Poll<Option<io::Result<Bytes>>> {
        self.ended = true;
        Poll::Ready(Some(Err(e)))
    }

    /// Asks the origin for the rest of the object after a break (`why`), or says why not.
    fn resume(&mut self, why: io::Error) -> Result<(), io::Error> {
        let Some(pause) = self.breaks.broke() else {
            return Err(Doing::io("origin stream broke", why));
        };
        tracing::info!(key = self.okey.key(), received = self.received, error = %why, "origin stream broke; resuming with a range request");
        self.resumed.inc();
        // What the broken body still has under way (a split body's other ranged reads) stops now.
        self.body = Box::pin(futures::stream::empty());
        let (origin, okey, etag) = (self.origin.clone(), self.okey.clone(), self.etag.clone());
        let (from, last, end) = (self.first + self.received, self.last, self.first + self.size);
        let more: Resumption = Box::pin(async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let asked = Instant::now();
            let rest = rest_of(origin.as_ref(), okey.bucket(), okey.key(), &etag, from, last).await?;
            Ok(split_when_slow(origin, &okey, &etag, from, end, rest, asked))
        });
        *self.resuming.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(more);
        Ok(())
    }
}

impl Stream for Passed {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let resuming = this.resuming.get_mut().unwrap_or_else(PoisonError::into_inner);
            if let Some(more) = resuming {
                let answer = match more.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(answer) => answer,
                };
                *resuming = None;
                match answer {
                    Ok(body) => this.body = body,
                    Err(OriginError::PreconditionFailed) => {
                        return this.fail(io::Error::other("the object changed during the read"));
                    }
                    Err(e) => return this.fail(Doing::io("resuming the origin stream", e)),
                }
            }
            let broke = match this.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    this.received += chunk.len() as u64;
                    this.breaks.progressed(chunk.len() as u64);
                    if this.received > this.size {
                        return this.fail(io::Error::other("the origin sent more bytes than announced"));
                    }
                    if let Some(check) = this.check.as_mut() {
                        check.update(&chunk);
                    }
                    if this.received == this.size
                        && let Err(e) = this.verify()
                    {
                        return this.fail(e);
                    }
                    return Poll::Ready(Some(Ok(chunk)));
                }
                // A whole body's last error (its checksum) is the answer, not a break.
                Poll::Ready(Some(Err(e))) if this.received >= this.size => return this.fail(e),
                Poll::Ready(Some(Err(e))) => e,
                Poll::Ready(None) if this.received >= this.size => {
                    // An empty object has no chunk that completes it.
                    if let Err(e) = this.verify() {
                        return this.fail(e);
                    }
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the body ended after {} of {} bytes", this.received, this.size),
                ),
            };
            if let Err(e) = this.resume(broke) {
                return this.fail(e);
            }
        }
    }
}
