//! Bucket configurations of the directory origin: it keeps none, so it answers what a new S3
//! bucket with nothing configured answers (ownership enforced by the bucket owner, who has full
//! control, public access blocked, the bucket owner pays, no notifications, no logging), and
//! refuses changes it could not honour with 501 NotImplemented. It encrypts nothing, so it names
//! no default encryption.

use super::*;
use crate::origin::config::{no_object_lock, not_deletable};
use crate::origin::tags_document;

/// The canonical user id and display name of whoever owns the directory origin's buckets.
pub const OWNER_ID: &str = "87699f70fb259a12e8637d72a5fce1673c12aecb695abc454690ea559a7d76b7";
pub const OWNER_NAME: &str = "perch";

const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// The owner's full control, as S3 answers the ACL of a bucket (or object) with no grants added.
fn owner_acl() -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AccessControlPolicy xmlns=\"{XMLNS}\"><Owner><ID>{OWNER_ID}</ID>\
         <DisplayName>{OWNER_NAME}</DisplayName></Owner><AccessControlList><Grant><Grantee \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\"><ID>{OWNER_ID}</ID>\
         <DisplayName>{OWNER_NAME}</DisplayName></Grantee><Permission>FULL_CONTROL</Permission></Grant>\
         </AccessControlList></AccessControlPolicy>"
    )
}

fn absent(code: &str, message: &str) -> OriginError {
    OriginError::rejected(404, code, message)
}

/// A change of an object's tags: this origin keeps those of its write and never changes them.
fn fixed_tags() -> OriginError {
    OriginError::rejected(
        501,
        "NotImplemented",
        "The directory origin keeps the tags an object was written with and cannot change them; use an S3 origin \
         for it.",
    )
}

fn not_kept(sub: Subresource) -> OriginError {
    OriginError::rejected(
        501,
        "NotImplemented",
        format!(
            "The directory origin keeps no {} configuration; use an S3 origin for it.",
            sub.query()
        ),
    )
}

impl FsOrigin {
    pub(super) async fn configuration(
        &self,
        bucket: &str,
        key: Option<&str>,
        sub: Subresource,
    ) -> OriginResult<Document> {
        self.bucket(bucket)?.check_alive()?;
        if let Some(key) = key {
            if !matches!(sub, Subresource::Acl | Subresource::Tagging) {
                return Err(OriginError::rejected(
                    400,
                    "InvalidArgument",
                    format!("Objects have no {} configuration.", sub.query()),
                ));
            }
            let (_, meta, _) = self.open_object(bucket, key).await?;
            return Ok(match sub {
                Subresource::Acl => Document::new(owner_acl()),
                // The tags its write gave it: this origin keeps them, and never changes them.
                _ => tags_document(&meta.headers.tags),
            });
        }
        let xml = |body: &str| Document::new(format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"));
        match sub {
            Subresource::Acl => Ok(Document::new(owner_acl())),
            Subresource::Versioning => Ok(xml(&format!("<VersioningConfiguration xmlns=\"{XMLNS}\"/>"))),
            Subresource::OwnershipControls => Ok(xml(&format!(
                "<OwnershipControls xmlns=\"{XMLNS}\"><Rule><ObjectOwnership>BucketOwnerEnforced</ObjectOwnership>\
                 </Rule></OwnershipControls>"
            ))),
            Subresource::Policy => Err(absent("NoSuchBucketPolicy", "The bucket policy does not exist")),
            Subresource::Lifecycle => Err(absent(
                "NoSuchLifecycleConfiguration",
                "The lifecycle configuration does not exist",
            )),
            Subresource::Cors => Err(absent(
                "NoSuchCORSConfiguration",
                "The CORS configuration does not exist",
            )),
            Subresource::Tagging => Err(absent("NoSuchTagSet", "The TagSet does not exist")),
            Subresource::Notification => Ok(xml(&format!("<NotificationConfiguration xmlns=\"{XMLNS}\"/>"))),
            Subresource::RequestPayment => Ok(xml(&format!(
                "<RequestPaymentConfiguration xmlns=\"{XMLNS}\"><Payer>BucketOwner</Payer></RequestPaymentConfiguration>"
            ))),
            Subresource::Accelerate => Ok(xml(&format!("<AccelerateConfiguration xmlns=\"{XMLNS}\"/>"))),
            Subresource::Logging => Ok(xml(&format!("<BucketLoggingStatus xmlns=\"{XMLNS}\"/>"))),
            Subresource::Encryption => Err(absent(
                "ServerSideEncryptionConfigurationNotFoundError",
                "The server side encryption configuration was not found",
            )),
            // Nothing is public here (every request is signed), as S3 blocks for new buckets.
            Subresource::PublicAccessBlock => Ok(xml(&format!(
                "<PublicAccessBlockConfiguration xmlns=\"{XMLNS}\"><BlockPublicAcls>true</BlockPublicAcls>\
                 <IgnorePublicAcls>true</IgnorePublicAcls><BlockPublicPolicy>true</BlockPublicPolicy>\
                 <RestrictPublicBuckets>true</RestrictPublicBuckets></PublicAccessBlockConfiguration>"
            ))),
            Subresource::ObjectLock => Err(absent(
                "ObjectLockConfigurationNotFoundError",
                "Object Lock configuration does not exist for this bucket",
            )),
            Subresource::Website => Err(absent(
                "NoSuchWebsiteConfiguration",
                "The specified bucket does not have a website configuration",
            )),
            Subresource::Replication => Err(absent(
                "ReplicationConfigurationNotFoundError",
                "The replication configuration was not found",
            )),
        }
    }

    pub(super) async fn configure(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<()> {
        self.bucket(bucket)?.check_alive()?;
        if let Some(key) = key {
            self.open_object(bucket, key).await?;
            if sub == Subresource::Tagging {
                return Err(fixed_tags());
            }
        }
        if sub == Subresource::ObjectLock {
            return Err(no_object_lock());
        }
        Err(not_kept(sub))
    }

    /// Removing what is not there succeeds, as on S3; the ownership controls it enforces and the
    /// public access it blocks cannot go.
    pub(super) async fn unconfigure(&self, bucket: &str, key: Option<&str>, sub: Subresource) -> OriginResult<()> {
        self.bucket(bucket)?.check_alive()?;
        if let Some(key) = key {
            // An object's tags: those of its write, which this origin never changes.
            let (_, meta, _) = self.open_object(bucket, key).await?;
            return match sub {
                Subresource::Tagging if meta.headers.tags.is_empty() => Ok(()),
                Subresource::Tagging => Err(fixed_tags()),
                _ => Err(OriginError::rejected(
                    400,
                    "InvalidArgument",
                    format!("Objects have no {} configuration.", sub.query()),
                )),
            };
        }
        match sub {
            Subresource::Policy
            | Subresource::Lifecycle
            | Subresource::Cors
            | Subresource::Tagging
            | Subresource::Encryption
            | Subresource::Website
            | Subresource::Replication => Ok(()),
            Subresource::OwnershipControls | Subresource::PublicAccessBlock => Err(not_kept(sub)),
            Subresource::Acl
            | Subresource::Versioning
            | Subresource::Notification
            | Subresource::ObjectLock
            | Subresource::RequestPayment
            | Subresource::Accelerate
            | Subresource::Logging => Err(not_deletable(sub)),
        }
    }
}
