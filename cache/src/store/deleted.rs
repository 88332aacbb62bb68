//! `DeletedBuckets`: the buckets a DeleteBucket sent through Perch may have removed at the origin.
//!
//! Objects of a bucket held here prove that it exists (`Store::ensure_bucket`), except for these:
//! a write into one asks the origin first. Each is marked durably (a file named after it, under
//! the data dir's `deleted-buckets/`) before its DeleteBucket is sent, so that neither a stop, a
//! crash or a power cut while the request is on its way, nor an answer lost after the origin
//! applied it, lets a write be acknowledged into a bucket that is gone, and refused at its upload
//! for good. The mark goes once the origin was seen to hold the bucket, or once nothing held
//! here names it any more.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::durable;
use crate::local::lock;

pub(crate) struct DeletedBuckets {
    dir: PathBuf,
    names: Mutex<HashSet<String>>,
}

impl DeletedBuckets {
    /// The marks left in `dir` (created if missing).
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        durable::create_dirs(&dir)?;
        let mut names = HashSet::new();
        for entry in std::fs::read_dir(&dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.insert(name.to_owned());
            }
        }
        Ok(Self {
            dir,
            names: Mutex::new(names),
        })
    }

    pub(crate) fn contains(&self, bucket: &str) -> bool {
        lock(&self.names).contains(bucket)
    }

    /// Marks `bucket`, durably, before its DeleteBucket is sent.
    pub(crate) async fn mark(&self, bucket: &str) -> io::Result<()> {
        lock(&self.names).insert(bucket.to_owned());
        let path = self.dir.join(bucket);
        tokio::task::spawn_blocking(move || {
            drop(std::fs::File::create(&path)?);
            durable::sync_parent(&path)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// The origin was seen to hold `bucket` (it refused to delete it, or answered for it since):
    /// objects held here prove it again.
    pub(crate) async fn exists(&self, bucket: &str) {
        if lock(&self.names).remove(bucket) {
            self.unlink(bucket).await;
        }
    }

    /// `bucket` is gone and nothing held here names it any more: its mark needs no file, for the
    /// index is no proof of it after a restart either. It stays marked until created again.
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
