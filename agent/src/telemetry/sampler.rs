//! Which traces are recorded: the OpenTelemetry samplers named by `OTEL_TRACES_SAMPLER`.
//!
//! A span that is not sampled is still counted in the RED metrics; it is only not exported
//! (nor printed), and its trace is not used as an exemplar.
use std::fmt;
use std::str::FromStr;

/// `OTEL_TRACES_SAMPLER` values sonde understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerName {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio,
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio,
}

impl SamplerName {
    const ALL: [(SamplerName, &'static str); 6] = [
        (SamplerName::AlwaysOn, "always_on"),
        (SamplerName::AlwaysOff, "always_off"),
        (SamplerName::TraceIdRatio, "traceidratio"),
        (SamplerName::ParentBasedAlwaysOn, "parentbased_always_on"),
        (SamplerName::ParentBasedAlwaysOff, "parentbased_always_off"),
        (
            SamplerName::ParentBasedTraceIdRatio,
            "parentbased_traceidratio",
        ),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == self)
            .map(|(_, s)| *s)
            .unwrap_or("")
    }
}

impl fmt::Display for SamplerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SamplerName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Self::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(s))
            .map(|(n, _)| *n)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(_, n)| *n).collect();
                format!("unknown sampler `{s}`; use one of {}", names.join(", "))
            })
    }
}

/// Parses `OTEL_TRACES_SAMPLER_ARG`: a ratio between 0 and 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err(format!("{r} is not a ratio between 0 and 1"));
    }
    Ok(r)
}

/// A root decision.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Root {
    On,
    Off,
    /// Sampled when the trace id's low 63 bits fall under this bound.
    Ratio(u64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    root: Root,
    parent_based: bool,
}

impl Sampler {
    pub fn new(name: SamplerName, ratio: f64) -> Sampler {
        let ratio_root = Root::Ratio((ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64);
        let (root, parent_based) = match name {
            SamplerName::AlwaysOn => (Root::On, false),
            SamplerName::AlwaysOff => (Root::Off, false),
            SamplerName::TraceIdRatio => (ratio_root, false),
            SamplerName::ParentBasedAlwaysOn => (Root::On, true),
            SamplerName::ParentBasedAlwaysOff => (Root::Off, true),
            SamplerName::ParentBasedTraceIdRatio => (ratio_root, true),
        };
        Sampler { root, parent_based }
    }

    /// Whether the span of `trace_id` is recorded. `parent_sampled` is the sampled flag of
    /// the incoming `traceparent`, when there is one.
    pub fn sample(&self, trace_id: u128, parent_sampled: Option<bool>) -> bool {
        if self.parent_based {
            if let Some(sampled) = parent_sampled {
                return sampled;
            }
        }
        match self.root {
            Root::On => true,
            Root::Off => false,
            // As the OpenTelemetry SDKs: the trace id's last 8 bytes, shifted to 63 bits,
            // so every service's sampler makes the same decision for one trace.
            Root::Ratio(bound) => ((trace_id as u64) >> 1) < bound,
        }
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new(SamplerName::ParentBasedAlwaysOn, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_are_listed() {
        assert_eq!(
            "parentbased_traceidratio".parse::<SamplerName>(),
            Ok(SamplerName::ParentBasedTraceIdRatio)
        );
        assert_eq!(
            "ALWAYS_OFF".parse::<SamplerName>(),
            Ok(SamplerName::AlwaysOff)
        );
        let err = "jaeger_remote".parse::<SamplerName>().unwrap_err();
        assert!(
            err.contains("jaeger_remote") && err.contains("always_on"),
            "{err}"
        );
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert!(parse_ratio("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_ratio("half").is_err());
    }

    #[test]
    fn ratio_keeps_about_that_share_of_random_traces() {
        let s = Sampler::new(SamplerName::TraceIdRatio, 0.25);
        let n = 40_000;
        let kept = (0..n)
            .filter(|_| s.sample(fastrand::u128(..), None))
            .count();
        let share = kept as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.02, "{share}");
        // The same trace always gets the same decision.
        let t = fastrand::u128(..);
        assert_eq!(s.sample(t, None), s.sample(t, None));
    }

    #[test]
    fn parent_based_follows_the_incoming_flag() {
        let s = Sampler::new(SamplerName::ParentBasedTraceIdRatio, 0.0);
        assert!(s.sample(1, Some(true)));
        assert!(!s.sample(u128::MAX, Some(false)));
        assert!(!s.sample(1, None), "no parent: the ratio (0) decides");
        let plain = Sampler::new(SamplerName::AlwaysOn, 1.0);
        assert!(
            plain.sample(1, Some(false)),
            "not parent-based: the flag is ignored"
        );
        assert!(Sampler::default().sample(7, None));
        assert!(!Sampler::default().sample(7, Some(false)));
    }
}
