//! Checksums computed independently of s3s and of the SDK, in S3's base64 form.

use aws_sdk_s3::types::ChecksumAlgorithm;

/// Standard base64, as S3's checksum headers carry digests.
pub fn b64(bytes: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(bytes)
}

fn crc32(data: &[u8]) -> Vec<u8> {
    crc32fast::hash(data).to_be_bytes().to_vec()
}

fn crc32c(data: &[u8]) -> Vec<u8> {
    (crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32)
        .to_be_bytes()
        .to_vec()
}

fn crc64nvme(data: &[u8]) -> Vec<u8> {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
        .to_be_bytes()
        .to_vec()
}

fn sha1(data: &[u8]) -> Vec<u8> {
    <sha1::Sha1 as sha1::Digest>::digest(data).to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    <sha2::Sha256 as sha2::Digest>::digest(data).to_vec()
}

/// S3's COMPOSITE checksum of a multipart object: `base64(hash(concat(part digests)))-<parts>`.
pub fn composite(algorithm: &ChecksumAlgorithm, parts: &[&[u8]]) -> String {
    let digests: Vec<u8> = parts.iter().flat_map(|p| digest(algorithm, p)).collect();
    format!("{}-{}", b64(&digest(algorithm, &digests)), parts.len())
}

/// The digest of `data` by `algorithm`, as its checksum header carries it (before base64).
pub fn digest(algorithm: &ChecksumAlgorithm, data: &[u8]) -> Vec<u8> {
    match algorithm {
        ChecksumAlgorithm::Crc32 => crc32(data),
        ChecksumAlgorithm::Crc32C => crc32c(data),
        ChecksumAlgorithm::Sha1 => sha1(data),
        ChecksumAlgorithm::Sha256 => sha256(data),
        ChecksumAlgorithm::Crc64Nvme => crc64nvme(data),
        other => panic!("no digest for {other:?}"),
    }
}

/// The checksum of `algorithm` in an SDK answer or part: PutObject's, HeadObject's, GetObject's,
/// UploadPart's and CompleteMultipartUpload's outputs, a ListParts `Part` and a `CompletedPart`
/// all have the same five getters.
macro_rules! checksum_of {
    ($answer:expr, $algorithm:expr) => {
        match $algorithm {
            aws_sdk_s3::types::ChecksumAlgorithm::Crc32 => $answer.checksum_crc32(),
            aws_sdk_s3::types::ChecksumAlgorithm::Crc32C => $answer.checksum_crc32_c(),
            aws_sdk_s3::types::ChecksumAlgorithm::Sha1 => $answer.checksum_sha1(),
            aws_sdk_s3::types::ChecksumAlgorithm::Sha256 => $answer.checksum_sha256(),
            aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme => $answer.checksum_crc64_nvme(),
            other => panic!("no checksum getter for {other:?}"),
        }
    };
}

/// Declares `value` as the checksum of `algorithm` on an SDK request builder (UploadPart,
/// PutObject) or a `CompletedPart` builder: they have the same five setters.
macro_rules! with_checksum {
    ($builder:expr, $algorithm:expr, $value:expr) => {
        match $algorithm {
            aws_sdk_s3::types::ChecksumAlgorithm::Crc32 => $builder.checksum_crc32($value),
            aws_sdk_s3::types::ChecksumAlgorithm::Crc32C => $builder.checksum_crc32_c($value),
            aws_sdk_s3::types::ChecksumAlgorithm::Sha1 => $builder.checksum_sha1($value),
            aws_sdk_s3::types::ChecksumAlgorithm::Sha256 => $builder.checksum_sha256($value),
            aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme => $builder.checksum_crc64_nvme($value),
            other => panic!("no checksum setter for {other:?}"),
        }
    };
}

pub(crate) use {checksum_of, with_checksum};
