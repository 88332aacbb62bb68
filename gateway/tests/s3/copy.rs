//! CopyObject through aws-sdk-s3, against both origins: metadata, conditions, odd keys, errors.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{MetadataDirective, ServerSideEncryption, StorageClass};
use perch_testkit::bodies::pattern;

use crate::support::machine;
use crate::support::perch::flush;
use crate::support::sdk::{
    OriginKind, assert_recent, bytes_of, copy_source, create_bucket, expect_err, for_each_origin, get_bytes, meta, ok,
    put,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_object() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        create_bucket(c, "copy-src").await;
        create_bucket(c, "copy-dst").await;
        let body = pattern(20_000, 3);
        let out = ok(
            c.put_object()
                .bucket("copy-src")
                .key("orig")
                .body(ByteStream::from(body.clone()))
                .content_type("text/plain")
                .cache_control("no-cache")
                .metadata("a", "1")
                .send()
                .await,
            "put orig",
        );
        let etag = out.e_tag().expect("etag").to_owned();

        // Same bucket, metadata copied (the default).
        let out = ok(
            c.copy_object()
                .bucket("copy-src")
                .key("same")
                .copy_source(copy_source("copy-src", "orig"))
                .send()
                .await,
            "copy in the same bucket",
        );
        let result = out.copy_object_result().expect("CopyObjectResult");
        assert_eq!(result.e_tag(), Some(etag.as_str()));
        assert_recent(result.last_modified(), "copy LastModified");
        let got = ok(c.get_object().bucket("copy-src").key("same").send().await, "get same");
        assert_eq!(got.e_tag(), Some(etag.as_str()));
        assert_eq!(got.content_type(), Some("text/plain"));
        assert_eq!(got.cache_control(), Some("no-cache"));
        assert_eq!(got.metadata(), Some(&meta(&[("a", "1")])));
        assert_eq!(bytes_of(got.body).await, body);

        // Another bucket, COPY named explicitly.
        ok(
            c.copy_object()
                .bucket("copy-dst")
                .key("other")
                .copy_source(copy_source("copy-src", "orig"))
                .metadata_directive(MetadataDirective::Copy)
                .send()
                .await,
            "copy to another bucket",
        );
        let got = ok(c.get_object().bucket("copy-dst").key("other").send().await, "get other");
        assert_eq!(got.e_tag(), Some(etag.as_str()));
        assert_eq!(got.content_type(), Some("text/plain"));
        assert_eq!(got.metadata(), Some(&meta(&[("a", "1")])));
        assert_eq!(bytes_of(got.body).await, body);

        // REPLACE: only the new headers.
        ok(
            c.copy_object()
                .bucket("copy-dst")
                .key("replaced")
                .copy_source(copy_source("copy-src", "orig"))
                .metadata_directive(MetadataDirective::Replace)
                .content_type("application/json")
                .metadata("b", "2")
                .send()
                .await,
            "copy with REPLACE",
        );
        let got = ok(
            c.get_object().bucket("copy-dst").key("replaced").send().await,
            "get replaced",
        );
        assert_eq!(got.content_type(), Some("application/json"));
        assert_eq!(got.cache_control(), None);
        assert_eq!(got.metadata(), Some(&meta(&[("b", "2")])));
        assert_eq!(bytes_of(got.body).await, body);

        // Copy-source conditions. moto 5.2 ignores x-amz-copy-source-if-match (it copies anyway)
        // and perch passes the condition on to the origin, so the refusal is checked on the
        // directory origin only.
        if gw.kind == OriginKind::Dir {
            expect_err(
                c.copy_object()
                    .bucket("copy-dst")
                    .key("conditional")
                    .copy_source(copy_source("copy-src", "orig"))
                    .copy_source_if_match("\"00000000000000000000000000000000\"")
                    .send()
                    .await,
                412,
                Some("PreconditionFailed"),
            );
            expect_err(
                c.get_object().bucket("copy-dst").key("conditional").send().await,
                404,
                Some("NoSuchKey"),
            );
            expect_err(
                c.copy_object()
                    .bucket("copy-dst")
                    .key("conditional")
                    .copy_source(copy_source("copy-src", "orig"))
                    .copy_source_if_none_match(&etag)
                    .send()
                    .await,
                412,
                Some("PreconditionFailed"),
            );
        }
        ok(
            c.copy_object()
                .bucket("copy-dst")
                .key("conditional")
                .copy_source(copy_source("copy-src", "orig"))
                .copy_source_if_match(&etag)
                .send()
                .await,
            "copy-source-if-match the ETag",
        );
        assert_eq!(get_bytes(c, "copy-dst", "conditional").await, body);

        // Onto itself without a change: 400 InvalidRequest; with REPLACE, allowed.
        expect_err(
            c.copy_object()
                .bucket("copy-src")
                .key("orig")
                .copy_source(copy_source("copy-src", "orig"))
                .send()
                .await,
            400,
            Some("InvalidRequest"),
        );
        ok(
            c.copy_object()
                .bucket("copy-src")
                .key("orig")
                .copy_source(copy_source("copy-src", "orig"))
                .metadata_directive(MetadataDirective::Replace)
                .content_type("text/x-new")
                .send()
                .await,
            "copy onto itself with REPLACE",
        );
        let head = ok(c.head_object().bucket("copy-src").key("orig").send().await, "head orig");
        assert_eq!(head.content_type(), Some("text/x-new"));
        assert_eq!(head.e_tag(), Some(etag.as_str()));
        assert_eq!(head.metadata().map(HashMap::len).unwrap_or(0), 0);

        // Onto itself naming an encryption or a storage class: a change to S3 (the way to rewrite
        // an object in place), allowed, whether the object is still pending or in the origin;
        // the object reads as before.
        for uploaded in [false, true] {
            let key = format!("touch-{uploaded}");
            ok(
                c.put_object()
                    .bucket("copy-src")
                    .key(&key)
                    .body(ByteStream::from_static(b"touched"))
                    .content_type("text/x-touch")
                    .metadata("kept", "yes")
                    .send()
                    .await,
                "put touch",
            );
            if uploaded {
                flush(&gw.perch.server, Duration::from_secs(60));
            }
            let out = ok(
                c.copy_object()
                    .bucket("copy-src")
                    .key(&key)
                    .copy_source(copy_source("copy-src", &key))
                    .server_side_encryption(ServerSideEncryption::Aes256)
                    .send()
                    .await,
                &format!("copy onto itself with AES256 (uploaded: {uploaded})"),
            );
            // Its time to the whole second, as the object's Last-Modified and S3's documents.
            let copied = out
                .copy_object_result()
                .and_then(|r| r.last_modified())
                .expect("LastModified");
            assert_eq!(copied.subsec_nanos(), 0, "{copied:?} (uploaded: {uploaded})");
            ok(
                c.copy_object()
                    .bucket("copy-src")
                    .key(&key)
                    .copy_source(copy_source("copy-src", &key))
                    .storage_class(StorageClass::Standard)
                    .send()
                    .await,
                &format!("copy onto itself with STANDARD (uploaded: {uploaded})"),
            );
            let head = ok(c.head_object().bucket("copy-src").key(&key).send().await, "head touch");
            assert_eq!(head.content_type(), Some("text/x-touch"), "uploaded: {uploaded}");
            assert_eq!(head.metadata(), Some(&meta(&[("kept", "yes")])), "uploaded: {uploaded}");
            assert_eq!(get_bytes(c, "copy-src", &key).await, b"touched");
        }

        // Missing sources.
        expect_err(
            c.copy_object()
                .bucket("copy-dst")
                .key("x")
                .copy_source(copy_source("copy-src", "absent"))
                .send()
                .await,
            404,
            Some("NoSuchKey"),
        );
        expect_err(
            c.copy_object()
                .bucket("copy-dst")
                .key("x")
                .copy_source(copy_source("no-such-bucket", "orig"))
                .send()
                .await,
            404,
            Some("NoSuchBucket"),
        );

        // A source key that needs encoding.
        let odd = "dir/a b+c%d ü?.txt";
        put(c, "copy-src", odd, b"odd").await;
        ok(
            c.copy_object()
                .bucket("copy-dst")
                .key("from odd")
                .copy_source(copy_source("copy-src", odd))
                .send()
                .await,
            "copy an oddly named source",
        );
        assert_eq!(get_bytes(c, "copy-dst", "from odd").await, b"odd");
    })
    .await;
}
