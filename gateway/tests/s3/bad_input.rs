//! Requests a correct S3 server refuses, sent as raw HTTP with hand-made SigV4.
//!
//! Each must get S3's status and error code, store nothing, leave no spooled body behind in
//! <data-dir>/tmp, and leave perch serving.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, SystemTime};

use perch_testkit::bodies::{content_md5, pattern};
use perch_testkit::raw_client::{BUCKET, Req, Resp, Style, key_path, xml_values};
use perch_testkit::sigv4::{Keys, sha256_hex};

use crate::support::machine;
use crate::support::perch::{Perch, admin_get, wait_until};
use crate::support::raw::{assert_error, create_bucket, list_keys, send_without_a_length};

/// A perch with the directory origin, the bucket and one known object.
fn setup() -> Perch {
    let perch = Perch::dir(&[]);
    create_bucket(perch.addr());
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "known")
        .body(pattern(100, 1))
        .go(perch.addr());
    assert_eq!(r.status, 200, "{}", r.summary());
    perch
}

fn keys_of(perch: &Perch) -> BTreeSet<String> {
    list_keys(perch.addr()).into_iter().collect()
}

/// Nothing new in the origin, nothing left in the spool, perch alive and serving.
#[track_caller]
fn assert_clean(perch: &Perch, before: &BTreeSet<String>, what: &str) {
    let after = keys_of(perch);
    assert_eq!(&after, before, "{what}: the origin's listing changed");
    // The spool is emptied by the request that filled it; allow it a moment to finish.
    let mut left = Vec::new();
    let clean = wait_until(Duration::from_secs(5), || {
        left = perch.spool_entries();
        left.is_empty()
    });
    assert!(clean, "{what}: spooled bodies left in <data-dir>/tmp: {left:?}");
    let (status, body) = admin_get(&perch.server, "/healthz");
    assert_eq!(status, 200, "{what}: /healthz after: {body}");
    let r = Req::object("GET", perch.addr(), Style::Virtual, "known").go(perch.addr());
    assert_eq!(r.status, 200, "{what}: perch no longer serves: {}", r.summary());
    assert_eq!(r.body, pattern(100, 1), "{what}");
}

#[track_caller]
fn assert_missing(perch: &Perch, key_path: &str, what: &str) {
    let r = Req::object("GET", perch.addr(), Style::Virtual, key_path).go(perch.addr());
    assert_error(&r, 404, "NoSuchKey", &format!("{what}: GET {key_path} afterwards"));
}

#[test]
fn wrong_signature_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let wrong = Keys::new(Keys::dev().access_key_id.as_str(), "not-the-secret");
    for (method, body) in [("PUT", pattern(10, 2)), ("GET", Vec::new()), ("DELETE", Vec::new())] {
        let key = if method == "PUT" { "sig-put" } else { "known" };
        let r = Req::object(method, perch.addr(), Style::Virtual, key)
            .body(body)
            .keys(Some(wrong.clone()))
            .go(perch.addr());
        assert_error(
            &r,
            403,
            "SignatureDoesNotMatch",
            &format!("{method} with a wrong secret"),
        );
    }
    // A big PUT with Expect: 100-continue and a wrong signature is refused before its body.
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "sig-put-big")
        .body(pattern(2 << 20, 3))
        .keys(Some(wrong))
        .go(perch.addr());
    assert_error(&r, 403, "SignatureDoesNotMatch", "2 MiB PUT with a wrong secret");
    assert!(
        !r.got_continue,
        "a refused PUT must not be asked for its body (got 100 Continue)"
    );
    // The body was never sent, so the connection cannot carry another request (server.rs's rule).
    assert_eq!(
        r.header("Connection"),
        Some("close"),
        "a refused Expect: 100-continue request ends its connection: {}",
        r.summary()
    );
    assert_missing(&perch, "sig-put", "wrong signature");
    assert_missing(&perch, "sig-put-big", "wrong signature");
    assert_clean(&perch, &before, "wrong signature");
}

#[test]
fn stale_request_time_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let mut req = Req::object("PUT", perch.addr(), Style::Virtual, "stale").body(pattern(10, 4));
    req.time = Some(SystemTime::now() - Duration::from_secs(20 * 60));
    let r = req.go(perch.addr());
    assert_error(&r, 403, "RequestTimeTooSkewed", "x-amz-date 20 minutes old");
    let mut req = Req::object("PUT", perch.addr(), Style::Virtual, "stale").body(pattern(10, 4));
    req.time = Some(SystemTime::now() + Duration::from_secs(20 * 60));
    let r = req.go(perch.addr());
    assert_error(&r, 403, "RequestTimeTooSkewed", "x-amz-date 20 minutes ahead");
    assert_missing(&perch, "stale", "stale x-amz-date");
    assert_clean(&perch, &before, "stale x-amz-date");
}

#[test]
fn anonymous_requests_are_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    for (method, key, body) in [
        ("GET", "known", Vec::new()),
        ("PUT", "anon", pattern(10, 5)),
        ("DELETE", "known", Vec::new()),
    ] {
        let r = Req::object(method, perch.addr(), Style::Virtual, key)
            .body(body)
            .keys(None)
            .go(perch.addr());
        assert_error(&r, 403, "AccessDenied", &format!("anonymous {method}"));
    }
    let r = Req::bucket("GET", perch.addr(), Style::Path, "list-type=2")
        .keys(None)
        .go(perch.addr());
    assert_error(&r, 403, "AccessDenied", "anonymous ListObjectsV2");
    assert_missing(&perch, "anon", "anonymous PUT");
    assert_clean(&perch, &before, "anonymous requests");
}

#[test]
fn body_not_matching_its_signed_sha256_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    // Small (kept in memory) and large (spooled to <data-dir>/tmp) bodies.
    for (key, len) in [("sha-small", 1000usize), ("sha-large", 9 << 20)] {
        let body = pattern(len, 6);
        let mut other = body.clone();
        other[len / 2] ^= 1;
        let mut req = Req::object("PUT", perch.addr(), Style::Virtual, key).body(body);
        req.content_sha256 = Some(sha256_hex(&other));
        let r = req.go(perch.addr());
        assert_error(
            &r,
            400,
            "XAmzContentSHA256Mismatch",
            &format!("{key}: PUT of {len} bytes"),
        );
        assert_missing(&perch, key, "x-amz-content-sha256 mismatch");
    }
    assert_clean(&perch, &before, "x-amz-content-sha256 mismatch");
}

/// Sends a PUT whose Content-Length is `declared` but only `sent` body bytes, then shuts the write
/// side; returns whatever answer came (none is fine).
fn put_cut_short(perch: &Perch, key: &str, declared: usize, sent: usize) -> Option<Resp> {
    let body = pattern(declared, 7);
    let mut req = Req::object("PUT", perch.addr(), Style::Virtual, key).body(body);
    req.expect = Some(false);
    req.truncate_body = Some(sent);
    req.send(perch.addr()).ok()
}

#[test]
fn body_cut_short_creates_nothing() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    for (key, declared, sent) in [("short-small", 1000, 500), ("short-large", 10 << 20, 1 << 20)] {
        if let Some(r) = put_cut_short(&perch, key, declared, sent) {
            assert!(
                r.status >= 400,
                "{key}: a body cut short ({sent} of {declared} bytes) must not succeed: {}",
                r.summary()
            );
        }
        assert_missing(&perch, key, "body cut short");
    }
    // The client goes away mid-body (both directions closed) after 2 of 10 MiB.
    {
        let mut req = Req::object("PUT", perch.addr(), Style::Virtual, "gone-mid-body").body(pattern(10 << 20, 8));
        req.expect = Some(false);
        let (head, _) = req.head();
        let mut s = TcpStream::connect(perch.addr()).expect("connect");
        s.write_all(&head).expect("send head");
        s.write_all(&req.body[..2 << 20]).expect("send part of the body");
        let _ = s.shutdown(Shutdown::Both);
        drop(s);
    }
    assert_missing(&perch, "gone-mid-body", "client gone mid-body");
    assert_clean(&perch, &before, "body cut short");
}

#[test]
fn dot_segments_nul_and_blank_keys_are_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    for style in [Style::Virtual, Style::Path] {
        // A key of whitespace alone (" ", a tab, U+3000) could never be uploaded: the origin's
        // client refuses to send it.
        let blank = ["%20", "%20%20", "%09", "%E3%80%80"];
        for path in ["a/../b", "%2e%2e/x", "%2E%2E/x", "a/./b", "a/%2e/b", "a%00b", "%00"]
            .into_iter()
            .chain(blank)
        {
            let r = Req::object("PUT", perch.addr(), style, path)
                .body(pattern(10, 9))
                .go(perch.addr());
            assert_error(&r, 400, "InvalidArgument", &format!("{style:?} PUT /{path}"));
            let r = Req::object("GET", perch.addr(), style, path).go(perch.addr());
            assert_error(&r, 400, "InvalidArgument", &format!("{style:?} GET /{path}"));
        }
    }
    assert_clean(&perch, &before, "dot segments, NUL and blank keys");
}

#[test]
fn overlong_key_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let key = "k".repeat(1100);
    let r = Req::object("PUT", perch.addr(), Style::Virtual, &key)
        .body(pattern(10, 10))
        .go(perch.addr());
    assert_error(&r, 400, "KeyTooLongError", "PUT of a 1,100-byte key");
    let r = Req::object("PUT", perch.addr(), Style::Path, &key)
        .body(pattern(10, 10))
        .go(perch.addr());
    assert_error(&r, 400, "KeyTooLongError", "path-style PUT of a 1,100-byte key");
    let message = xml_values(&r.text(), "Message");
    assert!(
        message.first().is_some_and(|m| !m.is_empty()),
        "KeyTooLongError with a Message: {}",
        r.summary()
    );
    // 1,024 bytes is the limit, and allowed.
    let ok_key = "k".repeat(1024);
    let r = Req::object("PUT", perch.addr(), Style::Virtual, &ok_key)
        .body(pattern(10, 10))
        .go(perch.addr());
    assert_eq!(r.status, 200, "PUT of a 1,024-byte key: {}", r.summary());
    let mut expected = before.clone();
    expected.insert(ok_key.clone());
    assert_clean(&perch, &expected, "overlong key");
}

#[test]
fn range_beyond_the_end_is_416() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    for range in ["bytes=200-300", "bytes=100-", "bytes=100-100"] {
        let r = Req::object("GET", perch.addr(), Style::Virtual, "known")
            .header("Range", range)
            .go(perch.addr());
        assert_error(&r, 416, "InvalidRange", &format!("Range {range} of a 100-byte object"));
        // As S3: the range asked for and the object's size in the document, and the size in
        // the 416's Content-Range (RFC 9110).
        assert_eq!(xml_values(&r.text(), "RangeRequested"), [range], "{}", r.summary());
        assert_eq!(xml_values(&r.text(), "ActualObjectSize"), ["100"], "{}", r.summary());
        assert_eq!(r.header("Content-Range"), Some("bytes */100"), "{}", r.summary());
    }
    // Within the object, and a last-byte range overlapping the end, are fine.
    let r = Req::object("GET", perch.addr(), Style::Virtual, "known")
        .header("Range", "bytes=90-300")
        .go(perch.addr());
    assert_eq!(r.status, 206, "{}", r.summary());
    assert_eq!(r.body, pattern(100, 1)[90..].to_vec());
    assert_eq!(r.header("Content-Range"), Some("bytes 90-99/100"));
    assert_clean(&perch, &before, "range");
}

#[test]
fn malformed_delete_objects_xml_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    for xml in [
        "<Delete><Object><Key>known</Key></Object>".as_bytes(),
        b"<Delete><Object><Key>known</Key></Objectx></Delete>",
        b"this is not xml",
    ] {
        let r = Req::bucket("POST", perch.addr(), Style::Virtual, "delete")
            .body(xml.to_vec())
            .header("Content-MD5", &content_md5(xml))
            .go(perch.addr());
        assert_error(
            &r,
            400,
            "MalformedXML",
            &format!("DeleteObjects with {:?}", String::from_utf8_lossy(xml)),
        );
    }
    assert_clean(&perch, &before, "malformed DeleteObjects");
    // A client's malformed body is its own business: no ERROR line, and none of its bytes in the
    // log (s3s logs each one whole at ERROR, a flood any client could send).
    let log = perch.server.log_text();
    assert!(
        !log.contains("malformed xml") && !log.contains("this is not xml"),
        "a malformed body in perch's log: {}",
        perch.log_tail()
    );
}

// ---- Poison pills: what the origin would refuse forever is refused at the door ----

#[test]
fn user_metadata_over_2kb_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    // 2,048 bytes of names (without `x-amz-meta-`) and values: S3's limit, allowed.
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "meta-ok")
        .body(pattern(10, 20))
        .header("x-amz-meta-a", &"v".repeat(1000))
        .header("x-amz-meta-bb", &"w".repeat(1045))
        .go(perch.addr());
    assert_eq!(r.status, 200, "2,048 bytes of metadata: {}", r.summary());
    let r = Req::object("HEAD", perch.addr(), Style::Virtual, "meta-ok").go(perch.addr());
    assert_eq!(r.header("x-amz-meta-bb").map(str::len), Some(1045));
    // One byte more, on each operation that sets metadata.
    let big = |req: Req| {
        req.header("x-amz-meta-a", &"v".repeat(1000))
            .header("x-amz-meta-bb", &"w".repeat(1046))
    };
    let r = big(Req::object("PUT", perch.addr(), Style::Virtual, "meta-big").body(pattern(10, 21))).go(perch.addr());
    assert_error(&r, 400, "MetadataTooLarge", "PUT with 2,049 bytes of metadata");
    let r = big(Req::object("POST", perch.addr(), Style::Virtual, "meta-big").query("uploads")).go(perch.addr());
    assert_error(
        &r,
        400,
        "MetadataTooLarge",
        "CreateMultipartUpload with 2,049 bytes of metadata",
    );
    let r = big(Req::object("PUT", perch.addr(), Style::Virtual, "meta-big"))
        .header("x-amz-copy-source", &format!("/{}/known", BUCKET))
        .header("x-amz-metadata-directive", "REPLACE")
        .go(perch.addr());
    assert_error(
        &r,
        400,
        "MetadataTooLarge",
        "CopyObject REPLACE with 2,049 bytes of metadata",
    );
    // A value beyond US-ASCII counts as it is uploaded, RFC 2047-encoded: 650 snowmen are 1,950
    // bytes of UTF-8 and 2,612 on the wire, which the origin would refuse for good. (Sent here
    // encoded, as S3 clients send such values; Perch used to count the 1,950.)
    let snowmen = format!(
        "=?UTF-8?B?{}?=",
        base64_simd::STANDARD.encode_to_string("\u{2603}".repeat(650).as_bytes())
    );
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "meta-big")
        .body(pattern(10, 22))
        .header("x-amz-meta-a", &snowmen)
        .go(perch.addr());
    assert_error(
        &r,
        400,
        "MetadataTooLarge",
        "PUT with 1,950 bytes of UTF-8 metadata, 2,612 encoded",
    );
    assert_missing(&perch, "meta-big", "metadata too large");
    let mut expected = before.clone();
    expected.insert("meta-ok".to_owned());
    assert_clean(&perch, &expected, "metadata too large");
}

#[test]
fn keys_are_1_to_1024_utf8_bytes_also_in_delete_objects() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    // Bytes, not characters: 512 two-byte characters are 1,024 bytes; 513 are too many.
    let fits = "é".repeat(512);
    let r = Req::object("PUT", perch.addr(), Style::Virtual, &key_path(&fits))
        .body(pattern(10, 22))
        .go(perch.addr());
    assert_eq!(r.status, 200, "a 1,024-byte key of 512 characters: {}", r.summary());
    let over = "é".repeat(513);
    let r = Req::object("PUT", perch.addr(), Style::Virtual, &key_path(&over))
        .body(pattern(10, 22))
        .go(perch.addr());
    assert_error(&r, 400, "KeyTooLongError", "a 1,026-byte key of 513 characters");

    // DeleteObjects answers each key: the good one is deleted, the others get S3's code.
    let long = "k".repeat(1025);
    let xml = format!(
        "<Delete><Object><Key>known</Key></Object><Object><Key>{long}</Key></Object>\
         <Object><Key></Key></Object><Object><Key>{over}</Key></Object></Delete>"
    );
    let r = Req::bucket("POST", perch.addr(), Style::Virtual, "delete")
        .body(xml.clone().into_bytes())
        .header("Content-MD5", &content_md5(xml.as_bytes()))
        .go(perch.addr());
    assert_eq!(r.status, 200, "DeleteObjects: {}", r.summary());
    let text = r.text();
    let deleted: Vec<String> = xml_values(&text, "Deleted")
        .iter()
        .flat_map(|d| xml_values(d, "Key"))
        .collect();
    assert_eq!(deleted, vec!["known".to_owned()], "{text}");
    let errors: Vec<(String, String)> = xml_values(&text, "Error")
        .iter()
        .map(|e| {
            (
                xml_values(e, "Key").pop().unwrap_or_default(),
                xml_values(e, "Code").pop().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (long.clone(), "KeyTooLongError".to_owned()),
            (String::new(), "InvalidArgument".to_owned()),
            (over.clone(), "KeyTooLongError".to_owned()),
        ],
        "{text}"
    );
    let r = Req::object("GET", perch.addr(), Style::Virtual, "known").go(perch.addr());
    assert_error(&r, 404, "NoSuchKey", "known after DeleteObjects");
    let mut expected = before.clone();
    expected.remove("known");
    expected.insert(fits.clone());
    assert_eq!(keys_of(&perch), expected);
}

#[test]
fn multipart_limits_are_s3s() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let addr = perch.addr();
    let r = Req::object("POST", addr, Style::Virtual, "mp")
        .query("uploads")
        .go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());
    let id = xml_values(&r.text(), "UploadId").remove(0);
    for n in [0, 10001] {
        let r = Req::object("PUT", addr, Style::Virtual, "mp")
            .query(&format!("partNumber={n}&uploadId={id}"))
            .body(pattern(10, 23))
            .go(addr);
        assert_error(&r, 400, "InvalidArgument", &format!("part number {n}"));
    }
    // Parts of 1 MiB then 5 MiB: the first, not the last, is under S3's 5 MiB minimum.
    let mut etags = Vec::new();
    for (n, len) in [(1, 1 << 20), (2, 5 << 20)] {
        let r = Req::object("PUT", addr, Style::Virtual, "mp")
            .query(&format!("partNumber={n}&uploadId={id}"))
            .body(pattern(len, 24 + n as u64))
            .go(addr);
        assert_eq!(r.status, 200, "part {n}: {}", r.summary());
        etags.push(r.header("ETag").expect("ETag").to_owned());
    }
    let complete = |parts: &[(usize, &str)]| {
        let xml = format!(
            "<CompleteMultipartUpload>{}</CompleteMultipartUpload>",
            parts
                .iter()
                .map(|(n, e)| format!("<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"))
                .collect::<String>()
        );
        Req::object("POST", addr, Style::Virtual, "mp")
            .query(&format!("uploadId={id}"))
            .body(xml.into_bytes())
            .go(addr)
    };
    let r = complete(&[(1, &etags[0]), (2, &etags[1])]);
    assert_error(&r, 400, "EntityTooSmall", "a 1 MiB part before the last");
    assert_missing(&perch, "mp", "EntityTooSmall");
    // The upload is still there; completed with the 5 MiB part alone (the last may be small).
    let r = complete(&[(2, &etags[1])]);
    assert_eq!(r.status, 200, "{}", r.summary());
    let r = Req::object("GET", addr, Style::Virtual, "mp").go(addr);
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(5 << 20, 26), "the completed object differs");
    let mut expected = before.clone();
    expected.insert("mp".to_owned());
    assert_clean(&perch, &expected, "multipart limits");
}

#[test]
fn unknown_canned_acls_and_object_versions_are_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let bogus = |req: Req| req.header("x-amz-acl", "everyone-may-write");
    // Each call that takes a canned ACL: S3 answers 400 InvalidArgument, and so does Perch, before
    // anything is acknowledged (the upload could never carry the header to the origin).
    let r = bogus(Req::object("PUT", perch.addr(), Style::Virtual, "acl-bad").body(pattern(10, 30))).go(perch.addr());
    assert_error(&r, 400, "InvalidArgument", "PutObject with an unknown canned ACL");
    let r = bogus(Req::object("POST", perch.addr(), Style::Virtual, "acl-bad").query("uploads")).go(perch.addr());
    assert_error(
        &r,
        400,
        "InvalidArgument",
        "CreateMultipartUpload with an unknown canned ACL",
    );
    let r = bogus(Req::object("PUT", perch.addr(), Style::Virtual, "acl-bad"))
        .header("x-amz-copy-source", &format!("/{}/known", BUCKET))
        .go(perch.addr());
    assert_error(&r, 400, "InvalidArgument", "CopyObject with an unknown canned ACL");
    let r = bogus(Req::object("PUT", perch.addr(), Style::Virtual, "known").query("acl")).go(perch.addr());
    assert_error(&r, 400, "InvalidArgument", "PutObjectAcl with an unknown canned ACL");
    let r = bogus(Req::bucket("PUT", perch.addr(), Style::Virtual, "acl")).go(perch.addr());
    assert_error(&r, 400, "InvalidArgument", "PutBucketAcl with an unknown canned ACL");
    assert_missing(&perch, "acl-bad", "unknown canned ACL");
    // A canned ACL S3 knows is taken.
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "acl-ok")
        .body(pattern(10, 31))
        .header("x-amz-acl", "bucket-owner-full-control")
        .go(perch.addr());
    assert_eq!(r.status, 200, "PutObject with a known canned ACL: {}", r.summary());

    // The buckets behind Perch are unversioned: reading a version other than `null` is S3's
    // answer for a version that is not there, never the current object in its place.
    for method in ["GET", "HEAD"] {
        let r = Req::object(method, perch.addr(), Style::Virtual, "known")
            .query("versionId=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")
            .go(perch.addr());
        assert_eq!(r.status, 400, "{method} of a version: {}", r.summary());
        assert!(
            r.body.is_empty() || r.code().as_deref() == Some("InvalidArgument"),
            "{method} of a version: {}",
            r.summary()
        );
        let r = Req::object(method, perch.addr(), Style::Virtual, "known")
            .query("versionId=null")
            .go(perch.addr());
        assert_eq!(r.status, 200, "{method} of the null version: {}", r.summary());
        // An object not uploaded in parts is its own one part (`multipart::objects_are_read_by_part_number`);
        // a part number past it is S3's 416.
        let r = Req::object(method, perch.addr(), Style::Virtual, "known")
            .query("partNumber=2")
            .go(perch.addr());
        assert_eq!(r.status, 416, "{method} by partNumber: {}", r.summary());
    }
    let mut expected = before.clone();
    expected.insert("acl-ok".to_owned());
    assert_clean(&perch, &expected, "canned ACLs and versions");
}

/// A Content-MD5 that is base64 but not 16 bytes is 400 InvalidDigest (not BadDigest: it is no
/// MD5 at all), and a copy's metadata directive other than COPY or REPLACE is 400
/// InvalidArgument (the copy went ahead); neither stores anything.
#[test]
fn a_content_md5_of_the_wrong_length_and_an_unknown_metadata_directive_are_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "md5-short")
        .header("Content-MD5", "AAAA")
        .body(pattern(10, 11))
        .go(perch.addr());
    assert_error(&r, 400, "InvalidDigest", "a 3-byte Content-MD5");
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "copied")
        .header("x-amz-copy-source", &format!("/{BUCKET}/known"))
        .header("x-amz-metadata-directive", "BOGUS")
        .go(perch.addr());
    assert_error(&r, 400, "InvalidArgument", "x-amz-metadata-directive: BOGUS");
    assert_clean(&perch, &before, "refused digest and directive");
    assert_missing(&perch, "md5-short", "a 3-byte Content-MD5");
    assert_missing(&perch, "copied", "an unknown metadata directive");
}

/// A chunked PUT with no credentials, or signed with an access key Perch does not have, is
/// refused on its head alone: the answer comes before the body ends, and nothing of it is
/// spooled. (Perch used to receive such a body whole, into its spool, before s3s refused it.)
#[test]
fn a_chunked_body_without_a_valid_key_is_refused_before_it_is_received() {
    use std::io::{BufRead, BufReader};
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let host = format!("{BUCKET}.localhost:{}", perch.addr().port());
    let unknown_key = "AWS4-HMAC-SHA256 Credential=NOSUCHKEY/20261205/us-east-1/s3/aws4_request, \
                       SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=00";
    for (auth, status, code) in [
        (None, 403, "AccessDenied"),
        (Some(unknown_key), 403, "InvalidAccessKeyId"),
        (Some("Bearer 0123456789abcdef"), 400, "InvalidArgument"),
        (
            Some("AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00"),
            400,
            "AuthorizationHeaderMalformed",
        ),
    ] {
        let mut conn = TcpStream::connect(perch.addr()).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = format!(
            "PUT /chunked-anon HTTP/1.1\r\nHost: {host}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n\
             x-amz-date: 20261205T000000Z\r\nTransfer-Encoding: chunked\r\n"
        );
        if let Some(auth) = auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes()).unwrap();
        // One chunk, and no last chunk: the body never ends.
        conn.write_all(b"10\r\n0123456789abcdef\r\n").unwrap();
        let mut reader = BufReader::new(&conn);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{code}: no answer before the body ended: {e}"));
        assert!(line.starts_with(&format!("HTTP/1.1 {status}")), "{code}: {line}");
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains(&format!("<Code>{code}</Code>")), "{code}: {text}");
        let _ = conn.shutdown(Shutdown::Both);
    }
    assert_missing(&perch, "chunked-anon", "chunked PUTs without a valid key");
    assert_clean(&perch, &before, "chunked PUTs without a valid key");
}

/// Sends `put` (signed `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, its aws-chunked body given whole)
/// framed by `Transfer-Encoding: chunked` with no `Content-Length`, and reads the answer.
fn put_aws_chunked_without_a_length(addr: std::net::SocketAddr, mut put: Req, aws_chunked: &[u8]) -> Resp {
    put.content_sha256 = Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned());
    send_without_a_length(addr, put, aws_chunked)
}

/// An aws-chunked body framed by `Transfer-Encoding: chunked` has only its declared decoded
/// length: a body that ends short of it, even at once, is 400 IncompleteBody, and the object it
/// would have replaced stays as it was. (It used to be stored short: an empty body replaced the
/// object, acknowledged, and went up to the origin.) The same body framed correctly is stored.
#[test]
fn an_aws_chunked_body_without_a_length_that_ends_short_replaces_nothing() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    let data = b"important data";
    let crc = |d: &[u8]| base64_simd::STANDARD.encode_to_string(crc32fast::hash(d).to_be_bytes());
    let put = |key: &str| {
        Req::object("PUT", addr, Style::Virtual, key)
            .header("Content-Encoding", "aws-chunked")
            .header("x-amz-decoded-content-length", &data.len().to_string())
            .header("x-amz-trailer", "x-amz-checksum-crc32")
    };
    let whole = format!("{:x}\r\n", data.len()).into_bytes();
    let whole = [
        whole.as_slice(),
        data,
        format!("\r\n0\r\nx-amz-checksum-crc32:{}\r\n\r\n", crc(data)).as_bytes(),
    ]
    .concat();
    // Framed correctly, without a length: stored (over "known", which it replaces).
    let r = put_aws_chunked_without_a_length(addr, put("known"), &whole);
    assert_eq!(r.status, 200, "a whole aws-chunked body: {}", r.summary());
    let r = Req::object("GET", addr, Style::Virtual, "known").go(addr);
    assert_eq!(r.body, data, "the whole aws-chunked body as stored");
    // Empty, and cut after 5 of its 14 bytes: refused, "known" unchanged.
    let short = [b"5\r\n".as_slice(), &data[..5], b"\r\n"].concat();
    for (body, what) in [(Vec::new(), "an empty body"), (short, "5 of 14 bytes")] {
        let r = put_aws_chunked_without_a_length(addr, put("known"), &body);
        assert_error(&r, 400, "IncompleteBody", what);
        let r = Req::object("GET", addr, Style::Virtual, "known").go(addr);
        assert_eq!(r.status, 200, "{what}: {}", r.summary());
        assert_eq!(r.body, data, "{what}: the object it would have replaced changed");
    }
    assert_clean_but_known(&perch, &before, data, "aws-chunked bodies ending short");
}

/// A checksum trailer the request did not declare in `x-amz-trailer` is 400
/// MalformedTrailerError and nothing is stored: it could not be checked, and kept it would be
/// served to clients and sent to an origin that refuses the upload for good. (It used to be
/// stored as given, unchecked.) The declared one is checked as before.
#[test]
fn a_checksum_trailer_the_request_did_not_declare_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    let data = b"trailer data";
    let crc32 = base64_simd::STANDARD.encode_to_string(crc32fast::hash(data).to_be_bytes());
    let body = |trailers: &str| {
        [
            format!("{:x}\r\n", data.len()).as_bytes(),
            data.as_slice(),
            format!("\r\n0\r\n{trailers}\r\n").as_bytes(),
        ]
        .concat()
    };
    let put = |key: &str, body: Vec<u8>| {
        let mut r = Req::object("PUT", addr, Style::Virtual, key)
            .body(body)
            .header("Content-Encoding", "aws-chunked")
            .header("x-amz-decoded-content-length", &data.len().to_string())
            .header("x-amz-trailer", "x-amz-checksum-crc32");
        r.content_sha256 = Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned());
        r.go(addr)
    };
    // Another algorithm's trailer than the one declared, alone or beside the declared one.
    let r = put("undeclared", body("x-amz-checksum-crc32c:AAAAAA==\r\n"));
    assert_error(
        &r,
        400,
        "MalformedTrailerError",
        "a CRC32C trailer where CRC32 was declared",
    );
    let r = put(
        "undeclared",
        body(&format!(
            "x-amz-checksum-crc32:{crc32}\r\nx-amz-checksum-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n"
        )),
    );
    assert_error(
        &r,
        400,
        "MalformedTrailerError",
        "an undeclared SHA256 trailer beside the declared CRC32",
    );
    assert_missing(&perch, "undeclared", "undeclared trailers");
    // The declared trailer never comes (the body ends after its last chunk): refused, as S3
    // refuses it; it was stored with Perch's own checksum.
    let r = put("trailerless", body(""));
    assert_error(&r, 400, "MalformedTrailerError", "a declared trailer that never came");
    assert_missing(&perch, "trailerless", "a declared trailer that never came");
    // The declared trailer, right: stored, and its checksum served.
    let r = put("declared", body(&format!("x-amz-checksum-crc32:{crc32}\r\n")));
    assert_eq!(r.status, 200, "the declared trailer: {}", r.summary());
    let r = Req::object("HEAD", addr, Style::Virtual, "declared")
        .header("x-amz-checksum-mode", "ENABLED")
        .go(addr);
    assert_eq!(r.header("x-amz-checksum-crc32"), Some(crc32.as_str()));
    assert_eq!(r.header("x-amz-checksum-crc32c"), None);
    let mut expected = before.clone();
    expected.insert("declared".to_owned());
    assert_clean(&perch, &expected, "undeclared trailers");
}

/// "known" as `data` (replaced by the test), and otherwise as `assert_clean` says.
#[track_caller]
fn assert_clean_but_known(perch: &Perch, before: &BTreeSet<String>, data: &[u8], what: &str) {
    let after = keys_of(perch);
    assert_eq!(&after, before, "{what}: the origin's listing changed");
    let clean = wait_until(Duration::from_secs(5), || perch.spool_entries().is_empty());
    assert!(clean, "{what}: spooled bodies left in <data-dir>/tmp");
    let r = Req::object("GET", perch.addr(), Style::Virtual, "known").go(perch.addr());
    assert_eq!(r.body, data, "{what}");
}

/// A listing whose prefix, delimiter, marker or start-after holds NUL is 400 InvalidArgument at
/// once: no key holds one, and an XML answer cannot carry it. (Such a listing used to go to the
/// origin; moto echoes the NUL raw, which the SDK cannot read, and the listing was retried until
/// its deadline, 120 s, then answered 503.)
#[test]
fn a_listing_with_nul_in_its_parameters_is_refused_at_once() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    for query in [
        "prefix=a%00",
        "delimiter=%00",
        "marker=%00",
        "list-type=2&start-after=%00",
        "list-type=2&prefix=%00&delimiter=%2F",
    ] {
        let started = std::time::Instant::now();
        let r = Req::bucket("GET", addr, Style::Virtual, query).go(addr);
        assert_error(&r, 400, "InvalidArgument", query);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{query}: answered after {:?}",
            started.elapsed()
        );
    }
    let r = Req::bucket("GET", addr, Style::Virtual, "list-type=2&prefix=kn").go(addr);
    assert_eq!(xml_values(&r.text(), "Key"), ["known"], "{}", r.summary());
}

/// An object write whose content headers and metadata would not fit in S3's 8 KB of request
/// headers once Perch's upload adds its own is 400 RequestHeaderSectionTooLarge, on every write
/// that sets them: acknowledged, its upload would be refused for good. (They were stored and
/// uploaded as sent; then their names were counted once, where the upload's signature lists
/// them again.)
#[test]
fn content_headers_too_large_for_an_upload_are_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    // 5 KiB of content headers and metadata: kept.
    let r = Req::object("PUT", addr, Style::Virtual, "headers-ok")
        .body(pattern(10, 30))
        .header("Cache-Control", &"c".repeat(3 << 10))
        .header("x-amz-meta-note", &"n".repeat(2000))
        .go(addr);
    assert_eq!(r.status, 200, "5 KiB of headers: {}", r.summary());
    let r = Req::object("HEAD", addr, Style::Virtual, "headers-ok").go(addr);
    assert_eq!(r.header("cache-control").map(str::len), Some(3 << 10));
    // 7,000 bytes of Cache-Control, 1,000 of Content-Disposition: over, on each write.
    let big = |req: Req| {
        req.header("Cache-Control", &"c".repeat(7000))
            .header("Content-Disposition", &"d".repeat(1000))
    };
    let r = big(Req::object("PUT", addr, Style::Virtual, "headers-big").body(pattern(10, 31))).go(addr);
    assert_error(&r, 400, "RequestHeaderSectionTooLarge", "PUT");
    let r = big(Req::object("POST", addr, Style::Virtual, "headers-big").query("uploads")).go(addr);
    assert_error(&r, 400, "RequestHeaderSectionTooLarge", "CreateMultipartUpload");
    let r = big(Req::object("PUT", addr, Style::Virtual, "headers-big"))
        .header("x-amz-copy-source", &format!("/{BUCKET}/known"))
        .header("x-amz-metadata-directive", "REPLACE")
        .go(addr);
    assert_error(&r, 400, "RequestHeaderSectionTooLarge", "CopyObject REPLACE");
    // 60 metadata names of 25 bytes and 4,000 bytes of Content-Disposition: 6.5 KB as lines, but
    // the upload's signature lists every name again (its SignedHeaders), 8.8 KB in all.
    let many_names = |key: &str, body: u64| {
        let mut req = Req::object("PUT", addr, Style::Virtual, key).body(pattern(10, body));
        for i in 0..60 {
            req = req.header(&format!("x-amz-meta-m{i:02}{}", "n".repeat(22)), "v");
        }
        req
    };
    let r = many_names("headers-big", 32)
        .header("Content-Disposition", &"d".repeat(4000))
        .go(addr);
    assert_error(&r, 400, "RequestHeaderSectionTooLarge", "PUT with many metadata names");
    // The same names with 2,000 bytes of it: 6.8 KB in all, within S3's 8 KB with the upload's own.
    let r = many_names("headers-many", 33)
        .header("Content-Disposition", &"d".repeat(2000))
        .go(addr);
    assert_eq!(r.status, 200, "many names within the room: {}", r.summary());
    assert_missing(&perch, "headers-big", "headers too large");
    let mut expected = before.clone();
    expected.insert("headers-ok".to_owned());
    expected.insert("headers-many".to_owned());
    assert_clean(&perch, &expected, "headers too large");
}

/// A DeleteObjects or CompleteMultipartUpload document of over 20 MiB is 400
/// MaxMessageLengthExceeded, and nothing is deleted or completed. (s3s read 20 MiB of it, then
/// answered 500 InternalError.) An object's body of the same size is not such a document.
#[test]
fn an_xml_document_over_20_mib_is_max_message_length_exceeded() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    let padded = |xml: &str| {
        let mut body = xml.as_bytes().to_vec();
        body.extend_from_slice(b"<!--");
        body.resize(body.len() + (21 << 20), b' ');
        body.extend_from_slice(b"-->");
        body
    };
    let doc = padded("<Delete><Object><Key>known</Key></Object></Delete>");
    let r = Req::bucket("POST", addr, Style::Virtual, "delete")
        .header("Content-MD5", &content_md5(&doc))
        .body(doc)
        .go(addr);
    assert_error(&r, 400, "MaxMessageLengthExceeded", "a 21 MiB DeleteObjects");
    let r = Req::object("POST", addr, Style::Virtual, "big-upload")
        .query("uploads")
        .go(addr);
    let upload_id = xml_values(&r.text(), "UploadId").remove(0);
    let doc = padded("<CompleteMultipartUpload></CompleteMultipartUpload>");
    let r = Req::object("POST", addr, Style::Virtual, "big-upload")
        .query(&format!("uploadId={upload_id}"))
        .body(doc)
        .go(addr);
    assert_error(&r, 400, "MaxMessageLengthExceeded", "a 21 MiB CompleteMultipartUpload");
    // A 21 MiB object is no document.
    let r = Req::object("PUT", addr, Style::Virtual, "big-object")
        .body(pattern(21 << 20, 40))
        .go(addr);
    assert_eq!(r.status, 200, "a 21 MiB PUT: {}", r.summary());
    let mut expected = before.clone();
    expected.insert("big-object".to_owned());
    assert_clean(&perch, &expected, "21 MiB documents");
}

/// An XML document (DeleteObjects, CompleteMultipartUpload, a configuration) is checked against
/// the Content-MD5 or `x-amz-checksum-*` its request declares before anything is done: a wrong
/// one is 400 BadDigest, a malformed Content-MD5 400 InvalidDigest, as S3 answers. (Both were
/// ignored: the keys were deleted, the upload completed.)
#[test]
fn an_xml_document_is_checked_against_the_digest_its_request_declares() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    let doc = b"<Delete><Object><Key>known</Key></Object></Delete>".to_vec();
    let crc = |d: &[u8]| base64_simd::STANDARD.encode_to_string(crc32fast::hash(d).to_be_bytes());
    let delete = |name: &str, value: &str| {
        Req::bucket("POST", addr, Style::Virtual, "delete")
            .header(name, value)
            .body(doc.clone())
            .go(addr)
    };
    let other = content_md5(b"another document");
    let r = delete("Content-MD5", &other);
    assert_error(&r, 400, "BadDigest", "DeleteObjects with another body's Content-MD5");
    let r = delete("Content-MD5", "junk");
    assert_error(&r, 400, "InvalidDigest", "DeleteObjects with a malformed Content-MD5");
    let r = delete("x-amz-checksum-crc32", &crc(b"another document"));
    assert_error(&r, 400, "BadDigest", "DeleteObjects with another body's CRC32");
    let r = Req::object("GET", addr, Style::Virtual, "known").go(addr);
    assert_eq!(r.status, 200, "a refused DeleteObjects deleted: {}", r.summary());

    // A multipart completion with a wrong Content-MD5: refused, and the upload still completes.
    let r = Req::object("POST", addr, Style::Virtual, "md5-upload")
        .query("uploads")
        .go(addr);
    let upload_id = xml_values(&r.text(), "UploadId").remove(0);
    let r = Req::object("PUT", addr, Style::Virtual, "md5-upload")
        .query(&format!("partNumber=1&uploadId={upload_id}"))
        .body(pattern(100, 41))
        .go(addr);
    let etag = r.header("etag").expect("part etag").to_owned();
    let complete = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    );
    let r = Req::object("POST", addr, Style::Virtual, "md5-upload")
        .query(&format!("uploadId={upload_id}"))
        .header("Content-MD5", &other)
        .body(complete.clone())
        .go(addr);
    assert_error(
        &r,
        400,
        "BadDigest",
        "CompleteMultipartUpload with another body's Content-MD5",
    );
    assert_missing(&perch, "md5-upload", "a refused completion");
    let r = Req::object("POST", addr, Style::Virtual, "md5-upload")
        .query(&format!("uploadId={upload_id}"))
        .header("Content-MD5", &content_md5(complete.as_bytes()))
        .body(complete)
        .go(addr);
    assert_eq!(
        r.status,
        200,
        "the completion with its own Content-MD5: {}",
        r.summary()
    );

    // The same wrong Content-MD5 on a document framed by `Transfer-Encoding: chunked`.
    let r = send_without_a_length(
        addr,
        Req::bucket("POST", addr, Style::Virtual, "delete").header("Content-MD5", &other),
        &doc,
    );
    assert_error(
        &r,
        400,
        "BadDigest",
        "a chunked DeleteObjects with another body's Content-MD5",
    );
    let r = Req::object("GET", addr, Style::Virtual, "known").go(addr);
    assert_eq!(r.status, 200, "a refused DeleteObjects deleted: {}", r.summary());

    // A completion's x-amz-checksum-* is the object's checksum, never its document's: not
    // checked against the document.
    let r = Req::object("POST", addr, Style::Virtual, "crc-upload")
        .query("uploads")
        .go(addr);
    let crc_upload = xml_values(&r.text(), "UploadId").remove(0);
    let r = Req::object("PUT", addr, Style::Virtual, "crc-upload")
        .query(&format!("partNumber=1&uploadId={crc_upload}"))
        .body(pattern(100, 42))
        .go(addr);
    let etag = r.header("etag").expect("part etag").to_owned();
    let r = Req::object("POST", addr, Style::Virtual, "crc-upload")
        .query(&format!("uploadId={crc_upload}"))
        .header("x-amz-checksum-crc32", &crc(&pattern(100, 42)))
        .body(format!("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"))
        .go(addr);
    assert_eq!(r.status, 200, "a completion naming its object's CRC32: {}", r.summary());

    // Right digests: the keys go (a CRC32 as current SDKs send it, then a Content-MD5).
    let r = Req::bucket("POST", addr, Style::Virtual, "delete")
        .header(
            "x-amz-checksum-crc32",
            &crc(b"<Delete><Object><Key>crc-upload</Key></Object></Delete>"),
        )
        .body(b"<Delete><Object><Key>crc-upload</Key></Object></Delete>".to_vec())
        .go(addr);
    assert_eq!(r.status, 200, "DeleteObjects with its own CRC32: {}", r.summary());
    assert_missing(&perch, "crc-upload", "DeleteObjects with its own CRC32");
    let r = delete("Content-MD5", &content_md5(&doc));
    assert_eq!(r.status, 200, "DeleteObjects with its own Content-MD5: {}", r.summary());
    assert_missing(&perch, "known", "DeleteObjects with its own Content-MD5");
    let mut expected = before.clone();
    expected.remove("known");
    expected.insert("md5-upload".to_owned());
    assert_eq!(keys_of(&perch), expected);
}

/// A listing with an encoding S3 does not know, or a negative count or part marker, is 400
/// InvalidArgument, as S3 answers. (They were taken: `max-uploads=-1` answered MaxUploads 0 and
/// IsTruncated true, `encoding-type=junk` an unencoded listing.)
#[test]
fn listings_with_an_unknown_encoding_or_a_negative_count_are_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    for query in [
        "encoding-type=junk",
        "list-type=2&encoding-type=junk",
        "uploads&max-uploads=-1",
    ] {
        let r = Req::bucket("GET", addr, Style::Virtual, query).go(addr);
        assert_error(&r, 400, "InvalidArgument", query);
    }
    let r = Req::object("POST", addr, Style::Virtual, "parts")
        .query("uploads")
        .go(addr);
    let upload_id = xml_values(&r.text(), "UploadId").remove(0);
    for q in ["max-parts=-1", "part-number-marker=-1"] {
        let r = Req::object("GET", addr, Style::Virtual, "parts")
            .query(&format!("uploadId={upload_id}&{q}"))
            .go(addr);
        assert_error(&r, 400, "InvalidArgument", q);
    }
    let r = Req::bucket("GET", addr, Style::Virtual, "encoding-type=url").go(addr);
    assert_eq!(xml_values(&r.text(), "Key"), ["known"], "{}", r.summary());
    let r = Req::bucket("GET", addr, Style::Virtual, "uploads&max-uploads=0").go(addr);
    assert_eq!(r.status, 200, "max-uploads=0: {}", r.summary());
}

/// A checksum that is not the base64 of its algorithm's digest (the wrong length, or not base64
/// at all) is 400 InvalidRequest, as S3 answers, in a header or a trailer; nothing is stored. (It
/// was compared and answered BadDigest, as if the body had been damaged.)
#[test]
fn a_malformed_checksum_is_an_invalid_request() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    let eight_bytes = base64_simd::STANDARD.encode_to_string([0u8; 8]);
    for (name, value) in [
        ("x-amz-checksum-crc32", eight_bytes.as_str()),
        ("x-amz-checksum-crc32", "not base64!"),
        ("x-amz-checksum-sha256", "AAAAAA=="),
    ] {
        let r = Req::object("PUT", addr, Style::Virtual, "malformed")
            .body(pattern(10, 50))
            .header(name, value)
            .go(addr);
        assert_error(&r, 400, "InvalidRequest", &format!("{name}: {value}"));
    }
    // In a trailer.
    let data = b"trailer data";
    let mut r = Req::object("PUT", addr, Style::Virtual, "malformed")
        .body(
            [
                format!("{:x}\r\n", data.len()).as_bytes(),
                data.as_slice(),
                format!("\r\n0\r\nx-amz-checksum-crc32:{eight_bytes}\r\n\r\n").as_bytes(),
            ]
            .concat(),
        )
        .header("Content-Encoding", "aws-chunked")
        .header("x-amz-decoded-content-length", &data.len().to_string())
        .header("x-amz-trailer", "x-amz-checksum-crc32");
    r.content_sha256 = Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned());
    let r = r.go(addr);
    assert_error(&r, 400, "InvalidRequest", "an 8-byte CRC32 trailer");
    assert_missing(&perch, "malformed", "malformed checksums");
    assert_clean(&perch, &before, "malformed checksums");
}

/// S3 takes one checksum of a body, of the algorithm `x-amz-sdk-checksum-algorithm` names (and
/// that header only beside its checksum), and a storage class it knows: anything else is refused before it is stored (an origin would
/// refuse its upload forever), and the right form still goes through.
#[test]
fn more_than_one_checksum_a_checksum_of_another_algorithm_or_an_unknown_class_is_refused() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let body = pattern(100, 30);
    let crc32 = base64_simd::STANDARD.encode_to_string(crc32fast::hash(&body).to_be_bytes());
    let sha1 = {
        use sha1::Digest;
        base64_simd::STANDARD.encode_to_string(sha1::Sha1::digest(&body))
    };
    // The headers, then the status and code expected, and what the case is.
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str, &'a str);
    let cases: [Case; 5] = [
        (
            &[("x-amz-checksum-crc32", &crc32), ("x-amz-checksum-sha1", &sha1)],
            400,
            "InvalidRequest",
            "two checksums",
        ),
        (
            &[
                ("x-amz-sdk-checksum-algorithm", "SHA1"),
                ("x-amz-checksum-crc32", &crc32),
            ],
            400,
            "InvalidRequest",
            "a CRC32 named SHA1",
        ),
        (
            &[("x-amz-sdk-checksum-algorithm", "BOGUS")],
            400,
            "InvalidRequest",
            "an unknown checksum algorithm",
        ),
        (
            &[("x-amz-sdk-checksum-algorithm", "SHA256")],
            400,
            "InvalidRequest",
            "an algorithm without its checksum",
        ),
        (
            &[("x-amz-storage-class", "BOGUS")],
            400,
            "InvalidStorageClass",
            "an unknown storage class",
        ),
    ];
    for (headers, status, code, what) in cases {
        let mut req = Req::object("PUT", perch.addr(), Style::Virtual, "checked").body(body.clone());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        assert_error(&req.go(perch.addr()), status, code, what);
    }
    assert_clean(&perch, &before, "checksums and classes");
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "checked")
        .body(body.clone())
        .header("x-amz-sdk-checksum-algorithm", "CRC32")
        .header("x-amz-checksum-crc32", &crc32)
        .go(perch.addr());
    assert_eq!(r.status, 200, "a CRC32 named CRC32: {}", r.summary());
}

/// An `Authorization` header that cannot be read gets S3's answer, not s3s's InvalidRequest: a
/// SigV4 header is AuthorizationHeaderMalformed, an unknown scheme InvalidArgument, and a signed
/// request without an `x-amz-date` that is a date 403 AccessDenied. Nothing is stored.
#[test]
fn an_unreadable_authorization_header_or_date_gets_the_answer_s3_gives() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    let date = perch_testkit::sigv4::amz_date(SystemTime::now());
    // A well-formed header (its signature wrong, but the date is looked at first).
    let well_formed = format!(
        "AWS4-HMAC-SHA256 Credential={}/20260101/us-east-1/s3/aws4_request, \
         SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}",
        Keys::dev().access_key_id,
        "0".repeat(64)
    );
    // Signed for another service than S3's (s3s answered 501 NotImplemented).
    let other_service = format!(
        "AWS4-HMAC-SHA256 Credential={}/{}/us-east-1/ec2/aws4_request, \
         SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}",
        Keys::dev().access_key_id,
        &date[..8],
        "0".repeat(64)
    );
    let cases = [
        (
            Some(date.as_str()),
            other_service.as_str(),
            400,
            "AuthorizationHeaderMalformed",
        ),
        (
            Some(date.as_str()),
            "AWS4-HMAC-SHA256 Credential=nobody",
            400,
            "AuthorizationHeaderMalformed",
        ),
        (
            Some(date.as_str()),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2026/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            400,
            "AuthorizationHeaderMalformed",
        ),
        (Some(date.as_str()), "Bearer 0123456789abcdef", 400, "InvalidArgument"),
        (Some("yesterday"), well_formed.as_str(), 403, "AccessDenied"),
        (None, well_formed.as_str(), 403, "AccessDenied"),
    ];
    for (method, key) in [
        ("GET", "known"),
        ("HEAD", "known"),
        ("PUT", "unread-auth"),
        ("DELETE", "known"),
    ] {
        for (amz_date, authorization, status, code) in cases {
            let mut req = Req::object(method, perch.addr(), Style::Virtual, key)
                .keys(None)
                .body(if method == "PUT" { pattern(10, 9) } else { Vec::new() })
                .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
                .header("Authorization", authorization);
            if let Some(amz_date) = amz_date {
                req = req.header("x-amz-date", amz_date);
            }
            let r = req.go(perch.addr());
            let what = format!("{method} with `Authorization: {authorization}` and x-amz-date {amz_date:?}");
            if method == "HEAD" {
                // No body to name the code: the status alone.
                assert_eq!(r.status, status, "{what}: {}", r.summary());
                continue;
            }
            assert_error(&r, status, code, &what);
            assert!(
                r.text().contains("<RequestId>"),
                "{what}: the answer is S3's whole error document: {}",
                r.summary()
            );
        }
    }
    assert_missing(&perch, "unread-auth", "unreadable authorization");
    assert_clean(&perch, &before, "unreadable authorization");
}

/// A 404's error document names what was missing, as S3's does: NoSuchKey its `<Key>` (escaped
/// for XML), NoSuchBucket its `<BucketName>`.
#[test]
fn a_missing_key_or_bucket_is_named_in_its_error() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    for style in [Style::Virtual, Style::Path] {
        let r = Req::object("GET", perch.addr(), style, &key_path("gone/a&b<c>.txt")).go(perch.addr());
        assert_error(&r, 404, "NoSuchKey", "GET of a missing key");
        assert!(
            r.text().contains("<Key>gone/a&amp;b&lt;c&gt;.txt</Key>"),
            "{}",
            r.summary()
        );
        assert_eq!(
            xml_values(&r.text(), "Key"),
            ["gone/a&b<c>.txt"],
            "{style:?}: {}",
            r.summary()
        );
    }
    let mut req = Req::object("GET", perch.addr(), Style::Path, "k");
    req.path = "/no-such-bucket-here/k".to_owned();
    let r = req.go(perch.addr());
    assert_error(&r, 404, "NoSuchBucket", "GET in a missing bucket");
    assert_eq!(
        xml_values(&r.text(), "BucketName"),
        ["no-such-bucket-here"],
        "{}",
        r.summary()
    );
    // A copy's 404 is its source's: the destination the request names is not what is missing.
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "copy-dst")
        .header("x-amz-copy-source", &format!("/{BUCKET}/absent-source"))
        .go(perch.addr());
    assert_error(&r, 404, "NoSuchKey", "a copy of a missing source");
    assert!(!r.text().contains("copy-dst"), "{}", r.summary());
    let mut req = Req::bucket("GET", perch.addr(), Style::Path, "list-type=2");
    req.path = "/no-such-bucket-here".to_owned();
    let r = req.go(perch.addr());
    assert_error(&r, 404, "NoSuchBucket", "a listing of a missing bucket");
    assert_eq!(
        xml_values(&r.text(), "BucketName"),
        ["no-such-bucket-here"],
        "{}",
        r.summary()
    );
}

/// `If-Modified-Since` and `If-Unmodified-Since` in the two older HTTP date forms (RFC 850 and
/// asctime), which every HTTP server must read (RFC 9110 §5.6.7) and s3s refused with 400: checked
/// as S3 checks any date, on GET and HEAD.
#[test]
fn conditions_with_older_http_date_forms_are_checked() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let etag = Req::object("HEAD", perch.addr(), Style::Virtual, "known")
        .go(perch.addr())
        .header("ETag")
        .expect("ETag")
        .to_owned();
    let past_rfc850 = "Sunday, 06-Nov-94 08:49:37 GMT";
    let past_asctime = "Sun Nov  6 08:49:37 1994";
    let future_asctime = "Fri Jan  1 00:00:00 2100";
    for method in ["GET", "HEAD"] {
        for (header, value, status) in [
            ("If-Modified-Since", past_rfc850, 200),
            ("If-Modified-Since", past_asctime, 200),
            ("If-Modified-Since", future_asctime, 304),
            ("If-Unmodified-Since", past_rfc850, 412),
            ("If-Unmodified-Since", past_asctime, 412),
            ("If-Unmodified-Since", future_asctime, 200),
        ] {
            let r = Req::object(method, perch.addr(), Style::Virtual, "known")
                .header(header, value)
                .go(perch.addr());
            let what = format!("{method} with `{header}: {value}`");
            assert_eq!(r.status, status, "{what}: {}", r.summary());
            match status {
                200 if method == "GET" => assert_eq!(r.body, pattern(100, 1), "{what}"),
                304 => assert_eq!(r.header("ETag"), Some(etag.as_str()), "{what}: a 304 carries the ETag"),
                412 if method == "GET" => assert_eq!(r.code().as_deref(), Some("PreconditionFailed"), "{what}"),
                _ => {}
            }
        }
    }
    // On a missing key, its 404.
    let r = Req::object("GET", perch.addr(), Style::Virtual, "absent-then")
        .header("If-Modified-Since", past_rfc850)
        .go(perch.addr());
    assert_error(&r, 404, "NoSuchKey", "a condition on a missing key");
}

/// A HEAD's `response-*` override that no header can carry is 400 InvalidRequest, as a GET's is
/// (it was a 500: the value failed only when the answer was written).
#[test]
fn a_response_override_no_header_can_carry_is_an_invalid_request() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    for query in [
        "response-content-type=%0Ax",
        "response-content-disposition=%0D%0AX-Evil%3A%201",
        "response-cache-control=a%01b",
        "response-content-language=%7Fx",
        "response-content-encoding=%0A",
    ] {
        for method in ["HEAD", "GET"] {
            let r = Req::object(method, addr, Style::Virtual, "known").query(query).go(addr);
            assert_eq!(r.status, 400, "{method} ?{query}: {}", r.summary());
            if method == "GET" {
                assert_error(&r, 400, "InvalidRequest", query);
            }
        }
    }
    let r = Req::object("HEAD", addr, Style::Virtual, "known")
        .query("response-content-type=text%2Fplain")
        .go(addr);
    assert_eq!(r.header("Content-Type"), Some("text/plain"), "{}", r.summary());
}

/// An encryption S3 does not know is 400 InvalidArgument, the client's mistake; one S3 knows and
/// Perch does not keep is 501 NotImplemented; AES256 is taken. Nothing is stored for a refusal.
#[test]
fn an_unknown_server_side_encryption_is_an_invalid_argument() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    for (value, status, code) in [
        ("FOO", 400, "InvalidArgument"),
        ("aes256", 400, "InvalidArgument"),
        ("aes:kms", 400, "InvalidArgument"),
        ("aws:kms", 501, "NotImplemented"),
        ("aws:kms:dsse", 501, "NotImplemented"),
    ] {
        let r = Req::object("PUT", addr, Style::Virtual, "encrypted")
            .header("x-amz-server-side-encryption", value)
            .body(b"secret".to_vec())
            .go(addr);
        assert_error(&r, status, code, value);
    }
    assert_clean(&perch, &before, "refused encryptions");
    let r = Req::object("PUT", addr, Style::Virtual, "encrypted")
        .header("x-amz-server-side-encryption", "AES256")
        .body(b"secret".to_vec())
        .go(addr);
    assert_eq!(r.status, 200, "AES256: {}", r.summary());
}

/// A document holding a CDATA section is 501 NotImplemented, with or without a digest of it, and
/// nothing is done: s3s drops a section's text, so a DeleteObjects of `kno<![CDATA[wn]]>` deleted
/// `kno`, and a tag `k<![CDATA[ey]]>` was kept as `k`. The same text escaped is read.
#[test]
fn a_cdata_section_in_a_document_is_refused_not_misread() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let r = Req::object("PUT", addr, Style::Virtual, "kno")
        .body(b"a neighbour".to_vec())
        .go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());
    let before = keys_of(&perch);
    let delete = b"<Delete><Object><Key>kno<![CDATA[wn]]></Key></Object></Delete>";
    for with_md5 in [true, false] {
        let mut req = Req::bucket("POST", addr, Style::Virtual, "delete").body(delete.to_vec());
        if with_md5 {
            req = req.header("Content-MD5", &content_md5(delete));
        }
        let r = req.go(addr);
        assert_error(
            &r,
            501,
            "NotImplemented",
            &format!("DeleteObjects, Content-MD5 {with_md5}"),
        );
    }
    assert_eq!(keys_of(&perch), before, "nothing deleted");
    let tagging = b"<Tagging><TagSet><Tag><Key>k<![CDATA[ey]]></Key><Value>v</Value></Tag></TagSet></Tagging>";
    let r = Req::object("PUT", addr, Style::Virtual, "known")
        .query("tagging")
        .body(tagging.to_vec())
        .go(addr);
    assert_error(&r, 501, "NotImplemented", "PutObjectTagging");
    let r = Req::object("GET", addr, Style::Virtual, "known")
        .query("tagging")
        .go(addr);
    assert_eq!(xml_values(&r.text(), "Key"), Vec::<String>::new(), "{}", r.summary());
    // Escaped, the same text is read as sent.
    let delete = b"<Delete><Object><Key>kno&#119;n</Key></Object></Delete>";
    let r = Req::bucket("POST", addr, Style::Virtual, "delete")
        .body(delete.to_vec())
        .header("Content-MD5", &content_md5(delete))
        .go(addr);
    assert_eq!(xml_values(&r.text(), "Key"), ["known"], "{}", r.summary());
    assert_missing(&perch, "known", "deleted by its escaped name");
}

/// A method S3 has no operation for on the resource (a POST to an object without `?uploads`,
/// `?uploadId`, `?restore` or `?select`; PATCH) is the client's mistake: S3's 405
/// MethodNotAllowed naming the method, where s3s answered 501 NotImplemented ("Unknown
/// operation"), a feature missing. Nothing is written.
#[test]
fn a_method_without_an_operation_is_method_not_allowed() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    for (method, style, query) in [
        ("POST", Style::Virtual, ""),
        ("POST", Style::Path, ""),
        ("PATCH", Style::Virtual, ""),
        ("PATCH", Style::Path, "tagging"),
    ] {
        let r = Req::object(method, addr, style, "known")
            .query(query)
            .body(b"x".to_vec())
            .go(addr);
        let what = format!("{method} on an object ({style:?}, ?{query})");
        assert_error(&r, 405, "MethodNotAllowed", &what);
        assert_eq!(xml_values(&r.text(), "Method"), vec![method.to_owned()], "{what}");
        assert_eq!(r.header("allow"), Some("GET, HEAD, PUT, POST, DELETE"), "{what}");
    }
    let r = Req::bucket("PATCH", addr, Style::Path, "").go(addr);
    assert_error(&r, 405, "MethodNotAllowed", "PATCH on a bucket");
    assert_eq!(
        r.header("allow"),
        Some("GET, HEAD, PUT, POST, DELETE"),
        "PATCH on a bucket"
    );
    assert_clean(&perch, &before, "methods without an operation");
}

/// A document sent aws-chunked (here DeleteObjects, signed `STREAMING-UNSIGNED-PAYLOAD-TRAILER`
/// with a CRC32 trailer) is 501 NotImplemented, saying how to send it, and nothing of it is done:
/// s3s decodes it, then compares its length with a declared length it has set to 0 and answered
/// 400 IncompleteBody, a fault that is not the client's. The same document with its length is
/// carried out.
#[test]
fn a_document_sent_aws_chunked_is_not_implemented_and_not_done() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let before = keys_of(&perch);
    let doc = b"<Delete><Object><Key>known</Key></Object></Delete>";
    let crc32 = base64_simd::STANDARD.encode_to_string(crc32fast::hash(doc).to_be_bytes());
    let framed = [
        format!("{:x}\r\n", doc.len()).as_bytes(),
        doc.as_slice(),
        format!("\r\n0\r\nx-amz-checksum-crc32:{crc32}\r\n\r\n").as_bytes(),
    ]
    .concat();
    let mut r = Req::bucket("POST", addr, Style::Virtual, "delete")
        .body(framed)
        .header("Content-Type", "application/xml")
        .header("Content-Encoding", "aws-chunked")
        .header("x-amz-decoded-content-length", &doc.len().to_string())
        .header("x-amz-sdk-checksum-algorithm", "CRC32")
        .header("x-amz-trailer", "x-amz-checksum-crc32");
    r.content_sha256 = Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER".to_owned());
    let refused = r.go(addr);
    assert_error(&refused, 501, "NotImplemented", "DeleteObjects sent aws-chunked");
    assert!(refused.text().contains("Content-Length"), "{}", refused.text());
    assert_clean(&perch, &before, "DeleteObjects sent aws-chunked");
    // With its length and its checksum in a header, as the SDKs send it: done.
    let r = Req::bucket("POST", addr, Style::Virtual, "delete")
        .body(doc.to_vec())
        .header("Content-Type", "application/xml")
        .header("x-amz-checksum-crc32", &crc32)
        .go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_missing(&perch, "known", "deleted by the document sent with its length");
}

/// An `x-amz-content-sha256` that is neither a payload mode nor a SHA-256 is 400 InvalidArgument,
/// as S3 answers it (s3s answered 403 SignatureDoesNotMatch, as if the key were wrong), and
/// nothing is stored. An InvalidURI (a path that is no UTF-8 once decoded) says what it is in its
/// `<Message>`, as S3's does.
#[test]
fn a_content_sha256_that_is_no_hash_and_a_path_that_is_no_uri_are_named() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    for value in ["notahash", "unsigned-payload", &"0".repeat(63)] {
        let mut req = Req::object("PUT", perch.addr(), Style::Virtual, "hashless").body(b"x".to_vec());
        req.content_sha256 = Some(value.to_owned());
        let r = req.go(perch.addr());
        assert_error(&r, 400, "InvalidArgument", &format!("x-amz-content-sha256: {value}"));
        assert!(r.text().contains("a valid sha256 value"), "{}", r.summary());
    }
    let r = Req::object("HEAD", perch.addr(), Style::Virtual, "hashless").go(perch.addr());
    assert_eq!(r.status, 404, "{}", r.summary());

    let mut req = Req::object("GET", perch.addr(), Style::Path, "x");
    req.path = format!("/{BUCKET}/%ff");
    let r = req.go(perch.addr());
    assert_error(&r, 400, "InvalidURI", "a path that is no UTF-8");
    assert!(
        r.text()
            .contains("<Message>Couldn't parse the specified URI.</Message>"),
        "{}",
        r.summary()
    );
    // A `%` that starts no escape is no URI either (it was taken literally, and stored).
    let before = keys_of(&perch);
    for path in [
        format!("/{BUCKET}/bad%zzkey"),
        format!("/{BUCKET}/ends%4"),
        format!("/{BUCKET}/ends%"),
    ] {
        for method in ["PUT", "GET"] {
            let mut req = Req::object(method, perch.addr(), Style::Path, "x").body(if method == "PUT" {
                b"literal".to_vec()
            } else {
                Vec::new()
            });
            req.path = path.clone();
            let r = req.go(perch.addr());
            assert_error(&r, 400, "InvalidURI", &format!("{method} {path}"));
        }
    }
    assert_clean(&perch, &before, "paths with a % that starts no escape");
}

/// A PUT of an object or a part that frames no body, neither `Content-Length` nor
/// `Transfer-Encoding`, is 411 MissingContentLength, as on S3; it used to store an empty object.
/// A copy, which has no body, still needs neither.
#[test]
fn a_put_without_a_length_is_411_and_stores_nothing() {
    let _turn = machine::share();
    let perch = setup();
    let _log = perch.log_on_panic();
    let before = keys_of(&perch);
    for style in [Style::Path, Style::Virtual] {
        let head = {
            let req = Req::object("PUT", perch.addr(), style, "unframed");
            String::from_utf8(req.head().0).expect("ascii")
        };
        assert!(head.contains("Content-Length: 0\r\n"), "{head}");
        let head = head.replace("Content-Length: 0\r\n", "");
        let mut s = TcpStream::connect(perch.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        s.write_all(head.as_bytes()).expect("head");
        let mut reader = std::io::BufReader::new(s);
        let (status, headers) = perch_testkit::raw_client::read_head(&mut reader).expect("an answer");
        let body = perch_testkit::raw_client::read_body(&mut reader, "PUT", status, &headers).expect("its body");
        let r = Resp {
            status,
            headers,
            body,
            got_continue: false,
        };
        assert_error(
            &r,
            411,
            "MissingContentLength",
            &format!("a PUT without a length ({style:?})"),
        );
        assert!(
            r.text().contains("You must provide the Content-Length HTTP header."),
            "{}",
            r.summary()
        );
    }
    assert_clean(&perch, &before, "PUTs without a length");
    let r = Req::object("HEAD", perch.addr(), Style::Virtual, "unframed").go(perch.addr());
    assert_eq!(r.status, 404, "{}", r.summary());
    // The same PUT with its length is stored.
    let r = Req::object("PUT", perch.addr(), Style::Virtual, "unframed").go(perch.addr());
    assert_eq!(r.status, 200, "{}", r.summary());
}
