//! Perch's origin keys: a refusal of them (a wrong secret, as after a rotation) never drops an
//! acknowledged write, and SIGHUP reloads them from the --config file, after which the refused
//! uploads go up. The origin is s3s-fs, an S3 server that checks SigV4 signatures.

mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::{Perch, Req, Style, pattern};

const ORIGIN_KEY: &str = "origin-key";
const ORIGIN_SECRET: &str = "origin-secret";

/// An s3s-fs server on loopback, storing bucket `b`'s key `k` as the file `<root>/b/k` and
/// refusing any request not signed with `ORIGIN_KEY` / `ORIGIN_SECRET`.
struct SigningOrigin {
    addr: SocketAddr,
    root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SigningOrigin {
    fn start() -> SigningOrigin {
        let root = tempfile::tempdir().expect("temp dir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ORIGIN_KEY, ORIGIN_SECRET));
        let service = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let stream = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => return,
                    };
                    let service = service.clone();
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        SigningOrigin {
            addr,
            root,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the origin holds as `bucket/key`, read from its directory.
    fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join(bucket).join(key)).ok()
    }
}

impl Drop for SigningOrigin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_config(path: &Path, secret: &str) {
    std::fs::write(
        path,
        format!("origin_access_key_id = \"{ORIGIN_KEY}\"\norigin_secret_access_key = \"{secret}\"\n"),
    )
    .expect("write the config file");
}

/// Perch on `data_dir` in front of `origin`, its keys from the config file only.
fn start_perch(origin: &SigningOrigin, data_dir: &Path, config: &Path) -> raw::Perch {
    let args: Vec<String> = vec![
        "--origin".into(),
        origin.endpoint(),
        "--origin-region".into(),
        "us-east-1".into(),
        "--origin-retry-deadline".into(),
        "3s".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    // Empty values count as unset: no origin keys from the environment.
    let env = [
        "PERCH_ORIGIN_ACCESS_KEY_ID",
        "PERCH_ORIGIN_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    .iter()
    .map(|k| (k.to_string(), String::new()))
    .collect();
    Perch::start_in(
        data_dir.to_path_buf(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        env,
    )
}

fn status(perch: &Perch) -> serde_json::Value {
    let (code, body) = raw::admin_get(&perch.server, "/status");
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"))
}

#[test]
fn refused_origin_keys_keep_writes_until_sighup_reloads_the_right_ones() {
    let origin = SigningOrigin::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir: PathBuf = dir.path().join("perch");
    let config = dir.path().join("perch.toml");

    // With the right keys: the bucket, and one object that goes up (Perch now knows the bucket).
    write_config(&config, ORIGIN_SECRET);
    {
        let perch = start_perch(&origin, &data_dir, &config);
        let r = Req::bucket("PUT", perch.addr(), Style::Path, "").go(perch.addr());
        assert_eq!(r.status, 200, "CreateBucket: {}", r.summary());
        let r = Req::object("PUT", perch.addr(), Style::Path, "seed")
            .body(pattern(100, 1))
            .go(perch.addr());
        assert_eq!(r.status, 200, "{}", r.summary());
        raw::flush(&perch.server, Duration::from_secs(30));
        assert_eq!(origin.object(raw::BUCKET, "seed"), Some(pattern(100, 1)));
        perch.server.terminate(Duration::from_secs(30));
    }

    // Restarted with a wrong secret (a rotation Perch has not been told of): writes are still
    // acknowledged, and the origin's refusal is retried, never taken as final.
    write_config(&config, "not-the-secret");
    let perch = start_perch(&origin, &data_dir, &config);
    let objects = [
        ("wal/000000010000000000000001", 2 << 20),
        ("data/1/a", 1000),
        ("data/1/b", 10),
    ];
    for (i, (key, len)) in objects.iter().enumerate() {
        let r = Req::object("PUT", perch.addr(), Style::Path, key)
            .body(pattern(*len, 10 + i as u64))
            .go(perch.addr());
        // wal/* is write-through: it waits for the origin, then answers 503 SlowDown after the
        // retry deadline; it stays queued all the same.
        if key.starts_with("wal/") {
            assert_eq!(r.status, 503, "{key}: {}", r.summary());
        } else {
            assert_eq!(r.status, 200, "{key}: {}", r.summary());
        }
    }
    let refused_for_keys = raw::wait_until(Duration::from_secs(20), || {
        status(&perch)["origin_fault"]
            .as_str()
            .is_some_and(|f| f.contains("SignatureDoesNotMatch"))
    });
    let st = status(&perch);
    assert!(
        refused_for_keys,
        "the origin's refusal is not reported as a fault: {st}"
    );
    assert_eq!(
        st["failed"].as_array().map(Vec::len),
        Some(0),
        "a key refusal was taken as final: {st}"
    );
    assert_eq!(st["dirty_objects"], 3, "{st}");
    for (key, _) in objects {
        assert_eq!(
            origin.object(raw::BUCKET, key),
            None,
            "{key} reached the origin with a wrong key"
        );
    }
    // Reads are served from what was acknowledged.
    let r = Req::object("GET", perch.addr(), Style::Path, "data/1/a").go(perch.addr());
    assert_eq!((r.status, r.body.clone()), (200, pattern(1000, 11)), "{}", r.summary());

    // The right secret in the file, then SIGHUP: everything goes up, with its bytes.
    write_config(&config, ORIGIN_SECRET);
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &perch.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(kill.success());
    raw::flush(&perch.server, Duration::from_secs(60));
    for (i, (key, len)) in objects.iter().enumerate() {
        assert_eq!(
            origin.object(raw::BUCKET, key),
            Some(pattern(*len, 10 + i as u64)),
            "{key} in the origin after SIGHUP"
        );
    }
    assert!(
        perch.server.log_text().contains("origin keys reloaded"),
        "{}",
        perch.log_tail()
    );
}
