//! `perch-bench cache-restart`: how fast a restarted Perch serves a large read cache, and what it
//! costs in memory. It fills a data dir with N cache entries through perch-cache's `Seeder`
//! (no HTTP, so a million entries take a minute, not an hour), then starts the real
//! `perch` on it, in front of an origin that holds nothing (any miss would fail), and measures:
//! the time from spawn to the first verified HIT, the time until the background rebuild of the
//! eviction order is done, and the resident memory of the process after the rebuild, after a
//! burst of hits, and with the memory tier filled.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use perch_cache::{Checksums, ContentHeaders, ObjectMeta, Seeder};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use perch_testkit::{
    bodies::{self as data, Digest32},
    servers::{PerchOptions, PerchServer},
};

use crate::{
    client::{ConnMode, Expect, HttpClient, Req},
    report::Machine,
    run::CommonArgs,
    stats::{Stats, Summary},
    target::{Kind, Target},
    units::{compact_timestamp, format_size, rfc3339, size_arg},
};

/// How a measured Perch is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    Term,
    Kill,
}

/// What the populated data dir holds (`populated.json` beside it), so a kept dir can be reused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Populated {
    entries: u64,
    body_size: u64,
    seed: u64,
    bucket: String,
}

/// Options of `perch-bench cache-restart`.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheRestartArgs {
    /// The `perch` binary [default: $PERCH_BIN, else `perch` next to this program].
    #[arg(long)]
    pub perch_bin: Option<PathBuf>,
    /// Cache entries to create.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Body size of every entry (one blob file each: keep it small, the disk use is checked first).
    #[arg(long, value_parser = size_arg, default_value = "1KiB")]
    pub body_size: u64,
    /// Where to build the data dir [default: a new directory under /var/tmp, removed at the end].
    /// A dir populated earlier with the same --entries, --body-size, --seed and --bucket is reused.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the data dir at the end (to rerun with --data-dir).
    #[arg(long)]
    pub keep: bool,
    /// Restarts to measure, one after the other on the same data dir.
    #[arg(long, default_value_t = 3)]
    pub restarts: usize,
    /// How each measured Perch is stopped: `term` (SIGTERM, a clean stop) or `kill` (SIGKILL, a
    /// crash: the next start replays the index's log).
    #[arg(long, value_enum, default_value = "term")]
    pub stop: StopMode,
    /// Drop the kernel's page cache before each start (needs root): a cold start, as after the
    /// machine itself restarted.
    #[arg(long)]
    pub drop_caches: bool,
    /// Hits of random entries in the burst measured once the rebuild is done.
    #[arg(long, default_value_t = 20_000)]
    pub burst: u64,
    /// Requests in flight in the bursts.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Hits of random entries sent as soon as Perch is ready, while the rebuild runs.
    #[arg(long, default_value_t = 2_000)]
    pub early: u64,
    /// Distinct entries read after the burst, to fill the memory tier (0: skip). 250,000 entries
    /// of 1 KiB outweigh the default 256 MiB memory tier.
    #[arg(long, default_value_t = 250_000)]
    pub fill_memory: u64,
    /// Extra `perch serve` flags, e.g. `--perch-arg=--cache-memory-bytes=64MiB`.
    #[arg(long = "perch-arg", allow_hyphen_values = true)]
    pub perch_args: Vec<String>,
    /// Bucket of the entries.
    #[arg(long, default_value = "perch-bench-restart")]
    pub bucket: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The object key of entry `i`: shaped like OrioleDB's data files (immutable, never revalidated).
/// The key of entry `i` of a populated data dir.
pub fn key_of(i: u64) -> String {
    format!("orioledb_data/1/5/{}.0.{}", 16384 + i / 1000, i % 1000)
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Bytes free on the filesystem holding `dir` (from `df`).
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .context("running df")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("cannot read df's answer for {}", dir.display()))
}

/// `1.5 GiB`, `300 MiB`: a byte count for people.
fn human(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    }
}

/// Bytes `dir` occupies on disk (from `du`).
fn disk_usage(dir: &Path) -> Option<u64> {
    let out = Command::new("du").args(["-s", "-B1"]).arg(dir).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Writes `entries` cache entries into `<root>/perch/cache`.
fn populate(root: &Path, p: &Populated) -> anyhow::Result<f64> {
    seed_data_dir(&root.join("perch"), p)
}

/// Writes the entries into the data dir `data_dir` with a `Seeder`, with a last-read time for each.
fn seed_data_dir(data_dir: &Path, p: &Populated) -> anyhow::Result<f64> {
    let started = Instant::now();
    let seeder = Seeder::open(data_dir).context("opening the data dir's cache")?;
    let now = SystemTime::now();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    const CHUNK: u64 = 2048;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4);
    let worker = || -> anyhow::Result<()> {
        loop {
            let start = next.fetch_add(CHUNK, Ordering::Relaxed);
            if start >= p.entries {
                return Ok(());
            }
            let end = (start + CHUNK).min(p.entries);
            let mut reads = Vec::with_capacity(CHUNK as usize);
            for i in start..end {
                let key = key_of(i);
                let body = data::body_bytes(p.seed, &key, 0, p.body_size as usize);
                // An MD5-shaped ETag (Perch does not check it against the body on a hit).
                let etag = format!("\"{}\"", hex::encode(&data::sha256(&body)[..16]));
                let h = mix(i ^ p.seed);
                let modified = now - Duration::from_secs(40 * 86_400 + h % 86_400);
                let meta = ObjectMeta {
                    size: p.body_size,
                    etag,
                    last_modified: modified,
                    headers: ContentHeaders {
                        content_type: Some("binary/octet-stream".into()),
                        ..Default::default()
                    },
                    checksums: Checksums::default(),
                };
                seeder.add(&p.bucket, &key, &meta, &body, modified)?;
                // Last reads spread over 30 days, so the rebuild really sorts.
                reads.push((key, now - Duration::from_secs((h >> 20) % (30 * 86_400))));
            }
            seeder.record_reads(&p.bucket, &reads)?;
            let total = done.fetch_add(end - start, Ordering::Relaxed) + (end - start);
            if total / 100_000 != (total - (end - start)) / 100_000 {
                eprintln!(
                    "populate: {total} of {} entries ({:.0} s)",
                    p.entries,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    };
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a populate thread panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    // As a clean stop of Perch leaves it: memtables written out, no log to replay.
    seeder.finish()?;
    Ok(started.elapsed().as_secs_f64())
}

/// One field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system, clock ticks) of a process.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of the process at one moment, MiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss_mib: f64,
    pub hwm_mib: f64,
    pub rss_anon_mib: f64,
}

fn memory(pid: u32) -> Memory {
    let mib = |f| status_kib(pid, f).map_or(0.0, |k| k as f64 / 1024.0);
    Memory {
        rss_mib: mib("VmRSS"),
        hwm_mib: mib("VmHWM"),
        rss_anon_mib: mib("RssAnon"),
    }
}

/// Removes ANSI colour sequences from a log line.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(entries, ms)` of Perch's "cache eviction order rebuilt" log line, once it is there.
fn rebuilt_line(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .map(strip_ansi)
        .find(|l| l.contains("cache eviction order rebuilt"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
    };
    Some((field("entries=")?, field("ms=")?))
}

/// One sample of a gauge in Perch's `/metrics`, e.g. `perch_cache_entries{tier="disk"}`.
fn gauge(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.split_whitespace().next()?.parse().ok())
}

/// GETs of entries, `concurrency` at a time; each must be a HIT with exactly the entry's bytes.
/// `pick(n)` chooses the entry of the n-th request.
async fn hits(
    client: Arc<HttpClient>,
    target: Arc<Target>,
    p: &Populated,
    count: u64,
    concurrency: usize,
    pick: Arc<dyn Fn(u64) -> u64 + Send + Sync>,
) -> Stats {
    let counter = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Mutex::new(Stats::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, target, counter, all, pick) = (
            client.clone(),
            target.clone(),
            counter.clone(),
            all.clone(),
            pick.clone(),
        );
        let (seed, size) = (p.seed, p.body_size as usize);
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    break;
                }
                let key = key_of(pick(n));
                let digest = Digest32::from(&data::object(seed, &key, 0, size));
                let mut o = client
                    .execute(&target, &Req::get(key, Expect::Body { status: 200, digest }))
                    .await;
                if o.ok() && o.cache != Some(true) {
                    o.error = Some(format!("GET {}: not a HIT (X-Cache {:?})", o.status, o.cache));
                }
                stats.record(&o);
            }
            if let Ok(mut a) = all.lock() {
                a.merge(stats);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut stats = std::mem::take(&mut *all.lock().unwrap_or_else(|e| e.into_inner()));
    stats.elapsed = started.elapsed();
    stats
}

/// What one restart measured.
#[derive(Debug, Clone, Serialize)]
pub struct RestartResult {
    pub cold_page_cache: bool,
    /// How the previous Perch on this data dir was stopped (the first: by the populate, cleanly).
    pub after: String,
    /// Spawn to the `listening` line (index opened, listeners bound).
    pub listening_ms: f64,
    /// Spawn to the first GET answered HIT with the right bytes.
    pub first_hit_ms: f64,
    /// GETs sent until that one (1: the first one was).
    pub first_hit_attempts: u64,
    /// Hits sent right after the first, while the rebuild runs.
    pub early: Summary,
    /// The rebuild's own duration, as Perch logs it.
    pub rebuild_logged_ms: u64,
    pub rebuild_entries: u64,
    /// Spawn to the moment the log line was seen.
    pub rebuild_seen_ms: f64,
    /// Spawn to the moment Perch went idle after the rebuild (blob sweep included).
    pub idle_ms: f64,
    pub after_rebuild: Memory,
    pub burst: Summary,
    pub after_burst: Memory,
    pub fill: Option<Summary>,
    pub after_fill: Option<Memory>,
    /// `perch_cache_entries` and `perch_cache_size_bytes` by tier at the end.
    pub gauges: BTreeMap<String, f64>,
    /// SIGTERM to exit.
    pub stop_ms: f64,
}

/// Everything `cache-restart` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RestartReport {
    pub command: Vec<String>,
    pub started_at: String,
    pub machine: Machine,
    pub perch: String,
    pub entries: u64,
    pub body_size: u64,
    pub populate_seconds: Option<f64>,
    pub data_dir_bytes: Option<u64>,
    pub index_bytes: Option<u64>,
    pub restarts: Vec<RestartResult>,
}

/// The perch binary: `flag`, else `$PERCH_BIN`, else the one next to perch-bench.
pub(crate) fn perch_binary(flag: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os("PERCH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let sibling = std::env::current_exe()?.with_file_name("perch");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!("no perch binary next to perch-bench: build it (cargo build --release -p perch-gateway) or pass --perch-bin")
}

/// Regular files under `dir` (the origin must hold none).
fn files_under(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

fn drop_page_cache() -> anyhow::Result<()> {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches (root only)")
}

/// Waits until the process has used less than 2 clock ticks of CPU over 500 ms.
async fn wait_idle(pid: u32, limit: Duration) {
    let start = Instant::now();
    let mut last = cpu_ticks(pid).unwrap_or(0);
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_ticks(pid).unwrap_or(0);
        if now.saturating_sub(last) < 2 {
            return;
        }
        last = now;
    }
}

async fn one_restart(
    args: &CacheRestartArgs,
    binary: &Path,
    root: &Path,
    origin_dir: &Path,
    p: &Populated,
    client: Arc<HttpClient>,
    after: &str,
) -> anyhow::Result<RestartResult> {
    if files_under(origin_dir) != 0 {
        bail!("the origin {} is not empty", origin_dir.display());
    }
    if args.drop_caches {
        drop_page_cache()?;
    }
    let mut perch_args = vec![
        "--origin".to_owned(),
        format!("file://{}", origin_dir.display()),
        "--cache-disk-bytes".to_owned(),
        // Room for every entry: nothing is evicted while measuring.
        format!("{}", (p.entries * p.body_size.max(4096)).max(1 << 30) * 2),
    ];
    perch_args.extend(args.perch_args.iter().cloned());
    let opts = PerchOptions {
        binary: binary.to_owned(),
        data_dir: root.join("perch"),
        args: perch_args,
        env: vec![
            ("PERCH_LOG".into(), "warn,perch_cache::local=info".into()),
            ("NO_COLOR".into(), "1".into()),
        ],
    };
    let spawned = Instant::now();
    let perch = tokio::task::spawn_blocking(move || PerchServer::start(opts)).await?;
    let listening_ms = spawned.elapsed().as_secs_f64() * 1e3;
    let pid = perch.pid().context("perch has no pid")?;
    // Watches the log for the rebuild's line from the start, while the hits below run.
    let log = perch.log_path().to_owned();
    let watcher = tokio::spawn(async move {
        loop {
            if let Some((entries, ms)) = std::fs::read_to_string(&log).ok().as_deref().and_then(rebuilt_line) {
                return Some((entries, ms, spawned.elapsed().as_secs_f64() * 1e3));
            }
            if spawned.elapsed() > Duration::from_secs(300) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut target = Target::new("perch", perch.addr, &p.bucket, Kind::S3);
    target.admin = Some(perch.admin);
    let target = Arc::new(target);

    // The first verified HIT of a random entry.
    let mut rng = StdRng::seed_from_u64(p.seed ^ spawned.elapsed().as_nanos() as u64);
    let mut attempts = 0u64;
    let first_hit_ms = loop {
        attempts += 1;
        let key = key_of(rng.random_range(0..p.entries));
        let digest = Digest32::from(&data::object(p.seed, &key, 0, p.body_size as usize));
        let o = client
            .execute(&target, &Req::get(key, Expect::Body { status: 200, digest }))
            .await;
        if o.ok() && o.cache == Some(true) {
            break spawned.elapsed().as_secs_f64() * 1e3;
        }
        if spawned.elapsed() > Duration::from_secs(60) {
            bail!(
                "no verified HIT within 60 s of the start; last: {:?} (log: {})",
                o.error,
                perch.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let n = p.entries;
    let salt = rng.random::<u64>();
    let early = hits(
        client.clone(),
        target.clone(),
        p,
        args.early,
        args.concurrency,
        Arc::new(move |i| mix(i ^ salt) % n),
    )
    .await;

    // The rebuild's log line, then quiet (the sweep of unindexed blob files follows the rebuild).
    let Some((rebuild_entries, rebuild_logged_ms, rebuild_seen_ms)) = watcher.await? else {
        bail!(
            "perch did not log `cache eviction order rebuilt` within 300 s: {}",
            perch.log_path().display()
        );
    };
    wait_idle(pid, Duration::from_secs(120)).await;
    let idle_ms = spawned.elapsed().as_secs_f64() * 1e3;
    let after_rebuild = memory(pid);

    let salt = rng.random::<u64>();
    let burst = hits(
        client.clone(),
        target.clone(),
        p,
        args.burst,
        args.concurrency,
        Arc::new(move |i| mix(i ^ salt) % n),
    )
    .await;
    let after_burst = memory(pid);

    let (fill, after_fill) = if args.fill_memory > 0 {
        let count = args.fill_memory.min(p.entries);
        let offset = rng.random_range(0..p.entries);
        let s = hits(
            client.clone(),
            target.clone(),
            p,
            count,
            args.concurrency,
            Arc::new(move |i| (i + offset) % n),
        )
        .await;
        (Some(s), Some(memory(pid)))
    } else {
        (None, None)
    };
    let mut gauges = BTreeMap::new();
    if let Ok(text) = crate::client::get_text(perch.admin, "/metrics", Duration::from_secs(5)).await {
        for name in ["perch_cache_entries", "perch_cache_size_bytes"] {
            for tier in ["memory", "disk"] {
                let series = format!("{name}{{tier=\"{tier}\"}}");
                if let Some(v) = gauge(&text, &series) {
                    gauges.insert(series, v);
                }
            }
        }
        for name in ["perch_cache_misses_total", "perch_cache_corrupt_total"] {
            if let Some(v) = gauge(&text, name) {
                gauges.insert(name.to_owned(), v);
            }
        }
    }
    let stopping = Instant::now();
    match args.stop {
        StopMode::Term => {
            let status = tokio::task::spawn_blocking(move || perch.terminate(Duration::from_secs(60))).await?;
            if !status.success() {
                bail!("perch exited with {status} after SIGTERM");
            }
        }
        StopMode::Kill => tokio::task::spawn_blocking(move || perch.kill()).await?,
    }
    let stop_ms = stopping.elapsed().as_secs_f64() * 1e3;
    if files_under(origin_dir) != 0 {
        bail!("the origin {} is no longer empty", origin_dir.display());
    }
    Ok(RestartResult {
        cold_page_cache: args.drop_caches,
        after: after.to_owned(),
        listening_ms,
        first_hit_ms,
        first_hit_attempts: attempts,
        early: early.summary(),
        rebuild_logged_ms,
        rebuild_entries,
        rebuild_seen_ms,
        idle_ms,
        after_rebuild,
        burst: burst.summary(),
        after_burst,
        fill: fill.map(|s| s.summary()),
        after_fill,
        gauges,
        stop_ms,
    })
}

/// Runs the benchmark; returns the report and where it was written.
pub async fn run(args: CacheRestartArgs) -> anyhow::Result<(RestartReport, PathBuf)> {
    let started = SystemTime::now();
    let binary = perch_binary(args.perch_bin.as_ref())?;
    if !binary.is_file() {
        bail!("perch binary {} does not exist", binary.display());
    }
    if args.entries == 0 {
        bail!("--entries must be at least 1");
    }
    let out = args.common.out.clone().unwrap_or_else(|| {
        PathBuf::from("bench-results").join(format!("{}-cache-restart", compact_timestamp(started)))
    });
    let p = Populated {
        entries: args.entries,
        body_size: args.body_size,
        seed: args.common.seed(false),
        bucket: args.bucket.clone(),
    };
    let (root, temp) = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("perch-bench-restart-")
                .tempdir_in("/var/tmp")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let marker = root.join("populated.json");
    let reuse = std::fs::read(&marker)
        .ok()
        .and_then(|b| serde_json::from_slice::<Populated>(&b).ok())
        .is_some_and(|m| m == p);
    let mut populate_seconds = None;
    if !reuse {
        if root.join("perch").exists() {
            bail!(
                "{} holds another data dir: remove it or choose another --data-dir",
                root.display()
            );
        }
        // One file per blob: a block each at least, plus the index.
        let per_entry = p.body_size.div_ceil(4096).max(1) * 4096 + 600;
        let need = per_entry * p.entries;
        let free = free_bytes(&root)?;
        if need > free / 5 {
            bail!(
                "{} entries of {} need about {} on disk, more than 20% of the {} free under {}: \
                 use fewer --entries or a smaller --body-size",
                p.entries,
                format_size(p.body_size),
                human(need),
                human(free),
                root.display()
            );
        }
        eprintln!(
            "populating {} with {} entries of {} (about {} on disk, {} free)",
            root.display(),
            p.entries,
            format_size(p.body_size),
            human(need),
            human(free)
        );
        let (r, pp) = (root.clone(), p.clone());
        populate_seconds = Some(tokio::task::spawn_blocking(move || populate(&r, &pp)).await??);
        std::fs::write(&marker, serde_json::to_vec_pretty(&p)?)?;
    } else {
        eprintln!("reusing {} ({} entries)", root.display(), p.entries);
    }
    let data_dir_bytes = disk_usage(&root.join("perch"));
    let index_bytes = disk_usage(&root.join("perch").join("cache").join("index"));
    let origin_dir = root.join("empty-origin");
    std::fs::create_dir_all(&origin_dir)?;

    let mut common = args.common.clone();
    common.seed = Some(p.seed);
    let client = common.client(ConnMode::Pool, args.concurrency, None);
    let mut restarts = Vec::new();
    let mut failure = None;
    for r in 0..args.restarts.max(1) {
        eprintln!("restart {} of {}", r + 1, args.restarts.max(1));
        let after = match (r, args.stop) {
            (0, _) => "populate or earlier run",
            (_, StopMode::Term) => "SIGTERM",
            (_, StopMode::Kill) => "SIGKILL",
        };
        match one_restart(&args, &binary, &root, &origin_dir, &p, client.clone(), after).await {
            Ok(result) => {
                eprintln!(
                    "  first HIT after {:.0} ms, rebuild {} ms, RSS {:.0} MiB after the rebuild",
                    result.first_hit_ms, result.rebuild_logged_ms, result.after_rebuild.rss_mib
                );
                restarts.push(result);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if args.keep {
        if let Some(t) = temp {
            let kept = t.keep();
            eprintln!("kept the data dir {}", kept.display());
        }
    } else {
        drop(temp);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let report = RestartReport {
        command: std::env::args().collect(),
        started_at: rfc3339(started),
        machine: Machine::detect(),
        perch: binary.display().to_string(),
        entries: p.entries,
        body_size: p.body_size,
        populate_seconds,
        data_dir_bytes,
        index_bytes,
        restarts,
    };
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("results.md"), report.markdown())?;
    Ok((report, out))
}

impl RestartReport {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# perch-bench cache-restart\n");
        let _ = writeln!(s, "- command: `{}`", self.command.join(" "));
        let _ = writeln!(
            s,
            "- machine: {} CPUs ({}), {} RAM, Linux {}",
            m.nproc, m.cpu_model, m.mem_total, m.kernel
        );
        let _ = writeln!(s, "- started {}; perch {}", self.started_at, self.perch);
        let _ = writeln!(
            s,
            "- {} entries of {}{}; data dir {} on disk, index {}",
            self.entries,
            format_size(self.body_size),
            self.populate_seconds
                .map(|t| format!(", populated in {t:.0} s"))
                .unwrap_or_else(|| ", reused".into()),
            self.data_dir_bytes.map_or("?".into(), human),
            self.index_bytes.map_or("?".into(), human),
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| # | previous stop | page cache | listening ms | first HIT ms | rebuild ms (logged) | rebuild done ms | idle ms | \
             RSS / HWM after rebuild MiB | burst op/s (p50/p99 ms) | RSS / HWM after burst MiB | \
             fill op/s | RSS / HWM memory tier full MiB | errors |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, r) in self.restarts.iter().enumerate() {
            let errors = r.early.errors + r.burst.errors + r.fill.map_or(0, |f| f.errors);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} ({} GET) | {} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} ({:.2}/{:.2}) | {:.0} / {:.0} | {} | {} | {} |",
                i + 1,
                r.after,
                if r.cold_page_cache { "cold" } else { "warm" },
                r.listening_ms,
                r.first_hit_ms,
                r.first_hit_attempts,
                r.rebuild_logged_ms,
                r.rebuild_seen_ms,
                r.idle_ms,
                r.after_rebuild.rss_mib,
                r.after_rebuild.hwm_mib,
                r.burst.ops_per_sec,
                r.burst.latency_ms.p50,
                r.burst.latency_ms.p99,
                r.after_burst.rss_mib,
                r.after_burst.hwm_mib,
                r.fill.map_or("-".into(), |f| format!("{:.0}", f.ops_per_sec)),
                r.after_fill
                    .map_or("-".into(), |m| format!("{:.0} / {:.0}", m.rss_mib, m.hwm_mib)),
                errors,
            );
        }
        let _ = writeln!(s);
        for (i, r) in self.restarts.iter().enumerate() {
            let g: Vec<String> = r.gauges.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                s,
                "- restart {}: early hits (during the rebuild) {:.0} op/s, p50 {:.2} ms, p99 {:.2} ms; stop {:.0} ms; {}",
                i + 1,
                r.early.ops_per_sec,
                r.early.latency_ms.p50,
                r.early.latency_ms.p99,
                r.stop_ms,
                g.join(", ")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rebuild_line_and_gauges() {
        let log = "2026-11-26T07:00:00Z  WARN perch: x\n\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                   perch_cache::local: cache eviction order rebuilt \u{1b}[3mentries\u{1b}[0m\u{1b}[2m=\u{1b}[0m1000 ms=42\n";
        assert_eq!(rebuilt_line(log), Some((1000, 42)));
        assert_eq!(rebuilt_line("nothing"), None);
        let text = "perch_cache_entries{tier=\"disk\"} 12\nperch_cache_entries{tier=\"memory\"} 3\n";
        assert_eq!(gauge(text, "perch_cache_entries{tier=\"memory\"}"), Some(3.0));
        assert_eq!(key_of(1234), "orioledb_data/1/5/16385.0.234");
    }
}
