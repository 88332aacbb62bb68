//! Prefetch on listing, read-ahead of sibling parts and the hot set under `.perch/`, over HTTP.
//!
//! The real `perch` binary in front of moto behind the request-counting origin proxy; objects are
//! put straight into moto (`put_behind_perchs_back`) so that perch only learns of them from the
//! origin. The proxy's counts say which objects were fetched, `X-Cache` whether a read was a hit,
//! and `perch_cache_prefetches_total{reason,result}` what each prefetch came to.

use std::time::{Duration, Instant};

use perch_testkit::bodies::pattern;
use perch_testkit::raw_client::{BUCKET, Req, Style, xml_values};
use perch_testkit::sigv4::uri_encode;

use crate::support::machine;
use crate::support::perch::admin_get;
use crate::support::raw::{assert_error, list_keys};
use crate::support::stack::{Stack, assert_same, eventually};

const KIB: usize = 1 << 10;

/// Lists `prefix` through perch (ListObjectsV2), returning the keys.
fn list_prefix(s: &Stack, prefix: &str) -> Vec<String> {
    let q = format!("list-type=2&prefix={}", uri_encode(prefix.as_bytes(), true));
    let r = Req::bucket("GET", s.addr(), Style::Path, &q).go(s.addr());
    assert_eq!(r.status, 200, "LIST {prefix}: {}", r.summary());
    xml_values(&r.text(), "Key")
}

/// The origin GETs of keys starting with `prefix` (the proxy's counts).
fn origin_gets_under(s: &Stack, prefix: &str) -> u64 {
    s.counts()
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("GET {prefix}")))
        .map(|(_, n)| *n)
        .sum()
}

#[test]
fn a_listing_a_rule_marks_is_prefetched_up_to_its_byte_bound() {
    let _turn = machine::share();
    let s = Stack::start(&["--prefetch-on-list", "pf/*/", "--prefetch-bytes", "3MiB"]);
    let _log = s.log_on_panic();
    let bodies: Vec<Vec<u8>> = (0..10).map(|i| pattern(512 * KIB, 300 + i)).collect();
    for (i, body) in bodies.iter().enumerate() {
        s.put_behind_perchs_back(&format!("pf/a/{i}"), body);
    }
    s.put_behind_perchs_back("pf/other", &bodies[0]);
    s.proxy.reset();

    // A listing no rule marks (the rule wants a prefix below pf/) fetches nothing.
    assert_eq!(list_prefix(&s, "pf/").len(), 11);
    // The marked one: as much as the 3 MiB bound holds (6 of 10), the rest is dropped.
    assert_eq!(list_prefix(&s, "pf/a/").len(), 10);
    let fetched = "perch_cache_prefetches_total{reason=\"list\",result=\"fetched\"}";
    let dropped = "perch_cache_prefetches_total{reason=\"list\",result=\"dropped\"}";
    eventually("the prefetches are done", || {
        s.metric(fetched) + s.metric(dropped) == 10.0
    });
    s.assert_metric(fetched, 6.0);
    s.assert_metric(dropped, 4.0);
    assert_eq!(origin_gets_under(&s, "pf/"), 6, "{:?}", s.counts());
    // A HEAD reads no bytes: it is no use of a prefetch (it used to count as one).
    for i in 0..10 {
        let r = s.head(&format!("pf/a/{i}"));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    s.assert_metric("perch_cache_prefetch_used_total{reason=\"list\"}", 0.0);
    let mut hits = 0;
    for (i, body) in bodies.iter().enumerate() {
        let r = s.get(&format!("pf/a/{i}"));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_same(&r.body, body, &format!("pf/a/{i}"));
        if r.header("X-Cache") == Some("HIT") {
            hits += 1;
        }
    }
    assert_eq!(hits, 6, "the prefetched objects are hits");
    assert_eq!(
        origin_gets_under(&s, "pf/"),
        10,
        "each object fetched once: {:?}",
        s.counts()
    );
    s.assert_metric("perch_cache_prefetch_used_total{reason=\"list\"}", 6.0);
    assert_eq!(origin_gets_under(&s, "pf/other"), 0);
}

/// OrioleDB's own loader (orioledb_s3_loader.py) lists `data/6` and `orioledb_data/6`, without
/// the last `/`: with the default rules, the checkpoint those name is prefetched, and nothing of
/// the other checkpoints the same listing returns (`data/60/...`).
#[test]
fn a_listing_of_a_checkpoint_without_its_last_slash_is_prefetched() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let ours: Vec<Vec<u8>> = (0..4).map(|i| pattern(64 * KIB, 320 + i)).collect();
    for (i, body) in ours.iter().enumerate() {
        s.put_behind_perchs_back(&format!("data/6/base/5/{i}"), body);
    }
    s.put_behind_perchs_back("data/60/base/5/0", &ours[0]);
    s.put_behind_perchs_back("orioledb_data/6/1/13.map", &ours[1]);
    s.put_behind_perchs_back("orioledb_data/6/1/13.0.0", &ours[2]);
    s.proxy.reset();

    assert_eq!(list_prefix(&s, "data/6").len(), 5);
    assert_eq!(list_prefix(&s, "orioledb_data/6").len(), 2);
    let fetched = "perch_cache_prefetches_total{reason=\"list\",result=\"fetched\"}";
    eventually("the checkpoint's objects and its map are prefetched", || {
        s.metric(fetched) == 5.0
    });
    for (i, body) in ours.iter().enumerate() {
        s.get_expect(&format!("data/6/base/5/{i}"), body, "HIT");
    }
    s.get_expect("orioledb_data/6/1/13.map", &ours[1], "HIT");
    assert_eq!(origin_gets_under(&s, "data/60/"), 0, "{:?}", s.counts());
    assert_eq!(origin_gets_under(&s, "orioledb_data/6/1/13.0"), 0, "{:?}", s.counts());
}

/// OrioleDB's own loader reads `data/N/orioledb_data/file_checksums`, then fetches the files it
/// names from earlier checkpoints one at a time, from keys no listing names: Perch fetches them
/// as soon as the list is read.
#[test]
fn the_files_a_checksum_list_names_are_prefetched() {
    let _turn = machine::share();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let named = ["data/4/base/5/1247", "data/4/base/5/2608", "data/1/global/1262"];
    let bodies: Vec<Vec<u8>> = (0..named.len()).map(|i| pattern(48 * KIB, 340 + i as u64)).collect();
    for (key, body) in named.iter().zip(&bodies) {
        s.put_behind_perchs_back(key, body);
    }
    s.put_behind_perchs_back("data/4/base/5/1249", &bodies[0]);
    s.put_behind_perchs_back("data/6/base/5/1259", &bodies[1]);
    let list = "FILE: base/5/1247, CHECKSUM: 1, CHECKPOINT: 4\n\
                FILE: base/5/2608, CHECKSUM: 2, CHECKPOINT: 4\n\
                FILE: global/1262, CHECKSUM: 3, CHECKPOINT: 1\n\
                FILE: base/5/1259, CHECKSUM: 4, CHECKPOINT: 6\n";
    s.put_behind_perchs_back("data/6/orioledb_data/file_checksums", list.as_bytes());
    s.proxy.reset();

    s.get_expect("data/6/orioledb_data/file_checksums", list.as_bytes(), "MISS");
    let fetched = "perch_cache_prefetches_total{reason=\"list\",result=\"fetched\"}";
    eventually("the named files are prefetched", || s.metric(fetched) == 3.0);
    for (key, body) in named.iter().zip(&bodies) {
        s.get_expect(key, body, "HIT");
    }
    // Only what the list names from earlier checkpoints: not the neighbour it leaves out, nor
    // its own checkpoint's file (that one is in the checkpoint's listing).
    assert_eq!(origin_gets_under(&s, "data/4/base/5/1249"), 0, "{:?}", s.counts());
    assert_eq!(origin_gets_under(&s, "data/6/base/"), 0, "{:?}", s.counts());
    // Read again, the list is not acted on twice: no more listings (the proxy counts them as
    // GETs of the bucket) and no more prefetches.
    let listings = || s.counts().get("GET ").copied().unwrap_or(0);
    let before = listings();
    assert!(
        before >= 2,
        "one listing of data/1/ and one of data/4/: {:?}",
        s.counts()
    );
    s.get_expect("data/6/orioledb_data/file_checksums", list.as_bytes(), "HIT");
    std::thread::sleep(Duration::from_millis(300));
    s.assert_metric(fetched, 3.0);
    assert_eq!(listings(), before, "{:?}", s.counts());
}

/// A replica reads the primary's bucket through its overlay and never fetches ahead for a
/// restore: reading a checksum list there fetches nothing it names.
#[test]
fn a_replica_does_not_act_on_a_checksum_list() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    s.stop_clean();
    s.start_on_empty_volume(&["--role", "replica"]);
    let _log = s.log_on_panic();
    let body = pattern(48 * KIB, 350);
    s.put_behind_perchs_back("data/4/base/5/1247", &body);
    let list = "FILE: base/5/1247, CHECKSUM: 1, CHECKPOINT: 4\n";
    s.put_behind_perchs_back("data/6/orioledb_data/file_checksums", list.as_bytes());
    s.proxy.reset();
    s.get_expect("data/6/orioledb_data/file_checksums", list.as_bytes(), "MISS");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(origin_gets_under(&s, "data/4/"), 0, "{:?}", s.counts());
    s.get_expect("data/4/base/5/1247", &body, "MISS");
}

/// The most origin GETs under `prefix` that were under way at once (the proxy's records).
fn origin_gets_at_once_under(s: &Stack, prefix: &str) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for r in s.proxy.log() {
        if r["method"] == "GET" && r["key"].as_str().is_some_and(|k| k.starts_with(prefix)) {
            let (Some(start), Some(end)) = (r["t_start"].as_f64(), r["t_end"].as_f64()) else {
                panic!("a record without its times: {r}");
            };
            edges.push((start, 1));
            edges.push((end, -1));
        }
    }
    // An end at the same instant as a start comes first.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// A restore lists a checkpoint and then reads all of it, a few dozen objects at a time: its
/// listing is prefetched 32 fills at a time, as long as those fills hold no more than 64 MiB in
/// memory together (each counted at its size, up to what one fill can hold).
#[test]
fn a_listing_is_prefetched_32_at_a_time_within_a_bound_on_the_bytes_held() {
    let _turn = machine::share();
    let s = Stack::start(&["--prefetch-on-list", "pf/*/"]);
    let _log = s.log_on_panic();
    let small: Vec<Vec<u8>> = (0..40).map(|i| pattern(16 * KIB, 600 + i)).collect();
    for (i, body) in small.iter().enumerate() {
        s.put_behind_perchs_back(&format!("pf/s/{i:02}"), body);
    }
    let large: Vec<Vec<u8>> = (0..7).map(|i| pattern(12 << 20, 700 + i)).collect();
    for (i, body) in large.iter().enumerate() {
        s.put_behind_perchs_back(&format!("pf/l/{i}"), body);
    }
    s.proxy.reset();
    // Long enough a request that every fill the bounds let start is under way at once.
    s.faults(r#"{"latency_ms": 1000}"#);
    let fetched = "perch_cache_prefetches_total{reason=\"list\",result=\"fetched\"}";

    assert_eq!(list_prefix(&s, "pf/s/").len(), 40);
    eventually("the small objects are fetched", || s.metric(fetched) == 40.0);
    assert_eq!(origin_gets_at_once_under(&s, "pf/s/"), 32, "{:?}", s.counts());

    // 12 MiB each: five fit in 64 MiB.
    assert_eq!(list_prefix(&s, "pf/l/").len(), 7);
    eventually("the large objects are fetched", || s.metric(fetched) == 47.0);
    assert_eq!(origin_gets_at_once_under(&s, "pf/l/"), 5, "{:?}", s.counts());
    s.no_faults();
    for (i, body) in large.iter().enumerate() {
        s.get_expect(&format!("pf/l/{i}"), body, "HIT");
    }
    assert_eq!(
        origin_gets_under(&s, "pf/"),
        47,
        "each object fetched once: {:?}",
        s.counts()
    );
}

#[test]
fn a_failed_prefetch_leaves_nothing_behind() {
    let _turn = machine::share();
    let s = Stack::start(&["--prefetch-on-list", "pf/*/", "--origin-retry-deadline", "1s"]);
    let _log = s.log_on_panic();
    let good = pattern(300 * KIB, 310);
    let bad = pattern(300 * KIB, 311);
    s.put_behind_perchs_back("pf/b/good", &good);
    s.put_behind_perchs_back("pf/b/bad", &bad);
    s.proxy.reset();
    // Every GET of pf/b/bad fails (500) until the deadline: the prefetch of it fails.
    s.faults(r#"{"fail_next": 1000, "error_kinds": ["500"], "match_key_prefix": "pf/b/bad", "match_method": "GET"}"#);
    list_prefix(&s, "pf/b/");
    let failed = "perch_cache_prefetches_total{reason=\"list\",result=\"failed\"}";
    let fetched = "perch_cache_prefetches_total{reason=\"list\",result=\"fetched\"}";
    eventually("both prefetches ended", || {
        s.metric(failed) == 1.0 && s.metric(fetched) == 1.0
    });
    s.assert_metric("perch_cache_entries{tier=\"disk\"}", 1.0);
    assert_eq!(s.tmp_files(), vec![], "no partial file is left");
    // Nothing poisoned: once the origin answers, the object is fetched afresh and kept.
    s.no_faults();
    s.get_expect("pf/b/bad", &bad, "MISS");
    s.get_expect("pf/b/bad", &bad, "HIT");
    s.get_expect("pf/b/good", &good, "HIT");
}

/// Prefetches of a listing go on only while a client lists or reads under it: with nobody
/// reading, what is still queued after 10 s is dropped, and never fetched.
#[test]
fn queued_prefetches_are_cancelled_when_no_client_reads_under_the_listing() {
    // Alone: the test races the 10 s cancel timer against the origin's latency.
    let _turn = machine::alone();
    const N: usize = 200;
    let s = Stack::start(&["--prefetch-on-list", "pf/*/"]);
    let _log = s.log_on_panic();
    for i in 0..N {
        s.put_behind_perchs_back(&format!("pf/c/{i:02}"), &pattern(KIB, 400 + i as u64));
    }
    s.proxy.reset();
    // 2 s an origin request: 32 fetches at a time get through about 160 in 10 s.
    s.faults(r#"{"latency_ms": 2000}"#);
    assert_eq!(list_prefix(&s, "pf/c/").len(), N);
    let m = |result: &str| {
        s.metric(&format!(
            "perch_cache_prefetches_total{{reason=\"list\",result=\"{result}\"}}"
        ))
    };
    let started = Instant::now();
    while m("fetched") + m("cancelled") + m("failed") < N as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "prefetches still under way"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.no_faults();
    let (fetched, cancelled) = (m("fetched"), m("cancelled"));
    assert!(cancelled > 0.0, "nothing was cancelled (fetched {fetched})");
    assert_eq!(m("failed"), 0.0);
    assert_eq!(
        origin_gets_under(&s, "pf/c/") as f64,
        fetched,
        "a cancelled item is never fetched"
    );
}

#[test]
fn parts_read_in_order_are_read_ahead_and_served_as_hits() {
    let _turn = machine::share();
    let s = Stack::start(&["--read-ahead-parts", "3"]);
    let _log = s.log_on_panic();
    let name = "orioledb_data/9/5/16440.0";
    let parts: Vec<Vec<u8>> = (0..8).map(|i| pattern(256 * KIB, 500 + i)).collect();
    for (i, body) in parts.iter().enumerate() {
        s.put_behind_perchs_back(&format!("{name}.{i}"), body);
    }
    // A map file is not a part: never read ahead.
    s.put_behind_perchs_back("orioledb_data/9/5/16440.map", &pattern(40, 1));
    s.proxy.reset();
    let fetched = "perch_cache_prefetches_total{reason=\"read_ahead\",result=\"fetched\"}";

    s.get_expect("orioledb_data/9/5/16440.map", &pattern(40, 1), "MISS");
    s.get_expect(&format!("{name}.0"), &parts[0], "MISS");
    s.assert_metric(fetched, 0.0);
    // The second nearby read makes a run: parts 2, 3 and 4 are fetched ahead.
    s.get_expect(&format!("{name}.1"), &parts[1], "MISS");
    eventually("three parts read ahead", || s.metric(fetched) == 3.0);
    s.get_expect(&format!("{name}.2"), &parts[2], "HIT");
    s.get_expect(&format!("{name}.3"), &parts[3], "HIT");
    s.assert_metric("perch_cache_prefetch_used_total{reason=\"read_ahead\"}", 2.0);
    // Each read moves the window: 5 and 6 follow.
    eventually("two more parts read ahead", || s.metric(fetched) == 5.0);
    s.get_expect(&format!("{name}.4"), &parts[4], "HIT");
    for i in 0..=6 {
        assert_eq!(
            s.counts().get(&format!("GET {name}.{i}")),
            Some(&1),
            "part {i}: {:?}",
            s.counts()
        );
    }
    // Reading on to the last part: the read-ahead guesses past the end of the table, which is
    // no failure (a table's last part, or a one-part table, as a replica sees them all day).
    // Part 7, asked for by the read of part 4, first.
    eventually("part 7 read ahead", || s.metric(fetched) == 6.0);
    for (i, part) in parts.iter().enumerate().take(8).skip(5) {
        s.get_expect(&format!("{name}.{i}"), part, "HIT");
    }
    let absent = "perch_cache_prefetches_total{reason=\"read_ahead\",result=\"absent\"}";
    eventually("the part past the end looked for", || s.counter(absent) >= 1.0);
    s.assert_metric(
        "perch_cache_prefetches_total{reason=\"read_ahead\",result=\"failed\"}",
        0.0,
    );
}

#[test]
fn the_hot_set_prewarms_an_empty_volume_and_is_perchs_own() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--hot-set-interval", "0s"]);
    let _log = s.log_on_panic();
    let hot: Vec<Vec<u8>> = (0..5).map(|i| pattern(200 * KIB, 600 + i)).collect();
    let cold = pattern(200 * KIB, 610);
    for (i, body) in hot.iter().enumerate() {
        s.put_behind_perchs_back(&format!("hs/hot/{i}"), body);
    }
    s.put_behind_perchs_back("hs/cold", &cold);
    for (i, body) in hot.iter().enumerate() {
        s.get_expect(&format!("hs/hot/{i}"), body, "MISS");
    }
    // Clients cannot write Perch's prefix.
    let r = s.req("PUT", ".perch/hot-set").body(b"mine".to_vec()).go(s.addr());
    assert_error(&r, 403, "AccessDenied", "PUT under .perch/");
    let r = s.req("DELETE", ".perch/hot-set").go(s.addr());
    assert_error(&r, 403, "AccessDenied", "DELETE under .perch/");

    // The primary writes its hot set when it stops; listings never show it.
    s.stop_clean();
    let set = s.in_moto(".perch/hot-set").expect("the hot set is in the bucket");
    let text = String::from_utf8(set).unwrap();
    for i in 0..5 {
        assert!(text.contains(&format!("hs/hot/{i}\n")), "{text}");
    }
    assert!(!text.contains("hs/cold"), "{text}");

    // A new machine with an empty volume prewarms from it before /readyz, without a client asking.
    s.start_on_empty_volume(&["--prewarm-bucket", BUCKET]);
    eventually("/readyz", || admin_get(s.perch(), "/readyz").0 == 200);
    let fetched = "perch_cache_prefetches_total{reason=\"prewarm\",result=\"fetched\"}";
    s.assert_metric(fetched, 5.0);
    s.proxy.reset();
    for (i, body) in hot.iter().enumerate() {
        s.get_expect(&format!("hs/hot/{i}"), body, "HIT");
    }
    s.assert_counts(&[], "reads of the prewarmed hot set");
    s.assert_metric("perch_cache_prefetch_used_total{reason=\"prewarm\"}", 5.0);
    let listed = list_keys(s.addr());
    assert!(listed.iter().all(|k| !k.starts_with(".perch/")), "{listed:?}");
    assert!(listed.contains(&"hs/cold".to_owned()));
    // A client may read it, but it is never cached: the primary rewrites it straight at the
    // origin, where a cached copy would go stale unseen.
    for _ in 0..2 {
        let r = s.get(".perch/hot-set");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.header("X-Cache"), Some("BYPASS"), "{}", r.summary());
    }

    // A replica reads the hot set but never writes it.
    s.stop_clean();
    let before = s.in_moto(".perch/hot-set");
    s.start_on_empty_volume(&["--role", "replica"]);
    eventually("the replica prewarmed", || s.metric(fetched) == 5.0);
    s.get_expect("hs/cold", &cold, "MISS");
    s.stop_clean();
    assert_eq!(
        s.in_moto(".perch/hot-set"),
        before,
        "a replica never writes the hot set"
    );
}

/// A machine that prewarmed from the hot set and read little before it stopped writes a hot set
/// that keeps the prewarmed objects, after what it read itself and in their order: the hot set
/// of an autostopped Machine does not shrink to the few objects of its last short wake (it used
/// to hold only those).
#[test]
fn a_hot_set_keeps_the_prewarmed_objects_no_client_read() {
    let _turn = machine::share();
    let mut s = Stack::start(&[]);
    let _log = s.log_on_panic();
    let hot: Vec<Vec<u8>> = (0..4).map(|i| pattern(50 * KIB, 950 + i)).collect();
    read_and_drain(&mut s, "hk/hot/", &hot);
    let first = String::from_utf8(s.in_moto(".perch/hot-set").unwrap()).unwrap();

    s.start_on_empty_volume(&["--prewarm-bucket", BUCKET]);
    eventually("/readyz", || admin_get(s.perch(), "/readyz").0 == 200);
    s.assert_metric(
        "perch_cache_prefetches_total{reason=\"prewarm\",result=\"fetched\"}",
        4.0,
    );
    let fresh = pattern(50 * KIB, 960);
    s.put_behind_perchs_back("hk/fresh", &fresh);
    s.get_expect("hk/fresh", &fresh, "MISS");
    // Access times are kept in seconds: the next read is a newer one.
    std::thread::sleep(Duration::from_millis(1100));
    s.get_expect("hk/hot/2", &hot[2], "HIT");
    s.stop_clean();
    let keys = |set: &str| -> Vec<String> {
        set.lines()
            .skip(1)
            .filter_map(|l| l.split_once(' '))
            .map(|(_, k)| k.to_owned())
            .collect()
    };
    let mut want = vec!["hk/hot/2".to_owned(), "hk/fresh".to_owned()];
    want.extend(keys(&first).into_iter().filter(|k| k != "hk/hot/2"));
    let set = String::from_utf8(s.in_moto(".perch/hot-set").unwrap()).unwrap();
    assert_eq!(
        keys(&set),
        want,
        "what this machine read, newest first, then the prewarmed objects no client read, in the \
         order of the hot set it prewarmed from:\n{first}"
    );
}

/// Puts each of `hot` behind Perch's back as `<prefix><i>`, reads it through Perch (a miss), and
/// stops Perch cleanly: the drained primary writes them as its hot set.
fn read_and_drain(s: &mut Stack, prefix: &str, hot: &[Vec<u8>]) {
    for (i, body) in hot.iter().enumerate() {
        s.put_behind_perchs_back(&format!("{prefix}{i}"), body);
        s.get_expect(&format!("{prefix}{i}"), body, "MISS");
    }
    s.stop_clean();
    assert!(
        s.in_moto(".perch/hot-set").is_some(),
        "the drained primary wrote its hot set"
    );
}

/// The first `/readyz` 200 of a start on an empty volume comes after the prewarm, even when
/// Perch first has to list the buckets (no `--prewarm-bucket`) and the origin is slow: before the
/// fix, `/readyz` said ready while that listing was under way, before the hot set was read.
#[test]
fn readyz_waits_for_the_prewarm_from_the_first_probe_on() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--hot-set-interval", "0s"]);
    let _log = s.log_on_panic();
    let hot: Vec<Vec<u8>> = (0..3).map(|i| pattern(100 * KIB, 620 + i)).collect();
    read_and_drain(&mut s, "rz/hot/", &hot);

    // Every origin request now takes 300 ms: the buckets' listing, the hot set, each prewarm fill.
    s.faults(r#"{"latency_ms": 300}"#);
    s.proxy.reset();
    s.start_on_empty_volume(&[]);
    let fetched = "perch_cache_prefetches_total{reason=\"prewarm\",result=\"fetched\"}";
    let started = Instant::now();
    loop {
        let (status, why) = admin_get(s.perch(), "/readyz");
        if status == 200 {
            break;
        }
        assert!(why.contains("prewarm"), "not ready for another reason: {why}");
        assert!(started.elapsed() < Duration::from_secs(5), "never ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.assert_metric(fetched, 3.0);
    // The buckets were listed once before the hot set was read: by the first readiness probe,
    // whose answer the prewarm takes (not a listing of its own, one origin round trip more).
    let log = s.proxy.log();
    let hot_set_read = log
        .iter()
        .find(|r| r["method"] == "GET" && r["key"] == ".perch/hot-set")
        .and_then(|r| r["t_start"].as_f64())
        .expect("the hot set was read");
    let listings_before = log
        .iter()
        .filter(|r| r["method"] == "GET" && r["bucket"].is_null())
        .filter(|r| r["t_start"].as_f64().is_some_and(|t| t < hot_set_read))
        .count();
    assert_eq!(listings_before, 1, "{log:?}");
    s.no_faults();
    s.proxy.reset();
    for (i, body) in hot.iter().enumerate() {
        s.get_expect(&format!("rz/hot/{i}"), body, "HIT");
    }
}

/// A prefetch only takes room the disk tier has free: with the tier nearly full of what clients
/// read, a listing's objects are not fetched (`no_room`), and nothing a client read is evicted
/// for them.
#[test]
fn a_prefetch_never_evicts_what_clients_read() {
    let _turn = machine::share();
    let s = Stack::start(&["--prefetch-on-list", "pf/*/", "--cache-disk-bytes", "1MiB"]);
    let _log = s.log_on_panic();
    let body = |i: u64| pattern(100 * KIB, 700 + i);
    for i in 0..9 {
        s.put_behind_perchs_back(&format!("pf/read/{i}"), &body(i));
    }
    for i in 0..10 {
        s.put_behind_perchs_back(&format!("pf/later/{i}"), &body(100 + i));
    }
    // 900 KiB of a 1 MiB tier: a prefetch keeps a tenth of the tier free, so none fits.
    for i in 0..9 {
        s.get_expect(&format!("pf/read/{i}"), &body(i), "MISS");
    }
    s.proxy.reset();
    assert_eq!(list_prefix(&s, "pf/later/").len(), 10);
    let m = |result: &str| {
        s.metric(&format!(
            "perch_cache_prefetches_total{{reason=\"list\",result=\"{result}\"}}"
        ))
    };
    eventually("every listed object considered", || {
        ["fetched", "no_room", "failed", "skipped", "cancelled"]
            .iter()
            .map(|r| m(r))
            .sum::<f64>()
            >= 10.0
    });
    assert_eq!((m("no_room"), m("fetched")), (10.0, 0.0));
    assert_eq!(origin_gets_under(&s, "pf/later/"), 0, "{:?}", s.counts());
    for i in 0..9 {
        s.get_expect(&format!("pf/read/{i}"), &body(i), "HIT");
    }
    assert_eq!(origin_gets_under(&s, "pf/read/"), 0, "{:?}", s.counts());
}

/// The prefetch fills under way count against the room a prefetch may take, not only those
/// already kept: a listing of many objects that each fit, but not all together, fetches only
/// what fits beside them (it used to fetch them all and evict what clients had read), and an
/// object larger than any the cache keeps is not fetched at all (it was fetched and thrown away
/// at every listing).
#[test]
fn prefetch_fills_under_way_count_against_the_room_a_prefetch_may_take() {
    let _turn = machine::share();
    let s = Stack::start(&["--prefetch-on-list", "pf/*/", "--cache-disk-bytes", "1MiB"]);
    let _log = s.log_on_panic();
    let body = |i: u64| pattern(100 * KIB, 800 + i);
    for i in 0..3 {
        s.put_behind_perchs_back(&format!("pf/read/{i}"), &body(i));
    }
    for i in 0..10 {
        s.put_behind_perchs_back(&format!("pf/later/{i}"), &body(100 + i));
    }
    // Larger than a quarter of the tier: never kept.
    s.put_behind_perchs_back("pf/later/large", &pattern(300 * KIB, 899));
    for i in 0..3 {
        s.get_expect(&format!("pf/read/{i}"), &body(i), "MISS");
    }
    s.proxy.reset();
    // Every fill under way at once.
    s.faults(r#"{"latency_ms": 1000}"#);
    assert_eq!(list_prefix(&s, "pf/later/").len(), 11);
    let m = |result: &str| {
        s.metric(&format!(
            "perch_cache_prefetches_total{{reason=\"list\",result=\"{result}\"}}"
        ))
    };
    eventually("every listed object considered", || {
        ["fetched", "no_room", "failed", "skipped", "cancelled", "dropped"]
            .iter()
            .map(|r| m(r))
            .sum::<f64>()
            >= 11.0
    });
    s.no_faults();
    // 300 KiB read of a 1 MiB tier, a tenth of it left free: room for six more 100 KiB objects.
    assert_eq!(
        (m("fetched"), m("no_room"), m("skipped")),
        (6.0, 4.0, 1.0),
        "(fetched, no_room, skipped)"
    );
    assert_eq!(s.counts().get("GET pf/later/large"), None, "{:?}", s.counts());
    for i in 0..3 {
        s.get_expect(&format!("pf/read/{i}"), &body(i), "HIT");
    }
    assert_eq!(origin_gets_under(&s, "pf/read/"), 0, "{:?}", s.counts());
}

/// Parts read ahead are taken to be as large as the part just read, against `--prefetch-bytes`
/// and the bytes fills may hold (they were taken to be 1 MiB whatever their size); one dropped
/// for the budget is asked for again at the run's next read.
#[test]
fn parts_read_ahead_count_at_the_size_of_the_parts_read() {
    let _turn = machine::share();
    let s = Stack::start(&["--read-ahead-parts", "2", "--prefetch-bytes", "4MiB"]);
    let _log = s.log_on_panic();
    let name = "orioledb_data/9/5/16441.0";
    let parts: Vec<Vec<u8>> = (0..4).map(|i| pattern(3 << 20, 900 + i)).collect();
    for (i, body) in parts.iter().enumerate() {
        s.put_behind_perchs_back(&format!("{name}.{i}"), body);
    }
    s.proxy.reset();
    let m = |result: &str| {
        s.metric(&format!(
            "perch_cache_prefetches_total{{reason=\"read_ahead\",result=\"{result}\"}}"
        ))
    };
    s.get_expect(&format!("{name}.0"), &parts[0], "MISS");
    s.get_expect(&format!("{name}.1"), &parts[1], "MISS");
    // Parts 2 and 3, 3 MiB each: one fits in 4 MiB.
    eventually("one part read ahead", || m("fetched") == 1.0);
    assert_eq!(m("dropped"), 1.0);
    assert_eq!(s.counts().get(&format!("GET {name}.3")), None, "{:?}", s.counts());
    // The part dropped for the budget is asked for again at the run's next read (it used to be
    // skipped for good): with part 2's bytes given back, it fits.
    s.get_expect(&format!("{name}.2"), &parts[2], "HIT");
    eventually("part 3 read ahead", || m("fetched") == 2.0);
    s.get_expect(&format!("{name}.3"), &parts[3], "HIT");
}

/// A primary writes its hot set every `--hot-set-interval`, not only when it stops: a machine
/// that dies leaves the set of its last interval.
#[test]
fn the_hot_set_is_written_every_interval() {
    let _turn = machine::share();
    let s = Stack::start(&["--hot-set-interval", "1s"]);
    let _log = s.log_on_panic();
    let hot: Vec<Vec<u8>> = (0..3).map(|i| pattern(50 * KIB, 720 + i)).collect();
    for (i, body) in hot.iter().enumerate() {
        s.put_behind_perchs_back(&format!("hi/hot/{i}"), body);
        s.get_expect(&format!("hi/hot/{i}"), body, "MISS");
    }
    let listed = |s: &Stack| {
        s.in_moto(".perch/hot-set")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    eventually("the hot set written while Perch runs", || {
        let text = listed(&s);
        (0..3).all(|i| text.contains(&format!("hi/hot/{i}\n")))
    });
    // A later read reaches the next interval's set.
    let later = pattern(50 * KIB, 730);
    s.put_behind_perchs_back("hi/later", &later);
    s.get_expect("hi/later", &later, "MISS");
    eventually("the next interval's hot set", || listed(&s).contains("hi/later\n"));
}

/// Perch's own objects are no client's: a bucket whose clients removed every object of theirs
/// can be deleted, whatever Perch left there (its hot set, a storage class probe a kill left
/// behind); a bucket that still holds one of theirs cannot, and keeps its hot set.
#[test]
fn a_bucket_holding_only_perchs_own_objects_can_be_deleted() {
    let _turn = machine::share();
    let s = Stack::start(&["--hot-set-interval", "1s"]);
    let _log = s.log_on_panic();
    let body = pattern(10 * KIB, 750);
    s.put_behind_perchs_back("gone/a", &body);
    s.put_behind_perchs_back("gone/b", &body);
    s.get_expect("gone/a", &body, "MISS");
    eventually("the hot set written", || s.in_moto(".perch/hot-set").is_some());
    let delete_bucket = || Req::bucket("DELETE", s.addr(), Style::Path, "").go(s.addr());

    let r = s.req("DELETE", "gone/a").go(s.addr());
    assert_eq!(r.status, 204, "{}", r.summary());
    let r = delete_bucket();
    assert_eq!(r.status, 409, "{}", r.summary());
    assert_eq!(r.code().as_deref(), Some("BucketNotEmpty"), "{}", r.summary());
    // As S3's, the document names the bucket.
    assert_eq!(xml_values(&r.text(), "BucketName"), [BUCKET], "{}", r.summary());
    assert!(
        s.in_moto(".perch/hot-set").is_some(),
        "the hot set went while the bucket stayed"
    );

    let r = s.req("DELETE", "gone/b").go(s.addr());
    assert_eq!(r.status, 204, "{}", r.summary());
    // A primary's lease is not the hot set: the bucket it is in is not deleted from under it.
    s.put_behind_perchs_back(".perch/lease", b"{}");
    let r = delete_bucket();
    assert_eq!(r.status, 409, "{}", r.summary());
    assert!(s.in_moto(".perch/lease").is_some(), "the lease went");
    s.rt.block_on(s.moto_sdk().delete_object().bucket(BUCKET).key(".perch/lease").send())
        .expect("delete the lease in moto");
    // The probe of a storage class (`Store::check_storage_class`) whose delete a kill cut short.
    s.put_behind_perchs_back(".perch/storage-class/STANDARD_IA", b"");
    let r = delete_bucket();
    assert_eq!(r.status, 204, "{}", r.summary());
    let gone = s.rt.block_on(s.moto_sdk().head_bucket().bucket(BUCKET).send());
    assert!(gone.is_err(), "the bucket is still in the origin");
}

/// A listing a client made is never dropped for a prewarm filling the byte budget: the prewarm's
/// objects not yet started give way to it. A hot set as large as `--prefetch-bytes` (what a
/// primary writes) used to leave a restore's listing on a new volume no room at all.
#[test]
fn a_listing_takes_the_budget_of_a_prewarm_not_yet_started() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--hot-set-interval", "0s", "--prefetch-on-list", "pf/*/"]);
    let _log = s.log_on_panic();
    // 40 objects of 16 KiB: 32 fetched at once, 8 queued behind them.
    let hot: Vec<Vec<u8>> = (0..40).map(|i| pattern(16 * KIB, 900 + i)).collect();
    read_and_drain(&mut s, "pw/many/", &hot);
    for i in 0..4 {
        s.put_behind_perchs_back(&format!("pf/list/{i}"), &pattern(100 * KIB, 950 + i));
    }
    s.proxy.reset();
    // The prewarm's fetches hang (their answers held 10 s); nothing else is slowed.
    s.faults(r#"{"error_rate": 1.0, "error_kinds": ["held"], "stall_ms": 10000, "match_key_prefix": "pw/many/"}"#);
    // 1 MiB of budget: the prewarm holds 640 KiB, the listing needs 400 KiB more.
    s.start_on_empty_volume(&["--prewarm-wait", "1s", "--prefetch-bytes", "1MiB"]);
    eventually("the prewarm under way", || {
        s.counts().keys().filter(|k| k.starts_with("GET pw/many/")).count() >= 32
    });
    assert_eq!(list_prefix(&s, "pf/list/").len(), 4);
    let m = |reason: &str, result: &str| {
        s.metric(&format!(
            "perch_cache_prefetches_total{{reason=\"{reason}\",result=\"{result}\"}}"
        ))
    };
    eventually("the listing fetched", || {
        m("list", "fetched") + m("list", "dropped") >= 4.0
    });
    assert_eq!((m("list", "fetched"), m("list", "dropped")), (4.0, 0.0));
    assert!(m("prewarm", "dropped") >= 1.0, "no prewarm object gave way");
    s.no_faults();
    for i in 0..4 {
        s.get_expect(&format!("pf/list/{i}"), &pattern(100 * KIB, 950 + i), "HIT");
    }
}

/// `/readyz` waits for the prewarm at most `--prewarm-wait`: a slow origin delays a Machine's
/// readiness by that much, never by the whole prewarm.
#[test]
fn readyz_waits_for_the_prewarm_no_longer_than_prewarm_wait() {
    let _turn = machine::share();
    let mut s = Stack::start(&["--hot-set-interval", "0s"]);
    let _log = s.log_on_panic();
    let hot: Vec<Vec<u8>> = (0..3).map(|i| pattern(512 * KIB, 740 + i)).collect();
    read_and_drain(&mut s, "pw/hot/", &hot);
    // Bodies now come at 100 KiB/s: each prewarm fill takes about 5 s; listings and the hot set
    // (a few hundred bytes) are not slowed.
    s.faults(r#"{"bandwidth_bytes_per_sec": 102400}"#);
    s.start_on_empty_volume(&["--prewarm-wait", "1s"]);
    let started = Instant::now();
    let mut waited_for_the_prewarm = false;
    loop {
        let (status, why) = admin_get(s.perch(), "/readyz");
        if status == 200 {
            break;
        }
        waited_for_the_prewarm |= why.contains("prewarm");
        assert!(started.elapsed() < Duration::from_secs(4), "not ready after 4 s: {why}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(waited_for_the_prewarm, "/readyz never waited for the prewarm");
    let fetched = "perch_cache_prefetches_total{reason=\"prewarm\",result=\"fetched\"}";
    assert_eq!(s.metric(fetched), 0.0, "the prewarm was over before /readyz");
    // The prewarm goes on after readiness.
    eventually("the prewarm finished", || s.metric(fetched) == 3.0);
    s.no_faults();
    for (i, body) in hot.iter().enumerate() {
        s.get_expect(&format!("pw/hot/{i}"), body, "HIT");
    }
}
