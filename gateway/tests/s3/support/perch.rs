//! Starting this package's `perch` binary for a test, and what a test reads off a running perch.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perch_testkit::bodies::md5_etag;
use perch_testkit::origin_proxy::ProxyControl;
use perch_testkit::raw_client::{Req, Style, key_path};
use perch_testkit::servers::{MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY, MotoServer, PerchOptions, PerchServer};
use perch_testkit::sigv4::Keys;

use super::machine;

/// The `perch` binary cargo built for these tests, or `$PERCH_TEST_BIN` (another build, e.g. one
/// without a fix, to watch its test fail; `perch-powercut` is looked for beside it).
pub fn perch_binary() -> PathBuf {
    std::env::var_os("PERCH_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_perch")))
}

/// Flags and environment that point perch at the S3 origin `endpoint` (moto, or the origin proxy
/// in front of it). The signing region is named (moto's us-east-1): with the default (`auto`)
/// perch would ask the origin for it at start (buckets.rs tests that).
pub fn s3_origin(endpoint: &str) -> (Vec<String>, Vec<(String, String)>) {
    (
        vec![
            "--origin".to_owned(),
            endpoint.to_owned(),
            "--origin-region".to_owned(),
            "us-east-1".to_owned(),
        ],
        moto_keys_env(),
    )
}

/// The environment giving perch moto's keys for its origin requests.
pub fn moto_keys_env() -> Vec<(String, String)> {
    vec![
        ("PERCH_ORIGIN_ACCESS_KEY_ID".to_owned(), MOTO_ACCESS_KEY_ID.to_owned()),
        (
            "PERCH_ORIGIN_SECRET_ACCESS_KEY".to_owned(),
            MOTO_SECRET_ACCESS_KEY.to_owned(),
        ),
    ]
}

/// Starts perch on `data_dir` with `args` and `env` (its log in plain text), once the test has
/// its turn on the machine.
#[track_caller]
pub fn start_with(data_dir: &Path, args: Vec<String>, mut env: Vec<(String, String)>) -> PerchServer {
    machine::assert_turn_taken();
    env.push(("NO_COLOR".to_owned(), "1".to_owned()));
    PerchServer::start(PerchOptions {
        binary: perch_binary(),
        data_dir: data_dir.to_owned(),
        args,
        env,
    })
}

/// Starts perch on `data_dir`, in front of the S3 origin at `origin` when given (the directory
/// origin otherwise), with `extra` flags such as `--role replica`.
#[track_caller]
pub fn start_perch(data_dir: &Path, origin: Option<&str>, extra: &[&str]) -> PerchServer {
    let (mut args, env) = origin.map(s3_origin).unwrap_or_default();
    args.extend(extra.iter().map(|s| s.to_string()));
    start_with(data_dir, args, env)
}

/// A perch on a fresh data dir (removed with it).
pub struct Perch {
    pub server: PerchServer,
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Perch {
    /// Perch with the directory origin.
    #[track_caller]
    pub fn dir(args: &[&str]) -> Perch {
        Perch::start(args, Vec::new())
    }

    /// Perch in front of an S3 endpoint (moto, or the proxy in front of moto).
    #[track_caller]
    pub fn s3(endpoint: &str, args: &[&str]) -> Perch {
        let (mut all, env) = s3_origin(endpoint);
        all.extend(args.iter().map(|s| s.to_string()));
        Perch::on_fresh_dir(all, env)
    }

    /// Perch with the directory origin, `args` and `env`.
    #[track_caller]
    pub fn start(args: &[&str], env: Vec<(String, String)>) -> Perch {
        Perch::on_fresh_dir(args.iter().map(|s| s.to_string()).collect(), env)
    }

    #[track_caller]
    fn on_fresh_dir(args: Vec<String>, env: Vec<(String, String)>) -> Perch {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("perch");
        let server = start_with(&data_dir, args, env);
        Perch {
            server,
            data_dir,
            _tmp: tmp,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Waits for perch to exit by itself (after a signal), keeping its data dir until then.
    pub fn wait(self, limit: Duration) -> std::process::ExitStatus {
        let Perch { server, _tmp, .. } = self;
        server.wait(limit)
    }

    /// The process id of this perch.
    pub fn pid(&self) -> u32 {
        self.server.pid().expect("perch is running")
    }

    /// The last lines of perch's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.server.log_text())
    }

    /// Prints the end of perch's log if the test panics (keep it after `self`: `let _log = ...`).
    pub fn log_on_panic(&self) -> LogOnPanic {
        LogOnPanic::new("perch", self.server.log_path())
    }

    /// Entries in `<data-dir>/tmp` (perch's body spool).
    pub fn spool_entries(&self) -> Vec<String> {
        let dir = self.data_dir.join("tmp");
        match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => panic!("read {}: {e}", dir.display()),
        }
    }
}

/// The last 60 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Prints the end of perch's log, and the origin proxy's last records when there is one, if the
/// test panics. It owns what it reads, so that perch can be restarted while it lives; the log is
/// `<data-dir>.log`, so it must be dropped before the data dir's parent (declare it after).
pub struct LogOnPanic {
    what: String,
    log: PathBuf,
    proxy: Option<ProxyControl>,
}

impl LogOnPanic {
    pub fn new(what: &str, log: &Path) -> LogOnPanic {
        LogOnPanic {
            what: what.to_owned(),
            log: log.to_owned(),
            proxy: None,
        }
    }

    /// Also prints the last records of the origin proxy.
    pub fn with_proxy(mut self, proxy: ProxyControl) -> LogOnPanic {
        self.proxy = Some(proxy);
        self
    }
}

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprintln!("--- {}: perch's log (tail) ---\n{}", self.what, tail(&log));
        if let Some(proxy) = self.proxy {
            // The proxy may be what failed: a panic here must not abort the test process.
            let records = std::panic::catch_unwind(|| proxy.log());
            if let Ok(records) = records {
                eprintln!("--- the origin proxy's records (tail) ---");
                for r in records.iter().rev().take(30).rev() {
                    eprintln!("{r}");
                }
            }
        }
    }
}

/// An unsigned GET on perch's admin listener: (status, body).
#[track_caller]
pub fn admin_get(perch: &PerchServer, path: &str) -> (u16, String) {
    let r = Req::unsigned("GET", perch.admin, path)
        .send(perch.admin)
        .unwrap_or_else(|e| panic!("admin GET {path}: {e}"));
    (r.status, r.text())
}

/// The sum of every sample of metric `name` (any labels) in a Prometheus/OpenMetrics text; `name`
/// may carry labels itself (`perch_uploads_total{result="retried"}`).
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// One metric of a running perch, summed over its labels; `None` when it has no sample yet.
#[track_caller]
pub fn perch_metric(perch: &PerchServer, name: &str) -> Option<f64> {
    let (status, text) = admin_get(perch, "/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    metric_sum(&text, name)
}

/// `perch flush` against `perch`: returns once everything it acknowledged is in the origin
/// (panics after `limit`).
#[track_caller]
pub fn flush(perch: &PerchServer, limit: Duration) {
    let out = std::process::Command::new(perch_binary())
        .args(["flush", "--admin", &perch.admin.to_string(), "--timeout"])
        .arg(format!("{}s", limit.as_secs()))
        .output()
        .expect("run perch flush");
    assert!(
        out.status.success(),
        "perch flush failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PUT `key` of the OrioleDB bucket straight into moto (past any proxy and perch): an object the
/// origin has and perch's cache does not.
#[track_caller]
pub fn put_into_moto(moto: &MotoServer, key: &str, body: &[u8]) {
    let addr = SocketAddr::from(([127, 0, 0, 1], moto.port));
    let r = Req::object("PUT", addr, Style::Path, &key_path(key))
        .keys(Some(Keys::new(MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)))
        .body(body.to_vec())
        .go(addr);
    assert_eq!(r.status, 200, "PUT {key} into moto: {}", r.summary());
    assert_eq!(r.header("ETag"), Some(md5_etag(body).as_str()), "PUT {key} into moto");
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns whether it became true.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
