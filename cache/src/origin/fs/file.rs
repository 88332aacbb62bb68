//! The file format of `FsOrigin`: each object or part file holds a magic, a JSON header (its key
//! and metadata) and the body; written to a temp file, fsynced, renamed into place, directory fsynced.

use super::*;

/// The first bytes of every object and part file.
pub(super) const MAGIC: &[u8; 8] = b"PERCHOB1";
/// Magic plus the little-endian u32 length of the JSON header.
pub(super) const PREFIX_LEN: usize = 12;
/// A header is a few KiB at most; anything larger is a corrupt file.
pub(super) const MAX_HEADER_LEN: usize = 16 << 20;
/// Room left in a reserved header for fields whose final value is longer than the placeholder's.
pub(super) const HEADER_SLACK: usize = 64;

/// The header of an object (or part) file.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StoredHeader {
    pub key: String,
    pub meta: ObjectMeta,
    /// The sizes of the parts of an object completed from a multipart upload, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
}

pub(super) const PLACEHOLDER_ETAG: &str = "\"00000000000000000000000000000000\"";

/// A header at least as long as the final one, written first and overwritten once the body is known.
pub(super) fn placeholder_header(
    key: &str,
    headers: &ContentHeaders,
    checksums: &Checksums,
    etag: &str,
) -> StoredHeader {
    StoredHeader {
        key: key.to_owned(),
        meta: ObjectMeta {
            size: u64::MAX,
            etag: etag.to_owned(),
            last_modified: now_secs(),
            headers: headers.clone(),
            checksums: checksums.clone(),
        },
        parts: Vec::new(),
    }
}

/// Magic, length, JSON; the JSON padded with spaces to `reserve` bytes when given.
pub(super) fn encode_header(header: &StoredHeader, reserve: Option<usize>) -> io::Result<Vec<u8>> {
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

pub(super) fn corrupt(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A header JSON cannot read, as the `InvalidData` error of its file.
#[derive(Debug, thiserror::Error)]
#[error("{}: bad header: {source}", path.display())]
struct BadHeader {
    path: std::path::PathBuf,
    #[source]
    source: serde_json::Error,
}

/// A read of a header that failed: a file that ends within it is corrupt, any other failure is
/// the read's own (e.g. EIO), passed on with its kind and the file's path.
fn short_header(path: &Path, e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        corrupt(format!("{}: short header", path.display()))
    } else {
        io::Error::new(
            e.kind(),
            ReadingHeader {
                path: path.to_owned(),
                source: e,
            },
        )
    }
}

/// A header read that failed for another reason than its end.
#[derive(Debug, thiserror::Error)]
#[error("{}: reading the header: {source}", path.display())]
struct ReadingHeader {
    path: std::path::PathBuf,
    #[source]
    source: io::Error,
}

/// Opens an object or part file and reads its header. `None` when the file is absent
/// (or, given `key`, holds another key). The file is left positioned at the body.
pub(super) fn open_stored(path: &Path, key: Option<&str>) -> io::Result<Option<(std::fs::File, StoredHeader, u64)>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut prefix = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix).map_err(|e| short_header(path, e))?;
    if &prefix[..8] != MAGIC {
        return Err(corrupt(format!("{}: not an object file", path.display())));
    }
    let len = u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    if len > MAX_HEADER_LEN {
        return Err(corrupt(format!("{}: header too large", path.display())));
    }
    let mut json = vec![0u8; len];
    file.read_exact(&mut json).map_err(|e| short_header(path, e))?;
    let header: StoredHeader = serde_json::from_slice(&json).map_err(|source| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            BadHeader {
                path: path.to_owned(),
                source,
            },
        )
    })?;
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

pub(super) fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub(super) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// A temporary file, removed when dropped unless it was moved into place.
pub(super) struct TempFile {
    pub path: PathBuf,
    armed: bool,
}

impl TempFile {
    pub(super) fn disarm(mut self) {
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
pub(super) struct ObjectWriter {
    pub temp: TempFile,
    pub file: tokio::fs::File,
    pub header_len: usize,
    md5: Option<Md5>,
    pub checksum: Option<Hasher>,
    pub size: u64,
}

impl ObjectWriter {
    pub(super) async fn begin(
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

    pub(super) async fn write_stream<S>(&mut self, mut stream: S) -> io::Result<()>
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
    pub(super) fn etag(&mut self) -> String {
        let digest = self.md5.take().unwrap_or_default().finalize();
        format!("\"{}\"", hex::encode(digest))
    }

    /// The base64 checksum of the body written so far, when the writer was asked for one.
    pub(super) fn checksum(&mut self) -> Option<String> {
        self.checksum.take().map(Hasher::finish_base64)
    }

    /// Writes the real header over the reserved one and makes the file durable.
    pub(super) async fn finish(mut self, header: &StoredHeader) -> io::Result<TempFile> {
        let bytes = encode_header(header, Some(self.header_len))?;
        self.file.flush().await?;
        self.file.seek(SeekFrom::Start(0)).await?;
        self.file.write_all(&bytes).await?;
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(self.temp)
    }
}

// ---------------------------------------------------------------------------------------------
// Where objects live, and reading a bucket directory back

/// The fan-out directory and the file of `key` in a bucket: only the key's hash ever reaches the file system.
pub(super) fn object_location(bucket_dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let dir = bucket_dir.join(&hash[..2]);
    let file = dir.join(&hash);
    (dir, file)
}

pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(super) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Now, to the second: Last-Modified travels as an HTTP date, and conditions compare whole seconds.
pub(super) fn now_secs() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(epoch_secs(SystemTime::now()))
}

pub(super) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) fn list_entry(key: &str, meta: &ObjectMeta) -> ListEntry {
    ListEntry {
        key: key.to_owned(),
        size: meta.size,
        etag: meta.etag.clone(),
        last_modified: meta.last_modified,
        storage_class: meta.headers.storage_class.clone(),
        checksum: meta.checksums.kept(),
    }
}

/// Reads a bucket directory: its creation time and the header of every object in it.
pub(super) fn load_bucket(dir: &Path) -> io::Result<Bucket> {
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
