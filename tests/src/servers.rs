//! Real DNS servers from Debian, each serving the zone [`ZONE`] from the
//! server namespace: every name in it has the A record [`ANSWER_V4`] and the
//! AAAA record [`ANSWER_V6`], so each test can query names of its own.
//! Unbound also answers TXT queries under [`FITTING_TXT_SUBZONE`] with an
//! answer just under 1,232 bytes, NXDOMAIN under [`NXDOMAIN_SUBZONE`] and
//! NODATA to AAAA under [`V4_ONLY_SUBZONE`]. The shaping server
//! (src/bin/shaping-server.rs) answers in odd shapes chosen by a label of the
//! name; see [`Lookup::in_subzone`].
//!
//! [`Lookup::in_subzone`]: crate::clients::Lookup::in_subzone

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
};

use tempfile::TempDir;

use crate::{
    netns::{Family, ServerAddrs, Topology},
    process::{Daemon, PATIENCE, poll_until},
};

/// The zone every server answers for (wildcard records).
pub const ZONE: &str = "example.test";
/// Documentation addresses: answers are only compared, never contacted.
pub const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ANSWER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Under this subzone, unbound answers TXT with [`FITTING_TXT_RECORDS`]
/// records of 200 bytes: an answer that fits the 1,232 bytes every tracer
/// must capture.
pub const FITTING_TXT_SUBZONE: &str = "fits";
pub const FITTING_TXT_RECORDS: usize = 5;
/// Under this subzone every name is NXDOMAIN: unbound has an empty static
/// zone there, and the shaping server's `nxdomain` shape says so too.
pub const NXDOMAIN_SUBZONE: &str = "nxdomain";
/// Under this subzone unbound has A records but no AAAA: an AAAA query gets
/// NODATA, with RA set, as a recursive server sends it.
pub const V4_ONLY_SUBZONE: &str = "v4only";
/// The shaping server's `huge` shape answers TXT with this many 200-byte
/// records over UDP: about 8.5 kB, beyond any sensible capture size.
pub const HUGE_TXT_RECORDS: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Dnsmasq,
    Knot,
    Unbound,
    /// This crate's own server, for answers no real server gives.
    Shaping,
}

impl ServerKind {
    /// The servers from Debian.
    pub const REAL: [ServerKind; 3] = [ServerKind::Dnsmasq, ServerKind::Knot, ServerKind::Unbound];

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Dnsmasq => "dnsmasq",
            ServerKind::Knot => "knot",
            ServerKind::Unbound => "unbound",
            ServerKind::Shaping => "shaping",
        }
    }

    /// Each kind has addresses of its own, so all can run side by side.
    pub fn addrs(self) -> ServerAddrs {
        ServerAddrs::host(match self {
            ServerKind::Dnsmasq => 11,
            ServerKind::Knot => 12,
            ServerKind::Unbound => 13,
            ServerKind::Shaping => 14,
        })
    }
}

/// A running DNS server, stopped on drop.
pub struct DnsServer {
    pub kind: ServerKind,
    pub port: u16,
    daemon: Daemon,
    _config: TempDir,
}

impl DnsServer {
    /// Starts `kind` on port 53 and waits until it answers.
    pub fn start(kind: ServerKind, net: &Topology) -> Self {
        Self::start_on_port(kind, net, 53)
    }

    pub fn start_on_port(kind: ServerKind, net: &Topology, port: u16) -> Self {
        let addrs = kind.addrs();
        net.add_server_addrs(addrs);
        let config = tempfile::tempdir().expect("server config dir");
        let mut command = match kind {
            ServerKind::Dnsmasq => dnsmasq_command(net, addrs, port),
            ServerKind::Knot => knot_command(net, addrs, port, &config),
            ServerKind::Unbound => unbound_command(net, addrs, port, &config),
            ServerKind::Shaping => shaping_command(net, addrs, port),
        };
        let daemon = Daemon::spawn(kind.name(), &mut command);
        let mut server = Self {
            kind,
            port,
            daemon,
            _config: config,
        };
        server.wait_until_answering(net);
        server
    }

    /// Starts one server of every real kind.
    pub fn start_real(net: &Topology) -> Vec<Self> {
        ServerKind::REAL
            .into_iter()
            .map(|kind| Self::start(kind, net))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn socket(&self, family: Family) -> SocketAddr {
        self.kind.addrs().socket(family, self.port)
    }

    /// Queries the server from its own namespace until both families answer.
    fn wait_until_answering(&mut self, net: &Topology) {
        for family in Family::BOTH {
            let server = self.socket(family);
            poll_until(
                &format!("{} answering on {server}", self.kind.name()),
                PATIENCE,
                || {
                    self.daemon.assert_running();
                    let output = net
                        .server
                        .command("dig")
                        .args(dig_target(server))
                        .args(["+tries=1", "+time=1", "+short"])
                        .arg(format!("ready.{ZONE}"))
                        .output()
                        .expect("run dig");
                    String::from_utf8_lossy(&output.stdout).contains(&ANSWER_V4.to_string())
                },
            );
        }
    }
}

/// dig's arguments that aim it at `server`.
pub fn dig_target(server: SocketAddr) -> [String; 3] {
    [
        format!("@{}", server.ip()),
        "-p".to_owned(),
        server.port().to_string(),
    ]
}

/// The address the shaping server's `other-address` shape answers from.
pub const SHAPING_OTHER_HOST: u8 = 24;

/// The shaping server, built by cargo next to the test executables.
fn shaping_command(net: &Topology, addrs: ServerAddrs, port: u16) -> Command {
    let other = ServerAddrs::host(SHAPING_OTHER_HOST);
    net.add_server_addrs(other);
    let bin = shaping_server_binary();
    let mut command = net.server.command(&bin.display().to_string());
    command.args([
        SocketAddr::new(addrs.v4.into(), port).to_string(),
        SocketAddr::new(addrs.v6.into(), port).to_string(),
        format!("other={}", other.v4),
        format!("other={}", other.v6),
    ]);
    command
}

/// Where cargo built the shaping server: next to the test executables.
pub fn shaping_server_binary() -> PathBuf {
    crate::crate_binary("shaping-server")
}

fn dnsmasq_command(net: &Topology, addrs: ServerAddrs, port: u16) -> Command {
    let mut command = net.server.command("dnsmasq");
    command.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--user=root",
        "--bind-interfaces",
        "--log-facility=-",
        "--log-queries",
        &format!("--port={port}"),
        &format!("--listen-address={}", addrs.v4),
        &format!("--listen-address={}", addrs.v6),
        &format!("--address=/{ZONE}/{ANSWER_V4}"),
        &format!("--address=/{ZONE}/{ANSWER_V6}"),
    ]);
    command
}

/// The zone every server serves, in master file format.
pub fn zone_file() -> String {
    format!(
        "$ORIGIN {ZONE}.\n$TTL 300\n\
         @ SOA ns hostmaster 1 3600 900 604800 300\n\
         @ NS ns\n\
         ns A {ns}\n\
         * A {ANSWER_V4}\n\
         * AAAA {ANSWER_V6}\n",
        ns = IpAddr::from(ServerKind::Knot.addrs().v4),
    )
}

fn knot_command(net: &Topology, addrs: ServerAddrs, port: u16, dir: &TempDir) -> Command {
    let dir = dir.path().display();
    // Knot resets a TCP connection whose message takes over 500 ms to come
    // or go; under the loss tests inject, retransmissions take longer.
    let config = format!(
        "server:\n  rundir: \"{dir}\"\n  listen: [ {v4}@{port}, {v6}@{port} ]\n  \
         udp-workers: 2\n  tcp-workers: 1\n  background-workers: 1\n  \
         tcp-io-timeout: 10000\n\
         control:\n  listen: \"{dir}/knot.sock\"\n\
         database:\n  storage: \"{dir}\"\n\
         log:\n  - target: stderr\n    any: info\n\
         zone:\n  - domain: {ZONE}\n    storage: \"{dir}\"\n    file: \"zone\"\n",
        v4 = addrs.v4,
        v6 = addrs.v6,
    );
    fs::write(format!("{dir}/zone"), zone_file()).expect("write knot zone");
    fs::write(format!("{dir}/knot.conf"), config).expect("write knot.conf");
    let mut command = net.server.command("knotd");
    command.args(["-c", &format!("{dir}/knot.conf")]);
    command
}

fn unbound_command(net: &Topology, addrs: ServerAddrs, port: u16, dir: &TempDir) -> Command {
    let dir = dir.path().display();
    // A redirect zone answers every name under it with the zone's own records.
    let mut config = format!(
        "server:\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  pidfile: \"\"\n  \
         directory: \"{dir}\"\n  use-syslog: no\n  logfile: \"\"\n  num-threads: 1\n  \
         port: {port}\n  interface: {v4}\n  interface: {v6}\n  \
         access-control: 0.0.0.0/0 allow\n  access-control: ::/0 allow\n  \
         local-zone: \"{ZONE}.\" redirect\n  \
         local-data: \"{ZONE}. 300 IN A {ANSWER_V4}\"\n  \
         local-data: \"{ZONE}. 300 IN AAAA {ANSWER_V6}\"\n",
        v4 = addrs.v4,
        v6 = addrs.v6,
    );
    let subzone = format!("{FITTING_TXT_SUBZONE}.{ZONE}.");
    config.push_str(&format!("  local-zone: \"{subzone}\" redirect\n"));
    for n in 0..FITTING_TXT_RECORDS {
        // Records of one set must differ; pad each to 200 bytes.
        config.push_str(&format!(
            "  local-data: '{subzone} 300 IN TXT \"{n:0>200}\"'\n"
        ));
    }
    config.push_str(&format!(
        "  local-zone: \"{NXDOMAIN_SUBZONE}.{ZONE}.\" static\n  \
         local-zone: \"{V4_ONLY_SUBZONE}.{ZONE}.\" redirect\n  \
         local-data: \"{V4_ONLY_SUBZONE}.{ZONE}. 300 IN A {ANSWER_V4}\"\n"
    ));
    config.push_str("remote-control:\n  control-enable: no\n");
    fs::write(format!("{dir}/unbound.conf"), config).expect("write unbound.conf");
    let mut command = net.server.command("unbound");
    command.args(["-d", "-c", &format!("{dir}/unbound.conf")]);
    command
}
