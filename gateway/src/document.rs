//! XML document bodies (DeleteObjects, CompleteMultipartUpload, configurations): bounded, and checked.
//!
//! A document over what s3s reads is refused before it is read; one whose request declares a
//! Content-MD5 or checksum of it is checked against it before s3s parses it (s3s looks at neither),
//! and one holding a CDATA section is refused (s3s drops its text, so that a DeleteObjects of
//! `a<![CDATA[b]]>` deleted `a`).

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use perch_cache::{BodyDigest, ChecksumAlgorithm};
use s3s::checksum::ChecksumHasher;

use crate::chunked::{self, Refusal};
use crate::spool;

/// The most s3s receives of a body it parses whole, a document (its `xml_max_body_size`).
const DOCUMENT_BYTES_MAX: u64 = 20 << 20;

/// What opens a CDATA section.
const CDATA: &[u8] = b"<![CDATA[";

/// The subresources whose POST carries a document.
const POSTED: [&str; 4] = ["delete", "uploadId", "restore", "select"];
/// The subresources whose PUT carries a document (a PUT without one carries an object or a part).
const PUT: [&str; 22] = [
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "retention",
    "tagging",
    "versioning",
    "website",
];

/// The names of `req`'s query parameters (its subresources among them), decoded as s3s decodes
/// them.
fn query_names<B>(req: &Request<B>) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    req.uri()
        .query()
        .into_iter()
        .flat_map(crate::sigv4::query_params)
        .map(|(name, _)| name)
}

/// Whether `req`'s body is an XML document, by its method and subresource.
fn is_document<B>(req: &Request<B>) -> bool {
    let names: &[&str] = match *req.method() {
        http::Method::POST => &POSTED,
        http::Method::PUT => &PUT,
        _ => return false,
    };
    query_names(req).any(|name| names.contains(&&*name))
}

/// The message of S3's MaxMessageLengthExceeded for a document over `DOCUMENT_BYTES_MAX`.
pub const TOO_LARGE: &str = "Your request was too big: an XML document of over 20 MiB.";

/// Whether `req` declares a document of over `DOCUMENT_BYTES_MAX`: S3's 400
/// MaxMessageLengthExceeded at once. s3s would read 20 MiB of it first, then fail with a 500
/// InternalError.
pub fn too_large<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > DOCUMENT_BYTES_MAX)
        && is_document(req)
}

/// Whether `req` is a document `checked` holds whole before s3s reads it.
pub fn is_held<B>(req: &Request<B>) -> bool {
    !is_streamed(req) && is_document(req)
}

/// Whether the body of `req` is sent aws-chunked (`x-amz-content-sha256: STREAMING-…`).
fn is_streamed<B>(req: &Request<B>) -> bool {
    req.headers()
        .get("x-amz-content-sha256")
        .is_some_and(|v| v.as_bytes().starts_with(b"STREAMING-"))
}

/// The message of the 501 for a document sent aws-chunked.
pub const STREAMED: &str = "Perch does not take an XML or JSON document sent aws-chunked: send it with its \
                            Content-Length (a checksum in its header), as the AWS SDKs do.";

/// Whether `req` is a document sent aws-chunked, which s3s cannot take: it decodes the chunks,
/// then compares the document's length with a declared length it has set to 0, and answers 400
/// IncompleteBody, a fault of the client's that is not. No SDK sends one (they send a document's
/// checksum in a header): Perch answers 501 NotImplemented, saying so.
pub fn is_streamed_document<B>(req: &Request<B>) -> bool {
    is_streamed(req) && is_document(req)
}

/// Whether `req`'s document is XML (a bucket policy is JSON).
fn is_xml<B>(req: &Request<B>) -> bool {
    !query_names(req).any(|name| name == "policy")
}

/// Whether `req` is a CompleteMultipartUpload (a POST with `uploadId`): its `x-amz-checksum-*`
/// headers are the object's checksum, not its document's.
fn completes_upload<B>(req: &Request<B>) -> bool {
    *req.method() == http::Method::POST && query_names(req).any(|name| name == "uploadId")
}

/// The checksums of its document `req` declares, with their values.
fn checksum_headers<B>(req: &Request<B>) -> impl Iterator<Item = (ChecksumAlgorithm, &http::HeaderValue)> {
    let document = !completes_upload(req);
    ChecksumAlgorithm::ALL
        .into_iter()
        .filter(move |_| document)
        .filter_map(|a| Some((a, req.headers().get(a.header_name())?)))
}

/// Receives the document whole (it is at most `DOCUMENT_BYTES_MAX`, `too_large` saw to that) and
/// gives the request back with it once it matched every digest its request declares (a wrong one
/// is 400 BadDigest and a malformed Content-MD5 400 InvalidDigest, as S3 answers) and holds no
/// CDATA section (501 NotImplemented: s3s would read the text around one and drop the section's,
/// and act on another key, tag or rule than the one sent); nothing of a refused request is
/// carried out.
pub async fn checked<B>(req: Request<B>) -> Result<Request<s3s::Body>, Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let declared: Vec<(ChecksumAlgorithm, http::HeaderValue)> =
        checksum_headers(&req).map(|(a, v)| (a, v.clone())).collect();
    let xml = is_xml(&req);
    let (parts, mut body) = req.into_parts();
    let mut held = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| chunked::broken(&e))?;
        let Ok(data) = frame.into_data() else { continue };
        if (held.len() + data.len()) as u64 > DOCUMENT_BYTES_MAX {
            return Err(refusal(StatusCode::BAD_REQUEST, "MaxMessageLengthExceeded", TOO_LARGE));
        }
        held.extend_from_slice(&data);
    }
    let bytes = held.freeze();
    let h = &parts.headers;
    if let Some(md5) = h.get("content-md5") {
        let given = md5
            .to_str()
            .ok()
            .and_then(|v| base64_simd::STANDARD.decode_to_vec(v.trim()).ok())
            .filter(|d| d.len() == 16)
            .ok_or_else(|| {
                refusal(
                    StatusCode::BAD_REQUEST,
                    "InvalidDigest",
                    "The Content-MD5 you specified is not valid.",
                )
            })?;
        let mut digest = BodyDigest::new();
        digest.update(&bytes);
        if given.as_slice() != digest.finish().md5().as_slice() {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "BadDigest",
                "The Content-MD5 you specified did not match what we received.",
            ));
        }
    }
    for (algorithm, given) in declared {
        let mut hasher = ChecksumHasher::default();
        spool::compute(&mut hasher, algorithm);
        hasher.update(&bytes);
        let c = hasher.finalize();
        if spool::value_of(&c, algorithm) != given.to_str().ok().map(str::trim) {
            return Err(refusal(
                StatusCode::BAD_REQUEST,
                "BadDigest",
                &format!(
                    "The {} checksum you specified did not match the calculated checksum.",
                    algorithm.as_str()
                ),
            ));
        }
    }
    if xml && bytes.windows(CDATA.len()).any(|w| w == CDATA) {
        return Err(refusal(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "Perch does not read CDATA sections in XML documents: send their text escaped (&lt; &amp;).",
        ));
    }
    Ok(Request::from_parts(parts, s3s::Body::from(bytes)))
}

fn refusal(status: StatusCode, code: &'static str, message: &str) -> Refusal {
    Refusal {
        status,
        code,
        message: message.to_owned(),
    }
}
