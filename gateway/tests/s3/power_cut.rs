//! Power cuts: Perch on the power-cut filesystem (bench/powercut) under an OrioleDB-shaped
//! workload, cut at random moments (and at fail points inside a commit), restarted on what
//! survived: nothing acknowledged is lost, nothing is resurrected, barriers never pass their data.
//!
//! `PERCH_POWER_CUTS` sets the number of cuts (20 in CI; `bench/soak-power-cut.sh` runs 200).
//! `PERCH_POWER_SEED` starts the seeds elsewhere; a failing cut names its seed, and
//! `PERCH_POWER_SEED=<seed> PERCH_POWER_CUTS=1` replays that cut's decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use perch_testkit::bodies::{content_md5, pattern};
use perch_testkit::origin_proxy::ProxyControl;
use perch_testkit::raw_client::{BUCKET, Req, Style, key_path};
use perch_testkit::servers::{MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY, MotoServer, PerchServer, ProxyServer};
use perch_testkit::sigv4::Keys;

use crate::support::machine;
use crate::support::perch::{flush, moto_keys_env, start_with, wait_until};
use crate::support::raw::create_bucket;

/// What a key holds: its body, or nothing.
type State = Option<Vec<u8>>;

/// Why this machine cannot mount the power-cut filesystem, if it cannot.
fn fuse_unusable() -> Option<String> {
    // SAFETY: a plain call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting FUSE with mount(2) needs root".into());
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Some(format!("/dev/fuse is unusable: {e}"));
    }
    None
}

/// The machine to this test alone, where the power-cut filesystem can be mounted; `None` (the
/// test is skipped, or fails under `PERCH_PRIVILEGED_TESTS=required`) where it cannot.
fn turn_with_fuse() -> Option<machine::Turn> {
    if let Some(why) = fuse_unusable() {
        perch_testkit::skip_unprivileged(&why);
        return None;
    }
    Some(machine::alone())
}

fn powercut_binary() -> PathBuf {
    let bin = crate::support::perch::perch_binary().with_file_name("perch-powercut");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release -p perch-powercut`",
        bin.display()
    );
    bin
}

/// moto behind the recording proxy, and Perch with its data dir on the power-cut filesystem.
struct Rig {
    dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    ctl: PathBuf,
    daemon: Option<Child>,
    perch: Option<PerchServer>,
    proxy: ProxyControl,
    _proxy: ProxyServer,
    _moto: MotoServer,
    /// Extra environment of Perch for its next start (fail points, unsafe sync switches).
    env: Vec<(String, String)>,
    /// Cut in this mode (`a`, `b`, `c`, `d`) rather than the one the seed picks.
    mode: Option<&'static str>,
    /// `--cache-disk-bytes`.
    cache_disk_bytes: &'static str,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.perch = None;
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        detach(&self.mnt);
    }
}

fn detach(mnt: &Path) {
    if let Ok(path) = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Rig {
    fn start(env: Vec<(String, String)>) -> Rig {
        Rig::start_with(env, "64MiB")
    }

    fn start_with(env: Vec<(String, String)>, cache_disk_bytes: &'static str) -> Rig {
        let moto = MotoServer::start();
        let proxy = ProxyServer::start(&moto.endpoint, &[]);
        let dir = tempfile::Builder::new()
            .prefix("perch-power")
            .tempdir()
            .expect("tempdir");
        let mut rig = Rig {
            backing: dir.path().join("backing"),
            mnt: dir.path().join("mnt"),
            ctl: dir.path().join("ctl.sock"),
            dir,
            daemon: None,
            perch: None,
            proxy: proxy.control(),
            _proxy: proxy,
            _moto: moto,
            env,
            mode: None,
            cache_disk_bytes,
        };
        std::fs::create_dir_all(&rig.backing).expect("backing");
        std::fs::create_dir_all(&rig.mnt).expect("mountpoint");
        rig.mount();
        rig.start_perch().unwrap_or_else(|e| panic!("{e}"));
        create_bucket(rig.addr());
        // Uploads a little slow, so that a cut finds a backlog.
        rig.proxy.faults(r#"{"latency_ms": 10}"#);
        rig
    }

    fn addr(&self) -> SocketAddr {
        self.perch.as_ref().expect("perch runs").addr
    }

    fn perch(&self) -> &PerchServer {
        self.perch.as_ref().expect("perch runs")
    }

    fn mount(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("powercut.log"))
            .expect("log");
        let mut child = Command::new(powercut_binary())
            .arg("mount")
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mountpoint")
            .arg(&self.mnt)
            .arg("--control")
            .arg(&self.ctl)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn perch-powercut");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) if line.starts_with("mounted ") => self.daemon = Some(child),
            other => {
                let _ = child.kill();
                panic!(
                    "perch-powercut did not mount ({other:?}):\n{}",
                    std::fs::read_to_string(self.dir.path().join("powercut.log")).unwrap_or_default()
                );
            }
        }
    }

    /// Starts Perch on the mount; `Err` (with its log) when it refuses to start.
    fn start_perch(&mut self) -> Result<(), String> {
        let data_dir = self.mnt.join("perch");
        let mut env = moto_keys_env();
        env.extend(self.env.iter().cloned());
        let args = vec![
            "--origin".into(),
            format!("http://{}", self.proxy.addr),
            "--origin-region".into(),
            "us-east-1".into(),
            "--cache-disk-bytes".into(),
            self.cache_disk_bytes.into(),
            "--upload-concurrency".into(),
            "4".into(),
        ];
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start_with(&data_dir, args, env)));
        match started {
            Ok(p) => {
                self.perch = Some(p);
                Ok(())
            }
            Err(e) => Err(e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "perch did not start".into())),
        }
    }

    /// Kills Perch (kill -9) and starts it again, with the current environment.
    fn restart(&mut self) {
        if let Some(perch) = self.perch.take() {
            perch.kill();
        }
        self.start_perch().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Cuts the power: Perch dies with what it did not sync, and starts again on the image
    /// (`Err`: it refused to start, with its log). Returns the cut's report.
    fn cut(&mut self, seed: u64) -> (String, Result<(), String>) {
        if let Some(p) = self.perch.take() {
            p.kill();
        }
        let mut cmd = Command::new(powercut_binary());
        cmd.args(["cut", "--seed", &seed.to_string()]);
        if let Some(mode) = self.mode {
            cmd.args(["--mode", mode]);
        }
        let out = cmd
            .arg("--control")
            .arg(&self.ctl)
            .output()
            .expect("run perch-powercut cut");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cut {seed} failed: {report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(mut d) = self.daemon.take() {
            let _ = d.wait();
        }
        self.mount();
        (report, self.start_perch())
    }

    fn get(&self, key: &str) -> State {
        let r = Req::object("GET", self.addr(), Style::Path, &key_path(key)).go(self.addr());
        match r.status {
            200 => Some(r.body),
            404 => None,
            _ => panic!("GET {key}: {}", r.summary()),
        }
    }
}

/// A worker's keys and what each may hold: after an acknowledged write exactly its state; after
/// an unanswered one (the cut came first), either.
#[derive(Default)]
struct Model {
    states: BTreeMap<String, Vec<State>>,
    /// Checkpoints: the data parts acknowledged before each barrier was sent.
    barriers: BTreeMap<String, Vec<String>>,
}

impl Model {
    fn keys(&self) -> Vec<String> {
        self.states.keys().cloned().collect()
    }

    fn acked(&mut self, key: &str, state: State) {
        self.states.insert(key.to_owned(), vec![state]);
    }

    fn unanswered(&mut self, key: &str, state: State) {
        self.states
            .entry(key.to_owned())
            .or_insert_with(|| vec![None])
            .push(state);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one request did: answered (with its status), or cut.
enum Answer {
    Status(u16),
    Cut,
}

fn send(req: Req, addr: SocketAddr) -> Answer {
    match req.send(addr) {
        Ok(r) => Answer::Status(r.status),
        Err(_) => Answer::Cut,
    }
}

/// Random PUTs, overwrites and DELETEs of data parts and an undo file, read back now and then.
fn data_worker(addr: SocketAddr, model: Arc<Mutex<Model>>, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed | 1);
    let keys = model.lock().expect("model").keys();
    while !stop.load(Ordering::SeqCst) {
        let key = &keys[rng.below(keys.len() as u64) as usize];
        let state: State = if rng.below(100) < 15 {
            None
        } else {
            let len = match rng.below(10) {
                0 => 1 << 20,
                1 => (1 << 20) + rng.below(1 << 20) as usize,
                _ => rng.below(96 << 10) as usize,
            };
            Some(pattern(len, rng.next()))
        };
        let req = match &state {
            None => Req::object("DELETE", addr, Style::Path, &key_path(key)),
            Some(b) => Req::object("PUT", addr, Style::Path, &key_path(key)).body(b.clone()),
        };
        match send(req, addr) {
            Answer::Status(200 | 204) => {
                model.lock().expect("model").acked(key, state.clone());
                if rng.below(4) == 0 {
                    let r = Req::object("GET", addr, Style::Path, &key_path(key)).send(addr);
                    if let Ok(r) = r {
                        let got = (r.status == 200).then_some(r.body);
                        assert!(r.status == 200 || r.status == 404, "GET {key} answered {}", r.status);
                        assert_eq!(
                            got, state,
                            "{key}: a read after an acknowledged write saw something else"
                        );
                    }
                }
            }
            Answer::Status(s) => panic!("{key}: perch answered {s}"),
            Answer::Cut => {
                model.lock().expect("model").unanswered(key, state);
                return;
            }
        }
    }
}

/// Checkpoints as OrioleDB writes them: data parts, the WAL segment (write-through), the
/// checkpoint's control file and the root control file (barriers).
fn checkpoint_worker(addr: SocketAddr, model: Arc<Mutex<Model>>, seed: u64, first: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed | 1);
    let mut n = first;
    while !stop.load(Ordering::SeqCst) {
        let mut acked = Vec::new();
        for p in 0..3 {
            let key = format!("orioledb_data/ck{n}/{p}");
            let body = pattern(rng.below(300_000) as usize, rng.next());
            match send(
                Req::object("PUT", addr, Style::Path, &key_path(&key)).body(body.clone()),
                addr,
            ) {
                Answer::Status(200) => {
                    model.lock().expect("model").acked(&key, Some(body));
                    acked.push(key);
                }
                Answer::Status(s) => panic!("{key}: perch answered {s}"),
                Answer::Cut => return model.lock().expect("model").unanswered(&key, Some(body)),
            }
        }
        let steps = [
            (format!("wal/{n:024}"), pattern(rng.below(200_000) as usize, rng.next())),
            (format!("data/{n}/global/pg_control"), pattern(512, rng.next())),
            ("data/orioledb_data/control".to_owned(), pattern(256, rng.next())),
        ];
        for (i, (key, body)) in steps.into_iter().enumerate() {
            if i == 1 {
                model.lock().expect("model").barriers.insert(key.clone(), acked.clone());
            }
            match send(
                Req::object("PUT", addr, Style::Path, &key_path(&key)).body(body.clone()),
                addr,
            ) {
                Answer::Status(200) => model.lock().expect("model").acked(&key, Some(body)),
                Answer::Status(s) => panic!("{key}: perch answered {s}"),
                Answer::Cut => return model.lock().expect("model").unanswered(&key, Some(body)),
            }
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// OrioleDB's lock: a conditional PUT (If-None-Match: *), then its DELETE (a barrier); and
/// DeleteObjects of keys written just before.
fn lock_worker(addr: SocketAddr, model: Arc<Mutex<Model>>, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = Rng(seed | 1);
    let lock = "data/orioledb_data/s3_lock";
    while !stop.load(Ordering::SeqCst) {
        let body = pattern(64, rng.next());
        let put = Req::object("PUT", addr, Style::Path, &key_path(lock))
            .header("If-None-Match", "*")
            .body(body.clone());
        match send(put, addr) {
            Answer::Status(200) => model.lock().expect("model").acked(lock, Some(body)),
            Answer::Status(412) => {
                let m = model.lock().expect("model");
                let held = &m.states[lock];
                assert!(
                    held.iter().any(Option::is_some),
                    "412 on the lock, which no acknowledged write left in place"
                );
            }
            Answer::Status(s) => panic!("lock PUT: perch answered {s}"),
            Answer::Cut => return model.lock().expect("model").unanswered(lock, Some(body)),
        }
        match send(Req::object("DELETE", addr, Style::Path, &key_path(lock)), addr) {
            Answer::Status(204) => model.lock().expect("model").acked(lock, None),
            Answer::Status(s) => panic!("lock DELETE: perch answered {s}"),
            Answer::Cut => return model.lock().expect("model").unanswered(lock, None),
        }
        // Two objects, then one DeleteObjects for both.
        let pair = ["orioledb_data/tmp/a", "orioledb_data/tmp/b"];
        for key in pair {
            let body = pattern(rng.below(50_000) as usize, rng.next());
            match send(
                Req::object("PUT", addr, Style::Path, &key_path(key)).body(body.clone()),
                addr,
            ) {
                Answer::Status(200) => model.lock().expect("model").acked(key, Some(body)),
                Answer::Status(s) => panic!("{key}: perch answered {s}"),
                Answer::Cut => return model.lock().expect("model").unanswered(key, Some(body)),
            }
        }
        let xml = format!(
            "<Delete><Quiet>true</Quiet><Object><Key>{}</Key></Object><Object><Key>{}</Key></Object></Delete>",
            pair[0], pair[1]
        );
        let req = Req::bucket("POST", addr, Style::Path, "delete")
            .header("Content-MD5", &content_md5(xml.as_bytes()))
            .body(xml.into_bytes());
        match send(req, addr) {
            Answer::Status(200) => {
                let mut m = model.lock().expect("model");
                m.acked(pair[0], None);
                m.acked(pair[1], None);
            }
            Answer::Status(s) => panic!("DeleteObjects: perch answered {s}"),
            Answer::Cut => {
                let mut m = model.lock().expect("model");
                m.unanswered(pair[0], None);
                m.unanswered(pair[1], None);
                return;
            }
        }
    }
}

/// What the soak found wrong: keys whose state is not one the model allows, a Perch that refused
/// to start, and barriers that reached the origin before their data.
#[derive(Debug, Default)]
struct Findings {
    lost: Vec<String>,
    refused_start: Vec<String>,
    barriers: Vec<String>,
}

impl Findings {
    fn any(&self) -> bool {
        !(self.lost.is_empty() && self.refused_start.is_empty() && self.barriers.is_empty())
    }
}

/// Reads `keys` through Perch; a state the model does not allow is a finding. From then on the
/// observed state is the only allowed one.
fn check(rig: &Rig, model: &Mutex<Model>, keys: &[String], cut: u64, findings: &mut Findings) {
    let mut m = model.lock().expect("model");
    for key in keys {
        let got = rig.get(key);
        let allowed = &m.states[key];
        if !allowed.contains(&got) {
            findings.lost.push(format!(
                "cut {cut}: {key} holds {:?} bytes, allowed {:?}",
                got.as_ref().map(Vec::len),
                allowed.iter().map(|a| a.as_ref().map(Vec::len)).collect::<Vec<_>>()
            ));
        }
        m.states.insert(key.clone(), vec![got]);
    }
}

/// The origin's log, in the order moto answered: the first confirmed upload of each data part
/// precedes the first of its checkpoint's barrier.
fn check_barriers(rig: &Rig, model: &Model) -> Vec<String> {
    let log = rig.proxy.call("GET", "/__proxy/log", "");
    let mut confirmed: BTreeSet<String> = BTreeSet::new();
    let mut violations = Vec::new();
    for r in log.as_array().into_iter().flatten() {
        if r["method"] != "PUT" || r["status"] != 200 {
            continue;
        }
        let Some(key) = r["key"].as_str() else { continue };
        if let Some(parts) = model.barriers.get(key)
            && !confirmed.contains(key)
        {
            for p in parts.iter().filter(|p| !confirmed.contains(*p)) {
                violations.push(format!("{key} reached the origin before {p}"));
            }
        }
        confirmed.insert(key.to_owned());
    }
    violations
}

/// A model holding `keys` with the states `model` allows for them.
fn share(model: &Mutex<Model>, keys: impl IntoIterator<Item = String>) -> Arc<Mutex<Model>> {
    let m = model.lock().expect("model");
    let mut own = Model::default();
    for k in keys {
        let states = m.states.get(&k).cloned().unwrap_or_else(|| vec![None]);
        own.states.insert(k, states);
    }
    Arc::new(Mutex::new(own))
}

/// Runs `cuts` power cuts, seeds `first_seed..`, and returns what went wrong. `fail_points`: every
/// third cut first kills Perch at a step of a commit.
fn soak(rig: &mut Rig, cuts: u64, first_seed: u64, fail_points: bool) -> Findings {
    let mut findings = Findings::default();
    let model = Arc::new(Mutex::new(Model::default()));
    let fixed: Vec<String> = (0..2)
        .flat_map(|w| {
            (0..5)
                .map(move |i| format!("orioledb_data/{w}/{i}"))
                .chain([format!("orioledb_undo/{w}")])
        })
        .chain(
            [
                "data/orioledb_data/s3_lock",
                "data/orioledb_data/control",
                "orioledb_data/tmp/a",
                "orioledb_data/tmp/b",
            ]
            .map(str::to_owned),
        )
        .collect();
    for k in &fixed {
        model.lock().expect("model").acked(k, None);
    }
    let points = ["blob_synced", "blob_renamed", "dir_synced", "batch_committed"];
    for c in 0..cuts {
        let seed = first_seed + c;
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let point = (fail_points && c % 3 == 2).then(|| points[(c / 3) as usize % points.len()]);
        if let Some(p) = point {
            rig.env.push(("PERCH_FAIL_POINT".into(), p.into()));
            rig.restart();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let addr = rig.addr();
        let mut handles = Vec::new();
        for w in 0..2 {
            let own = share(
                &model,
                (0..5)
                    .map(|i| format!("orioledb_data/{w}/{i}"))
                    .chain([format!("orioledb_undo/{w}")]),
            );
            let (m, s, sd) = (own.clone(), stop.clone(), rng.next());
            handles.push((own, std::thread::spawn(move || data_worker(addr, m, sd, s))));
        }
        let ck = share(&model, ["data/orioledb_data/control".to_owned()]);
        let (m, s, sd, first) = (ck.clone(), stop.clone(), rng.next(), 1000 * (c + 1));
        handles.push((ck, std::thread::spawn(move || checkpoint_worker(addr, m, sd, first, s))));
        let lk = share(
            &model,
            [
                "data/orioledb_data/s3_lock",
                "orioledb_data/tmp/a",
                "orioledb_data/tmp/b",
            ]
            .map(str::to_owned),
        );
        let (m, s, sd) = (lk.clone(), stop.clone(), rng.next());
        handles.push((lk, std::thread::spawn(move || lock_worker(addr, m, sd, s))));

        std::thread::sleep(Duration::from_millis(200 + rng.below(1200)));
        let (report, started) = rig.cut(seed);
        stop.store(true, Ordering::SeqCst);
        let mut touched: Vec<String> = fixed.clone();
        for (own, h) in handles {
            if let Err(e) = h.join() {
                panic!("cut {seed}: a worker failed: {e:?}");
            }
            let own = Arc::try_unwrap(own)
                .ok()
                .expect("worker done")
                .into_inner()
                .expect("model");
            touched.extend(own.states.keys().cloned());
            let mut m = model.lock().expect("model");
            m.states.extend(own.states);
            m.barriers.extend(own.barriers);
        }
        let mode = report
            .lines()
            .find(|l| l.starts_with("mode "))
            .unwrap_or("mode ?")
            .to_owned();
        eprintln!(
            "cut {seed} ({mode}{}): {} keys to check",
            point.map(|p| format!(", killed at {p} first")).unwrap_or_default(),
            touched.len()
        );
        if let Err(e) = started {
            findings.refused_start.push(format!("cut {seed} ({mode}): {e}"));
            return findings;
        }
        if point.is_some() {
            rig.env.retain(|(k, _)| k != "PERCH_FAIL_POINT");
            rig.restart();
        }
        touched.sort();
        touched.dedup();
        check(rig, &model, &touched, seed, &mut findings);
    }
    // Everything acknowledged ends in the origin, as Perch serves it.
    let all = model.lock().expect("model").keys();
    check(rig, &model, &all, u64::MAX, &mut findings);
    flush(rig.perch(), Duration::from_secs(300));
    let moto_addr = SocketAddr::from(([127, 0, 0, 1], rig._moto.port));
    let m = model.lock().expect("model");
    for key in &all {
        let r = Req::object("GET", moto_addr, Style::Path, &key_path(key))
            .keys(Some(Keys::new(MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)))
            .go(moto_addr);
        let at_origin = (r.status == 200).then_some(r.body);
        if at_origin != m.states[key][0] {
            findings.lost.push(format!(
                "{key}: the origin holds {:?} bytes where Perch served {:?}",
                at_origin.as_ref().map(Vec::len),
                m.states[key][0].as_ref().map(Vec::len)
            ));
        }
    }
    findings.barriers = check_barriers(rig, &m);
    findings
}

fn cuts_from_env(default: u64) -> u64 {
    std::env::var("PERCH_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn power_cuts_lose_nothing_acknowledged_and_keep_barrier_order() {
    let Some(_turn) = turn_with_fuse() else {
        return;
    };
    let seed = std::env::var("PERCH_POWER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rig = Rig::start(Vec::new());
    let f = soak(&mut rig, cuts_from_env(20), seed, true);
    assert!(!f.any(), "the power-cut soak found:\n{f:#?}");
}

/// The harness can fail: with one kind of sync removed (a test-only switch), cuts that drop
/// everything unsynced (mode a) find what was lost, or Perch refuses to start without it.
#[test]
fn the_soak_reports_a_loss_when_a_sync_is_removed() {
    let Some(_turn) = turn_with_fuse() else {
        return;
    };
    for what in ["blob", "dir", "journal"] {
        let mut rig = Rig::start(vec![("PERCH_UNSAFE_SKIP_SYNC".to_owned(), what.to_owned())]);
        rig.mode = Some("a");
        let f = soak(&mut rig, 5, 100, false);
        assert!(
            f.any(),
            "without the {what} sync, five cuts lost nothing: the soak cannot see it"
        );
        eprintln!("without the {what} sync: {f:#?}");
    }
}

fn flush_quietly(rig: &Rig) {
    flush(rig.perch(), Duration::from_secs(60));
}

fn moto_state(rig: &Rig, key: &str) -> State {
    let moto_addr = SocketAddr::from(([127, 0, 0, 1], rig._moto.port));
    let r = Req::object("GET", moto_addr, Style::Path, &key_path(key))
        .keys(Some(Keys::new(MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)))
        .go(moto_addr);
    (r.status == 200).then_some(r.body)
}

/// OrioleDB's lock across owners: the lock's DELETE is uploaded and released (a release is not
/// synced by itself), the next owner takes the lock with a conditional PUT straight at the
/// origin, then the power goes. The lost release must not replay the DELETE over the new lock:
/// a request the origin decides first makes the releases it depends on durable.
#[test]
fn a_replayed_release_never_undoes_a_request_the_origin_decided() {
    let Some(_turn) = turn_with_fuse() else {
        return;
    };
    let mut rig = Rig::start(Vec::new());
    rig.proxy.faults(r#"{"latency_ms": 0}"#);
    rig.mode = Some("a");
    let lock = "data/orioledb_data/s3_lock";
    let addr = rig.addr();
    let put = |body: &[u8]| {
        Req::object("PUT", addr, Style::Path, &key_path(lock))
            .header("If-None-Match", "*")
            .body(body.to_vec())
            .go(addr)
    };
    assert_eq!(put(b"owner 1").status, 200);
    assert_eq!(
        Req::object("DELETE", addr, Style::Path, &key_path(lock))
            .go(addr)
            .status,
        204
    );
    flush_quietly(&rig);
    assert_eq!(moto_state(&rig, lock), None, "the DELETE is in the origin");
    assert_eq!(put(b"owner 2").status, 200, "the next owner takes the lock");
    let (report, started) = rig.cut(0);
    started.unwrap_or_else(|e| panic!("{e}\n{report}"));
    flush_quietly(&rig);
    assert_eq!(
        moto_state(&rig, lock).as_deref(),
        Some(&b"owner 2"[..]),
        "the origin lost the second owner's lock after the cut"
    );
    assert_eq!(rig.get(lock).as_deref(), Some(&b"owner 2"[..]));
}

/// A DELETE uploaded after a newer write of its key was acknowledged is released as superseded:
/// that release must be synced, or a cut replays the DELETE over the newer write and its barrier
/// already in the origin (the checkpoint there then lacks the key until the newer write is
/// uploaded again). It was written without a sync, as the release of a version its key still
/// names is.
#[test]
fn a_cut_never_replays_a_superseded_delete_over_a_newer_write() {
    let Some(_turn) = turn_with_fuse() else {
        return;
    };
    let mut rig = Rig::start(Vec::new());
    rig.mode = Some("a");
    let addr = rig.addr();
    let key = "orioledb_data/1/0";
    let put = |key: &str, body: &[u8]| {
        Req::object("PUT", addr, Style::Path, &key_path(key))
            .body(body.to_vec())
            .go(addr)
            .status
    };
    assert_eq!(put(key, b"v1"), 200);
    flush_quietly(&rig);
    rig.proxy.faults(r#"{"outage": true}"#);
    assert_eq!(
        Req::object("DELETE", addr, Style::Path, &key_path(key)).go(addr).status,
        204
    );
    assert_eq!(put("data/1/global/pg_control", b"checkpoint 1"), 200);
    assert_eq!(put(key, b"v2"), 200);
    assert_eq!(put("data/2/global/pg_control", b"checkpoint 2"), 200);
    rig.proxy.faults(r#"{"outage": false, "latency_ms": 0}"#);
    flush_quietly(&rig);
    assert_eq!(moto_state(&rig, key).as_deref(), Some(&b"v2"[..]));
    assert_eq!(rig.proxy.count("DELETE", key), 1);
    // After the cut the newer write cannot go up again: what the origin holds of the key is what
    // a replay leaves.
    rig.proxy
        .faults(r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_method": "PUT", "match_key_prefix": "orioledb_data/1/0"}"#);
    let (report, started) = rig.cut(0);
    started.unwrap_or_else(|e| panic!("{e}\n{report}"));
    // The first barrier's release was not synced either: its upload again shows the replay ran
    // past the DELETE's place.
    assert!(
        wait_until(Duration::from_secs(30), || rig
            .proxy
            .count("PUT", "data/1/global/pg_control")
            >= 2),
        "the replay did not reach the first barrier"
    );
    assert_eq!(rig.proxy.count("DELETE", key), 1, "the DELETE went to the origin again");
    assert_eq!(
        moto_state(&rig, key).as_deref(),
        Some(&b"v2"[..]),
        "the origin lost the newer write under its checkpoint"
    );
    assert_eq!(rig.get(key).as_deref(), Some(&b"v2"[..]));
}

/// An acknowledged DELETE stays deleted after a power cut, even with nothing synced after it.
#[test]
fn an_acknowledged_delete_survives_a_power_cut() {
    let Some(_turn) = turn_with_fuse() else {
        return;
    };
    let mut rig = Rig::start(Vec::new());
    rig.proxy.faults(r#"{"outage": true}"#);
    rig.mode = Some("a");
    let addr = rig.addr();
    let key = "orioledb_data/9/1";
    assert_eq!(
        Req::object("PUT", addr, Style::Path, &key_path(key))
            .body(b"x".to_vec())
            .go(addr)
            .status,
        200
    );
    assert_eq!(
        Req::object("DELETE", addr, Style::Path, &key_path(key)).go(addr).status,
        204
    );
    let (report, started) = rig.cut(3);
    started.unwrap_or_else(|e| panic!("{e}\n{report}"));
    assert_eq!(rig.get(key), None, "the deleted key came back after the cut");
    rig.proxy.faults(r#"{"outage": false}"#);
    flush_quietly(&rig);
    assert_eq!(moto_state(&rig, key), None);
}

/// PUTs `key` straight into moto: an object the origin has and Perch's cache does not.
fn put_in_moto(rig: &Rig, key: &str, body: &[u8]) {
    let moto_addr = SocketAddr::from(([127, 0, 0, 1], rig._moto.port));
    let r = Req::object("PUT", moto_addr, Style::Path, &key_path(key))
        .keys(Some(Keys::new(MOTO_ACCESS_KEY_ID, MOTO_SECRET_ACCESS_KEY)))
        .body(body.to_vec())
        .go(moto_addr);
    assert_eq!(r.status, 200, "PUT {key} into moto: {}", r.summary());
}

/// The blob file under `dir` (Perch's blob directory) whose bytes are `body`, if any.
fn blob_holding(dir: &Path, body: &[u8]) -> Option<PathBuf> {
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(_)
                    if e.metadata().is_ok_and(|m| m.len() == body.len() as u64)
                        && std::fs::read(&path).is_ok_and(|b| b == body) =>
                {
                    return Some(path);
                }
                _ => {}
            }
        }
    }
    None
}

/// Waits (up to 20 s) until Perch's log shows `line`.
fn wait_for_log(rig: &Rig, line: &str) {
    for _ in 0..200 {
        if rig.perch().log_text().contains(line) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("perch never logged {line:?}:\n{}", rig.perch().log_text());
}

/// A release (the origin has the version) is written to the journal without a sync; its blob
/// becomes a clean entry the evictor may take. An eviction that unlinks a blob first syncs the
/// releases written before it, as the unsynced-release flag says. Here an eviction races the
/// release's write (the write is held by a test-only pause point while a fill evicts), then the
/// released blob itself is evicted, then the power goes with every name kept and every unsynced
/// page dropped (mode d): were the flag raised before the write (the racing eviction takes it
/// down, then the write lands unsynced) or not at all, the journal would bring the version back
/// without its blob, and Perch would refuse to start.
#[test]
fn an_eviction_racing_a_release_never_unlinks_a_blob_the_journal_needs() {
    let Some(_turn) = turn_with_fuse() else {
        return;
    };
    // A disk tier of 1 MiB: four of these bodies fit, a fifth evicts the oldest.
    let mut rig = Rig::start_with(
        vec![("PERCH_PAUSE_POINT".to_owned(), "release_write:10000".to_owned())],
        "1MiB",
    );
    rig.proxy.faults(r#"{"latency_ms": 0}"#);
    rig.mode = Some("d");
    let blobs = rig.mnt.join("perch/cache/blobs");
    let body = |n: u64| pattern(250_000, n);
    // Clean entries, filled from the origin (fills release nothing: the pause waits for the
    // first release).
    for i in 0..4 {
        let key = format!("orioledb_data/8/old{i}");
        put_in_moto(&rig, &key, &body(i));
        assert_eq!(rig.get(&key), Some(body(i)), "GET {key}");
    }
    let addr = rig.addr();
    let key = "orioledb_data/8/written";
    let written = body(100);
    let r = Req::object("PUT", addr, Style::Path, &key_path(key))
        .body(written.clone())
        .go(addr);
    assert_eq!(r.status, 200, "PUT {key}: {}", r.summary());
    let written_blob = blob_holding(&blobs, &written).expect("the written version's blob");
    // Uploaded; its release is now held before its journal write.
    wait_for_log(&rig, "pause point release_write reached");
    // The racing eviction: a fill evicts the oldest clean entry (and syncs what it must).
    put_in_moto(&rig, "orioledb_data/8/new0", &body(200));
    assert_eq!(rig.get("orioledb_data/8/new0"), Some(body(200)));
    assert!(
        blob_holding(&blobs, &body(0)).is_none(),
        "the fill evicted nothing: the test proves nothing"
    );
    assert!(
        !rig.perch().log_text().contains("pause point release_write passed"),
        "the eviction came after the release's write: the test proves nothing (a slow machine?)"
    );
    wait_for_log(&rig, "pause point release_write passed");
    flush_quietly(&rig);
    // More fills, until the released version's blob is evicted too.
    for i in 1..12 {
        if !written_blob.exists() {
            break;
        }
        let k = format!("orioledb_data/8/new{i}");
        put_in_moto(&rig, &k, &body(200 + i));
        assert_eq!(rig.get(&k), Some(body(200 + i)), "GET {k}");
    }
    assert!(!written_blob.exists(), "the released version's blob was never evicted");
    rig.env.clear();
    let (report, started) = rig.cut(11);
    started.unwrap_or_else(|e| panic!("perch refused to start after the cut: {e}\n{report}"));
    assert_eq!(rig.get(key).as_deref(), Some(written.as_slice()), "{key} after the cut");
    flush_quietly(&rig);
    assert_eq!(moto_state(&rig, key).as_deref(), Some(written.as_slice()));
}

/// A conditional PUT and a copy change the origin's object directly: the cached copy of the key
/// goes first, durably. Here both keys hold clean entries (written, uploaded, released, the
/// release made durable by a later commit); the conditional PUT and the copy replace them at the
/// origin; then the power goes with everything unsynced dropped (mode a). Were the entries'
/// removal not synced before the origin requests, the cut would bring them back, and Perch would
/// serve the old bodies over the origin's new ones for as long as it keeps them.
#[test]
fn a_cut_after_a_conditional_put_or_a_copy_never_brings_back_the_cached_old_body() {
    let Some(_turn) = turn_with_fuse() else {
        return;
    };
    let mut rig = Rig::start(Vec::new());
    rig.proxy.faults(r#"{"latency_ms": 0}"#);
    rig.mode = Some("a");
    let addr = rig.addr();
    let put = |key: &str, body: &[u8]| {
        let r = Req::object("PUT", addr, Style::Path, &key_path(key))
            .body(body.to_vec())
            .go(addr);
        assert_eq!(r.status, 200, "PUT {key}: {}", r.summary());
        r
    };
    let (conditional, copied, source) = (
        "orioledb_data/7/conditional",
        "orioledb_data/7/copied",
        "orioledb_data/7/source",
    );
    let old_etag = put(conditional, b"old conditional").header("etag").map(str::to_owned);
    put(copied, b"old copied");
    put_in_moto(&rig, source, b"the copy's source");
    flush_quietly(&rig);
    // A synced commit after the releases makes them (and so the clean entries) durable.
    put("orioledb_data/7/after", b"x");
    assert_eq!(rig.get(conditional).as_deref(), Some(&b"old conditional"[..]));
    assert_eq!(rig.get(copied).as_deref(), Some(&b"old copied"[..]));

    let r = Req::object("PUT", addr, Style::Path, &key_path(conditional))
        .header("If-Match", old_etag.as_deref().expect("the PUT's ETag"))
        .body(b"new conditional".to_vec())
        .go(addr);
    assert_eq!(r.status, 200, "conditional PUT: {}", r.summary());
    let r = Req::object("PUT", addr, Style::Path, &key_path(copied))
        .header("x-amz-copy-source", &format!("/{BUCKET}/{source}"))
        .go(addr);
    assert_eq!(r.status, 200, "copy: {}", r.summary());
    assert_eq!(moto_state(&rig, conditional).as_deref(), Some(&b"new conditional"[..]));
    assert_eq!(moto_state(&rig, copied).as_deref(), Some(&b"the copy's source"[..]));

    let (report, started) = rig.cut(0);
    started.unwrap_or_else(|e| panic!("{e}\n{report}"));
    assert_eq!(
        rig.get(conditional).as_deref(),
        Some(&b"new conditional"[..]),
        "the conditional PUT's key after the cut"
    );
    assert_eq!(
        rig.get(copied).as_deref(),
        Some(&b"the copy's source"[..]),
        "the copy's destination after the cut"
    );
}
