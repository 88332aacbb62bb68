//! The one harness of these tests: turns on the machine, perch and its origins, clients, checks.
//!
//! - [`machine`]: every test takes a turn first (`share()`, or `alone()` when load would make it
//!   flaky);
//! - [`perch`]: this package's `perch` binary on a fresh data dir, its admin endpoint and metrics;
//! - [`sdk`]: perch in front of either origin with an aws-sdk-s3 client, the SDK's errors checked;
//! - [`raw`]: the OrioleDB-shaped raw client's common requests and S3 error checks;
//! - [`signing_origin`]: an in-process S3 origin (s3s-fs) that checks SigV4 signatures;
//! - [`stack`]: moto, the origin proxy and perch, restartable, with the cache's files and metrics;
//! - [`checksums`]: checksums computed independently of perch;
//! - [`cache_entries`]: cache entries written straight into a data dir.
//!
//! The servers, the origin proxy, the raw client and the bodies themselves come from
//! perch-testkit.

pub mod cache_entries;
pub mod checksums;
pub mod machine;
pub mod perch;
pub mod raw;
pub mod sdk;
pub mod signing_origin;
pub mod stack;
