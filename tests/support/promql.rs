//! Just enough PromQL reading to list the metric and label names an expression uses, and
//! of OpenMetrics text to list the names an exposition has.
use std::collections::BTreeSet;

/// Functions, aggregations and keywords: identifiers that are not metric names.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "histogram_quantile",
    "abs",
    "clamp_min",
    "clamp_max",
    "vector",
    "scalar",
    "time",
    "absent",
    "label_replace",
    "label_join",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "changes",
    "resets",
    "deriv",
    "predict_linear",
    "round",
    "sort",
    "sort_desc",
];

/// The (metric names, label names) `expr` refers to.
pub fn names(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let b = expr.as_bytes();
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let mut i = 0;
    let mut in_braces = false;
    // Inside `by (...)` and the like: the identifiers are labels.
    let mut label_list = false;
    let mut after_grouping = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                // Skip a string literal.
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'[' => {
                // A range or subquery duration.
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
                i += 1;
            }
            b'{' => {
                in_braces = true;
                i += 1;
            }
            b'}' => {
                in_braces = false;
                i += 1;
            }
            b'(' => {
                label_list = after_grouping;
                after_grouping = false;
                i += 1;
            }
            b')' => {
                label_list = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().chars().next();
                if in_braces || label_list {
                    labels.insert(word.to_string());
                } else if matches!(
                    word,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    after_grouping = true;
                } else if next != Some('(') && !KEYWORDS.contains(&word) {
                    metrics.insert(word.to_string());
                }
            }
            c if c.is_ascii_digit() => {
                // A number or duration (`0.95`, `1e9`, `5m`).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    (metrics, labels)
}

/// The (sample names, label names) of an OpenMetrics or Prometheus text exposition.
pub fn exposition_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        metrics.insert(line[..name_end].to_string());
        if line[name_end..].starts_with('{') {
            let (_, label_names) = names(&format!("x{}", &line[name_end..]));
            labels.extend(label_names);
        }
    }
    (metrics, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_an_expression() {
        let (m, l) = names(
            r#"histogram_quantile(0.95, sum by (service_name, le) (rate(http_server_request_duration_seconds_bucket{code=~"5..",x!=""}[5m]))) / ignoring(a) up > 2"#,
        );
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            ["http_server_request_duration_seconds_bucket", "up"]
        );
        assert_eq!(
            l.into_iter().collect::<Vec<_>>(),
            ["a", "code", "le", "service_name", "x"]
        );
        let (m, _) = exposition_names("# TYPE a counter\na_total{k=\"v,}\"} 1\nb 2\n");
        assert_eq!(m.into_iter().collect::<Vec<_>>(), ["a_total", "b"]);
    }
}
