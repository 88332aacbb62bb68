//! perch-bench as a library: the fault-injecting origin proxy, and the servers that benchmarks
//! and tests run against (moto, perch, the proxy in-process).

mod body;
mod faults;
pub mod proxy;
pub mod servers;
