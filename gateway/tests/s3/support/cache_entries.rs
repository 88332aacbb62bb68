//! Read-cache entries written straight into a stopped perch's data dir through perch-cache's
//! `Seeder`.
//!
//! Tens of thousands of entries take seconds this way, where filling them through HTTP would take
//! minutes; `perch-bench cache-restart` fills its data dirs the same way. Entry `i` is the key
//! `entry_key(i)` with the body `bodies::body_bytes(seed, &entry_key(i), 0, size)`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use perch_cache::{Checksums, ContentHeaders, ObjectMeta, Seeder};
use perch_testkit::bodies::{body_bytes, sha256};

/// The key of entry `i`: shaped like OrioleDB's data files.
pub fn entry_key(i: u64) -> String {
    format!("orioledb_data/1/5/{}.0.{}", 16384 + i / 1000, i % 1000)
}

/// Writes `entries` cache entries of `size` bytes of `bucket` into `data_dir` (perch's
/// `--data-dir`; perch must not run), as a clean stop leaves them.
#[track_caller]
pub fn write_cache_entries(data_dir: &Path, entries: u64, size: usize, seed: u64, bucket: &str) {
    let seeder = Seeder::open(data_dir).unwrap_or_else(|e| panic!("open the data dir's cache: {e}"));
    let now = SystemTime::now();
    let write = |i: u64| {
        let key = entry_key(i);
        let body = body_bytes(seed, &key, 0, size);
        // Last modified 40 days ago; last read within the last 30 days, spread so that the
        // rebuild of the eviction order really sorts.
        let spread = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        let modified = now - Duration::from_secs(40 * 86_400 + spread % 86_400);
        let meta = ObjectMeta {
            size: size as u64,
            // An MD5-shaped ETag (perch does not check it against the body on a hit).
            etag: format!("\"{}\"", hex::encode(&sha256(&body)[..16])),
            last_modified: modified,
            headers: ContentHeaders {
                content_type: Some("binary/octet-stream".into()),
                ..Default::default()
            },
            checksums: Checksums::default(),
        };
        seeder
            .add(bucket, &key, &meta, &body, modified)
            .unwrap_or_else(|e| panic!("seed {key}: {e}"));
        (key, now - Duration::from_secs((spread >> 20) % (30 * 86_400)))
    };
    // Two writers, each recording its entries' last reads in batches.
    std::thread::scope(|s| {
        for first in 0..2 {
            let write = &write;
            let seeder = &seeder;
            s.spawn(move || {
                let mut reads = Vec::new();
                for i in (first..entries).step_by(2) {
                    reads.push(write(i));
                    if reads.len() == 2048 || i + 2 >= entries {
                        seeder
                            .record_reads(bucket, &reads)
                            .unwrap_or_else(|e| panic!("record last reads: {e}"));
                        reads.clear();
                    }
                }
            });
        }
    });
    // As a clean stop of perch leaves it: memtables written out, no log to replay.
    seeder.finish().unwrap_or_else(|e| panic!("flush the cache index: {e}"));
}
