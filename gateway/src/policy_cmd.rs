//! The policy as `perch` uses it: where its rules come from (the shorthand flags, then
//! `--policy FILE` or the built-in OrioleDB profile), its reload on SIGHUP, and the
//! `perch policy check|explain` commands.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use perch_policy::rules::{ORIOLEDB_PROFILE, ORIOLEDB_PROFILE_NAME};
use perch_policy::{Method, Policy, SharedPolicy, shorthand};

use crate::config::{Config, ServeArgs};

/// The values of the shorthand flags, as given.
#[derive(Debug, Clone, Default)]
pub struct Shorthands {
    pub write_mode: Vec<String>,
    pub cache_revalidate: Vec<String>,
    pub cache_revalidate_after: Option<String>,
    pub upload_header: Vec<String>,
}

/// Where the policy comes from: the shorthand flags' rules (fixed for the life of the process)
/// and the file read at start and at each SIGHUP (`None`: the built-in profile).
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub file: Option<PathBuf>,
    shorthands: Policy,
}

impl PolicySource {
    /// Compiles the shorthand flags into rules.
    pub fn resolve(file: Option<PathBuf>, flags: Shorthands) -> anyhow::Result<PolicySource> {
        let mut rules = Vec::new();
        for s in flags.write_mode.iter().filter(|s| !s.is_empty()) {
            rules.push(
                shorthand::write_mode(s)
                    .map_err(anyhow::Error::msg)
                    .context("--write-mode")?,
            );
        }
        for s in flags.cache_revalidate.iter().filter(|s| !s.is_empty()) {
            rules.push(shorthand::cache_revalidate(s).map_err(anyhow::Error::msg)?);
        }
        for s in flags.upload_header.iter().filter(|s| !s.is_empty()) {
            rules.push(
                shorthand::upload_header(s)
                    .map_err(anyhow::Error::msg)
                    .context("--upload-header")?,
            );
        }
        let mut shorthands = Policy {
            rules,
            ..Policy::default()
        };
        if let Some(s) = flags.cache_revalidate_after {
            shorthands.revalidate_after = crate::config::parse_duration(&s).context("--cache-revalidate-after")?;
        }
        Ok(PolicySource { file, shorthands })
    }

    /// Reads the file (or takes the built-in profile) and puts the shorthand rules first.
    pub fn load(&self) -> anyhow::Result<Policy> {
        let file = match &self.file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading the policy {}", path.display()))?;
                perch_policy::parse(&text, &path.display().to_string())?
            }
            None => perch_policy::parse(ORIOLEDB_PROFILE, ORIOLEDB_PROFILE_NAME)?,
        };
        let revalidate_after = self.shorthands.revalidate_after;
        Ok(Policy {
            revalidate_after,
            ..self.shorthands.clone().then(file)
        })
    }
}

/// Reads the policy again (SIGHUP): a good one replaces the one in force; a bad one is refused,
/// logged, and the one in force stays.
pub fn reload(source: &PolicySource, shared: &SharedPolicy) -> bool {
    match source.load() {
        Ok(policy) => {
            let rules = policy.rules.len();
            shared.replace(policy);
            tracing::info!(
                file = source
                    .file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| ORIOLEDB_PROFILE_NAME.into()),
                rules,
                "policy reloaded"
            );
            true
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "policy reload refused; the policy in force stays");
            false
        }
    }
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Check a policy file: each mistake with its line and reason; exit status 1 if there is one.
    Check {
        /// The policy file (`builtin:orioledb` for the built-in profile)
        file: String,
    },
    /// Show the decision for BUCKET/KEY and the rule behind each part of it, under the same
    /// settings as `perch serve` (--policy, --config, the shorthand flags).
    Explain {
        /// The object, as BUCKET/KEY
        object: String,
        /// Only this method (GET, HEAD, PUT or DELETE) [default: each of them]
        #[arg(long, value_name = "METHOD")]
        method: Option<String>,
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
    /// Print the built-in OrioleDB profile (a starting point for a policy file).
    Show,
}

pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    match args.command {
        PolicyCommand::Check { file } => {
            let (text, name) = if file == ORIOLEDB_PROFILE_NAME {
                (ORIOLEDB_PROFILE.to_owned(), file.clone())
            } else {
                let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
                (text, file.clone())
            };
            match perch_policy::parse(&text, &name) {
                Ok(policy) => {
                    println!("{name}: ok, {} rules", policy.rules.len());
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        PolicyCommand::Explain { object, method, serve } => {
            let Some((bucket, key)) = object.split_once('/') else {
                bail!("name the object as BUCKET/KEY (got `{object}`)");
            };
            if bucket.is_empty() {
                bail!("name the object as BUCKET/KEY (got `{object}`)");
            }
            let config = Config::resolve(*serve)?;
            let methods = match method {
                Some(m) => vec![m.parse::<Method>().map_err(anyhow::Error::msg)?],
                None => Method::ALL.to_vec(),
            };
            let source = config
                .policy_source
                .file
                .as_ref()
                .map_or_else(|| ORIOLEDB_PROFILE_NAME.to_owned(), |p| p.display().to_string());
            println!("policy: {source} ({} rules)", config.policy.rules.len());
            for m in methods {
                print!("{}", config.policy.explain(bucket, key, m));
            }
            Ok(())
        }
        PolicyCommand::Show => {
            print!("{ORIOLEDB_PROFILE}");
            Ok(())
        }
    }
}

/// Reloads the policy at each SIGHUP, for as long as the process runs (the origin's keys are
/// reloaded by a listener of their own, `reload_origin_keys_on_sighup` in main.rs).
/// `reloaded` runs after each reload that took.
pub fn reload_on_sighup(
    source: PolicySource,
    shared: Arc<SharedPolicy>,
    reloaded: impl Fn() + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            if reload(&source, &shared) {
                reloaded();
            }
        }
    });
    Ok(())
}
