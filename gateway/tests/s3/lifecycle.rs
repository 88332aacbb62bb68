//! The perch process over its life: connections, SIGTERM, help, refusals, logs, health, restarts.
//!
//! Thousands of short connections without leaking descriptors, a graceful SIGTERM, its
//! command-line help, its refusal of unsafe settings, secrets kept out of the logs, the admin
//! health endpoints, what the directory origin keeps across a restart, and failures at start
//! told in one line that names the flag.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart};
use perch_testkit::bodies::{md5_etag, multipart_etag, pattern};
use perch_testkit::raw_client::{BUCKET, Req, Style};
use perch_testkit::sdk::perch_client;
use perch_testkit::servers::{MotoServer, ProxyServer, free_port};
use perch_testkit::sigv4::Keys;

use crate::support::checksums::{b64, digest};
use crate::support::machine;
use crate::support::perch::{
    Perch, admin_get, fd_count, perch_binary, perch_metric, put_into_moto, start_perch, wait_until,
};
use crate::support::raw::create_bucket;
use crate::support::sdk::{self, all_keys, bytes_of, expect_err, get_bytes, meta, ok, put};

#[test]
fn thousands_of_short_connections_leak_nothing() {
    let _turn = machine::share();
    const TOTAL: usize = 3000;
    const CONCURRENCY: usize = 50;
    let perch = Perch::dir(&[]);
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    create_bucket(addr);
    let body = pattern(4096, 1);
    let r = Req::object("PUT", addr, Style::Virtual, "data/1/small")
        .body(body.clone())
        .go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());
    // One request first, so that whatever perch opens lazily is open before counting.
    let r = Req::object("GET", addr, Style::Virtual, "data/1/small").go(addr);
    assert_eq!(r.status, 200, "{}", r.summary());
    let pid = perch.pid();
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = fd_count(pid);

    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..TOTAL / CONCURRENCY {
                    // A new connection per request, as OrioleDB.
                    match Req::object("GET", addr, Style::Virtual, "data/1/small").send(addr) {
                        Ok(r) if r.status == 200 && r.body == body => {}
                        Ok(r) => failures.push(format!("worker {w} request {i}: {}", r.summary())),
                        Err(e) => failures.push(format!("worker {w} request {i}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker thread"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {TOTAL} requests failed; first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The server closes its side once it sees each client's FIN; give it a moment.
    let mut fds_after = 0;
    let settled = wait_until(Duration::from_secs(10), || {
        fds_after = fd_count(pid);
        fds_after <= fds_before + 20
    });
    eprintln!("perch descriptors: {fds_before} before, {fds_after} after {TOTAL} connections");
    assert!(
        settled,
        "perch holds {fds_after} descriptors after {TOTAL} closed connections, {fds_before} before"
    );
    let in_flight = perch_metric(&perch.server, "perch_requests_in_flight");
    assert_eq!(
        in_flight,
        Some(0.0),
        "perch_requests_in_flight after every request ended"
    );
    let served = {
        let (_, text) = admin_get(&perch.server, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("perch_requests_total{") && l.contains("GetObject") && l.contains("200"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert!(
        served >= (TOTAL + 1) as f64,
        "perch_requests_total{{op=GetObject,status=200}} = {served}, expected at least {}",
        TOTAL + 1
    );
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_refuses_new_connections() {
    let _turn = machine::alone();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let control = proxy.control();
    // After SIGTERM perch keeps serving until its journal is empty and no request came for
    // --drain-quiet: with nothing written through it and no quiet period, it stops accepting at
    // once, and the graceful shutdown still finishes the request in flight.
    let perch = Perch::s3(&proxy.endpoint, &["--drain-quiet", "0s"]);
    let addr = perch.addr();
    create_bucket(addr);
    let key = "data/1/orioledb_data/slow-part";
    let body = pattern(1 << 20, 2);
    // Straight into moto: in the origin and not in perch's cache, so that the GET below goes to
    // the (slow) origin. A PUT through perch would be a cache entry, and a journal to drain.
    put_into_moto(&moto, key, &body);

    control.patch(r#"{"latency_ms":2500}"#);
    let get = std::thread::spawn(move || Req::object("GET", addr, Style::Virtual, key).send(addr));
    let in_flight = wait_until(Duration::from_secs(10), || {
        perch_metric(&perch.server, "perch_requests_in_flight") == Some(1.0)
    });
    assert!(in_flight, "the slow GET never showed as in flight");

    perch.server.send_sigterm();
    let draining = wait_until(Duration::from_secs(10), || {
        perch.server.log_text().contains("stopped accepting")
    });
    assert!(
        draining,
        "perch did not log that it stopped accepting; log:\n{}",
        perch.log_tail()
    );
    let still_in_flight = !get.is_finished();
    // A new connection now must be refused, not accepted into a backlog nobody serves.
    let attempt = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    let attempt_result = match &attempt {
        Ok(_) => "accepted".to_owned(),
        Err(e) => format!("{:?}: {e}", e.kind()),
    };
    // What happens to a request on such a connection (for the report).
    let fate = attempt.ok().map(|mut s| {
        use std::io::Write;
        let (head, _) = Req::object("GET", addr, Style::Virtual, key).head();
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.write_all(&head);
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => "closed without an answer".to_owned(),
            Ok(n) => format!("answered {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => format!("no answer (the read ended with {:?})", e.kind()),
        }
    });

    let r = get.join().expect("GET thread").expect("the in-flight GET");
    assert_eq!(r.status, 200, "the request in flight at SIGTERM: {}", r.summary());
    assert!(r.body == body, "the request in flight at SIGTERM: wrong bytes");
    let status = perch.wait(Duration::from_secs(40));
    assert!(status.success(), "perch exited with {status} after SIGTERM");
    assert!(
        still_in_flight,
        "the slow GET ended before the listener check; the check proved nothing"
    );
    assert!(
        matches!(&attempt_result[..], s if s.starts_with("ConnectionRefused")),
        "a connection attempted after SIGTERM (while a request drained) was {attempt_result}; \
         a request sent on it: {fate:?}. perch keeps its listening socket open until the drain ends."
    );
}

fn help_of(args: &[&str]) -> String {
    let out = Command::new(perch_binary()).args(args).output().expect("run perch");
    assert!(out.status.success(), "perch {args:?} exited with {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

const FLAGS: [&str; 10] = [
    "--listen",
    "--admin-listen",
    "--data-dir",
    "--origin",
    "--origin-region",
    "--domain",
    "--origin-retry-deadline",
    "--role",
    "--log-format",
    "--config",
];

#[test]
fn serve_help_lists_every_flag_and_its_default() {
    let _turn = machine::share();
    for args in [&["serve", "--help"][..], &["help", "serve"], &["serve", "-h"]] {
        let text = help_of(args);
        for flag in FLAGS {
            let listed = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .any(|w| w == flag);
            assert!(listed, "perch {args:?} does not mention {flag}:\n{text}");
        }
        assert!(text.contains("default"), "perch {args:?} mentions no default:\n{text}");
        for default in ["127.0.0.1:9000", "127.0.0.1:9001", "120s", "localhost", "primary"] {
            assert!(
                text.contains(default),
                "perch {args:?} does not show the default {default}:\n{text}"
            );
        }
    }
    let top = help_of(&["--help"]);
    assert!(top.contains("serve"), "perch --help does not name `serve`:\n{top}");
    assert!(
        top.contains("perch serve --help"),
        "perch --help does not point to `perch serve --help`:\n{top}"
    );
}

/// Runs `perch serve` to completion (at most 10 s) and returns (exit status, stderr + stdout).
/// The admin listener is on a free port unless `args` name one.
fn run_serve(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(perch_binary());
    cmd.arg("serve").arg("--data-dir").arg(tmp.path().join("perch"));
    if !args.contains(&"--admin-listen") {
        cmd.args(["--admin-listen", "127.0.0.1:0"]);
    }
    cmd.args(args);
    // No keys, no configuration from the environment, and no backtrace with the refusal:
    // symbolising one from the 100+ MB binary takes half a second on an idle machine, and was
    // seen to take over 10 s on a loaded one.
    for var in [
        "PERCH_ACCESS_KEY_ID",
        "PERCH_SECRET_ACCESS_KEY",
        "PERCH_LISTEN",
        "PERCH_CONFIG",
        "PERCH_ORIGIN",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start perch");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("perch serve {args:?} with {env:?} kept running: it must refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    (status, text)
}

#[test]
fn refuses_a_public_listener_without_keys() {
    let _turn = machine::share();
    let (status, text) = run_serve(&["--listen", "0.0.0.0:0"], &[]);
    assert!(!status.success(), "perch started on 0.0.0.0 without keys");
    assert!(
        text.contains("PERCH_ACCESS_KEY_ID"),
        "the refusal must name PERCH_ACCESS_KEY_ID: {text}"
    );
    // Half a key pair is refused too, wherever it listens.
    let (status, text) = run_serve(&["--listen", "0.0.0.0:0"], &[("PERCH_ACCESS_KEY_ID", "only-the-id")]);
    assert!(!status.success(), "perch started with only PERCH_ACCESS_KEY_ID set");
    assert!(text.contains("PERCH_SECRET_ACCESS_KEY"), "{text}");
}

/// A listen address in use was a 30-line backtrace: it is one line naming the address and the
/// flag, even with a backtrace asked for.
#[test]
fn an_address_in_use_is_one_line_naming_the_flag() {
    let _turn = machine::share();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for (flag, other) in [("--listen", "--admin-listen"), ("--admin-listen", "--listen")] {
        let (status, text) = run_serve(&[flag, &addr, other, "127.0.0.1:0"], &[("RUST_BACKTRACE", "1")]);
        assert_eq!(status.code(), Some(1), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "one line, no backtrace: {text}");
        assert!(lines[0].contains(&addr), "{text}");
        assert!(lines[0].contains("already in use"), "{text}");
        assert!(lines[0].contains(&format!("{flag} ADDR")), "{text}");
    }
}

/// Values past what Perch can hold (a duration beyond `Duration`, more slots than a semaphore
/// counts) are one line naming the flag and exit 1, before anything listens; they were a panic
/// with a backtrace, or listeners that died after `listening` was printed.
#[test]
fn values_too_large_are_one_line_naming_the_flag() {
    let _turn = machine::share();
    for (flag, value) in [
        ("--origin-retry-deadline", "99999999999999999999s"),
        ("--drain-timeout", "99999999999999999999h"),
        // Within a Duration, but it panicked when added to an Instant at the first write.
        ("--dirty-wait-max", "10000000000000000000s"),
        ("--connections-max", "3000000000000000000"),
        ("--requests-max", "3000000000000000000"),
    ] {
        let (status, text) = run_serve(
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", flag, value],
            &[("RUST_BACKTRACE", "1")],
        );
        assert_eq!(status.code(), Some(1), "{flag}: {text}");
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flag}: one line, no backtrace: {text}");
        assert!(
            lines[0].starts_with("perch: ") && lines[0].contains(flag),
            "{flag}: {text}"
        );
        assert!(!text.contains("listening"), "{flag}: {text}");
    }
}

/// A second Perch on a data dir another one runs on stops at start with one line naming the
/// flag, before it touches anything there: the first one's spooled bodies stay (it used to remove
/// them, then fail on the index's lock with RocksDB's message), and the first one keeps serving.
#[test]
fn a_data_dir_in_use_stops_a_second_perch_before_it_touches_it() {
    let _turn = machine::share();
    let s = crate::support::stack::Stack::start(&[]);
    let _log = s.log_on_panic();
    s.put("in-use", b"first");
    let sentinel = s.data_dir.join("tmp").join("a-body-being-received");
    std::fs::create_dir_all(sentinel.parent().unwrap()).unwrap();
    std::fs::write(&sentinel, b"spooled").unwrap();
    let stderr = s.start_refused();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("in use by another Perch"), "{stderr}");
    assert!(lines[0].contains("--data-dir"), "{stderr}");
    assert!(sentinel.exists(), "the running Perch's spool was touched: {stderr}");
    s.get_expect("in-use", b"first", "HIT");
}

/// `--origin-region auto` (the default) in front of an origin that cannot name its region stops
/// perch at start with one line naming the flag; with the region named, perch serves.
#[test]
fn an_origin_whose_region_cannot_be_found_stops_perch_at_start() {
    let _turn = machine::share();
    // Nothing listens there: the origin cannot say which region it is in.
    let origin = format!("http://127.0.0.1:{}", free_port());
    let (status, text) = run_serve(
        &["--listen", "127.0.0.1:0", "--origin", &origin],
        &[
            ("RUST_BACKTRACE", "1"),
            ("PERCH_ORIGIN_ACCESS_KEY_ID", "test"),
            ("PERCH_ORIGIN_SECRET_ACCESS_KEY", "test"),
            ("PERCH_LOG", "warn"),
        ],
    );
    assert_eq!(status.code(), Some(1), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("perch: "), "{text}");
    assert!(last.contains("--origin-region REGION"), "{text}");
    assert!(!text.contains("backtrace"), "{text}");
    let named = Perch::start(&["--origin", &origin, "--origin-region", "eu-west-1"], Vec::new());
    assert!(named.server.endpoint.starts_with("http://"));
}

#[test]
fn secrets_stay_out_of_json_logs() {
    let _turn = machine::share();
    const ID: &str = "PERCHTESTKEYID0001";
    const SECRET: &str = "zQ9-distinctive-Secret-Value-4f7c2e81";
    let keys = Keys::new(ID, SECRET);
    let perch = Perch::start(
        &["--log-format", "json"],
        vec![
            ("PERCH_ACCESS_KEY_ID".to_owned(), ID.to_owned()),
            ("PERCH_SECRET_ACCESS_KEY".to_owned(), SECRET.to_owned()),
            ("PERCH_LOG".to_owned(), "debug".to_owned()),
        ],
    );
    let _log = perch.log_on_panic();
    let addr = perch.addr();
    let signed = |r: Req| r.keys(Some(keys.clone()));
    let r = signed(Req::bucket("PUT", addr, Style::Path, "")).go(addr);
    assert_eq!(r.status, 200, "CreateBucket: {}", r.summary());
    let key = "data/1/global/pg_control";
    let body = pattern(3000, 3);
    let r = signed(Req::object("PUT", addr, Style::Virtual, key).body(body.clone())).go(addr);
    assert_eq!(r.status, 200, "PUT: {}", r.summary());
    let r = signed(Req::object("GET", addr, Style::Virtual, key)).go(addr);
    assert_eq!(r.status, 200, "GET: {}", r.summary());
    let r = signed(Req::object("GET", addr, Style::Virtual, "missing")).go(addr);
    assert_eq!(r.status, 404, "GET missing: {}", r.summary());
    let r = Req::object("GET", addr, Style::Virtual, key).go(addr);
    assert_eq!(
        r.status,
        403,
        "the dev keys are refused once keys are configured: {}",
        r.summary()
    );
    let r = Req::object("GET", addr, Style::Virtual, key)
        .keys(Some(Keys::new(ID, "wrong")))
        .go(addr);
    assert_eq!(r.status, 403, "wrong secret: {}", r.summary());

    // Let the last lines reach the file.
    std::thread::sleep(Duration::from_millis(200));
    let log = perch.server.log_text();
    assert!(!log.is_empty(), "perch logged nothing");
    assert!(!log.contains(SECRET), "the secret access key appears in perch's log");
    let mut put_line = None;
    for (i, line) in log.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("log line {} is not JSON ({e}): {line}", i + 1));
        let span = &v["span"];
        if span["op"] == "PutObject" && v["fields"]["message"] == "done" {
            put_line = Some(v.clone());
        }
    }
    let put = put_line.unwrap_or_else(|| panic!("no JSON line with op PutObject and message done:\n{log}"));
    assert_eq!(put["span"]["key"], key, "{put}");
    assert_eq!(put["span"]["bucket"], BUCKET, "{put}");
    assert_eq!(put["span"]["status"], 200, "{put}");
}

#[test]
fn health_and_readiness() {
    let _turn = machine::share();
    let moto = MotoServer::start();
    let proxy = ProxyServer::start(&moto.endpoint, &[]);
    let control = proxy.control();
    let perch = Perch::s3(&proxy.endpoint, &["--origin-retry-deadline", "2s"]);
    let _log = perch.log_on_panic();
    let get = |path: &str| admin_get(&perch.server, path);

    assert_eq!(get("/healthz").0, 200, "/healthz");
    // A start with an empty cache first reads the hot sets (none here): "prewarming" meanwhile.
    let started = Instant::now();
    let (status, text) = loop {
        let (status, text) = get("/readyz");
        if status == 200 || !text.contains("prewarming") || started.elapsed() > Duration::from_secs(5) {
            break (status, text);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status, 200, "/readyz with a live origin: {text}");

    control.patch(r#"{"outage":true}"#);
    let (status, text) = get("/readyz");
    assert_eq!(
        status, 503,
        "/readyz while the origin answers 503 to everything: {text}"
    );
    let (status, text) = get("/healthz");
    assert_eq!(status, 200, "/healthz does not depend on the origin: {text}");

    control.patch(r#"{"outage":false}"#);
    let (status, text) = get("/readyz");
    assert_eq!(status, 200, "/readyz once the origin is back: {text}");
    assert_eq!(get("/nope").0, 404, "unknown admin path");
}

// ---------------------------------------------------------------------------------------------
// What the directory origin keeps across a restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_origin_survives_a_restart() {
    let _turn = machine::share();
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = tmp.path().join("perch");
    let small = pattern(1000, 10);
    let large = pattern(9 << 20, 11);
    let part1 = pattern(5 << 20, 12);
    let part2 = pattern(10, 13);

    let perch = start_perch(&data_dir, None, &[]);
    let c = perch_client(&perch);
    sdk::create_bucket(&c, "durable").await;
    sdk::create_bucket(&c, "empty").await;
    ok(
        c.put_object()
            .bucket("durable")
            .key("small")
            .content_type("text/x-small")
            .metadata("k", "v")
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .body(ByteStream::from(small.clone()))
            .send()
            .await,
        "put small",
    );
    put(&c, "durable", "large", &large).await;
    put(&c, "durable", "dir/", b"").await;
    put(&c, "durable", "gone", b"deleted before the restart").await;
    ok(
        c.delete_object().bucket("durable").key("gone").send().await,
        "delete gone",
    );
    let id = ok(
        c.create_multipart_upload().bucket("durable").key("multi").send().await,
        "create upload",
    )
    .upload_id()
    .expect("id")
    .to_owned();
    let mut etags = Vec::new();
    for (n, part) in [(1, &part1), (2, &part2)] {
        let out = ok(
            c.upload_part()
                .bucket("durable")
                .key("multi")
                .upload_id(&id)
                .part_number(n)
                .body(ByteStream::from(part.clone()))
                .send()
                .await,
            "upload part",
        );
        etags.push(out.e_tag().expect("etag").to_owned());
    }
    ok(
        c.complete_multipart_upload()
            .bucket("durable")
            .key("multi")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(&etags[0]).build())
                    .parts(CompletedPart::builder().part_number(2).e_tag(&etags[1]).build())
                    .build(),
            )
            .send()
            .await,
        "complete",
    );
    // An upload left in progress across the restart.
    let pending = ok(
        c.create_multipart_upload()
            .bucket("durable")
            .key("pending")
            .send()
            .await,
        "create pending upload",
    )
    .upload_id()
    .expect("id")
    .to_owned();
    ok(
        c.upload_part()
            .bucket("durable")
            .key("pending")
            .upload_id(&pending)
            .part_number(1)
            .body(ByteStream::from_static(b"tail"))
            .send()
            .await,
        "upload pending part",
    );

    let status = perch.terminate(Duration::from_secs(30));
    assert!(status.success(), "perch exited with {status} on SIGTERM");

    let perch = start_perch(&data_dir, None, &[]);
    let c = perch_client(&perch);
    let buckets = ok(c.list_buckets().send().await, "list buckets");
    let names: Vec<&str> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["durable", "empty"]);
    assert_eq!(all_keys(&c, "durable", None).await, ["dir/", "large", "multi", "small"]);

    let got = ok(
        c.get_object()
            .bucket("durable")
            .key("small")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await,
        "get small",
    );
    assert_eq!(got.e_tag(), Some(md5_etag(&small).as_str()));
    assert_eq!(got.content_type(), Some("text/x-small"));
    assert_eq!(got.metadata(), Some(&meta(&[("k", "v")])));
    assert_eq!(
        got.checksum_crc32_c(),
        Some(b64(&digest(&ChecksumAlgorithm::Crc32C, &small)).as_str())
    );
    assert_eq!(bytes_of(got.body).await, small);

    let got = ok(c.get_object().bucket("durable").key("large").send().await, "get large");
    assert_eq!(got.e_tag(), Some(md5_etag(&large).as_str()));
    assert!(bytes_of(got.body).await == large, "the 9 MiB object survives");

    let got = ok(c.get_object().bucket("durable").key("multi").send().await, "get multi");
    assert_eq!(got.e_tag(), Some(multipart_etag(&[&part1, &part2]).as_str()));
    assert!(bytes_of(got.body).await == [part1.as_slice(), part2.as_slice()].concat());

    assert_eq!(get_bytes(&c, "durable", "dir/").await, b"");
    expect_err(
        c.get_object().bucket("durable").key("gone").send().await,
        404,
        Some("NoSuchKey"),
    );

    // The pending upload can still be completed.
    let parts = ok(
        c.list_parts()
            .bucket("durable")
            .key("pending")
            .upload_id(&pending)
            .send()
            .await,
        "list pending parts",
    );
    assert_eq!(parts.parts().len(), 1);
    ok(
        c.complete_multipart_upload()
            .bucket("durable")
            .key("pending")
            .upload_id(&pending)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(md5_etag(b"tail")).build())
                    .build(),
            )
            .send()
            .await,
        "complete the pending upload",
    );
    assert_eq!(get_bytes(&c, "durable", "pending").await, b"tail");

    // Still writable, and a second clean stop.
    put(&c, "empty", "now-not", b"x").await;
    let status = perch.terminate(Duration::from_secs(30));
    assert!(status.success(), "perch exited with {status} on the second SIGTERM");
}

/// The admin commands against an endpoint that takes the connection and never answers: `perch
/// flush --timeout` keeps its timeout, and the error names the endpoint and the wait (it waited 10
/// s whatever the timeout, then printed `Resource temporarily unavailable (os error 11)`).
#[test]
fn admin_commands_against_an_endpoint_that_never_answers_say_so_in_time() {
    let _turn = machine::share();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let started = Instant::now();
    let out = Command::new(perch_binary())
        .args(["flush", "--timeout", "1s", "--admin", &addr])
        .output()
        .expect("run perch flush");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "perch flush --timeout 1s took {:?}: {stderr}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&format!("admin endpoint {addr} did not answer")),
        "{stderr}"
    );
    drop(silent);
}

/// `perch journal check` and `repair` on a data dir that holds no journal (a typo, a missing
/// volume) fail, and create nothing there: they used to create an empty journal and report it
/// healthy.
#[test]
fn journal_commands_on_a_data_dir_without_a_journal_fail_and_create_nothing() {
    let _turn = machine::share();
    let tmp = tempfile::tempdir().expect("temp dir");
    let missing = tmp.path().join("typo-dir");
    for args in [
        vec!["journal", "check", "--data-dir"],
        vec!["journal", "repair", "--drop-missing", "--data-dir"],
    ] {
        let out = Command::new(perch_binary())
            .args(&args)
            .arg(&missing)
            .output()
            .expect("run perch journal");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("holds no Perch journal"), "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
}

/// A SIGHUP while Perch starts (here: waiting for a silent origin to name its region) does not end
/// it; the signal's default action did, with status 129 and no message.
#[test]
fn a_sighup_while_perch_starts_does_not_end_it() {
    let _turn = machine::share();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let origin = format!("http://{}", silent.local_addr().expect("addr"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(perch_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--origin",
            &origin,
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("perch"))
        .env("PERCH_ORIGIN_ACCESS_KEY_ID", "test")
        .env("PERCH_ORIGIN_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start perch");
    // Its data dir's lock is taken once the early handler is in place, before the region lookup.
    let lock = tmp.path().join("perch").join("lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock.exists() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "perch ended before the signal"
        );
        assert!(Instant::now() < deadline, "perch never took its data dir");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "perch ended before the signal"
    );
    // SAFETY: a signal to the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(700));
    let ended = child.try_wait().expect("wait");
    let _ = child.kill();
    let _ = child.wait();
    assert!(ended.is_none(), "a SIGHUP while starting ended perch: {ended:?}");
    drop(silent);
}

/// A command whose output goes into a pipe its reader closed (`perch status | head -1`) ends
/// quietly, as a Unix tool does: `println!` used to panic on the closed pipe, with a backtrace.
#[test]
fn a_command_printing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let _turn = machine::share();
    let perch = Perch::dir(&[]);
    let mut child = Command::new(perch_binary())
        .args(["status", "--admin", &perch.server.admin.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run perch status");
    // Close the reading end before the command prints anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("perch status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "perch status into a closed pipe: {stderr}"
    );
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "perch status into a closed pipe ended with {}: {stderr}",
        out.status
    );
}
