//! The policy file through the real binary: `perch policy check|explain`, reload on SIGHUP (a
//! good file replaces the policy, a bad one is refused and the old one stays), upload headers on
//! multipart uploads, and the bypass cache class (reads that keep no copy pass straight through).

use std::time::Duration;

use perch_testkit::bodies::pattern;
use perch_testkit::raw_client::{BUCKET, Req, Resp, Style, key_path};

use crate::support::machine;
use crate::support::perch::{Perch, perch_binary, perch_metric, wait_until};
use crate::support::raw::create_bucket;
use crate::support::stack::{Stack, eventually, flip_byte};

fn perch(args: &[&str]) -> std::process::Output {
    std::process::Command::new(perch_binary())
        .args(args)
        .env_remove("PERCH_POLICY")
        .env_remove("PERCH_WRITE_MODE")
        .env_remove("PERCH_UPLOAD_HEADER")
        .env_remove("PERCH_CACHE_REVALIDATE")
        .output()
        .expect("run perch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn policy_check_names_the_line_and_reason_of_a_mistake() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nkey = \"wal/*\"\nwrite = \"eventually\"\n").expect("write");
    let out = perch(&["policy", "check", bad.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml:3:"), "{err}");
    assert!(err.contains("unknown write mode `eventually`"), "{err}");

    // Every rule's mistake in one run, not only the first.
    let two = dir.path().join("two.toml");
    std::fs::write(
        &two,
        "[[rule]]\nkey = \"wal/*\"\nwrite = \"eventually\"\n\n[[rule]]\nkey = \"x/*\"\ncache = \"sometimes\"\n",
    )
    .expect("write");
    let out = perch(&["policy", "check", two.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("two.toml:3:") && err.contains("two.toml:7:"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[[rule]]\nkey = \"wal/*\"\nwrite = \"write_through\"\n").expect("write");
    let out = perch(&["policy", "check", good.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok, 1 rules"), "{}", text(&out.stdout));

    let out = perch(&["policy", "check", "builtin:orioledb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The shipped profile is readable and is what `check` accepts.
    let shown = perch(&["policy", "show"]);
    assert!(text(&shown.stdout).contains("[[rule]]"));
    let copy = dir.path().join("copy.toml");
    std::fs::write(&copy, &shown.stdout).expect("write");
    assert!(
        perch(&["policy", "check", copy.to_str().expect("utf-8")])
            .status
            .success()
    );
}

#[test]
fn policy_explain_shows_the_rule_and_the_decision() {
    let _turn = machine::share();
    let out = perch(&[
        "policy",
        "explain",
        "orioledb/wal/000000010000000000000003",
        "--method",
        "PUT",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(o.contains("policy: builtin:orioledb"), "{o}");
    assert!(o.contains("PUT orioledb/wal/000000010000000000000003"), "{o}");
    assert!(o.contains("write:           write_through"), "{o}");
    assert!(o.contains("\"WAL segments\""), "{o}");
    assert!(o.contains("cache:           bypass"), "{o}");
    assert!(!o.contains("GET orioledb"), "--method PUT only: {o}");

    // Every method without --method; a part of a checkpoint is written back and immutable.
    let out = perch(&["policy", "explain", "orioledb/orioledb_data/3/1/2.3.4"]);
    let o = text(&out.stdout);
    for m in ["GET", "HEAD", "PUT", "DELETE"] {
        assert!(o.contains(&format!("{m} orioledb/orioledb_data/3/1/2.3.4")), "{o}");
    }
    assert!(
        o.contains("write:           write_back               default, no rule"),
        "{o}"
    );
    assert!(o.contains("freshness:       immutable"), "{o}");

    // A user file, with a shorthand flag before it.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"regions\"\nbucket = \"db\"\nkey = \"*\"\nupload_priority = \"high\"\n[rule.upload_headers]\n\"X-Tigris-Regions\" = \"iad,ams\"\n",
    )
    .expect("write");
    let f = file.to_str().expect("utf-8");
    let out = perch(&[
        "policy",
        "explain",
        "db/data/1/global/pg_control",
        "--method",
        "put",
        "--policy",
        f,
        "--write-mode",
        "data/*=write_through",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(o.contains("write:           write_through"), "{o}");
    assert!(o.contains("rule 1 (--write-mode data/*=write_through)"), "{o}");
    assert!(o.contains("upload priority: high"), "{o}");
    assert!(o.contains("upload header:   x-tigris-regions: iad,ams"), "{o}");
    assert!(o.contains("p.toml:1 \"regions\""), "{o}");
    // The file replaces the built-in profile: no barrier for the control file any more.
    assert!(!o.contains("barrier"), "{o}");
    // Another bucket: the bucket glob does not match.
    let out = perch(&["policy", "explain", "other/x", "--method", "PUT", "--policy", f]);
    assert!(
        text(&out.stdout).contains("upload headers:  none"),
        "{}",
        text(&out.stdout)
    );

    let out = perch(&["policy", "explain", "no-key"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("BUCKET/KEY"), "{}", text(&out.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nkey = \"a\"\ncache = \"always\"\n").expect("write");
    let out = perch(&["policy", "explain", "db/a", "--policy", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("bad.toml:3:"), "{}", text(&out.stderr));
}

fn meta_in_moto(s: &Stack, key: &str) -> Option<String> {
    let m = s.moto_sdk();
    let head =
        s.rt.block_on(m.head_object().bucket(BUCKET).key(key).send())
            .expect("head in moto");
    head.metadata().and_then(|m| m.get("rev")).cloned()
}

fn sighup(s: &Stack) {
    let pid = s.perch().pid().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn log_count(s: &Stack, what: &str) -> usize {
    s.perch().log_text().matches(what).count()
}

#[test]
fn sighup_reloads_a_good_policy_and_refuses_a_bad_one() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.toml");
    let rev = |r: &str| format!("[[rule]]\nkey = \"*\"\n[rule.upload_headers]\n\"x-amz-meta-rev\" = \"{r}\"\n");
    std::fs::write(&file, rev("one")).expect("write");
    let s = Stack::start(&["--policy", file.to_str().expect("utf-8")]);
    let _log = s.log_on_panic();
    s.put("k1", b"first");
    s.flush(Duration::from_secs(60));
    assert_eq!(meta_in_moto(&s, "k1").as_deref(), Some("one"));

    std::fs::write(&file, rev("two")).expect("write");
    sighup(&s);
    assert!(
        wait_until(Duration::from_secs(10), || log_count(&s, "policy reloaded") == 1),
        "no reload logged"
    );
    s.put("k2", b"second");
    s.flush(Duration::from_secs(60));
    assert_eq!(meta_in_moto(&s, "k2").as_deref(), Some("two"));

    std::fs::write(&file, "[[rule]]\nkey = \"*\"\nwrite = \"sometimes\"\n").expect("write");
    sighup(&s);
    assert!(
        wait_until(Duration::from_secs(10), || log_count(&s, "policy reload refused") == 1),
        "no refusal logged"
    );
    assert!(
        s.perch().log_text().contains("policy.toml:3"),
        "the refusal names the line"
    );
    s.put("k3", b"third");
    s.flush(Duration::from_secs(60));
    assert_eq!(meta_in_moto(&s, "k3").as_deref(), Some("two"), "the old policy stays");
    assert_eq!(s.get("k3").status, 200, "still serving");
}

/// A write the origin refused for a header the policy added goes up once a mended policy is
/// reloaded: the refused versions are tried again under it. They stayed refused until
/// `perch journal retry` of each, or a restart (review of 2026-12-07).
#[test]
fn a_write_refused_for_a_policy_header_goes_up_once_the_mended_policy_is_reloaded() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.toml");
    let class =
        |c: &str| format!("[[rule]]\nkey = \"sc/*\"\n[rule.upload_headers]\n\"x-amz-storage-class\" = \"{c}\"\n");
    std::fs::write(&file, class("NO_SUCH_CLASS")).expect("write");
    let s = Stack::start(&["--policy", file.to_str().expect("utf-8")]);
    let _log = s.log_on_panic();
    s.put("sc/k", b"refused, then mended");
    assert!(
        wait_until(Duration::from_secs(30), || s.status()["failed"]
            .as_array()
            .is_some_and(|f| !f.is_empty())),
        "the origin never refused the upload: {}",
        s.status()
    );
    std::fs::write(&file, class("STANDARD")).expect("write");
    sighup(&s);
    s.flush(Duration::from_secs(30));
    assert_eq!(s.in_moto("sc/k").as_deref(), Some(&b"refused, then mended"[..]));
}

#[test]
fn upload_headers_reach_multipart_uploads() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.toml");
    std::fs::write(
        &file,
        "[[rule]]\nkey = \"dumps/*\"\n[rule.upload_headers]\n\"Cache-Control\" = \"no-store\"\n\"x-amz-meta-rev\" = \"mp\"\n\"x-amz-storage-class\" = \"STANDARD_IA\"\n",
    )
    .expect("write");
    let s = Stack::start(&["--policy", file.to_str().expect("utf-8")]);
    let _log = s.log_on_panic();
    let key = "dumps/big.bin";
    let parts = [vec![7u8; 5 << 20], vec![9u8; 1 << 20]];
    let (id, done) = s.upload_in_parts(key, &parts);
    s.complete_upload(key, &id, &done).expect("complete");
    s.flush(Duration::from_secs(60));
    let m = s.moto_sdk();
    let head =
        s.rt.block_on(m.head_object().bucket(BUCKET).key(key).send())
            .expect("head");
    assert!(
        head.e_tag().unwrap_or_default().ends_with("-2\""),
        "uploaded as a multipart upload"
    );
    assert_eq!(head.cache_control(), Some("no-store"));
    assert_eq!(
        head.metadata().and_then(|m| m.get("rev")).map(String::as_str),
        Some("mp")
    );
    assert_eq!(head.storage_class().map(|c| c.as_str()), Some("STANDARD_IA"));
    // Perch's copy names the class the origin keeps it in, as its listing does.
    let head =
        s.rt.block_on(s.sdk().head_object().bucket(BUCKET).key(key).send())
            .expect("head through Perch");
    assert_eq!(head.storage_class().map(|c| c.as_str()), Some("STANDARD_IA"));
}

/// The metadata a policy rule adds to uploads counts against S3's 2 KB with the write's own: a
/// write within 2 KB alone was acknowledged, and its upload, over it with the rule's, refused
/// for good (S3: 400 MetadataTooLarge).
#[test]
fn the_headers_a_policy_adds_count_against_the_uploads_limits() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.toml");
    let team = "t".repeat(1000);
    std::fs::write(
        &file,
        format!("[[rule]]\nkey = \"tagged/*\"\n[rule.upload_headers]\n\"x-amz-meta-team\" = \"{team}\"\n"),
    )
    .expect("write");
    let s = Stack::start(&["--policy", file.to_str().expect("utf-8")]);
    let _log = s.log_on_panic();
    // The error code of a PUT with `note` bytes of metadata of its own (`None`: taken).
    let put = |key: &str, note: usize| -> Option<String> {
        let out = s.rt.block_on(
            s.sdk()
                .put_object()
                .bucket(BUCKET)
                .key(key)
                .metadata("note", "n".repeat(note))
                .body(b"body".to_vec().into())
                .send(),
        );
        out.err()
            .map(|e| format!("{:?}", e.as_service_error().and_then(|e| e.meta().code())))
    };
    // 1,004 bytes of the rule's, 1,004 of the write's: within 2 KB together.
    assert_eq!(
        put("tagged/fits", 1000),
        None,
        "a write that fits with the rule's metadata"
    );
    // 1,104 of the write's: 2,108 together.
    assert_eq!(put("tagged/over", 1100).as_deref(), Some("Some(\"MetadataTooLarge\")"));
    // Where no rule adds any, the same write is taken.
    assert_eq!(put("other/over", 1100), None, "the same write under no rule");
    s.flush(Duration::from_secs(30));
    let head =
        s.rt.block_on(s.moto_sdk().head_object().bucket(BUCKET).key("tagged/fits").send())
            .expect("head");
    assert_eq!(head.metadata().and_then(|m| m.get("team")).map(String::len), Some(1000));
    assert!(
        s.in_moto("tagged/over").is_none(),
        "the refused write reached the origin"
    );
}

/// A policy reloaded while a write waits for its upload may add headers it cannot carry with
/// the write's own: the write was checked at the door with the policy of then, and its upload,
/// with the new rule's metadata past S3's 2 KB, was refused for good. It goes up without them.
#[test]
fn a_write_goes_up_without_the_headers_a_reloaded_policy_adds_past_the_limits() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "[[rule]]\nkey = \"nothing/*\"\nwrite = \"write_back\"\n").expect("write");
    let s = Stack::start(&["--policy", file.to_str().expect("utf-8")]);
    let _log = s.log_on_panic();
    s.proxy.patch(r#"{"outage":true}"#);
    let put = s.rt.block_on(
        s.sdk()
            .put_object()
            .bucket(BUCKET)
            .key("reload/k")
            .metadata("note", "n".repeat(1500))
            .body(b"body".to_vec().into())
            .send(),
    );
    assert!(put.is_ok(), "{put:?}");
    let team = "t".repeat(1000);
    std::fs::write(
        &file,
        format!("[[rule]]\nkey = \"reload/*\"\n[rule.upload_headers]\n\"x-amz-meta-team\" = \"{team}\"\n"),
    )
    .expect("write");
    sighup(&s);
    assert!(
        wait_until(Duration::from_secs(10), || log_count(&s, "policy reloaded") == 1),
        "no reload logged"
    );
    s.no_faults();
    s.flush(Duration::from_secs(60));
    let head =
        s.rt.block_on(s.moto_sdk().head_object().bucket(BUCKET).key("reload/k").send())
            .expect("head");
    let meta = head.metadata().cloned().unwrap_or_default();
    assert_eq!(meta.get("note").map(String::len), Some(1500));
    assert!(
        !meta.contains_key("team"),
        "uploaded with 2.5 KB of metadata, which S3 refuses"
    );
}

#[test]
fn a_bypass_key_is_read_from_the_origin_every_time() {
    let _turn = machine::share();
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "[[rule]]\nkey = \"wal/*\"\ncache = \"bypass\"\n").expect("write");
    let s = Stack::start(&["--policy", file.to_str().expect("utf-8")]);
    let _log = s.log_on_panic();
    s.put_behind_perchs_back("wal/0001", b"segment");
    s.put_behind_perchs_back("data/1/x", b"part");
    s.proxy.reset();
    for _ in 0..3 {
        let r = s.get("wal/0001");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"segment"[..]));
        assert_eq!(r.header("X-Cache"), Some("BYPASS"));
        let r = s.get("data/1/x");
        assert_eq!(r.status, 200);
    }
    s.assert_reads(
        &[("GET wal/0001", 3), ("GET data/1/x", 1)],
        "the bypass key every time, the other once",
    );
}

/// A pinned key's copy survives a scan that evicts every other copy read as often, and still counts
/// against the disk limit.
#[test]
fn a_pinned_copy_is_never_evicted() {
    let _turn = machine::share();
    const KIB: usize = 1024;
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, "[[rule]]\nkey = \"ctl/*\"\ncache = \"pin\"\n").expect("write");
    let s = Stack::start(&[
        "--policy",
        file.to_str().expect("utf-8"),
        "--cache-disk-bytes",
        "3MiB",
        "--cache-memory-bytes",
        "27306KiB",
    ]);
    let _log = s.log_on_panic();
    let body = |seed: u8| vec![seed; 256 * KIB];
    s.put_behind_perchs_back("ctl/control", &body(1));
    s.put_behind_perchs_back("ev/plain", &body(2));
    for i in 0..24u8 {
        s.put_behind_perchs_back(&format!("ev/scan/{i:02}"), &body(10 + i));
    }
    s.get_expect("ctl/control", &body(1), "MISS");
    s.get_expect("ev/plain", &body(2), "MISS");
    for i in 0..24u8 {
        s.get_expect(&format!("ev/scan/{i:02}"), &body(10 + i), "MISS");
        let used = s.blob_bytes();
        assert!(used <= 3 << 20, "{used} bytes under cache/blobs, over the 3 MiB limit");
    }
    s.proxy.reset();
    s.get_expect("ctl/control", &body(1), "HIT");
    s.get_expect("ev/plain", &body(2), "MISS");
    s.assert_reads(&[("GET ev/plain", 1)], "the pinned copy stayed, the plain one did not");
}

fn get_in_thread(s: &Stack, key: &str) -> std::thread::JoinHandle<std::io::Result<Resp>> {
    let addr = s.addr();
    let path = key_path(key);
    std::thread::spawn(move || Req::object("GET", addr, Style::Path, &path).send(addr))
}

/// A key the policy keeps no copy of (OrioleDB's undo and WAL files in the built-in profile)
/// streams straight from the origin to its client: no cache temp file is written on the way,
/// nothing is kept, a broken origin stream is resumed with Range + If-Match, and an object
/// replaced between the break and the resumption ends the body with an error, never a spliced one.
#[test]
fn a_bypass_key_streams_from_the_origin_without_a_copy_and_resumes_where_it_breaks() {
    // Alone: the transfer is throttled and watched while it runs.
    let _turn = machine::alone();
    let s = Stack::start(&[]);
    let _log = s.log_on_panic();
    const MIB: usize = 1 << 20;

    // Streamed without a temp file (a fill writes one, preallocated, from the origin's answer on).
    let undo = pattern(3 * MIB, 1);
    s.put_behind_perchs_back("orioledb_undo/0000000001data", &undo);
    s.proxy.reset();
    s.faults(r#"{"bandwidth_bytes_per_sec": 1048576, "match_key_prefix": "orioledb_undo/"}"#);
    let client = get_in_thread(&s, "orioledb_undo/0000000001data");
    let mut watched = 0;
    while !client.is_finished() {
        let tmp = s.tmp_files();
        assert!(tmp.is_empty(), "a cache temp file during a bypassed read: {tmp:?}");
        watched += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        watched >= 20,
        "the throttled read ended too soon to be watched ({watched} looks)"
    );
    let r = client.join().expect("client thread").expect("the GET");
    assert_eq!(
        (r.status, r.header("X-Cache")),
        (200, Some("BYPASS")),
        "{}",
        r.summary()
    );
    assert!(r.body == undo, "the undo file's bytes");
    s.no_faults();
    s.get_expect("orioledb_undo/0000000001data", &undo, "BYPASS");
    s.assert_counts(&[("GET orioledb_undo/0000000001data", 2)], "nothing kept");

    // The origin's answer is cut after 1,000,000 bytes: resumed where it broke.
    let wal = pattern(3 * MIB, 2);
    let segment = "wal/000000010000000000000001";
    s.put_behind_perchs_back(segment, &wal);
    s.proxy.reset();
    s.faults(r#"{"fail_next": 1, "cut_body_after": 1000000, "match_key_prefix": "wal/"}"#);
    s.get_expect(segment, &wal, "BYPASS");
    let records = s.records(segment);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["resp_bytes"], 1_000_000, "{records:#?}");
    assert_eq!(
        records[1]["status"], 206,
        "the resumption is a ranged GET: {records:#?}"
    );
    assert_eq!(records[1]["resp_bytes"], (wal.len() - 1_000_000) as u64, "{records:#?}");
    s.assert_metric("perch_cache_resumed_total", 1.0);
    assert!(s.tmp_files().is_empty(), "{:?}", s.tmp_files());

    // The object changes between the break and the resumption: refused by If-Match (412), and
    // the client sees a cut body.
    let changing = "wal/000000010000000000000002";
    s.put_behind_perchs_back(changing, &pattern(3 * MIB, 3));
    s.proxy.reset();
    // 1.5 s before each origin answer leaves time to change the object after the cut.
    s.faults(r#"{"fail_next": 1, "cut_body_after": 1000000, "match_key_prefix": "wal/000000010000000000000002", "latency_ms": 1500}"#);
    let client = get_in_thread(&s, changing);
    eventually("the first answer is cut", || {
        s.records(changing).iter().any(|r| r["cut_body_after"] == 1_000_000)
    });
    let second = pattern(10 * 1024, 4);
    s.put_behind_perchs_back(changing, &second);
    match client.join().expect("client thread") {
        Err(_) => {}
        Ok(r) => panic!(
            "the client must see a cut body, got {} bytes: {}",
            r.body.len(),
            r.summary()
        ),
    }
    let statuses: Vec<_> = s.records(changing).iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses, [200, 412], "the cut answer, then the refused resumption");
    s.no_faults();
    s.get_expect(changing, &second, "BYPASS");
}

/// A bypass key's body is checked as a fill's is: an object damaged at the origin (one byte
/// flipped in the directory origin's file, its checksum and ETag unchanged) reaches the client as
/// a cut body, never as a complete 200 of the wrong bytes.
#[test]
fn a_bypass_key_damaged_at_the_origin_never_reaches_a_client_whole() {
    let _turn = machine::share();
    let origin = tempfile::tempdir().expect("tmp");
    let url = format!("file://{}", origin.path().display());
    let key = "wal/000000010000000000000007";
    let body = pattern(3 * (1 << 20) + 17, 91);
    {
        // Written through (the built-in profile): in the origin once answered.
        let writer = Perch::dir(&["--origin", &url]);
        create_bucket(writer.addr());
        let r = Req::object("PUT", writer.addr(), Style::Path, key)
            .body(body.clone())
            .go(writer.addr());
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    let file = files_under(origin.path())
        .into_iter()
        .find(|f| std::fs::read(f).is_ok_and(|b| b.ends_with(&body[body.len() - 4096..])))
        .expect("the object's file in the directory origin");
    let len = std::fs::metadata(&file).expect("stat").len();
    flip_byte(&file, len - 1);

    let reader = Perch::dir(&["--origin", &url]);
    let _log = reader.log_on_panic();
    match Req::object("GET", reader.addr(), Style::Path, key).send(reader.addr()) {
        // The answer's head went out with the first bytes; the body is cut before its end.
        Err(_) => {}
        Ok(r) => {
            assert_eq!(r.status, 200, "{}", r.summary());
            assert!(
                r.body.len() < body.len(),
                "a damaged body was served whole ({} bytes)",
                r.body.len()
            );
        }
    }
    // The bytes served count what went out, not the object's size.
    let served = perch_metric(&reader.server, "perch_cache_served_bytes_total{tier=\"origin\"}").unwrap_or(0.0);
    assert!(
        served < body.len() as f64,
        "{served} bytes counted as served of a body cut before its end"
    );
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
