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

use super::checksum::{self, Hasher};
use super::{
    BucketInfo, ByteRange, ByteStream, ChecksumAlgorithm, ChecksumType, Checksums, CompletedPart, Conditions,
    ContentHeaders, CopyInput, CopyOutput, GetOutput, ListEntry, ListPage, ListQuery, MetadataDirective,
    MultipartChecksum, ObjectMeta, Origin, OriginError, OriginResult, PartInfo, PutBody, PutInput, PutOutput,
    UploadInfo,
};

/// The first bytes of every object and part file.
const MAGIC: &[u8; 8] = b"PERCHOB1";
/// Magic plus the little-endian u32 length of the JSON header.
const PREFIX_LEN: usize = 12;
/// A header is a few KiB at most; anything larger is a corrupt file.
const MAX_HEADER_LEN: usize = 16 << 20;
/// Room left in a reserved header for fields whose final value is longer than the placeholder's.
const HEADER_SLACK: usize = 64;
const MAX_KEY_LEN: usize = 1024;
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
const MAX_PART_NUMBER: i32 = 10_000;
const STREAM_CHUNK: usize = 256 * 1024;

const TMP_DIR: &str = ".tmp";
const UPLOADS_DIR: &str = ".uploads";
const BUCKET_META: &str = ".bucket";
const UPLOAD_META: &str = "upload.json";
const PART_PREFIX: &str = "part-";

/// The header of an object (or part) file.
#[derive(Debug, Serialize, Deserialize)]
struct StoredHeader {
    key: String,
    meta: ObjectMeta,
}

#[derive(Debug, Serialize, Deserialize)]
struct BucketMeta {
    created: SystemTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadMeta {
    bucket: String,
    key: String,
    headers: ContentHeaders,
    initiated: SystemTime,
    /// The checksum the object will keep; each part keeps its checksum of this algorithm.
    #[serde(default)]
    checksum: Option<MultipartChecksum>,
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
        std::fs::create_dir_all(&root)?;
        let tmp = root.join(TMP_DIR);
        std::fs::create_dir_all(&tmp)?;
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
        std::fs::create_dir_all(&uploads)?;

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
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        let (_, path) = object_location(&b.dir, key);
        let key = key.to_owned();
        let opened = blocking(move || open_stored(&path, Some(&key))).await?;
        let (file, header, offset) = opened.ok_or(OriginError::NoSuchKey)?;
        Ok((file, header.meta, offset))
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

    fn upload_dir(&self, upload_id: &str) -> OriginResult<PathBuf> {
        let valid = !upload_id.is_empty()
            && upload_id.len() <= 128
            && upload_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if valid {
            Ok(self.uploads.join(upload_id))
        } else {
            Err(OriginError::NoSuchUpload)
        }
    }

    /// The staging directory and description of an upload of `key` into `bucket`.
    async fn load_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<(PathBuf, UploadMeta)> {
        let dir = self.upload_dir(upload_id)?;
        let meta_path = dir.join(UPLOAD_META);
        let meta = blocking(move || read_upload_meta(&meta_path)).await?;
        match meta {
            Some(m) if m.bucket == bucket && m.key == key => Ok((dir, m)),
            _ => Err(OriginError::NoSuchUpload),
        }
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

    /// All uploads in progress, each with its id.
    async fn scan_uploads(&self) -> OriginResult<Vec<(String, UploadMeta)>> {
        let uploads = self.uploads.clone();
        Ok(blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&uploads)? {
                let entry = entry?;
                let Ok(id) = entry.file_name().into_string() else {
                    continue;
                };
                if let Some(meta) = read_upload_meta(&entry.path().join(UPLOAD_META))? {
                    out.push((id, meta));
                }
            }
            Ok(out)
        })
        .await?)
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

    async fn head_bucket(&self, bucket: &str) -> OriginResult<()> {
        self.bucket(bucket).map(|_| ())
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
                if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
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
            Some(r) => Some(r.resolve(meta.size).ok_or(OriginError::InvalidRange)?),
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
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
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

    async fn delete_object(&self, bucket: &str, key: &str) -> OriginResult<()> {
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        let _w = b.write.lock().await;
        b.check_alive()?;
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
            OriginError::NotModified => OriginError::PreconditionFailed,
            e => e,
        })?;
        let headers = match &input.directive {
            MetadataDirective::Copy => src.headers.clone(),
            MetadataDirective::Replace(h) => h.clone(),
        };
        let placeholder = placeholder_header(key, &headers, &src.checksums, PLACEHOLDER_ETAG);
        let mut writer = self.new_writer(&placeholder, true, None).await?;
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
        let meta = ObjectMeta {
            size: writer.size,
            etag: writer.etag(),
            last_modified: now_secs(),
            headers,
            checksums: src.checksums,
        };
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
            })
            .await?;
        let _w = b.write.lock().await;
        b.check_alive()?;
        self.commit(&b, key, temp, &meta).await?;
        Ok(CopyOutput {
            etag: meta.etag,
            last_modified: meta.last_modified,
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
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String> {
        self.bucket(bucket)?;
        validate_key(key)?;
        if let Some(c) = &checksum {
            c.validate()?;
        }
        let id = new_id();
        let meta = UploadMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            headers: headers.clone(),
            initiated: SystemTime::now(),
            checksum,
        };
        let json = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        let staging = self.tmp.join(format!("upload-{id}"));
        let target = self.uploads.join(&id);
        let uploads = self.uploads.clone();
        blocking(move || {
            std::fs::create_dir(&staging)?;
            write_durable(&staging.join(UPLOAD_META), &json)?;
            sync_dir(&staging)?;
            std::fs::rename(&staging, &target)?;
            sync_dir(&uploads)
        })
        .await?;
        Ok(id)
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
        self.bucket(bucket)?;
        validate_key(key)?;
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(OriginError::rejected(
                400,
                "InvalidArgument",
                format!("Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"),
            ));
        }
        let (dir, upload) = self.load_upload(bucket, key, upload_id).await?;
        // The part keeps its checksum of the upload's algorithm: the one the client sent (and
        // Perch verified), or else one computed here.
        let algorithm = upload.checksum.map(|c| c.algorithm);
        let given = algorithm.and_then(|a| checksums.get(a).map(str::to_owned));
        if let (Some(a), None, Some((other, _))) = (algorithm, &given, checksums.iter().next()) {
            return Err(OriginError::rejected(
                400,
                "InvalidRequest",
                format!(
                    "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                    a.as_str().to_ascii_lowercase(),
                    other.as_str().to_ascii_lowercase()
                ),
            ));
        }
        let placeholder_sums = match (algorithm, &given) {
            (Some(a), Some(v)) => Checksums::only(a, v.clone()),
            (Some(a), None) => Checksums::only(a, "0".repeat(checksum::base64_len(a))),
            (None, _) => Checksums::default(),
        };
        let placeholder = placeholder_header(key, &ContentHeaders::default(), &placeholder_sums, PLACEHOLDER_ETAG);
        let compute = if given.is_none() { algorithm } else { None };
        let mut writer = self.new_writer(&placeholder, true, compute).await?;
        writer.write_stream(body.stream().await?).await?;
        if writer.size != body.len() {
            return Err(OriginError::rejected(
                400,
                "IncompleteBody",
                format!("the body held {} bytes, not the {} announced", writer.size, body.len()),
            ));
        }
        let kept = match (algorithm, given) {
            (Some(a), Some(v)) => Checksums::only(a, v),
            (Some(a), None) => Checksums::only(a, writer.checksum().unwrap_or_default()),
            (None, _) => Checksums::default(),
        };
        let meta = ObjectMeta {
            size: writer.size,
            etag: writer.etag(),
            last_modified: now_secs(),
            headers: ContentHeaders::default(),
            checksums: kept,
        };
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
            })
            .await?;
        let target = dir.join(part_file_name(part_number));
        let temp_path = temp.path.clone();
        let renamed = blocking(move || {
            std::fs::rename(&temp_path, &target)?;
            sync_dir(&dir)
        })
        .await;
        match renamed {
            Ok(()) => temp.disarm(),
            // The upload was completed or aborted meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OriginError::NoSuchUpload),
            Err(e) => return Err(e.into()),
        }
        Ok(PutOutput {
            etag: meta.etag,
            // Without an algorithm for the upload, the part's checksums are only echoed, as S3 does.
            checksums: if algorithm.is_some() {
                meta.checksums
            } else {
                checksums.clone()
            },
        })
    }

    async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> OriginResult<PutOutput> {
        let b = self.bucket(bucket)?;
        validate_key(key)?;
        let (dir, upload) = self.load_upload(bucket, key, upload_id).await?;
        if parts.is_empty() {
            return Err(OriginError::rejected(
                400,
                "MalformedXML",
                "The XML you provided was not well-formed or did not validate against our published schema",
            ));
        }
        if parts.windows(2).any(|w| w[0].part_number >= w[1].part_number) {
            return Err(OriginError::rejected(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. Parts must be ordered by part number.",
            ));
        }
        // Every part must exist with its ETag before sizes are looked at, as on S3.
        let wanted: Vec<(i32, String)> = parts.iter().map(|p| (p.part_number, p.etag.clone())).collect();
        let part_dir = dir.clone();
        let found = blocking(move || {
            let mut found = Vec::with_capacity(wanted.len());
            for (number, etag) in wanted {
                let meta = if (1..=MAX_PART_NUMBER).contains(&number) {
                    open_stored(&part_dir.join(part_file_name(number)), None)?.map(|(_, h, _)| h.meta)
                } else {
                    None
                };
                match meta {
                    Some(m) if super::same_etag(&etag, &m.etag) => found.push(m),
                    _ => return Ok(Err(number)),
                }
            }
            Ok(Ok(found))
        })
        .await?;
        let invalid_part = |number: i32| {
            OriginError::rejected(
                400,
                "InvalidPart",
                format!(
                    "One or more of the specified parts could not be found (part {number}). The part may not have \
                     been uploaded, or the specified entity tag may not match the part's entity tag."
                ),
            )
        };
        let found = found.map_err(invalid_part)?;
        // A checksum the request declares for a part must be the one kept with it.
        for (part, meta) in parts.iter().zip(&found) {
            let differs = part
                .checksums
                .iter()
                .any(|(a, v)| meta.checksums.get(a).is_some_and(|kept| kept != v));
            if differs {
                return Err(invalid_part(part.part_number));
            }
        }
        let upload_checksum = upload.checksum;
        if let Some(c) = upload_checksum
            && c.checksum_type == ChecksumType::Composite
            && let Some(part) = parts.iter().find(|p| p.checksums.get(c.algorithm).is_none())
        {
            return Err(OriginError::rejected(
                400,
                "InvalidRequest",
                format!(
                    "The upload was created using a {} checksum. The complete request must include the checksum for \
                     each part. It was missing for part {} in the request.",
                    c.algorithm.as_str().to_ascii_lowercase(),
                    part.part_number
                ),
            ));
        }
        for (part, meta) in parts.iter().zip(&found).take(parts.len() - 1) {
            if meta.size < MIN_PART_SIZE {
                return Err(OriginError::rejected(
                    400,
                    "EntityTooSmall",
                    format!(
                        "Your proposed upload is smaller than the minimum allowed size (part {} has {} bytes)",
                        part.part_number, meta.size
                    ),
                ));
            }
        }

        // The object's checksum: COMPOSITE from the parts' checksums now, FULL_OBJECT over the
        // assembled body below.
        let composite = match upload_checksum {
            Some(c) if c.checksum_type == ChecksumType::Composite => {
                let values = parts
                    .iter()
                    .zip(&found)
                    .map(|(part, meta)| {
                        meta.checksums.get(c.algorithm).ok_or_else(|| {
                            corrupt(format!(
                                "part {} has no {} checksum",
                                part.part_number,
                                c.algorithm.as_str()
                            ))
                        })
                    })
                    .collect::<io::Result<Vec<&str>>>()?;
                let value = checksum::composite(c.algorithm, &values)
                    .ok_or_else(|| corrupt("a part's checksum is malformed".to_owned()))?;
                Some(value)
            }
            _ => None,
        };
        let full_object = upload_checksum
            .filter(|c| c.checksum_type == ChecksumType::FullObject)
            .map(|c| c.algorithm);
        let placeholder_sums = match upload_checksum {
            Some(c) => {
                let mut v = "0".repeat(checksum::base64_len(c.algorithm));
                if c.checksum_type == ChecksumType::Composite {
                    v.push_str(&format!("-{}", parts.len()));
                }
                Checksums::only(c.algorithm, v)
            }
            None => Checksums::default(),
        };
        let etag_placeholder = format!("\"{}-{}\"", "0".repeat(32), parts.len());
        let placeholder = placeholder_header(key, &upload.headers, &placeholder_sums, &etag_placeholder);
        let mut writer = self.new_writer(&placeholder, false, full_object).await?;
        let mut md5s = Md5::new();
        for (part, expected) in parts.iter().zip(&found) {
            let path = dir.join(part_file_name(part.part_number));
            let opened = blocking(move || open_stored(&path, None)).await?;
            // Re-read: a part replaced since the check above must not slip in.
            let Some((file, header, _)) = opened else {
                return Err(invalid_part(part.part_number));
            };
            let meta = header.meta;
            if meta.etag != expected.etag || meta.size != expected.size || meta.checksums != expected.checksums {
                return Err(invalid_part(part.part_number));
            }
            let digest = hex::decode(meta.etag.trim_matches('"'))
                .map_err(|_| corrupt(format!("part {} has a malformed ETag", part.part_number)))?;
            md5s.update(&digest);
            let before = writer.size;
            let reader = tokio::fs::File::from_std(file).take(meta.size);
            writer
                .write_stream(ReaderStream::with_capacity(reader, STREAM_CHUNK))
                .await?;
            if writer.size - before != meta.size {
                return Err(corrupt(format!("part {} is shorter than its header says", part.part_number)).into());
            }
        }
        let etag = format!("\"{}-{}\"", hex::encode(md5s.finalize()), parts.len());
        let checksums = match (upload_checksum, composite, writer.checksum()) {
            (Some(c), Some(value), _) | (Some(c), None, Some(value)) => Checksums::only(c.algorithm, value),
            _ => Checksums::default(),
        };
        let meta = ObjectMeta {
            size: writer.size,
            etag: etag.clone(),
            last_modified: now_secs(),
            headers: upload.headers,
            checksums,
        };
        let temp = writer
            .finish(&StoredHeader {
                key: key.to_owned(),
                meta: meta.clone(),
            })
            .await?;
        {
            let _w = b.write.lock().await;
            b.check_alive()?;
            // A concurrent completion or abort may have won.
            if tokio::fs::metadata(dir.join(UPLOAD_META)).await.is_err() {
                return Err(OriginError::NoSuchUpload);
            }
            self.commit(&b, key, temp, &meta).await?;
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(upload = %upload_id, error = %e, "could not remove a completed upload's parts"),
        }
        Ok(PutOutput {
            etag,
            checksums: meta.checksums,
        })
    }

    async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()> {
        self.bucket(bucket)?;
        let (dir, _) = self.load_upload(bucket, key, upload_id).await?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OriginError::NoSuchUpload),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>> {
        self.bucket(bucket)?;
        let (dir, _) = self.load_upload(bucket, key, upload_id).await?;
        let parts = blocking(move || {
            let mut parts = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let Some(number) = name.to_str().and_then(parse_part_file_name) else {
                    continue;
                };
                if let Some((_, header, _)) = open_stored(&entry.path(), None)? {
                    let meta = header.meta;
                    parts.push(PartInfo {
                        part_number: number,
                        etag: meta.etag,
                        size: meta.size,
                        last_modified: meta.last_modified,
                        checksums: meta.checksums,
                    });
                }
            }
            Ok(Some(parts))
        })
        .await?;
        let mut parts = parts.ok_or(OriginError::NoSuchUpload)?;
        parts.sort_by_key(|p| p.part_number);
        Ok(parts)
    }

    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>> {
        self.bucket(bucket)?;
        let mut uploads: Vec<UploadInfo> = self
            .scan_uploads()
            .await?
            .into_iter()
            .filter(|(_, m)| m.bucket == bucket && m.key.starts_with(prefix))
            .map(|(id, m)| UploadInfo {
                key: m.key,
                upload_id: id,
                initiated: m.initiated,
            })
            .collect();
        uploads.sort_by(|a, b| {
            (a.key.as_str(), a.initiated, a.upload_id.as_str()).cmp(&(
                b.key.as_str(),
                b.initiated,
                b.upload_id.as_str(),
            ))
        });
        Ok(uploads)
    }
}

// ---------------------------------------------------------------------------------------------
// Names and paths

fn validate_bucket(name: &str) -> OriginResult<()> {
    let bad = name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']);
    if bad {
        Err(OriginError::rejected(
            400,
            "InvalidBucketName",
            "The specified bucket is not valid.",
        ))
    } else {
        Ok(())
    }
}

fn validate_key(key: &str) -> OriginResult<()> {
    if key.is_empty() {
        return Err(OriginError::rejected(
            400,
            "InvalidArgument",
            "The key must not be empty",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(OriginError::rejected(400, "KeyTooLongError", "Your key is too long"));
    }
    Ok(())
}

/// The fan-out directory and the file of `key` in a bucket: only the key's hash ever reaches the file system.
fn object_location(bucket_dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let dir = bucket_dir.join(&hash[..2]);
    let file = dir.join(&hash);
    (dir, file)
}

fn part_file_name(part_number: i32) -> String {
    format!("{PART_PREFIX}{part_number:05}")
}

fn parse_part_file_name(name: &str) -> Option<i32> {
    let digits = name.strip_prefix(PART_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

// ---------------------------------------------------------------------------------------------
// Times and conditions

/// Now, to the second: Last-Modified travels as an HTTP date, and conditions compare whole seconds.
fn now_secs() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(epoch_secs(SystemTime::now()))
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The preconditions of a PUT, against the index. Called with `b.write` held for the decisive check.
fn check_put(b: &Bucket, key: &str, input: &PutInput) -> OriginResult<()> {
    if input.if_match.is_none() && input.if_none_match.is_none() {
        return Ok(());
    }
    let index = b.index();
    let current = index.get(key);
    if let Some(m) = &input.if_match {
        match current {
            None => return Err(OriginError::NoSuchKey),
            Some(e) if !super::etag_matches(m, &e.etag) => return Err(OriginError::PreconditionFailed),
            Some(_) => {}
        }
    }
    if let (Some(n), Some(e)) = (&input.if_none_match, current)
        && super::etag_matches(n, &e.etag)
    {
        return Err(OriginError::PreconditionFailed);
    }
    Ok(())
}

fn list_entry(key: &str, meta: &ObjectMeta) -> ListEntry {
    ListEntry {
        key: key.to_owned(),
        size: meta.size,
        etag: meta.etag.clone(),
        last_modified: meta.last_modified,
    }
}

// ---------------------------------------------------------------------------------------------
// Listing

/// Where a listing resumes: after a key, or after every key under a common prefix.
enum Token {
    Key(String),
    Prefix(String),
}

impl Token {
    fn encode(&self) -> String {
        match self {
            Token::Key(k) => format!("k{}", hex::encode(k)),
            Token::Prefix(p) => format!("p{}", hex::encode(p)),
        }
    }

    fn decode(token: &str) -> OriginResult<Token> {
        let bad = || OriginError::rejected(400, "InvalidArgument", "The continuation token provided is incorrect");
        let decode = |hex_part: &str| {
            hex::decode(hex_part)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(bad)
        };
        if let Some(rest) = token.strip_prefix('k') {
            Ok(Token::Key(decode(rest)?))
        } else if let Some(rest) = token.strip_prefix('p') {
            Ok(Token::Prefix(decode(rest)?))
        } else {
            Err(bad())
        }
    }
}

/// The least string greater than every string that starts with `s`, if there is one.
fn successor(s: &str) -> Option<String> {
    let mut chars: Vec<char> = s.chars().collect();
    while let Some(c) = chars.pop() {
        let next = match c as u32 {
            0xD7FF => Some('\u{E000}'),
            n => char::from_u32(n + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// One page of a ListObjectsV2 over the index, with S3's semantics.
fn list_index(index: &BTreeMap<String, ListEntry>, q: &ListQuery) -> OriginResult<ListPage> {
    let mut page = ListPage::default();
    if q.max_keys == 0 {
        return Ok(page);
    }
    let prefix = q.prefix.as_deref().unwrap_or("");
    let delimiter = q.delimiter.as_deref().filter(|d| !d.is_empty());
    let marker = match &q.continuation {
        Some(t) => Some(Token::decode(t)?),
        None => q.start_after.clone().map(Token::Key),
    };
    let mut lower: Bound<String> = Bound::Included(prefix.to_owned());
    // Nothing at or before this is returned, common prefixes included.
    let mut floor: Option<String> = None;
    match marker {
        None => {}
        Some(Token::Key(k)) => {
            if k.as_str() >= prefix {
                lower = Bound::Excluded(k.clone());
            }
            floor = Some(k);
        }
        Some(Token::Prefix(p)) => {
            match successor(&p) {
                Some(s) if s.as_str() > prefix => lower = Bound::Included(s),
                Some(_) => {}
                None => return Ok(page),
            }
            floor = Some(p);
        }
    }

    let mut count = 0usize;
    let mut last: Option<Token> = None;
    loop {
        let bound = lower.as_ref().map(String::as_str);
        let Some((key, entry)) = index.range::<str, _>((bound, Bound::Unbounded)).next() else {
            break;
        };
        if !key.starts_with(prefix) {
            break;
        }
        if count == q.max_keys {
            page.next = last.as_ref().map(Token::encode);
            break;
        }
        if let Some(d) = delimiter
            && let Some(i) = key[prefix.len()..].find(d)
        {
            let cp = &key[..prefix.len() + i + d.len()];
            if floor.as_deref().is_none_or(|f| cp > f) {
                page.common_prefixes.push(cp.to_owned());
                count += 1;
                last = Some(Token::Prefix(cp.to_owned()));
            }
            match successor(cp) {
                Some(s) => lower = Bound::Included(s),
                None => break,
            }
            continue;
        }
        page.objects.push(entry.clone());
        count += 1;
        last = Some(Token::Key(key.clone()));
        lower = Bound::Excluded(key.clone());
    }
    Ok(page)
}

// ---------------------------------------------------------------------------------------------
// Files

const PLACEHOLDER_ETAG: &str = "\"00000000000000000000000000000000\"";

/// A header at least as long as the final one, written first and overwritten once the body is known.
fn placeholder_header(key: &str, headers: &ContentHeaders, checksums: &Checksums, etag: &str) -> StoredHeader {
    StoredHeader {
        key: key.to_owned(),
        meta: ObjectMeta {
            size: u64::MAX,
            etag: etag.to_owned(),
            last_modified: now_secs(),
            headers: headers.clone(),
            checksums: checksums.clone(),
        },
    }
}

/// Magic, length, JSON; the JSON padded with spaces to `reserve` bytes when given.
fn encode_header(header: &StoredHeader, reserve: Option<usize>) -> io::Result<Vec<u8>> {
    let mut json = serde_json::to_vec(header).map_err(io::Error::other)?;
    if let Some(n) = reserve {
        if json.len() > n {
            return Err(io::Error::other("an object header outgrew the room reserved for it"));
        }
        json.resize(n, b' ');
    }
    if json.len() > MAX_HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the object's metadata is too large",
        ));
    }
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

fn corrupt(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Opens an object or part file and reads its header. `None` when the file is absent
/// (or, given `key`, holds another key). The file is left positioned at the body.
fn open_stored(path: &Path, key: Option<&str>) -> io::Result<Option<(std::fs::File, StoredHeader, u64)>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut prefix = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix)
        .map_err(|e| corrupt(format!("{}: short header: {e}", path.display())))?;
    if &prefix[..8] != MAGIC {
        return Err(corrupt(format!("{}: not an object file", path.display())));
    }
    let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    if len > MAX_HEADER_LEN {
        return Err(corrupt(format!("{}: header too large", path.display())));
    }
    let mut json = vec![0u8; len];
    file.read_exact(&mut json)
        .map_err(|e| corrupt(format!("{}: short header: {e}", path.display())))?;
    let header: StoredHeader =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("{}: bad header: {e}", path.display())))?;
    let offset = (PREFIX_LEN + len) as u64;
    let file_len = file.metadata()?.len();
    if file_len != offset.saturating_add(header.meta.size) {
        return Err(corrupt(format!(
            "{}: {file_len} bytes, but the header says {} + {}",
            path.display(),
            offset,
            header.meta.size
        )));
    }
    if key.is_some_and(|k| k != header.key) {
        return Ok(None);
    }
    Ok(Some((file, header, offset)))
}

fn read_upload_meta(path: &Path) -> io::Result<Option<UploadMeta>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(format!("{}: bad upload description: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a bucket directory: its creation time and the header of every object in it.
fn load_bucket(dir: &Path) -> io::Result<Bucket> {
    let created = match std::fs::read(dir.join(BUCKET_META)) {
        Ok(bytes) => match serde_json::from_slice::<BucketMeta>(&bytes) {
            Ok(m) => m.created,
            Err(_) => std::fs::metadata(dir)?.modified()?,
        },
        Err(_) => std::fs::metadata(dir)?.modified()?,
    };
    let mut index = BTreeMap::new();
    for fan in std::fs::read_dir(dir)? {
        let fan = fan?;
        let Ok(fan_name) = fan.file_name().into_string() else {
            continue;
        };
        if !is_hex(&fan_name, 2) || !fan.file_type()?.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(fan.path())? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_hex(&name, 64) || !name.starts_with(&fan_name) {
                continue;
            }
            let path = entry.path();
            match open_stored(&path, None) {
                Ok(Some((_, header, _))) => {
                    let (_, expected) = object_location(dir, &header.key);
                    if expected != path {
                        tracing::warn!(path = %path.display(), "an object file is not named after its key; ignored");
                        continue;
                    }
                    let entry = list_entry(&header.key, &header.meta);
                    index.insert(header.key, entry);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "unreadable object file ignored"),
            }
        }
    }
    Ok(Bucket {
        dir: dir.to_owned(),
        created,
        index: RwLock::new(index),
        write: tokio::sync::Mutex::new(()),
        gone: AtomicBool::new(false),
    })
}

fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// A temporary file, removed when dropped unless it was moved into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes an object file in `.tmp`: a reserved header, the body (hashed on the way), then the real header.
struct ObjectWriter {
    temp: TempFile,
    file: tokio::fs::File,
    header_len: usize,
    md5: Option<Md5>,
    checksum: Option<Hasher>,
    size: u64,
}

impl ObjectWriter {
    async fn begin(
        tmp: &Path,
        placeholder: &StoredHeader,
        hash: bool,
        checksum: Option<ChecksumAlgorithm>,
    ) -> io::Result<ObjectWriter> {
        let header_len = serde_json::to_vec(placeholder).map_err(io::Error::other)?.len() + HEADER_SLACK;
        let header = encode_header(placeholder, Some(header_len))?;
        let path = tmp.join(format!("{}.tmp", new_id()));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        let temp = TempFile { path, armed: true };
        file.write_all(&header).await?;
        Ok(ObjectWriter {
            temp,
            file,
            header_len,
            md5: hash.then(Md5::new),
            checksum: checksum.map(Hasher::new),
            size: 0,
        })
    }

    async fn write_stream<S>(&mut self, mut stream: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if let Some(md5) = &mut self.md5 {
                md5.update(&chunk);
            }
            if let Some(h) = &mut self.checksum {
                h.update(&chunk);
            }
            self.file.write_all(&chunk).await?;
            self.size += chunk.len() as u64;
        }
        Ok(())
    }

    /// The quoted hex MD5 of the body written so far.
    fn etag(&mut self) -> String {
        let digest = self.md5.take().unwrap_or_default().finalize();
        format!("\"{}\"", hex::encode(digest))
    }

    /// The base64 checksum of the body written so far, when the writer was asked for one.
    fn checksum(&mut self) -> Option<String> {
        self.checksum.take().map(Hasher::finish_base64)
    }

    /// Writes the real header over the reserved one and makes the file durable.
    async fn finish(mut self, header: &StoredHeader) -> io::Result<TempFile> {
        let bytes = encode_header(header, Some(self.header_len))?;
        self.file.flush().await?;
        self.file.seek(SeekFrom::Start(0)).await?;
        self.file.write_all(&bytes).await?;
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(self.temp)
    }
}
