//! A large object's body from the origin as ranged GETs side by side when one stream of it is slow.
//!
//! One TCP stream from a distant origin is bounded by its window over the round trip (and an
//! object store often serves one stream at a fraction of what it serves several), so a 16 MiB WAL
//! segment or a 64 MiB undo file fetched as one GET takes many times what the same bytes take in
//! parallel: the S3 SDKs' transfer managers fetch large objects as ranged parts for that reason.
//! A fill's body stays one stream of bytes in order (its readers, its writer and its whole-body
//! check are unchanged): the first GET's stream is timed over its first 2 MiB, and when it is slower
//! than `SLOW` it is cut where a ranged GET asked now would take over, and the rest comes in
//! `SEGMENT`s, `AHEAD` of them under way at once, each with `If-Match` on the first answer's ETag
//! (an object replaced meanwhile fails the fill, as a resumption does). A fast stream (a nearby
//! origin, the directory origin) is left whole. A segment that fails ends the stream with its
//! error at that byte, where the fill resumes as after any break.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::key::ObjectKey;
use crate::origin::{ByteRange, ByteStream, Conditions, Origin};

/// Bodies smaller than this are fetched as one stream, whatever its pace.
const SPLIT_MIN: u64 = 16 << 20;
/// The bytes of one ranged GET.
const SEGMENT: u64 = 4 << 20;
/// Ranged GETs of one body under way at once (their bytes wait in memory for the fill to reach
/// them: `AHEAD * SEGMENT` at most).
pub(crate) const AHEAD: usize = 4;
/// The first stream is timed over this many bytes after its first chunk.
const PROBE: u64 = 2 << 20;
/// A first stream slower than this, in bytes a second, is split (one stream from an origin on
/// the same host, as in the tests and benchmarks, runs at 400 MB/s or more).
const SLOW: f64 = 128.0 * 1024.0 * 1024.0;
/// The cut is rounded up to this.
const CUT_ALIGN: u64 = 1 << 20;

/// What one body's segments may hold in memory at most.
pub(crate) const HELD_MAX: u64 = AHEAD as u64 * SEGMENT;

/// Bytes `from..end` of the object `etag`: `first`, the origin's stream of them (asked for at
/// `asked`), split into ranged GETs when it proves slow.
pub(crate) fn split_when_slow(
    origin: Arc<dyn Origin>,
    okey: &ObjectKey,
    etag: &str,
    from: u64,
    end: u64,
    first: ByteStream,
    asked: Instant,
) -> ByteStream {
    if end.saturating_sub(from) < SPLIT_MIN {
        return first;
    }
    let body = Segmented {
        origin,
        okey: okey.clone(),
        etag: etag.to_owned(),
        end,
        at: from,
        first: Some(first),
        cut: end,
        pace: Pace::Asked(asked),
        segments: VecDeque::new(),
        next: end,
    };
    Box::pin(futures::stream::unfold(body, |mut b| async move {
        b.next_chunk().await.map(|item| (item, b))
    }))
}

/// How the first stream's pace is known.
enum Pace {
    /// Asked for then; no byte yet.
    Asked(Instant),
    /// Its first chunk came `ttfb` after the request, and it has been timed since `since`, from
    /// byte `from`.
    Timing { ttfb: Duration, since: Instant, from: u64 },
    /// Decided.
    Done,
}

/// One ranged GET under way: bytes `first..end`, received through `rx`.
struct Segment {
    end: u64,
    rx: mpsc::UnboundedReceiver<io::Result<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Segmented {
    origin: Arc<dyn Origin>,
    okey: ObjectKey,
    etag: String,
    /// The byte after the last one wanted.
    end: u64,
    /// The next byte to hand on.
    at: u64,
    /// The first stream, until its part is handed on.
    first: Option<ByteStream>,
    /// Where the first stream's part ends (`end` while it is not split).
    cut: u64,
    pace: Pace,
    /// The ranged GETs under way, in order from `cut`.
    segments: VecDeque<Segment>,
    /// The first byte no segment has been asked for yet.
    next: u64,
}

impl Segmented {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(first) = self.first.as_mut() {
            if self.cut == self.end {
                // Not split: the stream as it is, its end or its error after the last byte
                // included.
                let item = first.next().await;
                if let Some(Ok(chunk)) = &item {
                    self.at += chunk.len() as u64;
                    self.timed();
                }
                return item;
            }
            if self.at < self.cut {
                return match first.next().await {
                    Some(Ok(mut chunk)) => {
                        let room = self.cut - self.at;
                        if chunk.len() as u64 > room {
                            chunk.truncate(room as usize);
                        }
                        self.at += chunk.len() as u64;
                        Some(Ok(chunk))
                    }
                    // A break before the cut: the fill resumes from `at`.
                    other => other,
                };
            }
            // The first stream's part is handed on; the segments have the rest. Dropping it
            // closes its connection, with what the origin still sends of it.
            self.first = None;
        }
        if self.at >= self.end {
            return None;
        }
        let segment = self.segments.front_mut()?;
        let end = segment.end;
        match segment.rx.recv().await {
            Some(Ok(chunk)) => {
                self.at += chunk.len() as u64;
                if self.at >= end {
                    self.segments.pop_front();
                    self.ask_ahead();
                }
                Some(Ok(chunk))
            }
            Some(Err(e)) => Some(Err(e)),
            None => Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("a ranged read of the origin ended before byte {end}"),
            ))),
        }
    }

    /// Times the first stream, and splits the body once it is known to be slow.
    fn timed(&mut self) {
        let now = Instant::now();
        match self.pace {
            Pace::Asked(asked) => {
                self.pace = Pace::Timing {
                    ttfb: now - asked,
                    since: now,
                    from: self.at,
                }
            }
            Pace::Timing { ttfb, since, from } if self.at - from >= PROBE => {
                self.pace = Pace::Done;
                let rate = (self.at - from) as f64 / (now - since).as_secs_f64().max(1e-6);
                tracing::debug!(key = self.okey.key(), rate, "an origin stream timed");
                if rate >= SLOW {
                    return;
                }
                // The first stream goes on while the first segment's answer comes back.
                let during = (rate * ttfb.as_secs_f64()) as u64;
                let cut = (self.at + during + 1).next_multiple_of(CUT_ALIGN);
                if cut + SEGMENT > self.end {
                    return;
                }
                tracing::debug!(
                    key = self.okey.key(),
                    rate,
                    cut,
                    "a slow origin stream is split into ranged reads"
                );
                self.cut = cut;
                self.next = cut;
                self.ask_ahead();
            }
            _ => {}
        }
    }

    /// Asks for segments until `AHEAD` are under way.
    fn ask_ahead(&mut self) {
        while self.segments.len() < AHEAD && self.next < self.end {
            let first = self.next;
            let end = (first + SEGMENT).min(self.end);
            self.next = end;
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(fetch_segment(
                self.origin.clone(),
                self.okey.clone(),
                self.etag.clone(),
                first,
                end,
                tx,
            ));
            self.segments.push_back(Segment { end, rx, task });
        }
    }
}

/// One ranged GET of bytes `first..end` of the object `etag`, its chunks sent to `tx` as they come;
/// an error (the origin's, a wrong span, too few or too many bytes) is sent last.
async fn fetch_segment(
    origin: Arc<dyn Origin>,
    okey: ObjectKey,
    etag: String,
    first: u64,
    end: u64,
    tx: mpsc::UnboundedSender<io::Result<Bytes>>,
) {
    let range = ByteRange::FromTo {
        first,
        last: Some(end - 1),
    };
    let cond = Conditions {
        if_match: Some(etag),
        ..Default::default()
    };
    let out = match origin.get_object(okey.bucket(), okey.key(), Some(range), &cond).await {
        Ok(out) => out,
        Err(e) => {
            let _ = tx.send(Err(io::Error::other(e)));
            return;
        }
    };
    if out.range != Some((first, end - 1)) {
        let _ = tx.send(Err(io::Error::other(format!(
            "the origin answered a read of bytes {first}-{} with {:?}",
            end - 1,
            out.range
        ))));
        return;
    }
    let mut body = out.body;
    let mut at = first;
    while let Some(item) = body.next().await {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        at += chunk.len() as u64;
        if at > end {
            let _ = tx.send(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the origin sent more bytes than the range asked for",
            )));
            return;
        }
        if tx.send(Ok(chunk)).is_err() {
            return;
        }
    }
    if at < end {
        let _ = tx.send(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("a ranged read of the origin ended at byte {at} of {end}"),
        )));
    }
}
