//! Computing flexible checksums: one algorithm over a body, and the composite checksum of a
//! multipart upload. Values are base64 as on the wire; CRCs are big-endian, as S3 encodes them.

use super::ChecksumAlgorithm;

/// An incremental hasher for one flexible-checksum algorithm.
pub struct Hasher {
    algorithm: ChecksumAlgorithm,
    inner: Inner,
}

enum Inner {
    Crc(crc_fast::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn new(algorithm: ChecksumAlgorithm) -> Hasher {
        let inner = match algorithm {
            ChecksumAlgorithm::Crc32 => Inner::Crc(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc)),
            ChecksumAlgorithm::Crc32c => Inner::Crc(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi)),
            ChecksumAlgorithm::Crc64nvme => Inner::Crc(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme)),
            ChecksumAlgorithm::Sha1 => Inner::Sha1(<sha1::Sha1 as sha1::Digest>::new()),
            ChecksumAlgorithm::Sha256 => Inner::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        };
        Hasher { algorithm, inner }
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            Inner::Crc(d) => d.update(data),
            Inner::Sha1(h) => sha1::Digest::update(h, data),
            Inner::Sha256(h) => sha2::Digest::update(h, data),
        }
    }

    /// The raw digest.
    pub fn finish(self) -> Vec<u8> {
        match self.inner {
            Inner::Crc(d) => {
                let v = d.finalize();
                if self.algorithm == ChecksumAlgorithm::Crc64nvme {
                    v.to_be_bytes().to_vec()
                } else {
                    (v as u32).to_be_bytes().to_vec()
                }
            }
            Inner::Sha1(h) => sha1::Digest::finalize(h).to_vec(),
            Inner::Sha256(h) => sha2::Digest::finalize(h).to_vec(),
        }
    }

    /// The digest in base64, as a checksum header carries it.
    pub fn finish_base64(self) -> String {
        aws_smithy_types::base64::encode(self.finish())
    }
}

/// The checksum of `data`, base64.
#[cfg(test)]
pub fn checksum(algorithm: ChecksumAlgorithm, data: &[u8]) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(data);
    h.finish_base64()
}

/// The length in bytes of a raw digest.
pub fn digest_len(algorithm: ChecksumAlgorithm) -> usize {
    match algorithm {
        ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c => 4,
        ChecksumAlgorithm::Crc64nvme => 8,
        ChecksumAlgorithm::Sha1 => 20,
        ChecksumAlgorithm::Sha256 => 32,
    }
}

/// The length of a base64 checksum value (without any `-N` suffix).
pub fn base64_len(algorithm: ChecksumAlgorithm) -> usize {
    digest_len(algorithm).div_ceil(3) * 4
}

/// The composite checksum of a multipart object from its parts' checksums (base64, in part
/// order): `base64(hash(concat(raw part digests)))-<number of parts>`, as S3 computes it.
/// `None` when a part's value is not a digest of this algorithm.
pub fn composite(algorithm: ChecksumAlgorithm, parts: &[&str]) -> Option<String> {
    let mut h = Hasher::new(algorithm);
    for p in parts {
        let raw = aws_smithy_types::base64::decode(p).ok()?;
        if raw.len() != digest_len(algorithm) {
            return None;
        }
        h.update(&raw);
    }
    Some(format!("{}-{}", h.finish_base64(), parts.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The check values of each CRC ("123456789") and the digests of "abc".
        let hex = |a, d: &[u8]| hex::encode(aws_smithy_types::base64::decode(checksum(a, d)).unwrap());
        assert_eq!(hex(ChecksumAlgorithm::Crc32, b"123456789"), "cbf43926");
        assert_eq!(hex(ChecksumAlgorithm::Crc32c, b"123456789"), "e3069283");
        assert_eq!(hex(ChecksumAlgorithm::Crc64nvme, b"123456789"), "ae8b14860a799888");
        assert_eq!(
            hex(ChecksumAlgorithm::Sha1, b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(ChecksumAlgorithm::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for a in ChecksumAlgorithm::ALL {
            assert_eq!(checksum(a, b"x").len(), base64_len(a), "{a:?}");
        }
    }

    #[test]
    fn composite_of_parts() {
        let a = ChecksumAlgorithm::Crc32;
        let (p1, p2) = (b"first part".as_slice(), b"second".as_slice());
        let mut raw = Vec::new();
        raw.extend_from_slice(&crc_fast::crc32_iso_hdlc(p1).to_be_bytes());
        raw.extend_from_slice(&crc_fast::crc32_iso_hdlc(p2).to_be_bytes());
        let expected = format!("{}-2", checksum(a, &raw));
        assert_eq!(composite(a, &[&checksum(a, p1), &checksum(a, p2)]), Some(expected));
        assert_eq!(composite(a, &["not base64!"]), None);
        assert_eq!(composite(a, &[&checksum(ChecksumAlgorithm::Sha1, p1)]), None);
    }
}
