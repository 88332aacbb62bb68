//! The bucket's lease as `perch` uses it: the holder's name, taking the lease at start,
//! `perch lease status|break`, and `perch journal adopt|discard` for a journal bound to a lease the
//! bucket has moved on from.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use perch_cache::{JournalBinding, LEASE_KEY, Lease, LeaseConfig, OfflineJournal, Origin, break_lease, read_lease};

use crate::config::{Config, LeaseSettings, Role, ServeArgs};

/// The data dir's instance id: made once, kept; a restored or new data dir is a new holder.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, format!("{id}\n"))
        .and_then(|()| std::fs::File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, &path))
        .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

fn host_name() -> String {
    if let Ok(id) = std::env::var("FLY_MACHINE_ID")
        && !id.is_empty()
    {
        return id;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "perch".to_owned())
}

/// `--lease-holder`, or `HOST/INSTANCE`.
pub fn holder_name(settings: &LeaseSettings, data_dir: &Path) -> anyhow::Result<String> {
    Ok(match &settings.holder {
        Some(h) => h.clone(),
        None => format!("{}/{}", host_name(), instance_id(data_dir)?),
    })
}

pub fn lease_for(config: &Config, settings: &LeaseSettings, origin: Arc<dyn Origin>) -> anyhow::Result<Arc<Lease>> {
    Ok(Lease::new(
        LeaseConfig {
            bucket: settings.bucket.clone(),
            holder: holder_name(settings, &config.data_dir)?,
            period: settings.period,
            margin: settings.margin,
            data_dir: config.data_dir.clone(),
        },
        origin,
    ))
}

#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    command: LeaseCommand,
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Who holds the bucket's lease, its epoch, and when it was last renewed (the same flags as
    /// `perch serve` name the origin and --lease-bucket).
    Status {
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
    /// Mark the bucket's lease released, so that a new primary takes it at once; only if nobody
    /// renewed or took it since it was read here. If its holder still runs, two primaries may
    /// write the bucket until that holder's next renewal fails: that can corrupt the database.
    /// Only for a holder known to be gone for good.
    Break {
        /// Say that you mean it: the holder named by `perch lease status` is gone for good
        #[arg(long)]
        holder_is_gone: bool,
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
}

fn lease_settings(config: &Config) -> anyhow::Result<&LeaseSettings> {
    config
        .lease
        .as_ref()
        .context("name the bucket with --lease-bucket (or PERCH_LEASE_BUCKET)")
}

pub fn run(args: LeaseArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.command {
        LeaseCommand::Status { serve } => {
            let config = Config::resolve(*serve)?;
            let settings = lease_settings(&config)?;
            let (origin, _) = rt.block_on(crate::open_origin(&config))?;
            match rt.block_on(read_lease(&*origin, &settings.bucket))? {
                None => println!(
                    "{}/{LEASE_KEY}: no lease (a primary takes it at start)",
                    settings.bucket
                ),
                Some(v) => {
                    let age = std::time::SystemTime::now()
                        .duration_since(v.last_modified)
                        .map_or(0.0, |d| d.as_secs_f64());
                    println!("bucket:    {}", settings.bucket);
                    println!("holder:    {}", v.body.holder);
                    println!("epoch:     {}", v.body.epoch);
                    println!("renewal:   {}", v.body.renewal);
                    println!("period:    {} ms", v.body.period_ms);
                    println!("released:  {}", v.body.released);
                    println!("written:   {} (holder's clock)", v.body.written_at);
                    println!("renewed:   {age:.0} s ago (origin's Last-Modified)");
                    println!("etag:      {}", v.etag);
                }
            }
            Ok(())
        }
        LeaseCommand::Break { holder_is_gone, serve } => {
            let config = Config::resolve(*serve)?;
            if config.role == Role::Replica {
                bail!(
                    "a replica never writes the shared bucket, and breaking the lease writes it there: run \
                     `perch lease break` with the primary's settings (without --role replica or PERCH_ROLE=replica)"
                );
            }
            let settings = lease_settings(&config)?;
            let (origin, _) = rt.block_on(crate::open_origin(&config))?;
            let current = rt.block_on(read_lease(&*origin, &settings.bucket))?;
            let Some(v) = current else {
                println!("{}/{LEASE_KEY}: no lease to break", settings.bucket);
                return Ok(());
            };
            if !holder_is_gone {
                bail!(
                    "breaking the lease of `{}` (epoch {}) lets another primary write this bucket at once; if \
                     `{}` still runs, both write until its next renewal fails, which can corrupt the database. \
                     Add --holder-is-gone if it is gone for good.",
                    v.body.holder,
                    v.body.epoch,
                    v.body.holder
                );
            }
            if v.body.released {
                println!(
                    "{}/{LEASE_KEY}: the lease of `{}` (epoch {}) is released already: the next primary takes it at once",
                    settings.bucket, v.body.holder, v.body.epoch
                );
                return Ok(());
            }
            if !rt.block_on(break_lease(&*origin, &settings.bucket, &v))? {
                bail!(
                    "the lease of `{}` (epoch {}) was renewed or taken since it was read: its holder is alive, or \
                     a new one took it; nothing was broken (see `perch lease status`)",
                    v.body.holder,
                    v.body.epoch
                );
            }
            println!(
                "lease of `{}` (epoch {}) broken: the next primary takes it at once; if that holder still runs, \
                 its next renewal fails and it stops",
                v.body.holder, v.body.epoch
            );
            Ok(())
        }
    }
}

/// `perch journal adopt`: this journal's writes go up under whatever lease this Perch takes next.
pub fn adopt(data_dir: &Path) -> anyhow::Result<()> {
    let Some(mut b) = JournalBinding::read(data_dir)? else {
        bail!("{} has no journal bound to a lease", data_dir.display());
    };
    b.adopted = true;
    b.write(data_dir)?;
    println!(
        "the journal of `{}` (epoch {}) will be uploaded under the next lease this Perch takes, over whatever \
         the bucket holds now",
        b.holder, b.epoch
    );
    Ok(())
}

/// `perch journal discard`: drops every write of a stopped Perch's journal.
pub fn discard(data_dir: &Path) -> anyhow::Result<()> {
    let journal = OfflineJournal::open(data_dir).context("opening the journal (is Perch stopped?)")?;
    let n = journal.discard_all()?;
    drop(journal);
    let _ = std::fs::remove_file(JournalBinding::path(data_dir));
    println!("{n} writes dropped from the journal: they are lost");
    Ok(())
}
