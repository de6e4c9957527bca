//! Where telemetry leaves sonde.
pub mod prometheus;
