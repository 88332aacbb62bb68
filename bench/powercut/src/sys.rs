//! Thin wrappers over the `*at` system calls the filesystem needs, on `O_PATH` descriptors.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N`: reopens what an `O_PATH` descriptor names.
pub fn proc_path(fd: RawFd) -> CString {
    CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

/// fstatat(2) without following a final symlink; an empty name stats `dirfd` itself.
pub fn stat_at(dirfd: RawFd, name: &OsStr) -> io::Result<libc::stat> {
    let name = cstring(name)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.as_bytes().is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string and a buffer of the right type.
    check(unsafe { libc::fstatat(dirfd, name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat filled it.
    Ok(unsafe { st.assume_init() })
}

pub fn stat_fd(fd: RawFd) -> io::Result<libc::stat> {
    stat_at(fd, OsStr::new(""))
}

pub fn open_at(dirfd: RawFd, name: &OsStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let name = cstring(name)?;
    // SAFETY: valid C string; the result is a new descriptor we own.
    let fd = check(unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) })?;
    // SAFETY: freshly opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens an `O_PATH` handle on `name` in `dirfd`, not following a final symlink.
pub fn open_path(dirfd: RawFd, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(dirfd, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens, for I/O, the file an `O_PATH` descriptor names.
pub fn reopen(fd: RawFd, flags: libc::c_int) -> io::Result<File> {
    let path = proc_path(fd);
    // SAFETY: valid C string; the result is a new descriptor we own.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: freshly opened.
    Ok(unsafe { File::from_raw_fd(fd) })
}

pub fn rename_at(
    olddir: RawFd,
    oldname: &OsStr,
    newdir: RawFd,
    newname: &OsStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    let (o, n) = (cstring(oldname)?, cstring(newname)?);
    // SAFETY: valid C strings.
    check(unsafe { libc::renameat2(olddir, o.as_ptr(), newdir, n.as_ptr(), flags) }).map(drop)
}

pub fn unlink_at(dirfd: RawFd, name: &OsStr, dir: bool) -> io::Result<()> {
    let n = cstring(name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dirfd, n.as_ptr(), flags) }).map(drop)
}

/// A new name `newname` in `newdir` for what `oldname` in `olddir` names (no symlink followed).
pub fn link_at(olddir: RawFd, oldname: &OsStr, newdir: RawFd, newname: &OsStr) -> io::Result<()> {
    let (o, n) = (cstring(oldname)?, cstring(newname)?);
    // SAFETY: valid C strings.
    check(unsafe { libc::linkat(olddir, o.as_ptr(), newdir, n.as_ptr(), 0) }).map(drop)
}

/// A new name for the node an `O_PATH` descriptor holds.
pub fn link_fd(fd: RawFd, newdir: RawFd, newname: &OsStr) -> io::Result<()> {
    let path = proc_path(fd);
    let n = cstring(newname)?;
    // SAFETY: valid C strings.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            path.as_ptr(),
            newdir,
            n.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

pub fn mkdir_at(dirfd: RawFd, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let n = cstring(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dirfd, n.as_ptr(), mode) }).map(drop)
}

pub fn mknod_at(dirfd: RawFd, name: &OsStr, mode: libc::mode_t, rdev: libc::dev_t) -> io::Result<()> {
    let n = cstring(name)?;
    // SAFETY: valid C string.
    check(unsafe { libc::mknodat(dirfd, n.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlink_at(target: &OsStr, dirfd: RawFd, name: &OsStr) -> io::Result<()> {
    let (t, n) = (cstring(target)?, cstring(name)?);
    // SAFETY: valid C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dirfd, n.as_ptr()) }).map(drop)
}

/// The target of the symlink an `O_PATH` descriptor holds.
pub fn readlink_fd(fd: RawFd) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the buffer is as long as we say.
    let n = unsafe { libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(OsString::from_vec(buf))
}

/// Where a descriptor's file is now, as the kernel names it.
pub fn fd_path(fd: RawFd) -> io::Result<OsString> {
    std::fs::read_link(OsStr::from_bytes(proc_path(fd).as_bytes())).map(|p| p.into_os_string())
}

pub fn chown_fd(fd: RawFd, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: plain call; -1 leaves an id as it is.
    check(unsafe {
        libc::fchownat(
            fd,
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn chmod_fd(fd: RawFd, mode: libc::mode_t) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: valid C string.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

/// utimensat on what an `O_PATH` descriptor names (not for symlinks).
pub fn set_times(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: valid C string and two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

pub fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain call on an open descriptor.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) }).map(drop)
}

pub fn statvfs(fd: RawFd) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a buffer of the right type.
    check(unsafe { libc::fstatvfs(fd, st.as_mut_ptr()) })?;
    // SAFETY: filled.
    Ok(unsafe { st.assume_init() })
}

pub fn fsync(file: &File, datasync: bool) -> io::Result<()> {
    if datasync { file.sync_data() } else { file.sync_all() }
}

/// fsync of a directory an `O_PATH` descriptor holds.
pub fn fsync_dir(fd: RawFd) -> io::Result<()> {
    reopen(fd, libc::O_RDONLY | libc::O_DIRECTORY)?.sync_all()
}

/// The entries of a directory an `O_PATH` descriptor holds, without `.` and `..`:
/// (name, inode, `d_type`).
pub fn read_dir(fd: RawFd) -> io::Result<Vec<(OsString, u64, u8)>> {
    let dir = open_at(fd, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = dir.as_raw_fd();
    // SAFETY: fdopendir takes over the descriptor on success.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dir);
    let mut out = Vec::new();
    loop {
        // SAFETY: dirp is open; errno distinguishes the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: closes the stream and its descriptor.
            unsafe { libc::closedir(dirp) };
            if err.raw_os_error() == Some(0) {
                break;
            }
            return Err(err);
        }
        // SAFETY: a valid dirent until the next readdir.
        let ent = unsafe { &*ent };
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((OsString::from_vec(name.to_vec()), ent.d_ino, ent.d_type));
    }
    Ok(out)
}

/// Raises the limit on open descriptors as far as the kernel allows (`fs.nr_open`, for root),
/// else the soft limit to the hard one: the filesystem holds one `O_PATH` descriptor per file the
/// kernel knows, and a test with many files (blobs, SSTs) needs many.
pub fn raise_nofile_limit() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    if let Some(n) = nr_open {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: plain call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            return n;
        }
    }
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: a buffer of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: filled.
    let mut lim = unsafe { lim.assume_init() };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: plain call.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    lim.rlim_cur
}

/// umount2(2), lazily (`MNT_DETACH`) when asked.
pub fn unmount(path: &OsStr, lazy: bool) -> io::Result<()> {
    let p = cstring(path)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(p.as_ptr(), flags) }).map(drop)
}

/// The error statfs(2) gives on `path`, if any.
pub fn statfs_errno(path: &OsStr) -> Option<i32> {
    let p = cstring(path).ok()?;
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid C string and a buffer of the right type.
    if unsafe { libc::statfs(p.as_ptr(), st.as_mut_ptr()) } == 0 {
        None
    } else {
        io::Error::last_os_error().raw_os_error()
    }
}

/// A kernel file handle (name_to_handle_at(2)): names a file without holding it open.
#[derive(Clone, Debug)]
pub struct Handle(Box<[u32]>);

/// The handle of the file an `O_PATH` descriptor holds.
pub fn handle_of(fd: RawFd) -> io::Result<Handle> {
    let header = std::mem::size_of::<libc::file_handle>();
    let words = (header + libc::MAX_HANDLE_SZ as usize).div_ceil(4);
    let mut buf = vec![0u32; words].into_boxed_slice();
    let fh = buf.as_mut_ptr().cast::<libc::file_handle>();
    let mut mount_id = 0;
    // SAFETY: the buffer holds the header and MAX_HANDLE_SZ bytes, and is aligned for it.
    unsafe {
        (*fh).handle_bytes = libc::MAX_HANDLE_SZ as libc::c_uint;
        check(libc::name_to_handle_at(
            fd,
            c"".as_ptr(),
            fh,
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        ))?;
    }
    Ok(Handle(buf))
}

/// Opens (`O_PATH`) what a handle names; `mount_fd` is any non-`O_PATH` descriptor on its
/// filesystem. Needs CAP_DAC_READ_SEARCH; a deleted file gives `ESTALE`.
pub fn open_handle(mount_fd: RawFd, handle: &Handle) -> io::Result<OwnedFd> {
    let mut buf = handle.0.clone();
    // SAFETY: a buffer filled by name_to_handle_at.
    let fd = check(unsafe {
        libc::open_by_handle_at(
            mount_fd,
            buf.as_mut_ptr().cast(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: freshly opened.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The soft limit on open descriptors.
pub fn nofile_limit() -> u64 {
    let mut lim = MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: a buffer of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, lim.as_mut_ptr()) } != 0 {
        return 1024;
    }
    // SAFETY: filled.
    unsafe { lim.assume_init() }.rlim_cur
}
