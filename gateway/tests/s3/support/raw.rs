//! Requests of the raw client that many tests make: CreateBucket, a whole listing, an S3 error.

use std::net::SocketAddr;

use perch_testkit::raw_client::{BUCKET, Req, Resp, Style, xml_values};
use perch_testkit::sigv4::uri_encode;

/// Asserts an S3 error answer: status and `<Code>`.
#[track_caller]
pub fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: expected {status} {code}, got {}",
        r.summary()
    );
    assert_eq!(
        r.code().as_deref(),
        Some(code),
        "{what}: expected S3 error code {code}, got {}",
        r.summary()
    );
}

/// Every key in `BUCKET` (ListObjectsV2 through perch, path style, following continuation).
#[track_caller]
pub fn list_keys(addr: SocketAddr) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = "list-type=2".to_owned();
        if let Some(t) = &token {
            q.push_str(&format!("&continuation-token={}", uri_encode(t.as_bytes(), true)));
        }
        let r = Req::bucket("GET", addr, Style::Path, &q).go(addr);
        assert_eq!(r.status, 200, "ListObjectsV2: {}", r.summary());
        let text = r.text();
        for c in xml_values(&text, "Contents") {
            keys.extend(xml_values(&c, "Key"));
        }
        token = xml_values(&text, "NextContinuationToken").into_iter().next();
        if token.is_none() {
            break;
        }
    }
    keys
}

/// Creates `BUCKET` through perch (CreateBucket, path style).
#[track_caller]
pub fn create_bucket(addr: SocketAddr) {
    let r = Req::bucket("PUT", addr, Style::Path, "").go(addr);
    assert_eq!(r.status, 200, "CreateBucket {BUCKET}: {}", r.summary());
}

/// Sends `req` (signed over `body`'s SHA-256 unless it names another payload) with `body` framed
/// by `Transfer-Encoding: chunked` (1 MiB chunks) and no `Content-Length`, and reads the answer.
/// The body is written from a thread of its own: an answer given before the whole body was read
/// (a refusal) is read all the same.
pub fn send_without_a_length(addr: SocketAddr, mut req: Req, body: &[u8]) -> Resp {
    use perch_testkit::raw_client::{read_body, read_head};
    use std::io::{BufReader, Write};
    if req.content_sha256.is_none() {
        req.content_sha256 = Some(perch_testkit::sigv4::sha256_hex(body));
    }
    req.content_length = Some(0);
    req.expect = Some(false);
    let method = req.method.clone();
    let head = String::from_utf8(req.head().0)
        .expect("ascii")
        .replace("Content-Length: 0\r\n", "Transfer-Encoding: chunked\r\n");
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut framed = head.into_bytes();
    for chunk in body.chunks(1 << 20) {
        framed.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&framed);
    });
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader).expect("an answer");
    let body = read_body(&mut reader, &method, status, &headers).expect("its body");
    drop(reader);
    let _ = sender.join();
    Resp {
        status,
        headers,
        body,
        got_continue: false,
    }
}
