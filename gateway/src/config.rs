//! `perch serve` settings: command-line flags, `PERCH_*` environment variables and a TOML file,
//! merged in that order of precedence into one `Config` with documented defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use perch_policy::{Glob, ListRule, Policy, Prefetch, RewrittenKeys};
use serde::Deserialize;

use crate::limits::{Limits, S3_BODY_MAX};

/// The development key pair used on loopback when no client keys are set. Documented in the README.
pub const DEV_ACCESS_KEY_ID: &str = "perch-dev";
pub const DEV_SECRET_ACCESS_KEY: &str = "perch-dev-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves reads and writes.
    Primary,
    /// Serves reads of the shared bucket and never writes to it; its own writes go to its
    /// overlay, or are refused (`--replica-writes`).
    Replica,
}

/// What a replica does with the writes it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaWrites {
    /// Keeps them in a local overlay it reads back and lists, never uploaded (docs/replicas.md).
    Overlay,
    /// Refuses every write with 403 AccessDenied.
    Refuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `perch serve`. Every one can also be set as `PERCH_<NAME>` or in the `--config` file.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (names as the flags, with `_` for `-`).
    #[arg(long, env = "PERCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// S3 listener address [default: 127.0.0.1:9000]
    #[arg(long, env = "PERCH_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Admin listener (/healthz, /readyz, /metrics, /status). Beyond loopback it needs
    /// PERCH_ADMIN_TOKEN, which every request but /healthz, /readyz and /metrics must then carry
    /// as `Authorization: Bearer <token>` [default: 127.0.0.1:9001]
    #[arg(long, env = "PERCH_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Directory for Perch's local state [default: ./perch-data]
    #[arg(long, env = "PERCH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// The origin store: `http(s)://host:port` for any S3 service (e.g. Tigris), or `file://DIR` for a
    /// local directory [default: file://<data-dir>/origin]
    #[arg(long, env = "PERCH_ORIGIN", value_name = "URL")]
    pub origin: Option<String>,

    /// Region used to sign origin requests. `auto` is Tigris's (and R2's) own; in front of any other
    /// S3 service Perch asks it at start which region it expects, as the AWS SDKs do [default: auto]
    #[arg(long, env = "PERCH_ORIGIN_REGION", value_name = "REGION")]
    pub origin_region: Option<String>,

    /// Domain for virtual-hosted requests: `BUCKET.<domain>[:port]` names a bucket; any other host is
    /// path style [default: localhost]
    #[arg(long, env = "PERCH_DOMAIN", value_name = "DOMAIN")]
    pub domain: Option<String>,

    /// How long transient origin faults (5xx, throttling, resets, timeouts) are retried before the
    /// client gets 503 SlowDown, e.g. `120s`, `2m`, `500ms` [default: 120s]
    #[arg(long, env = "PERCH_ORIGIN_RETRY_DEADLINE", value_name = "DURATION")]
    pub origin_retry_deadline: Option<String>,

    /// `primary` serves reads and writes; `replica` reads the shared bucket and never writes to it
    /// [default: primary]
    #[arg(long, env = "PERCH_ROLE", value_enum)]
    pub role: Option<Role>,

    /// On a replica: `overlay` keeps its own writes (a standby's checkpoints, lock, control files)
    /// in a local overlay that is never uploaded; `refuse` answers them 403 [default: overlay]
    #[arg(long, env = "PERCH_REPLICA_WRITES", value_enum)]
    pub replica_writes: Option<ReplicaWrites>,

    /// Log format [default: text]
    #[arg(long, env = "PERCH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Size limit of the disk cache, e.g. `20GiB` [default: 80% of the data dir's free space at
    /// start, at most 1TiB]
    #[arg(long, env = "PERCH_CACHE_DISK_BYTES", value_name = "SIZE")]
    pub cache_disk_bytes: Option<String>,

    /// Free space kept on the data dir's filesystem: clean cache entries are evicted to keep it,
    /// and writes wait (up to --dirty-wait-max) rather than take it [default: 2% of the
    /// filesystem, at least 64MiB and at most 2GiB, never more than an eighth of it]
    #[arg(long, env = "PERCH_DISK_RESERVE_BYTES", value_name = "SIZE")]
    pub disk_reserve_bytes: Option<String>,

    /// Memory budget of the cache: the index's caches (24 MiB), the disk tier's eviction order
    /// (~28 bytes an entry), 1/16 for the allocator's overhead, and the memory tier of objects up
    /// to 1 MiB in what is left [default: 256MiB]
    #[arg(long, env = "PERCH_CACHE_MEMORY_BYTES", value_name = "SIZE")]
    pub cache_memory_bytes: Option<String>,

    /// The policy file: ordered rules giving each key its write mode, cache class, freshness,
    /// upload headers and upload priority (docs/configuration.md) [default: the built-in
    /// OrioleDB profile, policy/profiles/orioledb.toml]; reloaded on SIGHUP
    #[arg(long, env = "PERCH_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Shorthand for a policy rule `freshness = "revalidate"`: keys whose cached copies are
    /// revalidated with the origin (`*` matches anything, `/` included); repeatable; placed
    /// before the policy's rules
    #[arg(long, env = "PERCH_CACHE_REVALIDATE", value_name = "GLOB", value_delimiter = ',')]
    pub cache_revalidate: Option<Vec<String>>,

    /// How long a cached copy of a revalidated key is served before the origin is asked again,
    /// for rules that say `revalidate` without a period [default: 5s]
    #[arg(long, env = "PERCH_CACHE_REVALIDATE_AFTER", value_name = "DURATION")]
    pub cache_revalidate_after: Option<String>,

    /// Shorthand for a policy rule `write = MODE`: how writes of matching keys reach the origin:
    /// `GLOB=MODE`, or `put:GLOB=MODE` / `delete:GLOB=MODE` for one operation; MODE is
    /// write_back, barrier or write_through; repeatable; placed before the policy's rules
    #[arg(long, env = "PERCH_WRITE_MODE", value_name = "RULE", value_delimiter = ',')]
    pub write_mode: Option<Vec<String>>,

    /// Listings whose prefix matches are prefetched: `PREFIX_GLOB` (every listed object) or
    /// `PREFIX_GLOB=KEY_GLOB`; repeatable; an empty value turns it off [default: OrioleDB's restore:
    /// data/*/, orioledb_data/*/=*.map]
    #[arg(long, env = "PERCH_PREFETCH_ON_LIST", value_name = "RULE", value_delimiter = ',')]
    pub prefetch_on_list: Option<Vec<String>>,

    /// OrioleDB checksum lists: when a client reads one, the files it names from earlier
    /// checkpoints (`data/<M>/<file>`) are prefetched; repeatable; an empty value turns it off
    /// [default: data/*/orioledb_data/file_checksums]
    #[arg(long, env = "PERCH_PREFETCH_NAMED_IN", value_name = "GLOB", value_delimiter = ',')]
    pub prefetch_named_in: Option<Vec<String>>,

    /// Keys read ahead when read in order: a last component `<name>.<part>`; repeatable; an empty
    /// value turns it off [default: orioledb_data/*]
    #[arg(long, env = "PERCH_READ_AHEAD", value_name = "GLOB", value_delimiter = ',')]
    pub read_ahead: Option<Vec<String>>,

    /// Parts fetched ahead of a run of reads [default: 4]
    #[arg(long, env = "PERCH_READ_AHEAD_PARTS", value_name = "N")]
    pub read_ahead_parts: Option<u64>,

    /// Bytes of prefetches (listings, read-ahead, prewarm) queued or in flight at most; a
    /// prefetch never takes room the disk tier would have to evict for [default: 1GiB]
    #[arg(long, env = "PERCH_PREFETCH_BYTES", value_name = "SIZE")]
    pub prefetch_bytes: Option<String>,

    /// How often a primary writes its hot set (the objects read most recently) to `.perch/hot-set`
    /// in each bucket, besides when it stops; `0s`: only when it stops [default: 5m]
    #[arg(long, env = "PERCH_HOT_SET_INTERVAL", value_name = "DURATION")]
    pub hot_set_interval: Option<String>,

    /// Multipart uploads begun this long ago and never completed are aborted, their staged parts
    /// removed (as an AbortIncompleteMultipartUpload lifecycle rule would at the origin); `0s`:
    /// never [default: 7d]
    #[arg(long, env = "PERCH_MULTIPART_EXPIRY", value_name = "DURATION")]
    pub multipart_expiry: Option<String>,

    /// Buckets whose hot set a start with an empty cache prewarms from; repeatable [default: every
    /// bucket the origin lists]
    #[arg(long, env = "PERCH_PREWARM_BUCKET", value_name = "BUCKET", value_delimiter = ',')]
    pub prewarm_bucket: Option<Vec<String>>,

    /// How long `/readyz` waits for a prewarm at most (the rest goes on in the background)
    /// [default: 5s]
    #[arg(long, env = "PERCH_PREWARM_WAIT", value_name = "DURATION")]
    pub prewarm_wait: Option<String>,

    /// A barrier's acknowledgement also waits until it and everything before it are in the origin
    #[arg(long, env = "PERCH_STRICT_BARRIERS", num_args = 0..=1, default_missing_value = "true")]
    pub strict_barriers: Option<bool>,

    /// Uploads to the origin in flight at once [default: 16]
    #[arg(long, env = "PERCH_UPLOAD_CONCURRENCY", value_name = "N")]
    pub upload_concurrency: Option<usize>,

    /// Shorthand for a policy rule with `upload_headers`: a header added to the uploads of
    /// matching keys, `GLOB=Name: value` (e.g. `*=X-Tigris-Regions: iad`); repeatable; placed
    /// before the policy's rules
    #[arg(long, env = "PERCH_UPLOAD_HEADER", value_name = "GLOB=HEADER")]
    pub upload_header: Option<Vec<String>>,

    /// Acknowledged bytes not yet uploaded past which a write waits for room [default: 50% of the
    /// data dir's filesystem]
    #[arg(long, env = "PERCH_DIRTY_BYTES_MAX", value_name = "SIZE")]
    pub dirty_bytes_max: Option<String>,

    /// The longest a write waits for room under --dirty-bytes-max (or for disk space) before it
    /// is answered 503 SlowDown, which OrioleDB treats as fatal: keep it generous [default: 30m]
    #[arg(long, env = "PERCH_DIRTY_WAIT_MAX", value_name = "DURATION")]
    pub dirty_wait_max: Option<String>,

    /// Upload lag past which Perch reports itself unhealthy; it bounds what is lost if the volume
    /// itself is lost (the RPO) [default: 60s]
    #[arg(long, env = "PERCH_DIRTY_AGE_MAX", value_name = "DURATION")]
    pub dirty_age_max: Option<String>,

    /// On SIGTERM/SIGINT, the longest Perch keeps serving and uploading before it exits (what is
    /// left stays in the journal) [default: 240s]
    #[arg(long, env = "PERCH_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,

    /// On SIGTERM/SIGINT, Perch exits once the journal is empty and no request came for this long
    /// [default: 5s]
    #[arg(long, env = "PERCH_DRAIN_QUIET", value_name = "DURATION")]
    pub drain_quiet: Option<String>,

    /// Connections served at once on each listener; more wait in the listen queue [default: 512]
    #[arg(long, env = "PERCH_CONNECTIONS_MAX", value_name = "N")]
    pub connections_max: Option<usize>,

    /// S3 requests served at once (to the end of their answers); more wait their turn in arrival
    /// order [default: 128]
    #[arg(long, env = "PERCH_REQUESTS_MAX", value_name = "N")]
    pub requests_max: Option<usize>,

    /// Largest request header section; a larger one is answered 431 [default: 64KiB]
    #[arg(long, env = "PERCH_HEADER_BYTES_MAX", value_name = "SIZE")]
    pub header_bytes_max: Option<String>,

    /// Largest request body (a PUT or a part), at most S3's 5GiB; larger is 400 EntityTooLarge,
    /// refused from its declared length before it is read [default: 5GiB]
    #[arg(long, env = "PERCH_BODY_BYTES_MAX", value_name = "SIZE")]
    pub body_bytes_max: Option<String>,

    /// Time a client has to send a complete request header, from the connection's start or the
    /// request's first byte [default: 30s]
    #[arg(long, env = "PERCH_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,

    /// Time a kept-alive connection may stay silent between requests before it is closed
    /// [default: 60s]
    #[arg(long, env = "PERCH_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// The longest a request body may stall, or an answer wait for the client to read it, before
    /// the request is cut (400 RequestTimeout; nothing of it is kept) [default: 60s]
    #[arg(long, env = "PERCH_BODY_TIMEOUT", value_name = "DURATION")]
    pub body_timeout: Option<String>,

    /// Slowest average rate a request body may arrive at (per second), after --body-timeout of
    /// grace; `0` for none [default: 16KiB]
    #[arg(long, env = "PERCH_BODY_RATE_MIN", value_name = "SIZE")]
    pub body_rate_min: Option<String>,

    /// The bucket whose lease (`.perch/lease`) a primary holds: one writer per bucket
    /// (docs/lease.md). Without it, no lease is taken
    #[arg(long, env = "PERCH_LEASE_BUCKET", value_name = "BUCKET")]
    pub lease_bucket: Option<String>,

    /// The lease period: the holder renews every third of it and acts only within it of its
    /// last renewal [default: 10s]
    #[arg(long, env = "PERCH_LEASE_PERIOD", value_name = "DURATION")]
    pub lease_period: Option<String>,

    /// What a taker waits beyond the period before it declares an unchanged lease expired
    /// [default: 5s]
    #[arg(long, env = "PERCH_LEASE_MARGIN", value_name = "DURATION")]
    pub lease_margin: Option<String>,

    /// The name this Perch holds the lease under [default: FLY_MACHINE_ID or the host name, and
    /// the data dir's instance id]
    #[arg(long, env = "PERCH_LEASE_HOLDER", value_name = "NAME")]
    pub lease_holder: Option<String>,
}

/// The same settings as read from the `--config` TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    origin: Option<String>,
    origin_region: Option<String>,
    domain: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    origin_retry_deadline: Option<String>,
    role: Option<Role>,
    replica_writes: Option<ReplicaWrites>,
    log_format: Option<LogFormat>,
    #[serde(default, deserialize_with = "text_or_number")]
    cache_disk_bytes: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    disk_reserve_bytes: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    cache_memory_bytes: Option<String>,
    policy: Option<PathBuf>,
    #[serde(default, deserialize_with = "list_or_text")]
    cache_revalidate: Option<Vec<String>>,
    #[serde(default, deserialize_with = "text_or_number")]
    cache_revalidate_after: Option<String>,
    #[serde(default, deserialize_with = "list_or_text")]
    write_mode: Option<Vec<String>>,
    #[serde(default, deserialize_with = "list_or_text")]
    prefetch_on_list: Option<Vec<String>>,
    #[serde(default, deserialize_with = "list_or_text")]
    prefetch_named_in: Option<Vec<String>>,
    #[serde(default, deserialize_with = "list_or_text")]
    read_ahead: Option<Vec<String>>,
    read_ahead_parts: Option<u64>,
    #[serde(default, deserialize_with = "text_or_number")]
    prefetch_bytes: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    hot_set_interval: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    multipart_expiry: Option<String>,
    #[serde(default, deserialize_with = "list_or_text")]
    prewarm_bucket: Option<Vec<String>>,
    #[serde(default, deserialize_with = "text_or_number")]
    prewarm_wait: Option<String>,
    strict_barriers: Option<bool>,
    upload_concurrency: Option<usize>,
    upload_header: Option<Vec<String>>,
    #[serde(default, deserialize_with = "text_or_number")]
    dirty_bytes_max: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    dirty_wait_max: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    dirty_age_max: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    drain_timeout: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    drain_quiet: Option<String>,
    connections_max: Option<usize>,
    requests_max: Option<usize>,
    #[serde(default, deserialize_with = "text_or_number")]
    header_bytes_max: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    body_bytes_max: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    header_timeout: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    body_timeout: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    body_rate_min: Option<String>,
    /// The origin's key pair may live in the file (keep it private), and is read again on SIGHUP.
    origin_access_key_id: Option<String>,
    origin_secret_access_key: Option<String>,
    lease_bucket: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    lease_period: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    lease_margin: Option<String>,
    lease_holder: Option<String>,
}

/// A size or duration as the file gives it: text as the flag takes it (`64MiB`, `30s`), or a plain
/// number (bytes, seconds: `1.5` is a second and a half), as the flag takes it too.
fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Number(u64),
        Fraction(f64),
    }
    Ok(Option::<Value>::deserialize(d)?.map(|v| match v {
        Value::Text(t) => t,
        Value::Number(n) => n.to_string(),
        Value::Fraction(f) => f.to_string(),
    }))
}

/// A list as the file gives it: an array, or one text of comma-separated items as the flag and
/// its environment variable take it.
fn list_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        List(Vec<String>),
        Text(String),
    }
    Ok(Option::<Value>::deserialize(d)?.map(|v| match v {
        Value::List(l) => l,
        Value::Text(t) => t
            .split(',')
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect(),
    }))
}

/// `--lease-*`, resolved (the holder name is completed from the data dir at start).
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub bucket: String,
    pub period: Duration,
    pub margin: Duration,
    pub holder: Option<String>,
}

/// Where the origin is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginUrl {
    Dir(PathBuf),
    S3(String),
}

/// Keys, from the environment only (never flags: they would show in `ps`).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The bearer token of the admin endpoints (PERCH_ADMIN_TOKEN); never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// The shortest admin token accepted: a guessable one protects nothing.
const ADMIN_TOKEN_MIN: usize = 16;

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Every setting of `perch serve`, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub origin: OriginUrl,
    pub origin_region: String,
    pub domain: String,
    pub origin_retry_deadline: Duration,
    pub role: Role,
    pub replica_writes: ReplicaWrites,
    pub log_format: LogFormat,
    /// `None`: 80% of the data dir's free space at start, at most 1 TiB.
    pub cache_disk_bytes: Option<u64>,
    /// `None`: 2% of the data dir's filesystem, within 64 MiB–2 GiB, at most an eighth of it.
    pub disk_reserve_bytes: Option<u64>,
    pub cache_memory_bytes: u64,
    /// The policy in force at start: the shorthand flags' rules, then the file's.
    pub policy: Policy,
    /// Where the policy's rules come from, to read again on SIGHUP.
    pub policy_source: crate::policy_cmd::PolicySource,
    /// Keys the primary rewrites in place (a replica pins them at seeding).
    pub rewritten: RewrittenKeys,
    pub prefetch: Prefetch,
    pub prefetch_bytes: u64,
    /// Zero: the hot set is written only when Perch stops.
    pub hot_set_interval: Duration,
    /// Zero: multipart uploads never expire.
    pub multipart_expiry: Duration,
    /// Empty: every bucket the origin lists.
    pub prewarm_buckets: Vec<String>,
    pub prewarm_wait: Duration,
    pub strict_barriers: bool,
    pub upload_concurrency: usize,
    /// `None`: 50% of the data dir's filesystem.
    pub dirty_bytes_max: Option<u64>,
    pub dirty_wait_max: Duration,
    pub dirty_age_max: Duration,
    pub drain_timeout: Duration,
    pub drain_quiet: Duration,
    /// The lease a primary holds, if any.
    pub lease: Option<LeaseSettings>,
    /// What one client can hold (connections, requests, sizes, timeouts).
    pub limits: Limits,
    /// Required by every admin request but /healthz, /readyz and /metrics; must be set when the
    /// admin listener is not on loopback.
    pub admin_token: Option<AdminToken>,
    /// The `--config` file, read again on SIGHUP for the origin's keys.
    pub config_file: Option<PathBuf>,
    /// Keys clients sign with.
    pub client: Credentials,
    /// True when `client` is the development pair.
    pub dev_credentials: bool,
    /// Keys Perch signs origin requests with; none for the directory origin or an open origin.
    pub origin_credentials: Option<Credentials>,
}

/// Where the admin endpoints listen unless told otherwise.
const ADMIN_LISTEN_DEFAULT: ([u8; 4], u16) = ([127, 0, 0, 1], 9001);

/// The admin address `perch serve` would listen on in this environment (PERCH_ADMIN_LISTEN, the
/// `admin_listen` of the PERCH_CONFIG file, or its default): where `perch status`, `flush` and
/// `journal` call by default.
pub fn admin_listen_of_serve() -> anyhow::Result<SocketAddr> {
    if let Some(a) = env_var("PERCH_ADMIN_LISTEN") {
        return a.parse().with_context(|| format!("PERCH_ADMIN_LISTEN {a:?}"));
    }
    let from_file = match env_var("PERCH_CONFIG") {
        Some(path) => read_file(Path::new(&path))?.admin_listen,
        None => None,
    };
    Ok(from_file.unwrap_or_else(|| SocketAddr::from(ADMIN_LISTEN_DEFAULT)))
}

/// Reads the environment variable `name`, treating an empty value as unset.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `perch_policy::units::parse_duration`, with the flag it is for in the error.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    Ok(perch_policy::units::parse_duration(s)?)
}

/// `perch_policy::units::parse_size`, with the flag it is for in the error.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    Ok(perch_policy::units::parse_size(s)?)
}

fn parse_origin(url: &str) -> anyhow::Result<OriginUrl> {
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            bail!("--origin file:// needs a directory, e.g. file:///var/lib/perch/origin");
        }
        return Ok(OriginUrl::Dir(PathBuf::from(path)));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        let has_host = url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| !h.is_empty()))
            .unwrap_or(false);
        if !has_host {
            bail!("--origin `{url}` names no host: give the S3 service's URL, e.g. https://fly.storage.tigris.dev");
        }
        return Ok(OriginUrl::S3(url.trim_end_matches('/').to_owned()));
    }
    bail!("--origin must be http://, https:// or file:// (got `{url}`)")
}

impl Config {
    /// Merges flags (already holding env values through clap), the config file and the defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let origin_credentials = origin_credentials_from(&file)?;
        let limits = limits(&args, &file)?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./perch-data"));
        let origin = match args.origin.or(file.origin) {
            Some(url) => parse_origin(&url)?,
            None => OriginUrl::Dir(data_dir.join("origin")),
        };
        let deadline = match args.origin_retry_deadline.or(file.origin_retry_deadline) {
            Some(s) => parse_duration(&s).context("--origin-retry-deadline")?,
            None => Duration::from_secs(120),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9000)));
        let domain = args.domain.or(file.domain).unwrap_or_else(|| "localhost".to_owned());
        if domain.is_empty() || domain.contains(['/', ':', ' ']) {
            bail!("--domain must be a host name such as `localhost` (got `{domain}`)");
        }

        let (client, dev_credentials) = match (env_var("PERCH_ACCESS_KEY_ID"), env_var("PERCH_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => (
                Credentials {
                    access_key_id,
                    secret_access_key,
                },
                false,
            ),
            (None, None) => {
                if !listen.ip().is_loopback() {
                    bail!(
                        "PERCH_ACCESS_KEY_ID and PERCH_SECRET_ACCESS_KEY must be set to listen on {listen}, \
                         which is not a loopback address"
                    );
                }
                let dev = Credentials {
                    access_key_id: DEV_ACCESS_KEY_ID.to_owned(),
                    secret_access_key: DEV_SECRET_ACCESS_KEY.to_owned(),
                };
                (dev, true)
            }
            _ => bail!("set both PERCH_ACCESS_KEY_ID and PERCH_SECRET_ACCESS_KEY, or neither"),
        };

        let admin_listen = args
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or_else(|| SocketAddr::from(ADMIN_LISTEN_DEFAULT));
        let admin_token = match env_var("PERCH_ADMIN_TOKEN") {
            Some(t) if t.len() < ADMIN_TOKEN_MIN => {
                bail!("PERCH_ADMIN_TOKEN must be at least {ADMIN_TOKEN_MIN} characters")
            }
            Some(t) => Some(AdminToken(t)),
            None if !admin_listen.ip().is_loopback() => bail!(
                "PERCH_ADMIN_TOKEN must be set to serve the admin endpoints on {admin_listen}, which is not a \
                 loopback address"
            ),
            None => None,
        };

        // A replica pins the keys the primary rewrites: `--cache-revalidate` names them too.
        let rewritten = match args.cache_revalidate.as_ref().or(file.cache_revalidate.as_ref()) {
            Some(globs) => RewrittenKeys {
                mutable: globs.iter().filter(|g| !g.is_empty()).map(|g| Glob::new(g)).collect(),
            },
            None => RewrittenKeys::orioledb_defaults(),
        };
        let policy_source = crate::policy_cmd::PolicySource::resolve(
            args.policy.or(file.policy),
            crate::policy_cmd::Shorthands {
                write_mode: args.write_mode.or(file.write_mode).unwrap_or_default(),
                cache_revalidate: args.cache_revalidate.or(file.cache_revalidate).unwrap_or_default(),
                cache_revalidate_after: args.cache_revalidate_after.or(file.cache_revalidate_after),
                upload_header: args.upload_header.or(file.upload_header).unwrap_or_default(),
            },
        )?;
        let policy = policy_source.load()?;
        Ok(Config {
            listen,
            admin_listen,
            data_dir,
            origin,
            origin_region: args
                .origin_region
                .or(file.origin_region)
                .unwrap_or_else(|| "auto".to_owned()),
            domain,
            origin_retry_deadline: deadline,
            role: args.role.or(file.role).unwrap_or(Role::Primary),
            replica_writes: args
                .replica_writes
                .or(file.replica_writes)
                .unwrap_or(ReplicaWrites::Overlay),
            log_format: args.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            cache_disk_bytes: match args.cache_disk_bytes.or(file.cache_disk_bytes) {
                Some(s) => Some(parse_size(&s).context("--cache-disk-bytes")?),
                None => None,
            },
            disk_reserve_bytes: match args.disk_reserve_bytes.or(file.disk_reserve_bytes) {
                Some(s) => Some(parse_size(&s).context("--disk-reserve-bytes")?),
                None => None,
            },
            cache_memory_bytes: match args.cache_memory_bytes.or(file.cache_memory_bytes) {
                Some(s) => parse_size(&s).context("--cache-memory-bytes")?,
                None => 256 << 20,
            },
            policy,
            policy_source,
            rewritten,
            prefetch: Prefetch {
                on_list: match args.prefetch_on_list.or(file.prefetch_on_list) {
                    Some(rules) => rules
                        .iter()
                        .filter(|r| !r.is_empty())
                        .map(|r| r.parse::<ListRule>().map_err(anyhow::Error::msg))
                        .collect::<anyhow::Result<_>>()
                        .context("--prefetch-on-list")?,
                    None => Prefetch::orioledb_list_rules(),
                },
                named_in: match args.prefetch_named_in.or(file.prefetch_named_in) {
                    Some(globs) => globs.iter().filter(|g| !g.is_empty()).map(|g| Glob::new(g)).collect(),
                    None => Prefetch::orioledb_named_in(),
                },
                read_ahead: match args.read_ahead.or(file.read_ahead) {
                    Some(globs) => globs.iter().filter(|g| !g.is_empty()).map(|g| Glob::new(g)).collect(),
                    None => Prefetch::orioledb_read_ahead(),
                },
                read_ahead_parts: args.read_ahead_parts.or(file.read_ahead_parts).unwrap_or(4),
            },
            prefetch_bytes: match args.prefetch_bytes.or(file.prefetch_bytes) {
                Some(s) => parse_size(&s).context("--prefetch-bytes")?,
                None => 1 << 30,
            },
            hot_set_interval: duration_or(
                args.hot_set_interval.or(file.hot_set_interval),
                "--hot-set-interval",
                300,
            )?,
            multipart_expiry: duration_or(
                args.multipart_expiry.or(file.multipart_expiry),
                "--multipart-expiry",
                7 * 86_400,
            )?,
            prewarm_buckets: args
                .prewarm_bucket
                .or(file.prewarm_bucket)
                .unwrap_or_default()
                .into_iter()
                .filter(|b| !b.is_empty())
                .collect(),
            prewarm_wait: duration_or(args.prewarm_wait.or(file.prewarm_wait), "--prewarm-wait", 5)?,
            strict_barriers: args.strict_barriers.or(file.strict_barriers).unwrap_or(false),
            upload_concurrency: match args.upload_concurrency.or(file.upload_concurrency) {
                Some(0) => bail!("--upload-concurrency must be at least 1"),
                Some(n) => n,
                None => 16,
            },
            dirty_bytes_max: match args.dirty_bytes_max.or(file.dirty_bytes_max) {
                Some(s) => Some(parse_size(&s).context("--dirty-bytes-max")?),
                None => None,
            },
            dirty_wait_max: duration_or(args.dirty_wait_max.or(file.dirty_wait_max), "--dirty-wait-max", 1800)?,
            dirty_age_max: duration_or(args.dirty_age_max.or(file.dirty_age_max), "--dirty-age-max", 60)?,
            drain_timeout: duration_or(args.drain_timeout.or(file.drain_timeout), "--drain-timeout", 240)?,
            drain_quiet: duration_or(args.drain_quiet.or(file.drain_quiet), "--drain-quiet", 5)?,
            lease: match args.lease_bucket.or(file.lease_bucket).filter(|b| !b.is_empty()) {
                None => None,
                Some(bucket) => {
                    let period = duration_or(args.lease_period.or(file.lease_period), "--lease-period", 10)?;
                    if period < Duration::from_millis(300) {
                        bail!("--lease-period must be at least 300ms");
                    }
                    Some(LeaseSettings {
                        bucket,
                        period,
                        margin: duration_or(args.lease_margin.or(file.lease_margin), "--lease-margin", 5)?,
                        holder: args.lease_holder.or(file.lease_holder).filter(|h| !h.is_empty()),
                    })
                }
            },
            limits,
            admin_token,
            config_file: args.config.clone(),
            client,
            dev_credentials,
            origin_credentials,
        })
    }
}

/// The origin's key pair: from the environment (`PERCH_ORIGIN_*`, else `AWS_*`), else from the
/// config file; none for anonymous requests.
fn origin_credentials_from(file: &FileConfig) -> anyhow::Result<Option<Credentials>> {
    let pair = |id: Option<String>, secret: Option<String>, what: &str| match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Credentials {
            access_key_id,
            secret_access_key,
        })),
        (None, None) => Ok(None),
        _ => bail!("set both {what}, or neither"),
    };
    let from_env = pair(
        env_var("PERCH_ORIGIN_ACCESS_KEY_ID").or_else(|| env_var("AWS_ACCESS_KEY_ID")),
        env_var("PERCH_ORIGIN_SECRET_ACCESS_KEY").or_else(|| env_var("AWS_SECRET_ACCESS_KEY")),
        "PERCH_ORIGIN_ACCESS_KEY_ID and PERCH_ORIGIN_SECRET_ACCESS_KEY",
    )?;
    if from_env.is_some() {
        return Ok(from_env);
    }
    pair(
        file.origin_access_key_id.clone().filter(|v| !v.is_empty()),
        file.origin_secret_access_key.clone().filter(|v| !v.is_empty()),
        "origin_access_key_id and origin_secret_access_key in the config file",
    )
}

/// The origin's key pair as it stands now: the environment, then `config_file` read again (what
/// SIGHUP uses).
pub fn reload_origin_credentials(config_file: Option<&Path>) -> anyhow::Result<Option<Credentials>> {
    let file = match config_file {
        Some(path) => read_file(path)?,
        None => FileConfig::default(),
    };
    origin_credentials_from(&file)
}

/// The limits on what one client can hold.
fn limits(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<Limits> {
    let d = Limits::default();
    let size = |arg: &Option<String>, file: &Option<String>, flag: &str, default: u64| -> anyhow::Result<u64> {
        match arg.as_ref().or(file.as_ref()) {
            Some(s) => parse_size(s).with_context(|| flag.to_owned()),
            None => Ok(default),
        }
    };
    let duration = |arg: &Option<String>, file: &Option<String>, flag: &str, default: Duration| match arg
        .as_ref()
        .or(file.as_ref())
    {
        Some(s) => parse_duration(s).with_context(|| flag.to_owned()),
        None => Ok(default),
    };
    let limits = Limits {
        connections_max: args
            .connections_max
            .or(file.connections_max)
            .unwrap_or(d.connections_max),
        requests_max: args.requests_max.or(file.requests_max).unwrap_or(d.requests_max),
        header_bytes_max: size(
            &args.header_bytes_max,
            &file.header_bytes_max,
            "--header-bytes-max",
            d.header_bytes_max as u64,
        )? as usize,
        body_bytes_max: size(
            &args.body_bytes_max,
            &file.body_bytes_max,
            "--body-bytes-max",
            d.body_bytes_max,
        )?,
        header_timeout: duration(
            &args.header_timeout,
            &file.header_timeout,
            "--header-timeout",
            d.header_timeout,
        )?,
        idle_timeout: duration(&args.idle_timeout, &file.idle_timeout, "--idle-timeout", d.idle_timeout)?,
        body_timeout: duration(&args.body_timeout, &file.body_timeout, "--body-timeout", d.body_timeout)?,
        body_rate_min: size(
            &args.body_rate_min,
            &file.body_rate_min,
            "--body-rate-min",
            d.body_rate_min,
        )?,
    };
    // The most a Semaphore holds (tokio's `MAX_PERMITS`, usize::MAX >> 3), far beyond any file
    // descriptor limit.
    const SLOTS_MAX: usize = 1 << 20;
    if !(1..=SLOTS_MAX).contains(&limits.connections_max) || !(1..=SLOTS_MAX).contains(&limits.requests_max) {
        bail!("--connections-max and --requests-max must be between 1 and {SLOTS_MAX}");
    }
    if !(1 << 10..=256 << 10).contains(&limits.header_bytes_max) {
        bail!("--header-bytes-max must be between 1KiB and 256KiB");
    }
    if limits.body_bytes_max == 0 || limits.body_bytes_max > S3_BODY_MAX {
        bail!("--body-bytes-max must be between 1 byte and 5GiB (S3's largest PUT and part)");
    }
    for (t, flag) in [
        (limits.header_timeout, "--header-timeout"),
        (limits.idle_timeout, "--idle-timeout"),
        (limits.body_timeout, "--body-timeout"),
    ] {
        if t.is_zero() {
            bail!("{flag} must be more than 0");
        }
    }
    Ok(limits)
}

/// A duration setting, or its default in seconds.
fn duration_or(value: Option<String>, flag: &str, default_secs: u64) -> anyhow::Result<Duration> {
    match value {
        Some(s) => parse_duration(&s).with_context(|| flag.to_owned()),
        None => Ok(Duration::from_secs(default_secs)),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // One line, `FILE:LINE: what is wrong` (toml's own text draws the line with a caret below it).
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|span| {
            let start = span.start.min(text.len());
            text.as_bytes()[..start].iter().filter(|&&b| b == b'\n').count() + 1
        });
        let at = line.map(|l| format!(":{l}")).unwrap_or_default();
        let what = e.message().trim().replace('\n', "; ");
        anyhow::anyhow!("{}{at}: {what}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(parse_origin("file:///x/y").unwrap(), OriginUrl::Dir("/x/y".into()));
        assert_eq!(
            parse_origin("https://fly.storage.tigris.dev/").unwrap(),
            OriginUrl::S3("https://fly.storage.tigris.dev".into())
        );
        assert!(parse_origin("ftp://x").is_err());
        assert!(parse_origin("file://").is_err());
        // No host: the error is about --origin, not the region it would go on to look for.
        for url in ["http://", "https://", "http:///bucket"] {
            let e = parse_origin(url).expect_err(url).to_string();
            assert!(e.contains("--origin") && e.contains("no host"), "{url}: {e}");
        }
        assert!(parse_origin("http://127.0.0.1:9000").is_ok());
    }

    #[test]
    fn a_config_file_takes_numbers_for_sizes_and_durations_and_text_for_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perch.toml");
        std::fs::write(
            &path,
            "cache_disk_bytes = 1073741824\norigin_retry_deadline = 30\ndrain_timeout = \"2m\"\n\
             cache_revalidate = \"wal/*, data/*\"\nwrite_mode = [\"wal/*=write_through\"]\n",
        )
        .unwrap();
        let f = read_file(&path).unwrap();
        assert_eq!(f.cache_disk_bytes.as_deref(), Some("1073741824"));
        assert_eq!(f.origin_retry_deadline.as_deref(), Some("30"));
        assert_eq!(f.drain_timeout.as_deref(), Some("2m"));
        assert_eq!(f.cache_revalidate, Some(vec!["wal/*".to_owned(), "data/*".to_owned()]));
        assert_eq!(f.write_mode, Some(vec!["wal/*=write_through".to_owned()]));
        assert_eq!(f.prefetch_bytes, None);
        std::fs::write(&path, "drain_quiet = 1.5\n").unwrap();
        let f = read_file(&path).unwrap();
        assert_eq!(
            parse_duration(f.drain_quiet.as_deref().unwrap()).unwrap(),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn a_config_file_mistake_is_one_line_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perch.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\n\nno_such_setting = 1\n").unwrap();
        let e = format!("{:#}", read_file(&path).expect_err("an unknown key"));
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with(&format!("{}:3: ", path.display())), "{e}");
        assert!(e.contains("no_such_setting"), "{e}");
        // A syntax error too (toml's message has lines of its own).
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\norigin = \"unterminated\n").unwrap();
        let e = format!("{:#}", read_file(&path).expect_err("a syntax error"));
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with(&format!("{}:2: ", path.display())), "{e}");
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("perch.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:7000\"\ndomain = \"example.test\"\norigin_retry_deadline = \"3s\"\nrole = \"replica\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            domain: Some("flag.test".into()),
            ..Default::default()
        };
        let cfg = Config::resolve(args).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(cfg.domain, "flag.test");
        assert_eq!(cfg.origin_retry_deadline, Duration::from_secs(3));
        assert_eq!(cfg.role, Role::Replica);
        assert_eq!(cfg.admin_listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(cfg.origin, OriginUrl::Dir(PathBuf::from("./perch-data/origin")));
        assert_eq!(cfg.drain_timeout, Duration::from_secs(240));
        assert_eq!(cfg.drain_quiet, Duration::from_secs(5));
        assert_eq!(cfg.multipart_expiry, Duration::from_secs(7 * 86_400));
        assert_eq!(cfg.dirty_age_max, Duration::from_secs(60));
        assert_eq!(cfg.upload_concurrency, 16);
        assert_eq!(cfg.policy, Policy::orioledb());

        std::fs::write(&path, "listne = \"127.0.0.1:7000\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("listne"), "{err:#}");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "very-secret".into(),
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
