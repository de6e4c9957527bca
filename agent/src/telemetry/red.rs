//! Duration histograms by label set: the RED metrics both exporters read.
//!
//! sonde keeps these itself rather than in prometheus-client so that the same numbers go to
//! Prometheus (with `trace_id` exemplars) and to OTLP (which needs the bucket counts), and so
//! that the number of label sets per metric is capped: past the cap, observations land in one
//! overflow series labelled `otel.metric.overflow="true"` (as the OpenTelemetry SDKs do) and
//! are counted.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Label names of the OpenTelemetry overflow series.
pub const OVERFLOW_LABEL: &str = "otel.metric.overflow";

/// One trace that landed in a bucket: the newest one is kept per bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    pub trace_id: u128,
    pub span_id: u64,
    pub value: f64,
    pub time_unix_nano: u64,
}

/// Counts of one label set.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramData {
    /// Per bucket, not cumulative: `counts[i]` holds values in `(bounds[i-1], bounds[i]]`;
    /// the last entry is the `+Inf` bucket.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
    pub exemplars: Vec<Option<Exemplar>>,
}

impl HistogramData {
    fn new(buckets: usize) -> HistogramData {
        HistogramData {
            counts: vec![0; buckets + 1],
            sum: 0.0,
            count: 0,
            exemplars: vec![None; buckets + 1],
        }
    }
}

/// One label set of a histogram.
#[derive(Debug)]
pub struct Series {
    /// Values in the order of the family's `label_names`; empty for the overflow series.
    pub labels: Vec<String>,
    bounds: &'static [f64],
    data: Mutex<HistogramData>,
}

impl Series {
    pub fn is_overflow(&self) -> bool {
        self.labels.is_empty()
    }

    /// Records one value (seconds), keeping `exemplar` for its bucket when given.
    pub fn observe(&self, value: f64, exemplar: Option<(u128, u64, u64)>) {
        let bucket = self.bounds.partition_point(|b| *b < value);
        let mut d = self.data.lock().unwrap_or_else(|e| e.into_inner());
        d.counts[bucket] += 1;
        d.count += 1;
        d.sum += value;
        if let Some((trace_id, span_id, time_unix_nano)) = exemplar {
            d.exemplars[bucket] = Some(Exemplar {
                trace_id,
                span_id,
                value,
                time_unix_nano,
            });
        }
    }

    pub fn snapshot(&self) -> HistogramData {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A histogram metric: its names, buckets, label names, and its series.
#[derive(Debug)]
pub struct HistogramFamily {
    /// OpenTelemetry name (`http.server.request.duration`).
    pub otel_name: &'static str,
    /// Prometheus name without the unit suffix (`http_server_request_duration`).
    pub prom_name: &'static str,
    /// UCUM unit: `s`, or `{token}` (a count, no Prometheus suffix).
    pub unit: &'static str,
    pub help: &'static str,
    pub bounds: &'static [f64],
    /// OpenTelemetry attribute names (`service.name`, `http.request.method`, ...).
    pub label_names: &'static [&'static str],
    max_series: usize,
    series: Mutex<HashMap<Vec<String>, Arc<Series>>>,
    overflow: Arc<Series>,
    overflowed: AtomicU64,
}

impl HistogramFamily {
    pub fn new(
        otel_name: &'static str,
        prom_name: &'static str,
        unit: &'static str,
        help: &'static str,
        bounds: &'static [f64],
        label_names: &'static [&'static str],
        max_series: usize,
    ) -> HistogramFamily {
        HistogramFamily {
            otel_name,
            prom_name,
            unit,
            help,
            bounds,
            label_names,
            max_series: max_series.max(1),
            series: Mutex::new(HashMap::new()),
            overflow: Arc::new(Series {
                labels: Vec::new(),
                bounds,
                data: Mutex::new(HistogramData::new(bounds.len())),
            }),
            overflowed: AtomicU64::new(0),
        }
    }

    /// The Prometheus unit word (`seconds`), if the unit has one.
    pub fn prom_unit(&self) -> Option<&'static str> {
        (self.unit == "s").then_some("seconds")
    }

    /// The Prometheus name with its unit suffix (`http_server_request_duration_seconds`).
    pub fn prom_full_name(&self) -> String {
        match self.prom_unit() {
            Some(unit) => format!("{}_{unit}", self.prom_name),
            None => self.prom_name.to_string(),
        }
    }

    /// The series of `labels` (one value per label name), created on first use; the overflow
    /// series once `max_series` label sets exist.
    pub fn series(&self, labels: Vec<String>) -> Arc<Series> {
        debug_assert_eq!(labels.len(), self.label_names.len());
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&labels) {
            return s.clone();
        }
        if map.len() >= self.max_series {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return self.overflow.clone();
        }
        let s = Arc::new(Series {
            labels: labels.clone(),
            bounds: self.bounds,
            data: Mutex::new(HistogramData::new(self.bounds.len())),
        });
        map.insert(labels, s.clone());
        s
    }

    /// Label sets refused because the cap was reached (each refusal once per lookup; the
    /// capture thread caches lookups, so this counts new label sets, roughly).
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Every series with data, the overflow series last when it has any.
    pub fn all_series(&self) -> Vec<Arc<Series>> {
        let map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Arc<Series>> = map.values().cloned().collect();
        drop(map);
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        if self.overflow.snapshot().count > 0 {
            out.push(self.overflow.clone());
        }
        out
    }

    /// Whether `series` is this family's overflow series.
    pub fn owns_overflow(&self, series: &Series) -> bool {
        std::ptr::eq(&*self.overflow, series)
    }

    pub fn len(&self) -> usize {
        self.series.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];

    fn family(max: usize) -> HistogramFamily {
        HistogramFamily::new(
            "t.d",
            "t_d",
            "s",
            "test",
            &BOUNDS,
            &["service.name", "x"],
            max,
        )
    }

    #[test]
    fn values_land_in_their_bucket_bounds_inclusive() {
        let f = family(10);
        let s = f.series(vec!["svc".into(), "a".into()]);
        for v in [0.05, 0.1, 0.5, 1.0, 20.0] {
            s.observe(v, None);
        }
        let d = s.snapshot();
        assert_eq!(d.counts, [2, 2, 0, 1]);
        assert_eq!(d.count, 5);
        assert!((d.sum - 21.65).abs() < 1e-9);
    }

    #[test]
    fn the_newest_exemplar_per_bucket_is_kept() {
        let f = family(10);
        let s = f.series(vec!["svc".into(), "a".into()]);
        s.observe(0.5, Some((1, 11, 100)));
        s.observe(0.7, Some((2, 22, 200)));
        s.observe(0.05, None);
        let d = s.snapshot();
        assert_eq!(d.exemplars[0], None);
        assert_eq!(d.exemplars[1].unwrap().trace_id, 2);
        assert_eq!(d.exemplars[1].unwrap().value, 0.7);
    }

    #[test]
    fn label_sets_past_the_cap_go_to_the_overflow_series() {
        let f = family(2);
        let a = f.series(vec!["svc".into(), "a".into()]);
        f.series(vec!["svc".into(), "b".into()]);
        let c = f.series(vec!["svc".into(), "c".into()]);
        assert!(c.is_overflow());
        assert!(!a.is_overflow());
        assert_eq!(f.overflowed(), 1);
        c.observe(1.0, None);
        let all = f.all_series();
        assert_eq!(all.len(), 3);
        assert!(all[2].is_overflow());
        assert_eq!(f.len(), 2);
        // An existing label set still finds its own series.
        assert!(Arc::ptr_eq(&f.series(vec!["svc".into(), "a".into()]), &a));
    }
}
