//! GET and HEAD of one part of an object (`partNumber`): a part is a byte range of its object,
//! found from the part sizes Perch keeps for the multipart uploads completed through it, or asked
//! of the origin (a HEAD of each part, once for each version of an object).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};

use super::Store;
use crate::error::{StoreError, StoreResult};
use crate::key::ObjectKey;
use crate::origin::{ByteRange, Conditions, ObjectMeta, Origin, OriginError, cause, is_multipart_etag, same_etag};
use crate::read::{CacheStatus, CachedGet};

/// Part layouts learnt from the origin, at most this many (one goes when another comes).
const LEARNT_MAX: usize = 256;
/// HEADs in flight while a layout is learnt.
const HEADS_IN_FLIGHT: usize = 8;
/// S3's most parts an object has.
const PARTS_MAX: u32 = 10_000;
/// Lookups when the object changes between a part's lookup and its read.
const ATTEMPTS: usize = 3;

/// Where a part lies in its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpan {
    /// Its inclusive byte span; `None` for a part of an empty object.
    pub span: Option<(u64, u64)>,
    /// The object's part count, for an object uploaded in parts (`x-amz-mp-parts-count`).
    pub parts_count: Option<u32>,
}

/// An object's part sizes, in order.
type Layout = Arc<Vec<u64>>;

/// Part sizes learnt from the origin, by object and ETag.
#[derive(Default)]
pub(crate) struct LearntLayouts(Mutex<HashMap<(ObjectKey, String), Layout>>);

impl LearntLayouts {
    fn get(&self, okey: &ObjectKey, etag: &str) -> Option<Layout> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(okey.clone(), etag.to_owned())).cloned()
    }

    fn put(&self, okey: &ObjectKey, etag: &str, sizes: Layout) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= LEARNT_MAX
            && let Some(any) = map.keys().next().cloned()
        {
            map.remove(&any);
        }
        map.insert((okey.clone(), etag.to_owned()), sizes);
    }
}

fn not_satisfiable() -> OriginError {
    OriginError::rejected(416, "InvalidPartNumber", "The requested partnumber is not satisfiable")
}

/// Why a part was not found.
enum Missed {
    /// The origin holds another version than the one the lookup started from.
    Changed,
    Failed(StoreError),
}

impl<E: Into<StoreError>> From<E> for Missed {
    fn from(e: E) -> Missed {
        Missed::Failed(e.into())
    }
}

/// The sum of part sizes, `None` past `u64` (an origin's answer, not trusted).
fn total(sizes: &[u64]) -> Option<u64> {
    sizes.iter().try_fold(0u64, |sum, s| sum.checked_add(*s))
}

impl Store {
    /// GET of part `part` (1–10,000) of an object: the part's bytes as a range of the object,
    /// with where it lies. An object not uploaded in parts has one part, itself.
    pub async fn get_part(
        &self,
        bucket: &str,
        key: &str,
        part: u32,
        conditions: &Conditions,
    ) -> StoreResult<(CachedGet, PartSpan)> {
        // A failed precondition comes from the version pinned below unless the client's own
        // conditions can fail one.
        let ours = conditions.if_match.is_none() && conditions.if_unmodified_since.is_none();
        for _ in 0..ATTEMPTS {
            let (meta, at) = match self.locate_part(bucket, key, part, conditions).await {
                Ok((meta, _, at)) => (meta, at),
                Err(Missed::Changed) => continue,
                Err(Missed::Failed(e)) => return Err(e),
            };
            // The bytes must be those of the version whose layout was used.
            let pinned = Conditions {
                if_match: Some(meta.etag.clone()),
                ..conditions.clone()
            };
            // A part that is the whole object is read as the whole object (a miss is one fetch
            // that fills the cache, not a range and then the whole in the background), and
            // answered as the span it is.
            let range = at
                .span
                .filter(|&(first, last)| (first, last + 1) != (0, meta.size))
                .map(|(first, last)| ByteRange::FromTo {
                    first,
                    last: Some(last),
                });
            match self.get(bucket, key, range, &pinned).await {
                Err(StoreError::Origin(OriginError::PreconditionFailed)) if ours => continue,
                read => {
                    return read.map(|mut got| {
                        got.output.range = at.span;
                        (got, at)
                    });
                }
            }
        }
        Err(changed_meanwhile())
    }

    /// HEAD of part `part` of an object: its metadata and where the part lies.
    pub async fn head_part(
        &self,
        bucket: &str,
        key: &str,
        part: u32,
        conditions: &Conditions,
    ) -> StoreResult<(ObjectMeta, CacheStatus, PartSpan)> {
        for _ in 0..ATTEMPTS {
            match self.locate_part(bucket, key, part, conditions).await {
                Err(Missed::Changed) => continue,
                Err(Missed::Failed(e)) => return Err(e),
                Ok(found) => return Ok(found),
            }
        }
        Err(changed_meanwhile())
    }

    /// The object's metadata (as a HEAD answers it, conditions checked) and where part `part` lies.
    async fn locate_part(
        &self,
        bucket: &str,
        key: &str,
        part: u32,
        conditions: &Conditions,
    ) -> Result<(ObjectMeta, CacheStatus, PartSpan), Missed> {
        let (meta, status) = self.head(bucket, key, conditions).await?;
        let (sizes, parts_count) = if is_multipart_etag(&meta.etag) {
            let okey = ObjectKey::new(bucket, key);
            let sizes = match self.kept_layout(&okey, &meta) {
                Some(sizes) => sizes,
                None => {
                    let origin: &dyn Origin = match (&self.replica, status) {
                        (Some(r), CacheStatus::Overlay) => r.overlay(),
                        _ => &*self.origin,
                    };
                    match self.learn_layout(origin, &okey, &meta).await {
                        Err(Missed::Changed) => {
                            // A clean copy of a version the origin no longer holds (a key the
                            // policy never revalidates, replaced behind Perch's back): dropped,
                            // so that the next lookup starts from the origin's version.
                            if let Ok(Some(e)) = self.local.index.get(&okey)
                                && !e.pending
                                && same_etag(&e.meta.etag, &meta.etag)
                            {
                                let (okey, blob) = (okey.clone(), e.blob);
                                let _ = self.local.blocking(move |l| l.drop_entry(&okey, blob)).await;
                            }
                            return Err(Missed::Changed);
                        }
                        learnt => learnt?,
                    }
                }
            };
            let count = sizes.len() as u32;
            (sizes, Some(count))
        } else {
            (Arc::new(vec![meta.size]), None)
        };
        let index = (part as usize)
            .checked_sub(1)
            .filter(|i| *i < sizes.len())
            .ok_or_else(not_satisfiable)?;
        let first: u64 = sizes[..index].iter().sum();
        let len = sizes[index];
        let span = match len {
            0 if meta.size == 0 => None,
            // An empty part of an object that is not empty: no byte range names it.
            0 => return Err(not_satisfiable().into()),
            len => Some((first, first + len - 1)),
        };
        Ok((meta, status, PartSpan { span, parts_count }))
    }

    /// The part sizes of this version of `okey` that Perch already has: those kept with its
    /// local copy (a multipart upload completed through Perch; for a version not yet uploaded
    /// whose index entry predates them, its journal record's), else those learnt before.
    fn kept_layout(&self, okey: &ObjectKey, meta: &ObjectMeta) -> Option<Layout> {
        let whole = |sizes: &[u64]| !sizes.is_empty() && total(sizes) == Some(meta.size);
        let local = self.local.index.get(okey).ok().flatten();
        if let Some(entry) = local.filter(|e| same_etag(&e.meta.etag, &meta.etag)) {
            if whole(&entry.parts) {
                return Some(Arc::new(entry.parts));
            }
            let recorded = entry
                .pending
                .then(|| self.journal.version(entry.blob))
                .flatten()
                .and_then(|v| v.put)
                .and_then(|p| p.parts)
                .map(|parts| parts.iter().map(|p| p.size).collect::<Vec<_>>());
            if let Some(sizes) = recorded.filter(|s| whole(s)) {
                return Some(Arc::new(sizes));
            }
        }
        self.learnt_layouts.get(okey, &meta.etag).filter(|s| whole(s))
    }

    /// Asks `origin` for the size of each part of this version of `okey` (a HEAD by part number
    /// each, a few at a time), and keeps the answer for the next parts: with the local copy of
    /// this version if there is one (so across restarts), else in memory.
    async fn learn_layout(&self, origin: &dyn Origin, okey: &ObjectKey, meta: &ObjectMeta) -> Result<Layout, Missed> {
        let (bucket, key) = (okey.bucket(), okey.key());
        // An answer that names another whole-object ETag is of another version. (moto answers
        // with the part's own ETag, which names no version: the sizes' sum checks those.)
        let same_version = |etag: &str| !is_multipart_etag(etag) || same_etag(etag, &meta.etag);
        let head = |n: u32| async move {
            match origin.head_part(bucket, key, n).await {
                // Gone, or fewer parts than the version had: another version now.
                Err(OriginError::NoSuchKey | OriginError::InvalidRange { .. }) => Err(Missed::Changed),
                Err(OriginError::Rejected { status: 416, .. }) => Err(Missed::Changed),
                Err(e) => Err(Missed::from(e)),
                Ok(h) if !same_version(&h.etag) => Err(Missed::Changed),
                Ok(h) => Ok(h),
            }
        };
        let first = head(1).await?;
        let count = match first.parts_count {
            Some(n @ 1..=PARTS_MAX) => n,
            None => 1,
            Some(n) => {
                return Err(OriginError::transient(format!("the origin names {n} parts of {key}")).into());
            }
        };
        let rest: Vec<_> = futures::stream::iter(2..=count)
            .map(head)
            .buffered(HEADS_IN_FLIGHT)
            .try_collect()
            .await?;
        let sizes: Vec<u64> = std::iter::once(first.size).chain(rest.iter().map(|h| h.size)).collect();
        if total(&sizes) != Some(meta.size) {
            return Err(Missed::Changed);
        }
        // Kept with a clean local copy of this version, and in memory for any other.
        if let Ok(Some(e)) = self.local.index.get(okey)
            && !e.pending
            && same_etag(&e.meta.etag, &meta.etag)
        {
            let (okey, blob, kept) = (okey.clone(), e.blob, sizes.clone());
            let _ = self.local.blocking(move |l| l.keep_parts(&okey, blob, &kept)).await;
        }
        let sizes = Arc::new(sizes);
        self.learnt_layouts.put(okey, &meta.etag, sizes.clone());
        Ok(sizes)
    }
}

/// The answer once every lookup found the object changed: 503 SlowDown, which clients retry.
fn changed_meanwhile() -> StoreError {
    StoreError::Origin(OriginError::unavailable(
        0,
        cause("the object changed while its parts were looked up"),
    ))
}
