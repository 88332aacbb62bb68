//! The durability model, as pure bookkeeping: what has not been made durable yet, and what a cut
//! keeps of it. No I/O happens here; `fs` records into a [`Tracker`] and carries out a [`CutPlan`].
//!
//! Data: per regular file, the size at its last `fsync`/`fdatasync` and the 4 KiB pages changed
//! since (with where their old contents were saved). Namespace: a log, in order, of the creates,
//! links, unlinks, rmdirs and renames that no directory fsync has made durable yet. An fsync of a
//! directory makes durable every logged operation that changed an entry of that directory (a
//! rename counts for both its directories), together with the earlier operations each depends on
//! (see [`NsOp`]), so that the image a cut leaves is one some real filesystem could leave.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::io;

use crate::rng::{self, Fnv};

/// The granularity of data tracking.
pub const PAGE: u64 = 4096;

/// A file or directory, as the filesystem numbers it (the FUSE inode number).
pub type NodeId = u64;

/// How a cut treats what was not made durable. Chosen from the seed (`seed % 3`) unless given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// (a) Every unsynced data page, size change and namespace operation is dropped.
    Drop,
    /// (b) Each file keeps an arbitrary subset of its unsynced pages and a size between its synced
    /// and current sizes (growing with zeros where no page survived); unsynced namespace
    /// operations are dropped.
    Torn,
    /// (c) An in-order prefix of the unsynced namespace operations, across all directories,
    /// survives; data is torn as in (b), independently of the names.
    Prefix,
    /// (d) Every unsynced namespace operation survives and every unsynced data page is dropped:
    /// the end of (c) a test picks when it needs names without their data (a journal that
    /// committed an unlink while the log write before it never reached the disk). Only when
    /// asked for; seeds choose among a, b and c.
    NamesOnly,
}

impl Mode {
    pub fn from_seed(seed: u64) -> Mode {
        match seed % 3 {
            0 => Mode::Drop,
            1 => Mode::Torn,
            _ => Mode::Prefix,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Mode::Drop => 'a',
            Mode::Torn => 'b',
            Mode::Prefix => 'c',
            Mode::NamesOnly => 'd',
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Drop => "drop",
            Mode::Torn => "torn",
            Mode::Prefix => "prefix",
            Mode::NamesOnly => "names-only",
        }
    }

    /// `a`/`drop`, `b`/`torn`, `c`/`prefix`, `d`/`names-only`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "a" | "drop" => Some(Mode::Drop),
            "b" | "torn" => Some(Mode::Torn),
            "c" | "prefix" => Some(Mode::Prefix),
            "d" | "names-only" => Some(Mode::NamesOnly),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.letter(), self.name())
    }
}

/// What of one regular file is not durable. A file without a `FileState` is entirely durable
/// (its synced size is its current size).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileState {
    /// The size at the last fsync (or when the filesystem first saw the file).
    pub synced_size: u64,
    /// Whether the size may differ from `synced_size` (a write past the end, truncate, fallocate).
    pub size_dirty: bool,
    /// Pages changed since the last fsync, each with the offset in the file's undo log where its
    /// old contents (the bytes below `synced_size`) were saved; `None` for a page that starts at
    /// or past `synced_size`, which had no old contents.
    pub dirty: BTreeMap<u64, Option<u64>>,
    /// Bytes used in the file's undo log.
    pub undo_len: u64,
}

impl FileState {
    pub fn new(synced_size: u64) -> Self {
        FileState {
            synced_size,
            ..FileState::default()
        }
    }

    pub fn is_clean(&self) -> bool {
        !self.size_dirty && self.dirty.is_empty()
    }

    /// Records that bytes `start..end` are about to change. For each page not yet dirty that held
    /// durable bytes, `save(offset, len)` must copy the file's current bytes `offset..offset+len`
    /// into the undo log at `undo_len` (it is given that position) before the change.
    pub fn touch(
        &mut self,
        start: u64,
        end: u64,
        mut save: impl FnMut(u64, u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        if end <= start {
            return Ok(());
        }
        for page in start / PAGE..end.div_ceil(PAGE) {
            if self.dirty.contains_key(&page) {
                continue;
            }
            let offset = page * PAGE;
            let undo = if offset < self.synced_size {
                let len = PAGE.min(self.synced_size - offset);
                let at = self.undo_len;
                save(offset, len, at)?;
                self.undo_len += len;
                Some(at)
            } else {
                None
            };
            self.dirty.insert(page, undo);
        }
        Ok(())
    }

    /// The file is about to be truncated (or extended) to `new_size`: saves the durable pages
    /// that a shrink cuts off or zeroes.
    pub fn truncate_to(&mut self, new_size: u64, save: impl FnMut(u64, u64, u64) -> io::Result<()>) -> io::Result<()> {
        self.size_dirty = true;
        if new_size < self.synced_size {
            self.touch(new_size, self.synced_size, save)?;
        }
        Ok(())
    }
}

/// A directory entry: a name in a directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub parent: NodeId,
    pub name: OsString,
}

/// A node that a rename replaced, kept in the graveyard under `grave` until the rename is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub node: NodeId,
    pub dir: bool,
    pub grave: OsString,
}

/// A namespace operation not yet made durable, with what undoing it needs.
///
/// An operation depends on every earlier one that touched one of its entries (same directory and
/// name) or one of its nodes; a removal of a directory (rmdir, or a rename over an empty
/// directory) also depends on the earlier changes inside that directory; and a rename that moves
/// a directory to another parent depends on everything before it (so that no cut can make a
/// directory its own ancestor). Durability always takes dependencies along.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NsOp {
    /// A file, directory, symlink or special file was created.
    Create { at: Entry, node: NodeId, dir: bool },
    /// A hard link to an existing node was made.
    Link { at: Entry, node: NodeId },
    /// unlink or rmdir: the node was moved to the graveyard under `grave`.
    Remove {
        at: Entry,
        node: NodeId,
        dir: bool,
        grave: OsString,
    },
    /// rename(2), possibly over an existing node.
    Rename {
        from: Entry,
        to: Entry,
        node: NodeId,
        dir: bool,
        replaced: Option<Replaced>,
    },
}

impl NsOp {
    pub fn entries(&self) -> Vec<&Entry> {
        match self {
            NsOp::Create { at, .. } | NsOp::Link { at, .. } | NsOp::Remove { at, .. } => vec![at],
            NsOp::Rename { from, to, .. } => vec![from, to],
        }
    }

    pub fn nodes(&self) -> Vec<NodeId> {
        match self {
            NsOp::Create { node, .. } | NsOp::Link { node, .. } | NsOp::Remove { node, .. } => vec![*node],
            NsOp::Rename { node, replaced, .. } => {
                let mut v = vec![*node];
                v.extend(replaced.as_ref().map(|r| r.node));
                v
            }
        }
    }

    /// The directories whose entries this operation changed.
    pub fn dirs(&self) -> Vec<NodeId> {
        self.entries().iter().map(|e| e.parent).collect()
    }

    /// A directory this operation removed: it must have been empty.
    fn emptied(&self) -> Option<NodeId> {
        match self {
            NsOp::Remove { node, dir: true, .. } => Some(*node),
            NsOp::Rename {
                replaced: Some(Replaced { node, dir: true, .. }),
                ..
            } => Some(*node),
            _ => None,
        }
    }

    fn is_barrier(&self) -> bool {
        matches!(self, NsOp::Rename { from, to, dir: true, .. } if from.parent != to.parent)
    }

    /// Every node this operation refers to, which must stay known until it is settled.
    pub fn referenced(&self) -> Vec<NodeId> {
        let mut v = self.nodes();
        v.extend(self.dirs());
        v
    }
}

/// A logged operation: its sequence number, the operation and how to show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedOp {
    pub seq: u64,
    pub op: NsOp,
    /// E.g. `rename /db/CURRENT.tmp -> /db/CURRENT`, with the paths when it was made.
    pub desc: String,
}

/// All that is not durable.
#[derive(Debug, Default)]
pub struct Tracker {
    files: BTreeMap<NodeId, FileState>,
    log: Vec<LoggedOp>,
    next_seq: u64,
    refs: HashMap<NodeId, u32>,
}

/// One file's facts at the time of a cut, gathered by the caller.
#[derive(Clone, Debug)]
pub struct FileFacts {
    pub node: NodeId,
    /// A stable name for the file: its path at the cut (it seeds the file's decisions).
    pub key: String,
    pub current_size: u64,
}

/// What a cut does to one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePlan {
    pub node: NodeId,
    pub key: String,
    pub synced_size: u64,
    pub current_size: u64,
    pub final_size: u64,
    /// Pages to put back: (file offset, undo log offset, length).
    pub restore: Vec<(u64, u64, u64)>,
    /// Ranges to zero: (file offset, length): dropped pages (or their parts) with no old contents.
    pub zero: Vec<(u64, u64)>,
    pub pages_kept: usize,
    pub pages_dropped: usize,
}

/// A whole cut: a pure function of the seed, the mode and the recorded state.
#[derive(Clone, Debug)]
pub struct CutPlan {
    pub seed: u64,
    pub mode: Mode,
    pub files: Vec<FilePlan>,
    /// The unsynced operations that survive (mode c's prefix), oldest first.
    pub kept_ops: Vec<LoggedOp>,
    /// The operations to undo, newest first (the order to undo them in).
    pub undone_ops: Vec<LoggedOp>,
    /// A digest of the recorded state: the same digest and seed give the same cut.
    pub digest: u64,
}

impl Tracker {
    pub fn new() -> Self {
        Tracker::default()
    }

    pub fn file(&self, node: NodeId) -> Option<&FileState> {
        self.files.get(&node)
    }

    /// The state of `node`, created as wholly durable at `current_size` if it had none.
    pub fn file_mut(&mut self, node: NodeId, current_size: u64) -> &mut FileState {
        self.files.entry(node).or_insert_with(|| FileState::new(current_size))
    }

    pub fn files(&self) -> impl Iterator<Item = (NodeId, &FileState)> {
        self.files.iter().map(|(n, s)| (*n, s))
    }

    /// fsync/fdatasync: the file's data and size are durable.
    pub fn sync_file(&mut self, node: NodeId) {
        self.files.remove(&node);
    }

    /// Forgets a node entirely (it no longer exists anywhere).
    pub fn forget_file(&mut self, node: NodeId) {
        self.files.remove(&node);
    }

    /// A fresh sequence number (also used to name graveyard entries).
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Appends a namespace operation taken with [`Tracker::next_seq`].
    pub fn log_op(&mut self, seq: u64, op: NsOp, desc: String) {
        for n in op.referenced() {
            *self.refs.entry(n).or_default() += 1;
        }
        self.log.push(LoggedOp { seq, op, desc });
    }

    pub fn pending_ops(&self) -> &[LoggedOp] {
        &self.log
    }

    /// Whether an unsettled operation still refers to `node`.
    pub fn is_referenced(&self, node: NodeId) -> bool {
        self.refs.get(&node).is_some_and(|n| *n > 0)
    }

    /// fsync of directory `dir`: returns the operations that became durable (now settled and
    /// removed from the log), oldest first.
    pub fn sync_dir(&mut self, dir: NodeId) -> Vec<LoggedOp> {
        let included = closure(&self.log, |op| op.dirs().contains(&dir));
        let mut durable = Vec::new();
        let mut rest = Vec::new();
        for (op, inc) in std::mem::take(&mut self.log).into_iter().zip(included) {
            if inc {
                durable.push(op);
            } else {
                rest.push(op);
            }
        }
        self.log = rest;
        for op in &durable {
            for n in op.op.referenced() {
                if let Some(c) = self.refs.get_mut(&n) {
                    *c -= 1;
                    if *c == 0 {
                        self.refs.remove(&n);
                    }
                }
            }
        }
        durable
    }

    /// Settles everything (a clean shutdown): returns the whole log.
    pub fn sync_all(&mut self) -> Vec<LoggedOp> {
        self.refs.clear();
        self.files.clear();
        std::mem::take(&mut self.log)
    }

    /// A digest of the recorded state as the cut sees it.
    pub fn digest(&self, facts: &[FileFacts]) -> u64 {
        let mut h = Fnv::default();
        let mut sorted: Vec<&FileFacts> = facts.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        for f in sorted {
            let Some(s) = self.files.get(&f.node) else {
                continue;
            };
            h.str(&f.key).u64(f.current_size).u64(s.synced_size);
            for page in s.dirty.keys() {
                h.u64(*page);
            }
        }
        for op in &self.log {
            h.str(&op.desc);
        }
        h.finish()
    }

    /// Decides a cut. `facts` describes every file that has a [`FileState`].
    pub fn plan_cut(&self, seed: u64, mode: Mode, facts: &[FileFacts]) -> CutPlan {
        let mut sorted: Vec<&FileFacts> = facts.iter().filter(|f| self.files.contains_key(&f.node)).collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key).then(a.node.cmp(&b.node)));
        let files = sorted
            .into_iter()
            .map(|f| plan_file(seed, mode, f, &self.files[&f.node]))
            .collect();

        let keep = match mode {
            Mode::Drop | Mode::Torn => 0,
            Mode::Prefix => rng::stream(seed, "namespace").up_to(self.log.len() as u64) as usize,
            Mode::NamesOnly => self.log.len(),
        };
        CutPlan {
            seed,
            mode,
            files,
            kept_ops: self.log[..keep].to_vec(),
            undone_ops: self.log[keep..].iter().rev().cloned().collect(),
            digest: self.digest(facts),
        }
    }
}

/// Which operations of `log` are included when those matching `direct` are: the direct ones and,
/// transitively, the earlier operations they depend on.
fn closure(log: &[LoggedOp], direct: impl Fn(&NsOp) -> bool) -> Vec<bool> {
    let mut included = vec![false; log.len()];
    let mut entries: HashSet<&Entry> = HashSet::new();
    let mut nodes: HashSet<NodeId> = HashSet::new();
    let mut emptied: HashSet<NodeId> = HashSet::new();
    let mut barrier = false;
    for i in (0..log.len()).rev() {
        let op = &log[i].op;
        let hit = barrier
            || direct(op)
            || op.entries().iter().any(|e| entries.contains(e))
            || op.nodes().iter().any(|n| nodes.contains(n))
            || op.dirs().iter().any(|d| emptied.contains(d));
        if !hit {
            continue;
        }
        included[i] = true;
        entries.extend(op.entries());
        nodes.extend(op.nodes());
        emptied.extend(op.emptied());
        barrier |= op.is_barrier();
    }
    included
}

fn plan_file(seed: u64, mode: Mode, facts: &FileFacts, state: &FileState) -> FilePlan {
    let synced = state.synced_size;
    let current = facts.current_size;
    let mut g = rng::stream(seed, &format!("file {}", facts.key));
    // Torn files: a quarter lose every unsynced page, a quarter keep them all, the rest keep
    // each page with even odds.
    let style = match mode {
        Mode::Drop | Mode::NamesOnly => 0,
        Mode::Torn | Mode::Prefix => g.below(4),
    };
    let final_size = match mode {
        Mode::Drop | Mode::NamesOnly => synced,
        Mode::Torn | Mode::Prefix => {
            if current == synced {
                synced
            } else if current < synced {
                // A shrink either reached the disk or not.
                if g.below(2) == 0 { synced } else { current }
            } else {
                match g.below(3) {
                    0 => synced,
                    1 => current,
                    _ => synced + g.up_to(current - synced),
                }
            }
        }
    };
    let mut plan = FilePlan {
        node: facts.node,
        key: facts.key.clone(),
        synced_size: synced,
        current_size: current,
        final_size,
        restore: Vec::new(),
        zero: Vec::new(),
        pages_kept: 0,
        pages_dropped: 0,
    };
    for (&page, undo) in &state.dirty {
        let keep = match style {
            0 => false,
            1 => true,
            _ => g.below(2) == 1,
        };
        if keep {
            // The page's current bytes stay (past the current size there are none: zeros).
            plan.pages_kept += 1;
            continue;
        }
        plan.pages_dropped += 1;
        let offset = page * PAGE;
        let mut zero_from = offset;
        if let Some(at) = undo {
            let len = PAGE.min(synced - offset);
            plan.restore.push((offset, *at, len));
            zero_from = offset + len;
        }
        // What lies past the old contents was not there before: zeros, as far as the file will
        // reach (the final truncate cuts the rest).
        let zero_to = (offset + PAGE).min(final_size.max(current));
        if zero_to > zero_from {
            plan.zero.push((zero_from, zero_to - zero_from));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(parent: NodeId, name: &str) -> Entry {
        Entry {
            parent,
            name: name.into(),
        }
    }

    fn log(t: &mut Tracker, op: NsOp) -> u64 {
        let seq = t.next_seq();
        let desc = format!("{op:?}");
        t.log_op(seq, op, desc);
        seq
    }

    fn seqs(ops: &[LoggedOp]) -> Vec<u64> {
        ops.iter().map(|o| o.seq).collect()
    }

    #[test]
    fn touch_saves_only_durable_pages_once() {
        let mut s = FileState::new(PAGE + 100);
        let mut saved = Vec::new();
        s.touch(10, 3 * PAGE + 1, |off, len, at| {
            saved.push((off, len, at));
            Ok(())
        })
        .unwrap();
        assert_eq!(saved, vec![(0, PAGE, 0), (PAGE, 100, PAGE)]);
        assert_eq!(s.dirty.len(), 4);
        assert_eq!(s.dirty[&2], None);
        s.touch(0, PAGE, |_, _, _| panic!("already saved")).unwrap();
    }

    #[test]
    fn truncate_saves_the_cut_off_durable_pages() {
        let mut s = FileState::new(3 * PAGE);
        let mut saved = Vec::new();
        s.truncate_to(PAGE + 1, |off, len, _| {
            saved.push((off, len));
            Ok(())
        })
        .unwrap();
        assert_eq!(saved, vec![(PAGE, PAGE), (2 * PAGE, PAGE)]);
        assert!(s.size_dirty);
    }

    #[test]
    fn dir_fsync_takes_dependencies_along() {
        let mut t = Tracker::new();
        // create tmp/a, then rename tmp/a -> d/b; create d/other; create e/x.
        let c = log(
            &mut t,
            NsOp::Create {
                at: entry(10, "a"),
                node: 100,
                dir: false,
            },
        );
        let r = log(
            &mut t,
            NsOp::Rename {
                from: entry(10, "a"),
                to: entry(20, "b"),
                node: 100,
                dir: false,
                replaced: None,
            },
        );
        let _o = log(
            &mut t,
            NsOp::Create {
                at: entry(20, "other"),
                node: 101,
                dir: false,
            },
        );
        let x = log(
            &mut t,
            NsOp::Create {
                at: entry(30, "x"),
                node: 102,
                dir: false,
            },
        );
        // fsync of d (20): the rename, its create, and d/other.
        let durable = t.sync_dir(20);
        assert_eq!(seqs(&durable), vec![c, r, 3]);
        assert_eq!(seqs(t.pending_ops()), vec![x]);
        assert!(!t.is_referenced(100));
        assert!(t.is_referenced(102));
    }

    #[test]
    fn rmdir_depends_on_the_changes_inside() {
        let mut t = Tracker::new();
        let u = log(
            &mut t,
            NsOp::Remove {
                at: entry(5, "f"),
                node: 50,
                dir: false,
                grave: "g1".into(),
            },
        );
        let unrelated = log(
            &mut t,
            NsOp::Create {
                at: entry(6, "z"),
                node: 60,
                dir: false,
            },
        );
        let rm = log(
            &mut t,
            NsOp::Remove {
                at: entry(1, "d"),
                node: 5,
                dir: true,
                grave: "g2".into(),
            },
        );
        assert_eq!(seqs(&t.sync_dir(1)), vec![u, rm]);
        assert_eq!(seqs(t.pending_ops()), vec![unrelated]);
    }

    #[test]
    fn a_directory_moving_to_another_parent_takes_everything_before() {
        let mut t = Tracker::new();
        let a = log(
            &mut t,
            NsOp::Create {
                at: entry(7, "q"),
                node: 70,
                dir: false,
            },
        );
        let mv = log(
            &mut t,
            NsOp::Rename {
                from: entry(1, "p"),
                to: entry(2, "p"),
                node: 3,
                dir: true,
                replaced: None,
            },
        );
        let later = log(
            &mut t,
            NsOp::Create {
                at: entry(8, "r"),
                node: 80,
                dir: false,
            },
        );
        assert_eq!(seqs(&t.sync_dir(2)), vec![a, mv]);
        assert_eq!(seqs(t.pending_ops()), vec![later]);
    }

    fn facts(node: NodeId, key: &str, size: u64) -> FileFacts {
        FileFacts {
            node,
            key: key.into(),
            current_size: size,
        }
    }

    #[test]
    fn drop_mode_restores_everything() {
        let mut t = Tracker::new();
        let s = t.file_mut(1, 2 * PAGE);
        s.touch(PAGE - 10, 5 * PAGE, |_, _, _| Ok(())).unwrap();
        s.size_dirty = true;
        log(
            &mut t,
            NsOp::Create {
                at: entry(1, "x"),
                node: 9,
                dir: false,
            },
        );
        let plan = t.plan_cut(3, Mode::Drop, &[facts(1, "/f", 5 * PAGE)]);
        let f = &plan.files[0];
        assert_eq!(f.final_size, 2 * PAGE);
        assert_eq!(f.restore, vec![(0, 0, PAGE), (PAGE, PAGE, PAGE)]);
        assert_eq!(f.pages_dropped, 5);
        assert_eq!(f.pages_kept, 0);
        assert_eq!(plan.undone_ops.len(), 1);
        assert!(plan.kept_ops.is_empty());
    }

    #[test]
    fn torn_plans_are_deterministic_and_vary_with_the_seed() {
        let mut t = Tracker::new();
        t.file_mut(1, 0).touch(0, 64 * PAGE, |_, _, _| Ok(())).unwrap();
        t.file_mut(1, 0).size_dirty = true;
        let f = [facts(1, "/log", 64 * PAGE)];
        let a = t.plan_cut(4, Mode::Torn, &f);
        let b = t.plan_cut(4, Mode::Torn, &f);
        assert_eq!(a.files, b.files);
        let distinct: HashSet<_> = (0..40u64)
            .map(|s| {
                let p = t.plan_cut(s * 3 + 1, Mode::Torn, &f);
                (p.files[0].pages_kept, p.files[0].final_size)
            })
            .collect();
        assert!(distinct.len() > 5, "{distinct:?}");
        for s in 0..40 {
            let p = &t.plan_cut(s, Mode::Torn, &f).files[0];
            assert!(p.final_size <= 64 * PAGE);
            assert_eq!(p.pages_kept + p.pages_dropped, 64);
        }
    }

    #[test]
    fn prefix_mode_keeps_an_in_order_prefix() {
        let mut t = Tracker::new();
        for i in 0..10 {
            log(
                &mut t,
                NsOp::Create {
                    at: entry(1, &format!("f{i}")),
                    node: 100 + i,
                    dir: false,
                },
            );
        }
        let mut lengths = HashSet::new();
        for seed in 0..60 {
            let p = t.plan_cut(seed, Mode::Prefix, &[]);
            let kept = seqs(&p.kept_ops);
            assert_eq!(kept, (1..=kept.len() as u64).collect::<Vec<_>>());
            let undone = seqs(&p.undone_ops);
            assert_eq!(undone, ((kept.len() as u64 + 1)..=10).rev().collect::<Vec<_>>());
            lengths.insert(kept.len());
        }
        assert!(lengths.len() > 5);
    }

    #[test]
    fn names_only_mode_keeps_every_name_and_drops_every_unsynced_page() {
        let mut t = Tracker::new();
        let s = t.file_mut(1, 2 * PAGE);
        s.touch(PAGE - 10, 5 * PAGE, |_, _, _| Ok(())).unwrap();
        s.size_dirty = true;
        for i in 0..3 {
            log(
                &mut t,
                NsOp::Create {
                    at: entry(1, &format!("x{i}")),
                    node: 9 + i,
                    dir: false,
                },
            );
        }
        let plan = t.plan_cut(7, Mode::NamesOnly, &[facts(1, "/f", 5 * PAGE)]);
        let f = &plan.files[0];
        assert_eq!(f.final_size, 2 * PAGE);
        assert_eq!(f.pages_dropped, 5);
        assert_eq!(f.pages_kept, 0);
        assert_eq!(seqs(&plan.kept_ops), vec![1, 2, 3]);
        assert!(plan.undone_ops.is_empty());
    }

    #[test]
    fn mode_from_seed() {
        assert_eq!(Mode::from_seed(0), Mode::Drop);
        assert_eq!(Mode::from_seed(4), Mode::Torn);
        assert_eq!(Mode::from_seed(5), Mode::Prefix);
        assert_eq!(Mode::parse("b"), Some(Mode::Torn));
        assert_eq!(Mode::parse("prefix"), Some(Mode::Prefix));
        assert_eq!(Mode::parse("d"), Some(Mode::NamesOnly));
        assert_eq!(Mode::parse("x"), None);
    }
}
