//! `perch-bench compare-nginx`: nginx (Debian's package) on loopback as static file server and as
//! `proxy_cache` in front of the origin, against Perch and the origin, with the same GET workload.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{
    client::ConnMode,
    engine::{self, Budget, Engine, Progress, Spec, Workload, WorkloadKind},
    report::{Comparison, Section},
    run::CommonArgs,
    target::{Kind, Target, loopback_addr, loopback_url},
    units::{duration_arg, format_size, size_arg},
};

/// Target names in compare-nginx reports.
pub const PERCH: &str = "perch";
pub const NGINX_STATIC: &str = "nginx-static";
pub const NGINX_PROXY: &str = "nginx-proxy-cache";
pub const ORIGIN: &str = "origin";

/// Options of `perch-bench compare-nginx`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Perch's S3 endpoint, `http://127.0.0.1:PORT`.
    #[arg(long)]
    pub perch: String,
    /// Perch's admin address, for its cache metrics.
    #[arg(long, value_name = "ADDR")]
    pub perch_admin: Option<String>,
    /// The origin Perch passes requests to (moto or any loopback S3), `http://127.0.0.1:PORT`.
    #[arg(long)]
    pub origin: String,
    #[command(flatten)]
    pub nginx: NginxArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The workload and nginx settings of a comparison.
#[derive(Debug, Clone, clap::Args)]
pub struct NginxArgs {
    /// Bucket holding the objects (created on the origin, public-read so nginx can fetch unsigned).
    #[arg(
        id = "nginx-bucket",
        long = "nginx-bucket",
        value_name = "BUCKET",
        default_value = "perch-bench-nginx"
    )]
    pub bucket: String,
    /// Object sizes; one workload per size and connection count.
    #[arg(id = "nginx-sizes", long = "nginx-sizes", value_name = "SIZES", value_parser = size_arg, value_delimiter = ',', default_value = "1KiB,64KiB,1MiB")]
    pub sizes: Vec<u64>,
    /// Concurrent connections (requests in flight).
    #[arg(
        id = "nginx-connections",
        long = "nginx-connections",
        value_name = "CONNECTIONS",
        value_delimiter = ',',
        default_value = "1,16,64"
    )]
    pub connections: Vec<usize>,
    /// Objects per size.
    #[arg(
        id = "nginx-objects",
        long = "nginx-objects",
        value_name = "OBJECTS",
        default_value_t = 16
    )]
    pub objects: usize,
    /// Load time per workload per target, split over the rounds [default: 1s; suite: 0.6s].
    #[arg(id = "nginx-duration", long = "nginx-duration", value_name = "DURATION", value_parser = duration_arg)]
    pub duration: Option<Duration>,
    /// Requests per workload per target instead of a duration.
    #[arg(id = "nginx-requests", long = "nginx-requests", value_name = "REQUESTS")]
    pub requests: Option<u64>,
    /// Rounds: each loads every target once per workload.
    #[arg(
        id = "nginx-rounds",
        long = "nginx-rounds",
        value_name = "ROUNDS",
        default_value_t = 2
    )]
    pub rounds: usize,
    /// Send nginx the same SigV4-signed GETs as Perch (nginx ignores the signature): the same
    /// request bytes and the same signing work in the client for every target, so that the ratio
    /// compares the servers alone. Without it nginx gets plain unsigned GETs.
    #[arg(id = "nginx-signed", long = "nginx-signed")]
    pub signed: bool,
    /// Client mode (nginx is usually measured with keep-alive).
    #[arg(
        id = "nginx-connection",
        long = "nginx-connection",
        value_name = "CONNECTION",
        value_enum,
        default_value = "pool"
    )]
    pub connection: ConnMode,
    /// The nginx binary.
    #[arg(
        id = "nginx-bin",
        long = "nginx-bin",
        value_name = "BIN",
        default_value = "/usr/sbin/nginx"
    )]
    pub binary: PathBuf,
    /// nginx worker processes [default: the number of CPUs].
    #[arg(id = "nginx-workers", long = "nginx-workers", value_name = "WORKERS")]
    pub workers: Option<usize>,
}

/// What the generated nginx.conf says.
#[derive(Debug, Clone)]
pub struct NginxConfig {
    /// nginx's prefix directory: logs, temp files, the cache and the pid file go below it.
    pub prefix: PathBuf,
    /// Document root of the static server (holds `BUCKET/KEY` files).
    pub static_root: PathBuf,
    pub static_port: u16,
    pub proxy_port: u16,
    pub origin: SocketAddr,
    pub workers: usize,
    /// Emit `user root;` (when started as root, so workers can read the files as their owner).
    pub as_root: bool,
}

impl NginxConfig {
    /// The nginx.conf text. `sendfile off`: with sendfile on loopback, responses stall for 40 ms
    /// (delayed ACK against Nagle on the last partial segment).
    pub fn render(&self) -> String {
        let p = self.prefix.display();
        let user = if self.as_root { "user root root;\n" } else { "" };
        format!(
            r#"# Generated by perch-bench compare-nginx.
{user}daemon off;
master_process on;
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    types {{ }}
    client_body_temp_path {p}/tmp/client_body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    proxy_cache_path {p}/cache levels=1:2 keys_zone=perch_bench:16m max_size=8g inactive=1h use_temp_path=off;

    upstream origin {{
        server {origin};
        keepalive 64;
    }}

    # Static files: the same objects, from a local directory.
    server {{
        listen 127.0.0.1:{static_port};
        root {root};
        location / {{
            open_file_cache max=10000 inactive=60s;
        }}
    }}

    # proxy_cache in front of the origin (unsigned GETs: the bucket is public-read).
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {origin};
            proxy_cache perch_bench;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1h;
            proxy_cache_lock on;
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#,
            workers = self.workers.max(1),
            origin = self.origin,
            static_port = self.static_port,
            proxy_port = self.proxy_port,
            root = self.static_root.display(),
        )
    }
}

/// A running nginx (master process in the foreground), stopped when dropped.
pub struct Nginx {
    child: Option<Child>,
    pub config: NginxConfig,
}

impl Nginx {
    /// Writes the config into `config.prefix`, starts `binary` and waits until both ports answer.
    pub fn start(binary: &Path, config: NginxConfig) -> anyhow::Result<Nginx> {
        if !binary.is_file() {
            bail!(
                "nginx not found at {} (install Debian's package: apt-get install nginx, or pass --nginx-bin)",
                binary.display()
            );
        }
        for dir in ["tmp", "cache"] {
            std::fs::create_dir_all(config.prefix.join(dir))?;
        }
        let conf = config.prefix.join("nginx.conf");
        std::fs::write(&conf, config.render())?;
        let log = config.prefix.join("stderr.log");
        let child = Command::new(binary)
            .arg("-p")
            .arg(&config.prefix)
            .arg("-e")
            .arg(config.prefix.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(config.prefix.join("stderr2.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut nginx = Nginx {
            child: Some(child),
            config,
        };
        let start = Instant::now();
        loop {
            if let Some(child) = &mut nginx.child
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("nginx exited with {status} at start: {}", nginx.logs());
            }
            let up = |port| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            };
            if up(nginx.config.static_port) && up(nginx.config.proxy_port) {
                return Ok(nginx);
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("nginx did not listen within 15s: {}", nginx.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        ["error.log", "stderr.log", "stderr2.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.config.prefix.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Graceful stop (SIGQUIT to the master), then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill").arg("-QUIT").arg(child.id().to_string()).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free at the time of asking.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether this process runs as root (nginx then needs `user root;` to read our files).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Runs the comparison and returns its section. `perch` and `origin` are S3 targets.
pub async fn compare_section(
    perch: Target,
    origin: Target,
    args: &NginxArgs,
    common: &CommonArgs,
    progress: Arc<Progress>,
) -> anyhow::Result<Section> {
    if args.sizes.is_empty() || args.connections.is_empty() {
        bail!("compare-nginx needs at least one size and one connection count");
    }
    let max_conns = args.connections.iter().copied().max().unwrap_or(1);
    let client = common.client(args.connection, max_conns, None);
    let seed = common.seed(true);
    let origin = Arc::new(origin);
    let perch = Arc::new(perch);

    // Objects: on the origin (public-read) and as files for the static server.
    let dir = tempfile::Builder::new()
        .prefix("perch-bench-nginx-")
        .tempdir()
        .context("creating nginx's directory")?;
    let root = dir.path().join("static");
    progress.note(&format!("setup: bucket {} on the origin, public-read", origin.bucket));
    engine::create_bucket(&client, &origin, true).await?;
    let mut sets = Vec::new();
    for &size in &args.sizes {
        let specs: Vec<Spec> = (0..args.objects)
            .map(|i| Spec {
                key: format!("nginx/s{seed}/{}/{i:04}", format_size(size)),
                size,
            })
            .collect();
        let items = engine::materialize(
            client.clone(),
            Some(origin.clone()),
            specs.clone(),
            seed,
            8,
            true,
            &progress,
        )
        .await?;
        for spec in &specs {
            let path = root.join(&origin.bucket).join(&spec.key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let object = perch_testkit::bodies::object(seed, &spec.key, 0, spec.size as usize);
            std::fs::write(&path, &object.bytes)?;
        }
        sets.push((size, Arc::new(items)));
    }
    // World-readable, so nginx workers can serve the files whatever user they run as.
    let _ = Command::new("chmod").arg("-R").arg("a+rX").arg(dir.path()).status();

    let static_port = free_port()?;
    let mut proxy_port = free_port()?;
    while proxy_port == static_port {
        proxy_port = free_port()?;
    }
    let config = NginxConfig {
        prefix: dir.path().to_owned(),
        static_root: root,
        static_port,
        proxy_port,
        origin: origin.addr,
        workers: args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        as_root: running_as_root(),
    };
    progress.note(&format!(
        "starting nginx: static on 127.0.0.1:{}, proxy_cache on 127.0.0.1:{}",
        config.static_port, config.proxy_port
    ));
    let binary = args.binary.clone();
    let mut nginx = tokio::task::spawn_blocking(move || Nginx::start(&binary, config)).await??;

    let bucket = origin.bucket.clone();
    let mut perch_t = (*perch).clone();
    perch_t.name = PERCH.to_owned();
    perch_t.bucket = bucket.clone();
    let mut origin_t = (*origin).clone();
    origin_t.name = ORIGIN.to_owned();
    let plain = |name: &str, port: u16| {
        let mut t = Target::new(
            name,
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            &bucket,
            Kind::Plain,
        );
        t.sign_plain = args.signed;
        Arc::new(t)
    };
    let targets: Vec<Arc<Target>> = vec![
        Arc::new(perch_t),
        plain(NGINX_STATIC, nginx.config.static_port),
        plain(NGINX_PROXY, nginx.config.proxy_port),
        Arc::new(origin_t),
    ];
    let mut workloads = Vec::new();
    for &conns in &args.connections {
        for (size, items) in &sets {
            workloads.push(Workload {
                name: format!("GET {} c{conns}", format_size(*size)),
                description: format!(
                    "GETs of random {} objects ({} of them), {conns} connections; every target warmed first",
                    format_size(*size),
                    items.len()
                ),
                kind: WorkloadKind::GetRandom {
                    sets: vec![items.clone(); targets.len()],
                },
                concurrency: Some(conns),
                warm: true,
            });
        }
    }
    let budget = match args.requests {
        Some(n) => Budget::Requests(n),
        None => Budget::Duration(args.duration.unwrap_or(Duration::from_secs(1))),
    };
    let engine = Engine {
        client,
        targets: targets.clone(),
        setup_via: vec![origin.clone(); targets.len()],
        rounds: args.rounds,
        budget,
        concurrency: 1,
        seed,
        progress: progress.clone(),
    };
    let results = engine.run(&workloads).await;
    nginx.stop();
    let results = results?;
    let mut comparisons = Vec::new();
    for w in &results {
        for other in [NGINX_STATIC, NGINX_PROXY] {
            comparisons.extend(Comparison::between(w, PERCH, other));
        }
    }
    let settings = json!({
        "perch": perch.url,
        "origin": origin.url,
        "nginx": args.binary.display().to_string(),
        "nginx_workers": nginx.config.workers,
        "connection": args.connection,
        "sizes": args.sizes.iter().map(|s| format_size(*s)).collect::<Vec<_>>(),
        "connections": args.connections,
        "objects_per_size": args.objects,
        "budget_per_target": budget.describe(),
        "rounds": args.rounds,
        "nginx_requests": if args.signed { "signed" } else { "unsigned" },
        "verify_sha256": !common.no_verify,
        "seed": seed,
    });
    Ok(Section {
        name: "compare-nginx".into(),
        title: "Perch vs nginx (static files and proxy_cache)".into(),
        settings,
        workloads: results,
        comparisons,
        notes: vec![
            "nginx-static serves the objects from local files; nginx-proxy-cache is `proxy_cache` in front of the \
             origin (warmed, so it serves hits from its disk cache); Perch and the origin get SigV4-signed GETs, \
             nginx the same signed GETs with --nginx-signed (it ignores the signature), plain unsigned ones \
             without"
                .into(),
            "nginx runs with `sendfile off` (loopback sendfile stalls 40 ms per response otherwise)".into(),
        ],
    })
}

/// Parses the endpoints of `compare-nginx` into targets.
pub fn endpoints(args: &CompareArgs) -> anyhow::Result<(Target, Target)> {
    let mut perch = Target::new(
        PERCH,
        loopback_url(&args.perch).context("--perch")?,
        &args.nginx.bucket,
        Kind::S3,
    );
    if let Some(admin) = &args.perch_admin {
        perch.admin = Some(loopback_addr(admin).context("--perch-admin")?);
    }
    let origin = Target::new(
        ORIGIN,
        loopback_url(&args.origin).context("--origin")?,
        &args.nginx.bucket,
        Kind::S3,
    );
    Ok((perch, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_config() {
        let cfg = NginxConfig {
            prefix: "/tmp/x".into(),
            static_root: "/tmp/x/static".into(),
            static_port: 18080,
            proxy_port: 18081,
            origin: "127.0.0.1:5000".parse().unwrap(),
            workers: 2,
            as_root: true,
        };
        let text = cfg.render();
        for needle in [
            "user root root;",
            "daemon off;",
            "worker_processes 2;",
            "pid /tmp/x/nginx.pid;",
            "sendfile off;",
            "listen 127.0.0.1:18080;",
            "root /tmp/x/static;",
            "listen 127.0.0.1:18081;",
            "server 127.0.0.1:5000;",
            "proxy_cache perch_bench;",
            "proxy_cache_path /tmp/x/cache",
            "add_header X-Cache $upstream_cache_status;",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        // Balanced braces, and nothing listens beyond loopback.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        assert!(
            text.lines()
                .filter(|l| l.trim().starts_with("listen"))
                .all(|l| l.contains("127.0.0.1:"))
        );
        let cfg = NginxConfig { as_root: false, ..cfg };
        assert!(!cfg.render().contains("user root"));
    }
}
