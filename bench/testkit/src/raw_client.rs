//! A raw HTTP/1.1 S3 client shaped like OrioleDB's: one new TCP connection per request,
//! TCP_NODELAY, hand-made SigV4 over `host;x-amz-content-sha256;x-amz-date`, no User-Agent,
//! `Expect: 100-continue` on bodies over 1 MiB.
//!
//! Everything here is written from the S3 and HTTP specifications, independently of s3s and of
//! the aws SDK, so that a bug in either cannot hide a bug in perch.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use crate::sigv4::{Keys, amz_date, authorization, sha256_hex, uri_encode};

/// The bucket OrioleDB uses in the traces.
pub const BUCKET: &str = "orioledb";
/// Bodies larger than this are sent with `Expect: 100-continue`, as OrioleDB does.
pub const EXPECT_THRESHOLD: usize = 1 << 20;

/// A key as it goes in a request path: each byte URI-encoded, `/` kept.
pub fn key_path(key: &str) -> String {
    uri_encode(key.as_bytes(), false)
}

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
    /// The declared `Content-Length` (default: the body's length, on a PUT, a POST or a body).
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

    /// An unsigned request for `path` (with its query, if any) on the server at `addr`.
    pub fn unsigned(method: &str, addr: SocketAddr, path: &str) -> Req {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut r = Req::raw(method, addr.to_string(), path.to_owned()).keys(None);
        r.query = query.to_owned();
        r
    }

    /// An unsigned request for a whole `http://IP:PORT/path?query` URL, e.g. a presigned one;
    /// send it to [`Req::host_addr`].
    #[track_caller]
    pub fn for_url(method: &str, url: &str) -> Req {
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http URL: {url}"));
        let (host, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host
            .parse()
            .unwrap_or_else(|e| panic!("the host of {url} is not IP:PORT: {e}"));
        Req::unsigned(method, addr, path)
    }

    /// The address the Host header names (an `IP:PORT`).
    #[track_caller]
    pub fn host_addr(&self) -> SocketAddr {
        self.host
            .parse()
            .unwrap_or_else(|e| panic!("Host {} is not IP:PORT: {e}", self.host))
    }

    /// A request signed with the development keys, as OrioleDB sends them.
    fn raw(method: &str, host: String, path: String) -> Req {
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

    /// The query, exactly as sent (without `?`).
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
            let amz: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let auth = authorization(
                keys,
                &self.method,
                &self.host,
                &self.path,
                &self.query,
                &date,
                &sha,
                &amz,
            );
            h.push_str(&format!("Authorization: {auth}\r\n"));
        }
        // OrioleDB's signed PUTs name their type; an unsigned request (a presigned URL's) brings
        // its own headers.
        if self.method == "PUT" && self.keys.is_some() {
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

/// Reads a status line and header (e.g. of an answer on a connection kept open).
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

/// Reads the body of an answer whose status and header [`read_head`] read.
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
