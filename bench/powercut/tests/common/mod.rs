//! Mounting the real binary over FUSE in a temporary directory, for the integration tests.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_perch-powercut");
pub const PAGE: usize = 4096;

/// Why this machine cannot run the FUSE tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: plain call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the FUSE tests mount with mount(2) and need root".into());
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse is unusable: {e}"));
    }
    None
}

/// Returns early (the test passes) with a clear message when FUSE cannot be used here, or fails
/// when `PERCH_PRIVILEGED_TESTS=required` (CI, where these tests must run).
#[macro_export]
macro_rules! require_fuse {
    () => {
        if let Some(reason) = common::skip_reason() {
            if std::env::var("PERCH_PRIVILEGED_TESTS").as_deref() == Ok("required") {
                panic!("PERCH_PRIVILEGED_TESTS=required, but this test cannot run here: {reason}");
            }
            eprintln!("SKIPPED (not run): {reason}");
            return;
        }
    };
}

/// A backing directory, a mountpoint and a control socket in a temporary directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub ctl: PathBuf,
    pub log: PathBuf,
}

/// A running daemon; dropping it (say, when a test fails) kills it and lazily unmounts.
pub struct Daemon {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            // Ended on purpose (`wait`, `kill`): the mount is the test's business.
            return;
        };
        let _ = c.kill();
        let _ = c.wait();
        unmount(&self.mnt);
    }
}

impl Daemon {
    /// Waits for the process to end (after a cut or shutdown) and returns whether it succeeded.
    pub fn wait(mut self) -> bool {
        let mut c = self.child.take().expect("running");
        for _ in 0..500 {
            if let Some(status) = c.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the daemon did not exit after the cut");
    }

    /// SIGKILL: the daemon dies and leaves a stale mount.
    pub fn kill(mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().expect("kill");
        c.wait().expect("wait");
    }
}

/// Unmounts, lazily, whatever a failed test left at `path`.
fn unmount(path: &Path) {
    if let Ok(path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

impl Harness {
    pub fn new() -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("powercut-test")
            .tempdir()
            .expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        let ctl = dir.path().join("ctl.sock");
        let log = dir.path().join("daemon.log");
        Harness {
            dir,
            backing,
            mnt,
            ctl,
            log,
        }
    }

    /// Starts `perch-powercut mount` and waits for its `mounted` line.
    pub fn mount(&self) -> Daemon {
        self.try_mount().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `mount`, but returns the daemon's complaint if it exits without mounting.
    pub fn try_mount(&self) -> Result<Daemon, String> {
        self.try_mount_with(&[], &[])
    }

    /// `try_mount` with extra flags for `mount` (e.g. `--forward-fsync`) and environment.
    pub fn try_mount_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Result<Daemon, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut child = Command::new(BIN)
            .arg("mount")
            .args(extra)
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mountpoint")
            .arg(&self.mnt)
            .arg("--control")
            .arg(&self.ctl)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn perch-powercut");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep draining so the daemon never blocks on stdout.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) if line.starts_with("mounted ") => Ok(Daemon {
                child: Some(child),
                mnt: self.mnt.clone(),
            }),
            other => {
                // Not a Daemon: dropping one would unmount whatever is mounted there.
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "no `mounted` line ({other:?}); daemon log:\n{}",
                    self.daemon_log()
                ))
            }
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a control command through the CLI; returns (success, stdout lines, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, Vec<String>, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--control")
            .arg(&self.ctl)
            .output()
            .expect("run cli");
        let stdout = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        (
            out.status.success(),
            stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Cuts the power with `seed` (and `mode`, a/b/c, if given) and waits for the daemon to go.
    pub fn cut(&self, daemon: Daemon, seed: u64, mode: Option<&str>) -> Vec<String> {
        let seed = seed.to_string();
        let mut args = vec!["cut", "--seed", &seed];
        if let Some(m) = mode {
            args.extend(["--mode", m]);
        }
        let (ok, lines, err) = self.cli(&args);
        assert!(ok, "cut failed: {err}\n{lines:?}\ndaemon log:\n{}", self.daemon_log());
        assert!(daemon.wait(), "daemon failed after the cut:\n{}", self.daemon_log());
        lines
    }

    /// Cuts and mounts a fresh daemon over the result.
    pub fn cut_and_remount(&self, daemon: Daemon, seed: u64, mode: Option<&str>) -> (Daemon, Vec<String>) {
        let lines = self.cut(daemon, seed, mode);
        (self.mount(), lines)
    }

    pub fn status(&self) -> Vec<String> {
        let (ok, lines, err) = self.cli(&["status"]);
        assert!(ok, "status failed: {err}");
        lines
    }

    pub fn shutdown(&self, daemon: Daemon) {
        let (ok, _, err) = self.cli(&["shutdown"]);
        assert!(ok, "shutdown failed: {err}");
        assert!(daemon.wait());
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

/// fsync of a file or directory.
pub fn fsync(path: &Path) {
    File::open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .sync_all()
        .expect("fsync");
}

/// Writes `data` to a new file, fsyncing it if asked.
pub fn write(path: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).expect("write");
    if sync {
        f.sync_all().expect("fsync");
    }
}

pub fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

/// The sorted names in a directory.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `n` pages, page `i` filled with byte `fill(i)`.
pub fn pages(n: usize, fill: impl Fn(usize) -> u8) -> Vec<u8> {
    (0..n).flat_map(|i| std::iter::repeat_n(fill(i), PAGE)).collect()
}

/// The line of a cut report that starts with `prefix`.
pub fn line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"))
}
