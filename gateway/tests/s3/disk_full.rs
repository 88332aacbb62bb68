//! A full disk: perch on a 64 MiB tmpfs the test mounts as its data dir. Writes (copies made
//! locally too) that find no room wait (never a 500, never a partial object), go through once
//! uploads or someone else free room, and past `--dirty-wait-max` are answered 503 SlowDown with
//! nothing left behind; everything acknowledged reaches the origin, without a restart. A read miss
//! evicts clean entries for its copy, or is served from the origin without keeping one.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use perch_testkit::bodies::{md5_etag, pattern};
use perch_testkit::raw_client::{BUCKET, Req, Resp};

use crate::support::machine;
use crate::support::raw::send_without_a_length;
use crate::support::stack::{Stack, assert_same, eventually};

/// A tmpfs of a given size mounted for one test, unmounted when dropped (declare it before the
/// stack, so that perch is stopped first).
struct SmallDisk {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with a message saying why) where mounting is not permitted.
    fn mount(size: &str) -> Option<SmallDisk> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("perch");
        std::fs::create_dir(&dir).expect("mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "perch-disk-full"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir, _tmp: tmp }),
            Ok(o) => {
                perch_testkit::skip_unprivileged(&format!(
                    "cannot mount a tmpfs here (root and CAP_SYS_ADMIN are needed): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
                None
            }
            Err(e) => {
                perch_testkit::skip_unprivileged(&format!("cannot run mount: {e}"));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes still free on it.
    fn free(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).expect("path");
        // SAFETY: statvfs writes only into the struct we pass; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0, "statvfs");
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// Fills what is left of it with a file of its own (as another program would); returns it.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![7u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Perch's flags for these tests: a reserve of 8 MiB, and no backlog limit that would bite before
/// the disk is full.
const FLAGS: [&str; 4] = ["--disk-reserve-bytes", "8MiB", "--dirty-bytes-max", "1GiB"];

/// A PUT sent from a thread of its own: its answer comes on `done`.
struct Sent {
    key: String,
    body: Vec<u8>,
    started: Instant,
    done: mpsc::Receiver<()>,
    thread: JoinHandle<Resp>,
}

fn send_put(s: &Stack, key: &str, body: Vec<u8>) -> Sent {
    let req = s.req("PUT", key).body(body.clone());
    send(s, key, req, body)
}

/// `req` (of `key`, which should end holding `body`) sent from a thread of its own.
fn send(s: &Stack, key: &str, req: Req, body: Vec<u8>) -> Sent {
    let addr = s.addr();
    let (tx, done) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let r = req.go(addr);
        let _ = tx.send(());
        r
    });
    Sent {
        key: key.to_owned(),
        body,
        started: Instant::now(),
        done,
        thread,
    }
}

impl Sent {
    /// The answer, if it comes within `limit`.
    fn answer_within(&self, limit: Duration) -> bool {
        self.done.recv_timeout(limit).is_ok()
    }

    #[track_caller]
    fn answer(self) -> (String, Vec<u8>, Resp) {
        let r = self.thread.join().expect("PUT thread");
        (self.key, self.body, r)
    }
}

/// PUTs bodies of `size` under `prefix` while the origin is out, until one is not answered within
/// 3 s; returns the acknowledged keys and bodies, and the PUT left waiting. Every answer must be
/// 200: a full disk is never an error.
#[track_caller]
fn fill_until_a_put_waits(s: &Stack, prefix: &str, size: usize) -> (Vec<(String, Vec<u8>)>, Sent) {
    let mut acked = Vec::new();
    loop {
        let i = acked.len();
        assert!(
            i * size < 64 << 20,
            "a 64 MiB disk took {i} bodies of {size} bytes: perch never waited"
        );
        let key = format!("{prefix}{i}");
        let put = send_put(s, &key, pattern(size, i as u64 + 1));
        if !put.answer_within(Duration::from_secs(3)) {
            return (acked, put);
        }
        let (key, body, r) = put.answer();
        assert_eq!(r.status, 200, "PUT {key} on a filling disk: {}", r.summary());
        assert_eq!(r.header("ETag"), Some(md5_etag(&body).as_str()), "PUT {key}");
        acked.push((key, body));
    }
}

#[test]
fn a_full_disk_makes_writes_wait_until_uploads_free_room() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let s = Stack::start_on(disk.path(), &FLAGS);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    let (acked, waiting) = fill_until_a_put_waits(&s, "orioledb_data/1/", 4 << 20);
    assert!(
        acked.len() >= 6,
        "only {} bodies of 4 MiB were taken before writes waited (free now: {} bytes)",
        acked.len(),
        disk.free()
    );
    // Small bodies (kept in memory until their commit) still fit in what is left, until one
    // waits too.
    let (small_acked, small) = fill_until_a_put_waits(&s, "orioledb_data/1/small/", 256 << 10);
    // The origin comes back: uploads make the pending blobs clean, clean entries are evicted for
    // the waiting writes.
    s.no_faults();
    let waited = waiting.started.elapsed();
    let (key, body, r) = waiting.answer();
    assert_eq!(r.status, 200, "PUT {key} after waiting {waited:?}: {}", r.summary());
    assert_eq!(r.header("ETag"), Some(md5_etag(&body).as_str()));
    let (small_key, small_body, r) = small.answer();
    assert_eq!(r.status, 200, "PUT {small_key}: {}", r.summary());
    // Read back. Either copy may already have been evicted again: until the reserve is restored,
    // the keeper of the reserve evicts every entry that becomes clean, and these two are uploaded
    // among the others. Which tier answers is not the point here; the bytes are.
    for (k, b) in [(&key, &body), (&small_key, &small_body)] {
        let r = s.get(k);
        assert_eq!(r.status, 200, "GET {k}: {}", r.summary());
        assert!(
            matches!(r.header("X-Cache"), Some("HIT" | "MISS")),
            "X-Cache of GET {k}: {}",
            r.summary()
        );
        assert_same(&r.body, b, &format!("GET {k}"));
    }
    // Without a restart, everything acknowledged is in the origin.
    s.flush(Duration::from_secs(120));
    let last = [(key, body), (small_key, small_body)];
    for (k, b) in acked.iter().chain(&small_acked).chain(&last) {
        assert_eq!(s.in_moto(k).as_deref(), Some(b.as_slice()), "{k} in the origin");
    }
    assert!(
        s.counter("perch_cache_evictions_total") >= 1.0,
        "nothing was evicted to make room"
    );
}

#[test]
fn a_write_that_finds_no_room_within_dirty_wait_max_is_503_and_leaves_nothing() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let mut flags = FLAGS.to_vec();
    flags.extend(["--dirty-wait-max", "4s"]);
    let s = Stack::start_on(disk.path(), &flags);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    let (acked, refused) = fill_until_a_put_waits(&s, "orioledb_data/2/", 4 << 20);
    let (key, _, r) = refused.answer();
    assert_eq!(r.status, 503, "PUT {key} past --dirty-wait-max: {}", r.summary());
    assert_eq!(r.code().as_deref(), Some("SlowDown"), "{}", r.summary());
    // Nothing of it: no pending version, no blob, no spooled body.
    assert!(s.tmp_files().is_empty(), "temp files left: {:?}", s.tmp_files());
    assert_eq!(s.status()["dirty_objects"], acked.len(), "{}", s.status());
    let spooled: Vec<_> = std::fs::read_dir(disk.path().join("tmp"))
        .expect("spool dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(spooled.is_empty(), "spooled bodies left: {spooled:?}");
    s.no_faults();
    s.flush(Duration::from_secs(120));
    for (k, b) in &acked {
        assert_eq!(s.in_moto(k).as_deref(), Some(b.as_slice()), "{k} in the origin");
    }
    assert_eq!(s.in_moto(&key), None, "a refused write reached the origin");
    let r = s.get(&key);
    assert_eq!(r.status, 404, "GET {key} after its PUT was refused: {}", r.summary());
    // Room again: the same write goes through.
    let body = pattern(4 << 20, 1234);
    s.put(&key, &body);
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto(&key).as_deref(), Some(body.as_slice()));
}

/// A write larger than the volume could ever hold beside its reserve (100 MiB declared on a 64 MiB
/// volume) is refused at once with 400 EntityTooLarge, before its body is asked for: no upload or
/// eviction would make room for it, and it used to wait `--dirty-wait-max` (30 minutes by
/// default) for room, then 503. Nothing is kept; a write that fits still goes.
#[test]
fn a_write_larger_than_the_volume_is_refused_at_once() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let s = Stack::start_on(disk.path(), &FLAGS);
    let _log = s.log_on_panic();
    let mut put = s.req("PUT", "larger-than-the-volume").body(pattern(10, 1));
    put.expect = Some(true);
    put.content_length = Some(100 << 20);
    let sent = send(&s, "larger-than-the-volume", put, Vec::new());
    assert!(
        sent.answer_within(Duration::from_secs(10)),
        "a PUT larger than the volume waits for room that cannot come"
    );
    let (key, _, r) = sent.answer();
    assert_eq!(r.status, 400, "PUT {key}: {}", r.summary());
    assert_eq!(r.code().as_deref(), Some("EntityTooLarge"), "{}", r.summary());
    assert!(!r.got_continue, "asked for the body of a PUT it refuses");
    assert!(s.tmp_files().is_empty(), "temp files left: {:?}", s.tmp_files());
    assert_eq!(s.get(&key).status, 404);
    let body = pattern(4 << 20, 2);
    s.put("fits", &body);
    s.get_expect("fits", &body, "HIT");
}

/// A PUT of `key` with `body` framed by `Transfer-Encoding: chunked` and no `Content-Length`,
/// signed `UNSIGNED-PAYLOAD`.
fn put_without_a_length(s: &Stack, key: &str, body: &[u8]) -> Resp {
    let mut req = s.req("PUT", key);
    req.content_sha256 = Some("UNSIGNED-PAYLOAD".to_owned());
    send_without_a_length(s.addr(), req, body)
}

/// A body of no declared length (`Transfer-Encoding: chunked`, no `Content-Length`) is held whole
/// before s3s checks it; its room on the volume is taken as it grows, as any body's is: on a disk
/// without room for it, it waits and, past `--dirty-wait-max`, is answered 503 SlowDown, with the
/// disk's reserve left alone and nothing kept. (It was written until the disk was full, then
/// answered 500 InternalError.) Once there is room, the same kind of PUT goes through.
#[test]
fn a_chunked_body_of_no_declared_length_waits_for_room_and_is_never_a_500() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let mut flags = FLAGS.to_vec();
    flags.extend(["--dirty-wait-max", "3s"]);
    let s = Stack::start_on(disk.path(), &flags);
    let _log = s.log_on_panic();
    // Another program's file leaves about 24 MiB free: 16 MiB beside the 8 MiB reserve.
    let filler = disk.path().join("filler");
    let take = disk.free().saturating_sub(24 << 20);
    std::fs::write(&filler, vec![7u8; take as usize]).expect("filler");
    let body = pattern(40 << 20, 31);
    let r = put_without_a_length(&s, "chunked-big", &body);
    assert_eq!(r.status, 503, "a chunked PUT with no room for it: {}", r.summary());
    assert_eq!(r.code().as_deref(), Some("SlowDown"), "{}", r.summary());
    let held: Vec<_> = std::fs::read_dir(disk.path().join("tmp"))
        .expect("spool dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(held.is_empty(), "held bodies left: {held:?}");
    assert!(s.tmp_files().is_empty(), "temp files left: {:?}", s.tmp_files());
    assert_eq!(s.get("chunked-big").status, 404);
    // Room again: a chunked body that fits (held, then spooled: twice its size) goes through.
    std::fs::remove_file(&filler).expect("filler");
    let body = pattern(16 << 20, 32);
    let r = put_without_a_length(&s, "chunked-fits", &body);
    assert_eq!(r.status, 200, "a chunked PUT with room for it: {}", r.summary());
    assert_eq!(r.header("ETag"), Some(md5_etag(&body).as_str()));
    s.get_expect("chunked-fits", &body, "HIT");
}

#[test]
fn room_freed_by_someone_else_lets_waiting_writes_through() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let s = Stack::start_on(disk.path(), &FLAGS);
    let _log = s.log_on_panic();
    s.put("orioledb_data/3/before", &pattern(2 << 20, 1));
    s.flush(Duration::from_secs(60));
    let filler = disk.fill();
    // A spooled body and one kept in memory, a delete and an overwrite: all wait or succeed,
    // none fails.
    let large = send_put(&s, "orioledb_data/3/large", pattern(3 << 20, 2));
    let small = send_put(&s, "orioledb_data/3/small", pattern(200 << 10, 3));
    assert!(
        !large.answer_within(Duration::from_secs(3)),
        "the large write did not wait"
    );
    assert!(
        !small.answer_within(Duration::from_secs(1)),
        "the small write did not wait"
    );
    std::fs::remove_file(&filler).expect("free the disk");
    for put in [large, small] {
        let (key, body, r) = put.answer();
        assert_eq!(r.status, 200, "PUT {key} once the disk has room: {}", r.summary());
        s.get_expect(&key, &body, "HIT");
    }
    // The index takes writes again (RocksDB resumed if the full disk stopped it).
    let r = s.req("DELETE", "orioledb_data/3/before").go(s.addr());
    assert_eq!(r.status, 204, "DELETE: {}", r.summary());
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("orioledb_data/3/before"), None);
    assert_eq!(
        s.in_moto("orioledb_data/3/large").as_deref(),
        Some(pattern(3 << 20, 2).as_slice())
    );
    assert_eq!(
        s.in_moto("orioledb_data/3/small").as_deref(),
        Some(pattern(200 << 10, 3).as_slice())
    );
}

/// A CopyObject of `src` (a version not uploaded yet, so it is made locally) to `dst`.
fn send_copy(s: &Stack, dst: &str, src: &str, body: Vec<u8>) -> Sent {
    let req = s
        .req("PUT", dst)
        .header("x-amz-copy-source", &format!("/{BUCKET}/{src}"));
    send(s, dst, req, body)
}

#[test]
fn a_copy_made_locally_waits_for_room_like_a_put_and_past_dirty_wait_max_is_503() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let mut flags = FLAGS.to_vec();
    flags.extend(["--dirty-wait-max", "6s"]);
    let s = Stack::start_on(disk.path(), &flags);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    // Larger than what a copy keeps in memory: its body goes to a file of the data dir.
    let body = pattern(3 << 20, 41);
    s.put("orioledb_data/5/src", &body);
    let filler = disk.fill();
    let copy = send_copy(&s, "orioledb_data/5/dst", "orioledb_data/5/src", body.clone());
    assert!(
        !copy.answer_within(Duration::from_secs(2)),
        "a copy on a full disk did not wait for room"
    );
    let (dst, _, r) = copy.answer();
    assert_eq!(r.status, 503, "copy to {dst} past --dirty-wait-max: {}", r.summary());
    assert_eq!(r.code().as_deref(), Some("SlowDown"), "{}", r.summary());
    assert!(s.tmp_files().is_empty(), "temp files left: {:?}", s.tmp_files());
    assert_eq!(s.status()["dirty_objects"], 1, "{}", s.status());
    // Room comes back while the next copy waits: it goes through, whole.
    let copy = send_copy(&s, "orioledb_data/5/dst", "orioledb_data/5/src", body.clone());
    assert!(
        !copy.answer_within(Duration::from_secs(2)),
        "a copy on a full disk did not wait for room"
    );
    std::fs::remove_file(&filler).expect("free the disk");
    let (dst, body, r) = copy.answer();
    assert_eq!(r.status, 200, "copy to {dst} once the disk has room: {}", r.summary());
    let etag = md5_etag(&body);
    assert!(
        String::from_utf8_lossy(&r.body).contains(&etag.replace('"', "&quot;"))
            || String::from_utf8_lossy(&r.body).contains(&etag),
        "copy result without the source's ETag {etag}: {}",
        String::from_utf8_lossy(&r.body)
    );
    s.get_expect(&dst, &body, "HIT");
    s.no_faults();
    s.flush(Duration::from_secs(120));
    assert_eq!(s.in_moto(&dst).as_deref(), Some(body.as_slice()), "{dst} in the origin");
}

#[test]
fn a_read_miss_with_no_room_for_a_copy_is_served_from_the_origin_without_keeping_one() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let s = Stack::start_on(disk.path(), &FLAGS);
    let _log = s.log_on_panic();
    let key = "tables/6/big";
    let body = pattern(4 << 20, 51);
    s.put_behind_perchs_back(key, &body);
    // Nothing clean to evict: no room can be made.
    let filler = disk.fill();
    for _ in 0..2 {
        let r = s.get(key);
        assert_eq!(r.status, 200, "GET {key} on a full disk: {}", r.summary());
        assert_same(&r.body, &body, &format!("GET {key} on a full disk"));
        assert_eq!(r.header("X-Cache"), Some("BYPASS"), "{}", r.summary());
        assert!(s.tmp_files().is_empty(), "temp files left: {:?}", s.tmp_files());
    }
    std::fs::remove_file(&filler).expect("free the disk");
    s.get_expect(key, &body, "MISS");
    s.get_expect(key, &body, "HIT");
}

#[test]
fn a_read_miss_on_a_full_disk_evicts_clean_entries_to_keep_its_copy() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let s = Stack::start_on(disk.path(), &FLAGS);
    let _log = s.log_on_panic();
    for i in 0..6 {
        s.put(&format!("tables/7/{i}"), &pattern(4 << 20, i));
    }
    s.flush(Duration::from_secs(60));
    let _filler = disk.fill();
    // Larger than the reserve the keeper of the reserve gives back: the fill's room must come
    // from evicting more clean entries.
    let key = "tables/7/big";
    let body = pattern(12 << 20, 77);
    s.put_behind_perchs_back(key, &body);
    s.get_expect(key, &body, "MISS");
    s.get_expect(key, &body, "HIT");
    assert!(s.tmp_files().is_empty(), "temp files left: {:?}", s.tmp_files());
    assert!(
        s.counter("perch_cache_evictions_total") >= 1.0,
        "nothing was evicted to make room"
    );
}

/// Perch killed with writes pending, and the disk then filled to its last block by another
/// program: the restart gives back the spare's room (half the reserve, held in a file of its own)
/// so the index can open, serves and uploads the pending writes, and takes the spare again once
/// there is room. Without the spare, the index could not open and Perch would not start until the
/// volume grew.
#[test]
fn a_restart_on_a_disk_filled_to_the_last_block_starts_on_the_spare() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let mut s = Stack::start_on(disk.path(), &FLAGS);
    let _log = s.log_on_panic();
    let spare = disk.path().join("cache").join("spare");
    let held = || std::fs::metadata(&spare).is_ok_and(|m| m.len() == 4 << 20);
    eventually("the spare (4 MiB) is taken", held);
    let bodies = acknowledged_in_an_outage(&s, "orioledb_data/9/", 40, 100 << 10, 300);
    s.kill();
    let filler = disk.fill();
    assert!(disk.free() < 64 << 10, "the disk is not full: {} free", disk.free());
    s.start_again();
    assert!(!spare.exists(), "the spare was not given back");
    for (key, body) in &bodies {
        s.get_expect(key, body, "HIT");
    }
    std::fs::remove_file(&filler).expect("free the disk");
    s.no_faults();
    s.flush(Duration::from_secs(60));
    for (key, body) in &bodies {
        assert_eq!(s.in_moto(key).as_deref(), Some(body.as_slice()), "{key} in the origin");
    }
    eventually("the spare is taken again", held);
}

/// A restart with the cache holding most of the disk keeps it: the disk tier's default limit
/// counts what the cache already holds. It was 80% of the free space at start alone, which leaves
/// out the cache itself, so each restart of a full cache (each wake of a Machine) evicted part of it.
#[test]
fn a_restart_keeps_a_cache_that_holds_most_of_the_disk() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let mut s = Stack::start_on(disk.path(), &["--disk-reserve-bytes", "8MiB"]);
    let _log = s.log_on_panic();
    // Larger than the memory tier's objects: each is one disk entry, 30 MiB in all.
    let objects: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("warm/{i}"), pattern(3 << 19, 500 + i)))
        .collect();
    for (key, body) in &objects {
        s.put_behind_perchs_back(key, body);
        s.get_expect(key, body, "MISS");
    }
    assert_eq!(disk_entries(&s), 20.0, "the 20 objects are cached");
    s.restart_clean();
    assert_all_cached(&s, &disk, &objects, "the restart evicted part of the cache");
}

/// With the origin out, `n` PUTs of `size` bytes under `prefix` (bodies from `seed` on), each
/// acknowledged and none uploaded; returns their keys and bodies.
#[track_caller]
fn acknowledged_in_an_outage(s: &Stack, prefix: &str, n: u64, size: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    s.faults(r#"{"outage": true}"#);
    let objects: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("{prefix}{i}"), pattern(size, seed + i)))
        .collect();
    for (key, body) in &objects {
        s.put(key, body);
    }
    objects
}

/// The disk tier's entries.
fn disk_entries(s: &Stack) -> f64 {
    s.metric("perch_cache_entries{tier=\"disk\"}")
}

/// The disk tier holds every one of `objects` within 15 s, and each reads back as a hit.
#[track_caller]
fn assert_all_cached(s: &Stack, disk: &SmallDisk, objects: &[(String, Vec<u8>)], what: &str) {
    let want = objects.len() as f64;
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(15), || disk_entries(s) == want),
        "{what}: {} of {want} entries ({} bytes free)",
        disk_entries(s),
        disk.free()
    );
    s.proxy.reset();
    for (key, body) in objects {
        s.get_expect(key, body, "HIT");
    }
}

/// A request the origin decides (here a conditional PUT) first drops the key's clean copy,
/// durably. When it cannot (the disk filled to its last block, the index refusing writes), it is
/// not sent: it waits for room, and past `--origin-retry-deadline` is 503 SlowDown, the origin
/// unchanged. It used to be sent anyway: the origin took the new body and the old copy (pinned, so
/// never evicted) was served as a hit for good, also after room came back and after a restart.
#[test]
fn a_decided_request_is_not_sent_while_the_old_copy_cannot_be_dropped() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let policy_dir = tempfile::tempdir().expect("temp dir");
    let policy = policy_dir.path().join("pinned.toml");
    std::fs::write(&policy, "[[rule]]\nkey = \"pinned/*\"\ncache = \"pin\"\n").expect("policy");
    let policy = policy.to_str().expect("utf-8 path");
    let mut flags = FLAGS.to_vec();
    flags.extend([
        "--policy",
        policy,
        "--origin-retry-deadline",
        "5s",
        "--dirty-wait-max",
        "10m",
    ]);
    let mut s = Stack::start_on(disk.path(), &flags);
    let _log = s.log_on_panic();
    let old = pattern(200 << 10, 71);
    let new = pattern(200 << 10, 72);
    s.put_behind_perchs_back("pinned/k", &old);
    s.get_expect("pinned/k", &old, "MISS");
    eventually("the copy is kept", || {
        s.get("pinned/k").header("X-Cache") == Some("HIT")
    });

    // Another program fills the disk; writes go on until the index's log finds no room and a
    // DELETE (of a key nobody has, with a long name: a large index record) waits.
    let filler = disk.fill();
    let mut waiting = None;
    for i in 0..20_000 {
        let key = format!("del/{}/{i}", "x".repeat(900));
        let delete = send(&s, &key, s.req("DELETE", &key), Vec::new());
        if !delete.answer_within(Duration::from_secs(5)) {
            waiting = Some(delete);
            break;
        }
        let (_, _, r) = delete.answer();
        assert_eq!(r.status, 204, "DELETE {key} on a filling disk: {}", r.summary());
    }
    let waiting = waiting.expect("the index never ran out of room");
    s.get_expect("pinned/k", &old, "HIT");

    let r = s
        .req("PUT", "pinned/k")
        .body(new.clone())
        .header("If-Match", &md5_etag(&old))
        .go(s.addr());
    assert_eq!(
        r.status,
        503,
        "a conditional PUT whose old copy cannot go: {}",
        r.summary()
    );
    assert!(r.text().contains("<Code>SlowDown</Code>"), "{}", r.summary());
    assert_eq!(
        s.in_moto("pinned/k").as_deref(),
        Some(old.as_slice()),
        "the origin is unchanged"
    );
    s.get_expect("pinned/k", &old, "HIT");

    // Room again, and a restart (RocksDB does not always resume a log writer stopped by ENOSPC
    // by itself: docs/write-back.md): the old copy is still the origin's, and the same
    // conditional PUT is carried out, its old copy gone.
    std::fs::remove_file(&filler).expect("free the disk");
    s.kill();
    drop(waiting);
    s.start_again();
    s.get_expect("pinned/k", &old, "HIT");
    let r = s
        .req("PUT", "pinned/k")
        .body(new.clone())
        .header("If-Match", &md5_etag(&old))
        .go(s.addr());
    assert_eq!(r.status, 200, "the conditional PUT with room: {}", r.summary());
    assert_eq!(s.in_moto("pinned/k").as_deref(), Some(new.as_slice()));
    let r = s.get("pinned/k");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_same(&r.body, &new, "GET after the conditional PUT");
}

/// CreateMultipartUpload on a disk filled to its last block by another program is 503 SlowDown,
/// for the client to retry once there is room (it was 500 InternalError: the staging area's
/// ENOSPC taken for a fault); with room again it succeeds.
#[test]
fn a_multipart_upload_started_on_a_full_disk_is_503_not_500() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let s = Stack::start_on(disk.path(), &FLAGS);
    let _log = s.log_on_panic();
    let filler = disk.fill();
    let create = |s: &Stack| {
        let mut req = s.req("POST", "mp/started-full");
        req.query = "uploads".to_owned();
        req.go(s.addr())
    };
    let r = create(&s);
    assert_eq!(r.status, 503, "CreateMultipartUpload on a full disk: {}", r.summary());
    assert!(r.text().contains("<Code>SlowDown</Code>"), "{}", r.summary());
    std::fs::remove_file(&filler).expect("free the disk");
    let r = create(&s);
    assert_eq!(r.status, 200, "CreateMultipartUpload with room: {}", r.summary());
    assert!(r.text().contains("<UploadId>"), "{}", r.summary());
}

/// A restart with writes not yet uploaded keeps room for them in the cache: the disk tier's
/// default limit counts them as held, as it counts the clean entries. It left them out (the free
/// space at start did not have them), so once they were uploaded, and so clean, the cache evicted
/// most of them: the objects a database had just written were misses.
#[test]
fn a_restart_with_writes_not_yet_uploaded_keeps_room_for_them() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let mut s = Stack::start_on(disk.path(), &["--disk-reserve-bytes", "8MiB"]);
    let _log = s.log_on_panic();
    let objects = acknowledged_in_an_outage(&s, "orioledb_data/7/", 20, 3 << 19, 700);
    s.kill();
    s.start_again();
    s.no_faults();
    s.flush(Duration::from_secs(60));
    for (key, body) in &objects {
        assert_eq!(s.in_moto(key).as_deref(), Some(body.as_slice()), "{key} in the origin");
    }
    let evicted = "the cache evicted writes it had just uploaded";
    assert_all_cached(&s, &disk, &objects, evicted);
    // Past the keeper's next rounds, they are all still there.
    std::thread::sleep(Duration::from_secs(2));
    assert_all_cached(&s, &disk, &objects, evicted);
}

/// A stop while a commit waits for room (the index's log stopped on a disk filled to its last
/// block) ends within the drain and the wait for requests in flight (30 s), with status 0. It
/// used to wait for the commit's own bound, `--dirty-wait-max` (30 minutes by default), after
/// logging "stopped". Nothing acknowledged is lost: the waiting DELETE was never answered.
#[test]
fn a_stop_does_not_wait_for_a_commit_waiting_for_room() {
    let _turn = machine::share();
    let Some(disk) = SmallDisk::mount("64m") else { return };
    let mut flags = FLAGS.to_vec();
    flags.extend(["--dirty-wait-max", "10m", "--drain-timeout", "1s"]);
    let mut s = Stack::start_on(disk.path(), &flags);
    let _log = s.log_on_panic();
    s.put("kept", b"acknowledged before the disk filled");
    let filler = disk.fill();
    let mut waiting = None;
    for i in 0..20_000 {
        let key = format!("del/{}/{i}", "x".repeat(900));
        let delete = send(&s, &key, s.req("DELETE", &key), Vec::new());
        if !delete.answer_within(Duration::from_secs(5)) {
            waiting = Some(delete);
            break;
        }
    }
    let waiting = waiting.expect("the index never ran out of room");
    let started = Instant::now();
    s.perch().send_sigterm();
    // 1 s of drain and up to 30 s for the request in flight; a generous bound under load, far
    // below the commit's 10 minutes.
    s.wait_stopped(Duration::from_secs(90));
    assert!(
        started.elapsed() < Duration::from_secs(75),
        "the stop took {:?}",
        started.elapsed()
    );
    drop(waiting);
    std::fs::remove_file(&filler).expect("free the disk");
    s.start_again();
    // Uploaded, then maybe evicted for room on the full disk: a hit or a miss, the same bytes.
    let r = s.get("kept");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_same(
        &r.body,
        b"acknowledged before the disk filled",
        "GET kept after the stop",
    );
}
