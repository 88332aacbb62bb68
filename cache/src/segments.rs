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
//! origin, the directory origin) is left whole. Only the time spent waiting for the origin's
//! bytes counts, not the time its reader took to take them (a slow client of a pass-through, a
//! fill waiting for its disk). At most `SPLIT_BODIES` bodies are split at once, so what their
//! segments hold waiting their turn stays under `SPLIT_BODIES * AHEAD * SEGMENT` (64 MiB). A
//! segment that fails ends the stream with its error at that byte, where the fill resumes as
//! after any break. An origin that ignores ranges (HTTP allows it: the answer is the whole object)
//! is noticed at its first such answer (`origin::range_body`): the segments under way keep their
//! part of the whole bodies, no more are asked, the reader resumes the rest as one stream, and no
//! body is split again.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::key::ObjectKey;
use crate::origin::{ByteRange, ByteStream, Conditions, Origin, range_body, ranges_ignored};

/// Bodies smaller than this are fetched as one stream, whatever its pace.
const SPLIT_MIN: u64 = 16 << 20;
/// The bytes of one ranged GET.
const SEGMENT: u64 = 4 << 20;
/// Ranged GETs of one body under way at once (their bytes wait in memory for the fill to reach
/// them: `AHEAD * SEGMENT` at most).
const AHEAD: usize = 4;
/// The first stream is timed over this many bytes after its first chunk.
const PROBE: u64 = 2 << 20;
/// A first stream slower than this, in bytes a second, is split (one stream from an origin on
/// the same host, as in the tests and benchmarks, runs at 400 MB/s or more).
const SLOW: f64 = 128.0 * 1024.0 * 1024.0;
/// The cut is rounded up to this.
const CUT_ALIGN: u64 = 1 << 20;

/// Bodies split at once at most, in this process.
const SPLIT_BODIES: usize = 4;
/// Bodies split now.
static SPLIT: AtomicUsize = AtomicUsize::new(0);

/// Where to cut a first stream that has brought bytes up to `at` of `..end` at `rate` bytes a
/// second, its first byte having come `ttfb` after it was asked: `None` when it is fast enough,
/// or too little is left for a segment. The cut is where the stream gets to while a ranged GET
/// asked now brings its first byte.
fn cut_at(at: u64, end: u64, rate: f64, ttfb: Duration) -> Option<u64> {
    if rate >= SLOW {
        return None;
    }
    let during = (rate * ttfb.as_secs_f64()) as u64;
    let cut = (at + during + 1).next_multiple_of(CUT_ALIGN);
    (cut + SEGMENT <= end).then_some(cut)
}

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
    if end.saturating_sub(from) < SPLIT_MIN || etag.is_empty() || ranges_ignored() {
        // No ETag, no ranges that can be told to be of the same object; an origin that ignores
        // ranges would send the whole object to each.
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
        holds_slot: false,
    };
    Box::pin(futures::stream::unfold(body, |mut b| async move {
        b.next_chunk().await.map(|item| (item, b))
    }))
}

/// How the first stream's pace is known.
enum Pace {
    /// Asked for then; no byte yet.
    Asked(Instant),
    /// Its first chunk came `ttfb` after the request; from byte `from` on, its bytes have been
    /// waited for `waited` in all.
    Timing {
        ttfb: Duration,
        waited: Duration,
        from: u64,
    },
    /// Decided.
    Done,
}

/// One ranged GET under way: its bytes, up to `end`, received through `rx`; its task aborted
/// when it is dropped.
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
    /// Whether this body holds one of the `SPLIT_BODIES` slots.
    holds_slot: bool,
}

impl Drop for Segmented {
    fn drop(&mut self) {
        if self.holds_slot {
            SPLIT.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Takes one of the `SPLIT_BODIES` slots, if one is free.
fn take_slot() -> bool {
    SPLIT
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < SPLIT_BODIES).then_some(n + 1)
        })
        .is_ok()
}

impl Segmented {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(first) = self.first.as_mut() {
            if self.cut == self.end {
                // Not split: the stream as it is, its end or its error after the last byte
                // included.
                // Timed until the pace is known, then no more clock reads.
                let asked = (!matches!(self.pace, Pace::Done)).then(Instant::now);
                let item = first.next().await;
                if let Some(Ok(chunk)) = &item {
                    self.at += chunk.len() as u64;
                    if let Some(asked) = asked {
                        self.timed(asked.elapsed());
                    }
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
        let Some(segment) = self.segments.front_mut() else {
            // No ranged read asked for the rest (`ask_ahead`): a break here makes the reader
            // resume from `at` as one stream, which an origin that ignores ranges answers whole.
            return Some(Err(io::Error::other(
                "the origin ignores ranges: the rest of the body is read as one stream",
            )));
        };
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

    /// Times the first stream (its last chunk was waited for `wait`), and splits the body once it
    /// is known to be slow.
    fn timed(&mut self, wait: Duration) {
        match self.pace {
            Pace::Asked(asked) => {
                self.pace = Pace::Timing {
                    ttfb: asked.elapsed(),
                    waited: Duration::ZERO,
                    from: self.at,
                }
            }
            Pace::Timing { ttfb, waited, from } => {
                let waited = waited + wait;
                if self.at - from < PROBE {
                    self.pace = Pace::Timing { ttfb, waited, from };
                    return;
                }
                self.pace = Pace::Done;
                let rate = (self.at - from) as f64 / waited.as_secs_f64().max(1e-6);
                tracing::debug!(key = self.okey.key(), rate, "an origin stream timed");
                let Some(cut) = cut_at(self.at, self.end, rate, ttfb).filter(|_| !ranges_ignored()) else {
                    return;
                };
                if !take_slot() {
                    return;
                }
                self.holds_slot = true;
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
            Pace::Done => {}
        }
    }

    /// Asks for segments until `AHEAD` are under way.
    fn ask_ahead(&mut self) {
        // An origin that ignores ranges answers each with the whole object: the segments under
        // way keep their part, and the rest is left to the reader's resumption (`next_chunk`).
        while !ranges_ignored() && self.segments.len() < AHEAD && self.next < self.end {
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
        if_match: Some(etag.clone()),
        ..Default::default()
    };
    let out = match origin.get_object(okey.bucket(), okey.key(), Some(range), &cond).await {
        Ok(out) => out,
        Err(e) => {
            let _ = tx.send(Err(io::Error::other(e)));
            return;
        }
    };
    let mut body = match range_body(out, &etag, first, Some(end - 1)) {
        Ok(body) => body,
        Err(e) => {
            let _ = tx.send(Err(io::Error::other(e)));
            return;
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_fast_stream_is_not_cut_and_a_slow_one_is_cut_where_a_range_takes_over() {
        let ttfb = Duration::from_millis(80);
        // As fast as a stream from the same host, or just at the line: left whole.
        assert_eq!(cut_at(3 * MIB, 64 * MIB, 500e6, ttfb), None);
        assert_eq!(cut_at(3 * MIB, 64 * MIB, SLOW, ttfb), None);
        // 80 MiB/s with a first byte after 80 ms: 6.4 MiB more come meanwhile; cut on a MiB.
        let cut = cut_at(3 * MIB, 64 * MIB, 80.0 * MIB as f64, ttfb).expect("a slow stream is cut");
        assert_eq!(cut, 10 * MIB);
        // The cut is past what arrived, even with no first-byte time.
        assert_eq!(cut_at(3 * MIB, 64 * MIB, 1e6, Duration::ZERO), Some(4 * MIB));
        // Too little left after the cut for one segment: left whole.
        assert_eq!(
            cut_at(3 * MIB, 16 * MIB, 80.0 * MIB as f64, Duration::from_millis(200)),
            None
        );
        assert_eq!(cut_at(11 * MIB, 16 * MIB, 1e6, Duration::ZERO), Some(12 * MIB));
        assert_eq!(cut_at(12 * MIB, 16 * MIB, 1e6, Duration::ZERO), None);
    }

    #[test]
    fn at_most_a_few_bodies_are_split_at_once() {
        let before = SPLIT.load(Ordering::Acquire);
        let mut taken = 0;
        while take_slot() {
            taken += 1;
        }
        assert_eq!(before + taken, SPLIT_BODIES);
        assert!(!take_slot());
        SPLIT.fetch_sub(taken, Ordering::AcqRel);
        assert!(take_slot());
        SPLIT.fetch_sub(1, Ordering::AcqRel);
    }
}
