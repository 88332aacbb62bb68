//! The hit fast path: a signed GET or HEAD of an object that asks for nothing but the object (no
//! valid range, no conditions, no response overrides) is verified and answered here, from the store,
//! without s3s's general request preparation, which cost more than the rest of a hit together.
//! The answer is the one s3s gives (tested side by side); any request this path does not fully
//! understand or cannot verify goes to s3s unchanged, so s3s still answers every refusal.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use perch_cache::{CacheStatus, Conditions, ObjectMeta, Store};
use s3s::dto::TimestampFormat;

use crate::convert;
use crate::front::REQUEST;
use crate::sigv4::{self, CanonicalRequest, Verifier};

/// The presigned query parameters, and the operation marker the AWS SDKs add (`x-id=GetObject`):
/// the only query a request of this path may carry.
const QUERY_ALLOWED: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "x-id",
];

pub struct FastGet {
    store: Arc<Store>,
    verifier: Verifier,
    /// Lower case: `BUCKET.<domain>` is virtual-hosted.
    domain: String,
}

/// What a request names, once it is known to be one this path serves.
struct Target<'a> {
    head: bool,
    bucket: &'a str,
    key: String,
    /// `x-amz-checksum-mode: ENABLED`: the answer carries the object's stored checksums.
    checksums: bool,
    /// `If-(Un)Modified-Since` in a form s3s does not read (RFC 850, asctime), which S3 takes.
    conditions: Conditions,
}

impl FastGet {
    pub fn new(store: Arc<Store>, access_key_id: String, secret_access_key: String, domain: &str) -> FastGet {
        FastGet {
            store,
            verifier: Verifier::new(access_key_id, secret_access_key),
            domain: domain.to_ascii_lowercase(),
        }
    }

    /// The store it reads (the door holds chunked bodies on its volume).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The answer to `req` when it is a GET or HEAD this path serves; `None` hands it to s3s.
    pub async fn answer<B>(&self, req: &Request<B>) -> Option<Response<s3s::Body>> {
        let target = self.accept(req, SystemTime::now())?;
        let _ = REQUEST.try_with(|r| {
            let mut r = r.borrow_mut();
            r.op = if target.head { "HeadObject" } else { "GetObject" };
            r.bucket = target.bucket.to_owned();
            r.key = target.key.clone();
        });
        let answer = if target.head {
            self.store
                .head(target.bucket, &target.key, &target.conditions)
                .await
                .map(|(meta, status)| ok_response(&meta, status, target.checksums, true, s3s::Body::empty()))
        } else {
            self.store
                .get(target.bucket, &target.key, None, &target.conditions)
                .await
                .map(|got| {
                    let len = got.output.meta.size;
                    let body = body_of(got.output.body, len);
                    ok_response(&got.output.meta, got.status, target.checksums, false, body)
                })
        };
        Some(answer.unwrap_or_else(|e| error_response(convert::store_error(e))))
    }

    /// Why `req` is refused whatever its body holds, when that shows in its head alone, as S3's
    /// error code: no credentials at all (403 AccessDenied), an `Authorization` of no scheme S3
    /// knows (400 InvalidArgument) or a SigV4 one without its credential (400
    /// AuthorizationHeaderMalformed), or credentials naming an access key other than Perch's (403
    /// InvalidAccessKeyId). The door asks before it receives a body it must hold whole (a chunked
    /// one), so that nobody without a key fills the spool. (A wrong signature with the right key
    /// id is found by s3s, once the body is in.)
    pub fn refused_by_its_head<B>(&self, req: &Request<B>) -> Option<&'static str> {
        const DENIED: &str = "AccessDenied";
        const UNKNOWN: &str = "InvalidAccessKeyId";
        const MALFORMED: &str = "AuthorizationHeaderMalformed";
        const UNSUPPORTED: &str = "InvalidArgument";
        let known = |key: &str| {
            if self.verifier.has_key(key) {
                None
            } else {
                Some(UNKNOWN)
            }
        };
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            let Ok(value) = value.to_str() else {
                return Some(UNSUPPORTED);
            };
            if let Some(v4) = value.strip_prefix("AWS4-HMAC-SHA256") {
                // `KEY/DATE/REGION/SERVICE/aws4_request`, or the header is malformed.
                let key = v4
                    .split(',')
                    .find_map(|p| p.trim().strip_prefix("Credential="))
                    .filter(|c| c.split('/').count() == 5 && c.ends_with("/aws4_request"))
                    .and_then(|c| c.split('/').next());
                return key.map_or(Some(MALFORMED), known);
            }
            if let Some(v2) = value.strip_prefix("AWS ") {
                // `KEY:SIGNATURE`, or S3 answers InvalidArgument.
                return v2.split_once(':').map_or(Some(UNSUPPORTED), |(key, _)| known(key));
            }
            return Some(UNSUPPORTED);
        }
        let query = req.uri().query().unwrap_or("");
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = match name {
                // `KEY/DATE/REGION/s3/aws4_request`, its slashes percent-encoded.
                "X-Amz-Credential" => sigv4::percent_decode(value).and_then(|c| c.split('/').next().map(str::to_owned)),
                "AWSAccessKeyId" => sigv4::percent_decode(value),
                _ => continue,
            };
            return key.map_or(Some(DENIED), |k| known(&k));
        }
        Some(DENIED)
    }

    /// Checks everything s3s would check before GetObject/HeadObject (the signature, its time,
    /// the key pair, the key rules); `None` for anything else or anything in doubt.
    fn accept<'r, B>(&self, req: &'r Request<B>, now: SystemTime) -> Option<Target<'r>> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        let headers = req.headers();
        // Only what GetObject reads as "the whole object, as stored": no range, no conditions but
        // the dates s3s cannot read, no customer keys, and no body; its stored checksums may be
        // asked for (as current SDKs and boto3 do on every GET). A `Range` or date S3 ignores is
        // left out, where s3s would refuse the request (`condition`).
        let mut conditions = Conditions::default();
        for name in headers.keys() {
            let n = name.as_str();
            if n == "range" || n.starts_with("if-") {
                match condition(n, headers.get_all(name)) {
                    Condition::Ignored => continue,
                    Condition::ForS3s => return None,
                    Condition::ModifiedSince(t) => conditions.if_modified_since = Some(t),
                    Condition::UnmodifiedSince(t) => conditions.if_unmodified_since = Some(t),
                }
            } else if n.starts_with("x-amz-server-side-encryption")
                || n == "transfer-encoding"
                || (n == "content-length" && headers.get(name).is_some_and(|v| v.as_bytes() != b"0"))
            {
                return None;
            }
        }
        let mut query = [("", ""); QUERY_ALLOWED.len()];
        let query = split_query(req.uri().query().unwrap_or(""), &mut query)?;
        // The credential and the signed header names: room for both without a reallocation.
        let mut decoded = String::with_capacity(128);
        let (auth, payload) = match headers.get(header::AUTHORIZATION) {
            Some(value) => {
                if query.iter().any(|(n, _)| n.starts_with("X-Amz-")) {
                    return None;
                }
                let date = headers.get("x-amz-date")?.to_str().ok()?;
                let auth = sigv4::parse_header(value.to_str().ok()?, date)?;
                let payload = headers.get("x-amz-content-sha256")?.to_str().ok()?;
                if payload.starts_with("STREAMING-") {
                    return None;
                }
                (auth, payload)
            }
            None => (sigv4::parse_presigned(query, &mut decoded)?, "UNSIGNED-PAYLOAD"),
        };
        if auth.service != "s3" || !sigv4::in_time(&auth, now) {
            return None;
        }
        let raw_path = req.uri().path();
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let (bucket, key) = self.locate(host, raw_path)?;
        convert::check_key(&key).ok()?;
        let mut canonical = CanonicalRequest::new(req.method().as_str(), raw_path)?;
        canonical.query(query)?;
        let mut last = "";
        for name in auth.signed_headers.split(';') {
            let lower = name.bytes().all(|b| !b.is_ascii_uppercase());
            if name <= last || !lower || name == "authorization" {
                return None;
            }
            last = name;
            let values = headers.get_all(name);
            if values.iter().next().is_none() || values.iter().any(|v| v.to_str().is_err()) {
                return None;
            }
            canonical.header(name, values.iter().filter_map(|v| v.to_str().ok()));
        }
        let canonical = canonical.finish(auth.signed_headers, payload);
        if !self.verifier.verify(&auth, &canonical) {
            return None;
        }
        // As s3s reads it: one value, and only ENABLED asks for the checksums.
        let mut modes = headers.get_all("x-amz-checksum-mode").iter();
        let checksums = match (modes.next(), modes.next()) {
            (None, _) => false,
            (Some(mode), None) => mode.as_bytes() == b"ENABLED",
            (Some(_), Some(_)) => return None,
        };
        Some(Target {
            head,
            bucket,
            key,
            checksums,
            conditions,
        })
    }

    /// The bucket `host` names: `BUCKET.<domain>[:port]` is virtual-hosted; any other host, none.
    pub fn virtual_bucket<'r>(&self, host: &'r str) -> Option<&'r str> {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        name.len()
            .checked_sub(self.domain.len() + 1)
            .filter(|&cut| {
                cut > 0
                    && name.as_bytes()[cut] == b'.'
                    && name[cut + 1..].eq_ignore_ascii_case(&self.domain)
                    && name.parse::<std::net::IpAddr>().is_err()
            })
            .map(|cut| &name[..cut])
    }

    /// The bucket and key a request names: `BUCKET.<domain>` and `/KEY`, or `/BUCKET/KEY` for any
    /// other host; the key decoded.
    fn locate<'r>(&self, host: &'r str, raw_path: &'r str) -> Option<(&'r str, String)> {
        let rest = raw_path.strip_prefix('/')?;
        let (bucket, raw_key) = match self.virtual_bucket(host) {
            Some(bucket) => (bucket, rest),
            None => rest.split_once('/')?,
        };
        // A name s3s refuses (`-abc`, `a..b`, an IP address) is s3s's to answer (400).
        let key = sigv4::percent_decode(raw_key)?;
        (s3s::path::check_bucket_name(bucket) && !key.is_empty() && key.len() <= 1024).then_some((bucket, key))
    }
}

/// The raw query's `(name, value)` pairs, when it holds only `QUERY_ALLOWED` names, each once.
fn split_query<'q, 'b>(raw: &'q str, into: &'b mut [(&'q str, &'q str)]) -> Option<&'b mut [(&'q str, &'q str)]> {
    let mut n = 0;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if n == into.len() || !QUERY_ALLOWED.contains(&name) || into[..n].iter().any(|(m, _)| *m == name) {
            return None;
        }
        if name == "x-id" && value != "GetObject" && value != "HeadObject" {
            return None;
        }
        into[n] = (name, value);
        n += 1;
    }
    Some(&mut into[..n])
}

/// The stored body as a response body of known length.
fn body_of(stream: perch_cache::ByteStream, len: u64) -> s3s::Body {
    let stream = stream.map(|chunk| chunk.map_err(|e| Box::new(e) as s3s::StdError));
    s3s::Body::from(crate::chunked::KnownLength::boxed(Box::pin(stream), len as usize))
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), as s3s writes Last-Modified.
fn http_date(t: SystemTime) -> HeaderValue {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
    ];
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 29];
    let two = |out: &mut [u8], at: usize, v: i64| {
        out[at] = b'0' + (v / 10 % 10) as u8;
        out[at + 1] = b'0' + (v % 10) as u8;
    };
    out[..3].copy_from_slice(DAYS[days.rem_euclid(7) as usize]);
    out[3..5].copy_from_slice(b", ");
    two(&mut out, 5, day);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    two(&mut out, 12, year / 100);
    two(&mut out, 14, year % 100);
    out[16] = b' ';
    two(&mut out, 17, rem / 3600);
    out[19] = b':';
    two(&mut out, 20, rem % 3600 / 60);
    out[22] = b':';
    two(&mut out, 23, rem % 60);
    out[25..].copy_from_slice(b" GMT");
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

/// The headers GetObject and HeadObject answer a whole object with, as s3s writes them; with
/// `checksums`, the object's stored checksums and their type too; a GET (not a `head`) names the
/// object's number of tags.
fn ok_response(
    meta: &ObjectMeta,
    status: CacheStatus,
    checksums: bool,
    head: bool,
    body: s3s::Body,
) -> Response<s3s::Body> {
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.reserve(10 + meta.headers.metadata.len());
    if checksums {
        for (algorithm, value) in meta.checksums.iter() {
            if let Ok(value) = HeaderValue::from_str(value) {
                h.insert(algorithm.header_name(), value);
            }
        }
        if let Some(t) = meta.checksums.checksum_type() {
            h.insert("x-amz-checksum-type", HeaderValue::from_static(t.as_str()));
        }
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let c = &meta.headers;
    for (name, value) in [
        (header::CACHE_CONTROL, &c.cache_control),
        (header::CONTENT_DISPOSITION, &c.content_disposition),
        (header::CONTENT_ENCODING, &c.content_encoding),
        (header::CONTENT_LANGUAGE, &c.content_language),
        (header::CONTENT_TYPE, &c.content_type),
        (HeaderName::from_static("x-amz-storage-class"), &c.storage_class),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    let etag = if meta.etag.len() >= 2 && meta.etag.starts_with('"') && meta.etag.ends_with('"') {
        HeaderValue::from_str(&meta.etag)
    } else {
        HeaderValue::from_str(&etag_value(&meta.etag))
    };
    if let Ok(v) = etag {
        h.insert(header::ETAG, v);
    }
    // Expires as s3s writes it: read as an HTTP date and written again; a text that is no date
    // (S3 keeps what it was given, e.g. `0`) as it is.
    if let Some(expires) = convert::expires_timestamp(c.expires.as_deref()) {
        let mut buf = Vec::with_capacity(32);
        if expires.format(TimestampFormat::HttpDate, &mut buf).is_ok()
            && let Ok(v) = HeaderValue::from_bytes(&buf)
        {
            h.insert(header::EXPIRES, v);
        }
    } else if let Some(v) = convert::expires_text(meta, false) {
        h.insert(header::EXPIRES, v);
    }
    h.insert(header::LAST_MODIFIED, http_date(meta.last_modified));
    for (k, v) in &c.metadata {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(format!("x-amz-meta-{k}").as_bytes()),
            HeaderValue::from_str(&convert::answered_metadata(v)),
        ) {
            h.insert(name, value);
        }
    }
    if !head && let Some(n) = c.tag_count() {
        h.insert("x-amz-tagging-count", HeaderValue::from(n));
    }
    h.insert("x-cache", HeaderValue::from_static(status.as_str()));
    res
}

/// An ETag as s3s writes it: `"v"`, or `W/"v"` for a weak one.
fn etag_value(etag: &str) -> String {
    match convert::etag(etag) {
        s3s::dto::ETag::Strong(v) => format!("\"{v}\""),
        s3s::dto::ETag::Weak(v) => format!("W/\"{v}\""),
    }
}

/// An S3 error as s3s writes it (XML with its declaration).
fn error_response(e: s3s::S3Error) -> Response<s3s::Body> {
    use s3s::xml::Serialize;
    let status = e.status_code().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut buf = Vec::with_capacity(256);
    let mut ser = s3s::xml::Serializer::new(&mut buf);
    if ser.decl().and_then(|()| e.serialize(&mut ser)).is_err() {
        buf.clear();
    }
    let mut res = Response::new(s3s::Body::from(Bytes::from(buf)));
    *res.status_mut() = status;
    // An error that carries its own headers (a 304's ETag and Last-Modified) has those alone, as
    // s3s answers it; any other, its document's type.
    match e.headers() {
        Some(headers) => *res.headers_mut() = headers.clone(),
        None => {
            res.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        }
    }
    res
}

/// What the hit path makes of a request's `Range` or `If-*` header (`name`).
enum Condition {
    /// One S3 ignores, answering the whole object: a single `Range` that is not one byte range
    /// (`bytes=5-2`, several, `bytes=-`, garbage), or an `If-(Un)Modified-Since` that is no HTTP
    /// date in any of its three forms (s3s would refuse the request).
    Ignored,
    /// One s3s reads and answers: a byte range, an ETag condition, an IMF date, several values.
    ForS3s,
    /// An `If-Modified-Since` / `If-Unmodified-Since` in a form s3s refuses (RFC 850, asctime)
    /// and S3 takes, as any HTTP date (RFC 9110 §5.6.7): the hit path checks it.
    ModifiedSince(SystemTime),
    UnmodifiedSince(SystemTime),
}

fn condition(name: &str, values: http::header::GetAll<'_, HeaderValue>) -> Condition {
    let mut values = values.iter();
    let value = match (values.next().map(HeaderValue::to_str), values.next()) {
        (Some(Ok(v)), None) => v,
        // Not text: no range or date S3 reads.
        (Some(Err(_)), None) if matches!(name, "range" | "if-modified-since" | "if-unmodified-since") => {
            return Condition::Ignored;
        }
        _ => return Condition::ForS3s,
    };
    match name {
        "range" if s3s::dto::Range::parse(value).is_err() || convert::is_empty_suffix(value.as_bytes()) => {
            Condition::Ignored
        }
        "if-modified-since" | "if-unmodified-since" => {
            if s3s::dto::Timestamp::parse(TimestampFormat::HttpDate, value).is_ok() {
                return Condition::ForS3s;
            }
            match httpdate::parse_http_date(value) {
                Err(_) => Condition::Ignored,
                Ok(t) if name == "if-modified-since" => Condition::ModifiedSince(t),
                Ok(t) => Condition::UnmodifiedSince(t),
            }
        }
        _ => Condition::ForS3s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let mut buf = [("", ""); QUERY_ALLOWED.len()];
        assert!(split_query("x-id=GetObject", &mut buf).is_some());
        assert!(split_query("x-id=PutObject", &mut buf).is_none());
        assert!(split_query("X-Amz-Date=1&X-Amz-Date=2", &mut buf).is_none());
        assert!(split_query("response-content-type=a", &mut buf).is_none());
        assert!(split_query("partNumber=1", &mut buf).is_none());
        assert!(split_query("X-Amz-%44ate=1", &mut buf).is_none());
        let q = split_query("X-Amz-Date=1&&X-Amz-Expires=2", &mut buf).unwrap();
        assert_eq!(q, &[("X-Amz-Date", "1"), ("X-Amz-Expires", "2")]);
    }

    #[test]
    fn http_dates_as_s3s_writes_them() {
        use s3s::dto::Timestamp;
        for secs in [
            0u64,
            784_111_777,
            951_782_400,
            1_700_000_000,
            4_102_444_799,
            253_402_300_799,
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let mut s3s_way = Vec::new();
            Timestamp::from(t)
                .format(TimestampFormat::HttpDate, &mut s3s_way)
                .unwrap();
            assert_eq!(http_date(t).as_bytes(), s3s_way.as_slice(), "{secs}");
        }
    }

    #[test]
    fn etags_as_s3s_writes_them() {
        assert_eq!(etag_value("\"abc\""), "\"abc\"");
        assert_eq!(etag_value("W/\"abc\""), "W/\"abc\"");
    }
}
