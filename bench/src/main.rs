//! `perch-bench`: benchmark and test-harness tools for Perch.
//! Subcommands: `run` (load generator), `compare-nginx`, `suite` (starts everything),
//! `cache-restart` (restart-to-ready and memory with a large cache), `put-latency`, `miss`,
//! `wake`, `origin-proxy`.
//!
//! A binary only: its modules serve this command line and nothing else links them.

mod cache_restart;
mod client;
mod engine;
mod metrics;
mod miss;
mod nginx;
mod put_latency;
mod report;
mod run;
mod stats;
mod suite;
mod target;
mod trace;
mod units;
mod wake;

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use clap::{Parser, Subcommand};
use perch_testkit::origin_proxy;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "perch-bench", version, about = "Benchmark and test-harness tools for Perch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load-test S3 endpoints on loopback: hot and cold GETs, PUTs, a read/write mix and OrioleDB
    /// trace replays, several targets alternated in rounds; writes JSON, Markdown and SVG results.
    Run(Box<run::RunArgs>),
    /// Start nginx (static files, and proxy_cache in front of the origin) on loopback and compare
    /// it with Perch and the origin on the same GET workload.
    CompareNginx(Box<nginx::CompareArgs>),
    /// Start moto, Perch and nginx, run the standard workloads and write one report (about a minute).
    Suite(Box<suite::SuiteArgs>),
    /// Fill a data dir with N cache entries (1,000,000 by default) through perch-cache directly,
    /// start perch on it in front of an empty origin, and measure the time to the first verified
    /// HIT, the eviction-order rebuild and the resident memory.
    CacheRestart(Box<cache_restart::CacheRestartArgs>),
    /// Write-back: PUT acknowledgement latency through Perch (uploader busy) beside a local
    /// write + fsync of the same bytes and beside direct PUTs to an origin with added latency,
    /// then the upload throughput while Perch drains its backlog.
    PutLatency(Box<put_latency::PutLatencyArgs>),
    /// Cache misses through Perch beside the same GETs sent to the origin directly (origin proxy
    /// with added latency): time to first byte, cold 1 MiB throughput at 21 in flight with new
    /// connections and keep-alive, whole 16/64 MiB objects, a range miss and its background fill.
    Miss(Box<miss::MissArgs>),
    /// A Machine's wake through Perch beside the same wake direct to the origin (origin proxy
    /// with added latency): Perch drained and started again on its volume (warm), or on an empty
    /// volume prewarmed from the hot set, then the replay of an OrioleDB start and first query.
    Wake(Box<wake::WakeArgs>),
    /// HTTP/1.1 proxy in front of a loopback S3 origin that adds latency, paces
    /// bandwidth, injects faults and records every request (control API under /__proxy/).
    OriginProxy(Box<origin_proxy::ProxyArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (report, out) = match cli.command {
        Command::OriginProxy(args) => return Ok(runtime.block_on(origin_proxy::run(*args))?),
        Command::PutLatency(args) => {
            let report = runtime.block_on(put_latency::run(*args))?;
            print!("{}", report.markdown());
            return Ok(());
        }
        Command::Miss(args) => {
            let report = runtime.block_on(miss::run(*args))?;
            print!("{}", report.markdown());
            return Ok(());
        }
        Command::Wake(args) => {
            let report = runtime.block_on(wake::run(*args))?;
            print!("{}", report.markdown());
            return Ok(());
        }
        Command::CacheRestart(args) => {
            let (report, out) = runtime.block_on(cache_restart::run(*args))?;
            print!("{}", report.markdown());
            eprintln!("results written to {}", out.display());
            return Ok(());
        }
        Command::Run(args) => runtime.block_on(measure(args.common.out.clone(), |progress| async move {
            Ok(vec![run::run_section(&args, "run", "perch-bench run", progress).await?])
        }))?,
        Command::CompareNginx(args) => runtime.block_on(measure(args.common.out.clone(), |progress| async move {
            let (perch, origin) = nginx::endpoints(&args)?;
            Ok(vec![
                nginx::compare_section(perch, origin, &args.nginx, &args.common, progress).await?,
            ])
        }))?,
        Command::Suite(args) => runtime.block_on(measure(args.common.out.clone(), |progress| async move {
            suite::run_suite(&args, progress).await
        }))?,
    };
    print!("{}", report.markdown());
    let errors = report.errors();
    eprintln!("results written to {}", out.display());
    if errors > 0 {
        eprintln!("warning: {errors} requests failed (see results.md for samples)");
    }
    Ok(())
}

/// Runs sections with a progress line, then writes and returns the report.
pub async fn measure<F, Fut>(out: Option<PathBuf>, body: F) -> anyhow::Result<(report::Report, PathBuf)>
where
    F: FnOnce(Arc<engine::Progress>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<report::Section>>>,
{
    let started = SystemTime::now();
    let out = out.unwrap_or_else(|| PathBuf::from("bench-results").join(units::compact_timestamp(started)));
    let progress = Arc::new(engine::Progress::new());
    let ticker = progress.ticker();
    let sections = body(progress.clone()).await;
    drop(ticker);
    progress.note("");
    let report = report::Report {
        tool: "perch-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: units::rfc3339(started),
        finished_at: units::rfc3339(SystemTime::now()),
        command: std::env::args().collect(),
        machine: report::Machine::detect(),
        sections: sections?,
    };
    report.write(&out)?;
    Ok((report, out))
}
