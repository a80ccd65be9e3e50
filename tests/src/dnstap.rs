//! dnstap fixtures: fstrm_capture as a collector on a Unix socket or on
//! loopback TCP, Knot DNS logging its own dnstap, and Debian's dnstap
//! decoders run on a file.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
};

use tempfile::TempDir;

use crate::{
    netns::{Family, ServerAddrs, Topology},
    process::{Daemon, PATIENCE, poll_until, run},
    servers::{ANSWER_V4, ZONE, dig_target, zone_file},
};

/// dnstap's Frame Streams content type.
pub const CONTENT_TYPE: &str = "protobuf:dnstap.Dnstap";

/// fstrm_capture, writing what it receives to a file.
pub struct Collector {
    daemon: Daemon,
    pub output: PathBuf,
}

impl Collector {
    /// Listens on the Unix socket `socket` (a stale one is removed first).
    pub fn unix(socket: &Path, output: &Path) -> Self {
        let _ = fs::remove_file(socket);
        let mut command = Command::new("fstrm_capture");
        command
            .args(["-t", CONTENT_TYPE, "-u"])
            .arg(socket)
            .arg("-w")
            .arg(output);
        let collector = Self::spawn(&mut command, output);
        poll_until(
            &format!("fstrm_capture listening on {}", socket.display()),
            PATIENCE,
            || socket.exists(),
        );
        collector
    }

    /// Listens on 127.0.0.1:`port`.
    pub fn tcp(port: u16, output: &Path) -> Self {
        let mut command = Command::new("fstrm_capture");
        command
            .args([
                "-t",
                CONTENT_TYPE,
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg("-w")
            .arg(output);
        let collector = Self::spawn(&mut command, output);
        poll_until(
            &format!("fstrm_capture listening on port {port}"),
            PATIENCE,
            || {
                let listening =
                    run(Command::new("ss").args(["-Hltn", "sport", "=", &format!(":{port}")]));
                !listening.trim().is_empty()
            },
        );
        collector
    }

    fn spawn(command: &mut Command, output: &Path) -> Self {
        Self {
            daemon: Daemon::spawn("fstrm_capture", command),
            output: output.to_owned(),
        }
    }

    /// Stops it with SIGINT, after which its file is complete.
    pub fn stop(self) -> PathBuf {
        let (status, stderr) = self.daemon.stop(libc::SIGINT);
        assert!(
            status.success(),
            "fstrm_capture exited with {status}; stderr:\n{}",
            stderr.join("\n")
        );
        self.output
    }
}

/// A loopback TCP port nothing listens on at the moment.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Knot DNS serving [`ZONE`] in the server namespace with its dnstap module
/// logging every query and response to a file.
pub struct DnstapKnot {
    daemon: Daemon,
    addrs: ServerAddrs,
    _config: TempDir,
}

impl DnstapKnot {
    /// Addresses of its own, apart from those of [`crate::servers`].
    const HOST: u8 = 15;

    pub fn start(net: &Topology, tap: &Path) -> Self {
        let addrs = ServerAddrs::host(Self::HOST);
        net.add_server_addrs(addrs);
        let config = tempfile::tempdir().expect("knot config dir");
        let dir = config.path().display();
        let knot_conf = format!(
            "server:\n  rundir: \"{dir}\"\n  listen: [ {v4}@53, {v6}@53 ]\n  \
             udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\n\
             control:\n  listen: \"{dir}/knot.sock\"\n\
             database:\n  storage: \"{dir}\"\n\
             log:\n  - target: stderr\n    any: info\n\
             mod-dnstap:\n  - id: tap\n    sink: \"{tap}\"\n    \
             log-queries: on\n    log-responses: on\n\
             template:\n  - id: default\n    global-module: mod-dnstap/tap\n\
             zone:\n  - domain: {ZONE}\n    storage: \"{dir}\"\n    file: \"zone\"\n",
            v4 = addrs.v4,
            v6 = addrs.v6,
            tap = tap.display(),
        );
        fs::write(config.path().join("zone"), zone_file()).expect("write knot zone");
        fs::write(config.path().join("knot.conf"), knot_conf).expect("write knot.conf");
        let mut command = net.server.command("knotd");
        command.arg("-c").arg(config.path().join("knot.conf"));
        let mut server = Self {
            daemon: Daemon::spawn("knotd with dnstap", &mut command),
            addrs,
            _config: config,
        };
        let target = server.socket(Family::V4);
        poll_until(&format!("knot answering on {target}"), PATIENCE, || {
            server.daemon.assert_running();
            let output = net
                .server
                .command("dig")
                .args(dig_target(target))
                .args(["+tries=1", "+time=1", "+short"])
                .arg(format!("ready.{ZONE}"))
                .output()
                .expect("run dig");
            String::from_utf8_lossy(&output.stdout).contains(&ANSWER_V4.to_string())
        });
        server
    }

    pub fn socket(&self, family: Family) -> SocketAddr {
        self.addrs.socket(family, 53)
    }

    /// Stops knot with SIGTERM, which closes the dnstap file whole.
    pub fn stop(self) {
        let (status, stderr) = self.daemon.stop(libc::SIGTERM);
        assert!(
            status.success(),
            "knotd exited with {status}; stderr:\n{}",
            stderr.join("\n")
        );
    }
}

/// Runs a dnstap decoder (`program` with `args`) and returns what it
/// printed; panics if it fails.
pub fn decode(program: &str, args: &[&str]) -> String {
    run(Command::new(program).args(args))
}
