//! `perch-bench put-latency`: the write-back benchmark. PUT acknowledgement latency through Perch
//! (while its uploader is busy), beside the local floor (write + fsync of the same bytes, on the
//! same filesystem, in the same rounds) and beside direct PUTs to an origin with added latency.
//!
//! Every PUT opens a new connection, as OrioleDB does. Then the upload throughput to the origin:
//! the backlog left at the end divided by the time Perch takes to drain it.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::client::{ClientOptions, ConnMode, HttpClient, Req};
use crate::stats::percentile;
use crate::target::{Kind, Target};
use perch_testkit::servers::{MotoServer, PerchOptions, PerchServer, ProxyServer};

#[derive(Debug, clap::Args)]
pub struct PutLatencyArgs {
    /// Body sizes to measure, in MiB
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub sizes_mib: Vec<u64>,
    /// PUTs per size per target per round for sizes of 16 MiB and more; smaller sizes get
    /// proportionally more (16 MiB ÷ size times as many), so their p99 rests on more samples
    #[arg(long, default_value_t = 4)]
    pub per_round: usize,
    /// Rounds; each round measures every size on every target in turn
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// MiB written in 1 MiB PUTs for the upload-throughput burst at the end
    #[arg(long, default_value_t = 512)]
    pub burst_mib: u64,
    /// Round-trip latency the origin proxy adds to every origin request
    #[arg(long, default_value_t = 20)]
    pub origin_latency_ms: u64,
    /// Extra round trips a new origin connection costs before its first request (TCP and TLS
    /// handshakes: OrioleDB opens a new TLS connection to Tigris for every request)
    #[arg(long, default_value_t = 2)]
    pub origin_handshake_rtts: u32,
    /// Writers that keep PUTting 1 MiB objects into Perch meanwhile, so its uploader is busy
    #[arg(long, default_value_t = 2)]
    pub background_writers: usize,
    /// What the background writers add up to, in MiB/s (the uploader's steady load)
    #[arg(long, default_value_t = 20)]
    pub background_mib_per_sec: u64,
    /// The measured PUTs replace one of 8 keys per size and target in turn (OrioleDB's undo
    /// files, its control files), each a version the origin has by then, instead of new keys
    #[arg(long)]
    pub overwrite: bool,
    /// Backlog mode, instead of the comparison: PUT acknowledgement latency with this many
    /// objects pending (e.g. `0,50000,200000`), the origin held in an outage by the proxy so that
    /// nothing drains; the PUTs measured are of the first of --sizes-mib, a new connection each
    #[arg(long, value_delimiter = ',')]
    pub backlog: Vec<u64>,
    /// Backlog mode: PUTs measured at each backlog size
    #[arg(long, default_value_t = 300)]
    pub backlog_samples: usize,
    /// Backlog mode: the size of each of the pending objects that make the backlog, in KiB
    #[arg(long, default_value_t = 4)]
    pub backlog_object_kib: usize,
    /// The perch binary [default: $PERCH_BIN, or next to perch-bench]
    #[arg(long)]
    pub perch_bin: Option<PathBuf>,
    /// Where to write results.json
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub size_mib: u64,
    pub target: &'static str,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Backlog mode: the latency of PUTs acknowledged with `pending` objects waiting for upload.
#[derive(Debug, Serialize)]
pub struct BacklogRow {
    pub pending: u64,
    pub size_mib: u64,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// How long building the backlog up to `pending` took (from the previous row's).
    pub fill_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct PutLatencyReport {
    pub rows: Vec<Row>,
    /// Backlog mode's rows (empty otherwise).
    pub backlog_rows: Vec<BacklogRow>,
    pub origin_latency_ms: u64,
    pub origin_handshake_rtts: u32,
    pub background_writers: usize,
    pub background_mib_per_sec: u64,
    /// The measured PUTs replaced 8 keys in turn (`--overwrite`).
    pub overwrite: bool,
    /// The burst: bytes written, how long until all were acknowledged, and until all were in the
    /// origin; upload throughput is bytes over the latter.
    pub upload_bytes_per_sec: f64,
    pub drained_bytes: u64,
    pub acked_seconds: f64,
    pub drain_seconds: f64,
}

/// A plain write of `size` bytes and its fsync (and its directory's): what durability costs.
fn floor_once(dir: &std::path::Path, body: &[u8], n: usize) -> anyhow::Result<Duration> {
    let path = dir.join(format!("floor-{n}"));
    let started = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    let took = started.elapsed();
    std::fs::remove_file(&path)?;
    Ok(took)
}

fn ms(d: u64) -> f64 {
    d as f64 / 1000.0
}

/// Reads `/status` from Perch's admin endpoint.
async fn status(admin: std::net::SocketAddr) -> anyhow::Result<serde_json::Value> {
    let text = crate::client::get_text(admin, "/status", Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(serde_json::from_str(&text)?)
}

pub async fn run(args: PutLatencyArgs) -> anyhow::Result<PutLatencyReport> {
    let binary = match &args.perch_bin {
        Some(p) => p.clone(),
        None => perch_testkit::servers::perch_binary()?,
    };
    let moto = MotoServer::start();
    let latency = args.origin_latency_ms.to_string();
    let rtts = args.origin_handshake_rtts.to_string();
    let proxy = ProxyServer::start(&moto.endpoint, &["--latency-ms", &latency, "--new-conn-rtts", &rtts]);
    let tmp = tempfile::tempdir()?;
    let data_dir = tmp.path().join("perch");
    let perch = PerchServer::start(PerchOptions {
        binary,
        data_dir: data_dir.clone(),
        args: vec![
            "--origin".into(),
            proxy.endpoint.clone(),
            "--origin-region".into(),
            "us-east-1".into(),
        ],
        env: vec![
            ("PERCH_ORIGIN_ACCESS_KEY_ID".into(), "testing".into()),
            ("PERCH_ORIGIN_SECRET_ACCESS_KEY".into(), "testing".into()),
        ],
    });
    let floor_dir = data_dir.join("floor");
    std::fs::create_dir_all(&floor_dir)?;
    let bucket = "bench";
    let client = std::sync::Arc::new(HttpClient::new(ClientOptions {
        mode: ConnMode::New,
        pool_size: 0,
        access_key: "perch-dev".into(),
        secret_key: "perch-dev-secret".into(),
        region: "us-east-1".into(),
        expect_continue_over: Some(1 << 20),
        timeout: Duration::from_secs(600),
        verify: false,
    }));
    let through_perch = Target::new("perch", perch.addr, bucket, Kind::S3);
    let direct = Target::new("direct", proxy.addr, bucket, Kind::S3);
    let mut create = Req::put("", perch_testkit::bodies::object(1, "bucket", 0, 0));
    create.key = None;
    create.body = None;
    let made = client.execute(&through_perch, &create).await;
    if !made.ok() {
        bail!("CreateBucket through perch answered {}", made.status);
    }

    if !args.backlog.is_empty() {
        let backlog_rows = backlog(&args, &through_perch, &proxy, perch.admin).await?;
        let report = PutLatencyReport {
            rows: Vec::new(),
            backlog_rows,
            origin_latency_ms: args.origin_latency_ms,
            origin_handshake_rtts: args.origin_handshake_rtts,
            background_writers: 0,
            background_mib_per_sec: 0,
            overwrite: false,
            upload_bytes_per_sec: 0.0,
            drained_bytes: 0,
            acked_seconds: 0.0,
            drain_seconds: 0.0,
        };
        if let Some(out) = &args.out {
            std::fs::create_dir_all(out)?;
            std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
        }
        drop(perch);
        return Ok(report);
    }

    // The uploader's background load.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    let every = Duration::from_secs_f64(args.background_writers as f64 / args.background_mib_per_sec.max(1) as f64);
    for w in 0..args.background_writers {
        let (client, target, stop) = (client.clone(), through_perch.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let key = format!("orioledb_data/bg{w}/{n}");
                let _ = client
                    .execute(
                        &target,
                        &Req::put(&key, perch_testkit::bodies::object(7, &key, 0, 1 << 20)),
                    )
                    .await;
                n += 1;
            }
        }));
    }

    let mut samples: Vec<((u64, &'static str), Vec<u64>)> = Vec::new();
    let mut slot = |k: (u64, &'static str)| -> usize {
        match samples.iter().position(|(key, _)| *key == k) {
            Some(i) => i,
            None => {
                samples.push((k, Vec::new()));
                samples.len() - 1
            }
        }
    };
    let mut indices = Vec::new();
    for &size in &args.sizes_mib {
        for t in ["floor", "perch", "direct"] {
            indices.push(((size, t), slot((size, t))));
        }
    }
    let mut n = 0usize;
    for round in 0..args.rounds {
        for &size in &args.sizes_mib {
            let bytes = (size << 20) as usize;
            let body = perch_testkit::bodies::body_bytes(round as u64, "floor", 0, bytes);
            let count = (args.per_round as u64 * 16 / size.max(1)).max(args.per_round as u64);
            for _ in 0..count {
                n += 1;
                let (dir, b) = (floor_dir.clone(), body.clone());
                let took = tokio::task::spawn_blocking(move || floor_once(&dir, &b, n)).await??;
                let i = indices
                    .iter()
                    .find(|(k, _)| *k == (size, "floor"))
                    .map(|(_, i)| *i)
                    .context("slot")?;
                samples[i].1.push(took.as_micros() as u64);
                for (name, target) in [("perch", &through_perch), ("direct", &direct)] {
                    let key = if args.overwrite {
                        format!("orioledb_undo/{name}/{size}/{}", n % 8)
                    } else {
                        format!("orioledb_data/{name}/{size}/{n}")
                    };
                    let object = perch_testkit::bodies::object(round as u64, &key, 0, bytes);
                    let out = client.execute(target, &Req::put(&key, object)).await;
                    if !out.ok() {
                        bail!("PUT {key} to {name} answered {}", out.status);
                    }
                    let i = indices
                        .iter()
                        .find(|(k, _)| *k == (size, name))
                        .map(|(_, i)| *i)
                        .context("slot")?;
                    samples[i].1.push(out.latency.as_micros() as u64);
                }
            }
        }
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    // Upload throughput: a burst of 1 MiB PUTs (16 at a time), then the time until the origin
    // has all of it.
    while status(perch.admin).await?["dirty_objects"].as_u64() != Some(0) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let burst = args.burst_mib as usize;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, target, next) = (client.clone(), through_perch.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= burst {
                    return Ok::<(), anyhow::Error>(());
                }
                let key = format!("orioledb_data/burst/{i}");
                let out = client
                    .execute(
                        &target,
                        &Req::put(&key, perch_testkit::bodies::object(9, &key, 0, 1 << 20)),
                    )
                    .await;
                if !out.ok() {
                    bail!("burst PUT {key} answered {}", out.status);
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let acked_seconds = started.elapsed().as_secs_f64();
    loop {
        let st = status(perch.admin).await?;
        if st["dirty_objects"].as_u64() == Some(0) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("perch did not upload its backlog within 10 minutes: {st}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    let drained_bytes = (burst as u64) << 20;

    let rows = samples
        .into_iter()
        .map(|((size_mib, target), mut v)| {
            v.sort_unstable();
            Row {
                size_mib,
                target,
                samples: v.len(),
                p50_ms: ms(percentile(&v, 50.0)),
                p99_ms: ms(percentile(&v, 99.0)),
            }
        })
        .collect();
    let report = PutLatencyReport {
        rows,
        backlog_rows: Vec::new(),
        origin_latency_ms: args.origin_latency_ms,
        origin_handshake_rtts: args.origin_handshake_rtts,
        background_writers: args.background_writers,
        background_mib_per_sec: args.background_mib_per_sec,
        overwrite: args.overwrite,
        upload_bytes_per_sec: if drain_seconds > 0.0 {
            drained_bytes as f64 / drain_seconds
        } else {
            0.0
        },
        drained_bytes,
        acked_seconds,
        drain_seconds,
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
    }
    drop(perch);
    Ok(report)
}

fn bench_client(mode: ConnMode, pool_size: usize) -> HttpClient {
    HttpClient::new(ClientOptions {
        mode,
        pool_size,
        access_key: "perch-dev".into(),
        secret_key: "perch-dev-secret".into(),
        region: "us-east-1".into(),
        expect_continue_over: Some(1 << 20),
        timeout: Duration::from_secs(600),
        verify: false,
    })
}

/// Backlog mode: with the origin out, builds the backlog up to each size in turn (small objects,
/// 32 writers on kept-alive connections), then measures `backlog_samples` PUTs, one at a time, a
/// new connection each (as OrioleDB).
async fn backlog(
    args: &PutLatencyArgs,
    through_perch: &Target,
    proxy: &ProxyServer,
    admin: std::net::SocketAddr,
) -> anyhow::Result<Vec<BacklogRow>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    proxy.control().patch(r#"{"outage": true}"#);
    let fill_client = Arc::new(bench_client(ConnMode::Pool, 32));
    let measure_client = bench_client(ConnMode::New, 0);
    let size = args.sizes_mib.first().copied().unwrap_or(1);
    let object_bytes = args.backlog_object_kib.max(1) << 10;
    let mut sizes = args.backlog.clone();
    sizes.sort_unstable();
    let mut rows = Vec::new();
    let next = Arc::new(AtomicU64::new(0));
    for pending in sizes {
        let started = Instant::now();
        let now = status(admin).await?["dirty_objects"].as_u64().unwrap_or(0);
        let upto = next.load(Ordering::Relaxed) + pending.saturating_sub(now);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (client, target, next) = (fill_client.clone(), through_perch.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= upto {
                        next.fetch_min(upto, Ordering::Relaxed);
                        return Ok::<(), anyhow::Error>(());
                    }
                    let key = format!("orioledb_data/backlog/{i}");
                    let out = client
                        .execute(
                            &target,
                            &Req::put(&key, perch_testkit::bodies::object(5, &key, 0, object_bytes)),
                        )
                        .await;
                    if !out.ok() {
                        bail!("backlog PUT {key} answered {}", out.status);
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let fill_seconds = started.elapsed().as_secs_f64();
        let st = status(admin).await?;
        let have = st["dirty_objects"].as_u64().unwrap_or(0);
        if have < pending {
            bail!("the backlog is {have} objects, not {pending}: is the origin held out? {st}");
        }
        eprintln!("backlog of {have} pending objects built in {fill_seconds:.1} s; measuring");
        let mut v = Vec::with_capacity(args.backlog_samples);
        for i in 0..args.backlog_samples {
            let key = format!("orioledb_data/measured/{pending}/{i}");
            let object = perch_testkit::bodies::object(6, &key, 0, (size << 20) as usize);
            let out = measure_client.execute(through_perch, &Req::put(&key, object)).await;
            if !out.ok() {
                bail!("PUT {key} answered {}", out.status);
            }
            v.push(out.latency.as_micros() as u64);
        }
        v.sort_unstable();
        rows.push(BacklogRow {
            pending,
            size_mib: size,
            samples: v.len(),
            p50_ms: ms(percentile(&v, 50.0)),
            p99_ms: ms(percentile(&v, 99.0)),
            fill_seconds,
        });
    }
    proxy.control().faults("{}");
    Ok(rows)
}

impl PutLatencyReport {
    pub fn markdown(&self) -> String {
        format!(
            "Perch's data dir and the floor's files in {}.\n\n{}",
            crate::report::scratch_filesystem(),
            self.tables()
        )
    }

    fn tables(&self) -> String {
        if !self.backlog_rows.is_empty() {
            let mut s = String::from(
                "PUT acknowledgement latency against a backlog of pending objects (origin held out), new connection per PUT\n\n\
                 | pending objects | size | samples | p50 ms | p99 ms | backlog built in s |\n|---|---|---|---|---|---|\n",
            );
            for r in &self.backlog_rows {
                s.push_str(&format!(
                    "| {} | {} MiB | {} | {:.1} | {:.1} | {:.1} |\n",
                    r.pending, r.size_mib, r.samples, r.p50_ms, r.p99_ms, r.fill_seconds
                ));
            }
            return s;
        }
        let mut s = format!(
            "PUT acknowledgement latency, new connection per PUT{}, origin latency {} ms (+{} round trips per new origin connection), background load {} MiB/s from {} writers\n\n\
             | size | samples | floor p50 / p99 ms | perch p50 / p99 ms | direct p50 / p99 ms | perch p99 ÷ floor p99 | direct p50 ÷ perch p50 | direct p99 ÷ perch p99 |\n|---|---|---|---|---|---|---|---|\n",
            if self.overwrite {
                ", each replacing one of 8 keys in turn"
            } else {
                ""
            },
            self.origin_latency_ms,
            self.origin_handshake_rtts,
            if self.background_writers == 0 {
                0
            } else {
                self.background_mib_per_sec
            },
            self.background_writers
        );
        let get = |size: u64, t: &str| self.rows.iter().find(|r| r.size_mib == size && r.target == t);
        let mut sizes: Vec<u64> = self.rows.iter().map(|r| r.size_mib).collect();
        sizes.dedup();
        for size in sizes {
            if let (Some(f), Some(p), Some(d)) = (get(size, "floor"), get(size, "perch"), get(size, "direct")) {
                s.push_str(&format!(
                    "| {size} MiB | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {:.1} | {:.1} |\n",
                    p.samples,
                    f.p50_ms,
                    f.p99_ms,
                    p.p50_ms,
                    p.p99_ms,
                    d.p50_ms,
                    d.p99_ms,
                    p.p99_ms / f.p99_ms.max(0.001),
                    d.p50_ms / p.p50_ms.max(0.001),
                    d.p99_ms / p.p99_ms.max(0.001)
                ));
            }
        }
        s.push_str(&format!(
            "\nUpload throughput: {:.0} MiB in 1 MiB PUTs (16 at a time) acknowledged in {:.1} s ({:.0} MiB/s) and all in the origin after {:.1} s: {:.0} MiB/s\n",
            self.drained_bytes as f64 / (1 << 20) as f64,
            self.acked_seconds,
            self.drained_bytes as f64 / (1 << 20) as f64 / self.acked_seconds.max(0.001),
            self.drain_seconds,
            self.upload_bytes_per_sec / (1 << 20) as f64
        ));
        s
    }
}
