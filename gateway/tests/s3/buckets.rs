//! Buckets through aws-sdk-s3, against both origins: create, head, list, locate, delete.

use aws_sdk_s3::primitives::ByteStream;

use crate::support::machine;
use crate::support::sdk::{assert_recent, create_bucket, expect_err, for_each_origin, get_bytes, ok, put};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_create_head_list_locate_delete() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        create_bucket(c, "bkt-alpha").await;
        create_bucket(c, "bkt-beta").await;

        ok(c.head_bucket().bucket("bkt-alpha").send().await, "head bkt-alpha");
        let err = expect_err(c.head_bucket().bucket("bkt-absent").send().await, 404, None);
        assert!(
            err.as_service_error().is_some_and(|e| e.is_not_found()),
            "HeadBucket of an absent bucket is NotFound: {err:?}"
        );

        let list = ok(c.list_buckets().send().await, "list buckets");
        let names: Vec<&str> = list.buckets().iter().filter_map(|b| b.name()).collect();
        assert_eq!(names, ["bkt-alpha", "bkt-beta"]);
        for b in list.buckets() {
            assert_recent(b.creation_date(), "bucket creation date");
        }

        let loc = ok(
            c.get_bucket_location().bucket("bkt-alpha").send().await,
            "get bucket location",
        );
        assert!(
            loc.location_constraint().is_none_or(|l| l.as_str().is_empty()),
            "us-east-1 has an empty LocationConstraint, got {:?}",
            loc.location_constraint()
        );
        expect_err(
            c.get_bucket_location().bucket("bkt-absent").send().await,
            404,
            Some("NoSuchBucket"),
        );

        put(c, "bkt-alpha", "only", b"x").await;
        expect_err(
            c.delete_bucket().bucket("bkt-alpha").send().await,
            409,
            Some("BucketNotEmpty"),
        );
        ok(c.head_bucket().bucket("bkt-alpha").send().await, "bucket kept");
        assert_eq!(get_bytes(c, "bkt-alpha", "only").await, b"x");

        ok(
            c.delete_object().bucket("bkt-alpha").key("only").send().await,
            "delete only",
        );
        ok(
            c.delete_bucket().bucket("bkt-alpha").send().await,
            "delete empty bucket",
        );
        expect_err(c.head_bucket().bucket("bkt-alpha").send().await, 404, None);
        expect_err(
            c.delete_bucket().bucket("bkt-alpha").send().await,
            404,
            Some("NoSuchBucket"),
        );
        expect_err(
            c.list_objects_v2().bucket("bkt-alpha").send().await,
            404,
            Some("NoSuchBucket"),
        );
        expect_err(
            c.put_object()
                .bucket("bkt-alpha")
                .key("k")
                .body(ByteStream::from_static(b"x"))
                .send()
                .await,
            404,
            Some("NoSuchBucket"),
        );
        let list = ok(c.list_buckets().send().await, "list buckets");
        let names: Vec<&str> = list.buckets().iter().filter_map(|b| b.name()).collect();
        assert_eq!(names, ["bkt-beta"]);
    })
    .await;
}
