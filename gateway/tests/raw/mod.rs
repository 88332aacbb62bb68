//! A raw HTTP/1.1 S3 client shaped like OrioleDB's (one new TCP connection per request,
//! TCP_NODELAY, hand-made SigV4 over `host;x-amz-content-sha256;x-amz-date`, no User-Agent,
//! `Expect: 100-continue` on bodies over 1 MiB), and the helpers the raw-protocol tests share:
//! starting perch, the admin and proxy endpoints, /proc lookups.
//!
//! Everything here is written from the S3 and HTTP specifications, independently of s3s and of
//! the aws SDK, so that a bug in either cannot hide a bug in perch.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use perch_bench::servers::{DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, MotoServer, PerchOptions, PerchServer};
use sha2::{Digest, Sha256};

/// The bucket OrioleDB uses in the traces.
pub const BUCKET: &str = "orioledb";
/// Bodies larger than this are sent with `Expect: 100-continue`, as OrioleDB does.
pub const EXPECT_THRESHOLD: usize = 1 << 20;
/// The SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// Keys perch signs its requests to moto with (moto accepts any).
pub const MOTO_KEY: &str = "test";

// ---------------------------------------------------------------------------------------------
// Hashing and signing
// ---------------------------------------------------------------------------------------------

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104), block size 64.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// The quoted hex MD5 of `data`: S3's ETag of a single-part object.
pub fn md5_etag(data: &[u8]) -> String {
    use md5::{Digest as _, Md5};
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

pub fn md5_base64(data: &[u8]) -> String {
    use md5::{Digest as _, Md5};
    base64_simd::STANDARD.encode_to_string(Md5::digest(data))
}

/// `YYYYMMDDTHHMMSSZ` for `t` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// S3's URI encoding: everything but unreserved characters (and `/` unless `encode_slash`).
pub fn uri_encode(s: &[u8], encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (hex(b.get(i + 1)), hex(b.get(i + 2)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A key as it goes in a request path: each byte URI-encoded, `/` kept.
pub fn key_path(key: &str) -> String {
    uri_encode(key.as_bytes(), false)
}

#[derive(Clone, Debug)]
pub struct Keys {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Keys {
    pub fn new(id: &str, secret: &str) -> Keys {
        Keys {
            access_key_id: id.to_owned(),
            secret_access_key: secret.to_owned(),
        }
    }

    /// The development pair perch accepts on loopback when no keys are configured.
    pub fn dev() -> Keys {
        Keys::new(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
    }
}

/// The SigV4 `Authorization` value for a request signed over exactly
/// `host;x-amz-content-sha256;x-amz-date`, as OrioleDB signs.
pub fn authorization(
    keys: &Keys,
    method: &str,
    host: &str,
    raw_path: &str,
    raw_query: &str,
    amz_date: &str,
    content_sha256: &str,
) -> String {
    let region = "us-east-1";
    let day = &amz_date[..8];
    // The canonical URI is the path's bytes URI-encoded once (S3 does not normalise it).
    let canonical_uri = uri_encode(&percent_decode(raw_path), false);
    let mut query: Vec<(String, String)> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(n), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{content_sha256}\n\
         x-amz-date:{amz_date}\n\n{signed_headers}\n{content_sha256}"
    );
    let scope = format!("{day}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{}", keys.secret_access_key).as_bytes(), day.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, b"s3");
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        keys.access_key_id
    )
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Where a request goes: virtual-hosted (`Host: BUCKET.localhost:PORT`, path `/KEY`) or path style
/// (`Host: 127.0.0.1:PORT`, path `/BUCKET/KEY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Virtual,
    Path,
}

/// One raw S3 request.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// The Host header.
    pub host: String,
    /// The path exactly as sent (already percent-encoded).
    pub path: String,
    /// The query exactly as sent, without `?`.
    pub query: String,
    /// Headers sent after the signed ones, in order (e.g. Content-Type, If-None-Match, Range).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// None: anonymous (no Authorization, no x-amz-* headers).
    pub keys: Option<Keys>,
    /// The request time that is signed (default: now).
    pub time: Option<SystemTime>,
    /// The declared `x-amz-content-sha256` (default: the body's real SHA-256).
    pub content_sha256: Option<String>,
    /// Send `Expect: 100-continue` (default: when the body is over 1 MiB).
    pub expect: Option<bool>,
    /// Send Content-Length (default: for PUT and POST, and whenever there is a body).
    pub content_length: Option<u64>,
    /// Send only this many body bytes, then shut down the write side.
    pub truncate_body: Option<usize>,
}

impl Req {
    /// A request for `key` in `BUCKET` on perch at `addr`, OrioleDB style.
    pub fn object(method: &str, addr: SocketAddr, style: Style, key_path: &str) -> Req {
        let (host, path) = match style {
            Style::Virtual => (format!("{BUCKET}.localhost:{}", addr.port()), format!("/{key_path}")),
            Style::Path => (format!("127.0.0.1:{}", addr.port()), format!("/{BUCKET}/{key_path}")),
        };
        Req::raw(method, host, path)
    }

    /// A request on the bucket itself (`/` virtual-hosted, `/BUCKET` path style).
    pub fn bucket(method: &str, addr: SocketAddr, style: Style, query: &str) -> Req {
        let (host, path) = match style {
            Style::Virtual => (format!("{BUCKET}.localhost:{}", addr.port()), "/".to_owned()),
            Style::Path => (format!("127.0.0.1:{}", addr.port()), format!("/{BUCKET}")),
        };
        let mut r = Req::raw(method, host, path);
        r.query = query.to_owned();
        r
    }

    pub fn raw(method: &str, host: String, path: String) -> Req {
        Req {
            method: method.to_owned(),
            host,
            path,
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            keys: Some(Keys::dev()),
            time: None,
            content_sha256: None,
            expect: None,
            content_length: None,
            truncate_body: None,
        }
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn keys(mut self, keys: Option<Keys>) -> Req {
        self.keys = keys;
        self
    }

    pub fn query(mut self, q: &str) -> Req {
        self.query = q.to_owned();
        self
    }

    /// The request bytes before the body, and the body to send after them.
    pub fn head(&self) -> (Vec<u8>, bool) {
        let mut target = self.path.clone();
        if !self.query.is_empty() {
            target.push('?');
            target.push_str(&self.query);
        }
        let mut h = format!(
            "{} {target} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n",
            self.method, self.host
        );
        let sha = self.content_sha256.clone().unwrap_or_else(|| sha256_hex(&self.body));
        let date = amz_date(self.time.unwrap_or_else(SystemTime::now));
        if self.keys.is_some() {
            h.push_str(&format!("x-amz-date: {date}\r\nx-amz-content-sha256: {sha}\r\n"));
        }
        let length = self.content_length.or_else(|| {
            (matches!(self.method.as_str(), "PUT" | "POST") || !self.body.is_empty()).then_some(self.body.len() as u64)
        });
        if let Some(n) = length {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        if let Some(keys) = &self.keys {
            let auth = authorization(keys, &self.method, &self.host, &self.path, &self.query, &date, &sha);
            h.push_str(&format!("Authorization: {auth}\r\n"));
        }
        if self.method == "PUT" {
            h.push_str("Content-Type: application/octet-stream\r\n");
        }
        for (n, v) in &self.headers {
            h.push_str(&format!("{n}: {v}\r\n"));
        }
        let expect = self.expect.unwrap_or(self.body.len() > EXPECT_THRESHOLD);
        if expect {
            h.push_str("Expect: 100-continue\r\n");
        }
        h.push_str("\r\n");
        (h.into_bytes(), expect)
    }

    /// Sends the request on a new connection to `addr` and reads the answer.
    pub fn send(&self, addr: SocketAddr) -> std::io::Result<Resp> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let (head, expect) = self.head();
        writer.write_all(&head)?;
        let body: &[u8] = match self.truncate_body {
            Some(n) => &self.body[..n.min(self.body.len())],
            None => &self.body,
        };
        let mut got_continue = false;
        if expect {
            // The body goes only after `100 Continue`; a final answer instead means it is not wanted.
            reader.get_ref().set_read_timeout(Some(Duration::from_secs(10)))?;
            let (status, headers) = match read_head(&mut reader) {
                Ok(h) => h,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no `100 Continue` (nor any answer) within 10 s of a request with Expect: 100-continue",
                    ));
                }
                Err(e) => return Err(e),
            };
            reader.get_ref().set_read_timeout(Some(Duration::from_secs(60)))?;
            if status != 100 {
                let body = read_body(&mut reader, &self.method, status, &headers)?;
                return Ok(Resp {
                    status,
                    headers,
                    body,
                    got_continue,
                });
            }
            got_continue = true;
        }
        writer.write_all(body)?;
        if self.truncate_body.is_some() {
            writer.shutdown(Shutdown::Write)?;
        }
        let (status, headers) = loop {
            let (status, headers) = read_head(&mut reader)?;
            if status == 100 {
                got_continue = true;
                continue;
            }
            break (status, headers);
        };
        let body = read_body(&mut reader, &self.method, status, &headers)?;
        Ok(Resp {
            status,
            headers,
            body,
            got_continue,
        })
    }

    /// Sends and panics with `what` on a transport error.
    #[track_caller]
    pub fn go(&self, addr: SocketAddr) -> Resp {
        match self.send(addr) {
            Ok(r) => r,
            Err(e) => panic!("{} {}: {e}", self.method, self.path),
        }
    }
}

pub fn read_head(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a status line",
        ));
    }
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside the header",
            ));
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad header {l:?}")))?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    Ok((status, headers))
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn read_body(
    r: &mut impl BufRead,
    method: &str,
    status: u16,
    headers: &[(String, String)],
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(body);
    }
    if find(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk {line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    }
    match find(headers, "content-length") {
        Some(n) => {
            let n: usize = n
                .parse()
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad Content-Length"))?;
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok(body)
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether a `100 Continue` came before it.
    pub got_continue: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `<Code>` of an S3 error body.
    pub fn code(&self) -> Option<String> {
        xml_values(&self.text(), "Code").into_iter().next()
    }

    /// `status`, the header and the start of the body, for failure messages.
    pub fn summary(&self) -> String {
        let mut text = self.text();
        // A body that is not text (lossily decoded) may have a multi-byte character across the
        // cut: cut at the char boundary at or before byte 600.
        let mut cut = text.len().min(600);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        format!("HTTP {} {:?} {text}", self.status, self.headers)
    }
}

/// The text of every `<tag>...</tag>` in `xml`, in order (entities `&amp; &lt; &gt; &quot; &apos;` decoded).
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(
            rest[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[j + close.len()..];
    }
    out
}

/// Asserts an S3 error answer: status and `<Code>`.
#[track_caller]
pub fn assert_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: expected {status} {code}, got {}",
        r.summary()
    );
    assert_eq!(
        r.code().as_deref(),
        Some(code),
        "{what}: expected S3 error code {code}, got {}",
        r.summary()
    );
}

/// Every key in `BUCKET` (ListObjectsV2 through perch, path style, following continuation).
pub fn list_keys(addr: SocketAddr) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = "list-type=2".to_owned();
        if let Some(t) = &token {
            q.push_str(&format!("&continuation-token={}", uri_encode(t.as_bytes(), true)));
        }
        let r = Req::bucket("GET", addr, Style::Path, &q).go(addr);
        assert_eq!(r.status, 200, "ListObjectsV2: {}", r.summary());
        let text = r.text();
        let contents: Vec<String> = xml_values(&text, "Contents");
        for c in contents {
            keys.extend(xml_values(&c, "Key"));
        }
        token = xml_values(&text, "NextContinuationToken").into_iter().next();
        if token.is_none() {
            break;
        }
    }
    keys
}

/// Creates `BUCKET` through perch (CreateBucket, path style).
#[track_caller]
pub fn create_bucket(addr: SocketAddr) {
    let r = Req::bucket("PUT", addr, Style::Path, "").go(addr);
    assert_eq!(r.status, 200, "CreateBucket {BUCKET}: {}", r.summary());
}

/// A deterministic pseudo-random body.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

pub fn perch_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_perch"))
}

/// A perch on a fresh data dir (kept alive with it).
pub struct Perch {
    pub server: PerchServer,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Perch {
    /// Perch with the directory origin.
    pub fn dir(args: &[&str]) -> Perch {
        Perch::start(args, Vec::new())
    }

    /// Perch in front of an S3 endpoint (moto, or the proxy in front of moto).
    pub fn s3(endpoint: &str, args: &[&str]) -> Perch {
        // moto takes the region from the signature: `auto` would need a LocationConstraint.
        let mut all = vec!["--origin", endpoint, "--origin-region", "us-east-1"];
        all.extend_from_slice(args);
        Perch::start(&all, moto_env())
    }

    pub fn start(args: &[&str], env: Vec<(String, String)>) -> Perch {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut perch = Perch::start_in(tmp.path().join("perch"), args, env);
        perch._tmp = Some(tmp);
        perch
    }

    /// Perch on `data_dir`, which the caller keeps (e.g. for a restart).
    pub fn start_in(data_dir: PathBuf, args: &[&str], env: Vec<(String, String)>) -> Perch {
        let server = PerchServer::start(PerchOptions {
            binary: perch_binary(),
            data_dir: data_dir.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env,
        });
        Perch {
            server,
            data_dir,
            _tmp: None,
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

    /// The pid of this perch (found by its unique `--data-dir` argument in /proc/*/cmdline).
    pub fn pid(&self) -> u32 {
        let dir = self.data_dir.to_string_lossy().into_owned();
        pid_with_arg(&dir).unwrap_or_else(|| panic!("no process has the argument {dir}"))
    }

    /// The last lines of perch's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.server.log_text();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Entries in `<data-dir>/tmp` (perch's body spool).
    pub fn spool_entries(&self) -> Vec<String> {
        spool_entries(&self.data_dir)
    }
}

pub fn spool_entries(data_dir: &Path) -> Vec<String> {
    match std::fs::read_dir(data_dir.join("tmp")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => panic!("read {}/tmp: {e}", data_dir.display()),
    }
}

/// Environment giving perch moto's keys for its origin requests.
pub fn moto_env() -> Vec<(String, String)> {
    vec![
        ("PERCH_ORIGIN_ACCESS_KEY_ID".to_owned(), MOTO_KEY.to_owned()),
        ("PERCH_ORIGIN_SECRET_ACCESS_KEY".to_owned(), MOTO_KEY.to_owned()),
    ]
}

pub fn moto() -> MotoServer {
    MotoServer::start()
}

/// PUT `key` of `BUCKET` straight into moto (past any proxy and perch): an object the origin has
/// and perch's cache does not.
#[track_caller]
pub fn put_into_moto(moto: &MotoServer, key: &str, body: &[u8]) {
    let addr = SocketAddr::from(([127, 0, 0, 1], moto.port));
    let r = Req::object("PUT", addr, Style::Path, &key_path(key))
        .keys(Some(Keys::new(MOTO_KEY, MOTO_KEY)))
        .body(body.to_vec())
        .go(addr);
    assert_eq!(r.status, 200, "PUT {key} into moto: {}", r.summary());
    assert_eq!(r.header("ETag"), Some(md5_etag(body).as_str()), "PUT {key} into moto");
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

/// A plain (unsigned) HTTP/1.1 request on a new connection; returns status and body.
pub fn plain(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let resp = Req::raw(method, addr.to_string(), path.to_owned())
        .keys(None)
        .body(body.to_vec())
        .send(addr)?;
    Ok((resp.status, resp.text()))
}

/// GET on perch's admin listener.
#[track_caller]
pub fn admin_get(perch: &PerchServer, path: &str) -> (u16, String) {
    plain(perch.admin, "GET", path, b"").unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
}

/// The sum of every sample of metric `name` (any labels) in a Prometheus/OpenMetrics text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
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

/// One metric of a running perch.
#[track_caller]
pub fn perch_metric(perch: &PerchServer, name: &str) -> Option<f64> {
    let (status, text) = admin_get(perch, "/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    metric_sum(&text, name)
}

/// The origin proxy's control API.
pub struct ProxyControl {
    pub addr: SocketAddr,
}

impl ProxyControl {
    #[track_caller]
    pub fn call(&self, method: &str, path: &str, body: &str) -> serde_json::Value {
        let (status, text) =
            plain(self.addr, method, path, body.as_bytes()).unwrap_or_else(|e| panic!("proxy {method} {path}: {e}"));
        assert_eq!(status, 200, "proxy {method} {path} {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("proxy {path}: {e}: {text}"))
    }

    /// Replaces the fault settings (absent fields take their command-line values).
    #[track_caller]
    pub fn faults(&self, json: &str) {
        self.call("PUT", "/__proxy/faults", json);
    }

    /// Changes only the given fault settings.
    #[track_caller]
    pub fn patch(&self, json: &str) {
        self.call("PATCH", "/__proxy/faults", json);
    }

    #[track_caller]
    pub fn reset(&self) {
        self.call("POST", "/__proxy/reset", "");
    }

    /// `"METHOD key"` → requests that reached the upstream.
    #[track_caller]
    pub fn counts(&self) -> serde_json::Map<String, serde_json::Value> {
        match self.call("GET", "/__proxy/counts", "") {
            serde_json::Value::Object(m) => m,
            other => panic!("counts: {other}"),
        }
    }

    #[track_caller]
    pub fn count(&self, method: &str, key: &str) -> u64 {
        self.counts()
            .get(&format!("{method} {key}"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    }

    /// The proxy's records in order.
    #[track_caller]
    pub fn log(&self) -> Vec<serde_json::Value> {
        match self.call("GET", "/__proxy/log", "") {
            serde_json::Value::Array(a) => a,
            other => panic!("log: {other}"),
        }
    }

    /// The records of requests for `key`, as (method, status, injected kind).
    #[track_caller]
    pub fn records_for(&self, key: &str) -> Vec<(String, u64, Option<String>)> {
        self.log()
            .into_iter()
            .filter(|r| r["key"] == key)
            .map(|r| {
                (
                    r["method"].as_str().unwrap_or("").to_owned(),
                    r["status"].as_u64().unwrap_or(0),
                    r["injected"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// The pid of the process whose command line contains `needle` as one argument
/// (e.g. perch's unique `--data-dir`).
pub fn pid_with_arg(needle: &str) -> Option<u32> {
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == needle.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Open file descriptors of `pid`.
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

#[cfg(test)]
mod self_tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(1_795_666_734)),
            "20261126T041854Z"
        );
    }

    /// The example of AWS's SigV4 documentation for S3 (GET /test.txt with a Range header is
    /// not our header set, so this checks the signing key derivation instead).
    #[test]
    fn signing_key_matches_aws_example() {
        // From "Examples of how to derive a signing key for Signature Version 4".
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), b"20120215");
        let k_region = hmac_sha256(&k_date, b"us-east-1");
        let k_service = hmac_sha256(&k_region, b"iam");
        let k_signing = hmac_sha256(&k_service, b"aws4_request");
        assert_eq!(
            hex::encode(k_signing),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
