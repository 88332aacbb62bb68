//! perch-bench as a library: the load generator (`run`, `compare-nginx`, `suite`) and the
//! measurements of restarts, PUT latency, misses and wakes. The servers it starts, the origin proxy and the
//! bodies it sends come from perch-testkit.

pub mod cache_restart;
pub mod client;
pub mod engine;
pub mod metrics;
pub mod miss;
pub mod nginx;
pub mod put_latency;
pub mod report;
pub mod run;
pub mod stats;
pub mod suite;
pub mod target;
pub mod trace;
pub mod units;
pub mod wake;

use std::{path::PathBuf, sync::Arc, time::SystemTime};

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
