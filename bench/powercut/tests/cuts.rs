//! The harness can fail a program: each test makes a durability mistake (or none) through a real
//! FUSE mount, cuts the power, mounts again and looks at what is left.

mod common;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use common::{Harness, PAGE, fsync, line, names, pages, read, write};

#[test]
fn a_file_written_without_fsync_is_empty_or_gone_after_a_drop_cut() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    // "named": its name is durable (the directory was fsynced) but not its data.
    write(&h.p("named"), b"", false);
    fsync(&h.mnt);
    write(&h.p("named"), b"not synced", false);
    // "unnamed": neither its data nor its name.
    write(&h.p("unnamed"), b"not synced either", false);
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert_eq!(line(&lines, "mode"), "mode a drop");
    assert_eq!(read(&h.p("named")).as_deref(), Some(&b""[..]), "{lines:?}");
    assert_eq!(read(&h.p("unnamed")), None, "{lines:?}");
    h.shutdown(d);
}

#[test]
fn an_fsynced_file_in_an_unsynced_directory_loses_its_name() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    write(&h.p("f"), b"data", true);
    let (d, lines) = h.cut_and_remount(d, 3, None);
    assert_eq!(read(&h.p("f")), None, "{lines:?}");
    assert!(lines.iter().any(|l| l == "undone 1 create /f"), "{lines:?}");
    h.shutdown(d);
}

#[test]
fn fsync_of_file_and_directory_survives_every_mode() {
    require_fuse!();
    for seed in 0..9u64 {
        let h = Harness::new();
        let d = h.mount();
        std::fs::create_dir(h.p("dir")).unwrap();
        fsync(&h.mnt);
        let data = pages(5, |i| i as u8 + 1);
        write(&h.p("dir/f"), &data[..5 * PAGE - 7], true);
        fsync(&h.p("dir"));
        // Unsynced noise around it.
        write(&h.p("dir/g"), b"noise", false);
        OpenOptions::new()
            .append(true)
            .open(h.p("dir/f"))
            .unwrap()
            .write_all(b"tail")
            .unwrap();
        let (d, lines) = h.cut_and_remount(d, seed, None);
        let got = read(&h.p("dir/f")).expect("dir/f survives");
        assert_eq!(&got[..5 * PAGE - 7], &data[..5 * PAGE - 7], "seed {seed}: {lines:?}");
        assert!(got.len() <= 5 * PAGE - 3, "seed {seed}");
        h.shutdown(d);
    }
}

#[test]
fn a_rename_without_a_directory_fsync_is_undone() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    write(&h.p("CURRENT"), b"old", true);
    write(&h.p("CURRENT.tmp"), b"new", true);
    fsync(&h.mnt);
    std::fs::rename(h.p("CURRENT.tmp"), h.p("CURRENT")).unwrap();
    assert_eq!(read(&h.p("CURRENT")).as_deref(), Some(&b"new"[..]));
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert_eq!(read(&h.p("CURRENT")).as_deref(), Some(&b"old"[..]), "{lines:?}");
    assert_eq!(read(&h.p("CURRENT.tmp")).as_deref(), Some(&b"new"[..]), "{lines:?}");
    // The same with the directory fsynced: the rename holds.
    std::fs::rename(h.p("CURRENT.tmp"), h.p("CURRENT")).unwrap();
    fsync(&h.mnt);
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert_eq!(read(&h.p("CURRENT")).as_deref(), Some(&b"new"[..]), "{lines:?}");
    assert_eq!(names(&h.mnt), ["CURRENT"]);
    h.shutdown(d);
}

#[test]
fn a_rename_is_durable_with_either_directory_and_takes_its_create_along() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    std::fs::create_dir(h.p("tmp")).unwrap();
    std::fs::create_dir(h.p("out")).unwrap();
    fsync(&h.mnt);
    // Created in tmp (never fsynced), moved to out, out fsynced: the create comes along.
    write(&h.p("tmp/a"), b"A", true);
    std::fs::rename(h.p("tmp/a"), h.p("out/a")).unwrap();
    fsync(&h.p("out"));
    // Created and made durable in tmp, moved to out, only tmp fsynced: the rename is durable.
    write(&h.p("tmp/b"), b"B", true);
    fsync(&h.p("tmp"));
    std::fs::rename(h.p("tmp/b"), h.p("out/b")).unwrap();
    fsync(&h.p("tmp"));
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert_eq!(names(&h.p("out")), ["a", "b"], "{lines:?}");
    assert!(names(&h.p("tmp")).is_empty(), "{lines:?}");
    assert_eq!(read(&h.p("out/a")).as_deref(), Some(&b"A"[..]));
    h.shutdown(d);
}

#[test]
fn an_unlink_without_a_directory_fsync_comes_back() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    std::fs::create_dir(h.p("d")).unwrap();
    fsync(&h.mnt);
    write(&h.p("d/keep"), b"still here", true);
    write(&h.p("d/gone"), b"really gone", true);
    fsync(&h.p("d"));
    std::fs::remove_file(h.p("d/keep")).unwrap();
    std::fs::remove_file(h.p("d/gone")).unwrap();
    assert!(names(&h.p("d")).is_empty());
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert_eq!(names(&h.p("d")), ["gone", "keep"], "{lines:?}");
    assert_eq!(read(&h.p("d/keep")).as_deref(), Some(&b"still here"[..]));
    // Now one unlink made durable, one not.
    std::fs::remove_file(h.p("d/gone")).unwrap();
    fsync(&h.p("d"));
    std::fs::remove_file(h.p("d/keep")).unwrap();
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert_eq!(names(&h.p("d")), ["keep"], "{lines:?}");
    h.shutdown(d);
}

#[test]
fn an_rmdir_comes_back_with_the_entries_removed_inside_it_unless_fsynced() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    std::fs::create_dir_all(h.p("a/b")).unwrap();
    fsync(&h.mnt);
    fsync(&h.p("a"));
    write(&h.p("a/b/f"), b"f", true);
    fsync(&h.p("a/b"));
    std::fs::remove_file(h.p("a/b/f")).unwrap();
    std::fs::remove_dir(h.p("a/b")).unwrap();
    // fsync of a makes the rmdir durable, and with it the unlink inside b.
    fsync(&h.p("a"));
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert!(names(&h.p("a")).is_empty(), "{lines:?}");
    h.shutdown(d);
}

/// Writes the torn-mode scenario: 32 durable pages of 'A', then unsynced: all overwritten with
/// 'B' and 8 more pages of 'C'.
fn torn_scenario(seed: u64) -> (Vec<u8>, Vec<String>) {
    let h = Harness::new();
    let d = h.mount();
    write(&h.p("f"), &pages(32, |_| b'A'), true);
    fsync(&h.mnt);
    let f = OpenOptions::new().write(true).open(h.p("f")).unwrap();
    f.write_all_at(&pages(32, |_| b'B'), 0).unwrap();
    f.write_all_at(&pages(8, |_| b'C'), 32 * PAGE as u64).unwrap();
    drop(f);
    let (d, lines) = h.cut_and_remount(d, seed, None);
    let got = read(&h.p("f")).expect("f survives");
    h.shutdown(d);
    (got, lines)
}

#[test]
fn a_torn_cut_keeps_a_subset_of_pages_deterministically() {
    require_fuse!();
    let mut mixed = 0;
    let mut sizes = BTreeSet::new();
    for seed in [1u64, 4, 7, 10, 13, 16] {
        let (got, lines) = torn_scenario(seed);
        assert_eq!(line(&lines, "mode"), "mode b torn");
        assert!(
            got.len() >= 32 * PAGE && got.len() <= 40 * PAGE,
            "seed {seed}: {}",
            got.len()
        );
        sizes.insert(got.len());
        let mut kinds = BTreeSet::new();
        for (i, page) in got.chunks(PAGE).enumerate() {
            let first = page[0];
            assert!(page.iter().all(|b| *b == first), "seed {seed}: page {i} is not whole");
            let ok = if i < 32 {
                first == b'A' || first == b'B'
            } else {
                first == b'C' || first == 0
            };
            assert!(ok, "seed {seed}: page {i} holds {first}");
            kinds.insert(first);
        }
        if kinds.contains(&b'A') && kinds.contains(&b'B') {
            mixed += 1;
        }
        // The same seed on the same recorded state gives the same image.
        let (again, lines_again) = torn_scenario(seed);
        assert_eq!(got, again, "seed {seed} does not replay");
        assert_eq!(lines, lines_again);
    }
    assert!(mixed > 0, "no seed kept a strict subset of pages");
    assert!(sizes.len() > 1, "every seed gave the same size: {sizes:?}");
}

#[test]
fn a_prefix_cut_keeps_an_in_order_prefix_of_namespace_operations() {
    require_fuse!();
    // create a, create b, rename a -> c, unlink b, create d: the images of each prefix.
    let prefixes: [&[&str]; 6] = [&[], &["a"], &["a", "b"], &["b", "c"], &["c"], &["c", "d"]];
    let mut seen = BTreeSet::new();
    for seed in (2..60u64).step_by(3) {
        let h = Harness::new();
        let d = h.mount();
        write(&h.p("a"), b"a", true);
        write(&h.p("b"), b"b", true);
        std::fs::rename(h.p("a"), h.p("c")).unwrap();
        std::fs::remove_file(h.p("b")).unwrap();
        write(&h.p("d"), b"d", true);
        let (d, lines) = h.cut_and_remount(d, seed, None);
        assert_eq!(line(&lines, "mode"), "mode c prefix");
        let kept = lines.iter().filter(|l| l.starts_with("kept ")).count();
        let got = names(&h.mnt);
        assert_eq!(got, prefixes[kept], "seed {seed}: {lines:?}");
        seen.insert(kept);
        h.shutdown(d);
        if seen.len() == prefixes.len() {
            break;
        }
    }
    assert!(seen.len() >= 4, "too few distinct prefixes: {seen:?}");
}

#[test]
fn a_rocksdb_like_sequence_keeps_what_it_synced() {
    require_fuse!();
    for seed in 0..6u64 {
        let h = Harness::new();
        let d = h.mount();
        std::fs::create_dir(h.p("db")).unwrap();
        fsync(&h.mnt);
        // A log with two synced records, and a third written after the last fdatasync.
        let log = File::create(h.p("db/000003.log")).unwrap();
        // SAFETY: plain call on an open descriptor.
        assert_eq!(
            unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&log),
                    libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    1 << 20,
                )
            },
            0
        );
        (&log).write_all(b"record-1;").unwrap();
        log.sync_data().unwrap();
        fsync(&h.p("db"));
        (&log).write_all(b"record-2;").unwrap();
        log.sync_data().unwrap();
        (&log).write_all(b"record-3;").unwrap();
        drop(log);
        // CURRENT through a temporary file, renamed over the old one, directory fsynced.
        write(&h.p("db/CURRENT"), b"MANIFEST-000001\n", true);
        fsync(&h.p("db"));
        write(&h.p("db/000004.dbtmp"), b"MANIFEST-000005\n", true);
        std::fs::rename(h.p("db/000004.dbtmp"), h.p("db/CURRENT")).unwrap();
        fsync(&h.p("db"));
        // Work in flight at the cut: a new log, not yet synced anywhere.
        write(&h.p("db/000006.log"), b"record-4;", false);
        let (d, lines) = h.cut_and_remount(d, seed, None);
        let log = read(&h.p("db/000003.log")).expect("the log survives");
        assert!(log.starts_with(b"record-1;record-2;"), "seed {seed}: {lines:?}");
        assert!(log.len() <= 27, "seed {seed}");
        assert_eq!(
            read(&h.p("db/CURRENT")).as_deref(),
            Some(&b"MANIFEST-000005\n"[..]),
            "seed {seed}"
        );
        assert_eq!(read(&h.p("db/000004.dbtmp")), None);
        if seed % 3 == 0 {
            assert_eq!(read(&h.p("db/000006.log")), None, "{lines:?}");
        }
        h.shutdown(d);
    }
}

#[test]
fn a_process_killed_while_writing_loses_what_it_did_not_sync() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    write(&h.p("log"), b"synced\n", true);
    fsync(&h.mnt);
    let mut writer = Command::new("sh")
        .arg("-c")
        .arg("while :; do echo unsynced >> log; done")
        .current_dir(&h.mnt)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    writer.kill().unwrap();
    writer.wait().unwrap();
    let status = h.status();
    assert!(
        status.iter().any(|l| l.starts_with("file /log synced 7 size ")),
        "{status:?}"
    );
    let (d, _) = h.cut_and_remount(d, 0, None);
    assert_eq!(read(&h.p("log")).as_deref(), Some(&b"synced\n"[..]));
    h.shutdown(d);
}

#[test]
fn truncate_and_fallocate_are_rolled_back() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    let data = pages(3, |i| b'a' + i as u8);
    write(&h.p("t"), &data, true);
    write(&h.p("z"), &data, true);
    write(&h.p("grow"), b"x", true);
    fsync(&h.mnt);
    OpenOptions::new()
        .write(true)
        .open(h.p("t"))
        .unwrap()
        .set_len(100)
        .unwrap();
    let z = OpenOptions::new().write(true).open(h.p("z")).unwrap();
    // SAFETY: plain calls on an open descriptor.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&z);
        assert_eq!(
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                PAGE as i64
            ),
            0
        );
    }
    drop(z);
    let g = OpenOptions::new().write(true).open(h.p("grow")).unwrap();
    // SAFETY: plain call on an open descriptor.
    assert_eq!(
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&g), 0, 0, 1 << 20) },
        0
    );
    drop(g);
    assert_eq!(std::fs::metadata(h.p("grow")).unwrap().len(), 1 << 20);
    assert_eq!(read(&h.p("z")).unwrap()[..PAGE], [0u8; PAGE]);
    let (d, lines) = h.cut_and_remount(d, 0, None);
    assert_eq!(read(&h.p("t")).unwrap(), data, "{lines:?}");
    assert_eq!(read(&h.p("z")).unwrap(), data, "{lines:?}");
    assert_eq!(read(&h.p("grow")).unwrap(), b"x");
    h.shutdown(d);
}
