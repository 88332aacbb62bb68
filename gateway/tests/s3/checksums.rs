//! Flexible checksums through aws-sdk-s3, against both origins: each case of a table, one loop.
//!
//! Single-part uploads: a checksum in an aws-chunked trailer (a streamed body) or in a header (a
//! body in memory), of each algorithm, returned by PutObject and, with `ChecksumMode=ENABLED`, by
//! HEAD and GET; a wrong one refused (400 BadDigest) with nothing stored. Multipart uploads:
//! `x-amz-checksum-algorithm` (and `-type`) at CreateMultipartUpload, each part's checksum in
//! UploadPart and ListParts, the object's checksum in CompleteMultipartUpload, HEAD and GET; a
//! completion announcing another whole checksum or size (`x-amz-mp-object-size`) refused.
//!
//! moto 5.2.1 differs from S3 in ways perch passes on, accepted for the moto origin only: its
//! HeadObject gives a COMPOSITE checksum without its `-<parts>` (its GetObject has it), its
//! ListParts gives no part checksums, and its CompleteMultipartUpload compares no declared part
//! checksum.

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart};
use md5::{Digest, Md5};
use perch_testkit::bodies::{md5_etag, multipart_etag, pattern};

use crate::support::checksums::{b64, checksum_of, composite, digest, with_checksum};
use crate::support::machine;
use crate::support::sdk::{OriginKind, bytes_of, create_bucket, expect_err, for_each_origin, get_bytes, ok};

const MIB: usize = 1024 * 1024;

/// A single-part upload with a checksum.
struct PutCase {
    key: &'static str,
    /// The algorithm the request names; `None`: the SDK's default, CRC32.
    named: Option<ChecksumAlgorithm>,
    /// The algorithm whose checksum every answer carries.
    algorithm: ChecksumAlgorithm,
    body: Vec<u8>,
    /// Streamed from a file: the checksum travels as an aws-chunked trailer. Otherwise the body
    /// is in memory and the checksum travels as a header.
    streamed: bool,
}

/// A PUT whose declared digest does not match its body.
type WrongDigest = fn(PutObjectFluentBuilder) -> PutObjectFluentBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flexible_checksums() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "checksums";
        create_bucket(c, b).await;
        let body = pattern(100_000, 4);
        let explicit = |key, algorithm: ChecksumAlgorithm| PutCase {
            key,
            named: Some(algorithm.clone()),
            algorithm,
            body: body.clone(),
            streamed: false,
        };
        let cases = [
            // The SDK's default: CRC32 of a streaming body, sent as an aws-chunked trailer.
            PutCase {
                key: "trailer-crc32",
                named: None,
                algorithm: ChecksumAlgorithm::Crc32,
                body: body.clone(),
                streamed: true,
            },
            // A streaming SHA256 trailer over a body large enough to be spooled to disk.
            PutCase {
                key: "trailer-sha256-big",
                named: Some(ChecksumAlgorithm::Sha256),
                algorithm: ChecksumAlgorithm::Sha256,
                body: pattern(9 << 20, 5),
                streamed: true,
            },
            // Each algorithm named explicitly, on an in-memory body (the checksum goes as a header).
            explicit("explicit-crc32", ChecksumAlgorithm::Crc32),
            explicit("explicit-crc32c", ChecksumAlgorithm::Crc32C),
            explicit("explicit-sha1", ChecksumAlgorithm::Sha1),
            explicit("explicit-sha256", ChecksumAlgorithm::Sha256),
            explicit("explicit-crc64nvme", ChecksumAlgorithm::Crc64Nvme),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        for case in &cases {
            let key = case.key;
            let expected = b64(&digest(&case.algorithm, &case.body));
            let sent = if case.streamed {
                let file = dir.path().join(key);
                std::fs::write(&file, &case.body).expect("write body file");
                ByteStream::from_path(&file).await.expect("file body")
            } else {
                ByteStream::from(case.body.clone())
            };
            let put = ok(
                c.put_object()
                    .bucket(b)
                    .key(key)
                    .set_checksum_algorithm(case.named.clone())
                    .body(sent)
                    .send()
                    .await,
                &format!("put {key}"),
            );
            assert_eq!(
                put.e_tag(),
                Some(md5_etag(&case.body).as_str()),
                "PutObject ETag, {key}"
            );
            assert_eq!(
                checksum_of!(put, &case.algorithm),
                Some(expected.as_str()),
                "PutObject answer, {key}"
            );

            let head = ok(
                c.head_object()
                    .bucket(b)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await,
                &format!("head {key}"),
            );
            assert_eq!(
                checksum_of!(head, &case.algorithm),
                Some(expected.as_str()),
                "HeadObject, {key}"
            );
            assert_eq!(head.content_length(), Some(case.body.len() as i64), "HeadObject, {key}");
            // `aws-chunked` is how a body travelled, not how the object is encoded.
            assert_eq!(head.content_encoding(), None, "{key}: aws-chunked is not stored");
            // Without checksum mode, no checksum headers.
            let plain = ok(
                c.head_object().bucket(b).key(key).send().await,
                &format!("head {key} without checksum mode"),
            );
            assert_eq!(checksum_of!(plain, &case.algorithm), None, "{key}: not asked for");

            let got = ok(
                c.get_object()
                    .bucket(b)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await,
                &format!("get {key}"),
            );
            assert_eq!(
                checksum_of!(got, &case.algorithm),
                Some(expected.as_str()),
                "GetObject, {key}"
            );
            assert_eq!(got.content_length(), Some(case.body.len() as i64), "GetObject, {key}");
            assert_eq!(got.e_tag(), Some(md5_etag(&case.body).as_str()), "GetObject, {key}");
            assert!(bytes_of(got.body).await == case.body, "{key}: the body round-trips");
        }

        // Wrong checksums: 400 BadDigest, and nothing is stored.
        let wrong: [(&str, WrongDigest); 3] = [
            ("bad-crc32", |put| {
                put.checksum_crc32(b64(&digest(&ChecksumAlgorithm::Crc32, b"something else")))
            }),
            ("bad-sha256", |put| {
                put.checksum_sha256(b64(&digest(&ChecksumAlgorithm::Sha256, b"something else")))
            }),
            ("bad-md5", |put| put.content_md5(b64(&Md5::digest(b"something else")))),
        ];
        for (key, declare_wrong_digest) in wrong {
            let put = c.put_object().bucket(b).key(key).body(ByteStream::from(body.clone()));
            expect_err(declare_wrong_digest(put).send().await, 400, Some("BadDigest"));
            expect_err(c.get_object().bucket(b).key(key).send().await, 404, Some("NoSuchKey"));
        }
        // An existing object is not replaced by a write with a wrong checksum.
        expect_err(
            c.put_object()
                .bucket(b)
                .key("explicit-crc32")
                .checksum_crc32(b64(&digest(&ChecksumAlgorithm::Crc32, b"something else")))
                .body(ByteStream::from_static(b"short"))
                .send()
                .await,
            400,
            Some("BadDigest"),
        );
        assert_eq!(get_bytes(c, b, "explicit-crc32").await, body);
    })
    .await;
}

/// The AWS SDK sends a streaming upload with a trailer checksum and a Content-Encoding of its own
/// as two header lines, `Content-Encoding: gzip` and `Content-Encoding: aws-chunked`; S3 accepts
/// that and stores `gzip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_checksum_beside_a_content_encoding() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let b = "chunked-gzip";
        create_bucket(c, b).await;
        let body = pattern(100_000, 14);
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("body");
        std::fs::write(&file, &body).expect("write body file");
        let out = ok(
            c.put_object()
                .bucket(b)
                .key("trailer-gzip")
                .content_encoding("gzip")
                .body(ByteStream::from_path(&file).await.expect("file body"))
                .send()
                .await,
            "put with a CRC32 trailer and Content-Encoding gzip",
        );
        assert_eq!(
            out.checksum_crc32(),
            Some(b64(&digest(&ChecksumAlgorithm::Crc32, &body)).as_str())
        );
        let got = ok(
            c.get_object().bucket(b).key("trailer-gzip").send().await,
            "get trailer-gzip",
        );
        assert_eq!(got.content_encoding(), Some("gzip"));
        assert_eq!(bytes_of(got.body).await, body);
    })
    .await;
}

/// A multipart upload with checksums.
struct MultipartCase {
    key: &'static str,
    algorithm: ChecksumAlgorithm,
    /// The type named at CreateMultipartUpload; `None`: the default, COMPOSITE.
    checksum_type: Option<ChecksumType>,
    parts: Vec<Vec<u8>>,
}

/// Whether `got` is `expected`; for the moto origin a composite value may lack its `-<parts>`
/// (moto's HeadObject, a deviation from S3).
#[track_caller]
fn assert_checksum(got: Option<&str>, expected: &str, moto: bool, what: &str) {
    let bare = expected.split_once('-').map(|(b, _)| b);
    let matches = got == Some(expected) || (moto && got.is_some() && got == bare);
    assert!(matches, "{what}: got {got:?}, expected {expected:?}");
}

/// Uploads `parts` with their checksums (of `algorithm`) into a new upload; answers the upload
/// id and the parts as CompleteMultipartUpload names them.
async fn upload_parts(
    c: &Client,
    bucket: &str,
    key: &str,
    algorithm: &ChecksumAlgorithm,
    checksum_type: Option<ChecksumType>,
    parts: &[&[u8]],
) -> (String, Vec<CompletedPart>) {
    let created = ok(
        c.create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(algorithm.clone())
            .set_checksum_type(checksum_type.clone())
            .send()
            .await,
        &format!("create {key}"),
    );
    assert_eq!(
        created.checksum_algorithm(),
        Some(algorithm),
        "{key}: CreateMultipartUpload"
    );
    let expected_type = checksum_type.unwrap_or(ChecksumType::Composite);
    assert_eq!(
        created.checksum_type(),
        Some(&expected_type),
        "{key}: CreateMultipartUpload"
    );
    let id = created.upload_id().expect("upload id").to_owned();
    let mut done = Vec::new();
    for (i, data) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let sum = b64(&digest(algorithm, data));
        let req = c
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(data.to_vec()));
        let out = ok(
            with_checksum!(req, algorithm, &sum).send().await,
            &format!("{key}: part {n}"),
        );
        assert_eq!(
            checksum_of!(out, algorithm),
            Some(sum.as_str()),
            "{key}: UploadPart answers the part's checksum"
        );
        let part = CompletedPart::builder()
            .part_number(n)
            .e_tag(out.e_tag().expect("part etag"));
        done.push(with_checksum!(part, algorithm, sum).build());
    }
    (id, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_keep_their_checksums() {
    let _turn = machine::share();
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let moto = gw.kind == OriginKind::Moto;
        let b = "mp-checksums";
        create_bucket(c, b).await;
        let p1 = pattern(5 * MIB, 1);
        let p2 = pattern(5 * MIB + 11, 2);
        let p3 = pattern(1234, 3);
        let cases = [
            MultipartCase {
                key: "crc32",
                algorithm: ChecksumAlgorithm::Crc32,
                checksum_type: None,
                parts: vec![p1.clone(), p2.clone(), p3.clone()],
            },
            MultipartCase {
                key: "sha256",
                algorithm: ChecksumAlgorithm::Sha256,
                checksum_type: None,
                parts: vec![p1.clone(), p3.clone()],
            },
            // The CRC32 of the whole object (which the SDK checks on GET).
            MultipartCase {
                key: "crc32-full",
                algorithm: ChecksumAlgorithm::Crc32,
                checksum_type: Some(ChecksumType::FullObject),
                parts: vec![p1.clone(), p2.clone(), p3.clone()],
            },
        ];
        for case in &cases {
            let key = case.key;
            let algorithm = &case.algorithm;
            let parts: Vec<&[u8]> = case.parts.iter().map(Vec::as_slice).collect();
            let whole = parts.concat();
            let full_object = case.checksum_type == Some(ChecksumType::FullObject);
            let (expected, expected_type) = if full_object {
                (b64(&digest(algorithm, &whole)), ChecksumType::FullObject)
            } else {
                (composite(algorithm, &parts), ChecksumType::Composite)
            };
            let (id, done) = upload_parts(c, b, key, algorithm, case.checksum_type.clone(), &parts).await;

            let listed = ok(
                c.list_parts().bucket(b).key(key).upload_id(&id).send().await,
                &format!("{key}: list parts"),
            );
            for (p, d) in listed.parts().iter().zip(&done) {
                if !(moto && checksum_of!(p, algorithm).is_none()) {
                    assert_eq!(
                        checksum_of!(p, algorithm),
                        checksum_of!(d, algorithm),
                        "{key}: ListParts: part {:?}",
                        p.part_number()
                    );
                }
            }
            if !moto {
                // The last part named with the first part's checksum (moto compares none).
                let last = done.len() - 1;
                let mut wrong = done.clone();
                let part = CompletedPart::builder()
                    .part_number(last as i32 + 1)
                    .e_tag(done[last].e_tag().unwrap_or_default());
                wrong[last] =
                    with_checksum!(part, algorithm, checksum_of!(done[0], algorithm).unwrap_or_default()).build();
                expect_err(
                    c.complete_multipart_upload()
                        .bucket(b)
                        .key(key)
                        .upload_id(&id)
                        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(wrong)).build())
                        .send()
                        .await,
                    400,
                    Some("InvalidPart"),
                );
            }

            // A whole checksum or a size other than the object's is refused before anything is
            // written, and the upload stays: the completion below still finds it.
            let complete = || {
                c.complete_multipart_upload()
                    .bucket(b)
                    .key(key)
                    .upload_id(&id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(done.clone()))
                            .build(),
                    )
            };
            let other = b64(&digest(algorithm, b"not the object"));
            let other = if full_object {
                other
            } else {
                format!("{other}-{}", parts.len())
            };
            expect_err(
                with_checksum!(complete(), algorithm, other).send().await,
                400,
                Some("BadDigest"),
            );
            expect_err(
                complete().mpu_object_size(whole.len() as i64 + 1).send().await,
                400,
                Some("InvalidRequest"),
            );
            expect_err(c.head_object().bucket(b).key(key).send().await, 404, None);
            // The object's own checksum and size, announced: taken.
            let out = ok(
                with_checksum!(complete(), algorithm, expected.clone())
                    .mpu_object_size(whole.len() as i64)
                    .send()
                    .await,
                &format!("{key}: complete"),
            );
            assert_eq!(out.e_tag(), Some(multipart_etag(&parts).as_str()), "{key}");
            assert_checksum(
                checksum_of!(out, algorithm),
                &expected,
                moto,
                &format!("{key}: CompleteMultipartUpload"),
            );
            assert_eq!(
                out.checksum_type(),
                Some(&expected_type),
                "{key}: CompleteMultipartUpload"
            );
            let head = ok(
                c.head_object()
                    .bucket(b)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await,
                &format!("{key}: head"),
            );
            assert_checksum(checksum_of!(head, algorithm), &expected, moto, &format!("{key}: HEAD"));
            assert_eq!(head.checksum_type(), Some(&expected_type), "{key}: HEAD");
            let plain = ok(c.head_object().bucket(b).key(key).send().await, &format!("{key}: head"));
            assert_eq!(
                checksum_of!(plain, algorithm),
                None,
                "{key}: not asked for, not returned"
            );
            let got = ok(
                c.get_object()
                    .bucket(b)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await,
                &format!("{key}: get"),
            );
            assert_checksum(checksum_of!(got, algorithm), &expected, moto, &format!("{key}: GET"));
            assert!(bytes_of(got.body).await == whole, "{key}: the object is its parts");
        }

        // The combinations S3 refuses, refused by perch whatever the origin: FULL_OBJECT with
        // SHA256, and a type without an algorithm.
        for algorithm in [Some(ChecksumAlgorithm::Sha256), None] {
            expect_err(
                c.create_multipart_upload()
                    .bucket(b)
                    .key("refused")
                    .set_checksum_algorithm(algorithm)
                    .checksum_type(ChecksumType::FullObject)
                    .send()
                    .await,
                400,
                Some("InvalidRequest"),
            );
        }
    })
    .await;
}
