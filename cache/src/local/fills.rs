//! `Fills`: the origin fetches under way, one per key, with the progress their readers watch (the
//! chunks received, held in memory, and how much of them is in the temp file); a write marks the
//! fill of its key stale so that an older body is never kept.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use crate::key::ObjectKey;
use crate::local::lock;
use crate::origin::{Cause, ObjectMeta, OriginError};

/// An origin fetch that any number of readers stream as its bytes arrive.
pub(crate) struct Fill {
    pub progress: watch::Sender<Progress>,
    /// Set when a write through Perch replaced the object: the fill must not be kept.
    pub stale: AtomicBool,
}

/// What a fill has so far. Readers take bytes from `chunks` when they are still held, else from
/// `file`; `received` only reaches the object's size once the whole body passed its check.
#[derive(Default)]
pub(crate) struct Progress {
    /// The object, once the origin answered.
    pub meta: Option<Arc<ObjectMeta>>,
    /// Bytes readers may take: `[0, received)`.
    pub received: u64,
    /// The received bytes still held in memory: contiguous, from `held_from` to `received`.
    pub chunks: VecDeque<Bytes>,
    pub held_from: u64,
    /// The temp file the fill writes, readable in `[0, on_disk)`.
    pub file: Option<Arc<File>>,
    pub on_disk: u64,
    /// `None` while under way; `Some(Err)` once it failed (readers stop with that error).
    pub failed: Option<Arc<FillError>>,
}

impl Progress {
    /// Bytes from `pos` on that are held in memory (at most one chunk's worth, no copy).
    pub(crate) fn held_at(&self, pos: u64, end: u64) -> Option<Bytes> {
        if pos < self.held_from || pos >= self.received.min(end) {
            return None;
        }
        let mut start = self.held_from;
        for chunk in &self.chunks {
            let stop = start + chunk.len() as u64;
            if pos < stop {
                let from = (pos - start) as usize;
                let to = (stop.min(end) - start) as usize;
                return Some(chunk.slice(from..to));
            }
            start = stop;
        }
        None
    }

    /// Forgets held chunks that are on disk, keeping at least the last `keep` bytes in memory.
    pub(crate) fn release_held(&mut self, keep: u64) {
        while let Some(first) = self.chunks.front() {
            let stop = self.held_from + first.len() as u64;
            if stop > self.on_disk || self.received - stop < keep {
                break;
            }
            self.held_from = stop;
            self.chunks.pop_front();
        }
    }
}

/// Why a fill failed, kept so that every waiter can be given the same error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FillError {
    #[error("no such key")]
    NoSuchKey,
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("refused: {status} {code}")]
    Rejected { status: u16, code: String, message: String },
    /// The origin failed: a fault its retries did not outlast, or the range request that resumes a
    /// broken body.
    #[error("unavailable: {0}")]
    Origin(#[source] OriginError),
    /// The origin's body broke and could not be resumed.
    #[error("unavailable: origin stream broke: {0}")]
    Broke(#[source] std::io::Error),
    /// The origin's body ended short and could not be resumed, or the object changed meanwhile.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The fill's temp file could not be made, written or checked.
    #[error("unavailable: cache temp file: {0}")]
    TempFile(#[source] std::io::Error),
    /// The body is not the object's: more bytes than announced, or a checksum that fails.
    #[error("corrupt: {0}")]
    Corrupt(#[source] std::io::Error),
    /// Every reader left a fill that would not be kept (an object too large to keep): it stopped
    /// fetching. A reader that joined as it stopped starts a new one.
    #[error("every reader left a fill that would not be kept")]
    Abandoned,
    /// No room for a copy on the data dir's filesystem, even after evicting: readers get the
    /// object from the origin, not kept (set before any reader streams from the fill).
    #[error("no room on the data dir's filesystem for a copy")]
    NoRoom,
}

impl FillError {
    pub(crate) fn from_origin(e: OriginError) -> FillError {
        match e {
            OriginError::NoSuchKey => FillError::NoSuchKey,
            OriginError::NoSuchBucket => FillError::NoSuchBucket,
            OriginError::Rejected { status, code, message } => FillError::Rejected { status, code, message },
            other => FillError::Origin(other),
        }
    }

    pub(crate) fn to_origin(self: &Arc<Self>) -> OriginError {
        match &**self {
            FillError::NoSuchKey => OriginError::NoSuchKey,
            FillError::NoSuchBucket => OriginError::NoSuchBucket,
            FillError::Rejected { status, code, message } => OriginError::Rejected {
                status: *status,
                code: code.clone(),
                message: message.clone(),
            },
            _ => OriginError::unavailable(0, Arc::clone(self) as Cause),
        }
    }
}

#[derive(Default)]
pub(crate) struct Fills {
    map: Mutex<HashMap<ObjectKey, Arc<Fill>>>,
}

impl Fills {
    /// The fill of `okey` under way (`true`: joined), or a new one (`false`: the caller runs it),
    /// with a receiver of its progress taken under the lock (`abandon_if_unread` counts it).
    pub(crate) fn join(&self, okey: &ObjectKey) -> (Arc<Fill>, watch::Receiver<Progress>, bool) {
        let mut fills = lock(&self.map);
        if let Some(f) = fills.get(okey) {
            return (f.clone(), f.progress.subscribe(), true);
        }
        let (progress, rx) = watch::channel(Progress::default());
        let fill = Arc::new(Fill {
            progress,
            stale: AtomicBool::new(false),
        });
        fills.insert(okey.clone(), fill.clone());
        (fill, rx, false)
    }

    /// A receiver of the progress of the fill of `okey` under way, if any (taken under the lock).
    pub(crate) fn subscribe(&self, okey: &ObjectKey) -> Option<watch::Receiver<Progress>> {
        lock(&self.map).get(okey).map(|f| f.progress.subscribe())
    }

    /// Whether a fill of `okey` is under way.
    pub(crate) fn is_under_way(&self, okey: &ObjectKey) -> bool {
        lock(&self.map).contains_key(okey)
    }

    /// The fill of `okey` ended: forget it (if it is still the one registered).
    pub(crate) fn end(&self, okey: &ObjectKey, fill: &Arc<Fill>) {
        let mut fills = lock(&self.map);
        if fills.get(okey).is_some_and(|cur| Arc::ptr_eq(cur, fill)) {
            fills.remove(okey);
        }
    }

    /// Whether `fill` of `okey` has no reader left, in which case it is forgotten (a reader that
    /// joins from now on starts a new one): a fill that will not be kept then stops. Readers take
    /// their receivers under the same lock (`join`, `subscribe`), so none can come in between.
    pub(crate) fn abandon_if_unread(&self, okey: &ObjectKey, fill: &Arc<Fill>) -> bool {
        let mut fills = lock(&self.map);
        if fill.progress.receiver_count() > 0 {
            return false;
        }
        if fills.get(okey).is_some_and(|cur| Arc::ptr_eq(cur, fill)) {
            fills.remove(okey);
        }
        true
    }

    /// A write changed `okey`: a fill under way must not be kept, and later readers start afresh.
    pub(crate) fn mark_stale(&self, okey: &ObjectKey) {
        if let Some(fill) = lock(&self.map).remove(okey) {
            fill.stale.store(true, Ordering::SeqCst);
        }
    }

    /// The keys of `bucket` with a fill under way, for `Local::forget_bucket` to mark stale.
    pub(crate) fn keys_in(&self, bucket: &str) -> Vec<ObjectKey> {
        lock(&self.map)
            .keys()
            .filter(|k| k.bucket() == bucket)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(chunks: &[&'static [u8]], on_disk: u64) -> Progress {
        let mut p = Progress::default();
        for c in chunks {
            p.received += c.len() as u64;
            p.chunks.push_back(Bytes::from_static(c));
        }
        p.on_disk = on_disk;
        p
    }

    #[test]
    fn held_bytes_are_sliced_from_the_chunk_that_holds_them() {
        let p = progress(&[b"abc", b"defg", b"h"], 0);
        assert_eq!(p.held_at(0, 8).unwrap(), &b"abc"[..]);
        assert_eq!(p.held_at(4, 8).unwrap(), &b"efg"[..]);
        assert_eq!(p.held_at(4, 6).unwrap(), &b"ef"[..], "never past the reader's end");
        assert_eq!(p.held_at(7, 8).unwrap(), &b"h"[..]);
        assert!(p.held_at(8, 9).is_none(), "not received yet");
    }

    #[test]
    fn only_chunks_on_disk_and_outside_the_window_are_released() {
        let mut p = progress(&[b"abc", b"defg", b"h"], 4);
        p.release_held(0);
        assert_eq!(p.held_from, 3, "the second chunk is not wholly on disk yet");
        assert!(p.held_at(1, 8).is_none(), "released bytes come from the file");
        assert_eq!(p.held_at(3, 8).unwrap(), &b"defg"[..]);
        p.on_disk = 8;
        p.release_held(2);
        assert_eq!(p.held_from, 3, "dropping `defg` would leave fewer than 2 bytes held");
        p.release_held(1);
        assert_eq!(p.held_from, 7, "the last byte stays in memory");
        assert_eq!(p.held_at(7, 8).unwrap(), &b"h"[..]);
    }
}
