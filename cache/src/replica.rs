//! `Replica`: how a read replica answers. Its own writes live in the overlay, a local directory
//! store that nothing uploads (`<data-dir>/overlay`: `objects/` and the `deleted/` markers of its
//! deletes); keys it never wrote come from the shared bucket where they are written once
//! (through the cache), from the copies pinned at seeding where the primary rewrites them, and
//! straight from the bucket for WAL segments, always the newest. See docs/replicas.md.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use perch_policy::RewrittenKeys;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::body::spool;
use crate::error::CacheError;
use crate::journal::DirtyKey;
use crate::key::ObjectKey;
use crate::listing::{self, Page, PageQuery};
use crate::local::lock;
use crate::origin::{
    ByteRange, Checksums, CompletedPart, Conditions, ContentHeaders, Document, Expected, FsOrigin, ListEntry,
    ListQuery, MultipartChecksum, ObjectMeta, Origin, OriginError, OriginResult, PartInfo, PutBody, PutInput,
    PutOutput, Subresource, UploadInfo, tags_document,
};
use crate::read::{CacheStatus, CachedGet, Reader};

/// The WAL archive: served from the shared bucket on every read, never cached.
const WAL_PREFIX: &str = "wal/";
/// OrioleDB's lock: the replica's own only, never pinned (the primary holds its own).
const LOCK_KEY: &str = "data/orioledb_data/s3_lock";
/// OrioleDB's root control file, written last by every checkpoint: pinning is consistent when it
/// did not change while the other rewritten keys were copied. It is the one rewritten key never
/// pinned: a standby in recovery writes none, and at every start OrioleDB compares the bucket's
/// copy with its own progress and refuses to start when the bucket's is ahead, as the primary's
/// copy from seeding is once the standby made a restartpoint. So a replica serves only the copy
/// its own Postgres wrote, and a 404 (read as "no checkpoint in the bucket") before that.
const CONTROL_KEY: &str = "data/orioledb_data/control";
/// Times seeding starts again when the primary checkpointed meanwhile.
const SEED_ATTEMPTS: usize = 5;

/// Where a key the replica did not write (and did not delete) is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Written once by the primary: the shared bucket, through the cache.
    Shared,
    /// The WAL archive: the shared bucket, the newest copy, not cached.
    Live,
    /// Rewritten by the primary: only the overlay (its own write or the copy pinned at seeding).
    Own,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FoundLabel {
    result: &'static str,
}

/// `perch_replica_*`.
#[derive(Default)]
struct ReplicaStats {
    overlay_writes: Family<OpLabel, Counter>,
    overlay_bytes: Counter,
    pinned: Counter,
    wal_reads: Family<FoundLabel, Counter>,
    wal_newest_upload: Gauge,
    wal_last_read: Gauge,
    newest_upload_secs: AtomicU64,
}

impl ReplicaStats {
    fn register(&self, r: &mut Registry) {
        r.register(
            "perch_replica_overlay_writes",
            "Writes of this replica kept in its overlay (never uploaded), by operation",
            self.overlay_writes.clone(),
        );
        r.register(
            "perch_replica_overlay_written_bytes",
            "Bytes this replica wrote into its overlay",
            self.overlay_bytes.clone(),
        );
        r.register(
            "perch_replica_pinned",
            "Rewritten keys copied from the shared bucket into the overlay at seeding",
            self.pinned.clone(),
        );
        r.register(
            "perch_replica_wal_reads",
            "Reads of wal/ keys served from the shared bucket, by result (found, absent)",
            self.wal_reads.clone(),
        );
        r.register(
            "perch_replica_wal_newest_upload_timestamp_seconds",
            "Last-Modified of the most recently uploaded WAL object this replica has read: \
             time() minus this is the age of the newest WAL it has (docs/replicas.md)",
            self.wal_newest_upload.clone(),
        );
        r.register(
            "perch_replica_wal_last_read_timestamp_seconds",
            "When this replica last read a WAL object that exists",
            self.wal_last_read.clone(),
        );
    }

    fn wal_read(&self, meta: Option<&ObjectMeta>) {
        let Some(meta) = meta else {
            self.wal_reads.get_or_create(&FoundLabel { result: "absent" }).inc();
            return;
        };
        self.wal_reads.get_or_create(&FoundLabel { result: "found" }).inc();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let uploaded = secs(meta.last_modified);
        let newest = self
            .newest_upload_secs
            .fetch_max(uploaded, Ordering::SeqCst)
            .max(uploaded);
        self.wal_newest_upload.set(newest as i64);
        self.wal_last_read.set(secs(SystemTime::now()) as i64);
    }

    fn overlay_write(&self, op: &'static str, bytes: u64) {
        self.overlay_writes.get_or_create(&OpLabel { op }).inc();
        self.overlay_bytes.inc_by(bytes);
    }
}

pub(crate) struct Replica {
    /// The keys the primary rewrites (the cache's mutable keys): `Own`, or `Live` under `wal/`.
    rewritten: RewrittenKeys,
    /// The replica's own objects and the pinned copies. No uploader ever reads this directory.
    objects: FsOrigin,
    /// One empty object per key the replica deleted: hides the shared bucket's copy.
    deleted: FsOrigin,
    /// `<bucket>.seeded` once the bucket's rewritten keys are pinned.
    seeded_dir: PathBuf,
    /// Bodies copied from the shared bucket while pinning.
    tmp: PathBuf,
    seeded: Mutex<HashSet<String>>,
    local_buckets: Mutex<HashSet<String>>,
    seeding: tokio::sync::Mutex<()>,
    /// A write of a key changes two stores (its object and its delete marker): writes of one key
    /// take its stripe, so that a PUT and a DELETE at once never leave neither.
    key_locks: Vec<tokio::sync::Mutex<()>>,
    /// The shared bucket, read only (`ReadOnlyOrigin`), with the retry layer.
    origin: Arc<dyn Origin>,
    stats: ReplicaStats,
}

/// How many stripes the replica's key locks have.
const KEY_LOCKS: usize = 64;

fn is_absent(e: &OriginError) -> bool {
    matches!(e, OriginError::NoSuchKey | OriginError::NoSuchBucket)
}

impl Replica {
    /// Opens the overlay under `dir` (`<data-dir>/overlay`).
    pub(crate) fn open(
        dir: PathBuf,
        rewritten: RewrittenKeys,
        origin: Arc<dyn Origin>,
        registry: Option<&mut Registry>,
    ) -> Result<Replica, CacheError> {
        let objects = FsOrigin::open(dir.join("objects"))?;
        let deleted = FsOrigin::open(dir.join("deleted"))?;
        let seeded_dir = dir.join("seeded");
        let tmp = dir.join("tmp");
        crate::durable::create_dirs(&seeded_dir)?;
        let _ = std::fs::remove_dir_all(&tmp);
        crate::durable::create_dirs(&tmp)?;
        let stats = ReplicaStats::default();
        if let Some(r) = registry {
            stats.register(r);
        }
        Ok(Replica {
            rewritten,
            objects,
            deleted,
            seeded_dir,
            tmp,
            seeded: Mutex::new(HashSet::new()),
            local_buckets: Mutex::new(HashSet::new()),
            seeding: tokio::sync::Mutex::new(()),
            key_locks: (0..KEY_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            origin,
            stats,
        })
    }

    /// Holds the writes of `bucket`/`key` (and of the keys sharing its stripe) until dropped.
    async fn lock_key(&self, bucket: &str, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = ObjectKey::new(bucket, key).hash64() as usize % self.key_locks.len();
        self.key_locks[stripe].lock().await
    }

    fn source(&self, key: &str) -> Source {
        if !self.rewritten.is_mutable(key) {
            Source::Shared
        } else if key.starts_with(WAL_PREFIX) {
            Source::Live
        } else {
            Source::Own
        }
    }

    // ----- reads -----

    /// The store of the replica's own objects.
    pub(crate) fn overlay(&self) -> &FsOrigin {
        &self.objects
    }

    pub(crate) async fn get(
        &self,
        reader: &Arc<Reader>,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<CachedGet> {
        self.seed(bucket).await?;
        match self.objects.get_object(bucket, key, range, conditions).await {
            Ok(output) => {
                return Ok(CachedGet {
                    output,
                    status: CacheStatus::Overlay,
                });
            }
            Err(e) if is_absent(&e) => self.check_not_deleted(bucket, key).await?,
            Err(e) => return Err(e),
        }
        match self.source(key) {
            Source::Own => Err(OriginError::NoSuchKey),
            Source::Live => {
                let got = self.origin.get_object(bucket, key, range, conditions).await;
                self.note_wal(&got.as_ref().map(|g| &g.meta));
                Ok(CachedGet {
                    output: got?,
                    status: CacheStatus::Bypass,
                })
            }
            Source::Shared => reader.get(&ObjectKey::new(bucket, key), range, conditions).await,
        }
    }

    pub(crate) async fn head(
        &self,
        reader: &Reader,
        bucket: &str,
        key: &str,
        conditions: &Conditions,
    ) -> OriginResult<(ObjectMeta, CacheStatus)> {
        self.seed(bucket).await?;
        match self.objects.head_object(bucket, key, conditions).await {
            Ok(meta) => return Ok((meta, CacheStatus::Overlay)),
            Err(e) if is_absent(&e) => self.check_not_deleted(bucket, key).await?,
            Err(e) => return Err(e),
        }
        match self.source(key) {
            Source::Own => Err(OriginError::NoSuchKey),
            Source::Live => {
                let meta = self.origin.head_object(bucket, key, conditions).await;
                self.note_wal(&meta.as_ref());
                Ok((meta?, CacheStatus::Bypass))
            }
            Source::Shared => reader.head(&ObjectKey::new(bucket, key), conditions).await,
        }
    }

    fn note_wal(&self, meta: &Result<&ObjectMeta, &OriginError>) {
        match meta {
            Ok(m) => self.stats.wal_read(Some(m)),
            Err(OriginError::NoSuchKey) => self.stats.wal_read(None),
            Err(_) => {}
        }
    }

    /// `Err(NoSuchKey)` when the replica deleted `key`.
    async fn check_not_deleted(&self, bucket: &str, key: &str) -> OriginResult<()> {
        match self.deleted.head_object(bucket, key, &Conditions::default()).await {
            Ok(_) => Err(OriginError::NoSuchKey),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// An object's configuration (its ACL, its tags) in the replica's view: of an object it wrote,
    /// the shared bucket's own ACL (an overlay object is the bucket owner's, written privately)
    /// and the tags its write gave it (a copy it keeps of a shared object carries none of the
    /// origin's);
    /// NoSuchKey for a key it deleted or a rewritten key it has no copy of (the primary's is never
    /// read); else the shared bucket's object's.
    pub(crate) async fn object_config(&self, bucket: &str, key: &str, sub: Subresource) -> OriginResult<Document> {
        self.seed(bucket).await?;
        match self.objects.head_object(bucket, key, &Conditions::default()).await {
            Ok(meta) if sub == Subresource::Tagging => return Ok(tags_document(&meta.headers.tags)),
            Ok(_) => return self.origin.get_config(bucket, None, sub).await,
            Err(e) if is_absent(&e) => self.check_not_deleted(bucket, key).await?,
            Err(e) => return Err(e),
        }
        match self.source(key) {
            Source::Own => Err(OriginError::NoSuchKey),
            Source::Live | Source::Shared => self.origin.get_config(bucket, Some(key), sub).await,
        }
    }

    /// A page of the replica's view: the shared bucket's page without the rewritten keys (but the
    /// WAL), merged with the overlay's objects and deletes.
    pub(crate) async fn list(&self, bucket: &str, q: &PageQuery) -> OriginResult<Page> {
        self.seed(bucket).await?;
        let query = ListQuery {
            prefix: (!q.prefix.is_empty()).then(|| q.prefix.clone()),
            delimiter: q.delimiter.clone(),
            max_keys: q.max_keys,
            start_after: q.origin_start_after(),
            continuation: None,
        };
        let page = self.origin.list_objects(bucket, &query).await?;
        let mut view: BTreeMap<String, Option<ListEntry>> = BTreeMap::new();
        for o in &page.objects {
            if self.source(&o.key) == Source::Own {
                view.insert(o.key.clone(), None);
            }
        }
        for d in self.all_local(&self.deleted, bucket, q).await? {
            view.insert(d.key, None);
        }
        for o in self.all_local(&self.objects, bucket, q).await? {
            view.insert(o.key.clone(), Some(o));
        }
        let dirty: Vec<DirtyKey> = view.into_iter().map(|(key, object)| DirtyKey { key, object }).collect();
        // A common prefix whose every key the replica deleted is gone from its view too.
        let hidden = listing::emptied_prefixes(self.origin.as_ref(), bucket, &page.common_prefixes, &dirty).await?;
        Ok(listing::merge(q, page, dirty, &hidden))
    }

    /// Every key of a local store under the page's prefix, after its resume position.
    async fn all_local(&self, store: &FsOrigin, bucket: &str, q: &PageQuery) -> OriginResult<Vec<ListEntry>> {
        let mut all = Vec::new();
        let mut query = ListQuery {
            prefix: (!q.prefix.is_empty()).then(|| q.prefix.clone()),
            delimiter: None,
            max_keys: 1000,
            start_after: q.after.clone(),
            continuation: None,
        };
        loop {
            let page = match store.list_objects(bucket, &query).await {
                Err(OriginError::NoSuchBucket) => return Ok(all),
                other => other?,
            };
            all.extend(page.objects);
            match page.next {
                Some(next) => query.continuation = Some(next),
                None => return Ok(all),
            }
        }
    }

    // ----- writes: into the overlay only -----

    /// A PUT (conditions judged against the overlay only).
    pub(crate) async fn put(&self, bucket: &str, key: &str, input: &PutInput) -> OriginResult<PutOutput> {
        self.seed(bucket).await?;
        self.ensure_local(bucket).await?;
        let _key = self.lock_key(bucket, key).await;
        let out = self.objects.put_object(bucket, key, input).await?;
        // Tests hold a PUT here, for a DELETE of its key to come meanwhile (replica.rs).
        crate::journal::pause_point_async("replica_put").await;
        self.deleted.delete_object(bucket, key, None).await?;
        self.stats.overlay_write("put", input.body.len());
        Ok(out)
    }

    /// A DELETE: the overlay's copy goes, and a marker hides the shared bucket's.
    pub(crate) async fn delete(&self, bucket: &str, key: &str) -> OriginResult<()> {
        self.seed(bucket).await?;
        self.ensure_local(bucket).await?;
        let _key = self.lock_key(bucket, key).await;
        if self.source(key) != Source::Own {
            let marker = PutInput {
                headers: ContentHeaders::default(),
                checksums: Checksums::default(),
                body: PutBody::Bytes(Bytes::new()),
                if_match: None,
                if_none_match: None,
                content_md5: None,
                extra_headers: Vec::new(),
            };
            self.deleted.put_object(bucket, key, &marker).await?;
        }
        self.objects.delete_object(bucket, key, None).await?;
        self.stats.overlay_write("delete", 0);
        Ok(())
    }

    /// Aborts the overlay's uploads begun before `cutoff`; returns how many.
    pub(crate) async fn expire_uploads(&self, cutoff: SystemTime) -> OriginResult<usize> {
        crate::multipart::abort_begun_before(&self.objects, cutoff, |_| Some(())).await
    }

    pub(crate) async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        self.seed(bucket).await?;
        self.ensure_local(bucket).await?;
        self.objects
            .create_multipart_upload(bucket, key, headers, &[], checksum)
            .await
    }

    pub(crate) async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> OriginResult<PutOutput> {
        self.ensure_local(bucket).await?;
        let out = self
            .objects
            .upload_part(bucket, key, upload_id, part_number, body, checksums)
            .await?;
        self.stats.overlay_write("upload_part", body.len());
        Ok(out)
    }

    pub(crate) async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        expected: &Expected,
    ) -> OriginResult<PutOutput> {
        self.ensure_local(bucket).await?;
        let _key = self.lock_key(bucket, key).await;
        let out = self
            .objects
            .complete_upload(bucket, key, upload_id, parts, expected)
            .await?;
        self.deleted.delete_object(bucket, key, None).await?;
        self.stats.overlay_write("complete_multipart_upload", 0);
        Ok(out)
    }

    pub(crate) async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        self.ensure_local(bucket).await?;
        self.objects.abort_multipart_upload(bucket, key, upload_id).await
    }

    pub(crate) async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        self.ensure_local(bucket).await?;
        self.objects.list_parts(bucket, key, upload_id).await
    }

    pub(crate) async fn upload_checksum(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> OriginResult<Option<MultipartChecksum>> {
        self.objects.upload_checksum(bucket, key, upload_id).await
    }

    pub(crate) async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        match self.objects.list_multipart_uploads(bucket, prefix).await {
            Err(OriginError::NoSuchBucket) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Creates the overlay's buckets named `bucket` (the shared bucket was checked first).
    async fn ensure_local(&self, bucket: &str) -> OriginResult<()> {
        if lock(&self.local_buckets).contains(bucket) {
            return Ok(());
        }
        for store in [&self.objects, &self.deleted] {
            match store.create_bucket(bucket).await {
                Ok(()) => {}
                Err(OriginError::Rejected { code, .. }) if code == "BucketAlreadyOwnedByYou" => {}
                Err(e) => return Err(e),
            }
        }
        lock(&self.local_buckets).insert(bucket.to_owned());
        Ok(())
    }

    // ----- seeding -----

    /// The first time the replica serves `bucket`: copies the primary's rewritten keys (its
    /// undo files; not its lock, not its root control file) into the overlay, as of one checkpoint (the
    /// control file unchanged from before the first copy to after the last), and records it. From
    /// then on the replica never reads the primary's copies of those keys.
    async fn seed(&self, bucket: &str) -> OriginResult<()> {
        if lock(&self.seeded).contains(bucket) {
            return Ok(());
        }
        let _one = self.seeding.lock().await;
        if lock(&self.seeded).contains(bucket) {
            return Ok(());
        }
        let marker = self.seeded_dir.join(format!("{bucket}.seeded"));
        if marker.exists() {
            lock(&self.seeded).insert(bucket.to_owned());
            return Ok(());
        }
        self.origin.head_bucket(bucket).await?;
        self.ensure_local(bucket).await?;
        for attempt in 1..=SEED_ATTEMPTS {
            let before = self.control_etag(bucket).await?;
            // Nothing pinned before the primary's first checkpoint: pinned at every request, the
            // primary's copies replaced the replica's own writes of those keys each time.
            let pinned = match before {
                Some(_) => self.pin_rewritten(bucket).await?,
                None => 0,
            };
            let after = self.control_etag(bucket).await?;
            if before.is_none() || after.is_none() {
                // No checkpoint of the primary yet (an empty bucket, or its first checkpoint under
                // way): nothing to hold as of one, and nothing recorded, so that the first read
                // after the primary's first checkpoint pins its keys. (Recorded with nothing
                // pinned, the replica never pinned them, and served their 404 for good.)
                tracing::debug!(bucket, "the primary has no checkpoint yet: the replica is not seeded");
                return Ok(());
            }
            if before == after {
                let record = serde_json::json!({
                    "control_etag": after,
                    "pinned": pinned,
                    "at": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                });
                crate::durable::write_file(&marker, record.to_string().as_bytes())?;
                lock(&self.seeded).insert(bucket.to_owned());
                tracing::info!(bucket, pinned, control = ?after, "replica seeded: rewritten keys pinned");
                return Ok(());
            }
            tracing::warn!(
                bucket,
                attempt,
                "the primary checkpointed while the replica pinned; pinning again"
            );
        }
        Err(OriginError::transient(format!(
            "the primary's {CONTROL_KEY} changed during each of {SEED_ATTEMPTS} seeding attempts"
        )))
    }

    async fn control_etag(&self, bucket: &str) -> OriginResult<Option<String>> {
        match self
            .origin
            .head_object(bucket, CONTROL_KEY, &Conditions::default())
            .await
        {
            Ok(meta) => Ok(Some(meta.etag)),
            Err(OriginError::NoSuchKey) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Copies every rewritten key but the lock and the root control file from the shared bucket
    /// into the overlay.
    async fn pin_rewritten(&self, bucket: &str) -> OriginResult<u64> {
        let mut prefixes: Vec<String> = self
            .rewritten
            .mutable
            .iter()
            .map(|g| g.as_str().split('*').next().unwrap_or_default().to_owned())
            .filter(|p| !p.starts_with(WAL_PREFIX))
            .collect();
        prefixes.sort();
        prefixes.dedup();
        let mut pinned = 0;
        for prefix in prefixes {
            let mut query = ListQuery {
                prefix: (!prefix.is_empty()).then(|| prefix.clone()),
                delimiter: None,
                max_keys: 1000,
                start_after: None,
                continuation: None,
            };
            loop {
                let page = self.origin.list_objects(bucket, &query).await?;
                for o in &page.objects {
                    if self.source(&o.key) == Source::Own && o.key != LOCK_KEY && o.key != CONTROL_KEY {
                        self.pin(bucket, &o.key).await?;
                        pinned += 1;
                    }
                }
                match page.next {
                    Some(next) => query.continuation = Some(next),
                    None => break,
                }
            }
        }
        Ok(pinned)
    }

    async fn pin(&self, bucket: &str, key: &str) -> OriginResult<()> {
        let got = match self.origin.get_object(bucket, key, None, &Conditions::default()).await {
            Ok(got) => got,
            // Deleted since it was listed: nothing to pin.
            Err(OriginError::NoSuchKey) => return Ok(()),
            Err(e) => return Err(e),
        };
        let temp = self.tmp.join(format!("pin-{}", ObjectKey::new(bucket, key).hash64()));
        let landed = spool(got.body, got.meta.size, &temp).await?;
        let input = PutInput {
            headers: got.meta.headers,
            checksums: got.meta.checksums,
            body: landed.body,
            if_match: None,
            if_none_match: None,
            content_md5: None,
            extra_headers: Vec::new(),
        };
        self.objects.put_object(bucket, key, &input).await?;
        self.stats.pinned.inc();
        Ok(())
    }
}
