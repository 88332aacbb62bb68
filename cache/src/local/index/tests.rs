//! The index's tests: scans, reopen, and a full disk that stops RocksDB until room returns.

use super::*;
use crate::origin::{Checksums, ContentHeaders};

fn entry(blob: u64, size: u64, validated: SystemTime) -> Entry {
    Entry {
        blob,
        meta: ObjectMeta {
            size,
            etag: "\"0123456789abcdef0123456789abcdef\"".into(),
            last_modified: validated,
            headers: ContentHeaders {
                content_type: Some("binary/octet-stream".into()),
                ..Default::default()
            },
            checksums: Checksums::default(),
        },
        crcs: vec![1, 2],
        validated,
        pending: false,
        origin_etag: None,
        deleted: false,
        parts: Vec::new(),
    }
}

/// `false` with `reason` printed: the test is skipped, unless `PERCH_PRIVILEGED_TESTS=required`
/// (CI), where it fails.
fn skip(reason: &str) -> bool {
    if std::env::var("PERCH_PRIVILEGED_TESTS").as_deref() == Ok("required") {
        panic!("PERCH_PRIVILEGED_TESTS=required, but this test cannot run here: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

/// A tmpfs of `size` mounted at `dir` for a test (`false`, with a message, where mounting
/// is not permitted); `umount` undoes it.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "perch-index-test"])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => skip(&format!(
            "cannot mount a tmpfs: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => skip(&format!("cannot run mount: {e}")),
    }
}

struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_index_and_it_resumes_by_itself_once_room_returns() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    if !mount_tmpfs(tmp.path(), "32m") {
        return;
    }
    let _mounted = Mounted(tmp.path().to_owned());
    let index = Index::open(&tmp.path().join("index")).unwrap();
    // Someone fills the filesystem.
    let filler = tmp.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![1u8; 64 << 10];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
    }
    // Synced commits of 256 KiB records until the log cannot grow: the error says so.
    let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let record = vec![b'r'; 256 << 10];
    let okey = |seq: u64| ObjectKey::new("b", &format!("k{seq}"));
    let mut seq = 1;
    let refused = loop {
        assert!(seq < 1000, "a full filesystem took {seq} records of 256 KiB");
        match index.commit_version(&okey(seq), seq, &record, &entry(seq, 1, t0), None) {
            Ok(()) => seq += 1,
            Err(e) => break e,
        }
    };
    assert!(refused.is_no_space(), "not recognised as a full disk: {refused}");
    // Room returns: RocksDB resumes by itself (its error handler polls every 5 s), without
    // a reopen, and every write acknowledged before is there.
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match index.commit_version(&okey(seq), seq, &record, &entry(seq, 1, t0), None) {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_no_space(), "{e}");
                if std::time::Instant::now() >= deadline {
                    // RocksDB says why in its log.
                    let log = std::fs::read_to_string(tmp.path().join("index/LOG")).unwrap_or_default();
                    let why: Vec<&str> = log.lines().filter(|l| l.contains("[ERROR]")).collect();
                    panic!(
                        "the index did not resume within 30 s of room returning: {e}\n{}",
                        why.join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    for s in 1..=seq {
        assert_eq!(index.get(&okey(s)).unwrap().map(|e| e.blob), Some(s), "k{s}");
    }
    assert_eq!(index.journal().unwrap().len() as u64, seq);
}

#[test]
fn scan_reads_sizes_and_last_reads_and_survives_a_flush_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let read = UNIX_EPOCH + Duration::from_secs(2_000_000);
    {
        let index = Index::open(dir.path()).unwrap();
        for i in 0..100u64 {
            let id = index.next_blob_id().unwrap();
            index
                .put(&ObjectKey::new("b", &format!("k{i:03}")), &entry(id, 10 + i, t0), None)
                .unwrap();
        }
        // Every other object was read since; access times skip the log, a flush keeps them.
        let reads: Vec<(ObjectKey, SystemTime)> = (0..100)
            .step_by(2)
            .map(|i| (ObjectKey::new("b", &format!("k{i:03}")), read))
            .collect();
        index.record_access(&reads).unwrap();
        index.flush().unwrap();
    }
    let index = Index::open(dir.path()).unwrap();
    let (all, pending_bytes) = index.scan(&|_| false).unwrap();
    assert_eq!(all.len(), 100);
    assert_eq!(pending_bytes, 0);
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.size, 10 + i as u64);
        assert_eq!(s.key_hash, ObjectKey::new("b", &format!("k{i:03}")).hash64());
        assert_eq!(s.last_read, if i % 2 == 0 { read } else { t0 });
    }
    let got = index.get(&ObjectKey::new("b", "k007")).unwrap().unwrap();
    assert_eq!(got, entry(got.blob, 17, t0));
    let mut ids = index.blob_ids().unwrap();
    ids.sort();
    assert_eq!(ids, all.iter().map(|s| s.blob).collect::<Vec<_>>());
    // Ids handed out after a reopen are new.
    assert!(index.next_blob_id().unwrap() > *ids.last().unwrap());
}

/// A commit's synced batch makes the releases written before it durable: the blob removal after
/// it needs no sync of its own (an overwrite of a clean key used to sync the log twice before its
/// answer); a release written after the batch still gets one, and only one.
#[test]
fn a_synced_commit_covers_the_releases_written_before_it_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(dir.path()).unwrap();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (a, b) = (ObjectKey::new("b", "a"), ObjectKey::new("b", "b"));
    let commit = |okey: &ObjectKey| {
        let seq = index.next_blob_id().unwrap();
        let pending = Entry {
            pending: true,
            ..entry(seq, 10, t0)
        };
        index.commit_version(okey, seq, b"{}", &pending, None).unwrap();
        seq
    };
    // The uploader's release of a version that stays as a clean copy: not synced.
    let release = |okey: &ObjectKey, seq: u64| {
        index
            .release_version(seq, okey, &Released::Clean(&entry(seq, 10, t0)), false)
            .unwrap();
        index.note_release();
    };
    let seq_a = commit(&a);
    release(&a, seq_a);
    let seq_b = commit(&b);
    index.sync_releases().unwrap();
    assert_eq!(index.release_syncs(), 0, "the commit of b synced the release of a");
    release(&b, seq_b);
    index.sync_releases().unwrap();
    assert_eq!(
        index.release_syncs(),
        1,
        "the release of b came after every synced write"
    );
    index.sync_releases().unwrap();
    assert_eq!(index.release_syncs(), 1, "nothing was released since the last sync");
}
