//! Integration test of `perch-bench wake`: a one-round run at a small size against a real perch and
//! moto_server, checking that both wakes are reported and that the empty-volume wake was served
//! from the prewarm of the hot set (Perch's own /metrics).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn traces_dir() -> PathBuf {
    let dir = std::env::var_os("PERCH_ORIOLE_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/oriole"));
    assert!(
        dir.join("trace-d3-restore-start-query.jsonl").is_file(),
        "the OrioleDB traces are missing from {} (set PERCH_ORIOLE_TRACES)",
        dir.display()
    );
    dir
}

#[test]
fn wake_reports_a_warm_and_a_prewarmed_empty_volume_wake() {
    let out = tempfile::tempdir().expect("temp dir");
    let trace = traces_dir().join("trace-d3-restore-start-query.jsonl");
    let output = Command::new(env!("CARGO_BIN_EXE_perch-bench"))
        .args(["wake", "--rounds", "1", "--query-gets", "2", "--origin-latency-ms", "5"])
        .arg("--trace")
        .arg(&trace)
        .arg("--out")
        .arg(out.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run perch-bench wake");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "perch-bench wake failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("- machine: "), "{stdout}");
    assert!(stdout.contains("| warm volume |"), "{stdout}");
    assert!(stdout.contains("| empty volume (hot-set prewarm) |"), "{stdout}");

    let json = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let report: Value = serde_json::from_str(&json).expect("results.json parses");
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{report:#}");
    // The start of d3 reads the control file and 18 parts of the catalog, then the query the
    // table's map and one part.
    let gets = 1 + 18 + 2;
    for row in rows {
        for side in ["perch", "direct"] {
            let samples = row[side].as_array().expect("samples");
            assert_eq!(samples.len(), 1, "{row:#}");
            assert!(samples[0]["total_ms"].as_f64().unwrap_or(0.0) > 0.0, "{row:#}");
        }
        let perch = &row["perch"][0];
        assert!(perch["ready_ms"].as_f64().unwrap_or(0.0) > 0.0, "{row:#}");
        // Every GET of the replay is a hit: the warm volume holds them, the prewarm fetched them.
        assert_eq!(perch["hits"].as_u64(), Some(gets), "{row:#}");
        assert_eq!(perch["misses"].as_u64(), Some(0), "{row:#}");
    }
    let warm = &rows[0]["perch"][0];
    assert_eq!(
        warm["prewarm_fetched"].as_u64(),
        Some(0),
        "a warm volume is not prewarmed: {warm:#}"
    );
    let empty = &rows[1]["perch"][0];
    assert_eq!(
        empty["prewarm_used"].as_u64(),
        Some(gets),
        "the empty-volume wake reads what the prewarm fetched: {empty:#}"
    );
}
