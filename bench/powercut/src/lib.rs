//! perch-powercut: a FUSE filesystem that passes writes through to a backing directory, keeps
//! what `fsync` has not made durable yet, and on command simulates a power cut by rolling the
//! backing directory back to an image a real filesystem could have left. See
//! `docs/reliability.md`, "The power-loss harness".

pub mod control;
pub mod daemon;
pub mod fs;
pub mod model;
pub mod rng;
mod sys;

use std::io;
use std::path::PathBuf;

/// What can go wrong outside the filesystem's own operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "mountpoint {path} is busy: a live {fstype} filesystem is mounted there (cut it or shut it down through its control socket, or `umount -l` it)"
    )]
    MountpointBusy { path: PathBuf, fstype: String },
    #[error("control socket {0} is in use by a live daemon")]
    ControlInUse(PathBuf),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The daemon answered `ERR`; `lines` is what it reported before (for a cut: what it did).
    #[error("the daemon refused: {message}")]
    Refused { message: String, lines: Vec<String> },
    #[error("the daemon closed the connection without a final OK or ERR line")]
    NoAnswer,
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
