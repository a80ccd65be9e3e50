//! The bench's world: a network namespace, knot answering in it, and a
//! work directory, all removed when dropped.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::command;

/// A network namespace for the run, deleted on drop.
pub struct Namespace {
    name: String,
}

impl Namespace {
    pub fn create() -> anyhow::Result<Self> {
        let name = format!("dnstrace-bench-{}", std::process::id());
        command::run(Command::new("ip").args(["netns", "add", &name]))?;
        let namespace = Self { name };
        command::run(namespace.command("ip").args(["link", "set", "lo", "up"]))?;
        Ok(namespace)
    }

    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Namespace {
    /// A veth pair whose far end takes whatever is sent to `BLACKHOLE`
    /// and drops it (the address is no one's, and the namespace does not
    /// forward): queries to it leave through the tracer's programs and are
    /// never answered. The neighbour entry is fixed, so no ARP is asked.
    /// Four local addresses, as one address has ports for only about
    /// 28,000 unconnected sockets.
    pub fn add_blackhole(&self) -> anyhow::Result<()> {
        let ip = |args: &[&str]| command::run(self.command("ip").args(args));
        ip(&[
            "link", "add", "hole", "type", "veth", "peer", "name", "hole-far",
        ])?;
        ip(&["link", "set", "hole-far", "address", FAR_END])?;
        for address in BLACKHOLE_SOURCES {
            ip(&["addr", "add", &format!("{address}/24"), "dev", "hole"])?;
        }
        ip(&["link", "set", "hole", "up"])?;
        ip(&["link", "set", "hole-far", "up"])?;
        ip(&[
            "neigh",
            "add",
            BLACKHOLE,
            "lladdr",
            FAR_END,
            "dev",
            "hole",
            "nud",
            "permanent",
        ])?;
        // `ip netns exec` mounts this over /etc/resolv.conf for what it
        // starts, and the agent reads the senders' resolver from there: a
        // long timeout keeps their lookups open even while the agent is
        // still working through the burst.
        let etc = self.etc();
        fs::create_dir_all(&etc)?;
        fs::write(
            etc.join("resolv.conf"),
            format!(
                "nameserver {BLACKHOLE}\noptions timeout:{BLACKHOLE_TIMEOUT_SECS} attempts:1\n"
            ),
        )?;
        Ok(())
    }

    /// Files `ip netns exec` mounts over /etc for this namespace.
    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }
}

const FAR_END: &str = "02:00:00:00:00:02";

/// The resolver timeout the blackhole's senders are given: their lookups
/// stay open this long and a second more.
pub const BLACKHOLE_TIMEOUT_SECS: u64 = 15;

/// Where unanswered queries go, and the addresses they leave from.
pub const BLACKHOLE: &str = "198.51.100.200";
pub const BLACKHOLE_SOURCES: [&str; 4] = [
    "198.51.100.1",
    "198.51.100.2",
    "198.51.100.3",
    "198.51.100.4",
];

/// Packets through the loopback of `pid`'s network namespace so far: each
/// is one DNS message of the run (nothing else talks there).
pub fn loopback_packets(pid: u32) -> anyhow::Result<u64> {
    let dev = fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    let line = dev
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("lo:"))
        .context("no lo in /proc/PID/net/dev")?;
    // Receive bytes, then receive packets.
    let packets = line.split_whitespace().nth(1).context("lo packets")?;
    Ok(packets.parse()?)
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.etc());
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

pub struct Knot(Child);

impl Knot {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_knot(namespace: &Namespace, work: &Path) -> anyhow::Result<Knot> {
    let dir = work.display();
    fs::write(
        work.join("bench.test.zone"),
        "$ORIGIN bench.test.\n$TTL 300\n\
         @ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A 127.0.0.1\n\
         www A 192.0.2.1\nwww AAAA 2001:db8::1\nmail A 192.0.2.2\n",
    )?;
    fs::write(
        work.join("knot.conf"),
        format!(
            "server:\n  listen: 127.0.0.1@53\n  rundir: {dir}\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n\
             database:\n  storage: {dir}/db\n\
             log:\n  - target: stderr\n    any: error\n\
             template:\n  - id: default\n    storage: {dir}\n\
             zone:\n  - domain: bench.test\n    file: bench.test.zone\n"
        ),
    )?;
    let child = namespace
        .command("knotd")
        .arg("-c")
        .arg(work.join("knot.conf"))
        .stdout(Stdio::null())
        .spawn()
        .context("starting knotd")?;
    let knot = Knot(child);
    // Ready once it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let answer = namespace
            .command("dig")
            .args([
                "@127.0.0.1",
                "www.bench.test",
                "+short",
                "+tries=1",
                "+time=1",
            ])
            .output()?;
        if String::from_utf8_lossy(&answer.stdout).contains("192.0.2.1") {
            return Ok(knot);
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("knotd did not answer within 20 s")
}

/// The run's files (knot's zone and database, tcpdump's capture, tens of
/// MiB), removed on drop.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("dnstrace-bench-{}", std::process::id()));
        fs::create_dir_all(path.join("db"))?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
