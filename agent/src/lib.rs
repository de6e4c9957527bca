//! sonde: a host-level observability agent. eBPF programs capture socket traffic of every
//! process; this library turns it into spans and RED metrics. See README.md and docs/.
pub mod agent;
pub mod capture;
pub mod config;
pub mod conn;
pub mod db;
pub mod export;
pub mod gpu;
pub mod k8s;
pub mod metrics;
pub mod postgres;
pub mod probes;
pub mod process;
pub mod protocols;
pub mod red;
pub mod redis;
pub mod routes;
pub mod sampler;
pub mod selector;
pub mod sockets;
pub mod span;
pub mod sql;
pub mod summary;
#[cfg(test)]
mod testing;
