//! `S3Origin::get_object` and `head_object` as one signed HTTP request beside the SDK: a miss's
//! origin GET skips the SDK's orchestrator (its interceptors, endpoint and auth resolvers, config
//! bags), which cost ~0.4 ms of CPU a request; a miss's first byte came ~0.5 ms sooner without it
//! (docs/benchmarks.md).
//!
//! What it sends is what aws-sdk-s3 sends for a GetObject (path style, SigV4 with
//! `x-amz-content-sha256`, `x-amz-checksum-mode: ENABLED` for a whole object), and what it
//! answers is what the SDK path answered: the same `ObjectMeta`, the same error classification,
//! and a whole body checked against the object's full-object checksum as the SDK checks it.

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings, UriPathNormalizationMode,
    sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{self, HeaderMap};

use super::*;
use crate::origin::ChecksumAlgorithm;
use crate::origin::checksum::Hasher;

/// Error bodies are read up to this size for their code and message.
const ERROR_BODY_MAX: usize = 64 << 10;

/// The signing settings the SDK uses for S3: single URI encoding, no path normalisation, the
/// payload hash sent as `x-amz-content-sha256`.
fn s3_signing_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    // As UTF-8, not `to_str`'s visible ASCII: S3 keeps and answers UTF-8 bytes in a header
    // (`Content-Disposition: attachment; filename="résumé.pdf"`), which must not be dropped.
    headers.get(name).and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
}

/// The encryption an answer names whose objects' ETags are not their MD5s (S3 with SSE-KMS or
/// DSSE-KMS; SSE-S3's `AES256` keeps MD5 ETags). (SSE-C objects are not readable through Perch:
/// it forwards no customer key.)
fn opaque_etag_encryption(headers: &HeaderMap) -> Option<String> {
    header_str(headers, "x-amz-server-side-encryption")
        .filter(|v| v.starts_with("aws:kms"))
        .map(str::to_owned)
}

/// `ObjectMeta` of an object of `size` bytes from a GET's answer headers (what the SDK's
/// GetObjectOutput carried).
fn object_meta_of(headers: &HeaderMap, size: u64) -> ObjectMeta {
    let owned = |name: &str| header_str(headers, name).map(str::to_owned);
    let metadata = headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("x-amz-meta-")?;
            Some((key.to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        })
        .collect();
    ObjectMeta {
        size,
        etag: owned("etag").unwrap_or_default(),
        last_modified: header_str(headers, "last-modified")
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        headers: ContentHeaders {
            content_type: owned("content-type"),
            cache_control: owned("cache-control"),
            content_encoding: owned("content-encoding"),
            content_disposition: owned("content-disposition"),
            content_language: owned("content-language"),
            expires: owned("expires"),
            metadata,
            storage_class: owned("x-amz-storage-class").filter(|c| c != "STANDARD"),
            // Not in the answer, only their count: GetObjectTagging asks.
            tags: Vec::new(),
            origin_tag_count: header_str(headers, "x-amz-tagging-count")
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0),
            opaque_etag_encryption: opaque_etag_encryption(headers),
        },
        checksums: {
            let mut c = Checksums::default();
            for a in ChecksumAlgorithm::ALL {
                *c.slot(a) = owned(a.header_name());
            }
            c
        },
    }
}

/// The span a GET's answer of `length` bytes holds, by its `Content-Range` (`None`: the whole
/// object), and the object's size. A span the origin names wrongly is an origin fault: never a
/// partial body taken for the whole object, nor a length gone negative.
fn served_span(content_range: Option<&str>, length: u64) -> OriginResult<(Option<(u64, u64)>, u64)> {
    let Some(value) = content_range else {
        return Ok((None, length));
    };
    // MinIO answers a suffix range of an empty object so (`bytes 0--1/0`, 206): the whole, empty
    // object, as S3 answers it with 200.
    if length == 0 && value.trim() == "bytes 0--1/0" {
        return Ok((None, 0));
    }
    match parse_content_range(value, length) {
        Some((first, last, total)) => Ok((Some((first, last)), total.unwrap_or(length))),
        None => Err(OriginError::transient(format!(
            "an answer of {length} bytes with an invalid Content-Range: {value}"
        ))),
    }
}

/// A 2xx answer's `Content-Length` (an S3 GET or HEAD always has one).
fn content_length(headers: &HeaderMap) -> OriginResult<u64> {
    header_str(headers, "content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| OriginError::transient("an answer without a Content-Length"))
}

/// A whole body checked against the object's checksum as it streams: a body that does not match
/// ends with an error instead of its end (as the SDK's response checksum validation does).
struct CheckedBody {
    inner: ByteStream,
    hasher: Option<Hasher>,
    want: String,
}

impl Stream for CheckedBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(h) = &mut this.hasher {
                    h.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => match this.hasher.take() {
                Some(h) => {
                    let got = h.finish_base64();
                    if got == this.want {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("origin body: checksum {got} does not match the object's {}", this.want),
                        ))))
                    }
                }
                None => Poll::Ready(None),
            },
            other => other,
        }
    }
}

impl S3Origin {
    /// One GetObject, signed and sent without the SDK's orchestrator.
    pub(super) async fn get_direct(
        &self,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        conditions: &Conditions,
    ) -> OriginResult<GetOutput> {
        let (headers, body) = self
            .send_direct(http::Method::GET, bucket, key, range, None, conditions)
            .await?;
        let length = content_length(&headers)?;
        let (served, size) = served_span(header_str(&headers, "content-range"), length)?;
        let mut meta = object_meta_of(&headers, size);
        let check = match range {
            Some(_) => {
                meta.checksums = Checksums::default();
                None
            }
            // A whole body is checked against its full-object checksum, as the SDK checks it.
            None => meta.checksums.full_object().map(|(a, want)| (a, want.to_owned())),
        };
        let body: ByteStream = Box::pin(OriginBody {
            inner: SdkByteStream::new(body),
            idle: self.read_timeout,
            timer: None,
            done: false,
        });
        let body: ByteStream = match check {
            Some((algorithm, want)) => Box::pin(CheckedBody {
                inner: body,
                hasher: Some(Hasher::new(algorithm)),
                want,
            }),
            None => body,
        };
        Ok(GetOutput {
            meta,
            range: served,
            body,
        })
    }

    /// One HeadObject, signed and sent without the SDK's orchestrator.
    pub(super) async fn head_direct(
        &self,
        bucket: &str,
        key: &str,
        conditions: &Conditions,
    ) -> OriginResult<ObjectMeta> {
        let (headers, _) = self
            .send_direct(http::Method::HEAD, bucket, key, None, None, conditions)
            .await?;
        Ok(object_meta_of(&headers, content_length(&headers)?))
    }

    /// One HeadObject of part `part` (`partNumber`), signed and sent without the SDK's
    /// orchestrator.
    pub(super) async fn head_part_direct(&self, bucket: &str, key: &str, part: u32) -> OriginResult<PartHead> {
        let (headers, _) = self
            .send_direct(
                http::Method::HEAD,
                bucket,
                key,
                None,
                Some(part),
                &Conditions::default(),
            )
            .await?;
        Ok(PartHead {
            size: content_length(&headers)?,
            etag: header_str(&headers, "etag").unwrap_or_default().to_owned(),
            parts_count: header_str(&headers, "x-amz-mp-parts-count").and_then(|v| v.parse().ok()),
        })
    }

    /// Sends a GET or HEAD of `bucket`/`key` (of its part `part`, if given) as aws-sdk-s3 would,
    /// and returns a 2xx answer's headers and body; any other answer is classified as the SDK
    /// path classifies it.
    async fn send_direct(
        &self,
        method: http::Method,
        bucket: &str,
        key: &str,
        range: Option<ByteRange>,
        part: Option<u32>,
        conditions: &Conditions,
    ) -> OriginResult<(HeaderMap, SdkBody)> {
        let mut uri = format!("{}/{}/{}", self.endpoint, bucket, crate::key::url_encode(key));
        if let Some(n) = part {
            uri.push_str(&format!("?partNumber={n}"));
        }
        let mut headers: Vec<(&'static str, String)> = Vec::with_capacity(6);
        if let Some(r) = range {
            headers.push(("range", r.header_value()));
        } else if part.is_none() {
            // Stored checksums describe the whole object: ask for them only then.
            headers.push(("x-amz-checksum-mode", "ENABLED".to_owned()));
        }
        if let Some(v) = &conditions.if_match {
            headers.push(("if-match", v.clone()));
        }
        if let Some(v) = &conditions.if_none_match {
            headers.push(("if-none-match", v.clone()));
        }
        if let Some(t) = conditions.if_modified_since {
            headers.push(("if-modified-since", httpdate::fmt_http_date(t)));
        }
        if let Some(t) = conditions.if_unmodified_since {
            headers.push(("if-unmodified-since", httpdate::fmt_http_date(t)));
        }
        let mut builder = http::Request::builder().method(method.clone()).uri(&uri);
        for (name, value) in &headers {
            builder = builder.header(*name, value.as_str());
        }
        let mut request = builder.body(SdkBody::empty()).map_err(|e| {
            OriginError::rejected(
                400,
                "InvalidArgument",
                format!("could not build the origin request: {e}"),
            )
        })?;
        if let Some(keys) = &self.keys {
            fn signing(e: impl std::error::Error + Send + Sync + 'static) -> OriginError {
                OriginError::Io(Doing::io("signing the origin request", e))
            }
            let identity: Identity = keys.current().into();
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name("s3")
                .time(SystemTime::now())
                .settings(s3_signing_settings())
                .build()
                .map_err(signing)?
                .into();
            let signed = SignableRequest::new(
                method.as_str(),
                uri.as_str(),
                headers.iter().map(|(n, v)| (*n, v.as_str())),
                SignableBody::Bytes(&[]),
            )
            .and_then(|s| sign(s, &params))
            .map_err(signing)?;
            let (instructions, _) = signed.into_parts();
            instructions.apply_to_request_http1x(&mut request);
        }
        request
            .headers_mut()
            .insert(header::USER_AGENT, http::HeaderValue::from_static("perch"));
        let request =
            HttpRequest::try_from(request).map_err(|e| OriginError::Io(Doing::io("the origin request", e)))?;

        let limit = self.read_timeout;
        let response = match tokio::time::timeout(limit, self.direct.call(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(OriginError::transient_from(DisplayErrorContext(&e).to_string(), e)),
            Err(_) => {
                return Err(OriginError::transient(format!(
                    "no answer from the origin within {limit:?}"
                )));
            }
        };
        let status = response.status().as_u16();
        let (parts, body) = response
            .try_into_http1x()
            .map_err(|e| OriginError::transient_from(format!("unreadable answer: {e}"), e))?
            .into_parts();
        if !(200..300).contains(&status) {
            let e = refusal(status, body, limit).await;
            return Err(with_answer_headers(
                e,
                header_str(&parts.headers, "etag"),
                header_str(&parts.headers, "content-range"),
            ));
        }
        if status == 206 && !parts.headers.contains_key(header::CONTENT_RANGE) {
            // Without its span a partial body would pass for the whole object.
            return Err(OriginError::transient("a 206 answer without Content-Range"));
        }
        Ok((parts.headers, body))
    }
}

/// The error a non-2xx answer means, from its status and its XML error's code and message.
async fn refusal(status: u16, body: SdkBody, limit: Duration) -> OriginError {
    let mut stream = SdkByteStream::new(body);
    let mut text = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            text.extend_from_slice(&chunk);
            if text.len() >= ERROR_BODY_MAX {
                break;
            }
        }
    };
    // An error body the origin never finishes still leaves its status.
    let _ = tokio::time::timeout(limit, read).await;
    let text = String::from_utf8_lossy(&text);
    let code = xml_text(&text, "Code").unwrap_or_default();
    let message = xml_text(&text, "Message").unwrap_or_else(|| format!("the origin answered {status}"));
    match classify_answer(status, code, message, Subject::Object) {
        // S3's InvalidRange names the object's size in its document too.
        OriginError::InvalidRange { size: None } => OriginError::InvalidRange {
            size: xml_text(&text, "ActualObjectSize").and_then(|n| n.parse().ok()),
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_span_an_answer_holds_is_its_content_range_or_the_whole_object() {
        use super::served_span;
        assert_eq!(served_span(None, 11).ok(), Some((None, 11)));
        assert_eq!(served_span(Some("bytes 2-4/11"), 3).ok(), Some((Some((2, 4)), 11)));
        // MinIO's answer to `bytes=-1` on an empty object: the whole (empty) object.
        assert_eq!(served_span(Some("bytes 0--1/0"), 0).ok(), Some((None, 0)));
        // A span that does not fit the body is an origin fault, not a body.
        assert!(served_span(Some("bytes 0--1/0"), 1).is_err());
        assert!(served_span(Some("bytes 2-4/11"), 4).is_err());
        assert!(served_span(Some("bytes 5-2/11"), 0).is_err());
    }

    use super::*;

    #[test]
    fn answer_headers_become_object_meta() {
        let mut h = HeaderMap::new();
        h.insert("etag", "\"abc\"".parse().unwrap());
        h.insert("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("expires", "not a date".parse().unwrap());
        h.insert("x-amz-meta-owner", "perch".parse().unwrap());
        h.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
        let meta = object_meta_of(&h, 7);
        assert_eq!(meta.size, 7);
        assert_eq!(meta.etag, "\"abc\"");
        assert_eq!(
            meta.last_modified,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480)
        );
        assert_eq!(meta.headers.content_type.as_deref(), Some("text/plain"));
        assert_eq!(meta.headers.expires.as_deref(), Some("not a date"));
        assert_eq!(meta.headers.metadata.get("owner").map(String::as_str), Some("perch"));
        assert_eq!(meta.checksums.crc32.as_deref(), Some("AAAAAA=="));
        assert!(meta.checksums.full_object().is_some());
        let composite = checksums_of(Some("AAAAAA==-3"), None, None, None, None);
        assert!(composite.full_object().is_none());
    }

    #[tokio::test]
    async fn a_body_that_does_not_match_its_checksum_ends_with_an_error() {
        use futures::StreamExt;
        let data = Bytes::from_static(b"hello world");
        let good = crate::origin::checksum::checksum(ChecksumAlgorithm::Crc32, &data);
        let run = |want: String| {
            let inner: ByteStream = Box::pin(futures::stream::iter(vec![Ok(data.slice(..5)), Ok(data.slice(5..))]));
            CheckedBody {
                inner,
                hasher: Some(Hasher::new(ChecksumAlgorithm::Crc32)),
                want,
            }
            .collect::<Vec<_>>()
        };
        let ok = run(good).await;
        assert!(ok.iter().all(Result::is_ok) && ok.len() == 2);
        let bad = run("AAAAAA==".to_owned()).await;
        assert_eq!(bad.len(), 3);
        assert_eq!(
            bad[2].as_ref().map_err(io::Error::kind).err(),
            Some(io::ErrorKind::InvalidData)
        );
    }
}
