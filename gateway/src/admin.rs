//! `perch status` and `perch flush`: small clients of a running Perch's admin endpoint (`/status`),
//! for operators and for stop scripts that must know every acknowledged write is in the origin.
//! They send PERCH_ADMIN_TOKEN, when set, as the admin listener asks beyond loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use perch_cache::WriteStatus;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin address of the running Perch (its --admin-listen)
    #[arg(long, env = "PERCH_ADMIN", value_name = "ADDR", default_value = "127.0.0.1:9001")]
    pub admin: String,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Give up after this long (e.g. `5m`); by default wait for as long as it takes
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

/// The admin token to send: PERCH_ADMIN_TOKEN (from the environment only: a flag would show in `ps`).
fn admin_token() -> Option<String> {
    std::env::var("PERCH_ADMIN_TOKEN").ok().filter(|t| !t.is_empty())
}

/// GET `path` on the admin endpoint; the body of a 200.
fn get(admin: &str, path: &str) -> anyhow::Result<String> {
    let mut stream =
        TcpStream::connect(admin).with_context(|| format!("connecting to Perch's admin endpoint {admin}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.set_nodelay(true);
    let token = admin_token();
    let authorization = token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\n{authorization}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed answer from the admin endpoint")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "401" {
        match token {
            Some(_) => bail!("{path}: the admin endpoint refused PERCH_ADMIN_TOKEN; set it to perch serve's token"),
            None => bail!("{path}: the admin endpoint needs a token; set PERCH_ADMIN_TOKEN to perch serve's token"),
        }
    }
    if status != "200" {
        bail!("{path} answered {status}: {}", body.trim());
    }
    // Perch answers with a Content-Length body; a chunked one would start with its size line.
    Ok(body.to_owned())
}

fn read_status(admin: &str, upto: Option<u64>) -> anyhow::Result<WriteStatus> {
    let path = match upto {
        Some(u) => format!("/status?upto={u}"),
        None => "/status".to_owned(),
    };
    let body = get(admin, &path)?;
    serde_json::from_str(&body).context("reading /status")
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn status(args: &AdminArgs) -> anyhow::Result<()> {
    let st = read_status(&args.admin, None)?;
    println!(
        "backlog: {} objects, {}, oldest {:.1} s",
        st.dirty_objects,
        bytes(st.dirty_bytes),
        st.oldest_age_seconds
    );
    println!("uploading: {}", st.in_flight);
    println!("last acknowledged version: {}", st.last_seq);
    match &st.origin_fault {
        Some(f) => println!("origin: retrying after: {f}"),
        None => println!("origin: ok"),
    }
    for f in &st.failed {
        println!("refused: {}/{} (version {}): {}", f.bucket, f.key, f.seq, f.error);
    }
    println!("health: {}", if st.healthy { "ok" } else { "UNHEALTHY" });
    Ok(())
}

pub fn flush(args: &FlushArgs) -> anyhow::Result<()> {
    let timeout = args
        .timeout
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .context("--timeout")?;
    let admin = &args.admin.admin;
    let target = read_status(admin, None)?.last_seq;
    let started = Instant::now();
    let mut total = None;
    loop {
        let st = read_status(admin, Some(target))?;
        let left = st.pending_upto.unwrap_or(0);
        let total = *total.get_or_insert(left.max(1));
        let refused: Vec<_> = st.failed.iter().filter(|f| f.seq <= target).collect();
        let done = total.saturating_sub(left).min(total);
        let width = 30;
        let filled = (done as usize * width) / total as usize;
        eprint!(
            "\rflush [{}{}] {done}/{total} versions, {} waiting, {:.0} s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            bytes(st.dirty_bytes),
            started.elapsed().as_secs_f64()
        );
        if left == 0 {
            eprintln!();
            println!("flushed: every write acknowledged up to version {target} is in the origin");
            return Ok(());
        }
        if !refused.is_empty() && left as usize <= refused.len() {
            eprintln!();
            for f in refused {
                eprintln!("refused: {}/{} (version {}): {}", f.bucket, f.key, f.seq, f.error);
            }
            bail!("the origin refused some writes; they are kept locally (see perch status)");
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            eprintln!();
            bail!("{left} versions still not in the origin after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
