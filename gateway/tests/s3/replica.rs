//! A replica perch serves reads of the origin a primary wrote, and refuses every write.

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use perch_testkit::bodies::pattern;
use perch_testkit::sdk::{moto_client, perch_client};
use perch_testkit::servers::MotoServer;

use crate::support::machine;
use crate::support::perch::start_perch;
use crate::support::sdk::{
    HttpResponse, all_keys, bytes_of, create_bucket, expect_err, get_bytes, ok, presigned_get, put, send_presigned,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_serves_reads_and_refuses_writes() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let m = moto_client(&moto);

    // A primary writes, then stops.
    let primary = start_perch(&tmp.path().join("primary"), Some(&moto.endpoint), &[]);
    let p = perch_client(&primary);
    create_bucket(&p, "rep").await;
    let etag_a = put(&p, "rep", "a", b"alpha").await;
    put(&p, "rep", "dir/b", b"beta").await;
    let upload_id = ok(
        p.create_multipart_upload().bucket("rep").key("pending").send().await,
        "create an upload",
    )
    .upload_id()
    .expect("id")
    .to_owned();
    let part_etag = ok(
        p.upload_part()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .part_number(1)
            .body(ByteStream::from_static(b"first part"))
            .send()
            .await,
        "upload a part",
    )
    .e_tag()
    .expect("etag")
    .to_owned();
    let status = primary.terminate(Duration::from_secs(30));
    assert!(status.success(), "primary exited with {status}");

    let replica = start_perch(
        &tmp.path().join("replica"),
        Some(&moto.endpoint),
        &["--role", "replica"],
    );
    let r = perch_client(&replica);

    // Reads.
    assert_eq!(get_bytes(&r, "rep", "a").await, b"alpha");
    let head = ok(r.head_object().bucket("rep").key("dir/b").send().await, "head dir/b");
    assert_eq!(head.content_length(), Some(4));
    assert_eq!(all_keys(&r, "rep", None).await, ["a", "dir/b"]);
    let v1 = ok(r.list_objects().bucket("rep").delimiter("/").send().await, "list v1");
    let keys: Vec<&str> = v1.contents().iter().filter_map(|o| o.key()).collect();
    let prefixes: Vec<&str> = v1.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
    assert_eq!(keys, ["a"]);
    assert_eq!(prefixes, ["dir/"]);
    let versions = ok(r.list_object_versions().bucket("rep").send().await, "versions");
    assert_eq!(versions.versions().len(), 2);
    let buckets = ok(r.list_buckets().send().await, "list buckets");
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["rep"]);
    ok(r.head_bucket().bucket("rep").send().await, "head bucket");
    ok(r.get_bucket_location().bucket("rep").send().await, "bucket location");
    // Multipart uploads are staged in the Perch that received them (docs/write-back.md): the
    // primary's upload in progress is not the replica's to list.
    let uploads = ok(r.list_multipart_uploads().bucket("rep").send().await, "uploads");
    assert_eq!(uploads.uploads().len(), 0);
    expect_err(
        r.list_parts()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .send()
            .await,
        404,
        Some("NoSuchUpload"),
    );
    let _ = part_etag;
    let req = presigned_get(&r, "rep", "a", Duration::from_secs(60)).await;
    let answer = send_presigned(&req, &[], b"");
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"alpha"[..]));

    // Writes.
    #[track_caller]
    fn refused<T: std::fmt::Debug, E>(result: Result<T, aws_sdk_s3::error::SdkError<E, HttpResponse>>, what: &str)
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = expect_err(result, 403, Some("AccessDenied"));
        let message = aws_sdk_s3::error::ProvideErrorMetadata::message(&err).unwrap_or_default();
        assert!(
            message.to_ascii_lowercase().contains("replica"),
            "{what}: the refusal says why: {message:?}"
        );
    }
    refused(
        r.put_object()
            .bucket("rep")
            .key("new")
            .body(ByteStream::from_static(b"new"))
            .send()
            .await,
        "PutObject",
    );
    refused(
        r.put_object()
            .bucket("rep")
            .key("a")
            .body(ByteStream::from(pattern(100_000, 9)))
            .send()
            .await,
        "PutObject over an existing key",
    );
    refused(r.delete_object().bucket("rep").key("a").send().await, "DeleteObject");
    refused(
        r.delete_objects()
            .bucket("rep")
            .delete(
                Delete::builder()
                    .objects(ObjectIdentifier::builder().key("a").build().expect("id"))
                    .objects(ObjectIdentifier::builder().key("dir/b").build().expect("id"))
                    .build()
                    .expect("delete"),
            )
            .send()
            .await,
        "DeleteObjects",
    );
    refused(
        r.copy_object()
            .bucket("rep")
            .key("copy")
            .copy_source("rep/a")
            .send()
            .await,
        "CopyObject",
    );
    refused(
        r.create_multipart_upload().bucket("rep").key("mp").send().await,
        "CreateMultipartUpload",
    );
    refused(
        r.upload_part()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .part_number(2)
            .body(ByteStream::from_static(b"part"))
            .send()
            .await,
        "UploadPart",
    );
    refused(
        r.complete_multipart_upload()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(&part_etag).build())
                    .build(),
            )
            .send()
            .await,
        "CompleteMultipartUpload",
    );
    refused(
        r.abort_multipart_upload()
            .bucket("rep")
            .key("pending")
            .upload_id(&upload_id)
            .send()
            .await,
        "AbortMultipartUpload",
    );
    refused(r.create_bucket().bucket("other").send().await, "CreateBucket");
    refused(r.delete_bucket().bucket("rep").send().await, "DeleteBucket");
    // Reads still work after the refusals (the connection was not left in a bad state).
    assert_eq!(get_bytes(&r, "rep", "a").await, b"alpha");

    // Nothing changed at the origin.
    let buckets = ok(m.list_buckets().send().await, "moto: list buckets");
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["rep"]);
    assert_eq!(all_keys(&m, "rep", None).await, ["a", "dir/b"]);
    let got = ok(m.get_object().bucket("rep").key("a").send().await, "moto: get a");
    assert_eq!(got.e_tag(), Some(etag_a.as_str()));
    assert_eq!(bytes_of(got.body).await, b"alpha");
    assert_eq!(get_bytes(&m, "rep", "dir/b").await, b"beta");
    // The primary staged its multipart upload locally: the origin has none.
    let uploads = ok(m.list_multipart_uploads().bucket("rep").send().await, "moto: uploads");
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}
