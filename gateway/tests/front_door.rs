//! The front door (issue 14), through real clients: a chunked PUT without a length from a raw
//! HTTP client, `--origin-region auto` in front of S3 services that are not Tigris (moto as it
//! is, and moto behind a proxy that requires its region as AWS does), and the one-line failures
//! at start (an address in use, an origin whose region cannot be found).

mod common;
mod raw;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use perch_bench::servers::{MotoServer, PerchOptions, PerchServer, ProxyServer};

/// Sends `body` as a PUT of `key` in `raw::BUCKET`, signed in its headers over `content_sha256`,
/// framed with `Transfer-Encoding: chunked` (chunks of `chunk` bytes) and no Content-Length.
/// Returns the status and the body of the answer.
fn chunked_put(addr: SocketAddr, key: &str, body: &[u8], content_sha256: &str, chunk: usize) -> (u16, String) {
    let path = format!("/{}/{key}", raw::BUCKET);
    let host = format!("127.0.0.1:{}", addr.port());
    let date = raw::amz_date(std::time::SystemTime::now());
    let auth = raw::authorization(&raw::Keys::dev(), "PUT", &host, &path, "", &date, content_sha256);
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {date}\r\nx-amz-content-sha256: {content_sha256}\r\n\
         Authorization: {auth}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for part in body.chunks(chunk) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(addr).expect("connect to perch");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    stream.write_all(&req).expect("send the request");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).expect("answer");
    (status, rest)
}

#[tokio::test]
async fn chunked_put_without_a_length_is_verified_and_stored() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let perch = start_perch(&tmp.path().join("perch"), None, &[]);
    let s3 = perch_client(&perch);
    ok(s3.create_bucket().bucket(raw::BUCKET).send().await, "create bucket");

    for (key, len, chunk) in [("small", 3000, 1000), ("large", 3 << 20, 64 << 10), ("empty", 0, 1)] {
        let body = pattern(len, len as u64);
        let (status, answer) = chunked_put(perch.addr, key, &body, &raw::sha256_hex(&body), chunk);
        assert_eq!(status, 200, "{key}: {answer}");
        let got = ok(s3.get_object().bucket(raw::BUCKET).key(key).send().await, key);
        assert_eq!(got.e_tag(), Some(md5_etag(&body).as_str()), "{key}");
        assert_eq!(bytes_of(got.body).await, body, "{key}");
    }

    // UNSIGNED-PAYLOAD: stored as sent.
    let body = pattern(200_000, 7);
    let (status, answer) = chunked_put(perch.addr, "unsigned", &body, "UNSIGNED-PAYLOAD", 50_000);
    assert_eq!(status, 200, "{answer}");
    let got = ok(
        s3.get_object().bucket(raw::BUCKET).key("unsigned").send().await,
        "unsigned",
    );
    assert_eq!(bytes_of(got.body).await, body);

    // A body that is not the one whose hash was signed: refused once it has arrived, nothing kept.
    let (status, answer) = chunked_put(perch.addr, "forged", &body, &raw::sha256_hex(b"other"), 50_000);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("XAmzContentSHA256Mismatch"), "{answer}");
    let missing = s3.head_object().bucket(raw::BUCKET).key("forged").send().await;
    expect_err(missing, 404, None);
    let spool: Vec<_> = std::fs::read_dir(tmp.path().join("perch/tmp"))
        .expect("spool dir")
        .collect();
    assert!(spool.is_empty(), "left in the spool dir: {spool:?}");
}

/// Starts perch with `--origin endpoint`, the default region (`auto`) and moto's keys.
fn perch_with_auto_region(data_dir: &std::path::Path, endpoint: &str) -> PerchServer {
    PerchServer::start(PerchOptions {
        binary: perch_binary(),
        data_dir: data_dir.to_owned(),
        args: vec!["--origin".to_owned(), endpoint.to_owned()],
        env: vec![
            ("PERCH_ORIGIN_ACCESS_KEY_ID".to_owned(), MOTO_ACCESS_KEY_ID.to_owned()),
            (
                "PERCH_ORIGIN_SECRET_ACCESS_KEY".to_owned(),
                MOTO_SECRET_ACCESS_KEY.to_owned(),
            ),
            ("NO_COLOR".to_owned(), "1".to_owned()),
        ],
    })
}

#[tokio::test]
async fn auto_region_in_front_of_moto() {
    let moto = MotoServer::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let perch = perch_with_auto_region(&tmp.path().join("perch"), &moto.endpoint);
    let s3 = perch_client(&perch);
    // moto takes the signing region for the bucket's: signed for `auto`, this was 400
    // IllegalLocationConstraintException.
    ok(s3.create_bucket().bucket("auto-region").send().await, "create bucket");
    ok(
        s3.put_object()
            .bucket("auto-region")
            .key("k")
            .body(b"v".to_vec().into())
            .send()
            .await,
        "put",
    );
    let direct = moto_client(&moto);
    let location = ok(
        direct.get_bucket_location().bucket("auto-region").send().await,
        "location",
    );
    // us-east-1's location is the empty constraint.
    assert!(
        location
            .location_constraint()
            .is_none_or(|c| c.as_str().is_empty() || c.as_str() == "us-east-1"),
        "{location:?}"
    );
}

#[tokio::test]
async fn auto_region_is_the_one_the_origin_names() {
    let moto = MotoServer::start();
    // AWS S3's way: a request signed for another region is refused, naming the right one.
    let proxy = ProxyServer::start(&moto.endpoint, &["--require-region", "eu-west-1"]);
    let tmp = tempfile::tempdir().expect("temp dir");
    let perch = perch_with_auto_region(&tmp.path().join("perch"), &proxy.endpoint);
    let s3 = perch_client(&perch);
    ok(s3.create_bucket().bucket("named-region").send().await, "create bucket");
    let body = pattern(10_000, 3);
    ok(
        s3.put_object()
            .bucket("named-region")
            .key("k")
            .body(body.clone().into())
            .send()
            .await,
        "put",
    );
    let direct = moto_client(&moto);
    let location = ok(
        direct.get_bucket_location().bucket("named-region").send().await,
        "location",
    );
    assert_eq!(
        location.location_constraint().map(|c| c.as_str()),
        Some("eu-west-1"),
        "the bucket was created in the region the origin named"
    );
    // Written back, signed for eu-west-1 (the proxy refuses anything else).
    let status = std::process::Command::new(perch_binary())
        .args(["flush", "--admin", &perch.admin.to_string(), "--timeout", "60s"])
        .output()
        .expect("perch flush");
    assert!(status.status.success(), "{status:?}");
    let got = ok(direct.get_object().bucket("named-region").key("k").send().await, "get");
    assert_eq!(bytes_of(got.body).await, body);
}

/// Runs `perch serve` with `args` until it exits (it must, within 30 s), with a backtrace asked
/// for; gives its exit status, stdout and stderr.
fn serve_until_exit(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = tmp.path().join("perch");
    let mut child = Command::new(perch_binary())
        .arg("serve")
        .args(["--data-dir", data_dir.to_str().expect("utf-8 path")])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .env("PERCH_LOG", "warn")
        .env("PERCH_ORIGIN_ACCESS_KEY_ID", "test")
        .env("PERCH_ORIGIN_SECRET_ACCESS_KEY", "test")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start perch");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("perch {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    (
        status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_address_in_use_is_one_line_naming_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    for (flag, other) in [("--listen", "--admin-listen"), ("--admin-listen", "--listen")] {
        let (status, stdout, stderr) = serve_until_exit(&[flag, &addr, other, "127.0.0.1:0"]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line, no backtrace: {stderr}");
        assert!(lines[0].contains(&addr), "{stderr}");
        assert!(lines[0].contains("already in use"), "{stderr}");
        assert!(lines[0].contains(&format!("{flag} ADDR")), "{stderr}");
    }
}

#[test]
fn an_origin_whose_region_cannot_be_found_stops_perch_at_start() {
    // Nothing listens there: the origin cannot say which region it is in.
    let port = perch_bench::servers::free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let (status, _, stderr) = serve_until_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--origin",
        &origin,
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("perch: "), "{stderr}");
    assert!(last.contains("--origin-region REGION"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    // Named, the region is not asked for, and perch serves.
    let tmp = tempfile::tempdir().expect("temp dir");
    let perch = PerchServer::start(PerchOptions {
        binary: perch_binary(),
        data_dir: tmp.path().join("perch"),
        args: vec![
            "--origin".to_owned(),
            origin,
            "--origin-region".to_owned(),
            "eu-west-1".to_owned(),
        ],
        env: vec![("NO_COLOR".to_owned(), "1".to_owned())],
    });
    assert!(perch.endpoint.starts_with("http://"));
}
