//! The steps that make things survive a power cut: directories created with their names made
//! durable (each parent fsynced), a directory fsynced after a rename into it, a file fsynced;
//! and the test-only switches that remove one kind of sync to prove the power-cut soak can fail.

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates `dir` and every missing ancestor, fsyncing the parent of each one created, so that a
/// power cut cannot take away a directory that files were later made durable in.
pub(crate) fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_parent(dir)
}

/// Fsyncs the directory holding `path` (after a create, rename or unlink there).
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// Fsyncs a directory, making the names in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    if skips_sync(SyncStep::Dir) {
        return Ok(());
    }
    File::open(dir)?.sync_all()
}

/// Fsyncs a file's data and size.
pub(crate) fn sync_file(file: &File) -> io::Result<()> {
    if skips_sync(SyncStep::Blob) {
        return Ok(());
    }
    file.sync_all()
}

/// Starts writing `len` bytes at `offset` of `file` to disk without waiting (Linux
/// `sync_file_range`), so that a later fsync has less left to write. Never a sync itself: it
/// neither waits nor covers the file's size or name. Elsewhere, or if it fails, the fsync does
/// it all.
pub fn start_writeback(file: &impl std::os::fd::AsRawFd, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain syscall on a descriptor the caller keeps open; it touches no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Writes `path` whole and durably: a temp file beside it, fsynced, renamed over it, the directory
/// fsynced. A crash leaves the old file or the new one, never a part.
pub(crate) fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let temp = path.with_file_name(name);
    let mut file = File::create(&temp)?;
    file.write_all(data)?;
    sync_file(&file)?;
    drop(file);
    std::fs::rename(&temp, path)?;
    sync_parent(path)
}

/// A kind of sync a test build can remove (`PERCH_UNSAFE_SKIP_SYNC=blob|dir|journal`), to show
/// that the power-cut soak reports the loss it causes. Never set it on a real deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    /// The fsync of a body (a spooled request body, a blob).
    Blob,
    /// The fsync of the directory a blob was renamed into.
    Dir,
    /// The sync of the journal batch that acknowledges a version.
    Journal,
}

/// Whether the test-only switch removes `sync` (read once).
pub fn skips_sync(sync: SyncStep) -> bool {
    static SKIP: std::sync::OnceLock<Option<SyncStep>> = std::sync::OnceLock::new();
    let skip = SKIP.get_or_init(|| {
        let v = std::env::var("PERCH_UNSAFE_SKIP_SYNC").ok()?;
        let s = match v.as_str() {
            "blob" => SyncStep::Blob,
            "dir" => SyncStep::Dir,
            "journal" => SyncStep::Journal,
            _ => return None,
        };
        eprintln!("perch: PERCH_UNSAFE_SKIP_SYNC={v}: acknowledged writes are NOT durable (tests only)");
        Some(s)
    });
    *skip == Some(sync)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dirs_makes_every_missing_level() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dirs(&deep).unwrap();
        assert!(deep.is_dir());
        create_dirs(&deep).unwrap();
    }
}
