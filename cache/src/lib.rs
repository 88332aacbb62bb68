//! The storage engine behind the gateway: the origin client and its retries, and the read cache
//! (local blobs, a RocksDB index, a memory tier) that answers hot reads from local disk, and the
//! write-back journal whose uploader carries acknowledged writes to the origin.

pub mod blobs;
pub mod evict;
pub mod index;
pub mod journal;
pub mod origin;
pub mod read;

pub use journal::{NewBody, NewVersion, PartLayout, WriteConfig, WriteError, WriteStatus};
pub use read::{CacheConfig, CacheStatus, CachedGet, ReadCache};

/// Failures of the cache's own storage (not of the origin).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache index: {0}")]
    Index(String),
    #[error("cache files: {0}")]
    Io(#[from] std::io::Error),
}
