//! Perch's storage engine: a `Store` in front of an `Origin`. It keeps hot objects on local disk
//! and in memory, acknowledges writes once they are durable locally (the write-back journal) and
//! uploads them in checkpoint order, with read-your-writes for every caller of the store.
//!
//! Inside: `local` (index, blobs, eviction, fills, key locks) shared by the `read` path and the
//! `journal` with its `uploader`; `store` is the one door; `origin` holds the origin trait and its
//! implementations (an S3 service, a local directory) and the retry layer.

mod body;
mod disk_read;
mod durable;
mod error;
mod fill;
mod hot_set;
mod journal;
mod key;
mod lease;
mod listing;
mod local;
mod md5_asm;
mod memory;
mod metrics;
mod multipart;
mod origin;
mod pass;
mod prefetch;
mod read;
mod replica;
mod seed;
mod segments;
mod store;
mod uploader;

pub use body::{BodyDigest, Digested, PromisedDigest};
pub use durable::{SyncStep, skips_sync, start_writeback};
pub use error::{CacheError, StoreError, StoreResult};
pub use journal::offline::{JournalProblem, OfflineJournal};
pub use journal::{FailedVersion, JournalEntry, JournalOpError, WriteConfig, WriteStatus};
pub use key::url_encode;
pub use lease::{
    JournalBinding, LEASE_KEY, Lease, LeaseBody, LeaseConfig, LeaseError, LeaseView, break_lease, read_lease,
};
pub use listing::{Page, PageQuery, token as list_token, untoken as list_untoken};
pub use local::room::{give_back_spare, is_no_space};
pub use origin::retry::{OriginStats, RetryPolicy, RetryingOrigin};
pub use origin::{
    BucketInfo, ByteRange, ByteStream, Cause, ChecksumAlgorithm, ChecksumType, Checksums, CompletedPart, Conditions,
    ContentHeaders, CopyInput, CopyOutput, Document, Expected, FsOrigin, GetOutput, ListEntry, ListPage, ListQuery,
    METADATA_BYTES_MAX, MetadataDirective, MultipartChecksum, NO_OBJECT_LOCK, NewBucket, ObjectMeta, Origin,
    OriginError, OriginKeys, OriginResult, PartHead, PartInfo, PutBody, PutInput, PutOutput, S3Origin, S3OriginConfig,
    Subresource, UploadInfo, cause, etag_matches, same_etag,
};
pub use read::{CacheStatus, CachedGet};
pub use seed::Seeder;
pub use store::{NotReady, PartSpan, ReplicaWrites, Store, StoreConfig, origin_answers};
