//! How much the harness costs: write+fsync latency through the mount against the same
//! operations directly on the backing filesystem. Not run by default:
//! `cargo test --release -p perch-powercut --test throughput -- --ignored --nocapture`.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Harness;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// `n` rounds of: create a file, write `size` bytes in `chunk`-sized writes, fsync it.
fn write_fsync(dir: &Path, tag: &str, size: usize, chunk: usize, n: usize) -> String {
    let buf = vec![0x5au8; chunk];
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let path = dir.join(format!("{tag}-{i}"));
        let start = Instant::now();
        let mut f = File::create(&path).unwrap();
        let mut left = size;
        while left > 0 {
            let k = left.min(chunk);
            f.write_all(&buf[..k]).unwrap();
            left -= k;
        }
        f.sync_all().unwrap();
        times.push(start.elapsed());
        drop(f);
        std::fs::remove_file(&path).unwrap();
    }
    times.sort();
    let total: f64 = times.iter().map(Duration::as_secs_f64).sum();
    format!(
        "p50 {:8.3} ms  p99 {:8.3} ms  {:7.1} MiB/s",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        (size * n) as f64 / total / (1 << 20) as f64
    )
}

/// `n` appends of `size` bytes to one file, each followed by fdatasync (a synced log).
fn append_fdatasync(dir: &Path, size: usize, n: usize) -> String {
    let buf = vec![0x5au8; size];
    let mut f = File::create(dir.join("log")).unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        times.push(start.elapsed());
    }
    drop(f);
    std::fs::remove_file(dir.join("log")).unwrap();
    times.sort();
    format!(
        "p50 {:8.3} ms  p99 {:8.3} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    )
}

#[test]
#[ignore = "a measurement, not a check: cargo test -p perch-powercut --test throughput -- --ignored --nocapture"]
fn throughput() {
    require_fuse!();
    for forward in [false, true] {
        let h = Harness::new();
        let d = h
            .try_mount_with(if forward { &["--forward-fsync"] } else { &[] }, &[])
            .unwrap();
        let direct = h.dir.path().join("direct");
        std::fs::create_dir(&direct).unwrap();
        let label = if forward { "mount --forward-fsync" } else { "mount" };
        for (what, size, chunk, n) in [
            ("1 MiB write+fsync", 1 << 20, 1 << 20, 50),
            ("16 MiB write+fsync", 16 << 20, 1 << 20, 10),
            ("64 MiB write+fsync", 64 << 20, 1 << 20, 4),
        ] {
            if !forward {
                println!(
                    "{what:22} direct                 {}",
                    write_fsync(&direct, "f", size, chunk, n)
                );
            }
            println!("{what:22} {label:22} {}", write_fsync(&h.mnt, "f", size, chunk, n));
        }
        if !forward {
            println!(
                "{:22} direct                 {}",
                "4 KiB append+fdatasync",
                append_fdatasync(&direct, 4096, 500)
            );
        }
        println!(
            "{:22} {label:22} {}",
            "4 KiB append+fdatasync",
            append_fdatasync(&h.mnt, 4096, 500)
        );
        h.shutdown(d);
    }
}
