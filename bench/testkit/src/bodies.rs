//! Deterministic object bodies, and the digests S3 gives them (ETags, Content-MD5).
//!
//! The benchmarks' bodies follow from (seed, key, version, size), so whoever checks a GET knows
//! the SHA-256 it must see without keeping what was PUT; the tests' `pattern` follows from
//! (length, seed).

use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};

/// A pseudo-random body of `len` bytes that follows from `seed` (xorshift64).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The quoted hex MD5 of `data`: the ETag S3 gives a single-part object.
pub fn md5_etag(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

/// The ETag S3 gives a multipart object made of `parts`.
pub fn multipart_etag(parts: &[&[u8]]) -> String {
    let mut all = Md5::new();
    for p in parts {
        all.update(Md5::digest(p));
    }
    format!("\"{}-{}\"", hex::encode(all.finalize()), parts.len())
}

/// The base64 MD5 of `data`: its `Content-MD5` header.
pub fn content_md5(data: &[u8]) -> String {
    base64_simd::STANDARD.encode_to_string(Md5::digest(data))
}

/// An object body and its SHA-256.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Bytes,
    pub sha256: [u8; 32],
}

impl Object {
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// What a GET of an object must return, without the body itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest32 {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl From<&Object> for Digest32 {
    fn from(o: &Object) -> Self {
        Digest32 {
            len: o.len(),
            sha256: o.sha256,
        }
    }
}

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The hex SHA-256 of the empty body (what signed bodiless requests carry).
pub const EMPTY_SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// 64-bit FNV-1a.
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The body of `key` (its `version`-th write) for `seed`: `size` pseudo-random bytes.
pub fn body_bytes(seed: u64, key: &str, version: u32, size: usize) -> Bytes {
    let mut state = fnv1a(key.as_bytes()) ^ seed.rotate_left(17) ^ (u64::from(version) << 40) ^ (size as u64);
    let mut out = vec![0u8; size];
    // xorshift64* per 8-byte word, seeded through splitmix64: fast and never all-zero.
    let mut x = splitmix64(&mut state) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    Bytes::from(out)
}

/// The body of `key` for `seed` and its digest.
pub fn object(seed: u64, key: &str, version: u32, size: usize) -> Object {
    let bytes = body_bytes(seed, key, version, size);
    let sha256 = sha256(&bytes);
    Object { bytes, sha256 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_deterministic_and_distinct() {
        let a = object(1, "hot/1", 0, 4099);
        let b = object(1, "hot/1", 0, 4099);
        assert_eq!(a.bytes, b.bytes);
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(a.len(), 4099);
        assert_ne!(object(2, "hot/1", 0, 4099).sha256, a.sha256);
        assert_ne!(object(1, "hot/2", 0, 4099).sha256, a.sha256);
        assert_ne!(object(1, "hot/1", 1, 4099).sha256, a.sha256);
        assert_eq!(hex::encode(sha256(b"")), EMPTY_SHA256_HEX);
        assert!(object(1, "k", 0, 0).is_empty());
    }
}
