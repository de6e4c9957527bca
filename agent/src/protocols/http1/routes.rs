//! `http.route` from configured patterns, per service. Routes are never guessed from paths:
//! a path that matches no pattern of its service gets no `http.route` at all, so an id in a
//! URL can never multiply the metric's series.
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// One segment of a route pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param,
    /// `*` at the end: whatever follows, including nothing.
    Rest,
}

/// `SERVICE=PATTERN`, for example `gateway=/v1/models/{model}` or `web=/static/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub service: String,
    pub pattern: String,
    segments: Vec<Segment>,
}

impl FromStr for RouteRule {
    type Err = String;

    fn from_str(s: &str) -> Result<RouteRule, String> {
        let (service, pattern) = s.split_once('=').ok_or_else(|| {
            format!("`{s}` is not SERVICE=PATTERN (for example web=/users/{{id}})")
        })?;
        let (service, pattern) = (service.trim(), pattern.trim());
        if service.is_empty() {
            return Err(format!("`{s}` names no service before `=`"));
        }
        Ok(RouteRule {
            service: service.to_string(),
            pattern: pattern.to_string(),
            segments: parse_pattern(pattern)?,
        })
    }
}

impl fmt::Display for RouteRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.service, self.pattern)
    }
}

fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("route `{pattern}` does not start with `/`"));
    };
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let last = parts.len().saturating_sub(1);
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match *part {
            "*" if i == last => Ok(Segment::Rest),
            "*" => Err(format!("route `{pattern}`: `*` may only be the last segment")),
            p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => Ok(Segment::Param),
            p if p.contains(['{', '}', '*']) => Err(format!(
                "route `{pattern}`: `{p}` mixes text with {{param}} or `*`; a parameter is a whole segment"
            )),
            p => Ok(Segment::Literal(p.to_string())),
        })
        .collect()
}

impl RouteRule {
    fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        // "/" has no segments (not one empty one).
        let mut parts = (!rest.is_empty())
            .then(|| rest.split('/'))
            .into_iter()
            .flatten();
        for seg in &self.segments {
            let ok = match seg {
                Segment::Rest => return true,
                Segment::Literal(l) => parts.next() == Some(l.as_str()),
                Segment::Param => parts.next().is_some_and(|p| !p.is_empty()),
            };
            if !ok {
                return false;
            }
        }
        parts.next().is_none()
    }
}

/// The configured routes by service, in the order given: the first matching pattern wins,
/// so list specific ones (`/users/me`) before general ones (`/users/{id}`).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    by_service: HashMap<String, Vec<(RouteRule, Arc<str>)>>,
}

impl Routes {
    pub fn new(rules: &[RouteRule]) -> Routes {
        let mut by_service: HashMap<String, Vec<(RouteRule, Arc<str>)>> = HashMap::new();
        for r in rules {
            by_service
                .entry(r.service.clone())
                .or_default()
                .push((r.clone(), Arc::from(r.pattern.as_str())));
        }
        Routes { by_service }
    }

    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// The route of a request to `service` for `path` (the query already cut off).
    pub fn route(&self, service: &str, path: &str) -> Option<Arc<str>> {
        self.by_service
            .get(service)?
            .iter()
            .find(|(rule, _)| rule.matches(path))
            .map(|(_, route)| route.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(rules: &[&str]) -> Routes {
        let rules: Vec<RouteRule> = rules.iter().map(|r| r.parse().unwrap()).collect();
        Routes::new(&rules)
    }

    #[test]
    fn patterns_match_whole_segments() {
        let r = routes(&[
            "web=/users/me",
            "web=/users/{id}",
            "web=/users/{id}/orders/{order}",
            "web=/static/*",
            "web=/",
            "api=/v1/chat/completions",
        ]);
        let route = |svc: &str, path: &str| r.route(svc, path).map(|a| a.to_string());
        assert_eq!(route("web", "/users/me").as_deref(), Some("/users/me"));
        assert_eq!(route("web", "/users/42").as_deref(), Some("/users/{id}"));
        assert_eq!(
            route("web", "/users/42/orders/7").as_deref(),
            Some("/users/{id}/orders/{order}")
        );
        assert_eq!(route("web", "/users/42/orders"), None);
        assert_eq!(route("web", "/users/"), None, "a parameter is never empty");
        assert_eq!(route("web", "/users"), None);
        assert_eq!(
            route("web", "/static/css/a.css").as_deref(),
            Some("/static/*")
        );
        assert_eq!(route("web", "/static/").as_deref(), Some("/static/*"));
        assert_eq!(route("web", "/static").as_deref(), Some("/static/*"));
        assert_eq!(route("web", "/").as_deref(), Some("/"));
        assert_eq!(route("web", "/other"), None, "never guessed");
        assert_eq!(
            route("api", "/v1/chat/completions").as_deref(),
            Some("/v1/chat/completions")
        );
        assert_eq!(
            route("api", "/users/42"),
            None,
            "routes belong to their service"
        );
        assert_eq!(route("nobody", "/users/42"), None);
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("/users/{id}", "is not SERVICE=PATTERN"),
            ("=/users", "names no service"),
            ("web=users", "does not start with `/`"),
            ("web=/a/*/b", "only be the last"),
            ("web=/a/user-{id}", "a parameter is a whole segment"),
            ("web=/a/b*", "a parameter is a whole segment"),
        ] {
            let err = bad.parse::<RouteRule>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let r: RouteRule = "web=/users/{id}".parse().unwrap();
        assert_eq!(r.to_string(), "web=/users/{id}");
    }
}
