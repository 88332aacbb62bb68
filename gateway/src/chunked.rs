//! Gives a request body sent with `Transfer-Encoding: chunked` and no `Content-Length` its
//! length, by receiving it whole first, so that s3s can check its signed SHA-256 (which it only
//! does over a body of known length).

use std::path::Path;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use perch_cache::Store;
use s3s::{S3Error, S3ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bodies up to this size are held in memory; larger ones wait in a file of the spool dir.
const IN_MEMORY_MAX: usize = 1 << 20;

/// A held file's room on the volume is allocated ahead of its bytes in stretches of this size
/// (`Store::allocate_more`): a body of no declared length leaves the disk's reserve alone and
/// waits for room as any body does, instead of failing on a full disk.
const ALLOCATE_STEP: u64 = 8 << 20;

/// Whether `req`'s body has no length s3s or the spool could bound: a body framed by
/// `Transfer-Encoding: chunked` (not aws-chunked, whose length is `x-amz-decoded-content-length`)
/// and no `Content-Length`, with an `x-amz-content-sha256` naming the body's hash or
/// `UNSIGNED-PAYLOAD`, or, for a PUT, with none (a presigned URL's, or a SigV2 request's: s3s took
/// those with no length, and the spool received them unbounded and with no room allocated). (A
/// browser form, a POST signed in its own fields, is bounded by s3s: `POST_OBJECT_FILE_MAX`.)
pub fn lacks_length<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    !h.contains_key(header::CONTENT_LENGTH)
        && h.get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
        && match h.get("x-amz-content-sha256") {
            Some(v) => !v.as_bytes().starts_with(b"STREAMING-"),
            None => req.method() == http::Method::PUT,
        }
}

/// Why a body could not be given a length: the S3 error to answer with.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// Where a received body waits: in memory, or in a file removed when this is dropped.
enum Held {
    Memory(Bytes),
    File(TempFile),
}

struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Receives the body of `req` whole and gives the request back with `Content-Length` set and a body
/// of exactly that many bytes (read back from `spool_dir`, on `store`'s volume, when it is large).
/// The signature and the body's hash are still checked by s3s, as for any request with a length.
pub async fn with_length<B>(
    req: Request<B>,
    spool_dir: &Path,
    body_max: u64,
    store: &Store,
) -> Result<Request<s3s::Body>, Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (mut parts, mut body) = req.into_parts();
    let mut mem = BytesMut::new();
    let mut file: Option<(tokio::fs::File, TempFile)> = None;
    let mut len: u64 = 0;
    // Bytes of the file allocated on the volume.
    let mut allocated: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| broken(&e))?;
        let Ok(data) = frame.into_data() else { continue };
        len += data.len() as u64;
        if len > body_max {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                code: "EntityTooLarge",
                message: "Your proposed upload exceeds the maximum allowed object size.".to_owned(),
            });
        }
        if file.is_none() && mem.len() + data.len() > IN_MEMORY_MAX {
            let path = spool_dir.join(format!("chunked-{}", uuid::Uuid::new_v4()));
            let f = tokio::fs::File::create(&path).await.map_err(local_failure)?;
            file = Some((f, TempFile(path)));
        }
        match &mut file {
            None => mem.extend_from_slice(&data),
            Some((f, _)) => {
                if len > allocated {
                    let more = (len - allocated).max(ALLOCATE_STEP);
                    use std::os::fd::AsFd;
                    store
                        .allocate_more(f.as_fd(), allocated, more)
                        .await
                        .map_err(|e| refused(crate::convert::store_error(e)))?;
                    allocated += more;
                }
                if !mem.is_empty() {
                    f.write_all(&mem).await.map_err(local_failure)?;
                    mem = BytesMut::new();
                }
                f.write_all(&data).await.map_err(local_failure)?;
            }
        }
    }
    let held = match file {
        None => Held::Memory(mem.freeze()),
        Some((mut f, temp)) => {
            f.flush().await.map_err(local_failure)?;
            Held::File(temp)
        }
    };
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = match held {
        Held::Memory(bytes) => s3s::Body::from(bytes),
        Held::File(temp) => {
            let f = tokio::fs::File::open(&temp.0).await.map_err(local_failure)?;
            s3s::Body::from(read_back(f, temp, len))
        }
    };
    Ok(Request::from_parts(parts, body))
}

/// The file's bytes as a stream of known length; the file goes when the stream is dropped.
fn read_back(file: tokio::fs::File, temp: TempFile, len: u64) -> s3s::stream::DynByteStream {
    let chunks = futures::stream::unfold((file, temp), |(mut f, temp)| async move {
        let mut buf = BytesMut::with_capacity(256 << 10);
        match f.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.freeze()), (f, temp))),
            Err(e) => Some((Err(Box::new(e) as s3s::StdError), (f, temp))),
        }
    });
    KnownLength::boxed(Box::pin(chunks), len as usize)
}

type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, s3s::StdError>> + Send + Sync>>;

/// A body stream that knows how many bytes it has left (s3s and hyper ask).
pub struct KnownLength {
    inner: Chunks,
    left: usize,
}

impl KnownLength {
    pub fn boxed(inner: Chunks, len: usize) -> s3s::stream::DynByteStream {
        Box::pin(KnownLength { inner, left: len })
    }
}

impl futures::Stream for KnownLength {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(b))) = &polled {
            self.left = self.left.saturating_sub(b.len());
        }
        polled
    }
}

impl s3s::stream::ByteStream for KnownLength {
    fn remaining_length(&self) -> s3s::stream::RemainingLength {
        s3s::stream::RemainingLength::new_exact(self.left)
    }
}

/// The answer to a request body that broke while it was received: its timeout (the door's mark),
/// or its end before its last chunk.
pub fn broken(e: &impl std::fmt::Display) -> Refusal {
    let text = e.to_string();
    tracing::debug!(error = %text, "a request body broke while it was received");
    if text.contains(crate::limits::MARK) {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "RequestTimeout",
            message: "Your socket connection to the server was not read from or written to within the timeout period."
                .to_owned(),
        }
    } else {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "IncompleteBody",
            message: "The request body ended before it was whole.".to_owned(),
        }
    }
}

/// The refusal of a store's error (`convert::store_error`): a full disk's 503, a body larger than
/// the volume's 400.
fn refused(e: S3Error) -> Refusal {
    Refusal {
        status: e.status_code().unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        code: match e.code() {
            S3ErrorCode::EntityTooLarge => "EntityTooLarge",
            S3ErrorCode::ServiceUnavailable => "ServiceUnavailable",
            S3ErrorCode::InternalError => "InternalError",
            _ => "SlowDown",
        },
        message: e.message().unwrap_or("Please retry.").to_owned(),
    }
}

fn local_failure(e: std::io::Error) -> Refusal {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        // A filesystem that cannot preallocate, filled meanwhile: the client may send it again
        // once there is room (nothing of this body is kept). A full disk is never a 500.
        tracing::warn!(error = %e, "the data dir's filesystem is full: a chunked request body is refused");
        return Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "SlowDown",
            message: "Perch's disk is full; please retry.".to_owned(),
        };
    }
    tracing::error!(error = %e, "holding a chunked request body failed");
    Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "InternalError",
        message: "Perch could not hold the request body locally.".to_owned(),
    }
}
