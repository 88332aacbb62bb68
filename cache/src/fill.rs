//! Fills: a miss fetches the whole object from the origin once per key into a temp file, which
//! every waiter streams as it grows; a broken origin stream resumes with Range + If-Match; a
//! single-part body is checked against its MD5 ETag before its last byte is released; the temp
//! file then becomes a clean cache entry unless a write changed the key meanwhile.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use tokio::sync::watch;

use crate::key::ObjectKey;
use crate::local::TempGuard;
use crate::local::blobs::BlockCrcs;
use crate::local::fills::{Fill, FillError, FillState};
use crate::origin::{ByteRange, Conditions, OriginError};
use crate::read::Reader;

/// Whether an ETag is the plain MD5 of the body (single-part upload, no encryption).
fn md5_etag(etag: &str) -> Option<&str> {
    let e = etag.trim_matches('"');
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then_some(e)
}

/// Reads `len` bytes at `offset` off the async threads.
pub(crate) async fn read_at(file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cache file shorter than expected",
                ));
            }
            done += n;
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

impl Reader {
    /// The fill of `okey`: the one under way (`true`: joined), or a new one started here.
    pub(crate) fn join_fill(self: &Arc<Self>, okey: &ObjectKey) -> (Arc<Fill>, bool) {
        let (fill, joined) = self.local.fills.join(okey);
        if !joined {
            let reader = self.clone();
            let (okey, f) = (okey.clone(), fill.clone());
            tokio::spawn(async move {
                if let Err(e) = reader.run_fill(&okey, &f).await {
                    f.tx.send_replace(FillState::Failed(Arc::new(e)));
                }
                reader.local.fills.end(&okey, &f);
            });
        }
        (fill, joined)
    }

    /// Fetches the whole object into a temp file, resuming a broken stream with Range + If-Match,
    /// then keeps it as a cache entry unless it went stale or is too large.
    async fn run_fill(&self, okey: &ObjectKey, fill: &Fill) -> Result<(), FillError> {
        let (bucket, key) = (okey.bucket(), okey.key());
        let started = Instant::now();
        let out = self
            .origin
            .get_object(bucket, key, None, &Conditions::default())
            .await
            .map_err(FillError::from_origin)?;
        let meta = Arc::new(out.meta);
        let size = meta.size;
        let temp = self.local.blobs.temp_path();
        let io_err = |e: io::Error| FillError::Unavailable(format!("cache temp file: {e}"));
        let writer = Arc::new(File::create(&temp).map_err(io_err)?);
        let _cleanup = TempGuard(temp.clone());
        let reader_file = Arc::new(File::open(&temp).map_err(io_err)?);
        fill.tx.send_replace(FillState::Body {
            meta: meta.clone(),
            file: reader_file,
            written: 0,
            done: false,
        });

        let mut body = out.body;
        let mut written = 0u64;
        let mut crcs = BlockCrcs::default();
        let mut md5 = Md5::new();
        let mut small = (size <= self.local.memory_object_max()).then(|| BytesMut::with_capacity(size as usize));
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    if written + chunk.len() as u64 > size {
                        return Err(FillError::Corrupt("the origin sent more bytes than announced".into()));
                    }
                    let (w, c, at) = (writer.clone(), chunk.clone(), written);
                    tokio::task::spawn_blocking(move || w.write_all_at(&c, at))
                        .await
                        .map_err(|e| io_err(io::Error::other(e)))?
                        .map_err(io_err)?;
                    written += chunk.len() as u64;
                    crcs.update(&chunk);
                    md5.update(&chunk);
                    if let Some(s) = &mut small {
                        s.extend_from_slice(&chunk);
                    }
                    fill.tx.send_modify(|s| {
                        if let FillState::Body { written: w, .. } = s {
                            *w = written;
                        }
                    });
                }
                Some(Err(e)) => {
                    if started.elapsed() >= self.cfg.retry_deadline {
                        return Err(FillError::Unavailable(format!("origin stream broke: {e}")));
                    }
                    tracing::info!(key, written, error = %e, "origin stream broke; resuming with a range request");
                    self.local.stats.resumed.inc();
                    let cond = Conditions {
                        if_match: Some(meta.etag.clone()),
                        ..Default::default()
                    };
                    let range = ByteRange::FromTo {
                        first: written,
                        last: None,
                    };
                    let more = self
                        .origin
                        .get_object(bucket, key, Some(range), &cond)
                        .await
                        .map_err(|e| match e {
                            OriginError::PreconditionFailed => {
                                FillError::Unavailable("the object changed during the fetch".into())
                            }
                            other => FillError::from_origin(other),
                        })?;
                    if more.range.is_some_and(|(a, _)| a != written) {
                        return Err(FillError::Unavailable("the origin resumed at the wrong offset".into()));
                    }
                    body = more.body;
                }
                None => break,
            }
        }
        if written != size {
            return Err(FillError::Unavailable(format!(
                "the origin sent {written} of {size} bytes"
            )));
        }
        let digest = hex::encode(md5.finalize());
        if let Some(want) = md5_etag(&meta.etag)
            && !want.eq_ignore_ascii_case(&digest)
        {
            self.local.stats.corrupt.inc();
            return Err(FillError::Corrupt(format!(
                "body MD5 {digest} does not match the ETag {}",
                meta.etag
            )));
        }
        let keep = !fill.stale.load(Ordering::SeqCst) && size <= self.local.keep_limit() && !self.bypasses(okey);
        if keep
            && let Err(e) =
                self.local
                    .keep_fetched(okey, &temp, &meta, crcs.finish(), small.map(BytesMut::freeze), fill)
        {
            tracing::warn!(key, error = %e, "could not keep a fetched object in the cache");
        }
        fill.tx.send_modify(|s| {
            if let FillState::Body { done, .. } = s {
                *done = true;
            }
        });
        Ok(())
    }
}

/// One waiter's view of a fill: reads what has landed, waits for more.
pub(crate) struct FillReader {
    pub rx: watch::Receiver<FillState>,
    pub file: Arc<File>,
    pub pos: u64,
    pub end: u64,
}

const CHUNK: u64 = 256 * 1024;

impl FillReader {
    pub(crate) async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            let state = self.rx.borrow_and_update().clone();
            match state {
                FillState::Failed(e) => return Some(Err(io::Error::other(format!("origin fetch failed: {e:?}")))),
                FillState::Body { written, done, .. } => {
                    // The last byte waits until the fill has checked the whole body.
                    let limit = if done { written } else { written.min(self.end - 1) };
                    if limit > self.pos {
                        let n = (limit - self.pos).min(CHUNK) as usize;
                        let chunk = read_at(self.file.clone(), self.pos, n).await;
                        if let Ok(c) = &chunk {
                            self.pos += c.len() as u64;
                        }
                        return Some(chunk);
                    }
                    if done {
                        return Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "origin fetch ended short",
                        )));
                    }
                }
                FillState::Pending => {}
            }
            if self.rx.changed().await.is_err() {
                return Some(Err(io::Error::other("origin fetch ended")));
            }
        }
    }
}
