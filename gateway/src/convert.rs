//! Translation between s3s's wire types and the origin's types, and from origin errors to the
//! S3 errors clients see. Pure functions, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use perch_cache::{
    ByteRange, Checksums, Conditions, ContentHeaders, METADATA_BYTES_MAX, ObjectMeta, OriginError, Store, StoreError,
};
use s3s::dto::{ETag, ETagCondition, Range, StorageClass, Timestamp, TimestampFormat};
use s3s::{S3Error, S3ErrorCode, s3_error};

/// The S3 error a client sees for an origin failure.
pub fn origin_error(e: OriginError) -> S3Error {
    match e {
        OriginError::NoSuchBucket => s3_error!(NoSuchBucket, "The specified bucket does not exist"),
        OriginError::NoSuchKey => s3_error!(NoSuchKey, "The specified key does not exist."),
        OriginError::NoSuchUpload => s3_error!(NoSuchUpload, "The specified multipart upload does not exist."),
        OriginError::PreconditionFailed => {
            s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            )
        }
        OriginError::NotModified {
            etag,
            last_modified,
            cache_control,
            expires,
        } => {
            // RFC 9110 §15.4.5: a 304 carries the ETag, Cache-Control and Expires a 200 would
            // have (caches refresh by them); S3 adds Last-Modified.
            let mut err = s3_error!(NotModified);
            let mut headers = http::HeaderMap::new();
            let etag = etag.map(|e| {
                if e.starts_with('"') || e.starts_with("W/") {
                    e
                } else {
                    format!("\"{e}\"")
                }
            });
            for (name, value) in [
                (http::header::ETAG, etag),
                (http::header::LAST_MODIFIED, last_modified.map(httpdate::fmt_http_date)),
                (http::header::CACHE_CONTROL, cache_control),
                (http::header::EXPIRES, expires.map(|text| expires_as_answered(&text))),
            ] {
                if let Some(value) = value.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                    headers.insert(name, value);
                }
            }
            if !headers.is_empty() {
                err.set_headers(headers);
            }
            err
        }
        OriginError::InvalidRange { size } => {
            // RFC 9110 §15.5.17: a 416 names the object's size (`bytes */N`); the door adds it to
            // the document too, as S3's ActualObjectSize (`server::error_completed`).
            let mut err = s3_error!(InvalidRange, "The requested range is not satisfiable");
            if let Some(size) = size
                && let Ok(value) = http::HeaderValue::from_str(&format!("bytes */{size}"))
            {
                let mut headers = http::HeaderMap::new();
                headers.insert(http::header::CONTENT_RANGE, value);
                err.set_headers(headers);
            }
            err
        }
        OriginError::Rejected { status, code, message } => {
            let code: S3ErrorCode = code.parse().unwrap_or(S3ErrorCode::InternalError);
            let mut err = S3Error::with_message(code, message);
            if let Ok(status) = http::StatusCode::from_u16(status) {
                err.set_status_code(status);
            }
            err
        }
        e @ (OriginError::Transient { .. } | OriginError::Unavailable { .. }) => {
            tracing::warn!(error = %e, "answering 503 SlowDown");
            let mut err = s3_error!(SlowDown, "The origin store is unavailable; please retry.");
            err.set_source(Box::new(OriginFault(e)));
            err
        }
        OriginError::Io(e) if perch_cache::is_no_space(&e) => {
            tracing::warn!(error = %e, "the data dir's filesystem is full: answering 503 SlowDown");
            let mut err = s3_error!(SlowDown, "Perch's disk is full; please retry.");
            err.set_source(Box::new(e));
            err
        }
        OriginError::Io(e) => {
            tracing::error!(error = %e, "local I/O error");
            let mut err = s3_error!(InternalError, "Perch hit a local I/O error.");
            err.set_source(Box::new(e));
            err
        }
    }
}

/// An origin failure as a 503's source: its causes kept, its `Debug` its one line of text (s3s
/// logs every failed operation's error with `Debug`, and an SDK error's holds a whole answer).
struct OriginFault(OriginError);

impl std::fmt::Debug for OriginFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for OriginFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for OriginFault {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// The S3 error a client sees for a store failure.
pub fn store_error(e: StoreError) -> S3Error {
    match e {
        StoreError::Origin(e) => origin_error(e),
        StoreError::Timeout(_) => {
            let mut err = S3Error::with_message(
                S3ErrorCode::SlowDown,
                "The origin has not confirmed in time the writes this request waits for (they stay queued). Please \
                 retry.",
            );
            err.set_status_code(http::StatusCode::SERVICE_UNAVAILABLE);
            err
        }
        StoreError::LargerThanVolume { need, max } => S3Error::with_message(
            S3ErrorCode::EntityTooLarge,
            format!(
                "Your proposed upload needs {need} bytes on Perch's volume, which can hold at most {max} for one \
                 write."
            ),
        ),
        StoreError::NoRoom(_) => {
            let mut err = S3Error::with_message(
                S3ErrorCode::SlowDown,
                "Perch's backlog of writes not yet uploaded (--dirty-bytes-max) or its disk is full; please retry.",
            );
            err.set_status_code(http::StatusCode::SERVICE_UNAVAILABLE);
            err
        }
        // Kept here until an operator retries or drops it: not the client's fault, and over once
        // they have.
        StoreError::Refused { seq, error, .. } => S3Error::with_message(
            S3ErrorCode::ServiceUnavailable,
            format!(
                "A write this request must follow could not be uploaded ({error}); Perch keeps it as version \
                 {seq} until an operator retries or drops it (perch journal). Please retry later."
            ),
        ),
        // A full disk is the client's to retry once there is room, never a 500.
        StoreError::Local(e) if e.is_no_space() => {
            tracing::warn!(error = %e, "the data dir's filesystem is full: answering 503 SlowDown");
            let mut err = s3_error!(SlowDown, "Perch's disk is full; please retry.");
            err.set_source(Box::new(e));
            err
        }
        StoreError::Local(e) => {
            tracing::error!(error = %e, "local storage failed");
            let mut err = S3Error::with_message(S3ErrorCode::InternalError, "Perch could not use its local storage.");
            err.set_source(Box::new(e));
            err
        }
    }
}

/// An `If-Match`/`If-None-Match` value as the origin takes it.
pub fn etag_condition(c: &ETagCondition) -> String {
    match c {
        ETagCondition::Any => "*".to_owned(),
        ETagCondition::ETag(ETag::Strong(v)) => format!("\"{v}\""),
        ETagCondition::ETag(ETag::Weak(v)) => format!("W/\"{v}\""),
    }
}

/// The ETag as s3s writes it: a quoted origin ETag becomes a strong one.
pub fn etag(s: &str) -> ETag {
    if let Some(rest) = s.strip_prefix("W/") {
        return ETag::Weak(rest.trim_matches('"').to_owned());
    }
    ETag::Strong(s.trim_matches('"').to_owned())
}

pub fn system_time(t: Timestamp) -> SystemTime {
    time::OffsetDateTime::from(t).into()
}

/// A time as S3 writes it in its documents: to the whole second (`…T02:47:52.000Z`), as the
/// `Last-Modified` header carries it, so that a client comparing the two finds them equal.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let whole = t.duration_since(SystemTime::UNIX_EPOCH).map_or(t, |d| {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.as_secs())
    });
    Timestamp::from(whole)
}

pub fn conditions(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<Timestamp>,
    if_unmodified_since: Option<Timestamp>,
) -> Conditions {
    Conditions {
        if_match: if_match.map(etag_condition),
        if_none_match: if_none_match.map(etag_condition),
        if_modified_since: if_modified_since.map(system_time),
        if_unmodified_since: if_unmodified_since.map(system_time),
    }
}

pub fn range(r: Range) -> ByteRange {
    match r {
        Range::Int { first, last } => ByteRange::FromTo { first, last },
        Range::Suffix { length } => ByteRange::Suffix(length),
    }
}

/// Whether a `Range` value is `bytes=-`, which s3s reads as a suffix of 0 bytes (416) and S3, as
/// any Range that is not one, ignores.
pub fn is_empty_suffix(value: &[u8]) -> bool {
    value.trim_ascii() == b"bytes=-"
}

/// The Range a GET or HEAD asks for: s3s's, but none for `bytes=-` (`is_empty_suffix`).
pub fn requested_range(range: Option<Range>, headers: &http::HeaderMap) -> Option<Range> {
    let empty_suffix = headers
        .get(http::header::RANGE)
        .is_some_and(|v| is_empty_suffix(v.as_bytes()));
    range.filter(|_| !empty_suffix)
}

pub fn expires_header(t: Option<Timestamp>) -> Option<String> {
    let t = t?;
    let mut buf = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut buf).ok()?;
    String::from_utf8(buf).ok()
}

pub fn expires_timestamp(s: Option<&str>) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, s?).ok()
}

/// A stored `Expires` as a 200 answers it: a date written again as s3s writes one, any other
/// text as it was given.
fn expires_as_answered(text: &str) -> String {
    let mut buf = Vec::with_capacity(32);
    match expires_timestamp(Some(text)) {
        Some(t) if t.format(TimestampFormat::HttpDate, &mut buf).is_ok() => {
            String::from_utf8(buf).unwrap_or_else(|_| text.to_owned())
        }
        _ => text.to_owned(),
    }
}

/// A stored `Expires` that is no HTTP date, as the header S3 answers with it: S3 keeps whatever
/// text it was given (`0`, `-1`), where s3s only writes a date. `None` for a date (s3s writes
/// it), or when a `response-expires` takes its place (`overridden`).
pub fn expires_text(m: &ObjectMeta, overridden: bool) -> Option<http::HeaderValue> {
    let text = m.headers.expires.as_deref()?;
    if overridden || expires_timestamp(Some(text)).is_some() {
        return None;
    }
    http::HeaderValue::from_str(text).ok()
}

/// The stored headers of a PUT, copy or multipart upload.
#[allow(clippy::too_many_arguments)]
pub fn content_headers(
    content_type: Option<String>,
    cache_control: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    expires: Option<Timestamp>,
    metadata: Option<HashMap<String, String>>,
) -> ContentHeaders {
    ContentHeaders {
        // S3 gives an object stored without a type this one.
        content_type: content_type
            .map(trimmed)
            .or_else(|| Some("binary/octet-stream".to_owned())),
        cache_control: cache_control.map(trimmed),
        content_encoding: content_encoding.and_then(|e| without_aws_chunked(&e)),
        content_disposition: content_disposition.map(trimmed),
        content_language: content_language.map(trimmed),
        expires: expires_header(expires),
        metadata: metadata
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), mail_safe(v)))
            .collect::<BTreeMap<_, _>>(),
        storage_class: None,
        tags: Vec::new(),
        origin_tag_count: None,
        opaque_etag_encryption: None,
    }
}

/// A content header's value without spaces or tabs at its ends, as HTTP carries it (a browser
/// form's field keeps them: stored, the upload would send another value than the one kept).
fn trimmed(value: String) -> String {
    let kept = value.trim_matches([' ', '\t']);
    if kept.len() == value.len() {
        value
    } else {
        kept.to_owned()
    }
}

/// The length of `mail_safe(value)`: what the origin receives, and counts against its 2 KB.
fn mail_safe_len(value: &str) -> usize {
    if is_header_text(value) {
        value.len()
    } else {
        "=?UTF-8?B?".len() + value.len().div_ceil(3) * 4 + "?=".len()
    }
}

/// A metadata value as S3 keeps and returns it: as given when it is header text (visible US-ASCII
/// and inner spaces), else encoded as RFC 2047 says (`=?UTF-8?B?<base64>?=`). s3s decodes such a
/// value on the way in; kept decoded, it went out as raw UTF-8 bytes, which clients read as
/// Latin-1, and to the origin likewise; one that decodes to a control character (`x\r\ny`) could
/// not go out at all, and its upload was refused for good; one with a tab, or a space at an end,
/// went out otherwise than it was kept.
fn mail_safe(value: String) -> String {
    if is_header_text(&value) {
        return value;
    }
    format!(
        "=?UTF-8?B?{}?=",
        base64_simd::STANDARD.encode_to_string(value.as_bytes())
    )
}

/// Whether `value` goes out as a header's value and is read back as it is: visible US-ASCII and
/// spaces, none at either end (HTTP trims a value's ends; s3s encodes a tab on the way out).
fn is_header_text(value: &str) -> bool {
    value.bytes().all(|b| (b' '..=b'~').contains(&b)) && !value.starts_with(' ') && !value.ends_with(' ')
}

/// A stored metadata value as s3s writes it into an answer's `x-amz-meta-*` header (the fast
/// path writes it so too): as it is when ASCII from space to `~`, else as RFC 2047 encoded words
/// (`=?UTF-8?B?<base64>?=`, 45 bytes of the value each, split between characters, joined by
/// spaces; a value of up to 47 bytes in one word, of up to 76 characters, as s3s estimates it). A value Perch stored is already header text (`mail_safe`); one
/// another writer left at the origin may not be.
pub fn answered_metadata(value: &str) -> std::borrow::Cow<'_, str> {
    const WORD_BYTES: usize = 45;
    if value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return std::borrow::Cow::Borrowed(value);
    }
    // s3s's own estimate of one word's length (`(len × 4) / 3` rounded up, plus the 12 of the
    // delimiters), kept as it is so that both paths split alike.
    if (value.len() * 4).div_ceil(3) + 12 <= 75 {
        let word = base64_simd::STANDARD.encode_to_string(value.as_bytes());
        return std::borrow::Cow::Owned(format!("=?UTF-8?B?{word}?="));
    }
    let mut out = String::with_capacity(value.len() * 2);
    let mut start = 0;
    while start < value.len() {
        let mut end = (start + WORD_BYTES).min(value.len());
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("=?UTF-8?B?");
        out.push_str(&base64_simd::STANDARD.encode_to_string(&value.as_bytes()[start..end]));
        out.push_str("?=");
        start = end;
    }
    std::borrow::Cow::Owned(out)
}

/// `aws-chunked` in `Content-Encoding` frames the request body; it is not part of the object.
/// The rest is kept as the client wrote it (`deflate, gzip` keeps its space).
fn without_aws_chunked(encoding: &str) -> Option<String> {
    let kept: Vec<&str> = encoding
        .split(',')
        .filter(|t| !t.trim().is_empty() && !t.trim().eq_ignore_ascii_case("aws-chunked"))
        .collect();
    let kept = kept.join(",");
    let kept = kept.trim();
    (!kept.is_empty()).then(|| kept.to_owned())
}

pub fn metadata(h: &ContentHeaders) -> Option<HashMap<String, String>> {
    (!h.metadata.is_empty()).then(|| h.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

pub fn checksums(
    crc32: Option<String>,
    crc32c: Option<String>,
    crc64nvme: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
) -> Checksums {
    Checksums {
        crc32,
        crc32c,
        crc64nvme,
        sha1,
        sha256,
    }
}

/// S3's longest key, in UTF-8 bytes.
pub const KEY_BYTES_MAX: usize = 1024;

/// The canned ACLs S3 knows (`x-amz-acl`).
const CANNED_ACLS: [&str; 8] = [
    "private",
    "public-read",
    "public-read-write",
    "aws-exec-read",
    "authenticated-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
    "log-delivery-write",
];

/// A canned ACL S3 does not know is S3's 400 InvalidArgument, at the door: an origin need not
/// answer it as S3 does (moto fails with a 500, which Perch would retry until it gives up), and a
/// write must not be acknowledged with a header its upload cannot carry.
pub fn check_canned_acl(acl: Option<&str>) -> Result<(), S3Error> {
    match acl {
        Some(a) if !CANNED_ACLS.contains(&a) => Err(s3_error!(InvalidArgument, "Invalid canned ACL: {a}")),
        _ => Ok(()),
    }
}

/// What an object write asks of the origin beyond the object and the headers Perch keeps with it
/// (docs/s3-compatibility.md, "What is kept per object"), read from its input by `unkept!`.
#[derive(Default)]
pub struct Unkept<'a> {
    pub storage_class: Option<&'a str>,
    pub encryption: Option<&'a str>,
    pub customer_key: bool,
    /// A KMS key id or encryption context (`x-amz-server-side-encryption-aws-kms-key-id`,
    /// `-context`).
    pub kms_detail: bool,
    pub website_redirect: bool,
    pub object_lock: bool,
}

/// The `Unkept` of a PutObject, CopyObject or CreateMultipartUpload input.
macro_rules! unkept {
    ($input:expr) => {
        $crate::convert::Unkept {
            storage_class: $input.storage_class.as_ref().map(|c| c.as_str()),
            encryption: $input.server_side_encryption.as_ref().map(|e| e.as_str()),
            customer_key: $input.sse_customer_algorithm.is_some(),
            kms_detail: $input.ssekms_key_id.is_some() || $input.ssekms_encryption_context.is_some(),
            website_redirect: $input.website_redirect_location.is_some(),
            object_lock: $input.object_lock_mode.is_some()
                || $input.object_lock_retain_until_date.is_some()
                || $input.object_lock_legal_hold_status.is_some(),
        }
    };
}
pub(crate) use unkept;

/// The storage classes S3 knows (`x-amz-storage-class`).
const STORAGE_CLASSES: [&str; 12] = [
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
    "FSX_OPENZFS",
];

/// The server-side encryptions S3 knows (`x-amz-server-side-encryption`).
const ENCRYPTIONS: [&str; 3] = ["AES256", "aws:kms", "aws:kms:dsse"];

/// The classes whose objects S3 reads only once restored (403 InvalidObjectState before).
const ARCHIVE_CLASSES: [&str; 2] = ["GLACIER", "DEEP_ARCHIVE"];

/// An object write that asks for what Perch would not carry to the origin is S3's 501
/// NotImplemented ("a header you provided implies functionality that is not implemented"), at the
/// door: acknowledged, it would be stored without it, silently (a customer's encryption key that
/// the cache would then serve without). What every object gets anyway is taken: SSE-S3
/// (`AES256`), which S3 and Tigris apply to every object at rest. A storage class S3 knows is
/// carried (`storage_class`), once the origin takes it (`Store::check_storage_class`), but for the
/// archive classes: their objects are not read before a restore, and Perch's copy would be.
pub fn check_kept(u: Unkept<'_>) -> Result<(), S3Error> {
    // A class S3 does not know is the client's mistake, not a feature Perch lacks.
    if u.storage_class.is_some_and(|c| !STORAGE_CLASSES.contains(&c)) {
        return Err(s3_error!(
            InvalidStorageClass,
            "The storage class you specified is not valid"
        ));
    }
    // So is an encryption S3 does not know (`aes256`, a typo of `aws:kms`).
    if u.encryption.is_some_and(|e| !ENCRYPTIONS.contains(&e)) {
        return Err(s3_error!(
            InvalidArgument,
            "The encryption method specified is not supported"
        ));
    }
    // A KMS key or context names an encryption the request does not ask for.
    if u.kms_detail && !u.encryption.is_some_and(|e| e.starts_with("aws:kms")) {
        return Err(s3_error!(
            InvalidArgument,
            "Server Side Encryption with AWS KMS managed key requires HTTP header x-amz-server-side-encryption : aws:kms"
        ));
    }
    let refused = if u.storage_class.is_some_and(|c| ARCHIVE_CLASSES.contains(&c)) {
        "an archive storage class (GLACIER, DEEP_ARCHIVE: S3 refuses to read such an object until it is restored, and \
         Perch would serve its copy)"
    } else if u.encryption.is_some_and(|e| e != "AES256") {
        "server-side encryption other than AES256 (SSE-S3)"
    } else if u.customer_key {
        "server-side encryption with a customer's key (SSE-C)"
    } else if u.website_redirect {
        "a website redirect location"
    } else if u.object_lock {
        "object lock"
    } else {
        return Ok(());
    };
    Err(s3_error!(
        NotImplemented,
        "Perch does not keep {refused} with an object."
    ))
}

/// Tags per object at most (S3's limit).
const TAGS_MAX: usize = 10;

/// The tags of an object write (`x-amz-tagging`: URL query form), checked as S3 checks them, at
/// the door: a write must not be acknowledged with tags its upload would be refused for. At most
/// 10, keys unique, of 1 to 128 characters and not starting with `aws:`, values of at most 256,
/// both of Unicode letters, separators and numbers and `_ . : / = + - @`.
pub fn tags(raw: Option<&str>) -> Result<Vec<(String, String)>, S3Error> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    let invalid = |why: &str| s3_error!(InvalidTag, "{why}");
    // S3's own pattern: letters, separators and numbers of any script, and `_ . : / = + - @`
    // (not every character Rust calls alphanumeric or white space: combining marks, a tab).
    static TAG_TEXT: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$").ok());
    let allowed = |s: &str| TAG_TEXT.as_ref().is_some_and(|re| re.is_match(s));
    let mut tags: Vec<(String, String)> = Vec::new();
    for pair in raw.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (crate::sigv4::form_decode(k), crate::sigv4::form_decode(v)) else {
            return Err(invalid(
                "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query parameters without tag name duplicates.",
            ));
        };
        if k.is_empty() || !allowed(&k) {
            return Err(invalid("The TagKey you have provided is invalid"));
        }
        if k.chars().count() > 128 {
            return Err(invalid("The TagKey you have provided is too long, max 128"));
        }
        if k.starts_with("aws:") {
            return Err(invalid("Your TagKey cannot be prefixed with aws:"));
        }
        if !allowed(&v) {
            return Err(invalid("The TagValue you have provided is invalid"));
        }
        if v.chars().count() > 256 {
            return Err(invalid("The TagValue you have provided is too long, max 256"));
        }
        if tags.iter().any(|(seen, _)| *seen == k) {
            return Err(invalid("Cannot provide multiple Tags with the same key"));
        }
        tags.push((k, v));
    }
    if tags.len() > TAGS_MAX {
        return Err(invalid("Object tags cannot be greater than 10"));
    }
    Ok(tags)
}

/// The storage class a write keeps and its upload carries: none for STANDARD, which S3 names
/// nowhere (`check_kept` has refused a class S3 does not know).
pub fn storage_class(class: Option<&StorageClass>) -> Option<String> {
    class
        .map(|c| c.as_str())
        .filter(|c| *c != "STANDARD")
        .map(str::to_owned)
}

/// A multipart completion or a copy that carries a condition on the object it replaces
/// (`If-Match`, `If-None-Match`), or a delete conditioned by modification time or size (S3's
/// directory buckets'), is 501 NotImplemented, before anything is done: Perch does not have the
/// origin decide those, and carrying the request out without its condition would delete or
/// overwrite what the client meant to protect. `conditions` names them. (Conditional PUTs and
/// deletes by ETag are decided by the origin: docs/write-back.md.)
pub fn check_unconditional(what: &str, conditions: &str, conditioned: bool) -> Result<(), S3Error> {
    if conditioned {
        return Err(s3_error!(
            NotImplemented,
            "Perch does not support conditional {what} ({conditions}); nothing was done."
        ));
    }
    Ok(())
}

/// Buckets behind Perch are unversioned: a request may name the `null` version only.
pub fn check_version(version_id: Option<&str>) -> Result<(), S3Error> {
    match version_id {
        None | Some("null") => Ok(()),
        Some(_) => Err(s3_error!(InvalidArgument, "Buckets behind Perch are not versioned.")),
    }
}

/// Keys Perch refuses: what S3 refuses (empty, or over 1,024 UTF-8 bytes: the origin would refuse
/// the upload of an acknowledged write forever), `.` or `..` path segments (HTTP clients and
/// proxies rewrite such paths, so the object could not be read back by the name it was written
/// under) and NUL (XML listings cannot carry it).
pub fn check_key(key: &str) -> Result<(), S3Error> {
    if key.is_empty() {
        return Err(s3_error!(
            InvalidArgument,
            "An object key must be 1 to 1024 bytes long."
        ));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(s3_error!(KeyTooLongError, "Your key is too long (over 1024 bytes)."));
    }
    if key.contains('\0') {
        return Err(s3_error!(InvalidArgument, "Object keys cannot contain NUL."));
    }
    // S3 takes such a key, but the S3 client Perch sends uploads with (aws-sdk-s3) refuses to
    // build any request for it: acknowledged, it could never reach the origin.
    if key.trim().is_empty() {
        return Err(s3_error!(
            InvalidArgument,
            "Perch cannot store an object key made only of whitespace."
        ));
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(s3_error!(
            InvalidArgument,
            "Object keys cannot contain `.` or `..` path segments."
        ));
    }
    Ok(())
}

/// Refuses user metadata over S3's 2 KB (MetadataTooLarge), which the origin would refuse.
pub fn check_metadata(metadata: &Option<HashMap<String, String>>) -> Result<(), S3Error> {
    let size: usize = metadata
        .iter()
        .flatten()
        .map(|(name, value)| name.len() + mail_safe_len(value))
        .sum();
    if size > METADATA_BYTES_MAX {
        return Err(s3_error!(
            MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size ({size} bytes of x-amz-meta-* names and values, over 2048)."
        ));
    }
    Ok(())
}

/// Refuses `response-*` overrides no header can carry (a control character, say), as s3s refuses
/// a GET's: 400 InvalidRequest. A HEAD's reached the answer unchecked, and failed there as a 500.
pub fn check_overrides(overrides: [(&str, Option<&str>); 5]) -> Result<(), S3Error> {
    for (name, value) in overrides {
        if let Some(value) = value
            && http::HeaderValue::from_str(value).is_err()
        {
            return Err(s3_error!(
                InvalidRequest,
                "invalid overridden header: response-{name}: {value:?}"
            ));
        }
    }
    Ok(())
}

/// Refuses an object write whose stored headers (content headers, `x-amz-meta-*` and tags, as
/// uploaded, with the policy's for the key) an upload could not carry
/// (`ContentHeaders::check_uploadable`).
pub fn check_headers(store: &Store, bucket: &str, key: &str, h: &ContentHeaders) -> Result<(), S3Error> {
    store.check_uploadable(bucket, key, h).map_err(store_error)
}

/// The metadata of an object as GET and HEAD return it.
pub struct MetaOut {
    pub e_tag: ETag,
    pub last_modified: Timestamp,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub expires: Option<Timestamp>,
    pub metadata: Option<HashMap<String, String>>,
    pub storage_class: Option<StorageClass>,
}

pub fn meta_out(m: &ObjectMeta) -> MetaOut {
    MetaOut {
        e_tag: etag(&m.etag),
        last_modified: Timestamp::from(m.last_modified),
        content_type: m.headers.content_type.clone(),
        cache_control: m.headers.cache_control.clone(),
        content_encoding: m.headers.content_encoding.clone(),
        content_disposition: m.headers.content_disposition.clone(),
        content_language: m.headers.content_language.clone(),
        expires: expires_timestamp(m.headers.expires.as_deref()),
        metadata: metadata(&m.headers),
        storage_class: m.headers.storage_class.clone().map(StorageClass::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_times_are_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_765_000_000_678);
        let mut buf = Vec::new();
        timestamp(t)
            .format(s3s::dto::TimestampFormat::DateTime, &mut buf)
            .expect("format");
        assert_eq!(String::from_utf8_lossy(&buf), "2025-12-06T05:46:40.000Z");
    }

    #[test]
    fn keys() {
        assert!(check_key("data/1/pg_tblspc/").is_ok());
        assert!(check_key("a..b/c.d/...").is_ok());
        assert!(check_key("a/../b").is_err());
        assert!(check_key("../x").is_err());
        assert!(check_key("a/./b").is_err());
        assert!(check_key("a\0b").is_err());
        assert_eq!(*check_key("").unwrap_err().code(), S3ErrorCode::InvalidArgument);
        // Bytes, not characters: 512 two-byte characters fit, one more does not.
        assert!(check_key(&"é".repeat(512)).is_ok());
        assert_eq!(
            *check_key(&"é".repeat(513)).unwrap_err().code(),
            S3ErrorCode::KeyTooLongError
        );
    }

    #[test]
    fn metadata_size() {
        let meta = |pairs: &[(&str, usize)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, n)| (k.to_string(), "v".repeat(*n)))
                    .collect::<HashMap<_, _>>(),
            )
        };
        assert!(check_metadata(&None).is_ok());
        assert!(check_metadata(&meta(&[("a", 2047)])).is_ok());
        assert!(check_metadata(&meta(&[("ab", 1000), ("cd", 1044)])).is_ok());
        let e = check_metadata(&meta(&[("ab", 1000), ("cd", 1045)])).unwrap_err();
        // A value beyond US-ASCII counts as it is uploaded, encoded (RFC 2047): 650 snowmen are
        // 1,950 bytes of UTF-8 but 2,612 on the wire, which the origin would refuse for good.
        let snowmen: HashMap<String, String> = [("a".to_owned(), "\u{2603}".repeat(650))].into();
        assert_eq!(mail_safe_len(&snowmen["a"]), mail_safe(snowmen["a"].clone()).len());
        assert!(check_metadata(&Some(snowmen)).is_err());
        assert_eq!(*e.code(), S3ErrorCode::MetadataTooLarge);
        assert_eq!(e.status_code(), Some(http::StatusCode::BAD_REQUEST));
    }

    #[test]
    fn aws_chunked_is_not_an_object_encoding() {
        assert_eq!(without_aws_chunked("aws-chunked"), None);
        assert_eq!(without_aws_chunked("gzip,aws-chunked"), Some("gzip".into()));
        assert_eq!(without_aws_chunked("aws-chunked, gzip"), Some("gzip".into()));
        assert_eq!(without_aws_chunked("br"), Some("br".into()));
        assert_eq!(without_aws_chunked("deflate, gzip"), Some("deflate, gzip".into()));
        assert_eq!(
            without_aws_chunked("deflate, gzip,aws-chunked"),
            Some("deflate, gzip".into())
        );
    }

    #[test]
    fn etags() {
        assert_eq!(etag("\"abc\""), ETag::Strong("abc".into()));
        assert_eq!(etag_condition(&ETagCondition::Any), "*");
        assert_eq!(
            etag_condition(&ETagCondition::ETag(ETag::Strong("abc".into()))),
            "\"abc\""
        );
    }

    #[test]
    fn origin_errors_keep_code_and_status() {
        let e = origin_error(OriginError::rejected(403, "AccessDenied", "no"));
        assert_eq!(*e.code(), S3ErrorCode::AccessDenied);
        assert_eq!(e.status_code(), Some(http::StatusCode::FORBIDDEN));
        let e = origin_error(OriginError::unavailable(1, perch_cache::cause("x")));
        assert_eq!(*e.code(), S3ErrorCode::SlowDown);
        assert_eq!(e.status_code(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
        // The failure stays the answer's source, and its own cause below it.
        let source = e.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("origin unavailable after retrying for 1 s: x"));
        let cause = e.source().and_then(std::error::Error::source).map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("x"));
    }
}
