//! `perch`: the command line of Perch, an S3 caching gateway in front of an origin store.
//! `perch serve` runs the gateway; the settings live in `config`.

mod admin;
mod bucket_config;
mod chunked;
mod config;
mod convert;
mod document;
mod fast_get;
mod front;
mod lease_cmd;
mod limits;
mod metrics;
mod owners;
mod policy_cmd;
mod server;
mod service;
mod sigv4;
mod spool;
mod wal;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::FutureExt;
use perch_cache::{
    FsOrigin, Origin, OriginKeys, OriginStats, RetryPolicy, RetryingOrigin, S3Origin, S3OriginConfig, Store,
    StoreConfig, WriteConfig,
};
use perch_policy::SharedPolicy;
use s3s::service::S3ServiceBuilder;
use tokio::sync::watch;

use crate::config::{Config, LogFormat, OriginUrl, ServeArgs};

/// Perch: an S3-compatible caching gateway that keeps hot objects on local disk in front of an
/// origin store such as Tigris.
#[derive(Parser)]
#[command(name = "perch", version, about, long_about = None, after_help = "Every option of the gateway, with its default: perch serve --help")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: an S3 endpoint on --listen, admin endpoints on --admin-listen.
    ///
    /// Clients sign with PERCH_ACCESS_KEY_ID / PERCH_SECRET_ACCESS_KEY (on a loopback address with
    /// neither set, the development pair perch-dev / perch-dev-secret is used, with a warning).
    /// Origin requests are signed with PERCH_ORIGIN_ACCESS_KEY_ID / PERCH_ORIGIN_SECRET_ACCESS_KEY,
    /// or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or else origin_access_key_id /
    /// origin_secret_access_key in the --config file; SIGHUP reads them again. The admin listener
    /// beyond loopback needs PERCH_ADMIN_TOKEN.
    Serve(Box<ServeArgs>),
    /// Print the write-back backlog (objects, bytes, oldest age), refused uploads and origin faults.
    Status(admin::AdminArgs),
    /// Wait until every write acknowledged so far is in the origin, with a progress bar.
    Flush(admin::FlushArgs),
    /// The write-back journal: list it, retry or drop a version the origin refused (running
    /// Perch), or check and repair a stopped Perch's journal.
    Journal(admin::JournalArgs),
    /// The policy file: `check FILE` (each mistake with its line), `explain BUCKET/KEY` (the
    /// decision and the rule behind it), `show` (the built-in OrioleDB profile).
    Policy(policy_cmd::PolicyArgs),
    /// The bucket's lease (one writer per bucket): `status`, and `break` for a holder gone for good.
    Lease(lease_cmd::LeaseArgs),
    /// The WAL archive, for a replica's Postgres: `perch wal fetch %f %p` is its restore_command.
    Wal(wal::WalArgs),
}

/// The log's filter without `PERCH_LOG`: `info`, less s3s's own ERROR line for every error
/// answered (a 404, a 403, a 501 to a call Perch refuses: the client's business, not an error of
/// Perch's). Each request's `done` line has its status, and Perch logs the causes of its own
/// failures (local storage, the origin's faults) itself. `PERCH_LOG=info,s3s=debug` shows them.
/// Nor s3s's ERROR line for a malformed XML body, which holds the whole body: any client could
/// flood the log, and what it sent is not Perch's to keep (its answer is 400 MalformedXML).
const DEFAULT_LOG: &str = "info,s3s::ops=off,s3s::service=off,s3s::http::de=off";

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PERCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the command; a failure is printed as one line (what went wrong, with its causes), never
/// with a backtrace, and the exit status is 1.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A command's output piped into a reader that stops early (`perch status | head -1`)
        // ends the command quietly, as for any Unix tool, instead of `println!` panicking on the
        // closed pipe. The server keeps Rust's default: a closed socket is an error it handles.
        // SAFETY: set once at start, before any thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("perch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How long an exit waits for blocking tasks still running once Perch has stopped.
const STOP_BLOCKING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let starting = std::time::Instant::now();
            let config = Config::resolve(*args)?;
            init_logs(config.log_format);
            limit_malloc_arenas();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let served = runtime.block_on(serve(config, starting));
            // Past the stop, a commit still waiting for room on a full disk (a blocking task whose
            // client the stop has cut off) must not hold the exit until --dirty-wait-max:
            // unanswered, it is not acknowledged, and what it leaves is what a crash leaves.
            runtime.shutdown_timeout(STOP_BLOCKING_WAIT);
            served
        }
        Command::Status(args) => admin::status(&args),
        Command::Flush(args) => admin::flush(&args),
        Command::Journal(args) => admin::journal(&args),
        Command::Policy(args) => policy_cmd::run(args),
        Command::Lease(args) => lease_cmd::run(args),
        Command::Wal(args) => wal::run(&args),
    }
}

/// Two malloc arenas for the whole process, unless `MALLOC_ARENA_MAX` says otherwise. glibc gives
/// each busy thread an arena of its own (up to 8 per core) and keeps what is freed for the arena
/// it came from; the memory tier's objects are allocated and freed on different Tokio and blocking
/// threads, which left ~30 MiB free but resident at 1M entries. One arena saved 7 MiB more but cost
/// a quarter of the disk-hit throughput in lock contention (docs/adr/0007-memory-budget.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter (under its own lock), at start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// The origin, and the key pair it signs with (to be replaced on SIGHUP).
pub(crate) async fn open_origin(config: &Config) -> anyhow::Result<(Arc<dyn Origin>, Option<OriginKeys>)> {
    Ok(match &config.origin {
        OriginUrl::Dir(dir) => {
            let origin = FsOrigin::open(dir.clone())
                .with_context(|| format!("opening the directory origin {}", dir.display()))?;
            (Arc::new(origin), None)
        }
        OriginUrl::S3(endpoint) => {
            let creds = config.origin_credentials.as_ref();
            let mut origin_config = S3OriginConfig {
                endpoint: endpoint.clone(),
                region: config.origin_region.clone(),
                access_key_id: creds.map(|c| c.access_key_id.clone()),
                secret_access_key: creds.map(|c| c.secret_access_key.clone()),
                ..S3OriginConfig::default()
            };
            if origin_config.region == "auto" {
                // `auto` is Tigris's region; any other service is asked for its own.
                // An origin that cannot be asked stops the start, naming the flag that makes the
                // question moot.
                let region = S3Origin::find_region(&origin_config).await.map_err(|e| {
                    anyhow::anyhow!(
                        "cannot find the region of the origin {endpoint} (--origin-region auto): {e}; \
                         name it with --origin-region REGION"
                    )
                })?;
                if region != "auto" {
                    tracing::info!(region, "signing origin requests for the region the origin expects");
                }
                origin_config.region = region;
            }
            let origin = S3Origin::new(origin_config).context("configuring the S3 origin")?;
            let keys = origin.keys();
            (Arc::new(origin), keys)
        }
    })
}

/// On SIGHUP, reads the origin's key pair again (the environment, then the --config file) and
/// signs every origin request from then on with it: rotated keys need no restart, and uploads
/// refused for the old ones go up at their next retry.
fn reload_origin_keys_on_sighup(
    keys: Option<OriginKeys>,
    config_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(keys) = &keys else {
                tracing::warn!(
                    "SIGHUP: this origin takes no keys (a directory, or anonymous requests); nothing to reload"
                );
                continue;
            };
            match config::reload_origin_credentials(config_file.as_deref()) {
                Ok(Some(c)) => {
                    let changed = keys.replace(c.access_key_id.clone(), c.secret_access_key);
                    tracing::info!(access_key_id = c.access_key_id, changed, "SIGHUP: origin keys reloaded");
                }
                Ok(None) => tracing::error!("SIGHUP: no origin keys found any more; keeping the ones in use"),
                Err(e) => tracing::error!(
                    error = format!("{e:#}"),
                    "SIGHUP: reading the origin keys failed; keeping the ones in use"
                ),
            }
        }
    });
    Ok(())
}

/// `starting`: when `perch serve` began (its start's milliseconds are logged).
async fn serve(config: Config, starting: std::time::Instant) -> anyhow::Result<()> {
    // A SIGHUP while Perch starts (it may wait for the origin's region or the lease) must not end
    // it, as the signal's default action would: from here it is taken, and has no effect (a
    // rotation sent while Perch starts needs another SIGHUP once it serves).
    let _early_hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    // The listeners first: an address in use stops Perch before it opens anything.
    let listener = bind(config.listen, "--listen").await?;
    let admin = bind(config.admin_listen, "--admin-listen").await?;
    // Held until Perch exits; taken before anything in the data dir is touched.
    let _data_dir = lock_data_dir(&config.data_dir)?;
    let disk_reserve_bytes = config
        .disk_reserve_bytes
        .unwrap_or_else(|| default_disk_reserve_bytes(filesystem_size(&config.data_dir)));
    // On a full disk, the room the spare holds comes back before anything is written here (and
    // before the cache's default size is taken from the free space).
    perch_cache::give_back_spare(&config.data_dir, disk_reserve_bytes);
    if config.dev_credentials {
        tracing::warn!(
            access_key_id = config::DEV_ACCESS_KEY_ID,
            "PERCH_ACCESS_KEY_ID and PERCH_SECRET_ACCESS_KEY are not set: clients must sign with the \
             documented development key pair (allowed on loopback only)"
        );
    }
    let spool_dir = config.data_dir.join("tmp");
    // Bodies spooled by a previous run are garbage.
    let _ = std::fs::remove_dir_all(&spool_dir);
    std::fs::create_dir_all(&spool_dir).with_context(|| format!("creating {}", spool_dir.display()))?;

    let metrics = Arc::new(metrics::Metrics::new());
    let mut stats = None;
    metrics.register(|r| stats = Some(OriginStats::new(r)));
    let stats = stats.unwrap_or_else(OriginStats::unregistered);

    let (unretried_origin, origin_keys) = open_origin(&config).await?;
    let origin_ms = starting.elapsed().as_millis() as u64;
    let origin: Arc<dyn Origin> = Arc::new(RetryingOrigin::new(
        unretried_origin.clone(),
        RetryPolicy::with_deadline(config.origin_retry_deadline),
        stats,
    ));

    let policy = Arc::new(SharedPolicy::new(config.policy.clone()));
    tracing::info!(
        policy = config
            .policy_source
            .file
            .as_ref()
            .map_or_else(|| "builtin:orioledb".to_owned(), |p| p.display().to_string()),
        rules = config.policy.rules.len(),
        "policy"
    );
    let lease = match (&config.lease, config.role) {
        (Some(settings), config::Role::Primary) => {
            Some(lease_cmd::lease_for(&config, settings, unretried_origin.clone())?)
        }
        _ => None,
    };
    let disk_bytes = config.cache_disk_bytes;
    let store_config = StoreConfig {
        data_dir: config.data_dir.clone(),
        disk_bytes,
        disk_reserve_bytes,
        memory_bytes: config.cache_memory_bytes,
        memory_object_max: 1 << 20,
        retry_deadline: config.origin_retry_deadline,
        background_fill_max: 64 << 20,
        write: WriteConfig {
            policy: policy.clone(),
            lease: lease.clone(),
            strict_barriers: config.strict_barriers,
            wait_limit: config.origin_retry_deadline,
            upload_concurrency: config.upload_concurrency,
            write_through_concurrency: WriteConfig::default().write_through_concurrency,
            dirty_bytes_max: config
                .dirty_bytes_max
                .unwrap_or_else(|| filesystem_size(&config.data_dir) / 2),
            dirty_wait_max: config.dirty_wait_max,
            dirty_age_max: config.dirty_age_max,
        },
        prefetch: config.prefetch.clone(),
        prefetch_bytes: config.prefetch_bytes,
        replica: (config.role == config::Role::Replica).then_some(match config.replica_writes {
            config::ReplicaWrites::Overlay => perch_cache::ReplicaWrites::Overlay,
            config::ReplicaWrites::Refuse => perch_cache::ReplicaWrites::Refuse,
        }),
        rewritten: config.rewritten.clone(),
    };
    // The first readiness probe goes out now: its connection to the origin is set up while the
    // store opens, so the first /readyz of a wake does not wait for a handshake, and the buckets
    // it lists are the ones an empty cache prewarms from.
    let first_probe = {
        let origin = unretried_origin.clone();
        tokio::spawn(async move { perch_cache::origin_answers(origin.as_ref()).await })
            .map(|joined| joined.unwrap_or_else(|e| Err(perch_cache::NotReady::Probe(Arc::new(e)))))
            .shared()
    };
    let mut opened = None;
    metrics.register(|r| {
        opened = Some(Store::open(
            store_config,
            origin.clone(),
            unretried_origin.clone(),
            Some(r),
        ))
    });
    let store = opened
        .context("registering the store's metrics")?
        .context("opening the store")?;
    store.adopt_origin_probe(first_probe.clone().map(|answer| answer.map(|_| ())));
    let gauges = Arc::downgrade(&store);
    metrics.on_render(move || {
        if let Some(store) = gauges.upgrade() {
            store.refresh_gauges();
        }
    });
    tracing::info!(
        disk_bytes = disk_bytes.map_or_else(|| "default".to_owned(), |b| b.to_string()),
        disk_reserve_bytes,
        memory_bytes = config.cache_memory_bytes,
        "store open"
    );
    if let Some(lease) = &lease {
        // Before the listeners: a second primary never serves; nothing is uploaded meanwhile.
        let writes = store.write_status(None).dirty_objects;
        // An origin fault (an outage, a timeout, a 503) is waited out, with pauses doubling from
        // 200 ms to 5 s, instead of ending the process for a supervisor to start again and again.
        let mut pause = std::time::Duration::from_millis(200);
        let mut faults: u32 = 0;
        let epoch = loop {
            match lease.acquire(writes).await {
                Err(perch_cache::LeaseError::Origin(e))
                    if e.is_transient() || matches!(e, perch_cache::OriginError::Unavailable { .. }) =>
                {
                    faults += 1;
                    if faults == 1 || faults.is_multiple_of(10) {
                        tracing::warn!(error = %e, faults, "taking the bucket's lease: the origin fails; waiting for it");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                other => break other,
            }
        }
        .map_err(|e| {
            anyhow::anyhow!(e).context(format!(
                "taking the lease of bucket `{}` as `{}`",
                lease.config().bucket,
                lease.config().holder
            ))
        })?;
        lease.start_renewing();
        let watched = lease.clone();
        tokio::spawn(async move {
            let why = watched.lost().await;
            // Not `eprintln!`: a closed stderr must not keep the process from exiting.
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("perch: {why}\n"));
            std::process::exit(3);
        });
        tracing::info!(epoch, journal_writes = writes, "holding the bucket's lease");
    }
    if store.cache_is_empty() {
        start_prewarm(&store, &config, first_probe);
    }
    let hot_set_task = (config.role == config::Role::Primary && !config.hot_set_interval.is_zero())
        .then(|| tokio::spawn(record_hot_set_every(store.clone(), config.hot_set_interval)));
    let expiry_task = (!config.multipart_expiry.is_zero())
        .then(|| tokio::spawn(expire_uploads_every(store.clone(), config.multipart_expiry)));

    let mut builder = S3ServiceBuilder::new(service::Gateway::new(store.clone(), spool_dir.clone(), &config.domain));
    builder.set_auth(front::KeyPair::new(
        config.client.access_key_id.clone(),
        config.client.secret_access_key.clone(),
    ));
    builder.set_host(front::PerchHost::new(&config.domain));
    builder.set_access(front::AccessCheck {
        writes: front::Writes::of(config.role, config.replica_writes),
    });
    builder.set_route(bucket_config::ConfigRead::new(store.clone(), &config.domain));
    // s3s holds a browser form's file in memory whole: bounded well under the memory budget,
    // not by its default of 5 GiB a request.
    let mut s3s_config = s3s::config::S3Config::default();
    s3s_config.post_object_max_file_size = config.limits.body_bytes_max.min(limits::POST_OBJECT_FILE_MAX);
    builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(s3s_config))));
    let s3 = builder.build();
    let fast = Arc::new(fast_get::FastGet::new(
        store.clone(),
        config.client.access_key_id.clone(),
        config.client.secret_access_key.clone(),
        &config.domain,
    ));

    let stop_signal = shutdown_signal()?;
    // The versions the origin refused are tried again under the reloaded policy: the headers it
    // refused may be mended (a version it refuses again is refused again).
    let retrying = store.clone();
    policy_cmd::reload_on_sighup(config.policy_source.clone(), policy.clone(), move || {
        let retried = retrying.retry_refused_by_origin();
        if retried > 0 {
            tracing::info!(
                retried,
                "versions the origin refused are tried again under the reloaded policy"
            );
        }
    })?;
    reload_origin_keys_on_sighup(origin_keys, config.config_file.clone())?;
    // One machine-readable line on stdout, so scripts and tests can use port 0.
    println!("listening s3={} admin={}", listener.local_addr()?, admin.local_addr()?);
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        origin = unretried_origin.kind(),
        role = ?config.role,
        replica_writes = ?(config.role == config::Role::Replica).then_some(config.replica_writes),
        domain = %config.domain,
        origin_ms,
        start_ms = starting.elapsed().as_millis() as u64,
        "perch is serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let limits = Arc::new(config.limits.clone());
    let s3_task = tokio::spawn(server::serve_s3(
        listener,
        s3,
        fast,
        metrics.clone(),
        limits.clone(),
        spool_dir,
        stop_rx.clone(),
    ));
    let admin_task = tokio::spawn(server::serve_admin(
        admin,
        store.clone(),
        metrics.clone(),
        config.admin_token.clone(),
        limits,
        stop_rx,
    ));

    stop_signal.await;
    let left = drain(&store, &metrics, &config).await;
    for task in [hot_set_task, expiry_task].into_iter().flatten() {
        task.abort();
    }
    if config.role == config::Role::Primary {
        // Within the drain's budget: a stop takes --drain-timeout, then the requests in flight.
        match left.min(HOT_SET_WRITE_MAX) {
            std::time::Duration::ZERO => tracing::warn!("no time left of --drain-timeout: the hot set is not written"),
            limit => record_hot_set(&store, limit).await,
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = s3_task.await;
    let _ = admin_task.await;
    // Released only with nothing left to upload: a journal that still holds writes keeps the
    // lease until it expires, so that no new primary starts without them unawares.
    if let Some(lease) = &lease {
        let left = store.write_status(None).dirty_objects;
        if left == 0 {
            lease.release().await;
        } else {
            tracing::warn!(
                writes = left,
                "the journal still holds writes: the lease is left to expire"
            );
        }
    }
    // Flush the cache index now, so that the next start has nothing to replay.
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds a listener; a failure says which address, why, and which flag changes it.
async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "the address is already in use".to_owned(),
            std::io::ErrorKind::AddrNotAvailable => "no interface of this machine has that address".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".to_owned(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {why}; choose another address with {flag} ADDR")
    })
}

/// Takes `<data-dir>/lock` (an advisory lock, held by the returned file until Perch exits, even
/// by kill -9), with Perch's pid in it: a second Perch on the same data dir stops here with one
/// line that says so, before it touches anything there (it used to remove the first one's spooled
/// request bodies, then fail on the index's lock with RocksDB's message).
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(anyhow::anyhow!(
                "the data dir {} is in use by another Perch (pid {}); give each Perch its own --data-dir DIR",
                dir.display(),
                pid.trim()
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// A start with an empty cache: the hot sets the last primary left are fetched in the background
/// (and `/readyz` waits for them up to --prewarm-wait), from the buckets --prewarm-bucket names,
/// else from those the first readiness probe listed (listed again if it could not).
fn start_prewarm(
    store: &Arc<Store>,
    config: &Config,
    first_probe: impl std::future::Future<Output = Result<Option<Vec<perch_cache::BucketInfo>>, perch_cache::NotReady>>
    + Send
    + 'static,
) {
    store.hold_ready_for_prewarm(config.prewarm_wait);
    let (store, named) = (store.clone(), config.prewarm_buckets.clone());
    tokio::spawn(async move {
        let buckets = if named.is_empty() {
            let listed = match first_probe.await {
                Ok(Some(all)) => Ok(all),
                _ => store.origin_buckets().await,
            };
            match listed {
                Ok(all) => all.into_iter().map(|b| b.name).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list buckets to prewarm; set --prewarm-bucket");
                    Vec::new()
                }
            }
        } else {
            named
        };
        let queued = store.prewarm(&buckets).await;
        tracing::info!(objects = queued, "empty cache: prewarm queued");
    });
}

/// Writes the hot set now (a primary, at its stop), within 10 s.
/// The longest a write of the hot set may take.
const HOT_SET_WRITE_MAX: std::time::Duration = std::time::Duration::from_secs(10);

async fn record_hot_set(store: &Store, limit: std::time::Duration) {
    match tokio::time::timeout(limit, store.record_hot_set()).await {
        Ok(Ok(n)) => tracing::info!(objects = n, "hot set written"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the hot set"),
        Err(_) => tracing::warn!(limit = ?limit, "writing the hot set took too long; skipped"),
    }
}

/// Aborts the multipart uploads older than `age`, at the start and then every `age / 4` (at
/// least every second, at most every hour).
async fn expire_uploads_every(store: Arc<Store>, age: std::time::Duration) {
    let every = (age / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));
    loop {
        if let Err(e) = store.expire_uploads(age).await {
            tracing::warn!(error = %e, "cannot expire old multipart uploads");
        }
        tokio::time::sleep(every).await;
    }
}

async fn record_hot_set_every(store: Arc<Store>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        record_hot_set(&store, HOT_SET_WRITE_MAX).await;
    }
}

/// After SIGTERM/SIGINT: keep serving (the database's shutdown checkpoint arrives after the
/// signal) while the uploader empties the journal; done when it is empty (refused versions, and
/// the versions that wait on them, aside: nothing uploads them until an operator acts) and no
/// request came for --drain-quiet, when --drain-timeout has passed, or at a second signal. Returns
/// what is left of --drain-timeout (none after a second signal).
async fn drain(store: &Store, metrics: &metrics::Metrics, config: &Config) -> std::time::Duration {
    let started = std::time::Instant::now();
    tracing::info!(
        timeout_s = config.drain_timeout.as_secs(),
        quiet_s = config.drain_quiet.as_secs(),
        "stop asked: draining the journal while serving"
    );
    let mut last_log = started;
    // A second SIGTERM/SIGINT stops the drain at once (what is left stays in the journal).
    let mut again = match shutdown_signal() {
        Ok(signal) => Some(Box::pin(signal)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for a second stop signal");
            None
        }
    };
    loop {
        let st = store.write_status(None);
        let left = st.dirty_objects.saturating_sub(st.failed.len() as u64);
        if (left == 0 || st.blocked_by_refusals) && metrics.idle_for() >= config.drain_quiet {
            tracing::info!(
                refused = st.failed.len(),
                waiting_on_them = left,
                ms = started.elapsed().as_millis() as u64,
                "journal drained"
            );
            return config.drain_timeout.saturating_sub(started.elapsed());
        }
        if started.elapsed() >= config.drain_timeout {
            tracing::warn!(
                objects = st.dirty_objects,
                bytes = st.dirty_bytes,
                "--drain-timeout reached; what is left stays in the journal for the next start"
            );
            return std::time::Duration::ZERO;
        }
        if last_log.elapsed() >= std::time::Duration::from_secs(5) {
            tracing::info!(objects = st.dirty_objects, bytes = st.dirty_bytes, "draining");
            last_log = std::time::Instant::now();
        }
        let tick = tokio::time::sleep(std::time::Duration::from_millis(100));
        match again.as_mut() {
            Some(signal) => tokio::select! {
                () = tick => {}
                () = signal => {
                    tracing::warn!(
                        objects = st.dirty_objects,
                        "second stop signal: leaving the rest in the journal for the next start"
                    );
                    return std::time::Duration::ZERO;
                }
            },
            None => tick.await,
        }
    }
}

/// The size of the filesystem holding `dir` (100 GiB if unknown).
fn filesystem_size(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let _ = std::fs::create_dir_all(dir);
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 100 << 30;
    };
    // SAFETY: statvfs writes only into the struct we pass; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return 100 << 30;
    }
    (st.f_blocks as u64).saturating_mul(st.f_frsize as u64)
}

/// The free space kept on a data dir's filesystem of `size` bytes: 2%, within 64 MiB–2 GiB (room
/// for the index's log and flushes, and for what is not Perch's), never more than an eighth.
fn default_disk_reserve_bytes(size: u64) -> u64 {
    (size / 50).clamp(64 << 20, 2 << 30).min(size / 8)
}

/// Installs the SIGTERM and SIGINT handlers; the future resolves at the first of them.
/// Installed before the listeners announce themselves, so an early signal still stops cleanly.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
