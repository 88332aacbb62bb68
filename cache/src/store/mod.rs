//! `Store`: the engine's one door. Every object, listing, multipart and bucket call of the gateway
//! comes here, and read-your-writes holds inside it: a write is a version of the journal, durable
//! locally before it is acknowledged; reads see it at once; listings merge what is pending; a
//! request the origin must decide (a conditional PUT, a copy the origin makes, DeleteBucket) first
//! waits until the origin holds every earlier write it depends on.

mod buckets;
mod carried;
mod known;
mod multipart;
mod parts;
pub use parts::PartSpan;
mod warm;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use perch_policy::{Method, Prefetch, RESERVED_PREFIX, RewrittenKeys, WriteMode, is_reserved};
use prometheus_client::registry::Registry;

use crate::body::{PromisedDigest, spool, spool_into, spools_to_file};
use crate::error::{CacheError, StoreError, StoreResult};
use crate::journal::record::PartLayout;
use crate::journal::{Held, Journal, JournalEntry, JournalOpError, NewBody, NewVersion, WriteConfig, WriteStatus};
use crate::key::ObjectKey;
use crate::listing::{self, Page, PageQuery};
use crate::local::{Deciding, Local, LocalConfig, TempGuard, lock};
use crate::multipart::Multipart;
use crate::origin::read_only::ReadOnlyOrigin;
use crate::origin::{
    BucketInfo, ByteRange, ChecksumType, Checksums, Conditions, ContentHeaders, CopyInput, CopyOutput, ListQuery,
    MetadataDirective, ObjectMeta, Origin, OriginError, PutBody, PutInput, PutOutput, etag_matches,
};
use crate::prefetch::Prefetcher;
use crate::read::{CacheStatus, CachedGet, Reader, ReaderConfig};
use crate::replica::Replica;
use crate::uploader::Uploader;
use known::{KnownBuckets, Seen};

/// Origin pages a listing asks for at most to give a client one that is not empty.
const EMPTY_PAGES_MAX: u32 = 8;

/// How long `drop_version` waits for the upload of a version it gave up to end its attempt.
const GIVE_UP_WAIT: Duration = Duration::from_secs(5);

/// The policy's `cache = "pin"`, as the cache asks it (for reads: a pinned copy stays).
fn pin_rule(policy: &Arc<perch_policy::SharedPolicy>) -> crate::local::Pinned {
    let policy = policy.clone();
    crate::local::Pinned(Arc::new(move |okey: &ObjectKey| {
        policy.decide(okey.bucket(), okey.key(), Method::Get).cache == perch_policy::CacheClass::Pin
    }))
}

/// Settings of the store, with the defaults `perch serve` documents.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Perch's data dir: the cache under `cache/`, multipart uploads staged under `multipart/`.
    pub data_dir: PathBuf,
    /// Limit of the disk tier (`--cache-disk-bytes`); `None`: 80% of the free space at start plus
    /// what the cache already holds, at most 1 TiB.
    pub disk_bytes: Option<u64>,
    /// Free space kept on the data dir's filesystem (`--disk-reserve-bytes`).
    pub disk_reserve_bytes: u64,
    /// The cache's memory budget (`--cache-memory-bytes`, 256 MiB): the index's caches and the
    /// disk tier's eviction state, and the memory tier in what they leave.
    pub memory_bytes: u64,
    /// Objects up to this size also live in memory (1 MiB: an OrioleDB data part).
    pub memory_object_max: u64,
    /// How long a broken fill keeps resuming.
    pub retry_deadline: Duration,
    /// A range miss fetches the whole object in the background up to this size.
    pub background_fill_max: u64,
    /// The write-back journal and its uploader.
    pub write: WriteConfig,
    /// What is fetched before a client asks: listings a rule marks, parts read in order.
    pub prefetch: Prefetch,
    /// Bytes of prefetches queued or in flight at most.
    pub prefetch_bytes: u64,
    /// A read replica: the origin is only read (every write to it is refused in the process) and
    /// no uploader runs; its own writes stay in its overlay or are refused.
    pub replica: Option<ReplicaWrites>,
    /// Keys the primary rewrites in place: a replica pins them at seeding, never reads them live.
    pub rewritten: RewrittenKeys,
}

/// What a replica does with the writes it receives (docs/replicas.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaWrites {
    /// Kept in the overlay (`<data-dir>/overlay`), read back and listed, never uploaded; the keys
    /// the primary rewrites are pinned at seeding.
    Overlay,
    /// Refused before they reach the store; reads follow the shared bucket.
    Refuse,
}

pub struct Store {
    local: Arc<Local>,
    reader: Arc<Reader>,
    journal: Arc<Journal>,
    /// None on a replica: nothing is ever uploaded.
    _uploader: Option<Arc<Uploader>>,
    prefetcher: Arc<Prefetcher>,
    /// A replica's overlay and its rule of which source answers a key.
    replica: Option<Replica>,
    /// The origin with its retry layer.
    origin: Arc<dyn Origin>,
    /// The origin without it (the uploader's, and readiness probes').
    unretried_origin: Arc<dyn Origin>,
    multipart: Multipart,
    prefetch_bytes: u64,
    /// Set while a prewarm reads its hot sets; until when `ready` waits for a prewarm.
    prewarm_reading: AtomicBool,
    prewarm_until: Mutex<Option<std::time::Instant>>,
    /// When a readiness probe started with the process last found the origin answering, until
    /// one `/readyz` uses it (`adopt_origin_probe`); probes run one at a time.
    origin_probe: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
    /// Buckets the origin was seen to hold: a write to another bucket asks the origin first, so
    /// that a missing bucket is 404 NoSuchBucket rather than a write that can never be uploaded.
    buckets: KnownBuckets,
    /// What the origin was seen to take with a write, by bucket: storage classes, tags
    /// (`check_carried`).
    carried: Mutex<HashSet<(String, String)>>,
    /// Per bucket, a gate that writes hold shared from their bucket check to their commit, and
    /// DeleteBucket exclusively: no write is acknowledged into a bucket being deleted.
    bucket_gates: Mutex<std::collections::HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Part sizes of multipart objects learnt from the origin (`parts`).
    learnt_layouts: parts::LearntLayouts,
    /// Conditional PUTs answered 503 whose request may still have reached the origin (it held
    /// them past the retry deadline), by key: the body's MD5 and when (`answered_unsure`).
    unsure_puts: Mutex<HashMap<ObjectKey, (String, std::time::Instant, SystemTime)>>,
}

/// How long a conditional PUT answered 503 is remembered, and how many at most.
const UNSURE_PUT_KEPT: Duration = Duration::from_secs(3600);
const UNSURE_PUTS_MAX: usize = 1024;

/// Why Perch is not ready (`/readyz`): a prewarm is under way, or the origin does not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    #[error("prewarming from the hot set")]
    Prewarming,
    #[error("origin unreachable: no answer within 3 s")]
    NoAnswer,
    #[error("origin unreachable: {0}")]
    Origin(#[source] Arc<OriginError>),
    /// The task that asked the origin failed.
    #[error("origin unreachable: the probe stopped: {0}")]
    Probe(#[source] Arc<tokio::task::JoinError>),
}

/// Whether `origin` answers at all, with the buckets it listed (`None` when it refused to list
/// them): even a refusal (403 on ListBuckets with keys scoped to one bucket) proves it is there.
/// Only a transient fault, local I/O or a timeout (3 s) is "not ready".
pub async fn origin_answers(origin: &dyn Origin) -> Result<Option<Vec<BucketInfo>>, NotReady> {
    match tokio::time::timeout(Duration::from_secs(3), origin.list_buckets()).await {
        Err(_) => Err(NotReady::NoAnswer),
        Ok(Ok(buckets)) => Ok(Some(buckets)),
        Ok(Err(e)) if e.is_transient() || matches!(e, OriginError::Io(_)) => Err(NotReady::Origin(Arc::new(e))),
        Ok(Err(_)) => Ok(None),
    }
}

/// The largest object S3 copies in one CopyObject (and takes in one PUT): 5 GiB.
const COPY_SOURCE_MAX: u64 = 5 << 30;
impl Store {
    /// Opens the store under `cfg.data_dir` (index, blobs and journal survive restarts), replays
    /// the journal and starts the uploader and the cache's background work.
    ///
    /// `unretried_origin` is the origin without retries: the uploader retries by itself, for as long
    /// as it takes, and reports each fault as it happens.
    pub fn open(
        cfg: StoreConfig,
        mut origin: Arc<dyn Origin>,
        mut unretried_origin: Arc<dyn Origin>,
        mut registry: Option<&mut Registry>,
    ) -> Result<Arc<Store>, CacheError> {
        if cfg.replica.is_some() {
            origin = Arc::new(ReadOnlyOrigin(origin));
            unretried_origin = Arc::new(ReadOnlyOrigin(unretried_origin));
        }
        let opening = std::time::Instant::now();
        // The data dir's own name too: whoever made it may not have synced its parent.
        crate::durable::create_dirs(&cfg.data_dir)?;
        crate::durable::sync_parent(&cfg.data_dir)?;
        let dirs_ms = opening.elapsed().as_millis() as u64;
        let local = Local::open(
            LocalConfig {
                dir: cfg.data_dir.join("cache"),
                disk_bytes: cfg.disk_bytes,
                memory_bytes: cfg.memory_bytes,
                memory_object_max: cfg.memory_object_max,
                pinned: Some(pin_rule(&cfg.write.policy)),
                reserve_bytes: cfg.disk_reserve_bytes,
            },
            registry.as_deref_mut(),
        )?;
        let local = Arc::new(local);
        let index_ms = opening.elapsed().as_millis() as u64 - dirs_ms;
        let policy = cfg.write.policy.clone();
        let journal = Arc::new(Journal::open(cfg.write, local.clone(), registry.as_deref_mut())?);
        let journal_ms = opening.elapsed().as_millis() as u64 - dirs_ms - index_ms;
        if cfg.replica.is_some() {
            let pending = journal.status(None).dirty_objects;
            if pending > 0 {
                return Err(CacheError::PrimaryWritesPending { pending });
            }
        }
        let replica = if cfg.replica == Some(ReplicaWrites::Overlay) {
            Some(Replica::open(
                cfg.data_dir.join("overlay"),
                cfg.rewritten.clone(),
                origin.clone(),
                registry,
            )?)
        } else {
            None
        };
        let multipart = Multipart::open(&cfg.data_dir.join("multipart"))?;
        let buckets = KnownBuckets::open(cfg.data_dir.join("deleted-buckets"))?;
        let reader = Arc::new(Reader::new(
            ReaderConfig {
                policy,
                retry_deadline: cfg.retry_deadline,
                background_fill_max: cfg.background_fill_max,
            },
            local.clone(),
            origin.clone(),
            journal.clone(),
        ));
        let uploader = cfg
            .replica
            .is_none()
            .then(|| Uploader::start(journal.clone(), unretried_origin.clone()));
        let prefetcher = Prefetcher::start(reader.clone(), cfg.prefetch, cfg.prefetch_bytes);
        local.start();
        // Where a start's time goes (a wake waits for it).
        tracing::info!(
            ms = opening.elapsed().as_millis() as u64,
            dirs_ms,
            index_ms,
            journal_ms,
            "store opened"
        );
        Ok(Arc::new(Store {
            local,
            reader,
            journal,
            _uploader: uploader,
            prefetcher,
            replica,
            origin,
            unretried_origin,
            multipart,
            prefetch_bytes: cfg.prefetch_bytes,
            prewarm_reading: AtomicBool::new(false),
            prewarm_until: Mutex::new(None),
            origin_probe: Arc::new(tokio::sync::Mutex::new(None)),
            buckets,
            carried: Mutex::new(HashSet::new()),
            bucket_gates: Mutex::new(Default::default()),
            learnt_layouts: Default::default(),
            unsure_puts: Mutex::new(HashMap::new()),
        }))
    }

    // ----- objects -----

    /// GET: the newest local version or cached copy, else the origin's (kept for next time).
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> StoreResult<CachedGet> {
        let okey = ObjectKey::new(bucket, key);
        let whole = range.is_none();
        let mut got = match &self.replica {
            Some(r) => r.get(&self.reader, bucket, key, range, conditions).await?,
            None => self.reader.get(&okey, range, conditions).await?,
        };
        self.prefetcher.on_read(&okey, got.output.meta.size);
        if self.replica.is_none() && whole && self.prefetcher.names_files(&okey) {
            // A checksum list a primary's client reads names files worth fetching (a replica
            // reads through its overlay and never prefetches for a restore).
            let body = std::mem::replace(&mut got.output.body, Box::pin(futures::stream::empty()));
            got.output.body = self.prefetcher.watch_list(&okey, got.output.meta.size, body);
        }
        Ok(got)
    }

    /// HEAD: the cached metadata, or the origin's (a HEAD does not fill the cache).
    pub async fn head(
        &self,
        bucket: &str,
        key: &str,
        conditions: &Conditions,
    ) -> StoreResult<(ObjectMeta, CacheStatus)> {
        if let Some(r) = &self.replica {
            return Ok(r.head(&self.reader, bucket, key, conditions).await?);
        }
        Ok(self.reader.head(&ObjectKey::new(bucket, key), conditions).await?)
    }

    /// PUT of a verified body whose digest the front door computed. Without conditions, a version
    /// acknowledged once durable locally (or in the origin, for a write-through key); with
    /// `If-Match`/`If-None-Match`, the origin decides, once it holds every earlier write of the key.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        input: PutInput,
        digest: PromisedDigest,
    ) -> StoreResult<PutOutput> {
        if let Some(r) = &self.replica {
            self.ensure_bucket(bucket).await?;
            let digest = digest.wait().await?;
            let input = PutInput {
                content_md5: Some(aws_smithy_types::base64::encode(digest.md5())),
                ..input
            };
            return Ok(r.put(bucket, key, &input).await?);
        }
        let okey = ObjectKey::new(bucket, key);
        self.check_carried(
            bucket,
            input.headers.storage_class.as_deref(),
            !input.headers.tags.is_empty(),
        )
        .await?;
        if input.if_match.is_none() && input.if_none_match.is_none() {
            self.ensure_bucket(bucket).await?;
            // The ETag is the body's MD5, set by the commit: a large body's may still be computing.
            let meta = ObjectMeta {
                size: input.body.len(),
                etag: String::new(),
                last_modified: SystemTime::now(),
                headers: input.headers,
                checksums: input.checksums.clone(),
            };
            let etag = self.put_version(&okey, input.body, meta, true, digest, None).await?;
            return Ok(PutOutput {
                etag,
                checksums: input.checksums,
            });
        }
        let digest = digest.wait().await?;
        let held = self.journal.hold_commits(&[&okey]).await;
        // A version of the key acknowledged here and not yet uploaded goes up before this one:
        // a condition it already fails fails at once (If-None-Match: * on a key written here;
        // If-Match on a key deleted here, which the origin will answer 404), without waiting on
        // the origin for the upload.
        if let Ok(Some(pending)) = self.local.index.get(&okey)
            && pending.pending
            && pending.deleted
            && input.if_match.is_some()
        {
            return Err(OriginError::NoSuchKey.into());
        }
        if let Ok(Some(pending)) = self.local.index.get(&okey)
            && pending.pending
            && !pending.deleted
        {
            let etag = pending.meta.etag.as_str();
            let fails = input.if_none_match.as_deref().is_some_and(|n| etag_matches(n, etag))
                || input.if_match.as_deref().is_some_and(|m| !etag_matches(m, etag));
            if fails {
                return Err(OriginError::PreconditionFailed.into());
            }
        }
        self.settle_decided(&okey, Method::Put).await?;
        self.fence().await;
        let md5 = format!("\"{}\"", hex::encode(digest.md5()));
        let input = PutInput {
            content_md5: Some(aws_smithy_types::base64::encode(digest.md5())),
            if_match: input.if_match.map(|m| self.condition_at_origin(&okey, &m)),
            ..input
        };
        let checksums = input.checksums.clone();
        // The origin may hold a new body from here on, even if Perch dies before its answer:
        // the cached one goes first, durably, and no read keeps one until the answer.
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let sent = SystemTime::now();
        let out = self
            .decide(okey.clone(), held, move |origin| async move {
                origin.put_object(&b, &k, &input).await
            })
            .await;
        match out {
            Err(StoreError::Origin(e @ (OriginError::Unavailable { .. } | OriginError::Transient { .. }))) => {
                self.answered_unsure(&okey, md5, sent);
                Err(e.into())
            }
            // The same body sent again after a 503 (its client's retry) meets its own earlier
            // request, which the origin held and applied after that answer: if the origin holds
            // exactly this body, the write is this client's and succeeded (as a retry inside one
            // request is judged, `origin::retry`). Only bodies this Perch answered 503 for.
            Err(StoreError::Origin(OriginError::PreconditionFailed)) => {
                // Written before that earlier request was sent, the same body is another
                // writer's (OrioleDB's lock holds the same bytes whoever takes it).
                let Some(earlier) = self.was_answered_unsure(&okey, &md5) else {
                    return Err(OriginError::PreconditionFailed.into());
                };
                match self.origin.head_object(bucket, key, &Conditions::default()).await {
                    Ok(meta)
                        if crate::origin::same_etag(&meta.etag, &md5)
                            && crate::origin::written_since(meta.last_modified, earlier) =>
                    {
                        tracing::info!(
                            object = %okey,
                            "a conditional PUT answered 503 had reached the origin: its retry is its success"
                        );
                        Ok(PutOutput {
                            etag: meta.etag,
                            checksums,
                        })
                    }
                    _ => Err(OriginError::PreconditionFailed.into()),
                }
            }
            other => other,
        }
    }

    /// Remembers that a conditional PUT of `okey` with the body `md5` was answered 503 while its
    /// request may still reach the origin; `sent`: when it was sent.
    fn answered_unsure(&self, okey: &ObjectKey, md5: String, sent: SystemTime) {
        let mut unsure = lock(&self.unsure_puts);
        let now = std::time::Instant::now();
        unsure.retain(|_, (_, at, _)| now.duration_since(*at) < UNSURE_PUT_KEPT);
        if unsure.len() < UNSURE_PUTS_MAX || unsure.contains_key(okey) {
            unsure.insert(okey.clone(), (md5, now, sent));
        }
    }

    /// When a conditional PUT of `okey` with the body `md5` answered 503 lately was sent (and
    /// forgets it: one retry is judged so).
    fn was_answered_unsure(&self, okey: &ObjectKey, md5: &str) -> Option<SystemTime> {
        let mut unsure = lock(&self.unsure_puts);
        match unsure.get(okey) {
            Some((m, at, sent)) if m == md5 && at.elapsed() < UNSURE_PUT_KEPT => {
                let sent = *sent;
                unsure.remove(okey);
                Some(sent)
            }
            _ => None,
        }
    }

    /// DELETE: a version (a tombstone), acknowledged as its write mode says. With `if_match`
    /// (S3's `If-Match`), the origin decides, as for a conditional PUT: a pending version of the
    /// key that fails the condition fails it at once; otherwise, once the origin holds every
    /// write of the key, the DELETE goes to it directly and its answer is the answer.
    pub async fn delete(&self, bucket: &str, key: &str, if_match: Option<&str>) -> StoreResult<()> {
        self.ensure_bucket(bucket).await?;
        if let Some(r) = &self.replica {
            if if_match.is_some() {
                return Err(OriginError::rejected(
                    501,
                    "NotImplemented",
                    "A replica does not decide conditional deletes: its writes stay in its overlay.",
                )
                .into());
            }
            return Ok(r.delete(bucket, key).await?);
        }
        let okey = ObjectKey::new(bucket, key);
        let Some(if_match) = if_match else {
            let gate = self.bucket_gate(bucket);
            let _gate = gate.read().await;
            self.ensure_bucket(bucket).await?;
            let mode = self.journal.mode(Method::Delete, &okey);
            // Not committed (and so not read by others) while the lease is not ours to write.
            self.fence().await;
            let seq = self.journal.commit_delete(&okey, mode).await?;
            return self.acknowledge(seq, mode, true).await;
        };
        let held = self.journal.hold_commits(&[&okey]).await;
        // As for a conditional PUT: a pending version fails the condition at once, and so does a
        // pending delete (the origin will answer 404).
        if let Ok(Some(pending)) = self.local.index.get(&okey)
            && pending.pending
            && pending.deleted
        {
            return Err(OriginError::NoSuchKey.into());
        }
        if let Ok(Some(pending)) = self.local.index.get(&okey)
            && pending.pending
            && !pending.deleted
            && !etag_matches(if_match, pending.meta.etag.as_str())
        {
            return Err(OriginError::PreconditionFailed.into());
        }
        self.settle_decided(&okey, Method::Delete).await?;
        self.fence().await;
        let if_match = self.condition_at_origin(&okey, if_match);
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        self.decide(okey, held, move |origin| async move {
            origin.delete_object(&bucket, &key, Some(&if_match)).await
        })
        .await
    }

    /// CopyObject. A source with a version the origin does not have yet is copied locally into a
    /// new version of the destination; otherwise the origin copies, once it holds every write of
    /// both keys.
    pub async fn copy(&self, bucket: &str, key: &str, copy: CopyInput) -> StoreResult<CopyOutput> {
        let tagged = copy.tags.as_ref().is_some_and(|t| !t.is_empty());
        self.check_carried(bucket, copy.storage_class.as_deref(), tagged)
            .await?;
        let src = ObjectKey::new(&copy.src_bucket, &copy.src_key);
        if self.journal.has_pending(&src) {
            copy.check_not_onto_itself(bucket, key)?;
            return self.copy_locally(bucket, key, &src, copy).await;
        }
        let dst = ObjectKey::new(bucket, key);
        let held = self.journal.hold_commits(&[&src, &dst]).await;
        self.settle(&src, self.journal.cfg.wait_limit).await?;
        self.settle_decided(&dst, Method::Put).await?;
        self.fence().await;
        // As for a conditional PUT: the cached destination goes before the origin may change it.
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        self.decide(dst, held, move |origin| async move {
            origin.copy_object(&bucket, &key, &copy).await
        })
        .await
    }

    async fn copy_locally(&self, bucket: &str, key: &str, src: &ObjectKey, copy: CopyInput) -> StoreResult<CopyOutput> {
        self.ensure_bucket(bucket).await?;
        let source = self
            .reader
            .get(src, None, &copy.conditions)
            .await
            .map_err(|e| match e {
                OriginError::NotModified { .. } => OriginError::PreconditionFailed,
                other => other,
            })?;
        let src_meta = source.output.meta;
        // A copy made here goes up as one PUT: a source over S3's 5 GiB for one would be
        // acknowledged, then refused by the origin for ever. S3 refuses such a copy.
        if src_meta.size > COPY_SOURCE_MAX {
            return Err(OriginError::rejected(
                400,
                "InvalidRequest",
                format!(
                    "The specified copy source is larger than the maximum allowable size for a copy source: \
                     {COPY_SOURCE_MAX}"
                ),
            )
            .into());
        }
        let temp = self.local.blobs.temp_path();
        let landed = if spools_to_file(src_meta.size) {
            // A copy is a write: its body takes its room on the data dir's filesystem first, as a
            // PUT's spooled body does, waiting for it (clean entries evicted, uploads done) up to
            // `--dirty-wait-max`, then 503 SlowDown. A body kept in memory waits in the commit.
            let guard = TempGuard(temp.clone());
            let file = tokio::fs::File::create(&temp).await?;
            self.journal.allocate(file.as_fd(), 0, src_meta.size).await?;
            spool_into(source.output.body, src_meta.size, &temp, file, guard).await?
        } else {
            spool(source.output.body, src_meta.size, &temp).await?
        };
        let headers = ContentHeaders {
            storage_class: copy.storage_class,
            // The tags given (REPLACE), else the source's, whatever the metadata directive.
            tags: copy.tags.unwrap_or_else(|| src_meta.headers.tags.clone()),
            origin_tag_count: None,
            ..match copy.directive {
                MetadataDirective::Copy | MetadataDirective::Again => src_meta.headers,
                MetadataDirective::Replace(h) => h,
            }
        };
        // The source's tags with the headers given: they may not fit an upload together.
        self.check_uploadable(bucket, key, &headers)?;
        // The source's tags, taken by the origin in its bucket, perhaps not in this one.
        self.check_carried(bucket, None, !headers.tags.is_empty()).await?;
        // The checksum asked for, computed over the copy; else the source's, but a composite
        // (multipart) checksum, which describes the source's parts, not this single copy.
        let checksums = if let Some(algorithm) = copy.checksum_algorithm {
            let mut hasher = crate::origin::checksum::Hasher::new(algorithm);
            let mut stream = landed.body.stream().await?;
            while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                hasher.update(&chunk?);
            }
            Checksums::only(algorithm, hasher.finish_base64())
        } else if src_meta.checksums.checksum_type() == Some(ChecksumType::Composite) {
            Checksums::default()
        } else {
            src_meta.checksums
        };
        let etag = format!("\"{}\"", landed.digest.md5_hex());
        let now = SystemTime::now();
        let meta = ObjectMeta {
            size: landed.body.len(),
            etag: etag.clone(),
            last_modified: now,
            headers,
            checksums: checksums.clone(),
        };
        let okey = ObjectKey::new(bucket, key);
        self.put_version(
            &okey,
            landed.body,
            meta,
            false,
            PromisedDigest::Ready(landed.digest),
            None,
        )
        .await?;
        Ok(CopyOutput {
            etag,
            last_modified: now,
            checksums,
        })
    }

    /// One page of a listing as clients see it: merged with the writes not yet uploaded (or, on
    /// a replica, with its overlay), without Perch's own prefix. A page that ends inside that
    /// prefix goes on after it, so that no page boundary (NextMarker, continuation token) names
    /// a key under it and no page is empty but truncated because of it.
    pub async fn list(&self, bucket: &str, q: &PageQuery) -> StoreResult<Page> {
        let mut page = self.list_merged(bucket, q).await?;
        // An origin page whose every name is deleted here merges to nothing: the next one is
        // asked at once (a few times), so that a client rarely sees an empty truncated page.
        let mut asked = 1;
        while page.objects.is_empty()
            && page.common_prefixes.is_empty()
            && q.max_keys > 0
            && asked < EMPTY_PAGES_MAX
            && let Some(after) = page.next_after.take()
        {
            let next = PageQuery {
                after: Some(after),
                ..q.clone()
            };
            page = self.list_merged(bucket, &next).await?;
            asked += 1;
        }
        hide_reserved(&mut page);
        if page.next_after.as_deref().is_some_and(is_reserved) {
            let shown = page.objects.len() + page.common_prefixes.len();
            if shown >= q.max_keys {
                // max-keys 0 (otherwise a hidden name took a place on the page).
                page.next_after = last_name(&page).or_else(|| q.after.clone());
            } else {
                // Past every name under the prefix, one more page holds none of them.
                let rest = PageQuery {
                    after: Some(format!("{RESERVED_PREFIX}\u{10FFFF}")),
                    max_keys: q.max_keys - shown,
                    ..q.clone()
                };
                let mut more = self.list_merged(bucket, &rest).await?;
                hide_reserved(&mut more);
                page.objects.append(&mut more.objects);
                page.common_prefixes.append(&mut more.common_prefixes);
                page.next_after = more.next_after;
            }
        }
        if self.replica.is_none() {
            let listed: Vec<(String, u64)> = page.objects.iter().map(|o| (o.key.clone(), o.size)).collect();
            self.prefetcher.on_list(bucket, &q.prefix, &listed);
        }
        Ok(page)
    }

    /// One page of the merged listing, Perch's own prefix included.
    async fn list_merged(&self, bucket: &str, q: &PageQuery) -> StoreResult<Page> {
        if let Some(r) = &self.replica {
            return Ok(r.list(bucket, q).await?);
        }
        let query = ListQuery {
            prefix: (!q.prefix.is_empty()).then(|| q.prefix.clone()),
            delimiter: q.delimiter.clone(),
            max_keys: q.max_keys,
            start_after: q.origin_start_after(),
            continuation: None,
        };
        // Pending versions before and after the origin's page: a version uploaded (and so no
        // longer pending) while the page was made may be missing from the page; it still counts.
        let before = self.journal.dirty_keys(bucket, &q.prefix);
        let page = self.origin.list_objects(bucket, &query).await?;
        let dirty = listing::newest(before, self.journal.dirty_keys(bucket, &q.prefix));
        let hidden = listing::emptied_prefixes(self.origin.as_ref(), bucket, &page.common_prefixes, &dirty).await?;
        Ok(listing::merge(q, page, dirty, &hidden))
    }

    /// Allocates `len` bytes of `file`, a request body about to be spooled under the data dir,
    /// so that writing it cannot fail for want of space: while the filesystem is full, clean
    /// cache entries are evicted for it, or it waits for uploads to free room, up to
    /// `--dirty-wait-max` (then `StoreError::NoRoom`).
    pub async fn allocate(&self, file: std::os::fd::BorrowedFd<'_>, len: u64) -> StoreResult<()> {
        self.journal.allocate(file, 0, len).await
    }

    /// `allocate`, of the `len` bytes of `file` from byte `at`: the next stretch of a body of no
    /// declared length, allocated as it grows.
    pub async fn allocate_more(&self, file: std::os::fd::BorrowedFd<'_>, at: u64, len: u64) -> StoreResult<()> {
        self.journal.allocate(file, at, len).await
    }

    // ----- operations -----

    /// The write-back backlog; `upto`: also count the versions at or below that sequence number.
    pub fn write_status(&self, upto: Option<u64>) -> WriteStatus {
        let mut st = self.journal.status(upto);
        // A replica never uploads, and a primary with nothing to upload sees an outage only on
        // its reads: the origin's own last fault counts too.
        st.origin_fault = st.origin_fault.or_else(|| self.origin.fault());
        st
    }

    /// The oldest `limit` versions not yet in the origin (`perch journal list`).
    pub fn journal(&self, limit: usize) -> Vec<JournalEntry> {
        self.journal.list(limit)
    }

    /// Tries a version the origin refused again (`perch journal retry`).
    pub fn retry_version(&self, seq: u64) -> Result<(), JournalOpError> {
        self.journal.retry(seq)
    }

    /// Tries again every version the origin refused with an answer (a policy reload may have
    /// mended what it refused): how many.
    pub fn retry_refused_by_origin(&self) -> usize {
        self.journal.retry_refused_by_origin()
    }

    /// Drops a version the origin refused, or one tried again through faults (given up first):
    /// its write is lost (`perch journal drop`).
    pub async fn drop_version(&self, seq: u64) -> Result<(), JournalOpError> {
        if self.journal.give_up(seq)? {
            // Refused by its upload before the next attempt: at once while it waits to try again,
            // else once the attempt under way ends.
            let deadline = std::time::Instant::now() + GIVE_UP_WAIT;
            while let Some(fault) = self.journal.giving_up(seq) {
                if std::time::Instant::now() >= deadline {
                    return Err(JournalOpError::GivingUp(seq, fault));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let okey = self.journal.drop_version(seq)?;
        tracing::warn!(seq, object = %okey, "a refused version was dropped by an operator: that write is lost");
        Ok(())
    }

    /// Brings the gauges up to date (before metrics are rendered).
    pub fn refresh_gauges(&self) {
        self.local.refresh_gauges();
        self.journal.refresh();
    }

    /// Whether the origin answers at all: even a refusal (403 on ListBuckets with keys scoped to
    /// one bucket) proves it is there. Only a transient fault, local I/O or a timeout is "not ready".
    pub async fn origin_ready(&self) -> Result<(), NotReady> {
        origin_answers(self.unretried_origin.as_ref()).await.map(|_| ())
    }

    /// A clean stop: prefetches still queued are dropped, the index is flushed so that the next
    /// start has nothing to replay.
    pub fn close(&self) {
        self.prefetcher.cancel();
        self.local.close();
    }

    // ----- inside -----

    /// Waits until this Perch holds the bucket's lease with no gap since its last renewal (at
    /// once, as a rule); never returns once the lease is lost (the process exits). Before a
    /// commit (no other request reads a version committed while the lease is not writable) and
    /// again before its acknowledgement (the commit's syncs take time).
    async fn fence(&self) {
        if let Some(lease) = &self.journal.cfg.lease {
            lease.writable().await;
        }
    }

    /// Sends `calls`, which change the bucket at the origin, under the lease: after `fence`, and
    /// each of their retries after it again (`origin::retry::fenced`).
    async fn fenced<F: Future>(&self, calls: F) -> F::Output {
        self.fence().await;
        crate::origin::retry::fenced(self.journal.cfg.lease.clone(), calls).await
    }

    /// `bucket`'s gate (`bucket_gates`).
    fn bucket_gate(&self, bucket: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut gates = lock(&self.bucket_gates);
        match gates.get(bucket) {
            Some(gate) => gate.clone(),
            None => gates.entry(bucket.to_owned()).or_default().clone(),
        }
    }

    /// Checks (once per bucket) that the origin has `bucket` before a write is committed.
    pub async fn ensure_bucket(&self, bucket: &str) -> StoreResult<()> {
        loop {
            if self.buckets.holds(bucket) {
                return Ok(());
            }
            let since = self.buckets.deletes(bucket);
            // Objects or writes of the bucket held here prove it existed at the origin, unless a
            // DeleteBucket was sent through Perch since (`KnownBuckets`).
            if self.buckets.marked(bucket) || !self.local.index.has_bucket(bucket).unwrap_or(false) {
                self.origin.head_bucket(bucket).await?;
            }
            match self.buckets.seen(bucket, since).await {
                Seen::Taken => return Ok(()),
                // Not under the bucket's gate, then: a write asks again under it, after the
                // DeleteBucket.
                Seen::Deleting => return Ok(()),
                // A DeleteBucket was sent or answered meanwhile: asked again.
                Seen::Stale => {}
            }
        }
    }

    /// A client's `If-Match` as the origin must read it, once `okey` has no write left to upload:
    /// the ETag Perch gave for a copy the origin names otherwise (`Entry::origin_etag`) becomes
    /// the origin's.
    fn condition_at_origin(&self, okey: &ObjectKey, if_match: &str) -> String {
        match self.local.index.get(okey) {
            Ok(Some(e))
                if !e.pending
                    && e.origin_etag.is_some()
                    && !if_match.trim().starts_with('*')
                    && etag_matches(if_match, &e.meta.etag) =>
            {
                e.etag_at_origin().to_owned()
            }
            _ => if_match.to_owned(),
        }
    }

    /// Sends a request the origin decides for `okey` (a conditional PUT or DELETE, a copy the
    /// origin makes) and answers what the origin answers. Every copy of `okey` here goes first,
    /// durably (`Local::invalidate`); if it cannot go, nothing is sent. From then until the
    /// origin's answer no fill keeps a copy (`Deciding`), and no write of the keys `held` holds
    /// is committed. The request runs on its own task, to its end even if the client goes, and
    /// both last until then: the origin may apply it whenever it arrives, and a fill kept, or a
    /// write acknowledged, after a cut-short request's end would be undone by it for good.
    async fn decide<T, F, Fut>(&self, okey: ObjectKey, held: Held, request: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Origin>) -> Fut,
        Fut: Future<Output = Result<T, OriginError>> + Send + 'static,
    {
        let local = self.local.clone();
        let limit = self.journal.cfg.wait_limit;
        let deciding = self
            .local
            .blocking(move |l| {
                let deciding = Deciding::new(local, okey.clone());
                // On a full disk the index refuses the drop: wait for room, as a commit does.
                let deadline = Instant::now() + limit;
                loop {
                    match l.invalidate(&okey) {
                        Ok(()) => return Ok(deciding),
                        Err(e) if e.is_no_space() && Instant::now() < deadline => {
                            l.make_room_soon();
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(e) => return Err(e),
                    }
                }
            })
            .await??;
        // Each retry under the lease, as the first attempt (which its caller fenced).
        let request = crate::origin::retry::fenced(self.journal.cfg.lease.clone(), request(self.origin.clone()));
        to_its_end(request, held, Some(deciding)).await
    }

    /// The longest a request waits for the origin (`--origin-retry-deadline`): for the pending
    /// writes it must come after, and for the origin's answer.
    pub fn wait_limit(&self) -> Duration {
        self.journal.cfg.wait_limit
    }

    /// `settle` for a request the origin decides that writes `okey` (`method`): for a key whose
    /// writes are barriers, once the origin holds every write before it too, as the barrier's own
    /// upload would (the lock's release with `If-Match` went ahead of the checkpoint's data).
    async fn settle_decided(&self, okey: &ObjectKey, method: Method) -> StoreResult<()> {
        let limit = self.journal.cfg.wait_limit;
        if self.journal.mode(method, okey) == WriteMode::Barrier {
            self.journal.wait_all_in_origin(limit).await?;
        }
        self.settle(okey, limit).await
    }

    /// Waits until `okey` has no write left to upload, and makes their releases durable, so that
    /// a request the origin must decide sees every earlier write, and no replay after a power cut
    /// uploads one of them again over its result. The caller holds the key's commits back.
    async fn settle(&self, okey: &ObjectKey, limit: Duration) -> StoreResult<()> {
        self.journal.wait_clean(okey, limit).await?;
        Ok(self.local.blocking(Local::sync_releases).await??)
    }

    /// Waits until the origin holds every write to `bucket` made so far (and their releases are
    /// durable): what the origin decides next sees them all.
    async fn settle_bucket(&self, bucket: &str, limit: Duration) -> StoreResult<()> {
        self.journal.wait_bucket_clean(bucket, limit).await?;
        Ok(self.local.blocking(Local::sync_releases).await??)
    }

    /// Refuses headers for `key` that its upload could not carry, with what the policy adds to
    /// them (`ContentHeaders::check_uploadable`): acknowledged, the origin would refuse them for good.
    pub fn check_uploadable(&self, bucket: &str, key: &str, headers: &ContentHeaders) -> StoreResult<()> {
        let decision = self.journal.cfg.policy.decide(bucket, key, Method::Put);
        Ok(headers.check_uploadable(&decision.upload_headers)?)
    }

    /// Commits a verified body as a PUT version (with its part layout when it is a completed
    /// multipart upload) and acknowledges it as its write mode says; returns its ETag (`meta`'s,
    /// or its MD5's when `etag_is_md5`).
    async fn put_version(
        &self,
        okey: &ObjectKey,
        body: PutBody,
        meta: ObjectMeta,
        etag_is_md5: bool,
        digest: PromisedDigest,
        parts: Option<Vec<PartLayout>>,
    ) -> StoreResult<String> {
        let body = match body {
            PutBody::Bytes(b) => NewBody::Bytes(b),
            PutBody::File { path, .. } => NewBody::File(path),
            // Only the uploader makes these, for the origin.
            PutBody::Blob(_) => {
                return Err(crate::error::StoreError::from(std::io::Error::other(
                    "a blob range is an upload's body, never a new version's",
                )));
            }
        };
        // The bucket may have been deleted since the write checked it: checked again under its
        // gate, held until the version is committed (and, written through, confirmed).
        let gate = self.bucket_gate(okey.bucket());
        let _gate = gate.read().await;
        self.ensure_bucket(okey.bucket()).await?;
        let mode = self.journal.mode(Method::Put, okey);
        // A completed multipart upload's parts went into its version: dropped, a retried
        // completion would find no upload (on S3 a failed completion leaves the upload).
        let droppable = parts.is_none();
        let version = NewVersion {
            body,
            meta,
            etag_is_md5,
            digest,
            parts,
        };
        // Not committed (and so not read by others) while the lease is not ours to write: a
        // version committed and then held unacknowledged would be read, and could be discarded
        // with a lost lease. `acknowledge` checks again after the commit.
        self.fence().await;
        let (seq, etag) = self.journal.commit_put(okey, version, mode).await?;
        self.acknowledge(seq, mode, droppable).await?;
        Ok(etag)
    }

    /// After a commit: a write-through version (or a barrier under `--strict-barriers`) is
    /// acknowledged only once the origin has it.
    /// `droppable`: a refusal before the answer drops the version (see below); else it is kept,
    /// refused, as an acknowledged one would be.
    async fn acknowledge(&self, seq: u64, mode: WriteMode, droppable: bool) -> StoreResult<()> {
        self.fence().await;
        let cfg = &self.journal.cfg;
        if mode == WriteMode::WriteThrough || (mode == WriteMode::Barrier && cfg.strict_barriers) {
            match self.journal.wait_confirmed(seq, cfg.wait_limit).await {
                // The origin refused the version for good before its answer, which is therefore
                // not an acknowledgement: the version goes, as if never written, and the client
                // hears what the origin said (it used to stay, served and listed, while the client
                // got a 500 and the operator an unhealthy Perch). The older versions of its key
                // were all uploaded before it started (never skipped for it), so what the key
                // reads after the drop is what the origin holds.
                Err(StoreError::Refused {
                    seq: refused,
                    answer: Some((status, code, message)),
                    error,
                }) if refused == seq && droppable => {
                    let journal = self.journal.clone();
                    match tokio::task::spawn_blocking(move || journal.drop_version(seq)).await {
                        Ok(Ok(okey)) => tracing::warn!(
                            seq,
                            object = %okey,
                            status,
                            code,
                            "the origin refused a write-through version before its answer: not kept, the client is told"
                        ),
                        // Still in the journal (it may go up at the next start): not the origin's
                        // refusal, which would say the write is not there.
                        failed => {
                            tracing::warn!(seq, outcome = ?failed.map(|r| r.map(|_| ())), "cannot drop a refused write-through version");
                            return Err(StoreError::Refused {
                                seq,
                                error,
                                answer: Some((status, code, message)),
                            });
                        }
                    }
                    return Err(OriginError::Rejected { status, code, message }.into());
                }
                other => other?,
            }
        }
        Ok(())
    }
}

/// Drops the names under Perch's own prefix from a page.
fn hide_reserved(page: &mut Page) {
    page.objects.retain(|o| !is_reserved(&o.key));
    page.common_prefixes.retain(|cp| !is_reserved(cp));
}

/// The last name a page shows (a key or a common prefix).
fn last_name(page: &Page) -> Option<String> {
    let key = page.objects.last().map(|o| o.key.as_str());
    let prefix = page.common_prefixes.last().map(String::as_str);
    key.max(prefix).map(str::to_owned)
}

/// Runs an origin request on its own task to its end, and only then ends `deciding` and drops
/// `held` (what it keeps from fills and commits of its keys): a client that goes ends neither early,
/// for the origin may apply the request whenever it arrives.
async fn to_its_end<T: Send + 'static>(
    request: impl Future<Output = Result<T, OriginError>> + Send + 'static,
    held: Held,
    deciding: Option<Deciding>,
) -> StoreResult<T> {
    let task = tokio::spawn(async move {
        let out = request.await;
        if let Some(deciding) = deciding {
            deciding.end().await;
        }
        drop(held);
        out
    });
    Ok(joined(task).await??)
}

/// What a task a request spawned to run to its end gave back (a panic in it, an I/O error).
async fn joined<T>(task: tokio::task::JoinHandle<T>) -> StoreResult<T> {
    task.await.map_err(|e| CacheError::Io(std::io::Error::other(e)).into())
}
