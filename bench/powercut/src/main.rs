//! `perch-powercut`: mount the power-cut filesystem, or cut the power of a mounted one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use perch_powercut::control::{self, Request};
use perch_powercut::daemon::{self, MountOptions};
use perch_powercut::model::Mode;

#[derive(Parser)]
#[command(
    name = "perch-powercut",
    version,
    about = "A FUSE filesystem that simulates power cuts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount (in the foreground) a pass-through of BACKING at MOUNTPOINT that tracks what fsync
    /// has not made durable. Prints `mounted <mountpoint>` once ready.
    Mount {
        #[arg(long)]
        backing: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
        /// Unix socket for `cut`, `status` and `shutdown`.
        #[arg(long)]
        control: PathBuf,
        /// Also fsync the backing files (slower; the backing store is not what is tested).
        #[arg(long)]
        forward_fsync: bool,
    },
    /// Cut the power: the daemon rolls the backing directory back to a post-cut image, unmounts
    /// and exits. Kill the processes using the mount first.
    Cut {
        #[arg(long)]
        control: PathBuf,
        /// Decides everything the cut does; the mode is `seed % 3` (0 a, 1 b, 2 c) unless given.
        #[arg(long)]
        seed: u64,
        /// a (drop all unsynced), b (torn data), c (prefix of namespace operations, torn data),
        /// d (every namespace operation kept, every unsynced data page dropped).
        #[arg(long, value_parser = parse_mode)]
        mode: Option<Mode>,
    },
    /// Show what is not durable yet.
    Status {
        #[arg(long)]
        control: PathBuf,
    },
    /// Unmount cleanly (nothing lost) and stop the daemon.
    Shutdown {
        #[arg(long)]
        control: PathBuf,
    },
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s).ok_or_else(|| format!("{s:?} is not a mode: a, b, c or d"))
}

fn print(lines: Vec<String>) {
    for l in lines {
        println!("{l}");
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PERCH_POWERCUT_LOG")
                // fuser reports, as warnings, a second unmount attempt after ours.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("perch-powercut: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount {
            backing,
            mountpoint,
            control,
            forward_fsync,
        } => {
            let opts = MountOptions {
                backing,
                mountpoint,
                control,
                forward_fsync,
            };
            daemon::run(&opts).context("perch-powercut mount")?;
        }
        Command::Cut { control, seed, mode } => ask(&control, &Request::Cut { seed, mode }, "cut")?,
        Command::Status { control } => ask(&control, &Request::Status, "status")?,
        Command::Shutdown { control } => ask(&control, &Request::Shutdown, "shutdown")?,
    }
    Ok(())
}

/// Sends a request and prints the answer's lines, also when the daemon refuses (a failed cut
/// still reports what it did).
fn ask(control: &std::path::Path, req: &Request, what: &'static str) -> anyhow::Result<()> {
    match control::request(control, req) {
        Ok(lines) => {
            print(lines);
            Ok(())
        }
        Err(e) => {
            if let perch_powercut::Error::Refused { lines, .. } = &e {
                print(lines.clone());
            }
            Err(e).context(what)
        }
    }
}
