//! `perch-bench suite`: one command that starts moto, Perch in front of it and nginx, runs the
//! standard workloads (OrioleDB-shaped, keep-alive, trace replays, nginx comparison), and reports.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};

use perch_testkit::servers::{MotoServer, PerchOptions, PerchServer, perch_binary};

use crate::{
    engine::Progress,
    nginx::{self, NginxArgs},
    report::Section,
    run::{self, CommonArgs, DEFAULT_SIZES, RunArgs, WorkloadName},
    target::{Kind, Target},
    trace::trace_files,
    units::{SizeMix, duration_arg},
};

/// Options of `perch-bench suite`.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {
    /// The `perch` binary [default: $PERCH_BIN, else `perch` next to this program].
    #[arg(long)]
    pub perch_bin: Option<PathBuf>,
    /// Load time per workload per target in the run sections, split over the rounds.
    #[arg(long, value_parser = duration_arg, default_value = "2s")]
    pub duration: Duration,
    /// Rounds of the run sections (trace replays: one replay per round).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Object sizes of the run sections.
    #[arg(long, default_value = DEFAULT_SIZES)]
    pub sizes: String,
    /// Objects in each cold set (cold GETs stop early once all are read).
    #[arg(long, default_value_t = 200)]
    pub cold_objects: usize,
    /// Directory of the OrioleDB traces [default: $PERCH_ORIOLE_TRACES or ../shared/oriole].
    #[arg(long)]
    pub traces: Option<PathBuf>,
    /// Traces to replay (file names without `trace-` and `.jsonl`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "b-insert-checkpoint,d2-restore-loader,e4-point-lookups"
    )]
    pub trace_names: Vec<String>,
    /// Rounds of the trace replays.
    #[arg(long, default_value_t = 1)]
    pub trace_rounds: usize,
    /// Skip the nginx comparison.
    #[arg(long)]
    pub skip_nginx: bool,
    #[command(flatten)]
    pub nginx: NginxArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn perch_note(binary: &std::path::Path, moto: &str, cache: bool) -> String {
    let what = if cache {
        "Perch exports cache counters: its hit ratios come from /metrics"
    } else {
        "this Perch exports no cache counters (no read cache): every GET through it is passed to moto"
    };
    format!(
        "perch {} in front of moto_server {moto}, both on loopback and started by the suite; {what}",
        binary.display()
    )
}

/// Runs the suite; returns its sections.
pub async fn run_suite(args: &SuiteArgs, progress: Arc<Progress>) -> anyhow::Result<Vec<Section>> {
    let perch_bin = match &args.perch_bin {
        Some(p) => p.clone(),
        None => perch_binary()?,
    };
    if !perch_bin.is_file() {
        bail!("perch binary {} does not exist", perch_bin.display());
    }
    let sizes = SizeMix::parse(&args.sizes)?;
    let trace_dir = args.traces.clone().unwrap_or_else(run::default_trace_dir);
    let all_traces = trace_files(std::slice::from_ref(&trace_dir))?;
    let mut traces = Vec::new();
    for name in &args.trace_names {
        let file = all_traces
            .iter()
            .find(|f| {
                f.file_stem()
                    .is_some_and(|s| s.to_string_lossy() == format!("trace-{name}"))
            })
            .with_context(|| format!("no trace-{name}.jsonl in {}", trace_dir.display()))?;
        traces.push(file.clone());
    }

    progress.note("starting moto_server");
    let moto = tokio::task::spawn_blocking(MotoServer::start).await?;
    let data = tempfile::Builder::new().prefix("perch-bench-suite-").tempdir()?;
    progress.note(&format!(
        "starting perch ({}) in front of moto at {}",
        perch_bin.display(),
        moto.endpoint
    ));
    let opts = PerchOptions {
        binary: perch_bin.clone(),
        data_dir: data.path().join("perch"),
        args: vec!["--origin".into(), moto.endpoint.clone()],
        env: vec![
            ("PERCH_ORIGIN_ACCESS_KEY_ID".into(), "test".into()),
            ("PERCH_ORIGIN_SECRET_ACCESS_KEY".into(), "test".into()),
            ("PERCH_LOG".into(), "warn".into()),
        ],
    };
    let perch = tokio::task::spawn_blocking(move || PerchServer::start(opts)).await?;
    // Whether this Perch has a read cache: it then exports the cache counters.
    let cache = crate::metrics::scrape(perch.admin).await.is_some_and(|c| c.present());

    // One seed for the suite; each section gets its own key prefix so no section reads keys
    // another one has already read through Perch.
    let seed = args.common.seed(true);
    let mut common = args.common.clone();
    common.seed = Some(seed);
    let base = |workloads: Vec<WorkloadName>, section: &str| RunArgs {
        targets: vec![
            format!("perch={},admin={}", perch.endpoint, perch.admin),
            format!("origin={}", moto.endpoint),
        ],
        workload: workloads,
        trace: Vec::new(),
        oriole: true,
        connection: None,
        concurrency: None,
        duration: Some(args.duration),
        requests: None,
        rounds: args.rounds,
        sizes: sizes.clone(),
        hot_objects: 32,
        cold_objects: Some(args.cold_objects),
        put_keys: 0,
        read_ratio: 0.9,
        setup: true,
        origin_target: Some("origin".into()),
        perch_admin: None,
        bucket: "perch-bench".into(),
        key_prefix: Some(format!("perch-bench/{section}-s{seed}")),
        trace_at_root: false,
        common: common.clone(),
    };
    let mut sections = Vec::new();

    let oriole = base(
        vec![
            WorkloadName::Hot,
            WorkloadName::Cold,
            WorkloadName::Put,
            WorkloadName::Mix,
        ],
        "oriole",
    );
    sections.push(
        run::run_section(
            &oriole,
            "oriole",
            "OrioleDB-shaped client (new connection per request, 21 in flight, SigV4 with payload hash, \
             Expect: 100-continue over 1 MiB, every body verified)",
            progress.clone(),
        )
        .await?,
    );

    let mut pooled = base(vec![WorkloadName::Hot, WorkloadName::Cold], "keep-alive");
    pooled.oriole = false;
    pooled.connection = Some(crate::client::ConnMode::Pool);
    pooled.concurrency = Some(16);
    sections.push(
        run::run_section(
            &pooled,
            "keep-alive",
            "Keep-alive pool client (16 connections, every body verified)",
            progress.clone(),
        )
        .await?,
    );

    let mut replay = base(vec![WorkloadName::Trace], "trace");
    replay.trace = traces;
    replay.rounds = args.trace_rounds;
    sections.push(
        run::run_section(
            &replay,
            "trace",
            "OrioleDB trace replay (recorded keys, sizes, order and concurrency; OrioleDB-shaped client)",
            progress.clone(),
        )
        .await?,
    );

    if !args.skip_nginx {
        let mut perch_t = Target::new(nginx::PERCH, perch.addr, &args.nginx.bucket, Kind::S3);
        perch_t.admin = Some(perch.admin);
        let origin_t = Target::new(
            nginx::ORIGIN,
            crate::target::loopback_url(&moto.endpoint)?,
            &args.nginx.bucket,
            Kind::S3,
        );
        let mut nginx_args = args.nginx.clone();
        nginx_args.duration = nginx_args.duration.or(Some(Duration::from_millis(600)));
        sections.push(nginx::compare_section(perch_t, origin_t, &nginx_args, &common, progress.clone()).await?);
    }

    if let Some(first) = sections.first_mut() {
        first.notes.insert(0, perch_note(&perch_bin, &moto.endpoint, cache));
    }
    drop(perch);
    drop(moto);
    Ok(sections)
}
