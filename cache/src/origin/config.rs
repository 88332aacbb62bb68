//! Bucket configurations (ACL, policy, versioning, lifecycle, ownership controls, CORS, tagging)
//! and object ACLs as the origin keeps them: S3's own documents, passed through unchanged.

use bytes::Bytes;

/// A configuration sub-resource (`?acl`, `?policy`, ...). Only `Acl` also exists on objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subresource {
    Acl,
    Policy,
    Versioning,
    Lifecycle,
    OwnershipControls,
    Cors,
    Tagging,
}

impl Subresource {
    pub const ALL: [Subresource; 7] = [
        Subresource::Acl,
        Subresource::Policy,
        Subresource::Versioning,
        Subresource::Lifecycle,
        Subresource::OwnershipControls,
        Subresource::Cors,
        Subresource::Tagging,
    ];

    /// The query parameter that names it.
    pub fn query(self) -> &'static str {
        match self {
            Subresource::Acl => "acl",
            Subresource::Policy => "policy",
            Subresource::Versioning => "versioning",
            Subresource::Lifecycle => "lifecycle",
            Subresource::OwnershipControls => "ownershipControls",
            Subresource::Cors => "cors",
            Subresource::Tagging => "tagging",
        }
    }

    /// Whether a change of it must wait until the origin holds the bucket's pending writes: those
    /// that decide whether the writes are allowed (ACL, policy, ownership) or what becomes of them
    /// (versioning, lifecycle). CORS and tagging concern neither.
    pub fn orders_writes(self) -> bool {
        !matches!(self, Subresource::Cors | Subresource::Tagging)
    }

    /// The headers of its requests and answers that belong to it (lower case).
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            Subresource::Acl => &[
                "x-amz-acl",
                "x-amz-grant-full-control",
                "x-amz-grant-read",
                "x-amz-grant-read-acp",
                "x-amz-grant-write",
                "x-amz-grant-write-acp",
            ],
            Subresource::Policy => &["x-amz-confirm-remove-self-bucket-access"],
            Subresource::Versioning => &["x-amz-mfa"],
            Subresource::Lifecycle => &["x-amz-transition-default-minimum-object-size"],
            Subresource::OwnershipControls | Subresource::Cors | Subresource::Tagging => &[],
        }
    }
}

/// A configuration as S3 defines it: its document (XML; JSON for a bucket policy; empty when it
/// is given by headers only, as a canned ACL) and the headers of `Subresource::headers` that came
/// with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    pub body: Bytes,
    pub headers: Vec<(String, String)>,
}

/// The tags of an object that has none, as S3 answers GetObjectTagging for it.
pub const NO_TAGS: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Tagging xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><TagSet></TagSet></Tagging>";

impl Document {
    pub fn new(body: impl Into<Bytes>) -> Document {
        Document {
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The value of header `name` (lower case), if it came.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}
