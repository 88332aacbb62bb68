//! `Blobs`: object bodies on local disk, one immutable file per blob id under `blobs/`, and the
//! per-block CRC32 that lets a reader check every block before sending it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bodies are checked in blocks of this size: a reader verifies a block before it sends any of it.
pub const BLOCK: u64 = 1 << 20;

/// The blob directory: `blobs/<last two hex digits>/<16 hex digits>`, and `blobs/tmp/` for files
/// still being written.
#[derive(Debug)]
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// Opens (creating) the directory and removes temp files left by a crash.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Blobs> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Blobs { dir })
    }

    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{:02x}", id & 0xff)).join(format!("{id:016x}"))
    }

    /// A fresh temp path on the same filesystem.
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// Moves a fully written temp file to its blob name.
    pub fn commit(&self, temp: &Path, id: u64) -> io::Result<()> {
        let path = self.path(id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(temp, path)
    }

    /// Removes a blob; an absent one is fine.
    pub fn remove(&self, id: u64) {
        if let Err(e) = std::fs::remove_file(self.path(id))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(id, error = %e, "could not remove a cache blob");
        }
    }

    pub fn open_blob(&self, id: u64) -> io::Result<Arc<File>> {
        File::open(self.path(id)).map(Arc::new)
    }

    /// Every blob id on disk (for garbage collection of files no index entry names).
    pub fn ids(&self) -> io::Result<Vec<u64>> {
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
pub struct BlockCrcs {
    done: Vec<u32>,
    current: crc32fast::Hasher,
    in_block: u64,
}

impl BlockCrcs {
    pub fn update(&mut self, mut data: &[u8]) {
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

    pub fn finish(mut self) -> Vec<u32> {
        if self.in_block > 0 {
            self.done.push(self.current.finalize());
        }
        self.done
    }
}

/// Reads block `index` of a blob of `size` bytes and checks it against `crcs`.
/// `Ok(None)` means the block is corrupt or short.
pub fn read_block(file: &File, size: u64, crcs: &[u32], index: u64) -> io::Result<Option<Vec<u8>>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Flip one byte of the first block.
        let mut bad = data.clone();
        bad[5] ^= 1;
        std::fs::write(blobs.path(42), &bad).unwrap();
        let file = blobs.open_blob(42).unwrap();
        assert!(read_block(&file, size, &crcs, 0).unwrap().is_none());
        assert!(read_block(&file, size, &crcs, 1).unwrap().is_some());
        // Truncate.
        std::fs::write(blobs.path(42), &data[..100]).unwrap();
        let file = blobs.open_blob(42).unwrap();
        assert!(read_block(&file, size, &crcs, 0).unwrap().is_none());
        assert_eq!(blobs.ids().unwrap(), vec![42]);
        blobs.remove(42);
        assert!(blobs.ids().unwrap().is_empty());
    }
}
