//! Conversions between `Origin` types and aws-sdk-s3's: times, headers, checksums, bodies, and the
//! builders' common setters (macros, so that each SDK request type can use them).

use super::*;

pub(super) fn to_system_time(dt: Option<&DateTime>) -> SystemTime {
    dt.and_then(|dt| SystemTime::try_from(*dt).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub(super) fn non_negative(n: Option<i64>) -> u64 {
    n.map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// `bytes first-last/total` of a `length`-byte body → (first, last, total); `total` may be `*`.
/// `None` unless the span is the body's and lies inside the object.
pub(super) fn parse_content_range(value: &str, length: u64) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.trim().split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let (first, last): (u64, u64) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    let fits = first <= last && last - first + 1 == length && total.is_none_or(|t| last < t);
    fits.then_some((first, last, total))
}

/// The text of `<tag>` in an S3 XML body (its first, trimmed).
pub(super) fn xml_text(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..end].trim().to_owned())
}

/// Sets the raw `Expires` header (the SDK only takes a parsed date; S3 keeps what it is given).
pub(super) fn expires_mapper(
    expires: Option<String>,
) -> impl Fn(HttpRequest) -> Result<HttpRequest, HttpError> + Send + Sync + 'static {
    headers_mapper(expires, Vec::new())
}

/// `expires_mapper`, plus `extra` headers (`--upload-header`) set as given.
pub(super) fn headers_mapper(
    expires: Option<String>,
    extra: Vec<(String, String)>,
) -> impl Fn(HttpRequest) -> Result<HttpRequest, HttpError> + Send + Sync + 'static {
    move |mut req: HttpRequest| {
        if let Some(value) = &expires {
            req.headers_mut().try_insert("expires", value.clone())?;
        }
        for (name, value) in &extra {
            req.headers_mut().try_insert(name.clone(), value.clone())?;
        }
        Ok(req)
    }
}

/// `bucket/key` for `x-amz-copy-source`, percent-encoded except for `/`.
pub(super) fn copy_source(bucket: &str, key: &str) -> String {
    crate::key::url_encode(&format!("{bucket}/{key}"))
}

/// Decodes a value S3 sent with `encoding-type=url` (`+` is a space, as boto reads it).
pub(super) fn url_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn checksums_of(
    crc32: Option<&str>,
    crc32c: Option<&str>,
    crc64nvme: Option<&str>,
    sha1: Option<&str>,
    sha256: Option<&str>,
) -> Checksums {
    Checksums {
        crc32: crc32.map(str::to_owned),
        crc32c: crc32c.map(str::to_owned),
        crc64nvme: crc64nvme.map(str::to_owned),
        sha1: sha1.map(str::to_owned),
        sha256: sha256.map(str::to_owned),
    }
}

/// The algorithm of the checksum the client gave, as `x-amz-sdk-checksum-algorithm`.
pub(super) fn checksum_algorithm(c: &Checksums) -> Option<ChecksumAlgorithm> {
    [
        (&c.crc64nvme, ChecksumAlgorithm::Crc64Nvme),
        (&c.crc32c, ChecksumAlgorithm::Crc32C),
        (&c.crc32, ChecksumAlgorithm::Crc32),
        (&c.sha1, ChecksumAlgorithm::Sha1),
        (&c.sha256, ChecksumAlgorithm::Sha256),
    ]
    .into_iter()
    .find_map(|(value, algorithm)| value.is_some().then_some(algorithm))
}

/// The SDK's name of an algorithm.
pub(super) fn sdk_algorithm(a: crate::origin::ChecksumAlgorithm) -> ChecksumAlgorithm {
    match a {
        crate::origin::ChecksumAlgorithm::Crc32 => ChecksumAlgorithm::Crc32,
        crate::origin::ChecksumAlgorithm::Crc32c => ChecksumAlgorithm::Crc32C,
        crate::origin::ChecksumAlgorithm::Crc64nvme => ChecksumAlgorithm::Crc64Nvme,
        crate::origin::ChecksumAlgorithm::Sha1 => ChecksumAlgorithm::Sha1,
        crate::origin::ChecksumAlgorithm::Sha256 => ChecksumAlgorithm::Sha256,
    }
}

/// Builds an SDK body for a `PutBody`: a file is read from its path with its known length.
pub(super) async fn sdk_body(body: &PutBody) -> OriginResult<SdkByteStream> {
    match body {
        PutBody::Bytes(b) => Ok(SdkByteStream::from(b.clone())),
        PutBody::File { path, len } => SdkByteStream::read_from()
            .path(path)
            .length(Length::Exact(*len))
            .buffer_size(256 * 1024)
            .build()
            .await
            .map_err(|e| OriginError::Io(Doing::io(path.display().to_string(), e))),
        PutBody::Blob(range) => Ok(SdkByteStream::new(aws_smithy_types::body::SdkBody::from_body_1_x(
            KnownLength {
                stream: range.stream(),
                left: range.len(),
            },
        ))),
    }
}

/// A stream of a known length as an HTTP body (a checked blob range sent to the origin).
struct KnownLength {
    stream: ByteStream,
    left: u64,
}

impl http_body::Body for KnownLength {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        match std::task::ready!(this.stream.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => {
                this.left = this.left.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

pub(super) fn content_length(body: &PutBody) -> OriginResult<i64> {
    i64::try_from(body.len()).map_err(|_| OriginError::rejected(400, "EntityTooLarge", "body too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_the_xml() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(xml_text(body, "Message").as_deref(), Some("gone"));
        assert_eq!(xml_text("", "Code"), None);
    }

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 0-99/1000", 100), Some((0, 99, Some(1000))));
        assert_eq!(parse_content_range("bytes 5-5/*", 1), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes */1000", 0), None);
        assert_eq!(parse_content_range("items 0-1/2", 2), None);
        assert_eq!(
            parse_content_range("bytes 10-5/100", 6),
            None,
            "a span that ends before it starts"
        );
        assert_eq!(
            parse_content_range("bytes 0-99/1000", 50),
            None,
            "a span that is not the body's"
        );
        assert_eq!(
            parse_content_range("bytes 90-109/100", 20),
            None,
            "a span past the object's end"
        );
    }

    #[test]
    fn copy_source_is_encoded() {
        assert_eq!(copy_source("b", "a/b c+d%é"), "b/a/b%20c%2Bd%25%C3%A9");
    }

    #[test]
    fn url_decoding_matches_s3() {
        assert_eq!(url_decode("a+b%2Bc%20d%2"), "a b+c d%2");
        assert_eq!(url_decode("%C3%A9%0A"), "é\n");
        assert_eq!(url_decode("100%"), "100%");
    }
}
