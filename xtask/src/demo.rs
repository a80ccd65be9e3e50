//! `cargo xtask demo`: the case behind dnstrace, reproduced in one command.
//!
//! A caching DNS server (CoreDNS before 1.5.1 with `cache 30`) answers a
//! name first from its backend, with AA, and for the next 30 s from its
//! cache, without AA or RA. Go's resolver (like glibc's) takes such an AAAA
//! NODATA answer for a lame referral, throws it away and asks again. The
//! demo runs a Go client and that server in network namespaces of its own,
//! with dnstrace watching the client's namespace, and succeeds only if
//! dnstrace names the cause, `answer_rejected`.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::command::{self, cargo, workspace_root};

/// The server's address: Kubernetes' usual kube-dns service address.
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
/// The shaping server answers names under `cache.example.test` as a cache
/// does (tests/src/bin/shaping-server.rs).
const NAME: &str = "postgres.cache.example.test";
/// The first lookup fills the cache; the next ones are answered from it.
const LOOKUPS: u32 = 3;
const LOOKUP_EVERY: &str = "3s";
/// Bounds on every wait, generous for a busy machine.
const PATIENCE: Duration = Duration::from_secs(30);

pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the demo must run as root: it creates network namespaces and dnstrace loads eBPF \
             programs (try `sudo -E cargo xtask demo`)"
        );
    }
    say("building dnstrace, the shaping DNS server and a Go client");
    let dnstrace = command::build_static_agent()?;
    let server = build_shaping_server()?;
    let found = reproduce(&dnstrace, &server)?;
    say("stopped every process and removed the namespaces and files");
    let Some(diagnosis) = found else {
        bail!(
            "dnstrace did not name answer_rejected within {PATIENCE:?}: the case went undiagnosed"
        );
    };
    say(&format!(
        "dnstrace named answer_rejected for pid {} ({}), server {}: thrown away {}; used {}",
        diagnosis["pid"],
        diagnosis["comm"].as_str().unwrap_or("?"),
        diagnosis["server"].as_str().unwrap_or("?"),
        describe(&diagnosis["rejected_shape"]),
        describe(&diagnosis["accepted_shape"]),
    ));
    Ok(())
}

/// `NOERROR flags [rd] an=0 ns=1 ar=0`, from a diagnosis's shape object.
fn describe(shape: &serde_json::Value) -> String {
    if shape.is_null() {
        return "nothing".into();
    }
    format!(
        "{} flags {} an={} ns={} ar={}",
        shape["rcode"].as_str().unwrap_or("?"),
        shape["flags"],
        shape["answers"],
        shape["authority"],
        shape["additional"]
    )
}

/// Sets the scene up, runs the client under dnstrace, and returns the
/// `answer_rejected` diagnosis if dnstrace made one; everything it started
/// is stopped and removed when it returns.
fn reproduce(dnstrace: &Path, server: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    let work = WorkDir::create()?;
    let client = build_go_client(&work.0)?;
    delete_stale_namespaces();
    let pod = Namespace::create("pod")?;
    let dns = Namespace::create("dns")?;
    pod.link_to(&dns)?;
    say(&format!(
        "namespace {} is the pod ({CLIENT}); {} runs the DNS server ({SERVER})",
        pod.name, dns.name
    ));

    say(&format!(
        "starting a caching DNS server on {SERVER}: the first answer for a name has AA, the \
         next ones for 30 s come from its cache with neither AA nor RA (CoreDNS before 1.5.1)"
    ));
    let _server = Running(
        dns.command(&server.display().to_string())
            .arg(format!("{SERVER}:53"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the shaping server")?,
    );
    wait_until_answering(&dns)?;

    let trace = work.0.join("trace.jsonl");
    say(&format!(
        "starting dnstrace on the pod's namespace: `dnstrace --netns {}`",
        pod.name
    ));
    let text = Tracer::start(Command::new(dnstrace).args(["--netns", &pod.name]), true)?;
    // The same trace as JSON, for the demo to check what dnstrace found.
    let json = Tracer::start(
        Command::new(dnstrace)
            .args(["--netns", &pod.name, "--format", "json", "-o"])
            .arg(&trace),
        false,
    )?;

    say(&format!(
        "a Go program in the pod looks {NAME} up {LOOKUPS} times, {LOOKUP_EVERY} apart \
         (resolv.conf: nameserver {SERVER})"
    ));
    let (stdout, stderr) = run_client(&pod, &work.0, &client)?;
    for line in stdout.lines() {
        say(&format!("client got {line}"));
    }
    for line in stderr.lines() {
        say(&format!("client: {line}"));
    }

    let found = wait_for_answer_rejected(&trace);
    say("stopping dnstrace; at exit it prints its per-process summary");
    json.stop()?;
    text.stop()?;
    Ok(found)
}

fn say(what: &str) {
    eprintln!("demo: {what}");
}

/// The shaping server is a binary of the end-to-end test crate.
fn build_shaping_server() -> anyhow::Result<PathBuf> {
    command::run(cargo().args([
        "build",
        "--release",
        "--package",
        "dnstrace-tests",
        "--bin",
        "shaping-server",
    ]))?;
    Ok(workspace_root().join("target/release/shaping-server"))
}

/// Builds tests/clients/go-resolve with Go's own resolver, keeping Go's
/// state in `dir` so that HOME need not be set.
fn build_go_client(dir: &Path) -> anyhow::Result<PathBuf> {
    let binary = dir.join("go-resolve");
    command::run(
        Command::new("go")
            .args(["build", "-tags", "netgo", "-o"])
            .arg(&binary)
            .arg(workspace_root().join("tests/clients/go-resolve/main.go"))
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "")
            .env(
                "GOPATH",
                workspace_root().join("target/dnstrace-demo/go/path"),
            )
            .env(
                "GOCACHE",
                workspace_root().join("target/dnstrace-demo/go/cache"),
            ),
    )?;
    Ok(binary)
}

/// Runs the Go client in the pod with private /etc files (a mount namespace
/// of its own), bounded in time; returns what it printed to stdout and
/// stderr.
fn run_client(pod: &Namespace, work: &Path, client: &Path) -> anyhow::Result<(String, String)> {
    let etc = work.join("etc");
    fs::create_dir_all(&etc)?;
    fs::write(etc.join("resolv.conf"), format!("nameserver {SERVER}\n"))?;
    fs::write(etc.join("nsswitch.conf"), "hosts: files dns\n")?;
    fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    let child = pod
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; for f in resolv.conf nsswitch.conf hosts; do \
             mount --bind \"$0/$f\" \"/etc/$f\"; done; exec \"$@\"",
        )
        .arg(&etc)
        .arg(client)
        .args(["-n", &LOOKUPS.to_string(), "-every", LOOKUP_EVERY, NAME])
        .env("GODEBUG", "netdns=go")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the Go client")?;
    let mut child = Running(child);
    let deadline = Instant::now() + PATIENCE;
    while child.0.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("the Go client did not finish within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    // A few lines at most: the pipes held them while the client ran.
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let pipes = (child.0.stdout.take(), child.0.stderr.take());
    let (Some(mut out), Some(mut err)) = pipes else {
        bail!("the client's output is not piped");
    };
    out.read_to_string(&mut stdout)?;
    err.read_to_string(&mut stderr)?;
    Ok((stdout, stderr))
}

/// Polls the JSON trace for an `answer_rejected` diagnosis, which dnstrace
/// writes a second or two after the lookup settles.
fn wait_for_answer_rejected(trace: &Path) -> Option<serde_json::Value> {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        let text = fs::read_to_string(trace).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["kind"] == "diagnosis" && line["cause"] == "answer_rejected");
        if found.is_some() {
            return found;
        }
        thread::sleep(Duration::from_millis(200));
    }
    None
}

fn wait_until_answering(dns: &Namespace) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let output = dns
            .command("dig")
            .args([&format!("@{SERVER}"), "+tries=1", "+time=1", "+short"])
            .arg("ready.example.test")
            .output()
            .context("running dig")?;
        if !output.stdout.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the DNS server did not answer within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running dnstrace, stopped with SIGINT as a user would.
struct Tracer {
    child: Running,
    stderr: thread::JoinHandle<()>,
}

impl Tracer {
    /// Starts `command` and waits until dnstrace says it is attached. With
    /// `visible`, its output goes to the terminal.
    fn start(command: &mut Command, visible: bool) -> anyhow::Result<Self> {
        let stdout = if visible {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut child = Running(
            command
                .stdout(stdout)
                .stderr(Stdio::piped())
                .spawn()
                .context("starting dnstrace")?,
        );
        let lines = BufReader::new(child.0.stderr.take().context("dnstrace stderr")?).lines();
        let (attached, attached_rx) = mpsc::channel();
        let stderr = thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.starts_with("dnstrace: attached") {
                    let _ = attached.send(());
                }
                if visible {
                    eprintln!("{line}");
                }
            }
        });
        if attached_rx.recv_timeout(PATIENCE).is_err() {
            bail!("dnstrace did not attach within {PATIENCE:?}");
        }
        Ok(Self { child, stderr })
    }

    fn stop(self) -> anyhow::Result<()> {
        let Self { mut child, stderr } = self;
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGINT) };
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.0.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                bail!("dnstrace did not exit within {PATIENCE:?}");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let _ = stderr.join();
        if !status.success() {
            bail!("dnstrace exited with {status}");
        }
        Ok(())
    }
}

/// A child process, killed on drop if it still runs.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Namespaces are named after the demo's pid, so a run killed before its
/// cleanup can be recognised by the next one.
const PREFIX: &str = "dnstrace-demo-";

/// A network namespace, deleted (with its end of the link) on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create(role: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        command::run(Command::new("ip").args(["netns", "add", &name]))?;
        let namespace = Self { name };
        command::run(namespace.ip().args(["link", "set", "lo", "up"]))?;
        Ok(namespace)
    }

    fn ip(&self) -> Command {
        let mut command = Command::new("ip");
        command.args(["-n", &self.name]);
        command
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// A veth pair between the two: [`CLIENT`] here, [`SERVER`] there.
    fn link_to(&self, server: &Namespace) -> anyhow::Result<()> {
        command::run(self.ip().args([
            "link",
            "add",
            "dns0",
            "type",
            "veth",
            "peer",
            "name",
            "dns0",
            "netns",
            &server.name,
        ]))?;
        for (namespace, address) in [(self, CLIENT), (server, SERVER)] {
            command::run(namespace.ip().args([
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "dns0",
            ]))?;
            command::run(namespace.ip().args(["link", "set", "dns0", "up"]))?;
        }
        Ok(())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// Deletes namespaces of demo runs that no longer run (SIGKILL skips drops).
fn delete_stale_namespaces() {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries.flatten().map(|e| e.file_name()) {
        let name = name.to_string_lossy();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .map(|(pid, _)| pid);
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
            let _ = Command::new("ip")
                .args(["netns", "delete", name.as_ref()])
                .status();
        }
    }
}

/// The demo's files: the client's /etc files, the Go build, the JSON trace.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
