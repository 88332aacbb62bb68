//! Real RocksDB through the mount: a writer process makes synced puts and is killed, the power
//! is cut, and RocksDB must reopen with every acknowledged key, in every mode. RocksDB comes from
//! the system's shared library (Debian's `librocksdb*`, pulled in by `rocksdb-tools`), loaded
//! with dlopen so that the test skips where it is missing; Perch's own RocksDB build is not
//! needed.

mod common;

use std::ffi::{CStr, CString, c_char, c_uchar, c_void};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Harness, fsync};

type Ptr = *mut c_void;

/// The few functions of RocksDB's C API the test needs.
struct RocksDb {
    options_create: unsafe extern "C" fn() -> Ptr,
    options_set_create_if_missing: unsafe extern "C" fn(Ptr, c_uchar),
    options_set_write_buffer_size: unsafe extern "C" fn(Ptr, usize),
    open: unsafe extern "C" fn(Ptr, *const c_char, *mut *mut c_char) -> Ptr,
    close: unsafe extern "C" fn(Ptr),
    writeoptions_create: unsafe extern "C" fn() -> Ptr,
    writeoptions_set_sync: unsafe extern "C" fn(Ptr, c_uchar),
    put: unsafe extern "C" fn(Ptr, Ptr, *const c_char, usize, *const c_char, usize, *mut *mut c_char),
    readoptions_create: unsafe extern "C" fn() -> Ptr,
    create_iterator: unsafe extern "C" fn(Ptr, Ptr) -> Ptr,
    iter_seek_to_first: unsafe extern "C" fn(Ptr),
    iter_valid: unsafe extern "C" fn(Ptr) -> c_uchar,
    iter_next: unsafe extern "C" fn(Ptr),
    iter_key: unsafe extern "C" fn(Ptr, *mut usize) -> *const c_char,
    iter_value: unsafe extern "C" fn(Ptr, *mut usize) -> *const c_char,
    iter_get_error: unsafe extern "C" fn(Ptr, *mut *mut c_char),
    iter_destroy: unsafe extern "C" fn(Ptr),
}

/// The system's RocksDB shared library, if there is one.
fn library() -> Option<std::path::PathBuf> {
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut found: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("librocksdb.so"))
            })
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Some(p);
        }
    }
    None
}

/// A symbol as the function pointer type `F`.
///
/// # Safety
/// `F` must be the symbol's function pointer type.
unsafe fn func<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: same size; the caller vouches for the type.
    unsafe { std::mem::transmute_copy(&p) }
}

fn load() -> Result<RocksDb, String> {
    let path = library().ok_or("no librocksdb.so* (apt-get install rocksdb-tools)")?;
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: loading a shared library by path.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW) };
    if h.is_null() {
        return Err(format!("dlopen {} failed", path.display()));
    }
    macro_rules! sym {
        ($name:literal) => {{
            let n = CString::new(concat!("rocksdb_", $name)).unwrap();
            // SAFETY: a symbol lookup; the C API declares these signatures.
            let p = unsafe { libc::dlsym(h, n.as_ptr()) };
            if p.is_null() {
                return Err(format!("no symbol rocksdb_{}", $name));
            }
            // SAFETY: the symbol has the signature of the field it fills.
            unsafe { func(p) }
        }};
    }
    Ok(RocksDb {
        options_create: sym!("options_create"),
        options_set_create_if_missing: sym!("options_set_create_if_missing"),
        options_set_write_buffer_size: sym!("options_set_write_buffer_size"),
        open: sym!("open"),
        close: sym!("close"),
        writeoptions_create: sym!("writeoptions_create"),
        writeoptions_set_sync: sym!("writeoptions_set_sync"),
        put: sym!("put"),
        readoptions_create: sym!("readoptions_create"),
        create_iterator: sym!("create_iterator"),
        iter_seek_to_first: sym!("iter_seek_to_first"),
        iter_valid: sym!("iter_valid"),
        iter_next: sym!("iter_next"),
        iter_key: sym!("iter_key"),
        iter_value: sym!("iter_value"),
        iter_get_error: sym!("iter_get_error"),
        iter_destroy: sym!("iter_destroy"),
    })
}

fn check(err: *mut c_char, what: &str) {
    if !err.is_null() {
        // SAFETY: RocksDB hands back a NUL-terminated message.
        panic!("{what}: {}", unsafe { CStr::from_ptr(err) }.to_string_lossy());
    }
}

impl RocksDb {
    /// Opens with a small memtable, so that flushes, new SSTs, MANIFEST edits and compactions
    /// happen during the test.
    fn open_db(&self, path: &std::path::Path) -> Ptr {
        let p = CString::new(path.to_str().unwrap()).unwrap();
        let mut err = std::ptr::null_mut();
        // SAFETY: C API calls with valid arguments.
        unsafe {
            let o = (self.options_create)();
            (self.options_set_create_if_missing)(o, 1);
            (self.options_set_write_buffer_size)(o, 64 << 10);
            let db = (self.open)(o, p.as_ptr(), &mut err);
            check(err, "rocksdb_open");
            db
        }
    }

    /// Every key and value, in order.
    fn scan(&self, db: Ptr) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        // SAFETY: C API calls on a live db; key and value pointers are read before moving on.
        unsafe {
            let it = (self.create_iterator)(db, (self.readoptions_create)());
            (self.iter_seek_to_first)(it);
            while (self.iter_valid)(it) != 0 {
                let (mut kl, mut vl) = (0, 0);
                let k = (self.iter_key)(it, &mut kl);
                let v = (self.iter_value)(it, &mut vl);
                out.push((
                    std::slice::from_raw_parts(k.cast::<u8>(), kl).to_vec(),
                    std::slice::from_raw_parts(v.cast::<u8>(), vl).to_vec(),
                ));
                (self.iter_next)(it);
            }
            let mut err = std::ptr::null_mut();
            (self.iter_get_error)(it, &mut err);
            check(err, "iterate");
            (self.iter_destroy)(it);
        }
        out
    }
}

fn key(i: u64) -> String {
    format!("key{i:010}")
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(200, (i % 251) as u8);
    v
}

/// Not a test by itself: the writer process the test below starts (and kills).
#[test]
#[ignore = "the writer process of the test below, which runs it with --ignored"]
fn writer_process() {
    // Run by hand (`--ignored`), it has nothing to do.
    let Ok(spec) = std::env::var("POWERCUT_ROCKSDB_WRITER") else {
        return;
    };
    let (rest, sync) = spec.rsplit_once(':').unwrap();
    let (path, start) = rest.rsplit_once(':').unwrap();
    let start: u64 = start.parse().unwrap();
    let r = load().unwrap();
    let db = r.open_db(std::path::Path::new(path));
    // SAFETY: C API calls with valid arguments.
    let wo = unsafe { (r.writeoptions_create)() };
    unsafe { (r.writeoptions_set_sync)(wo, u8::from(sync == "sync")) };
    let mut i = start;
    loop {
        let (k, v) = (key(i), value(i));
        let mut err = std::ptr::null_mut();
        // SAFETY: valid buffers.
        unsafe { (r.put)(db, wo, k.as_ptr().cast(), k.len(), v.as_ptr().cast(), v.len(), &mut err) };
        check(err, "put");
        // Acknowledged: durable by RocksDB's promise.
        println!("acked {i}");
        i += 1;
    }
}

/// Runs the writer from key `start` until `count` more puts are acknowledged (or 20 s pass),
/// kills it, and returns the last acknowledged key.
fn write_and_kill(db: &std::path::Path, start: u64, count: u64, sync: bool) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "POWERCUT_ROCKSDB_WRITER",
            format!("{}:{start}:{}", db.display(), if sync { "sync" } else { "nosync" }),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("acked ") {
                let _ = tx.send(n.parse::<u64>().unwrap());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(n) => {
                last = Some(n);
                if n + 1 >= start + count {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // The power goes: first the process using the mount dies, mid-put.
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    last.into_iter().chain(rx.try_iter()).max()
}

#[test]
fn rocksdb_recovers_every_acknowledged_write_after_every_kind_of_cut() {
    require_fuse!();
    let r = match load() {
        Ok(r) => r,
        Err(e) => {
            if std::env::var("PERCH_PRIVILEGED_TESTS").as_deref() == Ok("required") {
                panic!("PERCH_PRIVILEGED_TESTS=required, but the system's librocksdb cannot be loaded: {e}");
            }
            eprintln!("SKIPPED (not run): {e}");
            return;
        }
    };
    let h = Harness::new();
    let mut d = h.mount();
    // RocksDB does not fsync the parent of the directory it creates: make it durable first.
    std::fs::create_dir(h.p("db")).unwrap();
    fsync(&h.mnt);
    let mut next = 0u64;
    for seed in 0..9u64 {
        let acked = write_and_kill(&h.p("db"), next, 1500, true).expect("the writer acknowledged nothing");
        assert!(acked >= next, "seed {seed}");
        let (d2, lines) = h.cut_and_remount(d, seed, None);
        d = d2;
        let db = r.open_db(&h.p("db"));
        let all = r.scan(db);
        // SAFETY: closing the db we opened.
        unsafe { (r.close)(db) };
        let summary = lines
            .iter()
            .filter(|l| l.starts_with("mode") || l.starts_with("summary"))
            .cloned()
            .collect::<Vec<_>>();
        // Synced puts in order: what survives is exactly keys 0..n, with every acknowledged one.
        for (i, (k, v)) in all.iter().enumerate() {
            assert_eq!(
                k,
                key(i as u64).as_bytes(),
                "seed {seed}: a gap before key {i} ({summary:?})"
            );
            assert_eq!(v, &value(i as u64), "seed {seed}: key {i} has a wrong value");
        }
        assert!(
            all.len() as u64 > acked,
            "seed {seed}: acknowledged up to {acked} but only {} keys survive ({summary:?})\n{}",
            all.len(),
            lines.join("\n")
        );
        eprintln!(
            "seed {seed}: acked {acked}, {} keys after the cut, {summary:?}",
            all.len()
        );
        next = all.len() as u64;
    }
    h.shutdown(d);
}

#[test]
fn rocksdb_without_sync_loses_acknowledged_writes_in_a_drop_cut() {
    require_fuse!();
    let r = match load() {
        Ok(r) => r,
        Err(e) => {
            if std::env::var("PERCH_PRIVILEGED_TESTS").as_deref() == Ok("required") {
                panic!("PERCH_PRIVILEGED_TESTS=required, but the system's librocksdb cannot be loaded: {e}");
            }
            eprintln!("SKIPPED (not run): {e}");
            return;
        }
    };
    let h = Harness::new();
    let d = h.mount();
    std::fs::create_dir(h.p("db")).unwrap();
    fsync(&h.mnt);
    // Puts with sync = false are acknowledged from the page cache; kill -9 alone would keep them.
    let acked = write_and_kill(&h.p("db"), 0, 1500, false).expect("the writer acknowledged nothing");
    let (d, lines) = h.cut_and_remount(d, 0, None);
    let db = r.open_db(&h.p("db"));
    let all = r.scan(db);
    // SAFETY: closing the db we opened.
    unsafe { (r.close)(db) };
    assert!(
        (all.len() as u64) <= acked,
        "acknowledged up to {acked}, {} keys survive: the cut lost nothing\n{}",
        all.len(),
        lines.join("\n")
    );
    eprintln!("acked {acked}, {} keys survive the cut", all.len());
    h.shutdown(d);
}
