//! Fills: a miss fetches the whole object from the origin once per key and hands each chunk to
//! every reader the moment it arrives, while a writer thread beside it writes the chunk to a temp
//! file and computes the block CRCs and the whole body's check (the object's full-object
//! checksum, else its MD5 ETag). A broken origin stream resumes with Range + If-Match. The last
//! chunk is only released once the check passed and the temp file became a clean cache entry
//! (unless a write changed the key meanwhile).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::error::Doing;
use crate::key::ObjectKey;
use crate::local::TempGuard;
use crate::local::blobs::{BlockCrcs, crc32_of_blocks};
use crate::local::fills::{Fill, FillError, Progress};
use crate::local::room::{is_no_space, preallocate};
use crate::md5_asm::Md5;
use crate::origin::checksum;
use crate::origin::{Breaks, ChecksumAlgorithm, Conditions, ObjectMeta, OriginError, rest_of};
use crate::read::Reader;
use crate::segments::split_when_slow;

/// A fill keeps at least this much of what it received in memory (and whole objects up to the
/// memory tier's object size), so that readers keeping up with the origin never touch the disk.
const HOLD: u64 = 8 << 20;

/// The most a fill of a `size`-byte object holds in memory: what it keeps for readers, plus up to
/// as much again while its disk lags behind the origin, plus the batch being handed on (the
/// ranged reads of a slow origin's body waiting their turn have a bound of their own, `segments`).
pub(crate) fn held_at_most(size: u64, memory_object_max: u64) -> u64 {
    size.min(2 * HOLD.max(memory_object_max) + BATCH as u64)
}

/// Received bytes are handed on to readers and the writer at least every this many bytes (the
/// first chunk at once).
const BATCH: usize = 256 * 1024;

/// The first received bytes handed on as a piece of their own, at most.
const FIRST: usize = 16 * 1024;

/// A reader behind what is held reads the temp file in pieces of this size.
const DISK_CHUNK: u64 = 256 * 1024;

/// Whether an ETag is the plain MD5 of the body (single-part upload, no encryption).
fn md5_etag(etag: &str) -> Option<&str> {
    let e = etag.trim_matches('"');
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then_some(e)
}

/// Reads `len` bytes at `offset` off the async threads.
pub(crate) async fn read_at(file: Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cache file shorter than expected",
                ));
            }
            done += n;
        }
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// How a fill checks the whole body: against the object's own full-object checksum when the
/// origin keeps one (a CRC costs a few percent of an MD5), else against its MD5 ETag.
pub(crate) enum Check {
    Checksum(ChecksumAlgorithm, String, Box<checksum::Hasher>),
    Md5(String, Md5),
    None,
}

impl Check {
    pub(crate) fn of(meta: &ObjectMeta) -> Check {
        if let Some((a, want)) = meta.checksums.full_object() {
            return Check::Checksum(a, want.to_owned(), Box::new(checksum::Hasher::new(a)));
        }
        match md5_etag(&meta.etag) {
            Some(want) if meta.headers.opaque_etag_encryption.is_none() => Check::Md5(want.to_owned(), Md5::new()),
            _ => Check::None,
        }
    }

    /// Whether the block CRCs already make this check: a whole body's CRC32 is its blocks'
    /// CRC32s combined, so the bytes are not hashed twice.
    fn by_blocks(&self) -> bool {
        matches!(self, Check::Checksum(ChecksumAlgorithm::Crc32, ..))
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Check::Checksum(_, _, h) => h.update(data),
            Check::Md5(_, h) => h.update(data),
            Check::None => {}
        }
    }

    /// `Err` with what differs when the body of `size` bytes, whose block CRCs are `crcs`, is not
    /// the object's.
    fn verify(self, crcs: &[u32], size: u64) -> Result<(), String> {
        let by_blocks = self.by_blocks();
        match self {
            Check::Checksum(a, want, _) if by_blocks => {
                let got = aws_smithy_types::base64::encode(crc32_of_blocks(crcs, size).to_be_bytes());
                Check::compare(a, got, want)
            }
            check => check.verify_hashed(),
        }
    }

    fn compare(a: ChecksumAlgorithm, got: String, want: String) -> Result<(), String> {
        if got == want {
            Ok(())
        } else {
            Err(format!("body {a:?} checksum {got} does not match the object's {want}"))
        }
    }

    /// `Err` with what differs when the bytes given to `update` are not the object's.
    pub(crate) fn verify_hashed(self) -> Result<(), String> {
        match self {
            Check::Checksum(a, want, h) => Check::compare(a, h.finish_base64(), want),
            Check::Md5(want, h) => {
                let got = hex::encode(h.finalize());
                if got.eq_ignore_ascii_case(&want) {
                    Ok(())
                } else {
                    Err(format!("body MD5 {got} does not match the ETag \"{want}\""))
                }
            }
            Check::None => Ok(()),
        }
    }
}

/// What the writer thread made of a whole body.
struct Written {
    crcs: Vec<u32>,
    check: Check,
}

/// The writer thread of a fill: writes each chunk at the end of the temp file, checksums it, and
/// publishes how much is on disk (letting the fill forget chunks no reader needs in memory).
fn write_body(
    file: File,
    batches: mpsc::Receiver<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
    on_disk: watch::Sender<u64>,
    hold: u64,
    mut check: Check,
) -> io::Result<Written> {
    let mut crcs = BlockCrcs::default();
    let mut at = 0u64;
    let by_blocks = check.by_blocks();
    for batch in batches {
        for chunk in batch {
            file.write_all_at(&chunk, at)?;
            crcs.update(&chunk);
            if !by_blocks {
                check.update(&chunk);
            }
            at += chunk.len() as u64;
        }
        // Readers are not woken: they only wait for received bytes.
        progress.send_if_modified(|p| {
            p.on_disk = at;
            p.release_held(hold);
            false
        });
        on_disk.send_replace(at);
    }
    Ok(Written {
        crcs: crcs.finish(),
        check,
    })
}

/// Publishes `batch` to the fill's readers and sends it to the writer; `false` when the writer
/// has stopped.
fn hand_on(fill: &Fill, to_writer: &mpsc::Sender<Vec<Bytes>>, batch: &mut Vec<Bytes>) -> bool {
    if batch.is_empty() {
        return true;
    }
    fill.progress.send_modify(|p| {
        for chunk in batch.iter() {
            p.received += chunk.len() as u64;
            p.chunks.push_back(chunk.clone());
        }
    });
    to_writer.send(std::mem::take(batch)).is_ok()
}

impl Reader {
    /// The fill of `okey`: the one under way (`true`: joined), or a new one started here.
    pub(crate) fn join_fill(self: &Arc<Self>, okey: &ObjectKey) -> (Arc<Fill>, watch::Receiver<Progress>, bool) {
        self.join_fill_holding(okey, None)
    }

    /// `join_fill`, with `room` (a background fill's place) held by a fill started here until it
    /// ends (given back at once when one was under way).
    pub(crate) fn join_fill_holding(
        self: &Arc<Self>,
        okey: &ObjectKey,
        room: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> (Arc<Fill>, watch::Receiver<Progress>, bool) {
        let (fill, rx, joined) = self.local.fills.join(okey);
        if !joined {
            if self
                .local
                .index
                .get(okey)
                .map_or(true, |e| e.is_some_and(|e| e.pending))
            {
                // A version written through Perch is not in the origin yet: what the origin sends
                // now is older, so the fill serves the reads that started it but is never kept,
                // and no later read joins it: once that version is in the origin (a delete's
                // tombstone then leaves the index), a read must not be given the older bytes. (A
                // range miss's background fill or a prefetch can start so; a write committed
                // after `join` marks the fill stale itself.)
                self.local.fills.mark_stale(okey);
            }
            let reader = self.clone();
            let (okey, f) = (okey.clone(), fill.clone());
            tokio::spawn(async move {
                if let Err(e) = reader.run_fill(&okey, &f).await {
                    tracing::debug!(key = okey.key(), error = %e, "fill failed");
                    f.progress.send_modify(|p| p.failed = Some(Arc::new(e)));
                }
                reader.local.fills.end(&okey, &f);
                drop(room);
            });
        }
        (fill, rx, joined)
    }

    /// Fetches the whole object, streaming it to the fill's readers and to the writer thread,
    /// resuming a broken stream with Range + If-Match, then keeps it as a cache entry unless it
    /// went stale or is too large.
    async fn run_fill(&self, okey: &ObjectKey, fill: &Arc<Fill>) -> Result<(), FillError> {
        let (bucket, key) = (okey.bucket(), okey.key());
        let io_err = FillError::TempFile;
        let temp = self.local.blobs.temp_path();
        let _cleanup = TempGuard(temp.clone());
        // The temp file is made off the async threads while the origin answers: creating a file
        // can take milliseconds where many are created and deleted (ext4 looks for an inode not
        // recently freed), and the first byte must not wait for it.
        let files = tokio::task::spawn_blocking({
            let temp = temp.clone();
            move || -> io::Result<(File, File)> { Ok((File::create(&temp)?, File::open(&temp)?)) }
        });
        let asked = std::time::Instant::now();
        let out = match self.origin.get_object(bucket, key, None, &Conditions::default()).await {
            Ok(out) => out,
            Err(e) => {
                // `_cleanup` removes the file only once it exists.
                let _ = files.await;
                return Err(FillError::from_origin(e));
            }
        };
        let (write_file, read_file) = files.await.map_err(|e| io_err(io::Error::other(e)))?.map_err(io_err)?;
        let meta = Arc::new(out.meta);
        let size = meta.size;
        // Decided before any reader sees the object, so that all of them can go to the origin
        // instead (see `FillError::NoRoom`).
        let kept = size <= self.local.keep_limit() && !self.bypasses(okey);
        if !self.room_for_fill(&write_file, size, kept).await {
            tracing::info!(
                key,
                size,
                "the data dir's filesystem has no room for a fetched object: served without keeping it"
            );
            self.local.make_room_soon();
            return Err(FillError::NoRoom);
        }
        let read_file = Arc::new(read_file);
        fill.progress.send_modify(|p| {
            p.meta = Some(meta.clone());
            p.file = Some(read_file);
        });

        let hold = HOLD.max(self.local.memory_object_max());
        let (to_writer, chunks) = mpsc::channel::<Vec<Bytes>>();
        let (disk_tx, mut on_disk) = watch::channel(0u64);
        let progress = fill.progress.clone();
        let check = Check::of(&meta);
        let writer =
            tokio::task::spawn_blocking(move || write_body(write_file, chunks, progress, disk_tx, hold, check));

        let mut body = split_when_slow(self.origin.clone(), okey, &meta.etag, 0, size, out.body, asked);
        let mut received = 0u64;
        // The chunk that completes the body waits for the check.
        let mut last: Option<Bytes> = None;
        // Chunks received and not yet handed on: readers and the writer get them together when
        // the origin has nothing more ready (or a batch is full), one wake-up each per burst.
        let mut batch: Vec<Bytes> = Vec::new();
        let mut writer_gone = false;
        let mut breaks = Breaks::new(self.cfg.retry_deadline);
        loop {
            let next = match body.next().now_or_never() {
                Some(next) => next,
                None => {
                    // A copy that will not be kept is fetched for its readers alone.
                    if !kept && self.local.fills.abandon_if_unread(okey, fill) {
                        return Err(FillError::Abandoned);
                    }
                    writer_gone |= !hand_on(fill, &to_writer, &mut batch);
                    // Memory stays bounded when the disk is slower than the origin.
                    while received - *on_disk.borrow_and_update() > 2 * hold {
                        if on_disk.changed().await.is_err() {
                            break;
                        }
                    }
                    body.next().await
                }
            };
            if writer_gone {
                // The writer stopped: its error says why.
                break;
            }
            match next {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    breaks.progressed(chunk.len() as u64);
                    if received + chunk.len() as u64 > size {
                        return Err(FillError::Corrupt(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the origin sent more bytes than announced",
                        )));
                    }
                    received += chunk.len() as u64;
                    if received == size {
                        last = Some(chunk);
                    } else if received == chunk.len() as u64 {
                        // The first chunk goes on at once, its head as a piece of its own: a
                        // reader's first byte waits neither for a batch nor for the write of
                        // hundreds of KiB to its socket.
                        let mut head = chunk;
                        let rest = head.split_off(head.len().min(FIRST));
                        batch.push(head);
                        if !rest.is_empty() {
                            batch.push(rest);
                        }
                        writer_gone |= !hand_on(fill, &to_writer, &mut batch);
                    } else {
                        batch.push(chunk);
                        if batch.iter().map(Bytes::len).sum::<usize>() >= BATCH {
                            writer_gone |= !hand_on(fill, &to_writer, &mut batch);
                        }
                    }
                }
                // A whole body's error after its last byte: the origin layer's check of it failed
                // (`InvalidData`), or the connection failed once all was there (the fill's own
                // check below decides), never a break to resume past the end.
                Some(Err(e)) if received >= size => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        self.local.stats.corrupt.inc();
                        return Err(FillError::Corrupt(e));
                    }
                    break;
                }
                None if received >= size => break,
                Some(Err(_)) | None => {
                    let why = match next {
                        Some(Err(e)) => FillError::Broke(e),
                        _ => FillError::Unavailable(format!(
                            "origin stream broke: the body ended after {received} of {size} bytes"
                        )),
                    };
                    writer_gone |= !hand_on(fill, &to_writer, &mut batch);
                    let Some(pause) = breaks.broke() else {
                        return Err(why);
                    };
                    tracing::info!(key, received, error = %why, "origin stream broke; resuming with a range request");
                    self.local.stats.resumed.inc();
                    // What the broken body still has under way (a split body's other ranged
                    // reads) stops now, not after the pause.
                    drop(std::mem::replace(&mut body, Box::pin(futures::stream::empty())));
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    let asked = std::time::Instant::now();
                    let rest = rest_of(self.origin.as_ref(), bucket, key, &meta.etag, received, None)
                        .await
                        .map_err(|e| match e {
                            OriginError::PreconditionFailed => {
                                FillError::Unavailable("the object changed during the fetch".into())
                            }
                            other => FillError::from_origin(other),
                        })?;
                    body = split_when_slow(self.origin.clone(), okey, &meta.etag, received, size, rest, asked);
                }
            }
        }
        hand_on(fill, &to_writer, &mut batch);
        if let Some(chunk) = &last {
            let _ = to_writer.send(vec![chunk.clone()]);
        }
        drop(to_writer);
        let written = writer.await.map_err(|e| io_err(io::Error::other(e)))?.map_err(io_err)?;
        if received != size {
            return Err(FillError::Unavailable(format!(
                "the origin sent {received} of {size} bytes"
            )));
        }
        if let Err(e) = written.check.verify(&written.crcs, size) {
            self.local.stats.corrupt.inc();
            return Err(FillError::Corrupt(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        // The entry is kept before the last chunk is released: a client that read a miss to its
        // end and asks again gets a hit.
        if !fill.stale.load(Ordering::SeqCst) && kept {
            let local = self.local.clone();
            let (okey, meta, fill) = (okey.clone(), meta.clone(), fill.clone());
            let outcome =
                tokio::task::spawn_blocking(move || local.keep_fetched(&okey, &temp, &meta, written.crcs, &fill)).await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(key, error = %e, "could not keep a fetched object in the cache"),
                Err(e) => tracing::warn!(key, error = %e, "could not keep a fetched object in the cache"),
            }
        }
        if let Some(chunk) = last {
            fill.progress.send_modify(|p| {
                p.received += chunk.len() as u64;
                p.chunks.push_back(chunk);
            });
        }
        Ok(())
    }
}

impl Reader {
    /// Takes room for a fetched body of `size` bytes on the data dir's filesystem, in `file`: a
    /// fill is a cache, so it evicts clean entries for its room (only if it is to be `kept`: a
    /// body passing through is not worth them) but never takes the reserve (the writes' room);
    /// then allocates it, so that writing the body cannot fail half-way for want of space.
    /// `false`: no room can be had now.
    async fn room_for_fill(&self, file: &File, size: u64, kept: bool) -> bool {
        if self.local.room.shortfall(size) > 0 && !(kept && self.local.room_for(size).await.unwrap_or(false)) {
            return false;
        }
        match preallocate(file, size) {
            // Where the filesystem cannot preallocate, the writes take their chance.
            Ok(_) => true,
            Err(e) if is_no_space(&e) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot preallocate a cache temp file");
                true
            }
        }
    }
}

/// One reader's view of a fill: takes what has arrived (from memory while held, else from the
/// temp file), waits for more.
pub(crate) struct FillReader {
    pub rx: watch::Receiver<Progress>,
    pub pos: u64,
    pub end: u64,
}

enum Step {
    Held(Bytes),
    Disk(Arc<File>, u64),
    Failed(Arc<FillError>),
    Wait,
}

impl FillReader {
    pub(crate) async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.pos >= self.end {
                return None;
            }
            let step = {
                let p = self.rx.borrow_and_update();
                if let Some(e) = &p.failed {
                    Step::Failed(e.clone())
                } else if let Some(b) = p.held_at(self.pos, self.end) {
                    Step::Held(b)
                } else if let Some(file) = p.file.as_ref().filter(|_| self.pos < p.on_disk.min(p.received)) {
                    let stop = p.on_disk.min(p.received).min(self.end);
                    Step::Disk(file.clone(), (stop - self.pos).min(DISK_CHUNK))
                } else {
                    Step::Wait
                }
            };
            match step {
                Step::Held(b) => {
                    self.pos += b.len() as u64;
                    return Some(Ok(b));
                }
                Step::Disk(file, len) => {
                    let chunk = read_at(file, self.pos, len as usize).await;
                    if let Ok(c) = &chunk {
                        self.pos += c.len() as u64;
                    }
                    return Some(chunk);
                }
                Step::Failed(e) => return Some(Err(Doing::io("origin fetch failed", e))),
                Step::Wait => {
                    if self.rx.changed().await.is_err() {
                        // The fill is gone; what it left may still hold the rest.
                        let p = self.rx.borrow();
                        if p.received.min(self.end) <= self.pos && p.failed.is_none() {
                            return Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "origin fetch ended short",
                            )));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::checksum::{Checksums, checksum};

    fn meta(size: u64, checksums: Checksums) -> ObjectMeta {
        ObjectMeta {
            size,
            etag: "\"0123456789abcdef0123456789abcdef\"".into(),
            last_modified: std::time::SystemTime::UNIX_EPOCH,
            headers: Default::default(),
            checksums,
        }
    }

    /// What a fill's writer makes of `body` (block CRCs, and the check fed unless it goes by the
    /// blocks), then the verdict against `meta`.
    fn verdict(meta: &ObjectMeta, body: &[u8]) -> Result<(), String> {
        let mut check = Check::of(meta);
        let mut crcs = BlockCrcs::default();
        for piece in body.chunks(300_000) {
            crcs.update(piece);
            if !check.by_blocks() {
                check.update(piece);
            }
        }
        check.verify(&crcs.finish(), body.len() as u64)
    }

    #[test]
    fn a_stored_crc32_is_checked_from_the_block_crcs_and_catches_a_flipped_byte() {
        let body: Vec<u8> = (0..(2 * BLOCK_FOR_TEST + 777)).map(|i| (i % 253) as u8).collect();
        let crc32 = Checksums {
            crc32: Some(checksum(ChecksumAlgorithm::Crc32, &body)),
            ..Default::default()
        };
        let m = meta(body.len() as u64, crc32);
        assert!(Check::of(&m).by_blocks());
        assert_eq!(verdict(&m, &body), Ok(()));
        let mut bad = body.clone();
        bad[BLOCK_FOR_TEST + 5] ^= 1;
        assert!(verdict(&m, &bad).is_err(), "a flipped byte in the second block");

        // Other algorithms still hash the bytes themselves.
        let crc32c = Checksums {
            crc32c: Some(checksum(ChecksumAlgorithm::Crc32c, &body)),
            ..Default::default()
        };
        let m = meta(body.len() as u64, crc32c);
        assert!(!Check::of(&m).by_blocks());
        assert_eq!(verdict(&m, &body), Ok(()));
        assert!(verdict(&m, &bad).is_err());
    }

    const BLOCK_FOR_TEST: usize = crate::local::blobs::BLOCK as usize;
}
