//! The measuring engine shared by `run`, `compare-nginx` and `suite`: object sets and their setup,
//! workloads, slices of load alternated between targets in rounds, and the progress line.

use std::{
    io::{IsTerminal, Write},
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use http::{HeaderName, HeaderValue, Method};
use rand::{Rng, SeedableRng, rngs::StdRng};

use perch_testkit::bodies::{self, Digest32, Object};

use crate::{
    client::{Expect, HttpClient, Outcome, Req},
    metrics,
    report::{TargetResult, WorkloadResult},
    stats::Stats,
    target::{Kind, Target},
    trace::PreparedTrace,
    units::SizeMix,
};

/// How long each target is loaded per workload (in total, split evenly over the rounds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Duration(Duration),
    Requests(u64),
}

impl Budget {
    /// The share of one round.
    fn slice(&self, rounds: usize, round: usize) -> Budget {
        let rounds = rounds.max(1);
        match *self {
            Budget::Duration(d) => Budget::Duration(d / rounds as u32),
            Budget::Requests(n) => {
                let r = rounds as u64;
                let i = round as u64;
                Budget::Requests(n * (i + 1) / r - n * i / r)
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Budget::Duration(d) => format!("{:.1}s", d.as_secs_f64()),
            Budget::Requests(n) => format!("{n} requests"),
        }
    }
}

/// An object the checker knows: its key and what a GET must return.
#[derive(Debug, Clone)]
pub struct Item {
    pub key: String,
    pub digest: Digest32,
}

/// What a workload sends to each target.
pub enum WorkloadKind {
    /// GETs of uniformly random objects of the target's set (hits once warm).
    GetRandom { sets: Vec<Arc<Vec<Item>>> },
    /// GETs of each object of the target's set once, in order (misses): the set is split over rounds.
    GetOnce { sets: Vec<Arc<Vec<Item>>> },
    /// PUTs cycling over `keys` keys under the target's prefix, bodies from the pool.
    Put {
        prefixes: Vec<String>,
        pool: Arc<Vec<Object>>,
        keys: usize,
    },
    /// GETs of random objects of the target's set with probability `read_ratio`, else PUTs.
    Mix {
        sets: Vec<Arc<Vec<Item>>>,
        prefixes: Vec<String>,
        pool: Arc<Vec<Object>>,
        keys: usize,
        read_ratio: f64,
    },
    /// Replays of a recorded OrioleDB trace, each under a fresh key prefix (`None`: every replay
    /// at the bucket's root, the keys as recorded).
    Trace {
        trace: Arc<PreparedTrace>,
        prefix: Option<String>,
    },
}

/// A named workload.
pub struct Workload {
    pub name: String,
    pub description: String,
    pub kind: WorkloadKind,
    /// Overrides the section's concurrency.
    pub concurrency: Option<usize>,
    /// GET every object of the set once through each target before measuring.
    pub warm: bool,
}

/// Everything a section's measurements share.
pub struct Engine {
    pub client: Arc<HttpClient>,
    pub targets: Vec<Arc<Target>>,
    /// For each target, the target that setup PUTs go through (itself, or the origin).
    pub setup_via: Vec<Arc<Target>>,
    pub rounds: usize,
    pub budget: Budget,
    pub concurrency: usize,
    pub seed: u64,
    pub progress: Arc<Progress>,
}

/// One round's work for one target.
enum Slice {
    GetRandom(Arc<Vec<Item>>),
    GetOnce(Arc<Vec<Item>>, Range<usize>),
    Put {
        prefix: String,
        pool: Arc<Vec<Object>>,
        keys: usize,
        base: u64,
    },
    Mix {
        set: Arc<Vec<Item>>,
        prefix: String,
        pool: Arc<Vec<Object>>,
        keys: usize,
        base: u64,
        read_ratio: f64,
    },
}

impl Slice {
    fn request(&self, n: u64, rng: &mut StdRng) -> Option<Req> {
        let get = |item: &Item| {
            Req::get(
                item.key.clone(),
                Expect::Body {
                    status: 200,
                    digest: item.digest,
                },
            )
        };
        let put = |prefix: &str, pool: &[Object], keys: usize, i: u64| {
            let body = pool.get((i % pool.len().max(1) as u64) as usize)?.clone();
            // keys == 0: every PUT writes a new key.
            let k = if keys == 0 { i } else { i % keys as u64 };
            Some(Req::put(format!("{prefix}/{k:06}"), body))
        };
        match self {
            Slice::GetRandom(set) => {
                if set.is_empty() {
                    return None;
                }
                Some(get(&set[rng.random_range(0..set.len())]))
            }
            Slice::GetOnce(set, range) => {
                let i = range.start.checked_add(usize::try_from(n).ok()?)?;
                if i >= range.end {
                    return None;
                }
                set.get(i).map(get)
            }
            Slice::Put {
                prefix,
                pool,
                keys,
                base,
            } => put(prefix, pool, *keys, base + n),
            Slice::Mix {
                set,
                prefix,
                pool,
                keys,
                base,
                read_ratio,
            } => {
                if !set.is_empty() && rng.random::<f64>() < *read_ratio {
                    Some(get(&set[rng.random_range(0..set.len())]))
                } else {
                    put(prefix, pool, *keys, base + n)
                }
            }
        }
    }
}

impl Engine {
    /// Runs every workload: rounds × targets (rotated each round), returns one result per workload.
    pub async fn run(&self, workloads: &[Workload]) -> anyhow::Result<Vec<WorkloadResult>> {
        let rounds = self.rounds.max(1);
        self.progress
            .add_total((workloads.len() * rounds * self.targets.len()) as u64);
        let mut results = Vec::new();
        for w in workloads {
            results.push(self.run_workload(w, rounds).await?);
        }
        Ok(results)
    }

    async fn run_workload(&self, w: &Workload, rounds: usize) -> anyhow::Result<WorkloadResult> {
        let n = self.targets.len();
        let concurrency = w.concurrency.unwrap_or(self.concurrency).max(1);
        let mut stats: Vec<Stats> = vec![Stats::default(); n];
        let mut cache: Vec<Option<(u64, u64)>> = vec![None; n];
        let mut offsets = vec![0u64; n];
        if w.warm {
            for (t, target) in self.targets.iter().enumerate() {
                let set = match &w.kind {
                    WorkloadKind::GetRandom { sets } | WorkloadKind::Mix { sets, .. } => sets[t].clone(),
                    _ => continue,
                };
                let len = set.len();
                self.progress
                    .note(&format!("{}: warming {} with {len} GETs", w.name, target.name));
                let warm = run_slice(
                    self.client.clone(),
                    target.clone(),
                    Arc::new(Slice::GetOnce(set, 0..len)),
                    Budget::Requests(len as u64),
                    concurrency,
                    Arc::new(Progress::quiet()),
                    self.seed,
                )
                .await;
                for e in warm.error_samples {
                    stats[t].error(format!("warm-up: {e}"));
                }
            }
        }
        for round in 0..rounds {
            for k in 0..n {
                let t = (k + round) % n;
                let target = self.targets[t].clone();
                let label = format!("{} r{}/{} {}", w.name, round + 1, rounds, target.name);
                let budget = self.budget.slice(rounds, round);
                let before = match target.admin {
                    Some(admin) => metrics::scrape(admin).await,
                    None => None,
                };
                let is_trace = matches!(w.kind, WorkloadKind::Trace { .. });
                self.progress.begin(&label, (!is_trace).then_some(budget));
                let slice_stats = match &w.kind {
                    WorkloadKind::Trace { trace, prefix } => {
                        let prefix = prefix
                            .as_ref()
                            .map_or_else(String::new, |p| format!("{p}/{}/r{}", target.name, round + 1));
                        crate::trace::replay(
                            trace.clone(),
                            self.client.clone(),
                            target.clone(),
                            self.setup_via[t].clone(),
                            prefix,
                            concurrency,
                            self.progress.clone(),
                        )
                        .await
                        .with_context(|| format!("replaying {} on {}", trace.name, target.name))?
                    }
                    kind => {
                        let slice = match kind {
                            WorkloadKind::GetRandom { sets } => Slice::GetRandom(sets[t].clone()),
                            WorkloadKind::GetOnce { sets } => {
                                let len = sets[t].len();
                                let range = len * round / rounds..len * (round + 1) / rounds;
                                Slice::GetOnce(sets[t].clone(), range)
                            }
                            WorkloadKind::Put { prefixes, pool, keys } => Slice::Put {
                                prefix: prefixes[t].clone(),
                                pool: pool.clone(),
                                keys: *keys,
                                base: offsets[t],
                            },
                            WorkloadKind::Mix {
                                sets,
                                prefixes,
                                pool,
                                keys,
                                read_ratio,
                            } => Slice::Mix {
                                set: sets[t].clone(),
                                prefix: prefixes[t].clone(),
                                pool: pool.clone(),
                                keys: *keys,
                                base: offsets[t],
                                read_ratio: *read_ratio,
                            },
                            WorkloadKind::Trace { .. } => unreachable_slice()?,
                        };
                        run_slice(
                            self.client.clone(),
                            target.clone(),
                            Arc::new(slice),
                            budget,
                            concurrency,
                            self.progress.clone(),
                            // The same request streams for every target of a round, so they get the same objects.
                            self.seed ^ ((round as u64) << 32),
                        )
                        .await
                    }
                };
                offsets[t] += slice_stats.requests();
                if let (Some(admin), Some(before)) = (target.admin, before)
                    && let Some(after) = metrics::scrape(admin).await
                    && let Some((h, m)) = before.delta(&after)
                {
                    let c = cache[t].get_or_insert((0, 0));
                    c.0 += h;
                    c.1 += m;
                }
                self.progress.end(&label, &slice_stats);
                stats[t].merge(slice_stats);
            }
        }
        let targets = self
            .targets
            .iter()
            .zip(stats)
            .zip(cache)
            .map(|((target, s), c)| TargetResult::new(target, &s, c))
            .collect::<Vec<_>>();
        Ok(WorkloadResult::new(&w.name, &w.description, concurrency, targets))
    }
}

fn unreachable_slice() -> anyhow::Result<Slice> {
    bail!("internal: trace workloads have no slices")
}

/// Runs `concurrency` workers on one target until the budget or the slice's requests run out.
async fn run_slice(
    client: Arc<HttpClient>,
    target: Arc<Target>,
    slice: Arc<Slice>,
    budget: Budget,
    concurrency: usize,
    progress: Arc<Progress>,
    seed: u64,
) -> Stats {
    let issued = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (deadline, max_requests) = match budget {
        Budget::Duration(d) => (Some(start + d), None),
        Budget::Requests(n) => (None, Some(n)),
    };
    let mut workers = Vec::new();
    for w in 0..concurrency.max(1) {
        let (client, target, slice, issued, progress) = (
            client.clone(),
            target.clone(),
            slice.clone(),
            issued.clone(),
            progress.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9).wrapping_add(w as u64));
            let mut stats = Stats::default();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if max_requests.is_some_and(|max| n >= max) {
                    break;
                }
                let Some(req) = slice.request(n, &mut rng) else {
                    break;
                };
                let outcome = client.execute(&target, &req).await;
                progress.record(&outcome);
                stats.record(&outcome);
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for w in workers {
        match w.await {
            Ok(s) => total.merge(s),
            Err(e) => total.error(format!("worker task failed: {e}")),
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Creates `bucket` through `target`; an existing bucket is fine. `public` adds `x-amz-acl: public-read`.
pub async fn create_bucket(client: &HttpClient, target: &Target, public: bool) -> anyhow::Result<()> {
    if target.kind != Kind::S3 {
        bail!("{}: cannot create a bucket on a plain HTTP target", target.name);
    }
    let mut req = Req {
        method: Method::HEAD,
        key: None,
        query: None,
        body: None,
        range: None,
        headers: Vec::new(),
        expect: Expect::Status(200),
    };
    // An existing bucket is used as it is (some stores refuse to re-create one with odd errors).
    if client.execute(target, &req).await.ok() && !public {
        return Ok(());
    }
    req.method = Method::PUT;
    req.expect = Expect::OneOf(&[200, 409]);
    if public {
        req.headers.push(acl_public());
    }
    let outcome = client.execute(target, &req).await;
    if let Some(e) = outcome.error {
        bail!("creating bucket {} through {}: {e}", target.bucket, target.name);
    }
    Ok(())
}

fn acl_public() -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("x-amz-acl"),
        HeaderValue::from_static("public-read"),
    )
}

/// An object to create: key, size, and the version of its deterministic body.
#[derive(Debug, Clone)]
pub struct Spec {
    pub key: String,
    pub size: u64,
}

/// Generates the bodies of `specs` (on blocking threads), PUTs them through `via` when given
/// (`concurrency` at a time, optionally public-read) and returns what GETs must see.
pub async fn materialize(
    client: Arc<HttpClient>,
    via: Option<Arc<Target>>,
    specs: Vec<Spec>,
    seed: u64,
    concurrency: usize,
    public: bool,
    progress: &Progress,
) -> anyhow::Result<Vec<Item>> {
    let total = specs.len();
    let specs = Arc::new(specs);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, 16) {
        let (client, via, specs, next, done, failed) = (
            client.clone(),
            via.clone(),
            specs.clone(),
            next.clone(),
            done.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut items = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(spec) = specs.get(i).cloned() else {
                    break;
                };
                let key = spec.key.clone();
                let object = tokio::task::spawn_blocking(move || bodies::object(seed, &key, 0, spec.size as usize))
                    .await
                    .context("generating a body")?;
                if let Some(via) = &via {
                    let mut req = Req::put(spec.key.clone(), object.clone());
                    if public {
                        req.headers.push(acl_public());
                    }
                    let outcome = client.execute(via, &req).await;
                    if let Some(e) = outcome.error {
                        failed.store(true, Ordering::Relaxed);
                        bail!("setup PUT through {}: {e}", via.name);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                items.push((
                    i,
                    Item {
                        key: spec.key,
                        digest: Digest32::from(&object),
                    },
                ));
            }
            anyhow::Ok(items)
        }));
    }
    let label = match &via {
        Some(v) => format!("setup: PUT {total} objects through {}", v.name),
        None => format!("setup: digests of {total} objects"),
    };
    progress.note(&label);
    let mut all = Vec::with_capacity(total);
    for w in workers {
        all.extend(w.await.context("setup worker")??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, item)| item).collect())
}

/// Specs of a set: `count` objects named `{prefix}/{i:05}` with sizes from `mix`.
pub fn set_specs(prefix: &str, count: usize, mix: &SizeMix) -> Vec<Spec> {
    (0..count)
        .map(|i| Spec {
            key: format!("{prefix}/{i:05}"),
            size: mix.size_at(i),
        })
        .collect()
}

/// Bodies for PUT workloads: one per slot of the mix's pattern.
pub fn put_pool(seed: u64, mix: &SizeMix) -> Vec<Object> {
    let slots: u32 = mix.0.iter().map(|(_, w)| *w).sum();
    (0..slots as usize)
        .map(|i| bodies::object(seed, &format!("put-pool/{i}"), 0, mix.size_at(i) as usize))
        .collect()
}

/// The progress line on stderr: redrawn in place on a terminal, one line per slice otherwise.
pub struct Progress {
    enabled: bool,
    tty: bool,
    state: Mutex<ProgressState>,
    ops: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

struct ProgressState {
    label: String,
    started: Instant,
    budget: Option<Budget>,
    done: u64,
    total: u64,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            enabled: true,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(ProgressState {
                label: String::new(),
                started: Instant::now(),
                budget: None,
                done: 0,
                total: 0,
            }),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// A progress that prints nothing.
    pub fn quiet() -> Progress {
        let mut p = Progress::new();
        p.enabled = false;
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_total(&self, slices: u64) {
        self.lock().total += slices;
    }

    pub fn begin(&self, label: &str, budget: Option<Budget>) {
        let mut s = self.lock();
        s.label = label.to_owned();
        s.started = Instant::now();
        s.budget = budget;
        self.ops.store(0, Ordering::Relaxed);
        self.errors.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
    }

    pub fn record(&self, o: &Outcome) {
        if o.ok() {
            self.ops.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes.fetch_add(o.bytes_up + o.bytes_down, Ordering::Relaxed);
    }

    /// A one-off message (setup steps).
    pub fn note(&self, message: &str) {
        if self.enabled {
            let mut err = std::io::stderr().lock();
            if self.tty {
                let _ = write!(err, "\r\x1b[2K");
            }
            let _ = writeln!(err, "{message}");
        }
    }

    /// Redraws the line (called by the ticker on a terminal).
    pub fn draw(&self) {
        if !self.enabled || !self.tty {
            return;
        }
        let s = self.lock();
        if s.label.is_empty() {
            return;
        }
        let elapsed = s.started.elapsed().as_secs_f64();
        let ops = self.ops.load(Ordering::Relaxed);
        let frac = match s.budget {
            Some(Budget::Duration(d)) if !d.is_zero() => (elapsed / d.as_secs_f64()).min(1.0),
            Some(Budget::Requests(n)) if n > 0 => (ops as f64 / n as f64).min(1.0),
            _ => 0.0,
        };
        let overall = if s.total > 0 {
            ((s.done as f64 + frac) / s.total as f64).min(1.0)
        } else {
            0.0
        };
        let width = 24;
        let filled = (overall * width as f64).round() as usize;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(width - filled.min(width)));
        let rate = if elapsed > 0.0 { ops as f64 / elapsed } else { 0.0 };
        let mbps = if elapsed > 0.0 {
            self.bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6
        } else {
            0.0
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[{bar}] {:>3.0}% {}  {ops} ops  {rate:.1} op/s  {mbps:.1} MB/s  {} err",
            overall * 100.0,
            s.label,
            self.errors.load(Ordering::Relaxed)
        );
        let _ = err.flush();
    }

    /// Ends a slice: one summary line.
    pub fn end(&self, label: &str, stats: &Stats) {
        let total = {
            let mut s = self.lock();
            s.done += 1;
            s.label.clear();
            (s.done, s.total)
        };
        if !self.enabled {
            return;
        }
        let sum = stats.summary();
        self.note(&format!(
            "[{}/{}] {label}: {} ops, {:.1} op/s, {:.1} MB/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            total.0,
            total.1,
            sum.ops,
            sum.ops_per_sec,
            sum.mb_per_sec,
            sum.latency_ms.p50,
            sum.latency_ms.p99,
            sum.errors
        ));
    }

    /// Redraws every 200 ms until the returned guard is dropped.
    pub fn ticker(self: &Arc<Self>) -> Ticker {
        let me = self.clone();
        let handle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                me.draw();
            }
        });
        Ticker(handle)
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

/// Stops the progress ticker when dropped.
pub struct Ticker(tokio::task::JoinHandle<()>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.abort();
    }
}
