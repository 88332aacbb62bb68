//! The write path's defences (issue #12), each shown by a test that fails without it: a damaged
//! blob never goes up, an operator can retry or drop a refused version and repair a journal that
//! stops the start, two completions of one key never mix, a write during a revalidation is not
//! shadowed, a conditional PUT is judged with no write of its key slipping in, and writes waiting
//! for room keep their order and their bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use perch_testkit::bodies::{md5_etag, multipart_etag, pattern};
use perch_testkit::raw_client::{BUCKET, Req, Style, key_path};

use crate::support::machine;
use crate::support::perch::perch_binary;
use crate::support::stack::{Stack, eventually, flip_byte};

type State = Option<Vec<u8>>;

#[track_caller]
fn perch_get(s: &Stack, key: &str) -> State {
    let r = s.get(key);
    match r.status {
        200 => Some(r.body),
        404 => None,
        other => panic!("GET {key} through perch: {other} {}", r.summary()),
    }
}

/// `perch journal …` against the stack's perch; returns (success, stdout + stderr).
fn journal_cli(s: &Stack, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(perch_binary())
        .arg("journal")
        .args(args)
        .args(["--admin", &s.perch().admin.to_string()])
        .output()
        .expect("run perch journal");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The versions the origin refused, from /status: (seq, key, error).
fn refused(s: &Stack) -> Vec<(u64, String, String)> {
    s.status()["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["seq"].as_u64().unwrap_or(0),
                f["key"].as_str().unwrap_or("").to_owned(),
                f["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[track_caller]
fn wait_refused(s: &Stack, n: usize) -> Vec<(u64, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = refused(s);
        if r.len() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{n} refusals never showed: {}", s.status());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The blob holding `body` (the version of `key` just written while the origin is in an outage)
/// is damaged at `offset` after an upload attempt the outage turned away (and the uploader's
/// check of the blob after it), and the outage ends at once: the next attempt reads the damaged
/// blob, and moto does not check the Content-MD5 it is sent, so only Perch's check of the blocks
/// it reads for the upload can stop them. The version must be refused and never reach the origin.
#[track_caller]
fn damage_after_a_turned_away_attempt(s: &Stack, key: &str, body: &[u8], offset: u64) {
    let turned_away = || {
        s.proxy
            .records_for(key)
            .iter()
            .filter(|(_, _, injected)| injected.is_some())
            .count()
    };
    eventually("an upload attempt turned away", || turned_away() >= 1);
    flip_byte(&s.blob_holding(body), offset);
    s.no_faults();
    let r = wait_refused(s, 1);
    assert_eq!(r[0].1, key);
    assert!(r[0].2.contains("damaged"), "{r:?}");
    assert_eq!(s.in_moto(key), None, "the damaged body went up");
}

#[test]
fn a_blob_damaged_on_disk_is_refused_not_uploaded() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    let body = pattern(300_000, 7);
    s.put("orioledb_data/1/damaged", &body);
    damage_after_a_turned_away_attempt(&s, "orioledb_data/1/damaged", &body, 1000);
}

/// Perch's soft limit of open files, from /proc.
fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a soft limit of open files")
}

fn set_open_files_limit(pid: u32, soft: u64) {
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={soft}:")])
        .status()
        .expect("run prlimit")
        .success();
    assert!(ok, "prlimit --nofile={soft}: failed");
}

/// A blob Perch cannot open for a while is not damaged: with its file table full (its limit of
/// open files lowered to 3, so that no descriptor can be opened, those open staying) after an upload attempt the outage turned away, the next
/// attempts and the blob's check fail to open it. The version must be tried again, never refused,
/// and reach the origin once Perch can open files again.
#[test]
fn a_blob_that_cannot_be_opened_for_a_while_is_tried_again_not_refused() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let key = "orioledb_data/1/unopenable";
    s.faults(r#"{"outage": true}"#);
    let body = pattern(300_000, 9);
    s.put(key, &body);
    eventually("an upload attempt turned away", || {
        s.proxy
            .records_for(key)
            .iter()
            .any(|(_, _, injected)| injected.is_some())
    });
    let pid = s.perch().pid().expect("perch is running");
    let limit = open_files_limit(pid);
    let checks = |log: &str| log.matches("blob now").count() + log.matches("fails its check").count();
    let before = checks(&s.perch().log_text());
    set_open_files_limit(pid, 3);
    s.no_faults();
    let deadline = Instant::now() + Duration::from_secs(30);
    while checks(&s.perch().log_text()) <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    set_open_files_limit(pid, limit);
    assert!(
        checks(&s.perch().log_text()) > before,
        "no check of the blob while it could not be opened"
    );
    assert_eq!(refused(&s), Vec::new(), "a blob that could not be opened was refused");
    eventually("the version uploaded", || s.in_moto(key).as_deref() == Some(&body[..]));
}

#[test]
fn a_multipart_blob_damaged_in_a_later_part_is_refused_and_its_upload_abandoned() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    // A version uploaded as a multipart upload with its own layout: part 1 intact, part 2 damaged.
    let key = "orioledb_undo/damaged-mp";
    s.faults(r#"{"outage": true}"#);
    let body = pattern((5 << 20) + 300_000, 11);
    s.rt.block_on(multipart(&s.sdk(), key, &body));
    damage_after_a_turned_away_attempt(&s, key, &body, (5 << 20) + 1000);
}

#[test]
fn an_operator_retries_or_drops_a_refused_version() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put_behind_perchs_back("orioledb_data/1/b", b"the origin's older copy");
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT", "error_kinds": ["403"]}"#);
    s.put("orioledb_data/1/a", b"refused first");
    s.put("orioledb_data/1/b", b"refused too");
    s.put("data/1/global/pg_control", b"a barrier behind them");
    let r = wait_refused(&s, 2);
    let seq_of = |key: &str| r.iter().find(|f| f.1 == key).map(|f| f.0).expect("refused");
    let (a, b) = (seq_of("orioledb_data/1/a"), seq_of("orioledb_data/1/b"));
    s.no_faults();
    // A retry of something not refused is refused; a drop without saying so is refused.
    let (ok, out) = journal_cli(&s, &["drop", &b.to_string()]);
    assert!(!ok && out.contains("--lose-this-write"), "{out}");
    let (ok, out) = journal_cli(&s, &["list"]);
    assert!(
        ok && out.contains("REFUSED") && out.contains("orioledb_data/1/a"),
        "{out}"
    );
    // Retry a, drop b: a goes up, b's write is lost (the origin's older copy shows again), and
    // the barrier behind them goes up.
    let (ok, out) = journal_cli(&s, &["retry", &a.to_string()]);
    assert!(ok, "{out}");
    let (ok, out) = journal_cli(&s, &["drop", &b.to_string(), "--lose-this-write"]);
    assert!(ok, "{out}");
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("orioledb_data/1/a").as_deref(), Some(&b"refused first"[..]));
    assert_eq!(
        s.in_moto("orioledb_data/1/b").as_deref(),
        Some(&b"the origin's older copy"[..])
    );
    assert_eq!(
        perch_get(&s, "orioledb_data/1/b").as_deref(),
        Some(&b"the origin's older copy"[..])
    );
    assert_eq!(
        s.in_moto("data/1/global/pg_control").as_deref(),
        Some(&b"a barrier behind them"[..])
    );
    let (ok, out) = journal_cli(&s, &["retry", &a.to_string()]);
    assert!(!ok && out.contains("not in the journal"), "{out}");
}

/// A version whose upload meets a fault at every attempt (an origin that answers its key with a
/// 500, or a bare 404, each time) is tried again for ever, and holds up the barrier behind it: an
/// operator sees it in `perch journal list` (RETRYING, with the fault) and can drop it, and what
/// waited behind it goes up. It could not be dropped: only a refused version could.
#[test]
fn an_operator_drops_a_version_tried_again_through_faults_that_never_pass() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.faults(
        r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "orioledb_data/1/stuck", "error_kinds": ["500"]}"#,
    );
    s.put("orioledb_data/1/stuck", b"never taken");
    s.put("data/1/global/pg_control", b"a barrier behind it");
    let mut listed = String::new();
    eventually("the version listed as tried again", || {
        let (ok, out) = journal_cli(&s, &["list"]);
        listed = out;
        ok && listed
            .lines()
            .any(|l| l.contains("orioledb_data/1/stuck") && l.contains("RETRYING"))
    });
    let seq = listed
        .lines()
        .find(|l| l.contains("orioledb_data/1/stuck"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("its seq");
    assert_eq!(
        s.in_moto("data/1/global/pg_control"),
        None,
        "the barrier waits behind it"
    );
    // Retried is not refused: a retry has nothing to do.
    let (ok, out) = journal_cli(&s, &["retry", &seq.to_string()]);
    assert!(!ok && out.contains("not refused"), "{out}");
    let (ok, out) = journal_cli(&s, &["drop", &seq.to_string(), "--lose-this-write"]);
    assert!(ok, "{out}");
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("orioledb_data/1/stuck"), None);
    assert_eq!(
        s.in_moto("data/1/global/pg_control").as_deref(),
        Some(&b"a barrier behind it"[..])
    );
    assert_eq!(refused(&s), Vec::new());
    let (ok, out) = journal_cli(&s, &["list"]);
    assert!(ok && out.contains("the journal is empty"), "{out}");
}

#[test]
fn journal_repair_lets_perch_start_losing_only_the_version_whose_blob_is_gone() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    let lost = pattern(70_000, 1);
    s.put("orioledb_data/1/lost", &lost);
    s.put("orioledb_data/1/kept", b"kept");
    let blob = s.blob_holding(&lost);
    s.kill();
    std::fs::remove_file(&blob).expect("remove the blob");
    assert!(s.start_refused().contains("perch journal check"));
    let data_dir = s.data_dir.to_string_lossy().into_owned();
    let offline = |args: &[&str]| {
        std::process::Command::new(perch_binary())
            .arg("journal")
            .args(args)
            .args(["--data-dir", &data_dir])
            .output()
            .expect("run perch journal")
    };
    let check = offline(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        !check.status.success() && text.contains("orioledb_data/1/lost") && text.contains("missing"),
        "{text}"
    );
    assert!(
        !offline(&["repair"]).status.success(),
        "repair without --drop-missing must refuse"
    );
    let repair = offline(&["repair", "--drop-missing"]);
    assert!(repair.status.success(), "{}", String::from_utf8_lossy(&repair.stderr));
    assert!(offline(&["check"]).status.success());
    s.no_faults();
    s.start_again();
    assert_eq!(perch_get(&s, "orioledb_data/1/kept").as_deref(), Some(&b"kept"[..]));
    assert_eq!(perch_get(&s, "orioledb_data/1/lost"), None);
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("orioledb_data/1/kept").as_deref(), Some(&b"kept"[..]));
}

/// A blob that cannot be looked at (its name a symbolic link to itself: ELOOP, which no root
/// bypasses) is not a blob that is gone: `perch journal check` and `repair --drop-missing` stop
/// with the error and drop nothing, and once the blob is back the write goes up.
#[test]
fn journal_repair_never_drops_a_version_whose_blob_it_cannot_look_at() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    let body = pattern(70_000, 3);
    s.put("orioledb_data/1/unreadable", &body);
    let blob = s.blob_holding(&body);
    s.kill();
    let aside = blob.with_extension("aside");
    std::fs::rename(&blob, &aside).expect("move the blob aside");
    std::os::unix::fs::symlink(&blob, &blob).expect("a link to itself");
    let data_dir = s.data_dir.to_string_lossy().into_owned();
    let offline = |args: &[&str]| {
        let out = std::process::Command::new(perch_binary())
            .arg("journal")
            .args(args)
            .args(["--data-dir", &data_dir])
            .output()
            .expect("run perch journal");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for args in [&["check"][..], &["repair", "--drop-missing"][..]] {
        let (ok, text) = offline(args);
        assert!(
            !ok && text.contains("cannot read its blob") && text.contains("orioledb_data/1/unreadable"),
            "perch journal {args:?}: {text}"
        );
    }
    std::fs::remove_file(&blob).expect("remove the link");
    std::fs::rename(&aside, &blob).expect("put the blob back");
    s.no_faults();
    s.start_again();
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("orioledb_data/1/unreadable").as_deref(), Some(&body[..]));
}

/// One multipart upload of `key` with `body` in two parts (5 MiB and the rest); returns the
/// ETag CompleteMultipartUpload answered.
async fn multipart(c: &aws_sdk_s3::Client, key: &str, body: &[u8]) -> String {
    let id = c
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .expect("create")
        .upload_id
        .expect("upload id");
    let mut done = Vec::new();
    for (i, part) in [&body[..5 << 20], &body[5 << 20..]].into_iter().enumerate() {
        let n = i as i32 + 1;
        let out = c
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .body(ByteStream::from(part.to_vec()))
            .send()
            .await
            .expect("part");
        done.push(CompletedPart::builder().part_number(n).set_e_tag(out.e_tag).build());
    }
    c.complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await
        .expect("complete")
        .e_tag
        .expect("etag")
}

#[test]
fn two_completions_of_one_key_never_mix_a_body_with_another_layout() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let c = s.sdk();
    let rounds = 50;
    for round in 0..rounds {
        let a = pattern((5 << 20) + 1000 + round, round as u64 * 2);
        let b = pattern((5 << 20) + 3000 + round, round as u64 * 2 + 1);
        let (ea, eb) = s.rt.block_on(async {
            tokio::join!(
                multipart(&c, "orioledb_undo/mp", &a),
                multipart(&c, "orioledb_undo/mp", &b)
            )
        });
        assert_eq!(
            ea,
            multipart_etag(&[&a[..5 << 20], &a[5 << 20..]]),
            "round {round}: A's ETag"
        );
        assert_eq!(
            eb,
            multipart_etag(&[&b[..5 << 20], &b[5 << 20..]]),
            "round {round}: B's ETag"
        );
        let got = perch_get(&s, "orioledb_undo/mp").expect("the key holds one of them");
        assert!(got == a || got == b, "round {round}: perch serves neither body");
    }
    s.flush(Duration::from_secs(120));
    let served = perch_get(&s, "orioledb_undo/mp");
    assert_eq!(
        s.in_moto("orioledb_undo/mp"),
        served,
        "the origin holds another body than perch serves"
    );
    let moto_etag = s.rt.block_on(async {
        s.moto_sdk()
            .head_object()
            .bucket(BUCKET)
            .key("orioledb_undo/mp")
            .send()
            .await
            .expect("head moto")
            .e_tag
    });
    let head = s.head("orioledb_undo/mp");
    assert_eq!(
        moto_etag.as_deref(),
        head.header("ETag"),
        "the origin's ETag is not the one acknowledged"
    );
}

#[test]
fn a_write_during_a_revalidation_is_not_shadowed_by_the_older_copy() {
    let _turn = machine::alone();
    let s = Stack::start(&["--cache-revalidate-after", "0s"]);
    let _log = s.log_on_panic();
    let key = "data/orioledb_data/control";
    s.put(key, b"version 1");
    s.flush(Duration::from_secs(30));
    assert_eq!(perch_get(&s, key).as_deref(), Some(&b"version 1"[..]));
    // The revalidating HEAD and every upload take 1.5 s at the origin: the PUT below is
    // acknowledged while the HEAD is out, and uploaded only after it answered "unchanged".
    s.faults(r#"{"latency_ms": 1500}"#);
    let addr = s.addr();
    let reader = std::thread::spawn(move || Req::object("GET", addr, Style::Path, &key_path(key)).go(addr));
    std::thread::sleep(Duration::from_millis(400));
    s.put(key, b"version 2");
    let first = reader.join().expect("reader");
    assert_eq!(first.status, 200);
    assert_eq!(
        perch_get(&s, key).as_deref(),
        Some(&b"version 2"[..]),
        "the acknowledged write is shadowed by the revalidated older copy"
    );
    s.flush(Duration::from_secs(30));
    assert_eq!(perch_get(&s, key).as_deref(), Some(&b"version 2"[..]));
    assert_eq!(s.in_moto(key).as_deref(), Some(&b"version 2"[..]));
}

#[test]
fn no_write_of_a_key_is_acknowledged_while_a_conditional_put_of_it_is_decided() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let key = "data/orioledb_data/s3_lock";
    s.faults(r#"{"outage": true}"#);
    s.put(key, b"A");
    let addr = s.addr();
    // The conditional PUT waits for A to reach the origin.
    let conditional = std::thread::spawn(move || {
        let r = Req::object("PUT", addr, Style::Path, &key_path(key))
            .header("If-Match", &md5_etag(b"A"))
            .body(b"C".to_vec())
            .go(addr);
        (r.status, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(500));
    let acked_b = Arc::new(AtomicBool::new(false));
    let flag = acked_b.clone();
    let plain = std::thread::spawn(move || {
        let r = Req::object("PUT", addr, Style::Path, &key_path(key))
            .body(b"B".to_vec())
            .go(addr);
        flag.store(true, Ordering::SeqCst);
        (r.status, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !acked_b.load(Ordering::SeqCst),
        "a write of the key was acknowledged while a conditional PUT of it waited for the origin"
    );
    // The origin comes back slow: deciding the conditional PUT takes 300 ms at the origin after
    // A's upload, so that a B acknowledged before the decision would be seen that much early,
    // beyond the jitter of two client threads noting their answers (the answers themselves come
    // microseconds apart, and under load a thread may note its own a few ms late).
    s.faults(r#"{"outage": false, "latency_ms": 300}"#);
    let (c_status, c_at) = conditional.join().expect("conditional");
    let (b_status, b_at) = plain.join().expect("plain");
    assert_eq!(
        c_status, 200,
        "the conditional PUT is judged against A, the last write before it"
    );
    assert_eq!(b_status, 200);
    assert!(
        b_at + Duration::from_millis(100) >= c_at,
        "B was acknowledged {:?} before the conditional PUT was decided",
        c_at.saturating_duration_since(b_at)
    );
    s.no_faults();
    s.flush(Duration::from_secs(30));
    assert_eq!(perch_get(&s, key).as_deref(), Some(&b"B"[..]));
    assert_eq!(s.in_moto(key).as_deref(), Some(&b"B"[..]));
}

/// A conditional PUT of a key whose earlier write the origin refused cannot be decided by the
/// origin without that write: it waits for an operator, goes on once they retry the write, and,
/// with nobody acting, ends at the deadline as a 503 that names the refusal (it was a 500 at once,
/// which OrioleDB, whose lock is such a PUT, would have asked again in a tight loop).
#[test]
fn a_conditional_put_behind_a_refused_write_waits_for_an_operator() {
    let _turn = machine::share();
    let s = Stack::start(&["--origin-retry-deadline", "5s"]);
    let _log = s.log_on_panic();
    let (retried, left) = ("orioledb_data/1/retried", "orioledb_data/1/left");
    s.put_behind_perchs_back(retried, b"the origin's");
    s.put_behind_perchs_back(left, b"the origin's");
    s.faults(r#"{"error_rate": 1.0, "match_method": "DELETE", "error_kinds": ["403"]}"#);
    for key in [retried, left] {
        let r = s.req("DELETE", key).go(s.addr());
        assert_eq!(r.status, 204, "DELETE {key}: {}", r.summary());
    }
    let r = wait_refused(&s, 2);
    s.no_faults();
    let seq = r.iter().find(|f| f.1 == retried).map(|f| f.0).expect("refused");
    let addr = s.addr();
    let lock_like = move |key: &'static str| {
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = Req::object("PUT", addr, Style::Path, &key_path(key))
                .header("If-None-Match", "*")
                .body(b"mine".to_vec())
                .go(addr);
            (r, started.elapsed())
        })
    };
    let waiting = lock_like(retried);
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = journal_cli(&s, &["retry", &seq.to_string()]);
    assert!(ok, "{out}");
    let (r, took) = waiting.join().expect("conditional PUT");
    assert_eq!(r.status, 200, "judged once the DELETE went up: {}", r.summary());
    assert!(
        took >= Duration::from_millis(1400),
        "answered before the retry: {took:?}"
    );
    // (A flush would wait on the other refusal.)
    eventually("the conditional PUT's body in the origin", || {
        s.in_moto(retried).as_deref() == Some(&b"mine"[..])
    });

    let (r, took) = lock_like(left).join().expect("conditional PUT");
    assert_eq!(r.status, 503, "{}", r.summary());
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("ServiceUnavailable") && text.contains("perch journal"),
        "{text}"
    );
    assert!(took >= Duration::from_secs(4), "answered before the deadline: {took:?}");
    assert_eq!(s.in_moto(left).as_deref(), Some(&b"the origin's"[..]));
    assert_eq!(
        perch_get(&s, left),
        None,
        "the refused DELETE is still what Perch serves"
    );
}

#[test]
fn writes_waiting_for_room_keep_their_order_and_a_gone_client_never_commits() {
    let _turn = machine::share();
    let s = Stack::start(&["--dirty-bytes-max", "1MiB", "--dirty-wait-max", "4s"]);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    s.put("orioledb_data/1/fills", &pattern(1 << 20, 1));
    let addr = s.addr();
    // A PUT that waits for room, whose client goes away: it must never be committed.
    let gone = pattern(300_000, 2);
    let req = Req::object("PUT", addr, Style::Path, &key_path("orioledb_data/1/x")).body(gone.clone());
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let (head, _) = req.head();
    std::io::Write::write_all(&mut stream, &head).expect("send head");
    std::io::Write::write_all(&mut stream, &gone).expect("send body");
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    // A later PUT of the same key waits too, and past --dirty-wait-max is refused.
    let later = Req::object("PUT", addr, Style::Path, &key_path("orioledb_data/1/x"))
        .body(b"later".to_vec())
        .go(addr);
    assert_eq!(later.status, 503, "{}", later.summary());
    assert_eq!(later.code().as_deref(), Some("SlowDown"));
    s.no_faults();
    s.flush(Duration::from_secs(30));
    assert_eq!(
        perch_get(&s, "orioledb_data/1/x"),
        None,
        "a write whose client went away was committed"
    );
    assert_eq!(s.in_moto("orioledb_data/1/x"), None);
    // Room again: writes go on.
    s.put("orioledb_data/1/x", b"after");
    eventually("the last write is read back", || {
        perch_get(&s, "orioledb_data/1/x").as_deref() == Some(&b"after"[..])
    });
}
