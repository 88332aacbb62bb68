//! `Uploader`: carries the journal's versions to the origin in the order the journal's scheduler
//! allows, each retried through transient faults for as long as it takes, a PUT whole, a multipart
//! version with its part layout, then releases it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use perch_policy::Method;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use crate::journal::record::{PartLayout, RecordPut};
use crate::journal::state::Version;
use crate::journal::{Journal, OriginCopy};
use crate::local::blobs::{BLOCK, CheckedRange, crc32_of_blocks, read_block};
use crate::metrics::UploadLabel;
use crate::origin::retry::RetryPolicy;
use crate::origin::{ContentHeaders, Origin, OriginError, PutBody, PutInput};

/// Failed attempts of a version's upload carrying the CRC32 Perch adds, after which it goes
/// without it (at once after a permanent refusal).
const CRC32_TRIES: u32 = 3;

/// Uploads of a version again after the origin was found holding another copy of its key right
/// after an upload (`AtOrigin::Other`).
const REPLACED_TRIES: u32 = 3;

/// Why a version's blob did not pass its check (`Uploader::check_blob`).
#[derive(Debug, thiserror::Error)]
enum BlobCheck {
    /// Its bytes are not the acknowledged ones, or are gone: refused, never uploaded.
    #[error("{0}")]
    Damaged(String),
    /// It could not be read now for a reason that may pass (a full file table, no memory):
    /// tried again, as an origin fault is.
    #[error("{what} {}: {source}", path.display())]
    Unreadable {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The check's own task failed.
    #[error("the blob check stopped")]
    Task(#[source] tokio::task::JoinError),
}

impl BlobCheck {
    /// A failure to open or read the blob: gone (`NotFound`), a media error (`EIO`) or a
    /// filesystem's own corruption (`EUCLEAN`, `EBADMSG`: a failed metadata checksum) is damage,
    /// anything else a failure to read it now.
    fn of(what: &'static str, path: &std::path::Path, source: std::io::Error) -> BlobCheck {
        let damage = matches!(source.raw_os_error(), Some(libc::EIO | libc::EUCLEAN | libc::EBADMSG));
        if source.kind() == std::io::ErrorKind::NotFound || damage {
            BlobCheck::Damaged(format!("{what} {}: {source}", path.display()))
        } else {
            BlobCheck::Unreadable {
                what,
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// What the origin holds of a key right after an upload of its newest version.
enum AtOrigin {
    /// The copy just uploaded.
    Ours(OriginCopy),
    /// Another object, or none: something wrote the key after the upload (a request of an earlier
    /// Perch on this volume, killed while the origin still held it, or a writer beside Perch).
    Other { etag: Option<String> },
    /// Not known: the version is no longer the newest, or the origin did not answer in time.
    Unknown,
}

/// Backoff of a failing upload: 100 ms doubling to 30 s, with jitter, for as long as it takes.
/// It is cut short when the origin answers another upload again (`Journal::hurry`).
const UPLOAD_RETRY: RetryPolicy = RetryPolicy {
    deadline: Duration::MAX,
    base_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(30),
};

/// The same once the origin answers another upload again, or while a client waits on uploads (a
/// write-through PUT, a request the origin decides behind pending writes): at most what a client's
/// own request waits between attempts (`RetryPolicy::with_deadline`), so an origin back before the
/// client's limit is found in time, without every upload trying again at once.
const UPLOAD_RETRY_HURRIED: RetryPolicy = RetryPolicy {
    max_backoff: Duration::from_secs(5),
    ..UPLOAD_RETRY
};

pub(crate) struct Uploader {
    journal: Arc<Journal>,
    /// The origin without its retry layer: the uploader retries by itself, and reports each fault.
    origin: Arc<dyn Origin>,
    /// Whether a single PUT whose client gave no checksum goes up with its full-object CRC32
    /// (`upload_input`); off for good once the origin refused an upload with it (a permanent
    /// answer, or 501) and then took it without.
    adds_crc32: AtomicBool,
}

impl Uploader {
    /// Starts the dispatcher: it hands the versions the scheduler picks to upload tasks, woken by
    /// commits and releases (and every second, to refresh the age gauge).
    /// The dispatcher holds the uploader weakly: it ends when the store drops it.
    pub(crate) fn start(journal: Arc<Journal>, origin: Arc<dyn Origin>) -> Arc<Uploader> {
        let uploader = Arc::new(Uploader {
            journal,
            origin,
            adds_crc32: AtomicBool::new(true),
        });
        let wake = uploader.journal.wake.clone();
        let weak = Arc::downgrade(&uploader);
        tokio::spawn(async move {
            loop {
                let Some(uploader) = weak.upgrade() else { return };
                let notified = wake.notified();
                for pick in uploader.journal.next_uploads() {
                    let u = uploader.clone();
                    tokio::spawn(async move {
                        if pick.skip {
                            let journal = u.journal.clone();
                            let _ = tokio::task::spawn_blocking(move || journal.release_skipped(pick.seq)).await;
                        } else {
                            u.upload(pick.seq).await;
                        }
                    });
                }
                drop(uploader);
                let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
            }
        });
        uploader
    }

    /// Reads version `seq`'s blob and checks every block against the CRC32 recorded when it was
    /// acknowledged: after a failed attempt, it tells a blob damaged on local disk (refused, kept
    /// for `perch journal`) from an origin fault (tried again). A blob that cannot be read now
    /// (too many open files, no memory, ...) is not known damaged: `BlobCheck::Unreadable`.
    async fn check_blob(&self, seq: u64, put: &RecordPut) -> Result<(), BlobCheck> {
        let (path, size, crcs) = (self.journal.local.blobs.path(seq), put.meta.size, put.crcs.clone());
        let checked = tokio::task::spawn_blocking(move || -> Result<(), BlobCheck> {
            let file = std::fs::File::open(&path).map_err(|e| BlobCheck::of("cannot open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| BlobCheck::of("cannot stat", &path, e))?
                .len();
            if len != size {
                return Err(BlobCheck::Damaged(format!(
                    "{} holds {len} bytes, not {size}",
                    path.display()
                )));
            }
            for block in 0..size.div_ceil(BLOCK) {
                match read_block(&file, size, &crcs, block) {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(BlobCheck::Damaged(format!(
                            "block {block} of {} fails its CRC32",
                            path.display()
                        )));
                    }
                    Err(e) => return Err(BlobCheck::of("cannot read", &path, e)),
                }
            }
            Ok(())
        })
        .await;
        checked.unwrap_or_else(|e| Err(BlobCheck::Task(e)))
    }

    async fn release(&self, seq: u64, result: &'static str, stored: Option<OriginCopy>) {
        let journal = self.journal.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || journal.release(seq, result, stored)).await {
            tracing::error!(seq, error = %e, "release task failed");
        }
    }

    /// Waits until the lease (if any) lets this Perch write to the origin.
    async fn writable(&self) {
        if let Some(lease) = &self.journal.cfg.lease {
            lease.writable().await;
        }
    }

    /// One request of an upload, cut if the lease turns stale before its answer (`Lease::stale`):
    /// a transient fault, sent again once a renewal proves the lease still ours. A holder cut off
    /// from the origin stops sending it then, instead of for as long as the request may take,
    /// while a taker counts down the period and margin (docs/lease.md).
    async fn under_lease<T>(&self, request: impl Future<Output = Result<T, OriginError>>) -> Result<T, OriginError> {
        let Some(lease) = &self.journal.cfg.lease else {
            return request.await;
        };
        tokio::select! {
            biased;
            answer = request => answer,
            () = lease.stale() => Err(OriginError::transient(
                "the lease turned stale before the origin answered: the request was cut, to be sent again under a \
                 renewed lease",
            )),
        }
    }

    /// Uploads version `seq`, retrying transient faults for as long as it takes.
    async fn upload(&self, seq: u64) {
        let Some(v) = self.journal.version(seq) else {
            return;
        };
        let (bucket, key) = (v.okey.bucket(), v.okey.key());
        let lease = self.journal.cfg.lease.clone();
        // A barrier closes its epoch only under a lease renewed just before it goes up.
        if let Some(lease) = &lease
            && v.mode == perch_policy::WriteMode::Barrier
        {
            lease.renew_now().await;
        }
        let mut attempt = 0u32;
        // Cleared for this version when the origin refuses it with the CRC32 Perch adds.
        let mut with_crc32 = self.adds_crc32.load(Ordering::Relaxed);
        let mut failed_with_crc32 = 0u32;
        // A refusal that names what was asked (permanent, or 501) came while it carried one.
        let mut refused_with_crc32 = false;
        let mut replaced = 0u32;
        loop {
            self.writable().await;
            // Uploads hurried from here on hurry this one's next attempt, should it fail.
            let (hurries, returns) = (self.journal.hurries(), self.journal.returns());
            let mut crc32_added = false;
            // The body goes up checked block by block as it is read (`CheckedRange`): a damaged
            // block cuts the request short, and the failure is told apart below.
            let result = match &v.put {
                None => self
                    .under_lease(self.origin.delete_object(bucket, key, None))
                    .await
                    .map(|()| None),
                Some(put) => match &put.parts {
                    None => {
                        let input = self.upload_input(&v, put, seq, with_crc32);
                        crc32_added = input.checksums.crc32.is_some() && put.meta.checksums.is_empty();
                        self.under_lease(self.origin.put_object(bucket, key, &input))
                            .await
                            .map(Some)
                    }
                    Some(parts) => self.upload_parts(&v, put, parts, seq).await.map(Some),
                },
            };
            let result = match result {
                Err(OriginError::NoSuchKey) if v.put.is_none() => Ok(None),
                // S3 never answers a PUT so; an origin that does, with that code (moto, for a key
                // holding a line feed), answers it every time: a refusal, kept for an operator, not
                // a fault to retry for ever (a stop waited its whole drain for it, and it could not
                // be dropped). A bare 404 to a PUT is a fault, retried (`Subject::Write`).
                Err(OriginError::NoSuchKey) => Err(OriginError::Rejected {
                    status: 404,
                    code: "NoSuchKey".to_owned(),
                    message: "the origin answered the upload of this key 404 NoSuchKey".to_owned(),
                }),
                other => other,
            };
            // A failed attempt: was the blob damaged? The only copy of an acknowledged write must
            // not go up as it is, nor be tried for ever.
            if result.is_err()
                && let Some(put) = &v.put
            {
                crate::journal::pause_point_async("upload_failed").await;
                match self.check_blob(seq, put).await {
                    Ok(()) => {}
                    Err(BlobCheck::Damaged(why)) => {
                        tracing::error!(
                            bucket,
                            key,
                            seq,
                            why,
                            "a version's blob fails its check; it is not uploaded"
                        );
                        self.journal.refuse(
                            seq,
                            format!("the local copy is damaged ({why}); it was not uploaded (perch journal)"),
                        );
                        return;
                    }
                    // Not known damaged: the next attempt reads it again, and checks it again
                    // if that fails too.
                    Err(e) => tracing::warn!(bucket, key, seq, error = %e, "cannot check a version's blob now"),
                }
            }
            // The CRC32 Perch adds must never keep an acknowledged write from the origin: an
            // origin that refuses it (400 InvalidArgument, 501 NotImplemented, ...) gets the same
            // upload without it, at once after a refusal, else after `CRC32_TRIES` failures.
            if let Err(e) = &result
                && crc32_added
            {
                failed_with_crc32 += 1;
                let refused = e.is_permanent() || e.is_not_implemented();
                refused_with_crc32 |= refused;
                if refused || failed_with_crc32 >= CRC32_TRIES {
                    tracing::warn!(
                        bucket,
                        key,
                        seq,
                        error = %e,
                        "an upload with the CRC32 Perch adds failed; sending it without"
                    );
                    with_crc32 = false;
                    if refused {
                        continue;
                    }
                }
            }
            match result {
                Ok(out) => {
                    if let (Some(out), Some(put)) = (&out, &v.put)
                        && !crate::origin::same_etag(&out.etag, &put.meta.etag)
                        && !out.etag.is_empty()
                    {
                        tracing::warn!(
                            key,
                            seq,
                            acked = put.meta.etag,
                            origin = out.etag,
                            "the origin gave another ETag than the one acknowledged"
                        );
                    }
                    if refused_with_crc32 && self.adds_crc32.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            key,
                            seq,
                            "the origin took without its CRC32 an upload it refused with it: uploads go \
                             without the CRC32 Perch adds from now on"
                        );
                    }
                    self.journal.stats.uploaded_bytes.inc_by(v.size());
                    self.journal.note_origin_fault(None);
                    self.journal.mark_in_origin(seq);
                    // A DELETE is checked as a PUT is: a copy that lands right after it (a late
                    // request of an earlier Perch, or another writer) would otherwise stay at the
                    // origin, served again once the tombstone is released.
                    if v.put.is_none() && replaced < REPLACED_TRIES && self.still_at_origin(&v, seq).await {
                        replaced += 1;
                        tracing::warn!(
                            key,
                            seq,
                            attempt = replaced,
                            "the origin holds the key right after its DELETE (a late request of an earlier \
                             Perch, or another writer); deleting it again"
                        );
                        continue;
                    }
                    let stored = match (&out, &v.put) {
                        (Some(out), Some(put)) => match self.origin_copy(&v, put, &out.etag, seq).await {
                            AtOrigin::Ours(copy) => Some(copy),
                            // The newest version must be what the origin keeps: up again.
                            AtOrigin::Other { etag } if replaced < REPLACED_TRIES => {
                                replaced += 1;
                                tracing::warn!(
                                    key,
                                    seq,
                                    origin = etag.as_deref().unwrap_or("none"),
                                    attempt = replaced,
                                    "the origin holds another copy of the key right after its upload (a late \
                                     request of an earlier Perch, or another writer); uploading it again"
                                );
                                continue;
                            }
                            AtOrigin::Other { etag } => {
                                tracing::error!(
                                    key,
                                    seq,
                                    origin = etag.as_deref().unwrap_or("none"),
                                    "the origin still holds another copy of the key after {REPLACED_TRIES} uploads \
                                     again; released as uploaded"
                                );
                                None
                            }
                            AtOrigin::Unknown => None,
                        },
                        _ => None,
                    };
                    self.release(seq, "ok", stored).await;
                    return;
                }
                Err(e) if e.is_permanent() => {
                    tracing::error!(
                        bucket,
                        key,
                        seq,
                        error = %e,
                        "the origin refused an upload for good; the version is kept (perch status)"
                    );
                    // An answer: the origin is reachable again, whatever it said.
                    self.journal.note_origin_fault(None);
                    self.journal.refused_by_origin(seq, &e);
                    return;
                }
                Err(e) => {
                    attempt += 1;
                    self.journal
                        .stats
                        .uploads
                        .get_or_create(&UploadLabel { result: "retried" })
                        .inc();
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(key, seq, attempt, error = %e, "upload failed; retrying");
                    }
                    // Until the next attempt, until the origin answers another upload, or until
                    // an operator gives it up (checked below). Both notices are listened for
                    // before the fault is noted: an answer to another upload right after it is
                    // not missed.
                    let given_up = self.journal.give_ups.notified();
                    tokio::pin!(given_up);
                    given_up.as_mut().enable();
                    let hurry = self.journal.hurry.notified();
                    tokio::pin!(hurry);
                    hurry.as_mut().enable();
                    // Hurried since this attempt started (the origin answered another upload while
                    // this one's blob was checked, say): that notice was sent before it listened.
                    let hurried = self.journal.hurries() != hurries;
                    // A fault older than the origin's answer to another upload is no news of it.
                    if self.journal.returns() == returns {
                        self.journal.note_origin_fault(Some(&e));
                    }
                    self.journal.note_retry(seq, e.to_string());
                    if !self.journal.given_up(seq) {
                        self.wait_to_retry(attempt, hurried, given_up, hurry).await;
                    }
                    // Only here, after a fault: an attempt that went up is never given up.
                    if self.journal.given_up(seq) {
                        tracing::warn!(
                            bucket,
                            key,
                            seq,
                            attempt,
                            error = %e,
                            "an upload tried again through faults was given up by an operator"
                        );
                        self.journal.refuse(
                            seq,
                            format!("given up by an operator after {attempt} attempts; the last fault: {e}"),
                        );
                        return;
                    }
                }
            }
        }
    }

    /// Waits before attempt `attempt + 1` of a failed upload: its backoff, drawn again once at
    /// most `UPLOAD_RETRY_HURRIED`'s when `hurry` fires (the origin answered another upload, or a
    /// client started waiting on uploads), when it fired already since the attempt started
    /// (`hurried_already`) or when a client already waits; cut short when `given_up` fires.
    async fn wait_to_retry(
        &self,
        attempt: u32,
        hurried_already: bool,
        mut given_up: Pin<&mut Notified<'_>>,
        hurry: Pin<&mut Notified<'_>>,
    ) {
        let hurried = |now: Instant| now + UPLOAD_RETRY_HURRIED.backoff(attempt);
        let now = Instant::now();
        let mut until = now + UPLOAD_RETRY.backoff(attempt);
        if hurried_already || self.journal.clients_waiting() {
            until = until.min(hurried(now));
        }
        tokio::select! {
            () = tokio::time::sleep_until(until) => return,
            () = given_up.as_mut() => return,
            () = hurry => {}
        }
        until = until.min(hurried(Instant::now()));
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = given_up => {}
        }
    }

    /// Uploads a multipart version as a multipart upload with the same part layout: each part is
    /// its range of the blob, checked as it is read, sent with its checksums. A failure abandons
    /// the origin's upload (`abandon`) and the whole version is tried again.
    async fn upload_parts(
        &self,
        v: &Version,
        put: &RecordPut,
        parts: &[PartLayout],
        seq: u64,
    ) -> Result<crate::origin::PutOutput, OriginError> {
        let checksum = multipart_checksum(&put.meta.checksums);
        let origin = &self.origin;
        let (bucket, key) = (v.okey.bucket(), v.okey.key());
        let (headers, extra) = self.upload_headers(v, put);
        let id = origin
            .create_multipart_upload(bucket, key, &headers, &extra, checksum)
            .await?;
        let result = async {
            let mut done = Vec::with_capacity(parts.len());
            let mut offset = 0u64;
            for (i, part) in parts.iter().enumerate() {
                let number = i as i32 + 1;
                // Each part and the completion start under a fresh lease, as the upload did: a
                // pause between parts must not let the rest go up after another holder took it.
                self.writable().await;
                let body = PutBody::Blob(self.checked_range(seq, put, offset, part.size));
                let out = self
                    .under_lease(origin.upload_part(bucket, key, &id, number, &body, &part.checksums))
                    .await?;
                done.push(crate::origin::CompletedPart {
                    part_number: number,
                    etag: out.etag,
                    checksums: part.checksums.clone(),
                });
                offset += part.size;
            }
            self.writable().await;
            self.under_lease(origin.complete_multipart_upload(bucket, key, &id, &done))
                .await
        }
        .await;
        if result.is_err() {
            abandon(origin, bucket, key, &id).await;
        }
        result
    }

    /// The headers of the upload of `v`: its own content headers, with the policy's upload
    /// headers set over them (`ContentHeaders::for_upload`). The write was checked at the door
    /// with the policy of then; a policy reloaded since whose headers its upload could not carry
    /// (past S3's 2 KB of metadata or 8 KB of headers) is left out of it, or the origin would
    /// refuse an acknowledged write for good.
    fn upload_headers(&self, v: &Version, put: &RecordPut) -> (ContentHeaders, Vec<(String, String)>) {
        let decision = self
            .journal
            .cfg
            .policy
            .decide(v.okey.bucket(), v.okey.key(), Method::Put);
        if let Err(error) = put.meta.headers.check_uploadable(&decision.upload_headers) {
            tracing::warn!(
                bucket = v.okey.bucket(),
                key = v.okey.key(),
                %error,
                "uploaded without the policy's upload headers: with them the origin would refuse it"
            );
            return put.meta.headers.for_upload(&[]);
        }
        put.meta.headers.for_upload(&decision.upload_headers)
    }

    /// `len` bytes at `offset` of version `seq`'s blob, each block checked as it is read.
    fn checked_range(&self, seq: u64, put: &RecordPut, offset: u64, len: u64) -> CheckedRange {
        let path = self.journal.local.blobs.path(seq);
        CheckedRange::new(path, put.meta.size, put.crcs.as_slice().into(), offset, len)
    }

    /// The input of the upload of a single-part version. Without a checksum of its client's, it
    /// carries (`with_crc32`) its full-object CRC32, made from the block CRCs at no cost: an
    /// origin that keeps it (S3, Tigris, s3s-fs) hands it back with the object, and a fill then
    /// checks the body by its blocks instead of hashing it again for its MD5 ETag (`fill::Check`).
    fn upload_input(&self, v: &Version, put: &RecordPut, seq: u64, with_crc32: bool) -> PutInput {
        let (headers, extra) = self.upload_headers(v, put);
        let mut checksums = put.meta.checksums.clone();
        if with_crc32 && checksums.is_empty() {
            let crc = crc32_of_blocks(&put.crcs, put.meta.size);
            checksums.crc32 = Some(aws_smithy_types::base64::encode(crc.to_be_bytes()));
        }
        PutInput {
            headers,
            checksums,
            body: PutBody::Blob(self.checked_range(seq, put, 0, put.meta.size)),
            if_match: None,
            if_none_match: None,
            content_md5: md5_of_etag(&put.meta.etag),
            extra_headers: extra,
        }
    }

    /// What the origin holds of the key an upload just stored (a HEAD), while the version is the
    /// newest: its ETag, Last-Modified and class when it is the copy uploaded, for the clean cache entry
    /// the version stays as. Another copy is one whose ETag is neither the one the upload was
    /// answered nor the acknowledged one (an origin may answer a HEAD with either), or none; it
    /// is told only when the upload's answer named its ETag.
    /// Whether the origin holds `v`'s key right after its DELETE was uploaded, while that DELETE
    /// is still the key's newest version (`false` when not known in time).
    async fn still_at_origin(&self, v: &Version, seq: u64) -> bool {
        if !self.journal.is_newest(&v.okey, seq) {
            return false;
        }
        let unconditional = crate::origin::Conditions::default();
        let head = self.origin.head_object(v.okey.bucket(), v.okey.key(), &unconditional);
        matches!(tokio::time::timeout(Duration::from_secs(5), head).await, Ok(Ok(_)))
            && self.journal.is_newest(&v.okey, seq)
    }

    async fn origin_copy(&self, v: &Version, put: &RecordPut, put_etag: &str, seq: u64) -> AtOrigin {
        if !self.journal.is_newest(&v.okey, seq) {
            return AtOrigin::Unknown;
        }
        let unconditional = crate::origin::Conditions::default();
        let head = self.origin.head_object(v.okey.bucket(), v.okey.key(), &unconditional);
        let meta = match tokio::time::timeout(Duration::from_secs(5), head).await {
            Ok(Ok(meta)) => meta,
            Ok(Err(OriginError::NoSuchKey)) if self.journal.is_newest(&v.okey, seq) => {
                return AtOrigin::Other { etag: None };
            }
            _ => return AtOrigin::Unknown,
        };
        let expected = if put_etag.is_empty() {
            put.meta.etag.as_str()
        } else {
            put_etag
        };
        if crate::origin::same_etag(&meta.etag, expected) && meta.size == put.meta.size {
            return AtOrigin::Ours(OriginCopy {
                etag: meta.etag,
                last_modified: meta.last_modified,
                storage_class: meta.headers.storage_class,
            });
        }
        // Without the ETag the origin answered the upload, another one proves nothing (an origin
        // whose ETags are not MD5s would have every write uploaded again).
        let acked = crate::origin::same_etag(&meta.etag, &put.meta.etag) && meta.size == put.meta.size;
        if put_etag.is_empty() || acked || !self.journal.is_newest(&v.okey, seq) {
            return AtOrigin::Unknown;
        }
        AtOrigin::Other { etag: Some(meta.etag) }
    }
}

/// `Content-MD5` for the upload of a single-part version: its ETag is the body's MD5.
fn md5_of_etag(etag: &str) -> Option<String> {
    let hex = etag.trim_matches('"');
    let raw = hex::decode(hex).ok().filter(|r| r.len() == 16)?;
    Some(aws_smithy_types::base64::encode(raw))
}

/// The multipart checksum of an object from its checksums: the algorithm that has a value, as
/// COMPOSITE (`…-N`) or FULL_OBJECT.
fn multipart_checksum(c: &crate::origin::Checksums) -> Option<crate::origin::MultipartChecksum> {
    let (algorithm, _) = c.iter().next()?;
    Some(crate::origin::MultipartChecksum {
        algorithm,
        checksum_type: c.checksum_type()?,
    })
}

/// How long the abort of an abandoned origin upload is tried again, in the background.
const ABORT_RETRY_FOR: Duration = Duration::from_secs(600);

/// Aborts the origin's upload `id`, abandoned by a failed version, and goes on trying in the
/// background while the origin fails it with anything but a refusal: the outage that failed the
/// upload fails its abort too, and an upload left open keeps its parts (billed, on S3). One Perch
/// dies with cannot be aborted here: docs/write-back.md names the lifecycle rule that removes it.
async fn abandon(origin: &Arc<dyn Origin>, bucket: &str, key: &str, id: &str) {
    let first = match origin.abort_multipart_upload(bucket, key, id).await {
        Err(e) if !e.is_permanent() => e,
        _ => return,
    };
    tracing::debug!(upload = %id, error = %first, "an abandoned origin upload's abort will be tried again");
    let (origin, bucket, key, id) = (origin.clone(), bucket.to_owned(), key.to_owned(), id.to_owned());
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + ABORT_RETRY_FOR;
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            match origin.abort_multipart_upload(&bucket, &key, &id).await {
                Err(e) if !e.is_permanent() && tokio::time::Instant::now() < deadline => {
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
                Err(e) => {
                    tracing::warn!(upload = %id, %bucket, %key, error = %e, "an abandoned origin upload could not be aborted");
                    return;
                }
                Ok(()) => return,
            }
        }
    });
}
