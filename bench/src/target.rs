//! Benchmark targets: `NAME=http://127.0.0.1:PORT[,bucket=B][,style=path|virtual][,kind=s3|plain]
//! [,admin=ADDR]`, refused unless every address is on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, bail};
use serde::Serialize;

/// How the bucket is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// `/BUCKET/KEY` on `127.0.0.1:PORT`.
    Path,
    /// `/KEY` with `Host: BUCKET.localhost:PORT` (what OrioleDB sends).
    Virtual,
}

/// What speaks at the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An S3 endpoint: requests are SigV4-signed.
    S3,
    /// A plain HTTP server (nginx): unsigned GETs of `/BUCKET/KEY`, nothing else.
    Plain,
}

/// One endpoint under test.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    /// The URL as given.
    pub url: String,
    /// Where to connect (always loopback).
    pub addr: SocketAddr,
    pub bucket: String,
    pub style: Style,
    pub kind: Kind,
    /// Perch's admin listener, for `/metrics` (cache hit and miss counters).
    pub admin: Option<SocketAddr>,
    /// A plain target sent the same SigV4 headers as an S3 one (which it ignores), so that both
    /// get the same request bytes and cost the client the same signing.
    pub sign_plain: bool,
}

impl Target {
    /// Parses `NAME=URL[,key=value...]`; `default_bucket` when no `bucket=` is given.
    pub fn parse(spec: &str, default_bucket: &str) -> anyhow::Result<Target> {
        let (name, rest) = spec
            .split_once('=')
            .with_context(|| format!("--target `{spec}`: expected NAME=http://127.0.0.1:PORT[,bucket=B,...]"))?;
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            bail!("--target `{spec}`: the name must be letters, digits, `-`, `_` or `.`");
        }
        let mut parts = rest.split(',');
        let url = parts.next().unwrap_or_default().trim().to_owned();
        let addr = loopback_url(&url).with_context(|| format!("--target {name}"))?;
        let mut target = Target {
            name: name.to_owned(),
            url,
            addr,
            bucket: default_bucket.to_owned(),
            style: Style::Path,
            kind: Kind::S3,
            admin: None,
            sign_plain: false,
        };
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("--target {name}: option `{part}` is not key=value"))?;
            match k.trim() {
                "bucket" => target.bucket = v.trim().to_owned(),
                "style" => {
                    target.style = match v.trim() {
                        "path" => Style::Path,
                        "virtual" => Style::Virtual,
                        other => bail!("--target {name}: style must be path or virtual, not `{other}`"),
                    }
                }
                "kind" => {
                    target.kind = match v.trim() {
                        "s3" => Kind::S3,
                        "plain" => Kind::Plain,
                        other => bail!("--target {name}: kind must be s3 or plain, not `{other}`"),
                    }
                }
                "admin" => {
                    target.admin = Some(loopback_addr(v.trim()).with_context(|| format!("--target {name} admin"))?)
                }
                other => bail!("--target {name}: unknown option `{other}` (bucket, style, kind, admin)"),
            }
        }
        if target.bucket.len() < 3 {
            bail!("--target {name}: bucket `{}` is too short for S3", target.bucket);
        }
        Ok(target)
    }

    /// A target built in code (the suite and compare-nginx).
    pub fn new(name: &str, addr: SocketAddr, bucket: &str, kind: Kind) -> Target {
        Target {
            name: name.to_owned(),
            url: format!("http://{addr}"),
            addr,
            bucket: bucket.to_owned(),
            style: Style::Path,
            kind,
            admin: None,
            sign_plain: false,
        }
    }

    /// The `Host` header value.
    pub fn host(&self) -> String {
        match self.style {
            Style::Path => self.addr.to_string(),
            Style::Virtual => format!("{}.localhost:{}", self.bucket, self.addr.port()),
        }
    }

    /// The request path (already encoded) of `key` (or of the bucket when `None`).
    pub fn path(&self, key: Option<&str>) -> String {
        let key = key.map(encode_key);
        match (self.style, key) {
            (Style::Path, Some(k)) => format!("/{}/{k}", self.bucket),
            (Style::Path, None) => format!("/{}", self.bucket),
            (Style::Virtual, Some(k)) => format!("/{k}"),
            (Style::Virtual, None) => "/".to_owned(),
        }
    }
}

/// `http://127.0.0.1:PORT` (or `localhost`, `[::1]`) → a loopback socket address; anything else is refused.
pub fn loopback_url(url: &str) -> anyhow::Result<SocketAddr> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("`{url}`: only plain http:// URLs on loopback are supported");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if rest.trim_end_matches('/') != authority {
        bail!("`{url}`: give the endpoint without a path (use bucket= for the bucket)");
    }
    loopback_addr(authority)
}

/// `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT` → a loopback socket address.
pub fn loopback_addr(authority: &str) -> anyhow::Result<SocketAddr> {
    let authority = authority.trim();
    if let Some(port) = authority.strip_prefix("localhost:") {
        let port: u16 = port.parse().with_context(|| format!("invalid port in `{authority}`"))?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("`{authority}` is not IP:PORT (host names other than localhost are refused)"))?;
    if !is_loopback(addr.ip()) {
        bail!("`{authority}` is not a loopback address: perch-bench only ever targets loopback");
    }
    if addr.port() == 0 {
        bail!("`{authority}`: port 0");
    }
    Ok(addr)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Percent-encodes an S3 key for a URL path (RFC 3986 unreserved characters and `/` stay).
pub fn encode_key(key: &str) -> String {
    encode(key, false)
}

/// Percent-encodes a query parameter value (`/` encoded too).
pub fn encode_query_value(value: &str) -> String {
    encode(value, true)
}

fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (b == b'/' && !slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space in queries when `plus` is set).
pub fn decode(s: &str, plus: bool) -> String {
    fn hex_val(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(if b == b'+' && plus { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("perch=http://127.0.0.1:9000", "bench").unwrap();
        assert_eq!(t.name, "perch");
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.bucket, "bench");
        assert_eq!(t.style, Style::Path);
        assert_eq!(t.path(Some("a b/c")), "/bench/a%20b/c");
        assert_eq!(t.host(), "127.0.0.1:9000");

        let t = Target::parse(
            "p=http://localhost:9000/,bucket=orioledb,style=virtual,admin=127.0.0.1:9001",
            "bench",
        )
        .unwrap();
        assert_eq!(t.bucket, "orioledb");
        assert_eq!(t.host(), "orioledb.localhost:9000");
        assert_eq!(t.path(Some("data/x")), "/data/x");
        assert_eq!(t.path(None), "/");
        assert_eq!(t.admin, Some("127.0.0.1:9001".parse().unwrap()));

        let t = Target::parse("n=http://[::1]:8080,kind=plain", "bench").unwrap();
        assert_eq!(t.kind, Kind::Plain);
    }

    #[test]
    fn refuses_non_loopback() {
        for bad in [
            "x=http://10.0.0.1:9000",
            "x=http://example.com:80",
            "x=https://127.0.0.1:9000",
            "x=http://127.0.0.1:9000/bucket",
            "x=http://127.0.0.1:9000,admin=192.168.1.1:9001",
            "x=http://0.0.0.0:9000",
            "http://127.0.0.1:9000",
        ] {
            assert!(Target::parse(bad, "bench").is_err(), "{bad}");
        }
    }

    #[test]
    fn encodes() {
        assert_eq!(encode_query_value("data/3"), "data%2F3");
        assert_eq!(decode("data%2F3", true), "data/3");
        assert_eq!(decode("a+b%", true), "a b%");
        assert_eq!(decode("%zz", false), "%zz");
    }
}
