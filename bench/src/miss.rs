//! `perch-bench miss`: cache misses through Perch beside the same GETs sent to the origin
//! directly, with the origin behind the origin proxy (added latency, handshake round trips per
//! new connection): time to the first byte one GET at a time, throughput of cold 1 MiB GETs at
//! OrioleDB's concurrency (new connection per request, and keep-alive), whole large objects, and a
//! range miss of a large object (answered from the origin, then the whole object filled once).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::client::{ClientOptions, ConnMode, Expect, HttpClient, Outcome, Req};
use crate::stats::percentile;
use crate::target::{Kind, Target};
use perch_testkit::bodies::Digest32;
use perch_testkit::servers::{
    DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, MotoServer, PerchOptions, PerchServer, ProxyServer, S3sFsServer,
};

const MIB: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct MissArgs {
    /// Round-trip latency the origin proxy adds to every origin request
    #[arg(long, default_value_t = 20)]
    pub origin_latency_ms: u64,
    /// Extra round trips a new origin connection costs before its first request (TCP and TLS
    /// handshakes: OrioleDB opens a new TLS connection for every request)
    #[arg(long, default_value_t = 2)]
    pub origin_handshake_rtts: u32,
    /// GETs in flight in the throughput rows (OrioleDB's S3 workers)
    #[arg(long, default_value_t = 21)]
    pub concurrency: usize,
    /// Cold 1 MiB objects per connection mode per round for the throughput rows (each target
    /// reads each once)
    #[arg(long, default_value_t = 168)]
    pub objects: usize,
    /// Cold 1 MiB objects per connection mode per round read one at a time, for time to first byte
    #[arg(long, default_value_t = 20)]
    pub ttfb_objects: usize,
    /// The S3 server behind the origin proxy: `moto` (one Python process; it reads a whole object
    /// to answer any range of it) or `s3s-fs` (Rust, checks signatures, reads only a range's bytes)
    #[arg(long, value_enum, default_value = "moto")]
    pub origin: OriginServer,
    /// Pace each origin answer to this many MiB/s, as one TCP stream from a distant origin is
    /// bounded (AWS's performance guidelines plan on 85–90 MB/s a request) [default: unpaced]
    #[arg(long)]
    pub origin_stream_mib_s: Option<u64>,
    /// Sizes of the large objects read whole, one at a time, in MiB
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub large_mib: Vec<usize>,
    /// Large objects per size per round
    #[arg(long, default_value_t = 2)]
    pub large_objects: usize,
    /// The checksum the origin keeps with each object: `crc32` (what current SDKs send on every
    /// PUT; a fill checks the body against it) or `none` (a fill checks the MD5 ETag instead)
    #[arg(long, value_enum, default_value = "crc32")]
    pub stored_checksum: StoredChecksum,
    /// Client connection modes of the 1 MiB rows
    #[arg(long, value_enum, value_delimiter = ',', default_value = "new,pool")]
    pub connections: Vec<ConnMode>,
    /// Rounds; the target that goes first alternates
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The perch binary [default: $PERCH_BIN, or next to perch-bench]
    #[arg(long)]
    pub perch_bin: Option<std::path::PathBuf>,
    /// Where to write results.json
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// The S3 server behind the origin proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OriginServer {
    Moto,
    S3sFs,
}

/// A running origin server of either kind.
enum Running {
    Moto(MotoServer),
    S3sFs(S3sFsServer),
}

impl Running {
    fn endpoint(&self) -> &str {
        match self {
            Running::Moto(m) => &m.endpoint,
            Running::S3sFs(f) => &f.endpoint,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Moto(m) => m.pid(),
            Running::S3sFs(f) => f.pid(),
        }
    }
}

/// What the origin keeps beside each seeded object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StoredChecksum {
    Crc32,
    None,
}

/// One workload on one target, over all rounds.
#[derive(Debug, Default, Serialize)]
pub struct Cell {
    pub workload: String,
    pub target: String,
    pub ops: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Microseconds, sorted.
    #[serde(skip)]
    pub latency_us: Vec<u64>,
    #[serde(skip)]
    pub ttfb_us: Vec<u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ttfb_p50_ms: f64,
    pub ttfb_p90_ms: f64,
    /// Answers Perch marked as hits (none expected).
    pub hits: u64,
    /// CPU time used while this cell ran, by Perch, by the origin (moto), and by this process
    /// (the client and the origin proxy), in ms.
    pub cpu_ms: [f64; 3],
}

impl Cell {
    fn add_cpu(&mut self, used: [Duration; 3]) {
        for (sum, d) in self.cpu_ms.iter_mut().zip(used) {
            *sum += d.as_secs_f64() * 1000.0;
        }
    }

    fn add(&mut self, outcomes: &[Outcome], wall: Duration) {
        for o in outcomes {
            self.ops += 1;
            self.bytes += o.bytes_down;
            self.latency_us.push(o.latency.as_micros() as u64);
            self.ttfb_us.push(o.ttfb.as_micros() as u64);
            if o.cache == Some(true) {
                self.hits += 1;
            }
        }
        self.seconds += wall.as_secs_f64();
    }

    fn finish(&mut self) {
        self.latency_us.sort_unstable();
        self.ttfb_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        self.p50_ms = ms(percentile(&self.latency_us, 50.0));
        self.p99_ms = ms(percentile(&self.latency_us, 99.0));
        self.ttfb_p50_ms = ms(percentile(&self.ttfb_us, 50.0));
        self.ttfb_p90_ms = ms(percentile(&self.ttfb_us, 90.0));
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

/// The range miss of a large object: what each target took, and what Perch then asked the origin.
#[derive(Debug, Default, Serialize)]
pub struct RangeMiss {
    pub object_mib: usize,
    pub range_mib: usize,
    /// Origin GETs of the object by Perch per round: the range, and the background fill.
    pub origin_gets: Vec<u64>,
    /// Seconds from the range's answer until a whole GET of the object through Perch was a hit.
    pub filled_after_s: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct MissReport {
    pub stored_checksum: StoredChecksum,
    pub origin_latency_ms: u64,
    pub origin_handshake_rtts: u32,
    /// The pace of each origin answer, MiB/s (`None`: unpaced).
    pub origin_stream_mib_s: Option<u64>,
    pub origin: OriginServer,
    pub concurrency: usize,
    pub rounds: usize,
    pub cells: Vec<Cell>,
    pub range: RangeMiss,
}

struct Bench {
    stored_checksum: StoredChecksum,
    /// Perch, moto and this process, whose CPU time each cell records.
    pids: [u32; 3],
    seeder: Arc<HttpClient>,
    moto: Target,
    proxy: std::net::SocketAddr,
    perch: Target,
    direct: Target,
}

impl Bench {
    /// PUTs `count` objects of `size` under `prefix` straight into the origin (8 at a time).
    async fn seed(
        &self,
        prefix: &str,
        count: usize,
        size: usize,
        seed: u64,
    ) -> anyhow::Result<Vec<(String, Digest32)>> {
        let keys: Vec<String> = (0..count).map(|i| format!("{prefix}/{i}")).collect();
        let next = Arc::new(AtomicUsize::new(0));
        let digests = Arc::new(std::sync::Mutex::new(vec![None; count]));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let crc32 = self.stored_checksum == StoredChecksum::Crc32;
            let (client, target, keys, next, digests) = (
                self.seeder.clone(),
                self.moto.clone(),
                keys.clone(),
                next.clone(),
                digests.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = keys.get(i) else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    let object = perch_testkit::bodies::object(seed, key, 0, size);
                    let digest = Digest32::from(&object);
                    let mut put = Req::put(key, object.clone());
                    if crc32 {
                        use base64::Engine;
                        let crc = crc32fast::hash(&object.bytes).to_be_bytes();
                        let value = base64::engine::general_purpose::STANDARD.encode(crc);
                        put.headers.push((
                            http::HeaderName::from_static("x-amz-checksum-crc32"),
                            http::HeaderValue::from_str(&value)?,
                        ));
                        put.headers.push((
                            http::HeaderName::from_static("x-amz-sdk-checksum-algorithm"),
                            http::HeaderValue::from_static("CRC32"),
                        ));
                    }
                    let out = client.execute(&target, &put).await;
                    if let Some(e) = out.error {
                        bail!("seeding {key}: {e}");
                    }
                    if let Ok(mut d) = digests.lock() {
                        d[i] = Some(digest);
                    }
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let digests = std::mem::take(&mut *digests.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        keys.into_iter()
            .zip(digests)
            .map(|(k, d)| Ok((k, d.context("an object was not seeded")?)))
            .collect()
    }

    /// Deletes what `seed` put (the origin holds everything in memory).
    async fn unseed(&self, keys: &[(String, Digest32)]) {
        for (key, _) in keys {
            let mut req = Req::get(key, Expect::OneOf(&[204, 200]));
            req.method = http::Method::DELETE;
            let _ = self.seeder.execute(&self.moto, &req).await;
        }
    }

    fn cpu(&self) -> [Duration; 3] {
        self.pids
            .map(|p| perch_testkit::servers::cpu_time(p).unwrap_or_default())
    }

    /// `get_all` on `target`, recorded in `cell` with the CPU time it took.
    async fn measure(
        &self,
        cell: &mut Cell,
        client: &Arc<HttpClient>,
        target: &Target,
        keys: &[(String, Digest32)],
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let before = self.cpu();
        let (outcomes, wall) = get_all(client, target, keys, concurrency).await?;
        let after = self.cpu();
        cell.add(&outcomes, wall);
        cell.add_cpu([0, 1, 2].map(|i| after[i].saturating_sub(before[i])));
        Ok(())
    }

    async fn origin_gets(&self, key: &str) -> anyhow::Result<u64> {
        let text = crate::client::get_text(self.proxy, "/__proxy/counts", Duration::from_secs(10))
            .await
            .map_err(anyhow::Error::msg)?;
        let counts: std::collections::BTreeMap<String, u64> = serde_json::from_str(&text)?;
        Ok(counts
            .iter()
            .filter(|(k, _)| k.starts_with("GET ") && k.ends_with(key))
            .map(|(_, n)| n)
            .sum())
    }
}

/// GETs every key once, `concurrency` at a time; fails on the first wrong answer.
async fn get_all(
    client: &Arc<HttpClient>,
    target: &Target,
    keys: &[(String, Digest32)],
    concurrency: usize,
) -> anyhow::Result<(Vec<Outcome>, Duration)> {
    let keys = Arc::new(keys.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, target, keys, next) = (client.clone(), target.clone(), keys.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, digest)) = keys.get(i) else {
                    return Ok::<_, anyhow::Error>(outcomes);
                };
                let out = client
                    .execute(
                        &target,
                        &Req::get(
                            key,
                            Expect::Body {
                                status: 200,
                                digest: *digest,
                            },
                        ),
                    )
                    .await;
                if let Some(e) = &out.error {
                    bail!("{e}");
                }
                outcomes.push(out);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

fn client(mode: ConnMode, pool: usize) -> Arc<HttpClient> {
    Arc::new(HttpClient::new(ClientOptions {
        mode,
        pool_size: pool,
        access_key: "perch-dev".into(),
        secret_key: "perch-dev-secret".into(),
        region: "us-east-1".into(),
        expect_continue_over: Some(1 << 20),
        timeout: Duration::from_secs(300),
        verify: true,
    }))
}

fn mode_name(mode: ConnMode) -> &'static str {
    match mode {
        ConnMode::New => "new connection",
        ConnMode::Pool => "keep-alive",
    }
}

pub async fn run(args: MissArgs) -> anyhow::Result<MissReport> {
    let binary = crate::cache_restart::perch_binary(args.perch_bin.as_ref())?;
    // The bench's clients sign with the dev key pair; s3s-fs takes that one only, and so Perch's
    // origin requests are signed with it too (moto takes any).
    let moto = match args.origin {
        OriginServer::Moto => Running::Moto(MotoServer::start()),
        OriginServer::S3sFs => Running::S3sFs(S3sFsServer::start(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)),
    };
    let latency = args.origin_latency_ms.to_string();
    let rtts = args.origin_handshake_rtts.to_string();
    let mut proxy_args = vec!["--latency-ms".to_string(), latency, "--new-conn-rtts".into(), rtts];
    if let Some(mib_s) = args.origin_stream_mib_s {
        proxy_args.extend(["--bandwidth-bytes-per-sec".into(), (mib_s << 20).to_string()]);
    }
    let proxy_args: Vec<&str> = proxy_args.iter().map(String::as_str).collect();
    let proxy = ProxyServer::start(moto.endpoint(), &proxy_args);
    let tmp = tempfile::tempdir()?;
    let perch = PerchServer::start(PerchOptions {
        binary,
        data_dir: tmp.path().join("perch"),
        args: vec![
            "--origin".into(),
            proxy.endpoint.clone(),
            "--origin-region".into(),
            "us-east-1".into(),
        ],
        env: vec![
            ("PERCH_ORIGIN_ACCESS_KEY_ID".into(), DEV_ACCESS_KEY_ID.into()),
            ("PERCH_ORIGIN_SECRET_ACCESS_KEY".into(), DEV_SECRET_ACCESS_KEY.into()),
        ],
    });
    let bucket = "bench";
    let moto_addr = crate::target::loopback_url(moto.endpoint())?;
    let bench = Bench {
        stored_checksum: args.stored_checksum,
        pids: [perch.pid().context("perch's pid")?, moto.pid(), std::process::id()],
        seeder: client(ConnMode::Pool, 8),
        moto: Target::new("moto", moto_addr, bucket, Kind::S3),
        proxy: proxy.addr,
        perch: Target::new("perch", perch.addr, bucket, Kind::S3),
        direct: Target::new("direct", proxy.addr, bucket, Kind::S3),
    };
    let mut create = Req::get("", Expect::Status(200));
    create.method = http::Method::PUT;
    create.key = None;
    let made = bench.seeder.execute(&bench.moto, &create).await;
    if let Some(e) = made.error {
        bail!("CreateBucket at the origin: {e}");
    }

    let mut cells: Vec<Cell> = Vec::new();
    let mut cell = |workload: &str, target: &str| -> usize {
        match cells.iter().position(|c| c.workload == workload && c.target == target) {
            Some(i) => i,
            None => {
                cells.push(Cell {
                    workload: workload.to_owned(),
                    target: target.to_owned(),
                    ..Default::default()
                });
                cells.len() - 1
            }
        }
    };
    let mut slots = Vec::new();
    for &mode in &args.connections {
        for w in ["TTFB, 1 MiB, one at a time", "cold 1 MiB GETs"] {
            for t in ["perch", "direct"] {
                let name = format!("{w}, {}", mode_name(mode));
                slots.push(((name.clone(), t), cell(&name, t)));
            }
        }
    }
    for &size in &args.large_mib {
        for t in ["perch", "direct"] {
            let name = format!("whole {size} MiB, keep-alive");
            slots.push(((name.clone(), t), cell(&name, t)));
        }
    }
    let range_name = "range 8 MiB of 64 MiB, keep-alive".to_owned();
    for t in ["perch", "direct"] {
        slots.push(((range_name.clone(), t), cell(&range_name, t)));
    }
    let slot = |name: &str, t: &str| {
        slots
            .iter()
            .find(|((n, tt), _)| n == name && *tt == t)
            .map(|(_, i)| *i)
            .context("slot")
    };
    let mut range = RangeMiss {
        object_mib: 64,
        range_mib: 8,
        ..Default::default()
    };

    for round in 0..args.rounds {
        let order: [&Target; 2] = if round % 2 == 0 {
            [&bench.perch, &bench.direct]
        } else {
            [&bench.direct, &bench.perch]
        };
        for &mode in &args.connections {
            let c = client(mode, args.concurrency);
            let m = mode_name(mode);
            // Time to first byte: one GET at a time.
            let keys = bench
                .seed(&format!("ttfb/{round}/{m}"), args.ttfb_objects, MIB, round as u64)
                .await?;
            for target in order {
                let i = slot(&format!("TTFB, 1 MiB, one at a time, {m}"), &target.name)?;
                bench.measure(&mut cells[i], &c, target, &keys, 1).await?;
            }
            bench.unseed(&keys).await;
            // Throughput at OrioleDB's concurrency.
            let keys = bench
                .seed(&format!("cold/{round}/{m}"), args.objects, MIB, round as u64)
                .await?;
            for target in order {
                let i = slot(&format!("cold 1 MiB GETs, {m}"), &target.name)?;
                bench
                    .measure(&mut cells[i], &c, target, &keys, args.concurrency)
                    .await?;
            }
            bench.unseed(&keys).await;
        }
        let c = client(ConnMode::Pool, 4);
        for &size in &args.large_mib {
            let keys = bench
                .seed(
                    &format!("large/{round}/{size}"),
                    args.large_objects,
                    size * MIB,
                    round as u64,
                )
                .await?;
            for target in order {
                let i = slot(&format!("whole {size} MiB, keep-alive"), &target.name)?;
                bench.measure(&mut cells[i], &c, target, &keys, 1).await?;
            }
            bench.unseed(&keys).await;
        }
        // A range miss: 8 MiB from the middle of a 64 MiB object.
        let keys = bench.seed(&format!("range/{round}"), 1, 64 * MIB, round as u64).await?;
        let (key, digest) = keys[0].clone();
        let object = perch_testkit::bodies::object(round as u64, &key, 0, 64 * MIB);
        let (first, last) = (24 * MIB, 32 * MIB - 1);
        let part = perch_testkit::bodies::sha256(&object.bytes[first..=last]);
        for target in order {
            let mut req = Req::get(
                &key,
                Expect::Body {
                    status: 206,
                    digest: Digest32 {
                        len: (last - first + 1) as u64,
                        sha256: part,
                    },
                },
            );
            req.range = Some(format!("bytes={first}-{last}"));
            let before = bench.origin_gets(&key).await?;
            let started = Instant::now();
            let out = c.execute(target, &req).await;
            if let Some(e) = &out.error {
                bail!("range GET: {e}");
            }
            let answered = Instant::now();
            cells[slot(&range_name, &target.name)?].add(std::slice::from_ref(&out), started.elapsed());
            if target.name == "perch" {
                // The whole object follows in the background, fetched once.
                let whole = Req::get(&key, Expect::Body { status: 200, digest });
                loop {
                    let got = c.execute(target, &whole).await;
                    if let Some(e) = &got.error {
                        bail!("whole GET after the range: {e}");
                    }
                    if got.cache == Some(true) {
                        break;
                    }
                    if answered.elapsed() > Duration::from_secs(120) {
                        bail!("the range miss's background fill never became a hit");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                range.filled_after_s.push(answered.elapsed().as_secs_f64());
                range.origin_gets.push(bench.origin_gets(&key).await? - before);
            }
        }
        bench.unseed(&keys).await;
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }
    for c in &mut cells {
        c.finish();
    }
    let report = MissReport {
        stored_checksum: args.stored_checksum,
        origin_latency_ms: args.origin_latency_ms,
        origin_handshake_rtts: args.origin_handshake_rtts,
        origin_stream_mib_s: args.origin_stream_mib_s,
        origin: args.origin,
        concurrency: args.concurrency,
        rounds: args.rounds,
        cells,
        range,
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
    }
    drop(perch);
    Ok(report)
}

impl MissReport {
    pub fn markdown(&self) -> String {
        format!(
            "Perch's data dir in {}.\n\n{}",
            crate::report::scratch_filesystem(),
            self.tables()
        )
    }

    fn tables(&self) -> String {
        let mut s = format!(
            "Cache misses through Perch vs direct, origin {:?}, latency {} ms (+{} round trips per new origin connection), each origin answer {}, {} rounds, objects stored with checksum: {:?}\n\n\
             | workload | perch ops/s | direct ops/s | perch ÷ direct | perch TTFB p50 / p90 ms | direct TTFB p50 / p90 ms | TTFB perch − direct p50 ms | perch p50 / p99 ms | direct p50 / p99 ms | CPU ms a GET via perch: perch / origin / client+proxy | CPU ms a GET direct: origin / client+proxy | perch hits |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.origin,
            self.origin_latency_ms,
            self.origin_handshake_rtts,
            self.origin_stream_mib_s
                .map_or("unpaced".to_string(), |m| format!("paced to {m} MiB/s")),
            self.rounds,
            self.stored_checksum
        );
        let mut names: Vec<&str> = Vec::new();
        for c in &self.cells {
            if !names.contains(&c.workload.as_str()) {
                names.push(&c.workload);
            }
        }
        for name in names {
            let get = |t: &str| self.cells.iter().find(|c| c.workload == name && c.target == t);
            if let (Some(p), Some(d)) = (get("perch"), get("direct")) {
                let conc = if name.starts_with("cold") {
                    format!(" (c{})", self.concurrency)
                } else {
                    String::new()
                };
                let per = |c: &Cell, i: usize| c.cpu_ms[i] / c.ops.max(1) as f64;
                s.push_str(&format!(
                    "| {name}{conc} | {:.1} | {:.1} | {:.2}× | {:.2} / {:.2} | {:.2} / {:.2} | {:+.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {} |\n",
                    p.ops_per_sec(),
                    d.ops_per_sec(),
                    p.ops_per_sec() / d.ops_per_sec().max(1e-9),
                    p.ttfb_p50_ms,
                    p.ttfb_p90_ms,
                    d.ttfb_p50_ms,
                    d.ttfb_p90_ms,
                    p.ttfb_p50_ms - d.ttfb_p50_ms,
                    p.p50_ms,
                    p.p99_ms,
                    d.p50_ms,
                    d.p99_ms,
                    per(p, 0),
                    per(p, 1),
                    per(p, 2),
                    per(d, 1),
                    per(d, 2),
                    p.hits
                ));
            }
        }
        s.push_str(&format!(
            "\nRange miss ({} MiB of a {} MiB object): origin GETs of the object by Perch per round {:?} (the range, then one background fill); whole object a hit {} s after the range's answer\n",
            self.range.range_mib,
            self.range.object_mib,
            self.range.origin_gets,
            self.range
                .filled_after_s
                .iter()
                .map(|s| format!("{s:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ));
        s
    }
}
