//! Receives a request body whole before anything is sent on: verifies its length, its signed
//! SHA-256 (through s3s), Content-MD5 and flexible checksums, and keeps it replayable for retries.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use perch_cache::{BodyDigest, Checksums, Digested, PromisedDigest, PutBody};
use s3s::checksum::ChecksumHasher;
use s3s::dto::{ChecksumAlgorithm, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};

/// Bodies below this size stay in memory; larger ones go to a temp file under the data dir,
/// written as they arrive on a thread of their own.
const IN_MEMORY_MAX: u64 = 1 << 20;
/// Bodies from this size on get their MD5 and CRCs computed on a thread of their own, beside the
/// SHA-256 the signature check computes on the receiving task.
const DIGEST_BESIDE_MIN: u64 = 1 << 20;
/// A spool file's pages are handed to the disk every this many bytes while the body arrives, so
/// that the fsync that makes it durable has little left to write.
const WRITEBACK_EVERY: u64 = 256 << 10;

/// Who makes a spool file durable: `receive` before it returns (a part, staged by copying it), or
/// the commit that renames it to its blob name and fsyncs it there (a PUT: the body is synced
/// once, under its final name, beside its directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolSync {
    Here,
    InCommit,
}

/// Writes a spool file on a blocking thread as the chunks come (the receiving task only hands
/// them over), starting the disk writes every `WRITEBACK_EVERY` bytes.
struct SpoolWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    done: tokio::task::JoinHandle<std::io::Result<std::fs::File>>,
}

impl SpoolWriter {
    fn new(file: std::fs::File) -> SpoolWriter {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let done = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut file = file;
            let (mut written, mut handed) = (0u64, 0u64);
            while let Some(chunk) = rx.blocking_recv() {
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                if written - handed >= WRITEBACK_EVERY {
                    perch_cache::start_writeback(&file, handed, written - handed);
                    handed = written;
                }
            }
            if written > handed {
                perch_cache::start_writeback(&file, handed, written - handed);
            }
            Ok(file)
        });
        SpoolWriter { tx, done }
    }

    async fn write(&mut self, chunk: Bytes) -> S3Result<()> {
        if self.tx.send(chunk).await.is_ok() {
            return Ok(());
        }
        // The writer stopped at an error: that error is the answer.
        Err(internal(match (&mut self.done).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => std::io::Error::other("the spool writer ended early"),
            Err(e) => std::io::Error::other(e),
        }))
    }

    /// Waits until every chunk is written (and, with `SpoolSync::Here`, fsynced).
    async fn finish(self, sync: SpoolSync) -> std::io::Result<()> {
        let SpoolWriter { tx, done } = self;
        drop(tx);
        let file = done.await.map_err(std::io::Error::other)??;
        if sync == SpoolSync::Here && !perch_cache::skips_sync(perch_cache::SyncStep::Blob) {
            tokio::task::spawn_blocking(move || file.sync_all())
                .await
                .map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

/// What the store keeps of a body (its MD5, the ETag, and its block checksums), computed inline
/// for small bodies and on a blocking thread for large ones.
enum Digests {
    Inline(BodyDigest),
    Beside {
        tx: tokio::sync::mpsc::Sender<Bytes>,
        done: tokio::sync::oneshot::Receiver<Digested>,
    },
}

impl Digests {
    fn new(expected_len: Option<u64>) -> Digests {
        if expected_len.is_some_and(|n| n < DIGEST_BESIDE_MIN) {
            return Digests::Inline(BodyDigest::new());
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut digest = BodyDigest::new();
            while let Some(chunk) = rx.blocking_recv() {
                digest.update(&chunk);
            }
            let _ = done_tx.send(digest.finish());
        });
        Digests::Beside { tx, done }
    }

    async fn update(&mut self, chunk: &Bytes) -> S3Result<()> {
        match self {
            Digests::Inline(digest) => {
                digest.update(chunk);
                Ok(())
            }
            Digests::Beside { tx, .. } => tx
                .send(chunk.clone())
                .await
                .map_err(|_| internal(std::io::Error::other("the digest thread ended"))),
        }
    }

    /// The body has ended: its digest, which a large body's thread may still be finishing.
    fn promise(self) -> PromisedDigest {
        match self {
            Digests::Inline(digest) => PromisedDigest::Ready(digest.finish()),
            Digests::Beside { tx, done } => {
                drop(tx);
                PromisedDigest::Computing(done)
            }
        }
    }

    async fn finish(self) -> S3Result<Digested> {
        self.promise().wait().await.map_err(internal)
    }
}

/// A verified body. A file-backed one is written (and fsynced with `SpoolSync::Here`).
pub struct Spooled {
    pub body: PutBody,
    /// The checksums the client declared, all verified.
    pub checksums: Checksums,
    /// What the store keeps of the body: its MD5 (the ETag) and block checksums. Without a
    /// Content-MD5 to check, a large body's may still be computing (the commit waits for it
    /// after the body's syncs).
    pub digest: PromisedDigest,
    /// Removes the spool file when dropped, unless a commit renamed it into place.
    pub file: SpoolFile,
}

pub struct SpoolFile(Option<PathBuf>);

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the client declared about the body.
#[derive(Default)]
pub struct Declared<'a> {
    pub content_length: Option<i64>,
    pub content_md5: Option<&'a str>,
    pub algorithm: Option<&'a ChecksumAlgorithm>,
    pub checksums: Checksums,
    /// `x-amz-decoded-content-length`: an aws-chunked body's length, its only one when
    /// `Transfer-Encoding: chunked` framed it (s3s then leaves `content_length` unset).
    pub decoded_length: Option<u64>,
    /// The checksums `x-amz-trailer` declares: computed as the body arrives, and the only ones a
    /// trailer may carry.
    pub trailer: Vec<perch_cache::ChecksumAlgorithm>,
}

impl Declared<'_> {
    /// Adds what the request's headers declare beyond its input: `x-amz-decoded-content-length`
    /// and `x-amz-trailer`.
    pub fn with_headers(mut self, headers: &http::HeaderMap) -> S3Result<Self> {
        if let Some(v) = headers.get("x-amz-decoded-content-length") {
            let n = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| s3_error!(InvalidArgument, "invalid header: x-amz-decoded-content-length"))?;
            self.decoded_length = Some(n);
        }
        for v in headers.get_all("x-amz-trailer") {
            let v = v
                .to_str()
                .map_err(|_| s3_error!(InvalidArgument, "invalid header: x-amz-trailer"))?;
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let algorithm = perch_cache::ChecksumAlgorithm::ALL
                    .into_iter()
                    .find(|a| a.header_name().eq_ignore_ascii_case(name))
                    .ok_or_else(|| {
                        s3_error!(
                            InvalidArgument,
                            "x-amz-trailer names `{name}`: only a checksum (x-amz-checksum-*) may trail a body."
                        )
                    })?;
                self.trailer.push(algorithm);
            }
        }
        self.check_one_checksum(headers)?;
        Ok(self)
    }

    /// S3 takes at most one checksum of a body, by value or by trailer, of the algorithm that
    /// `x-amz-sdk-checksum-algorithm` names if it names one, and refuses the request otherwise:
    /// the origin would refuse its upload forever, so it is refused before it is acknowledged.
    fn check_one_checksum(&self, headers: &http::HeaderMap) -> S3Result<()> {
        let mut named: Vec<perch_cache::ChecksumAlgorithm> = self.checksums.iter().map(|(a, _)| a).collect();
        named.extend(self.trailer.iter().copied());
        named.sort_by_key(|a| a.as_str());
        named.dedup();
        if named.len() > 1 {
            return Err(s3_error!(
                InvalidRequest,
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
            ));
        }
        if let Some(v) = headers.get("x-amz-sdk-checksum-algorithm") {
            let algorithm = v
                .to_str()
                .ok()
                .and_then(|v| perch_cache::ChecksumAlgorithm::parse(v.trim()));
            if algorithm.is_none() || named.first().is_some_and(|n| Some(*n) != algorithm) {
                return Err(s3_error!(
                    InvalidRequest,
                    "Value for x-amz-sdk-checksum-algorithm header is invalid."
                ));
            }
            if named.is_empty() {
                return Err(s3_error!(
                    InvalidRequest,
                    "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or x-amz-trailer headers were found."
                ));
            }
        }
        Ok(())
    }
}

/// Maps a failure of the body stream to the S3 error the client should see, the failure its
/// source. s3s keeps its stream error types private, so they are told apart by their names.
fn stream_error(err: s3s::StdError) -> S3Error {
    let err = match err.downcast::<S3Error>() {
        Ok(e) => return *e,
        Err(err) => err,
    };
    let mut answer = answer_to_stream_error(&err.to_string());
    answer.set_source(err);
    answer
}

/// The S3 error for a body stream's failure, by its text (`stream_error`).
fn answer_to_stream_error(text: &str) -> S3Error {
    if text.contains("Sha256Mismatch") {
        let code = "XAmzContentSHA256Mismatch".parse().unwrap_or(S3ErrorCode::BadDigest);
        let mut e = S3Error::with_message(
            code,
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        );
        e.set_status_code(http::StatusCode::BAD_REQUEST);
        e
    } else if text.contains("SignatureMismatch") {
        s3_error!(SignatureDoesNotMatch, "A chunk signature does not match.")
    } else if text.contains("LengthMismatch") {
        s3_error!(IncompleteBody, "The body is longer than its declared length.")
    } else if text.contains(crate::limits::MARK) {
        s3_error!(
            RequestTimeout,
            "Your socket connection to the server was not read from or written to within the timeout period."
        )
    } else if text.contains("FormatError") || text.contains("TooLarge") || text.contains("TooMany") {
        s3_error!(InvalidRequest, "The aws-chunked body is malformed.")
    } else {
        s3_error!(IncompleteBody, "The request body ended before its declared length.")
    }
}

/// Makes `h` compute `algorithm` too.
pub fn compute(h: &mut ChecksumHasher, algorithm: perch_cache::ChecksumAlgorithm) {
    use perch_cache::ChecksumAlgorithm as A;
    match algorithm {
        A::Crc32 => h.crc32 = Some(Default::default()),
        A::Crc32c => h.crc32c = Some(Default::default()),
        A::Crc64nvme => h.crc64nvme = Some(Default::default()),
        A::Sha1 => h.sha1 = Some(Default::default()),
        A::Sha256 => h.sha256 = Some(Default::default()),
    }
}

/// What a finished hasher computed for `algorithm`, if it computed it.
pub fn value_of(c: &s3s::dto::Checksum, algorithm: perch_cache::ChecksumAlgorithm) -> Option<&str> {
    use perch_cache::ChecksumAlgorithm as A;
    match algorithm {
        A::Crc32 => c.checksum_crc32.as_deref(),
        A::Crc32c => c.checksum_crc32c.as_deref(),
        A::Crc64nvme => c.checksum_crc64nvme.as_deref(),
        A::Sha1 => c.checksum_sha1.as_deref(),
        A::Sha256 => c.checksum_sha256.as_deref(),
    }
}

/// A hasher of every checksum the client declared: by value, by trailer, or by algorithm alone.
fn hasher_for(declared: &Declared<'_>) -> S3Result<ChecksumHasher> {
    let mut h = ChecksumHasher::default();
    for algorithm in perch_cache::ChecksumAlgorithm::ALL {
        if declared.checksums.get(algorithm).is_some() || declared.trailer.contains(&algorithm) {
            compute(&mut h, algorithm);
        }
    }
    if let Some(alg) = declared.algorithm {
        let algorithm = perch_cache::ChecksumAlgorithm::parse(alg.as_str())
            .ok_or_else(|| s3_error!(InvalidArgument, "Unsupported checksum algorithm `{}`", alg.as_str()))?;
        compute(&mut h, algorithm);
    }
    Ok(h)
}

/// Fills in checksums that arrived as trailers of an aws-chunked body.
pub fn apply_trailers(checksums: &mut Checksums, trailers: Option<&s3s::TrailingHeaders>) -> S3Result<()> {
    let Some(map) = trailers.and_then(|t| t.take()) else {
        return Ok(());
    };
    let get = |name: &str| -> S3Result<Option<String>> {
        map.get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| s3_error!(InvalidArgument, "invalid trailer {name}"))
            })
            .transpose()
    };
    for algorithm in perch_cache::ChecksumAlgorithm::ALL {
        if let Some(v) = get(algorithm.header_name())? {
            *checksums.slot(algorithm) = Some(v);
        }
    }
    Ok(())
}

/// Refuses a checksum that is not the base64 of its algorithm's digest (4 bytes for the CRC32s, 8
/// for CRC64NVME, 20 for SHA-1, 32 for SHA-256) as S3 does: 400 InvalidRequest, before any
/// comparison (it answered BadDigest, as if the body had been damaged).
fn check_well_formed(checksums: &Checksums) -> S3Result<()> {
    use perch_cache::ChecksumAlgorithm as A;
    for (algorithm, value) in checksums.iter() {
        let len = match algorithm {
            A::Crc32 | A::Crc32c => 4,
            A::Crc64nvme => 8,
            A::Sha1 => 20,
            A::Sha256 => 32,
        };
        if !base64_simd::STANDARD
            .decode_to_vec(value.trim())
            .is_ok_and(|d| d.len() == len)
        {
            return Err(s3_error!(
                InvalidRequest,
                "Value for {} header is invalid.",
                algorithm.header_name()
            ));
        }
    }
    Ok(())
}

/// S3's answer to a trailer the request did not declare in `x-amz-trailer`.
fn malformed_trailer(name: &str) -> S3Error {
    let code = "MalformedTrailerError".parse().unwrap_or(S3ErrorCode::InvalidRequest);
    let mut e = S3Error::with_message(
        code,
        format!("The trailer {name} was not declared in x-amz-trailer; nothing was stored."),
    );
    e.set_status_code(http::StatusCode::BAD_REQUEST);
    e
}

/// S3's answer to a body whose declared trailer never came.
fn missing_trailer() -> S3Error {
    let code = "MalformedTrailerError".parse().unwrap_or(S3ErrorCode::InvalidRequest);
    let mut e = S3Error::with_message(
        code,
        "The request contained trailing data that was not well-formed or did not conform to our published schema.",
    );
    e.set_status_code(http::StatusCode::BAD_REQUEST);
    e
}

fn check_one(name: &str, declared: &Option<String>, computed: &Option<String>) -> S3Result<()> {
    match (declared, computed) {
        (Some(d), Some(c)) if d != c => Err(s3_error!(
            BadDigest,
            "The {name} you specified did not match the calculated checksum."
        )),
        _ => Ok(()),
    }
}

/// Reads `body` to its end into memory or a temp file in `dir`, verifying everything declared.
/// `trailers` is read after the body ends, when trailer checksums have arrived. A body longer
/// than it declared is cut; the declared length was checked against --body-bytes-max before
/// (`server`), and s3s requires one. A temp file's room is allocated before the body is read
/// (`Store::allocate`): while the data dir's filesystem is full, the request waits for room
/// before it reads on, so a body is never cut by a full disk. `sync` says who fsyncs a temp file.
pub async fn receive(
    body: Option<StreamingBlob>,
    declared: Declared<'_>,
    trailers: Option<&s3s::TrailingHeaders>,
    dir: &Path,
    store: &perch_cache::Store,
    sync: SpoolSync,
) -> S3Result<Spooled> {
    check_well_formed(&declared.checksums)?;
    let mut hasher = hasher_for(&declared)?;
    let expected_len = match declared.content_length {
        Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "negative Content-Length")),
        Some(n) => Some(n as u64),
        // An aws-chunked body framed by `Transfer-Encoding: chunked` has only its decoded length:
        // a body that ends short of it (even at once, empty) is incomplete, never a shorter object.
        None => declared.decoded_length,
    };
    let mut digests = Digests::new(expected_len);
    let to_file = expected_len.is_none_or(|n| n >= IN_MEMORY_MAX);

    let mut mem = BytesMut::new();
    let mut file = None;
    // Removes the file on every early return.
    let mut temp = SpoolFile(None);
    if to_file {
        let path = dir.join(format!("spool-{}", uuid::Uuid::new_v4()));
        let f = tokio::fs::File::create(&path).await.map_err(internal)?;
        temp = SpoolFile(Some(path));
        if let Some(len) = expected_len {
            use std::os::fd::AsFd;
            store
                .allocate(f.as_fd(), len)
                .await
                .map_err(crate::convert::store_error)?;
        }
        file = Some(SpoolWriter::new(f.into_std().await));
    }

    let mut len: u64 = 0;
    if let Some(mut stream) = body {
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(stream_error)?;
            len += chunk.len() as u64;
            if expected_len.is_some_and(|n| len > n) {
                return Err(s3_error!(
                    IncompleteBody,
                    "The body is longer than its declared length."
                ));
            }
            digests.update(&chunk).await?;
            hasher.update(&chunk);
            match &mut file {
                Some(f) => f.write(chunk).await?,
                None => mem.extend_from_slice(&chunk),
            }
        }
    }
    if expected_len.is_some_and(|n| len != n) {
        return Err(s3_error!(
            IncompleteBody,
            "The request body ended before its declared length."
        ));
    }
    // The spool file's last chunks are written (and its pages handed to the disk) while the MD5
    // is finished; a commit renames it into place and fsyncs it there.
    let synced = async {
        match file.take() {
            Some(f) => f.finish(sync).await,
            None => Ok(()),
        }
    };
    // A Content-MD5 is checked before anything is committed; without one, a large body's MD5 is
    // left to finish beside the commit's syncs.
    let digest = match declared.content_md5 {
        Some(content_md5) => {
            let (digested, synced) = tokio::join!(digests.finish(), synced);
            synced.map_err(internal)?;
            let digest = digested?;
            let given = base64_simd::STANDARD
                .decode_to_vec(content_md5)
                .ok()
                .filter(|md5| md5.len() == 16)
                .ok_or_else(|| s3_error!(InvalidDigest, "The Content-MD5 you specified is not valid."))?;
            if given.as_slice() != digest.md5().as_slice() {
                return Err(s3_error!(
                    BadDigest,
                    "The Content-MD5 you specified did not match what we received."
                ));
            }
            PromisedDigest::Ready(digest)
        }
        None => {
            let digest = digests.promise();
            synced.await.map_err(internal)?;
            digest
        }
    };

    let mut checksums = declared.checksums;
    apply_trailers(&mut checksums, trailers)?;
    // A trailer `x-amz-trailer` declared that never came: S3 refuses the body (it was stored
    // with Perch's own checksum in its place).
    if declared
        .trailer
        .iter()
        .any(|&algorithm| checksums.slot(algorithm).is_none())
    {
        return Err(missing_trailer());
    }
    check_well_formed(&checksums)?;
    let computed = hasher.finalize();
    // A checksum nothing computed came in a trailer `x-amz-trailer` did not declare: it cannot be
    // checked, and kept it would be served, and sent to an origin that refuses the upload for good.
    for algorithm in perch_cache::ChecksumAlgorithm::ALL {
        if checksums.slot(algorithm).is_some() && value_of(&computed, algorithm).is_none() {
            return Err(malformed_trailer(algorithm.header_name()));
        }
    }
    check_one("CRC32 checksum", &checksums.crc32, &computed.checksum_crc32)?;
    check_one("CRC32C checksum", &checksums.crc32c, &computed.checksum_crc32c)?;
    check_one("CRC64NVME checksum", &checksums.crc64nvme, &computed.checksum_crc64nvme)?;
    check_one("SHA1 checksum", &checksums.sha1, &computed.checksum_sha1)?;
    check_one("SHA256 checksum", &checksums.sha256, &computed.checksum_sha256)?;
    // A checksum the client asked for by algorithm only is kept as computed.
    let checksums = Checksums {
        crc32: checksums.crc32.or(computed.checksum_crc32),
        crc32c: checksums.crc32c.or(computed.checksum_crc32c),
        crc64nvme: checksums.crc64nvme.or(computed.checksum_crc64nvme),
        sha1: checksums.sha1.or(computed.checksum_sha1),
        sha256: checksums.sha256.or(computed.checksum_sha256),
    };

    let body = match &temp.0 {
        Some(path) => PutBody::File {
            path: path.clone(),
            len,
        },
        None => PutBody::Bytes(mem.freeze()),
    };
    Ok(Spooled {
        body,
        checksums,
        digest,
        file: temp,
    })
}

fn internal(e: std::io::Error) -> S3Error {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        // A filesystem that cannot preallocate, filled by someone else meanwhile: the client may
        // send it again once there is room (nothing of this body is kept).
        tracing::warn!(error = %e, "the data dir's filesystem is full: a request body is refused");
        let mut err = S3Error::with_message(S3ErrorCode::SlowDown, "Perch's disk is full; please retry.");
        err.set_status_code(http::StatusCode::SERVICE_UNAVAILABLE);
        err.set_source(Box::new(e));
        return err;
    }
    tracing::error!(error = %e, "spooling a request body failed");
    let mut err = S3Error::with_message(
        S3ErrorCode::InternalError,
        "Perch could not store the request body locally.",
    );
    err.set_source(Box::new(e));
    err
}
