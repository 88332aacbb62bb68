//! Bodies given to the store: `BodyDigest` computes, as the bytes arrive, what the store keeps of a
//! body (its MD5, the S3 ETag, and a CRC32 per checked block); `spool` lands a stream in a durable
//! temp file with its digest, for copies and multipart completions made locally.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::local::TempGuard;
use crate::local::blobs::BlockCrcs;
use crate::md5_asm::Md5;
use crate::origin::{ByteStream, PutBody};

/// Digests a body as it arrives (feed every byte, in order, then `finish`).
#[derive(Default)]
pub struct BodyDigest {
    md5: Md5,
    crcs: BlockCrcs,
}

/// What `BodyDigest` found: the body's MD5 and its block checksums (opaque: the store's format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digested {
    md5: [u8; 16],
    pub(crate) crcs: Vec<u32>,
}

impl BodyDigest {
    pub fn new() -> BodyDigest {
        BodyDigest::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.crcs.update(data);
    }

    pub fn finish(self) -> Digested {
        Digested {
            md5: self.md5.finalize(),
            crcs: self.crcs.finish(),
        }
    }
}

/// A body's digest, or the promise of it: the MD5 of a large body (the slowest of its hashes) may
/// still be computing when the body has arrived, and a commit waits for it only once the body and
/// its directory are synced, just before its journal record (which holds the ETag).
pub enum PromisedDigest {
    Ready(Digested),
    Computing(tokio::sync::oneshot::Receiver<Digested>),
}

impl PromisedDigest {
    pub async fn wait(self) -> std::io::Result<Digested> {
        match self {
            PromisedDigest::Ready(d) => Ok(d),
            PromisedDigest::Computing(rx) => rx.await.map_err(|_| digest_lost()),
        }
    }

    /// `wait` on a blocking thread (never on one of the runtime's workers).
    pub(crate) fn wait_blocking(self) -> std::io::Result<Digested> {
        match self {
            PromisedDigest::Ready(d) => Ok(d),
            PromisedDigest::Computing(rx) => rx.blocking_recv().map_err(|_| digest_lost()),
        }
    }
}

fn digest_lost() -> std::io::Error {
    std::io::Error::other("the body's digest was never finished")
}

impl Digested {
    /// The body's MD5 in hex: a single-part object's ETag, without its quotes.
    pub fn md5_hex(&self) -> String {
        hex::encode(self.md5)
    }

    pub fn md5(&self) -> [u8; 16] {
        self.md5
    }
}

/// Bodies up to this size are kept in memory; larger ones go to a file.
const IN_MEMORY_MAX: u64 = 1 << 20;

/// A body landed locally: in memory, or in a temp file (fsynced) that `guard` removes unless it
/// is renamed away first.
pub(crate) struct Spooled {
    pub body: PutBody,
    pub digest: Digested,
    pub _guard: Option<TempGuard>,
}

/// Lands `stream` (of `len` bytes) under `temp` (a fresh path), computing its digest; a stream that
/// ends short or long is an error.
pub(crate) async fn spool(mut stream: ByteStream, len: u64, temp: &Path) -> std::io::Result<Spooled> {
    let mut digest = BodyDigest::new();
    let short = |got: u64| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the body ended after {got} of {len} bytes"),
        )
    };
    if !spools_to_file(len) {
        let mut buf = BytesMut::with_capacity(len as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            digest.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        if buf.len() as u64 != len {
            return Err(short(buf.len() as u64));
        }
        return Ok(Spooled {
            body: PutBody::Bytes(Bytes::from(buf)),
            digest: digest.finish(),
            _guard: None,
        });
    }
    let guard = TempGuard(temp.to_owned());
    let file = tokio::fs::File::create(temp).await?;
    spool_into(stream, len, temp, file, guard).await
}

/// Whether `spool` lands a body of `len` bytes in a file (else in memory).
pub(crate) fn spools_to_file(len: u64) -> bool {
    len > IN_MEMORY_MAX
}

/// `spool` into `file`, just created at `temp` (its room already taken, when the caller wants
/// it: see `Journal::allocate`); `guard` removes it unless the body is kept.
pub(crate) async fn spool_into(
    mut stream: ByteStream,
    len: u64,
    temp: &Path,
    mut file: tokio::fs::File,
    guard: TempGuard,
) -> std::io::Result<Spooled> {
    use tokio::io::AsyncWriteExt;
    let mut digest = BodyDigest::new();
    let short = |got: u64| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the body ended after {got} of {len} bytes"),
        )
    };
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        digest.update(&chunk);
        file.write_all(&chunk).await?;
        written += chunk.len() as u64;
    }
    if written != len {
        return Err(short(written));
    }
    if !crate::durable::skips_sync(crate::durable::SyncStep::Blob) {
        file.sync_all().await?;
    }
    Ok(Spooled {
        body: PutBody::File {
            path: temp.to_owned(),
            len,
        },
        digest: digest.finish(),
        _guard: Some(guard),
    })
}
