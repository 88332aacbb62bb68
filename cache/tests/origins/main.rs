//! perch-cache's origins against the conformance suite, in one test binary: `FsOrigin` and `S3Origin`.
//!
//! `S3Origin` runs against a real S3 server (moto on loopback, from perch-testkit).

mod conformance;

mod fs;
mod s3;
