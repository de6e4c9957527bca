//! What finished calls become: spans (and the sampler that keeps them), RED histograms,
//! sonde's own metrics, and the summary table; the sink routes each call to them.
pub mod attr;
pub mod genai;
pub mod genai_metrics;
pub mod graph;
pub mod metrics;
pub mod red;
pub mod sampler;
pub mod series_memo;
pub mod sink;
pub mod span;
pub mod summary;
