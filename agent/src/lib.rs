//! sonde: a host-level observability agent. eBPF programs capture socket traffic of every
//! process; this library turns it into spans and RED metrics. See README.md and docs/.
//!
//! The modules follow the data path: `capture` (probes, ring buffer, events) -> `conn`
//! (the connection table) -> `protocols` (one session per connection) -> `telemetry`
//! (spans, RED metrics) -> `export` (Prometheus, OTLP), with `identity` (process, pod,
//! service name) and `traces` (which calls form one trace) beside them, and `gpu` on its
//! own.
pub mod agent;
pub mod capture;
pub mod config;
pub mod conn;
pub mod export;
pub mod gpu;
pub mod identity;
pub mod protocols;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod traces;
