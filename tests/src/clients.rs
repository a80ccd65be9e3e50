//! Real stub resolvers run in the client namespace. Each starts paused, so a
//! test can learn its pid (for `--pid`, or a cgroup) before it sends anything.
//! Every client gets a private resolv.conf, nsswitch.conf and hosts through a
//! bind mount in a mount namespace of its own; the host's files are never
//! touched.

use std::{
    fs,
    io::{self, Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        mpsc::{self, Receiver},
    },
    thread,
    time::Duration,
};

use tempfile::TempDir;

use crate::{
    netns::Topology,
    process::{run, wait_bounded},
    servers::{ANSWER_V4, ANSWER_V6, NXDOMAIN_SUBZONE, ZONE, dig_target},
    target_dir, unique_name, workspace_dir,
};

/// How long one client run may take. glibc alone may wait 2 × 5 s for a lost
/// answer; twice that is still bounded.
const RUN_PATIENCE: Duration = Duration::from_secs(60);

/// The uid the Python client drops to, so `uid` is checked against a value
/// other than root's.
pub const NOBODY: u32 = 65534;
/// How long after one another the calls of [`Client::PythonThreads`] and
/// [`Client::NodeAtOnce`] start.
pub const THREAD_STAGGER_MS: u32 = 150;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// BIND's dig: A, then AAAA, from a network thread.
    Dig,
    /// glibc `getaddrinfo` via `getent ahosts`: A+AAAA in one sendmmsg.
    Getent,
    /// glibc `getaddrinfo` via Python, run as [`NOBODY`], `lookups` times.
    Python { lookups: u32 },
    /// glibc `getaddrinfo` via Python from `threads` threads at once, each
    /// started [`THREAD_STAGGER_MS`] after the one before, one lookup each.
    PythonThreads { threads: u32 },
    /// glibc `getaddrinfo` via Python for many names that may fail: `rounds`
    /// times through the lookup's name put under each of `subzones` ("" for
    /// the name itself), with the round as an extra first label (`r7.<name>`)
    /// so that no name is asked twice. The rounds are shared out among
    /// `processes` processes, each looking up at most `per_second` names a
    /// second.
    PythonMany {
        rounds: u32,
        subzones: &'static [&'static str],
        processes: u32,
        per_second: u32,
    },
    /// musl's resolver, statically linked; [`Lookup::times`] lookups.
    Musl,
    /// Go's pure resolver; [`Lookup::times`] lookups, 100 ms apart.
    Go,
    /// The same program built with cgo, as Go builds by default where a C
    /// compiler is: it maps glibc, and still resolves with Go's resolver.
    GoCgo,
    /// c-ares through Node's `dns.Resolver`; [`Lookup::times`] lookups.
    Node,
    /// The same, `lookups` lookups at once from Node's one thread, each
    /// started [`THREAD_STAGGER_MS`] after the one before.
    NodeAtOnce { lookups: u32 },
    /// dnsperf sending `queries` distinct names once each, at most
    /// `per_second` a second.
    Dnsperf { queries: u32, per_second: u32 },
    /// One A query from Python's socket module, straight to the server;
    /// the response is read, or (`read: false`) left unread in the socket
    /// once it has arrived.
    UdpQuery { read: bool },
}

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Dig => "dig",
            Client::Getent => "getent",
            Client::Python { .. } => "python",
            Client::PythonThreads { .. } => "python-threads",
            Client::PythonMany { .. } => "python-many",
            Client::Musl => "musl",
            Client::Go => "go",
            Client::GoCgo => "go-cgo",
            Client::Node => "node",
            Client::NodeAtOnce { .. } => "node-at-once",
            Client::Dnsperf { .. } => "dnsperf",
            Client::UdpQuery { .. } => "udp-query",
        }
    }

    /// Whether `comm` is the name the kernel gives this client's threads.
    pub fn comm_matches(self, comm: &str) -> bool {
        match self {
            // dig does its network I/O on libisc's threads.
            Client::Dig => comm.starts_with("isc-net-"),
            Client::Getent => comm == "getent",
            Client::Python { .. }
            | Client::PythonThreads { .. }
            | Client::PythonMany { .. }
            | Client::UdpQuery { .. } => comm == "python3",
            Client::Musl => comm == MUSL_CLIENT,
            // Go threads keep the executable's name.
            Client::Go => comm == GO_CLIENT,
            Client::GoCgo => comm == GO_CGO_CLIENT,
            Client::Node | Client::NodeAtOnce { .. } => comm == "node",
            Client::Dnsperf { .. } => comm == "dnsperf",
        }
    }

    /// Clients with one thread: every message's tid is the pid.
    pub fn is_single_threaded(self) -> bool {
        matches!(
            self,
            Client::Getent
                | Client::Python { .. }
                | Client::PythonMany { .. }
                | Client::Musl
                | Client::UdpQuery { .. }
        )
    }

    pub fn uid(self) -> u32 {
        match self {
            Client::Python { .. } => NOBODY,
            _ => 0,
        }
    }

    /// Starts the client in `net`'s client namespace, stopped before it
    /// sends anything; [`PausedClient::run`] lets it go.
    pub fn prepare(self, net: &Topology, lookup: &Lookup) -> PausedClient {
        let files = tempfile::tempdir().expect("client files dir");
        let mut resolv_conf = format!("nameserver {}\n", lookup.server.ip());
        for line in &lookup.resolv_conf {
            resolv_conf.push_str(line);
            resolv_conf.push('\n');
        }
        let etc = [
            ("resolv.conf", resolv_conf),
            ("nsswitch.conf", "hosts: files dns\n".to_owned()),
            ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_owned()),
        ];
        for (name, content) in &etc {
            fs::write(files.path().join(name), content).expect("write client /etc file");
        }
        let mut command = net.client.command("unshare");
        // A private mount namespace, so the bind mounts stay with this client.
        command.args(["--mount", "--propagation", "private", "sh", "-c"]);
        command.arg(
            "set -e; for f in resolv.conf nsswitch.conf hosts; do \
             mount --bind \"$0/$f\" \"/etc/$f\"; done; read -r _; exec \"$@\"",
        );
        command.arg(files.path());
        command.args(self.argv(lookup, files.path()));
        if matches!(self, Client::Go | Client::GoCgo) {
            command.env("GODEBUG", "netdns=go");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let go = child.stdin.take().expect("stdin is piped");
        PausedClient {
            client: self,
            domain: lookup.domain.clone(),
            child,
            go,
            _files: files,
        }
    }

    /// Prepares and runs at once.
    pub fn run(self, net: &Topology, lookup: &Lookup) -> ClientRun {
        self.prepare(net, lookup).run()
    }

    /// The command line, run after the wrapper has set up `/etc`.
    fn argv(self, lookup: &Lookup, files: &Path) -> Vec<String> {
        let domain = &lookup.domain;
        let needs_port_53 = || {
            assert_eq!(
                lookup.server.port(),
                53,
                "{} reads resolv.conf, which has no port",
                self.name()
            )
        };
        match self {
            Client::Dig => {
                let mut argv = vec!["dig".to_owned()];
                argv.extend(dig_target(lookup.server));
                argv.extend(["+tries=1", "+time=5", "+short"].map(String::from));
                argv.extend([domain.clone(), "A".into(), domain.clone(), "AAAA".into()]);
                argv
            }
            Client::Getent => {
                needs_port_53();
                vec!["getent".into(), "ahosts".into(), domain.clone()]
            }
            Client::Python { lookups } => {
                needs_port_53();
                let script = workspace_dir().join("tests/clients/getaddrinfo.py");
                vec![
                    "setpriv".into(),
                    format!("--reuid={NOBODY}"),
                    format!("--regid={NOBODY}"),
                    "--clear-groups".into(),
                    "/usr/bin/python3".into(),
                    script.display().to_string(),
                    domain.clone(),
                    lookups.to_string(),
                ]
            }
            Client::PythonThreads { threads } => {
                needs_port_53();
                let script = workspace_dir().join("tests/clients/getaddrinfo-threads.py");
                vec![
                    "/usr/bin/python3".into(),
                    script.display().to_string(),
                    domain.clone(),
                    threads.to_string(),
                    THREAD_STAGGER_MS.to_string(),
                ]
            }
            Client::PythonMany {
                rounds,
                subzones,
                processes,
                per_second,
            } => {
                needs_port_53();
                let script = workspace_dir().join("tests/clients/getaddrinfo-many.py");
                let mut argv = vec![
                    "/usr/bin/python3".into(),
                    script.display().to_string(),
                    processes.to_string(),
                    per_second.to_string(),
                    rounds.to_string(),
                ];
                argv.extend(subzones.iter().map(|subzone| lookup.under(subzone)));
                argv
            }
            Client::Musl => {
                needs_port_53();
                vec![
                    musl_client().display().to_string(),
                    domain.clone(),
                    lookup.times.to_string(),
                ]
            }
            Client::Go | Client::GoCgo => {
                needs_port_53();
                let program = match self {
                    Client::Go => go_client(),
                    _ => go_cgo_client(),
                };
                vec![
                    program.display().to_string(),
                    "-n".into(),
                    lookup.times.to_string(),
                    "-every".into(),
                    "100ms".into(),
                    domain.clone(),
                ]
            }
            Client::Node | Client::NodeAtOnce { .. } => {
                let mut argv = vec![
                    "node".into(),
                    workspace_dir()
                        .join("tests/clients/node-resolve.js")
                        .display()
                        .to_string(),
                    domain.clone(),
                ];
                argv.extend(match self {
                    Client::NodeAtOnce { lookups } => {
                        vec![lookups.to_string(), THREAD_STAGGER_MS.to_string()]
                    }
                    _ => vec![lookup.times.to_string()],
                });
                argv
            }
            Client::UdpQuery { read } => vec![
                "/usr/bin/python3".into(),
                workspace_dir()
                    .join("tests/clients/udp-query.py")
                    .display()
                    .to_string(),
                lookup.server.ip().to_string(),
                lookup.server.port().to_string(),
                domain.clone(),
                if read { "read" } else { "leave" }.into(),
            ],
            Client::Dnsperf {
                queries,
                per_second,
            } => {
                let input = files.join("queries");
                let names: String = (0..queries).map(|i| format!("q{i}.{domain} A\n")).collect();
                fs::write(&input, names).expect("write dnsperf input");
                vec![
                    "dnsperf".into(),
                    "-s".into(),
                    lookup.server.ip().to_string(),
                    "-p".into(),
                    lookup.server.port().to_string(),
                    "-d".into(),
                    input.display().to_string(),
                    // Once through the names, at the rate, bounded in time.
                    "-n".into(),
                    "1".into(),
                    "-Q".into(),
                    per_second.to_string(),
                    "-l".into(),
                    (queries / per_second.max(1) + 30).to_string(),
                ]
            }
        }
    }
}

/// What a client looks up, and from which server.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// A name no other lookup uses; dnsperf queries names under it.
    pub domain: String,
    pub server: SocketAddr,
    /// resolv.conf lines after the `nameserver` line of `server`: more
    /// nameservers, `search`, `options`.
    pub resolv_conf: Vec<String>,
    /// How many times the program looks the name up, for clients that can
    /// repeat ([`Client::Musl`], [`Client::Go`]; [`Client::Python`] has its
    /// own count).
    pub times: u32,
}

/// The search list of [`Lookup::ndots_search`]: a pod's namespace and
/// cluster suffixes, all under the NXDOMAIN subzone.
fn ndots_suffixes() -> [String; 3] {
    ["ns.svc", "svc", ""].map(|prefix| match prefix {
        "" => format!("{NXDOMAIN_SUBZONE}.{ZONE}"),
        prefix => format!("{prefix}.{NXDOMAIN_SUBZONE}.{ZONE}"),
    })
}

impl Lookup {
    pub fn new(label: &str, server: SocketAddr) -> Self {
        Self::in_subzone(label, "", server)
    }

    /// A name under `subzone` of [`ZONE`]: for the shaping server, the
    /// subzone names the shape of the answer.
    pub fn in_subzone(label: &str, subzone: &str, server: SocketAddr) -> Self {
        let subzone = if subzone.is_empty() {
            String::new()
        } else {
            format!("{subzone}.")
        };
        Self {
            domain: format!("{}.{subzone}{ZONE}", unique_name(label)),
            server,
            resolv_conf: Vec::new(),
            times: 1,
        }
    }

    /// Has the program look the name up `times` times.
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    /// Adds a line to the client's resolv.conf.
    pub fn with_resolv_conf(mut self, line: impl Into<String>) -> Self {
        self.resolv_conf.push(line.into());
        self
    }

    /// getent's lookup of a name with two dots on the shaping server
    /// `server`, under a Kubernetes pod's search list whose every suffix is
    /// NXDOMAIN, with ndots:5: the name is tried under each suffix before
    /// it resolves on its own.
    pub fn ndots_search(server: SocketAddr) -> Self {
        Self::new("getent", server)
            .with_resolv_conf(format!("search {}", ndots_suffixes().join(" ")))
            .with_resolv_conf("options ndots:5")
    }

    /// The names an [`Lookup::ndots_search`] tries, in order, with their
    /// trailing dots: under each suffix, then the name itself.
    pub fn ndots_names_tried(&self) -> Vec<String> {
        ndots_suffixes()
            .iter()
            .map(|suffix| format!("{}.{suffix}.", self.domain))
            .chain([format!("{}.", self.domain)])
            .collect()
    }

    /// The lookup's unique label under `subzone` of [`ZONE`] instead ("" for
    /// the name itself).
    pub fn under(&self, subzone: &str) -> String {
        let label = self
            .domain
            .split('.')
            .next()
            .expect("a name has a first label");
        if subzone.is_empty() {
            format!("{label}.{ZONE}")
        } else {
            format!("{label}.{subzone}.{ZONE}")
        }
    }
}

/// A client waiting to start; dropping it ends it without a query.
pub struct PausedClient {
    client: Client,
    domain: String,
    child: Child,
    go: ChildStdin,
    _files: TempDir,
}

impl PausedClient {
    /// The pid the client will have: the wrapper execs it in place.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the client go, waits for it, and checks that the lookup worked.
    pub fn run(self) -> ClientRun {
        let (status, run, stderr) = self.finish();
        assert!(
            status.success(),
            "{} failed with {status}:\n{}{stderr}",
            run.client.name(),
            run.stdout
        );
        run.assert_resolved();
        run
    }

    /// Lets the client go and checks that the lookup failed, as it must
    /// against answers it rejects.
    pub fn run_expecting_failure(self) -> ClientRun {
        let (status, run, _) = self.finish();
        assert!(
            !status.success(),
            "{} resolved {}:\n{}",
            run.client.name(),
            run.domain,
            run.stdout
        );
        run
    }

    /// Lets the client go and waits for it, whatever the outcome: for tests
    /// that judge the output themselves. Returns the exit status and the run.
    pub fn run_to_exit(self) -> (ExitStatus, ClientRun) {
        let (status, run, _) = self.finish();
        (status, run)
    }

    /// Starts the client and waits (bounded) for it; returns its exit status,
    /// the run and its stderr.
    fn finish(mut self) -> (ExitStatus, ClientRun, String) {
        // Read while it runs: a client that fills a pipe would block forever.
        let stdout = self.child.stdout.take().map(read_on_a_thread);
        let stderr = self.child.stderr.take().map(read_on_a_thread);
        self.go.write_all(b"\n").expect("start client");
        let Some(status) = wait_bounded(&mut self.child, RUN_PATIENCE) else {
            panic!(
                "{} did not finish within {RUN_PATIENCE:?}",
                self.client.name()
            );
        };
        // Bounded too: a process the client left behind may hold the pipe.
        let joined = |reader: Option<Receiver<io::Result<String>>>| {
            reader.and_then(|reader| reader.recv_timeout(RUN_PATIENCE).ok()?.ok())
        };
        let (Some(stdout), Some(stderr)) = (joined(stdout), joined(stderr)) else {
            panic!("read {}'s output", self.client.name());
        };
        let run = ClientRun {
            client: self.client,
            pid: self.child.id(),
            domain: format!("{}.", self.domain),
            stdout,
        };
        (status, run, stderr)
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn read_on_a_thread(pipe: impl Read + Send + 'static) -> Receiver<io::Result<String>> {
    let (text, received) = mpsc::channel();
    thread::spawn(move || text.send(io::read_to_string(pipe)));
    received
}

impl Drop for PausedClient {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A finished client and what the trace should show for it.
#[derive(Clone, Debug)]
pub struct ClientRun {
    pub client: Client,
    pub pid: u32,
    /// The looked-up name with its trailing dot, as dnstrace prints qnames.
    pub domain: String,
    pub stdout: String,
}

impl ClientRun {
    /// Whether `qname` is one this run asked for.
    pub fn asked_for(&self, qname: &str) -> bool {
        qname == self.domain
            || qname
                .strip_suffix(self.domain.as_str())
                .is_some_and(|prefix| prefix.ends_with('.'))
    }

    fn assert_resolved(&self) {
        if let Client::PythonMany {
            rounds, subzones, ..
        } = self.client
        {
            let expected = rounds as usize * subzones.len();
            let reported = self.stdout.lines().count();
            assert_eq!(
                reported, expected,
                "python-many reported {reported} of {expected} lookups:\n{}",
                self.stdout
            );
            return;
        }
        if let Client::Dnsperf { queries, .. } = self.client {
            let sent = self
                .stdout
                .lines()
                .find_map(|line| line.trim().strip_prefix("Queries sent:"))
                .and_then(|count| count.trim().parse::<u32>().ok());
            assert_eq!(
                sent,
                Some(queries),
                "dnsperf sent fewer queries:\n{}",
                self.stdout
            );
            return;
        }
        if let Client::UdpQuery { .. } = self.client {
            assert_eq!(self.stdout.trim(), "arrived", "udp-query: no response");
            return;
        }
        for want in [ANSWER_V4.to_string(), ANSWER_V6.to_string()] {
            assert!(
                self.stdout.contains(&want),
                "{} for {} printed no {want:?}:\n{}",
                self.client.name(),
                self.domain,
                self.stdout
            );
        }
    }
}

/// The musl client's executable name, which is also its comm.
const MUSL_CLIENT: &str = "musl-resolve";
const GO_CLIENT: &str = "go-resolve";
const GO_CGO_CLIENT: &str = "go-resolve-cgo";

/// Builds the musl client once per test process.
fn musl_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = workspace_dir().join("tests/clients/musl-resolve.c");
        build_client(MUSL_CLIENT, |output| {
            let mut command = Command::new("musl-gcc");
            command
                .arg("-static")
                .arg("-O2")
                .arg("-o")
                .arg(output)
                .arg(source);
            command
        })
    })
}

/// Builds the Go client once per test process, without modules or cgo.
pub fn go_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_go_client(GO_CLIENT, false))
}

/// Builds the Go client once per test process with cgo, linked to glibc.
pub fn go_cgo_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_go_client(GO_CGO_CLIENT, true))
}

fn build_go_client(name: &str, cgo: bool) -> PathBuf {
    let source = workspace_dir().join("tests/clients/go-resolve/main.go");
    let go_home = target_dir().join("dnstrace-tests/go");
    build_client(name, |output| {
        let mut command = Command::new("go");
        command.arg("build");
        if !cgo {
            command.args(["-tags", "netgo"]);
        }
        command
            .arg("-o")
            .arg(output)
            .arg(source)
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", if cgo { "1" } else { "0" })
            .env("GOFLAGS", "")
            // HOME may be unset in CI; keep Go's state in target/.
            .env("GOPATH", go_home.join("path"))
            .env("GOCACHE", go_home.join("cache"));
        command
    })
}

/// Builds into target/ under a temporary name, then renames, so concurrent
/// test processes never run a half-written binary.
fn build_client(name: &str, command: impl FnOnce(&Path) -> Command) -> PathBuf {
    let dir = target_dir().join("dnstrace-tests/clients");
    fs::create_dir_all(&dir).expect("create client build dir");
    let built = dir.join(name);
    let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
    run(&mut command(&partial));
    fs::rename(&partial, &built).expect("move built client into place");
    built
}
