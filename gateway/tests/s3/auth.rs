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
