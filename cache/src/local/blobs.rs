//! `Blobs`: object bodies on local disk, one immutable file per blob id under `blobs/`, and the
//! per-block CRC32 that lets a reader check every block before sending it.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bodies are checked in blocks of this size: a reader verifies a block before it sends any of it.
pub(crate) const BLOCK: u64 = 1 << 20;

/// The blob directory: `blobs/<last two hex digits>/<16 hex digits>`, and `blobs/tmp/` for files
/// still being written.
#[derive(Debug)]
pub(crate) struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// Opens (creating) the directory and removes temp files left by a crash.
    pub(crate) fn open(dir: impl Into<PathBuf>) -> io::Result<Blobs> {
        let dir = dir.into();
        crate::durable::create_dirs(&dir)?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        // Every fan-out directory exists (and is durable) from the start, so that committing a
        // blob durably needs one directory fsync: the one its name goes into.
        for fan in 0..=0xffu64 {
            std::fs::create_dir_all(dir.join(format!("{fan:02x}")))?;
        }
        File::open(&dir)?.sync_all()?;
        Ok(Blobs { dir })
    }

    /// Makes the name of blob `id` durable: fsyncs the directory it was renamed into.
    pub(crate) fn sync_dir(&self, id: u64) -> io::Result<()> {
        crate::durable::sync_parent(&self.path(id))
    }

    pub(crate) fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{:02x}", id & 0xff)).join(format!("{id:016x}"))
    }

    /// A fresh temp path on the same filesystem.
    pub(crate) fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Moves a fully written temp file to its blob name.
    pub(crate) fn commit(&self, temp: &Path, id: u64) -> io::Result<()> {
        let path = self.path(id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(temp, path)
    }

    /// Removes a blob; an absent one is fine.
    pub(crate) fn remove(&self, id: u64) {
        if let Err(e) = std::fs::remove_file(self.path(id))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(id, error = %e, "could not remove a cache blob");
        }
    }

    pub(crate) fn open_blob(&self, id: u64) -> io::Result<Arc<File>> {
        File::open(self.path(id)).map(Arc::new)
    }

    /// Every blob id on disk (for garbage collection of files no index entry names).
    pub(crate) fn ids(&self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for fan in std::fs::read_dir(&self.dir)? {
            let fan = fan?;
            let name = fan.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 2 || !fan.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(fan.path())? {
                let f = f?;
                if let Some(id) = f.file_name().to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }
}

/// CRC32 of each `BLOCK` of a body, computed as the body streams by.
#[derive(Debug, Default)]
pub(crate) struct BlockCrcs {
    done: Vec<u32>,
    current: crc32fast::Hasher,
    in_block: u64,
}

impl BlockCrcs {
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (BLOCK - self.in_block) as usize;
            let n = room.min(data.len());
            self.current.update(&data[..n]);
            self.in_block += n as u64;
            data = &data[n..];
            if self.in_block == BLOCK {
                let h = std::mem::take(&mut self.current);
                self.done.push(h.finalize());
                self.in_block = 0;
            }
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u32> {
        if self.in_block > 0 {
            self.done.push(self.current.finalize());
        }
        self.done
    }
}

/// The CRC32 of a whole body of `size` bytes from its blocks' CRC32s (`BlockCrcs`), without a
/// second pass over its bytes.
pub(crate) fn crc32_of_blocks(crcs: &[u32], size: u64) -> u32 {
    let mut whole = crc32fast::Hasher::new();
    let mut left = size;
    for &crc in crcs {
        let len = left.min(BLOCK);
        whole.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
        left -= len;
    }
    whole.finalize()
}

/// Reads block `index` of a blob of `size` bytes and checks it against `crcs`.
/// `Ok(None)` means the block is corrupt or short.
pub(crate) fn read_block(file: &File, size: u64, crcs: &[u32], index: u64) -> io::Result<Option<Vec<u8>>> {
    let start = index * BLOCK;
    if start >= size {
        return Ok(Some(Vec::new()));
    }
    let len = BLOCK.min(size - start) as usize;
    let mut buf = vec![0u8; len];
    let mut read = 0;
    while read < len {
        let n = file.read_at(&mut buf[read..], start + read as u64)?;
        if n == 0 {
            return Ok(None);
        }
        read += n;
    }
    let Some(&want) = crcs.get(index as usize) else {
        return Ok(None);
    };
    Ok((crc32fast::hash(&buf) == want).then_some(buf))
}

/// Reads a whole blob of `size` bytes from a freshly opened `file` (from its start) and checks
/// every block against `crcs`, into one buffer that is never zero-filled first nor copied again
/// (the way a hit of a small object is read and then kept in memory). `Ok(None)`: corrupt or short.
pub(crate) fn read_checked(file: &File, size: u64, crcs: &[u32]) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(size as usize);
    file.take(size).read_to_end(&mut buf)?;
    Ok(checked(buf, size, crcs))
}

/// Bytes `offset..offset + len` of a blob of `size` bytes, as an upload's body: read block by
/// block, every block checked against its CRC32 before any of its bytes go on. A blob damaged on
/// disk after the uploader last checked it still never leaves as it is: the body ends with an
/// `InvalidData` error at the damaged block (the request is cut short; the origin keeps nothing).
#[derive(Debug, Clone)]
pub struct CheckedRange {
    path: PathBuf,
    size: u64,
    crcs: Arc<[u32]>,
    offset: u64,
    len: u64,
}

impl CheckedRange {
    pub(crate) fn new(path: PathBuf, size: u64, crcs: Arc<[u32]>, offset: u64, len: u64) -> CheckedRange {
        CheckedRange {
            path,
            size,
            crcs,
            offset,
            len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh stream of the range, a block at a time (each read off the async threads).
    pub(crate) fn stream(&self) -> crate::origin::ByteStream {
        let cursor = RangeCursor {
            range: self.clone(),
            file: None,
            pos: self.offset,
        };
        Box::pin(futures::stream::unfold(cursor, |mut c| async move {
            let end = c.range.offset + c.range.len;
            if c.pos >= end {
                return None;
            }
            match c.next_block().await {
                Ok(bytes) => {
                    c.pos += bytes.len() as u64;
                    Some((Ok(bytes), c))
                }
                Err(e) => {
                    // Nothing after an error.
                    c.pos = end;
                    Some((Err(e), c))
                }
            }
        }))
    }
}

struct RangeCursor {
    range: CheckedRange,
    file: Option<Arc<File>>,
    /// The next byte to hand on.
    pos: u64,
}

impl RangeCursor {
    /// The checked bytes from `pos` to the end of its block (or of the range).
    async fn next_block(&mut self) -> io::Result<bytes::Bytes> {
        let index = self.pos / BLOCK;
        let (path, size, crcs, file) = (
            self.range.path.clone(),
            self.range.size,
            self.range.crcs.clone(),
            self.file.clone(),
        );
        let (file, block) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            let file = match file {
                Some(f) => f,
                None => Arc::new(File::open(&path)?),
            };
            let block = read_block(&file, size, &crcs, index)?;
            Ok((file, block))
        })
        .await
        .map_err(io::Error::other)??;
        self.file = Some(file);
        let start = index * BLOCK;
        let end = self.range.offset + self.range.len;
        let (from, to) = ((self.pos - start) as usize, (end - start).min(BLOCK) as usize);
        match block {
            Some(b) if from < to && to <= b.len() => Ok(bytes::Bytes::from(b).slice(from..to)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "block {index} of {} fails its CRC32 or is short: not sent",
                    self.range.path.display()
                ),
            )),
        }
    }
}

/// `buf` if it holds `size` bytes whose every block matches its CRC.
fn checked(buf: Vec<u8>, size: u64, crcs: &[u32]) -> Option<Vec<u8>> {
    if buf.len() as u64 != size || (crcs.len() as u64) < size.div_ceil(BLOCK) {
        return None;
    }
    let intact = buf
        .chunks(BLOCK as usize)
        .zip(crcs)
        .all(|(block, want)| crc32fast::hash(block) == *want);
    intact.then_some(buf)
}

/// `read_checked`, but only when every byte of the blob is already in the page cache
/// (`preadv2` with `RWF_NOWAIT`), so it never waits for the disk and may run on an async thread:
/// a hit is then served without handing the read to a blocking thread and back, which costs more
/// than the read itself. `None`: not all cached, or the kernel cannot tell; use `read_checked` on
/// a blocking thread.
pub(crate) fn read_checked_if_cached(file: &File, size: u64, crcs: &[u32]) -> Option<io::Result<Option<Vec<u8>>>> {
    read_if_cached(file, size).map(|buf| Ok(checked(buf, size, crcs)))
}

/// Whether `RWF_NOWAIT` reads work here (cleared at the first refusal other than "not cached").
static NOWAIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Up to `size` bytes from the start of `file` if they are all in the page cache (fewer at EOF).
#[cfg(target_os = "linux")]
fn read_if_cached(file: &File, size: u64) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    if !NOWAIT.load(Ordering::Relaxed) {
        return None;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(size as usize);
    while (buf.len() as u64) < size {
        let spare = buf.spare_capacity_mut();
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        };
        // SAFETY: the one iovec covers the vector's spare capacity, which the kernel writes at
        // most `iov_len` bytes into; the descriptor is open for as long as `file` is borrowed.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, buf.len() as libc::off_t, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                // EOPNOTSUPP and the like: this kernel or filesystem cannot do it; stop asking.
                NOWAIT.store(false, Ordering::Relaxed);
            }
            return None;
        }
        if n == 0 {
            break;
        }
        // SAFETY: the kernel initialized the next `n` bytes (n <= the spare capacity).
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
    Some(buf)
}

#[cfg(not(target_os = "linux"))]
fn read_if_cached(_file: &File, _size: u64) -> Option<Vec<u8>> {
    let _ = &NOWAIT;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob file of `size` bytes in a temp dir, with its block CRCs.
    fn blob(size: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>, Arc<[u32]>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&path, &data).expect("write blob");
        let mut crcs = BlockCrcs::default();
        crcs.update(&data);
        (dir, path, data, crcs.finish().into())
    }

    async fn collect(range: &CheckedRange) -> (Vec<u8>, Option<io::Error>) {
        use futures::StreamExt;
        let (mut got, mut stream) = (Vec::new(), range.stream());
        while let Some(item) = stream.next().await {
            match item {
                Ok(b) => got.extend_from_slice(&b),
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[tokio::test]
    async fn a_checked_range_streams_its_bytes_and_stops_before_a_damaged_block() {
        let size = 3 * BLOCK as usize + 4321;
        let (_dir, path, data, crcs) = blob(size);
        let whole = CheckedRange::new(path.clone(), size as u64, crcs.clone(), 0, size as u64);
        assert_eq!(collect(&whole).await.0, data);
        // A part that starts and ends inside blocks (as a multipart layout's do).
        let (offset, len) = (BLOCK as usize - 3, BLOCK as usize + 10);
        let part = CheckedRange::new(path.clone(), size as u64, crcs.clone(), offset as u64, len as u64);
        let (got, err) = collect(&part).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, data[offset..offset + len]);
        let empty = CheckedRange::new(path.clone(), size as u64, crcs.clone(), 5, 0);
        assert_eq!(collect(&empty).await.0, Vec::<u8>::new());

        // One flipped bit in block 2: blocks 0 and 1 go, then an error, and nothing of block 2.
        let mut damaged = data.clone();
        damaged[2 * BLOCK as usize + 99] ^= 1;
        std::fs::write(&path, &damaged).expect("damage");
        let (got, err) = collect(&whole).await;
        assert_eq!(got, data[..2 * BLOCK as usize]);
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
        // A part that starts inside the damaged block sends nothing at all.
        let tail = CheckedRange::new(path.clone(), size as u64, crcs.clone(), 2 * BLOCK + 5, 100);
        let (got, err) = collect(&tail).await;
        assert!(got.is_empty() && err.is_some());
        // A blob cut short is refused where it ends.
        std::fs::write(&path, &data[..BLOCK as usize + 10]).expect("truncate");
        let (got, err) = collect(&whole).await;
        assert_eq!(got, data[..BLOCK as usize]);
        assert!(err.is_some());
    }

    #[test]
    fn the_whole_bodys_crc32_is_its_blocks_crc32s_combined() {
        for size in [
            0usize,
            1,
            1000,
            BLOCK as usize - 1,
            BLOCK as usize,
            BLOCK as usize + 1,
            3 * BLOCK as usize + 12345,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let mut crcs = BlockCrcs::default();
            for piece in data.chunks(70_000) {
                crcs.update(piece);
            }
            let crcs = crcs.finish();
            assert_eq!(
                crc32_of_blocks(&crcs, size as u64),
                crc32fast::hash(&data),
                "size {size}"
            );
        }
        assert_ne!(crc32_of_blocks(&[1, 2], 2 * BLOCK), crc32_of_blocks(&[2, 1], 2 * BLOCK));
    }

    #[test]
    fn crcs_split_at_block_boundaries_however_the_data_arrives() {
        let data: Vec<u8> = (0..(2 * BLOCK + 123)).map(|i| (i * 31 % 251) as u8).collect();
        let mut a = BlockCrcs::default();
        a.update(&data);
        let mut b = BlockCrcs::default();
        for chunk in data.chunks(7777) {
            b.update(chunk);
        }
        let (a, b) = (a.finish(), b.finish());
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_eq!(a[2], crc32fast::hash(&data[2 * BLOCK as usize..]));
    }

    #[test]
    fn blocks_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..(BLOCK + 10)).map(|i| (i % 256) as u8).collect();
        let mut crcs = BlockCrcs::default();
        crcs.update(&data);
        let crcs = crcs.finish();
        let temp = blobs.temp_path();
        std::fs::write(&temp, &data).unwrap();
        blobs.commit(&temp, 42).unwrap();
        let file = blobs.open_blob(42).unwrap();
        let size = data.len() as u64;
        assert_eq!(
            read_block(&file, size, &crcs, 1).unwrap().unwrap(),
            &data[BLOCK as usize..]
        );
        // Just written, so in the page cache: read without waiting (where the filesystem can).
        if let Some(cached) = read_checked_if_cached(&blobs.open_blob(42).unwrap(), size, &crcs) {
            assert_eq!(cached.unwrap().unwrap(), data);
        }
        assert_eq!(
            read_checked(&blobs.open_blob(42).unwrap(), size, &crcs)
                .unwrap()
                .unwrap(),
            data
        );
        // Flip one byte of the first block.
        let mut bad = data.clone();
        bad[5] ^= 1;
        std::fs::write(blobs.path(42), &bad).unwrap();
        let file = blobs.open_blob(42).unwrap();
        assert!(read_block(&file, size, &crcs, 0).unwrap().is_none());
        assert!(read_block(&file, size, &crcs, 1).unwrap().is_some());
        assert!(
            read_checked(&blobs.open_blob(42).unwrap(), size, &crcs)
                .unwrap()
                .is_none()
        );
        if let Some(r) = read_checked_if_cached(&blobs.open_blob(42).unwrap(), size, &crcs) {
            assert!(r.unwrap().is_none());
        }
        // Truncate.
        std::fs::write(blobs.path(42), &data[..100]).unwrap();
        let file = blobs.open_blob(42).unwrap();
        assert!(read_block(&file, size, &crcs, 0).unwrap().is_none());
        if let Some(r) = read_checked_if_cached(&blobs.open_blob(42).unwrap(), size, &crcs) {
            assert!(r.unwrap().is_none());
        }
        assert!(
            read_checked(&blobs.open_blob(42).unwrap(), size, &crcs)
                .unwrap()
                .is_none()
        );
        assert_eq!(blobs.ids().unwrap(), vec![42]);
        blobs.remove(42);
        assert!(blobs.ids().unwrap().is_empty());
    }
}
