//! What Perch's tests and benchmarks share: servers, the origin proxy, clients and bodies.
//!
//! - [`servers`]: moto, the `perch` binary and the in-process origin proxy on loopback;
//! - [`origin_proxy`]: the fault-injecting, request-recording proxy (`perch-bench origin-proxy`)
//!   and a client of its control API;
//! - [`raw_client`] and [`sigv4`]: the OrioleDB-shaped raw HTTP/1.1 S3 client;
//! - [`sdk`]: aws-sdk-s3 clients of perch and moto;
//! - [`bodies`]: deterministic bodies and their ETags.
//!
//! It depends on no crate of this workspace: perch and the origins run as processes.

pub mod bodies;
pub mod origin_proxy;
pub mod raw_client;
pub mod sdk;
pub mod servers;
pub mod sigv4;

/// The variable that makes a test needing root (mount(2), FUSE) fail where it cannot run, instead
/// of passing without running: `.ci/run` sets it to `required`.
pub const PRIVILEGED_TESTS: &str = "PERCH_PRIVILEGED_TESTS";

/// A test that needs root and cannot have it here: skipped with `reason` printed, unless
/// `PERCH_PRIVILEGED_TESTS=required`, where it fails.
pub fn skip_unprivileged(reason: &str) {
    if std::env::var(PRIVILEGED_TESTS).as_deref() == Ok("required") {
        panic!("{PRIVILEGED_TESTS}=required, but this test cannot run here: {reason}");
    }
    eprintln!("SKIPPED (not run): {reason}");
}
