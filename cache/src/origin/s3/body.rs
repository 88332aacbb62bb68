//! `OriginBody`: a GET body from aws-sdk-s3 as Perch's `ByteStream`, cut with a `TimedOut` error
//! when the origin stays silent too long.

use super::*;

/// A GET body from the SDK as Perch's `ByteStream`, chunk by chunk. An origin silent for
/// `idle` while Perch waits for the next chunk ends the stream with a `TimedOut` error.
pub(super) struct OriginBody {
    pub inner: SdkByteStream,
    pub idle: Duration,
    pub timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pub done: bool,
}

impl Stream for OriginBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.timer = None;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(io::Error::other(format!(
                    "origin body: {}",
                    DisplayErrorContext(&e)
                )))))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("origin body: nothing received for {idle:?}"),
                    ))));
                }
                Poll::Pending
            }
        }
    }
}
