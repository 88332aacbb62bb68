//! Perch's origin keys: a refusal of them (a wrong secret, as after a rotation) never drops an
//! acknowledged write, and SIGHUP reloads them from the --config file, after which the refused
//! uploads go up. The origin is s3s-fs, an S3 server that checks SigV4 signatures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use perch_testkit::bodies::pattern;
use perch_testkit::raw_client::{BUCKET, Req, Style};
use perch_testkit::servers::PerchServer;

use crate::support::machine;
use crate::support::perch::{LogOnPanic, admin_get, flush, start_with, wait_until};
use crate::support::signing_origin::{ORIGIN_KEY, ORIGIN_SECRET, SigningOrigin};

fn write_config(path: &Path, secret: &str) {
    std::fs::write(
        path,
        format!("origin_access_key_id = \"{ORIGIN_KEY}\"\norigin_secret_access_key = \"{secret}\"\n"),
    )
    .expect("write the config file");
}

/// Perch on `data_dir` in front of `origin`, its keys from the config file only.
fn start_perch(origin: &SigningOrigin, data_dir: &Path, config: &Path) -> PerchServer {
    start_perch_with(origin, data_dir, config, &[])
}

/// `start_perch` with `extra` environment variables.
fn start_perch_with(origin: &SigningOrigin, data_dir: &Path, config: &Path, extra: &[(&str, &str)]) -> PerchServer {
    let args: Vec<String> = vec![
        "--origin".into(),
        origin.endpoint(),
        "--origin-region".into(),
        "us-east-1".into(),
        "--origin-retry-deadline".into(),
        "3s".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    // Empty values count as unset: no origin keys from the environment.
    let env = [
        "PERCH_ORIGIN_ACCESS_KEY_ID",
        "PERCH_ORIGIN_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    .iter()
    .map(|k| (k.to_string(), String::new()))
    .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    .collect();
    start_with(data_dir, args, env)
}

/// Writes `objects` (request path, body) through a Perch on `data_dir` in front of `origin`,
/// after creating the bucket, and stops it once all are in the origin.
fn write_through(origin: &SigningOrigin, data_dir: &Path, config: &Path, objects: &[(&str, &[u8])]) {
    let perch = start_perch(origin, data_dir, config);
    let _log = LogOnPanic::new("perch", perch.log_path());
    let r = Req::bucket("PUT", perch.addr, Style::Path, "").go(perch.addr);
    assert_eq!(r.status, 200, "CreateBucket: {}", r.summary());
    for (path, body) in objects {
        let r = Req::object("PUT", perch.addr, Style::Path, path)
            .body(body.to_vec())
            .go(perch.addr);
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
    }
    flush(&perch, Duration::from_secs(30));
    perch.terminate(Duration::from_secs(30));
}

fn status(perch: &PerchServer) -> serde_json::Value {
    let (code, body) = admin_get(perch, "/status");
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"))
}

#[test]
fn refused_origin_keys_keep_writes_until_sighup_reloads_the_right_ones() {
    let _turn = machine::share();
    let origin = SigningOrigin::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir: PathBuf = dir.path().join("perch");
    let config = dir.path().join("perch.toml");

    // With the right keys: the bucket, and one object that goes up (Perch now knows the bucket).
    write_config(&config, ORIGIN_SECRET);
    {
        let perch = start_perch(&origin, &data_dir, &config);
        let r = Req::bucket("PUT", perch.addr, Style::Path, "").go(perch.addr);
        assert_eq!(r.status, 200, "CreateBucket: {}", r.summary());
        let r = Req::object("PUT", perch.addr, Style::Path, "seed")
            .body(pattern(100, 1))
            .go(perch.addr);
        assert_eq!(r.status, 200, "{}", r.summary());
        flush(&perch, Duration::from_secs(30));
        assert_eq!(origin.object(BUCKET, "seed"), Some(pattern(100, 1)));
        perch.terminate(Duration::from_secs(30));
    }

    // Restarted with a wrong secret (a rotation Perch has not been told of): writes are still
    // acknowledged, and the origin's refusal is retried, never taken as final.
    write_config(&config, "not-the-secret");
    let perch = start_perch(&origin, &data_dir, &config);
    let _log = LogOnPanic::new("perch", perch.log_path());
    let objects = [
        ("wal/000000010000000000000001", 2 << 20),
        ("data/1/a", 1000),
        ("data/1/b", 10),
    ];
    for (i, (key, len)) in objects.iter().enumerate() {
        let r = Req::object("PUT", perch.addr, Style::Path, key)
            .body(pattern(*len, 10 + i as u64))
            .go(perch.addr);
        // wal/* is write-through: it waits for the origin, then answers 503 SlowDown after the
        // retry deadline; it stays queued all the same.
        if key.starts_with("wal/") {
            assert_eq!(r.status, 503, "{key}: {}", r.summary());
        } else {
            assert_eq!(r.status, 200, "{key}: {}", r.summary());
        }
    }
    let refused_for_keys = wait_until(Duration::from_secs(20), || {
        status(&perch)["origin_fault"]
            .as_str()
            .is_some_and(|f| f.contains("SignatureDoesNotMatch"))
    });
    let st = status(&perch);
    assert!(
        refused_for_keys,
        "the origin's refusal is not reported as a fault: {st}"
    );
    assert_eq!(
        st["failed"].as_array().map(Vec::len),
        Some(0),
        "a key refusal was taken as final: {st}"
    );
    assert_eq!(st["dirty_objects"], 3, "{st}");
    for (key, _) in objects {
        assert_eq!(
            origin.object(BUCKET, key),
            None,
            "{key} reached the origin with a wrong key"
        );
    }
    // Reads are served from what was acknowledged.
    let r = Req::object("GET", perch.addr, Style::Path, "data/1/a").go(perch.addr);
    assert_eq!((r.status, r.body.clone()), (200, pattern(1000, 11)), "{}", r.summary());

    // The right secret in the file, then SIGHUP: everything goes up, with its bytes.
    write_config(&config, ORIGIN_SECRET);
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &perch.pid().expect("perch is running").to_string()])
        .status()
        .expect("kill -HUP");
    assert!(kill.success());
    flush(&perch, Duration::from_secs(60));
    for (i, (key, len)) in objects.iter().enumerate() {
        assert_eq!(
            origin.object(BUCKET, key),
            Some(pattern(*len, 10 + i as u64)),
            "{key} in the origin after SIGHUP"
        );
    }
    assert!(
        perch.log_text().contains("origin keys reloaded"),
        "no reload in perch's log"
    );
}

/// Misses are origin GETs Perch signs itself (cache/src/origin/s3/get.rs): an origin that checks
/// signatures serves them (and the HEADs of objects not cached) for keys that need encoding,
/// whole and ranged, answers a missing key with NoSuchKey, and a wrong secret is a fault Perch
/// retries and names, never an answer.
#[test]
fn misses_are_signed_gets_an_origin_that_checks_signatures_serves() {
    let _turn = machine::share();
    let origin = SigningOrigin::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("perch.toml");
    // (the key, its path in a request, its body)
    let objects = [
        (
            "data/1/base/16384/2619",
            "data/1/base/16384/2619".to_owned(),
            pattern(3 << 20, 1),
        ),
        (
            "odd keys/a b+c%d é~.txt",
            "odd%20keys/a%20b%2Bc%25d%20%C3%A9~.txt".to_owned(),
            pattern(1000, 2),
        ),
        ("q?x=1&y#z;=", "q%3Fx%3D1%26y%23z%3B%3D".to_owned(), pattern(10, 3)),
    ];

    write_config(&config, ORIGIN_SECRET);
    let writes: Vec<(&str, &[u8])> = objects
        .iter()
        .map(|(_, path, body)| (path.as_str(), body.as_slice()))
        .collect();
    write_through(&origin, &dir.path().join("writer"), &config, &writes);
    for (key, _, body) in &objects {
        assert_eq!(origin.object(BUCKET, key).as_ref(), Some(body), "{key} in the origin");
    }

    // A fresh volume: every read is a miss.
    let perch = start_perch(&origin, &dir.path().join("reader"), &config);
    let _log = LogOnPanic::new("perch", perch.log_path());
    for (key, path, body) in &objects {
        let r = Req::object("HEAD", perch.addr, Style::Path, path).go(perch.addr);
        assert_eq!(r.status, 200, "{key}: {}", r.summary());
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{key}: {}",
            r.summary()
        );
        let r = Req::object("GET", perch.addr, Style::Path, path)
            .header("range", "bytes=2-6")
            .go(perch.addr);
        assert_eq!(r.status, 206, "{key}: {}", r.summary());
        assert_eq!(r.body, body[2..7.min(body.len())].to_vec(), "{key}: the range");
        let r = Req::object("GET", perch.addr, Style::Path, path).go(perch.addr);
        assert_eq!((r.status, &r.body), (200, body), "{key}: {}", r.summary());
    }
    let r = Req::object("GET", perch.addr, Style::Path, "data/1/none").go(perch.addr);
    assert_eq!(r.status, 404, "{}", r.summary());
    assert!(r.text().contains("<Code>NoSuchKey</Code>"), "{}", r.summary());
    let r = Req::object("HEAD", perch.addr, Style::Path, "data/1/none").go(perch.addr);
    assert_eq!(r.status, 404, "{}", r.summary());
    perch.terminate(Duration::from_secs(30));

    // A wrong secret: the origin's refusal of the GET is retried like an outage (each retry
    // logged with its cause at debug), never passed on as an answer.
    write_config(&config, "not-the-secret");
    let perch = start_perch_with(
        &origin,
        &dir.path().join("wrong"),
        &config,
        &[("PERCH_LOG", "info,perch_cache::origin::retry=debug")],
    );
    let _log = LogOnPanic::new("perch", perch.log_path());
    let r = Req::object("GET", perch.addr, Style::Path, &objects[0].1).go(perch.addr);
    assert_eq!(r.status, 503, "{}", r.summary());
    let log = perch.log_text();
    assert!(
        log.lines().any(|l| l.contains("origin fault, retrying")
            && l.contains("get_object")
            && l.contains("403 SignatureDoesNotMatch")),
        "the origin's refusal of the GET is not what was retried"
    );
}

/// A PUT whose client gave no checksum (OrioleDB's) goes up with its full-object CRC32, made
/// from the block CRCs: the origin checks it and keeps it, so a fresh Perch's miss gets it back
/// (and checks the body by its blocks rather than hashing it again for its MD5 ETag). A body of
/// whole blocks, one that ends inside a block, and an empty one.
#[test]
fn an_upload_without_a_client_checksum_carries_the_bodys_crc32() {
    let _turn = machine::share();
    let origin = SigningOrigin::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("perch.toml");
    write_config(&config, ORIGIN_SECRET);
    let objects = [
        ("data/1/two-blocks", pattern(2 << 20, 4)),
        ("data/1/ragged", pattern((3 << 20) + 12_345, 5)),
        ("data/1/empty", Vec::new()),
    ];
    let writes: Vec<(&str, &[u8])> = objects.iter().map(|(key, body)| (*key, body.as_slice())).collect();
    write_through(&origin, &dir.path().join("writer"), &config, &writes);
    let perch = start_perch(&origin, &dir.path().join("reader"), &config);
    let _log = LogOnPanic::new("perch", perch.log_path());
    for (key, body) in &objects {
        let want = aws_smithy_types::base64::encode(crc32fast::hash(body).to_be_bytes());
        let r = Req::object("GET", perch.addr, Style::Path, key)
            .header("x-amz-checksum-mode", "ENABLED")
            .go(perch.addr);
        assert_eq!((r.status, &r.body), (200, body), "{key}: {}", r.summary());
        assert_eq!(
            r.header("x-amz-checksum-crc32"),
            Some(want.as_str()),
            "{key}: the origin's copy has no CRC32, or another: {}",
            r.summary()
        );
    }
}

/// A read by part number of an object uploaded in parts that a fresh Perch does not hold asks the
/// origin where its parts lie (a HEAD with `?partNumber=`): that request is signed as an origin
/// that checks signatures accepts it, query included. (s3s-fs ignores `partNumber` and describes
/// the whole object, so only the signature is checked here; moto, which describes the part,
/// checks no signature: `multipart::the_parts_of_an_object_written_past_perch_are_learnt_from_the_origin`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_by_part_number_asks_the_origin_with_a_signature_it_accepts() {
    let _turn = machine::share();
    let origin = SigningOrigin::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("perch.toml");
    write_config(&config, ORIGIN_SECRET);
    let parts = [pattern(5 << 20, 31), pattern(777, 32)];
    let whole = parts.concat();
    {
        let writer = start_perch(&origin, &dir.path().join("writer"), &config);
        let _log = LogOnPanic::new("writer", writer.log_path());
        let c = perch_testkit::sdk::perch_client(&writer);
        crate::support::sdk::create_bucket(&c, BUCKET).await;
        crate::support::sdk::upload_in_parts(&c, BUCKET, "parted", &[&parts[0], &parts[1]]).await;
        flush(&writer, Duration::from_secs(30));
        writer.terminate(Duration::from_secs(30));
    }
    let reader = start_perch(&origin, &dir.path().join("reader"), &config);
    let _log = LogOnPanic::new("reader", reader.log_path());
    let r = Req::object("GET", reader.addr, Style::Path, "parted")
        .query("partNumber=1")
        .go(reader.addr);
    assert_eq!(r.status, 206, "{}", r.summary());
    assert!(
        whole.starts_with(&r.body) && !r.body.is_empty(),
        "part 1's bytes: {}",
        r.summary()
    );
    let log = std::fs::read_to_string(reader.log_path()).unwrap_or_default();
    assert!(
        !log.contains("SignatureDoesNotMatch"),
        "the origin refused a signature:\n{log}"
    );
}
