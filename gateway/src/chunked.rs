//! Gives a request body sent with `Transfer-Encoding: chunked` and no `Content-Length` its
//! length, by receiving it whole first, so that s3s can check its signed SHA-256 (which it only
//! does over a body of known length).

use std::path::Path;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bodies up to this size are held in memory; larger ones wait in a file of the spool dir.
const IN_MEMORY_MAX: usize = 1 << 20;

/// Whether s3s would refuse `req` for want of a length: a body framed by `Transfer-Encoding:
/// chunked` (not aws-chunked, whose length is `x-amz-decoded-content-length`), no
/// `Content-Length`, and an `x-amz-content-sha256` naming the body's hash or `UNSIGNED-PAYLOAD`.
pub fn lacks_length<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    !h.contains_key(header::CONTENT_LENGTH)
        && h.get(header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
        && h.get("x-amz-content-sha256")
            .is_some_and(|v| !v.as_bytes().starts_with(b"STREAMING-"))
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
/// of exactly that many bytes (read back from `spool_dir` when it is large). The signature and the
/// body's hash are still checked by s3s, as for any request with a length.
pub async fn with_length<B>(req: Request<B>, spool_dir: &Path, body_max: u64) -> Result<Request<s3s::Body>, Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (mut parts, mut body) = req.into_parts();
    let mut mem = BytesMut::new();
    let mut file: Option<(tokio::fs::File, TempFile)> = None;
    let mut len: u64 = 0;
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
        match &mut file {
            Some((f, _)) => f.write_all(&data).await.map_err(local_failure)?,
            None if mem.len() + data.len() <= IN_MEMORY_MAX => mem.extend_from_slice(&data),
            None => {
                let path = spool_dir.join(format!("chunked-{}", uuid::Uuid::new_v4()));
                let mut f = tokio::fs::File::create(&path).await.map_err(local_failure)?;
                let temp = TempFile(path);
                f.write_all(&mem).await.map_err(local_failure)?;
                f.write_all(&data).await.map_err(local_failure)?;
                mem = BytesMut::new();
                file = Some((f, temp));
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

fn local_failure(e: std::io::Error) -> Refusal {
    tracing::error!(error = %e, "holding a chunked request body failed");
    Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "InternalError",
        message: "Perch could not hold the request body locally.".to_owned(),
    }
}
