//! The control protocol, over a Unix stream socket: one request line per connection, answered
//! by lines ending with `OK` or `ERR <message>`; then the daemon closes the connection.
//!
//! - `PING` → `OK`
//! - `STATUS` → `file <path> synced <bytes> size <bytes> dirty_pages <n>` per file with unsynced
//!   data, `op <seq> <description>` per unsynced namespace operation (oldest first), then
//!   `files <n> dirty_pages <n> ops <n>`, `OK`.
//! - `CUT <seed> [a|b|c|d]` → cuts the power (mode from the seed, `seed % 3`, unless given):
//!   `seed <n>`, `mode <letter> <name>`, `state <digest>`, `file <path> size <current> -> <final>
//!   synced <bytes> pages_kept <n> pages_dropped <n>` per file with unsynced data, `kept <seq>
//!   <description>` per surviving unsynced operation (modes c, d), `undone <seq> <description>` per
//!   dropped one (newest first), `summary files <n> pages_kept <n> pages_dropped <n> ops_kept <n>
//!   ops_undone <n>`, then `OK` once the backing directory holds the post-cut image and the mount
//!   is gone (the daemon exits right after); `ERR <message>` if the cut could not be carried out.
//! - `SHUTDOWN` → a clean unmount (nothing is lost), `OK`, and the daemon exits.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::fs::{Shared, lock};
use crate::model::Mode;

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    Status,
    Cut { seed: u64, mode: Option<Mode> },
    Shutdown,
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["PING"] => Ok(Request::Ping),
            ["STATUS"] => Ok(Request::Status),
            ["SHUTDOWN"] => Ok(Request::Shutdown),
            ["CUT", seed, rest @ ..] if rest.len() <= 1 => {
                let seed = seed.parse().map_err(|_| format!("bad seed {seed:?}"))?;
                let mode = match rest.first() {
                    None => None,
                    Some(m) => Some(Mode::parse(m).ok_or_else(|| format!("bad mode {m:?} (a, b, c or d)"))?),
                };
                Ok(Request::Cut { seed, mode })
            }
            _ => Err(format!(
                "unknown request {line:?} (PING, STATUS, CUT <seed> [a|b|c], SHUTDOWN)"
            )),
        }
    }

    pub fn line(&self) -> String {
        match self {
            Request::Ping => "PING".into(),
            Request::Status => "STATUS".into(),
            Request::Shutdown => "SHUTDOWN".into(),
            Request::Cut { seed, mode: None } => format!("CUT {seed}"),
            Request::Cut { seed, mode: Some(m) } => format!("CUT {seed} {}", m.letter()),
        }
    }
}

/// Sends one request and returns the answer's lines before its final `OK`.
pub fn request(socket: &Path, req: &Request) -> Result<Vec<String>, Error> {
    let mut stream =
        UnixStream::connect(socket).map_err(Error::io(format!("connect to control socket {}", socket.display())))?;
    writeln!(stream, "{}", req.line()).map_err(Error::io("send the request"))?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(Error::io("read the answer"))?;
        if line == "OK" {
            return Ok(lines);
        }
        if let Some(msg) = line.strip_prefix("ERR ") {
            return Err(Error::Refused {
                message: msg.to_string(),
                lines,
            });
        }
        lines.push(line);
    }
    Err(Error::NoAnswer)
}

/// Where the daemon is, for what it does after a cut or shutdown.
pub struct Daemon {
    pub shared: Shared,
    pub mountpoint: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// Unmounts (lazily: a process still holding a file there gets errors from now on) and
    /// removes the socket, so a new daemon can take both at once.
    pub fn release(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(e) = crate::sys::unmount(self.mountpoint.as_os_str(), true) {
            errors.push(format!("unmount {}: {e}", self.mountpoint.display()));
        }
        let _ = std::fs::remove_file(&self.socket);
        errors
    }
}

/// Serves requests until a cut or shutdown, which end the process.
pub fn serve(listener: UnixListener, daemon: Daemon) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let mut out = &stream;
        let reply = |out: &mut &UnixStream, lines: &[String], end: &str| {
            let mut text = String::new();
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
            text.push_str(end);
            text.push('\n');
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        };
        match Request::parse(line.trim()) {
            Err(e) => reply(&mut out, &[], &format!("ERR {e}")),
            Ok(Request::Ping) => reply(&mut out, &[], "OK"),
            Ok(Request::Status) => {
                let lines = lock(&daemon.shared).status();
                reply(&mut out, &lines, "OK");
            }
            Ok(Request::Shutdown) => {
                lock(&daemon.shared).shut_down();
                let errors = daemon.release();
                tracing::info!("shut down cleanly");
                let end = if errors.is_empty() {
                    "OK".into()
                } else {
                    format!("ERR {}", errors.join("; "))
                };
                reply(&mut out, &[], &end);
                std::process::exit(0);
            }
            Ok(Request::Cut { seed, mode }) => {
                let mode = mode.unwrap_or_else(|| Mode::from_seed(seed));
                tracing::info!(seed, mode = %mode, "cutting the power");
                let mut report = lock(&daemon.shared).cut(seed, mode);
                report.errors.extend(daemon.release());
                for l in &report.lines {
                    tracing::info!("cut: {l}");
                }
                let end = if report.errors.is_empty() {
                    "OK".to_string()
                } else {
                    for e in &report.errors {
                        tracing::error!("cut failed: {e}");
                    }
                    format!("ERR {}", report.errors.join("; "))
                };
                reply(&mut out, &report.lines, &end);
                std::process::exit(if report.errors.is_empty() { 0 } else { 1 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Ping,
            Request::Status,
            Request::Shutdown,
            Request::Cut { seed: 42, mode: None },
            Request::Cut {
                seed: 7,
                mode: Some(Mode::Prefix),
            },
        ] {
            assert_eq!(Request::parse(&r.line()), Ok(r));
        }
        assert!(Request::parse("CUT x").is_err());
        assert!(Request::parse("CUT 1 z").is_err());
        assert!(Request::parse("HELLO").is_err());
    }
}
