//! The read cache of the real `perch` binary, over HTTP, with real clients and origin.
//!
//! The clients are the OrioleDB-shaped raw client and aws-sdk-s3; the origin is moto behind the
//! request-counting origin proxy. The proxy's counts say exactly which requests reached the
//! origin; the `X-Cache` header says how perch answered; the files under `<data-dir>/cache` are
//! read and damaged directly; `/metrics` is checked sample by sample.
//!
//! A write through perch is a cache entry at once (write-back: acknowledged from the journal,
//! uploaded later). The objects a test means to be in the origin and not in the cache are
//! therefore put straight into moto (`put_behind_perchs_back`), past perch and the proxy.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use perch_testkit::bodies::{body_bytes, md5_etag, multipart_etag, pattern};
use perch_testkit::raw_client::{BUCKET, Req, Resp, Style, key_path, xml_values};

use crate::support::cache_entries::{entry_key, write_cache_entries};
use crate::support::machine;
use crate::support::raw::assert_error;
use crate::support::sdk::{bytes_of, ok};
use crate::support::stack::{BLOCK, Stack, assert_same, eventually, flip_byte, truncate};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

fn get_in_thread(s: &Stack, key: &str) -> std::thread::JoinHandle<std::io::Result<Resp>> {
    let addr = s.addr();
    let path = key_path(key);
    std::thread::spawn(move || Req::object("GET", addr, Style::Path, &path).send(addr))
}

// ---------------------------------------------------------------------------------------------
// Hits

#[test]
fn a_second_get_or_head_makes_no_origin_request() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let small = pattern(100 * KIB + 3, 1);
    // Three checked blocks, the last one short.
    let large = pattern(2 * MIB + 12_345, 2);
    let other = pattern(10 * KIB, 3);
    s.put_behind_perchs_back("hot/small", &small);
    s.put_behind_perchs_back("hot/large", &large);
    s.put_behind_perchs_back("hot/other", &other);
    s.proxy.reset();

    s.get_expect("hot/small", &small, "MISS");
    s.assert_counts(&[("GET hot/small", 1)], "the first GET");
    s.get_expect("hot/small", &small, "HIT");
    s.head_expect("hot/small", &small, "HIT");
    s.assert_counts(&[("GET hot/small", 1)], "a GET and a HEAD of a cached object");

    s.get_expect("hot/large", &large, "MISS");
    s.get_expect("hot/large", &large, "HIT");
    s.head_expect("hot/large", &large, "HIT");
    // aws-sdk-s3 checks the body against the object's CRC as well.
    let out =
        s.rt.block_on(s.sdk().get_object().bucket(BUCKET).key("hot/large").send());
    let out = ok(out, "SDK GET hot/large");
    assert_eq!(out.e_tag(), Some(md5_etag(&large).as_str()));
    assert_eq!(out.content_length(), Some(large.len() as i64));
    let body = s.rt.block_on(bytes_of(out.body));
    assert_same(&body, &large, "SDK GET hot/large");
    s.assert_counts(
        &[("GET hot/small", 1), ("GET hot/large", 1)],
        "GETs and HEADs of cached objects",
    );

    // A HEAD miss asks the origin and does not fill the cache; a GET does.
    s.head_expect("hot/other", &other, "MISS");
    s.head_expect("hot/other", &other, "MISS");
    s.get_expect("hot/other", &other, "MISS");
    s.head_expect("hot/other", &other, "HIT");
    s.get_expect("hot/other", &other, "HIT");
    let r = s.get("hot/absent");
    assert_error(&r, 404, "NoSuchKey", "GET of an absent key");
    s.assert_counts(
        &[
            ("GET hot/small", 1),
            ("GET hot/large", 1),
            ("HEAD hot/other", 2),
            ("GET hot/other", 1),
            ("GET hot/absent", 1),
        ],
        "after HEAD misses",
    );

    // Metrics: a fill goes to the disk tier and the first hit of an object of up to 1 MiB brings
    // it into memory: memory hits are HEAD small (after GET small) and none of other's (its HEAD
    // and GET were its first hits); disk hits GET small, the large one's three, HEAD and GET other.
    s.assert_metric("perch_cache_hits_total{tier=\"memory\"}", 1.0);
    s.assert_metric("perch_cache_hits_total{tier=\"disk\"}", 6.0);
    s.assert_metric("perch_cache_misses_total", 6.0);
    s.assert_metric("perch_cache_coalesced_total", 0.0);
    s.assert_metric("perch_cache_corrupt_total", 0.0);
    s.assert_metric("perch_cache_bypass_total", 0.0);
    s.assert_metric("perch_cache_entries{tier=\"disk\"}", 3.0);
    s.assert_metric("perch_cache_entries{tier=\"memory\"}", 2.0);
    let memory = s.metric("perch_cache_size_bytes{tier=\"memory\"}");
    assert!(
        memory >= (small.len() + other.len()) as f64,
        "the memory tier holds the two small bodies, but says {memory} bytes"
    );
    s.assert_metric("perch_cache_evictions_total{tier=\"disk\"}", 0.0);
    s.assert_metric("perch_cache_evictions_total{tier=\"memory\"}", 0.0);
    s.assert_metric("perch_cache_revalidations_total{result=\"changed\"}", 0.0);
    s.assert_metric("perch_cache_resumed_total", 0.0);
    s.assert_metric(
        "perch_cache_size_bytes{tier=\"disk\"}",
        (small.len() + large.len() + other.len()) as f64,
    );
    // Every GET hit was a first hit, read from disk; the HEADs sent no body.
    s.assert_metric("perch_cache_served_bytes_total{tier=\"memory\"}", 0.0);
    s.assert_metric(
        "perch_cache_served_bytes_total{tier=\"disk\"}",
        (2 * large.len() + small.len() + other.len()) as f64,
    );
    s.assert_metric(
        "perch_cache_served_bytes_total{tier=\"origin\"}",
        (small.len() + large.len() + other.len()) as f64,
    );
    let text = s.metrics_text();
    for family in [
        "perch_cache_hits counter",
        "perch_cache_misses counter",
        "perch_cache_bypass counter",
        "perch_cache_revalidations counter",
        "perch_cache_served_bytes counter",
        "perch_cache_evictions counter",
        "perch_cache_corrupt counter",
        "perch_cache_coalesced counter",
        "perch_cache_resumed counter",
        "perch_cache_size_bytes gauge",
        "perch_cache_entries gauge",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "no `{family}` in /metrics:\n{text}"
        );
    }
}

#[test]
fn concurrent_cold_gets_make_one_origin_request_and_all_get_the_whole_body() {
    let _turn = machine::alone();
    const N: usize = 8;
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let body_raw = pattern(3 * MIB + 777, 4);
    let body_sdk = pattern(2 * MIB + 5, 5);
    s.put_behind_perchs_back("co/raw", &body_raw);
    s.put_behind_perchs_back("co/sdk", &body_sdk);
    s.proxy.reset();
    // A slow origin: 300 ms before each answer, then 2 MiB/s. Every GET below arrives while the
    // first one's fill is under way, and streams it as it lands.
    s.faults(r#"{"latency_ms": 300, "bandwidth_bytes_per_sec": 2097152}"#);

    let barrier = Arc::new(Barrier::new(N));
    let addr = s.addr();
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                Req::object("GET", addr, Style::Path, "co/raw").go(addr)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let r = t.join().expect("client thread");
        assert_eq!(r.status, 200, "waiter {i}: {}", r.summary());
        assert_eq!(r.header("X-Cache"), Some("MISS"), "waiter {i}");
        assert_eq!(r.header("ETag"), Some(md5_etag(&body_raw).as_str()), "waiter {i}");
        assert_same(&r.body, &body_raw, &format!("waiter {i}"));
    }
    s.assert_counts(&[("GET co/raw", 1)], &format!("{N} concurrent cold GETs"));
    s.assert_metric("perch_cache_misses_total", N as f64);
    s.assert_metric("perch_cache_coalesced_total", (N - 1) as f64);

    // The same with aws-sdk-s3 clients (which also check each body against the object's CRC).
    let c = s.sdk();
    let bodies = s.rt.block_on(futures::future::join_all((0..N).map(|i| {
        let c = c.clone();
        async move {
            let out = c.get_object().bucket(BUCKET).key("co/sdk").send().await;
            let out = ok(out, &format!("SDK waiter {i}"));
            bytes_of(out.body).await
        }
    })));
    for (i, body) in bodies.iter().enumerate() {
        assert_same(body, &body_sdk, &format!("SDK waiter {i}"));
    }
    s.assert_counts(
        &[("GET co/raw", 1), ("GET co/sdk", 1)],
        &format!("{N} concurrent SDK GETs"),
    );
    s.assert_metric("perch_cache_misses_total", (2 * N) as f64);
    s.assert_metric("perch_cache_coalesced_total", (2 * (N - 1)) as f64);

    s.no_faults();
    s.get_expect("co/raw", &body_raw, "HIT");
    s.get_expect("co/sdk", &body_sdk, "HIT");
    s.assert_counts(&[("GET co/raw", 1), ("GET co/sdk", 1)], "GETs after the fills");
}

// ---------------------------------------------------------------------------------------------
// Memory budget

/// `--cache-memory-bytes` is shared: RocksDB's caches (24 MiB), the allocator's overhead (1/16) and
/// the disk tier's eviction order come first, the memory tier gets the rest, and its limit follows
/// the disk tier after a start.
#[test]
fn the_memory_budget_covers_the_index_and_the_eviction_order() {
    let _turn = machine::share();
    const BUDGET: f64 = (30 * MIB) as f64;
    // RocksDB's caches, and 1/16 of the budget for the allocator's overhead.
    const INDEX: f64 = (24 * MIB) as f64 + BUDGET / 16.0;
    const ENTRIES: u64 = 50_000;
    const SEED: u64 = 7;
    // The populated keys are OrioleDB-shaped parts read in order: no read-ahead past them here.
    let mut s = Stack::start(&["--cache-memory-bytes", "30MiB", "--read-ahead", ""]);
    let _log = s.log_on_panic();
    let memory_limit = "perch_cache_limit_bytes{tier=\"memory\"}";
    s.assert_metric(memory_limit, BUDGET - INDEX);
    s.assert_metric("perch_cache_eviction_state_bytes", 0.0);

    // 50,000 entries of 1 KiB, written into the stopped Perch's data dir as the restart bench does.
    s.stop_clean();
    write_cache_entries(&s.data_dir, ENTRIES, KIB, SEED, BUCKET);
    s.start_again();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.metric(memory_limit) == BUDGET - INDEX {
        assert!(
            Instant::now() < deadline,
            "the memory tier's limit never followed the rebuilt eviction order:\n{}",
            s.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    s.assert_metric("perch_cache_entries{tier=\"disk\"}", ENTRIES as f64);
    let state = s.metric("perch_cache_eviction_state_bytes");
    assert!(
        state >= (ENTRIES * 20) as f64 && state <= (ENTRIES * 40) as f64,
        "{state} bytes of eviction order for {ENTRIES} entries"
    );
    let limit = s.metric(memory_limit);
    assert_eq!(
        limit,
        BUDGET - INDEX - state,
        "the memory tier gets what the budget leaves"
    );

    // Hits of 6,000 distinct entries (~12 MB weighed) go through that smaller memory tier.
    s.proxy.reset();
    for i in 0..6_000 {
        let key = entry_key(i);
        let body = body_bytes(SEED, &key, 0, KIB);
        let r = s.get(&key);
        assert_eq!(r.status, 200, "GET {key}: {}", r.summary());
        assert_eq!(r.header("X-Cache"), Some("HIT"), "X-Cache of GET {key}");
        assert!(r.body == body, "GET {key}: not the populated body");
    }
    s.assert_counts(&[], "hits of populated entries");
    let held = s.metric("perch_cache_size_bytes{tier=\"memory\"}");
    assert!(
        held > 0.0 && held <= limit,
        "the memory tier holds {held} bytes, its limit is {limit}"
    );
    assert!(s.metric("perch_cache_evictions_total{tier=\"memory\"}") > 0.0);
    s.assert_metric(memory_limit, limit);
}

// ---------------------------------------------------------------------------------------------
// Eviction

/// A fill of an object too large to keep (over a quarter of the disk tier) stops once its only
/// reader has gone: it used to fetch the whole object from the origin for nobody. A read after it
/// gets the whole object.
#[test]
fn a_fill_too_large_to_keep_stops_when_its_reader_goes() {
    use std::io::{Read, Write};
    let _turn = machine::share();
    let s = Stack::start(&["--cache-disk-bytes", "8MiB"]);
    let _log = s.log_on_panic();
    let size = 8 * MIB;
    let body = pattern(size, 103);
    s.put_behind_perchs_back("big/unkept", &body);
    s.faults(r#"{"bandwidth_bytes_per_sec": 4194304}"#);
    {
        let (head, _) = s.req("GET", "big/unkept").head();
        let mut conn = std::net::TcpStream::connect(s.addr()).expect("connect");
        conn.write_all(&head).expect("send the GET");
        let mut first = vec![0u8; 64 * KIB];
        conn.read_exact(&mut first).expect("the answer's first bytes");
    }
    // Long enough for the whole object to come at that rate (sooner when split into ranges).
    std::thread::sleep(Duration::from_secs(4));
    let fetched: u64 = s
        .records("big/unkept")
        .iter()
        .filter(|r| r["method"] == "GET")
        .filter_map(|r| r["resp_bytes"].as_u64())
        .sum();
    assert!(
        fetched < size as u64 / 2,
        "{fetched} bytes of {size} fetched after the only reader went"
    );
    s.no_faults();
    let r = s.get("big/unkept");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("X-Cache"), Some("BYPASS"));
    assert_same(&r.body, &body, "a read after the abandoned fill");
}

#[test]
fn eviction_keeps_the_disk_tier_within_its_limit_and_a_scan_does_not_flush_a_popular_object() {
    let _turn = machine::share();
    const LIMIT: usize = 3 * MIB;
    const SIZE: usize = 256 * KIB;
    const SCAN: usize = 24;
    // The memory budget covers the index's 24 MiB and 1/16 for the allocator first: this leaves a
    // memory tier of about 1 MiB.
    let s = Stack::start(&["--cache-disk-bytes", "3MiB", "--cache-memory-bytes", "27306KiB"]);
    let _log = s.log_on_panic();
    let popular = pattern(SIZE, 100);
    let once = pattern(SIZE, 101);
    let scan: Vec<Vec<u8>> = (0..SCAN).map(|i| pattern(SIZE, 200 + i as u64)).collect();
    // More than a quarter of the disk limit: passed through, never kept.
    let big = pattern(MIB, 102);
    s.put_behind_perchs_back("ev/popular", &popular);
    s.put_behind_perchs_back("ev/once", &once);
    for (i, body) in scan.iter().enumerate() {
        s.put_behind_perchs_back(&format!("ev/scan/{i:02}"), body);
    }
    s.put_behind_perchs_back("ev/big", &big);
    s.proxy.reset();

    s.get_expect("ev/popular", &popular, "MISS");
    for _ in 0..3 {
        s.get_expect("ev/popular", &popular, "HIT");
    }
    s.get_expect("ev/once", &once, "MISS");
    // A one-off scan of 24 objects, each read once: 6 MiB through a 3 MiB disk tier.
    for (i, body) in scan.iter().enumerate() {
        s.get_expect(&format!("ev/scan/{i:02}"), body, "MISS");
        let used = s.blob_bytes();
        assert!(
            used <= LIMIT as u64,
            "after GET ev/scan/{i:02}: {used} bytes under cache/blobs, over the {LIMIT} limit"
        );
    }
    // Exactly full: twelve objects of 256 KiB.
    let files = s.blob_files();
    assert_eq!(files.len(), LIMIT / SIZE, "blob files: {files:?}");
    assert!(files.iter().all(|(_, len)| *len == SIZE as u64), "{files:?}");
    assert_eq!(s.tmp_files(), vec![]);

    // The popular object survived the scan (S3-FIFO); the one read once did not.
    s.proxy.reset();
    s.get_expect("ev/popular", &popular, "HIT");
    s.assert_counts(&[], "the popular object after the scan");
    s.get_expect("ev/once", &once, "MISS");
    s.assert_counts(&[("GET ev/once", 1)], "the object read once before the scan");
    s.get_expect("ev/once", &once, "HIT");

    // Every object was put behind perch's back: the only cache entries are the fills of the GETs
    // above. 27 objects kept (popular, once twice, the scan), 12 left: 15 evicted.
    s.assert_metric("perch_cache_evictions_total{tier=\"disk\"}", 15.0);
    s.assert_metric("perch_cache_entries{tier=\"disk\"}", 12.0);
    s.assert_metric("perch_cache_size_bytes{tier=\"disk\"}", LIMIT as f64);
    assert!(s.blob_bytes() <= LIMIT as u64);
    // A fill goes to the disk tier; a hit brings an object of up to 1 MiB into the memory tier.
    for (i, body) in scan.iter().enumerate() {
        let key = format!("ev/scan/{i:02}");
        if s.head(&key).header("X-Cache") == Some("HIT") {
            s.get_expect(&key, body, "HIT");
        }
    }
    // The memory tier (1 MiB) holds at most three of these objects, and had to let some go.
    let memory = s.metric("perch_cache_size_bytes{tier=\"memory\"}");
    assert!(
        memory <= MIB as f64,
        "the memory tier holds {memory} bytes, over its 1 MiB limit"
    );
    let in_memory = s.metric("perch_cache_entries{tier=\"memory\"}");
    assert!(
        in_memory <= 3.0,
        "{in_memory} objects of 256 KiB in a 1 MiB memory tier"
    );
    let memory_evictions = s.metric("perch_cache_evictions_total{tier=\"memory\"}");
    assert!(
        memory_evictions > 0.0,
        "the hits of 12 objects of 256 KiB went through a 1 MiB memory tier"
    );

    // Too large to keep: BYPASS, every time from the origin, and nothing evicted for it.
    s.proxy.reset();
    s.get_expect("ev/big", &big, "BYPASS");
    s.get_expect("ev/big", &big, "BYPASS");
    s.assert_counts(&[("GET ev/big", 2)], "an object too large to keep");
    s.assert_metric("perch_cache_bypass_total", 2.0);
    s.assert_metric("perch_cache_evictions_total{tier=\"disk\"}", 15.0);
    let files = s.blob_files();
    assert_eq!(files.len(), LIMIT / SIZE, "blob files: {files:?}");
    assert_eq!(s.tmp_files(), vec![]);
    s.get_expect("ev/popular", &popular, "HIT");
    s.assert_counts(&[("GET ev/big", 2)], "the popular object at the end");
}

// ---------------------------------------------------------------------------------------------
// Corruption, crashes, restarts

#[test]
fn a_flipped_byte_in_a_cached_file_is_detected_and_the_client_still_gets_the_exact_bytes() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let small = pattern(300 * KIB + 5, 11);
    let large = pattern(3 * MIB + 100, 12);
    s.put_behind_perchs_back("c/small", &small);
    s.put_behind_perchs_back("c/large", &large);
    s.get_expect("c/small", &small, "MISS");
    s.get_expect("c/large", &large, "MISS");
    s.get_expect("c/large", &large, "HIT");
    let small_blob = s.blob_holding(&small);
    let large_blob = s.blob_holding(&large);

    // The memory tier holds a checked copy of the small object: damage the files while perch is
    // stopped, so that the next start reads them from disk.
    s.stop_clean();
    flip_byte(&small_blob, 1234);
    flip_byte(&large_blob, (BLOCK + 4321) as u64);
    s.start_again();
    s.proxy.reset();

    // A small object is checked whole before a byte is sent: refetched, a plain MISS.
    s.get_expect("c/small", &small, "MISS");
    s.assert_counts(&[("GET c/small", 1)], "the corrupt small object");
    s.assert_metric("perch_cache_corrupt_total", 1.0);
    s.get_expect("c/small", &small, "HIT");

    // A large one is sent block by block: the first block is good and goes out (a HIT); the
    // second fails its check, and the rest comes from the origin with a range request.
    s.get_expect("c/large", &large, "HIT");
    s.assert_metric("perch_cache_corrupt_total", 2.0);
    let records = s.records("c/large");
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["method"], "GET");
    assert_eq!(records[0]["status"], 206, "the rest must be a ranged GET: {records:#?}");
    assert_eq!(records[0]["resp_bytes"], (large.len() - BLOCK) as u64, "{records:#?}");
    s.assert_counts(&[("GET c/small", 1), ("GET c/large", 1)], "the corrupt large object");
    // The bad entry is gone: a fresh MISS, then a HIT.
    s.get_expect("c/large", &large, "MISS");
    s.get_expect("c/large", &large, "HIT");
    s.assert_counts(&[("GET c/small", 1), ("GET c/large", 2)], "after the refetch");
    s.assert_metric("perch_cache_entries{tier=\"disk\"}", 2.0);

    // A range GET whose first block is corrupt is a miss: answered by the origin at once, while
    // the whole object is fetched again in the background.
    let blob = s.blob_holding(&large);
    flip_byte(&blob, (2 * BLOCK + 10) as u64);
    s.proxy.reset();
    let spec = format!("{}-{}", 2 * BLOCK + 5, 2 * BLOCK + 5000);
    s.range_expect("c/large", &large, &spec, "MISS");
    s.assert_metric("perch_cache_corrupt_total", 3.0);
    eventually("the background fill is kept", || {
        s.metric("perch_cache_entries{tier=\"disk\"}") == 2.0
    });
    let statuses: Vec<_> = s.records("c/large").iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [206, 200], "the range, then the background fill");
    s.range_expect("c/large", &large, &spec, "HIT");
    s.get_expect("c/large", &large, "HIT");
    s.assert_counts(&[("GET c/large", 2)], "after the background fill");
    s.assert_metric("perch_cache_corrupt_total", 3.0);
}

/// The rest of a large cached object whose block fails its check comes from the origin as a ranged
/// read; from an origin that ignores ranges (200 and the whole object, which HTTP allows) that rest
/// is cut out of the whole body, never sent from the object's first byte in its place.
#[test]
fn a_corrupt_block_refetched_from_an_origin_that_ignores_ranges_is_cut_to_its_place() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let large = pattern(3 * MIB + 100, 14);
    s.put_behind_perchs_back("ci/large", &large);
    s.get_expect("ci/large", &large, "MISS");
    s.get_expect("ci/large", &large, "HIT");
    let blob = s.blob_holding(&large);
    s.stop_clean();
    flip_byte(&blob, (BLOCK + 4321) as u64);
    s.start_again();
    s.proxy.reset();
    s.faults(r#"{"ignore_range": true}"#);
    s.get_expect("ci/large", &large, "HIT");
    s.assert_metric("perch_cache_corrupt_total", 1.0);
    let records = s.records("ci/large");
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["status"], 200, "the origin ignored the range: {records:#?}");
    s.no_faults();
    s.get_expect("ci/large", &large, "MISS");
    s.get_expect("ci/large", &large, "HIT");
}

#[test]
fn a_clean_restart_and_a_kill_9_keep_the_cache_warm() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("warm/empty", Vec::new()),
        ("warm/10k", pattern(10 * KIB, 31)),
        ("warm/500k", pattern(500 * KIB, 32)),
        // The largest object the memory tier takes.
        ("warm/1m", pattern(MIB, 33)),
        ("warm/2.5m", pattern(2 * MIB + MIB / 2, 34)),
    ];
    for (key, body) in &objects {
        s.put_behind_perchs_back(key, body);
    }
    for (key, body) in &objects {
        s.get_expect(key, body, "MISS");
        // An empty body is complete before its fill is kept: wait for the first HIT.
        eventually(&format!("{key} is a HIT"), || {
            s.get(key).header("X-Cache") == Some("HIT")
        });
    }

    s.restart_clean();
    s.proxy.reset();
    for (key, body) in &objects {
        s.get_expect(key, body, "HIT");
        s.head_expect(key, body, "HIT");
    }
    s.assert_counts(&[], "after a clean restart");
    // The first GET of each after the start reads the disk.
    s.assert_metric("perch_cache_hits_total{tier=\"disk\"}", 5.0 + 2.0);
    s.assert_metric("perch_cache_misses_total", 0.0);
    eventually("the eviction order is rebuilt", || {
        s.metric("perch_cache_entries{tier=\"disk\"}") == 5.0
    });

    // A fill that completed just before a crash.
    let late = pattern(700 * KIB, 35);
    s.put_behind_perchs_back("warm/late", &late);
    s.get_expect("warm/late", &late, "MISS");
    s.get_expect("warm/late", &late, "HIT");
    s.restart_after_kill();
    s.proxy.reset();
    for (key, body) in objects.iter().chain([&("warm/late", late.clone())]) {
        s.get_expect(key, body, "HIT");
    }
    s.assert_counts(&[], "after kill -9");
    s.assert_metric("perch_cache_corrupt_total", 0.0);
    s.assert_metric("perch_cache_hits_total{tier=\"disk\"}", 6.0);
}

#[test]
fn a_crash_mid_fill_and_damaged_files_are_discarded_not_served() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let a = pattern(3 * MIB, 21);
    let b = pattern(2 * MIB + 500 * KIB, 22);
    let c = pattern(200 * KIB, 23);
    let d = pattern(50 * KIB, 24);
    for (key, body) in [("crash/a", &a), ("crash/b", &b), ("crash/c", &c), ("crash/d", &d)] {
        s.put_behind_perchs_back(key, body);
    }
    for (key, body) in [("crash/b", &b), ("crash/c", &c), ("crash/d", &d)] {
        s.get_expect(key, body, "MISS");
        s.get_expect(key, body, "HIT");
    }
    let b_blob = s.blob_holding(&b);
    let c_blob = s.blob_holding(&c);

    // perch dies while it fetches `a` (the origin sends it at 512 KiB/s).
    s.faults(r#"{"bandwidth_bytes_per_sec": 524288}"#);
    let client = get_in_thread(&s, "crash/a");
    eventually("a fill is under way", || s.tmp_files().iter().any(|(_, len)| *len > 0));
    s.kill();
    let answer = client.join().expect("client thread");
    assert!(
        answer.is_err(),
        "the client of a killed perch cannot get a whole answer: {:?}",
        answer.map(|r| r.summary())
    );
    s.no_faults();

    // More damage, as a crash (or a disk) may leave: a stray temp file, blobs cut short, a blob
    // an earlier run wrote but never indexed (ids below 4096 belong to the first run).
    let tmp = s.blobs_dir().join("tmp");
    std::fs::write(tmp.join("0123456789abcdef0123456789abcdef"), pattern(1000, 1)).unwrap();
    truncate(&b_blob, (BLOCK + 1000) as u64);
    truncate(&c_blob, 10);
    let orphan = s.blobs_dir().join("a0").join("0000000000000fa0");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, pattern(5000, 2)).unwrap();
    assert_eq!(s.tmp_files().len(), 2, "the half-written fill and the stray file");

    s.start_again();
    assert_eq!(s.tmp_files(), vec![], "temp files are removed at start");
    eventually("the orphan blob is removed", || !orphan.exists());
    s.proxy.reset();
    s.get_expect("crash/a", &a, "MISS");
    s.get_expect("crash/b", &b, "MISS");
    s.get_expect("crash/c", &c, "MISS");
    s.get_expect("crash/d", &d, "HIT");
    s.assert_counts(
        &[("GET crash/a", 1), ("GET crash/b", 1), ("GET crash/c", 1)],
        "after the crash",
    );
    s.assert_metric("perch_cache_corrupt_total", 2.0);
    for (key, body) in [("crash/a", &a), ("crash/b", &b), ("crash/c", &c), ("crash/d", &d)] {
        s.get_expect(key, body, "HIT");
    }
    s.assert_counts(
        &[("GET crash/a", 1), ("GET crash/b", 1), ("GET crash/c", 1)],
        "after the refetches",
    );
}

// ---------------------------------------------------------------------------------------------
// Writes, revalidation

/// The origin proxy refuses (503) every DELETE: the uploader keeps retrying a delete, so that it
/// stays pending in perch (GETs and HEADs are untouched).
const HOLD_DELETES: &str = r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_method": "DELETE"}"#;

#[test]
fn writes_and_deletes_through_perch_replace_or_drop_the_cached_copy_at_once() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let c = s.sdk();
    let v: Vec<Vec<u8>> = (0..6).map(|i| pattern(100 * KIB + i, 40 + i as u64)).collect();
    s.put_behind_perchs_back("w/k", &v[0]);
    // Through perch (its first write, after which perch knows the bucket), and uploaded.
    s.put("w/src", &v[2]);
    s.flush(Duration::from_secs(60));
    s.proxy.reset();
    s.get_expect("w/k", &v[0], "MISS");
    s.get_expect("w/k", &v[0], "HIT");

    // PutObject: the written version is the cached copy at once, before the origin has it.
    let put = c
        .put_object()
        .bucket(BUCKET)
        .key("w/k")
        .body(ByteStream::from(v[1].clone()))
        .send();
    ok(s.rt.block_on(put), "PUT w/k");
    s.head_expect("w/k", &v[1], "HIT");
    s.get_expect("w/k", &v[1], "HIT");
    s.assert_reads(&[("GET w/k", 1)], "GET and HEAD after a PUT through perch");
    // Once uploaded, the same copy is still served, and it is what the origin holds.
    s.flush(Duration::from_secs(60));
    assert!(
        s.in_moto("w/k") == Some(v[1].clone()),
        "moto holds the PUT after the flush"
    );
    s.get_expect("w/k", &v[1], "HIT");
    s.assert_reads(&[("GET w/k", 1)], "after the PUT was uploaded");

    // CopyObject onto the key (the origin copies, once it holds every write of both keys).
    let copy = c
        .copy_object()
        .bucket(BUCKET)
        .key("w/k")
        .copy_source(format!("{BUCKET}/w/src"))
        .send();
    ok(s.rt.block_on(copy), "COPY w/src to w/k");
    s.get_expect("w/k", &v[2], "MISS");
    s.get_expect("w/k", &v[2], "HIT");

    // CompleteMultipartUpload onto the key (an ETag that is not an MD5): staged locally, the
    // completed object is a version like a PUT, served at once.
    let etag = s.rt.block_on(async {
        let created = ok(
            c.create_multipart_upload().bucket(BUCKET).key("w/k").send().await,
            "create upload",
        );
        let id = created.upload_id().expect("upload id").to_owned();
        let part = ok(
            c.upload_part()
                .bucket(BUCKET)
                .key("w/k")
                .upload_id(&id)
                .part_number(1)
                .body(ByteStream::from(v[3].clone()))
                .send()
                .await,
            "upload part",
        );
        let done = ok(
            c.complete_multipart_upload()
                .bucket(BUCKET)
                .key("w/k")
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .parts(
                            CompletedPart::builder()
                                .part_number(1)
                                .e_tag(part.e_tag().expect("part ETag"))
                                .build(),
                        )
                        .build(),
                )
                .send()
                .await,
            "complete upload",
        );
        done.e_tag().expect("ETag").to_owned()
    });
    assert_eq!(etag, multipart_etag(&[&v[3]]));
    s.get_expect_etag("w/k", &v[3], "HIT", &etag);
    s.assert_reads(&[("GET w/k", 2)], "after the copy and the multipart upload");
    s.flush(Duration::from_secs(60));
    assert!(
        s.in_moto("w/k") == Some(v[3].clone()),
        "moto holds the multipart object after the flush"
    );

    // DeleteObjects: 404 at once, from perch alone (the delete is held back from the origin).
    s.faults(HOLD_DELETES);
    let delete = c
        .delete_objects()
        .bucket(BUCKET)
        .delete(
            Delete::builder()
                .objects(ObjectIdentifier::builder().key("w/k").build().expect("id"))
                .build()
                .expect("delete"),
        )
        .send();
    ok(s.rt.block_on(delete), "DeleteObjects w/k");
    assert_error(&s.get("w/k"), 404, "NoSuchKey", "GET after DeleteObjects");
    assert_eq!(s.head("w/k").status, 404, "HEAD after DeleteObjects");
    s.assert_reads(&[("GET w/k", 2)], "GET and HEAD of a pending DeleteObjects");
    assert!(s.in_moto("w/k").is_some(), "the delete was held back from moto");
    // Once the origin has the delete, the origin says 404 (nothing cached is served).
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert!(s.in_moto("w/k").is_none(), "moto still holds w/k after the flush");
    assert_error(&s.get("w/k"), 404, "NoSuchKey", "GET after DeleteObjects was uploaded");
    // The uploader's HEAD after the DELETE (an object landing right after it is deleted again).
    s.assert_reads(&[("GET w/k", 3), ("HEAD w/k", 1)], "after DeleteObjects was uploaded");

    // DeleteObject, of a version written through perch.
    s.put("w/k", &v[4]);
    s.get_expect("w/k", &v[4], "HIT");
    s.faults(HOLD_DELETES);
    ok(
        s.rt.block_on(c.delete_object().bucket(BUCKET).key("w/k").send()),
        "DELETE w/k",
    );
    assert_error(&s.get("w/k"), 404, "NoSuchKey", "GET after DeleteObject");
    assert_eq!(s.head("w/k").status, 404, "HEAD after DeleteObject");
    s.assert_reads(
        &[("GET w/k", 3), ("HEAD w/k", 1)],
        "GET and HEAD of a pending DeleteObject",
    );
    s.no_faults();
    s.flush(Duration::from_secs(60));
    assert!(s.in_moto("w/k").is_none(), "moto still holds w/k after the flush");
    assert_error(&s.get("w/k"), 404, "NoSuchKey", "GET after DeleteObject was uploaded");
    assert_eq!(s.head("w/k").status, 404, "HEAD after DeleteObject was uploaded");
    s.assert_reads(&[("GET w/k", 4), ("HEAD w/k", 3)], "after the writes");

    // A write while a fill is under way: the GET that started first gets the body it started
    // with, the fill is not kept, and the written version is served at once.
    let old = pattern(2 * MIB, 50);
    let new = v[5].clone();
    s.put_behind_perchs_back("w/slow", &old);
    s.proxy.reset();
    s.faults(r#"{"bandwidth_bytes_per_sec": 1048576}"#);
    let client = get_in_thread(&s, "w/slow");
    eventually("a fill is under way", || s.tmp_files().iter().any(|(_, len)| *len > 0));
    s.put("w/slow", &new);
    let r = client
        .join()
        .expect("client thread")
        .expect("the GET begun before the write");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("X-Cache"), Some("MISS"));
    assert_same(&r.body, &old, "the GET begun before the write");
    s.no_faults();
    s.get_expect("w/slow", &new, "HIT");
    s.flush(Duration::from_secs(60));
    assert!(
        s.in_moto("w/slow") == Some(new.clone()),
        "moto holds the write after the flush"
    );
    s.get_expect("w/slow", &new, "HIT");
    s.assert_reads(&[("GET w/slow", 1)], "a write during a fill");
}

/// A fill that starts while a write through Perch is not yet in the origin (here a range miss's
/// background fill of the whole object) fetches the older version: it is never kept, even when
/// the write's upload lands before the fill ends. (It used to replace the new version's clean
/// copy with the old bytes, served as hits from then on.)
#[test]
fn a_fill_started_before_a_pending_write_lands_never_replaces_it() {
    // Alone: the fill must outlast the upload.
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let old = pattern(6 * MIB, 120);
    let new = pattern(10 * KIB, 121);
    s.put_behind_perchs_back("sf/k", &old);
    s.proxy.reset();
    // Every origin request 800 ms late and every body at 1 MiB/s (the fill of the old 6 MiB takes
    // about 6 s); uploads refused until the faults are lifted.
    s.faults(
        r#"{"latency_ms": 800, "bandwidth_bytes_per_sec": 1048576, "error_rate": 1.0,
            "error_kinds": ["503"], "match_method": "PUT", "match_key_prefix": "sf/"}"#,
    );
    let addr = s.addr();
    let range = std::thread::spawn(move || {
        Req::object("GET", addr, Style::Path, &key_path("sf/k"))
            .header("Range", "bytes=0-99")
            .go(addr)
    });
    std::thread::sleep(Duration::from_millis(300));
    // Acknowledged while the range is still on its way: the range's answer starts the fill.
    s.put("sf/k", &new);
    let r = range.join().expect("range thread");
    assert_eq!(r.status, 206, "{}", r.summary());
    eventually("the background fill asked the origin", || {
        s.proxy
            .log()
            .iter()
            .any(|r| r["key"] == "sf/k" && r["method"] == "GET" && r["status"] == 200)
            || s.tmp_files().iter().any(|(_, len)| *len > 0)
    });
    s.no_faults();
    s.flush(Duration::from_secs(30));
    let fill_done = |s: &Stack| {
        s.records("sf/k")
            .iter()
            .any(|r| r["method"] == "GET" && r["resp_bytes"] == old.len() as u64)
    };
    assert!(!fill_done(&s), "the test needs the upload to land before the fill ends");
    // (Not read now: a read would put the new version in the memory tier, which would hide what
    // the disk tier holds.)
    eventually("the fill of the old version ended", || fill_done(&s));
    eventually("the fill's temp file is gone", || s.tmp_files().is_empty());
    s.get_expect("sf/k", &new, "HIT");
}

/// A fill that started while a delete through Perch was pending (here a range miss's background
/// fill of the old version) serves the read that started it and no later one: once the delete is
/// in the origin, its tombstone leaves the index, and a GET must answer 404, not join that fill of
/// the deleted object and get its bytes with 200.
#[test]
fn a_fill_started_while_a_delete_is_pending_is_never_joined_after_the_delete_lands() {
    // Alone: the fill must outlast the delete's upload.
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let old = pattern(6 * MIB, 123);
    s.put_behind_perchs_back("sd/k", &old);
    s.proxy.reset();
    // Every origin request 800 ms late and every body at 1 MiB/s (the fill of the old 6 MiB takes
    // about 6 s); the delete's upload refused until the faults are lifted.
    s.faults(
        r#"{"latency_ms": 800, "bandwidth_bytes_per_sec": 1048576, "error_rate": 1.0,
            "error_kinds": ["503"], "match_method": "DELETE", "match_key_prefix": "sd/"}"#,
    );
    let addr = s.addr();
    let range = std::thread::spawn(move || {
        Req::object("GET", addr, Style::Path, &key_path("sd/k"))
            .header("Range", "bytes=0-99")
            .go(addr)
    });
    std::thread::sleep(Duration::from_millis(300));
    // Acknowledged while the range is still on its way: the range's answer starts the fill.
    let d = s.req("DELETE", "sd/k").go(addr);
    assert_eq!(d.status, 204, "{}", d.summary());
    let r = range.join().expect("range thread");
    assert_eq!(r.status, 206, "{}", r.summary());
    eventually("the background fill asked the origin", || {
        s.records("sd/k")
            .iter()
            .any(|r| r["method"] == "GET" && r["status"] == 200)
            || s.tmp_files().iter().any(|(_, len)| *len > 0)
    });
    s.no_faults();
    s.flush(Duration::from_secs(30));
    assert_eq!(s.in_moto("sd/k"), None, "the delete is in the origin");
    let fill_done = |s: &Stack| {
        s.records("sd/k")
            .iter()
            .any(|r| r["method"] == "GET" && r["resp_bytes"] == old.len() as u64)
    };
    assert!(!fill_done(&s), "the test needs the delete to land before the fill ends");
    let g = s.get("sd/k");
    assert_eq!(g.status, 404, "a GET after the delete landed: {}", g.summary());
    let h = s.head("sd/k");
    assert_eq!(h.status, 404, "a HEAD after the delete landed: {}", h.summary());
    eventually("the fill of the old version ended", || fill_done(&s));
    eventually("the fill's temp file is gone", || s.tmp_files().is_empty());
    let g = s.get("sd/k");
    assert_eq!(g.status, 404, "a GET after the fill ended: {}", g.summary());
}

#[test]
fn mutable_keys_are_revalidated_after_the_ttl_and_others_never() {
    let _turn = machine::alone();
    const TTL: Duration = Duration::from_secs(3);
    let s = Stack::start(&["--cache-revalidate", "mut/*", "--cache-revalidate-after", "3s"]);
    let _log = s.log_on_panic();
    let old = pattern(64 * KIB, 60);
    let new = pattern(64 * KIB + 1, 61);
    let big = pattern(2 * MIB, 62);
    for key in ["mut/changed", "mut/same", "mut/head", "imm/changed"] {
        s.put_behind_perchs_back(key, &old);
    }
    s.put_behind_perchs_back("mut/big", &big);
    s.proxy.reset();
    let filled = Instant::now();
    for key in ["mut/changed", "mut/same", "mut/head", "imm/changed"] {
        s.get_expect(key, &old, "MISS");
    }
    s.get_expect("mut/big", &big, "MISS");
    let fills_done = Instant::now();
    // Behind perch's back.
    s.put_behind_perchs_back("mut/changed", &new);
    s.put_behind_perchs_back("imm/changed", &new);
    s.proxy.reset();

    // Before the TTL: the cached copies, without asking the origin.
    s.get_expect("mut/changed", &old, "HIT");
    s.get_expect("imm/changed", &old, "HIT");
    let checked = filled.elapsed();
    assert!(
        checked < TTL,
        "this machine took {checked:?} (more than the {TTL:?} TTL) to fill and read five objects"
    );
    s.assert_counts(&[], "before the TTL");

    // Every copy was confirmed before `fills_done`.
    std::thread::sleep((fills_done + TTL + Duration::from_millis(300)).saturating_duration_since(Instant::now()));
    // A changed mutable key: a conditional HEAD finds it changed, then a fresh fill.
    s.get_expect("mut/changed", &new, "MISS");
    s.assert_counts(
        &[("HEAD mut/changed", 1), ("GET mut/changed", 1)],
        "a changed mutable key after the TTL",
    );
    // An unchanged one: confirmed by a conditional HEAD, not fetched again, and fresh again.
    s.get_expect("mut/same", &old, "REVALIDATED");
    s.get_expect("mut/same", &old, "HIT");
    s.head_expect("mut/head", &old, "REVALIDATED");
    s.head_expect("mut/head", &old, "HIT");
    s.get_expect("mut/big", &big, "REVALIDATED");
    s.get_expect("mut/big", &big, "HIT");
    // An immutable key is never asked about: the old copy stays.
    s.get_expect("imm/changed", &old, "HIT");
    s.get_expect("mut/changed", &new, "HIT");
    s.assert_counts(
        &[
            ("HEAD mut/changed", 1),
            ("GET mut/changed", 1),
            ("HEAD mut/same", 1),
            ("HEAD mut/head", 1),
            ("HEAD mut/big", 1),
        ],
        "after the TTL",
    );
    s.assert_metric("perch_cache_revalidations_total{result=\"changed\"}", 1.0);
    s.assert_metric("perch_cache_revalidations_total{result=\"unchanged\"}", 3.0);
    s.assert_metric("perch_cache_revalidations_total{result=\"failed\"}", 0.0);
}

// ---------------------------------------------------------------------------------------------
// Ranges

#[test]
fn range_hits_and_misses_return_the_right_bytes() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let large = pattern(2 * MIB + MIB / 2, 70);
    let small = pattern(100 * KIB, 71);
    s.put_behind_perchs_back("rg/large", &large);
    s.put_behind_perchs_back("rg/small", &small);
    s.proxy.reset();

    // A range miss is answered by the origin at once; the whole object follows in the background.
    s.range_expect("rg/large", &large, "1048570-1048590", "MISS");
    s.range_expect("rg/small", &small, "-100", "MISS");
    eventually("both background fills are kept", || {
        s.metric("perch_cache_entries{tier=\"disk\"}") == 2.0
    });
    for key in ["rg/large", "rg/small"] {
        let statuses: Vec<_> = s.records(key).iter().map(|r| r["status"].clone()).collect();
        assert_eq!(statuses, [206, 200], "{key}: the range, then the background fill");
    }
    s.proxy.reset();

    let size = large.len();
    let specs = [
        "0-0".to_owned(),
        "0-99".to_owned(),
        "-100".to_owned(),
        format!("-{}", size + 10),
        format!("{}-", size - 1),
        "2621000-".to_owned(),
        // Across block boundaries.
        "1048575-1048576".to_owned(),
        format!("{}-{}", MIB - 3, 2 * MIB + 3),
        format!("100-{}", size - 1),
        format!("5-{}", size + 1000),
        format!("{}-{}", 2 * MIB, 2 * MIB),
    ];
    for spec in &specs {
        s.range_expect("rg/large", &large, spec, "HIT");
    }
    for spec in ["0-0", "-1", "50000-", "10-99999999"] {
        s.range_expect("rg/small", &small, spec, "HIT");
    }
    for (key, from) in [("rg/large", size), ("rg/small", small.len())] {
        let r = s.get_range(key, &format!("bytes={from}-"));
        assert_error(&r, 416, "InvalidRange", &format!("{key} from its end"));
    }

    // aws-sdk-s3.
    let c = s.sdk();
    let out = ok(
        s.rt.block_on(
            c.get_object()
                .bucket(BUCKET)
                .key("rg/large")
                .range("bytes=1048000-1049000")
                .send(),
        ),
        "SDK ranged GET",
    );
    assert_eq!(
        out.content_range(),
        Some(format!("bytes 1048000-1049000/{size}").as_str())
    );
    let body = s.rt.block_on(bytes_of(out.body));
    assert_same(&body, &large[1_048_000..=1_049_000], "SDK ranged GET");
    s.assert_counts(&[], "range hits");
}

// ---------------------------------------------------------------------------------------------
// Origin faults during a fill

#[test]
fn a_broken_origin_stream_is_resumed_with_range_and_if_match() {
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let body = pattern(3 * MIB, 80);
    s.put_behind_perchs_back("brk/k", &body);
    s.proxy.reset();

    // The origin's answer is cut after 1,000,000 bytes; perch resumes where it broke.
    s.faults(r#"{"fail_next": 1, "cut_body_after": 1000000, "match_key_prefix": "brk/k"}"#);
    s.get_expect("brk/k", &body, "MISS");
    let records = s.records("brk/k");
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["cut_body_after"], 1_000_000, "{records:#?}");
    assert_eq!(records[0]["resp_bytes"], 1_000_000, "{records:#?}");
    assert_eq!(
        records[1]["status"], 206,
        "the resumption is a ranged GET: {records:#?}"
    );
    assert_eq!(
        records[1]["resp_bytes"],
        (body.len() - 1_000_000) as u64,
        "{records:#?}"
    );
    s.assert_counts(&[("GET brk/k", 2)], "a resumed fill");
    s.assert_metric("perch_cache_resumed_total", 1.0);
    s.get_expect("brk/k", &body, "HIT");
    s.assert_counts(&[("GET brk/k", 2)], "after the resumed fill");

    // The object changes between the break and the resumption: the resumption is conditional
    // (If-Match), so the origin refuses it (412), and the client gets a cut body, never a
    // spliced one.
    let first = pattern(3 * MIB, 81);
    let second = pattern(10 * KIB, 82);
    s.put_behind_perchs_back("brk/changing", &first);
    s.proxy.reset();
    // 1.5 s before each origin answer leaves time to change the object after the cut.
    s.faults(r#"{"fail_next": 1, "cut_body_after": 1000000, "match_key_prefix": "brk/changing", "latency_ms": 1500}"#);
    let client = get_in_thread(&s, "brk/changing");
    eventually("the first answer is cut", || {
        s.records("brk/changing")
            .iter()
            .any(|r| r["cut_body_after"] == 1_000_000)
    });
    s.put_behind_perchs_back("brk/changing", &second);
    let answer = client.join().expect("client thread");
    match answer {
        Err(_) => {}
        Ok(r) => panic!(
            "the client must see a cut body, got {} bytes: {}",
            r.body.len(),
            r.summary()
        ),
    }
    let statuses: Vec<_> = s.records("brk/changing").iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [200, 412], "the cut answer, then the refused resumption");
    s.no_faults();
    s.get_expect("brk/changing", &second, "MISS");
    s.get_expect("brk/changing", &second, "HIT");
    s.assert_counts(&[("GET brk/changing", 3)], "after the object changed mid-fill");
    s.assert_metric("perch_cache_resumed_total", 2.0);
}

/// A range miss is answered from the origin's ranged answer as it arrives; when that stream
/// breaks, Perch resumes it where it broke (Range + If-Match, up to the range's end) and the
/// client gets its whole range (it got a cut 206).
#[test]
fn a_range_miss_whose_origin_stream_breaks_is_resumed() {
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let body = pattern(4 * MIB, 83);
    s.put_behind_perchs_back("brk/ranged", &body);
    s.proxy.reset();
    // Only the client's ranged GET is cut: the background fill of the whole object follows it.
    s.faults(r#"{"fail_next": 1, "cut_body_after": 500000, "match_key_prefix": "brk/ranged"}"#);
    s.range_expect("brk/ranged", &body, "1000000-2999999", "MISS");
    let records = s.records("brk/ranged");
    assert_eq!(records[0]["cut_body_after"], 500_000, "{records:#?}");
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 206 && r["resp_bytes"] == 1_500_000),
        "the rest of the range, asked from where it broke: {records:#?}"
    );
    s.assert_metric("perch_cache_resumed_total", 1.0);
}

/// A range asked while the whole object's fill is under way and has passed the range's start is
/// answered from the fill's bytes, not asked of the origin again.
/// Range misses over many objects fetch their whole objects behind their answers, 8 at most at
/// once (`BACKGROUND_FILLS_MAX`): a burst of ranged reads does not start as many whole downloads.
/// The ranges are answered all the same, and an object whose background fill was not started is
/// filled by its next whole read.
#[test]
fn range_misses_over_many_objects_fill_at_most_eight_objects_at_once() {
    // Alone: the background fills must overlap.
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let bodies: Vec<Vec<u8>> = (0..20).map(|i| pattern(2 * MIB, 130 + i)).collect();
    for (i, body) in bodies.iter().enumerate() {
        s.put_behind_perchs_back(&format!("bf/{i}"), body);
    }
    s.proxy.reset();
    // Each body at 1 MiB/s: a whole object takes about 2 s, a range of 100 bytes no time.
    s.faults(r#"{"bandwidth_bytes_per_sec": 1048576, "match_key_prefix": "bf/"}"#);
    for (i, body) in bodies.iter().enumerate() {
        s.range_expect(&format!("bf/{i}"), body, "1000-1099", "MISS");
    }
    let whole_gets = || -> Vec<(f64, f64)> {
        s.proxy
            .log()
            .iter()
            .filter(|r| r["method"] == "GET" && r["status"] == 200)
            .map(|r| (r["t_start"].as_f64().unwrap_or(0.0), r["t_end"].as_f64().unwrap_or(0.0)))
            .collect()
    };
    eventually("a background fill ended", || {
        !whole_gets().is_empty() && s.tmp_files().is_empty()
    });
    // Any fill started after the first ones ended would take 2 s more.
    std::thread::sleep(Duration::from_millis(2500));
    eventually("the background fills ended", || s.tmp_files().is_empty());
    let whole = whole_gets();
    let at_once = whole
        .iter()
        .map(|(start, _)| whole.iter().filter(|(a, b)| a <= start && start < b).count())
        .max()
        .unwrap_or(0);
    assert!(
        (1..=8).contains(&at_once) && whole.len() < bodies.len(),
        "{} whole GETs, {at_once} at once, for {} range misses",
        whole.len(),
        bodies.len()
    );
    s.no_faults();
    // Every object is whole-read right: the ones filled behind their ranges as hits, the others
    // filled now.
    let hits = (0..bodies.len())
        .filter(|i| {
            let r = s.get(&format!("bf/{i}"));
            assert_eq!(r.status, 200, "{}", r.summary());
            assert_same(&r.body, &bodies[*i], "a whole read");
            r.header("x-cache") == Some("HIT")
        })
        .count();
    assert_eq!(hits, whole.len(), "the objects filled behind their ranges are hits");
}

#[test]
fn a_range_inside_a_fill_under_way_is_served_from_the_fill() {
    // Alone: the range must arrive while the throttled fill is still under way.
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let body = pattern(6 * MIB, 90);
    s.put_behind_perchs_back("rf/k", &body);
    s.proxy.reset();
    // 1 MiB/s: the whole GET takes about 6 s, the range below is reached after about 1 s.
    s.faults(r#"{"bandwidth_bytes_per_sec": 1048576, "match_key_prefix": "rf/k"}"#);
    let whole = get_in_thread(&s, "rf/k");
    eventually("the fill is under way", || {
        s.tmp_files().iter().any(|(_, len)| *len > 0)
    });
    s.range_expect("rf/k", &body, "100000-600000", "MISS");
    let answer = whole.join().expect("client thread").expect("the whole GET");
    assert_eq!(answer.status, 200, "{}", answer.summary());
    assert_same(&answer.body, &body, "the whole GET");
    s.no_faults();
    s.assert_counts(&[("GET rf/k", 1)], "a range during the fill");
    s.get_expect("rf/k", &body, "HIT");
}

/// A fill whose origin stream keeps breaking with no byte between the breaks is asked again after
/// pauses that grow (50 ms doubling to 2 s), not in a tight loop (there were hundreds of GETs a
/// second), and discarded once the retry deadline has passed since the first break: the clients
/// of that fill get a cut body, nothing partial is kept, and the next GET fetches it afresh. (A
/// stream that keeps bringing bytes is resumed for as long as it does.)
#[test]
fn a_fill_that_keeps_breaking_backs_off_and_is_discarded_never_kept_partial() {
    let _turn = machine::share();
    let s = Stack::start(&["--origin-retry-deadline", "3s"]);
    let _log = s.log_on_panic();
    let body = pattern(3 * MIB, 91);
    s.put_behind_perchs_back("kb/k", &body);
    s.proxy.reset();
    // Every answer's body is cut before its first byte.
    s.faults(r#"{"fail_next": 100000, "cut_body_after": 0, "match_key_prefix": "kb/k"}"#);
    let waiters: Vec<_> = (0..3).map(|_| get_in_thread(&s, "kb/k")).collect();
    for (i, w) in waiters.into_iter().enumerate() {
        match w.join().expect("client thread") {
            Err(_) => {}
            Ok(r) => assert!(
                r.status != 200 || r.body.len() < body.len(),
                "waiter {i} must not get a whole answer: {}",
                r.summary()
            ),
        }
    }
    let asked = s.records("kb/k").len();
    assert!(
        (3..=15).contains(&asked),
        "{asked} origin GETs in the 3 s the fill kept resuming: not a few after growing pauses"
    );
    eventually("the fill's temp file is gone", || s.tmp_files().is_empty());
    assert_eq!(s.metric("perch_cache_entries{tier=\"disk\"}"), 0.0, "nothing was kept");
    // An origin that sends a few bytes before every break is no better: less than 64 KiB
    // between breaks does not end the run (it was resumed at once, thousands of times).
    let few = pattern(3 * MIB, 93);
    s.put_behind_perchs_back("kb/few", &few);
    s.faults(r#"{"fail_next": 100000, "cut_body_after": 1000, "match_key_prefix": "kb/few"}"#);
    match s.req("GET", "kb/few").send(s.addr()) {
        Err(_) => {}
        Ok(r) => assert!(
            r.status != 200 || r.body.len() < few.len(),
            "a whole answer from 1,000-byte pieces: {}",
            r.summary()
        ),
    }
    let asked = s.records("kb/few").len();
    assert!(
        (3..=15).contains(&asked),
        "{asked} origin GETs of 1,000 bytes each: not a few after growing pauses"
    );
    s.no_faults();
    s.get_expect("kb/k", &body, "MISS");
    s.get_expect("kb/k", &body, "HIT");
}

// ---------------------------------------------------------------------------------------------
// Large misses from a slow origin: ranged reads side by side

/// Now, in the proxy records' clock (Unix seconds).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// The origin's GETs of `key`: (status, start, end, bytes sent), in order.
fn gets_of(s: &Stack, key: &str) -> Vec<(u64, f64, f64, u64)> {
    s.records(key)
        .iter()
        .filter(|r| r["method"] == "GET")
        .map(|r| {
            (
                r["status"].as_u64().unwrap_or(0),
                r["t_start"].as_f64().unwrap_or(0.0),
                r["t_end"].as_f64().unwrap_or(0.0),
                r["resp_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A 24 MiB miss from an origin that sends each answer at 6 MiB/s (as one TCP stream from a
/// distant region is bounded): after timing its first 2 MiB, Perch cuts the first stream and asks
/// for the rest in ranged GETs (If-Match on the first answer's ETag) several at once. The client
/// gets the exact bytes as one answer, the whole body's check passes, the copy is kept (the next
/// GET is a hit), and the origin sent each byte about once. A body streamed straight through
/// (a bypassed key) is split alike. (That a fast stream is left whole is the unit test of
/// `segments::cut_at`: how fast a stream from moto looks depends on this machine's load.)
#[test]
fn a_large_miss_from_a_slow_origin_is_fetched_as_ranged_reads_side_by_side() {
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let body = pattern(24 * MIB, 90);
    s.put_behind_perchs_back("slow/undo", &body);
    s.proxy.reset();
    s.faults(r#"{"latency_ms": 30, "bandwidth_bytes_per_sec": 6291456}"#);
    s.get_expect("slow/undo", &body, "MISS");
    s.no_faults();

    let gets = gets_of(&s, "slow/undo");
    assert_eq!(gets[0].0, 200, "the first GET is the whole object's: {gets:?}");
    let ranged: Vec<_> = gets[1..].iter().filter(|g| g.0 == 206).collect();
    assert_eq!(
        ranged.len(),
        gets.len() - 1,
        "every later GET is a ranged one: {gets:?}"
    );
    assert!(ranged.len() >= 4, "the rest comes in ranged reads: {gets:?}");
    assert!(
        ranged.iter().all(|g| g.3 <= 4 * MIB as u64),
        "every ranged read is one segment: {gets:?}"
    );
    let side_by_side = ranged.iter().any(|a| ranged.iter().any(|b| a.1 < b.1 && b.1 < a.2));
    assert!(side_by_side, "ranged reads overlap in time: {gets:?}");
    let sent: u64 = gets.iter().map(|g| g.3).sum();
    assert!(
        sent < (body.len() + body.len() / 4) as u64,
        "the origin sent {sent} bytes for {}: {gets:?}",
        body.len()
    );
    for r in s.records("slow/undo").iter().filter(|r| r["status"] == 206) {
        assert!(r["error"].is_null(), "{r:#?}");
    }
    let before_hit = unix_now();
    s.get_expect("slow/undo", &body, "HIT");
    let after: Vec<_> = gets_of(&s, "slow/undo")
        .into_iter()
        .filter(|g| g.1 > before_hit)
        .collect();
    assert!(after.is_empty(), "the hit reached no origin: {after:?}");

    // A key the policy keeps no copy of (OrioleDB's undo files, streamed straight through) is
    // split alike.
    let undo = pattern(20 * MIB, 95);
    s.put_behind_perchs_back("orioledb_undo/0000000002data", &undo);
    s.faults(r#"{"latency_ms": 30, "bandwidth_bytes_per_sec": 6291456}"#);
    s.get_expect("orioledb_undo/0000000002data", &undo, "BYPASS");
    s.no_faults();
    let gets = gets_of(&s, "orioledb_undo/0000000002data");
    assert!(
        gets.iter().filter(|g| g.0 == 206).count() >= 3,
        "a bypassed body comes in ranged reads too: {gets:?}"
    );
}

/// A ranged read that breaks midway is resumed where the client's bytes stopped, and an object
/// replaced during a split fill is never served or kept spliced: its ranged reads are conditional
/// on the first answer's ETag.
#[test]
fn a_split_fill_resumes_a_broken_range_and_never_splices_a_replaced_object() {
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let body = pattern(20 * MIB, 92);
    s.put_behind_perchs_back("split/brk", &body);
    s.proxy.reset();
    // The first ranged GET's answer is cut after 300,000 bytes.
    s.faults(
        r#"{"bandwidth_bytes_per_sec": 6291456, "fail_next": 1, "cut_body_after": 300000, "match_header": "range"}"#,
    );
    s.get_expect("split/brk", &body, "MISS");
    s.no_faults();
    let gets = gets_of(&s, "split/brk");
    assert!(
        gets.iter().any(|g| g.0 == 206 && g.3 == 300_000),
        "a ranged read was cut: {gets:?}"
    );
    assert!(s.metric("perch_cache_resumed_total") >= 1.0);
    s.get_expect("split/brk", &body, "HIT");

    // Replaced at the origin once the fill is split: the client sees a cut answer or the old
    // bytes whole, never a mixture, and the next GET is the new object.
    let old = pattern(24 * MIB, 93);
    let new = pattern(10 * KIB, 94);
    s.put_behind_perchs_back("split/changing", &old);
    s.proxy.reset();
    // 1 MiB/s: the first ranged reads take 4 s, and the next are asked after the change.
    s.faults(r#"{"bandwidth_bytes_per_sec": 1048576}"#);
    let client = get_in_thread(&s, "split/changing");
    // The proxy records a request once it ended: the first GET's record is there once Perch cut
    // it, when its first ranged reads are under way.
    eventually("the fill is split", || {
        gets_of(&s, "split/changing").iter().any(|g| g.0 == 200)
    });
    s.put_behind_perchs_back("split/changing", &new);
    let changed = unix_now();
    match client.join().expect("client thread") {
        Err(_) => {}
        Ok(r) => {
            assert_eq!(r.status, 200, "{}", r.summary());
            assert!(
                r.body.len() < old.len() || r.body == old,
                "a whole answer is the old object, never a splice"
            );
        }
    }
    s.no_faults();
    let gets = gets_of(&s, "split/changing");
    let after: Vec<_> = gets.iter().filter(|g| g.1 > changed).collect();
    assert!(!after.is_empty(), "ranged reads were asked after the change: {gets:?}");
    // 412 (If-Match), or 416 for a range past the new object's end.
    assert!(
        after.iter().all(|g| g.0 == 412 || g.0 == 416),
        "every ranged read asked after the change is refused: {gets:?}"
    );
    s.get_expect("split/changing", &new, "MISS");
    s.get_expect("split/changing", &new, "HIT");
}

/// A range miss from an origin that ignores `Range` (200 and the whole object) is still answered
/// with its range, as S3 answers it: 206, its Content-Range, and only its bytes, cut out of the
/// whole body (a restore tool writing what it gets at the range's offset would otherwise write
/// the whole object there). For a cached key and for a key kept nowhere (`wal/*`); a range the
/// object cannot satisfy is 416.
#[test]
fn a_range_miss_from_an_origin_that_ignores_ranges_is_answered_with_its_range() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let size = 300_000usize;
    let body = pattern(size, 95);
    for (key, range, first, last) in [
        ("norange/between", "bytes=100-199", 100, 199),
        ("norange/suffix", "bytes=-1000", size - 1000, size - 1),
        ("norange/open", "bytes=299990-", 299_990, size - 1),
        ("wal/000000010000000000000042", "bytes=4096-8191", 4096, 8191),
    ] {
        s.put_behind_perchs_back(key, &body);
        s.faults(r#"{"ignore_range": true}"#);
        let r = s.get_range(key, range);
        s.no_faults();
        assert_eq!(r.status, 206, "{key} {range}: {}", r.summary());
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {first}-{last}/{size}").as_str()),
            "{key} {range}"
        );
        assert!(
            r.body == body[first..=last],
            "{key} {range}: {} bytes, not the range's {}",
            r.body.len(),
            last - first + 1
        );
    }
    s.put_behind_perchs_back("norange/past-the-end", &body);
    s.faults(r#"{"ignore_range": true}"#);
    let r = s.get_range("norange/past-the-end", "bytes=400000-");
    s.no_faults();
    assert_error(
        &r,
        416,
        "InvalidRange",
        "a range past the end, from an origin that ignores ranges",
    );
    // From an origin that answers ranges, its 416 names the object's size, and so does Perch's
    // (Content-Range and ActualObjectSize, as for a cached copy: it named none).
    for key in ["norange/past-the-end-too", "wal/000000010000000000000043"] {
        s.put_behind_perchs_back(key, &body);
        let r = s.get_range(key, "bytes=400000-");
        assert_error(&r, 416, "InvalidRange", &format!("{key}: a range miss past the end"));
        assert_eq!(
            r.header("Content-Range"),
            Some("bytes */300000"),
            "{key}: {}",
            r.summary()
        );
        assert_eq!(
            xml_values(&r.text(), "ActualObjectSize"),
            ["300000"],
            "{key}: {}",
            r.summary()
        );
    }
}

/// An origin whose ETags are not MD5s (S3 with SSE-KMS, DSSE-KMS or SSE-C, which names the
/// encryption in its answers) is served through Perch, objects of no stored checksum included: a
/// miss is not checked against its ETag as an MD5 (it was, failed, and every GET of such an
/// object was 503 SlowDown). Kept copies (in
/// memory, on disk) and a key kept nowhere (`wal/*`) alike, answered with the origin's ETag.
#[test]
fn objects_whose_etags_are_not_md5s_are_served_and_kept() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let kms_etag = |body: &[u8]| md5_etag(body).chars().rev().collect::<String>();
    let objects = [
        ("kms/small", pattern(300_000, 97)),
        ("kms/large", pattern(9 << 20, 98)),
        ("wal/000000010000000000000050", pattern(2 << 20, 99)),
    ];
    for (key, body) in &objects {
        s.put_behind_perchs_back_without_checksum(key, body);
    }
    s.faults(r#"{"kms_etags": true}"#);
    for (key, body) in &objects {
        let (first, again) = if key.starts_with("wal/") {
            ("BYPASS", "BYPASS")
        } else {
            ("MISS", "HIT")
        };
        s.get_expect_etag(key, body, first, &kms_etag(body));
        s.get_expect_etag(key, body, again, &kms_etag(body));
    }
}

/// An origin that ignores `Range` (HTTP allows it: a ranged GET answered with 200 and the whole
/// object) still serves large slow objects and broken reads whole: a split body's ranged reads
/// keep their part of each whole answer and no body is split again, and a broken read resumes by
/// skipping what it already had.
#[test]
fn an_origin_that_ignores_ranges_still_serves_split_and_resumed_reads_whole() {
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let slow = pattern(40 * MIB, 96);
    s.put_behind_perchs_back("norange/slow", &slow);
    s.proxy.reset();
    s.faults(r#"{"ignore_range": true, "latency_ms": 30, "bandwidth_bytes_per_sec": 12582912}"#);
    s.get_expect("norange/slow", &slow, "MISS");
    s.no_faults();
    let gets = gets_of(&s, "norange/slow");
    assert!(gets.len() >= 2, "the slow body was split: {gets:?}");
    assert!(
        gets.iter().all(|g| g.0 == 200),
        "the origin answered every read whole: {gets:?}"
    );
    // The first read, the ranged reads under way when the first whole answer came, and one
    // read for the rest (not one a range: up to 10 in all for 40 MiB).
    assert!(
        gets.len() <= 6,
        "no range asked once the origin is known to ignore them: {gets:?}"
    );
    s.get_expect("norange/slow", &slow, "HIT");

    // Known to ignore ranges: the next slow body is read as one stream.
    let next = pattern(20 * MIB, 97);
    s.put_behind_perchs_back("norange/next", &next);
    s.faults(r#"{"ignore_range": true, "latency_ms": 30, "bandwidth_bytes_per_sec": 12582912}"#);
    s.get_expect("norange/next", &next, "MISS");
    s.no_faults();
    let gets = gets_of(&s, "norange/next");
    assert_eq!(gets.len(), 1, "one read of the whole object: {gets:?}");

    // A read cut midway resumes with a ranged GET, answered whole: the bytes before the break
    // are skipped, not served twice.
    let cut = pattern(2 * MIB, 98);
    s.put_behind_perchs_back("norange/cut", &cut);
    s.faults(r#"{"ignore_range": true, "fail_next": 1, "cut_body_after": 300000}"#);
    s.get_expect("norange/cut", &cut, "MISS");
    s.no_faults();
    let gets = gets_of(&s, "norange/cut");
    assert!(
        gets.iter().any(|g| g.0 == 200 && g.3 == 300_000),
        "the first read was cut: {gets:?}"
    );
    assert!(gets.len() >= 2, "the read was resumed: {gets:?}");
    s.get_expect("norange/cut", &cut, "HIT");
}
