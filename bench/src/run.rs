//! `perch-bench run`: hot GETs, cold GETs, PUTs, a read/write mix and OrioleDB trace replays
//! against one or more loopback S3 targets, alternated in rounds, in either client mode.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::json;

use perch_testkit::servers::{DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY};

use crate::{
    client::{ClientOptions, ConnMode, HttpClient},
    engine::{self, Budget, Engine, Progress, Workload, WorkloadKind},
    report::Section,
    target::{Kind, Target, loopback_addr},
    trace::{PreparedTrace, Trace, trace_files},
    units::{SizeMix, duration_arg, format_size, size_mix_arg},
};

/// Object sizes of the hot, cold, PUT and mix workloads: mostly 1 MiB parts, as OrioleDB writes
/// them, with small files, 16 MiB WAL segments and a 64 MiB undo file.
pub const DEFAULT_SIZES: &str = "1KiB:2,8KiB:2,64KiB:2,256KiB:2,1MiB:16,16MiB:1,64MiB:1";

/// The workloads `run` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadName {
    /// GETs of a hot set, warmed first: cache hits.
    Hot,
    /// GETs of a cold set, each object read once: cache misses.
    Cold,
    /// PUTs.
    Put,
    /// Hot-set GETs and PUTs in the ratio --read-ratio.
    Mix,
    /// Replays of the OrioleDB traces given with --trace.
    Trace,
}

/// Options every measuring command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Access key to sign S3 requests with (moto accepts any; Perch's loopback default is perch-dev).
    #[arg(long, env = "PERCH_BENCH_ACCESS_KEY_ID", default_value = DEV_ACCESS_KEY_ID)]
    pub access_key: String,
    /// Secret key to sign S3 requests with.
    #[arg(long, env = "PERCH_BENCH_SECRET_ACCESS_KEY", default_value = DEV_SECRET_ACCESS_KEY, hide_default_value = true)]
    pub secret_key: String,
    /// Signing region.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Limit per request, connect to last body byte.
    #[arg(long, value_parser = duration_arg, default_value = "60s")]
    pub timeout: Duration,
    /// Skip the SHA-256 check of GET bodies (lengths are still checked).
    #[arg(long)]
    pub no_verify: bool,
    /// Seed of the object bodies and key names [default: 1, or the clock with --setup so every
    /// run's cold set is new].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory [default: bench-results/<UTC timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl CommonArgs {
    pub fn seed(&self, fresh: bool) -> u64 {
        self.seed.unwrap_or_else(|| {
            if fresh {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(1)
            } else {
                1
            }
        })
    }

    pub fn client(&self, mode: ConnMode, pool_size: usize, expect_continue_over: Option<u64>) -> Arc<HttpClient> {
        Arc::new(HttpClient::new(ClientOptions {
            mode,
            pool_size,
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            region: self.region.clone(),
            expect_continue_over,
            timeout: self.timeout,
            verify: !self.no_verify,
        }))
    }
}

/// Options of `perch-bench run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A target: `NAME=http://127.0.0.1:PORT[,bucket=B][,style=path|virtual][,kind=s3|plain][,admin=ADDR]`.
    /// Repeat for several; they are alternated round by round. Loopback addresses only.
    #[arg(long = "target", required = true, value_name = "SPEC")]
    pub targets: Vec<String>,
    /// Workloads to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "hot,cold")]
    pub workload: Vec<WorkloadName>,
    /// Trace files or directories (their trace-*.jsonl) for the trace workload [default: ../shared/oriole].
    #[arg(long)]
    pub trace: Vec<PathBuf>,
    /// OrioleDB-shaped client: a new connection per request, 21 in flight, SigV4 with the real
    /// payload hash, `Expect: 100-continue` on bodies over 1 MiB, every body verified.
    #[arg(long)]
    pub oriole: bool,
    /// Client mode [default: pool; new with --oriole].
    #[arg(long, value_enum)]
    pub connection: Option<ConnMode>,
    /// Requests in flight per target [default: 16; 21 with --oriole].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Load time per workload per target, split over the rounds [default: 5s].
    #[arg(long, value_parser = duration_arg, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Requests per workload per target, split over the rounds (instead of --duration).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Rounds: each round loads every target once (trace workloads: one replay per round).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Object sizes with weights.
    #[arg(long, value_parser = size_mix_arg, default_value = DEFAULT_SIZES)]
    pub sizes: SizeMix,
    /// Objects in the hot set.
    #[arg(long, default_value_t = 32)]
    pub hot_objects: usize,
    /// Objects in each target's cold set; a cold workload ends early once they are all read
    /// [default: --requests, or 200].
    #[arg(long)]
    pub cold_objects: Option<usize>,
    /// Distinct keys the PUT and mix workloads write per target, overwriting them in turn; 0: a
    /// new key for every PUT (concurrent overwrites of one key make moto answer 500).
    #[arg(long, default_value_t = 0)]
    pub put_keys: usize,
    /// Share of GETs in the mix workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Create the bucket and PUT the hot and cold sets first (through --origin-target when given).
    #[arg(long)]
    pub setup: bool,
    /// The target that is the origin itself: setup PUTs go there, so Perch sees its first GETs as misses.
    #[arg(long, value_name = "NAME")]
    pub origin_target: Option<String>,
    /// Perch's admin address (for its cache metrics), attached to the target named `perch`
    /// (or to the only target).
    #[arg(long, value_name = "ADDR")]
    pub perch_admin: Option<String>,
    /// Bucket of targets that name none.
    #[arg(long, default_value = "perch-bench")]
    pub bucket: String,
    /// Key prefix of every object [default: perch-bench/s<seed>].
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Replay traces at the bucket's root, their keys as recorded, where Perch's built-in OrioleDB
    /// policy names them (WAL written through, control files as barriers, read-ahead of parts),
    /// instead of under a fresh prefix; each replay overwrites the last one's keys, so this suits
    /// traces of writes (a read a previous replay cached is a hit)
    #[arg(long)]
    pub trace_at_root: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Parses the targets and attaches `--perch-admin`.
pub fn targets(specs: &[String], bucket: &str, perch_admin: Option<&str>) -> anyhow::Result<Vec<Target>> {
    let mut targets = specs
        .iter()
        .map(|s| Target::parse(s, bucket))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.name == t.name) {
            bail!("two targets are named {}", t.name);
        }
    }
    if let Some(admin) = perch_admin {
        let admin = loopback_addr(admin).context("--perch-admin")?;
        let idx = match targets.iter().position(|t| t.name == "perch") {
            Some(i) => i,
            None if targets.len() == 1 => 0,
            None => bail!("--perch-admin: no target is named `perch` (or use admin= in its --target)"),
        };
        targets[idx].admin = Some(admin);
    }
    Ok(targets)
}

/// The default trace directory: `$PERCH_ORIOLE_TRACES`, else `../shared/oriole` from the current
/// directory (the workspace root), else the one beside the workspace this was built from.
pub fn default_trace_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PERCH_ORIOLE_TRACES") {
        return PathBuf::from(dir);
    }
    let relative = PathBuf::from("../shared/oriole");
    if relative.is_dir() {
        return relative;
    }
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/oriole");
    if built.is_dir() { built } else { relative }
}

fn put_keys_text(keys: usize) -> String {
    if keys == 0 {
        "of new keys".to_owned()
    } else {
        format!("over {keys} keys per target")
    }
}

/// Runs `perch-bench run` and returns its section.
pub async fn run_section(args: &RunArgs, name: &str, title: &str, progress: Arc<Progress>) -> anyhow::Result<Section> {
    let targets: Vec<Arc<Target>> = targets(&args.targets, &args.bucket, args.perch_admin.as_deref())?
        .into_iter()
        .map(Arc::new)
        .collect();
    let mode = args
        .connection
        .unwrap_or(if args.oriole { ConnMode::New } else { ConnMode::Pool });
    let concurrency = args.concurrency.unwrap_or(if args.oriole { 21 } else { 16 }).max(1);
    let expect_over = args.oriole.then_some(1 << 20);
    let client = args.common.client(mode, concurrency, expect_over);
    let seed = args.common.seed(args.setup);
    let prefix = args
        .key_prefix
        .clone()
        .unwrap_or_else(|| format!("perch-bench/s{seed}"));
    let budget = match (args.requests, args.duration) {
        (Some(n), _) => Budget::Requests(n),
        (None, Some(d)) => Budget::Duration(d),
        (None, None) => Budget::Duration(Duration::from_secs(5)),
    };
    let origin = match &args.origin_target {
        Some(name) => Some(
            targets
                .iter()
                .find(|t| &t.name == name)
                .cloned()
                .with_context(|| format!("--origin-target {name}: no such target"))?,
        ),
        None => None,
    };
    let setup_via: Vec<Arc<Target>> = targets
        .iter()
        .map(|t| origin.clone().unwrap_or_else(|| t.clone()))
        .collect();
    for w in &args.workload {
        if *w != WorkloadName::Hot
            && *w != WorkloadName::Cold
            && let Some(t) = targets.iter().find(|t| t.kind == Kind::Plain)
        {
            bail!(
                "{} is a plain HTTP target: only the hot and cold workloads can run on it",
                t.name
            );
        }
    }
    if args.setup && setup_via.iter().any(|t| t.kind == Kind::Plain) {
        bail!("--setup needs S3 targets (or --origin-target) to PUT the objects through");
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }

    // Distinct stores that setup writes to.
    let mut stores: Vec<Arc<Target>> = Vec::new();
    for t in &setup_via {
        if !stores.iter().any(|s| s.addr == t.addr && s.bucket == t.bucket) {
            stores.push(t.clone());
        }
    }
    if args.setup {
        for s in &stores {
            progress.note(&format!("setup: bucket {} on {}", s.bucket, s.name));
            engine::create_bucket(&client, s, false).await?;
        }
    }
    let wants = |w: WorkloadName| args.workload.contains(&w);
    let mut notes = Vec::new();

    // The hot set: the same keys and bodies for every target.
    let mut hot = Arc::new(Vec::new());
    if wants(WorkloadName::Hot) || wants(WorkloadName::Mix) {
        let specs = engine::set_specs(&format!("{prefix}/hot"), args.hot_objects, &args.sizes);
        let mut items = None;
        if args.setup {
            for s in &stores {
                items = Some(
                    engine::materialize(
                        client.clone(),
                        Some(s.clone()),
                        specs.clone(),
                        seed,
                        8,
                        false,
                        &progress,
                    )
                    .await?,
                );
            }
        }
        let items = match items {
            Some(i) => i,
            None => engine::materialize(client.clone(), None, specs, seed, 8, false, &progress).await?,
        };
        hot = Arc::new(items);
    }

    // One cold set per target.
    let cold_objects = args.cold_objects.unwrap_or(match budget {
        Budget::Requests(n) => n as usize,
        Budget::Duration(_) => 200,
    });
    let mut cold = Vec::new();
    if wants(WorkloadName::Cold) {
        for (t, target) in targets.iter().enumerate() {
            let specs = engine::set_specs(&format!("{prefix}/cold/{}", target.name), cold_objects, &args.sizes);
            let via = args.setup.then(|| setup_via[t].clone());
            cold.push(Arc::new(
                engine::materialize(client.clone(), via, specs, seed, 8, false, &progress).await?,
            ));
        }
    }

    let pool = if wants(WorkloadName::Put) || wants(WorkloadName::Mix) {
        let sizes = args.sizes.clone();
        Arc::new(tokio::task::spawn_blocking(move || engine::put_pool(seed, &sizes)).await?)
    } else {
        Arc::new(Vec::new())
    };
    let per_target =
        |what: &str| -> Vec<String> { targets.iter().map(|t| format!("{prefix}/{what}/{}", t.name)).collect() };

    let mut workloads = Vec::new();
    for w in &args.workload {
        match w {
            WorkloadName::Hot => workloads.push(Workload {
                name: "hot GET".into(),
                description: format!(
                    "GETs of random objects of a {}-object hot set ({}), each target warmed with one GET per object \
                     first: cache hits",
                    args.hot_objects,
                    args.sizes.describe()
                ),
                kind: WorkloadKind::GetRandom {
                    sets: vec![hot.clone(); targets.len()],
                },
                concurrency: None,
                warm: true,
            }),
            WorkloadName::Cold => workloads.push(Workload {
                name: "cold GET".into(),
                description: format!(
                    "GETs of objects never read before ({} per target, {}), each once: cache misses",
                    cold_objects,
                    args.sizes.describe()
                ),
                kind: WorkloadKind::GetOnce { sets: cold.clone() },
                concurrency: None,
                warm: false,
            }),
            WorkloadName::Put => workloads.push(Workload {
                name: "PUT".into(),
                description: format!("PUTs {} ({})", put_keys_text(args.put_keys), args.sizes.describe()),
                kind: WorkloadKind::Put {
                    prefixes: per_target("put"),
                    pool: pool.clone(),
                    keys: args.put_keys,
                },
                concurrency: None,
                warm: false,
            }),
            WorkloadName::Mix => workloads.push(Workload {
                name: format!(
                    "mix {:.0}/{:.0}",
                    args.read_ratio * 100.0,
                    (1.0 - args.read_ratio) * 100.0
                ),
                description: format!(
                    "{:.0}% GETs of the warmed hot set, {:.0}% PUTs {}",
                    args.read_ratio * 100.0,
                    (1.0 - args.read_ratio) * 100.0,
                    put_keys_text(args.put_keys)
                ),
                kind: WorkloadKind::Mix {
                    sets: vec![hot.clone(); targets.len()],
                    prefixes: per_target("mix"),
                    pool: pool.clone(),
                    keys: args.put_keys,
                    read_ratio: args.read_ratio,
                },
                concurrency: None,
                warm: true,
            }),
            WorkloadName::Trace => {
                let paths = if args.trace.is_empty() {
                    vec![default_trace_dir()]
                } else {
                    args.trace.clone()
                };
                for file in trace_files(&paths)? {
                    let trace = Trace::load(&file)?;
                    let description = format!(
                        "replay of {} ({}) {}; keys it reads before writing are seeded first",
                        file.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        trace.describe(),
                        if args.trace_at_root {
                            "at the bucket's root (keys as recorded, every replay over the last)"
                        } else {
                            "under a fresh prefix per replay"
                        }
                    );
                    let short = trace.name.trim_start_matches("trace-").to_owned();
                    progress.note(&format!("preparing trace {}", trace.name));
                    let prepared = tokio::task::spawn_blocking(move || PreparedTrace::new(trace, seed)).await?;
                    notes.push(format!(
                        "trace {short}: {} keys seeded before each replay",
                        prepared.seed_count()
                    ));
                    workloads.push(Workload {
                        name: format!("trace {short}"),
                        description,
                        kind: WorkloadKind::Trace {
                            trace: Arc::new(prepared),
                            prefix: (!args.trace_at_root).then(|| format!("{prefix}/trace/{short}")),
                        },
                        concurrency: None,
                        warm: false,
                    });
                }
            }
        }
    }

    let engine = Engine {
        client: client.clone(),
        targets: targets.clone(),
        setup_via,
        rounds: args.rounds,
        budget,
        concurrency,
        seed,
        progress: progress.clone(),
    };
    let results = engine.run(&workloads).await?;
    for w in &results {
        if w.name == "cold GET" {
            for t in &w.targets {
                if let Budget::Duration(d) = budget
                    && t.summary.seconds < d.as_secs_f64() * 0.9
                    && t.summary.ops + t.summary.errors >= cold_objects as u64
                {
                    notes.push(format!(
                        "cold GET on {}: all {cold_objects} cold objects were read after {:.1}s of the {:.1}s \
                         budget (raise --cold-objects for longer runs)",
                        t.target,
                        t.summary.seconds,
                        d.as_secs_f64()
                    ));
                }
            }
        }
    }
    if targets.iter().any(|t| t.admin.is_some()) {
        notes.push(format!(
            "hit ratio from Perch's {} and {} when it exports them, else from X-Cache headers, else n/a",
            crate::metrics::HITS,
            crate::metrics::MISSES
        ));
    }
    let settings = json!({
        "targets": targets.iter().map(|t| format!("{}={} bucket={} {:?}", t.name, t.url, t.bucket, t.style).to_lowercase()).collect::<Vec<_>>(),
        "connection": mode,
        "concurrency": concurrency,
        "oriole": args.oriole,
        "expect_100_continue_over": expect_over.map(format_size),
        "budget_per_target": budget.describe(),
        "rounds": args.rounds,
        "sizes": args.sizes.describe(),
        "hot_objects": args.hot_objects,
        "cold_objects": cold_objects,
        "verify_sha256": !args.common.no_verify,
        "seed": seed,
        "key_prefix": prefix,
        "setup": args.setup,
    });
    Ok(Section {
        name: name.to_owned(),
        title: title.to_owned(),
        settings,
        workloads: results,
        comparisons: Vec::new(),
        notes,
    })
}
