//! The checks in front of every S3 operation: virtual-hosted vs path-style addressing, the
//! replica's refusal of writes, key rules, and recording which operation a request is.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::host::{S3Host, VirtualHost};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

use perch_policy::is_reserved;

use crate::config::{ReplicaWrites, Role};
use crate::convert;

/// `BUCKET.<domain>[:port]` is virtual-hosted; every other host is path style.
pub struct PerchHost {
    domain: String,
}

impl PerchHost {
    pub fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_ascii_lowercase(),
        }
    }

    /// The bucket a virtual-hosted `host` names, lower-case; `None` for a path-style host.
    pub fn bucket_of(&self, host: &str) -> Option<String> {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let lower = name.to_ascii_lowercase();
        lower
            .strip_suffix(self.domain.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|bucket| !bucket.is_empty())
            .map(str::to_owned)
    }

    /// An object's URL as S3 names it in an answer (CompleteMultipartUpload's `Location`): on the
    /// host the request was sent to, virtual-hosted or path style as it was, the key URL-encoded.
    pub fn object_url(&self, host: &str, bucket: &str, key: &str) -> String {
        let key = perch_cache::url_encode(key);
        match self.bucket_of(host) {
            _ if host.is_empty() => format!("/{bucket}/{key}"),
            Some(_) => format!("http://{host}/{key}"),
            None => format!("http://{host}/{bucket}/{key}"),
        }
    }
}

impl S3Host for PerchHost {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        Ok(match self.bucket_of(host) {
            Some(bucket) => VirtualHost::new(self.domain.as_str()).with_bucket(bucket),
            None => VirtualHost::new(host),
        })
    }
}

/// The one key pair clients sign with. Unlike s3s's `SimpleAuth` (which answers `NotSignedUp`),
/// an unknown access key gets S3's 403 `InvalidAccessKeyId`.
pub struct KeyPair {
    access_key_id: String,
    secret: SecretKey,
}

impl KeyPair {
    pub fn new(access_key_id: String, secret_access_key: String) -> Self {
        Self {
            access_key_id,
            secret: SecretKey::from(secret_access_key),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyPair {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.access_key_id {
            Ok(self.secret.clone())
        } else {
            Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS access key Id you provided does not exist in our records."
            ))
        }
    }
}

/// What the current request turned out to be, filled in by `AccessCheck` for logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub op: &'static str,
    pub bucket: String,
    pub key: String,
}

tokio::task_local! {
    /// Set by the server around each request; `AccessCheck::check` records into it.
    pub static REQUEST: RefCell<RequestInfo>;
}

/// Records what the current request is, for its log line and metrics.
pub fn record(op: &'static str, bucket: String, key: String) {
    let _ = REQUEST.try_with(|r| {
        let mut r = r.borrow_mut();
        r.op = op;
        r.bucket = bucket;
        r.key = key;
    });
}

/// S3 operation names as `&'static str` for metric labels. There are a few hundred names at most,
/// each leaked once.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let Ok(mut names) = NAMES.get_or_init(Default::default).lock() else {
        return "Unknown";
    };
    if let Some(n) = names.get(name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(n);
    n
}

/// Operations a replica serves: those that only read.
fn is_read_only(op: &str) -> bool {
    op.starts_with("Get") || op.starts_with("Head") || op.starts_with("List")
}

/// The answer to a client write under Perch's own prefix (`.perch/`).
pub fn reserved_error() -> s3s::S3Error {
    s3_error!(
        AccessDenied,
        "Keys under .perch/ are Perch's own (the hot set it hands to the next machine): clients cannot write them."
    )
}

/// The writes a replica keeps in its overlay: objects, whole or multipart (not copies, which
/// name a source, nor bucket changes).
fn is_overlay_write(op: &str) -> bool {
    matches!(
        op,
        "PutObject"
            | "PostObject"
            | "DeleteObject"
            | "DeleteObjects"
            | "CreateMultipartUpload"
            | "UploadPart"
            | "CompleteMultipartUpload"
            | "AbortMultipartUpload"
    )
}

/// Which requests this Perch serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// A primary: every operation.
    All,
    /// A replica with an overlay: reads, and object writes (kept in the overlay).
    Overlay,
    /// A replica refusing writes: reads only.
    None,
}

impl Writes {
    pub fn of(role: Role, replica_writes: ReplicaWrites) -> Writes {
        match (role, replica_writes) {
            (Role::Primary, _) => Writes::All,
            (Role::Replica, ReplicaWrites::Overlay) => Writes::Overlay,
            (Role::Replica, ReplicaWrites::Refuse) => Writes::None,
        }
    }

    fn allows(self, op: &str) -> bool {
        match self {
            Writes::All => true,
            Writes::Overlay => is_read_only(op) || is_overlay_write(op),
            Writes::None => is_read_only(op),
        }
    }
}

/// s3s's access hook: runs after the signature is verified and before the body is read.
pub struct AccessCheck {
    pub writes: Writes,
}

#[async_trait::async_trait]
impl S3Access for AccessCheck {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = intern(cx.s3_op().name());
        let (bucket, key): (String, String) = match cx.s3_path() {
            S3Path::Root => (String::new(), String::new()),
            S3Path::Bucket { bucket } => (bucket.to_string(), String::new()),
            S3Path::Object { bucket, key } => (bucket.to_string(), key.to_string()),
        };
        if !key.is_empty() {
            convert::check_key(&key)?;
        }
        let reserved = is_reserved(&key);
        record(op, bucket, key);
        if cx.credentials().is_none() {
            return Err(s3_error!(
                AccessDenied,
                "Anonymous access is not allowed; sign the request."
            ));
        }
        if reserved && !is_read_only(op) {
            return Err(reserved_error());
        }
        if !self.writes.allows(op) {
            return Err(s3_error!(
                AccessDenied,
                "This Perch is a read replica: {op} is refused, and nothing was written."
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let h = PerchHost::new("localhost");
        let vh = h.parse_host_header("orioledb.localhost:9000").unwrap();
        assert_eq!(vh.bucket(), Some("orioledb"));
        let vh = h.parse_host_header("localhost:9000").unwrap();
        assert_eq!(vh.bucket(), None);
        let vh = h.parse_host_header("perch.internal:9000").unwrap();
        assert_eq!(vh.bucket(), None);
        let vh = h.parse_host_header("a.b.localhost").unwrap();
        assert_eq!(vh.bucket(), Some("a.b"));
    }

    #[test]
    fn object_urls_keep_the_requests_addressing() {
        let h = PerchHost::new("localhost");
        assert_eq!(
            h.object_url("orioledb.localhost:9000", "orioledb", "wal/0001 a+b"),
            "http://orioledb.localhost:9000/wal/0001%20a%2Bb"
        );
        assert_eq!(
            h.object_url("127.0.0.1:9000", "orioledb", "data/1/x"),
            "http://127.0.0.1:9000/orioledb/data/1/x"
        );
        assert_eq!(h.object_url("localhost", "b", "k"), "http://localhost/b/k");
        // No Host (HTTP/1.0): the path alone.
        assert_eq!(h.object_url("", "b", "k"), "/b/k");
    }

    #[test]
    fn replica_reads() {
        for op in [
            "GetObject",
            "HeadObject",
            "ListObjectsV2",
            "ListBuckets",
            "HeadBucket",
            "GetBucketLocation",
        ] {
            assert!(is_read_only(op), "{op}");
        }
        for op in [
            "PutObject",
            "DeleteObject",
            "DeleteObjects",
            "CopyObject",
            "CreateMultipartUpload",
            "UploadPart",
        ] {
            assert!(!is_read_only(op), "{op}");
        }
    }

    #[test]
    fn replica_writes() {
        let overlay = Writes::of(Role::Replica, ReplicaWrites::Overlay);
        let refuse = Writes::of(Role::Replica, ReplicaWrites::Refuse);
        for op in [
            "PutObject",
            "DeleteObject",
            "DeleteObjects",
            "UploadPart",
            "CompleteMultipartUpload",
        ] {
            assert!(overlay.allows(op) && !refuse.allows(op), "{op}");
        }
        for op in [
            "CopyObject",
            "UploadPartCopy",
            "CreateBucket",
            "DeleteBucket",
            "PutBucketPolicy",
        ] {
            assert!(!overlay.allows(op) && !refuse.allows(op), "{op}");
        }
        assert!(overlay.allows("GetObject") && refuse.allows("ListObjectsV2"));
        assert!(Writes::of(Role::Primary, ReplicaWrites::Refuse).allows("CopyObject"));
    }
}
