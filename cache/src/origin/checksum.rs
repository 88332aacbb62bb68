//! Flexible checksums: the values S3 keeps per object, the algorithms and types, one algorithm
//! computed over a body, and the composite checksum of a multipart upload. Values are base64 as on
//! the wire; CRCs are big-endian, as S3 encodes them.

use serde::{Deserialize, Serialize};

use super::{OriginError, OriginResult};

/// The flexible checksums S3 keeps per object, base64 as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    pub crc32: Option<String>,
    pub crc32c: Option<String>,
    pub crc64nvme: Option<String>,
    pub sha1: Option<String>,
    pub sha256: Option<String>,
}

impl Checksums {
    pub fn is_empty(&self) -> bool {
        self.crc32.is_none()
            && self.crc32c.is_none()
            && self.crc64nvme.is_none()
            && self.sha1.is_none()
            && self.sha256.is_none()
    }

    /// Only `value`, as the checksum of `algorithm`.
    pub fn only(algorithm: ChecksumAlgorithm, value: String) -> Checksums {
        let mut c = Checksums::default();
        *c.slot(algorithm) = Some(value);
        c
    }

    /// The value of one algorithm.
    pub fn get(&self, algorithm: ChecksumAlgorithm) -> Option<&str> {
        match algorithm {
            ChecksumAlgorithm::Crc32 => self.crc32.as_deref(),
            ChecksumAlgorithm::Crc32c => self.crc32c.as_deref(),
            ChecksumAlgorithm::Crc64nvme => self.crc64nvme.as_deref(),
            ChecksumAlgorithm::Sha1 => self.sha1.as_deref(),
            ChecksumAlgorithm::Sha256 => self.sha256.as_deref(),
        }
    }

    /// The field of one algorithm.
    pub fn slot(&mut self, algorithm: ChecksumAlgorithm) -> &mut Option<String> {
        match algorithm {
            ChecksumAlgorithm::Crc32 => &mut self.crc32,
            ChecksumAlgorithm::Crc32c => &mut self.crc32c,
            ChecksumAlgorithm::Crc64nvme => &mut self.crc64nvme,
            ChecksumAlgorithm::Sha1 => &mut self.sha1,
            ChecksumAlgorithm::Sha256 => &mut self.sha256,
        }
    }

    /// The checksum a whole body can be checked against, with its value: a FULL_OBJECT one, the
    /// cheapest first (the CRCs, then SHA-256, in hardware where the CPU has it, then SHA-1).
    pub fn full_object(&self) -> Option<(ChecksumAlgorithm, &str)> {
        if self.checksum_type() != Some(ChecksumType::FullObject) {
            return None;
        }
        [
            ChecksumAlgorithm::Crc64nvme,
            ChecksumAlgorithm::Crc32c,
            ChecksumAlgorithm::Crc32,
            ChecksumAlgorithm::Sha256,
            ChecksumAlgorithm::Sha1,
        ]
        .into_iter()
        .find_map(|a| self.get(a).map(|v| (a, v)))
    }

    /// The algorithm and type of the checksum an object with these keeps, as listings name it.
    pub fn kept(&self) -> Option<(ChecksumAlgorithm, ChecksumType)> {
        Some((self.iter().next()?.0, self.checksum_type()?))
    }

    /// The algorithms that have a value, with it.
    pub fn iter(&self) -> impl Iterator<Item = (ChecksumAlgorithm, &str)> {
        ChecksumAlgorithm::ALL
            .into_iter()
            .filter_map(|a| self.get(a).map(|v| (a, v)))
    }

    /// `x-amz-checksum-type` of an object with these checksums: COMPOSITE when a value ends in the
    /// `-<parts>` of a composite multipart checksum, FULL_OBJECT otherwise; `None` without checksums.
    /// (moto 5.2 answers HeadObject with a composite checksum without its `-<parts>`; an object of an
    /// S3Origin over moto is then reported FULL_OBJECT.)
    pub fn checksum_type(&self) -> Option<ChecksumType> {
        let composite = |v: &str| {
            v.rsplit_once('-')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        };
        let mut values = self.iter().map(|(_, v)| v).peekable();
        values.peek()?;
        if values.any(composite) {
            Some(ChecksumType::Composite)
        } else {
            Some(ChecksumType::FullObject)
        }
    }
}

/// A flexible-checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 5] = [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Crc64nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ];

    /// The name S3 gives it (`x-amz-checksum-algorithm`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Crc64nvme => "CRC64NVME",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
        }
    }

    /// The header that carries its value (`x-amz-checksum-crc32`, …).
    pub fn header_name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "x-amz-checksum-crc32",
            ChecksumAlgorithm::Crc32c => "x-amz-checksum-crc32c",
            ChecksumAlgorithm::Crc64nvme => "x-amz-checksum-crc64nvme",
            ChecksumAlgorithm::Sha1 => "x-amz-checksum-sha1",
            ChecksumAlgorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// An algorithm by its S3 name, in any case.
    pub fn parse(name: &str) -> Option<ChecksumAlgorithm> {
        Self::ALL.into_iter().find(|a| a.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether a multipart upload can keep a FULL_OBJECT checksum of this algorithm (a CRC, which
    /// combines), and whether it can keep a COMPOSITE one (not CRC64NVME).
    fn allows(self, kind: ChecksumType) -> bool {
        match kind {
            ChecksumType::FullObject => !matches!(self, ChecksumAlgorithm::Sha1 | ChecksumAlgorithm::Sha256),
            ChecksumType::Composite => self != ChecksumAlgorithm::Crc64nvme,
        }
    }
}

/// How a multipart object's checksum derives from its parts (`x-amz-checksum-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChecksumType {
    /// The checksum of the parts' checksums, with `-<parts>` after it.
    Composite,
    /// The checksum of the whole object, as if it had been uploaded in one piece.
    FullObject,
}

impl ChecksumType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumType::Composite => "COMPOSITE",
            ChecksumType::FullObject => "FULL_OBJECT",
        }
    }

    /// A type by its S3 name, in any case.
    pub fn parse(name: &str) -> Option<ChecksumType> {
        [ChecksumType::Composite, ChecksumType::FullObject]
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }
}

/// The flexible checksum a multipart upload keeps for its object, chosen when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipartChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub checksum_type: ChecksumType,
}

impl MultipartChecksum {
    /// `algorithm` with the type asked for, or S3's default for it (FULL_OBJECT for CRC64NVME,
    /// COMPOSITE for the others). The combinations S3 refuses are 400 InvalidRequest.
    pub fn new(algorithm: ChecksumAlgorithm, checksum_type: Option<ChecksumType>) -> OriginResult<MultipartChecksum> {
        let checksum_type = checksum_type.unwrap_or(match algorithm {
            ChecksumAlgorithm::Crc64nvme => ChecksumType::FullObject,
            _ => ChecksumType::Composite,
        });
        let c = MultipartChecksum {
            algorithm,
            checksum_type,
        };
        c.validate()?;
        Ok(c)
    }

    /// Refuses the combinations S3 refuses (SHA1/SHA256 FULL_OBJECT, CRC64NVME COMPOSITE).
    pub fn validate(&self) -> OriginResult<()> {
        if self.algorithm.allows(self.checksum_type) {
            Ok(())
        } else {
            Err(OriginError::rejected(
                400,
                "InvalidRequest",
                format!(
                    "The {} checksum type cannot be used with the {} checksum algorithm.",
                    self.checksum_type.as_str(),
                    self.algorithm.as_str().to_ascii_lowercase()
                ),
            ))
        }
    }
}

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
