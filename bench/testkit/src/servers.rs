//! Real servers on loopback for tests and benchmarks: moto, s3s-fs, the `perch` binary, the origin
//! proxy.
//!
//! Each is stopped when dropped, and panics when it cannot start: a test never skips.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key pair `perch serve` uses on loopback when none is configured.
pub const DEV_ACCESS_KEY_ID: &str = "perch-dev";
pub const DEV_SECRET_ACCESS_KEY: &str = "perch-dev-secret";

/// The key pair perch is given for a moto origin (moto accepts any).
pub const MOTO_ACCESS_KEY_ID: &str = "test";
pub const MOTO_SECRET_ACCESS_KEY: &str = "test";

/// A running `moto_server`, killed when dropped.
pub struct MotoServer {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: PathBuf,
}

impl MotoServer {
    /// Starts `moto_server` (from `$PERCH_MOTO_SERVER` or `PATH`) on a free loopback port.
    /// Panics with a clear message when it is missing or does not come up: never skips.
    pub fn start() -> MotoServer {
        let program = find_on_path("PERCH_MOTO_SERVER", "moto_server").unwrap_or_else(|| {
            panic!(
                "moto_server not found on PATH (nor in $PERCH_MOTO_SERVER): these tests need a real S3 server; \
                 install it with `pip install 'moto[server]'`"
            )
        });
        let port = free_port();
        let log = std::env::temp_dir().join(format!("perch-moto-{}-{port}.log", std::process::id()));
        let mut command = Command::new(&program);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let child = spawn_logged(command, &log);
        let mut server = MotoServer {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_ready(Duration::from_secs(60));
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, limit: Duration) {
        wait_answering(&mut self.child, self.port, "moto_server", &self.log, limit, answers);
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts `command` with no stdin and its stdout and stderr to the file `log`; panics when it
/// cannot.
fn spawn_logged(mut command: Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().unwrap_or_else(|e| panic!("clone log file handle: {e}"));
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {:?}: {e}", command.get_program()))
}

/// Waits until `child`, `name` logging to `log`, answers on loopback `port` (as `answers` says);
/// panics with its log when it exits first or does not answer within `limit`.
fn wait_answering(
    child: &mut Child,
    port: u16,
    name: &str,
    log: &Path,
    limit: Duration,
    answers: fn(SocketAddr) -> bool,
) {
    let start = Instant::now();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited with {status} before answering; log:\n{}", log_text());
        }
        if answers(addr) {
            return;
        }
        if start.elapsed() > limit {
            panic!(
                "{name} did not answer on port {port} within {limit:?}; log:\n{}",
                log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `s3s-fs` (s3s's file-system S3 server, which checks SigV4 signatures and serves a
/// range by reading only its bytes) over a directory of its own, with one key pair; killed and
/// its directory removed when dropped.
pub struct S3sFsServer {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: PathBuf,
    root: PathBuf,
}

impl S3sFsServer {
    /// Starts `s3s-fs` (from `$PERCH_S3S_FS` or `PATH`) on a free loopback port, taking requests
    /// signed with `access_key` and `secret_key`. Panics when it is missing or does not come up.
    pub fn start(access_key: &str, secret_key: &str) -> S3sFsServer {
        let program = find_on_path("PERCH_S3S_FS", "s3s-fs").unwrap_or_else(|| {
            panic!(
                "s3s-fs not found on PATH (nor in $PERCH_S3S_FS): install it with \
                 `cargo install s3s-fs --version 0.14.1 --features binary`"
            )
        });
        let port = free_port();
        let base = std::env::temp_dir().join(format!("perch-s3s-fs-{}-{port}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let log = base.join("log");
        let mut command = Command::new(&program);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(&root);
        let child = spawn_logged(command, &log);
        let mut server = S3sFsServer {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            root: base,
        };
        wait_answering(
            &mut server.child,
            port,
            "s3s-fs",
            &server.log,
            Duration::from_secs(30),
            answers_http,
        );
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for S3sFsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The origin proxy running in this process on its own runtime thread; stopped when dropped.
/// `control()` drives it.
pub struct ProxyServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProxyServer {
    /// Starts a proxy in front of `upstream` with extra `origin-proxy` flags (e.g. `["--latency-ms", "20"]`).
    pub fn start(upstream: &str, flags: &[&str]) -> ProxyServer {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: crate::origin_proxy::ProxyArgs,
        }
        let mut argv = vec![
            "origin-proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--seed",
            "1",
        ];
        argv.extend_from_slice(flags);
        let args = Wrapper::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("origin-proxy flags: {e}"))
            .args;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                match crate::origin_proxy::Proxy::bind(&args).await {
                    Ok(proxy) => {
                        let _ = addr_tx.send(Ok(proxy.local_addr()));
                        let _ = proxy
                            .serve(async {
                                let _ = stopped.await;
                            })
                            .await;
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(format!("{e:#}")));
                    }
                }
            });
        });
        let addr = match addr_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("origin proxy did not start: {e}"),
            Err(_) => panic!("origin proxy thread died"),
        };
        ProxyServer {
            addr,
            endpoint: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// A client of this proxy's control API.
    pub fn control(&self) -> crate::origin_proxy::ProxyControl {
        crate::origin_proxy::ProxyControl { addr: self.addr }
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU time (user + system) a process has used so far; `None` when /proc cannot tell.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // In clock ticks of USER_HZ, which Linux fixes at 100 a second for user space.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// A running `perch serve`, killed (SIGKILL) when dropped unless stopped first.
pub struct PerchServer {
    child: Option<Child>,
    /// The S3 listener.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub data_dir: PathBuf,
    log: PathBuf,
}

/// How to start `perch serve`.
pub struct PerchOptions {
    /// The `perch` binary (`perch_binary()`, or a test's `env!("CARGO_BIN_EXE_perch")`).
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    /// Extra flags, e.g. `["--origin", "http://127.0.0.1:PORT"]`.
    pub args: Vec<String>,
    /// Extra environment, e.g. origin keys.
    pub env: Vec<(String, String)>,
}

impl PerchServer {
    /// Starts perch on loopback ports chosen by the OS and waits until it serves.
    pub fn start(opts: PerchOptions) -> PerchServer {
        std::fs::create_dir_all(&opts.data_dir).unwrap_or_else(|e| panic!("create {}: {e}", opts.data_dir.display()));
        let log = opts.data_dir.with_extension("log");
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let mut cmd = Command::new(&opts.binary);
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(&opts.data_dir)
            .args(&opts.args)
            .env_remove("PERCH_ACCESS_KEY_ID")
            .env_remove("PERCH_SECRET_ACCESS_KEY")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", opts.binary.display()));
        let Some(stdout) = child.stdout.take() else {
            panic!("perch has no stdout pipe")
        };
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || !line.starts_with("listening ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "perch did not start (printed {line:?}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        let addr = field("s3=");
        let admin = field("admin=");
        PerchServer {
            child: Some(child),
            addr,
            admin,
            endpoint: format!("http://{addr}"),
            data_dir: opts.data_dir,
            log,
        }
    }

    /// Sends SIGTERM and waits for the exit status (at most `limit`, then SIGKILL and panic).
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        let Some(mut child) = self.child.take() else {
            panic!("perch already stopped")
        };
        signal(&child, "TERM");
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "perch did not exit within {limit:?} of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        if let Some(child) = &self.child {
            signal(child, "TERM");
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait(mut self, limit: Duration) -> std::process::ExitStatus {
        let Some(mut child) = self.child.take() else {
            panic!("perch already stopped")
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("perch did not exit within {limit:?}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for PerchServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
}

fn find_on_path(env: &str, program: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The `perch` binary a benchmark or a test of another package runs: `$PERCH_BIN`, else `perch`
/// beside the running program or one directory up (a test binary lives in `target/<profile>/deps`),
/// else `$CARGO_TARGET_DIR/release/perch`. It is not built here.
pub fn perch_binary() -> Result<PathBuf, NoPerchBinary> {
    if let Some(p) = std::env::var_os("PERCH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(NoPerchBinary::Exe)?;
    let mut candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("perch")).collect();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("release").join("perch"));
    }
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(NoPerchBinary::Missing(candidates)),
    }
}

/// Why `perch_binary` found none.
#[derive(Debug, thiserror::Error)]
pub enum NoPerchBinary {
    #[error("no perch binary: the running program's path is unknown")]
    Exe(#[source] std::io::Error),
    #[error(
        "no perch binary (looked at {0:?}): build it with `cargo build --release -p perch-gateway` \
         (cargo test --workspace builds it), or set PERCH_BIN"
    )]
    Missing(Vec<PathBuf>),
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("bind a loopback port: {e}"))
}

/// Whether moto answers `GET /` on `addr` (its bucket list): any other server that took the port
/// between `free_port` and moto's start (another test's Perch binding port 0) would pass a plain
/// "answers HTTP" check, and the test would talk to it while moto exits unable to bind.
/// The first bytes (up to 64 KiB) of the answer to `GET /` on `addr`, if any.
fn root_answer(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.").then_some(answer)
}

/// Whether an HTTP server answers on `addr` (s3s-fs refuses the unsigned request).
fn answers_http(addr: SocketAddr) -> bool {
    root_answer(addr).is_some()
}

/// Whether an S3 server that lists buckets unsigned (moto) answers on `addr`.
fn answers(addr: SocketAddr) -> bool {
    root_answer(addr).is_some_and(|a| a.windows(22).any(|w| w == b"ListAllMyBucketsResult"))
}
