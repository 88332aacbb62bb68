//! `Reader`: GET and HEAD from the local copies: the memory tier, then the index and its blobs
//! (`disk_read`), revalidating the copies of keys that change behind Perch's back; a miss is a
//! fill (`fill`), or, for a range, the origin's answer at once with the whole object fetched
//! behind it; a key the policy keeps no copy of passes through (`pass`). A key whose newest local
//! version is a pending delete answers 404 at once.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use perch_policy::{CacheClass, Method, SharedPolicy, is_reserved};

use crate::fill::FillReader;
use crate::key::ObjectKey;
use crate::local::fills::FillError;
use crate::local::index::Entry;
use crate::local::{Local, Pending};
use crate::metrics::{DISK, MEMORY, ORIGIN, ResultLabel};
use crate::origin::{
    ByteRange, ByteStream, Conditions, GetOutput, ObjectMeta, Origin, OriginError, OriginResult, cause,
};
use crate::pass::Passed;

/// A range no further than this past what a fill under way has received is served from the fill
/// (it arrives sooner than an origin round trip would bring it).
const FILL_NEAR: u64 = 4 << 20;

/// Range misses fetch their whole objects behind their answers, this many at most at once: a burst
/// of ranged reads over many objects does not start as many whole downloads (each holding memory
/// and taking room in the disk tier) that no request limit bounds. A range miss beyond them is
/// answered from the origin alone, and a later read of its object fills it.
pub(crate) const BACKGROUND_FILLS_MAX: usize = 8;

/// Settings of the read path.
#[derive(Debug, Clone)]
pub(crate) struct ReaderConfig {
    /// The policy: which keys may change behind Perch's back (and how long a copy is served
    /// before it is revalidated), and which are not kept.
    pub policy: Arc<SharedPolicy>,
    /// How long a broken fill keeps resuming.
    pub retry_deadline: Duration,
    /// A range miss fetches the whole object in the background up to this size.
    pub background_fill_max: u64,
}

/// How an answer was produced, sent as `X-Cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Revalidated,
    Bypass,
    /// A replica's own write (or a copy pinned at seeding), from its overlay.
    Overlay,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Bypass => "BYPASS",
            CacheStatus::Overlay => "OVERLAY",
        }
    }
}

/// A GET's answer and how it was produced.
pub struct CachedGet {
    pub output: GetOutput,
    pub status: CacheStatus,
}

pub(crate) struct Reader {
    pub(crate) cfg: ReaderConfig,
    pub(crate) local: Arc<Local>,
    /// The origin with its retry layer.
    pub(crate) origin: Arc<dyn Origin>,
    /// Which keys have versions the origin does not have yet (the journal's answer).
    pending: Arc<dyn Pending>,
    /// Room for range misses' background fills (`BACKGROUND_FILLS_MAX`).
    background_fills: Arc<tokio::sync::Semaphore>,
}

impl Reader {
    pub(crate) fn new(
        cfg: ReaderConfig,
        local: Arc<Local>,
        origin: Arc<dyn Origin>,
        pending: Arc<dyn Pending>,
    ) -> Reader {
        Reader {
            cfg,
            local,
            origin,
            pending,
            background_fills: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_FILLS_MAX)),
        }
    }

    /// The local entry of `okey`, looked up again when the first look found none but the key has
    /// pending versions: the backstop of read-your-writes, so that such a key is never answered
    /// from the origin. The second look runs under the key's lock, where the index and the
    /// journal agree (a release changes both under it).
    async fn lookup_pending_safe(&self, okey: &ObjectKey) -> OriginResult<Option<(Entry, Option<Bytes>, CacheStatus)>> {
        let found = self.lookup(okey).await?;
        if found.is_some() || !self.pending.has_pending(okey) {
            return Ok(found);
        }
        let (looked, pending) = (okey.clone(), self.pending.clone());
        let (indexed, still_pending) = self
            .local
            .blocking(move |l| {
                let _key = l.key_lock(&looked);
                let indexed = l.index.get(&looked).ok().flatten().is_some();
                (indexed, !indexed && pending.has_pending(&looked))
            })
            .await
            .map_err(|e| OriginError::Io(io::Error::other(e)))?;
        if still_pending {
            tracing::error!(object = %okey, "a key with pending versions has no index entry; not asking the origin");
            return Err(OriginError::Io(io::Error::other(
                "a version not yet uploaded is missing from the index",
            )));
        }
        if indexed { self.lookup(okey).await } else { Ok(None) }
    }

    fn needs_revalidation(&self, okey: &ObjectKey, entry: &Entry) -> bool {
        if entry.pending {
            return false;
        }
        let decision = self.cfg.policy.decide(okey.bucket(), okey.key(), Method::Get);
        decision
            .revalidate_after()
            .is_some_and(|after| entry.validated.elapsed().map_or(true, |age| age >= after))
    }

    /// Whether the policy says copies of `okey` are not kept (`cache = "bypass"`).
    pub(crate) fn bypasses(&self, okey: &ObjectKey) -> bool {
        // Perch's own objects (`.perch/`) are written straight to the origin: a cached copy of
        // one would go stale unseen.
        is_reserved(okey.key())
            || self.cfg.policy.decide(okey.bucket(), okey.key(), Method::Get).cache == CacheClass::Bypass
    }

    /// Asks the origin whether a cached copy is still current. `Ok(true)`: it is (and is marked
    /// so); `Ok(false)`: it changed or is gone, and was dropped; an unreachable origin leaves the
    /// copy in service (stale-if-error) and says `Ok(true)`.
    async fn revalidate(&self, okey: &ObjectKey, entry: &Entry) -> OriginResult<bool> {
        let (bucket, key) = (okey.bucket(), okey.key());
        let cond = Conditions {
            if_none_match: Some(entry.etag_at_origin().to_owned()),
            ..Default::default()
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), self.origin.head_object(bucket, key, &cond)).await;
        let unchanged = || async {
            let (okey, entry) = (okey.clone(), entry.clone());
            let _ = self.local.blocking(move |l| l.confirm(&okey, &entry)).await;
            self.local
                .stats
                .revalidations
                .get_or_create(&ResultLabel { result: "unchanged" })
                .inc();
            Ok(true)
        };
        match answer {
            Ok(Err(OriginError::NotModified { .. })) => unchanged().await,
            // An origin that ignores If-None-Match on HEAD: same ETag, same object (and fresh
            // again, like a 304, rather than asked about on every read from now on).
            Ok(Ok(meta)) if crate::origin::same_etag(&meta.etag, entry.etag_at_origin()) => unchanged().await,
            Ok(Ok(_)) | Ok(Err(OriginError::NoSuchKey)) => {
                let (dropped, blob) = (okey.clone(), entry.blob);
                let _ = self.local.blocking(move |l| l.drop_entry(&dropped, blob)).await;
                self.local
                    .stats
                    .revalidations
                    .get_or_create(&ResultLabel { result: "changed" })
                    .inc();
                Ok(false)
            }
            Ok(Err(OriginError::NoSuchBucket)) => Err(OriginError::NoSuchBucket),
            Ok(Err(e)) => {
                tracing::warn!(key, error = %e, "revalidation failed; serving the cached copy");
                self.local
                    .stats
                    .revalidations
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                Ok(true)
            }
            Err(_) => {
                tracing::warn!(key, "revalidation timed out; serving the cached copy");
                self.local
                    .stats
                    .revalidations
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                Ok(true)
            }
        }
    }

    /// The cached entry of `okey` from either tier, revalidated if its key is mutable.
    /// `None` when nothing usable is cached.
    async fn lookup(&self, okey: &ObjectKey) -> OriginResult<Option<(Entry, Option<Bytes>, CacheStatus)>> {
        let (entry, body) = match self.local.memory.get(okey) {
            Some(h) => (h.entry.clone(), Some(h.body.clone())),
            None => match self.local.index.get(okey) {
                Ok(Some(e)) => (e, None),
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cache index; going to the origin");
                    return Ok(None);
                }
            },
        };
        if entry.deleted {
            // A delete not yet uploaded: the origin's copy must not show through.
            return Err(OriginError::NoSuchKey);
        }
        let mut status = CacheStatus::Hit;
        let mut entry = entry;
        if self.needs_revalidation(okey, &entry) {
            if !self.revalidate(okey, &entry).await? {
                return Ok(None);
            }
            // As confirmed in the index: a copy this read puts in memory is fresh too.
            entry.validated = std::time::SystemTime::now();
            status = CacheStatus::Revalidated;
        }
        Ok(Some((entry, body, status)))
    }

    /// HEAD: the cached metadata, or the origin's (a HEAD does not fill the cache).
    pub(crate) async fn head(
        &self,
        okey: &ObjectKey,
        conditions: &Conditions,
    ) -> OriginResult<(ObjectMeta, CacheStatus)> {
        if let Some((entry, _, status)) = self.lookup_pending_safe(okey).await? {
            conditions.check(&entry.meta)?;
            self.local
                .stats
                .hits
                .get_or_create(if self.local.memory.contains_key(okey) {
                    &MEMORY
                } else {
                    &DISK
                })
                .inc();
            self.local.note_head(okey, entry.blob);
            return Ok((entry.meta, status));
        }
        self.local.stats.misses.inc();
        let meta = self.origin.head_object(okey.bucket(), okey.key(), conditions).await?;
        Ok((meta, CacheStatus::Miss))
    }

    /// GET through the cache.
    pub(crate) async fn get(
        self: &Arc<Self>,
        okey: &ObjectKey,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<CachedGet> {
        if let Some((entry, body, status)) = self.lookup_pending_safe(okey).await? {
            conditions.check(&entry.meta)?;
            let span = match range {
                Some(r) => r.resolve(entry.meta.size)?,
                None => None,
            };
            if let Some(body) = body {
                self.local.note_read(okey, entry.blob);
                self.local.stats.hits.get_or_create(&MEMORY).inc();
                let (first, last) = span.unwrap_or((0, entry.meta.size.saturating_sub(1)));
                let slice = if entry.meta.size == 0 {
                    Bytes::new()
                } else {
                    body.slice(first as usize..=last as usize)
                };
                self.local
                    .stats
                    .bytes_served
                    .get_or_create(&MEMORY)
                    .inc_by(slice.len() as u64);
                let stream: ByteStream = Box::pin(futures::stream::once(async move { Ok(slice) }));
                return Ok(CachedGet {
                    output: GetOutput {
                        meta: entry.meta,
                        range: span,
                        body: stream,
                    },
                    status,
                });
            }
            let pending = entry.pending;
            if let Some(output) = self.serve_disk(okey, entry, span).await {
                return Ok(CachedGet { output, status });
            }
            if pending {
                // The only copy of a write the origin does not have yet failed its check: the
                // origin's older copy must not be served in its place.
                return Err(OriginError::Io(io::Error::other(
                    "a written version not yet uploaded failed its integrity check",
                )));
            }
            // Corrupt or missing: dropped; fall through to a miss.
        }
        self.local.stats.misses.inc();
        if let Some(r) = range {
            if let Some(output) = self.range_from_fill(okey, r, conditions)? {
                return Ok(CachedGet {
                    output,
                    status: CacheStatus::Miss,
                });
            }
            // A range miss is answered from the origin at once; the whole object follows in the background.
            let asked = std::time::Instant::now();
            let out = self
                .origin
                .get_object(okey.bucket(), okey.key(), Some(r), conditions)
                .await?;
            let out = crate::origin::client_range(out, r)?;
            let out = Passed::wrap(
                self.origin.clone(),
                okey.clone(),
                out,
                asked,
                self.cfg.retry_deadline,
                self.local.stats.resumed.clone(),
            );
            if out.meta.size <= self.cfg.background_fill_max.min(self.local.keep_limit())
                && !self.bypasses(okey)
                && let Ok(room) = self.background_fills.clone().try_acquire_owned()
            {
                let _ = self.join_fill_holding(okey, Some(room));
            }
            self.local
                .stats
                .bytes_served
                .get_or_create(&ORIGIN)
                .inc_by(out.range.map_or(out.meta.size, |(a, b)| b - a + 1));
            return Ok(CachedGet {
                output: out,
                status: CacheStatus::Miss,
            });
        }
        if self.bypasses(okey) {
            // A key the policy keeps no copy of (OrioleDB's WAL and undo files: a restore reads
            // each once) streams straight from the origin: no temp file, no second pass over its
            // bytes, no place in the hot set.
            return self.get_uncached(okey, conditions).await;
        }
        let (rx, meta) = 'join: loop {
            let (_, mut rx, joined) = self.join_fill(okey);
            if joined {
                self.local.stats.coalesced.inc();
                self.local.note_client_read(okey);
            }
            self.local.note_access(okey);
            let meta = loop {
                let ended = {
                    let p = rx.borrow_and_update();
                    if let Some(e) = &p.failed {
                        match **e {
                            FillError::NoRoom => break None,
                            // Joined as its last reader left: a new fill.
                            FillError::Abandoned => continue 'join,
                            _ => return Err(e.to_origin()),
                        }
                    }
                    if let Some(meta) = &p.meta {
                        break Some(meta.clone());
                    }
                    false
                } || rx.changed().await.is_err();
                if ended && rx.borrow().failed.is_none() && rx.borrow().meta.is_none() {
                    return Err(OriginError::unavailable(0, cause("the origin fetch ended")));
                }
            };
            break (rx, meta);
        };
        let Some(meta) = meta else {
            return self.get_uncached(okey, conditions).await;
        };
        conditions.check(&meta)?;
        let size = meta.size;
        let body = self.fill_body(FillReader { rx, pos: 0, end: size });
        let status = if size > self.local.keep_limit() {
            self.local.stats.bypass.inc();
            CacheStatus::Bypass
        } else {
            CacheStatus::Miss
        };
        Ok(CachedGet {
            output: GetOutput {
                meta: (*meta).clone(),
                range: None,
                body,
            },
            status,
        })
    }

    /// The whole object straight from the origin, not kept (resumed where its stream breaks): the
    /// policy bypasses the key, or the data dir's filesystem has no room for a copy (a full disk
    /// never fails a read).
    async fn get_uncached(&self, okey: &ObjectKey, conditions: &Conditions) -> OriginResult<CachedGet> {
        let asked = std::time::Instant::now();
        let out = self
            .origin
            .get_object(okey.bucket(), okey.key(), None, conditions)
            .await?;
        let mut out = Passed::wrap(
            self.origin.clone(),
            okey.clone(),
            out,
            asked,
            self.cfg.retry_deadline,
            self.local.stats.resumed.clone(),
        );
        self.local.stats.bypass.inc();
        // Counted as the bytes go out: a body cut short (a damaged object, a client gone) counts
        // what it sent, not the object's size.
        let served = self.local.stats.bytes_served.get_or_create(&ORIGIN).clone();
        out.body = Box::pin(out.body.inspect(move |item| {
            if let Ok(b) = item {
                served.inc_by(b.len() as u64);
            }
        }));
        Ok(CachedGet {
            output: out,
            status: CacheStatus::Bypass,
        })
    }

    /// A fill's bytes as a body stream, counted as served from the origin.
    fn fill_body(&self, reader: FillReader) -> ByteStream {
        let stats = self.local.stats.clone();
        Box::pin(futures::stream::unfold(reader, move |mut r| {
            let stats = stats.clone();
            async move {
                let item = r.next_chunk().await?;
                if let Ok(b) = &item {
                    stats.bytes_served.get_or_create(&ORIGIN).inc_by(b.len() as u64);
                }
                Some((item, r))
            }
        }))
    }

    /// A range of an object whose fill is under way and has (nearly) reached the range's start:
    /// served from the fill rather than asked of the origin again.
    fn range_from_fill(
        &self,
        okey: &ObjectKey,
        range: ByteRange,
        conditions: &Conditions,
    ) -> OriginResult<Option<GetOutput>> {
        let Some(rx) = self.local.fills.subscribe(okey) else {
            return Ok(None);
        };
        let (meta, received) = {
            let p = rx.borrow();
            match (&p.meta, &p.failed) {
                (Some(meta), None) => (meta.clone(), p.received),
                _ => return Ok(None),
            }
        };
        conditions.check(&meta)?;
        let Some((first, last)) = range.resolve(meta.size)? else {
            // The whole of an empty object: the origin answers it.
            return Ok(None);
        };
        if first > received + FILL_NEAR {
            return Ok(None);
        }
        Ok(Some(GetOutput {
            meta: (*meta).clone(),
            range: Some((first, last)),
            body: self.fill_body(FillReader {
                rx,
                pos: first,
                end: last + 1,
            }),
        }))
    }
}
