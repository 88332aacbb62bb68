//! `perch-bench wake`: a Machine's wake through Perch beside the same wake direct to the origin
//! (behind the origin proxy with added latency). The database side is the OrioleDB-shaped replay
//! of a start and its first query, cut from a recorded trace. A warm wake starts Perch on the
//! volume a drained Perch left; an empty-volume wake starts it on a new data dir, prewarmed from
//! the hot set the drained Perch wrote to the bucket. Both are timed from Perch's spawn to the
//! last answer of the replay, the direct wake from the replay's first request to its last.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::client::{ClientOptions, ConnMode, Expect, HttpClient, Req};
use crate::engine::Progress;
use crate::report::Machine;
use crate::target::{Kind, Target};
use crate::trace::{OpKind, PreparedTrace, Trace};
use perch_testkit::servers::{MotoServer, PerchOptions, PerchServer, ProxyServer};

/// The bucket OrioleDB writes to in the traces; the replay's keys lie at its root, where the
/// built-in OrioleDB policy names them.
const BUCKET: &str = "orioledb";
/// The key OrioleDB takes at start (conditional PUT) and deletes at a clean stop.
const LOCK: &str = "data/orioledb_data/s3_lock";

#[derive(Debug, clap::Args)]
pub struct WakeArgs {
    /// Round-trip latency the origin proxy adds to every origin request
    #[arg(long, default_value_t = 20)]
    pub origin_latency_ms: u64,
    /// Extra round trips a new origin connection costs before its first request (TCP and TLS
    /// handshakes: OrioleDB opens a new TLS connection for every request)
    #[arg(long, default_value_t = 2)]
    pub origin_handshake_rtts: u32,
    /// The recorded OrioleDB start whose requests are replayed [default:
    /// trace-d3-restore-start-query.jsonl in $PERCH_ORIOLE_TRACES or ../shared/oriole]
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// GETs of the first query: the trace's start is every request before the first GET of a
    /// table's `.map` (else of a data part under `orioledb_data/`), the first query that GET and
    /// the ones after it, this many in all
    #[arg(long, default_value_t = 5)]
    pub query_gets: usize,
    /// Rounds; each measures every wake once, the order alternating
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Extra flags for `perch serve` (repeatable, e.g. `--perch-arg=--prewarm-wait=2s`)
    #[arg(long = "perch-arg", allow_hyphen_values = true)]
    pub perch_args: Vec<String>,
    /// The perch binary [default: $PERCH_BIN, or next to perch-bench]
    #[arg(long)]
    pub perch_bin: Option<PathBuf>,
    /// Where to write results.json
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One wake, timed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WakeSample {
    /// Spawn to the `listening` line (process start, store open), ms; 0 for direct.
    pub listening_ms: f64,
    /// Spawn to the first `/readyz` 200, ms; 0 for direct.
    pub ready_ms: f64,
    /// The replay of the start and the first query, ms.
    pub replay_ms: f64,
    /// Spawn (or the replay's start, direct) to the replay's last answer, ms.
    pub total_ms: f64,
    /// Requests that reached the origin from Perch's spawn to the end of the replay.
    pub origin_requests: u64,
    /// Perch's cache counters at the end of the replay (a new process: everything since spawn).
    pub hits: u64,
    pub misses: u64,
    pub prewarm_fetched: u64,
    pub prewarm_used: u64,
}

/// One kind of wake: Perch's samples beside the direct ones taken in the same rounds.
#[derive(Debug, Clone, Serialize)]
pub struct WakeRow {
    pub name: String,
    pub perch: Vec<WakeSample>,
    pub direct: Vec<WakeSample>,
    pub perch_ready_ms: f64,
    pub perch_replay_ms: f64,
    pub perch_total_ms: f64,
    pub direct_total_ms: f64,
    /// Median Perch total minus median direct total.
    pub added_ms: f64,
    /// Median direct total divided by median Perch total.
    pub speedup: f64,
    pub goal: String,
    pub goal_met: bool,
}

#[derive(Debug, Serialize)]
pub struct WakeReport {
    pub command: Vec<String>,
    pub machine: Machine,
    pub perch: String,
    pub origin_latency_ms: u64,
    pub origin_handshake_rtts: u32,
    pub trace: String,
    /// What the replay sends: the start's requests and the first query's.
    pub start_requests: String,
    pub query_requests: String,
    pub seeded_bytes: u64,
    pub rounds: usize,
    pub rows: Vec<WakeRow>,
}

/// The trace's start and first query: the requests before the first GET of a `.map` (else of a
/// key under `orioledb_data/`), then that GET and the requests up to `query_gets` GETs in all.
pub fn start_and_first_query(trace: &Trace, query_gets: usize) -> anyhow::Result<(Trace, usize)> {
    let is_get = |i: usize, f: &dyn Fn(&str) -> bool| {
        let op = &trace.ops[i];
        op.kind == OpKind::Get && op.key.as_deref().is_some_and(f)
    };
    let first = (0..trace.ops.len())
        .find(|&i| is_get(i, &|k| k.ends_with(".map")))
        .or_else(|| (0..trace.ops.len()).find(|&i| is_get(i, &|k| k.starts_with("orioledb_data/"))))
        .with_context(|| format!("{} has no GET of a data part: not the trace of a start", trace.name))?;
    let mut end = first;
    let mut gets = 0;
    while end < trace.ops.len() && gets < query_gets {
        if trace.ops[end].kind == OpKind::Get {
            gets += 1;
        }
        end += 1;
    }
    let ops = trace.ops[..end].to_vec();
    if ops
        .iter()
        .any(|o| matches!(o.kind, OpKind::Delete | OpKind::List | OpKind::Unsupported(_)))
    {
        bail!(
            "{}: the start holds requests a wake replay does not send (DELETE, LIST, other)",
            trace.name
        );
    }
    Ok((
        Trace {
            name: trace.name.clone(),
            ops,
        },
        first,
    ))
}

fn describe(ops: &[crate::trace::TraceOp]) -> String {
    let count = |k: OpKind| ops.iter().filter(|o| o.kind == k).count();
    let bytes: u64 = ops.iter().filter_map(|o| o.object_len).sum();
    format!(
        "{} requests ({} GET, {} PUT), {:.1} MiB read",
        ops.len(),
        count(OpKind::Get),
        count(OpKind::Put),
        bytes as f64 / (1 << 20) as f64
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The sum of every sample of `name` whose labels contain `labels` in Prometheus text.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let end = l.find(['{', ' '])?;
            if &l[..end] != name {
                return None;
            }
            let rest = &l[end..];
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let close = inner.rfind('}')?;
                    (&inner[..close], &inner[close + 1..])
                }
                None => ("", rest),
            };
            if !label_text.contains(labels) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

struct Bench {
    binary: PathBuf,
    proxy: ProxyServer,
    perch_args: Vec<String>,
    client: Arc<HttpClient>,
    trace: Arc<PreparedTrace>,
    direct: Arc<Target>,
}

impl Bench {
    fn perch_options(&self, data_dir: PathBuf) -> PerchOptions {
        let mut args = vec![
            "--origin".into(),
            self.proxy.endpoint.clone(),
            "--origin-region".into(),
            "us-east-1".into(),
            // The stop is not measured: no quiet time after the last request.
            "--drain-quiet".into(),
            "0s".into(),
        ];
        args.extend(self.perch_args.iter().cloned());
        PerchOptions {
            binary: self.binary.clone(),
            data_dir,
            args,
            env: vec![
                ("PERCH_ORIGIN_ACCESS_KEY_ID".into(), "testing".into()),
                ("PERCH_ORIGIN_SECRET_ACCESS_KEY".into(), "testing".into()),
            ],
        }
    }

    /// Requests the origin proxy has forwarded so far.
    async fn origin_requests(&self) -> anyhow::Result<u64> {
        let text = crate::client::get_text(self.proxy.addr, "/__proxy/counts", Duration::from_secs(10))
            .await
            .map_err(anyhow::Error::msg)?;
        let counts: std::collections::BTreeMap<String, u64> = serde_json::from_str(&text)?;
        Ok(counts.values().sum())
    }

    /// The replay of the start and the first query on `target`; fails on any wrong answer.
    async fn replay(&self, target: &Arc<Target>) -> anyhow::Result<Duration> {
        let stats = crate::trace::replay_seeded(
            self.trace.clone(),
            self.client.clone(),
            target.clone(),
            String::new(),
            21,
            Arc::new(Progress::quiet()),
        )
        .await?;
        if stats.errors > 0 {
            bail!(
                "the replay on {} failed {} requests: {:?}",
                target.name,
                stats.errors,
                stats.error_samples
            );
        }
        Ok(stats.elapsed)
    }

    /// The database's clean stop: the lock is released (through `target`).
    async fn release_lock(&self, target: &Target) -> anyhow::Result<()> {
        let mut delete = Req::get(LOCK, Expect::Status(204));
        delete.method = http::Method::DELETE;
        let out = self.client.execute(target, &delete).await;
        if let Some(e) = out.error {
            bail!("DELETE of the lock through {}: {e}", target.name);
        }
        Ok(())
    }

    /// Starts Perch on `data_dir`, waits for `/readyz`, replays the start and the first query
    /// through it; then releases the lock and drains Perch (SIGTERM), untimed.
    async fn perch_wake(&self, data_dir: PathBuf) -> anyhow::Result<WakeSample> {
        let origin_before = self.origin_requests().await?;
        let options = self.perch_options(data_dir);
        let spawned = Instant::now();
        let perch = tokio::task::spawn_blocking(move || PerchServer::start(options))
            .await
            .context("perch did not start")?;
        let listening = spawned.elapsed();
        let perch = Guard(Some(perch));
        let admin = perch.get()?.admin;
        loop {
            if crate::client::get_text(admin, "/readyz", Duration::from_secs(5))
                .await
                .is_ok()
            {
                break;
            }
            if spawned.elapsed() > Duration::from_secs(60) {
                bail!("perch was not ready within 60 s of its start");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = spawned.elapsed();
        let target = Arc::new(Target::new("perch", perch.get()?.addr, BUCKET, Kind::S3));
        let replay = self.replay(&target).await?;
        let total = spawned.elapsed();
        let origin_requests = self.origin_requests().await? - origin_before;
        let metrics = crate::client::get_text(admin, "/metrics", Duration::from_secs(10))
            .await
            .map_err(anyhow::Error::msg)?;
        let count = |name: &str, labels: &str| metric_sum(&metrics, name, labels) as u64;
        let sample = WakeSample {
            listening_ms: ms(listening),
            ready_ms: ms(ready),
            replay_ms: ms(replay),
            total_ms: ms(total),
            origin_requests,
            hits: count(crate::metrics::HITS, ""),
            misses: count(crate::metrics::MISSES, ""),
            prewarm_fetched: count("perch_cache_prefetches_total", "reason=\"prewarm\",result=\"fetched\""),
            prewarm_used: count("perch_cache_prefetch_used_total", "reason=\"prewarm\""),
        };
        self.release_lock(&target).await?;
        perch.stop().await?;
        Ok(sample)
    }

    /// The same start and first query sent to the origin directly (through the proxy).
    async fn direct_wake(&self) -> anyhow::Result<WakeSample> {
        let replay = self.replay(&self.direct).await?;
        self.release_lock(&self.direct).await?;
        Ok(WakeSample {
            replay_ms: ms(replay),
            total_ms: ms(replay),
            ..Default::default()
        })
    }
}

/// A Perch that is drained (SIGTERM, then waited for) by `stop`, or killed if dropped first.
struct Guard(Option<PerchServer>);

impl Guard {
    fn get(&self) -> anyhow::Result<&PerchServer> {
        self.0.as_ref().context("perch already stopped")
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        let perch = self.0.take().context("perch already stopped")?;
        let status = tokio::task::spawn_blocking(move || perch.terminate(Duration::from_secs(60)))
            .await
            .context("perch did not stop")?;
        if !status.success() {
            bail!("perch exited with {status} after SIGTERM");
        }
        Ok(())
    }
}

fn row(name: &str, perch: Vec<WakeSample>, direct: Vec<WakeSample>) -> WakeRow {
    let perch_total_ms = median(perch.iter().map(|s| s.total_ms).collect());
    let direct_total_ms = median(direct.iter().map(|s| s.total_ms).collect());
    let added_ms = perch_total_ms - direct_total_ms;
    let speedup = direct_total_ms / perch_total_ms.max(1e-9);
    let (goal, goal_met) = if name.starts_with("warm") {
        ("≤ 50 ms added".to_owned(), added_ms <= 50.0)
    } else {
        ("≥ 3× faster".to_owned(), speedup >= 3.0)
    };
    WakeRow {
        name: name.to_owned(),
        perch_ready_ms: median(perch.iter().map(|s| s.ready_ms).collect()),
        perch_replay_ms: median(perch.iter().map(|s| s.replay_ms).collect()),
        perch_total_ms,
        direct_total_ms,
        added_ms,
        speedup,
        goal,
        goal_met,
        perch,
        direct,
    }
}

/// The default trace: the start of a restored copy and its first query.
fn default_trace() -> PathBuf {
    crate::run::default_trace_dir().join("trace-d3-restore-start-query.jsonl")
}

pub async fn run(args: WakeArgs) -> anyhow::Result<WakeReport> {
    if args.rounds == 0 || args.query_gets == 0 {
        bail!("--rounds and --query-gets must be at least 1");
    }
    let binary = crate::cache_restart::perch_binary(args.perch_bin.as_ref())?;
    let trace_path = args.trace.clone().unwrap_or_else(default_trace);
    let recorded = Trace::load(&trace_path)?;
    let (cut, query_starts) = start_and_first_query(&recorded, args.query_gets)?;
    let start_requests = describe(&cut.ops[..query_starts]);
    let query_requests = describe(&cut.ops[query_starts..]);
    let trace = Arc::new(PreparedTrace::new(cut, 13));

    let moto = MotoServer::start();
    let latency = args.origin_latency_ms.to_string();
    let rtts = args.origin_handshake_rtts.to_string();
    let proxy = ProxyServer::start(&moto.endpoint, &["--latency-ms", &latency, "--new-conn-rtts", &rtts]);
    let client = Arc::new(HttpClient::new(ClientOptions {
        // OrioleDB's shape: a new connection for every request.
        mode: ConnMode::New,
        pool_size: 21,
        access_key: "perch-dev".into(),
        secret_key: "perch-dev-secret".into(),
        region: "us-east-1".into(),
        expect_continue_over: Some(1 << 20),
        timeout: Duration::from_secs(120),
        verify: true,
    }));
    let moto_target = Arc::new(Target::new(
        "moto",
        crate::target::loopback_url(&moto.endpoint)?,
        BUCKET,
        Kind::S3,
    ));
    let mut create = Req::get("", Expect::Status(200));
    create.method = http::Method::PUT;
    create.key = None;
    if let Some(e) = client.execute(&moto_target, &create).await.error {
        bail!("CreateBucket at the origin: {e}");
    }
    crate::trace::seed(&trace, &client, &moto_target, "", 8).await?;
    let seeded_bytes = trace.seeded_bytes();
    let bench = Bench {
        binary: binary.clone(),
        direct: Arc::new(Target::new("direct", proxy.addr, BUCKET, Kind::S3)),
        proxy,
        perch_args: args.perch_args.clone(),
        client,
        trace,
    };

    // The Machine's life before its stop: the database started and ran its first query through
    // Perch, then stopped; Perch drained and wrote the hot set.
    let tmp = tempfile::tempdir()?;
    let volume = tmp.path().join("volume");
    bench
        .perch_wake(volume.clone())
        .await
        .context("the life before the first stop")?;
    let mut hot_set = Req::get(".perch/hot-set", Expect::Status(200));
    hot_set.method = http::Method::HEAD;
    if let Some(e) = bench.client.execute(&moto_target, &hot_set).await.error {
        bail!("the drained Perch left no hot set in the bucket: {e}");
    }

    let (mut warm, mut empty, mut direct_warm, mut direct_empty) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let fresh = tmp.path().join(format!("empty-{round}"));
        if round % 2 == 0 {
            warm.push(bench.perch_wake(volume.clone()).await.context("warm wake")?);
            direct_warm.push(bench.direct_wake().await.context("direct wake")?);
            empty.push(bench.perch_wake(fresh.clone()).await.context("empty-volume wake")?);
            direct_empty.push(bench.direct_wake().await.context("direct wake")?);
        } else {
            direct_warm.push(bench.direct_wake().await.context("direct wake")?);
            warm.push(bench.perch_wake(volume.clone()).await.context("warm wake")?);
            direct_empty.push(bench.direct_wake().await.context("direct wake")?);
            empty.push(bench.perch_wake(fresh.clone()).await.context("empty-volume wake")?);
        }
        let _ = std::fs::remove_dir_all(&fresh);
        eprintln!("round {}/{} done", round + 1, args.rounds);
    }
    let report = WakeReport {
        command: std::env::args().collect(),
        machine: Machine::detect(),
        perch: binary.display().to_string(),
        origin_latency_ms: args.origin_latency_ms,
        origin_handshake_rtts: args.origin_handshake_rtts,
        trace: trace_path.display().to_string(),
        start_requests,
        query_requests,
        seeded_bytes,
        rounds: args.rounds,
        rows: vec![
            row("warm volume", warm, direct_warm),
            row("empty volume (hot-set prewarm)", empty, direct_empty),
        ],
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&report)?)?;
        std::fs::write(out.join("results.md"), report.markdown())?;
    }
    drop(moto);
    Ok(report)
}

impl WakeReport {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("# perch-bench wake\n\n");
        s.push_str(&format!("- command: `{}`\n", self.command.join(" ")));
        s.push_str(&format!("- machine: {}\n", self.machine.describe()));
        s.push_str(&format!(
            "- origin behind the proxy at +{} ms a request (+{} round trips per new connection); replay of {}: start {}, first query {}; medians of {} rounds, the order alternating\n\n",
            self.origin_latency_ms,
            self.origin_handshake_rtts,
            std::path::Path::new(&self.trace)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.trace.clone()),
            self.start_requests,
            self.query_requests,
            self.rounds
        ));
        s.push_str(
            "| wake | Perch spawn → /readyz ms | replay via Perch ms | Perch total ms | direct ms | Perch − direct ms | direct ÷ Perch | goal | origin requests via Perch | hits / misses | prewarm fetched / used |\n\
             |---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n",
        );
        for r in &self.rows {
            let med = |f: fn(&WakeSample) -> u64| median(r.perch.iter().map(|x| f(x) as f64).collect());
            s.push_str(&format!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:+.0} | {:.2}× | {} ({}) | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} |\n",
                r.name,
                r.perch_ready_ms,
                r.perch_replay_ms,
                r.perch_total_ms,
                r.direct_total_ms,
                r.added_ms,
                r.speedup,
                r.goal,
                if r.goal_met { "met" } else { "not met" },
                med(|x| x.origin_requests),
                med(|x| x.hits),
                med(|x| x.misses),
                med(|x| x.prewarm_fetched),
                med(|x| x.prewarm_used),
            ));
        }
        s.push_str("\nPer round, ms (Perch total = spawn → listening → /readyz → last answer):\n\n");
        for r in &self.rows {
            let perch: Vec<String> = r
                .perch
                .iter()
                .map(|x| format!("{:.0}→{:.0}→{:.0}", x.listening_ms, x.ready_ms, x.total_ms))
                .collect();
            let direct: Vec<String> = r.direct.iter().map(|x| format!("{:.0}", x.total_ms)).collect();
            s.push_str(&format!(
                "- {}: Perch {}; direct {}\n",
                r.name,
                perch.join(", "),
                direct.join(", ")
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"request","t":1.0,"inflight_at_start":1,"method":"PUT","host":"orioledb.localhost:9000","path":"/data/orioledb_data/s3_lock","query":"","req_headers":{"if-none-match":"*"},"req_body_bytes":8,"status":200,"resp_body_bytes":0}
{"event":"request","t":2.0,"inflight_at_start":1,"method":"GET","host":"orioledb.localhost:9000","path":"/data/orioledb_data/control","query":"","req_headers":{},"status":200,"resp_body_bytes":8192}
{"event":"request","t":3.0,"inflight_at_start":1,"method":"GET","host":"orioledb.localhost:9000","path":"/orioledb_data/1/1/2.0.0","query":"","req_headers":{},"status":200,"resp_body_bytes":8192}
{"event":"request","t":4.0,"inflight_at_start":1,"method":"GET","host":"orioledb.localhost:9000","path":"/orioledb_data/2/5/16440.map","query":"","req_headers":{},"status":200,"resp_body_bytes":40}
{"event":"request","t":5.0,"inflight_at_start":1,"method":"GET","host":"orioledb.localhost:9000","path":"/orioledb_data/2/5/16440.0.0","query":"","req_headers":{},"status":200,"resp_body_bytes":1048576}
{"event":"request","t":6.0,"inflight_at_start":2,"method":"GET","host":"orioledb.localhost:9000","path":"/orioledb_data/2/5/16440.0.1","query":"","req_headers":{},"status":200,"resp_body_bytes":1048576}
"#;

    #[test]
    fn the_start_ends_at_the_first_table_map_and_the_query_has_its_gets() {
        let trace = Trace::parse("start", START).unwrap();
        let (cut, query) = start_and_first_query(&trace, 2).unwrap();
        assert_eq!(query, 3);
        assert_eq!(cut.ops.len(), 5);
        assert_eq!(cut.ops[4].key.as_deref(), Some("orioledb_data/2/5/16440.0.0"));
        let (all, _) = start_and_first_query(&trace, 100).unwrap();
        assert_eq!(all.ops.len(), 6);
        // Without a map, the query starts at the first data part.
        let no_map = Trace {
            name: "e3".into(),
            ops: trace
                .ops
                .iter()
                .filter(|o| !o.key.as_deref().unwrap_or("").ends_with(".map"))
                .cloned()
                .collect(),
        };
        let (_, query) = start_and_first_query(&no_map, 1).unwrap();
        assert_eq!(query, 2);
    }

    #[test]
    fn sums_labelled_samples() {
        let text = "# TYPE perch_cache_prefetches_total counter\n\
                    perch_cache_prefetches_total{reason=\"prewarm\",result=\"fetched\"} 7\n\
                    perch_cache_prefetches_total{reason=\"list\",result=\"fetched\"} 3\n\
                    perch_cache_hits_total{tier=\"disk\"} 4\nperch_cache_hits_total{tier=\"memory\"} 5\n";
        assert_eq!(
            metric_sum(
                text,
                "perch_cache_prefetches_total",
                "reason=\"prewarm\",result=\"fetched\""
            ),
            7.0
        );
        assert_eq!(metric_sum(text, "perch_cache_hits_total", ""), 9.0);
        assert_eq!(metric_sum(text, "perch_cache_misses_total", ""), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
