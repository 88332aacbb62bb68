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
