//! `perch status` and `perch flush`: small clients of a running Perch's admin endpoint (`/status`),
//! for operators and for stop scripts that must know every acknowledged write is in the origin.
//! They send PERCH_ADMIN_TOKEN, when set, as the admin listener asks beyond loopback.

use std::io::IsTerminal;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use perch_cache::WriteStatus;

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin address of the running Perch; by default the one `perch serve` would take from
    /// this environment (PERCH_ADMIN_LISTEN, or `admin_listen` in the PERCH_CONFIG file), or
    /// 127.0.0.1:9001
    #[arg(long, env = "PERCH_ADMIN", value_name = "ADDR")]
    admin: Option<String>,
}

impl AdminArgs {
    /// The address to call: `--admin`, or serve's own `--admin-listen` as this environment sets it.
    pub fn address(&self) -> anyhow::Result<String> {
        match &self.admin {
            Some(a) => Ok(a.clone()),
            None => Ok(crate::config::admin_listen_of_serve()?.to_string()),
        }
    }
}

/// `perch journal …`: the versions not yet in the origin, and the operator's decisions about
/// those the origin refused.
#[derive(Debug, Args)]
pub struct JournalArgs {
    #[command(subcommand)]
    pub command: JournalCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum JournalCommand {
    /// List the oldest versions not yet in the origin (a running Perch)
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// How many versions to list (at least 1)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Upload a version the origin refused again, once what it refused is fixed (a running Perch)
    Retry {
        #[command(flatten)]
        admin: AdminArgs,
        /// The version (its sequence number, from `perch status` or `perch journal list`)
        seq: u64,
    },
    /// Drop a version the origin refused, or one tried again through faults that do not pass
    /// (RETRYING in `perch journal list`): that acknowledged write is LOST (a running Perch)
    Drop {
        #[command(flatten)]
        admin: AdminArgs,
        seq: u64,
        /// Say that you mean it: the write is lost for good
        #[arg(long)]
        lose_this_write: bool,
    },
    /// Report the versions that would stop Perch from starting (a stopped Perch's data dir)
    Check {
        /// Perch's --data-dir
        #[arg(long, env = "PERCH_DATA_DIR", default_value = "./perch-data")]
        data_dir: std::path::PathBuf,
    },
    /// Upload a stopped Perch's journal even though the bucket's lease has moved on since its
    /// writes were made (it may overwrite newer data)
    Adopt {
        #[arg(long, env = "PERCH_DATA_DIR", default_value = "./perch-data")]
        data_dir: std::path::PathBuf,
        /// Say that you mean it: these writes go up over whatever the bucket holds now
        #[arg(long)]
        upload_over_newer_data: bool,
    },
    /// Drop every write of a stopped Perch's journal (one bound to a lease the bucket has moved
    /// on from): they are lost
    Discard {
        #[arg(long, env = "PERCH_DATA_DIR", default_value = "./perch-data")]
        data_dir: std::path::PathBuf,
        /// Say that you mean it: every write of the journal is lost
        #[arg(long)]
        lose_these_writes: bool,
    },
    /// Drop the versions `check` reports, so that Perch starts and loses nothing else
    Repair {
        #[arg(long, env = "PERCH_DATA_DIR", default_value = "./perch-data")]
        data_dir: std::path::PathBuf,
        /// Say that you mean it: those writes are lost for good
        #[arg(long)]
        drop_missing: bool,
    },
}

pub fn journal(args: &JournalArgs) -> anyhow::Result<()> {
    match &args.command {
        JournalCommand::Adopt {
            data_dir,
            upload_over_newer_data,
        } => {
            if !upload_over_newer_data {
                bail!("adopting uploads this journal over whatever the bucket holds now: add --upload-over-newer-data");
            }
            crate::lease_cmd::adopt(data_dir)
        }
        JournalCommand::Discard {
            data_dir,
            lose_these_writes,
        } => {
            if !lose_these_writes {
                bail!("discarding loses every write of the journal: add --lose-these-writes");
            }
            crate::lease_cmd::discard(data_dir)
        }
        JournalCommand::List { admin, limit } => {
            let body = get(&admin.address()?, &format!("/journal?limit={limit}"))?;
            let entries: Vec<perch_cache::JournalEntry> = serde_json::from_str(&body).context("reading /journal")?;
            for e in &entries {
                println!(
                    "{:>10} {:6} {:>10} {:13} stage {:>4} {:>8.1} s  {}/{}{}",
                    e.seq,
                    e.kind,
                    bytes(e.size),
                    e.mode,
                    e.stage,
                    e.age_seconds,
                    e.bucket,
                    e.key,
                    match (&e.refused, &e.retrying) {
                        (Some(r), _) => format!("  REFUSED: {r}"),
                        (None, Some(f)) => format!("  RETRYING: {f}"),
                        (None, None) => String::new(),
                    }
                );
            }
            if entries.is_empty() {
                println!("the journal is empty: everything acknowledged is in the origin");
            }
            Ok(())
        }
        JournalCommand::Retry { admin, seq } => {
            print!(
                "{}",
                call(&admin.address()?, "POST", &format!("/journal/retry?seq={seq}"))?
            );
            Ok(())
        }
        JournalCommand::Drop {
            admin,
            seq,
            lose_this_write,
        } => {
            if !lose_this_write {
                bail!("dropping version {seq} loses an acknowledged write; add --lose-this-write to do it");
            }
            let path = format!("/journal/drop?seq={seq}&confirm=lose-this-write");
            print!("{}", call(&admin.address()?, "POST", &path)?);
            Ok(())
        }
        JournalCommand::Check { data_dir } => {
            let journal = perch_cache::OfflineJournal::open(data_dir)
                .with_context(|| format!("opening {} (is Perch stopped?)", data_dir.display()))?;
            let (count, problems) = journal.check()?;
            for p in &problems {
                println!("version {} ({}/{}): {}", p.seq, p.bucket, p.key, p.problem);
            }
            println!(
                "{count} versions in the journal, {} that would stop the start",
                problems.len()
            );
            if problems.is_empty() {
                Ok(())
            } else {
                bail!("`perch journal repair --drop-missing` drops them (their writes are lost)")
            }
        }
        JournalCommand::Repair { data_dir, drop_missing } => {
            if !drop_missing {
                bail!("repair drops the versions whose local copy is gone (their writes are lost); add --drop-missing");
            }
            let journal = perch_cache::OfflineJournal::open(data_dir)
                .with_context(|| format!("opening {} (is Perch stopped?)", data_dir.display()))?;
            let dropped = journal.repair()?;
            for p in &dropped {
                println!("dropped version {} ({}/{}): {}", p.seq, p.bucket, p.key, p.problem);
            }
            println!("{} versions dropped; Perch can start", dropped.len());
            Ok(())
        }
    }
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

/// How long a call to the admin endpoint waits for its answer at most.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// GET `path` on the admin endpoint; the body of a 200.
fn get(admin: &str, path: &str) -> anyhow::Result<String> {
    call_within(admin, "GET", path, ANSWER_WAIT)
}

/// `method` `path` on the admin endpoint; the body of a 200.
fn call(admin: &str, method: &str, path: &str) -> anyhow::Result<String> {
    call_within(admin, method, path, ANSWER_WAIT)
}

/// `call`, connected within `wait` and answered within `wait` of each read, or an error that
/// says so.
fn call_within(admin: &str, method: &str, path: &str, wait: Duration) -> anyhow::Result<String> {
    let wait = wait.max(Duration::from_millis(100));
    let unanswered = || format!("Perch's admin endpoint {admin} did not answer {path} within {wait:.1?}");
    let addrs: Vec<_> = admin
        .to_socket_addrs()
        .with_context(|| format!("Perch's admin endpoint {admin}: not an address (--admin HOST:PORT)"))?
        .collect();
    // Each address in turn, as `TcpStream::connect` tries them (`localhost` may name ::1 first).
    let mut last = None;
    let mut connected = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, wait) {
            Ok(s) => {
                connected = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = match (connected, last) {
        (Some(s), _) => s,
        (None, Some(e)) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
            bail!(unanswered())
        }
        (None, Some(e)) => {
            return Err(anyhow::Error::new(e).context(format!("connecting to Perch's admin endpoint {admin}")));
        }
        (None, None) => bail!("Perch's admin endpoint {admin}: no address"),
    };
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(wait))?;
    let _ = stream.set_nodelay(true);
    let token = admin_token();
    let authorization = token
        .as_deref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => anyhow::anyhow!(unanswered()),
        _ => anyhow::Error::new(e).context(format!("reading the answer of Perch's admin endpoint {admin}")),
    })?;
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

fn read_status(admin: &str, upto: Option<u64>, wait: Duration) -> anyhow::Result<WriteStatus> {
    let path = match upto {
        Some(u) => format!("/status?upto={u}"),
        None => "/status".to_owned(),
    };
    let body = call_within(admin, "GET", &path, wait)?;
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
    let st = read_status(&args.address()?, None, ANSWER_WAIT)?;
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
    if st.blocked_by_refusals {
        println!("blocked: everything left waits on a refused version (perch journal retry or drop)");
    }
    println!("health: {}", if st.healthy { "ok" } else { "UNHEALTHY" });
    // A script or a health check reads the exit status.
    if !st.healthy {
        bail!("Perch reports itself unhealthy (/healthz answers 503)");
    }
    Ok(())
}

pub fn flush(args: &FlushArgs) -> anyhow::Result<()> {
    let timeout = args
        .timeout
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .context("--timeout")?;
    let admin = &args.admin.address()?;
    let started = Instant::now();
    // No call waits past the flush's own --timeout.
    let wait = || timeout.map_or(ANSWER_WAIT, |t| t.saturating_sub(started.elapsed()).min(ANSWER_WAIT));
    let target = read_status(admin, None, wait())?.last_seq;
    let mut total = None;
    // A bar redrawn in place on a terminal; to a log or a pipe, a plain line every 10 s.
    let terminal = std::io::stderr().is_terminal();
    let mut last_line: Option<Instant> = None;
    let end_bar = || {
        if terminal {
            eprintln!();
        }
    };
    loop {
        let st = read_status(admin, Some(target), wait())?;
        let left = st.pending_upto.unwrap_or(0);
        let total = *total.get_or_insert(left.max(1));
        let refused: Vec<_> = st.failed.iter().filter(|f| f.seq <= target).collect();
        let done = total.saturating_sub(left).min(total);
        let width = 30;
        let filled = (done as usize * width) / total as usize;
        let progress = format!(
            "{done}/{total} versions, {} waiting, {:.0} s",
            bytes(st.dirty_bytes),
            started.elapsed().as_secs_f64()
        );
        if terminal {
            eprint!(
                "\rflush [{}{}] {progress}",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
        } else if left > 0 && last_line.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            eprintln!("flush: {progress}");
            last_line = Some(Instant::now());
        }
        if left == 0 {
            end_bar();
            println!("flushed: every write acknowledged up to version {target} is in the origin");
            return Ok(());
        }
        // Only refused versions left, or the rest waiting behind them (a later stage, a later
        // version of their key): nothing more will go up until they are retried or dropped.
        if !refused.is_empty() && (left as usize <= refused.len() || st.blocked_by_refusals) {
            end_bar();
            for f in &refused {
                eprintln!("refused: {}/{} (version {}): {}", f.bucket, f.key, f.seq, f.error);
            }
            let behind = (left as usize).saturating_sub(refused.len());
            bail!(
                "the origin refused some writes ({behind} more wait behind them); they are kept locally \
                 (see perch status, perch journal retry/drop)"
            );
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            end_bar();
            bail!("{left} versions still not in the origin after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
