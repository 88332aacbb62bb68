//! Authentication at perch's front door: signatures, keys, anonymous requests, presigned URLs.
//!
//! The front door is the same whatever the origin: these run with the directory origin only.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use perch_testkit::bodies::md5_etag;
use perch_testkit::raw_client::Req;
use perch_testkit::sdk::client_with;
use perch_testkit::servers::{DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY};

use crate::support::machine;
use crate::support::sdk::{Gateway, bytes_of, create_bucket, expect_err, ok, presigned_get, put, send_presigned};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_signatures_and_presigned_urls() {
    let _turn = machine::share();
    let gw = Gateway::dir();
    let c = &gw.client;
    create_bucket(c, "auth").await;
    put(c, "auth", "secret.txt", b"the secret").await;

    let wrong = client_with(&gw.perch.server.endpoint, DEV_ACCESS_KEY_ID, "not-the-secret");
    expect_err(wrong.list_buckets().send().await, 403, Some("SignatureDoesNotMatch"));
    expect_err(
        wrong.get_object().bucket("auth").key("secret.txt").send().await,
        403,
        Some("SignatureDoesNotMatch"),
    );
    expect_err(
        wrong
            .put_object()
            .bucket("auth")
            .key("intruder")
            .body(ByteStream::from_static(b"x"))
            .send()
            .await,
        403,
        Some("SignatureDoesNotMatch"),
    );
    expect_err(
        c.get_object().bucket("auth").key("intruder").send().await,
        404,
        Some("NoSuchKey"),
    );

    // Anonymous requests.
    let url = format!("{}/auth/secret.txt", gw.perch.server.endpoint);
    let r = Req::for_url("GET", &url).go(gw.perch.addr());
    let text = r.text();
    assert_eq!(r.status, 403, "{text}");
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");

    // A presigned GET.
    let req = presigned_get(c, "auth", "secret.txt", Duration::from_secs(300)).await;
    let r = send_presigned(&req, &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"the secret");
    assert_eq!(r.header("etag"), Some(md5_etag(b"the secret").as_str()));
    // Tampering with it breaks the signature.
    let tampered = req.uri().replace("secret.txt", "secret.txu");
    let r = Req::for_url("GET", &tampered).go(gw.perch.addr());
    let text = r.text();
    assert_eq!(r.status, 403, "{text}");
    assert!(text.contains("<Code>SignatureDoesNotMatch</Code>"), "{text}");

    // A presigned PUT, sent without the SDK.
    let req = c
        .put_object()
        .bucket("auth")
        .key("uploaded")
        .content_type("text/plain")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).expect("config"))
        .await
        .expect("presign PutObject");
    let r = send_presigned(&req, &[], b"via presign!");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("etag"), Some(md5_etag(b"via presign!").as_str()));
    let got = ok(
        c.get_object().bucket("auth").key("uploaded").send().await,
        "get uploaded",
    );
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(bytes_of(got.body).await, b"via presign!");

    // A presigned URL past its expiry.
    let req = presigned_get(c, "auth", "secret.txt", Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = send_presigned(&req, &[], b"");
    let text = r.text();
    assert_eq!(r.status, 403, "{text}");
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
    assert!(text.to_ascii_lowercase().contains("expired"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_unknown_access_key_is_invalid_access_key_id() {
    let _turn = machine::share();
    let gw = Gateway::dir();
    create_bucket(&gw.client, "auth-key").await;
    let stranger = client_with(&gw.perch.server.endpoint, "AKIDUNKNOWN", DEV_SECRET_ACCESS_KEY);
    expect_err(stranger.list_buckets().send().await, 403, Some("InvalidAccessKeyId"));
    expect_err(stranger.head_bucket().bucket("auth-key").send().await, 403, None);
    expect_err(
        stranger.list_objects_v2().bucket("auth-key").send().await,
        403,
        Some("InvalidAccessKeyId"),
    );
}

/// Sends `head` (the request line and headers, without the blank line) and an empty body on a new
/// connection; the status and the answer's text.
fn send_raw(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to perch");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    stream
        .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// SigV4 binds `host` and every `x-amz-*` header a request carries to its signature; s3s checked
/// only the headers the request named as signed, so a signed PUT (or a presigned PUT URL) sent on
/// with an `x-amz-copy-source` added became a copy of an object its sender may not read, and a
/// signature without `host` could be sent to any bucket in virtual-hosted style. As on S3: 403
/// AccessDenied naming the headers not signed, nothing done. A request signed both in its header
/// and in its query is 400 InvalidArgument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_a_signature_does_not_cover_are_refused() {
    use perch_testkit::sigv4::{Keys, amz_date, authorization, sha256_hex};
    let _turn = machine::share();
    let gw = Gateway::dir();
    let c = &gw.client;
    let addr = gw.perch.addr();
    create_bucket(c, "private").await;
    put(c, "private", "secret", b"not yours").await;
    create_bucket(c, "mine").await;

    // A PUT signed over OrioleDB's three headers, sent with a copy source added after signing.
    let host = format!("127.0.0.1:{}", addr.port());
    let sha = sha256_hex(b"");
    let signed_put = |path: &str, extra: &str| {
        let date = amz_date(std::time::SystemTime::now());
        let auth = authorization(&Keys::dev(), "PUT", &host, path, "", &date, &sha, &[]);
        format!(
            "PUT {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\nx-amz-content-sha256: {sha}\r\n\
             Authorization: {auth}\r\nContent-Length: 0\r\n{extra}"
        )
    };
    let (status, text) = send_raw(
        addr,
        &signed_put("/mine/stolen", "x-amz-copy-source: /private/secret\r\n"),
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
    assert!(
        text.contains("<HeadersNotSigned>x-amz-copy-source</HeadersNotSigned>"),
        "{text}"
    );
    expect_err(c.head_object().bucket("mine").key("stolen").send().await, 404, None);
    // The same request without the header it did not sign is taken.
    let (status, text) = send_raw(addr, &signed_put("/mine/empty", ""));
    assert_eq!(status, 200, "{text}");

    // A signature that leaves `host` out.
    let date = amz_date(std::time::SystemTime::now());
    let (status, text) = send_raw(
        addr,
        &format!(
            "GET /private/secret HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\nx-amz-content-sha256: {sha}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential={DEV_ACCESS_KEY_ID}/{}/us-east-1/s3/aws4_request, \
             SignedHeaders=x-amz-content-sha256;x-amz-date, Signature={}\r\n",
            &date[..8],
            "0".repeat(64)
        ),
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("<HeadersNotSigned>host</HeadersNotSigned>"), "{text}");

    // A presigned PUT URL with a copy source added; then as it was made.
    let req = c
        .put_object()
        .bucket("mine")
        .key("via-url")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).expect("config"))
        .await
        .expect("presign PutObject");
    let r = send_presigned(&req, &[("x-amz-copy-source", "/private/secret")], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("HeadersNotSigned"), "{}", r.text());
    expect_err(c.head_object().bucket("mine").key("via-url").send().await, 404, None);
    let r = send_presigned(&req, &[], b"mine");
    assert_eq!(r.status, 200, "{}", r.text());

    // Signed both ways.
    let get = presigned_get(c, "private", "secret", Duration::from_secs(300)).await;
    let r = send_presigned(
        &get,
        &[(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
        )],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("<Code>InvalidArgument</Code>"), "{}", r.text());
}

/// The check that a signature covers every `x-amz-*` header reads a request's signature as s3s
/// reads it: a presigned URL whose parameter names are percent-encoded (`X-Amz-%41lgorithm`, which
/// s3s decodes and verifies), or an `Authorization` header with a tab after its algorithm (which
/// s3s takes), is checked like any other. Both used to skip the check, so a presigned PUT URL sent
/// with a copy source added became a copy of an object its holder may not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_written_otherwise_is_checked_for_unsigned_headers_all_the_same() {
    use perch_testkit::sigv4::{Keys, amz_date, authorization, sha256_hex};
    let _turn = machine::share();
    let gw = Gateway::dir();
    let c = &gw.client;
    let addr = gw.perch.addr();
    create_bucket(c, "private2").await;
    put(c, "private2", "secret", b"not yours").await;
    create_bucket(c, "mine2").await;

    let req = c
        .put_object()
        .bucket("mine2")
        .key("via-url")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).expect("config"))
        .await
        .expect("presign PutObject");
    let url = req.uri().replace("X-Amz-Algorithm=", "X-Amz-%41lgorithm=");
    assert_ne!(url, req.uri(), "the URL names X-Amz-Algorithm");
    let send = |extra: &[(&str, &str)], body: &[u8]| {
        let mut raw = Req::for_url(req.method(), &url).body(body.to_vec());
        for (name, value) in req.headers().filter(|(k, _)| !k.eq_ignore_ascii_case("host")) {
            raw = raw.header(name, value);
        }
        for (name, value) in extra {
            raw = raw.header(name, value);
        }
        raw.go(raw.host_addr())
    };
    let r = send(&[("x-amz-copy-source", "/private2/secret")], b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("HeadersNotSigned"), "{}", r.text());
    expect_err(c.head_object().bucket("mine2").key("via-url").send().await, 404, None);
    // The same URL is a good one: s3s verifies it.
    let r = send(&[], b"mine");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        bytes_of(ok(c.get_object().bucket("mine2").key("via-url").send().await, "GET").body).await,
        b"mine"
    );

    // A header signature with a tab after its algorithm, sent with a copy source added.
    let host = format!("127.0.0.1:{}", addr.port());
    let sha = sha256_hex(b"");
    let date = amz_date(std::time::SystemTime::now());
    let auth = authorization(&Keys::dev(), "PUT", &host, "/mine2/stolen", "", &date, &sha, &[]).replacen(
        "AWS4-HMAC-SHA256 ",
        "AWS4-HMAC-SHA256\t",
        1,
    );
    let head = format!(
        "PUT /mine2/stolen HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\nx-amz-content-sha256: {sha}\r\n\
         Authorization: {auth}\r\nContent-Length: 0\r\n"
    );
    let (status, text) = send_raw(addr, &format!("{head}x-amz-copy-source: /private2/secret\r\n"));
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("<HeadersNotSigned>x-amz-copy-source</HeadersNotSigned>"),
        "{text}"
    );
    expect_err(c.head_object().bucket("mine2").key("stolen").send().await, 404, None);
    let (status, text) = send_raw(addr, &head);
    assert_eq!(status, 200, "the same signature without the added header: {text}");

    // The algorithm misspelt (s3s takes any word there and verifies the signature all the same),
    // or the copy source listed as signed in a form s3s does not find (so it signs nothing): the
    // same captured signature with a copy source added is refused, never a copy.
    let auth = authorization(&Keys::dev(), "PUT", &host, "/mine2/stolen2", "", &date, &sha, &[]);
    let head = |auth: &str| {
        format!(
            "PUT /mine2/stolen2 HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\nx-amz-content-sha256: {sha}\r\n\
             Authorization: {auth}\r\nContent-Length: 0\r\nx-amz-copy-source: /private2/secret\r\n"
        )
    };
    let misspelt = auth.replacen("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA256X ", 1);
    let (status, text) = send_raw(addr, &head(&misspelt));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("AuthorizationHeaderMalformed"), "{text}");
    for listed in [";X-Amz-Copy-Source", "; x-amz-copy-source"] {
        let forged = auth.replacen("x-amz-date, Signature", &format!("x-amz-date{listed}, Signature"), 1);
        assert_ne!(forged, auth, "the signed headers end with x-amz-date");
        let (status, text) = send_raw(addr, &head(&forged));
        assert_eq!(status, 403, "{listed}: {text}");
        assert!(text.contains("HeadersNotSigned"), "{listed}: {text}");
    }
    expect_err(c.head_object().bucket("mine2").key("stolen2").send().await, 404, None);
}
