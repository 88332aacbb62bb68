//! `perch wal fetch %f %p`: Postgres's `restore_command` on a replica. One GET of `wal/<%f>` through
//! the local Perch (which serves WAL from the shared bucket, never from its cache), written to `%p`
//! through a temp file, fsync and rename; exit 1 at once when the bucket does not have it, so that
//! Postgres polls again after `wal_retrieve_retry_interval`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use perch_cache::{Conditions, Origin, OriginError, S3Origin, S3OriginConfig};

use crate::config::{DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY};

/// `perch wal …`.
#[derive(Debug, Args)]
pub struct WalArgs {
    #[command(subcommand)]
    pub command: WalCommand,
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Fetch one archived WAL file for Postgres: restore_command = 'perch wal fetch %f %p'.
    /// Exit 0 once %p is written and synced, 1 when the file is not in the bucket (or the fetch
    /// failed: Postgres asks again), 2 on bad arguments. One attempt: it gives up after 3 s
    /// without a connection to Perch or 30 s without a byte of the answer.
    ///
    /// Signs with PERCH_ACCESS_KEY_ID / PERCH_SECRET_ACCESS_KEY (the development pair when unset).
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The file Postgres asks for (%f): a segment, a .history or .partial file
    pub file: String,
    /// Where Postgres wants it (%p), relative to its data directory
    pub path: PathBuf,
    /// The local Perch's S3 endpoint
    #[arg(long, env = "PERCH_WAL_ENDPOINT", default_value = "http://127.0.0.1:9000")]
    pub endpoint: String,
    /// The bucket OrioleDB archives to
    #[arg(long, env = "PERCH_WAL_BUCKET", default_value = "orioledb")]
    pub bucket: String,
}

/// Where OrioleDB archives WAL files, and the only keys `perch serve` reads live on a replica.
const WAL_PREFIX: &str = "wal/";

/// What a fetch found.
pub enum Fetched {
    Written,
    Absent,
}

pub fn run(args: &WalArgs) -> anyhow::Result<()> {
    match &args.command {
        WalCommand::Fetch(fetch_args) => {
            if !is_plain_name(&fetch_args.file) {
                eprintln!("perch wal fetch: {:?} is not a WAL file name", fetch_args.file);
                std::process::exit(2);
            }
            if !(fetch_args.endpoint.starts_with("http://") || fetch_args.endpoint.starts_with("https://")) {
                eprintln!(
                    "perch wal fetch: --endpoint {:?} is not an http:// or https:// URL",
                    fetch_args.endpoint
                );
                std::process::exit(2);
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match runtime.block_on(fetch(fetch_args)) {
                Ok(Fetched::Written) => Ok(()),
                Ok(Fetched::Absent) => {
                    eprintln!(
                        "perch wal fetch: {WAL_PREFIX}{} is not in bucket {} (yet)",
                        fetch_args.file, fetch_args.bucket
                    );
                    std::process::exit(1)
                }
                Err(e) => {
                    eprintln!("perch wal fetch: {e:#}");
                    std::process::exit(1)
                }
            }
        }
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// One attempt, no retries: Postgres asks again.
pub async fn fetch(args: &FetchArgs) -> anyhow::Result<Fetched> {
    // As `perch serve` reads them: an empty variable is an unset one.
    let var = |name: &str, dev: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| dev.to_owned())
    };
    let key_id = var("PERCH_ACCESS_KEY_ID", DEV_ACCESS_KEY_ID);
    let secret = var("PERCH_SECRET_ACCESS_KEY", DEV_SECRET_ACCESS_KEY);
    let perch = S3Origin::new(S3OriginConfig {
        endpoint: args.endpoint.clone(),
        access_key_id: Some(key_id),
        secret_access_key: Some(secret),
        ..S3OriginConfig::default()
    })
    .context("configuring the client of the local Perch")?;
    let key = format!("{WAL_PREFIX}{}", args.file);
    let got = match perch.get_object(&args.bucket, &key, None, &Conditions::default()).await {
        Ok(got) => got,
        Err(OriginError::NoSuchKey) => return Ok(Fetched::Absent),
        // The origin client's words would blame Perch's origin keys: here the keys are this
        // command's, checked by the local Perch.
        Err(e) if e.refused_credentials().is_some() => {
            bail!(
                "GET {key} from {}: the local Perch refused this command's signature ({}): set \
                 PERCH_ACCESS_KEY_ID and PERCH_SECRET_ACCESS_KEY to the client pair `perch serve` \
                 takes, and check the clock",
                args.endpoint,
                e.refused_credentials().unwrap_or_default()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("GET {key} from {}", args.endpoint)),
    };
    let temp = temp_beside(&args.path);
    let landed = async {
        let mut file = std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
        let mut body = got.body;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.with_context(|| format!("reading {key}"))?;
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
        if written != got.meta.size {
            bail!("{key}: got {written} of {} bytes", got.meta.size);
        }
        file.sync_all()?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = landed {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&temp, &args.path) {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("renaming onto {}", args.path.display()));
    }
    let dir = match args.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(Fetched::Written)
}

/// `<dir>/.<name>.perch-fetch`: on the same filesystem as the target, so the rename is atomic.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.perch-fetch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_plain_name("000000010000000000000003"));
        assert!(is_plain_name("00000002.history"));
        for bad in ["", ".", "..", "../x", "a/b"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
        assert_eq!(
            temp_beside(Path::new("pg_wal/RECOVERYXLOG")),
            Path::new("pg_wal/.RECOVERYXLOG.perch-fetch")
        );
    }
}
