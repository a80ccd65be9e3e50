//! Each traced process's resolver: its resolv.conf and its C library, which
//! decide how it treats odd answers (docs/resolvers.md).

use std::{collections::HashMap, fs, net::IpAddr, sync::Arc};

/// What `/proc/PID/root/etc/resolv.conf` says, with glibc's defaults.
#[derive(Clone, Debug, PartialEq)]
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
    pub fn name_as_asked(&self, qname: &str) -> String {
        let name = qname.trim_end_matches('.');
        for suffix in &self.search {
            if let Some(base) = name
                .strip_suffix(suffix.as_str())
                .and_then(|b| b.strip_suffix('.'))
                && !base.is_empty()
            {
                return base.to_ascii_lowercase();
            }
        }
        name.to_ascii_lowercase()
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
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolverContext {
    pub conf: Option<ResolvConf>,
    pub library: Option<Library>,
}

impl ResolverContext {
    pub fn timeout_ns(&self) -> u64 {
        u64::from(self.conf.as_ref().map_or(5, |c| c.timeout_secs)) * 1_000_000_000
    }

    pub fn name_as_asked(&self, qname: &str) -> String {
        match &self.conf {
            Some(conf) => conf.name_as_asked(qname),
            None => qname.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

/// Per-process contexts, read once per process. Bounded: when full, the
/// oldest half is dropped (and counted), since exited processes never ask
/// again.
pub struct Resolvers {
    /// Where contexts come from: /proc, or a fixed one in tests.
    read: fn(u32) -> ResolverContext,
    by_pid: HashMap<u32, Arc<ResolverContext>>,
    order: Vec<u32>,
    /// The last context read in each network namespace: the fallback for a
    /// process that exited before it could be read (in a pod, every process
    /// shares one resolv.conf).
    by_netns: HashMap<u64, Arc<ResolverContext>>,
    pub evicted: u64,
}

const MAX_PROCESSES: usize = 4096;

impl Default for Resolvers {
    fn default() -> Self {
        Self {
            read: read_context,
            by_pid: HashMap::new(),
            order: Vec::new(),
            by_netns: HashMap::new(),
            evicted: 0,
        }
    }
}

impl Resolvers {
    pub fn of(&mut self, pid: u32, netns: Option<u64>) -> Arc<ResolverContext> {
        if let Some(context) = self.by_pid.get(&pid) {
            return context.clone();
        }
        let mut context = (self.read)(pid);
        if let Some(netns) = netns {
            match (&context.conf, self.by_netns.get(&netns)) {
                (None, Some(known)) => context.conf.clone_from(&known.conf),
                (Some(_), _) => {
                    if self.by_netns.len() >= MAX_PROCESSES {
                        self.by_netns.clear();
                    }
                    self.by_netns.insert(netns, Arc::new(context.clone()));
                }
                (None, None) => {}
            }
        }
        if self.by_pid.len() >= MAX_PROCESSES {
            let dropped: Vec<u32> = self.order.drain(..MAX_PROCESSES / 2).collect();
            for pid in dropped {
                self.by_pid.remove(&pid);
                self.evicted += 1;
            }
        }
        let context = Arc::new(context);
        self.by_pid.insert(pid, context.clone());
        self.order.push(pid);
        context
    }

    /// Contexts from `read` instead of /proc.
    pub fn reading(read: fn(u32) -> ResolverContext) -> Self {
        Self {
            read,
            ..Self::default()
        }
    }

    /// Forgets a process that exited, so a reused pid is read afresh.
    pub fn forget_exited(&mut self) {
        let before = self.by_pid.len();
        self.by_pid.retain(|pid, _| crate::process::is_alive(*pid));
        if self.by_pid.len() != before {
            self.order.retain(|pid| self.by_pid.contains_key(pid));
        }
    }
}

fn read_context(pid: u32) -> ResolverContext {
    let conf = fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf"))
        .ok()
        .map(|text| ResolvConf::parse(&text));
    ResolverContext {
        conf,
        library: library_of(pid),
    }
}

/// From the libraries mapped into the process, or its executable's markers.
fn library_of(pid: u32) -> Option<Library> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    for path in maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
    {
        let file = path.rsplit('/').next().unwrap_or(path);
        if file.starts_with("ld-musl-") || file.starts_with("libc.musl-") {
            return Some(Library::Musl);
        }
        // Before 2.34 the file carries the version: libc-2.19.so.
        if let Some(version) = file
            .strip_prefix("libc-")
            .and_then(|v| v.strip_suffix(".so"))
        {
            return parse_glibc_version(version);
        }
        if file == "libc.so.6" {
            let image = fs::read(format!("/proc/{pid}/root{path}")).ok()?;
            return glibc_version_in(&image);
        }
    }
    // A static binary: Go marks its build info.
    let executable = fs::read(format!("/proc/{pid}/exe")).ok()?;
    contains(&executable, b"\xff Go buildinf:").then_some(Library::Go)
}

/// glibc embeds "release version 2.36" in libc.so.6.
fn glibc_version_in(image: &[u8]) -> Option<Library> {
    let marker = b"release version ";
    let start = image.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let version: String = image[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|b| *b as char)
        .collect();
    parse_glibc_version(version.trim_end_matches('.'))
}

fn parse_glibc_version(version: &str) -> Option<Library> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(Library::Glibc { major, minor })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

    #[test]
    fn finds_glibc_version_markers() {
        let image = b"junk GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.\n";
        assert_eq!(
            glibc_version_in(image),
            Some(Library::Glibc {
                major: 2,
                minor: 36
            })
        );
        assert_eq!(
            parse_glibc_version("2.19"),
            Some(Library::Glibc {
                major: 2,
                minor: 19
            })
        );
    }

    #[test]
    fn identifies_our_own_library() {
        let library = library_of(std::process::id());
        assert!(
            matches!(library, Some(Library::Glibc { major: 2, .. })),
            "{library:?}"
        );
    }
}
