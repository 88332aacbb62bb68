//! The FUSE filesystem: passes everything through to the backing directory (the current,
//! volatile view) and keeps, in a [`Tracker`], what a power cut may still take away, with the
//! undo information to take it away in place:
//!
//! - old contents of the pages first changed since a file's last fsync, in an undo log per file
//!   (`<backing>/.perch-powercut/undo/<node>`), and the file's synced size;
//! - unlinked, rmdir'ed and rename-replaced nodes, moved to `<backing>/.perch-powercut/graveyard`
//!   instead of deleted until the removal is durable;
//! - the log of unsynced namespace operations.
//!
//! Nodes are held by `O_PATH` descriptors (as libfuse's passthrough_ll does), so renames of their
//! directories never invalidate them. One lock serialises every operation, so the recorded order
//! is the order the operations took effect.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{CutPlan, Entry, FileFacts, FilePlan, LoggedOp, Mode, NodeId, NsOp, Replaced, Tracker};
use crate::sys;

/// The harness's own directory in the backing root, hidden from the mount.
pub const STATE_DIR: &str = ".perch-powercut";

const ROOT: NodeId = 1;
const TTL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    fn of(st: &libc::stat) -> Kind {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

struct Node {
    /// An `O_PATH` descriptor. While the node is idle (no handle, nothing unsynced, no logged
    /// operation) it may be closed when many are open, and reopened from `handle`.
    fd: RefCell<Option<OwnedFd>>,
    handle: Option<sys::Handle>,
    /// A descriptor on the backing filesystem, for open_by_handle_at.
    mount_fd: RawFd,
    /// How many node descriptors are open, shared by all nodes.
    open_fds: Arc<AtomicUsize>,
    kind: Kind,
    key: (u64, u64),
    /// Lookups the kernel holds (FUSE `nlookup`).
    nlookup: u64,
    /// Open file and directory handles.
    handles: u32,
    /// Links of this node that sit in the graveyard (not counted in the visible `st_nlink`).
    grave_links: u32,
    /// A read-only descriptor to save old page contents from (a handle may be write-only).
    reader: Option<File>,
    /// The undo log of old page contents.
    undo: Option<File>,
}

enum Handle {
    File {
        node: NodeId,
        file: Arc<File>,
        sync: bool,
    },
    Dir {
        node: NodeId,
        entries: Vec<(u64, FileType, OsString)>,
    },
}

/// What a cut did, line by line, for the control protocol.
#[derive(Debug, Default)]
pub struct CutReport {
    pub lines: Vec<String>,
    /// Failures while carrying the cut out (each a harness bug or a backing-store fault).
    pub errors: Vec<String>,
}

/// The filesystem's state, shared with the control socket.
pub struct Inner {
    root_path: PathBuf,
    state_path: PathBuf,
    mount_fd: OwnedFd,
    open_fds: Arc<AtomicUsize>,
    /// Above this many open node descriptors, idle ones are closed.
    fd_budget: usize,
    /// The count that triggers the next pass (raised while few nodes are idle).
    evict_at: usize,
    /// Whether file handles work here (else no descriptor is ever closed).
    handles_ok: bool,
    grave_fd: OwnedFd,
    undo_fd: OwnedFd,
    nodes: HashMap<NodeId, Node>,
    by_key: HashMap<(u64, u64), NodeId>,
    next_node: NodeId,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    tracker: Tracker,
    /// Set once cut or shut down: every later operation fails with EIO.
    dead: Option<&'static str>,
    forward_fsync: bool,
}

pub type Shared = Arc<Mutex<Inner>>;

pub fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The FUSE side.
pub struct PowercutFs {
    shared: Shared,
}

fn err(e: io::Error) -> Errno {
    Errno::from(e)
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn is_hidden(parent: NodeId, name: &OsStr) -> bool {
    parent == ROOT && name.as_bytes() == STATE_DIR.as_bytes()
}

fn file_type(st: &libc::stat) -> FileType {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype(d: u8) -> FileType {
    match d {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
            }
        }
    }
}

/// Reads `len` bytes at `offset`, zeros past the end of the file.
fn read_at_padded(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(buf)
}

impl Node {
    /// The node's `O_PATH` descriptor, reopened if it was closed. Valid until the next eviction,
    /// which happens only when a new node is registered.
    fn raw(&self) -> io::Result<RawFd> {
        if let Some(fd) = self.fd.borrow().as_ref() {
            return Ok(fd.as_raw_fd());
        }
        let handle = self
            .handle
            .as_ref()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        let fd = sys::open_handle(self.mount_fd, handle)?;
        let raw = fd.as_raw_fd();
        *self.fd.borrow_mut() = Some(fd);
        self.open_fds.fetch_add(1, Ordering::Relaxed);
        Ok(raw)
    }

    /// Closes the descriptor if the node can be reopened.
    fn evict(&mut self) -> bool {
        if self.handle.is_none() || self.fd.get_mut().take().is_none() {
            return false;
        }
        self.open_fds.fetch_sub(1, Ordering::Relaxed);
        self.reader = None;
        true
    }

    /// Copies the current bytes `offset..offset+len` into the undo log at `at`.
    fn save_old(&mut self, id: NodeId, undo_dir: RawFd, offset: u64, len: u64, at: u64) -> io::Result<()> {
        if self.reader.is_none() {
            self.reader = Some(sys::reopen(self.raw()?, libc::O_RDONLY)?);
        }
        if self.undo.is_none() {
            let fd = sys::open_at(
                undo_dir,
                OsStr::new(&id.to_string()),
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                0o600,
            )?;
            self.undo = Some(File::from(fd));
        }
        let old = read_at_padded(self.reader.as_ref().expect("opened above"), offset, len)?;
        self.undo.as_ref().expect("opened above").write_all_at(&old, at)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.fd.get_mut().is_some() {
            self.open_fds.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Inner {
    /// Prepares the backing directory: removes what a previous daemon left of its state (all
    /// present counts as durable) and opens the root.
    pub fn new(backing: &Path, forward_fsync: bool) -> io::Result<Inner> {
        let root_path = backing.canonicalize()?;
        let state_path = root_path.join(STATE_DIR);
        match std::fs::remove_dir_all(&state_path) {
            Ok(()) => tracing::info!(path = %state_path.display(), "removed a previous daemon's state"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(state_path.join("graveyard"))?;
        std::fs::create_dir_all(state_path.join("undo"))?;
        let dir = |p: &Path| sys::open_at(libc::AT_FDCWD, p.as_os_str(), libc::O_PATH | libc::O_DIRECTORY, 0);
        let root_fd = dir(&root_path)?;
        let grave_fd = dir(&state_path.join("graveyard"))?;
        let undo_fd = dir(&state_path.join("undo"))?;
        let mount_fd = sys::open_at(
            libc::AT_FDCWD,
            root_path.as_os_str(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        let st = sys::stat_fd(root_fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        let handles_ok =
            match sys::handle_of(root_fd.as_raw_fd()).and_then(|h| sys::open_handle(mount_fd.as_raw_fd(), &h)) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "no file handles here: one descriptor stays open per known file");
                    false
                }
            };
        // Half the descriptor limit; PERCH_POWERCUT_FD_BUDGET sets it (the tests make it small).
        let fd_budget = std::env::var("PERCH_POWERCUT_FD_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or((sys::nofile_limit() / 2).max(256) as usize);
        let open_fds = Arc::new(AtomicUsize::new(1));
        let mut inner = Inner {
            root_path,
            state_path,
            mount_fd,
            open_fds: open_fds.clone(),
            fd_budget,
            evict_at: fd_budget,
            handles_ok,
            grave_fd,
            undo_fd,
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            next_node: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            tracker: Tracker::new(),
            dead: None,
            forward_fsync,
        };
        inner.nodes.insert(
            ROOT,
            Node {
                fd: RefCell::new(Some(root_fd)),
                handle: None,
                mount_fd: -1,
                open_fds,
                kind: Kind::Dir,
                key,
                nlookup: 1,
                handles: 0,
                grave_links: 0,
                reader: None,
                undo: None,
            },
        );
        inner.by_key.insert(key, ROOT);
        Ok(inner)
    }

    fn node(&self, id: NodeId) -> Result<&Node, Errno> {
        self.nodes.get(&id).ok_or(Errno::ESTALE)
    }

    fn fd(&self, id: NodeId) -> Result<RawFd, Errno> {
        self.node(id)?.raw().map_err(err)
    }

    fn dir_fd(&self, id: NodeId) -> Result<RawFd, Errno> {
        let n = self.node(id)?;
        if n.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        n.raw().map_err(err)
    }

    /// The node `name` in `parent` names, registered if new; `count` adds a kernel lookup.
    fn lookup_node(&mut self, parent: NodeId, name: &OsStr, count: bool) -> Result<(NodeId, libc::stat), Errno> {
        if is_hidden(parent, name) {
            return Err(Errno::ENOENT);
        }
        let pfd = self.dir_fd(parent)?;
        let fd = sys::open_path(pfd, name).map_err(err)?;
        let st = sys::stat_fd(fd.as_raw_fd()).map_err(err)?;
        let key = (st.st_dev, st.st_ino);
        let id = match self.by_key.get(&key) {
            Some(id) => {
                let node = &self.nodes[id];
                if node.fd.borrow().is_none() {
                    *node.fd.borrow_mut() = Some(fd);
                    self.open_fds.fetch_add(1, Ordering::Relaxed);
                }
                *id
            }
            None => {
                let id = self.next_node;
                self.next_node += 1;
                let handle = if self.handles_ok {
                    sys::handle_of(fd.as_raw_fd()).ok()
                } else {
                    None
                };
                self.open_fds.fetch_add(1, Ordering::Relaxed);
                self.nodes.insert(
                    id,
                    Node {
                        fd: RefCell::new(Some(fd)),
                        handle,
                        mount_fd: self.mount_fd.as_raw_fd(),
                        open_fds: self.open_fds.clone(),
                        kind: Kind::of(&st),
                        key,
                        nlookup: 0,
                        handles: 0,
                        grave_links: 0,
                        reader: None,
                        undo: None,
                    },
                );
                self.by_key.insert(key, id);
                self.evict_idle(id);
                id
            }
        };
        if count {
            self.nodes.get_mut(&id).expect("just found").nlookup += 1;
        }
        Ok((id, st))
    }

    /// Over budget, closes the descriptors of idle nodes (they reopen from their file handles):
    /// no open handle, nothing unsynced, no logged operation, and not `keep`.
    fn evict_idle(&mut self, keep: NodeId) {
        if self.open_fds.load(Ordering::Relaxed) <= self.evict_at {
            return;
        }
        let mut closed = 0;
        for (id, node) in self.nodes.iter_mut() {
            let idle = *id != ROOT
                && *id != keep
                && node.handles == 0
                && !self.tracker.is_referenced(*id)
                && self.tracker.file(*id).is_none_or(|s| s.is_clean());
            if idle && node.evict() {
                closed += 1;
            }
        }
        let open = self.open_fds.load(Ordering::Relaxed);
        // While most nodes are busy, wait for half a budget more before scanning again.
        self.evict_at = self.fd_budget.max(open + self.fd_budget / 2);
        tracing::debug!(closed, open, "closed idle node descriptors");
    }

    fn attr(&self, id: NodeId, st: &libc::stat) -> FileAttr {
        let grave = self.nodes.get(&id).map_or(0, |n| n.grave_links);
        FileAttr {
            ino: INodeNo(id),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
            crtime: UNIX_EPOCH,
            kind: file_type(st),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: (st.st_nlink as u32).saturating_sub(grave),
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn stat_attr(&self, id: NodeId) -> Result<FileAttr, Errno> {
        let st = sys::stat_fd(self.fd(id)?).map_err(err)?;
        Ok(self.attr(id, &st))
    }

    /// Where a node is now, relative to the mount (`/a/b`).
    fn path_of(&self, id: NodeId) -> String {
        if id == ROOT {
            return "/".into();
        }
        let Some(node) = self.nodes.get(&id) else {
            return format!("<node {id}>");
        };
        match node.raw().and_then(sys::fd_path) {
            Ok(p) => {
                let p = PathBuf::from(p);
                match p.strip_prefix(&self.root_path) {
                    Ok(rel) => format!("/{}", rel.display()),
                    Err(_) => p.display().to_string(),
                }
            }
            Err(_) => format!("<node {id}>"),
        }
    }

    fn entry_path(&self, parent: NodeId, name: &OsStr) -> String {
        let p = self.path_of(parent);
        let sep = if p.ends_with('/') { "" } else { "/" };
        format!("{p}{sep}{}", name.to_string_lossy())
    }

    /// Drops a node nobody needs any more: no kernel lookups, no handles, no unsettled operation,
    /// and no unsynced data unless it has no visible name left.
    fn try_drop(&mut self, id: NodeId) {
        if id == ROOT {
            return;
        }
        let Some(n) = self.nodes.get(&id) else {
            return;
        };
        if n.nlookup > 0 || n.handles > 0 || self.tracker.is_referenced(id) {
            return;
        }
        if self.tracker.file(id).is_some_and(|s| !s.is_clean()) {
            let visible = n
                .raw()
                .and_then(sys::stat_fd)
                .map_or(0, |st| (st.st_nlink as u32).saturating_sub(n.grave_links));
            if visible > 0 {
                return;
            }
        }
        let n = self.nodes.remove(&id).expect("checked");
        if self.by_key.get(&n.key) == Some(&id) {
            self.by_key.remove(&n.key);
        }
        self.tracker.forget_file(id);
        if n.undo.is_some() {
            let _ = sys::unlink_at(self.undo_fd.as_raw_fd(), OsStr::new(&id.to_string()), false);
        }
    }

    fn file_handle(&self, fh: FileHandle) -> Result<(NodeId, Arc<File>, bool), Errno> {
        match self.handles.get(&fh.0) {
            Some(Handle::File { node, file, sync }) => Ok((*node, file.clone(), *sync)),
            _ => Err(Errno::EBADF),
        }
    }

    /// Records that `start..end` of node `id` (whose size is now `size`) is about to change.
    fn touch(&mut self, id: NodeId, size: u64, start: u64, end: u64) -> io::Result<()> {
        let undo_dir = self.undo_fd.as_raw_fd();
        let node = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        let state = self.tracker.file_mut(id, size);
        state.touch(start, end, |off, len, at| node.save_old(id, undo_dir, off, len, at))
    }

    fn mark_size(&mut self, id: NodeId, size: u64) {
        self.tracker.file_mut(id, size).size_dirty = true;
    }

    fn truncate(&mut self, id: NodeId, fh: Option<FileHandle>, size: u64) -> Result<(), Errno> {
        let file = match fh.and_then(|fh| self.file_handle(fh).ok()) {
            Some((_, file, _)) => file,
            None => Arc::new(sys::reopen(self.fd(id)?, libc::O_WRONLY).map_err(err)?),
        };
        let current = file.metadata().map_err(err)?.len();
        if size == current {
            // RocksDB trims its preallocation this way: no byte and no size changes.
            return file.set_len(size).map_err(err);
        }
        let undo_dir = self.undo_fd.as_raw_fd();
        let node = self.nodes.get_mut(&id).ok_or(Errno::ESTALE)?;
        let state = self.tracker.file_mut(id, current);
        state
            .truncate_to(size, |off, len, at| node.save_old(id, undo_dir, off, len, at))
            .map_err(err)?;
        file.set_len(size).map_err(err)
    }

    /// fsync/fdatasync of a file: its data and size are durable.
    fn sync_file(&mut self, id: NodeId, file: Option<&File>, datasync: bool) -> Result<(), Errno> {
        self.tracker.sync_file(id);
        let forward = self.forward_fsync;
        let node = self.nodes.get_mut(&id).ok_or(Errno::ESTALE)?;
        if let Some(undo) = &node.undo {
            undo.set_len(0).map_err(err)?;
        }
        if forward {
            match file {
                Some(f) => sys::fsync(f, datasync).map_err(err)?,
                None => sys::fsync(
                    &sys::reopen(node.raw().map_err(err)?, libc::O_RDONLY).map_err(err)?,
                    datasync,
                )
                .map_err(err)?,
            }
        }
        Ok(())
    }

    /// Carries out what durable namespace operations leave behind: graveyard entries go.
    fn settle(&mut self, ops: &[LoggedOp]) {
        let grave = self.grave_fd.as_raw_fd();
        let mut touched = Vec::new();
        for op in ops {
            let gone = match &op.op {
                NsOp::Remove { node, dir, grave, .. } => Some((*node, *dir, grave)),
                NsOp::Rename {
                    replaced: Some(Replaced { node, dir, grave }),
                    ..
                } => Some((*node, *dir, grave)),
                _ => None,
            };
            if let Some((node, dir, name)) = gone {
                if let Err(e) = sys::unlink_at(grave, name, dir) {
                    tracing::warn!(error = %e, grave = ?name, "could not delete a graveyard entry");
                }
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.grave_links = n.grave_links.saturating_sub(1);
                    // Gone for good (perhaps still open): its unsynced data can no longer matter,
                    // and its inode number may be reused by a new file.
                    if n.raw().and_then(sys::stat_fd).is_ok_and(|st| st.st_nlink == 0) {
                        self.tracker.forget_file(node);
                        if self.by_key.get(&n.key) == Some(&node) {
                            self.by_key.remove(&n.key);
                        }
                    }
                }
            }
            touched.extend(op.op.referenced());
        }
        for id in touched {
            self.try_drop(id);
        }
    }

    fn log(&mut self, op: NsOp, seq: u64, desc: String) {
        tracing::debug!(seq, %desc, "namespace operation");
        self.tracker.log_op(seq, op, desc);
    }

    /// A line per unsynced file and operation, then the totals.
    pub fn status(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut pages = 0;
        let mut files: Vec<(String, u64, u64, usize)> = self
            .tracker
            .files()
            .filter(|(_, s)| !s.is_clean())
            .map(|(id, s)| {
                let size = self
                    .nodes
                    .get(&id)
                    .and_then(|n| n.raw().and_then(sys::stat_fd).ok())
                    .map_or(0, |st| st.st_size as u64);
                (self.path_of(id), s.synced_size, size, s.dirty.len())
            })
            .collect();
        files.sort();
        for (path, synced, size, dirty) in &files {
            pages += dirty;
            lines.push(format!("file {path} synced {synced} size {size} dirty_pages {dirty}"));
        }
        let ops = self.tracker.pending_ops();
        for op in ops {
            lines.push(format!("op {} {}", op.seq, op.desc));
        }
        lines.push(format!("files {} dirty_pages {pages} ops {}", files.len(), ops.len()));
        lines
    }

    /// Cuts the power: rolls the backing directory back to a post-cut image chosen by `seed` and
    /// `mode`, and makes every later operation fail. The caller unmounts.
    pub fn cut(&mut self, seed: u64, mode: Mode) -> CutReport {
        self.dead = Some("cut");
        let mut report = CutReport::default();
        let facts: Vec<FileFacts> = self
            .tracker
            .files()
            .filter_map(|(id, _)| {
                let node = self.nodes.get(&id)?;
                let st = node.raw().and_then(sys::stat_fd).ok()?;
                Some(FileFacts {
                    node: id,
                    key: self.path_of(id),
                    current_size: st.st_size as u64,
                })
            })
            .collect();
        let plan: CutPlan = self.tracker.plan_cut(seed, mode, &facts);
        report.lines.push(format!("seed {seed}"));
        report.lines.push(format!("mode {mode}"));
        report.lines.push(format!("state {:016x}", plan.digest));
        let (mut kept, mut dropped) = (0, 0);
        for f in &plan.files {
            kept += f.pages_kept;
            dropped += f.pages_dropped;
            if let Err(e) = self.apply_file(f) {
                report.errors.push(format!("file {}: {e}", f.key));
            }
            report.lines.push(format!(
                "file {} size {} -> {} synced {} pages_kept {} pages_dropped {}",
                f.key, f.current_size, f.final_size, f.synced_size, f.pages_kept, f.pages_dropped
            ));
        }
        for op in &plan.kept_ops {
            report.lines.push(format!("kept {} {}", op.seq, op.desc));
        }
        for op in &plan.undone_ops {
            if let Err(e) = self.undo(op) {
                report.errors.push(format!("undo {} {}: {e}", op.seq, op.desc));
            }
            report.lines.push(format!("undone {} {}", op.seq, op.desc));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.state_path) {
            report.errors.push(format!("remove {}: {e}", self.state_path.display()));
        }
        report.lines.push(format!(
            "summary files {} pages_kept {kept} pages_dropped {dropped} ops_kept {} ops_undone {}",
            plan.files.len(),
            plan.kept_ops.len(),
            plan.undone_ops.len()
        ));
        report
    }

    fn apply_file(&mut self, f: &FilePlan) -> io::Result<()> {
        let node = self
            .nodes
            .get(&f.node)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        let file = sys::reopen(node.raw()?, libc::O_WRONLY)?;
        for &(offset, at, len) in &f.restore {
            let undo = node.undo.as_ref().ok_or_else(|| io::Error::other("no undo log"))?;
            let old = read_at_padded(undo, at, len)?;
            file.write_all_at(&old, offset)?;
        }
        for &(offset, len) in &f.zero {
            file.write_all_at(&vec![0u8; len as usize], offset)?;
        }
        file.set_len(f.final_size)
    }

    fn undo(&self, op: &LoggedOp) -> io::Result<()> {
        let fd = |id: NodeId| self.fd(id).map_err(|_| io::Error::other(format!("node {id} unknown")));
        let grave = self.grave_fd.as_raw_fd();
        let noreplace = libc::RENAME_NOREPLACE;
        match &op.op {
            NsOp::Create { at, .. } => {
                let name = OsString::from(format!("u{}", op.seq));
                sys::rename_at(fd(at.parent)?, &at.name, grave, &name, noreplace)
            }
            NsOp::Link { at, .. } => sys::unlink_at(fd(at.parent)?, &at.name, false),
            NsOp::Remove { at, grave: g, .. } => sys::rename_at(grave, g, fd(at.parent)?, &at.name, noreplace),
            NsOp::Rename { from, to, replaced, .. } => {
                sys::rename_at(fd(to.parent)?, &to.name, fd(from.parent)?, &from.name, noreplace)?;
                match replaced {
                    Some(r) => sys::rename_at(grave, &r.grave, fd(to.parent)?, &to.name, noreplace),
                    None => Ok(()),
                }
            }
        }
    }

    /// A clean shutdown: whatever the backing directory holds is the durable image.
    pub fn shut_down(&mut self) {
        if self.dead.is_some() {
            return;
        }
        self.dead = Some("shut down");
        self.tracker.sync_all();
        if let Err(e) = std::fs::remove_dir_all(&self.state_path) {
            tracing::warn!(error = %e, "could not remove the state directory");
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.is_some()
    }
}

impl PowercutFs {
    pub fn new(inner: Inner) -> Self {
        PowercutFs {
            shared: Arc::new(Mutex::new(inner)),
        }
    }

    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// Runs `f` on the state unless the filesystem was cut.
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, Errno>) -> Result<T, Errno> {
        let mut inner = lock(&self.shared);
        if inner.dead.is_some() {
            return Err(Errno::EIO);
        }
        f(&mut inner)
    }

    fn new_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        dir: bool,
        make: impl FnOnce(RawFd) -> io::Result<()>,
    ) -> Result<FileAttr, Errno> {
        self.with(|inner| {
            if is_hidden(parent.0, name) {
                return Err(Errno::EACCES);
            }
            let pfd = inner.dir_fd(parent.0)?;
            make(pfd).map_err(err)?;
            let (id, _) = inner.lookup_node(parent.0, name, true)?;
            let _ = chown_to(inner.fd(id)?, req);
            let seq = inner.tracker.next_seq();
            let kind = if dir { "mkdir" } else { "create" };
            let desc = format!("{kind} {}", inner.entry_path(parent.0, name));
            let at = Entry {
                parent: parent.0,
                name: name.to_owned(),
            };
            inner.log(NsOp::Create { at, node: id, dir }, seq, desc);
            inner.stat_attr(id)
        })
    }
}

/// New files belong to whoever asked for them (the daemon runs as root).
fn chown_to(fd: RawFd, req: &Request) -> io::Result<()> {
    // SAFETY: plain call.
    let me = unsafe { libc::geteuid() };
    if req.uid() == me && req.gid() == 0 {
        return Ok(());
    }
    sys::chown_fd(fd, Some(req.uid()), Some(req.gid()))
}

impl Filesystem for PowercutFs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> io::Result<()> {
        // No FUSE_WRITEBACK_CACHE (every write reaches us), no lock capabilities (the kernel keeps
        // flock and fcntl locks locally, which is all one machine needs).
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.with(|inner| {
            let (id, st) = inner.lookup_node(parent.0, name, true)?;
            Ok(inner.attr(id, &st))
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut inner = lock(&self.shared);
        if let Some(n) = inner.nodes.get_mut(&ino.0) {
            n.nlookup = n.nlookup.saturating_sub(nlookup);
        }
        inner.try_drop(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|inner| inner.stat_attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.with(|inner| {
            let id = ino.0;
            let kind = inner.node(id)?.kind;
            if let Some(size) = size {
                if kind != Kind::File {
                    return Err(Errno::EINVAL);
                }
                inner.truncate(id, fh, size)?;
            }
            let fd = inner.fd(id)?;
            if let Some(mode) = mode
                && kind != Kind::Symlink
            {
                sys::chmod_fd(fd, mode & 0o7777).map_err(err)?;
            }
            if uid.is_some() || gid.is_some() {
                sys::chown_fd(fd, uid, gid).map_err(err)?;
            }
            if (atime.is_some() || mtime.is_some()) && kind != Kind::Symlink {
                sys::set_times(fd, &[timespec(atime), timespec(mtime)]).map_err(err)?;
            }
            inner.stat_attr(id)
        }) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|inner| sys::readlink_fd(inner.fd(ino.0)?).map_err(err)) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let made = self.new_entry(req, parent, name, false, |pfd| {
            sys::mknod_at(pfd, name, mode & !umask, libc::dev_t::from(rdev))
        });
        match made {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        match self.new_entry(req, parent, name, true, |pfd| sys::mkdir_at(pfd, name, mode & !umask)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        match self.new_entry(req, parent, link_name, false, |pfd| {
            sys::symlink_at(target.as_os_str(), pfd, link_name)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|inner| remove(inner, parent.0, name, false)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|inner| remove(inner, parent.0, name, true)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.with(|inner| rename(inner, parent.0, name, newparent.0, newname, flags)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        match self.with(|inner| {
            if is_hidden(newparent.0, newname) {
                return Err(Errno::EACCES);
            }
            let node = inner.node(ino.0)?;
            if node.kind == Kind::Dir {
                return Err(Errno::EPERM);
            }
            sys::link_fd(node.raw().map_err(err)?, inner.dir_fd(newparent.0)?, newname).map_err(err)?;
            inner.nodes.get_mut(&ino.0).expect("checked").nlookup += 1;
            let seq = inner.tracker.next_seq();
            let desc = format!(
                "link {} -> {}",
                inner.path_of(ino.0),
                inner.entry_path(newparent.0, newname)
            );
            let at = Entry {
                parent: newparent.0,
                name: newname.to_owned(),
            };
            inner.log(NsOp::Link { at, node: ino.0 }, seq, desc);
            inner.stat_attr(ino.0)
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|inner| open_handle(inner, ino.0, flags.0, None)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.with(|inner| inner.file_handle(fh)) {
            Ok((_, file, _)) => file,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(err(e)),
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|inner| {
            let (id, file, sync) = inner.file_handle(fh)?;
            let size = file.metadata().map_err(err)?.len();
            let end = offset + data.len() as u64;
            inner.touch(id, size, offset, end).map_err(err)?;
            if end > size {
                inner.mark_size(id, size);
            }
            file.write_all_at(data, offset).map_err(err)?;
            if sync || flags.0 & libc::O_DSYNC != 0 {
                inner.sync_file(id, Some(&file), true)?;
            }
            Ok(data.len() as u32)
        }) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        close_handle(&mut lock(&self.shared), fh);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match self.with(|inner| {
            let file = inner.file_handle(fh).ok().map(|(_, f, _)| f);
            inner.sync_file(ino.0, file.as_deref(), datasync)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|inner| {
            inner.dir_fd(ino.0)?;
            let fh = inner.next_fh;
            inner.next_fh += 1;
            inner.handles.insert(
                fh,
                Handle::Dir {
                    node: ino.0,
                    entries: Vec::new(),
                },
            );
            inner.nodes.get_mut(&ino.0).expect("checked").handles += 1;
            Ok(fh)
        }) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let result = self.with(|inner| {
            if offset == 0 {
                let fd = inner.dir_fd(ino.0)?;
                let dev = inner.node(ino.0)?.key.0;
                let mut entries = vec![
                    (ino.0, FileType::Directory, OsString::from(".")),
                    (ROOT, FileType::Directory, OsString::from("..")),
                ];
                for (name, d_ino, d_type) in sys::read_dir(fd).map_err(err)? {
                    if is_hidden(ino.0, &name) {
                        continue;
                    }
                    let id = inner.by_key.get(&(dev, d_ino)).copied().unwrap_or(d_ino);
                    entries.push((id, dtype(d_type), name));
                }
                match inner.handles.get_mut(&fh.0) {
                    Some(Handle::Dir { entries: e, .. }) => *e = entries,
                    _ => return Err(Errno::EBADF),
                }
            }
            match inner.handles.get(&fh.0) {
                Some(Handle::Dir { entries, .. }) => {
                    Ok(entries.iter().skip(offset as usize).cloned().collect::<Vec<_>>())
                }
                _ => Err(Errno::EBADF),
            }
        });
        match result {
            Ok(entries) => {
                for (i, (id, kind, name)) in entries.into_iter().enumerate() {
                    if reply.add(INodeNo(id), offset + i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        close_handle(&mut lock(&self.shared), fh);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.with(|inner| {
            let fd = inner.dir_fd(ino.0)?;
            let durable = inner.tracker.sync_dir(ino.0);
            for op in &durable {
                tracing::debug!(seq = op.seq, desc = %op.desc, "durable");
            }
            inner.settle(&durable);
            // Nodes may have become idle.
            inner.evict_at = inner.fd_budget;
            inner.evict_idle(ROOT);
            if inner.forward_fsync {
                sys::fsync_dir(fd).map_err(err)?;
            }
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.with(|inner| sys::statvfs(inner.fd(ROOT)?).map_err(err)) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    // Extended attributes are not passed through: ENOSYS makes the kernel stop asking.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|inner| {
            if is_hidden(parent.0, name) {
                return Err(Errno::EACCES);
            }
            let pfd = inner.dir_fd(parent.0)?;
            let acc = flags & libc::O_ACCMODE;
            let created = match sys::open_at(pfd, name, acc | libc::O_CREAT | libc::O_EXCL, mode & !umask) {
                Ok(fd) => Some(File::from(fd)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => None,
                Err(e) => return Err(err(e)),
            };
            let (id, _) = inner.lookup_node(parent.0, name, true)?;
            let fh = match created {
                Some(file) => {
                    let _ = chown_to(inner.fd(id)?, req);
                    let seq = inner.tracker.next_seq();
                    let desc = format!("create {}", inner.entry_path(parent.0, name));
                    let at = Entry {
                        parent: parent.0,
                        name: name.to_owned(),
                    };
                    inner.log(
                        NsOp::Create {
                            at,
                            node: id,
                            dir: false,
                        },
                        seq,
                        desc,
                    );
                    open_handle(inner, id, flags, Some(file))?
                }
                None => open_handle(inner, id, flags, None)?,
            };
            Ok((inner.stat_attr(id)?, fh))
        }) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.with(|inner| {
            let (id, file, _) = inner.file_handle(fh)?;
            let size = file.metadata().map_err(err)?.len();
            let end = offset.saturating_add(length);
            let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            match mode & !libc::FALLOC_FL_KEEP_SIZE {
                // Allocation (and unsharing) changes no byte; only the size may grow.
                0 | libc::FALLOC_FL_UNSHARE_RANGE => {}
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => {
                    inner.touch(id, size, offset, end.min(size)).map_err(err)?;
                }
                // Collapsing and inserting ranges shift every later byte: not modelled.
                _ => return Err(errno(libc::EOPNOTSUPP)),
            }
            if !keep_size && end > size {
                inner.mark_size(id, size);
            }
            sys::fallocate(&file, mode, offset, length).map_err(err)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

fn open_handle(inner: &mut Inner, id: NodeId, flags: i32, file: Option<File>) -> Result<u64, Errno> {
    let node = inner.node(id)?;
    if node.kind == Kind::Dir {
        return Err(Errno::EISDIR);
    }
    let acc = flags & libc::O_ACCMODE;
    let file = match file {
        Some(f) => f,
        None => {
            if flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY && node.kind == Kind::File {
                inner.truncate(id, None, 0)?;
            }
            // O_APPEND is the kernel's business (it sends the offset); O_DIRECT would impose
            // alignment on our own buffers.
            sys::reopen(inner.fd(id)?, acc).map_err(err)?
        }
    };
    let fh = inner.next_fh;
    inner.next_fh += 1;
    inner.handles.insert(
        fh,
        Handle::File {
            node: id,
            file: Arc::new(file),
            sync: flags & libc::O_DSYNC != 0,
        },
    );
    inner.nodes.get_mut(&id).expect("checked").handles += 1;
    Ok(fh)
}

fn close_handle(inner: &mut Inner, fh: FileHandle) {
    let node = match inner.handles.remove(&fh.0) {
        Some(Handle::File { node, .. }) | Some(Handle::Dir { node, .. }) => node,
        None => return,
    };
    if let Some(n) = inner.nodes.get_mut(&node) {
        n.handles = n.handles.saturating_sub(1);
    }
    inner.try_drop(node);
}

/// unlink/rmdir: the node moves to the graveyard until the removal is durable.
fn remove(inner: &mut Inner, parent: NodeId, name: &OsStr, dir: bool) -> Result<(), Errno> {
    let (id, st) = inner.lookup_node(parent, name, false)?;
    let result = (|| {
        let is_dir = Kind::of(&st) == Kind::Dir;
        if dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !dir && is_dir {
            return Err(Errno::EISDIR);
        }
        if dir && !sys::read_dir(inner.fd(id)?).map_err(err)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let seq = inner.tracker.next_seq();
        let grave = OsString::from(format!("g{seq}"));
        let desc = format!(
            "{} {}",
            if dir { "rmdir" } else { "unlink" },
            inner.entry_path(parent, name)
        );
        sys::rename_at(
            inner.dir_fd(parent)?,
            name,
            inner.grave_fd.as_raw_fd(),
            &grave,
            libc::RENAME_NOREPLACE,
        )
        .map_err(err)?;
        inner.nodes.get_mut(&id).expect("registered").grave_links += 1;
        let at = Entry {
            parent,
            name: name.to_owned(),
        };
        inner.log(
            NsOp::Remove {
                at,
                node: id,
                dir,
                grave,
            },
            seq,
            desc,
        );
        Ok(())
    })();
    inner.try_drop(id);
    result
}

fn rename(
    inner: &mut Inner,
    parent: NodeId,
    name: &OsStr,
    newparent: NodeId,
    newname: &OsStr,
    flags: RenameFlags,
) -> Result<(), Errno> {
    if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
        // RENAME_EXCHANGE and RENAME_WHITEOUT are not modelled.
        return Err(Errno::EINVAL);
    }
    if is_hidden(newparent, newname) {
        return Err(Errno::EACCES);
    }
    let (src, sst) = inner.lookup_node(parent, name, false)?;
    let target = match inner.lookup_node(newparent, newname, false) {
        Ok(t) => Some(t),
        Err(e) if e == Errno::ENOENT => None,
        Err(e) => {
            inner.try_drop(src);
            return Err(e);
        }
    };
    let result = rename_inner(
        inner,
        (parent, name, src, &sst),
        (newparent, newname),
        target.as_ref(),
        flags,
    );
    inner.try_drop(src);
    if let Some((t, _)) = target {
        inner.try_drop(t);
    }
    result
}

fn rename_inner(
    inner: &mut Inner,
    (parent, name, src, sst): (NodeId, &OsStr, NodeId, &libc::stat),
    (newparent, newname): (NodeId, &OsStr),
    target: Option<&(NodeId, libc::stat)>,
    flags: RenameFlags,
) -> Result<(), Errno> {
    let sdir = Kind::of(sst) == Kind::Dir;
    let pfd = inner.dir_fd(parent)?;
    let nfd = inner.dir_fd(newparent)?;
    let grave_fd = inner.grave_fd.as_raw_fd();
    let seq = inner.tracker.next_seq();
    let grave = OsString::from(format!("g{seq}"));
    let mut replaced = None;
    if let Some((t, tst)) = target {
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return Err(Errno::EEXIST);
        }
        if *t == src {
            // Two names of one file: rename does nothing.
            return Ok(());
        }
        let tdir = Kind::of(tst) == Kind::Dir;
        if sdir && !tdir {
            return Err(Errno::ENOTDIR);
        }
        if !sdir && tdir {
            return Err(Errno::EISDIR);
        }
        if tdir {
            if !sys::read_dir(inner.fd(*t)?).map_err(err)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            sys::rename_at(nfd, newname, grave_fd, &grave, libc::RENAME_NOREPLACE).map_err(err)?;
            if let Err(e) = sys::rename_at(pfd, name, nfd, newname, libc::RENAME_NOREPLACE) {
                let _ = sys::rename_at(grave_fd, &grave, nfd, newname, libc::RENAME_NOREPLACE);
                return Err(err(e));
            }
        } else {
            // Keep the replaced file in the graveyard by a second link, then rename over it.
            sys::link_at(nfd, newname, grave_fd, &grave).map_err(err)?;
            if let Err(e) = sys::rename_at(pfd, name, nfd, newname, 0) {
                let _ = sys::unlink_at(grave_fd, &grave, false);
                return Err(err(e));
            }
        }
        inner.nodes.get_mut(t).expect("registered").grave_links += 1;
        replaced = Some(Replaced {
            node: *t,
            dir: tdir,
            grave,
        });
    } else {
        sys::rename_at(pfd, name, nfd, newname, libc::RENAME_NOREPLACE).map_err(err)?;
    }
    let from = Entry {
        parent,
        name: name.to_owned(),
    };
    let to = Entry {
        parent: newparent,
        name: newname.to_owned(),
    };
    let desc = format!(
        "rename {} -> {}{}",
        inner.entry_path(parent, name),
        inner.entry_path(newparent, newname),
        if replaced.is_some() { " (replacing)" } else { "" }
    );
    inner.log(
        NsOp::Rename {
            from,
            to,
            node: src,
            dir: sdir,
            replaced,
        },
        seq,
        desc,
    );
    Ok(())
}
