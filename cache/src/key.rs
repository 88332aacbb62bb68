//! `ObjectKey`: a bucket and a key as one name, `bucket NUL key`, the key of the index and of every
//! per-object map (bucket names cannot hold NUL, and Perch refuses keys that do); and S3's
//! percent-encoding of keys.

use std::fmt;

/// Percent-encodes a key as S3 does in a request path, an `x-amz-copy-source` or an
/// `encoding-type=url` listing: every byte but the unreserved ones and `/`.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjectKey(String);

impl ObjectKey {
    pub(crate) fn new(bucket: &str, key: &str) -> ObjectKey {
        let mut k = String::with_capacity(bucket.len() + 1 + key.len());
        k.push_str(bucket);
        k.push('\0');
        k.push_str(key);
        ObjectKey(k)
    }

    /// Where the keys of `bucket` that start with `prefix` begin, in key order.
    pub(crate) fn prefix(bucket: &str, prefix: &str) -> ObjectKey {
        ObjectKey::new(bucket, prefix)
    }

    /// An index key as stored; `None` if it is not one.
    pub(crate) fn from_stored(bytes: &[u8]) -> Option<ObjectKey> {
        let s = std::str::from_utf8(bytes).ok()?;
        s.contains('\0').then(|| ObjectKey(s.to_owned()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub(crate) fn bucket(&self) -> &str {
        self.0.split_once('\0').map_or(&self.0, |(b, _)| b)
    }

    pub(crate) fn key(&self) -> &str {
        self.0.split_once('\0').map_or("", |(_, k)| k)
    }

    /// Whether this key starts with `prefix` (a key made by `ObjectKey::prefix`).
    pub(crate) fn starts_with(&self, prefix: &ObjectKey) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// A stable 64-bit hash: the stripe of its key lock, and the eviction order's key hash.
    pub(crate) fn hash64(&self) -> u64 {
        hash_of(&self.0)
    }
}

/// The hash `ObjectKey::hash64` gives the key stored as `s`.
pub(crate) fn hash_of(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bucket(), self.key())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.bucket(), self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_as_s3_and_the_sdk_encode_them() {
        assert_eq!(url_encode("data/1/base/16384/2619"), "data/1/base/16384/2619");
        assert_eq!(url_encode("a b+c%d"), "a%20b%2Bc%25d");
        assert_eq!(url_encode("é~_.-"), "%C3%A9~_.-");
        assert_eq!(url_encode("q?x=1&y#z"), "q%3Fx%3D1%26y%23z");
        assert_eq!(url_encode("a b/ü+x"), "a%20b/%C3%BC%2Bx");
    }

    #[test]
    fn parts_order_and_prefixes() {
        let k = ObjectKey::new("b", "data/1/x");
        assert_eq!((k.bucket(), k.key()), ("b", "data/1/x"));
        assert!(k.starts_with(&ObjectKey::prefix("b", "data/")));
        assert!(!ObjectKey::new("bb", "a").starts_with(&ObjectKey::prefix("b", "")));
        // A bucket's keys sort together, before the next bucket's.
        assert!(ObjectKey::new("b", "zzz") < ObjectKey::new("b0", ""));
        assert_eq!(ObjectKey::from_stored(k.as_bytes()), Some(k.clone()));
        assert_eq!(ObjectKey::from_stored(b"no-nul"), None);
        assert_eq!(k.hash64(), hash_of("b\0data/1/x"));
    }
}
