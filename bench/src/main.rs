//! `perch-bench`: benchmark and test-harness tools for Perch.
//! Subcommands: `origin-proxy` (fault-injecting S3 origin proxy); `run` and `compare-nginx` are to come.

use perch_bench::proxy;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "perch-bench", version, about = "Benchmark and test-harness tools for Perch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP/1.1 proxy in front of a loopback S3 origin that adds latency, paces
    /// bandwidth, injects faults and records every request (control API under /__proxy/).
    OriginProxy(proxy::ProxyArgs),
    // Planned: `Run` (load generator against a gateway) and `CompareNginx`.
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::OriginProxy(args) => runtime.block_on(proxy::run(args)),
    }
}
