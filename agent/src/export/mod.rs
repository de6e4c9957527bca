//! Where telemetry leaves sonde.
pub mod otlp;
pub mod prometheus;
