//! Which traffic is captured and what its service is called, as configured: selectors
//! (`exe=GLOB`, `port=N`, `container=GLOB`), the include/exclude filter built from them,
//! and service-name overrides.
use std::fmt;
use std::str::FromStr;

use crate::identity::process::ProcessInfo;

/// A shell-style pattern: `*` matches any run of characters (`/` included), `?` one
/// character; everything else matches itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.to_string())
    }

    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Iterative matcher with one backtrack point (the last `*`): linear in practice, never
/// exponential.
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// One thing a rule can match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The executable: a pattern with a `/` is matched against the full path, otherwise
    /// against the file name and the name the program was started as.
    Exe(Glob),
    /// The service port of a connection: the local port of a server, the peer port of a
    /// client.
    Port(u16),
    /// The container id (64 hex digits) of the process; `container=*` is any container.
    Container(Glob),
}

impl Selector {
    /// Whether a connection of `process` whose service port is `port` is selected.
    pub fn matches(&self, process: &ProcessInfo, port: Option<u16>) -> bool {
        match self {
            Selector::Exe(g) if g.as_str().contains('/') => g.matches(&process.exe_path),
            Selector::Exe(g) => g.matches(&process.exe_name) || g.matches(&process.program),
            Selector::Port(p) => port == Some(*p),
            Selector::Container(g) => process
                .container_id
                .as_deref()
                .is_some_and(|c| g.matches(c)),
        }
    }

    /// Whether this selects by port, which only a connection has.
    pub fn is_port(&self) -> bool {
        matches!(self, Selector::Port(_))
    }
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Selector, String> {
        let (kind, value) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}` is not exe=GLOB, port=N or container=GLOB"))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("`{s}` has nothing after `=`"));
        }
        match kind.trim() {
            "exe" => Ok(Selector::Exe(Glob::new(value))),
            "container" => Ok(Selector::Container(Glob::new(value))),
            "port" => match value.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Selector::Port(p)),
                _ => Err(format!("port `{value}` is not a number from 1 to 65535")),
            },
            other => Err(format!(
                "unknown selector `{other}` (use exe=GLOB, port=N or container=GLOB)"
            )),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Exe(g) => write!(f, "exe={}", g.as_str()),
            Selector::Port(p) => write!(f, "port={p}"),
            Selector::Container(g) => write!(f, "container={}", g.as_str()),
        }
    }
}

/// Which connections are captured: none that an `exclude` selector matches, and, when
/// `include` is not empty, only those that at least one `include` selector matches.
#[derive(Clone, Debug, Default)]
pub struct CaptureFilter {
    pub include: Vec<Selector>,
    pub exclude: Vec<Selector>,
}

impl CaptureFilter {
    pub fn admits(&self, process: &ProcessInfo, port: Option<u16>) -> bool {
        let hit = |s: &Selector| s.matches(process, port);
        !self.exclude.iter().any(hit) && (self.include.is_empty() || self.include.iter().any(hit))
    }
}

/// `SELECTOR:NAME`: processes the selector matches are called NAME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNameRule {
    pub selector: Selector,
    pub name: String,
}

impl FromStr for ServiceNameRule {
    type Err = String;

    fn from_str(s: &str) -> Result<ServiceNameRule, String> {
        let (selector, name) = selector_rule(s, "service", "exe=nginx:gateway")?;
        Ok(ServiceNameRule { selector, name })
    }
}

/// Splits `SELECTOR:NAME` (`port=8000:vllm`); `what` and `example` go in the errors.
pub fn selector_rule(s: &str, what: &str, example: &str) -> Result<(Selector, String), String> {
    let (selector, name) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not SELECTOR:NAME (for example {example})"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}` names no {what} after `:`"));
    }
    Ok((selector.parse()?, name.to_string()))
}

impl fmt::Display for ServiceNameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.selector, self.name)
    }
}

/// Service-name overrides, first match wins. They beat a process's own OTEL_SERVICE_NAME:
/// an operator who writes a rule for a program means it.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames {
    pub rules: Vec<ServiceNameRule>,
}

impl ServiceNames {
    /// The name the first rule matching `process` gives it: by executable, container, or
    /// one of the ports it listens on.
    pub fn for_process(&self, process: &ProcessInfo, listening: &[u16]) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| match r.selector {
                Selector::Port(p) => listening.contains(&p),
                _ => r.selector.matches(process, None),
            })
            .map(|r| r.name.as_str())
    }

    /// The name a port rule gives the process serving on `port`, if any.
    pub fn for_port(&self, port: u16) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.selector == Selector::Port(port))
            .map(|r| r.name.as_str())
    }

    pub fn has_port_rules(&self) -> bool {
        self.rules.iter().any(|r| r.selector.is_port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(exe_path: &str, program: &str, container: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid: 1,
            exe_name: exe_path.rsplit('/').next().unwrap().to_string(),
            exe_path: exe_path.to_string(),
            program: program.to_string(),
            service_name: program.to_string(),
            name_from_rule: false,
            name_from_env: false,
            pod: None,
            container_id: container.map(str::to_string),
            command_line: None,
            start_time: 0,
        }
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("nginx", "nginx", true),
            ("nginx", "nginx2", false),
            ("nginx*", "nginx", true),
            ("redis-*", "redis-server", true),
            ("*-server", "redis-server", true),
            ("r?dis", "redis", true),
            ("r?dis", "rdis", false),
            ("*a*b*c", "xxaxxbxxbxc", true),
            ("*a*b*c", "xxaxxbxxbx", false),
            ("/usr/*/python3*", "/usr/bin/python3.11", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(Glob::new(p).matches(t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn selectors_parse_and_print_back() {
        for s in [
            "exe=nginx*",
            "port=6379",
            "container=3f4a*",
            "exe=/usr/sbin/nginx",
        ] {
            assert_eq!(s.parse::<Selector>().unwrap().to_string(), s);
        }
        for (bad, why) in [
            ("nginx", "is not exe=GLOB"),
            ("port=http", "not a number"),
            ("port=0", "not a number"),
            ("port=70000", "not a number"),
            ("pid=3", "unknown selector `pid`"),
            ("exe=", "nothing after"),
        ] {
            let err = bad.parse::<Selector>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn exe_selectors_match_name_start_name_or_path() {
        // Debian's redis-server is a link to redis-check-rdb.
        let redis = process("/usr/bin/redis-check-rdb", "redis-server", None);
        let exe = |s: &str| s.parse::<Selector>().unwrap();
        assert!(exe("exe=redis-server").matches(&redis, None));
        assert!(exe("exe=redis-check-rdb").matches(&redis, None));
        assert!(exe("exe=/usr/bin/*").matches(&redis, None));
        assert!(!exe("exe=/usr/sbin/*").matches(&redis, None));
        assert!(!exe("exe=nginx").matches(&redis, None));
        assert!(!exe("container=*").matches(&redis, None));
        let boxed = process("/app/server", "server", Some("3f4a0c7b"));
        assert!(exe("container=*").matches(&boxed, None));
        assert!(exe("container=3f4a*").matches(&boxed, None));
        assert!(exe("port=80").matches(&boxed, Some(80)));
        assert!(!exe("port=80").matches(&boxed, Some(8080)));
        assert!(!exe("port=80").matches(&boxed, None));
    }

    #[test]
    fn filter_excludes_first_then_includes_any() {
        let nginx = process("/usr/sbin/nginx", "nginx", None);
        let curl = process("/usr/bin/curl", "curl", None);
        let sel = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<_>>();
        let all = CaptureFilter::default();
        assert!(all.admits(&nginx, Some(80)) && all.admits(&curl, None));
        let f = CaptureFilter {
            include: sel(&["exe=nginx", "port=6379"]),
            exclude: sel(&["port=8081"]),
        };
        assert!(f.admits(&nginx, Some(80)));
        assert!(!f.admits(&nginx, Some(8081)), "exclude wins over include");
        assert!(f.admits(&curl, Some(6379)), "includes are alternatives");
        assert!(!f.admits(&curl, Some(80)));
        assert!(!f.admits(&curl, None));
    }

    #[test]
    fn service_name_rules() {
        let r: ServiceNameRule = "exe=nginx*:gateway".parse().unwrap();
        assert_eq!(r.name, "gateway");
        assert_eq!(r.to_string(), "exe=nginx*:gateway");
        assert!("exe=nginx"
            .parse::<ServiceNameRule>()
            .unwrap_err()
            .contains("SELECTOR:NAME"));
        assert!("port=6379:"
            .parse::<ServiceNameRule>()
            .unwrap_err()
            .contains("no service"));
        assert!("port=x:queue"
            .parse::<ServiceNameRule>()
            .unwrap_err()
            .contains("port `x`"));
        let names = ServiceNames {
            rules: vec![
                "port=6379:queue".parse().unwrap(),
                "exe=nginx:gateway".parse().unwrap(),
                "exe=ngin*:second".parse().unwrap(),
            ],
        };
        let nginx = process("/usr/sbin/nginx", "nginx", None);
        assert_eq!(
            names.for_process(&nginx, &[]),
            Some("gateway"),
            "first match wins"
        );
        assert_eq!(names.for_process(&nginx, &[6379]), Some("queue"));
        assert_eq!(
            names.for_process(&process("/bin/x", "x", None), &[80]),
            None
        );
        assert_eq!(names.for_port(6379), Some("queue"));
        assert_eq!(names.for_port(80), None);
        assert!(names.has_port_rules());
    }
}
