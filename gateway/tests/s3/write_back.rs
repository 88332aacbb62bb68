//! Write-back, end to end: perch in front of moto through the fault-injecting origin proxy.
//!
//! Acknowledged writes are read back at once, listed, survive outages, kill -9 and crashes at
//! every step of a commit, and reach the origin in the order the barriers demand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectStorageClass, StorageClass};
use perch_testkit::bodies::{md5_etag, pattern};
use perch_testkit::raw_client::{BUCKET, Req, Style, key_path};
use perch_testkit::servers::{MotoServer, PerchOptions, PerchServer};

use crate::support::machine;
use crate::support::perch::{admin_get, moto_keys_env, perch_binary, s3_origin};
use crate::support::raw::create_bucket;
use crate::support::sdk::{copy_source, expect_err, ok};
use crate::support::stack::{Stack, eventually};

/// What a key holds: `Some(body)` or deleted.
type State = Option<Vec<u8>>;

/// GET through perch: the body, or `None` on 404.
#[track_caller]
fn perch_get(s: &Stack, key: &str) -> State {
    let r = s.get(key);
    match r.status {
        200 => Some(r.body),
        404 => None,
        other => panic!("GET {key} through perch: {other} {}", r.summary()),
    }
}

#[track_caller]
fn delete(s: &Stack, key: &str) {
    let r = s.req("DELETE", key).go(s.addr());
    assert_eq!(r.status, 204, "DELETE {key}: {}", r.summary());
}

/// Every key in moto, sorted.
fn moto_keys(s: &Stack) -> Vec<String> {
    let c = s.moto_sdk();
    s.rt.block_on(async {
        let out = c.list_objects_v2().bucket(BUCKET).send().await.expect("list moto");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    })
}

#[test]
fn writes_during_an_outage_are_read_back_at_once_and_all_arrive_afterwards() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put_behind_perchs_back("old/a", b"origin a");
    s.put_behind_perchs_back("old/b", b"origin b");
    s.put_behind_perchs_back("cached", b"read before the outage");
    s.get_expect("cached", b"read before the outage", "MISS");
    s.faults(r#"{"outage": true}"#);
    // Cached reads keep working through the outage.
    s.get_expect("cached", b"read before the outage", "HIT");

    let big = pattern(9 << 20, 7); // spooled to a file, not held in memory
    s.put("new/1", b"one");
    s.put("old/a", b"replaced a");
    s.put("new/big", &big);
    s.put("new/1", b"one, again");
    delete(&s, "old/b");
    // Read-your-writes: each acknowledged version at once; a deleted key is 404 at once.
    assert_eq!(perch_get(&s, "new/1").as_deref(), Some(&b"one, again"[..]));
    assert_eq!(perch_get(&s, "old/a").as_deref(), Some(&b"replaced a"[..]));
    assert_eq!(perch_get(&s, "new/big"), Some(big.clone()));
    assert_eq!(perch_get(&s, "old/b"), None);
    let head = s.head("old/b");
    assert_eq!(head.status, 404, "HEAD of a pending delete: {}", head.summary());
    // Nothing reached moto; the backlog says so.
    assert_eq!(s.in_moto("new/1"), None);
    assert_eq!(s.in_moto("old/b").as_deref(), Some(&b"origin b"[..]));
    let st = s.status();
    assert_eq!(st["dirty_objects"], 5, "{st}");
    assert!(st["origin_fault"].is_string(), "the uploader reports the outage: {st}");
    // `perch status` says the same to an operator.
    let out = std::process::Command::new(perch_binary())
        .args(["status", "--admin", &s.perch().admin.to_string()])
        .output()
        .expect("perch status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "perch status: {text}");
    assert!(text.contains("backlog: 5 objects"), "{text}");
    assert!(text.contains("origin: retrying after"), "{text}");

    // Uploaded at least a second after the acknowledgement, so the origin's Last-Modified
    // (checked below) differs from the local one.
    std::thread::sleep(Duration::from_millis(1100));
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("new/1").as_deref(), Some(&b"one, again"[..]));
    assert_eq!(s.in_moto("old/a").as_deref(), Some(&b"replaced a"[..]));
    assert_eq!(s.in_moto("new/big"), Some(big));
    assert_eq!(s.in_moto("old/b"), None);
    assert_eq!(s.status()["dirty_objects"], 0);
    // The origin's ETag and Last-Modified are the uploaded copy's (HEAD through perch = moto's).
    let m = s.moto_sdk();
    let at_moto =
        s.rt.block_on(m.head_object().bucket(BUCKET).key("new/1").send())
            .expect("head moto");
    let via_perch = s.head("new/1");
    assert_eq!(via_perch.header("ETag"), at_moto.e_tag(), "ETag");
    let moto_lm = at_moto
        .last_modified()
        .map(|t| t.fmt(aws_smithy_types::date_time::Format::HttpDate).expect("date"));
    assert_eq!(
        via_perch.header("Last-Modified").map(str::to_owned),
        moto_lm,
        "Last-Modified"
    );
    // The newest versions stay cached: reading them costs the origin nothing.
    s.proxy.reset();
    s.get_expect("new/1", b"one, again", "HIT");
    s.assert_reads(&[], "reads of uploaded versions");
}

/// The listing perch gives for `prefix`/`delimiter`, page by page (`max_keys` per page), as
/// (keys, common prefixes).
fn list_all(s: &Stack, prefix: &str, delimiter: Option<&str>, max_keys: i32, v1: bool) -> (Vec<String>, Vec<String>) {
    let c = s.sdk();
    s.rt.block_on(async {
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        let mut marker: Option<String> = None;
        for _ in 0..100 {
            if v1 {
                let out = c
                    .list_objects()
                    .bucket(BUCKET)
                    .prefix(prefix)
                    .set_delimiter(delimiter.map(str::to_owned))
                    .max_keys(max_keys)
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .expect("ListObjects");
                keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
                prefixes.extend(
                    out.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix().map(str::to_owned)),
                );
                if !out.is_truncated().unwrap_or(false) {
                    return (keys, prefixes);
                }
                // No NextMarker without a delimiter: the page's last key.
                marker = out.next_marker().map(str::to_owned).or_else(|| keys.last().cloned());
            } else {
                let out = c
                    .list_objects_v2()
                    .bucket(BUCKET)
                    .prefix(prefix)
                    .set_delimiter(delimiter.map(str::to_owned))
                    .max_keys(max_keys)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .expect("ListObjectsV2");
                keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
                prefixes.extend(
                    out.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix().map(str::to_owned)),
                );
                if !out.is_truncated().unwrap_or(false) {
                    return (keys, prefixes);
                }
                token = out.next_continuation_token().map(str::to_owned);
            }
        }
        panic!("the listing never ended");
    })
}

/// The listing S3 gives of `keys` for `prefix`/`delimiter`.
fn expected_listing(keys: &BTreeSet<String>, prefix: &str, delimiter: Option<&str>) -> (Vec<String>, Vec<String>) {
    let mut objects = Vec::new();
    let mut prefixes = BTreeSet::new();
    for k in keys.iter().filter(|k| k.starts_with(prefix)) {
        let rest = &k[prefix.len()..];
        match delimiter.and_then(|d| rest.find(d).map(|i| (i, d))) {
            Some((i, d)) => {
                prefixes.insert(format!("{prefix}{}", &rest[..i + d.len()]));
            }
            None => objects.push(k.clone()),
        }
    }
    (objects, prefixes.into_iter().collect())
}

/// A write's storage class is kept with it while its upload waits: HEAD, GET and listings name it
/// before the origin has the object, and the upload carries it. (It was 501 NotImplemented; the
/// origin's side of every write path, and its refusal, are in the Python suite:
/// `test_a_write_in_another_storage_class_is_uploaded_in_it`.)
#[test]
fn a_pending_writes_storage_class_is_named_before_its_upload_carries_it() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let c = s.sdk();
    // The uploads of `held/` wait; the origin still takes the class's first check (`.perch/`).
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "held/"}"#);
    let put = c
        .put_object()
        .bucket(BUCKET)
        .key("held/ia")
        .storage_class(StorageClass::StandardIa)
        .body(b"infrequent".to_vec().into())
        .send();
    ok(s.rt.block_on(put), "PUT in STANDARD_IA");
    eventually("its upload was refused", || {
        s.records("held/ia").iter().any(|r| r["method"] == "PUT")
    });
    let class = |c: &aws_sdk_s3::Client, what: &str| {
        let head = ok(
            s.rt.block_on(c.head_object().bucket(BUCKET).key("held/ia").send()),
            what,
        );
        let list = c.list_objects_v2().bucket(BUCKET).prefix("held/").send();
        let listed = ok(s.rt.block_on(list), what);
        let listed: Vec<_> = listed.contents().iter().map(|o| o.storage_class().cloned()).collect();
        (head.storage_class().cloned(), listed)
    };
    let want = (
        Some(StorageClass::StandardIa),
        vec![Some(ObjectStorageClass::StandardIa)],
    );
    assert_eq!(class(&c, "pending"), want);
    let get = ok(
        s.rt.block_on(c.get_object().bucket(BUCKET).key("held/ia").send()),
        "GET",
    );
    assert_eq!(get.storage_class(), Some(&StorageClass::StandardIa));
    let held = moto_keys(&s).into_iter().filter(|k| k.starts_with("held/")).count();
    assert_eq!(held, 0, "the origin holds the write already");
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert_eq!(class(&s.moto_sdk(), "at the origin"), want);
}

/// A request the origin decides for a barrier key (the lock's release, with `If-Match`) goes only
/// once the origin holds every write before it, as the barrier's own upload would. It went as soon
/// as the lock had no write of its own left, ahead of the checkpoint's data (review of 51b08e4).
#[test]
fn a_conditional_release_of_the_lock_goes_after_every_write_before_it() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let lock = "data/orioledb_data/s3_lock";
    let data = "orioledb_data/1/16384/0.0";
    let r = s
        .req("PUT", lock)
        .header("If-None-Match", "*")
        .body(b"owner".to_vec())
        .go(s.addr());
    assert_eq!(r.status, 200, "lock taken: {}", r.summary());
    // The checkpoint's data waits: its uploads are refused for now.
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "orioledb_data/"}"#);
    s.put(data, b"checkpoint data");
    let release = {
        let req = s.req("DELETE", lock).header("If-Match", &md5_etag(b"owner"));
        let addr = s.addr();
        std::thread::spawn(move || req.go(addr))
    };
    std::thread::sleep(Duration::from_millis(1500));
    let deleted = |s: &Stack| s.records(lock).iter().any(|r| r["method"] == "DELETE");
    assert!(!deleted(&s), "the lock was released before the data reached the origin");
    s.no_faults();
    let r = release.join().expect("release thread");
    assert_eq!(r.status, 204, "lock released: {}", r.summary());
    let log = s.proxy.log();
    let at = |key: &str, method: &str| {
        log.iter()
            .position(|r| r["key"] == key && r["method"] == method && r["status"].as_u64().is_some_and(|c| c < 300))
            .unwrap_or_else(|| panic!("no {method} {key} answered: {log:?}"))
    };
    assert!(
        at(data, "PUT") < at(lock, "DELETE"),
        "the release reached the origin first"
    );
}

/// A request for a barrier key (the lock's release) that waits behind a write the origin refused
/// for good gets the answer a key's own refused write gives: 503 ServiceUnavailable naming the
/// version and what an operator does about it. It was 503 SlowDown saying the write stays queued.
#[test]
fn a_conditional_release_of_the_lock_names_a_refused_write_it_waits_for() {
    let _turn = machine::share();
    let s = Stack::start(&["--origin-retry-deadline", "3s"]);
    let _log = s.log_on_panic();
    let lock = "data/orioledb_data/s3_lock";
    let r = s
        .req("PUT", lock)
        .header("If-None-Match", "*")
        .body(b"owner".to_vec())
        .go(s.addr());
    assert_eq!(r.status, 200, "lock taken: {}", r.summary());
    // The checkpoint's data is refused for good (a revoked key, say).
    s.faults(
        r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "orioledb_data/", "error_kinds": ["403"]}"#,
    );
    s.put("orioledb_data/1/16384/0.0", b"checkpoint data");
    let r = s
        .req("DELETE", lock)
        .header("If-Match", &md5_etag(b"owner"))
        .go(s.addr());
    assert_eq!(r.status, 503, "{}", r.summary());
    assert_eq!(r.code().as_deref(), Some("ServiceUnavailable"), "{}", r.summary());
    assert!(r.text().contains("perch journal"), "{}", r.summary());
}

/// An `If-Match` on a key whose pending version deletes it is 404 NoSuchKey at once, as the
/// origin answers once the delete is up: it waited for that upload, in an outage up to the retry
/// deadline, then answered 503.
#[test]
fn an_if_match_on_a_key_deleted_here_is_404_at_once() {
    let _turn = machine::share();
    let s = Stack::start(&["--origin-retry-deadline", "5s"]);
    let _log = s.log_on_panic();
    s.put("gone/k", b"old");
    s.flush(Duration::from_secs(20));
    s.faults(r#"{"error_rate": 1.0, "match_method": "DELETE", "match_key_prefix": "gone/", "error_kinds": ["503"]}"#);
    delete(&s, "gone/k");
    let etag = md5_etag(b"old");
    for method in ["PUT", "DELETE"] {
        let started = Instant::now();
        let req = s.req(method, "gone/k").header("If-Match", &etag);
        let req = if method == "PUT" {
            req.body(b"new".to_vec())
        } else {
            req
        };
        let r = req.go(s.addr());
        assert_eq!(r.status, 404, "{method}: {}", r.summary());
        assert_eq!(r.code().as_deref(), Some("NoSuchKey"), "{method}: {}", r.summary());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{method}: answered after {:?}",
            started.elapsed()
        );
    }
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("gone/k"), None);
}

#[test]
fn listings_merge_pending_writes_and_deletes_with_delimiters_and_pagination() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let mut keys = BTreeSet::new();
    for k in ["a/1", "a/2", "b/x/1", "b/x/2", "c", "d/9", "e"] {
        s.put_behind_perchs_back(k, k.as_bytes());
        keys.insert(k.to_owned());
    }
    // Uploads of PUTs fail (reads and listings still reach moto), and the barrier holds every
    // later version, the deletes included, in the journal.
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT"}"#);
    for k in ["a/15", "b/y/1", "bb", "f/1"] {
        s.put(k, k.as_bytes());
        keys.insert(k.to_owned());
    }
    s.put("data/orioledb_data/control", b"barrier");
    keys.insert("data/orioledb_data/control".to_owned());
    for k in ["a/2", "c", "d/9"] {
        delete(&s, k);
        keys.remove(k);
    }
    s.put("a/0", b"after the barrier");
    keys.insert("a/0".to_owned());
    assert!(s.status()["dirty_objects"].as_u64().unwrap() >= 9);

    let cases: [(&str, Option<&str>); 5] = [
        ("", None),
        ("", Some("/")),
        ("a/", None),
        ("b/", Some("/")),
        ("d/", Some("/")),
    ];
    for (prefix, delimiter) in cases {
        let want = expected_listing(&keys, prefix, delimiter);
        for max_keys in [1, 2, 3, 1000] {
            for v1 in [false, true] {
                assert_eq!(
                    list_all(&s, prefix, delimiter, max_keys, v1),
                    want,
                    "prefix {prefix:?} delimiter {delimiter:?} max-keys {max_keys} v1 {v1}"
                );
            }
        }
    }
    // Once everything is uploaded, moto lists the same.
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert_eq!(moto_keys(&s), keys.iter().cloned().collect::<Vec<_>>());
    assert_eq!(list_all(&s, "", None, 2, false), expected_listing(&keys, "", None));
}

#[test]
fn barriers_order_uploads_on_every_intermediate_origin_state() {
    let _turn = machine::share();
    let s = Stack::start(&["--upload-concurrency", "8"]);
    let _log = s.log_on_panic();
    // Slow and flaky uploads: retried ones finish out of order.
    s.faults(r#"{"latency_ms": 15, "error_rate": 0.3, "match_method": "PUT", "error_kinds": ["503", "500", "reset"]}"#);
    let epochs = 4;
    let parts = 8;
    for e in 0..epochs {
        for p in 0..parts {
            s.put(&format!("orioledb_data/{e}/{p}"), &pattern(20_000, e * 100 + p));
        }
        // An overwritten undo file in the same epoch: only its last version needs to go.
        s.put("orioledb_undo/1", format!("undo {e} a").as_bytes());
        s.put("orioledb_undo/1", format!("undo {e} b").as_bytes());
        s.put(
            &format!("data/{e}/global/pg_control"),
            format!("control {e}").as_bytes(),
        );
    }
    s.flush(Duration::from_secs(120));
    // Replay moto's state from the proxy's log, in the order moto answered.
    let mut confirmed: BTreeSet<String> = BTreeSet::new();
    let mut checked = 0;
    for r in s.proxy.log() {
        if r["method"] != "PUT" || r["status"] != 200 {
            continue;
        }
        let key = r["key"].as_str().expect("key").to_owned();
        let epoch = |k: &str| -> Option<u64> { k.split('/').nth(1)?.parse().ok() };
        if let Some(e) = key.strip_prefix("data/").and_then(|_| epoch(&key)) {
            for p in 0..parts {
                assert!(
                    confirmed.contains(&format!("orioledb_data/{e}/{p}")),
                    "barrier {key} reached the origin before part {p} of its epoch"
                );
            }
        } else if key.starts_with("orioledb_data/") {
            let e = epoch(&key).expect("epoch");
            if e > 0 {
                assert!(
                    confirmed.contains(&format!("data/{}/global/pg_control", e - 1)),
                    "{key} reached the origin before the barrier of epoch {}",
                    e - 1
                );
            }
        }
        confirmed.insert(key);
        checked += 1;
    }
    assert!(
        checked >= (epochs * (parts + 2)) as usize,
        "only {checked} uploads logged"
    );
    assert_eq!(
        s.in_moto("orioledb_undo/1").as_deref(),
        Some(format!("undo {} b", epochs - 1).as_bytes())
    );
    for e in 0..epochs {
        assert_eq!(
            s.in_moto(&format!("data/{e}/global/pg_control")).as_deref(),
            Some(format!("control {e}").as_bytes())
        );
    }
}

/// A write-through PUT is answered once the origin answered its upload, without waiting for the
/// uploader's check of what the origin keeps (a HEAD, one more round trip): a checkpoint waits
/// for its WAL segment's upload and nothing after it. The version leaves the journal only once
/// that check is over.
#[test]
fn a_write_through_put_is_answered_once_the_origin_answers_its_upload() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put("wal/000000010000000000000001", b"the bucket is known");
    // Its own HEAD is over before the fault is set.
    s.flush(Duration::from_secs(30));
    let key = "wal/000000010000000000000009";
    let wal = pattern(1 << 20, 17);
    // The uploader's HEAD of the segment after its upload is held 8 s (its own limit is 5 s).
    s.faults(r#"{"match_method": "HEAD", "match_key_prefix": "wal/", "error_kinds": ["stall"], "stall_ms": 8000, "fail_next": 1}"#);
    let started = Instant::now();
    s.put(key, &wal);
    let took = started.elapsed();
    assert_eq!(s.in_moto(key), Some(wal.clone()), "answered before the origin had it");
    assert!(
        took < Duration::from_secs(3),
        "the answer waited for the check after the upload: {took:?}"
    );
    let status = admin_get(s.perch(), "/status").1;
    let pending: serde_json::Value = serde_json::from_str(&status).expect("/status is JSON");
    assert_eq!(
        pending["dirty_objects"], 1,
        "the version stays in the journal while the check runs: {status}"
    );
    s.no_faults();
    s.flush(Duration::from_secs(30));
    assert_eq!(perch_get(&s, key).as_deref(), Some(&wal[..]));
}

#[test]
fn write_through_and_the_lock_sequence_of_a_restart() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    // WAL is acknowledged only once moto has it.
    let wal = pattern(1 << 20, 3);
    s.put("wal/000000010000000000000001", &wal);
    assert_eq!(s.in_moto("wal/000000010000000000000001"), Some(wal));

    let lock = "data/orioledb_data/s3_lock";
    let take = |expect: u16| {
        let r = s
            .req("PUT", lock)
            .header("If-None-Match", "*")
            .body(b"pid 1".to_vec())
            .go(s.addr());
        assert_eq!(r.status, expect, "conditional PUT of the lock: {}", r.summary());
    };
    take(200);
    take(412);
    // A checkpoint's parts, slowly uploaded, then the stop: the lock's DELETE is a barrier and
    // is acknowledged at once.
    s.faults(r#"{"latency_ms": 150, "match_method": "PUT"}"#);
    for p in 0..6 {
        s.put(&format!("orioledb_data/9/{p}"), &pattern(10_000, p));
    }
    delete(&s, lock);
    // The next start takes the lock again: its conditional PUT waits until the DELETE, and so
    // every part before it, is in the origin.
    let started = Instant::now();
    take(200);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the conditional PUT did not wait"
    );
    for p in 0..6 {
        assert_eq!(
            s.in_moto(&format!("orioledb_data/9/{p}")),
            Some(pattern(10_000, p)),
            "part {p}"
        );
    }
    assert_eq!(s.in_moto(lock).as_deref(), Some(&b"pid 1"[..]));
    take(412);
}

/// `perch status` once it lists a refused version (within 20 s).
#[track_caller]
fn refusal_shown(s: &Stack) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.status();
        if st["failed"].as_array().is_some_and(|f| !f.is_empty()) {
            return st;
        }
        assert!(Instant::now() < deadline, "the refusal never showed: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_refused_upload_is_kept_and_reported() {
    let _turn = machine::share();
    // A short deadline: each upload attempt gives up on the outage within 2 s (the uploader then
    // tries again after its own short backoff), so that the refusal comes soon after the outage.
    let s = Stack::start(&["--origin-retry-deadline", "2s"]);
    let _log = s.log_on_panic();
    // First the origin is down: the upload is retried and the fault shows.
    s.faults(r#"{"outage": true}"#);
    s.put("orioledb_data/1/refused", b"kept locally");
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.status()["origin_fault"].is_null() {
        assert!(Instant::now() < deadline, "the outage never showed: {}", s.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Then it answers, and refuses the upload for good.
    s.faults(r#"{"outage": false, "error_rate": 1.0, "match_method": "PUT", "error_kinds": ["403"]}"#);
    let st = refusal_shown(&s);
    assert_eq!(st["failed"][0]["key"], "orioledb_data/1/refused", "{st}");
    // An answer, even a refusal, ends the outage it reported (it stayed until an upload landed).
    assert!(st["origin_fault"].is_null(), "{st}");
    assert_eq!(st["healthy"], false);
    let (code, _) = admin_get(s.perch(), "/healthz");
    assert_eq!(code, 503, "/healthz reports the refused version");
    // So does `perch status`, in its exit status too (a script or a health check reads that),
    // finding the admin address where `perch serve` takes it: PERCH_ADMIN_LISTEN.
    let out = std::process::Command::new(perch_binary())
        .arg("status")
        .env_remove("PERCH_ADMIN")
        .env("PERCH_ADMIN_LISTEN", s.perch().admin.to_string())
        .output()
        .expect("perch status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("health: UNHEALTHY"), "perch status: {text}");
    assert!(!out.status.success(), "perch status exited 0 on UNHEALTHY: {text}");
    // The data is kept and still served.
    assert_eq!(
        perch_get(&s, "orioledb_data/1/refused").as_deref(),
        Some(&b"kept locally"[..])
    );
    assert!(s.metric("perch_upload_failed") >= 1.0);

    // `perch flush` fails at once, naming the refusal, also when later versions wait behind it
    // (a barrier and the next checkpoint's data): it used to wait for them for ever.
    s.faults(
        r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "data/90/bad", "error_kinds": ["403"]}"#,
    );
    s.put("data/90/bad", b"refused");
    s.put("data/90/global/pg_control", b"a barrier after the refused version");
    s.put("data/91/after", b"behind the barrier");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.status()["failed"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["key"] == "data/90/bad"))
    {
        assert!(Instant::now() < deadline, "the second refusal never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let out = std::process::Command::new(perch_binary())
        .args(["flush", "--timeout", "30s", "--admin", &s.perch().admin.to_string()])
        .output()
        .expect("run perch flush");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("refused: {BUCKET}/data/90/bad")),
        "the refusal is named: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "perch flush waited {:?} on versions that cannot go up: {stderr}",
        started.elapsed()
    );
    // Not to a terminal: plain lines, no bar redrawn with carriage returns.
    assert!(
        !stderr.contains('\r') && !stderr.contains("[#") && !stderr.contains("[-"),
        "a progress bar drawn into a pipe: {stderr:?}"
    );
}

/// An upload the origin answers 404 NoSuchKey (S3 never does; moto does for a key holding a line
/// feed) is a refusal, kept and reported for an operator, as a 403 is: it used to be retried for
/// ever, could not be dropped ("not refused by the origin"), and a stop waited out its whole drain.
#[test]
fn an_upload_the_origin_answers_404_is_refused_not_retried_for_ever() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.faults(
        r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "orioledb_data/1/lost", "error_kinds": ["404"]}"#,
    );
    s.put("orioledb_data/1/lost", b"answered 404");
    s.put("orioledb_data/1/fine", b"goes up");
    let st = refusal_shown(&s);
    assert_eq!(st["failed"][0]["key"], "orioledb_data/1/lost", "{st}");
    let seq = st["failed"][0]["seq"].as_u64().expect("seq");
    assert_eq!(
        perch_get(&s, "orioledb_data/1/lost").as_deref(),
        Some(&b"answered 404"[..])
    );
    // The operator drops it; everything else is in the origin.
    let admin = s.perch().admin;
    let r = Req::unsigned(
        "POST",
        admin,
        &format!("/journal/drop?seq={seq}&confirm=lose-this-write"),
    )
    .go(admin);
    assert_eq!(r.status, 200, "drop: {}", r.summary());
    s.no_faults();
    s.flush(Duration::from_secs(30));
    assert_eq!(s.in_moto("orioledb_data/1/fine").as_deref(), Some(&b"goes up"[..]));
    assert_eq!(s.in_moto("orioledb_data/1/lost"), None);
}

#[test]
fn writes_wait_for_room_past_dirty_bytes_max() {
    let _turn = machine::share();
    let s = Stack::start(&["--dirty-bytes-max", "3MiB"]);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    s.put("orioledb_data/1/a", &pattern(2 << 20, 1));
    let addr = s.addr();
    let req = s.req("PUT", "orioledb_data/1/b").body(pattern(2 << 20, 2));
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let writer = std::thread::spawn(move || {
        let r = req.go(addr);
        flag.store(true, Ordering::SeqCst);
        r.status
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!done.load(Ordering::SeqCst), "the second write did not wait for room");
    s.no_faults();
    assert_eq!(
        writer.join().expect("writer"),
        200,
        "the waiting write succeeds once there is room"
    );
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("orioledb_data/1/b"), Some(pattern(2 << 20, 2)));
}

/// A stop does not wait out --drain-timeout for versions only an operator can move: a refused
/// version and the later version of its key that waits on it stay in the journal for the next
/// start, and Perch leaves once nothing else is left to upload.
#[test]
fn a_stop_does_not_wait_on_versions_that_wait_on_a_refusal() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--drain-timeout", "60s"]);
    let _log = s.log_on_panic();
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "orioledb_data/1/stuck", "error_kinds": ["403"]}"#);
    s.put("orioledb_data/1/stuck", b"refused");
    s.put("orioledb_data/1/stuck", b"waits on the refused one");
    s.put("orioledb_data/1/free", b"goes up");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.status();
        if st["blocked_by_refusals"] == true {
            assert_eq!(st["dirty_objects"], 2, "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "never blocked by the refusal alone: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = std::process::Command::new(perch_binary())
        .args(["status", "--admin", &s.perch().admin.to_string()])
        .output()
        .expect("perch status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("blocked: everything left waits on a refused version"),
        "{text}"
    );
    let stopped = Instant::now();
    s.perch().send_sigterm();
    s.wait_stopped(Duration::from_secs(30));
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "the stop took {:?}: it waited for the drain timeout",
        stopped.elapsed()
    );
    assert_eq!(s.in_moto("orioledb_data/1/free").as_deref(), Some(&b"goes up"[..]));
    // Left in the journal: the next start has them (the newest may supersede the refused one).
    s.start_again();
    let st = s.status();
    assert!(st["dirty_objects"].as_u64().is_some_and(|n| n >= 1), "{st}");
    assert_eq!(
        perch_get(&s, "orioledb_data/1/stuck").as_deref(),
        Some(&b"waits on the refused one"[..])
    );
}

#[test]
fn sigterm_keeps_serving_until_the_journal_is_drained() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--drain-quiet", "1s", "--drain-timeout", "60s"]);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    s.put("orioledb_data/1/a", b"before the stop");
    s.perch().send_sigterm();
    // Still serving: the database's shutdown checkpoint comes after the signal.
    std::thread::sleep(Duration::from_millis(300));
    s.put("data/1/global/pg_control", b"shutdown checkpoint");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        perch_get(&s, "orioledb_data/1/a").as_deref(),
        Some(&b"before the stop"[..]),
        "still serving"
    );
    s.no_faults();
    // It leaves by itself once the journal is empty and no request came for --drain-quiet.
    s.wait_stopped(Duration::from_secs(30));
    assert_eq!(s.in_moto("orioledb_data/1/a").as_deref(), Some(&b"before the stop"[..]));
    assert_eq!(
        s.in_moto("data/1/global/pg_control").as_deref(),
        Some(&b"shutdown checkpoint"[..])
    );
}

#[test]
fn a_drain_timeout_leaves_the_rest_in_the_journal_for_the_next_start() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--drain-quiet", "1s", "--drain-timeout", "2s"]);
    let _log = s.log_on_panic();
    s.faults(r#"{"outage": true}"#);
    s.put("orioledb_data/1/a", b"waits for the next start");
    let started = Instant::now();
    s.stop_clean();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "perch left before its drain timeout"
    );
    assert_eq!(s.in_moto("orioledb_data/1/a"), None);
    s.no_faults();
    s.start_again();
    // Replayed: read back at once, then uploaded.
    assert_eq!(
        perch_get(&s, "orioledb_data/1/a").as_deref(),
        Some(&b"waits for the next start"[..])
    );
    s.flush(Duration::from_secs(60));
    assert_eq!(
        s.in_moto("orioledb_data/1/a").as_deref(),
        Some(&b"waits for the next start"[..])
    );
}

/// Crash points between the steps of a commit (PERCH_FAIL_POINT): the client never gets an
/// answer; after a restart the key holds either the old version (before the synced batch) or
/// the new one (after it), whole, never a part; no temp file is left; the origin ends the same.
#[test]
fn a_crash_between_any_two_steps_of_a_commit_loses_nothing_acknowledged() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let points = [
        ("blob_written", false),
        ("blob_synced", false),
        ("blob_renamed", false),
        ("dir_synced", false),
        ("batch_committed", true),
    ];
    for (i, (point, committed)) in points.into_iter().enumerate() {
        let key = format!("orioledb_data/5/{point}");
        let old = pattern(300_000, i as u64);
        let new = pattern(2 << 20, 100 + i as u64);
        s.put(&key, &old);
        s.stop_clean();
        s.env = vec![("PERCH_FAIL_POINT".into(), point.into())];
        s.start_again();
        let answer = s.req("PUT", &key).body(new.clone()).send(s.addr());
        assert!(
            answer.is_err(),
            "{point}: the write was answered: {:?}",
            answer.map(|r| r.status)
        );
        s.reap();
        s.env.clear();
        s.start_again();
        let want = if committed { new.clone() } else { old.clone() };
        assert_eq!(
            perch_get(&s, &key),
            Some(want.clone()),
            "{point}: read back after the crash"
        );
        let tmp: Vec<_> = std::fs::read_dir(s.blobs_dir().join("tmp")).expect("tmp dir").collect();
        assert!(tmp.is_empty(), "{point}: temp files left: {tmp:?}");
        s.flush(Duration::from_secs(60));
        assert_eq!(s.in_moto(&key), Some(want), "{point}: in the origin");
    }
}

/// A crash while a multipart completion is committed: the client has no answer, and after a
/// restart the upload is still there with the parts it acknowledged, so the completion can be sent
/// again, as S3 keeps an upload whose completion failed. (The parts were folded away before the
/// version was committed: a crash between lost the upload, and the object too before the batch.)
/// Nor is the object the parts were folded into left in the staging area: a crash before it was
/// read out left it there for good, as large as the upload.
#[test]
fn a_crash_during_a_multipart_completion_leaves_it_to_be_sent_again() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    // The files of the staging area's objects (`<bucket>/xx/<sha256 of the key>`).
    let staged = |s: &Stack| -> Vec<std::path::PathBuf> {
        let bucket = s.data_dir.join("multipart").join(BUCKET);
        let Ok(dirs) = std::fs::read_dir(&bucket) else {
            return Vec::new();
        };
        dirs.flatten()
            .filter(|d| d.file_name().len() == 2 && d.path().is_dir())
            .flat_map(|d| {
                std::fs::read_dir(d.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|f| f.path())
            })
            .collect()
    };
    for (i, (point, committed)) in [
        ("upload_folded", false),
        ("blob_written", false),
        ("batch_committed", true),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("dumps/crash-{point}");
        let old = pattern(1000, 400 + i as u64);
        s.put(&key, &old);
        s.stop_clean();
        s.env = vec![("PERCH_FAIL_POINT".into(), point.into())];
        s.start_again();
        let parts = [pattern(5 << 20, 410 + i as u64), pattern(1000, 420 + i as u64)];
        let whole = parts.concat();
        let (id, done) = s.upload_in_parts(&key, &parts);
        assert!(
            s.complete_upload(&key, &id, &done).is_err(),
            "{point}: the completion was answered"
        );
        s.reap();
        s.env.clear();
        s.start_again();
        assert_eq!(
            staged(&s),
            Vec::<std::path::PathBuf>::new(),
            "{point}: folded objects left"
        );
        let want = if committed { whole.clone() } else { old.clone() };
        assert_eq!(perch_get(&s, &key), Some(want), "{point}: read back after the crash");
        let c = s.sdk();
        let listed =
            s.rt.block_on(c.list_parts().bucket(BUCKET).key(&key).upload_id(&id).send())
                .unwrap_or_else(|e| panic!("{point}: the upload is gone: {e:?}"));
        assert_eq!(listed.parts().len(), 2, "{point}: the acknowledged parts");
        let again = s
            .complete_upload(&key, &id, &done)
            .unwrap_or_else(|e| panic!("{point}: completed again: {e}"));
        assert!(again.ends_with("-2\""), "{point}: {again}");
        assert_eq!(perch_get(&s, &key), Some(whole.clone()), "{point}: the object");
        let uploads =
            s.rt.block_on(c.list_multipart_uploads().bucket(BUCKET).send())
                .expect("list uploads");
        assert!(uploads.uploads().is_empty(), "{point}: the completed upload is gone");
        s.flush(Duration::from_secs(60));
        assert_eq!(s.in_moto(&key), Some(whole), "{point}: in the origin");
    }
}

/// An outage that fails a multipart version's upload fails the abort of the origin's upload too:
/// the abort is tried again once the origin answers, so no upload is left open there with its
/// parts stored (and billed, on S3). It was sent once.
#[test]
fn an_upload_abandoned_in_an_outage_is_aborted_once_the_origin_answers() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let key = "dumps/abandoned";
    let parts = [pattern(5 << 20, 601), pattern(10, 602)];
    // Slow enough that the outage can start between the origin's CreateMultipartUpload and the
    // first part.
    s.faults(r#"{"latency_ms": 400}"#);
    let (id, done) = s.upload_in_parts(key, &parts);
    s.complete_upload(key, &id, &done).expect("complete");
    let created = |s: &Stack| {
        s.proxy.log().iter().any(|r| {
            r["key"] == key
                && r["method"] == "POST"
                && r["query"].as_str().is_some_and(|q| q.contains("uploads"))
                && r["status"] == 200
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !created(&s) {
        assert!(Instant::now() < deadline, "the origin upload was never created");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.faults(r#"{"latency_ms": 400, "outage": true}"#);
    std::thread::sleep(Duration::from_secs(3));
    s.faults(r#"{"latency_ms": 0, "outage": false}"#);
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto(key), Some(parts.concat()), "the object, sent again");
    let failed_abort = s
        .proxy
        .records_for(key)
        .iter()
        .any(|(method, _, injected)| method == "DELETE" && injected.is_some());
    assert!(
        failed_abort,
        "the outage failed an abort: {:?}",
        s.proxy.records_for(key)
    );
    let m = s.moto_sdk();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open =
            s.rt.block_on(m.list_multipart_uploads().bucket(BUCKET).send())
                .expect("list uploads");
        if open.uploads().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uploads left open at the origin: {:?}",
            open.uploads()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A copy the origin makes (its source clean) changes the destination there before Perch has its
/// answer: a crash in between must not leave Perch serving the old destination from its cache,
/// which nothing would ever correct. The cached copy goes before the copy is sent.
#[test]
fn a_crash_during_a_copy_at_the_origin_leaves_no_stale_destination() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let (src, dst) = ("copies/src", "copies/dst");
    let (old, new) = (pattern(10_000, 501), pattern(20_000, 502));
    s.put(dst, &old);
    s.put(src, &new);
    s.flush(Duration::from_secs(60));
    assert_eq!(perch_get(&s, dst), Some(old.clone()), "cached");
    // The copy's answer crawls back through the proxy; moto has made the copy long before.
    s.faults(r#"{"bandwidth_bytes_per_sec": 5}"#);
    let c = s.sdk();
    let copying = s.rt.spawn(async move {
        c.copy_object()
            .bucket(BUCKET)
            .key(dst)
            .copy_source(format!("{BUCKET}/{src}"))
            .send()
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.in_moto(dst).as_deref() != Some(&new[..]) {
        assert!(Instant::now() < deadline, "moto never made the copy");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!copying.is_finished(), "the copy was answered before the crash");
    s.kill();
    copying.abort();
    s.faults(r#"{"bandwidth_bytes_per_sec": null}"#);
    s.start_again();
    assert_eq!(perch_get(&s, dst), Some(new), "the destination after the crash");
}

/// A body of 1 MiB or more has its MD5 finished beside its commit's syncs when no Content-MD5
/// came with it (the ETag is set in the commit); with one, the MD5 is checked before anything is
/// committed: a wrong one is 400 BadDigest and the key keeps what it held, a right one is taken.
#[test]
fn a_large_body_is_checked_against_its_content_md5_before_its_commit() {
    use md5::{Digest, Md5};
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let key = "orioledb_data/6/content-md5";
    let old = pattern(2 << 20, 61);
    let new = pattern(3 << 20, 62);
    let b64 = |bytes: &[u8]| base64_simd::STANDARD.encode_to_string(bytes);
    let first = s.req("PUT", key).body(old.clone()).go(s.addr());
    assert_eq!(first.status, 200, "{}", first.summary());
    assert_eq!(
        first.header("etag"),
        Some(md5_etag(&old).as_str()),
        "no Content-MD5: the ETag"
    );
    let wrong = s
        .req("PUT", key)
        .header("content-md5", &b64(&Md5::digest(b"something else")))
        .body(new.clone())
        .go(s.addr());
    assert_eq!(wrong.status, 400, "{}", wrong.summary());
    assert_eq!(wrong.code().as_deref(), Some("BadDigest"), "{}", wrong.summary());
    assert_eq!(
        perch_get(&s, key),
        Some(old.clone()),
        "a refused body left the key as it was"
    );
    let right = s
        .req("PUT", key)
        .header("content-md5", &b64(&Md5::digest(&new)))
        .body(new.clone())
        .go(s.addr());
    assert_eq!(right.status, 200, "{}", right.summary());
    assert_eq!(
        right.header("etag"),
        Some(md5_etag(&new).as_str()),
        "with Content-MD5: the ETag"
    );
    assert_eq!(perch_get(&s, key), Some(new.clone()));
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto(key), Some(new), "in the origin");
}

/// One worker's keys and what each may hold: after an acknowledged write exactly its state; after
/// an unanswered one (the crash cut it), either.
struct Model {
    keys: Vec<String>,
    states: BTreeMap<String, Vec<State>>,
}

/// Random PUTs, overwrites and DELETEs of `keys` until `stop`, recording what is acknowledged.
fn worker(addr: std::net::SocketAddr, model: Arc<Mutex<Model>>, seed: u64, stop: Arc<AtomicBool>) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let keys = model.lock().expect("model").keys.clone();
    while !stop.load(Ordering::SeqCst) {
        let key = &keys[(next() % keys.len() as u64) as usize];
        let roll = next() % 100;
        let state: State = if roll < 20 {
            None
        } else {
            let len = match next() % 10 {
                0 => 9 << 20,
                1..=3 => (next() % (2 << 20)) as usize,
                _ => (next() % 70_000) as usize,
            };
            Some(pattern(len, next()))
        };
        let req = match &state {
            None => Req::object("DELETE", addr, Style::Path, &key_path(key)),
            Some(body) => Req::object("PUT", addr, Style::Path, &key_path(key)).body(body.clone()),
        };
        let answer = req.send(addr);
        let mut m = model.lock().expect("model");
        let states = m.states.entry(key.clone()).or_default();
        match answer {
            Ok(r) if r.status == 200 || r.status == 204 => *states = vec![state],
            Ok(r) => panic!("{key}: perch answered {}", r.summary()),
            Err(_) => {
                // Cut by the crash: it may or may not have been committed.
                states.push(state);
                return;
            }
        }
    }
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_write() {
    let _turn = machine::share();
    let rounds: u64 = std::env::var("PERCH_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.faults(r#"{"latency_ms": 5}"#);
    let workers = 4;
    let models: Vec<Arc<Mutex<Model>>> = (0..workers)
        .map(|w| {
            let mut keys: Vec<String> = (0..4).map(|i| format!("orioledb_data/{w}/{i}")).collect();
            // One barrier key, one write-through key, one undo file overwritten in place.
            keys.push(
                [
                    "data/orioledb_data/control",
                    "wal/000000010000000000000007",
                    "orioledb_undo/x",
                    "data/1/global/pg_control",
                ][w]
                    .to_owned(),
            );
            let states = keys.iter().map(|k| (k.clone(), vec![None])).collect();
            Arc::new(Mutex::new(Model { keys, states }))
        })
        .collect();
    let mut seed = 0x5eed_u64;
    for round in 0..rounds {
        // What perch serves after the restart must be one of the allowed states; from here on
        // it is the only one.
        for m in &models {
            let mut m = m.lock().expect("model");
            let keys = m.keys.clone();
            for k in keys {
                let got = perch_get(&s, &k);
                let allowed = &m.states[&k];
                assert!(
                    allowed.contains(&got),
                    "round {round}: {k} holds {:?} bytes, allowed {:?}",
                    got.as_ref().map(Vec::len),
                    allowed.iter().map(|a| a.as_ref().map(Vec::len)).collect::<Vec<_>>()
                );
                m.states.insert(k, vec![got]);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = models
            .iter()
            .enumerate()
            .map(|(w, m)| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let (m, stop, addr, sd) = (m.clone(), stop.clone(), s.addr(), seed ^ w as u64);
                std::thread::spawn(move || worker(addr, m, sd, stop))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 700));
        s.kill();
        stop.store(true, Ordering::SeqCst);
        for h in handles {
            h.join().expect("worker");
        }
        s.start_again();
        // A long soak writes faster than moto takes uploads: every 100 rounds the backlog is
        // flushed and the origin checked, so the final flush has at most 100 rounds to upload.
        if (round + 1) % 100 == 0 && round + 1 < rounds {
            flush_and_compare(&s, &models, round);
        }
    }
    flush_and_compare(&s, &models, rounds);
}

/// Flushes perch, then checks that every key's state, read through perch, is allowed and is what
/// moto holds.
fn flush_and_compare(s: &Stack, models: &[Arc<Mutex<Model>>], round: u64) {
    s.flush(Duration::from_secs(300));
    for m in models {
        let m = m.lock().expect("model");
        for k in &m.keys {
            let got = perch_get(s, k);
            assert!(m.states[k].contains(&got), "round {round}: {k}: state not allowed");
            assert_eq!(
                s.in_moto(k),
                got,
                "round {round}: {k}: the origin holds another version than perch serves"
            );
        }
    }
}

/// kill -9 keeps the page cache, so only the syscalls show a missing fsync: under strace, a PUT's
/// body is renamed to its blob name, then the blob and that directory are fsynced (both started
/// after the rename, side by side), then RocksDB's log is synced (the batch, started after both
/// fsyncs returned), and only then is the answer written.
#[test]
fn the_acknowledgement_follows_the_fsyncs_under_strace() {
    let _turn = machine::share();
    let strace = std::process::Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "strace is needed (apt install strace; .ci/run installs it)"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let trace = tmp.path().join("trace.txt");
    let wrapper = tmp.path().join("perch-under-strace");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace -f -y -s 48 -e trace=fsync,fdatasync,rename,renameat,renameat2,write,writev,sendto,sendmsg -o {} {} \"$@\"\n",
            trace.display(),
            perch_binary().display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let moto = MotoServer::start();
    let data_dir = tmp.path().join("perch");
    machine::assert_turn_taken();
    let perch = PerchServer::start(PerchOptions {
        binary: wrapper,
        data_dir: data_dir.clone(),
        args: s3_origin(&moto.endpoint).0,
        env: moto_keys_env(),
    });
    create_bucket(perch.addr);
    // A body kept in memory (written to the blob's temp file at commit) and one spooled to a file
    // while it arrives (written out while its MD5 is finished).
    let bodies = [pattern(100 << 10, 41), pattern(2 << 20, 42)];
    for (i, body) in bodies.iter().enumerate() {
        let r = Req::object(
            "PUT",
            perch.addr,
            Style::Path,
            &key_path(&format!("orioledb_data/1/traced{i}")),
        )
        .body(body.clone())
        .go(perch.addr);
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    // SIGTERM to perch itself (strace would only detach): strace ends with it.
    let strace_pid = perch.pid().expect("running");
    let children = std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).expect("children");
    let perch_pid = children.split_whitespace().next().expect("perch under strace");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", perch_pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = perch.wait(Duration::from_secs(60));
    assert!(status.success());
    let text = std::fs::read_to_string(&trace).expect("trace");
    // A syscall interrupted by another thread's is split in two lines ("<unfinished ...>", then
    // "<... NAME resumed>"): joined here, at the place where it completed; `started` keeps the
    // place where it began.
    let mut open: std::collections::HashMap<&str, (&str, usize)> = std::collections::HashMap::new();
    let mut joined: Vec<String> = Vec::new();
    let mut started: Vec<usize> = Vec::new();
    for l in text.lines() {
        let pid = l.split_whitespace().next().unwrap_or("");
        if let Some(head) = l.strip_suffix(" <unfinished ...>") {
            open.insert(pid, (head, joined.len()));
            continue;
        }
        if let Some(at) = l.find(" resumed>")
            && l.contains("<... ")
            && let Some((head, start)) = open.remove(pid)
        {
            joined.push(format!("{head}{}", &l[at + " resumed>".len()..]));
            started.push(start);
            continue;
        }
        started.push(joined.len());
        joined.push(l.to_owned());
    }
    let lines: Vec<&str> = joined.iter().map(String::as_str).collect();
    let find = |from: usize, what: &dyn Fn(&str) -> bool, name: &str| -> usize {
        lines[from..]
            .iter()
            .position(|l| what(l))
            .map(|i| from + i)
            .unwrap_or_else(|| {
                panic!(
                    "no {name} after line {from} in the trace:\n{}",
                    lines[from..].join("\n")
                )
            })
    };
    let blobs = data_dir.join("cache").join("blobs");
    let tmp_dir = format!("{}/tmp/", blobs.display());
    // Each PUT's answer comes after its own syncs, in order; the second PUT is searched for after
    // the first one's answer.
    let mut from = 0;
    for put in 0..bodies.len() {
        // rename("<temp>", "<blob>") = 0, from the blob directory's temp dir to a blob name (a
        // spooled body is first renamed from the spool into that temp dir).
        let rename = find(
            from,
            &|l| {
                let mut quoted = l.split('"').skip(1).step_by(2);
                let (source, target) = (quoted.next().unwrap_or(""), quoted.next().unwrap_or(""));
                l.contains("rename")
                    && source.starts_with(&tmp_dir)
                    && target.starts_with(&format!("{}/", blobs.display()))
                    && !target.starts_with(&tmp_dir)
                    && l.ends_with("= 0")
            },
            "rename of the blob",
        );
        // The blob's name and its directory's.
        let blob = lines[rename].split('"').nth(3).expect("the rename's target").to_owned();
        let dir = blob.rsplit_once('/').expect("a directory").0.to_owned();
        let synced = |path: &str| {
            let fd_of = format!("<{path}>)");
            find(
                rename,
                &|l| (l.contains("fsync(") || l.contains("fdatasync(")) && l.contains(&fd_of) && l.ends_with("= 0"),
                &format!("fsync of {path}"),
            )
        };
        let (blob_fsync, dir_fsync) = (synced(&blob), synced(&dir));
        for (what, at) in [("blob", blob_fsync), ("directory", dir_fsync)] {
            assert!(
                started[at] > rename,
                "PUT {put}: the {what} fsync began before the rename:\n{}",
                lines[started[at]..=rename].join("\n")
            );
        }
        let synced_both = blob_fsync.max(dir_fsync);
        let wal_sync = find(
            synced_both,
            &|l| (l.contains("fdatasync(") || l.contains("fsync(")) && l.contains(".log>") && l.contains("/index/"),
            "sync of RocksDB's log",
        );
        // The log's sync that carries the batch began once both fsyncs had returned.
        let wal_write = lines[synced_both..wal_sync]
            .iter()
            .position(|l| l.contains("write(") && l.contains(".log>") && l.contains("/index/"));
        assert!(
            wal_write.is_some() || started[wal_sync] > synced_both,
            "PUT {put}: RocksDB's log was synced before the blob and its directory"
        );
        let answer = find(wal_sync, &|l| l.contains("HTTP/1.1 200"), "the HTTP 200 answer");
        let early = lines[rename..wal_sync].iter().find(|l| l.contains("HTTP/1.1 200"));
        assert!(
            early.is_none(),
            "PUT {put}: an answer was written before the syncs: {early:?}"
        );
        from = answer + 1;
    }
}

/// A client multipart upload is staged locally, acknowledged as one version, read back at once,
/// and uploaded with the same part layout: moto ends with the ETag and checksum the client got.
#[test]
fn multipart_uploads_are_staged_locally_and_uploaded_with_the_same_layout() {
    let _turn = machine::share();
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put("warm", b"bucket known"); // the bucket check happens before the outage
    s.faults(r#"{"outage": true}"#);
    let c = s.sdk();
    let key = "dumps/big.bin";
    let parts = [pattern(5 << 20, 1), pattern(1 << 20, 2)];
    let (etag, checksum) = s.rt.block_on(async {
        let up = c
            .create_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .content_type("application/x-test")
            .send()
            .await
            .expect("create");
        let id = up.upload_id().expect("id").to_owned();
        let mut done = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let n = i as i32 + 1;
            let out = c
                .upload_part()
                .bucket(BUCKET)
                .key(key)
                .upload_id(&id)
                .part_number(n)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(ByteStream::from(p.clone()))
                .send()
                .await
                .expect("part");
            done.push(
                CompletedPart::builder()
                    .part_number(n)
                    .e_tag(out.e_tag().expect("etag"))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                    .build(),
            );
        }
        let listed = c
            .list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .expect("list uploads");
        assert_eq!(listed.uploads().len(), 1, "the staged upload is listed");
        let out = c
            .complete_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
            .send()
            .await
            .expect("complete");
        (
            out.e_tag().expect("etag").to_owned(),
            out.checksum_crc32().map(str::to_owned),
        )
    });
    assert!(etag.ends_with("-2\""), "a multipart ETag: {etag}");
    let whole: Vec<u8> = parts.concat();
    assert_eq!(perch_get(&s, key), Some(whole.clone()), "read back during the outage");
    assert_eq!(s.in_moto(key), None);
    s.no_faults();
    s.flush(Duration::from_secs(60));
    let m = s.moto_sdk();
    let head =
        s.rt.block_on(
            m.head_object()
                .bucket(BUCKET)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send(),
        )
        .expect("head moto");
    assert_eq!(
        head.e_tag(),
        Some(etag.as_str()),
        "moto holds the layout the client completed"
    );
    assert_eq!(head.content_type(), Some("application/x-test"));
    if let (Some(want), Some(got)) = (&checksum, head.checksum_crc32()) {
        // moto drops the `-N` of composite checksums on HEAD (docs/s3-compatibility.md).
        assert!(
            want.starts_with(got.trim_end_matches(|c: char| c == '-' || c.is_ascii_digit())),
            "{want} vs {got}"
        );
    }
    assert_eq!(s.in_moto(key), Some(whole));
}

#[test]
fn a_copy_of_a_pending_source_is_made_locally() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put("warm", b"bucket known");
    s.faults(r#"{"outage": true}"#);
    s.put("src/a", b"only local so far");
    let c = s.sdk();
    let out =
        s.rt.block_on(
            c.copy_object()
                .bucket(BUCKET)
                .key("dst/a")
                .copy_source(copy_source(BUCKET, "src/a"))
                .send(),
        )
        .expect("copy");
    let etag = out.copy_object_result().and_then(|r| r.e_tag()).map(str::to_owned);
    assert_eq!(etag.as_deref(), Some(md5_etag(b"only local so far").as_str()));
    assert_eq!(perch_get(&s, "dst/a").as_deref(), Some(&b"only local so far"[..]));
    // Onto itself without a change: refused as S3 refuses it, pending or not; with REPLACE, made.
    expect_err(
        s.rt.block_on(
            c.copy_object()
                .bucket(BUCKET)
                .key("src/a")
                .copy_source(copy_source(BUCKET, "src/a"))
                .send(),
        ),
        400,
        Some("InvalidRequest"),
    );
    s.rt.block_on(
        c.copy_object()
            .bucket(BUCKET)
            .key("src/a")
            .copy_source(copy_source(BUCKET, "src/a"))
            .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
            .content_type("text/plain")
            .send(),
    )
    .expect("copy onto itself with REPLACE");
    assert_eq!(perch_get(&s, "src/a").as_deref(), Some(&b"only local so far"[..]));
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("dst/a").as_deref(), Some(&b"only local so far"[..]));
}

#[test]
fn strict_barriers_are_acknowledged_once_they_and_all_before_them_are_in_the_origin() {
    let _turn = machine::share();
    let s = Stack::start(&["--strict-barriers"]);
    let _log = s.log_on_panic();
    s.put("orioledb_data/3/part", b"before the barrier");
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT"}"#);
    s.put("orioledb_data/3/part2", b"also before");
    let addr = s.addr();
    let req = s.req("PUT", "data/3/global/pg_control").body(b"control 3".to_vec());
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let barrier = std::thread::spawn(move || {
        let r = req.go(addr);
        flag.store(true, Ordering::SeqCst);
        r.status
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !done.load(Ordering::SeqCst),
        "a strict barrier was acknowledged before the origin had it"
    );
    s.no_faults();
    assert_eq!(barrier.join().expect("barrier"), 200);
    // Acknowledged: it and everything before it are in the origin already.
    assert_eq!(
        s.in_moto("data/3/global/pg_control").as_deref(),
        Some(&b"control 3"[..])
    );
    assert_eq!(s.in_moto("orioledb_data/3/part2").as_deref(), Some(&b"also before"[..]));
}

#[test]
fn upload_headers_are_added_to_the_uploads_of_matching_keys() {
    let _turn = machine::share();
    let s = Stack::start(&[
        "--upload-header",
        "orioledb_data/*=Cache-Control: max-age=60",
        "--upload-header",
        "*=x-amz-meta-written-by: perch",
    ]);
    let _log = s.log_on_panic();
    s.put("orioledb_data/1/x", b"with headers");
    s.put("other", b"meta only");
    s.flush(Duration::from_secs(60));
    let m = s.moto_sdk();
    let head =
        s.rt.block_on(m.head_object().bucket(BUCKET).key("orioledb_data/1/x").send())
            .expect("head");
    assert_eq!(head.cache_control(), Some("max-age=60"));
    assert_eq!(
        head.metadata().and_then(|m| m.get("written-by")).map(String::as_str),
        Some("perch")
    );
    let head =
        s.rt.block_on(m.head_object().bucket(BUCKET).key("other").send())
            .expect("head");
    assert_eq!(head.cache_control(), None);
    assert_eq!(
        head.metadata().and_then(|m| m.get("written-by")).map(String::as_str),
        Some("perch")
    );
}

/// A journal record whose blob is gone is a bug (the blob is synced before the record): Perch
/// refuses to start and names it, rather than skip an acknowledged write.
#[test]
fn a_journal_record_without_its_blob_stops_the_start() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put("warm", b"bucket known");
    s.flush(Duration::from_secs(60));
    let before: std::collections::BTreeSet<_> = s.blob_files().into_iter().map(|(p, _)| p).collect();
    s.faults(r#"{"outage": true}"#);
    s.put("orioledb_data/7/lost", b"acknowledged, then its blob vanishes");
    s.kill();
    let added: Vec<_> = s
        .blob_files()
        .into_iter()
        .filter(|(p, _)| !before.contains(p))
        .collect();
    assert_eq!(added.len(), 1, "one new blob: {added:?}");
    std::fs::remove_file(&added[0].0).expect("remove the blob");
    let stderr = s.start_refused();
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(stderr.contains("orioledb_data/7/lost"), "the record is named: {stderr}");
}

#[test]
fn a_second_stop_signal_ends_the_drain_at_once() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--drain-timeout", "60s"]);
    let _log = s.log_on_panic();
    s.put("warm", b"bucket known");
    s.faults(r#"{"outage": true}"#);
    s.put("orioledb_data/1/a", b"left in the journal");
    s.perch().send_sigterm();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    s.stop_clean(); // the second SIGTERM
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the drain went on after a second signal"
    );
    s.no_faults();
    s.start_again();
    s.flush(Duration::from_secs(60));
    assert_eq!(
        s.in_moto("orioledb_data/1/a").as_deref(),
        Some(&b"left in the journal"[..])
    );
}

/// A client that gave up waiting for a completion (a write-through key waits for the origin) and
/// sends it again gets the first completion's answer once there is one, not NoSuchUpload.
#[test]
fn a_completion_sent_again_while_the_first_waits_on_the_origin_gets_its_answer() {
    use aws_sdk_s3::primitives::ByteStream;

    let _turn = machine::share();
    let s = Stack::start(&["--write-mode", "*=write_through", "--origin-retry-deadline", "30s"]);
    let _log = s.log_on_panic();
    let c = s.sdk();
    let key = "mp/again";
    let body = pattern(5 << 20, 78);
    let (id, part) = s.rt.block_on(async {
        let id = c
            .create_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .expect("create")
            .upload_id
            .expect("upload id");
        let part = c
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .part_number(1)
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .expect("upload part")
            .e_tag
            .expect("part ETag");
        (id, part)
    });
    let complete = || {
        c.complete_multipart_upload()
            .bucket(BUCKET)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(&part).build())
                    .build(),
            )
            .send()
    };
    s.faults(r#"{"outage": true}"#);
    let (first, again) = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(1500));
            s.no_faults();
        });
        s.rt.block_on(async {
            let first = complete();
            let again = async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                complete().await
            };
            futures::join!(first, again)
        })
    });
    let first = first.expect("the first completion");
    let again = again.expect("the completion sent again");
    assert_eq!(again.e_tag(), first.e_tag());
    assert_eq!(s.in_moto(key), Some(body));
}

/// A delimiter listing whose origin page holds only common prefixes whose every key is deleted
/// here (pending) goes on past them: the later prefixes are listed, in both listing versions
/// (the page came back empty and said it was the last one).
#[test]
fn a_listing_goes_on_past_prefixes_whose_keys_are_all_deleted_here() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    for i in 0..4 {
        s.put(&format!("lp/sub{i}/x"), b"x");
    }
    s.flush(Duration::from_secs(60));
    // The deletes stay pending: their uploads are refused for now; listings still reach moto.
    s.faults(r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_method": "DELETE"}"#);
    delete(&s, "lp/sub0/x");
    delete(&s, "lp/sub1/x");
    for v1 in [false, true] {
        for max_keys in [1, 2, 1000] {
            let (keys, prefixes) = list_all(&s, "lp/", Some("/"), max_keys, v1);
            assert!(keys.is_empty(), "{keys:?}");
            assert_eq!(
                prefixes,
                ["lp/sub2/", "lp/sub3/"],
                "max-keys {max_keys}, {}",
                if v1 { "ListObjects" } else { "ListObjectsV2" }
            );
        }
    }
    s.no_faults();
}

/// A conditional PUT on a key whose newest version is acknowledged here and not yet uploaded
/// is 412 at once when that version already fails its condition (If-None-Match: *, or an
/// If-Match naming another ETag): it waited for the upload and answered 503 SlowDown when the
/// origin was slow, an answer OrioleDB's lock cannot take.
#[test]
fn a_conditional_put_that_a_pending_version_fails_is_412_at_once() {
    let _turn = machine::share();
    let s = Stack::start(&["--origin-retry-deadline", "5s"]);
    let _log = s.log_on_panic();
    s.put("warm", b"bucket known");
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "cond/", "error_kinds": ["503"]}"#);
    s.put("cond/lock", b"held here");
    for (name, value) in [
        ("If-None-Match", "*"),
        ("If-Match", "\"00000000000000000000000000000000\""),
    ] {
        let started = Instant::now();
        let r = s
            .req("PUT", "cond/lock")
            .header(name, value)
            .body(b"taker".to_vec())
            .go(s.addr());
        assert_eq!(r.status, 412, "{name}: {value}: {}", r.summary());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}: answered after {:?}",
            started.elapsed()
        );
    }
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert_eq!(s.in_moto("cond/lock"), Some(b"held here".to_vec()));
}

/// A client that gives up on a request while Perch waits for the origin: the request stops
/// counting as in flight. It stayed counted for good, so that a drain never saw its quiet period
/// and ran to --drain-timeout with an empty journal.
#[test]
fn a_request_its_client_gave_up_on_is_no_longer_in_flight() {
    use std::io::Write;
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put("given-up/a", b"listed");
    s.faults(r#"{"latency_ms": 5000}"#);
    let (head, _) = Req::bucket("GET", s.addr(), Style::Path, "list-type=2&prefix=given-up%2F").head();
    let mut stream = std::net::TcpStream::connect(s.addr()).expect("connect");
    stream.write_all(&head).expect("send the listing");
    let deadline = Instant::now() + Duration::from_secs(4);
    while s.metric("perch_requests_in_flight") != 1.0 {
        assert!(Instant::now() < deadline, "the listing never counted as in flight");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stream);
    // The origin answers after its latency; what Perch was doing for the client is over by then.
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.metric("perch_requests_in_flight") != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the request its client gave up on is still in flight"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A write-through PUT (WAL) the origin refuses for good before the answer: the client hears the
/// origin's answer (403 AccessDenied, as direct), and the version is not kept, served or listed,
/// since it was never acknowledged. It was a 500 InternalError, and the refused body stayed,
/// served and listed, with Perch unhealthy until an operator dropped it.
#[test]
fn a_write_through_put_the_origin_refuses_is_answered_as_the_origin_did_and_not_kept() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let key = "wal/000000010000000000000042";
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT", "error_kinds": ["403"]}"#);
    let r = s.req("PUT", key).body(b"refused segment".to_vec()).go(s.addr());
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_eq!(r.code().as_deref(), Some("AccessDenied"), "{}", r.summary());
    s.no_faults();
    let got = s.req("GET", key).go(s.addr());
    assert_eq!(got.status, 404, "the refused body is served: {}", got.summary());
    let listed = Req::bucket("GET", s.addr(), Style::Path, "list-type=2&prefix=wal%2F").go(s.addr());
    assert!(
        !listed.text().contains(key),
        "the refused key is listed: {}",
        listed.text()
    );
    let st = s.status();
    assert!(st["failed"].as_array().is_some_and(|f| f.is_empty()), "{st}");
    assert_eq!(st["healthy"], true, "{st}");
    // Sent again once the origin takes it: written through as usual.
    s.put(key, b"accepted segment");
    assert_eq!(s.req("GET", key).go(s.addr()).body, b"accepted segment");
}

/// A bucket holding a write the origin refused for good: DeleteBucket is 409 BucketNotEmpty at
/// once (the refused object is still read and listed here), and a configuration change that waits
/// for the bucket's writes (an ACL) no longer waits for the refused one, which it may be what
/// fixes. Both used to wait, then answer 503 SlowDown, at every try.
#[test]
fn a_refused_write_neither_blocks_bucket_configuration_nor_lets_the_bucket_be_deleted() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT", "match_key_prefix": "refused/", "error_kinds": ["403"]}"#);
    s.put("refused/k", b"kept locally");
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.status()["failed"].as_array().is_none_or(|f| f.is_empty()) {
        assert!(Instant::now() < deadline, "the refusal never showed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = Instant::now();
    let acl = Req::bucket("PUT", s.addr(), Style::Path, "acl")
        .header("x-amz-acl", "private")
        .go(s.addr());
    assert_eq!(acl.status, 200, "{}", acl.summary());
    let deleted = Req::bucket("DELETE", s.addr(), Style::Path, "").go(s.addr());
    assert_eq!(deleted.status, 409, "{}", deleted.summary());
    assert_eq!(
        deleted.code().as_deref(),
        Some("BucketNotEmpty"),
        "{}",
        deleted.summary()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "they waited {:?} for a refused write",
        started.elapsed()
    );
    assert_eq!(s.req("GET", "refused/k").go(s.addr()).body, b"kept locally");
}

/// A request an earlier Perch sent and the origin applied late (kill -9 while the origin held
/// it) lands right after the restarted Perch uploaded the key's newest version: the HEAD after
/// that upload finds another copy, and the version goes up again, so the origin ends with the
/// last acknowledged write. It used to be released as uploaded, the origin keeping the old copy.
/// Here the late request is written to moto straight, while the proxy holds that HEAD back.
#[test]
fn an_older_copy_landing_right_after_an_upload_is_uploaded_over_again() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let key = "orioledb_data/1/late";
    let newest = pattern(200_000, 91);
    let late = pattern(200_000, 92);
    s.put(key, b"the first version");
    s.flush(Duration::from_secs(30));
    // Every origin request now waits 1.5 s at the proxy: the upload, then its HEAD.
    s.faults(r#"{"latency_ms": 1500}"#);
    s.put(key, &newest);
    eventually("the upload landed", || s.in_moto(key).as_deref() == Some(&newest[..]));
    // The HEAD is held at the proxy: the late copy lands before the origin answers it.
    s.put_behind_perchs_back(key, &late);
    s.no_faults();
    s.flush(Duration::from_secs(30));
    assert!(
        s.in_moto(key).as_deref() == Some(&newest[..]),
        "the origin kept the late copy after the newest version was released"
    );
    assert_eq!(perch_get(&s, key).as_deref(), Some(&newest[..]));
}

/// The same for a DELETE: a copy that lands at the origin right after the DELETE's upload (a late
/// request of an earlier Perch, or another writer) is deleted again, not left there to be served
/// once the tombstone is released (review of 2026-12-07).
#[test]
fn a_copy_landing_right_after_an_uploaded_delete_is_deleted_again() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let key = "orioledb_data/1/deleted";
    s.put(key, b"the first version");
    s.flush(Duration::from_secs(30));
    // The DELETE reaches moto at once; its answer is held 3 s at the proxy.
    s.faults(r#"{"fail_next": 1, "error_kinds": ["held"], "stall_ms": 3000, "match_method": "DELETE"}"#);
    let r = s.req("DELETE", key).go(s.addr());
    assert_eq!(r.status, 204, "{}", r.summary());
    eventually("the DELETE landed", || s.in_moto(key).is_none());
    s.put_behind_perchs_back(key, b"a late copy");
    s.flush(Duration::from_secs(30));
    assert_eq!(
        s.in_moto(key),
        None,
        "the origin kept the late copy after the DELETE was released"
    );
    assert_eq!(perch_get(&s, key), None);
}

/// No write is acknowledged into a bucket that DeleteBucket removes: a PUT that had checked its
/// bucket and waited for room (`--dirty-bytes-max`) was acknowledged after DeleteBucket, which
/// saw nothing pending, had removed the bucket at the origin; its upload was then refused for
/// good, and it held back every later barrier. DeleteBucket now waits for the writes under way,
/// and a bucket deleted through Perch is asked of the origin again before a write, whatever the
/// cache still held of it (review of 7eca5ca).
#[test]
fn no_write_is_acknowledged_into_a_bucket_deletebucket_removes() {
    let _turn = machine::share();
    let s = Stack::start(&["--dirty-bytes-max", "1MiB"]);
    let _log = s.log_on_panic();
    let c = s.sdk();
    for b in ["dba", "dbb", "dbc"] {
        ok(s.rt.block_on(c.create_bucket().bucket(b).send()), b);
    }
    // A cached object of `dbc` that the origin loses behind Perch's back (a lifecycle rule).
    let put = c
        .put_object()
        .bucket("dbc")
        .key("obj")
        .body(b"x".to_vec().into())
        .send();
    ok(s.rt.block_on(put), "PUT dbc/obj");
    s.flush(Duration::from_secs(30));
    let gone = s.moto_sdk().delete_object().bucket("dbc").key("obj").send();
    ok(s.rt.block_on(gone), "delete behind Perch's back");

    // Uploads are refused for now: the backlog passes --dirty-bytes-max, and a PUT into `dbb`
    // waits for room.
    s.faults(r#"{"error_rate": 1.0, "match_method": "PUT"}"#);
    let big = c
        .put_object()
        .bucket("dba")
        .key("big")
        .body(vec![7u8; 2 << 20].into())
        .send();
    ok(s.rt.block_on(big), "PUT dba/big");
    let waiting = {
        let c = c.clone();
        let rt = s.rt.handle().clone();
        std::thread::spawn(move || {
            let put = c
                .put_object()
                .bucket("dbb")
                .key("k")
                .body(b"acknowledged".to_vec().into());
            rt.block_on(put.send()).is_ok()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let delete = {
        let c = c.clone();
        let rt = s.rt.handle().clone();
        std::thread::spawn(move || rt.block_on(c.delete_bucket().bucket("dbb").send()).is_ok())
    };
    std::thread::sleep(Duration::from_millis(1500));
    s.no_faults();
    let acknowledged = waiting.join().expect("PUT thread");
    let deleted = delete.join().expect("DeleteBucket thread");
    if acknowledged {
        assert!(!deleted, "DeleteBucket removed a bucket holding an acknowledged write");
        s.flush(Duration::from_secs(30));
        let at_origin = s.moto_sdk().head_object().bucket("dbb").key("k").send();
        ok(s.rt.block_on(at_origin), "the acknowledged write reached the origin");
    }

    // `dbc` is empty at the origin, though Perch still caches `obj`: deleted, it stays gone.
    ok(
        s.rt.block_on(c.delete_bucket().bucket("dbc").send()),
        "DeleteBucket dbc",
    );
    expect_err(s.rt.block_on(c.get_object().bucket("dbc").key("obj").send()), 404, None);
    let put = c
        .put_object()
        .bucket("dbc")
        .key("new")
        .body(b"lost".to_vec().into())
        .send();
    expect_err(s.rt.block_on(put), 404, Some("NoSuchBucket"));
}
