//! Bucket configurations (ACL, policy, versioning, lifecycle, ownership controls, CORS, tagging,
//! encryption, public access block, notifications, object lock (read only), request payment,
//! acceleration, website, logging, replication) and object ACLs and tags: passed through to the
//! origin as S3's own XML documents, and its answer passed back: a bucket's as it came
//! (`ConfigRead`), an object's and every change through s3s's types.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use perch_cache::{Document, Store, Subresource};
use s3s::dto::*;
use s3s::route::S3Route;
use s3s::xml::{DeserializeContent, SerializeContent};
use s3s::{Body, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::convert::{self, store_error};
use crate::front::{self, PerchHost};

const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// `value` as an XML document whose root element is `root`, in S3's namespace.
fn to_xml<T: SerializeContent>(root: &str, value: &T) -> S3Result<Bytes> {
    let mut buf = Vec::with_capacity(256);
    let mut ser = s3s::xml::Serializer::new(&mut buf);
    ser.decl()
        .and_then(|()| ser.content_with_ns(root, XMLNS, value))
        .map_err(|e| S3Error::with_source(S3ErrorCode::InternalError, Box::new(e)))?;
    Ok(Bytes::from(buf))
}

/// The origin's document read as `T`, whatever its root element is called (as the SDKs read S3's
/// answers: moto names some roots after the operation). A document that is not what S3 sends is
/// the origin's fault.
fn from_xml<'a, T: DeserializeContent<'a>>(body: &'a [u8]) -> S3Result<T> {
    let mut de = s3s::xml::Deserializer::new(body);
    let value = de
        .element(|d, _root| d.content())
        .and_then(|v| de.expect_eof().map(|()| v));
    value.map_err(|e| {
        tracing::warn!(error = %e, "the origin answered a configuration Perch cannot read");
        let mut err = s3_error!(InternalError, "The origin answered with a document Perch cannot read.");
        err.set_source(Box::new(e));
        err
    })
}

/// The headers of a request that belong to its sub-resource, as given.
fn headers_of(sub: Subresource, given: &[(&str, Option<&str>)]) -> Vec<(String, String)> {
    given
        .iter()
        .filter_map(|(name, value)| value.map(|v| ((*name).to_owned(), v.to_owned())))
        .filter(|(name, _)| sub.headers().contains(&name.as_str()))
        .collect()
}

/// The ACL headers of a PutBucketAcl or PutObjectAcl (s3s gives them two types).
macro_rules! acl_headers {
    ($input:expr, $canned:expr) => {
        headers_of(
            Subresource::Acl,
            &[
                ("x-amz-acl", $canned),
                ("x-amz-grant-full-control", $input.grant_full_control.as_deref()),
                ("x-amz-grant-read", $input.grant_read.as_deref()),
                ("x-amz-grant-read-acp", $input.grant_read_acp.as_deref()),
                ("x-amz-grant-write", $input.grant_write.as_deref()),
                ("x-amz-grant-write-acp", $input.grant_write_acp.as_deref()),
            ],
        )
    };
}

/// The ACL headers of a CreateBucket, passed on to the origin with it.
pub fn create_bucket_acl(input: &CreateBucketInput) -> Vec<(String, String)> {
    acl_headers!(input, input.acl.as_ref().map(|a| a.as_str()))
}

async fn get(store: &Store, bucket: &str, key: Option<&str>, sub: Subresource) -> S3Result<Document> {
    store.get_config(bucket, key, sub).await.map_err(store_error)
}

async fn put(store: &Store, bucket: &str, key: Option<&str>, sub: Subresource, doc: Document) -> S3Result<()> {
    store.put_config(bucket, key, sub, &doc).await.map_err(store_error)
}

pub async fn delete(store: &Store, bucket: &str, sub: Subresource) -> S3Result<()> {
    store.delete_config(bucket, None, sub).await.map_err(store_error)
}

/// The bucket's owner as its ACL names it (the owner of every object of a bucket whose ownership
/// is enforced, as S3 makes new buckets), or none when the origin does not say.
pub async fn owner(store: &Store, bucket: &str) -> S3Result<Option<Owner>> {
    let doc = get(store, bucket, None, Subresource::Acl).await?;
    Ok(from_xml::<AccessControlPolicy>(&doc.body)?.owner)
}

pub async fn put_bucket_acl(store: &Store, input: PutBucketAclInput) -> S3Result<PutBucketAclOutput> {
    convert::check_canned_acl(input.acl.as_ref().map(|a| a.as_str()))?;
    let body = match &input.access_control_policy {
        Some(acp) => to_xml("AccessControlPolicy", acp)?,
        None => Bytes::new(),
    };
    let headers = acl_headers!(input, input.acl.as_ref().map(|a| a.as_str()));
    let doc = Document { body, headers };
    put(store, &input.bucket, None, Subresource::Acl, doc).await?;
    Ok(PutBucketAclOutput::default())
}

pub async fn get_object_acl(store: &Store, input: GetObjectAclInput) -> S3Result<GetObjectAclOutput> {
    convert::check_version(input.version_id.as_deref())?;
    let doc = get(store, &input.bucket, Some(&input.key), Subresource::Acl).await?;
    let acp: AccessControlPolicy = from_xml(&doc.body)?;
    Ok(GetObjectAclOutput {
        grants: acp.grants,
        owner: acp.owner,
        request_charged: None,
    })
}

pub async fn put_object_acl(store: &Store, input: PutObjectAclInput) -> S3Result<PutObjectAclOutput> {
    convert::check_version(input.version_id.as_deref())?;
    convert::check_canned_acl(input.acl.as_ref().map(|a| a.as_str()))?;
    let body = match &input.access_control_policy {
        Some(acp) => to_xml("AccessControlPolicy", acp)?,
        None => Bytes::new(),
    };
    let headers = acl_headers!(input, input.acl.as_ref().map(|a| a.as_str()));
    let doc = Document { body, headers };
    put(store, &input.bucket, Some(&input.key), Subresource::Acl, doc).await?;
    Ok(PutObjectAclOutput::default())
}

/// An object's tags: the origin's, or none for an object Perch holds writes of that the origin
/// does not have yet (`Store::object_tagging`). Perch keeps no tags: changing them is the
/// origin's, once it holds the object's writes.
pub async fn get_object_tagging(store: &Store, input: GetObjectTaggingInput) -> S3Result<GetObjectTaggingOutput> {
    convert::check_version(input.version_id.as_deref())?;
    let doc = store
        .object_tagging(&input.bucket, &input.key)
        .await
        .map_err(store_error)?;
    let tagging: Tagging = from_xml(&doc.body)?;
    Ok(GetObjectTaggingOutput {
        tag_set: tagging.tag_set,
        version_id: None,
    })
}

/// PutObjectTagging: the origin's, once it holds the object's pending writes.
pub async fn put_object_tagging(store: &Store, input: PutObjectTaggingInput) -> S3Result<PutObjectTaggingOutput> {
    convert::check_version(input.version_id.as_deref())?;
    let doc = Document::new(to_xml("Tagging", &input.tagging)?);
    put(store, &input.bucket, Some(&input.key), Subresource::Tagging, doc).await?;
    Ok(PutObjectTaggingOutput::default())
}

/// DeleteObjectTagging: the origin's, once it holds the object's pending writes.
pub async fn delete_object_tagging(
    store: &Store,
    input: DeleteObjectTaggingInput,
) -> S3Result<DeleteObjectTaggingOutput> {
    convert::check_version(input.version_id.as_deref())?;
    store
        .delete_config(&input.bucket, Some(&input.key), Subresource::Tagging)
        .await
        .map_err(store_error)?;
    Ok(DeleteObjectTaggingOutput::default())
}

pub async fn put_bucket_policy(store: &Store, input: PutBucketPolicyInput) -> S3Result<PutBucketPolicyOutput> {
    let confirm = input.confirm_remove_self_bucket_access.map(|c| c.to_string());
    let doc = Document {
        body: Bytes::from(input.policy),
        headers: headers_of(
            Subresource::Policy,
            &[("x-amz-confirm-remove-self-bucket-access", confirm.as_deref())],
        ),
    };
    put(store, &input.bucket, None, Subresource::Policy, doc).await?;
    Ok(PutBucketPolicyOutput::default())
}

pub async fn put_bucket_versioning(
    store: &Store,
    input: PutBucketVersioningInput,
) -> S3Result<PutBucketVersioningOutput> {
    let doc = Document {
        body: to_xml("VersioningConfiguration", &input.versioning_configuration)?,
        headers: headers_of(Subresource::Versioning, &[("x-amz-mfa", input.mfa.as_deref())]),
    };
    put(store, &input.bucket, None, Subresource::Versioning, doc).await?;
    Ok(PutBucketVersioningOutput::default())
}

pub async fn put_bucket_lifecycle_configuration(
    store: &Store,
    input: PutBucketLifecycleConfigurationInput,
) -> S3Result<PutBucketLifecycleConfigurationOutput> {
    let config = input
        .lifecycle_configuration
        .as_ref()
        .ok_or_else(|| s3_error!(MalformedXML, "The request names no lifecycle configuration."))?;
    let minimum = input
        .transition_default_minimum_object_size
        .as_ref()
        .map(|m| m.as_str().to_owned());
    let doc = Document {
        body: to_xml("LifecycleConfiguration", config)?,
        headers: headers_of(
            Subresource::Lifecycle,
            &[("x-amz-transition-default-minimum-object-size", minimum.as_deref())],
        ),
    };
    put(store, &input.bucket, None, Subresource::Lifecycle, doc).await?;
    Ok(PutBucketLifecycleConfigurationOutput {
        transition_default_minimum_object_size: input.transition_default_minimum_object_size,
    })
}

pub async fn put_bucket_ownership_controls(
    store: &Store,
    input: PutBucketOwnershipControlsInput,
) -> S3Result<PutBucketOwnershipControlsOutput> {
    let controls = &input.ownership_controls;
    put_document(
        store,
        &input.bucket,
        Subresource::OwnershipControls,
        "OwnershipControls",
        controls,
    )
    .await?;
    Ok(PutBucketOwnershipControlsOutput::default())
}

pub async fn put_bucket_cors(store: &Store, input: PutBucketCorsInput) -> S3Result<PutBucketCorsOutput> {
    let config = &input.cors_configuration;
    put_document(store, &input.bucket, Subresource::Cors, "CORSConfiguration", config).await?;
    Ok(PutBucketCorsOutput::default())
}

pub async fn put_bucket_tagging(store: &Store, input: PutBucketTaggingInput) -> S3Result<PutBucketTaggingOutput> {
    put_document(store, &input.bucket, Subresource::Tagging, "Tagging", &input.tagging).await?;
    Ok(PutBucketTaggingOutput::default())
}

/// Replaces a bucket configuration given as one document (root element `root`) with no headers.
async fn put_document<T: SerializeContent>(
    store: &Store,
    bucket: &str,
    sub: Subresource,
    root: &str,
    value: &T,
) -> S3Result<()> {
    put(store, bucket, None, sub, Document::new(to_xml(root, value)?)).await
}

pub async fn put_bucket_encryption(
    store: &Store,
    input: PutBucketEncryptionInput,
) -> S3Result<PutBucketEncryptionOutput> {
    let config = &input.server_side_encryption_configuration;
    put_document(
        store,
        &input.bucket,
        Subresource::Encryption,
        "ServerSideEncryptionConfiguration",
        config,
    )
    .await?;
    Ok(PutBucketEncryptionOutput::default())
}

pub async fn put_public_access_block(
    store: &Store,
    input: PutPublicAccessBlockInput,
) -> S3Result<PutPublicAccessBlockOutput> {
    let config = &input.public_access_block_configuration;
    put_document(
        store,
        &input.bucket,
        Subresource::PublicAccessBlock,
        "PublicAccessBlockConfiguration",
        config,
    )
    .await?;
    Ok(PutPublicAccessBlockOutput::default())
}

pub async fn put_bucket_notification_configuration(
    store: &Store,
    input: PutBucketNotificationConfigurationInput,
) -> S3Result<PutBucketNotificationConfigurationOutput> {
    let skip = input.skip_destination_validation.map(|s| s.to_string());
    let doc = Document {
        body: to_xml("NotificationConfiguration", &input.notification_configuration)?,
        headers: headers_of(
            Subresource::Notification,
            &[("x-amz-skip-destination-validation", skip.as_deref())],
        ),
    };
    put(store, &input.bucket, None, Subresource::Notification, doc).await?;
    Ok(PutBucketNotificationConfigurationOutput::default())
}

pub async fn put_bucket_request_payment(
    store: &Store,
    input: PutBucketRequestPaymentInput,
) -> S3Result<PutBucketRequestPaymentOutput> {
    let config = &input.request_payment_configuration;
    put_document(
        store,
        &input.bucket,
        Subresource::RequestPayment,
        "RequestPaymentConfiguration",
        config,
    )
    .await?;
    Ok(PutBucketRequestPaymentOutput::default())
}

pub async fn put_bucket_accelerate_configuration(
    store: &Store,
    input: PutBucketAccelerateConfigurationInput,
) -> S3Result<PutBucketAccelerateConfigurationOutput> {
    let config = &input.accelerate_configuration;
    put_document(
        store,
        &input.bucket,
        Subresource::Accelerate,
        "AccelerateConfiguration",
        config,
    )
    .await?;
    Ok(PutBucketAccelerateConfigurationOutput::default())
}

pub async fn put_bucket_website(store: &Store, input: PutBucketWebsiteInput) -> S3Result<PutBucketWebsiteOutput> {
    let config = &input.website_configuration;
    put_document(
        store,
        &input.bucket,
        Subresource::Website,
        "WebsiteConfiguration",
        config,
    )
    .await?;
    Ok(PutBucketWebsiteOutput::default())
}

pub async fn put_bucket_logging(store: &Store, input: PutBucketLoggingInput) -> S3Result<PutBucketLoggingOutput> {
    let status = &input.bucket_logging_status;
    put_document(
        store,
        &input.bucket,
        Subresource::Logging,
        "BucketLoggingStatus",
        status,
    )
    .await?;
    Ok(PutBucketLoggingOutput::default())
}

pub async fn put_bucket_replication(
    store: &Store,
    input: PutBucketReplicationInput,
) -> S3Result<PutBucketReplicationOutput> {
    let doc = Document {
        body: to_xml("ReplicationConfiguration", &input.replication_configuration)?,
        headers: headers_of(
            Subresource::Replication,
            &[("x-amz-bucket-object-lock-token", input.token.as_deref())],
        ),
    };
    put(store, &input.bucket, None, Subresource::Replication, doc).await?;
    Ok(PutBucketReplicationOutput::default())
}

/// The bucket configurations a GET reads, by query parameter, with their operation's name.
const READS: [(Subresource, &str); 16] = [
    (Subresource::Acl, "GetBucketAcl"),
    (Subresource::Policy, "GetBucketPolicy"),
    (Subresource::Versioning, "GetBucketVersioning"),
    (Subresource::Lifecycle, "GetBucketLifecycleConfiguration"),
    (Subresource::OwnershipControls, "GetBucketOwnershipControls"),
    (Subresource::Cors, "GetBucketCors"),
    (Subresource::Tagging, "GetBucketTagging"),
    (Subresource::Encryption, "GetBucketEncryption"),
    (Subresource::PublicAccessBlock, "GetPublicAccessBlock"),
    (Subresource::Notification, "GetBucketNotificationConfiguration"),
    (Subresource::ObjectLock, "GetObjectLockConfiguration"),
    (Subresource::RequestPayment, "GetBucketRequestPayment"),
    (Subresource::Accelerate, "GetBucketAccelerateConfiguration"),
    (Subresource::Website, "GetBucketWebsite"),
    (Subresource::Logging, "GetBucketLogging"),
    (Subresource::Replication, "GetBucketReplication"),
];

/// A bucket configuration read, as `ConfigRead::is_match` found it.
#[derive(Debug, Clone)]
struct Read {
    bucket: String,
    sub: Subresource,
    op: &'static str,
}

/// GETs of a bucket's configuration, answered with the origin's document as it came instead of
/// read into s3s's types and written again: an element s3s does not know (S3 has put
/// `BlockedEncryptionTypes` in every new bucket's encryption since 2026) would make that a 500,
/// where the client's SDK reads the document as it reads S3's. An s3s custom route: it runs
/// after the signature check; every other request goes to the typed operations.
pub struct ConfigRead {
    store: Arc<Store>,
    host: PerchHost,
}

impl ConfigRead {
    pub fn new(store: Arc<Store>, domain: &str) -> ConfigRead {
        ConfigRead {
            store,
            host: PerchHost::new(domain),
        }
    }

    /// The bucket configuration a request reads: a GET of a bucket (virtual-hosted or path style)
    /// whose query names exactly one configuration (beside a presigned URL's parameters).
    fn read_of(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Read> {
        if method != Method::GET {
            return None;
        }
        let mut found = None;
        for pair in uri.query()?.split('&').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            if let Some(&(sub, op)) = READS.iter().find(|(sub, _)| sub.query() == name) {
                if found.is_some() {
                    return None;
                }
                found = Some((sub, op));
            }
        }
        let (sub, op) = found?;
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let path = uri.path();
        let bucket = match self.host.bucket_of(host) {
            Some(bucket) if path == "/" => bucket,
            Some(_) => return None,
            None => {
                let name = path.strip_prefix('/')?;
                let name = name.strip_suffix('/').unwrap_or(name);
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                name.to_owned()
            }
        };
        Some(Read { bucket, sub, op })
    }
}

#[async_trait::async_trait]
impl S3Route for ConfigRead {
    fn is_match(&self, method: &Method, uri: &Uri, headers: &HeaderMap, extensions: &mut http::Extensions) -> bool {
        match self.read_of(method, uri, headers) {
            Some(read) => {
                extensions.insert(read);
                true
            }
            None => false,
        }
    }

    /// Signed requests only, as every operation (`front::AccessCheck`); a replica serves reads.
    async fn check_access(&self, req: &mut S3Request<Body>) -> S3Result<()> {
        let read = req
            .extensions
            .get::<Read>()
            .ok_or_else(|| s3_error!(InternalError, "A configuration read lost its bucket."))?;
        front::record(read.op, read.bucket.clone(), String::new());
        if req.credentials.is_none() {
            return Err(s3_error!(
                AccessDenied,
                "Anonymous access is not allowed; sign the request."
            ));
        }
        Ok(())
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let read = req
            .extensions
            .get::<Read>()
            .ok_or_else(|| s3_error!(InternalError, "A configuration read lost its bucket."))?;
        let doc = get(&self.store, &read.bucket, None, read.sub).await?;
        let content_type = match read.sub {
            Subresource::Policy => "application/json",
            _ => "application/xml",
        };
        let mut resp = S3Response::new(Body::from(doc.body));
        resp.headers
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        for (name, value) in &doc.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                resp.headers.insert(name, value);
            }
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_go_both_ways() {
        let tagging = Tagging {
            tag_set: vec![Tag {
                key: Some("team".into()),
                value: Some("db & <ops>".into()),
            }],
        };
        let xml = to_xml("Tagging", &tagging).unwrap();
        let text = std::str::from_utf8(&xml).unwrap();
        assert!(text.starts_with("<?xml"), "{text}");
        assert!(text.contains(XMLNS), "{text}");
        let back: GetBucketTaggingOutput = from_xml(&xml).unwrap();
        assert_eq!(back.tag_set, tagging.tag_set);
        let acl = "<AccessControlPolicy xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>abc</ID></Owner>\
                   <AccessControlList></AccessControlList></AccessControlPolicy>";
        let acp: AccessControlPolicy = from_xml(acl.as_bytes()).unwrap();
        assert_eq!(acp.owner.and_then(|o| o.id).as_deref(), Some("abc"));
        assert!(from_xml::<AccessControlPolicy>(b"<Nope><Owner>").is_err());
        let moto: GetBucketVersioningOutput =
            from_xml(b"<GetBucketVersioningResponse><Status>Suspended</Status></GetBucketVersioningResponse>").unwrap();
        assert_eq!(moto.status.as_ref().map(|s| s.as_str()), Some("Suspended"));
        let controls: OwnershipControls = from_xml(
            b"<OwnershipControls><Rule><ObjectOwnership>BucketOwnerEnforced</ObjectOwnership></Rule></OwnershipControls>",
        )
        .unwrap();
        assert_eq!(controls.rules.len(), 1);
    }
}
