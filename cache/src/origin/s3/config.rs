//! Bucket configurations and object ACLs through `S3Origin`, as S3's own documents: the SDK's
//! operation of each sub-resource carries the request (method, path, query, signing, errors), and
//! the document goes through it unchanged, both ways.

use std::sync::{Arc, Mutex};

use aws_sdk_s3::types::{
    AccelerateConfiguration, BucketLoggingStatus, CorsConfiguration, NotificationConfiguration, ObjectOwnership,
    OwnershipControls, OwnershipControlsRule, Payer, PublicAccessBlockConfiguration, ReplicationConfiguration,
    RequestPaymentConfiguration, ServerSideEncryptionConfiguration, Tagging, VersioningConfiguration,
    WebsiteConfiguration,
};
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;

use super::*;
use crate::origin::config::{no_object_lock, not_deletable};

/// What an answer held: its headers of the sub-resource and its body, as they came.
#[derive(Debug, Default)]
struct Captured {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Keeps a copy of a successful answer's body (and the headers of `names`) while the SDK reads it.
#[derive(Debug, Clone)]
struct Capture {
    names: &'static [&'static str],
    into: Arc<Mutex<Captured>>,
}

impl Intercept for Capture {
    fn name(&self) -> &'static str {
        "PerchCapture"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if !response.status().is_success() {
            return Ok(());
        }
        let headers = response
            .headers()
            .iter()
            .filter(|(n, _)| self.names.iter().any(|m| n.eq_ignore_ascii_case(m)))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        lock_captured(&self.into).headers = headers;
        let inner = SdkByteStream::new(std::mem::replace(response.body_mut(), SdkBody::taken()));
        *response.body_mut() = SdkBody::from_body_1_x(Tee {
            inner,
            into: self.into.clone(),
        });
        Ok(())
    }
}

fn lock_captured(m: &Mutex<Captured>) -> std::sync::MutexGuard<'_, Captured> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A body passed on as it comes, with a copy kept.
struct Tee {
    inner: SdkByteStream,
    into: Arc<Mutex<Captured>>,
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = aws_sdk_s3::primitives::ByteStreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
            Some(Ok(chunk)) => {
                lock_captured(&this.into).body.extend_from_slice(&chunk);
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }
}

/// Replaces the body the SDK made of its typed input with the document, and sends the document's
/// headers. The SDK then signs it as it is; its checksum of the old body (if it made one before
/// this ran) makes way for a Content-MD5 of the new one (these requests need one or the other).
#[derive(Debug)]
struct SendDocument {
    doc: Document,
}

impl Intercept for SendDocument {
    fn name(&self) -> &'static str {
        "PerchSendDocument"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        use crate::md5_asm::Md5;
        let req = context.request_mut();
        let stale: Vec<String> = req
            .headers()
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .filter(|n| n.starts_with("x-amz-checksum-") || n == "x-amz-sdk-checksum-algorithm" || n == "content-md5")
            .collect();
        for name in stale {
            req.headers_mut().remove(name);
        }
        let md5 = aws_smithy_types::base64::encode(Md5::digest(&self.doc.body));
        let headers = req.headers_mut();
        headers.insert("content-length", self.doc.body.len().to_string());
        if self.doc.body.is_empty() {
            headers.remove("content-type");
        } else {
            headers.insert("content-md5", md5);
        }
        for (name, value) in &self.doc.headers {
            headers.try_insert(name.clone(), value.clone())?;
        }
        *req.body_mut() = SdkBody::from(self.doc.body.clone());
        Ok(())
    }
}

/// The typed input each PUT needs to build, whatever the document says (it replaces the body).
fn placeholder_error(e: aws_sdk_s3::error::BuildError) -> OriginError {
    OriginError::Io(Doing::io("building a configuration request", e))
}

impl Capture {
    /// A capture of `sub`'s answers, and where it keeps them.
    fn new(sub: Subresource) -> (Capture, Arc<Mutex<Captured>>) {
        let into = Arc::new(Mutex::new(Captured::default()));
        let capture = Capture {
            names: sub.headers(),
            into: into.clone(),
        };
        (capture, into)
    }
}

impl S3Origin {
    /// Awaits one configuration request sent with a `Capture` and gives the document of its answer.
    async fn answered<T, E>(
        &self,
        subject: Subject,
        send: impl Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        captured: Arc<Mutex<Captured>>,
    ) -> OriginResult<Document>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match self.call(subject, Duration::ZERO, send).await {
            Ok(_) => {}
            // A success the SDK could not read as its model says is still the origin's answer.
            Err(e @ OriginError::Transient { .. }) if !lock_captured(&captured).body.is_empty() => {
                tracing::debug!(error = %e, "passing on a configuration answer the SDK did not parse");
            }
            Err(e) => return Err(e),
        }
        let c = std::mem::take(&mut *lock_captured(&captured));
        Ok(Document {
            body: Bytes::from(c.body),
            headers: c.headers,
        })
    }

    pub(super) async fn get_configuration(
        &self,
        bucket: &str,
        key: Option<&str>,
        sub: Subresource,
    ) -> OriginResult<Document> {
        let c = &self.client;
        let (capture, captured) = Capture::new(sub);
        macro_rules! get {
            ($op:ident) => {{
                let send = c.$op().bucket(bucket).customize().interceptor(capture).send();
                self.answered(Subject::Bucket, send, captured).await
            }};
            ($op:ident, $key:expr) => {{
                let send = c
                    .$op()
                    .bucket(bucket)
                    .key($key)
                    .customize()
                    .interceptor(capture)
                    .send();
                self.answered(Subject::Object, send, captured).await
            }};
        }
        match (sub, key) {
            (Subresource::Acl, Some(key)) => get!(get_object_acl, key),
            (Subresource::Tagging, Some(key)) => get!(get_object_tagging, key),
            (_, Some(_)) => Err(object_subresource(sub)),
            (Subresource::Acl, None) => get!(get_bucket_acl),
            (Subresource::Policy, None) => get!(get_bucket_policy),
            (Subresource::Versioning, None) => get!(get_bucket_versioning),
            (Subresource::Lifecycle, None) => get!(get_bucket_lifecycle_configuration),
            (Subresource::OwnershipControls, None) => get!(get_bucket_ownership_controls),
            (Subresource::Cors, None) => get!(get_bucket_cors),
            (Subresource::Tagging, None) => get!(get_bucket_tagging),
            (Subresource::Encryption, None) => get!(get_bucket_encryption),
            (Subresource::PublicAccessBlock, None) => get!(get_public_access_block),
            (Subresource::Notification, None) => get!(get_bucket_notification_configuration),
            (Subresource::ObjectLock, None) => get!(get_object_lock_configuration),
            (Subresource::RequestPayment, None) => get!(get_bucket_request_payment),
            (Subresource::Accelerate, None) => get!(get_bucket_accelerate_configuration),
            (Subresource::Website, None) => get!(get_bucket_website),
            (Subresource::Logging, None) => get!(get_bucket_logging),
            (Subresource::Replication, None) => get!(get_bucket_replication),
        }
    }

    pub(super) async fn put_configuration(
        &self,
        bucket: &str,
        key: Option<&str>,
        sub: Subresource,
        doc: &Document,
    ) -> OriginResult<()> {
        let c = &self.client;
        let send = SendDocument { doc: doc.clone() };
        let subject = if key.is_some() {
            Subject::Object
        } else {
            Subject::Bucket
        };
        macro_rules! put {
            ($req:expr) => {{
                self.call(subject, Duration::ZERO, $req.customize().interceptor(send).send())
                    .await?;
                Ok(())
            }};
        }
        match (sub, key) {
            (Subresource::Acl, Some(k)) => put!(c.put_object_acl().bucket(bucket).key(k)),
            (Subresource::Tagging, Some(k)) => {
                let tagging = Tagging::builder()
                    .set_tag_set(Some(Vec::new()))
                    .build()
                    .map_err(placeholder_error)?;
                put!(c.put_object_tagging().bucket(bucket).key(k).tagging(tagging))
            }
            (_, Some(_)) => Err(object_subresource(sub)),
            (Subresource::Acl, None) => put!(c.put_bucket_acl().bucket(bucket)),
            (Subresource::Policy, None) => put!(c.put_bucket_policy().bucket(bucket).policy("")),
            (Subresource::Versioning, None) => put!(
                c.put_bucket_versioning()
                    .bucket(bucket)
                    .versioning_configuration(VersioningConfiguration::builder().build())
            ),
            (Subresource::Lifecycle, None) => put!(c.put_bucket_lifecycle_configuration().bucket(bucket)),
            (Subresource::OwnershipControls, None) => {
                let rule = OwnershipControlsRule::builder()
                    .object_ownership(ObjectOwnership::BucketOwnerEnforced)
                    .build()
                    .map_err(placeholder_error)?;
                let controls = OwnershipControls::builder()
                    .rules(rule)
                    .build()
                    .map_err(placeholder_error)?;
                put!(
                    c.put_bucket_ownership_controls()
                        .bucket(bucket)
                        .ownership_controls(controls)
                )
            }
            (Subresource::Cors, None) => {
                let cors = CorsConfiguration::builder()
                    .set_cors_rules(Some(Vec::new()))
                    .build()
                    .map_err(placeholder_error)?;
                put!(c.put_bucket_cors().bucket(bucket).cors_configuration(cors))
            }
            (Subresource::Tagging, None) => {
                let tagging = Tagging::builder()
                    .set_tag_set(Some(Vec::new()))
                    .build()
                    .map_err(placeholder_error)?;
                put!(c.put_bucket_tagging().bucket(bucket).tagging(tagging))
            }
            (Subresource::Encryption, None) => {
                let config = ServerSideEncryptionConfiguration::builder()
                    .set_rules(Some(Vec::new()))
                    .build()
                    .map_err(placeholder_error)?;
                put!(
                    c.put_bucket_encryption()
                        .bucket(bucket)
                        .server_side_encryption_configuration(config)
                )
            }
            (Subresource::PublicAccessBlock, None) => put!(
                c.put_public_access_block()
                    .bucket(bucket)
                    .public_access_block_configuration(PublicAccessBlockConfiguration::builder().build())
            ),
            (Subresource::Notification, None) => put!(
                c.put_bucket_notification_configuration()
                    .bucket(bucket)
                    .notification_configuration(NotificationConfiguration::builder().build())
            ),
            (Subresource::ObjectLock, None) => Err(no_object_lock()),
            (Subresource::RequestPayment, None) => {
                let config = RequestPaymentConfiguration::builder()
                    .payer(Payer::BucketOwner)
                    .build()
                    .map_err(placeholder_error)?;
                put!(
                    c.put_bucket_request_payment()
                        .bucket(bucket)
                        .request_payment_configuration(config)
                )
            }
            (Subresource::Accelerate, None) => put!(
                c.put_bucket_accelerate_configuration()
                    .bucket(bucket)
                    .accelerate_configuration(AccelerateConfiguration::builder().build())
            ),
            (Subresource::Website, None) => put!(
                c.put_bucket_website()
                    .bucket(bucket)
                    .website_configuration(WebsiteConfiguration::builder().build())
            ),
            (Subresource::Logging, None) => put!(
                c.put_bucket_logging()
                    .bucket(bucket)
                    .bucket_logging_status(BucketLoggingStatus::builder().build())
            ),
            (Subresource::Replication, None) => {
                let config = ReplicationConfiguration::builder()
                    .role("")
                    .set_rules(Some(Vec::new()))
                    .build()
                    .map_err(placeholder_error)?;
                put!(
                    c.put_bucket_replication()
                        .bucket(bucket)
                        .replication_configuration(config)
                )
            }
        }
    }

    pub(super) async fn delete_configuration(
        &self,
        bucket: &str,
        key: Option<&str>,
        sub: Subresource,
    ) -> OriginResult<()> {
        let c = &self.client;
        if let Some(key) = key {
            if sub != Subresource::Tagging {
                return Err(object_subresource(sub));
            }
            let send = c.delete_object_tagging().bucket(bucket).key(key).send();
            self.call(Subject::Object, Duration::ZERO, send).await?;
            return Ok(());
        }
        macro_rules! delete {
            ($op:ident) => {{
                self.call(Subject::Bucket, Duration::ZERO, c.$op().bucket(bucket).send())
                    .await?;
                Ok(())
            }};
        }
        match sub {
            Subresource::Policy => delete!(delete_bucket_policy),
            Subresource::Lifecycle => delete!(delete_bucket_lifecycle),
            Subresource::OwnershipControls => delete!(delete_bucket_ownership_controls),
            Subresource::Cors => delete!(delete_bucket_cors),
            Subresource::Tagging => delete!(delete_bucket_tagging),
            Subresource::Encryption => delete!(delete_bucket_encryption),
            Subresource::PublicAccessBlock => delete!(delete_public_access_block),
            Subresource::Website => delete!(delete_bucket_website),
            Subresource::Replication => delete!(delete_bucket_replication),
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

/// Objects have no sub-resource but their ACL here.
fn object_subresource(sub: Subresource) -> OriginError {
    OriginError::rejected(
        400,
        "InvalidArgument",
        format!("Objects have no {} configuration.", sub.query()),
    )
}
