//! Each traced process's resolver: its resolv.conf and its C library, which
//! decide how it treats odd answers (docs/resolvers.md). What they say, not
//! how they are read: `enrich` reads them, off the event thread.

use std::{borrow::Cow, net::IpAddr};

/// What `/proc/PID/root/etc/resolv.conf` says, with glibc's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    /// Search domains, without trailing dots.
    pub search: Vec<String>,
    pub ndots: u32,
    pub timeout_secs: u32,
    pub attempts: u32,
    /// Other `options` words (edns0, use-vc, no-aaaa, …).
    pub options: Vec<String>,
}

impl Default for ResolvConf {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout_secs: 5,
            attempts: 2,
            options: Vec::new(),
        }
    }
}

impl ResolvConf {
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(address) =
                        words.next().and_then(|a| a.split('%').next()?.parse().ok())
                    {
                        conf.nameservers.push(address);
                    }
                }
                // The last search or domain line wins, as in glibc.
                Some("search") => {
                    conf.search = words.map(|d| d.trim_end_matches('.').to_string()).collect()
                }
                Some("domain") => {
                    conf.search = words
                        .take(1)
                        .map(|d| d.trim_end_matches('.').to_string())
                        .collect()
                }
                Some("options") => {
                    for option in words {
                        let (name, value) = option.split_once(':').unwrap_or((option, ""));
                        let number = value.parse::<u32>().ok();
                        match (name, number) {
                            ("ndots", Some(n)) => conf.ndots = n.min(15),
                            ("timeout", Some(n)) => conf.timeout_secs = n.clamp(1, 30),
                            ("attempts", Some(n)) => conf.attempts = n.clamp(1, 5),
                            _ => conf.options.push(option.to_string()),
                        }
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// The name a process asked for, given one name it queried: the query
    /// with a search suffix taken off, or the name itself without its dot.
    pub fn name_as_asked<'a>(&self, qname: &'a str) -> Cow<'a, str> {
        let name = qname.trim_end_matches('.');
        for suffix in &self.search {
            if let Some(base) = name
                .strip_suffix(suffix.as_str())
                .and_then(|b| b.strip_suffix('.'))
                && !base.is_empty()
            {
                return lowercase(base);
            }
        }
        lowercase(name)
    }
}

/// The C library a process resolves names with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Library {
    Glibc {
        major: u32,
        minor: u32,
    },
    Musl,
    /// Go's own resolver (a static Go binary).
    Go,
}

impl Library {
    pub fn describe(&self) -> String {
        match self {
            Self::Glibc { major, minor } => format!("glibc {major}.{minor}"),
            Self::Musl => "musl".into(),
            Self::Go => "Go resolver".into(),
        }
    }
}

/// A process's resolver, as far as /proc could tell while it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverContext {
    pub conf: Option<ResolvConf>,
    pub library: Option<Library>,
}

impl ResolverContext {
    pub fn timeout_ns(&self) -> u64 {
        u64::from(self.conf.as_ref().map_or(5, |c| c.timeout_secs)) * 1_000_000_000
    }

    pub fn name_as_asked<'a>(&self, qname: &'a str) -> Cow<'a, str> {
        match &self.conf {
            Some(conf) => conf.name_as_asked(qname),
            None => lowercase(qname.trim_end_matches('.')),
        }
    }
}

/// Borrowed when it is lowercase already, as nearly every name asked is:
/// no copy per query.
fn lowercase(name: &str) -> Cow<'_, str> {
    match name.bytes().any(|byte| byte.is_ascii_uppercase()) {
        true => Cow::Owned(name.to_ascii_lowercase()),
        false => Cow::Borrowed(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kubernetes_resolv_conf() {
        let conf = ResolvConf::parse(
            "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\n\
             options ndots:5 timeout:2 edns0 # comment\n",
        );
        assert_eq!(conf.nameservers, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            conf.search,
            ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        );
        assert_eq!((conf.ndots, conf.timeout_secs, conf.attempts), (5, 2, 2));
        assert_eq!(conf.options, ["edns0"]);
    }

    #[test]
    fn search_suffixes_come_off_the_name() {
        let conf =
            ResolvConf::parse("search ns.svc.cluster.local svc.cluster.local cluster.local\n");
        assert_eq!(
            conf.name_as_asked("postgres.ns.svc.cluster.local."),
            "postgres"
        );
        assert_eq!(conf.name_as_asked("postgres.cluster.local."), "postgres");
        assert_eq!(conf.name_as_asked("Postgres."), "postgres");
        assert_eq!(conf.name_as_asked("cluster.local."), "cluster.local");
    }
}
