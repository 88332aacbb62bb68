//! The built-in OrioleDB profile against every request shape of the recorded OrioleDB traces: each
//! key gets the decision OrioleDB's use of it calls for (written here from what the keys are, not
//! from the profile's globs).

use std::time::Duration;

use perch_policy::{CacheClass, Freshness, Method, Policy, Priority, WriteMode};

/// What a key of OrioleDB's is, from its shape.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// `data/N/global/pg_control`, `data/N/orioledb_data/control`: a checkpoint's control files.
    CheckpointControl,
    /// `data/orioledb_data/control`: names the newest checkpoint, rewritten at each.
    RootControl,
    /// `data/orioledb_data/s3_lock`.
    Lock,
    /// `wal/<segment>` (and `.partial`, `.history`): rewritten as a segment grows.
    Wal,
    /// `orioledb_undo/*`: overwritten in place, read back only by a restore (once).
    Undo,
    /// Everything of checkpoint N under `data/N/` or `orioledb_data/N/`: written once.
    WrittenOnce,
}

fn kind(key: &str) -> Kind {
    let parts: Vec<&str> = key.split('/').collect();
    let numbered = parts.len() > 2 && parts[1].bytes().all(|b| b.is_ascii_digit()) && !parts[1].is_empty();
    match parts.as_slice() {
        ["data", _, "global", "pg_control"] | ["data", _, "orioledb_data", "control"] if numbered => {
            Kind::CheckpointControl
        }
        ["data", "orioledb_data", "control"] => Kind::RootControl,
        ["data", "orioledb_data", "s3_lock"] => Kind::Lock,
        ["wal", _] => Kind::Wal,
        ["orioledb_undo", _] => Kind::Undo,
        ["data" | "orioledb_data", ..] if numbered => Kind::WrittenOnce,
        // `orioledb_data/1data`-like probes of the restore tool: nothing is written there.
        ["orioledb_data", _] => Kind::WrittenOnce,
        _ => panic!("a key of the traces this test does not know: {key}"),
    }
}

/// Checks the built-in profile's decision for one request of the traces; returns its kind.
fn check(policy: &Policy, line: &str, method: Method, key: &str) -> String {
    let d = policy.decide("orioledb", key, method);
    let k = kind(key);
    let revalidate = Freshness::Revalidate(Some(Duration::from_secs(5)));
    let (write, cache, freshness) = match (&k, method) {
        (Kind::CheckpointControl, Method::Put) => (WriteMode::Barrier, CacheClass::Normal, Freshness::Immutable),
        (Kind::RootControl, _) => (WriteMode::Barrier, CacheClass::Pin, revalidate),
        (Kind::Lock, Method::Delete) => (WriteMode::Barrier, CacheClass::Normal, revalidate),
        (Kind::Lock, _) => (WriteMode::WriteBack, CacheClass::Normal, revalidate),
        (Kind::Wal, _) => (WriteMode::WriteThrough, CacheClass::Bypass, revalidate),
        (Kind::Undo, _) => (WriteMode::WriteBack, CacheClass::Bypass, revalidate),
        _ => (WriteMode::WriteBack, CacheClass::Normal, Freshness::Immutable),
    };
    // A write mode means something for the writes only.
    if matches!(method, Method::Put | Method::Delete) {
        assert_eq!(d.write, write, "{line}: write mode ({k:?})");
    }
    assert_eq!(d.cache, cache, "{line}: cache class ({k:?})");
    assert_eq!(d.freshness, freshness, "{line}: freshness ({k:?})");
    assert_eq!(d.upload_priority, Priority::Normal, "{line}");
    assert!(d.upload_headers.is_empty(), "{line}: no upload header by default");
    format!("{k:?} {method:?}")
}

#[test]
fn every_key_of_the_recorded_traces_gets_its_intended_decision() {
    let policy = Policy::orioledb();
    let keys = include_str!("../testdata/oriole-trace-keys.txt");
    let mut checked = 0;
    let mut kinds_seen = std::collections::HashSet::new();
    for line in keys.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (method, key) = line.split_once(' ').expect("METHOD KEY");
        let method: Method = method.parse().expect("method");
        kinds_seen.insert(check(&policy, line, method, key));
        checked += 1;
    }
    assert!(checked > 150, "only {checked} keys checked");
    assert_kinds(&kinds_seen);
}

/// The value of the JSON string field `name` in one line of a trace (the traces' keys and methods
/// are plain ASCII: no escapes).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Every request of the recorded traces themselves (`$PERCH_ORIOLE_TRACES` or `../shared/oriole`
/// beside the workspace, as the bench's trace tests read them), not only the sample above.
#[test]
fn every_request_of_the_trace_files_gets_its_intended_decision() {
    let dir = std::env::var_os("PERCH_ORIOLE_TRACES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/oriole"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the OrioleDB traces are needed at {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("trace-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no trace-*.jsonl in {}", dir.display());
    let policy = Policy::orioledb();
    let mut checked = 0;
    let mut kinds_seen = std::collections::HashSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for line in text.lines().filter(|l| l.contains("\"event\":\"request\"")) {
            let (Some(method), Some(path)) = (field(line, "method"), field(line, "path")) else {
                panic!("{}: a request without method or path: {line}", f.display());
            };
            let key = path.trim_start_matches('/');
            // The bucket itself (its HEAD, its listings): no key to decide for.
            if key.is_empty() {
                continue;
            }
            let method: Method = method.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
            kinds_seen.insert(check(&policy, &format!("{method:?} {key}"), method, key));
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} requests checked");
    assert_kinds(&kinds_seen);
}

fn assert_kinds(kinds_seen: &std::collections::HashSet<String>) {
    for must in [
        "CheckpointControl Put",
        "RootControl Put",
        "RootControl Get",
        "Lock Put",
        "Lock Delete",
        "Wal Put",
        "Wal Get",
        "Undo Put",
        "WrittenOnce Put",
        "WrittenOnce Get",
        "WrittenOnce Head",
    ] {
        assert!(kinds_seen.contains(must), "the traces should hold a {must}");
    }
}

/// The shorthand flags and a user's file reach the same keys: an `--upload-header` for every key
/// and a file rule for the undo files.
#[test]
fn a_file_with_headers_and_priorities_over_the_traces() {
    let file = r#"
[[rule]]
name = "replicate checkpoints to two regions"
key = "data/*"
method = ["PUT"]
upload_priority = "high"
[rule.upload_headers]
"X-Tigris-Regions" = "iad,ams"
"Cache-Control" = "no-store"

[[rule]]
key = "orioledb_data/*"
upload_priority = "low"
[rule.upload_headers]
"x-amz-storage-class" = "STANDARD_IA"
"#;
    let user = perch_policy::parse(file, "user.toml").expect("parses");
    let flags = Policy {
        rules: vec![perch_policy::shorthand::upload_header("*=x-amz-meta-written-by: perch").expect("flag")],
        ..Policy::default()
    };
    let policy = flags.then(user).then(Policy::orioledb());
    let keys = include_str!("../testdata/oriole-trace-keys.txt");
    for line in keys.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (method, key) = line.split_once(' ').expect("METHOD KEY");
        let method: Method = method.parse().expect("method");
        let d = policy.decide("orioledb", key, method);
        let names: Vec<&str> = d.upload_headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"x-amz-meta-written-by"), "{line}");
        let data_put = key.starts_with("data/") && method == Method::Put;
        assert_eq!(names.contains(&"x-tigris-regions"), data_put, "{line}");
        assert_eq!(names.contains(&"cache-control"), data_put, "{line}");
        assert_eq!(
            names.contains(&"x-amz-storage-class"),
            key.starts_with("orioledb_data/"),
            "{line}"
        );
        let priority = if data_put {
            Priority::High
        } else if key.starts_with("orioledb_data/") {
            Priority::Low
        } else {
            Priority::Normal
        };
        assert_eq!(d.upload_priority, priority, "{line}");
        // The profile below still decides the rest.
        if key == "wal/000000010000000000000003" {
            assert_eq!(d.write, WriteMode::WriteThrough);
        }
    }
}
