//! The gateway's integration tests, in one binary: the real `perch` binary over HTTP, by area.
//!
//! Each test starts its own servers (perch, and moto with the origin proxy where it needs an S3
//! origin) and takes a turn on the machine first (`support::machine`): libtest runs the tests on
//! parallel threads. The boto3 suite in `tests/python` runs apart (`test.sh`).

mod support;

mod admin;
mod auth;
mod bad_input;
mod buckets;
mod cache;
mod checksums;
mod copy;
mod disk_full;
mod fast_path;
mod lease;
mod lifecycle;
mod limits;
mod list;
mod multipart;
mod objects;
mod origin_faults;
mod origin_keys;
mod oriole;
mod policy;
mod power_cut;
mod prefetch;
mod replica;
mod write_back;
mod write_path;
