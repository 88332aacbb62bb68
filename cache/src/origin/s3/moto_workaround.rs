//! A workaround for moto, the S3 server of the tests, in the production client: it renames the
//! root element of two of moto's XML answers so that aws-sdk-s3 accepts them (a no-op on real S3).

use super::*;

/// Lets the SDK read an XML answer whose root element is `<{from}>` where S3 sends `<{to}>`.
///
/// moto 5.2 (the S3 server of the tests) answers ListParts and CompleteMultipartUpload with
/// `<ListPartsResponse>` and `<CompleteMultipartUploadResponse>`; aws-sdk-s3 checks the root
/// name and would refuse them. Real S3 never sends these names, so on it this only costs
/// holding the (small, and anyway buffered by the SDK) answer whole before it is parsed.
#[derive(Debug)]
pub(super) struct RootAlias {
    pub from: &'static str,
    pub to: &'static str,
}

impl Intercept for RootAlias {
    fn name(&self) -> &'static str {
        "PerchRootAlias"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(());
        }
        let inner = SdkByteStream::new(std::mem::replace(response.body_mut(), SdkBody::taken()));
        let renamed = RenamedRoot {
            inner,
            buf: Vec::new(),
            from: self.from,
            to: self.to,
            done: false,
        };
        *response.body_mut() = SdkBody::from_body_1_x(renamed);
        Ok(())
    }
}

/// The body of `RootAlias`: the whole answer in one frame, its root element renamed.
pub(super) struct RenamedRoot {
    pub inner: SdkByteStream,
    pub buf: Vec<u8>,
    pub from: &'static str,
    pub to: &'static str,
    pub done: bool,
}

impl http_body::Body for RenamedRoot {
    type Data = Bytes;
    type Error = aws_sdk_s3::primitives::ByteStreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(chunk)) => this.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let xml = rename_root(std::mem::take(&mut this.buf), this.from, this.to);
                    return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(xml)))));
                }
            }
        }
    }
}

/// Renames the element `from` to `to` when it is the document's root; anything else is
/// returned as it came.
pub(super) fn rename_root(xml: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let open = format!("<{from}");
    let close = format!("</{from}>");
    // The root is the first element: skip blanks (S3 pads slow answers), the declaration and comments.
    let mut at = 0;
    loop {
        while at < xml.len() && xml[at].is_ascii_whitespace() {
            at += 1;
        }
        let rest = &xml[at..];
        let end = if rest.starts_with(b"<?") {
            find(rest, b"?>").map(|e| e + 2)
        } else if rest.starts_with(b"<!--") {
            find(rest, b"-->").map(|e| e + 3)
        } else {
            break;
        };
        match end {
            Some(e) => at += e,
            None => return xml,
        }
    }
    let rest = &xml[at..];
    let is_root = rest.starts_with(open.as_bytes())
        && matches!(rest.get(open.len()), Some(b' ' | b'>' | b'/' | b'\t' | b'\r' | b'\n'));
    let Some(close_at) = is_root
        .then(|| xml.windows(close.len()).rposition(|w| w == close.as_bytes()))
        .flatten()
        .filter(|&c| c >= at + open.len())
    else {
        return xml;
    };
    let mut out = Vec::with_capacity(xml.len());
    out.extend_from_slice(&xml[..at]);
    out.extend_from_slice(format!("<{to}").as_bytes());
    out.extend_from_slice(&xml[at + open.len()..close_at]);
    out.extend_from_slice(format!("</{to}>").as_bytes());
    out.extend_from_slice(&xml[close_at + close.len()..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_alias_renames_only_the_root() {
        let r = |xml: &str| String::from_utf8(rename_root(xml.as_bytes().to_vec(), "AResponse", "AResult")).unwrap();
        assert_eq!(
            r("  \n<?xml version=\"1.0\"?>\n<AResponse xmlns=\"x\"><K>AResponse</K></AResponse>\n"),
            "  \n<?xml version=\"1.0\"?>\n<AResult xmlns=\"x\"><K>AResponse</K></AResult>\n"
        );
        assert_eq!(r("<AResponse><B/></AResponse>"), "<AResult><B/></AResult>");
        assert_eq!(
            r("<!-- </AResponse> --><AResponse>"),
            "<!-- </AResponse> --><AResponse>",
            "a close tag only before the root's opening leaves the document as it came"
        );
        assert_eq!(r("<AResult><B/></AResult>"), "<AResult><B/></AResult>");
        assert_eq!(
            r("<Error><Code>AResponse</Code></Error>"),
            "<Error><Code>AResponse</Code></Error>"
        );
        assert_eq!(r("<AResponseX></AResponseX>"), "<AResponseX></AResponseX>");
        assert_eq!(r("<AResponse>"), "<AResponse>");
    }
}
