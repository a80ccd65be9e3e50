//! Network namespaces made for one test: a client and a server joined by a
//! veth pair. No address in them routes anywhere else, so no test packet can
//! leave the machine, and parallel tests reuse the same addresses safely.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::Command,
    sync::Once,
};

use crate::{is_stale_name, process::run, unique_name};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd53, 0, 0, 0, 0, 0, 0, 2);

/// The veth end's name inside each namespace; names are per namespace, so
/// every test can use the same one.
const LINK: &str = "dns0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// One address of each family for a server, chosen by its host number.
#[derive(Clone, Copy, Debug)]
pub struct ServerAddrs {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl ServerAddrs {
    pub fn host(number: u8) -> Self {
        Self {
            v4: Ipv4Addr::new(10, 253, 0, number),
            v6: Ipv6Addr::new(0xfd53, 0, 0, 0, 0, 0, 0, number.into()),
        }
    }

    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.v4.into(),
            Family::V6 => self.v6.into(),
        }
    }

    pub fn socket(&self, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(family), port)
    }
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        static SWEPT: Once = Once::new();
        SWEPT.call_once(delete_stale_namespaces);
        let name = unique_name(role);
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        run(netns.ip().args(["link", "set", "lo", "up"]));
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The namespace's inode, which dnstrace reports as `netns`.
    pub fn inode(&self) -> u64 {
        let path = self.path();
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .ino()
    }

    /// `program` to be run inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        exec_in(&self.name, program)
    }

    /// `ip` acting on this namespace.
    pub fn ip(&self) -> Command {
        let mut command = Command::new("ip");
        command.args(["-n", &self.name]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// A client namespace and a server namespace on one veth link. The client
/// has [`CLIENT_V4`] and [`CLIENT_V6`]; servers add their own addresses.
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
}

impl Topology {
    pub fn new() -> Self {
        let client = Netns::new("client");
        let server = Netns::new("server");
        run(client.ip().args([
            "link",
            "add",
            LINK,
            "type",
            "veth",
            "peer",
            "name",
            LINK,
            "netns",
            server.name(),
        ]));
        run(client
            .ip()
            .args(["addr", "add", &format!("{CLIENT_V4}/24"), "dev", LINK]));
        // nodad: the address is usable at once instead of after DAD.
        run(client.ip().args([
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            LINK,
            "nodad",
        ]));
        for netns in [&client, &server] {
            run(netns.ip().args(["link", "set", LINK, "up"]));
        }
        Self { client, server }
    }

    /// Gives the server namespace `addrs` (idempotent).
    pub fn add_server_addrs(&self, addrs: ServerAddrs) {
        run(self
            .server
            .ip()
            .args(["addr", "replace", &format!("{}/24", addrs.v4), "dev", LINK]));
        run(self.server.ip().args([
            "addr",
            "replace",
            &format!("{}/64", addrs.v6),
            "dev",
            LINK,
            "nodad",
        ]));
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// Deletes namespaces left by test runs that were killed (SIGKILL skips
/// the guards), so they do not pile up on a CI machine.
fn delete_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
    {
        if is_stale_name(&name) {
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        }
    }
}

/// `program` to be run inside the namespace called `netns`.
pub fn exec_in(netns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns, program]);
    command
}

/// Whether `ip` belongs to the client end of every [`Topology`].
pub fn is_client_ip(ip: IpAddr) -> bool {
    ip == IpAddr::V4(CLIENT_V4) || ip == IpAddr::V6(CLIENT_V6)
}
