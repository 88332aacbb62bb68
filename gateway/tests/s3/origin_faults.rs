//! Origin faults injected by the origin proxy between perch and moto: retried, or passed on.
//!
//! Transient faults are retried until `--origin-retry-deadline` and are invisible to the client
//! while the origin recovers in time; past the deadline the client gets 503 SlowDown; permanent
//! answers (404, 412) pass through at once. Clients are OrioleDB-shaped raw HTTP.
//!
//! A write-back PUT is acknowledged once it is in perch's journal, before the origin sees it; the
//! tests about a PUT reaching the origin start perch with every key `write_through`, so that the
//! PUT is acknowledged only once the origin has it. The objects the GET tests read are put straight
//! into moto, so that they are in the origin and not in perch's cache (a write through perch is a
//! cache entry at once).

use std::io::Write;
use std::time::{Duration, Instant};

use perch_testkit::bodies::{md5_etag, pattern};
use perch_testkit::raw_client::{BUCKET, Req, Resp, Style};

use crate::support::machine;
use crate::support::raw::assert_error;
use crate::support::stack::Stack;

/// Every key write-through: a PUT is acknowledged once the origin has it, as before write-back.
const WRITE_THROUGH: &[&str] = &["--write-mode", "*=write_through"];

/// The uploader's retries (it sends written versions to the origin, and retries a transient fault
/// by itself, for as long as it takes; `perch_origin_retries_total` counts the read path's).
const UPLOAD_RETRIES: &str = "perch_uploads_total{result=\"retried\"}";

/// moto, the fault proxy and perch with `--origin-retry-deadline deadline` and the flags `args`.
#[track_caller]
fn start(deadline: &str, args: &[&str]) -> Stack {
    let mut all = vec!["--origin-retry-deadline", deadline];
    all.extend_from_slice(args);
    Stack::start(&all)
}

/// PUT virtual-hosted, as OrioleDB.
fn put(stack: &Stack, key: &str, body: &[u8]) -> Resp {
    Req::object("PUT", stack.addr(), Style::Virtual, key)
        .body(body.to_vec())
        .go(stack.addr())
}

/// PUT virtual-hosted with `If-None-Match: *`, as OrioleDB takes its lock.
fn put_if_none_match(stack: &Stack, key: &str, body: &[u8]) -> Resp {
    Req::object("PUT", stack.addr(), Style::Virtual, key)
        .header("If-None-Match", "*")
        .body(body.to_vec())
        .go(stack.addr())
}

/// GET virtual-hosted, as OrioleDB.
fn get(stack: &Stack, key: &str) -> Resp {
    Req::object("GET", stack.addr(), Style::Virtual, key).go(stack.addr())
}

#[track_caller]
fn put_ok(stack: &Stack, key: &str, body: &[u8]) {
    let r = put(stack, key, body);
    assert_eq!(r.status, 200, "PUT {key}: {}", r.summary());
    assert_eq!(r.header("ETag"), Some(md5_etag(body).as_str()), "PUT {key}");
}

#[track_caller]
fn get_ok(stack: &Stack, key: &str, body: &[u8]) {
    let r = get(stack, key);
    assert_eq!(r.status, 200, "GET {key}: {}", r.summary());
    assert!(
        r.body == body,
        "GET {key}: wrong bytes ({} of {})",
        r.body.len(),
        body.len()
    );
}

/// The `method` records of `key` must be `injected` faults of `kind` first, then one forwarded
/// request answered `status`. (After an upload the uploader also HEADs the key for the origin's
/// Last-Modified; that record is not one of them.)
#[track_caller]
fn assert_records(stack: &Stack, key: &str, method: &str, kind: &str, injected: usize, status: u64) {
    let records: Vec<_> = stack
        .proxy
        .records_for(key)
        .into_iter()
        .filter(|(m, _, _)| m == method)
        .collect();
    assert_eq!(
        records.len(),
        injected + 1,
        "{method} {key}: expected {injected} injected `{kind}` faults then one forwarded request; got {records:?}"
    );
    for (i, (m, _, inj)) in records.iter().take(injected).enumerate() {
        assert_eq!(m, method, "record {i} of {key}: {records:?}");
        assert_eq!(
            inj.as_deref(),
            Some(kind),
            "record {i} of {key} must be an injected {kind}: {records:?}"
        );
    }
    let (m, st, inj) = &records[injected];
    assert_eq!(m, method, "last record of {key}: {records:?}");
    assert_eq!(
        *inj, None,
        "the last record of {key} must have been forwarded: {records:?}"
    );
    assert_eq!(*st, status, "the forwarded {method} {key}: {records:?}");
}

#[test]
fn put_survives_three_503s_and_lands_once() {
    let _turn = machine::share();
    let stack = start("20s", WRITE_THROUGH);
    let _log = stack.log_on_panic();
    let key = "wal/000000010000000000000003";
    let body = pattern(2 << 20, 1);
    let retries_before = stack.counter(UPLOAD_RETRIES);
    stack.proxy.reset();
    stack.proxy.faults(&format!(
        r#"{{"fail_next":3,"error_kinds":["503"],"match_method":"PUT","match_key_prefix":"{key}"}}"#
    ));
    put_ok(&stack, key, &body);
    assert_eq!(
        stack.proxy.count("PUT", key),
        1,
        "the object must reach moto exactly once: {:?}",
        stack.proxy.counts()
    );
    assert_records(&stack, key, "PUT", "503", 3, 200);
    assert!(
        stack.counter(UPLOAD_RETRIES) >= retries_before + 3.0,
        "{UPLOAD_RETRIES} must count the 3 retries"
    );
    get_ok(&stack, key, &body);
}

/// An origin that refuses the upload carrying the CRC32 Perch adds (its client sent no checksum;
/// here the first PUT of the key is answered 403, a permanent refusal) gets the same upload again
/// without it, and the write lands: an acknowledged write is never refused for good over a header
/// its client never sent.
#[test]
fn an_upload_refused_with_the_crc32_perch_adds_goes_again_without_it() {
    let _turn = machine::share();
    let stack = start("20s", WRITE_THROUGH);
    let _log = stack.log_on_panic();
    let key = "wal/000000010000000000000007";
    let body = pattern(1 << 20, 7);
    stack.proxy.reset();
    stack.proxy.faults(&format!(
        r#"{{"fail_next":1,"error_kinds":["403"],"match_method":"PUT","match_key_prefix":"{key}"}}"#
    ));
    put_ok(&stack, key, &body);
    assert_records(&stack, key, "PUT", "403", 1, 200);
    get_ok(&stack, key, &body);
}

/// An origin that answers 501 NotImplemented to every PUT carrying the CRC32 header Perch adds
/// (S3's answer to a header it does not support) gets the same upload without it at once, and from
/// then on Perch adds none: the next write goes up in one request.
#[test]
fn an_origin_that_does_not_implement_the_crc32_header_gets_uploads_without_it() {
    let _turn = machine::share();
    let stack = start("20s", WRITE_THROUGH);
    let _log = stack.log_on_panic();
    stack.proxy.reset();
    stack.proxy.faults(
        r#"{"error_rate":1.0,"error_kinds":["501"],"match_method":"PUT","match_header":"x-amz-checksum-crc32"}"#,
    );
    let first = "wal/000000010000000000000008";
    let body = pattern(1 << 20, 8);
    put_ok(&stack, first, &body);
    assert_records(&stack, first, "PUT", "501", 1, 200);
    let second = "wal/000000010000000000000009";
    put_ok(&stack, second, &body);
    assert_records(&stack, second, "PUT", "501", 0, 200);
    get_ok(&stack, first, &body);
}

#[test]
fn get_survives_slowdown_500_and_reset() {
    let _turn = machine::share();
    let stack = start("20s", &[]);
    let _log = stack.log_on_panic();
    let body = pattern(300_000, 2);
    for kind in ["slowdown", "500", "reset"] {
        let key = format!("data/1/part-{kind}");
        stack.put_behind_perchs_back(&key, &body);
        stack.proxy.reset();
        stack.proxy.faults(&format!(
            r#"{{"fail_next":2,"error_kinds":["{kind}"],"match_method":"GET","match_key_prefix":"{key}"}}"#
        ));
        get_ok(&stack, &key, &body);
        assert_eq!(
            stack.proxy.count("GET", &key),
            1,
            "{kind}: exactly one GET reached moto: {:?}",
            stack.proxy.counts()
        );
        assert_records(&stack, &key, "GET", kind, 2, 200);
    }
}

#[test]
fn outage_past_the_deadline_gives_503_slowdown() {
    let _turn = machine::share();
    let stack = start("2s", WRITE_THROUGH);
    let _log = stack.log_on_panic();
    let key = "data/orioledb_data/control";
    let body = pattern(1000, 3);
    stack.put_behind_perchs_back(key, &body);
    // perch asks the origin about the bucket once, before its first write: done here, so that the
    // PUT below is the one that waits for the origin.
    put_ok(&stack, "data/before-the-outage", b"1");
    let gave_up_before = stack.counter("perch_origin_gave_up_total");
    let upload_retries_before = stack.counter(UPLOAD_RETRIES);
    stack.proxy.patch(r#"{"outage":true}"#);

    let start = Instant::now();
    let r = get(&stack, key);
    let took = start.elapsed();
    assert_error(
        &r,
        503,
        "SlowDown",
        "GET during an outage longer than the retry deadline",
    );
    assert!(
        took >= Duration::from_secs(2),
        "perch gave up after {took:?}, before the 2 s deadline"
    );
    // The log says why: the origin's 503, not the last attempt the deadline cut short.
    let log = stack.perch().log_text();
    let gave_up = log
        .lines()
        .find(|l| l.contains("origin still failing at the retry deadline") && l.contains("get_object"))
        .unwrap_or_else(|| panic!("no give-up logged for the GET:\n{log}"));
    assert!(
        gave_up.contains("503"),
        "the give-up names the origin's fault: {gave_up}"
    );

    let put_key = "wal/outage-put";
    let put_body = pattern(2 << 20, 4);
    let start = Instant::now();
    let r = put(&stack, put_key, &put_body);
    let took = start.elapsed();
    assert_error(
        &r,
        503,
        "SlowDown",
        "PUT during an outage longer than the retry deadline",
    );
    assert!(
        took >= Duration::from_secs(2),
        "perch gave up after {took:?}, before the 2 s deadline"
    );

    // The GET gave up; the PUT's version did not: the uploader keeps retrying it.
    let gave_up = stack.counter("perch_origin_gave_up_total");
    assert!(
        gave_up >= gave_up_before + 1.0,
        "perch_origin_gave_up_total must count the GET's give-up: {gave_up_before} -> {gave_up}"
    );
    let upload_retries = stack.counter(UPLOAD_RETRIES);
    assert!(
        upload_retries >= upload_retries_before + 1.0,
        "{UPLOAD_RETRIES} must count the upload's retries: {upload_retries_before} -> {upload_retries}"
    );
    // The forwarded requests were all refused by the proxy: nothing reached moto.
    assert_eq!(
        stack.proxy.count("PUT", put_key),
        0,
        "nothing reached moto during the outage: {:?}",
        stack.proxy.counts()
    );
    // The 503 SlowDown says the write stays queued: once the origin is back, it lands, once.
    stack.proxy.patch(r#"{"outage":false}"#);
    stack.flush(Duration::from_secs(60));
    assert_eq!(
        stack.proxy.count("PUT", put_key),
        1,
        "the queued write reaches moto once after the outage: {:?}",
        stack.proxy.counts()
    );
    get_ok(&stack, put_key, &put_body);
    get_ok(&stack, key, &body);
}

#[test]
fn outage_shorter_than_the_deadline_is_invisible() {
    let _turn = machine::share();
    let stack = start("5s", WRITE_THROUGH);
    let _log = stack.log_on_panic();
    let key = "data/1/orioledb_data/short-outage";
    let body = pattern(1 << 20, 5);
    stack.put_behind_perchs_back(key, &body);
    // perch asks the origin about the bucket once, before its first write: done here, so that the
    // PUT below is the one that waits out the outage.
    put_ok(&stack, "data/before-the-outage", b"1");
    stack.proxy.reset();
    stack.proxy.patch(r#"{"outage":true}"#);
    let control = stack.proxy;
    let ender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        control.patch(r#"{"outage":false}"#);
    });
    let start = Instant::now();
    let r = get(&stack, key);
    let took = start.elapsed();
    ender.join().expect("the thread ending the outage");
    assert_eq!(r.status, 200, "GET across a 1 s outage (deadline 5 s): {}", r.summary());
    assert!(r.body == body, "GET across an outage: wrong bytes");
    assert!(
        took >= Duration::from_secs(1),
        "the GET cannot finish before the outage ends ({took:?})"
    );
    let records = stack.proxy.records_for(key);
    assert!(
        records.len() >= 2
            && records[..records.len() - 1]
                .iter()
                .all(|r| r.2.as_deref() == Some("outage")),
        "outage answers, then one forwarded GET: {records:?}"
    );
    assert_eq!(
        records.last().map(|r| (r.1, r.2.clone())),
        Some((200, None)),
        "{records:?}"
    );

    // The same for a PUT (with Expect: 100-continue).
    let key2 = "wal/short-outage-put";
    let body2 = pattern(2 << 20, 6);
    stack.proxy.patch(r#"{"outage":true}"#);
    let control = stack.proxy;
    let ender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        control.patch(r#"{"outage":false}"#);
    });
    let r = put(&stack, key2, &body2);
    ender.join().expect("the thread ending the outage");
    assert_eq!(r.status, 200, "PUT across a 1 s outage: {}", r.summary());
    assert_eq!(stack.proxy.count("PUT", key2), 1, "{:?}", stack.proxy.counts());
    get_ok(&stack, key2, &body2);
}

#[test]
fn permanent_answers_pass_through_at_once() {
    let _turn = machine::share();
    let stack = start("20s", &[]);
    let _log = stack.log_on_panic();
    let retries_before = stack.counter("perch_origin_retries_total");

    // GET of a missing key: one upstream GET, 404 NoSuchKey.
    let missing = "data/orioledb_data/missing-control";
    stack.proxy.reset();
    let r = get(&stack, missing);
    assert_error(&r, 404, "NoSuchKey", "GET of a missing key");
    let records = stack.proxy.records_for(missing);
    assert_eq!(records.len(), 1, "exactly one upstream request: {records:?}");
    assert_eq!(records[0], ("GET".to_owned(), 404, None), "{records:?}");

    // The lock taken, then a conditional PUT on it: 412 after exactly one upstream PUT.
    let lock = "data/orioledb_data/s3_lock";
    let r = put_if_none_match(&stack, lock, b"1111111\n");
    assert_eq!(r.status, 200, "first lock PUT: {}", r.summary());
    stack.proxy.reset();
    let r = put_if_none_match(&stack, lock, b"2222222\n");
    assert_error(&r, 412, "PreconditionFailed", "conditional PUT on an existing key");
    assert_eq!(stack.proxy.count("PUT", lock), 1, "{:?}", stack.proxy.counts());
    let records = stack.proxy.records_for(lock);
    assert_eq!(
        records,
        vec![("PUT".to_owned(), 412, None)],
        "one upstream PUT, nothing else (a 412 is not followed by a HEAD: there was no retry)"
    );
    get_ok(&stack, lock, b"1111111\n");
    assert_eq!(
        stack.counter("perch_origin_retries_total"),
        retries_before,
        "permanent answers must not be retried"
    );
}

/// A 501 NotImplemented (S3's answer to a header it does not support: here to a conditional
/// DELETE) is passed on at once, not retried until `--origin-retry-deadline` and answered 503
/// SlowDown: no retry of the same request changes it, and the client retried the 503 for ever.
#[test]
fn a_501_from_the_origin_is_passed_on_at_once() {
    let _turn = machine::share();
    let stack = start("20s", &[]);
    let _log = stack.log_on_panic();
    let key = "conditional/delete";
    put_ok(&stack, key, b"v1");
    stack.flush(Duration::from_secs(30));
    stack.faults(r#"{"error_rate":1.0,"error_kinds":["501"],"match_method":"DELETE"}"#);
    stack.proxy.reset();
    let started = Instant::now();
    let r = Req::object("DELETE", stack.addr(), Style::Virtual, key)
        .header("If-Match", &md5_etag(b"v1"))
        .go(stack.addr());
    assert_error(
        &r,
        501,
        "NotImplemented",
        "a conditional DELETE the origin does not implement",
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?}: retried as a fault",
        started.elapsed()
    );
    let records = stack.proxy.records_for(key);
    assert_eq!(records.len(), 1, "one DELETE sent, not retried: {records:?}");
    stack.no_faults();
    get_ok(&stack, key, b"v1");
}

#[test]
fn stalled_origin_requests_are_retried() {
    let _turn = machine::share();
    let stack = start("5s", WRITE_THROUGH);
    let _log = stack.log_on_panic();
    let key = "data/1/stalled";
    let body = pattern(1 << 20, 7);
    // perch asks the origin about the bucket once, before its first write: done here.
    put_ok(&stack, "data/before-the-stall", b"1");
    // A stalled PUT (held 500 ms, then the connection is reset): retried, lands once.
    stack.proxy.reset();
    stack.proxy.faults(&format!(
        r#"{{"fail_next":1,"error_kinds":["stall"],"stall_ms":500,"match_method":"PUT","match_key_prefix":"{key}"}}"#
    ));
    put_ok(&stack, key, &body);
    assert_eq!(stack.proxy.count("PUT", key), 1, "{:?}", stack.proxy.counts());
    assert_records(&stack, key, "PUT", "stall", 1, 200);
    // A stalled GET, of an object in the origin and not in perch's cache (the PUT above made
    // `key` a cache entry).
    let key = "data/1/stalled-get";
    stack.put_behind_perchs_back(key, &body);
    stack.proxy.reset();
    stack.proxy.faults(&format!(
        r#"{{"fail_next":1,"error_kinds":["stall"],"stall_ms":500,"match_method":"GET","match_key_prefix":"{key}"}}"#
    ));
    let start = Instant::now();
    get_ok(&stack, key, &body);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "the stall held the first attempt"
    );
    assert_records(&stack, key, "GET", "stall", 1, 200);
}

/// A bucket call waits for the bucket's pending writes, but answers 503 SlowDown within 30 s even
/// under a longer retry deadline: the SDKs' read timeout (60 s for botocore) would otherwise end
/// the wait with no answer at all, and their retries would wait again from the start.
#[test]
fn a_bucket_call_behind_pending_writes_answers_before_an_sdks_read_timeout() {
    let _turn = machine::share();
    let stack = start("120s", &["--write-mode", "*=write_back"]);
    let _log = stack.log_on_panic();
    put_ok(&stack, "cfg/before-the-outage", b"1");
    stack.proxy.patch(r#"{"outage":true}"#);
    put_ok(&stack, "cfg/pending", &pattern(1000, 5));

    let start = Instant::now();
    let r = Req::bucket("PUT", stack.addr(), Style::Path, "versioning")
        .body(
            "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Status>Suspended</Status></VersioningConfiguration>",
        )
        .go(stack.addr());
    let took = start.elapsed();
    assert_error(&r, 503, "SlowDown", "PutBucketVersioning behind a pending write");
    assert!(
        (Duration::from_secs(29)..Duration::from_secs(45)).contains(&took),
        "answered after {took:?}: not within the 30 s bound"
    );
    stack.proxy.patch(r#"{"outage":false}"#);
}

/// A configuration or bucket call to an origin that keeps failing answers 503 SlowDown within
/// about 10 s, not after the whole retry deadline: people and their tools make these calls (an
/// SDK retries a SlowDown itself), never OrioleDB, whose object requests still wait it out.
#[test]
fn a_configuration_call_to_a_failing_origin_answers_within_seconds() {
    let _turn = machine::share();
    let stack = start("120s", &[]);
    let _log = stack.log_on_panic();
    put_ok(&stack, "cfg/before-the-outage", b"1");
    stack.proxy.patch(r#"{"outage":true}"#);

    for (method, sub) in [("GET", "versioning"), ("GET", "location")] {
        let start = Instant::now();
        let r = Req::bucket(method, stack.addr(), Style::Path, sub).go(stack.addr());
        let took = start.elapsed();
        assert_error(&r, 503, "SlowDown", &format!("{method} ?{sub} during an outage"));
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(20)).contains(&took),
            "{method} ?{sub} answered after {took:?}: not after about 10 s of retries"
        );
    }
    stack.proxy.patch(r#"{"outage":false}"#);
    let r = Req::bucket("GET", stack.addr(), Style::Path, "versioning").go(stack.addr());
    assert_eq!(
        r.status,
        200,
        "GET ?versioning once the origin is back: {}",
        r.summary()
    );
}

/// A conditional request the origin carried out but whose answer was lost (the proxy forwards it,
/// waits for the origin's answer, then resets the connection) is retried, and the retry's refusal
/// is read as the success it hides: 412 to a conditional PUT whose body is now the origin's, 404
/// to a conditional DELETE of what is now gone. The client sees 200 and 204, as if nothing was
/// lost.
#[test]
fn a_conditional_request_whose_answer_was_lost_is_answered_as_the_success_it_was() {
    let _turn = machine::share();
    let stack = start("20s", &[]);
    let _log = stack.log_on_panic();
    let key = "orioledb_data/owner";
    let lose_next = |method: &str| {
        stack.proxy.faults(&format!(
            r#"{{"fail_next":1,"error_kinds":["lost"],"match_method":"{method}","match_key_prefix":"{key}"}}"#
        ));
    };
    stack.proxy.reset();
    lose_next("PUT");
    let r = put_if_none_match(&stack, key, b"owner 1");
    assert_eq!(r.status, 200, "conditional PUT: {}", r.summary());
    assert_records(&stack, key, "PUT", "lost", 1, 412);
    get_ok(&stack, key, b"owner 1");

    lose_next("DELETE");
    let r = Req::object("DELETE", stack.addr(), Style::Virtual, key)
        .header("If-Match", &md5_etag(b"owner 1"))
        .go(stack.addr());
    assert_eq!(r.status, 204, "conditional DELETE: {}", r.summary());
    assert_records(&stack, key, "DELETE", "lost", 1, 404);
    assert_eq!(get(&stack, key).status, 404, "the key is gone");

    // A 503 says the attempt was not carried out: the retry's refusal is the answer. (Read as a
    // lost success, a key that never existed was answered 204.)
    let never = "orioledb_data/never";
    stack.proxy.faults(&format!(
        r#"{{"fail_next":1,"error_kinds":["503"],"match_method":"DELETE","match_key_prefix":"{never}"}}"#
    ));
    let r = Req::object("DELETE", stack.addr(), Style::Virtual, never)
        .header("If-Match", &md5_etag(b"owner 1"))
        .go(stack.addr());
    assert_error(
        &r,
        404,
        "NoSuchKey",
        "a conditional DELETE of a key never written, after a 503",
    );
    assert_records(&stack, never, "DELETE", "503", 1, 404);
}

/// OrioleDB's lock holds the same 8 bytes whoever takes it. A second holder's conditional PUT
/// whose first attempt failed without saying whether the origin applied it (a 500) meets the first
/// holder's lock on its retry: 412, though the origin holds exactly its body, because that body
/// was written before the request was sent. It used to be read as its own lost success: 200, and
/// two holders of the lock.
#[test]
fn a_second_holder_of_the_same_lock_body_gets_412_after_an_unsure_attempt() {
    let _turn = machine::share();
    let stack = start("20s", &[]);
    let _log = stack.log_on_panic();
    let key = "data/orioledb_data/s3_lock";
    let take = || put_if_none_match(&stack, key, b"\x01lock\x00\x00\x00");
    let r = take();
    assert_eq!(r.status, 200, "the first holder: {}", r.summary());
    // Past S3's whole seconds and the slack for two clocks.
    std::thread::sleep(Duration::from_secs(3));
    stack.proxy.reset();
    stack.proxy.faults(&format!(
        r#"{{"fail_next":1,"error_kinds":["500"],"match_method":"PUT","match_key_prefix":"{key}"}}"#
    ));
    let r = take();
    assert_error(&r, 412, "PreconditionFailed", "a second holder after an unsure attempt");
    assert_records(&stack, key, "PUT", "500", 1, 412);
}

/// A read of a key while a request the origin decides for it is on its way (a conditional PUT or
/// DELETE, sent after the cached copy was dropped and before the origin applies it) may fetch the
/// old body: it is served, never kept. Kept, it outlived a kill -9 before the origin's answer
/// (the answer lost, the request retried), and Perch then served the old body, or the deleted
/// object, as a hit for good.
#[test]
fn a_read_while_the_origin_decides_a_request_keeps_no_copy_of_the_old_body() {
    let _turn = machine::share();
    let mut stack = start("60s", &[]);
    let _log = stack.log_on_panic();
    let old: &[u8] = b"old body";
    let new: &[u8] = b"new body";
    for method in ["PUT", "DELETE"] {
        let key = format!("deciding/{method}");
        stack.put_behind_perchs_back(&key, old);
        // The conditional request is held at the door of the origin (then reset, and retried).
        stack
            .proxy
            .faults(r#"{"error_rate":1.0,"error_kinds":["stall"],"stall_ms":1500,"match_header":"If-Match"}"#);
        let addr = stack.addr();
        let request = {
            let key = key.clone();
            std::thread::spawn(move || {
                let req = Req::object(method, addr, Style::Virtual, &key).header("If-Match", &md5_etag(old));
                let req = if method == "PUT" { req.body(new.to_vec()) } else { req };
                // Perch is killed before it answers.
                req.send(addr).map(|r| r.status)
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        get_ok(&stack, &key, old);
        std::thread::sleep(Duration::from_millis(300));
        // From here the origin applies every attempt, and Perch never hears its answer.
        stack
            .proxy
            .faults(r#"{"error_rate":1.0,"error_kinds":["lost"],"match_header":"If-Match"}"#);
        let moto = stack.moto_sdk();
        let at_origin = || {
            stack.rt.block_on(async {
                match moto.get_object().bucket(BUCKET).key(&key).send().await {
                    Ok(out) => Some(out.body.collect().await.expect("body").into_bytes().to_vec()),
                    Err(_) => None,
                }
            })
        };
        let decided = if method == "PUT" { Some(new.to_vec()) } else { None };
        let deadline = Instant::now() + Duration::from_secs(20);
        while at_origin() != decided {
            assert!(
                Instant::now() < deadline,
                "{method}: the origin never applied the request"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stack.kill();
        let answered = request.join().expect("request thread");
        assert!(
            !matches!(answered, Ok(200 | 204)),
            "{method}: answered before the kill ({answered:?}): the test needs it pending"
        );
        stack.no_faults();
        stack.start_again();
        let r = get(&stack, &key);
        match &decided {
            Some(body) => {
                assert_eq!(r.status, 200, "{method}: {}", r.summary());
                assert!(r.body == *body, "{method}: Perch serves the old body after the restart");
            }
            None => assert_eq!(
                r.status,
                404,
                "{method}: Perch serves the deleted object: {}",
                r.summary()
            ),
        }
    }
}

/// A request the origin decides goes on to the origin's answer when its client hangs up: the
/// origin may apply it whenever it arrives, and a read that kept its copy once Perch had given up
/// on the request kept the old body for good (served as a hit over the origin's new one).
#[test]
fn a_request_the_origin_decides_goes_on_after_its_client_hangs_up() {
    let _turn = machine::share();
    let stack = start("60s", &[]);
    let _log = stack.log_on_panic();
    let old: &[u8] = b"old body";
    let new: &[u8] = b"new body";
    for method in ["PUT", "DELETE"] {
        let key = format!("hung-up/{method}");
        stack.put_behind_perchs_back(&key, old);
        // The conditional request reaches the origin 1.5 s after Perch sent it, whether Perch
        // still waits for it or not.
        stack
            .proxy
            .faults(r#"{"error_rate":1.0,"error_kinds":["late"],"stall_ms":1500,"match_header":"If-Match"}"#);
        let addr = stack.addr();
        let req = Req::object(method, addr, Style::Virtual, &key).header("If-Match", &md5_etag(old));
        let body: &[u8] = if method == "PUT" { new } else { b"" };
        let req = req.body(body.to_vec());
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        client.write_all(&req.head().0).expect("request head");
        client.write_all(body).expect("request body");
        std::thread::sleep(Duration::from_millis(300));
        // The client hangs up before the answer.
        client.shutdown(std::net::Shutdown::Both).expect("hang up");
        drop(client);
        std::thread::sleep(Duration::from_millis(300));
        // A read before the origin applies the request: the old body, served.
        get_ok(&stack, &key, old);
        let moto = stack.moto_sdk();
        let at_origin = || {
            stack.rt.block_on(async {
                match moto.get_object().bucket(BUCKET).key(&key).send().await {
                    Ok(out) => Some(out.body.collect().await.expect("body").into_bytes().to_vec()),
                    Err(_) => None,
                }
            })
        };
        let decided = if method == "PUT" { Some(new.to_vec()) } else { None };
        let deadline = Instant::now() + Duration::from_secs(20);
        while at_origin() != decided {
            assert!(
                Instant::now() < deadline,
                "{method}: the origin never applied the request"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stack.no_faults();
        // Twice: the first read may fill, the second is served from what it kept.
        for _ in 0..2 {
            let r = get(&stack, &key);
            match &decided {
                Some(body) => {
                    assert_eq!(r.status, 200, "{method}: {}", r.summary());
                    assert!(r.body == *body, "{method}: Perch serves the old body: {}", r.summary());
                }
                None => assert_eq!(
                    r.status,
                    404,
                    "{method}: Perch serves the deleted object: {}",
                    r.summary()
                ),
            }
        }
    }
}

/// A copy the origin makes whose client hangs up still holds its keys until the origin's answer:
/// a write of the destination acknowledged meanwhile was uploaded first, then overwritten at the
/// origin by the copy arriving late, while Perch served the write's body as a hit, for good.
#[test]
fn a_write_after_a_copy_its_client_hung_up_on_waits_for_the_copy() {
    let _turn = machine::share();
    let stack = start("60s", &[]);
    let _log = stack.log_on_panic();
    stack.put_behind_perchs_back("gate/src", b"source body");
    stack.put_behind_perchs_back("gate/dst", b"old body");
    // The copy reaches the origin 1.5 s after Perch sent it.
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["late"],"stall_ms":1500,"match_header":"x-amz-copy-source"}"#);
    let c = stack.sdk();
    let copy = stack.rt.spawn(async move {
        c.copy_object()
            .bucket(BUCKET)
            .key("gate/dst")
            .copy_source(format!("{BUCKET}/gate/src"))
            .send()
            .await
    });
    std::thread::sleep(Duration::from_millis(400));
    // The client hangs up before the answer.
    copy.abort();
    let new: &[u8] = b"written after the copy";
    let r = put(&stack, "gate/dst", new);
    assert_eq!(r.status, 200, "{}", r.summary());
    stack.flush(Duration::from_secs(30));
    // Whatever came last at the origin, Perch serves it.
    std::thread::sleep(Duration::from_millis(2000));
    stack.no_faults();
    let at_origin = stack.in_moto("gate/dst");
    assert_eq!(
        at_origin.as_deref(),
        Some(new),
        "the origin holds the copy, over the write after it"
    );
    get_ok(&stack, "gate/dst", new);
}

/// PutObjectTagging whose client hangs up still holds its key until the origin's answer: a write
/// of the key acknowledged meanwhile was uploaded first, and the late tagging then gave the new
/// object the old request's tags.
#[test]
fn a_write_after_a_tagging_its_client_hung_up_on_waits_for_it() {
    use aws_sdk_s3::types::{Tag, Tagging};
    let _turn = machine::share();
    let stack = start("60s", &[]);
    let _log = stack.log_on_panic();
    stack.put_behind_perchs_back("tag-gate", b"old body");
    // The tagging reaches the origin 1.5 s after Perch sent it.
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["late"],"stall_ms":1500,"match_method":"PUT","match_key_prefix":"tag-gate"}"#);
    let c = stack.sdk();
    let tagging = stack.rt.spawn(async move {
        let tags = Tagging::builder()
            .tag_set(Tag::builder().key("v").value("late").build().expect("tag"))
            .build()
            .expect("tagging");
        c.put_object_tagging()
            .bucket(BUCKET)
            .key("tag-gate")
            .tagging(tags)
            .send()
            .await
    });
    std::thread::sleep(Duration::from_millis(400));
    // The client hangs up before the answer; the write after it goes up at once.
    tagging.abort();
    stack.no_faults();
    let r = Req::object("PUT", stack.addr(), Style::Virtual, "tag-gate")
        .header("x-amz-tagging", "v=new")
        .body(b"new body".to_vec())
        .go(stack.addr());
    assert_eq!(r.status, 200, "{}", r.summary());
    stack.flush(Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(2000));
    let m = stack.moto_sdk();
    let tags = stack
        .rt
        .block_on(m.get_object_tagging().bucket(BUCKET).key("tag-gate").send())
        .expect("the origin's tags");
    let tags: Vec<(String, String)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    assert_eq!(
        tags,
        vec![("v".to_owned(), "new".to_owned())],
        "the late tagging came last"
    );
}

/// A DeleteBucket whose client hangs up still holds its bucket until the origin's answer: a write
/// into the bucket was acknowledged meanwhile, the late DeleteBucket reached the origin before the
/// write's upload, and the upload was refused (NoSuchBucket) for good.
#[test]
fn a_write_after_a_delete_bucket_its_client_hung_up_on_waits_for_it() {
    let _turn = machine::share();
    let stack = start("60s", &[]);
    let _log = stack.log_on_panic();
    let bucket = "gone-late";
    stack
        .rt
        .block_on(stack.sdk().create_bucket().bucket(bucket).send())
        .expect("CreateBucket");
    // The DeleteBucket reaches the origin 1.5 s after Perch sent it.
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["late"],"stall_ms":1500,"match_method":"DELETE"}"#);
    let c = stack.sdk();
    let delete = stack
        .rt
        .spawn(async move { c.delete_bucket().bucket(bucket).send().await });
    std::thread::sleep(Duration::from_millis(400));
    // The client hangs up before the answer; a write into the bucket follows at once, and its
    // upload would reach the origin after the late DeleteBucket.
    delete.abort();
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["late"],"stall_ms":3000,"match_method":"PUT"}"#);
    let put = stack.rt.block_on(
        stack
            .sdk()
            .put_object()
            .bucket(bucket)
            .key("after-the-delete")
            .body(b"acknowledged?".to_vec().into())
            .send(),
    );
    let code = put
        .as_ref()
        .map_err(|e| e.as_service_error().and_then(|e| e.meta().code()));
    assert_eq!(
        code.err(),
        Some(Some("NoSuchBucket")),
        "a write into a bucket whose DeleteBucket is still on its way to the origin: {put:?}"
    );
    stack.no_faults();
    let m = stack.moto_sdk();
    let buckets = stack
        .rt
        .block_on(m.list_buckets().send())
        .expect("the origin's buckets");
    assert!(
        buckets.buckets().iter().all(|b| b.name() != Some(bucket)),
        "the origin still has the bucket"
    );
    assert_none_refused(&stack);
}

/// Makes `bucket` through Perch with an object Perch wrote, uploaded and read (a hot set, a
/// cached copy that proves the bucket), then empties it at the origin behind Perch's back.
fn held_and_emptied(stack: &Stack, bucket: &str) {
    let (c, m) = (stack.sdk(), stack.moto_sdk());
    stack
        .rt
        .block_on(c.create_bucket().bucket(bucket).send())
        .expect("CreateBucket");
    stack
        .rt
        .block_on(
            c.put_object()
                .bucket(bucket)
                .key("held")
                .body(b"held".to_vec().into())
                .send(),
        )
        .expect("PUT");
    stack.flush(Duration::from_secs(30));
    stack
        .rt
        .block_on(c.get_object().bucket(bucket).key("held").send())
        .expect("a read");
    stack
        .rt
        .block_on(m.delete_object().bucket(bucket).key("held").send())
        .expect("the origin's copy deleted behind Perch's back");
}

/// The error code of a PUT into `bucket` (`None`: acknowledged).
fn put_code(stack: &Stack, bucket: &str) -> Option<String> {
    stack.rt.block_on(put_code_with(stack.sdk(), bucket.to_owned()))
}

/// `put_code` with client `c`, for a task of its own.
async fn put_code_with(c: aws_sdk_s3::Client, bucket: String) -> Option<String> {
    let put = c
        .put_object()
        .bucket(bucket)
        .key("after")
        .body(b"acknowledged?".to_vec().into())
        .send()
        .await;
    put.err()
        .map(|e| format!("{:?}", e.as_service_error().and_then(|e| e.meta().code())))
}

/// A write into a bucket that is gone was refused at the door (NoSuchBucket), not acknowledged.
#[track_caller]
fn assert_gone(code: Option<String>, what: &str) {
    assert_eq!(code.as_deref(), Some("Some(\"NoSuchBucket\")"), "{what}");
}

/// Nothing acknowledged was refused at its upload.
#[track_caller]
fn assert_none_refused(stack: &Stack) {
    let st = stack.status();
    assert_eq!(st["failed"].as_array().map(Vec::len), Some(0), "{st}");
}

/// A DeleteBucket sent to the origin marks its bucket, durably, as one whose objects held here
/// prove nothing: a write into it asks the origin first. Objects of a bucket held here were taken
/// as proof that it exists, so a write was acknowledged, and refused at its upload (NoSuchBucket)
/// for good, when the DeleteBucket's answer was lost after the origin applied it, or Perch was
/// killed while the request was on its way and the origin applied it after.
#[test]
fn no_write_is_acknowledged_into_a_bucket_a_delete_bucket_may_have_removed() {
    let _turn = machine::share();
    let mut stack = start("10s", &[]);
    let _log = stack.log_on_panic();
    let m = stack.moto_sdk();

    // The origin deletes the bucket, and its answer is lost; the retry is answered NoSuchBucket.
    held_and_emptied(&stack, "answer-lost");
    stack
        .proxy
        .faults(r#"{"fail_next":1,"error_kinds":["lost"],"match_method":"DELETE"}"#);
    let c = stack.sdk();
    let _ = stack.rt.block_on(c.delete_bucket().bucket("answer-lost").send());
    stack.no_faults();
    assert_gone(put_code(&stack, "answer-lost"), "a write after a lost answer");

    // Perch is killed while the DeleteBucket is on its way; the origin applies it after.
    held_and_emptied(&stack, "killed-meanwhile");
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["late"],"stall_ms":1500,"match_method":"DELETE"}"#);
    let c = stack.sdk();
    let delete = stack
        .rt
        .spawn(async move { c.delete_bucket().bucket("killed-meanwhile").send().await });
    std::thread::sleep(Duration::from_millis(400));
    stack.kill();
    delete.abort();
    std::thread::sleep(Duration::from_millis(2000));
    stack.no_faults();
    let buckets = stack
        .rt
        .block_on(m.list_buckets().send())
        .expect("the origin's buckets");
    assert!(
        buckets.buckets().iter().all(|b| b.name() != Some("killed-meanwhile")),
        "the late DeleteBucket did not reach the origin"
    );
    stack.start_again();
    assert_gone(put_code(&stack, "killed-meanwhile"), "a write after a kill");
    assert_none_refused(&stack);
}

/// An answer that saw a bucket, arriving after a DeleteBucket through Perch removed it (a HEAD a
/// write asked, a CreateBucket), made the bucket known again: a write into it was acknowledged,
/// and refused at its upload (NoSuchBucket) for good. Such an answer is taken only if no
/// DeleteBucket was sent since it was asked.
#[test]
fn a_late_answer_does_not_bring_back_a_bucket_deleted_meanwhile() {
    let _turn = machine::share();
    let stack = start("10s", &[]);
    let _log = stack.log_on_panic();
    let m = stack.moto_sdk();
    let put = |bucket: &str| stack.rt.spawn(put_code_with(stack.sdk(), bucket.to_owned()));
    let delete = |bucket: &str| {
        stack
            .rt
            .block_on(stack.sdk().delete_bucket().bucket(bucket).send())
            .expect("DeleteBucket");
    };

    // A write's HEAD of a bucket Perch does not know yet: its 200 held for 1.5 s.
    stack
        .rt
        .block_on(m.create_bucket().bucket("late-head").send())
        .expect("CreateBucket at the origin");
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["held"],"stall_ms":1500,"match_method":"HEAD"}"#);
    let written = put("late-head");
    std::thread::sleep(Duration::from_millis(400));
    stack.no_faults();
    delete("late-head");
    assert_gone(
        stack.rt.block_on(written).expect("the PUT's task"),
        "a write after a late HEAD",
    );

    // A CreateBucket through Perch: its 200 held for 1.5 s.
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["held"],"stall_ms":1500,"match_method":"PUT"}"#);
    let c = stack.sdk();
    let created = stack
        .rt
        .spawn(async move { c.create_bucket().bucket("late-create").send().await });
    std::thread::sleep(Duration::from_millis(400));
    stack.no_faults();
    delete("late-create");
    stack.rt.block_on(created).expect("the task").expect("CreateBucket");
    assert_gone(put_code(&stack, "late-create"), "a write after a late CreateBucket");
    assert_none_refused(&stack);
}

/// The hot set a stop writes into each bucket read waits for a DeleteBucket of it on its way, and
/// skips a bucket it may have removed: written first, it made the late DeleteBucket
/// BucketNotEmpty, which no client saw, and the bucket stayed.
#[test]
fn the_hot_set_written_at_a_stop_does_not_keep_a_bucket_being_deleted() {
    let _turn = machine::share();
    let mut stack = start("10s", &[]);
    let _log = stack.log_on_panic();
    let (c, m) = (stack.sdk(), stack.moto_sdk());
    let bucket = "hot-gone";
    // Its object read: the bucket has a hot set.
    held_and_emptied(&stack, bucket);
    // The DeleteBucket reaches the origin 2 s after Perch sent it; its client hangs up, and
    // Perch is stopped at once.
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["late"],"stall_ms":2000,"match_method":"DELETE"}"#);
    let delete = stack
        .rt
        .spawn(async move { c.delete_bucket().bucket(bucket).send().await });
    std::thread::sleep(Duration::from_millis(400));
    delete.abort();
    stack.stop_clean();
    std::thread::sleep(Duration::from_millis(2500));
    stack.no_faults();
    let buckets = stack
        .rt
        .block_on(m.list_buckets().send())
        .expect("the origin's buckets");
    assert!(
        buckets.buckets().iter().all(|b| b.name() != Some(bucket)),
        "the bucket stayed at the origin"
    );
}

/// A read's fill whose origin answer comes after a DeleteBucket of its bucket is not kept: kept,
/// the cached copy outlived the bucket's mark, and after a restart proved the bucket again, so a
/// write into it was acknowledged, and refused at its upload (NoSuchBucket) for good.
#[test]
fn a_fill_answered_after_a_delete_bucket_does_not_keep_the_bucket() {
    let _turn = machine::share();
    let mut stack = start("10s", &[]);
    let _log = stack.log_on_panic();
    let (c, m) = (stack.sdk(), stack.moto_sdk());
    let bucket = "fill-gone";
    stack
        .rt
        .block_on(m.create_bucket().bucket(bucket).send())
        .expect("CreateBucket at the origin");
    stack
        .rt
        .block_on(
            m.put_object()
                .bucket(bucket)
                .key("read")
                .body(b"read".to_vec().into())
                .send(),
        )
        .expect("PUT at the origin");
    // A read's origin GET is answered 1.5 s late; meanwhile the object goes at the origin and the
    // bucket is deleted through Perch.
    stack
        .proxy
        .faults(r#"{"error_rate":1.0,"error_kinds":["held"],"stall_ms":1500,"match_method":"GET"}"#);
    let read = stack
        .rt
        .spawn(async move { c.get_object().bucket(bucket).key("read").send().await.map(|_| ()) });
    std::thread::sleep(Duration::from_millis(400));
    stack.no_faults();
    stack
        .rt
        .block_on(m.delete_object().bucket(bucket).key("read").send())
        .expect("the origin's copy deleted behind Perch's back");
    stack
        .rt
        .block_on(stack.sdk().delete_bucket().bucket(bucket).send())
        .expect("DeleteBucket");
    stack.rt.block_on(read).expect("the read's task").expect("the read");
    stack.restart_clean();
    assert_gone(put_code(&stack, bucket), "a write after a restart");
    assert_none_refused(&stack);
}

/// A DeleteObjects whose keys the origin must decide (each with its ETag) lasts one retry
/// deadline in an outage, not one per batch of keys decided together: 80 keys took five deadlines
/// (16 at a time, each retried for the whole deadline), 1,000 keys over two hours at the default.
/// Past the request's deadline the keys left are SlowDown at once.
#[test]
fn a_delete_of_many_conditioned_keys_lasts_one_deadline_in_an_outage() {
    let _turn = machine::share();
    let stack = start("2s", &[]);
    let _log = stack.log_on_panic();
    put_ok(&stack, "data/before-the-outage", b"1");
    stack.proxy.patch(r#"{"outage":true}"#);
    let objects: Vec<_> = (0..80)
        .map(|i| {
            aws_sdk_s3::types::ObjectIdentifier::builder()
                .key(format!("many/{i}"))
                .e_tag(md5_etag(b"1"))
                .build()
                .expect("identifier")
        })
        .collect();
    let delete = aws_sdk_s3::types::Delete::builder()
        .set_objects(Some(objects))
        .build()
        .expect("delete");
    let started = Instant::now();
    let out = stack
        .rt
        .block_on(stack.sdk().delete_objects().bucket(BUCKET).delete(delete).send())
        .expect("DeleteObjects");
    let took = started.elapsed();
    let codes: Vec<_> = out.errors().iter().map(|e| e.code().unwrap_or_default()).collect();
    assert_eq!(codes, vec!["SlowDown"; 80], "every key is SlowDown");
    assert!(
        took < Duration::from_secs(6),
        "DeleteObjects took {took:?} (deadline 2 s)"
    );
}

/// A conditional PUT the origin holds past the retry deadline is answered 503, and the origin
/// may still apply it afterwards (OrioleDB's lock: `If-None-Match: *`). The client's retry of the
/// same body then meets its own earlier request: Perch, which answered that 503, reads the 412 as
/// the success it hides when the origin holds exactly this body; another body still gets 412.
/// The retry used to be told the lock was someone else's.
#[test]
fn a_conditional_put_answered_503_that_landed_later_succeeds_on_its_retry() {
    let _turn = machine::share();
    let stack = start("3s", &[]);
    let _log = stack.log_on_panic();
    let key = "data/orioledb_data/s3_lock";
    // The next PUT of the lock is held 5 s, then applied: after Perch's deadline.
    stack.proxy.faults(&format!(
        r#"{{"fail_next":1,"error_kinds":["late"],"stall_ms":5000,"match_method":"PUT","match_key_prefix":"{key}"}}"#
    ));
    let lock = |body: &[u8]| put_if_none_match(&stack, key, body);
    let r = lock(b"owner 1");
    assert_error(&r, 503, "SlowDown", "a conditional PUT past the deadline");
    // The held request lands at the origin.
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(10), || stack.in_moto(key).is_some()),
        "the held PUT never landed"
    );
    let r = lock(b"owner 1");
    assert_eq!(r.status, 200, "the retry of the same body: {}", r.summary());
    assert_eq!(r.header("ETag"), Some(md5_etag(b"owner 1").as_str()));
    // Another body is another holder: 412, as the origin says.
    let r = lock(b"owner 2");
    assert_error(&r, 412, "PreconditionFailed", "another body");
    // Judged once: the same body again is an ordinary 412.
    let r = lock(b"owner 1");
    assert_error(&r, 412, "PreconditionFailed", "the same body, once it succeeded");
}

/// Backoffs drawn at their cap, so that a test of when an upload is tried again is not a draw:
/// a failing upload is tried again 0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4 s after its first attempt.
const BACKOFF_AT_CAP: (&str, &str) = ("PERCH_TEST_BACKOFF_AT_CAP", "1");

/// `start`, with every backoff drawn at its cap.
#[track_caller]
fn start_backoff_at_cap(deadline: &str, args: &[&str]) -> Stack {
    let mut stack = start(deadline, args);
    stack.stop_clean();
    stack
        .env
        .push((BACKOFF_AT_CAP.0.to_owned(), BACKOFF_AT_CAP.1.to_owned()));
    stack.start_again();
    stack
}

/// Clears the proxy's faults `after` from now, on a thread of its own.
fn faults_cleared_after(stack: &Stack, after: Duration) -> std::thread::JoinHandle<()> {
    let proxy = stack.proxy;
    std::thread::spawn(move || {
        std::thread::sleep(after);
        proxy.faults("{}");
    })
}

/// A write-through PUT (OrioleDB's archiver's WAL segment) during an origin outage that ends
/// before `--origin-retry-deadline` is answered 200, not 503 (fatal to OrioleDB's worker): while a
/// client waits on it, a failing upload waits at most 5 s between attempts (a client request's
/// own backoff), where its backoff alone grows to 30 s and may be drawn long while the origin is
/// down. Here the outage lasts 13 s of a 20 s deadline: with backoffs at their cap, the upload's
/// own schedule tries again at 12.6 s (down) and then 25.4 s, past the deadline; waited on, it
/// tries at 11.2 s (down) and 16.2 s.
#[test]
fn a_write_through_put_is_answered_when_the_origin_returns_before_its_limit() {
    let _turn = machine::alone();
    let stack = start_backoff_at_cap("20s", &[]);
    let _log = stack.log_on_panic();
    let key = "wal/00000001000000000000000A";
    let body = pattern(1 << 20, 10);
    put_ok(&stack, "wal/000000010000000000000009", b"1");
    stack.proxy.faults(r#"{"outage":true}"#);
    let started = Instant::now();
    let back = faults_cleared_after(&stack, Duration::from_secs(13));
    let r = put(&stack, key, &body);
    let took = started.elapsed();
    back.join().expect("the thread that ends the outage");
    assert_eq!(
        r.status,
        200,
        "a write-through PUT through an outage shorter than the deadline, answered after {took:?}: {}",
        r.summary()
    );
    assert!(
        took < Duration::from_secs(19),
        "answered {took:?} after it was sent, the origin back after 13 s"
    );
    assert_eq!(stack.in_moto(key).as_deref(), Some(&body[..]), "the origin holds it");
}

/// Write-back uploads that failed through an outage go up within seconds of the origin's return,
/// not after the rest of a backoff drawn while it was down: the origin answering another upload
/// cuts their waits to at most 5 s. With backoffs at their cap, a write-back version is tried at
/// 0, 0.2, 0.6, 1.4, 3.0, 6.2 and 12.6 s, then 12.8 s later; the origin comes back right after
/// the seventh attempt, another write's upload finds it back, and the first goes up within 5 s.
#[test]
fn uploads_that_failed_through_an_outage_resume_when_the_origin_answers_again() {
    let _turn = machine::alone();
    let stack = start_backoff_at_cap("20s", &[]);
    let _log = stack.log_on_panic();
    let (first, second) = ("data/1/failed-through-the-outage", "data/1/after-the-outage");
    let body = pattern(256 << 10, 11);
    // Perch asks the origin about the bucket once, before its first write: done here.
    put_ok(&stack, "data/before-the-outage", b"1");
    stack.flush(Duration::from_secs(10));
    failed_seven_times(&stack, first, &body);
    stack.no_faults();
    std::thread::sleep(Duration::from_millis(300));
    assert!(stack.in_moto(first).is_none(), "the first upload waits out its backoff");
    let sent = Instant::now();
    put_ok(&stack, second, &body);
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(9), || stack.in_moto(first).is_some()),
        "the first write was not uploaded within 9 s of another upload's answer (its own backoff: 12.8 s): {:?}",
        stack.proxy.records_for(first)
    );
    assert_eq!(stack.in_moto(first).as_deref(), Some(&body[..]));
    assert_eq!(stack.in_moto(second).as_deref(), Some(&body[..]));
    assert!(sent.elapsed() < Duration::from_secs(9));
}

/// The same when the other upload's answer comes while the failed upload's seventh failure is
/// still being handled (held there by a test-only pause point, as its blob is checked): it is
/// hurried all the same. It used to listen for the notice only after that, miss it, and wait out
/// its whole backoff (12.8 s) after the origin was back.
#[test]
fn an_upload_hurried_while_its_failure_was_handled_is_not_left_to_its_backoff() {
    let _turn = machine::alone();
    let mut stack = start("20s", &[]);
    stack.stop_clean();
    stack
        .env
        .push((BACKOFF_AT_CAP.0.to_owned(), BACKOFF_AT_CAP.1.to_owned()));
    stack
        .env
        .push(("PERCH_PAUSE_POINT".to_owned(), "upload_failed#7:3000".to_owned()));
    stack.start_again();
    let _log = stack.log_on_panic();
    let (first, second) = ("data/1/failed-through-the-outage", "data/1/after-the-outage");
    let body = pattern(256 << 10, 12);
    put_ok(&stack, "data/before-the-outage", b"1");
    stack.flush(Duration::from_secs(10));
    stack.proxy.faults(r#"{"outage":true}"#);
    put_ok(&stack, first, &body);
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(30), || {
            stack.perch().log_text().contains("pause point upload_failed reached")
        }),
        "the seventh failure never reached its pause point: {:?}",
        stack.proxy.records_for(first)
    );
    stack.no_faults();
    let sent = Instant::now();
    put_ok(&stack, second, &body);
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(10), || stack.in_moto(second).is_some()),
        "the second write's upload"
    );
    // The answer came while the failure was held: without the count, the first upload missed it.
    assert!(
        !stack.perch().log_text().contains("pause point upload_failed passed"),
        "the second upload was answered only after the pause"
    );
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(9), || stack.in_moto(first).is_some()),
        "the first write was not uploaded within 9 s of another upload's answer (its own backoff: 12.8 s): {:?}",
        stack.proxy.records_for(first)
    );
    assert_eq!(stack.in_moto(first).as_deref(), Some(&body[..]));
    assert!(sent.elapsed() < Duration::from_secs(10));
}

/// PUTs `key` (write-back, acknowledged at once) through an outage, until its upload has failed
/// seven times (with backoffs at their cap, 12.6 s; the next attempt is 12.8 s later), and ends
/// the outage.
fn failed_seven_times(stack: &Stack, key: &str, body: &[u8]) {
    stack.proxy.faults(r#"{"outage":true}"#);
    put_ok(stack, key, body);
    let attempts = || {
        stack
            .proxy
            .records_for(key)
            .into_iter()
            .filter(|(m, _, injected)| m == "PUT" && injected.as_deref() == Some("outage"))
            .count()
    };
    assert!(
        crate::support::perch::wait_until(Duration::from_secs(30), || attempts() >= 7),
        "seven attempts through the outage: {:?}",
        stack.proxy.records_for(key)
    );
    stack.no_faults();
}

/// A client that starts waiting on an upload sleeping through a long backoff (here a conditional
/// PUT naming the pending version's ETag, which the origin must decide once that version is up)
/// cuts the upload's wait to at most 5 s: the origin came back right after the upload's seventh
/// attempt, whose own backoff is 12.8 s.
#[test]
fn a_client_waiting_on_an_upload_through_its_backoff_hurries_it() {
    let _turn = machine::alone();
    let stack = start_backoff_at_cap("20s", &[]);
    let _log = stack.log_on_panic();
    let key = "data/1/waited-on";
    let body = pattern(256 << 10, 13);
    put_ok(&stack, "data/before-the-outage", b"1");
    stack.flush(Duration::from_secs(10));
    failed_seven_times(&stack, key, &body);
    std::thread::sleep(Duration::from_millis(300));
    assert!(stack.in_moto(key).is_none(), "the upload waits out its backoff");
    let started = Instant::now();
    let next = pattern(1000, 14);
    let r = Req::object("PUT", stack.addr(), Style::Virtual, key)
        .header("If-Match", &md5_etag(&body))
        .body(next.clone())
        .go(stack.addr());
    let took = started.elapsed();
    assert_eq!(
        r.status,
        200,
        "the conditional PUT, answered after {took:?}: {}",
        r.summary()
    );
    assert!(
        took < Duration::from_secs(9),
        "answered {took:?} after it was sent, the pending upload's own backoff being 12.8 s"
    );
    assert_eq!(stack.in_moto(key).as_deref(), Some(&next[..]));
}

/// 192 write-back parts of a checkpoint behind an origin whose every request takes 500 ms: 16
/// uploads at a time, each a PUT and a HEAD, about 12 s in all, three times the 4 s deadline,
/// each round shrinking the backlog. Acknowledged at once; returns the deadline.
fn slow_moving_backlog(stack: &Stack) -> Duration {
    stack.proxy.faults(r#"{"latency_ms":500}"#);
    let body = pattern(64 << 10, 12);
    for i in 0..192 {
        put_ok(stack, &format!("orioledb_data/9/5/16445.0.{i}"), &body);
    }
    Duration::from_secs(4)
}

/// OrioleDB's start after a clean stop: its lock PUT (`If-None-Match: *`) waits for the lock's
/// release, a barrier behind every write acknowledged before it (the last checkpoint's parts).
/// An origin that takes that backlog slowly but steadily gets it all, and the lock PUT is
/// answered 200, where a wait cut at `--origin-retry-deadline` from its start answered 503,
/// fatal to OrioleDB's worker: the limit starts again each time the backlog shrinks.
#[test]
fn a_lock_put_behind_a_slow_but_moving_backlog_waits_for_it() {
    let _turn = machine::alone();
    let stack = start("4s", &[]);
    let _log = stack.log_on_panic();
    let lock = "data/orioledb_data/s3_lock";
    let r = put_if_none_match(&stack, lock, b"first start");
    assert_eq!(r.status, 200, "the first lock: {}", r.summary());
    let deadline = slow_moving_backlog(&stack);
    let r = Req::object("DELETE", stack.addr(), Style::Virtual, lock).go(stack.addr());
    assert_eq!(r.status, 204, "the lock's release: {}", r.summary());
    let started = Instant::now();
    let r = put_if_none_match(&stack, lock, b"second start");
    let took = started.elapsed();
    assert_eq!(
        r.status,
        200,
        "the next start's lock PUT, answered after {took:?}: {}",
        r.summary()
    );
    assert!(
        took > deadline + Duration::from_secs(2),
        "the backlog must outlast the deadline for this test to show anything ({took:?})"
    );
    stack.no_faults();
    assert_eq!(stack.in_moto(lock).as_deref(), Some(&b"second start"[..]));
    assert!(
        stack.in_moto("orioledb_data/9/5/16445.0.191").is_some(),
        "the backlog went up before the lock's release"
    );
}

/// The same with `--strict-barriers`, where a barrier is acknowledged only once the origin has
/// it: the lock's release (a DELETE) waits for the whole backlog before it, and is 204 once that
/// and it are up, not 503 at the deadline while the backlog still moves.
#[test]
fn a_strict_barrier_behind_a_slow_but_moving_backlog_is_acknowledged() {
    let _turn = machine::alone();
    let stack = start("4s", &["--strict-barriers"]);
    let _log = stack.log_on_panic();
    let lock = "data/orioledb_data/s3_lock";
    let r = put_if_none_match(&stack, lock, b"first start");
    assert_eq!(r.status, 200, "the lock: {}", r.summary());
    let deadline = slow_moving_backlog(&stack);
    let started = Instant::now();
    let r = Req::object("DELETE", stack.addr(), Style::Virtual, lock).go(stack.addr());
    let took = started.elapsed();
    assert_eq!(
        r.status,
        204,
        "the lock's release, answered after {took:?}: {}",
        r.summary()
    );
    assert!(
        took > deadline + Duration::from_secs(2),
        "the backlog must outlast the deadline for this test to show anything ({took:?})"
    );
    stack.no_faults();
    assert!(
        stack.in_moto(lock).is_none(),
        "the release is in the origin once acknowledged"
    );
    assert!(stack.in_moto("orioledb_data/9/5/16445.0.191").is_some());
}

/// An uploaded DELETE answered 404 without an S3 error code (a proxy's answer; S3 answers a DELETE
/// of a missing key 204 and names every error) is a fault, retried. It used to count as deleted:
/// the tombstone was released while the origin still held the key, and GETs served it again.
#[test]
fn an_uploaded_delete_answered_a_bare_404_is_retried() {
    let _turn = machine::share();
    let s = start("5s", &[]);
    let _log = s.log_on_panic();
    s.put("bare/k", b"v1");
    s.flush(Duration::from_secs(30));
    assert_eq!(s.in_moto("bare/k").as_deref(), Some(&b"v1"[..]));
    s.faults(r#"{"fail_next": 1, "error_kinds": ["bare404"], "match_method": "DELETE", "match_key_prefix": "bare/k"}"#);
    let r = s.req("DELETE", "bare/k").go(s.addr());
    assert_eq!(r.status, 204, "{}", r.summary());
    s.flush(Duration::from_secs(30));
    assert_eq!(s.in_moto("bare/k"), None, "the DELETE never reached the origin");
    assert_eq!(s.get("bare/k").status, 404);
}

/// The same for the creation of the multipart upload that carries an object completed in parts
/// through Perch: a bare 404 is a fault, not a bucket gone for good. It refused the acknowledged
/// object, which then never went up.
#[test]
fn a_multipart_upload_whose_creation_is_answered_a_bare_404_is_retried() {
    let _turn = machine::share();
    let s = start("5s", &[]);
    let _log = s.log_on_panic();
    let parts = vec![pattern(5 << 20, 1), pattern(1000, 2)];
    let (id, done) = s.upload_in_parts("bare/mp", &parts);
    s.faults(r#"{"fail_next": 1, "error_kinds": ["bare404"], "match_method": "POST", "match_key_prefix": "bare/mp"}"#);
    s.complete_upload("bare/mp", &id, &done).expect("completed");
    s.flush(Duration::from_secs(30));
    assert_eq!(s.in_moto("bare/mp"), Some(parts.concat()));
    assert!(
        s.records("bare/mp")
            .iter()
            .any(|r| r["injected"].as_str() == Some("bare404")),
        "the fault was never met"
    );
}
