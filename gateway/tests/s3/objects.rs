//! Objects through aws-sdk-s3, against both origins: headers, conditions, ranges, deletes, odd keys;
//! and a PUT streamed without a length from a raw client.
//!
//! Every assertion is exact: HTTP status, S3 error code, bytes, headers.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use perch_testkit::bodies::{md5_etag, pattern};
use perch_testkit::raw_client::BUCKET;
use perch_testkit::sdk::perch_client;
use perch_testkit::sigv4::{Keys, amz_date, authorization, sha256_hex};

use crate::support::machine;
use crate::support::perch::{Perch, flush};
use crate::support::sdk::{
    OriginKind, all_keys, assert_recent, bytes_of, create_bucket, expect_err, for_each_origin, get_bytes, meta,
    now_secs, ok, presigned_get, put, send_presigned,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_headers_and_conditional_requests() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "objects";
        create_bucket(c, b).await;
        let body = pattern(3000, 1);
        let md = meta(&[("color", "blue"), ("author-name", "Ada Lovelace")]);
        let out = ok(
            c.put_object()
                .bucket(b)
                .key("doc.bin")
                .body(ByteStream::from(body.clone()))
                .content_type("application/x-perch-test")
                .cache_control("max-age=3600, public")
                .content_encoding("gzip")
                .content_disposition("attachment; filename=\"report.bin\"")
                .content_language("en-GB")
                .expires(DateTime::from_secs(1_893_456_000))
                .metadata("color", "blue")
                .metadata("Author-Name", "Ada Lovelace")
                .send()
                .await,
            "put doc.bin",
        );
        let etag = md5_etag(&body);
        assert_eq!(out.e_tag(), Some(etag.as_str()), "PutObject ETag is the quoted MD5");

        let got = ok(c.get_object().bucket(b).key("doc.bin").send().await, "get doc.bin");
        assert_eq!(got.e_tag(), Some(etag.as_str()));
        assert_eq!(got.content_length(), Some(3000));
        assert_eq!(got.content_type(), Some("application/x-perch-test"));
        assert_eq!(got.cache_control(), Some("max-age=3600, public"));
        assert_eq!(got.content_encoding(), Some("gzip"));
        assert_eq!(got.content_disposition(), Some("attachment; filename=\"report.bin\""));
        assert_eq!(got.content_language(), Some("en-GB"));
        assert_eq!(got.expires_string(), Some("Tue, 01 Jan 2030 00:00:00 GMT"));
        assert_eq!(got.metadata(), Some(&md));
        assert_eq!(got.content_range(), None);
        assert_recent(got.last_modified(), "GET Last-Modified");
        let last_modified = *got.last_modified().expect("Last-Modified");
        assert_eq!(bytes_of(got.body).await, body);

        let head = ok(c.head_object().bucket(b).key("doc.bin").send().await, "head doc.bin");
        assert_eq!(head.e_tag(), Some(etag.as_str()));
        assert_eq!(head.content_length(), Some(3000));
        assert_eq!(head.content_type(), Some("application/x-perch-test"));
        assert_eq!(head.cache_control(), Some("max-age=3600, public"));
        assert_eq!(head.content_encoding(), Some("gzip"));
        assert_eq!(head.content_disposition(), Some("attachment; filename=\"report.bin\""));
        assert_eq!(head.content_language(), Some("en-GB"));
        assert_eq!(head.expires_string(), Some("Tue, 01 Jan 2030 00:00:00 GMT"));
        assert_eq!(head.metadata(), Some(&md));
        assert_eq!(head.last_modified().map(DateTime::secs), Some(last_modified.secs()));

        // The listing agrees with HEAD.
        let list = ok(c.list_objects_v2().bucket(b).send().await, "list");
        let o = &list.contents()[0];
        assert_eq!(o.key(), Some("doc.bin"));
        assert_eq!(o.size(), Some(3000));
        assert_eq!(o.e_tag(), Some(etag.as_str()));
        assert_eq!(o.last_modified().map(DateTime::secs), Some(last_modified.secs()));

        // response-* overrides.
        let got = ok(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .response_content_type("text/x-override")
                .response_content_disposition("inline")
                .response_cache_control("no-store")
                .send()
                .await,
            "GET with response-* overrides",
        );
        assert_eq!(got.content_type(), Some("text/x-override"));
        assert_eq!(got.content_disposition(), Some("inline"));
        assert_eq!(got.cache_control(), Some("no-store"));
        assert_eq!(got.content_encoding(), Some("gzip"));
        assert_eq!(bytes_of(got.body).await, body);

        // If-Match.
        let got = ok(
            c.get_object().bucket(b).key("doc.bin").if_match(&etag).send().await,
            "If-Match the ETag",
        );
        assert_eq!(bytes_of(got.body).await, body);
        expect_err(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .if_match("\"00000000000000000000000000000000\"")
                .send()
                .await,
            412,
            Some("PreconditionFailed"),
        );
        expect_err(
            c.head_object()
                .bucket(b)
                .key("doc.bin")
                .if_match("\"00000000000000000000000000000000\"")
                .send()
                .await,
            412,
            None,
        );

        // If-None-Match.
        expect_err(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .if_none_match(&etag)
                .send()
                .await,
            304,
            None,
        );
        expect_err(
            c.head_object()
                .bucket(b)
                .key("doc.bin")
                .if_none_match(&etag)
                .send()
                .await,
            304,
            None,
        );
        let got = ok(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .if_none_match("\"00000000000000000000000000000000\"")
                .send()
                .await,
            "If-None-Match another ETag",
        );
        assert_eq!(bytes_of(got.body).await, body);

        // If-Modified-Since / If-Unmodified-Since.
        let past = DateTime::from_secs(now_secs() - 3600);
        let future = DateTime::from_secs(now_secs() + 3600);
        let got = ok(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .if_modified_since(past)
                .send()
                .await,
            "If-Modified-Since an hour ago",
        );
        assert_eq!(bytes_of(got.body).await, body);
        expect_err(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .if_modified_since(future)
                .send()
                .await,
            304,
            None,
        );
        expect_err(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .if_unmodified_since(past)
                .send()
                .await,
            412,
            Some("PreconditionFailed"),
        );
        let got = ok(
            c.get_object()
                .bucket(b)
                .key("doc.bin")
                .if_unmodified_since(future)
                .send()
                .await,
            "If-Unmodified-Since in an hour",
        );
        assert_eq!(bytes_of(got.body).await, body);
        // A value that is not a date S3 ignores (RFC 7232): the whole object (it was 400).
        let req = presigned_get(c, b, "doc.bin", Duration::from_secs(60)).await;
        for name in ["If-Modified-Since", "If-Unmodified-Since"] {
            let r = send_presigned(&req, &[(name, "yesterday")], b"");
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            assert_eq!(r.body, body, "{name}");
        }
        // A date in an older HTTP form is a condition all the same: checked, not ignored (a date
        // to come, 2060 in RFC 850's two digits: not modified since).
        let r = send_presigned(&req, &[("If-Modified-Since", "Thursday, 01-Jan-60 00:00:00 GMT")], b"");
        assert_eq!(r.status, 304, "an RFC 850 date was not checked: {}", r.summary());
        // RFC 7232 section 6, as S3 applies it: If-Match that holds overrides a failing
        // If-Unmodified-Since, and If-None-Match that holds overrides a failing If-Modified-Since.
        // moto 5.2 answers 412 and 304 to these, so they are checked on the directory origin only.
        if gw.kind == OriginKind::Dir {
            let got = ok(
                c.get_object()
                    .bucket(b)
                    .key("doc.bin")
                    .if_match(&etag)
                    .if_unmodified_since(past)
                    .send()
                    .await,
                "If-Match true + If-Unmodified-Since false",
            );
            assert_eq!(bytes_of(got.body).await, body);
            let got = ok(
                c.get_object()
                    .bucket(b)
                    .key("doc.bin")
                    .if_none_match("\"00000000000000000000000000000000\"")
                    .if_modified_since(future)
                    .send()
                    .await,
                "If-None-Match true + If-Modified-Since false",
            );
            assert_eq!(bytes_of(got.body).await, body);
        }

        // Conditional writes.
        expect_err(
            c.put_object()
                .bucket(b)
                .key("doc.bin")
                .if_none_match("*")
                .body(ByteStream::from_static(b"overwrite"))
                .send()
                .await,
            412,
            Some("PreconditionFailed"),
        );
        expect_err(
            c.put_object()
                .bucket(b)
                .key("doc.bin")
                .if_match("\"00000000000000000000000000000000\"")
                .body(ByteStream::from_static(b"overwrite"))
                .send()
                .await,
            412,
            Some("PreconditionFailed"),
        );
        assert_eq!(get_bytes(c, b, "doc.bin").await, body, "refused writes changed nothing");

        let out = ok(
            c.put_object()
                .bucket(b)
                .key("fresh")
                .if_none_match("*")
                .body(ByteStream::from_static(b"new"))
                .send()
                .await,
            "If-None-Match * on an absent key",
        );
        assert_eq!(out.e_tag(), Some(md5_etag(b"new").as_str()));
        assert_eq!(get_bytes(c, b, "fresh").await, b"new");

        let out = ok(
            c.put_object()
                .bucket(b)
                .key("doc.bin")
                .if_match(&etag)
                .body(ByteStream::from_static(b"replaced"))
                .send()
                .await,
            "If-Match the current ETag",
        );
        assert_eq!(out.e_tag(), Some(md5_etag(b"replaced").as_str()));
        let got = ok(c.get_object().bucket(b).key("doc.bin").send().await, "get replaced");
        assert_eq!(
            got.metadata().map(HashMap::len).unwrap_or(0),
            0,
            "a PUT replaces the metadata"
        );
        assert_eq!(bytes_of(got.body).await, b"replaced");

        expect_err(
            c.put_object()
                .bucket(b)
                .key("never-written")
                .if_match(&etag)
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
            404,
            Some("NoSuchKey"),
        );
        expect_err(
            c.get_object().bucket(b).key("never-written").send().await,
            404,
            Some("NoSuchKey"),
        );

        // Absent keys.
        expect_err(
            c.get_object().bucket(b).key("absent").send().await,
            404,
            Some("NoSuchKey"),
        );
        expect_err(c.head_object().bucket(b).key("absent").send().await, 404, None);
        expect_err(
            c.get_object().bucket("no-such-bucket").key("x").send().await,
            404,
            Some("NoSuchBucket"),
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "ranges";
        create_bucket(c, b).await;
        let body = pattern(1000, 2);
        let etag = put(c, b, "r", &body).await;

        let cases: [(&str, std::ops::Range<usize>); 6] = [
            ("bytes=10-19", 10..20),
            ("bytes=0-0", 0..1),
            ("bytes=990-", 990..1000),
            ("bytes=0-", 0..1000),
            ("bytes=-5", 995..1000),
            ("bytes=995-5000", 995..1000),
        ];
        for (range, span) in cases {
            let got = ok(
                c.get_object().bucket(b).key("r").range(range).send().await,
                &format!("GET {range}"),
            );
            let expected_range = format!("bytes {}-{}/1000", span.start, span.end - 1);
            assert_eq!(got.content_range(), Some(expected_range.as_str()), "{range}");
            assert_eq!(got.content_length(), Some(span.len() as i64), "{range}");
            assert_eq!(got.e_tag(), Some(etag.as_str()), "{range}");
            assert_eq!(bytes_of(got.body).await, &body[span], "{range}");
        }
        for range in ["bytes=1000-", "bytes=5000-6000"] {
            expect_err(
                c.get_object().bucket(b).key("r").range(range).send().await,
                416,
                Some("InvalidRange"),
            );
        }
        // A Range that is not one byte range S3 ignores: the whole object, 200 (it was 400).
        for range in ["bytes=5-2", "bytes=invalid-range", "bytes=0-1,3-4", "bytes=-"] {
            let got = ok(
                c.get_object().bucket(b).key("r").range(range).send().await,
                &format!("GET {range}"),
            );
            assert_eq!(got.content_range(), None, "{range}");
            assert_eq!(got.content_length(), Some(1000), "{range}");
            assert_eq!(bytes_of(got.body).await, body, "{range}");
            let head = ok(
                c.head_object().bucket(b).key("r").range(range).send().await,
                &format!("HEAD {range}"),
            );
            assert_eq!(head.content_length(), Some(1000), "{range}");
            assert_eq!(head.content_range(), None, "{range}");
            // `bytes=-`, which s3s reads (as a suffix of nothing), the same beside a condition,
            // which s3s answers, not the hit path (the others s3s refuses there: documented).
            if range != "bytes=-" {
                continue;
            }
            let got = ok(
                c.get_object()
                    .bucket(b)
                    .key("r")
                    .range(range)
                    .if_match(&etag)
                    .send()
                    .await,
                &format!("GET {range} with If-Match"),
            );
            assert_eq!(got.content_range(), None, "{range} with If-Match");
            assert_eq!(bytes_of(got.body).await, body, "{range} with If-Match");
        }

        // The status line of a ranged GET, seen without the SDK.
        let req = presigned_get(c, b, "r", Duration::from_secs(60)).await;
        let r = send_presigned(&req, &[("Range", "bytes=100-199")], b"");
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 100-199/1000"));
        assert_eq!(r.header("content-length"), Some("100"));
        assert_eq!(r.body, &body[100..200]);
        let r = send_presigned(&req, &[], b"");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body);
        let r = send_presigned(&req, &[("Range", "bytes=100-99")], b"");
        assert_eq!((r.status, r.header("content-range")), (200, None));
        assert_eq!(r.body, body);
        let r = send_presigned(&req, &[("Range", "bytes=2000-")], b"");
        assert_eq!(r.status, 416);
        let text = r.text();
        assert!(text.contains("<Code>InvalidRange</Code>"), "{text}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Deletes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_object_and_delete_objects() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "deletes";
        create_bucket(c, b).await;
        put(c, b, "d1", b"one").await;

        let req = c
            .delete_object()
            .bucket(b)
            .key("d1")
            .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).expect("config"))
            .await
            .expect("presign DeleteObject");
        let r = send_presigned(&req, &[], b"");
        assert_eq!(r.status, 204, "{}", r.text());
        expect_err(c.get_object().bucket(b).key("d1").send().await, 404, Some("NoSuchKey"));
        expect_err(c.head_object().bucket(b).key("d1").send().await, 404, None);
        // Again, now absent: still 204.
        let r = send_presigned(&req, &[], b"");
        assert_eq!(r.status, 204, "{}", r.text());
        ok(
            c.delete_object().bucket(b).key("never-was").send().await,
            "delete an absent key",
        );

        for k in ["k1", "k2", "k3", "k4", "keep"] {
            put(c, b, k, k.as_bytes()).await;
        }
        let ids = |keys: &[&str]| -> Vec<ObjectIdentifier> {
            keys.iter()
                .map(|k| ObjectIdentifier::builder().key(*k).build().expect("identifier"))
                .collect()
        };
        let out = ok(
            c.delete_objects()
                .bucket(b)
                .delete(
                    Delete::builder()
                        .set_objects(Some(ids(&["k1", "k2", "absent"])))
                        .build()
                        .expect("delete"),
                )
                .send()
                .await,
            "DeleteObjects",
        );
        let deleted: BTreeSet<&str> = out.deleted().iter().filter_map(|d| d.key()).collect();
        assert_eq!(deleted, BTreeSet::from(["k1", "k2", "absent"]));
        assert!(out.errors().is_empty(), "{:?}", out.errors());
        assert_eq!(all_keys(c, b, None).await, ["k3", "k4", "keep"]);

        let out = ok(
            c.delete_objects()
                .bucket(b)
                .delete(
                    Delete::builder()
                        .set_objects(Some(ids(&["k3", "k4"])))
                        .quiet(true)
                        .build()
                        .expect("delete"),
                )
                .send()
                .await,
            "DeleteObjects quiet",
        );
        assert!(
            out.deleted().is_empty(),
            "quiet mode lists nothing: {:?}",
            out.deleted()
        );
        assert!(out.errors().is_empty(), "{:?}", out.errors());
        assert_eq!(all_keys(c, b, None).await, ["keep"]);
        expect_err(c.get_object().bucket(b).key("k3").send().await, 404, Some("NoSuchKey"));
        assert_eq!(get_bytes(c, b, "keep").await, b"keep");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_keys_round_trip() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "keys";
        create_bucket(c, b).await;

        // A "directory" marker beside keys under it.
        put(c, b, "data/1/pg_tblspc/", b"").await;
        put(c, b, "data/1/pg_tblspc/x", b"inside").await;
        let got = ok(
            c.get_object().bucket(b).key("data/1/pg_tblspc/").send().await,
            "get the marker",
        );
        assert_eq!(got.content_length(), Some(0));
        assert_eq!(got.e_tag(), Some(md5_etag(b"").as_str()));
        assert!(bytes_of(got.body).await.is_empty());
        let head = ok(
            c.head_object().bucket(b).key("data/1/pg_tblspc/").send().await,
            "head the marker",
        );
        assert_eq!(head.content_length(), Some(0));
        assert_eq!(get_bytes(c, b, "data/1/pg_tblspc/x").await, b"inside");
        let list = ok(
            c.list_objects_v2()
                .bucket(b)
                .prefix("data/1/")
                .delimiter("/")
                .send()
                .await,
            "list data/1/",
        );
        let prefixes: Vec<&str> = list.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
        assert_eq!(prefixes, ["data/1/pg_tblspc/"]);
        assert!(list.contents().is_empty());
        let list = ok(
            c.list_objects_v2()
                .bucket(b)
                .prefix("data/1/pg_tblspc/")
                .delimiter("/")
                .send()
                .await,
            "list data/1/pg_tblspc/",
        );
        let keys: Vec<&str> = list.contents().iter().filter_map(|o| o.key()).collect();
        let sizes: Vec<i64> = list.contents().iter().filter_map(|o| o.size()).collect();
        assert_eq!(keys, ["data/1/pg_tblspc/", "data/1/pg_tblspc/x"]);
        assert_eq!(sizes, [0, 6]);
        // Deleting the marker leaves the key under it.
        ok(
            c.delete_object().bucket(b).key("data/1/pg_tblspc/").send().await,
            "delete the marker",
        );
        assert_eq!(get_bytes(c, b, "data/1/pg_tblspc/x").await, b"inside");
        expect_err(
            c.get_object().bucket(b).key("data/1/pg_tblspc/").send().await,
            404,
            Some("NoSuchKey"),
        );
        ok(
            c.delete_object().bucket(b).key("data/1/pg_tblspc/x").send().await,
            "delete x",
        );

        let mut keys = [
            "with space",
            "  leading and trailing  ",
            "a+b",
            "100%",
            "%41%2F",
            "what?x=1&y=2#frag",
            "semi;colon,comma:colon",
            "tilde~star*bang!",
            "dollar$at@eq=",
            "brackets[]{}()<>",
            "quotes'\"`",
            "caret^pipe|back\\slash",
            "ünïcødé/ключ/键/😀",
            "a//b",
            "trailing/",
            "tab\there",
        ]
        .to_vec();
        if gw.kind == OriginKind::Dir {
            // moto (Werkzeug) answers 404 to any request whose key holds a line feed.
            keys.push("line\nfeed");
        }
        for (i, k) in keys.iter().enumerate() {
            let body = format!("{i}:{k}").into_bytes();
            put(c, b, k, &body).await;
            let got = ok(c.get_object().bucket(b).key(*k).send().await, &format!("get {k:?}"));
            assert_eq!(got.content_length(), Some(body.len() as i64), "{k:?}");
            assert_eq!(bytes_of(got.body).await, body, "{k:?}");
            ok(c.head_object().bucket(b).key(*k).send().await, &format!("head {k:?}"));
        }
        let mut expected: Vec<&str> = keys.to_vec();
        expected.sort();
        assert_eq!(
            all_keys(c, b, None).await,
            expected,
            "the listing holds every key, in byte order"
        );
        for k in keys.iter().copied() {
            let prefixed = all_keys(c, b, Some(k)).await;
            assert!(prefixed.iter().any(|p| p == k), "prefix {k:?} finds it: {prefixed:?}");
            ok(
                c.delete_object().bucket(b).key(k).send().await,
                &format!("delete {k:?}"),
            );
            expect_err(c.head_object().bucket(b).key(k).send().await, 404, None);
        }
        assert_eq!(all_keys(c, b, None).await, Vec::<String>::new());
    })
    .await;
}

/// Sends `body` as a PUT of `key` in `BUCKET`, signed in its headers over `content_sha256`,
/// framed with `Transfer-Encoding: chunked` (chunks of `chunk` bytes) and no Content-Length
/// (the raw client always sends a length). Returns the status and the body of the answer.
fn chunked_put(addr: SocketAddr, key: &str, body: &[u8], content_sha256: &str, chunk: usize) -> (u16, String) {
    let path = format!("/{BUCKET}/{key}");
    let host = format!("127.0.0.1:{}", addr.port());
    let date = amz_date(SystemTime::now());
    let auth = authorization(&Keys::dev(), "PUT", &host, &path, "", &date, content_sha256, &[]);
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\nx-amz-content-sha256: {content_sha256}\r\n\
         Authorization: {auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(chunk) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(addr).expect("connect to perch");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    stream.write_all(&req).expect("send the request");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut rest = String::new();
    reader.read_to_string(&mut rest).expect("answer");
    (status, rest)
}

/// A PUT signed in its headers and streamed with `Transfer-Encoding: chunked` and no length (as
/// tools that do not know the size send it) was refused with MissingContentLength.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_put_without_a_length_is_verified_and_stored() {
    let _turn = machine::share();
    let perch = Perch::dir(&[]);
    let _log = perch.log_on_panic();
    let s3 = perch_client(&perch.server);
    create_bucket(&s3, BUCKET).await;

    for (key, len, chunk) in [("small", 3000, 1000), ("large", 3 << 20, 64 << 10), ("empty", 0, 1)] {
        let body = pattern(len, len as u64);
        let (status, answer) = chunked_put(perch.addr(), key, &body, &sha256_hex(&body), chunk);
        assert_eq!(status, 200, "{key}: {answer}");
        let got = ok(s3.get_object().bucket(BUCKET).key(key).send().await, key);
        assert_eq!(got.e_tag(), Some(md5_etag(&body).as_str()), "{key}");
        assert_eq!(bytes_of(got.body).await, body, "{key}");
    }

    // UNSIGNED-PAYLOAD: stored as sent.
    let body = pattern(200_000, 7);
    let (status, answer) = chunked_put(perch.addr(), "unsigned", &body, "UNSIGNED-PAYLOAD", 50_000);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(get_bytes(&s3, BUCKET, "unsigned").await, body);

    // A body that is not the one whose hash was signed: refused once it has arrived, nothing kept.
    let (status, answer) = chunked_put(perch.addr(), "forged", &body, &sha256_hex(b"other"), 50_000);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("XAmzContentSHA256Mismatch"), "{answer}");
    expect_err(s3.head_object().bucket(BUCKET).key("forged").send().await, 404, None);
    assert_eq!(perch.spool_entries(), Vec::<String>::new(), "left in the spool dir");
}

/// Every answer carries an `x-amz-request-id` (16 hex digits, as S3's), a new one for each
/// request: SDK answers, errors, and the hits of the fast path alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_its_own_request_id() {
    use aws_sdk_s3::operation::RequestId;
    let _turn = machine::share();
    let perch = Perch::dir(&[]);
    let c = perch_client(&perch.server);
    let b = "ids";
    create_bucket(&c, b).await;
    let is_id = |id: Option<&str>| id.is_some_and(|id| id.len() == 16 && id.bytes().all(|x| x.is_ascii_hexdigit()));
    let mut seen = BTreeSet::new();
    let put = ok(
        c.put_object()
            .bucket(b)
            .key("k")
            .body(ByteStream::from_static(b"hello"))
            .send()
            .await,
        "put",
    );
    assert!(is_id(put.request_id()), "{:?}", put.request_id());
    seen.insert(put.request_id().map(str::to_owned));
    for _ in 0..2 {
        let got = ok(c.get_object().bucket(b).key("k").send().await, "get");
        assert!(is_id(got.request_id()), "{:?}", got.request_id());
        assert!(seen.insert(got.request_id().map(str::to_owned)), "a repeated id");
    }
    let err = expect_err(
        c.get_object().bucket(b).key("absent").send().await,
        404,
        Some("NoSuchKey"),
    );
    assert!(is_id(err.request_id()), "{:?}", err.request_id());
    assert!(seen.insert(err.request_id().map(str::to_owned)), "a repeated id");
    // A presigned GET, answered by the hit fast path.
    let req = presigned_get(&c, b, "k", Duration::from_secs(60)).await;
    let r = send_presigned(&req, &[], b"");
    assert_eq!(r.body, b"hello");
    let id = r.header("x-amz-request-id");
    assert!(is_id(id), "{id:?}");
    assert!(seen.insert(id.map(str::to_owned)), "a repeated id");
}

/// A DELETE with `If-Match` (and DeleteObjects' per-key ETag) is decided as S3 decides it, after
/// the key's pending writes reach the origin: another ETag is 412 and deletes nothing, the
/// object's own ETag (or `*`) deletes it, a missing key is 404; by modification time or size
/// (S3's directory buckets') it is 501 and nothing is done. (They were 501.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_deletes_are_decided_by_the_objects_etag() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        create_bucket(c, "cond").await;
        let other = "\"00000000000000000000000000000000\"";
        // Written just now: pending in Perch, not yet at the origin.
        let etag = put(c, "cond", "kept", &pattern(3000, 40)).await;
        let by_key = |key: &'static str, tag: &str| {
            Delete::builder()
                .objects(ObjectIdentifier::builder().key(key).e_tag(tag).build().unwrap())
                .build()
                .unwrap()
        };

        let r = c
            .delete_object()
            .bucket("cond")
            .key("kept")
            .if_match(other)
            .send()
            .await;
        expect_err(r, 412, Some("PreconditionFailed"));
        let r = c
            .delete_objects()
            .bucket("cond")
            .delete(by_key("kept", other))
            .send()
            .await;
        let out = ok(r, "DeleteObjects with another ETag");
        assert!(out.deleted().is_empty(), "{out:?}");
        assert_eq!(out.errors().len(), 1, "{out:?}");
        assert_eq!(out.errors()[0].code(), Some("PreconditionFailed"), "{out:?}");
        let r = c
            .delete_object()
            .bucket("cond")
            .key("kept")
            .if_match_size(3000)
            .send()
            .await;
        expect_err(r, 501, Some("NotImplemented"));
        assert_eq!(
            get_bytes(c, "cond", "kept").await,
            pattern(3000, 40),
            "the object stays"
        );

        ok(
            c.delete_object()
                .bucket("cond")
                .key("kept")
                .if_match(&etag)
                .send()
                .await,
            "DELETE with the object's ETag",
        );
        let r = c.get_object().bucket("cond").key("kept").send().await;
        expect_err(r, 404, Some("NoSuchKey"));
        let r = c.delete_object().bucket("cond").key("kept").if_match("*").send().await;
        expect_err(r, 404, Some("NoSuchKey"));

        let etag = put(c, "cond", "listed", b"by DeleteObjects").await;
        let r = c
            .delete_objects()
            .bucket("cond")
            .delete(by_key("listed", &etag))
            .send()
            .await;
        let out = ok(r, "DeleteObjects with the object's ETag");
        assert_eq!(out.deleted().len(), 1, "{out:?}");
        assert!(out.errors().is_empty(), "{out:?}");
        // `*` matches any ETag on S3 and the directory origin; moto 5.2 compares it as an ETag.
        let mut gone = vec!["kept", "listed"];
        if gw.kind == OriginKind::Dir {
            put(c, "cond", "any", b"any ETag").await;
            ok(
                c.delete_object().bucket("cond").key("any").if_match("*").send().await,
                "DELETE with If-Match: *",
            );
            gone.push("any");
        }
        // Nothing left to upload brings one back (Perch holds no copy of them: a HEAD asks the origin).
        flush(&gw.perch.server, Duration::from_secs(30));
        for key in gone {
            let r = c.head_object().bucket("cond").key(key).send().await;
            expect_err(r, 404, None);
        }
    })
    .await;
}

/// A multipart completion or a copy with a condition on the object it replaces is 501
/// NotImplemented and nothing is done: the object stays, the upload can still be completed.
/// (They were carried out with the condition ignored, overwriting what the client meant to
/// protect.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_completions_and_copies_are_refused_and_nothing_is_done() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        create_bucket(c, "cond").await;
        let kept = pattern(3000, 40);
        put(c, "cond", "kept", &kept).await;

        let r = c
            .copy_object()
            .bucket("cond")
            .key("kept")
            .copy_source("cond/kept")
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .if_none_match("*")
            .send()
            .await;
        expect_err(r, 501, Some("NotImplemented"));

        let id = ok(
            c.create_multipart_upload().bucket("cond").key("kept").send().await,
            "create upload",
        )
        .upload_id()
        .unwrap()
        .to_owned();
        let part = pattern(5 << 20, 41);
        let out = ok(
            c.upload_part()
                .bucket("cond")
                .key("kept")
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from(part.clone()))
                .send()
                .await,
            "upload part",
        );
        let done = aws_sdk_s3::types::CompletedMultipartUpload::builder()
            .parts(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(1)
                    .set_e_tag(out.e_tag)
                    .build(),
            )
            .build();
        let r = c
            .complete_multipart_upload()
            .bucket("cond")
            .key("kept")
            .upload_id(&id)
            .multipart_upload(done.clone())
            .if_none_match("*")
            .send()
            .await;
        expect_err(r, 501, Some("NotImplemented"));
        assert_eq!(get_bytes(c, "cond", "kept").await, kept, "the object stays as it was");

        // Without the condition, the same upload completes.
        ok(
            c.complete_multipart_upload()
                .bucket("cond")
                .key("kept")
                .upload_id(&id)
                .multipart_upload(done)
                .send()
                .await,
            "complete without a condition",
        );
        assert_eq!(get_bytes(c, "cond", "kept").await, part);
    })
    .await;
}

/// A HEAD with a Range answers as the GET would: 206 with the range's length and span, or 416
/// when it cannot be satisfied (it answered 200 with the whole length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_with_a_range_answers_the_ranges_length_and_span() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        create_bucket(c, BUCKET).await;
        put(c, BUCKET, "ten", b"0123456789").await;
        let out = ok(
            c.head_object()
                .bucket(BUCKET)
                .key("ten")
                .range("bytes=2-5")
                .send()
                .await,
            "HEAD with a range",
        );
        assert_eq!(out.content_length(), Some(4));
        assert_eq!(out.content_range(), Some("bytes 2-5/10"));
        let out = ok(
            c.head_object().bucket(BUCKET).key("ten").range("bytes=-3").send().await,
            "HEAD with a suffix range",
        );
        assert_eq!(out.content_length(), Some(3));
        assert_eq!(out.content_range(), Some("bytes 7-9/10"));
        let raw = perch_testkit::raw_client::Req::object(
            "HEAD",
            gw.perch.addr(),
            perch_testkit::raw_client::Style::Path,
            "ten",
        )
        .header("Range", "bytes=2-5")
        .go(gw.perch.addr());
        assert_eq!(raw.status, 206, "{}", raw.summary());
        assert_eq!(raw.header("Content-Length"), Some("4"), "{}", raw.summary());
        let r = c
            .head_object()
            .bucket(BUCKET)
            .key("ten")
            .range("bytes=20-30")
            .send()
            .await;
        expect_err(r, 416, None);
        let out = ok(c.head_object().bucket(BUCKET).key("ten").send().await, "HEAD");
        assert_eq!(out.content_length(), Some(10));
        assert_eq!(out.content_range(), None);
    })
    .await;
}

/// A metadata value beyond US-ASCII, sent encoded as RFC 2047 says, comes back so encoded, as S3
/// returns it (it came back as raw UTF-8 bytes, which clients read as Latin-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_beyond_ascii_comes_back_encoded_as_rfc_2047_says() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        create_bucket(c, "m2047").await;
        ok(
            c.put_object()
                .bucket("m2047")
                .key("k")
                .metadata("u", "=?UTF-8?B?w6k=?=")
                .metadata("a", "plain")
                .body(ByteStream::from_static(b"v"))
                .send()
                .await,
            "PUT with encoded metadata",
        );
        let out = ok(c.head_object().bucket("m2047").key("k").send().await, "HEAD");
        let m = out.metadata().expect("metadata");
        assert_eq!(m.get("u").map(String::as_str), Some("=?UTF-8?B?w6k=?="), "{m:?}");
        assert_eq!(m.get("a").map(String::as_str), Some("plain"), "{m:?}");
    })
    .await;
}

/// The tag pairs of a GetObjectTagging answer, sorted.
fn tag_pairs(out: &aws_sdk_s3::operation::get_object_tagging::GetObjectTaggingOutput) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = out
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    pairs.sort();
    pairs
}

/// GetObjectTagging (which the AWS CLI v2 sends before every copy of 8 MiB or more): the
/// origin's tags for an object it holds, none at once for one whose write the origin does not
/// hold yet (an outage must not hold up a copy), 404 NoSuchKey for a missing key or one whose
/// newest write deletes it; the directory origin keeps no tags.
#[test]
fn object_tags_are_the_origins_and_none_while_a_write_is_pending() {
    use crate::support::stack::Stack;
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let (c, m) = (s.sdk(), s.moto_sdk());
    macro_rules! tags {
        ($key:expr) => {
            s.rt.block_on(c.get_object_tagging().bucket(BUCKET).key($key).send())
        };
    }
    s.rt.block_on(
        m.put_object()
            .bucket(BUCKET)
            .key("tagged")
            .body(ByteStream::from_static(b"x"))
            .tagging("team=db&tier=hot")
            .send(),
    )
    .expect("a tagged object at the origin");
    let want = vec![
        ("team".to_owned(), "db".to_owned()),
        ("tier".to_owned(), "hot".to_owned()),
    ];
    assert_eq!(tag_pairs(&tags!("tagged").expect("the origin's tags")), want);
    expect_err(tags!("missing"), 404, Some("NoSuchKey"));

    s.faults(r#"{"outage": true}"#);
    s.put("pending", b"y");
    let asked = std::time::Instant::now();
    let got = tags!("pending").expect("a pending object's tags");
    assert_eq!(tag_pairs(&got), Vec::new());
    assert!(asked.elapsed() < Duration::from_secs(5), "waited {:?}", asked.elapsed());
    s.rt.block_on(c.delete_object().bucket(BUCKET).key("tagged").send())
        .expect("delete");
    expect_err(tags!("tagged"), 404, Some("NoSuchKey"));
    s.no_faults();

    let gw = crate::support::sdk::Gateway::dir();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        create_bucket(&gw.client, "tags").await;
        put(&gw.client, "tags", "k", b"z").await;
        let got = gw.client.get_object_tagging().bucket("tags").key("k").send().await;
        assert_eq!(tag_pairs(&got.expect("no tags")), Vec::new());
        let missing = gw.client.get_object_tagging().bucket("tags").key("nope").send().await;
        expect_err(missing, 404, Some("NoSuchKey"));
    });
}

/// PutObjectTagging and DeleteObjectTagging change the origin's tags, once the origin holds the
/// object's writes (a tag set given to a version still waiting would be lost, or refused, at its
/// upload): in an outage they wait for it. They were 501. The directory origin keeps no tags:
/// setting some is 501 there, removing them succeeds.
#[test]
fn object_tags_are_changed_at_the_origin_once_it_holds_the_object() {
    use crate::support::stack::Stack;
    use aws_sdk_s3::types::{Tag, Tagging};
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let (c, m) = (s.sdk(), s.moto_sdk());
    let tagging = || {
        Tagging::builder()
            .tag_set(Tag::builder().key("team").value("db").build().expect("tag"))
            .build()
            .expect("tagging")
    };
    let want = vec![("team".to_owned(), "db".to_owned())];

    s.faults(r#"{"outage": true}"#);
    s.put("tag-me", b"v");
    let set = {
        let c = c.clone();
        let tagging = tagging();
        s.rt.spawn(async move {
            c.put_object_tagging()
                .bucket(BUCKET)
                .key("tag-me")
                .tagging(tagging)
                .send()
                .await
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !set.is_finished(),
        "PutObjectTagging answered before the origin held the object"
    );
    s.no_faults();
    s.rt.block_on(set).expect("task").expect("PutObjectTagging");
    let at_origin =
        s.rt.block_on(m.get_object_tagging().bucket(BUCKET).key("tag-me").send());
    assert_eq!(tag_pairs(&at_origin.expect("the origin's tags")), want);
    let through =
        s.rt.block_on(c.get_object_tagging().bucket(BUCKET).key("tag-me").send());
    assert_eq!(tag_pairs(&through.expect("tags through Perch")), want);

    s.rt.block_on(c.delete_object_tagging().bucket(BUCKET).key("tag-me").send())
        .expect("DeleteObjectTagging");
    let at_origin =
        s.rt.block_on(m.get_object_tagging().bucket(BUCKET).key("tag-me").send());
    assert_eq!(tag_pairs(&at_origin.expect("the origin's tags")), Vec::new());
    let missing = s.rt.block_on(
        c.put_object_tagging()
            .bucket(BUCKET)
            .key("nope")
            .tagging(tagging())
            .send(),
    );
    expect_err(missing, 404, Some("NoSuchKey"));

    let gw = crate::support::sdk::Gateway::dir();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        create_bucket(&gw.client, "tags").await;
        put(&gw.client, "tags", "k", b"z").await;
        let set = gw
            .client
            .put_object_tagging()
            .bucket("tags")
            .key("k")
            .tagging(tagging())
            .send()
            .await;
        expect_err(set, 501, Some("NotImplemented"));
        gw.client
            .delete_object_tagging()
            .bucket("tags")
            .key("k")
            .send()
            .await
            .expect("no tags to remove");
    });
}

/// Tags given with a write (`x-amz-tagging` on PutObject and CreateMultipartUpload, a copy's
/// `x-amz-tagging-directive`) are kept with it, answered by GetObjectTagging while it waits for
/// its upload, and carried to the origin by the upload. They were 501. Tags S3 would refuse are
/// its 400 InvalidTag at the door, with nothing stored. The directory origin keeps them too.
#[test]
#[allow(clippy::result_large_err)]
fn tags_given_with_a_write_are_carried_to_the_origin() {
    use crate::support::stack::Stack;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, TaggingDirective};
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let (c, m) = (s.sdk(), s.moto_sdk());
    let pairs = |v: &[(&str, &str)]| {
        let mut v: Vec<(String, String)> = v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.sort();
        v
    };
    let through = |key: &str| {
        tag_pairs(
            &s.rt
                .block_on(c.get_object_tagging().bucket(BUCKET).key(key).send())
                .expect("tags through Perch"),
        )
    };
    let at_origin = |key: &str| {
        tag_pairs(
            &s.rt
                .block_on(m.get_object_tagging().bucket(BUCKET).key(key).send())
                .expect("the origin's tags"),
        )
    };
    let put_tagged = |key: &str, tagging: &str| {
        s.rt.block_on(
            c.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(ByteStream::from_static(b"tagged"))
                .tagging(tagging)
                .send(),
        )
    };

    put_tagged("tags/first", "team=db").expect("a tagged PUT");
    s.flush(Duration::from_secs(20));
    assert_eq!(at_origin("tags/first"), pairs(&[("team", "db")]));

    // While the origin is away: kept, answered at once, uploaded with the write.
    s.faults(r#"{"outage": true}"#);
    let given = pairs(&[("a", "1"), ("note", "x y=z/@+")]);
    put_tagged("tags/pending", "a=1&note=x%20y%3Dz%2F%40%2B").expect("a tagged PUT in an outage");
    assert_eq!(through("tags/pending"), given);
    // A copy of it, made here: the source's tags by default, the given ones with REPLACE.
    s.rt.block_on(
        c.copy_object()
            .bucket(BUCKET)
            .key("tags/copied")
            .copy_source(format!("{BUCKET}/tags/pending"))
            .send(),
    )
    .expect("a copy of a pending source");
    assert_eq!(through("tags/copied"), given);
    s.rt.block_on(
        c.copy_object()
            .bucket(BUCKET)
            .key("tags/replaced")
            .copy_source(format!("{BUCKET}/tags/pending"))
            .tagging_directive(TaggingDirective::Replace)
            .tagging("c=d")
            .send(),
    )
    .expect("a copy with its own tags");
    assert_eq!(through("tags/replaced"), pairs(&[("c", "d")]));
    // Its tags with the headers a REPLACE gives may not fit an upload together: refused, as a PUT
    // of them would be.
    let long: Vec<String> = (0..10)
        .map(|i| format!("{i}{}={}", "k".repeat(99), "v".repeat(250)))
        .collect();
    put_tagged("tags/long", &long.join("&")).expect("a PUT with long tags");
    let too_much = s.rt.block_on(
        c.copy_object()
            .bucket(BUCKET)
            .key("tags/long-copy")
            .copy_source(format!("{BUCKET}/tags/long"))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .metadata("big", "m".repeat(1900))
            .content_disposition("d".repeat(2000))
            .send(),
    );
    expect_err(too_much, 400, Some("RequestHeaderSectionTooLarge"));
    s.no_faults();

    // A multipart upload's tags.
    let up = s.rt.block_on(
        c.create_multipart_upload()
            .bucket(BUCKET)
            .key("tags/multi")
            .tagging("mp=yes")
            .send(),
    );
    let id = up
        .expect("CreateMultipartUpload")
        .upload_id()
        .expect("upload id")
        .to_owned();
    let part = s.rt.block_on(
        c.upload_part()
            .bucket(BUCKET)
            .key("tags/multi")
            .upload_id(&id)
            .part_number(1)
            .body(ByteStream::from_static(b"one part"))
            .send(),
    );
    let etag = part.expect("UploadPart").e_tag().expect("etag").to_owned();
    s.rt.block_on(
        c.complete_multipart_upload()
            .bucket(BUCKET)
            .key("tags/multi")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(etag).build())
                    .build(),
            )
            .send(),
    )
    .expect("CompleteMultipartUpload");

    s.flush(Duration::from_secs(20));
    assert_eq!(at_origin("tags/pending"), given);
    assert_eq!(at_origin("tags/copied"), given);
    assert_eq!(at_origin("tags/replaced"), pairs(&[("c", "d")]));
    assert_eq!(at_origin("tags/multi"), pairs(&[("mp", "yes")]));
    // A copy the origin makes: its REPLACE reaches it.
    s.rt.block_on(
        c.copy_object()
            .bucket(BUCKET)
            .key("tags/origin-copy")
            .copy_source(format!("{BUCKET}/tags/first"))
            .tagging_directive(TaggingDirective::Replace)
            .tagging("e=f")
            .send(),
    )
    .expect("a copy at the origin with its own tags");
    assert_eq!(at_origin("tags/origin-copy"), pairs(&[("e", "f")]));
    s.rt.block_on(
        c.copy_object()
            .bucket(BUCKET)
            .key("tags/origin-copy2")
            .copy_source(format!("{BUCKET}/tags/first"))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type("text/plain")
            .tagging_directive(TaggingDirective::Replace)
            .tagging("g=h")
            .send(),
    )
    .expect("a copy at the origin with its own headers and tags");
    assert_eq!(at_origin("tags/origin-copy2"), pairs(&[("g", "h")]));

    // Tags S3 refuses: at the door, nothing stored.
    let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
    for bad in [
        "aws:x=1",
        "a=1&a=2",
        &eleven.join("&"),
        &format!("{}=v", "k".repeat(129)),
        "a=%3C",
        // S3's characters are Unicode letters, separators and numbers: not a combining mark, nor
        // a tab.
        "lang=%E0%A4%B9%E0%A4%BF%E0%A4%82%E0%A4%A6%E0%A5%80",
        "a=x%09y",
    ] {
        expect_err(put_tagged("tags/bad", bad), 400, Some("InvalidTag"));
    }
    let head = s.rt.block_on(c.head_object().bucket(BUCKET).key("tags/bad").send());
    assert!(head.is_err(), "a refused write was stored");
    // Tags of every script S3 takes.
    put_tagged("tags/scripts", "%C3%A9t%C3%A9=%E6%97%A5%E6%9C%AC&n=%D9%A3").expect("letters and numbers of any script");
    // The first tagged writes into a bucket, at once: each checks the origin keeps tags, none
    // trips over another's check.
    let fresh = "tags-race";
    s.rt.block_on(c.create_bucket().bucket(fresh).send())
        .expect("a new bucket");
    s.faults(r#"{"latency_ms": 150}"#);
    let writes: Vec<_> = (0..12)
        .map(|i| {
            let c = c.clone();
            s.rt.spawn(async move {
                c.put_object()
                    .bucket(fresh)
                    .key(format!("w{i}"))
                    .body(ByteStream::from_static(b"t"))
                    .tagging("team=db")
                    .send()
                    .await
            })
        })
        .collect();
    for (i, w) in writes.into_iter().enumerate() {
        s.rt.block_on(w)
            .expect("task")
            .unwrap_or_else(|e| panic!("tagged write {i}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
    }
    s.no_faults();

    let gw = crate::support::sdk::Gateway::dir();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        create_bucket(&gw.client, "tags").await;
        gw.client
            .put_object()
            .bucket("tags")
            .key("k")
            .body(ByteStream::from_static(b"z"))
            .tagging("team=db")
            .send()
            .await
            .expect("a tagged PUT to the directory origin");
        let got = gw.client.get_object_tagging().bucket("tags").key("k").send().await;
        assert_eq!(tag_pairs(&got.expect("tags")), pairs(&[("team", "db")]));
    });
}

/// GetObject names the object's number of tags (`x-amz-tagging-count`, the SDKs' `TagCount`), as
/// S3 does: the origin's count for an object read from it, hit or miss; the write's for one written
/// through Perch; the new count once PutObjectTagging or DeleteObjectTagging went through Perch
/// (the copy kept here goes with the change: the next GET asks the origin); none for an object
/// without tags.
#[test]
fn get_answers_the_number_of_tags() {
    use crate::support::stack::Stack;
    use aws_sdk_s3::types::{Tag, Tagging};
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let (c, m) = (s.sdk(), s.moto_sdk());
    let count = |key: &str| {
        s.rt.block_on(c.get_object().bucket(BUCKET).key(key).send())
            .expect("GET through Perch")
            .tag_count()
    };
    s.rt.block_on(
        m.put_object()
            .bucket(BUCKET)
            .key("count/origin")
            .body(ByteStream::from_static(b"x"))
            .tagging("team=db&tier=hot")
            .send(),
    )
    .expect("a tagged object at the origin");
    assert_eq!(count("count/origin"), Some(2), "a miss");
    // Once the fill is kept (it ends after the answer's last byte).
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(10), || {
            s.get("count/origin").header("X-Cache") == Some("HIT")
        }),
        "the copy is never kept"
    );
    assert_eq!(count("count/origin"), Some(2), "a hit");

    s.rt.block_on(
        c.put_object()
            .bucket(BUCKET)
            .key("count/written")
            .body(ByteStream::from_static(b"y"))
            .tagging("a=1")
            .send(),
    )
    .expect("a tagged PUT");
    assert_eq!(count("count/written"), Some(1), "a write through Perch");
    s.put("count/plain", b"z");
    assert_eq!(count("count/plain"), None, "no tags");

    let three = Tagging::builder()
        .set_tag_set(Some(
            ["a", "b", "c"]
                .iter()
                .map(|k| Tag::builder().key(*k).value("v").build().expect("tag"))
                .collect(),
        ))
        .build()
        .expect("tagging");
    s.rt.block_on(
        c.put_object_tagging()
            .bucket(BUCKET)
            .key("count/origin")
            .tagging(three)
            .send(),
    )
    .expect("PutObjectTagging");
    assert_eq!(count("count/origin"), Some(3), "after PutObjectTagging through Perch");
    assert_eq!(count("count/origin"), Some(3), "kept again");
    s.rt.block_on(c.delete_object_tagging().bucket(BUCKET).key("count/origin").send())
        .expect("DeleteObjectTagging");
    assert_eq!(count("count/origin"), None, "after DeleteObjectTagging through Perch");
    s.rt.block_on(c.delete_object_tagging().bucket(BUCKET).key("count/written").send())
        .expect("DeleteObjectTagging of an uploaded write");
    assert_eq!(count("count/written"), None, "a write's tags removed through Perch");
}

/// A header the origin keeps in UTF-8 (boto3 and s3cmd send a `Content-Disposition` with a
/// non-ASCII file name so, and S3 keeps its bytes) is answered as kept: on the miss that fills
/// the cache, on the hit after it, and on a HEAD. It was dropped.
#[test]
fn a_utf8_header_kept_at_the_origin_is_answered_as_kept() {
    use crate::support::stack::Stack;
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let disposition = "attachment; filename=\"résumé.pdf\"";
    s.rt.block_on(
        s.moto_sdk()
            .put_object()
            .bucket(BUCKET)
            .key("utf8")
            .body(ByteStream::from_static(b"cv"))
            .content_disposition(disposition)
            .send(),
    )
    .expect("an object with a UTF-8 header at the origin");
    for what in ["HEAD before any GET", "the miss", "the hit"] {
        let r = if what.starts_with("HEAD") {
            s.head("utf8")
        } else {
            s.get("utf8")
        };
        assert_eq!(r.status, 200, "{what}: {}", r.summary());
        assert_eq!(r.header("content-disposition"), Some(disposition), "{what}");
    }
    let r = s.head("utf8");
    assert_eq!(
        r.header("content-disposition"),
        Some(disposition),
        "HEAD of the cached copy"
    );
}

/// A 304 repeats what the 200 would have said of the object: its ETag, Last-Modified,
/// Cache-Control and Expires (RFC 9110 §15.4.5; they carried the ETag alone), for a write waiting
/// for its upload, a kept copy and a miss alike. A suffix range of an empty object is the whole
/// (empty) object, 200 as S3 answers it, not 416; a range that starts in it stays 416.
#[test]
fn not_modified_repeats_the_objects_validators_and_an_empty_object_takes_a_suffix_range() {
    use crate::support::stack::Stack;
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let (c, m) = (s.sdk(), s.moto_sdk());
    let expires = DateTime::from_secs(1_900_000_000);
    s.rt.block_on(
        c.put_object()
            .bucket(BUCKET)
            .key("v/written")
            .body(ByteStream::from_static(b"validators"))
            .cache_control("max-age=60")
            .expires(expires)
            .send(),
    )
    .expect("PUT through Perch");
    s.rt.block_on(
        m.put_object()
            .bucket(BUCKET)
            .key("v/origin")
            .body(ByteStream::from_static(b"at the origin"))
            .cache_control("no-cache")
            .send(),
    )
    .expect("PUT at the origin");
    let check = |key: &str, what: &str| {
        let full = s.get(key);
        assert_eq!(full.status, 200, "{what}: {}", full.summary());
        let etag = full.header("ETag").expect("ETag").to_owned();
        for method in ["GET", "HEAD"] {
            let r = s.req(method, key).header("If-None-Match", &etag).go(s.addr());
            let what = format!("{what}: {method} If-None-Match");
            assert_eq!(r.status, 304, "{what}: {}", r.summary());
            assert!(r.body.is_empty(), "{what}: a 304 has no body");
            for name in ["ETag", "Last-Modified", "Cache-Control", "Expires"] {
                assert_eq!(r.header(name), full.header(name), "{what}: {name}: {}", r.summary());
            }
        }
    };
    check("v/written", "a write waiting for its upload");
    s.flush(Duration::from_secs(20));
    check("v/written", "a kept copy");
    // A miss decides its conditions on the origin's answer.
    let r = s
        .req("GET", "v/origin")
        .header("If-None-Match", "\"nope\"")
        .go(s.addr());
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("Cache-Control"), Some("no-cache"));
    check("v/origin", "a copy fetched from the origin");

    // The empty object, written through Perch (waiting, then kept) and at the origin (a miss, then
    // kept).
    s.rt.block_on(
        m.put_object()
            .bucket(BUCKET)
            .key("v/empty-origin")
            .body(ByteStream::from_static(b""))
            .send(),
    )
    .expect("an empty object at the origin");
    s.faults(r#"{"outage": true}"#);
    s.put("v/empty", b"");
    let ranges = |key: &str, what: &str| {
        for method in ["GET", "HEAD"] {
            for range in ["bytes=-1", "bytes=-100"] {
                let r = s.req(method, key).header("Range", range).go(s.addr());
                let what = format!("{what}: {method} {range}");
                assert_eq!(r.status, 200, "{what}: {}", r.summary());
                assert_eq!(r.header("Content-Length"), Some("0"), "{what}");
                assert_eq!(r.header("Content-Range"), None, "{what}");
            }
            for range in ["bytes=0-0", "bytes=0-", "bytes=-0"] {
                let r = s.req(method, key).header("Range", range).go(s.addr());
                assert_eq!(r.status, 416, "{what}: {method} {range}: {}", r.summary());
            }
        }
    };
    ranges("v/empty", "an empty write waiting for its upload");
    s.no_faults();
    s.flush(Duration::from_secs(20));
    ranges("v/empty", "an empty kept copy");
    let r = s.get_range("v/empty-origin", "bytes=-1");
    assert_eq!((r.status, r.body.len()), (200, 0), "an empty miss: {}", r.summary());
    // Kept by the range miss's background fill, or by a whole GET (a fill is kept after its
    // answer's last byte).
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(10), || {
            s.get("v/empty-origin").header("X-Cache") == Some("HIT")
        }),
        "the empty object is never kept"
    );
    ranges("v/empty-origin", "an empty copy fetched from the origin");
}
