//! The engine's errors: `CacheError` for its own storage, `StoreError` for what a `Store` call can
//! answer (the origin's S3 errors, a write the origin refused or has not confirmed in time).

use std::time::Duration;

use crate::origin::OriginError;

/// Failures of the local storage (not of the origin).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache index: {0}")]
    Index(#[from] rocksdb::Error),
    #[error("cache index record: {0}")]
    Record(#[from] serde_json::Error),
    #[error("cache index: {0}")]
    Corrupt(String),
    /// A lock whose holder panicked: what it guards may be half-changed.
    #[error("the {0} lock was poisoned by a panic")]
    Poisoned(&'static str),
    /// A replica started on a data dir whose journal holds writes a primary left (`pending`).
    #[error(
        "this data dir holds {pending} writes not yet uploaded (it served a primary): a replica never \
         uploads; start it as the primary to upload them, or drop them with perch journal"
    )]
    PrimaryWritesPending { pending: u64 },
    #[error(
        "journal record {seq} ({object}) names blob {path} of {size} bytes, which is {found}; \
         refusing to start without an acknowledged write (perch journal check)"
    )]
    MissingBlob {
        seq: u64,
        object: String,
        path: String,
        size: u64,
        found: String,
    },
    /// A journal record's blob could not be looked at (not: is gone). Nothing decides it lost.
    #[error("journal record {seq} ({object}): cannot read its blob {path}: {source}")]
    UnreadableBlob {
        seq: u64,
        object: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cache files: {0}")]
    Io(#[from] std::io::Error),
}

impl CacheError {
    /// Whether the data dir's filesystem was full: the write waits for room and tries again.
    pub fn is_no_space(&self) -> bool {
        match self {
            CacheError::Io(e) => crate::local::room::is_no_space(e),
            CacheError::Index(e) => crate::local::room::rocksdb_no_space(e),
            _ => false,
        }
    }
}

/// What a `Store` call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The origin's answer (NoSuchKey, PreconditionFailed, …) or a local check with S3's meaning.
    #[error(transparent)]
    Origin(#[from] OriginError),
    #[error("local storage: {0}")]
    Local(#[from] CacheError),
    #[error("the origin refused version {seq}: {error}")]
    Refused {
        seq: u64,
        error: String,
        /// The origin's answer (status, code, message), where it was one.
        answer: Option<(u16, String, String)>,
    },
    #[error("the origin has not confirmed the write within {0:?}")]
    Timeout(Duration),
    /// The write waited `--dirty-wait-max` for room under `--dirty-bytes-max`, or on the data
    /// dir's filesystem.
    #[error("no room for the write within {0:?} (the upload backlog or the disk is full)")]
    NoRoom(Duration),
    /// The write needs more than the data dir's filesystem could ever hold beside its reserve:
    /// no upload or eviction makes room for it.
    #[error("the write needs {need} bytes, more than the data dir's filesystem can hold for one ({max} bytes)")]
    LargerThanVolume { need: u64, max: u64 },
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Local(CacheError::Io(e))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A failure and what Perch was doing when it met it, as the I/O error of a body stream: the
/// failure stays its source.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct Doing {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Doing {
    pub(crate) fn io(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> std::io::Error {
        std::io::Error::other(Doing {
            what: what.into(),
            source: Box::new(source),
        })
    }
}
