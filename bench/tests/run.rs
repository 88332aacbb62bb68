//! Integration tests of `perch-bench run` and `compare-nginx`: short real runs of the binary against
//! a real perch in front of a real moto_server (and nginx), checking the JSON report.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use perch_testkit::servers::{MotoServer, PerchOptions, PerchServer, perch_binary};
use serde_json::Value;

/// The `perch` binary (these tests do not build it; `cargo test --workspace` does).
fn perch_bin() -> PathBuf {
    perch_binary().unwrap_or_else(|e| panic!("{e:#}"))
}

fn traces_dir() -> PathBuf {
    let dir = std::env::var_os("PERCH_ORIOLE_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/oriole"));
    assert!(
        dir.join("trace-a-initdb-start.jsonl").is_file(),
        "the OrioleDB traces are missing from {} (set PERCH_ORIOLE_TRACES)",
        dir.display()
    );
    dir
}

/// moto, and perch in front of it; both stopped when dropped.
struct Stack {
    perch: PerchServer,
    moto: MotoServer,
    _dir: tempfile::TempDir,
}

fn stack() -> Stack {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let perch = PerchServer::start(PerchOptions {
        binary: perch_bin(),
        data_dir: dir.path().join("perch"),
        args: vec!["--origin".into(), moto.endpoint.clone()],
        env: vec![
            ("PERCH_ORIGIN_ACCESS_KEY_ID".into(), "test".into()),
            ("PERCH_ORIGIN_SECRET_ACCESS_KEY".into(), "test".into()),
        ],
    });
    Stack { perch, moto, _dir: dir }
}

/// Runs perch-bench with `args` (plus `--out DIR`) and returns the parsed results.json.
fn bench(args: &[&str]) -> Value {
    let out = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_perch-bench"))
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run perch-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "perch-bench {args:?} failed:\n{stderr}");
    for file in ["results.json", "results.md", "latency.svg", "throughput.svg"] {
        assert!(out.path().join(file).is_file(), "{file} missing; stderr:\n{stderr}");
    }
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(md.contains("| target | ops/s | MB/s | p50 ms"), "{md}");
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let json = std::fs::read_to_string(out.path().join("results.json")).unwrap();
    serde_json::from_str(&json).expect("results.json parses")
}

/// Every workload of the first section, by name, with its targets' results.
fn workloads(report: &Value) -> Vec<(String, Vec<Value>)> {
    report["sections"][0]["workloads"]
        .as_array()
        .expect("workloads")
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_owned(),
                w["targets"].as_array().cloned().unwrap_or_default(),
            )
        })
        .collect()
}

/// Zero errors and some successful requests for every target of every workload.
fn assert_clean(report: &Value, targets: &[&str]) {
    for (name, results) in workloads(report) {
        let names: Vec<&str> = results.iter().filter_map(|t| t["target"].as_str()).collect();
        assert_eq!(names, targets, "targets of {name}");
        for t in &results {
            assert_eq!(t["errors"], 0, "{name} on {}: {}", t["target"], t["error_samples"]);
            assert!(t["ops"].as_u64().unwrap_or(0) > 0, "{name} on {}: no ops", t["target"]);
            assert!(t["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0);
            assert!(t["latency_ms"]["p50"].as_f64().unwrap_or(0.0) > 0.0);
            assert!(t["latency_ms"]["p99"].as_f64() >= t["latency_ms"]["p50"].as_f64());
        }
    }
}

#[test]
fn keep_alive_run_against_perch_and_moto() {
    let s = stack();
    let perch = format!("perch={}", s.perch.endpoint);
    let origin = format!("origin={}", s.moto.endpoint);
    let admin = s.perch.admin.to_string();
    let report = bench(&[
        "run",
        "--target",
        &perch,
        "--target",
        &origin,
        "--origin-target",
        "origin",
        "--perch-admin",
        &admin,
        "--setup",
        "--workload",
        "hot,cold,put,mix",
        "--requests",
        "24",
        "--rounds",
        "2",
        "--concurrency",
        "4",
        "--sizes",
        "1KiB,64KiB,1MiB:2",
        "--hot-objects",
        "6",
    ]);
    let names: Vec<String> = workloads(&report).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["hot GET", "cold GET", "PUT", "mix 90/10"]);
    assert_clean(&report, &["perch", "origin"]);
    for (name, results) in workloads(&report) {
        // Request budgets are exact: 24 per target (the mix counts GETs and PUTs together).
        for t in &results {
            assert_eq!(t["ops"], 24, "{name} on {}", t["target"]);
        }
        // Perch has no cache counters yet: the hit ratio is reported as unknown, not made up.
        if results[0]["hit_source"].is_null() {
            assert!(results[0]["hit_ratio"].is_null());
        }
    }
    assert_eq!(report["sections"][0]["settings"]["connection"], "pool");
    assert!(report["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn oriole_shaped_run_with_large_bodies() {
    let s = stack();
    let perch = format!("perch={},admin={}", s.perch.endpoint, s.perch.admin);
    let origin = format!("origin={}", s.moto.endpoint);
    // 2 MiB bodies go with `Expect: 100-continue`, through Perch (PUT) and moto (setup).
    let report = bench(&[
        "run",
        "--oriole",
        "--target",
        &perch,
        "--target",
        &origin,
        "--origin-target",
        "origin",
        "--setup",
        "--workload",
        "hot,cold,put",
        "--requests",
        "42",
        "--rounds",
        "2",
        "--sizes",
        "1KiB,256KiB,2MiB",
        "--hot-objects",
        "6",
    ]);
    assert_clean(&report, &["perch", "origin"]);
    let settings = &report["sections"][0]["settings"];
    assert_eq!(settings["connection"], "new");
    assert_eq!(settings["concurrency"], 21);
    assert_eq!(settings["expect_100_continue_over"], "1MiB");
    assert_eq!(settings["verify_sha256"], true);
}

#[test]
fn replays_traces_a_b_and_d2_with_body_checks() {
    let s = stack();
    let dir = traces_dir();
    let trace = |name: &str| dir.join(name).display().to_string();
    let (a, b, d2) = (
        trace("trace-a-initdb-start.jsonl"),
        trace("trace-b-insert-checkpoint.jsonl"),
        trace("trace-d2-restore-loader.jsonl"),
    );
    let perch = format!("perch={}", s.perch.endpoint);
    let origin = format!("origin={}", s.moto.endpoint);
    let report = bench(&[
        "run",
        "--oriole",
        "--target",
        &perch,
        "--target",
        &origin,
        "--origin-target",
        "origin",
        "--setup",
        "--workload",
        "trace",
        "--trace",
        &a,
        "--trace",
        &b,
        "--trace",
        &d2,
        "--rounds",
        "1",
    ]);
    assert_clean(&report, &["perch", "origin"]);
    let expected = [
        ("trace a-initdb-start", 2),
        ("trace b-insert-checkpoint", 202),
        ("trace d2-restore-loader", 198),
    ];
    let got = workloads(&report);
    assert_eq!(got.len(), expected.len());
    for ((name, results), (want_name, want_ops)) in got.iter().zip(expected) {
        assert_eq!(name, want_name);
        for t in results {
            assert_eq!(t["ops"], want_ops, "{name} on {}", t["target"]);
        }
        if name.contains("a-initdb") {
            // The control file GET of a fresh database must be a 404, as recorded.
            assert_eq!(results[0]["statuses"]["404"], 1, "{}", results[0]);
        }
        if name.contains("d2") {
            assert_eq!(results[0]["statuses"]["206"], 2, "{}", results[0]);
        }
    }
}

#[test]
fn compare_nginx_short_run() {
    let nginx = Path::new("/usr/sbin/nginx");
    assert!(
        nginx.is_file(),
        "{} is missing: compare-nginx needs Debian's nginx package (apt-get install nginx; CI installs it)",
        nginx.display()
    );
    let s = stack();
    let perch = s.perch.endpoint.clone();
    let admin = s.perch.admin.to_string();
    let origin = s.moto.endpoint.clone();
    let report = bench(&[
        "compare-nginx",
        "--perch",
        &perch,
        "--perch-admin",
        &admin,
        "--origin",
        &origin,
        "--nginx-sizes",
        "1KiB,64KiB",
        "--nginx-connections",
        "1,4",
        "--nginx-objects",
        "4",
        "--nginx-requests",
        "20",
        "--nginx-rounds",
        "2",
    ]);
    assert_clean(&report, &["perch", "nginx-static", "nginx-proxy-cache", "origin"]);
    let names: Vec<String> = workloads(&report).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["GET 1KiB c1", "GET 64KiB c1", "GET 1KiB c4", "GET 64KiB c4"]);
    for (name, results) in workloads(&report) {
        // Warmed first, so nginx's proxy_cache answers every measured GET from its cache.
        let proxy = &results[2];
        assert_eq!(proxy["hit_source"], "x-cache", "{name}");
        assert_eq!(proxy["hit_ratio"], 1.0, "{name}: {proxy}");
    }
    let comparisons = report["sections"][0]["comparisons"].as_array().expect("comparisons");
    assert_eq!(comparisons.len(), 8);
    for c in comparisons {
        assert_eq!(c["numerator"], "perch");
        assert!(c["ops_ratio"].as_f64().unwrap_or(0.0) > 0.0, "{c}");
    }
}
