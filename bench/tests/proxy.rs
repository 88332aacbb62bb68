//! Integration tests for `perch-bench origin-proxy`: the real binary in front of a real S3
//! server (`moto_server`, which must be on PATH), driven with raw HTTP/1.1.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream as StdTcpStream},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use perch_testkit::servers::free_port;
use rand::{RngCore, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// moto accepts any signature but treats requests without Authorization as anonymous.
const AUTH: &str =
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
const IO_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- moto_server

/// One moto_server for the whole test binary. It runs under a small `sh` that kills it
/// as soon as our end of its stdin closes, i.e. when this test process exits.
struct Moto {
    port: u16,
    _child: Child,
    _stdin: ChildStdin,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn http_ok(port: u16) -> bool {
    let Ok(mut s) = StdTcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

fn moto() -> u16 {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let exe = find_on_path("moto_server").unwrap_or_else(|| {
            panic!(
                "moto_server is not on PATH ({:?}); these tests need a real S3 server: \
                 install it with `pip install 'moto[server]'` and make sure moto_server is on PATH",
                std::env::var("PATH").unwrap_or_default()
            )
        });
        let port = free_port();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & pid=$!; read _ignored; kill $pid"#)
            .arg(&exe)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .spawn()
            .expect("cannot start moto_server");
        let stdin = child.stdin.take().expect("moto stdin");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http_ok(port) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto_server ({}) exited early: {status}", exe.display());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server ({}) did not answer on 127.0.0.1:{port} within 60 s",
                exe.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            port,
            _child: child,
            _stdin: stdin,
        }
    })
    .port
}

// ---------------------------------------------------------------- the proxy

struct Proxy {
    addr: SocketAddr,
    child: Child,
}

impl Proxy {
    fn start(extra: &[&str]) -> Proxy {
        let upstream = format!("http://127.0.0.1:{}", moto());
        let mut child = Command::new(env!("CARGO_BIN_EXE_perch-bench"))
            .args(["origin-proxy", "--listen", "127.0.0.1:0", "--upstream", &upstream])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start perch-bench");
        let stdout = child.stdout.take().expect("proxy stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(IO_TIMEOUT).expect("proxy printed nothing on stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("unexpected first stdout line from the proxy: {line:?}")
            });
        Proxy { addr, child }
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = send(self.addr, "GET", path, &[], Vec::new())
            .await
            .expect("control GET");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        serde_json::from_slice(&r.body).expect("control JSON")
    }

    async fn faults(&self, method: &str, settings: Value) -> Value {
        let body = serde_json::to_vec(&settings).unwrap();
        let r = send(self.addr, method, "/__proxy/faults", &[], body)
            .await
            .expect("faults");
        assert_eq!(r.status, 200, "{method} faults {settings}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    async fn reset(&self) {
        let r = send(self.addr, "POST", "/__proxy/reset", &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }

    async fn log(&self) -> Vec<Value> {
        match self.get_json("/__proxy/log").await {
            Value::Array(records) => records,
            other => panic!("log is not an array: {other}"),
        }
    }

    async fn counts(&self) -> Value {
        self.get_json("/__proxy/counts").await
    }

    /// Requests a path-style object through the proxy.
    async fn s3(&self, method: &str, path: &str, body: Vec<u8>) -> Resp {
        send(self.addr, method, path, &[], body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- raw HTTP

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn send_on(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Resp, hyper::Error> {
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", addr.to_string());
    }
    req = req.header("authorization", AUTH);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/octet-stream");
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = tokio::time::timeout(IO_TIMEOUT, sender.send_request(req))
        .await
        .expect("request timed out")?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Resp { status, headers, body })
}

/// One request on a fresh connection.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Resp, hyper::Error> {
    let mut sender = connect(addr).await;
    send_on(&mut sender, addr, method, path, headers, body).await
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

async fn create_bucket(proxy: &Proxy, bucket: &str) {
    let r = proxy.s3("PUT", &format!("/{bucket}"), Vec::new()).await;
    assert_eq!(r.status, 200, "create bucket {bucket}: {}", r.text());
}

fn field<'a>(records: &'a [Value], name: &str) -> Vec<&'a Value> {
    records.iter().map(|r| &r[name]).collect()
}

/// Reads from `stream` until a full response head (`\r\n\r\n`) is buffered; returns it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return String::from_utf8_lossy(&head).into_owned();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .expect("read");
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn forwards_objects_and_records_log_and_counts() {
    let log_path = std::env::temp_dir().join(format!(
        "perch-origin-proxy-{}-{}.jsonl",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_file(&log_path);
    let proxy = Proxy::start(&["--log", log_path.to_str().unwrap()]);
    create_bucket(&proxy, "fwd-bucket").await;

    let data = random_bytes(300 * 1024 + 7, 1);
    let r = proxy.s3("PUT", "/fwd-bucket/dir/obj%201.bin", data.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = proxy.s3("GET", "/fwd-bucket/dir/obj%201.bin", Vec::new()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == data, "GET returned different bytes");
    assert!(r.headers.get("connection").is_none(), "hop-by-hop header leaked");
    let r = proxy.s3("HEAD", "/fwd-bucket/dir/obj%201.bin", Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], data.len().to_string().as_str());
    let r = proxy.s3("GET", "/fwd-bucket?list-type=2", Vec::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<Key>dir/obj 1.bin</Key>"), "{}", r.text());

    // Without Authorization moto treats the request as anonymous and refuses it, so the
    // 200s above also prove the header went through untouched.
    assert_eq!(
        proxy.counts().await,
        json!({
            "PUT ": 1,
            "PUT dir/obj 1.bin": 1,
            "GET dir/obj 1.bin": 1,
            "HEAD dir/obj 1.bin": 1,
            "GET ": 1,
        })
    );
    let log = proxy.log().await;
    assert_eq!(log.len(), 5, "{log:#?}");
    assert_eq!(
        field(&log, "method"),
        ["PUT", "PUT", "GET", "HEAD", "GET"]
            .map(|s| json!(s))
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        field(&log, "key"),
        ["", "dir/obj 1.bin", "dir/obj 1.bin", "dir/obj 1.bin", ""]
            .map(|s| json!(s))
            .iter()
            .collect::<Vec<_>>()
    );
    let seqs: Vec<u64> = log.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq not increasing: {seqs:?}");
    for r in &log {
        assert_eq!(r["bucket"], "fwd-bucket");
        assert_eq!(r["status"], 200);
        assert_eq!(r["injected"], Value::Null);
        assert!(r["t_end"].as_f64().unwrap() >= r["t_start"].as_f64().unwrap());
    }
    assert_eq!(log[1]["path"], "/fwd-bucket/dir/obj%201.bin");
    assert_eq!(log[1]["req_bytes"], data.len());
    assert_eq!(log[2]["resp_bytes"], data.len());
    assert_eq!(log[3]["resp_bytes"], 0);
    assert_eq!(log[4]["query"], "list-type=2");
    assert_eq!(log[0]["query"], Value::Null);

    // --log has the same records as JSON lines.
    let lines = std::fs::read_to_string(&log_path).expect("--log file");
    let from_file: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(from_file, log);
    let _ = std::fs::remove_file(&log_path);

    // Control requests are never forwarded nor recorded; reset clears both views.
    proxy.reset().await;
    assert_eq!(proxy.log().await, Vec::<Value>::new());
    assert_eq!(proxy.counts().await, json!({}));
    let r = send(proxy.addr, "GET", "/__proxy/nope", &[], Vec::new()).await.unwrap();
    assert_eq!(r.status, 404);
    let r = send(proxy.addr, "DELETE", "/__proxy/log", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(proxy.counts().await, json!({}));
}

#[tokio::test]
async fn expect_continue_is_honoured() {
    let proxy = Proxy::start(&[]);
    create_bucket(&proxy, "expect-bucket").await;
    let data = random_bytes(64 * 1024, 2);
    let head = |len: usize| {
        format!(
            "PUT /expect-bucket/up.bin HTTP/1.1\r\nHost: {}\r\nAuthorization: {AUTH}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\
             Expect: 100-continue\r\n\r\n",
            proxy.addr
        )
    };

    // Forwarded: 100 Continue first, then the upload, then the origin's 200.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(head(data.len()).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let interim = read_head(&mut stream, &mut buf).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream.write_all(&data).await.unwrap();
    let fin = read_head(&mut stream, &mut buf).await;
    assert!(fin.starts_with("HTTP/1.1 200"), "{fin}");
    drop(stream);
    let r = proxy.s3("GET", "/expect-bucket/up.bin", Vec::new()).await;
    assert!(r.status == 200 && r.body == data, "object not stored intact");

    // Injected error: answered at once, no 100 Continue, body never asked for.
    proxy
        .faults("PUT", json!({"fail_next": 1, "error_kinds": ["500"]}))
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(head(data.len()).as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let fin = read_head(&mut stream, &mut buf).await;
    assert!(fin.starts_with("HTTP/1.1 500"), "{fin}");
    let log = proxy.log().await;
    let last = log.last().unwrap();
    assert_eq!(last["injected"], "500");
    assert_eq!(last["req_bytes"], 0);
    assert_eq!(proxy.counts().await["PUT up.bin"], 1);
}

#[tokio::test]
async fn fail_next_503_never_reaches_upstream() {
    let proxy = Proxy::start(&[]);
    create_bucket(&proxy, "failnext-bucket").await;
    let r = proxy.s3("PUT", "/failnext-bucket/k", b"payload".to_vec()).await;
    assert_eq!(r.status, 200);
    proxy.reset().await;

    let set = proxy
        .faults("PUT", json!({"fail_next": 2, "error_kinds": ["503"]}))
        .await;
    assert_eq!(set["fail_next"], 2);
    assert_eq!(proxy.get_json("/__proxy/faults").await, set);
    for _ in 0..2 {
        let r = proxy.s3("GET", "/failnext-bucket/k", Vec::new()).await;
        assert_eq!(r.status, 503);
        assert!(r.text().contains("<Code>SlowDown</Code>"), "{}", r.text());
        assert!(r.headers.get("retry-after").is_none());
        assert_eq!(r.headers["content-type"], "application/xml");
    }
    let r = proxy.s3("GET", "/failnext-bucket/k", Vec::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"payload");
    assert_eq!(proxy.counts().await, json!({"GET k": 1}));
    let log = proxy.log().await;
    assert_eq!(field(&log, "injected"), [&json!("503"), &json!("503"), &Value::Null]);
    assert_eq!(field(&log, "status"), [&json!(503), &json!(503), &json!(200)]);
    assert_eq!(proxy.get_json("/__proxy/faults").await["fail_next"], 0);

    // Match filters: only PUTs under "up/" are eligible.
    proxy
        .faults(
            "PUT",
            json!({"fail_next": 1, "error_kinds": [500], "match_method": "put", "match_key_prefix": "up/"}),
        )
        .await;
    assert_eq!(proxy.s3("GET", "/failnext-bucket/k", Vec::new()).await.status, 200);
    assert_eq!(proxy.s3("PUT", "/failnext-bucket/k", b"x".to_vec()).await.status, 200);
    let r = proxy.s3("PUT", "/failnext-bucket/up/1", b"x".to_vec()).await;
    assert_eq!(r.status, 500);
    assert!(r.text().contains("<Code>InternalError</Code>"));
    assert_eq!(
        proxy.s3("PUT", "/failnext-bucket/up/1", b"x".to_vec()).await.status,
        200
    );
    assert_eq!(proxy.counts().await, json!({"GET k": 2, "PUT k": 1, "PUT up/1": 1}));

    // Bad settings are refused and leave the current ones alone.
    let r = send(
        proxy.addr,
        "PUT",
        "/__proxy/faults",
        &[],
        br#"{"error_rate": 2}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    let r = send(
        proxy.addr,
        "PUT",
        "/__proxy/faults",
        &[],
        br#"{"fail_nxt": 1}"#.to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(proxy.get_json("/__proxy/faults").await["match_method"], "put");
}

#[tokio::test]
async fn cut_body_after_forwards_then_closes_mid_body() {
    let proxy = Proxy::start(&[]);
    create_bucket(&proxy, "cut-bucket").await;
    // Large enough that hyper holds part of the cut body in its write buffer: all of it must
    // still reach the client before the connection closes.
    let data = random_bytes(2_000_000, 9);
    assert_eq!(proxy.s3("PUT", "/cut-bucket/big/k", data.clone()).await.status, 200);
    assert_eq!(proxy.s3("PUT", "/cut-bucket/other", b"o".to_vec()).await.status, 200);
    proxy.reset().await;

    let set = proxy
        .faults(
            "PUT",
            json!({"fail_next": 1, "cut_body_after": 1_000_000, "match_key_prefix": "big/"}),
        )
        .await;
    assert_eq!(set["cut_body_after"], 1_000_000);
    // Neither a HEAD of the key nor a GET of another key uses up the fault.
    assert_eq!(proxy.s3("HEAD", "/cut-bucket/big/k", Vec::new()).await.status, 200);
    assert_eq!(&proxy.s3("GET", "/cut-bucket/other", Vec::new()).await.body[..], b"o");

    // The cut GET: the head announces the whole length, then exactly 1,000,000 bytes, then EOF.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "GET /cut-bucket/big/k HTTP/1.1\r\nHost: {}\r\nAuthorization: {AUTH}\r\n\r\n",
        proxy.addr
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut stream, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", data.len())),
        "{head}"
    );
    tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut buf))
        .await
        .expect("the proxy must close the connection after the cut")
        .expect("read");
    assert_eq!(buf.len(), 1_000_000);
    assert!(
        buf[..] == data[..1_000_000],
        "the bytes before the cut must be the object's"
    );
    assert_eq!(proxy.get_json("/__proxy/faults").await["fail_next"], 0);

    // The next GET is whole, and a hyper client sees a cut one as an error.
    let r = proxy.s3("GET", "/cut-bucket/big/k", Vec::new()).await;
    assert!(r.body == data, "the GET after the cut must be whole");
    proxy
        .faults("PATCH", json!({"fail_next": 1, "cut_body_after": 0}))
        .await;
    send(proxy.addr, "GET", "/cut-bucket/big/k", &[], Vec::new())
        .await
        .expect_err("a body cut before its first byte must fail");

    // Every cut GET reached the upstream and is counted; the records say where it was cut.
    assert_eq!(
        proxy.counts().await,
        json!({"HEAD big/k": 1, "GET other": 1, "GET big/k": 3})
    );
    let log = proxy.log().await;
    let cut: Vec<&Value> = log.iter().filter(|r| r["key"] == "big/k").collect();
    assert_eq!(cut.len(), 4, "{log:#?}");
    assert_eq!(
        cut.iter().map(|r| &r["cut_body_after"]).collect::<Vec<_>>(),
        [&Value::Null, &json!(1_000_000), &Value::Null, &json!(0)]
    );
    assert_eq!(
        cut.iter().map(|r| &r["resp_bytes"]).collect::<Vec<_>>(),
        [&json!(0), &json!(1_000_000), &json!(data.len()), &json!(0)]
    );
    for r in &cut {
        assert_eq!(r["status"], 200);
        assert_eq!(r["injected"], Value::Null);
    }
    for i in [1, 3] {
        let error = cut[i]["error"].as_str().unwrap_or_default();
        assert!(error.contains("cut by an injected fault"), "{error}");
    }
}

#[tokio::test]
async fn outage_on_and_off() {
    let proxy = Proxy::start(&[]);
    create_bucket(&proxy, "outage-bucket").await;
    assert_eq!(proxy.s3("PUT", "/outage-bucket/k", b"v".to_vec()).await.status, 200);
    proxy.reset().await;

    proxy.faults("PATCH", json!({"outage": true})).await;
    for method in ["GET", "PUT", "HEAD"] {
        let r = proxy.s3(method, "/outage-bucket/k", b"v".to_vec()).await;
        assert_eq!(r.status, 503, "{method}");
        if method != "HEAD" {
            assert!(r.text().contains("<Code>ServiceUnavailable</Code>"), "{}", r.text());
        }
    }
    assert_eq!(proxy.counts().await, json!({}));
    proxy.faults("PATCH", json!({"outage": false})).await;
    assert_eq!(proxy.s3("GET", "/outage-bucket/k", Vec::new()).await.status, 200);
    assert_eq!(proxy.counts().await, json!({"GET k": 1}));
    let log = proxy.log().await;
    assert_eq!(
        field(&log, "injected"),
        [&json!("outage"), &json!("outage"), &json!("outage"), &Value::Null]
    );
}

#[tokio::test]
async fn outage_schedule_from_the_command_line() {
    let proxy = Proxy::start(&["--outage-schedule", "0:2"]);
    let started = Instant::now();
    let r = proxy.s3("GET", "/sched-bucket", Vec::new()).await;
    assert_eq!(r.status, 503);
    assert_eq!(proxy.log().await[0]["injected"], "outage");
    assert!(proxy.get_json("/__proxy/status").await["scheduled_outage_active"] == true);
    // Once the window is over, requests reach moto again.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(started.elapsed())).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = proxy.s3("GET", "/sched-bucket", Vec::new()).await;
        if r.headers.get("x-perch-injected").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the scheduled outage never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.counts().await, json!({"GET ": 1}));
}

#[tokio::test]
async fn reset_and_stall_close_the_connection_without_response() {
    let proxy = Proxy::start(&[]);
    create_bucket(&proxy, "reset-bucket").await;
    proxy.reset().await;

    proxy
        .faults("PUT", json!({"fail_next": 1, "error_kinds": ["reset"]}))
        .await;
    let err = send(proxy.addr, "GET", "/reset-bucket/k", &[], Vec::new())
        .await
        .expect_err("a reset must not produce a response");
    let reset_by_peer = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
    assert!(reset_by_peer, "expected a TCP reset, got {err:?}");

    proxy
        .faults(
            "PUT",
            json!({"fail_next": 1, "error_kinds": ["stall"], "stall_ms": 300}),
        )
        .await;
    let started = Instant::now();
    send(proxy.addr, "GET", "/reset-bucket/k", &[], Vec::new())
        .await
        .expect_err("a stall must end in a reset");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The next request goes through on a new connection.
    assert_eq!(
        proxy.s3("GET", "/reset-bucket?list-type=2", Vec::new()).await.status,
        200
    );
    assert_eq!(proxy.counts().await, json!({"GET ": 1}));
    let log = proxy.log().await;
    assert_eq!(
        field(&log, "injected"),
        [&json!("reset"), &json!("stall"), &Value::Null]
    );
    assert_eq!(field(&log, "status"), [&json!(0), &json!(0), &json!(200)]);
}

#[tokio::test]
async fn latency_new_connection_rtts_and_bandwidth_add_time() {
    let proxy = Proxy::start(&["--latency-ms", "200", "--new-conn-rtts", "2"]);
    // Connection setup is charged once: 200 ms + 2 x 200 ms.
    let mut conn = connect(proxy.addr).await;
    let started = Instant::now();
    let r = send_on(&mut conn, proxy.addr, "PUT", "/latency-bucket", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    // Same connection: only the latency.
    let data = random_bytes(100_000, 3);
    let started = Instant::now();
    let r = send_on(&mut conn, proxy.addr, "PUT", "/latency-bucket/obj", &[], data.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let log = proxy.log().await;
    assert_eq!(
        log[0]["conn"], log[1]["conn"],
        "the client connection was not kept alive"
    );

    // 100 000 bytes at 200 000 B/s take at least ~0.5 s.
    proxy
        .faults("PATCH", json!({"latency_ms": 0, "bandwidth_bytes_per_sec": 200_000}))
        .await;
    let started = Instant::now();
    let r = send_on(&mut conn, proxy.addr, "GET", "/latency-bucket/obj", &[], Vec::new())
        .await
        .unwrap();
    assert!(r.status == 200 && r.body == data);
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn virtual_hosted_host_is_parsed_into_bucket_and_key() {
    let proxy = Proxy::start(&[]);
    let host = format!("vhost-bucket.localhost:{}", proxy.addr.port());
    send(
        proxy.addr,
        "GET",
        "/dir/key%2B1.txt?versionId=3",
        &[("host", &host)],
        Vec::new(),
    )
    .await
    .expect("virtual-hosted request");
    let log = proxy.log().await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["bucket"], "vhost-bucket");
    assert_eq!(log[0]["key"], "dir/key+1.txt");
    assert_eq!(log[0]["path"], "/dir/key%2B1.txt");
    assert_eq!(log[0]["query"], "versionId=3");
    assert_eq!(proxy.counts().await, json!({"GET dir/key+1.txt": 1}));
}

#[tokio::test]
async fn error_rate_is_deterministic_under_seed() {
    async fn pattern() -> Vec<Value> {
        let proxy = Proxy::start(&["--seed", "42", "--error-rate", "0.5", "--error-kinds", "500,slowdown"]);
        for _ in 0..16 {
            proxy.s3("GET", "/seed-bucket/none", Vec::new()).await;
        }
        proxy.log().await.iter().map(|r| r["injected"].clone()).collect()
    }
    let first = pattern().await;
    assert_eq!(first.len(), 16);
    assert!(first.iter().any(Value::is_null) && first.iter().any(|v| !v.is_null()));
    assert_eq!(first, pattern().await);
}

#[test]
fn refuses_non_loopback_addresses() {
    for (listen, upstream) in [
        ("0.0.0.0:0", "http://127.0.0.1:9"),
        ("127.0.0.1:0", "http://10.1.2.3:9000"),
        ("127.0.0.1:0", "http://example.com:9000"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_perch-bench"))
            .args(["origin-proxy", "--listen", listen, "--upstream", upstream])
            .output()
            .expect("run perch-bench");
        assert!(!out.status.success(), "{listen} -> {upstream} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("loopback"), "unclear error: {stderr}");
        assert!(out.stdout.is_empty());
    }
}
