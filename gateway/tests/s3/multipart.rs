//! Multipart uploads through aws-sdk-s3, against both origins.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use perch_testkit::bodies::{md5_etag, multipart_etag, pattern};
use perch_testkit::raw_client::BUCKET;

use crate::support::machine;
use crate::support::sdk::{
    OriginKind, bytes_of, create_bucket, expect_err, for_each_origin, get_bytes, meta, ok, upload_in_parts,
};
use crate::support::stack::Stack;

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
        // S3's Location is the object's URL (path style here, as the client addressed it).
        assert_eq!(
            completed.location(),
            Some(format!("{}/{b}/big", gw.perch.server.endpoint).as_str()),
            "the completion names the object's URL"
        );

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

/// GET and HEAD of part `n` of `bucket`/`key` answer `body`, which starts at byte `first` of an
/// object of `size` bytes uploaded in `count` parts (`None`: not uploaded in parts).
async fn expect_part(
    c: &aws_sdk_s3::Client,
    (bucket, key): (&str, &str),
    n: i32,
    body: &[u8],
    (first, size): (usize, usize),
    count: Option<i32>,
) {
    let range = format!("bytes {first}-{}/{size}", first + body.len() - 1);
    let got = ok(
        c.get_object().bucket(bucket).key(key).part_number(n).send().await,
        &format!("GET {key} part {n}"),
    );
    assert_eq!(got.content_length(), Some(body.len() as i64), "part {n}'s length");
    assert_eq!(got.content_range(), Some(range.as_str()), "part {n}'s span");
    assert_eq!(got.parts_count(), count, "part count, with part {n}");
    assert!(bytes_of(got.body).await == body, "part {n}'s bytes");
    let head = ok(
        c.head_object().bucket(bucket).key(key).part_number(n).send().await,
        &format!("HEAD {key} part {n}"),
    );
    assert_eq!(head.content_length(), Some(body.len() as i64), "HEAD part {n}'s length");
    assert_eq!(head.parts_count(), count, "HEAD part count, with part {n}");
}

/// GET and HEAD by `partNumber`, as S3 answers them: a part of an object uploaded in parts, the
/// whole object as its only part otherwise (206 with its span either way), 416 InvalidPartNumber
/// past the last part, and a number with a Range or outside 1–10,000 refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_read_by_part_number() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "parts";
        create_bucket(c, b).await;
        let one = pattern(1000, 1);
        ok(
            c.put_object()
                .bucket(b)
                .key("one")
                .body(ByteStream::from(one.clone()))
                .send()
                .await,
            "put one",
        );
        expect_part(c, (b, "one"), 1, &one, (0, one.len()), None).await;
        expect_err(
            c.get_object().bucket(b).key("one").part_number(2).send().await,
            416,
            Some("InvalidPartNumber"),
        );
        expect_err(
            c.get_object()
                .bucket(b)
                .key("one")
                .part_number(1)
                .range("bytes=0-1")
                .send()
                .await,
            400,
            Some("InvalidRequest"),
        );
        expect_err(
            c.get_object().bucket(b).key("one").part_number(10_001).send().await,
            400,
            Some("InvalidArgument"),
        );
        ok(
            c.put_object()
                .bucket(b)
                .key("empty")
                .body(ByteStream::from_static(b""))
                .send()
                .await,
            "put empty",
        );
        let got = ok(
            c.get_object().bucket(b).key("empty").part_number(1).send().await,
            "empty, part 1",
        );
        assert_eq!(got.content_length(), Some(0));

        let parts = [pattern(5 << 20, 2), pattern((5 << 20) + 3, 3), pattern(1234, 4)];
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let etag = upload_in_parts(c, b, "big", &refs).await;
        assert_eq!(etag, multipart_etag(&refs));
        let size = parts.iter().map(Vec::len).sum();
        let mut first = 0;
        for (i, part) in parts.iter().enumerate() {
            expect_part(c, (b, "big"), i as i32 + 1, part, (first, size), Some(3)).await;
            first += part.len();
        }
        expect_err(
            c.get_object().bucket(b).key("big").part_number(4).send().await,
            416,
            Some("InvalidPartNumber"),
        );
        expect_err(
            c.head_object().bucket(b).key("big").part_number(4).send().await,
            416,
            None,
        );
        // Conditions apply as to the whole object.
        let got = ok(
            c.get_object()
                .bucket(b)
                .key("big")
                .part_number(2)
                .if_match(&etag)
                .send()
                .await,
            "part 2 if it matches",
        );
        assert!(bytes_of(got.body).await == parts[1]);
        expect_err(
            c.get_object()
                .bucket(b)
                .key("big")
                .part_number(2)
                .if_match("\"0\"")
                .send()
                .await,
            412,
            Some("PreconditionFailed"),
        );
    })
    .await;
}

/// An object uploaded in parts straight into the origin: Perch learns where its parts lie from
/// the origin (a HEAD by part number of each) and serves each part's bytes.
#[test]
fn the_parts_of_an_object_written_past_perch_are_learnt_from_the_origin() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let parts = [pattern(5 << 20, 5), pattern(5 << 20, 6), pattern(777, 7)];
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let size = parts.iter().map(Vec::len).sum();
    s.rt.block_on(async {
        upload_in_parts(&s.moto_sdk(), BUCKET, "elsewhere/big", &refs).await;
        let c = s.sdk();
        for i in [2, 0, 1] {
            let first: usize = parts[..i].iter().map(Vec::len).sum();
            expect_part(
                &c,
                (BUCKET, "elsewhere/big"),
                i as i32 + 1,
                &parts[i],
                (first, size),
                Some(3),
            )
            .await;
        }
        expect_err(
            c.get_object()
                .bucket(BUCKET)
                .key("elsewhere/big")
                .part_number(4)
                .send()
                .await,
            416,
            Some("InvalidPartNumber"),
        );
    });
}

/// The part sizes of an upload completed through Perch are kept with its copy: after a restart,
/// with the origin out of reach, its parts are still served.
#[test]
fn the_part_sizes_of_an_upload_completed_through_perch_are_kept() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--origin-retry-deadline", "2s"]);
    let _log = s.log_on_panic();
    let parts = [pattern(5 << 20, 8), pattern(1 << 20, 9)];
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let size = parts.iter().map(Vec::len).sum();
    s.rt.block_on(upload_in_parts(&s.sdk(), BUCKET, "kept/big", &refs));
    s.flush(std::time::Duration::from_secs(30));
    s.restart_clean();
    s.faults(r#"{"outage": true}"#);
    s.rt.block_on(async {
        let c = s.sdk();
        expect_part(&c, (BUCKET, "kept/big"), 2, &parts[1], (parts[0].len(), size), Some(2)).await;
        expect_part(&c, (BUCKET, "kept/big"), 1, &parts[0], (0, size), Some(2)).await;
    });
}

/// An abort sent while the upload's completion is under way waits for it, and is then answered as
/// S3 answers an abort of an upload that completed: 404 NoSuchUpload. It was answered 204 while
/// the completion went on to commit the object and answer 200: the client was told its upload was
/// aborted, and the object was there and uploaded.
#[test]
fn an_abort_during_the_completion_is_no_such_upload_and_the_object_stands() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    // The completion holds for 3 s once its parts are folded into one object.
    s.env
        .push(("PERCH_PAUSE_POINT".to_owned(), "upload_folded:3000".to_owned()));
    s.restart_clean();
    let parts = [pattern(5 << 20, 21), pattern(1000, 22)];
    let c = s.sdk();
    let (upload, done) = s.rt.block_on(async {
        let upload = ok(
            c.create_multipart_upload().bucket(BUCKET).key("raced").send().await,
            "create",
        )
        .upload_id()
        .unwrap_or_default()
        .to_owned();
        let mut done = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let n = i as i32 + 1;
            let out = ok(
                c.upload_part()
                    .bucket(BUCKET)
                    .key("raced")
                    .upload_id(&upload)
                    .part_number(n)
                    .body(ByteStream::from(part.clone()))
                    .send()
                    .await,
                "part",
            );
            done.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        (upload, done)
    });
    let completion = {
        let (c, upload) = (c.clone(), upload.clone());
        s.rt.spawn(async move {
            c.complete_multipart_upload()
                .bucket(BUCKET)
                .key("raced")
                .upload_id(upload)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
                .send()
                .await
        })
    };
    s.rt.block_on(async {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        let aborted = c
            .abort_multipart_upload()
            .bucket(BUCKET)
            .key("raced")
            .upload_id(&upload)
            .send()
            .await;
        expect_err(aborted, 404, Some("NoSuchUpload"));
        let completed = completion.await.expect("completion task");
        ok(completed, "the completion");
        let whole: Vec<u8> = parts.concat();
        assert_eq!(get_bytes(&c, BUCKET, "raced").await, whole, "the completed object");
    });
}

/// A cached copy of an object uploaded in parts, replaced at the origin behind Perch's back (a
/// key the policy never revalidates): its layout cannot be learnt from the origin, which holds
/// another version, so the stale copy is dropped and the part is read from the origin's version,
/// never cut from one version with another's layout and never a 412 the client did not ask for.
#[test]
fn a_part_of_a_copy_replaced_behind_perchs_back_comes_from_the_origins_version() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let old = [pattern(5 << 20, 10), pattern(5 << 20, 11), pattern(100, 12)];
    let new = [pattern(6 << 20, 13), pattern(200, 14)];
    s.rt.block_on(async {
        let (moto, c) = (s.moto_sdk(), s.sdk());
        let refs: Vec<&[u8]> = old.iter().map(Vec::as_slice).collect();
        upload_in_parts(&moto, BUCKET, "replaced/big", &refs).await;
        let got = ok(
            c.get_object().bucket(BUCKET).key("replaced/big").send().await,
            "GET old",
        );
        assert_eq!(bytes_of(got.body).await.len(), old.iter().map(Vec::len).sum::<usize>());
        let refs: Vec<&[u8]> = new.iter().map(Vec::as_slice).collect();
        let etag = upload_in_parts(&moto, BUCKET, "replaced/big", &refs).await;
        let size = new.iter().map(Vec::len).sum();
        expect_part(&c, (BUCKET, "replaced/big"), 2, &new[1], (new[0].len(), size), Some(2)).await;
        let got = ok(
            c.get_object().bucket(BUCKET).key("replaced/big").send().await,
            "GET new",
        );
        assert_eq!(
            got.e_tag(),
            Some(etag.as_str()),
            "the whole object is the origin's version now"
        );
    });
}

/// Part 1 of an object not uploaded in parts is the whole object, and a miss of it is one origin
/// GET that fills the cache (not a range GET and then the whole object again in the background):
/// the next read of it, whole or by part, is a hit.
#[test]
fn the_one_part_of_an_object_is_one_fetch_that_fills_the_cache() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let body = pattern(3 << 20, 15);
    s.put_behind_perchs_back("single/big", &body);
    s.proxy.reset();
    s.rt.block_on(async {
        let c = s.sdk();
        let got = ok(
            c.get_object()
                .bucket(BUCKET)
                .key("single/big")
                .part_number(1)
                .send()
                .await,
            "GET part 1",
        );
        let span = format!("bytes 0-{}/{}", body.len() - 1, body.len());
        assert_eq!(got.content_range(), Some(span.as_str()));
        assert!(bytes_of(got.body).await == body, "part 1's bytes");
    });
    // Time for a fill in the background, if one had been started.
    std::thread::sleep(std::time::Duration::from_secs(1));
    s.get_expect("single/big", &body, "HIT");
    s.assert_reads(
        &[("HEAD single/big", 1), ("GET single/big", 1)],
        "part 1, then the whole",
    );
}

/// The part sizes learnt from the origin for a cached copy are kept with it: after a restart,
/// with the origin out of reach, its parts are still served.
#[test]
fn the_part_sizes_learnt_for_a_cached_copy_are_kept_with_it() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--origin-retry-deadline", "2s"]);
    let _log = s.log_on_panic();
    let parts = [pattern(5 << 20, 16), pattern(5 << 20, 17), pattern(4000, 18)];
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let size = parts.iter().map(Vec::len).sum();
    s.rt.block_on(async {
        upload_in_parts(&s.moto_sdk(), BUCKET, "learnt/big", &refs).await;
        let c = s.sdk();
        let got = ok(
            c.get_object().bucket(BUCKET).key("learnt/big").send().await,
            "GET whole",
        );
        assert_eq!(bytes_of(got.body).await.len(), size);
        expect_part(
            &c,
            (BUCKET, "learnt/big"),
            2,
            &parts[1],
            (parts[0].len(), size),
            Some(3),
        )
        .await;
    });
    s.restart_clean();
    s.faults(r#"{"outage": true}"#);
    s.rt.block_on(async {
        let c = s.sdk();
        let first = parts[0].len() + parts[1].len();
        expect_part(&c, (BUCKET, "learnt/big"), 3, &parts[2], (first, size), Some(3)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_listings_name_the_owner_and_initiator_and_head_bucket_its_region() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "owned-uploads";
        create_bucket(c, b).await;
        let created = ok(
            c.create_multipart_upload().bucket(b).key("k").send().await,
            "create upload",
        );
        let id = created.upload_id().expect("upload id").to_owned();
        // The bucket's owner as the origin's ACL names it (moto's ListBuckets names another).
        let owner = ok(c.get_bucket_acl().bucket(b).send().await, "GetBucketAcl")
            .owner()
            .and_then(|o| o.id())
            .expect("the origin names an owner")
            .to_owned();

        let parts = ok(
            c.list_parts().bucket(b).key("k").upload_id(&id).send().await,
            "ListParts",
        );
        assert_eq!(parts.owner().and_then(|o| o.id()), Some(owner.as_str()), "{parts:?}");
        assert_eq!(
            parts.initiator().and_then(|i| i.id()),
            Some(owner.as_str()),
            "{parts:?}"
        );
        assert_eq!(parts.storage_class().map(|s| s.as_str()), Some("STANDARD"));

        let uploads = ok(
            c.list_multipart_uploads().bucket(b).send().await,
            "ListMultipartUploads",
        );
        let upload = uploads.uploads().first().expect("the upload listed");
        assert_eq!(upload.owner().and_then(|o| o.id()), Some(owner.as_str()), "{upload:?}");
        assert_eq!(
            upload.initiator().and_then(|i| i.id()),
            Some(owner.as_str()),
            "{upload:?}"
        );

        let head = ok(c.head_bucket().bucket(b).send().await, "HeadBucket");
        assert_eq!(head.bucket_region(), Some("us-east-1"), "{head:?}");
    })
    .await;
}

/// ListMultipartUploads pages through one key's uploads (listed in the order they began, which
/// is not their ids' order) without losing any, groups keys by a delimiter into common prefixes,
/// and answers a bucket that does not exist with 404; DeleteObjects too, for the whole request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_listings_page_through_one_keys_uploads_and_group_by_a_delimiter() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "paged-uploads";
        create_bucket(c, b).await;
        let mut made = Vec::new();
        for key in ["k1", "k1", "k1", "k1", "k2", "dir/a", "dir/b"] {
            let created = ok(
                c.create_multipart_upload().bucket(b).key(key).send().await,
                "create upload",
            );
            made.push((key.to_owned(), created.upload_id().expect("upload id").to_owned()));
        }
        let mut seen = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        for _ in 0..20 {
            let page = ok(
                c.list_multipart_uploads()
                    .bucket(b)
                    .max_uploads(1)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send()
                    .await,
                "ListMultipartUploads, a page of 1",
            );
            for u in page.uploads() {
                seen.push((u.key().unwrap_or("").to_owned(), u.upload_id().unwrap_or("").to_owned()));
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
        let mut expected = made.clone();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen, expected,
            "every upload once, by key and then in the order they began"
        );

        let grouped = ok(
            c.list_multipart_uploads().bucket(b).delimiter("/").send().await,
            "ListMultipartUploads with a delimiter",
        );
        let prefixes: Vec<&str> = grouped.common_prefixes().iter().filter_map(|p| p.prefix()).collect();
        assert_eq!(prefixes, ["dir/"], "{grouped:?}");
        let keys: Vec<&str> = grouped.uploads().iter().filter_map(|u| u.key()).collect();
        assert_eq!(keys, ["k1", "k1", "k1", "k1", "k2"], "{grouped:?}");

        let missing = c
            .delete_objects()
            .bucket("no-such-bucket-here")
            .delete(
                aws_sdk_s3::types::Delete::builder()
                    .objects(
                        aws_sdk_s3::types::ObjectIdentifier::builder()
                            .key("k")
                            .build()
                            .expect("an object identifier"),
                    )
                    .quiet(true)
                    .build()
                    .expect("a Delete"),
            )
            .send()
            .await;
        expect_err(missing, 404, Some("NoSuchBucket"));
    })
    .await;
}
