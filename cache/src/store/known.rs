//! `KnownBuckets`: which buckets the origin holds, as far as Perch knows.
//!
//! A write into a bucket is acknowledged only into one the origin was seen to hold
//! (`Store::ensure_bucket`); objects of it held here count as seeing it, except for a bucket a
//! DeleteBucket sent through Perch may have removed: a write into one asks the origin first. Such a
//! bucket is marked durably (a file named after it, under the data dir's `deleted-buckets/`) before
//! its DeleteBucket is sent, so that neither a stop, a crash or a power cut while the request is on
//! its way, nor an answer lost after the origin applied it, lets a write be acknowledged into a
//! bucket that is gone, and refused at its upload for good. The mark goes once the origin was seen
//! to hold the bucket, or its file once nothing held here names it any more.
//!
//! An answer that saw the bucket is taken only if no DeleteBucket of it was sent or answered
//! since it was asked (`deletes`), nor is on its way: a late answer to a HEAD or a CreateBucket
//! would make a bucket deleted meanwhile known again.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::durable;
use crate::local::lock;

#[derive(Default)]
struct State {
    /// Seen at the origin since the start (or since its last DeleteBucket).
    seen: HashSet<String>,
    /// A DeleteBucket may have removed them.
    marked: HashSet<String>,
    /// DeleteBuckets sent and answered through Perch since the start, by bucket (each counts at
    /// both).
    deletes: HashMap<String, u64>,
    /// DeleteBuckets on their way, by bucket.
    deleting: HashMap<String, u32>,
}

/// What became of an answer that saw a bucket (`KnownBuckets::seen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Taken: the bucket is known.
    Taken,
    /// A DeleteBucket was sent or answered since the question: ask again.
    Stale,
    /// A DeleteBucket is on its way: not taken. A write asks again under the bucket's gate,
    /// after it.
    Deleting,
}

pub(crate) struct KnownBuckets {
    dir: PathBuf,
    state: Mutex<State>,
}

impl KnownBuckets {
    /// Knows none yet but the marks left in `dir` (created if missing).
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        durable::create_dirs(&dir)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(&dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                state.marked.insert(name.to_owned());
            }
        }
        Ok(Self {
            dir,
            state: Mutex::new(state),
        })
    }

    /// Whether the origin was seen to hold `bucket`.
    pub(crate) fn holds(&self, bucket: &str) -> bool {
        lock(&self.state).seen.contains(bucket)
    }

    /// Whether a DeleteBucket may have removed `bucket`: objects of it held here prove nothing.
    pub(crate) fn marked(&self, bucket: &str) -> bool {
        lock(&self.state).marked.contains(bucket)
    }

    /// The DeleteBuckets of `bucket` sent and answered so far: read before asking the origin,
    /// for `seen`.
    pub(crate) fn deletes(&self, bucket: &str) -> u64 {
        lock(&self.state).deletes.get(bucket).copied().unwrap_or(0)
    }

    /// The origin was seen to hold `bucket`, by a question asked when `deletes` was `since`: taken
    /// (and its mark removed) unless a DeleteBucket was sent or answered since, or is on its way.
    pub(crate) async fn seen(&self, bucket: &str, since: u64) -> Seen {
        let unmarked = {
            let mut state = lock(&self.state);
            if state.deleting.contains_key(bucket) {
                return Seen::Deleting;
            }
            if state.deletes.get(bucket).copied().unwrap_or(0) != since {
                return Seen::Stale;
            }
            state.seen.insert(bucket.to_owned());
            state.marked.remove(bucket)
        };
        if unmarked {
            self.unlink(bucket).await;
        }
        Seen::Taken
    }

    /// Marks `bucket`, durably, before its DeleteBucket is sent; `sent` must follow, whatever
    /// becomes of it.
    pub(crate) async fn mark(&self, bucket: &str) -> io::Result<()> {
        {
            let mut state = lock(&self.state);
            state.seen.remove(bucket);
            state.marked.insert(bucket.to_owned());
            *state.deletes.entry(bucket.to_owned()).or_default() += 1;
            *state.deleting.entry(bucket.to_owned()).or_default() += 1;
        }
        let path = self.dir.join(bucket);
        let marked = tokio::task::spawn_blocking(move || {
            drop(std::fs::File::create(&path)?);
            durable::sync_parent(&path)
        })
        .await
        .map_err(io::Error::other)
        .flatten();
        if marked.is_err() {
            // Not sent, then.
            self.sent(bucket);
        }
        marked
    }

    /// A DeleteBucket `mark` was made for has its answer (or none will come).
    pub(crate) fn sent(&self, bucket: &str) {
        let mut state = lock(&self.state);
        *state.deletes.entry(bucket.to_owned()).or_default() += 1;
        if let Some(n) = state.deleting.get_mut(bucket) {
            *n -= 1;
            if *n == 0 {
                state.deleting.remove(bucket);
            }
        }
    }

    /// The origin refused to delete `bucket`: it holds it still.
    pub(crate) async fn kept(&self, bucket: &str) {
        if lock(&self.state).marked.remove(bucket) {
            self.unlink(bucket).await;
        }
    }

    /// `bucket` is gone and nothing held here names it any more: its mark needs no file, for the
    /// index is no proof of it after a restart either. It stays marked until seen again.
    pub(crate) async fn forgotten(&self, bucket: &str) {
        self.unlink(bucket).await;
    }

    /// Removes `bucket`'s file. Not synced: a mark that comes back costs one question to the origin.
    async fn unlink(&self, bucket: &str) {
        let path = self.dir.join(bucket);
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
        if let Ok(Err(error)) = removed
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(bucket, %error, "cannot remove a deleted bucket's mark");
        }
    }
}
