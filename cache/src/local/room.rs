//! The data dir's one disk budget: the filesystem's free space, less a reserve. Everything Perch
//! keeps there counts against it because it is on that filesystem: pending blobs, request bodies
//! being spooled, multipart staging, clean cache entries and the index. A write that needs room
//! gets it by evicting clean entries, or waits.

use std::io;
use std::path::{Path, PathBuf};

/// Whether an I/O error says the filesystem is full (or the user's quota is).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
}

/// Whether a RocksDB error says the filesystem is full: RocksDB then stops taking writes until
/// its error handler sees free space again (it polls every 5 s and resumes by itself).
pub(crate) fn rocksdb_no_space(e: &rocksdb::Error) -> bool {
    let text = e.to_string();
    text.contains("No space left on device")
        || text.contains("NoSpace")
        || text.contains("no space")
        // The log writer's sticky error once an append found the disk full: every write until
        // RocksDB resumes says this instead (a commit taken for failed said 500 InternalError).
        || text.contains("Writer has previous error")
}

/// The free space of the data dir's filesystem, and the reserve kept free of Perch's own files.
#[derive(Debug)]
pub(crate) struct DiskRoom {
    dir: PathBuf,
    reserve: u64,
}

impl DiskRoom {
    pub(crate) fn new(dir: &Path, reserve: u64) -> DiskRoom {
        DiskRoom {
            dir: dir.to_owned(),
            reserve,
        }
    }

    pub(crate) fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes an unprivileged writer may still allocate on the filesystem (`None`: unknown).
    pub(crate) fn free(&self) -> Option<u64> {
        free_bytes(&self.dir).ok()
    }

    /// The most one write can ever take: the filesystem's size for an unprivileged writer, less
    /// the reserve (`None`: unknown).
    pub(crate) fn most(&self) -> Option<u64> {
        size_bytes(&self.dir).ok().map(|size| size.saturating_sub(self.reserve))
    }

    /// How many bytes must be freed before `need` more fit with the reserve left (0: they fit, or
    /// the free space cannot be told).
    pub(crate) fn shortfall(&self, need: u64) -> u64 {
        match self.free() {
            Some(free) => need.saturating_add(self.reserve).saturating_sub(free),
            None => 0,
        }
    }
}

impl super::Local {
    /// Whether `need` more bytes fit on the data dir's filesystem with its reserve left, once
    /// clean entries were evicted for them (`make_room`, off the async threads, only when they
    /// do not fit already).
    pub(crate) async fn room_for(self: &std::sync::Arc<Self>, need: u64) -> io::Result<bool> {
        if self.room.shortfall(need) == 0 {
            return Ok(true);
        }
        let local = self.clone();
        let short = tokio::task::spawn_blocking(move || local.make_room(need))
            .await
            .map_err(io::Error::other)?;
        Ok(short == 0)
    }
}

/// The spare: a file on the data dir's filesystem holding room that Perch gives back when it must
/// start on a full disk. Opening the index after a crash writes (RocksDB flushes the log it
/// replays), and a filesystem that something filled to the last block (another program, or the
/// index itself grown into the reserve on a small volume) would keep Perch from starting at all:
/// then its pending writes could neither be served nor uploaded until the volume grew. Half the
/// reserve, at most 64 MiB, held apart from it: the reserve stays what it says.
#[derive(Debug)]
pub(crate) struct Spare {
    path: PathBuf,
    bytes: u64,
    /// Cleared when the filesystem cannot allocate a file without writing it (no spare then).
    allocatable: std::sync::atomic::AtomicBool,
}

impl Spare {
    const NAME: &'static str = "spare";

    pub(crate) fn new(dir: &Path, reserve: u64) -> Spare {
        Spare {
            path: dir.join(Self::NAME),
            bytes: (reserve / 2).min(64 << 20),
            allocatable: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Before the index opens (and before `perch serve` writes anything in the data dir): with
    /// less free on the filesystem than the reserve or than the spare holds, the spare's room is
    /// given back (logged), so that the start can write what it must. A temp file of a spare
    /// being taken when Perch stopped goes too.
    pub(crate) fn give_back_if_short(&self, room: &DiskRoom) {
        let _ = std::fs::remove_file(self.path.with_extension("tmp"));
        let Ok(held) = std::fs::metadata(&self.path).map(|m| m.len()) else {
            return;
        };
        if room.free().is_none_or(|free| free >= room.reserve().max(held)) {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::warn!(
                bytes = held,
                free = room.free().unwrap_or(0),
                "the data dir's filesystem is full: the spare's room is given back so that Perch can start; \
                 it is taken again once there is room beside the reserve"
            ),
            Err(e) => tracing::error!(error = %e, "cannot remove the spare on a full filesystem"),
        }
    }

    /// The room the spare still wants (0: it holds it, or it cannot be had on this filesystem).
    /// A spare of another size (the reserve changed, or a power cut kept less of it) goes.
    pub(crate) fn wanted(&self) -> u64 {
        let allocatable = self.allocatable.load(std::sync::atomic::Ordering::Relaxed);
        match std::fs::metadata(&self.path) {
            Ok(m) if m.len() == self.bytes => 0,
            Ok(_) => {
                let _ = std::fs::remove_file(&self.path);
                if allocatable { self.bytes } else { 0 }
            }
            Err(_) if allocatable => self.bytes,
            Err(_) => 0,
        }
    }

    /// Takes the spare's room (again), when it is `wanted` and the filesystem has it beside the
    /// reserve: a file allocated whole, never written (its loss at a power cut costs nothing: it
    /// is taken again).
    pub(crate) fn take(&self, room: &DiskRoom) {
        use std::sync::atomic::Ordering;
        if room.shortfall(self.bytes) > 0 {
            return;
        }
        let tmp = self.path.with_extension("tmp");
        let taken = std::fs::File::create(&tmp)
            .and_then(|f| allocate(&f, self.bytes))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = taken {
            let _ = std::fs::remove_file(&tmp);
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)) {
                self.allocatable.store(false, Ordering::Relaxed);
            }
            tracing::debug!(error = %e, "cannot take the spare's room");
        }
    }
}

/// Allocates `len` bytes of `file` on disk and makes them its size (`fallocate`, mode 0).
#[cfg(target_os = "linux")]
fn allocate(file: &std::fs::File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor the caller keeps open; it touches no memory of ours.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn allocate(_file: &std::fs::File, _len: u64) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

/// Gives back the spare of the data dir `data_dir` when its filesystem has less free than
/// `reserve` (see `Spare`): `perch serve` calls it before it writes anything there.
pub fn give_back_spare(data_dir: &Path, reserve: u64) {
    let cache = data_dir.join("cache");
    Spare::new(&cache, reserve).give_back_if_short(&DiskRoom::new(&cache, reserve));
}

/// `statvfs`: the blocks available to unprivileged writers, in bytes.
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = statvfs(dir)?;
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The size of `dir`'s filesystem for an unprivileged writer: its blocks less those kept for root.
fn size_bytes(dir: &Path) -> io::Result<u64> {
    let st = statvfs(dir)?;
    let for_root = (st.f_bfree as u64).saturating_sub(st.f_bavail as u64);
    Ok((st.f_blocks as u64)
        .saturating_sub(for_root)
        .saturating_mul(st.f_frsize as u64))
}

fn statvfs(dir: &Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs writes only into the struct we pass; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Allocates `len` bytes of `file` on disk without changing its size (`fallocate` with
/// `FALLOC_FL_KEEP_SIZE`), so that writing them later cannot fail for want of space. `Ok(false)`:
/// the filesystem cannot preallocate (the writes take their chance).
pub(crate) fn preallocate(file: &impl std::os::fd::AsRawFd, len: u64) -> io::Result<bool> {
    preallocate_at(file, 0, len)
}

/// `preallocate`, of the `len` bytes of `file` from byte `at`.
#[cfg(target_os = "linux")]
pub(crate) fn preallocate_at(file: &impl std::os::fd::AsRawFd, at: u64, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    // SAFETY: a plain syscall on a descriptor the caller keeps open; it touches no memory of ours.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn preallocate_at(_file: &impl std::os::fd::AsRawFd, _at: u64, _len: u64) -> io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortfall_is_what_the_reserve_and_the_need_take_beyond_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let room = DiskRoom::new(dir.path(), 0);
        assert_eq!(room.shortfall(0), 0);
        // Far beyond any free space: short by about what is missing (the free space moves a
        // little as other processes write).
        let huge = free + (1 << 40);
        let short = room.shortfall(huge);
        assert!(short > (1 << 39) && short <= huge, "{short}");
        let reserved = DiskRoom::new(dir.path(), free + (1 << 40));
        assert!(reserved.shortfall(0) > 0, "the reserve counts");
    }

    #[test]
    fn a_preallocated_file_keeps_its_size_and_an_impossible_one_is_no_space() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        if !preallocate(&f, 1 << 20).unwrap() {
            eprintln!("this filesystem cannot preallocate; nothing more to check");
            return;
        }
        assert_eq!(f.metadata().unwrap().len(), 0);
        let e = preallocate(&f, 1 << 62).unwrap_err();
        assert!(is_no_space(&e) || e.raw_os_error() == Some(libc::EFBIG), "{e}");
    }
}
