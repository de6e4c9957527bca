//! The periodic table printed when no exporter is configured: what sonde saw, per service.
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Log-scale latency buckets: four per power of two of nanoseconds (about 19 % wide).
const BUCKETS: usize = 4 * 40;

struct Row {
    count: u64,
    errors: u64,
    buckets: Box<[u32; BUCKETS]>,
}

impl Row {
    fn new() -> Row {
        Row {
            count: 0,
            errors: 0,
            buckets: Box::new([0; BUCKETS]),
        }
    }

    fn record(&mut self, duration_ns: u64, error: bool) {
        self.count += 1;
        self.errors += error as u64;
        let idx = ((duration_ns.max(1) as f64).log2() * 4.0) as usize;
        self.buckets[idx.min(BUCKETS - 1)] += 1;
    }

    /// Upper bound of the bucket holding quantile `q`, in seconds.
    fn quantile(&self, q: f64) -> f64 {
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += *n as u64;
            if seen >= rank {
                return 2f64.powf((i + 1) as f64 / 4.0) / 1e9;
            }
        }
        0.0
    }
}

impl Default for Row {
    fn default() -> Row {
        Row::new()
    }
}

/// What the LLM rows take of one call.
pub struct LlmSummary {
    pub duration_ns: u64,
    pub error: bool,
    pub ttft_ns: Option<u64>,
    pub output_tokens: Option<u64>,
}

/// The LLM row of a service, model and role: calls, time to first chunk, output tokens.
#[derive(Default)]
struct LlmRow {
    calls: Row,
    ttft: Row,
    output_tokens: u64,
}

/// Rows by service, then by (protocol, role): a call looks its service up by `&str`, so the
/// hot path allocates nothing once a service has a row in the window. LLM calls also get a
/// row by service and model (they are few; their key is allocated per call).
#[derive(Default)]
pub struct Summary {
    rows: BTreeMap<String, Vec<(&'static str, &'static str, Row)>>,
    llm: BTreeMap<(String, String, &'static str), LlmRow>,
}

impl Summary {
    pub fn observe(
        &mut self,
        service: &str,
        protocol: &'static str,
        role: &'static str,
        duration_ns: u64,
        error: bool,
    ) {
        if !self.rows.contains_key(service) {
            self.rows.insert(service.to_string(), Vec::new());
        }
        let rows = self.rows.get_mut(service).expect("inserted above");
        let at = match rows
            .iter()
            .position(|(p, r, _)| *p == protocol && *r == role)
        {
            Some(at) => at,
            None => {
                rows.push((protocol, role, Row::new()));
                rows.len() - 1
            }
        };
        rows[at].2.record(duration_ns, error);
    }

    /// One LLM call: its row is by service, model and role; `ttft_ns` for streams,
    /// `output_tokens` when the response reported them.
    pub fn observe_llm(
        &mut self,
        service: &str,
        model: &str,
        role: &'static str,
        call: LlmSummary,
    ) {
        let key = (service.to_string(), model.to_string(), role);
        let row = self.llm.entry(key).or_default();
        row.calls.record(call.duration_ns, call.error);
        if let Some(ttft) = call.ttft_ns {
            row.ttft.record(ttft, false);
        }
        row.output_tokens += call.output_tokens.unwrap_or(0);
    }

    /// Renders the table for the last `secs` seconds and starts a new window.
    pub fn take_table(&mut self, secs: f64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<7} {:>10} {:>7} {:>10} {:>10}",
            "SERVICE", "PROTO", "ROLE", "REQ/S", "ERR%", "P50", "P95"
        );
        if self.rows.is_empty() {
            let _ = writeln!(out, "(no requests seen in the last {secs:.0}s)");
        }
        for (service, rows) in &mut self.rows {
            rows.sort_by_key(|(proto, role, _)| (*proto, *role));
            for (proto, role, row) in rows.iter() {
                let _ = writeln!(
                    out,
                    "{:<24} {:<8} {:<7} {:>10.1} {:>6.1}% {:>10} {:>10}",
                    truncate(service, 24),
                    proto,
                    role,
                    row.count as f64 / secs,
                    100.0 * row.errors as f64 / row.count.max(1) as f64,
                    format_seconds(row.quantile(0.5)),
                    format_seconds(row.quantile(0.95)),
                );
            }
        }
        self.rows.clear();
        if !self.llm.is_empty() {
            let _ = writeln!(
                out,
                "{:<24} {:<24} {:<7} {:>8} {:>7} {:>10} {:>10} {:>10} {:>8}",
                "LLM SERVICE", "MODEL", "ROLE", "REQ/S", "ERR%", "P50", "P95", "TTFT P50", "TOK/S"
            );
        }
        for ((service, model, role), row) in &self.llm {
            let ttft = match row.ttft.count {
                0 => "-".to_string(),
                _ => format_seconds(row.ttft.quantile(0.5)),
            };
            let _ = writeln!(
                out,
                "{:<24} {:<24} {:<7} {:>8.1} {:>6.1}% {:>10} {:>10} {:>10} {:>8.1}",
                truncate(service, 24),
                truncate(if model.is_empty() { "-" } else { model }, 24),
                role,
                row.calls.count as f64 / secs,
                100.0 * row.calls.errors as f64 / row.calls.count.max(1) as f64,
                format_seconds(row.calls.quantile(0.5)),
                format_seconds(row.calls.quantile(0.95)),
                ttft,
                row.output_tokens as f64 / secs,
            );
        }
        self.llm.clear();
        out
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn format_seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2}s")
    } else if s >= 1e-3 {
        format!("{:.2}ms", s * 1e3)
    } else {
        format!("{:.0}us", s * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_rates_errors_and_quantiles() {
        let mut s = Summary::default();
        for i in 0..100u64 {
            s.observe("web", "http", "server", 1_000_000 * (i + 1), i % 10 == 0);
        }
        let t = s.take_table(10.0);
        let line = t.lines().nth(1).unwrap();
        assert!(line.starts_with("web"), "{t}");
        assert!(line.contains("10.0"), "{t}");
        assert!(line.contains("10.0%"), "{t}");
        // p50 of 1..100 ms lands in the bucket holding 50 ms (bucket bounds are ~19 % wide).
        let p50: f64 = line
            .split_whitespace()
            .nth(5)
            .unwrap()
            .trim_end_matches("ms")
            .parse()
            .unwrap();
        assert!((50.0..=60.0).contains(&p50), "{t}");
        assert!(s.take_table(10.0).contains("no requests"));
    }

    #[test]
    fn rows_per_service_protocol_and_role_in_order() {
        let mut s = Summary::default();
        for _ in 0..3 {
            s.observe("web", "http", "server", 1_000_000, false);
            s.observe("api", "redis", "client", 1_000_000, false);
            s.observe("api", "http", "server", 1_000_000, true);
        }
        s.observe("api", "http", "client", 1_000_000, false);
        let t = s.take_table(1.0);
        let rows: Vec<Vec<&str>> = t
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().take(5).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["api", "http", "client", "1.0", "0.0%"],
                vec!["api", "http", "server", "3.0", "100.0%"],
                vec!["api", "redis", "client", "3.0", "0.0%"],
                vec!["web", "http", "server", "3.0", "0.0%"],
            ],
            "{t}"
        );
    }

    #[test]
    fn llm_rows_per_service_model_and_role() {
        let mut s = Summary::default();
        for i in 0..4u64 {
            s.observe("gw", "http", "client", 1_000_000_000, false);
            s.observe_llm(
                "gw",
                "gpt-4o",
                "client",
                LlmSummary {
                    duration_ns: 1_000_000_000,
                    error: i == 0,
                    ttft_ns: Some(200_000_000),
                    output_tokens: Some(25),
                },
            );
        }
        let t = s.take_table(2.0);
        let llm: Vec<&str> = t
            .lines()
            .skip_while(|l| !l.starts_with("LLM SERVICE"))
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(llm[..5], ["gw", "gpt-4o", "client", "2.0", "25.0%"], "{t}");
        assert!(llm[7].ends_with("ms"), "time to first chunk: {t}");
        assert_eq!(llm[8], "50.0", "output tokens per second: {t}");
        assert!(!s.take_table(2.0).contains("LLM SERVICE"));
    }
}
