//! The hit fast path (issue 14): a signed GET or HEAD of a whole object is answered without s3s,
//! and its answer is the one s3s gives. Each request is sent twice, plain (the fast path, as the
//! `perch_requests_direct_total` counter shows) and with a condition that holds (`If-None-Match`
//! with an ETag no object has, which only s3s serves): status, headers and body must be the same.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::DateTime;
use perch_testkit::bodies::pattern;
use perch_testkit::raw_client::{BUCKET, Req, Resp, Style, key_path};
use perch_testkit::sdk::perch_client;
use perch_testkit::servers::{DEV_ACCESS_KEY_ID, PerchServer};
use perch_testkit::sigv4::Keys;

use crate::support::machine;
use crate::support::perch::{Perch, perch_metric};
use crate::support::sdk::{create_bucket, ok, presigned_get};

/// A condition every object passes, which sends the request to s3s.
const PASSING: (&str, &str) = ("If-None-Match", "\"00000000000000000000000000000000\"");

fn direct_count(perch: &PerchServer) -> f64 {
    perch_metric(perch, "perch_requests_direct_total").unwrap_or(0.0)
}

/// Headers as a comparable list: lower-case names, sorted, without `Date`.
fn comparable(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        // Each answer has its own request id (both have one: `objects::every_answer_carries_its_own_request_id`).
        .filter(|(n, _)| n != "date" && n != "x-amz-request-id")
        .collect();
    h.sort();
    h
}

#[track_caller]
fn assert_same(fast: &Resp, s3s: &Resp, what: &str) {
    assert_eq!(fast.status, s3s.status, "{what}: status");
    assert_eq!(comparable(&fast.headers), comparable(&s3s.headers), "{what}: headers");
    assert_eq!(
        without_request_id(&fast.body),
        without_request_id(&s3s.body),
        "{what}: body"
    );
}

/// A body with an error document's `<RequestId>` left out: each answer has its own.
fn without_request_id(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    match (text.find("<RequestId>"), text.find("</RequestId>")) {
        (Some(a), Some(b)) if a < b => [&body[..a], &body[b + "</RequestId>".len()..]].concat(),
        _ => body.to_vec(),
    }
}

/// Sends `req` plain and with the passing condition; checks that only the plain one took the
/// fast path and that both were answered alike. Returns the plain answer.
#[track_caller]
fn both_ways(perch: &PerchServer, req: Req, what: &str) -> Resp {
    let addr = perch.addr;
    let before = direct_count(perch);
    let fast = req.clone().go(addr);
    let after_fast = direct_count(perch);
    assert_eq!(after_fast, before + 1.0, "{what}: the plain request took the fast path");
    let slow = req.header(PASSING.0, PASSING.1).go(addr);
    assert_eq!(
        direct_count(perch),
        after_fast,
        "{what}: the conditional one went to s3s"
    );
    assert_same(&fast, &slow, what);
    fast
}

fn object(method: &str, addr: SocketAddr, style: Style, key: &str) -> Req {
    Req::object(method, addr, style, &key_path(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_answers_as_s3s_does() {
    let _turn = machine::share();
    let gw = Perch::dir(&[]);
    let _log = gw.log_on_panic();
    let perch = &gw.server;
    let s3 = perch_client(perch);
    create_bucket(&s3, BUCKET).await;
    let body = pattern(70_000, 1);
    ok(
        s3.put_object()
            .bucket(BUCKET)
            .key("dir/full é+%.bin")
            .body(body.clone().into())
            .content_type("application/x-perch")
            .cache_control("max-age=60")
            .content_disposition("attachment; filename=\"x.bin\"")
            .content_encoding("identity")
            .content_language("en-GB")
            .expires(DateTime::from_secs(1_900_000_000))
            .metadata("color", "blue")
            .metadata("Mixed", "A  b")
            .tagging("team=db&tier=hot")
            .send()
            .await,
        "put with every header",
    );
    ok(
        s3.put_object()
            .bucket(BUCKET)
            .key("small")
            .body(b"tiny".to_vec().into())
            .send()
            .await,
        "put small",
    );
    ok(
        s3.put_object()
            .bucket(BUCKET)
            .key("empty")
            .body(Vec::new().into())
            .send()
            .await,
        "put empty",
    );

    for style in [Style::Path, Style::Virtual] {
        for key in ["dir/full é+%.bin", "small", "empty"] {
            for method in ["GET", "HEAD"] {
                let what = format!("{method} {key} {style:?}");
                let got = both_ways(perch, object(method, perch.addr, style, key), &what);
                assert_eq!(got.status, 200, "{what}: {}", got.summary());
            }
        }
        // A missing key: the same 404 NoSuchKey.
        let got = both_ways(perch, object("GET", perch.addr, style, "missing"), "GET missing");
        assert_eq!(got.status, 404);
        assert!(got.text().contains("<Code>NoSuchKey</Code>"), "{}", got.text());
        both_ways(perch, object("HEAD", perch.addr, style, "missing"), "HEAD missing");
    }
    // The stored checksums asked for (current SDKs and boto3 ask on every GET): the fast path
    // answers with the checksum headers s3s gives, and none for any other mode.
    for key in ["dir/full é+%.bin", "small"] {
        for method in ["GET", "HEAD"] {
            for mode in ["ENABLED", "DISABLED"] {
                let what = format!("{method} {key} with x-amz-checksum-mode {mode}");
                let req = object(method, perch.addr, Style::Path, key).header("x-amz-checksum-mode", mode);
                let got = both_ways(perch, req, &what);
                assert_eq!(got.status, 200, "{what}: {}", got.summary());
                assert_eq!(
                    got.header("x-amz-checksum-crc32").is_some(),
                    mode == "ENABLED",
                    "{what}: {}",
                    got.summary()
                );
            }
        }
    }
    let full = object("GET", perch.addr, Style::Path, "dir/full é+%.bin").go(perch.addr);
    assert_eq!(full.body, body);
    assert_eq!(full.header("x-amz-meta-mixed"), Some("A  b"));
    // A GET names the object's number of tags, a HEAD does not (as S3).
    assert_eq!(full.header("x-amz-tagging-count"), Some("2"));
    let head = object("HEAD", perch.addr, Style::Path, "dir/full é+%.bin").go(perch.addr);
    assert_eq!(head.header("x-amz-tagging-count"), None);

    // Presigned URLs (as the SDK makes them, with its `x-id=GetObject`).
    for key in ["dir/full é+%.bin", "small", "missing"] {
        let presigned = presigned_get(&s3, BUCKET, key, Duration::from_secs(300)).await;
        let mut req = Req::for_url("GET", presigned.uri());
        for (name, value) in presigned.headers() {
            if !name.eq_ignore_ascii_case("host") {
                req = req.header(name, value);
            }
        }
        let got = both_ways(perch, req, &format!("presigned GET {key}"));
        let want = if key == "missing" { 404 } else { 200 };
        assert_eq!(got.status, want, "{}", got.summary());
    }

    // What the fast path does not take, s3s still answers (and refuses).
    let mut before = direct_count(perch);
    let ranged = object("GET", perch.addr, Style::Path, "small")
        .header("Range", "bytes=1-2")
        .go(perch.addr);
    assert_eq!((ranged.status, ranged.body.as_slice()), (206, &b"in"[..]));
    let forged = object("GET", perch.addr, Style::Path, "small")
        .keys(Some(Keys::new(DEV_ACCESS_KEY_ID, "not-the-secret")))
        .go(perch.addr);
    assert_eq!(forged.status, 403, "{}", forged.summary());
    assert!(forged.text().contains("SignatureDoesNotMatch"), "{}", forged.text());
    let stranger = object("GET", perch.addr, Style::Path, "small")
        .keys(Some(Keys::new("someone-else", "secret")))
        .go(perch.addr);
    assert!(stranger.text().contains("InvalidAccessKeyId"), "{}", stranger.text());
    let mut stale = object("GET", perch.addr, Style::Path, "small");
    stale.time = Some(SystemTime::now() - Duration::from_secs(3600));
    let stale = stale.go(perch.addr);
    assert!(stale.text().contains("RequestTimeTooSkewed"), "{}", stale.text());
    let anonymous = object("GET", perch.addr, Style::Path, "small")
        .keys(None)
        .go(perch.addr);
    assert_eq!(anonymous.status, 403, "{}", anonymous.summary());
    let dots = Req::object("GET", perch.addr, Style::Path, "a/../small").go(perch.addr);
    assert_eq!(dots.status, 400, "{}", dots.summary());
    // Bucket names s3s refuses are refused as s3s refuses them (the fast path took them, and the
    // origin answered 404 NoSuchBucket).
    for name in ["-abc", "abc-", "a..b", "192.168.1.1", "xn--abc"] {
        let mut req = Req::object("GET", perch.addr, Style::Path, "small");
        req.path = format!("/{name}/small");
        let got = req.go(perch.addr);
        assert_eq!(
            (got.status, got.code().as_deref()),
            (400, Some("InvalidBucketName")),
            "bucket {name}: {}",
            got.summary()
        );
    }
    // A signature in upper-case hex is no signature to s3s: refused, not served.
    let presigned = presigned_get(&s3, BUCKET, "small", Duration::from_secs(300)).await;
    let url = presigned.uri().to_owned();
    let (head, signature) = url.split_once("X-Amz-Signature=").expect("a signature");
    let (signature, tail) = signature.split_at(64);
    let upper = Req::for_url(
        "GET",
        &format!("{head}X-Amz-Signature={}{tail}", signature.to_ascii_uppercase()),
    );
    let got = upper.go(upper.host_addr());
    // (s3s: 400 InvalidRequest; S3 itself: 403 SignatureDoesNotMatch.)
    assert!(
        matches!(got.status, 400 | 403) && got.code().is_some(),
        "{}",
        got.summary()
    );
    assert_eq!(direct_count(perch), before, "none of these took the fast path");

    // A 304 as s3s answers it: the object's validators and no Content-Type (the fast path decides
    // an asctime If-Modified-Since, s3s an If-None-Match).
    let etag = object("HEAD", perch.addr, Style::Path, "dir/full é+%.bin")
        .go(perch.addr)
        .header("ETag")
        .expect("ETag")
        .to_owned();
    before = direct_count(perch);
    for method in ["GET", "HEAD"] {
        let fast = object(method, perch.addr, Style::Path, "dir/full é+%.bin")
            .header("If-Modified-Since", "Fri Jan  1 00:00:00 2100")
            .go(perch.addr);
        assert_eq!(direct_count(perch), before + 1.0, "{method} 304: the fast path");
        let slow = object(method, perch.addr, Style::Path, "dir/full é+%.bin")
            .header("If-None-Match", &etag)
            .go(perch.addr);
        assert_eq!(direct_count(perch), before + 1.0, "{method} 304: s3s");
        assert_eq!(fast.status, 304, "{}", fast.summary());
        assert_same(&fast, &slow, &format!("{method} 304"));
        before = direct_count(perch);
    }
}

/// A stored metadata value beyond printable ASCII (from an origin that keeps UTF-8: moto, given
/// the raw bytes by another writer) is answered RFC 2047-encoded by the fast path exactly as s3s
/// encodes it (one word, or several of 45 bytes each, a tab encoded too); the fast path used to
/// write the raw bytes.
#[test]
fn a_stored_value_beyond_ascii_is_answered_as_s3s_encodes_it() {
    let _turn = machine::share();
    let moto = perch_testkit::servers::MotoServer::start();
    let at_moto = SocketAddr::from(([127, 0, 0, 1], moto.port));
    let created = Req::bucket("PUT", at_moto, Style::Path, "").go(at_moto);
    assert_eq!(created.status, 200, "{}", created.summary());
    let long = "é".repeat(40);
    let written = object("PUT", at_moto, Style::Path, "utf8")
        .header("x-amz-meta-short", "café")
        .header("x-amz-meta-long", &long)
        .header("x-amz-meta-tab", "a\tb")
        .header("x-amz-meta-plain", "as it is")
        .body(b"from another writer".to_vec())
        .go(at_moto);
    assert_eq!(written.status, 200, "{}", written.summary());
    let gw = Perch::s3(&moto.endpoint, &[]);
    let _log = gw.log_on_panic();
    let perch = &gw.server;
    // The miss keeps it; the requests below are hits.
    let first = object("GET", perch.addr, Style::Path, "utf8").go(perch.addr);
    assert_eq!(first.body, b"from another writer");
    for method in ["GET", "HEAD"] {
        let got = both_ways(perch, object(method, perch.addr, Style::Path, "utf8"), method);
        assert_eq!(got.status, 200, "{method}: {}", got.summary());
        assert_eq!(got.header("x-amz-meta-short"), Some("=?UTF-8?B?Y2Fmw6k=?="), "{method}");
        assert_eq!(got.header("x-amz-meta-tab"), Some("=?UTF-8?B?YQli?="), "{method}");
        assert_eq!(got.header("x-amz-meta-plain"), Some("as it is"), "{method}");
        let words: Vec<&str> = got.header("x-amz-meta-long").unwrap_or_default().split(' ').collect();
        assert_eq!(words.len(), 2, "{method}: 80 bytes in words of 45: {words:?}");
    }
}
