//! The `Origin`: the S3 store behind Perch (Tigris, any S3 server, or a local directory).
//! One trait with two real implementations, `S3Origin` (aws-sdk-s3) and `FsOrigin` (a local directory).

pub(crate) mod checksum;
pub(crate) mod config;
pub(crate) mod fs;
pub(crate) mod read_only;
pub(crate) mod retry;
pub(crate) mod s3;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

pub use crate::local::blobs::CheckedRange;

pub use checksum::{ChecksumAlgorithm, ChecksumType, Checksums, MultipartChecksum};
pub use config::{Document, NO_OBJECT_LOCK, Subresource, tags_document};
pub use fs::FsOrigin;
pub use s3::{OriginKeys, S3Origin, S3OriginConfig};

/// A body streamed out of the origin.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + Sync + 'static>>;

/// The headers an object keeps and returns on GET and HEAD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentHeaders {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    /// `Expires` as the client sent it (an HTTP date).
    pub expires: Option<String>,
    /// `x-amz-meta-*`, names without the prefix, lower case.
    pub metadata: BTreeMap<String, String>,
    /// `x-amz-storage-class` for an object in another class than STANDARD (S3 names none for
    /// STANDARD): the origin's answer, or the class a write asked for, which its upload carries
    /// (`Store::check_carried`). A copy does not carry its source's class
    /// (`CopyInput::storage_class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// The tags a write gave the object (`x-amz-tagging`), which its upload carries: known for a
    /// version written through Perch (and by the directory origin, which keeps them), not for an
    /// object read from an S3 origin (GetObjectTagging asks it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    /// How many tags an S3 origin said the object has (`x-amz-tagging-count`) when it was read
    /// from there (its tags themselves are not in that answer), or set by a tagging call through
    /// Perch; `None` for none. `tag_count` answers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_tag_count: Option<u32>,
    /// How the origin said it encrypts the object, when its ETag is then not the body's MD5
    /// (`aws:kms`, `aws:kms:dsse`: S3's ETag of such an object is opaque). Only read
    /// from the origin's answers: never sent, never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_etag_encryption: Option<String>,
}

/// What of S3's 8 KB for a PUT's header section an object's stored headers may take, as
/// `ContentHeaders::check_uploadable` counts them (each name twice: its line, and the signature's
/// list of signed headers): the rest is left to what Perch's upload adds (Host, the signature's
/// fixed part and its date, the body's length, SHA-256, MD5 and checksum, the SDK's own), measured
/// at about 0.9 KB.
pub const STORED_HEADER_BYTES_MAX: usize = 7 << 10;

/// S3's limit on user metadata: the bytes of every `x-amz-meta-*` name (without the prefix) and
/// value, added up, as uploaded.
pub const METADATA_BYTES_MAX: usize = 2 << 10;

impl ContentHeaders {
    /// The bytes of text these hold (names and values, in heap strings): what a copy held in
    /// memory costs besides its body and fixed fields. Up to S3's 8 KB of headers a write may
    /// carry; most objects hold none.
    pub fn text_bytes(&self) -> usize {
        let optional = [
            &self.content_type,
            &self.cache_control,
            &self.content_encoding,
            &self.content_disposition,
            &self.content_language,
            &self.expires,
            &self.storage_class,
        ]
        .into_iter()
        .filter_map(|v| v.as_ref().map(String::len))
        .sum::<usize>();
        // A map node, or a tag pair, costs about two string headers besides its text.
        let pairs = self.metadata.iter().chain(self.tags.iter().map(|(k, v)| (k, v)));
        optional + pairs.map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
    }

    /// The object's number of tags, as GetObject answers it (`x-amz-tagging-count`): those a write
    /// through Perch gave it, else the origin's count; `None` for none.
    pub fn tag_count(&self) -> Option<u32> {
        if self.tags.is_empty() {
            self.origin_tag_count.filter(|&n| n > 0)
        } else {
            u32::try_from(self.tags.len()).ok()
        }
    }

    /// `tags` as `x-amz-tagging` carries them (URL query form); `None` for none.
    pub fn tagging(&self) -> Option<String> {
        tagging(&self.tags)
    }

    /// The headers of an upload of an object with these: its own, with a policy rule's upload
    /// headers set over them (content headers and `x-amz-meta-*` as such, the others beside them).
    pub fn for_upload(&self, upload_headers: &[perch_policy::UploadHeader]) -> (ContentHeaders, Vec<(String, String)>) {
        let mut headers = self.clone();
        let mut extra = Vec::new();
        for h in upload_headers {
            let value = Some(h.value.clone());
            match h.name.as_str() {
                "cache-control" => headers.cache_control = value,
                "content-type" => headers.content_type = value,
                "content-encoding" => headers.content_encoding = value,
                "content-disposition" => headers.content_disposition = value,
                "content-language" => headers.content_language = value,
                "expires" => headers.expires = value,
                name => match name.strip_prefix("x-amz-meta-") {
                    Some(m) => {
                        headers.metadata.insert(m.to_owned(), h.value.clone());
                    }
                    None => extra.push((h.name.clone(), h.value.clone())),
                },
            }
        }
        (headers, extra)
    }

    /// Refuses headers that an upload could not carry, with the policy's `upload_headers` for the
    /// key set over them as the upload sets them (`for_upload`), and that the origin would so
    /// refuse for good once the write is acknowledged:
    /// - a name or a value that is not HTTP header text (a browser form's field, a metadata value
    ///   that decodes to a control character): 400 InvalidArgument;
    /// - user metadata over S3's 2 KB, names and values as uploaded: 400 MetadataTooLarge;
    /// - more than fits an upload's header section: S3 refuses a PUT whose headers pass 8 KB (400
    ///   RequestHeaderSectionTooLarge). Each header counts twice by name: the upload's signature
    ///   lists it again in its `SignedHeaders`.
    pub fn check_uploadable(&self, upload_headers: &[perch_policy::UploadHeader]) -> OriginResult<()> {
        let (uploaded, extra) = self.for_upload(upload_headers);
        let mut lines: Vec<(std::borrow::Cow<'_, str>, &str)> = [
            ("content-type", &uploaded.content_type),
            ("cache-control", &uploaded.cache_control),
            ("content-encoding", &uploaded.content_encoding),
            ("content-disposition", &uploaded.content_disposition),
            ("content-language", &uploaded.content_language),
            ("expires", &uploaded.expires),
            ("x-amz-storage-class", &uploaded.storage_class),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.into(), value.as_deref()?)))
        .collect();
        let tagging = uploaded.tagging();
        if let Some(tagging) = &tagging {
            lines.push(("x-amz-tagging".into(), tagging));
        }
        lines.extend(
            uploaded
                .metadata
                .iter()
                .map(|(name, value)| (format!("x-amz-meta-{name}").into(), value.as_str())),
        );
        lines.extend(extra.iter().map(|(name, value)| (name.as_str().into(), value.as_str())));
        for (name, value) in &lines {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(OriginError::rejected(
                    400,
                    "InvalidArgument",
                    format!("{name:?} is not a header name an object can keep."),
                ));
            }
            // `HeaderValue` takes bytes past ASCII, which S3 refuses.
            if !value.is_ascii() || http::HeaderValue::from_str(value).is_err() {
                return Err(OriginError::rejected(
                    400,
                    "InvalidArgument",
                    format!(
                        "The value of {name} holds a character a header cannot carry (a control character, or not \
                         US-ASCII)."
                    ),
                ));
            }
        }
        let metadata: usize = uploaded
            .metadata
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        if metadata > METADATA_BYTES_MAX {
            return Err(OriginError::rejected(
                400,
                "MetadataTooLarge",
                format!(
                    "Your metadata headers exceed the maximum allowed metadata size ({metadata} bytes of x-amz-meta-* \
                     names and values as uploaded, with the headers Perch's policy adds, over {METADATA_BYTES_MAX})."
                ),
            ));
        }
        // "name: value\r\n", and "name;" in the signature's SignedHeaders.
        let size: usize = lines.iter().map(|(name, value)| 2 * name.len() + value.len() + 5).sum();
        if size > STORED_HEADER_BYTES_MAX {
            return Err(OriginError::rejected(
                400,
                "RequestHeaderSectionTooLarge",
                format!(
                    "Your request header section exceeds the maximum allowed size: the object's content headers, \
                     metadata and tags take {size} bytes as uploaded (each name twice: in its line and in the \
                     signature), over the {STORED_HEADER_BYTES_MAX} Perch leaves them of S3's 8 KB."
                ),
            ));
        }
        Ok(())
    }
}

/// A tag set as `x-amz-tagging` carries it (URL query form); `None` for an empty one.
pub fn tagging(tags: &[(String, String)]) -> Option<String> {
    let encode = |s: &str| crate::key::url_encode(s).replace('/', "%2F");
    let pairs: Vec<String> = tags
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join("&"))
}

/// What a CreateBucket asks beyond the bucket's name, passed on to the origin as the client sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewBucket {
    /// The `LocationConstraint`.
    pub location: Option<String>,
    /// `x-amz-acl` and `x-amz-grant-*`, (lower-case name, value).
    pub acl: Vec<(String, String)>,
    /// `x-amz-object-ownership`.
    pub object_ownership: Option<String>,
}

impl NewBucket {
    /// What it asks that a new bucket without configuration is not (a private bucket, its
    /// ownership `BucketOwnerEnforced`), named for an error; `None` when nothing.
    pub fn configured(&self) -> Option<String> {
        let acl = self
            .acl
            .iter()
            .find(|(name, value)| !(name == "x-amz-acl" && value == "private"))
            .map(|(name, value)| format!("{name}: {value}"));
        let ownership = self
            .object_ownership
            .as_deref()
            .filter(|o| *o != "BucketOwnerEnforced")
            .map(|o| format!("x-amz-object-ownership: {o}"));
        acl.or(ownership)
    }
}

/// What the origin knows of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub size: u64,
    /// The ETag with its quotes, as S3 sends it.
    pub etag: String,
    pub last_modified: SystemTime,
    pub headers: ContentHeaders,
    pub checksums: Checksums,
}

/// Preconditions of a read (GET, HEAD, or the source of a copy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<SystemTime>,
    pub if_unmodified_since: Option<SystemTime>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks these preconditions against an object's metadata, in the order S3 applies them
    /// (RFC 9110: If-Match, else If-Unmodified-Since; then If-None-Match, else If-Modified-Since).
    /// Times compare to the second, as HTTP dates carry them.
    pub fn check(&self, meta: &ObjectMeta) -> OriginResult<()> {
        let modified = epoch_secs(meta.last_modified);
        if let Some(m) = &self.if_match {
            if !etag_matches(m, &meta.etag) {
                return Err(OriginError::PreconditionFailed);
            }
        } else if let Some(t) = self.if_unmodified_since
            && modified > epoch_secs(t)
        {
            return Err(OriginError::PreconditionFailed);
        }
        if let Some(n) = &self.if_none_match {
            if etag_matches(n, &meta.etag) {
                return Err(not_modified(meta));
            }
        } else if let Some(t) = self.if_modified_since
            && modified <= epoch_secs(t)
        {
            return Err(not_modified(meta));
        }
        Ok(())
    }
}

/// The 304 of an object whose metadata is `meta`.
fn not_modified(meta: &ObjectMeta) -> OriginError {
    OriginError::NotModified {
        etag: Some(meta.etag.clone()),
        last_modified: Some(meta.last_modified),
        cache_control: meta.headers.cache_control.clone(),
        expires: meta.headers.expires.clone(),
    }
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether an `If-Match` / `If-None-Match` value (`*`, a list, weak or not, quoted or not) names `etag`.
pub fn etag_matches(condition: &str, etag: &str) -> bool {
    condition
        .split(',')
        .map(str::trim)
        .any(|c| c == "*" || same_etag(c, etag))
}

/// How far before a request was sent the origin's `Last-Modified` of what it wrote may read: S3
/// gives it in whole seconds (cut, not rounded), and two clocks differ a little.
const LAST_MODIFIED_SLACK: Duration = Duration::from_secs(2);

/// Whether an object the origin reports `last_modified` may have been written by a request sent
/// at `sent` (not: was there before it).
pub fn written_since(last_modified: SystemTime, sent: SystemTime) -> bool {
    last_modified + LAST_MODIFIED_SLACK >= sent
}

/// Whether two ETags are the same, ignoring quotes and a weak `W/` prefix.
pub fn same_etag(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim();
        s.strip_prefix("W/").unwrap_or(s).trim_matches('"').to_owned()
    };
    norm(a) == norm(b)
}

/// The rest of a read whose stream broke at byte `from` of the object: `Range: bytes=from-last`
/// (`last`: the read's own end, or the object's when `None`) pinned by `If-Match` to the version
/// read so far (`etag`), so the bytes can never be spliced from two versions. A changed object
/// is `PreconditionFailed`; an answer that is neither that range nor the whole object of the same
/// ETag (`range_body`) is refused as `Transient`.
pub async fn rest_of(
    origin: &dyn Origin,
    bucket: &str,
    key: &str,
    etag: &str,
    from: u64,
    last: Option<u64>,
) -> OriginResult<ByteStream> {
    let range = ByteRange::FromTo { first: from, last };
    let cond = Conditions {
        if_match: Some(etag.to_owned()),
        ..Default::default()
    };
    let out = origin.get_object(bucket, key, Some(range), &cond).await?;
    range_body(out, etag, from, last)
}

/// Set once the origin answered a ranged GET with the whole object: an origin that ignores
/// `Range` (HTTP lets a server do so). Bodies are then no longer split into ranged reads.
static RANGES_IGNORED: AtomicBool = AtomicBool::new(false);

/// Whether the origin has been seen to ignore `Range` (`RANGES_IGNORED`).
pub(crate) fn ranges_ignored() -> bool {
    RANGES_IGNORED.load(Ordering::Relaxed)
}

/// Notes that the origin answered a ranged GET with the whole object (`RANGES_IGNORED`), and says
/// so once.
fn note_ranges_ignored() {
    if !RANGES_IGNORED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the origin answered a ranged read with the whole object: it ignores ranges, so large \
             objects are read as one stream, a broken read restarts from the object's first byte, and a \
             client's range is cut out of the whole body"
        );
    }
}

/// A client's range `asked` out of `out`, the origin's answer to a GET of it: as it is when the
/// origin answered the range (206), or when it answered 200 to a range that names no span (a
/// suffix of an empty object). From an origin that ignores ranges (200 and the whole object, which
/// HTTP allows), the range is cut out of the whole body, as S3 would have answered it: its first
/// bytes skipped, the rest left unread; a range the object cannot satisfy is `InvalidRange` (416).
pub(crate) fn client_range(mut out: GetOutput, asked: ByteRange) -> OriginResult<GetOutput> {
    if out.range.is_some() {
        return Ok(out);
    }
    let Some((first, last)) = asked.resolve(out.meta.size)? else {
        return Ok(out);
    };
    // A range naming the whole object (`bytes=0-`) may be answered 200 by an origin that honours
    // ranges.
    if first != 0 || last + 1 != out.meta.size {
        note_ranges_ignored();
    }
    out.range = Some((first, last));
    out.body = Box::pin(Skipped {
        body: out.body,
        skip: first,
        left: Some(last - first + 1),
    });
    Ok(out)
}

/// The bytes from `from` (to `last`, or to the object's end when `None`) of the object `etag`,
/// out of `out`, the answer to a ranged GET of them: its body when it is a range starting at
/// `from` (206; its readers count what it brings), or, from an origin that ignores ranges (200:
/// the whole object, of the same strong ETag), the whole body with its first `from` bytes
/// skipped and what comes after `last` left unread. Anything else is refused as `Transient`.
pub(crate) fn range_body(out: GetOutput, etag: &str, from: u64, last: Option<u64>) -> OriginResult<ByteStream> {
    let asked = match last {
        Some(last) => format!("bytes {from}-{last}"),
        None => format!("bytes {from}-"),
    };
    match out.range {
        Some((first, _)) if first == from => Ok(out.body),
        // A weak or missing ETag does not tell two versions' bytes apart.
        None if !etag.is_empty()
            && !etag.starts_with("W/")
            && same_etag(&out.meta.etag, etag)
            && last.unwrap_or(from) < out.meta.size =>
        {
            let whole_asked = from == 0 && last.is_none_or(|last| last + 1 == out.meta.size);
            if !whole_asked {
                note_ranges_ignored();
            }
            Ok(Box::pin(Skipped {
                body: out.body,
                skip: from,
                left: last.map(|last| last - from + 1),
            }))
        }
        None => Err(OriginError::transient(format!(
            "the origin answered a read of {asked} of {etag} with the whole object {} ({} bytes)",
            out.meta.etag, out.meta.size
        ))),
        Some((first, end)) => Err(OriginError::transient(format!(
            "the origin answered a read of {asked} with bytes {first}-{end}"
        ))),
    }
}

/// A whole object's body read for a range of it: its first `skip` bytes dropped, and ended once
/// `left` more have come (`None`: at the body's end).
struct Skipped {
    body: ByteStream,
    skip: u64,
    left: Option<u64>,
}

impl Stream for Skipped {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.left == Some(0) {
                return Poll::Ready(None);
            }
            let mut chunk = match this.body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => chunk,
                other => return other,
            };
            let dropped = this.skip.min(chunk.len() as u64);
            this.skip -= dropped;
            chunk = chunk.slice(dropped as usize..);
            if chunk.is_empty() {
                continue;
            }
            if let Some(left) = this.left.as_mut() {
                chunk.truncate(chunk.len().min(*left as usize));
                *left -= chunk.len() as u64;
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
    }
}

/// The breaks of one whole-object read from the origin, and when to resume it (`rest_of`): at
/// once after a break that followed 64 KiB or more, then after pauses doubling from 50 ms to 2 s
/// while resumptions bring less, and no more once `deadline` has passed since the first break of
/// such a run (an origin that answers each resumption and breaks at once, or after a few bytes,
/// is not asked hundreds of times a second, nor forever).
#[derive(Debug)]
pub(crate) struct Breaks {
    deadline: Duration,
    /// When the run of breaks began, if one is under way.
    broke_at: Option<Instant>,
    /// Resumptions in the run.
    fruitless: u32,
    /// Bytes since the last break.
    since: u64,
}

impl Breaks {
    const PAUSE_FIRST: Duration = Duration::from_millis(50);
    const PAUSE_MAX: Duration = Duration::from_secs(2);
    /// What must come after a break for the run of breaks to be over.
    const PROGRESS: u64 = 64 << 10;

    pub(crate) fn new(deadline: Duration) -> Breaks {
        Breaks {
            deadline,
            broke_at: None,
            fruitless: 0,
            since: 0,
        }
    }

    /// `bytes` came: once enough came since the last break, the next break starts a new run.
    pub(crate) fn progressed(&mut self, bytes: u64) {
        if self.broke_at.is_none() {
            return;
        }
        self.since += bytes;
        if self.since >= Self::PROGRESS {
            self.broke_at = None;
            self.fruitless = 0;
        }
    }

    /// The stream broke: the pause before asking for the rest, or `None` once the deadline has
    /// passed.
    pub(crate) fn broke(&mut self) -> Option<Duration> {
        self.since = 0;
        let broke_at = *self.broke_at.get_or_insert_with(Instant::now);
        if broke_at.elapsed() >= self.deadline {
            return None;
        }
        let pause = match self.fruitless {
            0 => Duration::ZERO,
            n => Self::PAUSE_FIRST
                .saturating_mul(1 << (n - 1).min(6))
                .min(Self::PAUSE_MAX),
        };
        self.fruitless += 1;
        Some(pause)
    }
}

/// What a HEAD of one part of an object (`partNumber`) tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHead {
    pub size: u64,
    /// The whole object's ETag.
    pub etag: String,
    /// `x-amz-mp-parts-count`: the object's part count, for an object uploaded in parts.
    pub parts_count: Option<u32>,
}

/// Whether an ETag is that of an object uploaded in parts (`"<md5 of the parts' MD5s>-<count>"`).
pub fn is_multipart_etag(etag: &str) -> bool {
    etag.trim_matches('"').contains('-')
}

/// A byte range as the `Range` header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-` or `bytes=first-last` (inclusive).
    FromTo { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The inclusive span this range covers in an object of `size` bytes; `Ok(None)` when it
    /// is the whole object with no span to name (a suffix range of an empty object, which S3
    /// answers with 200 and the empty body); `InvalidRange` (416) when it is not satisfiable.
    pub fn resolve(self, size: u64) -> OriginResult<Option<(u64, u64)>> {
        match self {
            ByteRange::FromTo { first, last } => {
                if first >= size {
                    return Err(OriginError::InvalidRange { size: Some(size) });
                }
                let last = last.map_or(size - 1, |l| l.min(size - 1));
                if last < first {
                    return Err(OriginError::InvalidRange { size: Some(size) });
                }
                Ok(Some((first, last)))
            }
            ByteRange::Suffix(0) => Err(OriginError::InvalidRange { size: Some(size) }),
            ByteRange::Suffix(_) if size == 0 => Ok(None),
            ByteRange::Suffix(n) => Ok(Some((size.saturating_sub(n), size - 1))),
        }
    }

    /// The header value, e.g. `bytes=0-99`.
    pub fn header_value(self) -> String {
        match self {
            ByteRange::FromTo { first, last: Some(l) } => format!("bytes={first}-{l}"),
            ByteRange::FromTo { first, last: None } => format!("bytes={first}-"),
            ByteRange::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

/// A GET answered by the origin.
pub struct GetOutput {
    pub meta: ObjectMeta,
    /// The inclusive span served when the request had a range.
    pub range: Option<(u64, u64)>,
    pub body: ByteStream,
}

impl std::fmt::Debug for GetOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetOutput")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish()
    }
}

/// A body Perch holds whole before it sends it, so that a retry can send it again.
#[derive(Debug, Clone)]
pub enum PutBody {
    Bytes(Bytes),
    /// A local file holding exactly `len` bytes.
    File {
        path: PathBuf,
        len: u64,
    },
    /// A range of a blob, every block checked against its CRC32 as it is read (an upload).
    Blob(CheckedRange),
}

impl PutBody {
    pub fn len(&self) -> u64 {
        match self {
            PutBody::Bytes(b) => b.len() as u64,
            PutBody::File { len, .. } => *len,
            PutBody::Blob(range) => range.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A fresh stream of the whole body.
    pub async fn stream(&self) -> io::Result<ByteStream> {
        match self {
            PutBody::Bytes(b) => {
                let b = b.clone();
                Ok(Box::pin(futures::stream::once(async move { Ok(b) })))
            }
            PutBody::File { path, .. } => {
                let file = tokio::fs::File::open(path).await?;
                Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)))
            }
            PutBody::Blob(range) => Ok(range.stream()),
        }
    }
}

/// A PUT of a whole object.
#[derive(Debug, Clone)]
pub struct PutInput {
    pub headers: ContentHeaders,
    /// Checksums the client sent and Perch verified; stored with the object.
    pub checksums: Checksums,
    pub body: PutBody,
    /// `If-Match`: write only over this ETag.
    pub if_match: Option<String>,
    /// `If-None-Match: *`: write only when the key is absent.
    pub if_none_match: Option<String>,
    /// `Content-MD5` (base64 of the body's MD5): the origin refuses a body that does not match
    /// (400 BadDigest), so a body damaged on the way or on local disk never goes up silently.
    pub content_md5: Option<String>,
    /// More headers for the origin request (`--upload-header`; lower-case names). The directory
    /// origin ignores them.
    pub extra_headers: Vec<(String, String)>,
}

/// The origin's answer to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutput {
    pub etag: String,
    pub checksums: Checksums,
}

/// Where a copy takes its headers from.
// One per CopyObject, never stored in bulk: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataDirective {
    Copy,
    Replace(ContentHeaders),
    /// The source's own headers again, sent as a REPLACE: a copy onto itself that S3 takes as a
    /// change because it names a storage class or an encryption (the class is passed on, the
    /// encryption, `AES256`, is what every object gets).
    Again,
}

/// A CopyObject.
#[derive(Debug, Clone)]
pub struct CopyInput {
    pub src_bucket: String,
    pub src_key: String,
    /// `x-amz-copy-source-if-*`.
    pub conditions: Conditions,
    pub directive: MetadataDirective,
    /// The copy's storage class when not STANDARD, whatever the directive: as on S3, a copy is
    /// STANDARD unless it names another class.
    pub storage_class: Option<String>,
    /// `x-amz-tagging-directive: REPLACE`: the copy's tags (maybe none); `None`: the source's, as
    /// S3 copies them by default.
    pub tags: Option<Vec<(String, String)>>,
    /// `x-amz-checksum-algorithm`: the copy keeps this checksum of its body, computed by whoever
    /// makes the copy, in place of the source's; `None`: the source's full-object checksums.
    pub checksum_algorithm: Option<ChecksumAlgorithm>,
}

impl CopyInput {
    /// Refuses a copy of an object onto itself that changes nothing, as S3 does (400
    /// InvalidRequest). Whoever makes the copy checks it: the origin, or Perch for a pending source.
    pub fn check_not_onto_itself(&self, bucket: &str, key: &str) -> OriginResult<()> {
        if self.src_bucket == bucket && self.src_key == key && self.directive == MetadataDirective::Copy {
            return Err(OriginError::rejected(
                400,
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without changing \
                 the object's metadata, storage class, website redirect location or encryption attributes.",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutput {
    pub etag: String,
    pub last_modified: SystemTime,
    /// The copy's checksums, as the answer names them (`CopyObjectResult`).
    pub checksums: Checksums,
}

/// One page of a listing, asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub prefix: Option<String>,
    pub delimiter: Option<String>,
    /// 1..=1000.
    pub max_keys: usize,
    /// List keys strictly after this one.
    pub start_after: Option<String>,
    /// The `next` of the previous page, as this origin made it.
    pub continuation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: SystemTime,
    /// The object's storage class when not STANDARD (`ContentHeaders::storage_class`).
    pub storage_class: Option<String>,
    /// The algorithm and type of the checksum the object keeps, if any (listings name them).
    pub checksum: Option<(ChecksumAlgorithm, ChecksumType)>,
}

/// One page of a listing, answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: Vec<ListEntry>,
    pub common_prefixes: Vec<String>,
    /// Set when the listing goes on: pass it back as `continuation`.
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    pub created: SystemTime,
    /// Who owns it, as the origin's ListBuckets names its owner (`None`: the origin does not say).
    pub owner: Option<BucketOwner>,
}

/// The owner of buckets, as S3 names one: its canonical id and display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketOwner {
    pub id: String,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
    /// The checksum the upload's object will keep, as CreateMultipartUpload asked for it.
    pub checksum: Option<MultipartChecksum>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: i32,
    pub etag: String,
    pub size: u64,
    pub last_modified: SystemTime,
    /// The part's checksum of the upload's algorithm (empty for an upload without one).
    pub checksums: Checksums,
}

/// A part as CompleteMultipartUpload names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub part_number: i32,
    pub etag: String,
    /// The part's checksums as the request declares them (may be empty); a value that differs
    /// from the one kept with the part is 400 InvalidPart.
    pub checksums: Checksums,
}

/// What a CompleteMultipartUpload request says its object will be: its whole checksum (a
/// COMPOSITE value with or without its `-<parts>`, or a FULL_OBJECT one) and its size
/// (`x-amz-mp-object-size`). A completion whose object would differ is refused before anything
/// is written, and the upload stays, as on S3.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub checksums: Checksums,
    pub size: Option<u64>,
}

impl Expected {
    /// Refuses an object of `size` bytes with `checksums` that is not what was announced: 400
    /// InvalidRequest for the size, 400 BadDigest for a checksum. A checksum of an algorithm the
    /// upload keeps none of is not checked (Perch computes only the upload's own), as before.
    pub fn check(&self, checksums: &Checksums, size: u64) -> OriginResult<()> {
        if let Some(announced) = self.size
            && announced != size
        {
            return Err(OriginError::rejected(
                400,
                "InvalidRequest",
                format!(
                    "The provided 'x-amz-mp-object-size' header value {announced} does not match what was computed: {size}"
                ),
            ));
        }
        // A composite value's `-<parts>`, when it has one.
        let split = |v: &str| -> (String, Option<String>) {
            match v.rsplit_once('-') {
                Some((value, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => {
                    (value.to_owned(), Some(n.to_owned()))
                }
                _ => (v.to_owned(), None),
            }
        };
        for (algorithm, announced) in self.checksums.iter() {
            let Some(ours) = checksums.get(algorithm) else {
                continue;
            };
            let (value, parts) = split(announced);
            let (ours, our_parts) = split(ours);
            let same = ours == value && (parts.is_none() || parts == our_parts);
            if !same {
                return Err(OriginError::rejected(
                    400,
                    "BadDigest",
                    format!(
                        "The {} you specified did not match the calculated checksum.",
                        algorithm.as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The error behind an origin failure, shared by every reader of the fetch that met it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A failure known only by its text, as a `Cause`.
pub fn cause(text: impl Into<String>) -> Cause {
    Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(text.into()))
}

/// What can go wrong at the origin. The gateway turns each into its S3 error.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("the key does not exist")]
    NoSuchKey,
    #[error("the multipart upload does not exist")]
    NoSuchUpload,
    #[error("a precondition failed")]
    PreconditionFailed,
    /// 304: the object has not changed. What its 200 would have said that a 304 repeats (RFC
    /// 9110 §15.4.5: the ETag, Cache-Control and Expires; S3 adds Last-Modified), where known:
    /// all of them when Perch decided, the ETag alone from an origin's 304.
    #[error("not modified")]
    NotModified {
        etag: Option<String>,
        last_modified: Option<SystemTime>,
        cache_control: Option<String>,
        expires: Option<String>,
    },
    /// 416: the range is not satisfiable; the object's size, where known (the origin's 416 does
    /// not carry it here).
    #[error("the range is not satisfiable")]
    InvalidRange { size: Option<u64> },
    /// Any other answer the origin gave that retrying will not change (400, 403, 409, ...).
    #[error("origin answered {status} {code}: {message}")]
    Rejected { status: u16, code: String, message: String },
    /// An answer worth retrying: 5xx, throttling, a timeout, a broken connection. `what` says
    /// what happened (with its causes' text, for logs); `cause` is the failure it came from,
    /// where there is one (the SDK's error, a broken body's).
    #[error("origin unavailable: {what}")]
    Transient {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    /// Retries ran out of time (`--origin-retry-deadline`, `seconds`), or a fetch this request
    /// waited on failed (`seconds` 0): `last` is the failure.
    #[error("origin unavailable after retrying for {seconds} s: {last}")]
    Unavailable {
        seconds: u64,
        #[source]
        last: Cause,
    },
    /// A local failure (disk, the file origin's own I/O).
    #[error("local I/O: {0}")]
    Io(#[from] io::Error),
}

impl OriginError {
    /// An answer worth retrying at once (the retry layer's rule).
    pub fn is_transient(&self) -> bool {
        matches!(self, OriginError::Transient { .. })
    }

    /// Whether a failed attempt may still have been carried out by the origin: its answer was
    /// lost (a timeout, a reset, no answer at all) or was a server error that does not say (500,
    /// 502, 504). A refusal to start says it was not: 503 (SlowDown, ServiceUnavailable), 429 and
    /// the other throttles, 408, a 409 conflict to retry, a refused credential. (A transient answer's text starts with its
    /// status: `errors::classify_answer`.)
    pub fn may_have_taken_effect(&self) -> bool {
        let OriginError::Transient { what, .. } = self else {
            return false;
        };
        let status = what
            .split_once(' ')
            .and_then(|(s, _)| (s.len() == 3).then(|| s.parse::<u16>().ok()).flatten());
        !matches!(status, Some(400 | 403 | 408 | 409 | 429 | 503))
    }

    /// The S3 error code, when the server refused the request's signature or credentials (a
    /// wrong key pair, a clock too far off): an answer only other keys or a set clock change.
    pub fn refused_credentials(&self) -> Option<&str> {
        let OriginError::Transient { what, .. } = self else {
            return None;
        };
        let mut words = what.split([' ', ':']);
        if !matches!(words.next(), Some("400" | "403")) {
            return None;
        }
        words.next().filter(|code| s3::is_credential_code(code))
    }

    /// Whether the origin asked for fewer requests: 503 SlowDown, 429 and the other throttles.
    pub fn is_throttle(&self) -> bool {
        let OriginError::Transient { what, .. } = self else {
            return false;
        };
        let mut words = what.split([' ', ':']);
        let status = words.next();
        let code = words.next();
        status == Some("429")
            || matches!(
                code,
                Some("SlowDown" | "Throttling" | "ThrottlingException" | "TooManyRequests" | "RequestLimitExceeded")
            )
    }

    /// An answer no retry will change, for a write already acknowledged (the uploader's rule):
    /// a refusal (4xx but 408 and 429), a missing bucket, a failed precondition. Everything else
    /// (5xx, throttling, timeouts, local I/O) is retried for as long as it takes.
    pub fn is_permanent(&self) -> bool {
        match self {
            OriginError::Rejected { status, .. } => (400..500).contains(status) && *status != 408 && *status != 429,
            OriginError::NoSuchBucket | OriginError::PreconditionFailed | OriginError::InvalidRange { .. } => true,
            _ => false,
        }
    }

    /// The origin answered 501: it does not implement something the request asks for (S3's
    /// answer to a header it does not support). A 5xx is retried as transient (its text starts
    /// with the status: `errors::classify_answer`), but no retry of the same request changes it.
    pub fn is_not_implemented(&self) -> bool {
        match self {
            OriginError::Rejected { status, .. } => *status == 501,
            OriginError::Transient { what, .. } => what.starts_with("501 "),
            _ => false,
        }
    }

    /// A 501 the origin answered (`is_not_implemented`) as the refusal it is: `Rejected` with its
    /// status, code and message, to pass on to the client at once, as no retry changes it. Any
    /// other error as it is.
    pub fn as_not_implemented(self) -> OriginError {
        match self {
            OriginError::Transient { what, .. } if what.starts_with("501 ") => {
                let rest = &what["501 ".len()..];
                let (code, message) = rest.split_once(": ").unwrap_or((rest, ""));
                OriginError::Rejected {
                    status: 501,
                    code: if code.is_empty() {
                        "NotImplemented".to_owned()
                    } else {
                        code.to_owned()
                    },
                    message: message.to_owned(),
                }
            }
            other => other,
        }
    }

    /// A transient failure that no other error caused (an answer Perch cannot use).
    pub fn transient(what: impl Into<String>) -> Self {
        OriginError::Transient {
            what: what.into(),
            cause: None,
        }
    }

    /// A transient failure and the error it came from.
    pub fn transient_from(what: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        OriginError::Transient {
            what: what.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The origin stays unavailable after `seconds` of retries (0: a fetch waited on failed).
    pub fn unavailable(seconds: u64, last: Cause) -> Self {
        OriginError::Unavailable { seconds, last }
    }

    pub fn rejected(status: u16, code: &str, message: impl Into<String>) -> Self {
        OriginError::Rejected {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

pub type OriginResult<T> = Result<T, OriginError>;

/// An S3 store. Keys are arbitrary UTF-8 strings: `a/` and `a/b` are two objects.
#[async_trait]
pub trait Origin: Send + Sync + 'static {
    /// A short name for logs and metrics (`s3` or `fs`).
    fn kind(&self) -> &'static str;

    /// The fault of the origin's last unanswered call while its calls keep failing, where the
    /// origin keeps one (`RetryingOrigin`).
    fn fault(&self) -> Option<String> {
        None
    }

    async fn list_buckets(&self) -> OriginResult<Vec<BucketInfo>>;
    async fn create_bucket(&self, bucket: &str) -> OriginResult<()>;
    /// CreateBucket as the client asked it (`NewBucket`), for the origin to take or refuse. An
    /// origin that keeps no configuration (the directory one) has no region to take, and refuses
    /// an ACL or an object ownership other than what it is (private, `BucketOwnerEnforced`).
    async fn create_bucket_in(&self, bucket: &str, new: &NewBucket) -> OriginResult<()> {
        if let Some(asked) = new.configured() {
            return Err(OriginError::rejected(
                501,
                "NotImplemented",
                format!("This origin keeps no bucket configuration: {asked} cannot be kept."),
            ));
        }
        self.create_bucket(bucket).await
    }
    /// HeadBucket: the bucket's region as the origin names it (`x-amz-bucket-region`), if it does.
    async fn head_bucket(&self, bucket: &str) -> OriginResult<Option<String>>;
    /// GetBucketLocation: the bucket's region as the origin names it (`None`: us-east-1, or an
    /// origin without regions).
    async fn bucket_location(&self, bucket: &str) -> OriginResult<Option<String>> {
        self.head_bucket(bucket).await?;
        Ok(None)
    }
    async fn delete_bucket(&self, bucket: &str) -> OriginResult<()>;

    async fn head_object(&self, bucket: &str, key: &str, conditions: &Conditions) -> OriginResult<ObjectMeta>;
    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<GetOutput>;
    async fn put_object(&self, bucket: &str, key: &str, input: &PutInput) -> OriginResult<PutOutput>;
    /// Deleting an absent key succeeds, as on S3. With `if_match` (S3's `If-Match`: ETags, or
    /// `*`), only the object it names is deleted: another is 412, an absent key 404 NoSuchKey.
    async fn delete_object(&self, bucket: &str, key: &str, if_match: Option<&str>) -> OriginResult<()>;
    async fn copy_object(&self, bucket: &str, key: &str, input: &CopyInput) -> OriginResult<CopyOutput>;
    async fn list_objects(&self, bucket: &str, query: &ListQuery) -> OriginResult<ListPage>;

    /// Starts an upload; `checksum` is the flexible checksum its object will keep
    /// (`x-amz-checksum-algorithm` and `x-amz-checksum-type`), if any.
    async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        headers: &ContentHeaders,
        extra_headers: &[(String, String)],
        checksum: Option<MultipartChecksum>,
    ) -> OriginResult<String>;
    /// Stores a part. `checksums` are the part's checksums the client sent and Perch verified.
    /// Answers the part's ETag and the checksum kept with it (of the upload's algorithm).
    async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: &PutBody,
        checksums: &Checksums,
    ) -> OriginResult<PutOutput>;
    /// Assembles the object. Answers its ETag and its checksum: COMPOSITE
    /// (`base64(hash(part digests))-<parts>`) or FULL_OBJECT, as the upload was created.
    async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
    ) -> OriginResult<PutOutput>;
    async fn abort_multipart_upload(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<()>;
    /// All parts uploaded so far, by part number.
    async fn list_parts(&self, bucket: &str, key: &str, upload_id: &str) -> OriginResult<Vec<PartInfo>>;
    /// Uploads in progress whose key starts with `prefix`, by key then initiation.
    async fn list_multipart_uploads(&self, bucket: &str, prefix: &str) -> OriginResult<Vec<UploadInfo>>;

    /// Part `part` of `key` as a HEAD with `partNumber` answers it: the part's size and the
    /// object's ETag, and the object's part count when it was uploaded in parts. An origin that
    /// cannot tell answers 501 NotImplemented.
    async fn head_part(&self, bucket: &str, key: &str, part: u32) -> OriginResult<PartHead> {
        let _ = (bucket, key, part);
        Err(OriginError::rejected(
            501,
            "NotImplemented",
            "This origin cannot read an object by part number.",
        ))
    }

    /// A configuration of `bucket`, or with `key` that object's ACL or tags (its only
    /// sub-resources), as the origin answers it.
    async fn get_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<Document>;
    /// Replaces a configuration of `bucket` (or, with `key`, that object's ACL or tags) with `doc`.
    async fn put_config(&self, bucket: &str, key: Option<&str>, sub: Subresource, doc: &Document) -> OriginResult<()>;
    /// Removes a configuration of `bucket` (S3 has DELETEs for some only: `not_deletable`), or
    /// with `key` that object's tags.
    async fn delete_config(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<()>;
}
