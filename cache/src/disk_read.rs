//! Disk hits: a blob is read and checked block by block (CRC32) before any byte of a block is sent;
//! a small one is read whole (on the request's thread when it is in the page cache) and promoted
//! to the memory tier; after a bad block the rest of the body comes from the origin.

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::error::Doing;
use crate::key::ObjectKey;
use crate::local::blobs::{BLOCK, read_block, read_checked, read_checked_if_cached};
use crate::local::index::Entry;
use crate::memory::MemoryObject;
use crate::metrics::DISK;
use crate::origin::{ByteStream, GetOutput, rest_of};
use crate::read::Reader;

impl Reader {
    /// Serves a disk entry, checking each block before sending it. `None` when the entry turned out
    /// corrupt or missing before anything was sent (it is dropped, and the caller fetches afresh).
    pub(crate) async fn serve_disk(
        self: &Arc<Self>,
        okey: &ObjectKey,
        entry: Entry,
        span: Option<(u64, u64)>,
    ) -> Option<GetOutput> {
        let size = entry.meta.size;
        let opened = self
            .local
            .blobs
            .open_blob(entry.blob)
            .and_then(|f| Ok((f.metadata()?.len(), f)));
        let file = match opened {
            Ok((len, f)) if len == size => f,
            _ => {
                self.corrupt(okey, &entry, "missing or truncated blob").await;
                return None;
            }
        };
        if size == 0 {
            self.local.note_read(okey, entry.blob);
            self.local.stats.hits.get_or_create(&DISK).inc();
            return Some(GetOutput {
                meta: entry.meta,
                range: span,
                body: Box::pin(futures::stream::empty()),
            });
        }
        let (first, last) = span.unwrap_or((0, size - 1));
        // Small objects are checked whole and promoted to memory.
        if size <= self.local.memory_object_max() {
            // In the page cache: read here. Otherwise on a blocking thread, as the disk may wait.
            let body = match read_checked_if_cached(&file, size, &entry.crcs) {
                Some(read) => read,
                None => {
                    let f = file.clone();
                    let crcs = entry.crcs.clone();
                    tokio::task::spawn_blocking(move || read_checked(&f, size, &crcs))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)))
                }
            };
            let body = match body {
                Ok(Some(b)) => Bytes::from(b),
                _ => {
                    self.corrupt(okey, &entry, "a block failed its check").await;
                    return None;
                }
            };
            self.local.memory.insert(
                okey.clone(),
                Arc::new(MemoryObject {
                    entry: entry.clone(),
                    body: body.clone(),
                }),
            );
            // A write committed meanwhile forgot the memory copy before this insert, or names
            // another blob now; an upload released meanwhile changed the entry of the same blob
            // (no longer pending, the origin's Last-Modified and ETag): either way no stale copy
            // stays in memory.
            if self.local.index.get(okey).ok().flatten().is_none_or(|e| {
                e.blob != entry.blob
                    || e.pending != entry.pending
                    || e.origin_etag != entry.origin_etag
                    || e.meta.last_modified != entry.meta.last_modified
            }) {
                self.local.memory.invalidate(okey);
            }
            self.local.note_read(okey, entry.blob);
            self.local.stats.hits.get_or_create(&DISK).inc();
            let slice = body.slice(first as usize..=last as usize);
            self.local
                .stats
                .bytes_served
                .get_or_create(&DISK)
                .inc_by(slice.len() as u64);
            return Some(GetOutput {
                meta: entry.meta,
                range: span,
                body: Box::pin(futures::stream::once(async move { Ok(slice) })),
            });
        }
        // Larger ones stream block by block; the first block is checked before answering.
        let first_block = first / BLOCK;
        let f = file.clone();
        let crcs = entry.crcs.clone();
        let checked = tokio::task::spawn_blocking(move || read_block(&f, size, &crcs, first_block)).await;
        let block0 = match checked {
            Ok(Ok(Some(b))) => b,
            _ => {
                self.corrupt(okey, &entry, "a block failed its check").await;
                return None;
            }
        };
        self.local.note_read(okey, entry.blob);
        self.local.stats.hits.get_or_create(&DISK).inc();
        let reader = DiskReader {
            reader: self.clone(),
            okey: okey.clone(),
            entry: entry.clone(),
            file,
            pos: first,
            last,
            pending: Some(Bytes::from(block0)),
            fallback: None,
        };
        let body: ByteStream = Box::pin(futures::stream::unfold(reader, |mut r| async move {
            let item = r.next_chunk().await?;
            Some((item, r))
        }));
        Some(GetOutput {
            meta: entry.meta,
            range: span,
            body,
        })
    }

    pub(crate) async fn corrupt(&self, okey: &ObjectKey, entry: &Entry, why: &str) {
        tracing::warn!(
            key = okey.key(),
            blob = entry.blob,
            why,
            "dropping a corrupt cache entry"
        );
        self.local.stats.corrupt.inc();
        let (okey, blob) = (okey.clone(), entry.blob);
        if let Err(e) = self.local.blocking(move |l| l.drop_entry(&okey, blob)).await {
            tracing::warn!(error = %e, "cannot drop a cache entry");
        }
    }
}

/// Streams a disk entry block by block, each checked before it is sent; after a bad block the
/// rest comes from the origin (Range + If-Match on the cached ETag).
struct DiskReader {
    reader: Arc<Reader>,
    okey: ObjectKey,
    entry: Entry,
    file: Arc<File>,
    /// Next byte to send.
    pos: u64,
    /// Last byte to send (inclusive).
    last: u64,
    /// The checked block that holds `pos`, when already read.
    pending: Option<Bytes>,
    fallback: Option<ByteStream>,
}

impl DiskReader {
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if let Some(f) = &mut self.fallback {
            return f.next().await;
        }
        if self.pos > self.last {
            return None;
        }
        let size = self.entry.meta.size;
        let block_index = self.pos / BLOCK;
        let block = match self.pending.take() {
            Some(b) => b,
            None => {
                let (f, crcs) = (self.file.clone(), self.entry.crcs.clone());
                match tokio::task::spawn_blocking(move || read_block(&f, size, &crcs, block_index)).await {
                    Ok(Ok(Some(b))) => Bytes::from(b),
                    _ => return self.fall_back().await,
                }
            }
        };
        let block_start = block_index * BLOCK;
        let from = (self.pos - block_start) as usize;
        let to = ((self.last - block_start) as usize + 1).min(block.len());
        let out = block.slice(from..to);
        self.pos = block_start + to as u64;
        self.reader
            .local
            .stats
            .bytes_served
            .get_or_create(&DISK)
            .inc_by(out.len() as u64);
        Some(Ok(out))
    }

    async fn fall_back(&mut self) -> Option<io::Result<Bytes>> {
        self.reader
            .corrupt(&self.okey, &self.entry, "a block failed its check while streaming")
            .await;
        // The rest as a ranged read pinned to the cached version (`rest_of`): from an origin that
        // ignores ranges, cut out of the whole object, never its first bytes in place of these.
        // On a task of its own: a body stream must be `Sync`, and the origin's future is only
        // `Send` (a `JoinHandle` is both).
        let (origin, okey) = (self.reader.origin.clone(), self.okey.clone());
        let (etag, from, last) = (self.entry.etag_at_origin().to_owned(), self.pos, self.last);
        let fetch =
            tokio::spawn(async move { rest_of(&*origin, okey.bucket(), okey.key(), &etag, from, Some(last)).await });
        let fetched = match fetch.await {
            Ok(r) => r,
            Err(e) => return Some(Err(Doing::io("refetching a corrupt cache entry failed", e))),
        };
        match fetched {
            Ok(mut body) => {
                let first = body.next().await;
                self.fallback = Some(body);
                first
            }
            Err(e) => Some(Err(Doing::io("refetching a corrupt cache entry failed", e))),
        }
    }
}
