//! Buckets through aws-sdk-s3, against both origins: create, head, list, locate, delete; and the
//! origin's region found with `--origin-region auto` in front of services that are not Tigris.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use perch_testkit::bodies::pattern;
use perch_testkit::sdk::{moto_client, perch_client};
use perch_testkit::servers::{MotoServer, ProxyServer};

use crate::support::machine;
use crate::support::perch::{Perch, flush, moto_keys_env};
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

/// Perch in front of `endpoint` with the default `--origin-region auto` and moto's keys.
fn perch_with_auto_region(endpoint: &str) -> Perch {
    Perch::start(&["--origin", endpoint], moto_keys_env())
}

/// With `--origin-region auto` in front of an S3 service that is not Tigris, CreateBucket was
/// 400 IllegalLocationConstraintException: moto takes the signing region for the bucket's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_region_in_front_of_moto() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let perch = perch_with_auto_region(&moto.endpoint);
    let _log = perch.log_on_panic();
    let s3 = perch_client(&perch.server);
    create_bucket(&s3, "auto-region").await;
    put(&s3, "auto-region", "k", b"v").await;
    let location = ok(
        moto_client(&moto)
            .get_bucket_location()
            .bucket("auto-region")
            .send()
            .await,
        "location",
    );
    // us-east-1's location is the empty constraint.
    assert!(
        location
            .location_constraint()
            .is_none_or(|c| c.as_str().is_empty() || c.as_str() == "us-east-1"),
        "{location:?}"
    );
}

/// AWS S3's way: a request signed for another region is refused, naming the right one (the
/// origin proxy requires eu-west-1 as AWS would); perch signs for the region named, create and
/// write-back alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_region_is_the_one_the_origin_names() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &["--require-region", "eu-west-1"]);
    let perch = perch_with_auto_region(&proxy.endpoint);
    let _log = perch.log_on_panic();
    let s3 = perch_client(&perch.server);
    create_bucket(&s3, "named-region").await;
    let body = pattern(10_000, 3);
    put(&s3, "named-region", "k", &body).await;
    let direct = moto_client(&moto);
    let location = ok(
        direct.get_bucket_location().bucket("named-region").send().await,
        "location",
    );
    assert_eq!(
        location.location_constraint().map(|c| c.as_str()),
        Some("eu-west-1"),
        "the bucket was created in the region the origin named"
    );
    flush(&perch.server, Duration::from_secs(60));
    assert_eq!(get_bytes(&direct, "named-region", "k").await, body);
}

/// CreateBucket's `LocationConstraint` reaches the origin, which takes or refuses it (it was
/// dropped: the bucket was made in the origin's default region), and GetBucketLocation answers the
/// origin's location.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buckets_location_constraint_reaches_the_origin() {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let _turn = machine::share();
    let moto = MotoServer::start();
    let perch = Perch::start(
        &["--origin", &moto.endpoint, "--origin-region", "us-east-1"],
        moto_keys_env(),
    );
    let _log = perch.log_on_panic();
    let s3 = perch_client(&perch.server);
    ok(
        s3.create_bucket()
            .bucket("in-eu")
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::EuWest1)
                    .build(),
            )
            .send()
            .await,
        "create in eu-west-1",
    );
    let at_origin = ok(
        moto_client(&moto).get_bucket_location().bucket("in-eu").send().await,
        "moto: location",
    );
    assert_eq!(at_origin.location_constraint().map(|c| c.as_str()), Some("eu-west-1"));
    let through = ok(s3.get_bucket_location().bucket("in-eu").send().await, "location");
    assert_eq!(through.location_constraint().map(|c| c.as_str()), Some("eu-west-1"));
}

/// ListBuckets names the buckets' owner, as the origin names it (it named none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_buckets_names_the_owner_the_origin_names() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        create_bucket(c, "owned").await;
        let out = ok(c.list_buckets().send().await, "ListBuckets");
        let owner = out.owner().expect("an Owner");
        assert!(owner.id().is_some_and(|id| !id.is_empty()), "{owner:?}");
    })
    .await;
}
