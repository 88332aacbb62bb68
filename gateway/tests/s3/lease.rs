//! One writer per bucket: the lease `.perch/lease` in moto, between real `perch` processes. The
//! origin refuses stale conditional PUTs (checked first, so the rest cannot pass vacuously); a
//! second primary refuses to start naming the holder; a lease left unrenewed is taken after its
//! period plus margin; a paused holder (SIGSTOP) that lost its lease acknowledges nothing more
//! and exits; a machine returning with an old journal needs `perch journal` to decide.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perch_testkit::bodies::content_md5;
use perch_testkit::raw_client::{BUCKET, Req, Style, key_path};
use perch_testkit::sdk::moto_client;
use perch_testkit::servers::{MotoServer, PerchOptions, PerchServer, ProxyServer};

use crate::support::machine;
use crate::support::perch::{flush, moto_keys_env, perch_binary, s3_origin, start_with, wait_until};
use crate::support::sdk::bytes_of;

const PERIOD: &str = "1500ms";
const MARGIN: &str = "1s";

struct Bucket {
    moto: MotoServer,
    rt: tokio::runtime::Runtime,
    tmp: tempfile::TempDir,
}

impl Bucket {
    fn new() -> Bucket {
        let moto = MotoServer::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(moto_client(&moto).create_bucket().bucket(BUCKET).send())
            .expect("create bucket");
        Bucket {
            moto,
            rt,
            tmp: tempfile::tempdir().expect("tmp"),
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A way to the bucket on which every upload under `stale/` fails: a machine behind it keeps
    /// such a write in its journal.
    fn proxy_failing_stale_uploads(&self) -> ProxyServer {
        let proxy = ProxyServer::start(&self.moto.endpoint, &[]);
        proxy
            .control()
            .patch(r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_key_prefix": "stale/"}"#);
        proxy
    }

    fn args(&self, holder: &str) -> Vec<String> {
        self.args_via(holder, &self.moto.endpoint)
    }

    /// The flags of a primary reaching the bucket through `endpoint` (moto, or a proxy).
    fn args_via(&self, holder: &str, endpoint: &str) -> Vec<String> {
        let (mut args, _) = s3_origin(endpoint);
        for a in [
            "--lease-bucket",
            BUCKET,
            "--lease-period",
            PERIOD,
            "--lease-margin",
            MARGIN,
            "--lease-holder",
            holder,
            "--drain-quiet",
            "0s",
        ] {
            args.push(a.to_owned());
        }
        args
    }

    /// Machine A as the primary, reaching the bucket through a proxy (returned with it), with
    /// one write uploaded.
    fn primary_behind_proxy(&self) -> (ProxyServer, PerchServer) {
        let proxy = ProxyServer::start(&self.moto.endpoint, &[]);
        let a = start_with(
            &self.dir("a"),
            self.args_via("machine-a", &proxy.endpoint),
            moto_keys_env(),
        );
        assert_eq!(put(a.addr, "k", b"from a"), 200);
        flush(&a, Duration::from_secs(30));
        (proxy, a)
    }

    fn primary(&self, holder: &str, dir: &Path) -> PerchServer {
        start_with(dir, self.args(holder), moto_keys_env())
    }

    /// Runs `perch serve` expecting it to refuse to start: its exit code and stderr.
    fn refused(&self, holder: &str, dir: &Path) -> (Option<i32>, String) {
        self.refused_with(&self.args(holder), dir)
    }

    fn refused_with(&self, args: &[String], dir: &Path) -> (Option<i32>, String) {
        let out = std::process::Command::new(perch_binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(args)
            .envs(moto_keys_env())
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run perch");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("listening"), "perch started: {stdout}");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `perch` with the lease flags (`lease status`, `lease break`).
    fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(perch_binary())
            .args(args)
            .args(self.args("cli"))
            .envs(moto_keys_env())
            .output()
            .expect("run perch")
    }

    /// `perch lease break --holder-is-gone`, sent again while a renewal of the running holder
    /// lands between its read and its write (the break then leaves the lease, and says so).
    fn break_lease(&self) -> std::process::Output {
        for _ in 0..10 {
            let out = self.cli(&["lease", "break", "--holder-is-gone"]);
            if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("renewed or taken") {
                return out;
            }
        }
        panic!("every break met a renewal");
    }

    fn get(&self, key: &str) -> Option<(Vec<u8>, String)> {
        let c = moto_client(&self.moto);
        self.rt.block_on(async {
            match c.get_object().bucket(BUCKET).key(key).send().await {
                Ok(out) => {
                    let etag = out.e_tag().unwrap_or_default().to_owned();
                    Some((bytes_of(out.body).await, etag))
                }
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
                Err(e) => panic!("GET {key} from moto: {e:?}"),
            }
        })
    }

    /// The lease in moto: (holder, epoch, renewal, released, etag).
    fn lease(&self) -> Option<(String, u64, u64, bool, String)> {
        let (body, etag) = self.get(".perch/lease")?;
        let v: serde_json::Value = serde_json::from_slice(&body).expect("lease JSON");
        Some((
            v["holder"].as_str().expect("holder").to_owned(),
            v["epoch"].as_u64().expect("epoch"),
            v["renewal"].as_u64().expect("renewal"),
            v["released"].as_bool().expect("released"),
            etag,
        ))
    }
}

fn put(addr: SocketAddr, key: &str, body: &[u8]) -> u16 {
    Req::object("PUT", addr, Style::Path, &key_path(key))
        .body(body.to_vec())
        .go(addr)
        .status
}

fn signal(p: &PerchServer, name: &str) {
    let pid = p.pid().expect("pid");
    let ok = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

/// `perch journal ARGS --data-dir DIR`, run to its end.
fn perch_journal(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(perch_binary())
        .arg("journal")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("perch journal")
}

fn seconds(s: &str) -> f64 {
    perch_policy_duration(s).as_secs_f64()
}

fn perch_policy_duration(s: &str) -> Duration {
    if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(ms.parse().expect("ms"))
    } else {
        Duration::from_secs(s.trim_end_matches('s').parse().expect("s"))
    }
}

/// The origin itself refuses a stale `If-Match` and an `If-None-Match: *` over an object: without
/// that, every lease test below would pass whatever Perch did.
#[test]
fn the_origin_refuses_stale_conditional_puts() {
    let _turn = machine::share();
    let b = Bucket::new();
    let c = moto_client(&b.moto);
    let body = |s: &str| aws_sdk_s3::primitives::ByteStream::from(s.as_bytes().to_vec());
    b.rt.block_on(async {
        let first = c
            .put_object()
            .bucket(BUCKET)
            .key("l")
            .if_none_match("*")
            .body(body("1"))
            .send()
            .await
            .expect("create");
        let again = c
            .put_object()
            .bucket(BUCKET)
            .key("l")
            .if_none_match("*")
            .body(body("2"))
            .send()
            .await;
        let e = again.expect_err("If-None-Match: * over an object");
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412));
        let renewed = c
            .put_object()
            .bucket(BUCKET)
            .key("l")
            .if_match(first.e_tag().expect("etag"))
            .body(body("3"))
            .send()
            .await
            .expect("If-Match the current ETag");
        assert_ne!(renewed.e_tag(), first.e_tag());
        let stale = c
            .put_object()
            .bucket(BUCKET)
            .key("l")
            .if_match(first.e_tag().expect("etag"))
            .body(body("4"))
            .send()
            .await;
        let e = stale.expect_err("If-Match a replaced ETag");
        assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(412));
    });
    assert_eq!(b.get("l").map(|(body, _)| body), Some(b"3".to_vec()));
}

#[test]
fn a_second_primary_refuses_to_start_naming_the_holder() {
    let _turn = machine::share();
    let b = Bucket::new();
    let a = b.primary("machine-a", &b.dir("a"));
    let (holder, epoch, _, released, _) = b.lease().expect("the primary took the lease");
    assert_eq!((holder.as_str(), epoch, released), ("machine-a", 1, false));
    assert_eq!(put(a.addr, "k", b"from a"), 200);

    let (code, err) = b.refused("machine-b", &b.dir("b"));
    assert_ne!(code, Some(0));
    assert!(err.contains("held by `machine-a`"), "{err}");
    assert!(err.contains("another primary"), "{err}");
    // The holder kept it, and still serves writes.
    assert_eq!(b.lease().expect("lease").0, "machine-a");
    assert_eq!(put(a.addr, "k2", b"still a"), 200);

    let status = b.cli(&["lease", "status"]);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("holder:    machine-a") && out.contains("epoch:     1"),
        "{out}"
    );
    let refused = b.cli(&["lease", "break"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("corrupt the database") && err.contains("--holder-is-gone"),
        "{err}"
    );
    assert_eq!(b.lease().expect("a refused break leaves the lease").0, "machine-a");

    // A clean stop releases the lease: the next primary takes it at once.
    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success());
    assert!(b.lease().expect("lease").3, "released");
    let started = Instant::now();
    let c = b.primary("machine-c", &b.dir("c"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a released lease is taken at once"
    );
    let (holder, epoch, ..) = b.lease().expect("lease");
    assert_eq!((holder.as_str(), epoch), ("machine-c", 2));
    assert_eq!(put(c.addr, "k3", b"from c"), 200);

    // Not from a replica's settings: a replica never writes the shared bucket.
    let refused = b.cli(&["lease", "break", "--holder-is-gone", "--role", "replica"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("a replica never writes"), "{err}");
    assert_eq!(b.lease().expect("a replica's break leaves the lease").0, "machine-c");

    // Broken with its flag while its holder runs: the holder's next renewal fails, and it stops.
    let broken = b.break_lease();
    assert!(broken.status.success(), "{}", String::from_utf8_lossy(&broken.stderr));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("broken"));
    let status = c.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "the holder of a broken lease exits");
    let log = std::fs::read_to_string(b.dir("c").with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("lease lost") && log.contains("the lease was broken"),
        "{log}"
    );
}

/// `perch lease break` breaks only the lease it read: a holder that renews in the meantime is
/// alive, and keeps its lease (the break used to delete whatever lease was there by then).
#[test]
fn a_break_leaves_a_lease_renewed_since_it_was_read() {
    let _turn = machine::share();
    let b = Bucket::new();
    let a = b.primary("machine-a", &b.dir("a"));
    let renewal = b.lease().expect("lease").2;
    // The break pauses between its read and its write, longer than a renewal takes to come.
    let late = std::process::Command::new(perch_binary())
        .args(["lease", "break", "--holder-is-gone"])
        .args(b.args("cli"))
        .envs(moto_keys_env())
        .env("PERCH_PAUSE_POINT", "lease_break:2500")
        .output()
        .expect("run perch");
    let err = String::from_utf8_lossy(&late.stderr);
    assert!(
        !late.status.success(),
        "a break of a lease renewed meanwhile went through: {err}"
    );
    assert!(err.contains("renewed or taken since it was read"), "{err}");
    let (holder, epoch, now, released, _) = b.lease().expect("lease");
    assert_eq!((holder.as_str(), epoch, released), ("machine-a", 1, false));
    assert!(now > renewal, "the holder renewed during the pause");
    assert_eq!(put(a.addr, "k", b"a still writes"), 200);
    // Without the pause, it breaks: the holder fails its next renewal and stops.
    let broken = b.break_lease();
    assert!(broken.status.success(), "{}", String::from_utf8_lossy(&broken.stderr));
    assert!(b.lease().expect("lease").3, "a broken lease is marked released");
    assert_eq!(
        a.wait(Duration::from_secs(10)).code(),
        Some(3),
        "the holder of a broken lease exits"
    );
}

/// A primary waiting for a killed holder's lease to expire takes it as soon as an operator breaks
/// it: the break's released marker changed the lease's ETag, which the waiting primary read as
/// another holder renewing, and it exited.
#[test]
fn a_primary_waiting_for_the_lease_takes_it_once_broken() {
    let _turn = machine::share();
    let b = Bucket::new();
    let a = b.primary("machine-a", &b.dir("a"));
    a.kill();
    let (args, env) = (b.args("cli"), moto_keys_env());
    let breaker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        std::process::Command::new(perch_binary())
            .args(["lease", "break", "--holder-is-gone"])
            .args(args)
            .envs(env)
            .output()
            .expect("run perch")
    });
    let started = Instant::now();
    let new = b.primary("machine-b", &b.dir("b"));
    let waited = started.elapsed().as_secs_f64();
    let broken = breaker.join().expect("the break");
    assert!(broken.status.success(), "{}", String::from_utf8_lossy(&broken.stderr));
    assert!(
        waited < seconds(PERIOD) + seconds(MARGIN),
        "the waiting primary took {waited:.2} s: it did not take the broken lease at once"
    );
    let (holder, epoch, ..) = b.lease().expect("lease");
    assert_eq!((holder.as_str(), epoch), ("machine-b", 2));
    assert_eq!(put(new.addr, "k", b"from b"), 200);
}

#[test]
fn an_unrenewed_lease_is_taken_after_its_period_and_margin() {
    let _turn = machine::share();
    let b = Bucket::new();
    let a = b.primary("machine-a", &b.dir("a"));
    assert_eq!(put(a.addr, "k", b"from a"), 200);
    a.kill();
    let (_, _, _, released, etag) = b.lease().expect("lease");
    assert!(!released, "a killed holder does not release");
    let started = Instant::now();
    let new = b.primary("machine-b", &b.dir("b"));
    let waited = started.elapsed().as_secs_f64();
    assert!(
        waited >= seconds(PERIOD) + seconds(MARGIN),
        "the taker waited only {waited:.2} s with the same ETag in view"
    );
    let (holder, epoch, _, _, now) = b.lease().expect("lease");
    assert_eq!((holder.as_str(), epoch), ("machine-b", 2));
    assert_ne!(now, etag);
    assert_eq!(put(new.addr, "k2", b"from b"), 200);
    // B renews on its own.
    let renewal = b.lease().expect("lease").2;
    assert!(wait_until(Duration::from_secs(5), || b.lease().expect("lease").2 > renewal));
}

/// A primary started while the origin is out waits for it to take the lease, and starts once it
/// is back: it used to exit at the first fault (and a supervisor started it again and again).
#[test]
fn a_primary_started_during_an_outage_takes_the_lease_once_the_origin_is_back() {
    let _turn = machine::share();
    let b = Bucket::new();
    let proxy = ProxyServer::start(&b.moto.endpoint, &[]);
    proxy.control().patch(r#"{"outage": true}"#);
    let mut env = moto_keys_env();
    env.push(("NO_COLOR".to_owned(), "1".to_owned()));
    let opts = PerchOptions {
        binary: perch_binary(),
        data_dir: b.dir("a"),
        args: b.args_via("machine-a", &proxy.endpoint),
        env,
    };
    // On a thread of its own: the start returns once perch listens.
    let starting = std::thread::spawn(move || PerchServer::start(opts));
    std::thread::sleep(Duration::from_secs(4));
    assert!(!starting.is_finished(), "perch ended while the origin was out");
    assert!(b.lease().is_none(), "no lease could be taken in the outage");
    proxy.control().patch(r#"{"outage": false}"#);
    let a = starting.join().expect("perch started once the origin was back");
    let (holder, epoch, _, released, _) = b.lease().expect("lease");
    assert_eq!((holder.as_str(), epoch, released), ("machine-a", 1, false));
    assert_eq!(put(a.addr, "k", b"from a"), 200);
}

/// A primary whose renewals fail is not writable once its last renewal is a period old: it then
/// sends nothing that changes the bucket, a bucket configuration included (those went to the
/// origin unfenced, as did bucket creation and deletion and the hot set); once a renewal lands,
/// the request goes on.
#[test]
fn a_primary_that_cannot_renew_sends_no_bucket_configuration() {
    let _turn = machine::share();
    let b = Bucket::new();
    let (proxy, a) = b.primary_behind_proxy();
    proxy
        .control()
        .patch(r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_key_prefix": ".perch/lease"}"#);
    // Past the period: no renewal is recent.
    std::thread::sleep(Duration::from_millis(2500));
    proxy.control().reset();
    let addr = a.addr;
    let xml = b"<Tagging><TagSet><Tag><Key>team</Key><Value>a</Value></Tag></TagSet></Tagging>".to_vec();
    let tagging = std::thread::spawn(move || {
        Req::bucket("PUT", addr, Style::Path, "tagging")
            .header("Content-MD5", &content_md5(&xml))
            .body(xml)
            .go(addr)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !tagging.is_finished(),
        "a bucket configuration was answered while the lease was stale"
    );
    let sent: Vec<String> = proxy
        .control()
        .log()
        .iter()
        .filter(|r| r["method"] != "GET" && r["method"] != "HEAD" && r["key"] != ".perch/lease")
        .map(|r| format!("{} {} {}", r["method"], r["key"], r["query"]))
        .collect();
    assert!(
        sent.is_empty(),
        "sent to the origin while the lease was stale: {sent:?}"
    );
    proxy.control().patch(r#"{"error_rate": 0.0}"#);
    let r = tagging.join().expect("tagging thread");
    assert!(matches!(r.status, 200 | 204), "{}", r.summary());
    let tags =
        b.rt.block_on(moto_client(&b.moto).get_bucket_tagging().bucket(BUCKET).send())
            .expect("the bucket's tags in moto");
    assert_eq!(tags.tag_set().len(), 1);
}

/// A request the origin decides (here a conditional PUT, as OrioleDB's lock), retried through an
/// origin fault, is sent again only under a fresh lease: while the lease is stale (renewals fail
/// too) the retries wait, even once the request itself would pass, and go on once a renewal
/// lands. Its retries used to be sent whatever the lease.
#[test]
fn a_request_the_origin_decides_is_retried_only_under_a_fresh_lease() {
    let _turn = machine::share();
    let b = Bucket::new();
    let (proxy, a) = b.primary_behind_proxy();
    // The conditional PUT's attempts fail, the lease's renewals still land.
    proxy
        .control()
        .patch(r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_method": "PUT", "match_key_prefix": "lock"}"#);
    let addr = a.addr;
    let lock = std::thread::spawn(move || {
        Req::object("PUT", addr, Style::Path, &key_path("lock"))
            .header("If-None-Match", "*")
            .body(b"held by a".to_vec())
            .go(addr)
    });
    assert!(
        wait_until(Duration::from_secs(10), || {
            proxy
                .control()
                .log()
                .iter()
                .any(|r| r["method"] == "PUT" && r["key"] == "lock")
        }),
        "the conditional PUT never reached the origin"
    );
    // Then every PUT fails, renewals too; past the period no renewal is recent: the lease is stale.
    proxy.control().patch(r#"{"match_key_prefix": null}"#);
    std::thread::sleep(Duration::from_millis(2500));
    // Only the lease's renewals fail now: a retry of the conditional PUT would be taken.
    proxy.control().patch(r#"{"match_key_prefix": ".perch/lease"}"#);
    proxy.control().reset();
    // Longer than the longest backoff between retries (5 s).
    std::thread::sleep(Duration::from_secs(6));
    let retried: Vec<String> = proxy
        .control()
        .log()
        .iter()
        .filter(|r| r["key"] == "lock")
        .map(|r| format!("{} {}", r["method"], r["status"]))
        .collect();
    assert!(
        retried.is_empty(),
        "a decided request was sent again while the lease was stale: {retried:?}"
    );
    assert!(
        !lock.is_finished(),
        "the conditional PUT was answered while the lease was stale"
    );
    assert_eq!(b.get("lock"), None);
    // A renewal lands: the retry goes on, and its answer is the client's.
    proxy.control().patch(r#"{"error_rate": 0.0}"#);
    let r = lock.join().expect("the conditional PUT");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(b.get("lock").expect("the lock in moto").0, b"held by a");
}

/// A holder cut off from the lease (its renewals fail, as in a partition) stops an upload under way
/// once its lease turns stale, before a taker may count the period as over: the rest of the body
/// is never sent, and what the origin got of it is never applied. The upload used to go on to
/// its end and land over the bucket of the primary that took the lease meanwhile.
#[test]
fn an_upload_under_way_is_cut_once_the_lease_turns_stale() {
    let _turn = machine::alone();
    let b = Bucket::new();
    let proxy = ProxyServer::start(&b.moto.endpoint, &[]);
    let dir_a = b.dir("a");
    let a = start_with(&dir_a, b.args_via("machine-a", &proxy.endpoint), moto_keys_env());
    // Every body goes to the origin at 8 MiB/s: this one's upload takes 12 s, far more than the
    // socket buffers between Perch and the origin hold.
    proxy.control().patch(r#"{"bandwidth_bytes_per_sec": 8388608}"#);
    let body = perch_testkit::bodies::pattern(96 << 20, 7);
    assert_eq!(put(a.addr, "big", &body), 200);
    std::thread::sleep(Duration::from_secs(1));
    // The lease's renewals fail from now on: A's lease turns stale within its period.
    proxy
        .control()
        .patch(r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_key_prefix": ".perch/lease"}"#);
    let cut_off = Instant::now();
    // B takes the lease once A's has been left unrenewed for its period and margin.
    let new = b.primary("machine-b", &b.dir("b"));
    assert_eq!(b.lease().expect("lease").0, "machine-b");
    // Past the end the upload would have had.
    std::thread::sleep(Duration::from_secs(14).saturating_sub(cut_off.elapsed()));
    assert_eq!(
        b.get("big").map(|(body, _)| body.len()),
        None,
        "A went on uploading after its lease turned stale, over B's bucket"
    );
    // A learns of B at its next renewal, and exits without uploading.
    proxy
        .control()
        .patch(r#"{"error_rate": 0.0, "bandwidth_bytes_per_sec": null}"#);
    let status = a.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "the old holder exits once it sees the new one");
    let log = std::fs::read_to_string(dir_a.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("the lease turned stale before the origin answered"),
        "{log}"
    );
    assert_eq!(b.get("big"), None, "the old holder uploaded without its lease");
    assert_eq!(put(new.addr, "after", b"from b"), 200);
}

/// A holder paused (SIGSTOP, as a suspended machine) past its lease loses it to a new primary;
/// resumed, it never acknowledges the write that reached it meanwhile, does not upload it, exits
/// with a message naming the new holder, and keeps it in its journal. Back later with that
/// journal, it must be told what to do with it (`perch journal`).
#[test]
fn a_paused_holder_acknowledges_nothing_after_losing_its_lease_and_its_journal_waits_for_a_decision() {
    let _turn = machine::alone();
    let b = Bucket::new();
    let dir_a = b.dir("a");
    // Machine A reaches the bucket through a proxy that fails every upload under `stale/`, so
    // that A's journal holds a write when it stops.
    let proxy = b.proxy_failing_stale_uploads();
    let args_a = b.args_via("machine-a", &proxy.endpoint);
    let a = start_with(&dir_a, args_a.clone(), moto_keys_env());
    assert_eq!(put(a.addr, "before", b"acked by a"), 200);
    assert_eq!(put(a.addr, "stale/x", b"acked, never uploaded"), 200);
    assert!(wait_until(Duration::from_secs(10), || b.get("before").is_some()));

    signal(&a, "STOP");
    // Machine B waits the period plus the margin with A's ETag unchanged, then takes the lease.
    let new = start_with(&b.dir("b"), b.args("machine-b"), moto_keys_env());
    assert_eq!(b.lease().expect("lease").0, "machine-b");

    // A write reaches the paused holder (the kernel queues the connection).
    let addr = a.addr;
    let late = std::thread::spawn(move || {
        Req::object("PUT", addr, Style::Path, &key_path("late"))
            .body(b"written while paused".to_vec())
            .send(addr)
            .map_or(0, |r| r.status)
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&a, "CONT");
    let status = a.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "the old holder exits once it sees the new one");
    let answer = late.join().expect("the late PUT");
    assert_ne!(answer, 200, "the old holder acknowledged a write without its lease");
    let log = std::fs::read_to_string(dir_a.with_extension("log")).unwrap_or_default();
    assert!(log.contains("lease lost") && log.contains("machine-b"), "{log}");
    assert_eq!(b.get("late"), None, "the old holder uploaded without its lease");
    assert_eq!(b.get("stale/x"), None);
    assert_eq!(put(new.addr, "after", b"from b"), 200);

    // Back while machine-b runs: refused, naming it.
    let (_, err) = b.refused_with(&args_a, &dir_a);
    assert!(err.contains("held by `machine-b`"), "{err}");
    // Back after machine-b stopped cleanly: its old journal must not go up over b's data.
    assert!(new.terminate(Duration::from_secs(30)).success());
    let (_, err) = b.refused_with(&args_a, &dir_a);
    assert!(
        err.contains("the journal holds") && err.contains("lease epoch 1 of `machine-a`"),
        "{err}"
    );
    assert!(err.contains("`machine-b` (epoch 2)"), "{err}");
    assert!(
        err.contains("perch journal adopt") && err.contains("perch journal discard"),
        "{err}"
    );
    assert_eq!(b.get("late"), None);

    let journal = |args: &[&str]| perch_journal(&dir_a, args);
    let refused = journal(&["discard"]);
    assert!(!refused.status.success(), "discard needs its flag");
    let done = journal(&["discard", "--lose-these-writes"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(String::from_utf8_lossy(&done.stdout).contains("writes dropped"));
    let again = start_with(&dir_a, args_a, moto_keys_env());
    assert_eq!(b.lease().expect("lease").1, 3, "a new epoch after b's");
    assert_eq!(put(again.addr, "fresh", b"a again"), 200);
    assert!(wait_until(Duration::from_secs(10), || b.get("fresh").is_some()));
    assert_eq!(b.get("late"), None, "the discarded write never went up");
    assert_eq!(b.get("stale/x"), None, "the discarded write never went up");
}

/// A machine that died (kill -9) with a write in its journal comes back after another primary
/// held the bucket: it refuses to start until told, and `perch journal adopt` (with its flag)
/// makes the old journal's writes go up under the lease it takes next.
#[test]
fn a_returning_machine_uploads_its_old_journal_only_once_adopted() {
    let _turn = machine::alone();
    let b = Bucket::new();
    let dir_a = b.dir("a");
    // Every upload under `stale/` fails on A's way to the bucket: its journal keeps that write.
    let proxy = b.proxy_failing_stale_uploads();
    let a = start_with(&dir_a, b.args_via("machine-a", &proxy.endpoint), moto_keys_env());
    assert_eq!(put(a.addr, "stale/x", b"acked, not yet uploaded"), 200);
    a.kill();
    // B takes the lease once A's has gone unrenewed for the period and margin, writes, stops.
    let new = start_with(&b.dir("b"), b.args("machine-b"), moto_keys_env());
    assert_eq!(b.lease().expect("lease").0, "machine-b");
    assert_eq!(put(new.addr, "after", b"from b"), 200);
    assert!(new.terminate(Duration::from_secs(30)).success());
    assert!(b.get("after").is_some());

    // A comes back, now with a healthy way to the bucket: its journal is bound to its old lease.
    let args_a = b.args("machine-a");
    let (_, err) = b.refused_with(&args_a, &dir_a);
    assert!(err.contains("lease epoch 1 of `machine-a`"), "{err}");
    assert_eq!(b.get("stale/x"), None, "the old journal went up without a decision");
    let journal = |args: &[&str]| perch_journal(&dir_a, args);
    let refused = journal(&["adopt"]);
    assert!(!refused.status.success(), "adopt needs its flag");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--upload-over-newer-data"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let done = journal(&["adopt", "--upload-over-newer-data"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let again = start_with(&dir_a, args_a, moto_keys_env());
    let lease = b.lease().expect("lease");
    assert_eq!((lease.0.as_str(), lease.1), ("machine-a", 3), "a new epoch after b's");
    assert!(
        wait_until(Duration::from_secs(20), || b.get("stale/x").is_some()),
        "the adopted write went up"
    );
    assert_eq!(b.get("stale/x").map(|g| g.0), Some(b"acked, not yet uploaded".to_vec()));
    assert_eq!(
        b.get("after").map(|g| g.0),
        Some(b"from b".to_vec()),
        "b's own write stays"
    );
    drop(again);
}

/// A restart whose take of the lease reaches the origin but whose answers are lost (every lease
/// PUT forwarded, its answer dropped, past the retry deadline) finds the lease at its own name
/// and a newer epoch: that is its own take, not a newer holding, and its journal's write goes up.
/// It used to refuse to start (the journal bound to epoch 1, the lease at epoch 2 of the same
/// holder) until `perch journal adopt`.
#[test]
fn a_take_of_the_lease_whose_answer_was_lost_is_still_the_journals_own() {
    let _turn = machine::share();
    let b = Bucket::new();
    let dir_a = b.dir("a");
    let stale = b.proxy_failing_stale_uploads();
    let a = start_with(&dir_a, b.args_via("machine-a", &stale.endpoint), moto_keys_env());
    assert_eq!(put(a.addr, "stale/x", b"acked, not yet uploaded"), 200);
    a.kill();
    assert_eq!(b.lease().map(|l| l.1), Some(1));

    let proxy = ProxyServer::start(&b.moto.endpoint, &[]);
    proxy.control().patch(
        r#"{"fail_next": 1000000, "error_kinds": ["lost"], "match_method": "PUT", "match_key_prefix": ".perch/lease"}"#,
    );
    let mut args = b.args_via("machine-a", &proxy.endpoint);
    args.extend(["--origin-retry-deadline".to_owned(), "1s".to_owned()]);
    let mut env = moto_keys_env();
    env.push(("NO_COLOR".to_owned(), "1".to_owned()));
    let opts = PerchOptions {
        binary: perch_binary(),
        data_dir: dir_a.clone(),
        args,
        env,
    };
    let starting = std::thread::spawn(move || PerchServer::start(opts));
    assert!(
        wait_until(Duration::from_secs(10), || b.lease().is_some_and(|l| l.1 >= 2)),
        "a take reached the origin"
    );
    // Past the retry deadline: the start looks at the lease again and must know it for its own.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !starting.is_finished(),
        "perch ended while its takes' answers were lost"
    );
    proxy.control().patch(r#"{"fail_next": 0}"#);
    let again = starting.join().expect("perch started once the answers came");
    let (holder, epoch, _, released, _) = b.lease().expect("lease");
    assert_eq!((holder.as_str(), released), ("machine-a", false));
    assert!(epoch >= 3, "taken again after its own take at epoch 2: {epoch}");
    assert!(
        wait_until(Duration::from_secs(20), || b.get("stale/x").is_some()),
        "the journal's write went up"
    );
    assert_eq!(b.get("stale/x").map(|g| g.0), Some(b"acked, not yet uploaded".to_vec()));
    drop(again);
}

/// The wall clock jumping against the boot clock (as after a snapshot restore) is a gap: the
/// next write is acknowledged only after a renewal, even within the lease period.
#[test]
fn a_clock_jump_makes_the_holder_renew_before_it_acknowledges() {
    let _turn = machine::share();
    let b = Bucket::new();
    let dir = b.dir("a");
    let offset = b.dir("clock-offset");
    std::fs::write(&offset, "0").expect("write");
    let mut args = b.args("machine-a");
    // A long period: no renewal is due on its own during the test.
    let at = args.iter().position(|a| a == PERIOD).expect("period");
    args[at] = "60s".to_owned();
    let mut env = moto_keys_env();
    env.push((
        "PERCH_TEST_REALTIME_OFFSET_FILE".to_owned(),
        offset.to_str().expect("utf-8").to_owned(),
    ));
    let a = start_with(&dir, args, env);
    assert_eq!(put(a.addr, "k1", b"one"), 200);
    let renewal = b.lease().expect("lease").2;
    assert_eq!(put(a.addr, "k2", b"two"), 200);
    assert_eq!(b.lease().expect("lease").2, renewal, "no renewal without a gap");
    std::fs::write(&offset, "120000").expect("write");
    assert_eq!(put(a.addr, "k3", b"three"), 200);
    assert_eq!(
        b.lease().expect("lease").2,
        renewal + 1,
        "the write after the jump waited for a renewal"
    );
    assert!(a.log_text().contains("gap since the last lease renewal"));
}

/// A barrier (a checkpoint's control file, by the built-in policy) goes up only after a renewal
/// sent for it; a write-back key's upload needs none while the lease is fresh.
#[test]
fn a_barrier_upload_is_preceded_by_a_renewal() {
    let _turn = machine::share();
    let b = Bucket::new();
    let mut args = b.args("machine-a");
    // A long period: no renewal is due on its own during the test (one every 20 s).
    let at = args.iter().position(|a| a == PERIOD).expect("period");
    args[at] = "60s".to_owned();
    let a = start_with(&b.dir("a"), args, moto_keys_env());
    let renewal = b.lease().expect("lease").2;
    assert_eq!(put(a.addr, "data/1/base/1/1", b"a data file"), 200);
    assert!(wait_until(Duration::from_secs(10), || b
        .get("data/1/base/1/1")
        .is_some()));
    assert_eq!(
        b.lease().expect("lease").2,
        renewal,
        "a write-back upload renews nothing"
    );
    assert_eq!(put(a.addr, "data/1/global/pg_control", b"control"), 200);
    assert!(wait_until(Duration::from_secs(10), || b
        .get("data/1/global/pg_control")
        .is_some()));
    assert_eq!(
        b.lease().expect("lease").2,
        renewal + 1,
        "the barrier's upload was preceded by a renewal"
    );
}

/// An origin that holds requests past a renewal's time limit and applies them later (a stall, a
/// network that queues): a renewal of ours given up on lands while its retries wait, and the
/// retries then meet a 412 from our own lease. That is not another holder: the holder takes the
/// lease as it stands, renews against it, and goes on acknowledging. It used to declare the lease
/// lost to itself and exit.
#[test]
fn a_renewal_of_ours_that_lands_late_is_not_a_lost_lease() {
    let _turn = machine::share();
    let b = Bucket::new();
    let proxy = ProxyServer::start(&b.moto.endpoint, &[]);
    let a = start_with(&b.dir("a"), b.args_via("machine-a", &proxy.endpoint), moto_keys_env());
    assert_eq!(put(a.addr, "before", b"one"), 200);
    let (_, epoch, renewal, _, _) = b.lease().expect("lease");
    // Every lease request is held 6 s (past the 5 s a renewal waits), then applied.
    proxy
        .control()
        .patch(r#"{"error_rate": 1.0, "error_kinds": ["late"], "stall_ms": 6000, "match_key_prefix": ".perch/lease"}"#);
    std::thread::sleep(Duration::from_millis(7500));
    proxy.control().reset();
    proxy.control().patch(r#"{"error_rate": 0.0}"#);
    // Our late renewal landed; the retries after it meet our own lease.
    assert!(
        wait_until(Duration::from_secs(20), || a
            .log_text()
            .contains("an earlier lease renewal of ours landed late")),
        "{}",
        a.log_text()
    );
    assert!(!a.log_text().contains("lease lost"), "{}", a.log_text());
    assert_eq!(put(a.addr, "after", b"two"), 200);
    let (holder, epoch_now, renewal_now, released, _) = b.lease().expect("lease");
    assert_eq!((holder.as_str(), epoch_now, released), ("machine-a", epoch, false));
    assert!(
        renewal_now > renewal + 1,
        "renewed since: {renewal_now} after {renewal}"
    );
    assert!(wait_until(Duration::from_secs(10), || b.get("after").is_some()));
}

/// A write that waits for the lease (its renewal overdue) is not committed meanwhile: other
/// requests read the key as it was, not a version that is not acknowledged and could be
/// discarded with a lost lease. It used to be committed first, then held before its answer.
#[test]
fn a_write_waiting_for_the_lease_is_not_read_before_its_answer() {
    let _turn = machine::share();
    let b = Bucket::new();
    let proxy = ProxyServer::start(&b.moto.endpoint, &[]);
    let a = start_with(&b.dir("a"), b.args_via("machine-a", &proxy.endpoint), moto_keys_env());
    assert_eq!(put(a.addr, "k", b"acknowledged"), 200);
    proxy
        .control()
        .patch(r#"{"error_rate": 1.0, "error_kinds": ["503"], "match_key_prefix": ".perch/lease"}"#);
    // Past the period (1.5 s) since the last renewal that succeeded.
    std::thread::sleep(Duration::from_millis(2500));
    let addr = a.addr;
    let waiting = std::thread::spawn(move || put(addr, "k", b"not yet acknowledged"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!waiting.is_finished(), "a write was acknowledged without a fresh lease");
    let r = Req::object("GET", a.addr, Style::Path, &key_path("k")).go(a.addr);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"acknowledged", "a write not yet acknowledged was read");
    proxy.control().patch(r#"{"error_rate": 0.0}"#);
    assert_eq!(waiting.join().expect("the waiting PUT"), 200);
    let r = Req::object("GET", a.addr, Style::Path, &key_path("k")).go(a.addr);
    assert_eq!(r.body, b"not yet acknowledged");
}
