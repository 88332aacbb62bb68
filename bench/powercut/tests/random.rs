//! Random mixes of every operation the harness models, checked against what the model promises:
//! after a full sync then unsynced work, a mode-a cut gives back exactly the synced image, and a
//! mode-c cut the names of an in-order prefix of the work. Deterministic: the workload comes from
//! the test's own seeds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{Harness, PAGE, fsync};
use perch_powercut::rng::SplitMix64;

/// The tree as the program sees it: directories and files (path → content).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Image {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, Vec<u8>>,
}

impl Image {
    fn names(&self) -> BTreeSet<String> {
        self.dirs.iter().chain(self.files.keys()).cloned().collect()
    }
}

/// Reads the whole tree under `root`.
fn scan(root: &Path) -> Image {
    let mut img = Image::default();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let p = if rel.is_empty() {
                e.file_name().to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", e.file_name().to_string_lossy())
            };
            if e.file_type().unwrap().is_dir() {
                img.dirs.insert(p.clone());
                stack.push(p);
            } else {
                img.files.insert(p.clone(), std::fs::read(root.join(&p)).unwrap());
            }
        }
    }
    img
}

/// Fsyncs every file, then every directory from the deepest up: everything is durable.
fn full_sync(h: &Harness) {
    let img = scan(&h.mnt);
    for f in img.files.keys() {
        fsync(&h.p(f));
    }
    let mut dirs: Vec<&String> = img.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        fsync(&h.p(d));
    }
    fsync(&h.mnt);
    let status = h.status();
    assert_eq!(
        status.last().map(String::as_str),
        Some("files 0 dirty_pages 0 ops 0"),
        "{status:?}"
    );
}

fn pick<'a>(g: &mut SplitMix64, v: &'a [String]) -> Option<&'a String> {
    if v.is_empty() {
        None
    } else {
        Some(&v[g.below(v.len() as u64) as usize])
    }
}

fn data(g: &mut SplitMix64) -> Vec<u8> {
    let len = g.below(3 * PAGE as u64 + 100) as usize;
    let byte = (g.below(250) + 1) as u8;
    vec![byte; len]
}

/// Does `n` random operations in the mount, without any fsync. Returns the names after each
/// namespace operation (the first entry is before any).
fn work(h: &Harness, g: &mut SplitMix64, n: usize) -> Vec<BTreeSet<String>> {
    let mut states = vec![scan(&h.mnt).names()];
    for _ in 0..n {
        let img = scan(&h.mnt);
        let files: Vec<String> = img.files.keys().cloned().collect();
        let mut dirs: Vec<String> = img.dirs.iter().cloned().collect();
        dirs.push(String::new());
        let join = |d: &str, name: String| if d.is_empty() { name } else { format!("{d}/{name}") };
        let fresh = |g: &mut SplitMix64, dirs: &[String]| {
            let d = pick(g, dirs).unwrap().clone();
            join(&d, format!("n{}", g.below(6)))
        };
        let changed_names = match g.below(10) {
            // Create a file.
            0 | 1 => {
                let p = fresh(g, &dirs);
                if img.names().contains(&p) {
                    continue;
                }
                std::fs::write(h.p(&p), data(g)).unwrap();
                true
            }
            // Write into a file, maybe past its end.
            2 | 3 => {
                let Some(f) = pick(g, &files) else { continue };
                let off = g.below(4 * PAGE as u64);
                OpenOptions::new()
                    .write(true)
                    .open(h.p(f))
                    .unwrap()
                    .write_all_at(&data(g), off)
                    .unwrap();
                false
            }
            // Truncate.
            4 => {
                let Some(f) = pick(g, &files) else { continue };
                let len = g.below(5 * PAGE as u64);
                OpenOptions::new()
                    .write(true)
                    .open(h.p(f))
                    .unwrap()
                    .set_len(len)
                    .unwrap();
                false
            }
            5 => {
                let Some(f) = pick(g, &files) else { continue };
                std::fs::remove_file(h.p(f)).unwrap();
                true
            }
            // Rename a file, maybe over another.
            6 => {
                let Some(f) = pick(g, &files).cloned() else { continue };
                let to = fresh(g, &dirs);
                if to == f || img.dirs.contains(&to) {
                    continue;
                }
                let same_inode = img.files.contains_key(&to)
                    && std::fs::metadata(h.p(&to))
                        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                        .ok()
                        == std::fs::metadata(h.p(&f))
                            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                            .ok();
                std::fs::rename(h.p(&f), h.p(&to)).unwrap();
                // rename(2) between two names of one file does nothing.
                !same_inode
            }
            7 => {
                let Some(f) = pick(g, &files).cloned() else { continue };
                let to = fresh(g, &dirs);
                if img.names().contains(&to) {
                    continue;
                }
                std::fs::hard_link(h.p(&f), h.p(&to)).unwrap();
                true
            }
            8 => {
                let p = fresh(g, &dirs);
                if img.names().contains(&p) || p.matches('/').count() >= 2 {
                    continue;
                }
                if g.below(2) == 0 {
                    std::fs::create_dir(h.p(&p)).unwrap();
                } else {
                    // Move a directory somewhere else (not into itself).
                    let Some(d) = pick(g, &dirs[..dirs.len() - 1]).cloned() else {
                        continue;
                    };
                    if p.starts_with(&format!("{d}/")) {
                        continue;
                    }
                    std::fs::rename(h.p(&d), h.p(&p)).unwrap();
                }
                true
            }
            _ => {
                let Some(d) = pick(g, &dirs[..dirs.len() - 1]).cloned() else {
                    continue;
                };
                if std::fs::read_dir(h.p(&d)).unwrap().next().is_some() {
                    continue;
                }
                std::fs::remove_dir(h.p(&d)).unwrap();
                true
            }
        };
        if changed_names {
            states.push(scan(&h.mnt).names());
        }
    }
    states
}

#[test]
fn a_drop_cut_gives_back_exactly_the_synced_image() {
    require_fuse!();
    for case in 0..12u64 {
        let mut g = SplitMix64::new(1000 + case);
        let h = Harness::new();
        let d = h.mount();
        work(&h, &mut g, 30);
        full_sync(&h);
        let synced = scan(&h.mnt);
        work(&h, &mut g, 40);
        let (d, lines) = h.cut_and_remount(d, case * 3, None);
        let after = scan(&h.mnt);
        assert_eq!(after, synced, "case {case}:\n{}", lines.join("\n"));
        h.shutdown(d);
    }
}

#[test]
fn a_prefix_cut_leaves_the_names_of_a_prefix_of_the_work() {
    require_fuse!();
    for case in 0..12u64 {
        let mut g = SplitMix64::new(2000 + case);
        let h = Harness::new();
        let d = h.mount();
        work(&h, &mut g, 30);
        full_sync(&h);
        let synced = scan(&h.mnt);
        let states = work(&h, &mut g, 40);
        let (d, lines) = h.cut_and_remount(d, case * 3 + 2, None);
        let kept = lines.iter().filter(|l| l.starts_with("kept ")).count();
        let after = scan(&h.mnt);
        assert_eq!(
            after.names(),
            states[kept],
            "case {case}: kept {kept}:\n{}",
            lines.join("\n")
        );
        // Files untouched since the sync are intact.
        for (p, content) in &after.files {
            if synced.files.get(p) == Some(content) {
                continue;
            }
            assert!(content.len() <= 8 * PAGE, "case {case}: {p} grew beyond any write");
        }
        h.shutdown(d);
    }
}

#[test]
fn random_work_with_random_fsyncs_always_cuts_cleanly() {
    require_fuse!();
    for case in 0..12u64 {
        let mut g = SplitMix64::new(3000 + case);
        let h = Harness::new();
        let d = h.mount();
        for _ in 0..6 {
            work(&h, &mut g, 8);
            let img = scan(&h.mnt);
            let mut paths: Vec<String> = img.names().into_iter().collect();
            paths.push(String::new());
            for _ in 0..3 {
                let p = pick(&mut g, &paths).unwrap();
                fsync(&if p.is_empty() { h.mnt.clone() } else { h.p(p) });
            }
        }
        // `cut` fails the test itself if any undo step goes wrong.
        let (d, _) = h.cut_and_remount(d, case, None);
        scan(&h.mnt);
        h.shutdown(d);
    }
}
