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
    .collect();
    start_with(data_dir, args, env)
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
