//! The storage engine behind the gateway.
//! For now: the `Origin` abstraction and its S3 and local-directory implementations.

pub mod evict;
pub mod origin;
