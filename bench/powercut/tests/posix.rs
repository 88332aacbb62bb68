//! A program sees ordinary POSIX behaviour through the mount (with no cut involved).

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use common::{Harness, PAGE, names, pages, read};

#[test]
fn ordinary_file_operations_behave() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();

    // Read after write, at odd offsets and across pages.
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(h.p("f"))
        .unwrap();
    let data = pages(3, |i| i as u8 + 7);
    f.write_all(&data).unwrap();
    f.write_all_at(b"hello", PAGE as u64 - 2).unwrap();
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    let mut want = data.clone();
    want[PAGE - 2..PAGE + 3].copy_from_slice(b"hello");
    assert_eq!(back, want);
    assert_eq!(f.metadata().unwrap().len(), 3 * PAGE as u64);
    assert_eq!(std::fs::metadata(h.p("f")).unwrap().len(), 3 * PAGE as u64);

    // A write past the end leaves a hole of zeros.
    f.write_all_at(b"end", 10 * PAGE as u64).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 10 * PAGE as u64 + 3);
    let mut hole = [1u8; 16];
    f.read_exact_at(&mut hole, 5 * PAGE as u64).unwrap();
    assert_eq!(hole, [0u8; 16]);

    // Truncate down and up.
    f.set_len(PAGE as u64 + 1).unwrap();
    assert_eq!(std::fs::metadata(h.p("f")).unwrap().len(), PAGE as u64 + 1);
    f.set_len(2 * PAGE as u64).unwrap();
    let got = read(&h.p("f")).unwrap();
    assert_eq!(&got[..PAGE + 1], &want[..PAGE + 1]);
    assert!(got[PAGE + 1..].iter().all(|b| *b == 0));
    drop(f);

    // O_APPEND appends, O_TRUNC truncates.
    std::fs::write(h.p("a"), b"one").unwrap();
    OpenOptions::new()
        .append(true)
        .open(h.p("a"))
        .unwrap()
        .write_all(b"two")
        .unwrap();
    assert_eq!(read(&h.p("a")).unwrap(), b"onetwo");
    std::fs::write(h.p("a"), b"3").unwrap();
    assert_eq!(read(&h.p("a")).unwrap(), b"3");

    // Directories and readdir.
    std::fs::create_dir_all(h.p("x/y/z")).unwrap();
    std::fs::write(h.p("x/y/file"), b"").unwrap();
    assert_eq!(names(&h.p("x/y")), ["file", "z"]);
    assert_eq!(names(&h.mnt), ["a", "f", "x"]);
    assert!(std::fs::remove_dir(h.p("x/y")).is_err());
    std::fs::remove_dir(h.p("x/y/z")).unwrap();
    assert_eq!(names(&h.p("x/y")), ["file"]);

    // Rename over an existing file, and of a directory.
    std::fs::write(h.p("new"), b"new").unwrap();
    std::fs::write(h.p("old"), b"old").unwrap();
    std::fs::rename(h.p("new"), h.p("old")).unwrap();
    assert_eq!(read(&h.p("old")).unwrap(), b"new");
    assert!(!h.p("new").exists());
    std::fs::rename(h.p("x/y"), h.p("moved")).unwrap();
    assert_eq!(names(&h.p("moved")), ["file"]);
    assert_eq!(names(&h.p("x")), Vec::<String>::new());
    // Over an empty directory; not over a non-empty one.
    std::fs::create_dir(h.p("emptydir")).unwrap();
    std::fs::rename(h.p("x"), h.p("emptydir")).unwrap();
    assert!(!h.p("x").exists());
    assert!(std::fs::rename(h.p("emptydir"), h.p("moved")).is_err());

    // Unlink of an open file: it stays readable and writable, with no link left.
    let mut open = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(h.p("u"))
        .unwrap();
    open.write_all(b"before").unwrap();
    std::fs::remove_file(h.p("u")).unwrap();
    assert!(!h.p("u").exists());
    open.write_all(b"after").unwrap();
    let mut s = String::new();
    open.seek(SeekFrom::Start(0)).unwrap();
    open.read_to_string(&mut s).unwrap();
    assert_eq!(s, "beforeafter");
    assert_eq!(open.metadata().unwrap().nlink(), 0);
    drop(open);

    // Hard and symbolic links.
    std::fs::hard_link(h.p("old"), h.p("hard")).unwrap();
    assert_eq!(std::fs::metadata(h.p("old")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("old", h.p("sym")).unwrap();
    assert_eq!(std::fs::read_link(h.p("sym")).unwrap().to_str(), Some("old"));
    assert_eq!(read(&h.p("sym")).unwrap(), b"new");
    std::fs::remove_file(h.p("old")).unwrap();
    assert_eq!(std::fs::metadata(h.p("hard")).unwrap().nlink(), 1);
    assert_eq!(read(&h.p("hard")).unwrap(), b"new");

    // Locks (kept by the kernel), fallocate, statfs, permissions.
    let l = File::create(h.p("LOCK")).unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: plain calls on open descriptors.
    unsafe {
        assert_eq!(libc::fcntl(l.as_raw_fd(), libc::F_SETLK, &fl), 0);
        assert_eq!(libc::flock(l.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(libc::fallocate(l.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20), 0);
        assert_eq!(libc::fallocate(l.as_raw_fd(), 0, 0, 8192), 0);
    }
    assert_eq!(l.metadata().unwrap().len(), 8192);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let path = std::ffi::CString::new(h.mnt.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and buffer.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bsize > 0);
    std::fs::set_permissions(h.p("a"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(h.p("a")).unwrap().mode() & 0o777, 0o600);

    // The harness's own directory does not show.
    assert!(!names(&h.mnt).iter().any(|n| n.starts_with(".perch")));
    assert!(!h.p(".perch-powercut").exists());
    assert!(std::fs::create_dir(h.p(".perch-powercut")).is_err());

    // Clean shutdown keeps everything, as is.
    h.shutdown(d);
    assert_eq!(std::fs::read(h.backing.join("hard")).unwrap(), b"new");
    assert!(!h.backing.join(".perch-powercut").exists());
}

#[test]
fn large_sequential_writes_and_reads() {
    require_fuse!();
    let h = Harness::new();
    let d = h.mount();
    let chunk: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut f = File::create(h.p("big")).unwrap();
    for _ in 0..64 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let mut f = File::open(h.p("big")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..64 {
        f.read_exact(&mut buf).unwrap();
        assert!(buf == chunk, "chunk {i}");
    }
    h.shutdown(d);
}
