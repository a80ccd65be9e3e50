//! Ground truth: every DNS packet on the veth link, captured by tcpdump in
//! the server namespace and decoded by tshark, independently of dnstrace.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
};

use tempfile::TempDir;

use crate::{
    netns::{Netns, exec_in, is_client_ip},
    process::{Daemon, PATIENCE, poll_until, run},
    servers::ZONE,
    unique_name,
};

/// One DNS message as it crossed the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WirePacket {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub id: u16,
    pub qr: bool,
    pub opcode: u8,
    /// Set flags, named as dnstrace names them.
    pub flags: BTreeSet<&'static str>,
    pub rcode: u8,
    /// With the trailing dot.
    pub qname: String,
    pub qtype: u16,
    pub answers: u16,
    pub authority: u16,
    pub additional: u16,
    pub edns_udp_size: Option<u16>,
    /// DNS payload length (the UDP length less its header).
    pub size: u32,
}

impl WirePacket {
    /// Whether the client sent this packet (rather than a server).
    pub fn from_client(&self) -> bool {
        is_client_ip(self.src.ip())
    }
}

/// A running tcpdump; [`PacketCapture::stop`] returns what it saw.
pub struct PacketCapture {
    daemon: Daemon,
    netns: String,
    file: PathBuf,
    ports: Vec<u16>,
    _dir: TempDir,
}

impl PacketCapture {
    /// Captures UDP on `ports` on every interface of `netns`.
    pub fn start(netns: &Netns, ports: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("capture dir");
        let file = dir.path().join("dns.pcap");
        // Fragments of large answers carry no UDP header: take them all
        // (IPv4 MF or offset set; IPv6 fragment header).
        let filter = ports
            .iter()
            .map(|port| format!("udp port {port}"))
            .chain([
                "ip[6:2] & 0x3fff != 0".to_owned(),
                "ip6[6] == 44".to_owned(),
            ])
            .collect::<Vec<_>>()
            .join(" or ");
        let mut command = netns.command("tcpdump");
        // Batched delivery and a 64 MiB buffer keep up with the load tests;
        // `-U` still writes each packet as soon as tcpdump has it.
        command
            .args(["-i", "any", "-n", "-U", "-Z", "root", "-B", "65536"])
            .arg("-w")
            .arg(&file)
            .arg(filter);
        let mut daemon = Daemon::spawn("tcpdump", &mut command);
        daemon.wait_for_stderr("tcpdump: listening on", PATIENCE);
        Self {
            daemon,
            netns: netns.name().to_owned(),
            file,
            ports: ports.to_vec(),
            _dir: dir,
        }
    }

    /// Stops tcpdump, checks it dropped nothing, and decodes the capture.
    pub fn stop(self) -> Vec<WirePacket> {
        let sentinel = self.wait_until_written();
        let (status, stderr) = self.daemon.stop(libc::SIGINT);
        assert!(status.success(), "tcpdump exited with {status}: {stderr:?}");
        assert!(
            stderr.iter().any(|l| l == "0 packets dropped by kernel"),
            "tcpdump dropped packets, so the ground truth is incomplete: {stderr:?}"
        );
        let mut tshark = Command::new("tshark");
        tshark
            .arg("-r")
            .arg(&self.file)
            .args(["-n", "-T", "fields"]);
        tshark.args(["-E", "separator=/t", "-E", "occurrence=f"]);
        // Decode every captured port as DNS (5353 would otherwise be mDNS).
        for port in &self.ports {
            tshark.args(["-d", &format!("udp.port=={port},dns")]);
        }
        // ICMP errors quote DNS packets; they are not messages.
        tshark.args(["-Y", "dns && !icmp && !icmpv6"]);
        for field in FIELDS {
            tshark.args(["-e", field]);
        }
        run(&mut tshark)
            .lines()
            .map(parse_packet)
            .filter(|packet| packet.qname != sentinel)
            .collect()
    }

    /// tcpdump exits on SIGINT without reading what the kernel still holds,
    /// so first send a sentinel query and wait until it is in the file: every
    /// packet before it is then written too. Returns the sentinel's qname.
    fn wait_until_written(&self) -> String {
        let label = unique_name("sentinel");
        // Nothing listens on the namespace's loopback; the query alone counts.
        let status = exec_in(&self.netns, "dig")
            .args([
                "@127.0.0.1",
                "-p",
                &self.ports[0].to_string(),
                "+tries=1",
                "+time=1",
            ])
            .arg(format!("{label}.{ZONE}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(status.is_ok(), "send the sentinel query: {status:?}");
        poll_until("tcpdump writing the sentinel query", PATIENCE, || {
            let written = fs::read(&self.file).expect("read capture file");
            written.windows(label.len()).any(|w| w == label.as_bytes())
        });
        format!("{label}.{ZONE}.")
    }
}

const FIELDS: [&str; 15] = [
    "ip.src",
    "ipv6.src",
    "udp.srcport",
    "ip.dst",
    "ipv6.dst",
    "udp.dstport",
    "udp.length",
    "dns.id",
    "dns.flags",
    "dns.qry.name",
    "dns.qry.type",
    "dns.count.answers",
    "dns.count.auth_rr",
    "dns.count.add_rr",
    "dns.rr.udp_payload_size",
];

fn parse_packet(line: &str) -> WirePacket {
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), FIELDS.len(), "tshark line {line:?}");
    let field = |name: &str| fields[FIELDS.iter().position(|f| *f == name).expect("known field")];
    let number = |name: &str| -> u32 {
        let text = field(name);
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed.unwrap_or_else(|e| panic!("tshark {name}={text:?} in {line:?}: {e}"))
    };
    let small = |name: &str| u16::try_from(number(name)).expect("16-bit field");
    let address = |v4: &str, v6: &str, port: &str| {
        let ip = [field(v4), field(v6)]
            .into_iter()
            .find(|ip| !ip.is_empty())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let ip: IpAddr = ip.parse().expect("tshark address");
        SocketAddr::new(ip, small(port))
    };
    let header_flags = small("dns.flags");
    let qname = match field("dns.qry.name") {
        "<Root>" => ".".to_owned(),
        name => format!("{name}."),
    };
    WirePacket {
        src: address("ip.src", "ipv6.src", "udp.srcport"),
        dst: address("ip.dst", "ipv6.dst", "udp.dstport"),
        id: small("dns.id"),
        qr: header_flags & 0x8000 != 0,
        opcode: ((header_flags >> 11) & 0xf) as u8,
        flags: FLAG_BITS
            .into_iter()
            .filter(|(_, bit)| header_flags & bit != 0)
            .map(|(name, _)| name)
            .collect(),
        rcode: (header_flags & 0xf) as u8,
        qname,
        qtype: small("dns.qry.type"),
        answers: small("dns.count.answers"),
        authority: small("dns.count.auth_rr"),
        additional: small("dns.count.add_rr"),
        edns_udp_size: (!field("dns.rr.udp_payload_size").is_empty())
            .then(|| small("dns.rr.udp_payload_size")),
        size: number("udp.length") - 8,
    }
}

/// The header flag bits dnstrace reports, by its names.
const FLAG_BITS: [(&str, u16); 6] = [
    ("aa", 0x0400),
    ("tc", 0x0200),
    ("rd", 0x0100),
    ("ra", 0x0080),
    ("ad", 0x0020),
    ("cd", 0x0010),
];
