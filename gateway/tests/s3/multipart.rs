//! Multipart uploads through aws-sdk-s3, against both origins.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use perch_testkit::bodies::{md5_etag, multipart_etag, pattern};

use crate::support::machine;
use crate::support::sdk::{OriginKind, bytes_of, create_bucket, expect_err, for_each_origin, get_bytes, meta, ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "multipart";
        create_bucket(c, b).await;
        let part1 = pattern(5 << 20, 6);
        let part2 = pattern(1234, 7);

        let created = ok(
            c.create_multipart_upload()
                .bucket(b)
                .key("big")
                .content_type("application/x-big")
                .metadata("origin", "multipart")
                .send()
                .await,
            "create upload",
        );
        assert_eq!(created.bucket(), Some(b));
        assert_eq!(created.key(), Some("big"));
        let id = created.upload_id().expect("upload id").to_owned();

        let mut etags = Vec::new();
        for (n, part) in [(1, &part1), (2, &part2)] {
            let out = ok(
                c.upload_part()
                    .bucket(b)
                    .key("big")
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(part.clone()))
                    .send()
                    .await,
                &format!("upload part {n}"),
            );
            assert_eq!(out.e_tag(), Some(md5_etag(part).as_str()), "part {n} ETag");
            etags.push(out.e_tag().expect("etag").to_owned());
        }

        let parts = ok(
            c.list_parts().bucket(b).key("big").upload_id(&id).send().await,
            "list parts",
        );
        let listed: Vec<(i32, String, i64)> = parts
            .parts()
            .iter()
            .map(|p| {
                (
                    p.part_number().expect("part number"),
                    p.e_tag().expect("etag").to_owned(),
                    p.size().expect("size"),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                (1, etags[0].clone(), part1.len() as i64),
                (2, etags[1].clone(), part2.len() as i64)
            ]
        );
        assert_eq!(parts.is_truncated(), Some(false));
        // ListParts pages.
        let page = ok(
            c.list_parts()
                .bucket(b)
                .key("big")
                .upload_id(&id)
                .max_parts(1)
                .send()
                .await,
            "list parts, page 1",
        );
        let numbers: Vec<Option<i32>> = page.parts().iter().map(|p| p.part_number()).collect();
        assert_eq!(numbers, [Some(1)]);
        assert_eq!(page.is_truncated(), Some(true));
        let marker = page.next_part_number_marker().expect("NextPartNumberMarker").to_owned();
        assert_eq!(marker, "1");
        let page = ok(
            c.list_parts()
                .bucket(b)
                .key("big")
                .upload_id(&id)
                .max_parts(1)
                .part_number_marker(marker)
                .send()
                .await,
            "list parts, page 2",
        );
        let numbers: Vec<Option<i32>> = page.parts().iter().map(|p| p.part_number()).collect();
        assert_eq!(numbers, [Some(2)]);
        assert_eq!(page.is_truncated(), Some(false));

        // ListMultipartUploads pages, with a second upload in progress.
        let other = ok(
            c.create_multipart_upload().bucket(b).key("another").send().await,
            "create another upload",
        )
        .upload_id()
        .expect("id")
        .to_owned();
        let page = ok(
            c.list_multipart_uploads().bucket(b).max_uploads(1).send().await,
            "uploads, page 1",
        );
        let found: Vec<(&str, &str)> = page
            .uploads()
            .iter()
            .map(|u| (u.key().unwrap_or_default(), u.upload_id().unwrap_or_default()))
            .collect();
        assert_eq!(found, [("another", other.as_str())]);
        assert_eq!(page.is_truncated(), Some(true));
        let page = ok(
            c.list_multipart_uploads()
                .bucket(b)
                .max_uploads(1)
                .key_marker(page.next_key_marker().expect("NextKeyMarker"))
                .upload_id_marker(page.next_upload_id_marker().expect("NextUploadIdMarker"))
                .send()
                .await,
            "uploads, page 2",
        );
        let found: Vec<(&str, &str)> = page
            .uploads()
            .iter()
            .map(|u| (u.key().unwrap_or_default(), u.upload_id().unwrap_or_default()))
            .collect();
        assert_eq!(found, [("big", id.as_str())]);
        assert_eq!(page.is_truncated(), Some(false));
        let page = ok(
            c.list_multipart_uploads().bucket(b).prefix("an").send().await,
            "uploads by prefix",
        );
        assert_eq!(page.uploads().len(), 1);
        assert_eq!(page.uploads()[0].key(), Some("another"));
        ok(
            c.abort_multipart_upload()
                .bucket(b)
                .key("another")
                .upload_id(&other)
                .send()
                .await,
            "abort another",
        );

        let uploads = ok(c.list_multipart_uploads().bucket(b).send().await, "list uploads");
        let found: Vec<(&str, &str)> = uploads
            .uploads()
            .iter()
            .map(|u| (u.key().unwrap_or_default(), u.upload_id().unwrap_or_default()))
            .collect();
        assert_eq!(found, [("big", id.as_str())]);

        let completed = ok(
            c.complete_multipart_upload()
                .bucket(b)
                .key("big")
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .parts(CompletedPart::builder().part_number(1).e_tag(&etags[0]).build())
                        .parts(CompletedPart::builder().part_number(2).e_tag(&etags[1]).build())
                        .build(),
                )
                .send()
                .await,
            "complete",
        );
        let expected_etag = multipart_etag(&[&part1, &part2]);
        assert!(expected_etag.ends_with("-2\""));
        assert_eq!(completed.e_tag(), Some(expected_etag.as_str()));

        let got = ok(c.get_object().bucket(b).key("big").send().await, "get big");
        assert_eq!(got.e_tag(), Some(expected_etag.as_str()));
        assert_eq!(got.content_length(), Some((part1.len() + part2.len()) as i64));
        assert_eq!(got.content_type(), Some("application/x-big"));
        assert_eq!(got.metadata(), Some(&meta(&[("origin", "multipart")])));
        let body = bytes_of(got.body).await;
        assert!(body[..part1.len()] == part1[..], "part 1 comes first");
        assert!(body[part1.len()..] == part2[..], "part 2 follows");
        let got = ok(
            c.get_object()
                .bucket(b)
                .key("big")
                .range(format!("bytes={}-{}", part1.len() - 2, part1.len() + 1))
                .send()
                .await,
            "a range across the parts",
        );
        assert_eq!(
            bytes_of(got.body).await,
            [&part1[part1.len() - 2..], &part2[..2]].concat()
        );
        let uploads = ok(c.list_multipart_uploads().bucket(b).send().await, "list uploads");
        assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
        expect_err(
            c.list_parts().bucket(b).key("big").upload_id(&id).send().await,
            404,
            Some("NoSuchUpload"),
        );

        // Abort.
        let id = ok(
            c.create_multipart_upload().bucket(b).key("aborted").send().await,
            "create upload 2",
        )
        .upload_id()
        .expect("id")
        .to_owned();
        ok(
            c.upload_part()
                .bucket(b)
                .key("aborted")
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from_static(b"abc"))
                .send()
                .await,
            "upload a part to abort",
        );
        ok(
            c.abort_multipart_upload()
                .bucket(b)
                .key("aborted")
                .upload_id(&id)
                .send()
                .await,
            "abort",
        );
        expect_err(
            c.list_parts().bucket(b).key("aborted").upload_id(&id).send().await,
            404,
            Some("NoSuchUpload"),
        );
        expect_err(
            c.get_object().bucket(b).key("aborted").send().await,
            404,
            Some("NoSuchKey"),
        );
        let uploads = ok(c.list_multipart_uploads().bucket(b).send().await, "list uploads");
        assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());

        // A wrong part ETag.
        let id = ok(
            c.create_multipart_upload().bucket(b).key("wrong").send().await,
            "create upload 3",
        )
        .upload_id()
        .expect("id")
        .to_owned();
        ok(
            c.upload_part()
                .bucket(b)
                .key("wrong")
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from_static(b"abc"))
                .send()
                .await,
            "upload a part",
        );
        expect_err(
            c.complete_multipart_upload()
                .bucket(b)
                .key("wrong")
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .parts(
                            CompletedPart::builder()
                                .part_number(1)
                                .e_tag("\"00000000000000000000000000000000\"")
                                .build(),
                        )
                        .build(),
                )
                .send()
                .await,
            400,
            Some("InvalidPart"),
        );
        expect_err(
            c.get_object().bucket(b).key("wrong").send().await,
            404,
            Some("NoSuchKey"),
        );
        // The upload is still there to complete properly.
        let completed = ok(
            c.complete_multipart_upload()
                .bucket(b)
                .key("wrong")
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .parts(CompletedPart::builder().part_number(1).e_tag(md5_etag(b"abc")).build())
                        .build(),
                )
                .send()
                .await,
            "complete after a wrong ETag",
        );
        assert_eq!(completed.e_tag(), Some(multipart_etag(&[b"abc"]).as_str()));
        assert_eq!(get_bytes(c, b, "wrong").await, b"abc");

        // Unknown upload ids.
        expect_err(
            c.abort_multipart_upload()
                .bucket(b)
                .key("big")
                .upload_id("no-such-upload")
                .send()
                .await,
            404,
            Some("NoSuchUpload"),
        );
        // moto answers UploadPart to an unknown upload with 500 (which perch rightly retries
        // until its deadline), so this is checked on the directory origin only.
        if gw.kind == OriginKind::Dir {
            expect_err(
                c.upload_part()
                    .bucket(b)
                    .key("big")
                    .upload_id("no-such-upload")
                    .part_number(1)
                    .body(ByteStream::from_static(b"x"))
                    .send()
                    .await,
                404,
                Some("NoSuchUpload"),
            );
        }
    })
    .await;
}
