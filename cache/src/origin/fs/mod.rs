//! `FsOrigin`: the embedded origin, which keeps buckets and objects in a local directory.
//! One file per object, named by the SHA-256 of its key, holding a header (key and metadata) then the body.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

mod checks;
mod config;
mod file;
mod list;
mod multipart;

use checks::*;
use file::*;
use list::*;

use super::checksum::{self, Hasher};
use super::{
    BucketInfo, BucketOwner, ByteRange, ByteStream, ChecksumAlgorithm, ChecksumType, Checksums, CompletedPart,
    Conditions, ContentHeaders, CopyInput, CopyOutput, Document, Expected, GetOutput, ListEntry, ListPage, ListQuery,
    MetadataDirective, MultipartChecksum, ObjectMeta, Origin, OriginError, OriginResult, PartHead, PartInfo, PutBody,
    PutInput, PutOutput, Subresource, UploadInfo, is_multipart_etag,
};

const MAX_KEY_LEN: usize = 1024;
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_NUMBER: i32 = 10_000;
const STREAM_CHUNK: usize = 256 * 1024;

const TMP_DIR: &str = ".tmp";
const UPLOADS_DIR: &str = ".uploads";
const BUCKET_META: &str = ".bucket";

#[derive(Debug, Serialize, Deserialize)]
struct BucketMeta {
    created: SystemTime,
}

struct Bucket {
    dir: PathBuf,
    created: SystemTime,
    /// Every object of the bucket, by key, for ordered listings. Changed only under `write`.
    index: RwLock<BTreeMap<String, ListEntry>>,
    /// Held across the check and the rename of every write, so that conditional writes are atomic.
    write: tokio::sync::Mutex<()>,
    /// Set (under `write`) when the bucket is deleted.
    gone: AtomicBool,
}

impl Bucket {
    fn index(&self) -> RwLockReadGuard<'_, BTreeMap<String, ListEntry>> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, ListEntry>> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn check_alive(&self) -> OriginResult<()> {
        if self.gone.load(Ordering::SeqCst) {
            Err(OriginError::NoSuchBucket)
        } else {
            Ok(())
        }
    }
}

/// An origin kept in a local directory: `<root>/<bucket>/<2 hex>/<sha256 hex of key>`,
/// with temporary files in `<root>/.tmp/` and multipart uploads in `<root>/.uploads/<id>/`.
pub struct FsOrigin {
    root: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
    buckets: RwLock<BTreeMap<String, Arc<Bucket>>>,
    /// Serialises bucket creation and deletion.
    bucket_ops: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for FsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsOrigin")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl FsOrigin {
    /// Opens (creating it if absent) the directory `root`, removes temporary files a crash left behind,
    /// and reads the header of every object to build the listing index.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<FsOrigin> {
        let root = root.into();
        crate::durable::create_dirs(&root)?;
        let tmp = root.join(TMP_DIR);
        crate::durable::create_dirs(&tmp)?;
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            tracing::debug!(path = %path.display(), "removed a leftover temporary file");
        }
        let uploads = root.join(UPLOADS_DIR);
        crate::durable::create_dirs(&uploads)?;
        // An upload's directory is renamed in whole with its description (`create_upload`): one
        // without it is what a removal cut short left (before `discard_upload_dir`), parts only.
        for entry in std::fs::read_dir(&uploads)? {
            let path = entry?.path();
            if path.is_dir() && !path.join(multipart::UPLOAD_META).exists() {
                // Only space: a failure is no reason not to open.
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed the parts of an upload no longer described")
                    }
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "cannot remove the parts of an upload no longer described")
                    }
                }
            }
        }

        let mut buckets = BTreeMap::new();
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_bucket(&name).is_err() || !entry.file_type()?.is_dir() {
                continue;
            }
            let bucket = load_bucket(&entry.path())?;
            buckets.insert(name, Arc::new(bucket));
        }
        Ok(FsOrigin {
            root,
            tmp,
            uploads,
            buckets: RwLock::new(buckets),
            bucket_ops: tokio::sync::Mutex::new(()),
        })
    }

    /// Removes every object of every bucket (not uploads): for a directory whose objects live
    /// only within one call (Perch's multipart staging area), what a kill left. Returns how many
    /// went, and the first failure: one that cannot go does not keep the others.
    pub(crate) fn remove_every_object(&self) -> (usize, Option<io::Error>) {
        let buckets: Vec<Arc<Bucket>> = self
            .buckets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let (mut removed, mut failed) = (0, None);
        for b in buckets {
            let keys: Vec<String> = b.index().keys().cloned().collect();
            for key in keys {
                let (dir, path) = object_location(&b.dir, &key);
                let gone = match std::fs::remove_file(&path) {
                    Ok(()) => sync_dir(&dir),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                };
                match gone {
                    Ok(()) => {
                        b.index_mut().remove(&key);
                        removed += 1;
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        (removed, failed)
    }

    /// The directory this origin keeps its data in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn bucket(&self, name: &str) -> OriginResult<Arc<Bucket>> {
        validate_bucket(name)?;
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        buckets.get(name).cloned().ok_or(OriginError::NoSuchBucket)
    }

    /// Opens an object's file, positioned at the start of its body.
    async fn open_object(&self, bucket: &str, key: &str) -> OriginResult<(std::fs::File, ObjectMeta, u64)> {
        let (file, header, offset) = self.open_stored_object(bucket, key).await?;
        Ok((file, header.meta, offset))
    }

    /// `open_object`, with the object's whole header.
    async fn open_stored_object(&self, bucket: &str, key: &str) -> OriginResult<(std::fs::File, StoredHeader, u64)> {
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        let (_, path) = object_location(&b.dir, key);
        let key = key.to_owned();
        let opened = blocking(move || open_stored(&path, Some(&key))).await?;
        opened.ok_or(OriginError::NoSuchKey)
    }

    /// Moves a finished temporary file into place as `key` and updates the index.
    /// The caller holds `b.write` and has checked that the bucket is alive.
    async fn commit(&self, b: &Bucket, key: &str, temp: TempFile, meta: &ObjectMeta) -> OriginResult<()> {
        let (dir, path) = object_location(&b.dir, key);
        let bucket_dir = b.dir.clone();
        let temp_path = temp.path.clone();
        let fan_dir = dir.clone();
        blocking(move || {
            if !fan_dir.is_dir() {
                match std::fs::create_dir(&fan_dir) {
                    Ok(()) => sync_dir(&bucket_dir)?,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            std::fs::rename(&temp_path, &path)
        })
        .await?;
        temp.disarm();
        // The object is in place: the index follows it even if the sync below fails.
        b.index_mut().insert(key.to_owned(), list_entry(key, meta));
        blocking(move || sync_dir(&dir)).await?;
        Ok(())
    }

    /// A writer of a new file in `.tmp`; `hash`: compute the MD5 ETag; `checksum`: compute that checksum too.
    async fn new_writer(
        &self,
        placeholder: &StoredHeader,
        hash: bool,
        checksum: Option<ChecksumAlgorithm>,
    ) -> OriginResult<ObjectWriter> {
        Ok(ObjectWriter::begin(&self.tmp, placeholder, hash, checksum).await?)
    }
}

#[async_trait]
impl Origin for FsOrigin {
    fn kind(&self) -> &'static str {
        "fs"
    }

    async fn list_buckets(&self) -> OriginResult<Vec<BucketInfo>> {
        let buckets = self.buckets.read().unwrap_or_else(|e| e.into_inner());
        Ok(buckets
            .iter()
            .map(|(name, b)| BucketInfo {
                name: name.clone(),
                created: b.created,
                owner: Some(BucketOwner {
                    id: config::OWNER_ID.to_owned(),
                    display_name: Some(config::OWNER_NAME.to_owned()),
                }),
            })
            .collect())
    }

    async fn create_bucket(&self, bucket: &str) -> OriginResult<()> {
        validate_bucket(bucket)?;
        let _ops = self.bucket_ops.lock().await;
        if self.bucket(bucket).is_ok() {
            return Err(OriginError::rejected(
                409,
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already own it.",
            ));
        }
        let dir = self.root.join(bucket);
        if tokio::fs::symlink_metadata(&dir).await.is_ok() {
            return Err(OriginError::rejected(
                409,
                "BucketAlreadyExists",
                "A file of that name is in the way of the bucket's directory.",
            ));
        }
        let created = now_secs();
        let json = serde_json::to_vec(&BucketMeta { created }).map_err(io::Error::other)?;
        let staging = self.tmp.join(format!("bucket-{}", new_id()));
        let root = self.root.clone();
        let target = dir.clone();
        blocking(move || {
            std::fs::create_dir(&staging)?;
            write_durable(&staging.join(BUCKET_META), &json)?;
            sync_dir(&staging)?;
            std::fs::rename(&staging, &target)?;
            sync_dir(&root)
        })
        .await?;
        let b = Bucket {
            dir,
            created,
            index: RwLock::new(BTreeMap::new()),
            write: tokio::sync::Mutex::new(()),
            gone: AtomicBool::new(false),
        };
        self.buckets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bucket.to_owned(), Arc::new(b));
        Ok(())
    }

    async fn head_bucket(&self, bucket: &str) -> OriginResult<Option<String>> {
        // A directory has no regions; its GetBucketLocation answers none, which is us-east-1.
        self.bucket(bucket).map(|_| Some("us-east-1".to_owned()))
    }

    async fn delete_bucket(&self, bucket: &str) -> OriginResult<()> {
        let _ops = self.bucket_ops.lock().await;
        let b = self.bucket(bucket)?;
        {
            let _w = b.write.lock().await;
            if !b.index().is_empty() {
                return Err(OriginError::rejected(
                    409,
                    "BucketNotEmpty",
                    "The bucket you tried to delete is not empty",
                ));
            }
            let trash = self.tmp.join(format!("deleted-{}", new_id()));
            let dir = b.dir.clone();
            let root = self.root.clone();
            let moved = trash.clone();
            blocking(move || {
                std::fs::rename(&dir, &moved)?;
                sync_dir(&root)
            })
            .await?;
            b.gone.store(true, Ordering::SeqCst);
            self.buckets.write().unwrap_or_else(|e| e.into_inner()).remove(bucket);
            if let Err(e) = tokio::fs::remove_dir_all(&trash).await {
                tracing::warn!(path = %trash.display(), error = %e, "could not remove a deleted bucket's directory");
            }
        }
        // Uploads in progress into the bucket can never complete now.
        for (id, meta) in self.scan_uploads().await? {
            if meta.bucket == bucket {
                let dir = self.uploads.join(&id);
                if let Err(e) = self.discard_upload_dir(&id, dir).await {
                    tracing::warn!(upload = %id, error = %e, "could not remove an upload of a deleted bucket");
                }
            }
        }
        Ok(())
    }

    async fn head_object(&self, bucket: &str, key: &str, conditions: &Conditions) -> OriginResult<ObjectMeta> {
        let (_, meta, _) = self.open_object(bucket, key).await?;
        conditions.check(&meta)?;
        Ok(meta)
    }

    async fn head_part(&self, bucket: &str, key: &str, part: u32) -> OriginResult<PartHead> {
        let (_, header, _) = self.open_stored_object(bucket, key).await?;
        let meta = header.meta;
        let sizes = if header.parts.is_empty() {
            if is_multipart_etag(&meta.etag) {
                // Completed by a Perch that did not keep part sizes yet.
                return Err(OriginError::rejected(
                    501,
                    "NotImplemented",
                    "The part sizes of this object were not kept.",
                ));
            }
            vec![meta.size]
        } else {
            header.parts
        };
        let size = usize::try_from(part)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| sizes.get(i))
            .copied()
            .ok_or_else(|| {
                OriginError::rejected(416, "InvalidPartNumber", "The requested partnumber is not satisfiable")
            })?;
        Ok(PartHead {
            size,
            parts_count: is_multipart_etag(&meta.etag).then_some(sizes.len() as u32),
            etag: meta.etag,
        })
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<GetOutput> {
        let (mut file, meta, offset) = self.open_object(bucket, key).await?;
        conditions.check(&meta)?;
        let span = match range {
            Some(r) => r.resolve(meta.size)?,
            None => None,
        };
        let (start, len) = match span {
            Some((first, last)) => (first, last - first + 1),
            None => (0, meta.size),
        };
        if start > 0 {
            file = blocking(move || {
                file.seek(SeekFrom::Start(offset + start))?;
                Ok(file)
            })
            .await?;
        }
        let reader = tokio::fs::File::from_std(file).take(len);
        let body: ByteStream = Box::pin(ReaderStream::with_capacity(reader, STREAM_CHUNK));
        Ok(GetOutput {
            meta,
            range: span,
            body,
        })
    }

    async fn put_object(&self, bucket: &str, key: &str, input: &PutInput) -> OriginResult<PutOutput> {
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        // Checked once before the body is written, to spare writing a body bound to fail, and again under the lock.
        check_put(&b, key, input)?;
        let placeholder = placeholder_header(key, &input.headers, &input.checksums, PLACEHOLDER_ETAG);
        let mut writer = self.new_writer(&placeholder, true, None).await?;
        writer.write_stream(input.body.stream().await?).await?;
        if writer.size != input.body.len() {
            return Err(OriginError::rejected(
                400,
                "IncompleteBody",
                format!(
                    "the body held {} bytes, not the {} announced",
                    writer.size,
                    input.body.len()
                ),
            ));
        }
        let meta = ObjectMeta {
            size: writer.size,
            etag: writer.etag(),
            last_modified: now_secs(),
            headers: input.headers.clone(),
            checksums: input.checksums.clone(),
        };
        if let Some(md5) = &input.content_md5 {
            check_content_md5(md5, &meta.etag)?;
        }
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
                parts: Vec::new(),
            })
            .await?;
        let _w = b.write.lock().await;
        b.check_alive()?;
        check_put(&b, key, input)?;
        self.commit(&b, key, temp, &meta).await?;
        Ok(PutOutput {
            etag: meta.etag,
            checksums: meta.checksums,
        })
    }

    async fn delete_object(&self, bucket: &str, key: &str, if_match: Option<&str>) -> OriginResult<()> {
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        let _w = b.write.lock().await;
        b.check_alive()?;
        if let Some(m) = if_match {
            match b.index().get(key) {
                None => return Err(OriginError::NoSuchKey),
                Some(e) if !crate::origin::etag_matches(m, &e.etag) => return Err(OriginError::PreconditionFailed),
                Some(_) => {}
            }
        }
        let (dir, path) = object_location(&b.dir, key);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await?;
        b.index_mut().remove(key);
        Ok(())
    }

    async fn copy_object(&self, bucket: &str, key: &str, input: &CopyInput) -> OriginResult<CopyOutput> {
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        input.check_not_onto_itself(bucket, key)?;
        let (file, src, _) = self.open_object(&input.src_bucket, &input.src_key).await?;
        input.conditions.check(&src).map_err(|e| match e {
            OriginError::NotModified { .. } => OriginError::PreconditionFailed,
            e => e,
        })?;
        let headers = ContentHeaders {
            storage_class: input.storage_class.clone(),
            // The tags given (REPLACE), else the source's, whatever the metadata directive.
            tags: input.tags.clone().unwrap_or_else(|| src.headers.tags.clone()),
            origin_tag_count: None,
            ..match &input.directive {
                MetadataDirective::Copy | MetadataDirective::Again => src.headers.clone(),
                MetadataDirective::Replace(h) => h.clone(),
            }
        };
        // The copy's checksum: the one asked for, computed as it is written, else the source's.
        let algorithm = input.checksum_algorithm;
        let reserved = match algorithm {
            Some(a) => Checksums::only(a, "0".repeat(checksum::base64_len(a))),
            None => src.checksums.clone(),
        };
        let placeholder = placeholder_header(key, &headers, &reserved, PLACEHOLDER_ETAG);
        let mut writer = self.new_writer(&placeholder, true, algorithm).await?;
        let reader = tokio::fs::File::from_std(file).take(src.size);
        writer
            .write_stream(ReaderStream::with_capacity(reader, STREAM_CHUNK))
            .await?;
        if writer.size != src.size {
            return Err(corrupt(format!(
                "the source object ended after {} of {} bytes",
                writer.size, src.size
            ))
            .into());
        }
        let checksums = match algorithm {
            Some(a) => Checksums::only(
                a,
                writer
                    .checksum()
                    .ok_or_else(|| io::Error::other("the copy's writer computed no checksum"))?,
            ),
            None => src.checksums,
        };
        let meta = ObjectMeta {
            size: writer.size,
            etag: writer.etag(),
            last_modified: now_secs(),
            headers,
            checksums,
        };
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
                parts: Vec::new(),
            })
            .await?;
        let _w = b.write.lock().await;
        b.check_alive()?;
        self.commit(&b, key, temp, &meta).await?;
        Ok(CopyOutput {
            etag: meta.etag,
            last_modified: meta.last_modified,
            checksums: meta.checksums,
        })
    }

    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> OriginResult<ListPage> {
        let b = self.bucket(bucket)?;
        let index = b.index();
        list_index(&index, query)
    }

    async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        _extra_headers: &[(String, String)],
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        self.create_upload(bucket, key, headers, checksum).await
    }

    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> OriginResult<PutOutput> {
        self.store_part(bucket, key, upload_id, part_number, body, checksums)
            .await
    }

    async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> OriginResult<PutOutput> {
        self.complete_upload(bucket, key, upload_id, parts, &Expected::default())
            .await
    }

    async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        self.abort_upload(bucket, key, upload_id).await
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        self.upload_parts(bucket, key, upload_id).await
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        self.uploads_under(bucket, prefix).await
    }

    async fn get_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<Document> {
        self.configuration(bucket, key, sub).await
    }

    async fn put_config(&self, bucket: &str, key: Option<&str>, sub: Subresource, _doc: &Document) -> OriginResult<()> {
        self.configure(bucket, key, sub).await
    }

    async fn delete_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<()> {
        self.unconfigure(bucket, key, sub).await
    }
}
