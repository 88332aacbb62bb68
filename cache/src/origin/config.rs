//! Bucket configurations (ACL, policy, versioning, lifecycle, ownership controls, CORS, tagging,
//! encryption, public access block, notifications, object lock, request payment, acceleration,
//! website, logging, replication) and object ACLs and tags as the origin keeps them: S3's own
//! documents, passed through unchanged.

use bytes::Bytes;

use super::OriginError;

/// A configuration sub-resource (`?acl`, `?policy`, ...). Only `Acl` and `Tagging` also exist on
/// objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subresource {
    Acl,
    Policy,
    Versioning,
    Lifecycle,
    OwnershipControls,
    Cors,
    Tagging,
    Encryption,
    PublicAccessBlock,
    Notification,
    /// Read only: Perch keeps no object lock (its retention would bind versions Perch has yet to
    /// upload), so it is never set through Perch.
    ObjectLock,
    RequestPayment,
    Accelerate,
    Website,
    Logging,
    Replication,
}

impl Subresource {
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
            Subresource::Encryption => "encryption",
            Subresource::PublicAccessBlock => "publicAccessBlock",
            Subresource::Notification => "notification",
            Subresource::ObjectLock => "object-lock",
            Subresource::RequestPayment => "requestPayment",
            Subresource::Accelerate => "accelerate",
            Subresource::Website => "website",
            Subresource::Logging => "logging",
            Subresource::Replication => "replication",
        }
    }

    /// Whether a change of it must wait until the origin holds the bucket's pending writes: those
    /// that decide whether the writes are allowed (ACL, policy, ownership, public access block) or
    /// what becomes of them (versioning, lifecycle, encryption, notifications, replication). The
    /// others concern neither.
    pub fn orders_writes(self) -> bool {
        !matches!(
            self,
            Subresource::Cors
                | Subresource::Tagging
                | Subresource::RequestPayment
                | Subresource::Accelerate
                | Subresource::Website
                | Subresource::Logging
        )
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
            Subresource::Notification => &["x-amz-skip-destination-validation"],
            Subresource::Replication => &["x-amz-bucket-object-lock-token"],
            Subresource::OwnershipControls
            | Subresource::Cors
            | Subresource::Tagging
            | Subresource::Encryption
            | Subresource::PublicAccessBlock
            | Subresource::ObjectLock
            | Subresource::RequestPayment
            | Subresource::Accelerate
            | Subresource::Website
            | Subresource::Logging => &[],
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

/// An object's tags as S3 answers GetObjectTagging.
pub fn tags_document(tags: &[(String, String)]) -> Document {
    if tags.is_empty() {
        return Document::new(NO_TAGS);
    }
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&apos;")
    };
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Tagging xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><TagSet>",
    );
    for (k, v) in tags {
        xml.push_str(&format!(
            "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
            escape(k),
            escape(v)
        ));
    }
    xml.push_str("</TagSet></Tagging>");
    Document::new(xml)
}

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

/// S3 has no DELETE of these sub-resources: they are changed, never removed.
pub(crate) fn not_deletable(sub: Subresource) -> OriginError {
    OriginError::rejected(
        405,
        "MethodNotAllowed",
        format!(
            "The specified method is not allowed against the {} sub-resource.",
            sub.query()
        ),
    )
}

/// Why Perch sets no object lock (`Subresource::ObjectLock`).
pub const NO_OBJECT_LOCK: &str =
    "Perch keeps no object lock: its retention would bind versions Perch has yet to upload.";

/// Perch sets no object lock: 501 NotImplemented.
pub(crate) fn no_object_lock() -> OriginError {
    OriginError::rejected(501, "NotImplemented", NO_OBJECT_LOCK)
}
