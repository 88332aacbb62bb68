//! GET and HEAD of one part of an object (`partNumber`): a part is a byte range of its object,
//! found from the part sizes Perch keeps for the multipart uploads completed through it, or asked
//! of the origin (a HEAD of each part, once for each version of an object).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};

use super::Store;
use crate::error::{StoreError, StoreResult};
use crate::key::ObjectKey;
use crate::origin::{ByteRange, Conditions, ObjectMeta, Origin, OriginError, is_multipart_etag, same_etag};
use crate::read::{CacheStatus, CachedGet};

/// Part layouts learnt from the origin, at most this many (the map is emptied when full).
const LEARNT_MAX: usize = 256;
/// HEADs in flight while a layout is learnt.
const HEADS_IN_FLIGHT: usize = 8;
/// Lookups when the object changes between a part's lookup and its read.
const ATTEMPTS: usize = 3;

/// Where a part lies in its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSpan {
    /// Its inclusive byte span; `None` for the one part of an empty object.
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
        if map.len() >= LEARNT_MAX {
            map.clear();
        }
        map.insert((okey.clone(), etag.to_owned()), sizes);
    }
}

fn not_satisfiable() -> OriginError {
    OriginError::rejected(416, "InvalidPartNumber", "The requested partnumber is not satisfiable")
}

/// The answer when the object changed while its parts were looked up.
fn changed() -> StoreError {
    StoreError::Origin(OriginError::PreconditionFailed)
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
        let mut attempt = 1;
        loop {
            let found = self.locate_part(bucket, key, part, conditions).await;
            let read = match found {
                Ok((meta, _, at)) => {
                    // The bytes must be those of the version whose layout was used.
                    let pinned = Conditions {
                        if_match: Some(meta.etag.clone()),
                        ..conditions.clone()
                    };
                    let range = at.span.map(|(first, last)| ByteRange::FromTo {
                        first,
                        last: Some(last),
                    });
                    self.get(bucket, key, range, &pinned).await.map(|got| (got, at))
                }
                Err(e) => Err(e),
            };
            match read {
                Err(StoreError::Origin(OriginError::PreconditionFailed))
                    if conditions.if_match.is_none() && attempt < ATTEMPTS =>
                {
                    attempt += 1;
                }
                read => return read,
            }
        }
    }

    /// HEAD of part `part` of an object: its metadata and where the part lies.
    pub async fn head_part(
        &self,
        bucket: &str,
        key: &str,
        part: u32,
        conditions: &Conditions,
    ) -> StoreResult<(ObjectMeta, CacheStatus, PartSpan)> {
        let mut attempt = 1;
        loop {
            match self.locate_part(bucket, key, part, conditions).await {
                Err(StoreError::Origin(OriginError::PreconditionFailed))
                    if conditions.if_match.is_none() && attempt < ATTEMPTS =>
                {
                    attempt += 1;
                }
                found => return found,
            }
        }
    }

    /// The object's metadata (as a HEAD answers it, conditions checked) and where part `part` lies.
    async fn locate_part(
        &self,
        bucket: &str,
        key: &str,
        part: u32,
        conditions: &Conditions,
    ) -> StoreResult<(ObjectMeta, CacheStatus, PartSpan)> {
        let (meta, status) = self.head(bucket, key, conditions).await?;
        if !is_multipart_etag(&meta.etag) {
            if part != 1 {
                return Err(not_satisfiable().into());
            }
            let span = (meta.size > 0).then(|| (0, meta.size - 1));
            return Ok((
                meta,
                status,
                PartSpan {
                    span,
                    parts_count: None,
                },
            ));
        }
        let okey = ObjectKey::new(bucket, key);
        let sizes = match self.kept_layout(&okey, &meta) {
            Some(sizes) => sizes,
            None => {
                let origin: &dyn Origin = match (&self.replica, status) {
                    (Some(r), CacheStatus::Overlay) => r.overlay(),
                    _ => &*self.origin,
                };
                self.learn_layout(origin, &okey, &meta).await?
            }
        };
        let index = (part as usize)
            .checked_sub(1)
            .filter(|i| *i < sizes.len())
            .ok_or_else(not_satisfiable)?;
        let first: u64 = sizes[..index].iter().sum();
        let len = sizes[index];
        if len == 0 {
            // An empty part of an object that is not empty: no byte range names it.
            return Err(not_satisfiable().into());
        }
        let at = PartSpan {
            span: Some((first, first + len - 1)),
            parts_count: Some(sizes.len() as u32),
        };
        Ok((meta, status, at))
    }

    /// The part sizes of this version of `okey` that Perch already has: those kept with its
    /// local copy (a multipart upload completed through Perch; for a version not yet uploaded
    /// whose index entry predates them, its journal record's), else those learnt before.
    fn kept_layout(&self, okey: &ObjectKey, meta: &ObjectMeta) -> Option<Layout> {
        let whole = |sizes: &[u64]| !sizes.is_empty() && sizes.iter().sum::<u64>() == meta.size;
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
    /// each, a few at a time), and keeps the answer for the next parts.
    async fn learn_layout(&self, origin: &dyn Origin, okey: &ObjectKey, meta: &ObjectMeta) -> StoreResult<Layout> {
        let (bucket, key) = (okey.bucket(), okey.key());
        // An answer that names another whole-object ETag is of another version. (moto answers
        // with the part's own ETag, which names no version: the sizes' sum checks those.)
        let same_version = |etag: &str| !is_multipart_etag(etag) || same_etag(etag, &meta.etag);
        let first = origin.head_part(bucket, key, 1).await?;
        if !same_version(&first.etag) {
            return Err(changed());
        }
        let count = first.parts_count.unwrap_or(1);
        let rest: Vec<_> = futures::stream::iter(2..=count)
            .map(|n| origin.head_part(bucket, key, n))
            .buffered(HEADS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut sizes = Vec::with_capacity(count as usize);
        sizes.push(first.size);
        for head in rest {
            if !same_version(&head.etag) {
                return Err(changed());
            }
            sizes.push(head.size);
        }
        if sizes.iter().sum::<u64>() != meta.size {
            return Err(changed());
        }
        let sizes = Arc::new(sizes);
        self.learnt_layouts.put(okey, &meta.etag, sizes.clone());
        Ok(sizes)
    }
}
