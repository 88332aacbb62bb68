//! Flexible checksums of multipart uploads through the real `perch` binary, with aws-sdk-s3,
//! against both origins: `x-amz-checksum-algorithm` (and `-type`) at CreateMultipartUpload,
//! each part's checksum in UploadPart and ListParts, the object's checksum in
//! CompleteMultipartUpload, and HEAD and GET with `ChecksumMode=ENABLED` returning it.
//!
//! moto 5.2.1 differs from S3 in ways perch passes on, accepted for the moto origin only: its
//! HeadObject gives a COMPOSITE checksum without its `-<parts>` (its GetObject has it), its
//! ListParts gives no part checksums, and its CompleteMultipartUpload compares no declared part
//! checksum.

mod common;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart};

use common::*;

const MIB: usize = 1024 * 1024;

fn crc32_raw(data: &[u8]) -> Vec<u8> {
    crc32fast::hash(data).to_be_bytes().to_vec()
}

fn sha256_raw(data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(data).to_vec()
}

/// S3's COMPOSITE checksum: `base64(hash(concat(part digests)))-<parts>`.
fn composite(hash: fn(&[u8]) -> Vec<u8>, parts: &[&[u8]]) -> String {
    let digests: Vec<u8> = parts.iter().flat_map(|p| hash(p)).collect();
    format!("{}-{}", b64(&hash(&digests)), parts.len())
}

/// Whether `got` is `expected`; for the moto origin a composite value may lack its `-<parts>`
/// (moto's HeadObject, a deviation from S3).
#[track_caller]
fn assert_checksum(got: Option<&str>, expected: &str, moto: bool, what: &str) {
    let bare = expected.split_once('-').map(|(b, _)| b);
    let matches = got == Some(expected) || (moto && got.is_some() && got == bare);
    assert!(matches, "{what}: got {got:?}, expected {expected:?}");
}

/// Uploads `parts` with their checksums (of `algorithm`) into a new upload; answers the parts
/// as CompleteMultipartUpload names them, and the upload id.
async fn upload_parts(
    c: &Client,
    bucket: &str,
    key: &str,
    algorithm: ChecksumAlgorithm,
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
        Some(&algorithm),
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
        let req = c
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(data.to_vec()));
        let (req, sum) = match algorithm {
            ChecksumAlgorithm::Sha256 => {
                let sum = b64(&sha256_raw(data));
                (req.checksum_sha256(&sum), sum)
            }
            _ => {
                let sum = b64(&crc32_raw(data));
                (req.checksum_crc32(&sum), sum)
            }
        };
        let out = ok(req.send().await, &format!("{key}: part {n}"));
        let answered = match algorithm {
            ChecksumAlgorithm::Sha256 => out.checksum_sha256(),
            _ => out.checksum_crc32(),
        };
        assert_eq!(
            answered,
            Some(sum.as_str()),
            "{key}: UploadPart answers the part's checksum"
        );
        let part = CompletedPart::builder()
            .part_number(n)
            .e_tag(out.e_tag().expect("part etag"));
        let part = match algorithm {
            ChecksumAlgorithm::Sha256 => part.checksum_sha256(sum),
            _ => part.checksum_crc32(sum),
        };
        done.push(part.build());
    }
    (id, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_uploads_keep_their_checksums() {
    for_each_origin(|gw| async move {
        let c = &gw.client;
        let moto = gw.kind == OriginKind::Moto;
        let b = "mp-checksums";
        ok(c.create_bucket().bucket(b).send().await, "create bucket");
        let p1 = pattern(5 * MIB, 1);
        let p2 = pattern(5 * MIB + 11, 2);
        let p3 = pattern(1234, 3);
        let parts: [&[u8]; 3] = [&p1, &p2, &p3];
        let whole = parts.concat();

        // CRC32, COMPOSITE (the default).
        let key = "crc32";
        let (id, done) = upload_parts(c, b, key, ChecksumAlgorithm::Crc32, None, &parts).await;
        let listed = ok(
            c.list_parts().bucket(b).key(key).upload_id(&id).send().await,
            "list parts",
        );
        for (p, d) in listed.parts().iter().zip(&done) {
            if !(moto && p.checksum_crc32().is_none()) {
                assert_eq!(
                    p.checksum_crc32(),
                    d.checksum_crc32(),
                    "ListParts: part {:?}",
                    p.part_number()
                );
            }
        }
        if !moto {
            // A part named with another part's checksum (moto compares none).
            let mut wrong = done.clone();
            wrong[2] = CompletedPart::builder()
                .part_number(3)
                .e_tag(done[2].e_tag().unwrap_or_default())
                .checksum_crc32(done[0].checksum_crc32().unwrap_or_default())
                .build();
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
        let expected = composite(crc32_raw, &parts);
        let out = ok(
            c.complete_multipart_upload()
                .bucket(b)
                .key(key)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
                .send()
                .await,
            "complete",
        );
        assert_eq!(out.e_tag(), Some(multipart_etag(&parts).as_str()));
        assert_checksum(out.checksum_crc32(), &expected, moto, "CompleteMultipartUpload");
        if !moto {
            assert_eq!(out.checksum_type(), Some(&ChecksumType::Composite));
        }
        let head = ok(
            c.head_object()
                .bucket(b)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await,
            "head",
        );
        assert_checksum(head.checksum_crc32(), &expected, moto, "HEAD");
        if !moto {
            assert_eq!(head.checksum_type(), Some(&ChecksumType::Composite));
        }
        let plain = ok(c.head_object().bucket(b).key(key).send().await, "head");
        assert_eq!(plain.checksum_crc32(), None, "not asked for, not returned");
        let get = ok(
            c.get_object()
                .bucket(b)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await,
            "get",
        );
        assert_checksum(get.checksum_crc32(), &expected, moto, "GET");
        assert_eq!(bytes_of(get.body).await, whole);

        // SHA256, COMPOSITE.
        let key = "sha256";
        let two: [&[u8]; 2] = [&p1, &p3];
        let (id, done) = upload_parts(c, b, key, ChecksumAlgorithm::Sha256, None, &two).await;
        let out = ok(
            c.complete_multipart_upload()
                .bucket(b)
                .key(key)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
                .send()
                .await,
            "complete sha256",
        );
        let expected = composite(sha256_raw, &two);
        assert_checksum(out.checksum_sha256(), &expected, moto, "CompleteMultipartUpload sha256");
        let head = ok(
            c.head_object()
                .bucket(b)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await,
            "head sha256",
        );
        assert_checksum(head.checksum_sha256(), &expected, moto, "HEAD sha256");

        // CRC32, FULL_OBJECT: the CRC32 of the whole object (which the SDK checks on GET).
        let key = "crc32-full";
        let (id, done) = upload_parts(
            c,
            b,
            key,
            ChecksumAlgorithm::Crc32,
            Some(ChecksumType::FullObject),
            &parts,
        )
        .await;
        let out = ok(
            c.complete_multipart_upload()
                .bucket(b)
                .key(key)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
                .send()
                .await,
            "complete full object",
        );
        let expected = b64(&crc32_raw(&whole));
        assert_eq!(out.checksum_crc32(), Some(expected.as_str()), "CompleteMultipartUpload");
        assert_eq!(out.checksum_type(), Some(&ChecksumType::FullObject));
        let head = ok(
            c.head_object()
                .bucket(b)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await,
            "head full object",
        );
        assert_eq!(head.checksum_crc32(), Some(expected.as_str()), "HEAD");
        assert_eq!(head.checksum_type(), Some(&ChecksumType::FullObject));
        let get = ok(
            c.get_object()
                .bucket(b)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await,
            "get full object",
        );
        assert_eq!(get.checksum_crc32(), Some(expected.as_str()), "GET");
        assert_eq!(bytes_of(get.body).await, whole);

        // The combinations S3 refuses, refused by perch whatever the origin.
        expect_err(
            c.create_multipart_upload()
                .bucket(b)
                .key("refused")
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_type(ChecksumType::FullObject)
                .send()
                .await,
            400,
            Some("InvalidRequest"),
        );
        expect_err(
            c.create_multipart_upload()
                .bucket(b)
                .key("refused")
                .checksum_type(ChecksumType::FullObject)
                .send()
                .await,
            400,
            Some("InvalidRequest"),
        );
    })
    .await;
}
