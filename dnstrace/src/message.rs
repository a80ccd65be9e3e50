//! The event model: one DNS message seen on one socket of one process.
//! Every output (text, JSON) renders this; correlation builds on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dnstrace_common::{EVENT_OWNER_KNOWN, FAMILY_V4, PROTO_TCP};

use crate::{
    capture::RawMessage,
    clock::WallClock,
    decode::{self, DnsSummary},
    framing::TcpStreams,
    process::Namespaces,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Send,
    Recv,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Recv => "recv",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// The process that owns the socket. Absent when the socket never sent DNS
/// while dnstrace watched and the kernel could not tell its owner otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    /// The thread's name, as the kernel keeps it (15 bytes at most).
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    /// Network namespace inode, as `ls -l /proc/PID/ns/net` shows it.
    pub netns: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Message {
    /// Nanoseconds since the Unix epoch.
    pub wall_time_ns: i128,
    /// CLOCK_MONOTONIC nanoseconds, for intervals.
    pub monotonic_ns: u64,
    pub process: Option<Process>,
    pub socket_cookie: u64,
    pub direction: Direction,
    pub transport: Transport,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Length of the DNS message on the wire.
    pub size: u32,
    /// Fewer bytes were captured than the message holds.
    pub truncated_capture: bool,
    pub dns: DnsSummary,
    /// The captured DNS message (without TCP's length prefix), kept only
    /// when an output writes packets: copying it costs every message.
    pub payload: Vec<u8>,
}

impl Message {
    /// Hands each message in a record to `each`: one for UDP; for TCP, those
    /// that start in the segment (none for a segment that only continues
    /// one).
    pub fn from_raw(
        raw: &RawMessage<'_>,
        clock: &WallClock,
        namespaces: &mut Namespaces,
        streams: &mut TcpStreams,
        keep_payload: bool,
        mut each: impl FnMut(Self),
    ) {
        let header = &raw.header;
        let process = (header.flags & EVENT_OWNER_KNOWN != 0).then(|| Process {
            pid: header.pid,
            tid: header.tid,
            comm: comm_to_string(&header.comm),
            uid: header.uid,
            cgroup_id: header.cgroup_id,
            netns: namespaces.inode(header.netns_cookie),
        });
        let direction = if header.direction == dnstrace_common::Direction::Send as u8 {
            Direction::Send
        } else {
            Direction::Recv
        };
        let process = &process;
        let message = |transport: Transport, payload: &[u8], size: u32| Self {
            wall_time_ns: clock.wall_ns(header.timestamp_ns),
            monotonic_ns: header.timestamp_ns,
            process: process.clone(),
            socket_cookie: header.socket_cookie,
            direction,
            transport,
            local: socket_addr(header.family, &header.local_addr, header.local_port),
            remote: socket_addr(header.family, &header.remote_addr, header.remote_port),
            size,
            truncated_capture: (payload.len() as u32) < size,
            dns: decode::decode(payload, size as usize),
            payload: if keep_payload {
                payload.to_vec()
            } else {
                Vec::new()
            },
        };
        if header.protocol == PROTO_TCP {
            let sending = direction == Direction::Send;
            for framed in streams.frame(
                header.socket_cookie,
                sending,
                header.payload_len,
                raw.payload,
            ) {
                each(message(Transport::Tcp, framed.bytes, framed.len));
            }
        } else {
            each(message(Transport::Udp, raw.payload, header.payload_len));
        }
    }
}

fn socket_addr(family: u8, addr: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    };
    SocketAddr::new(ip, port)
}

fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_the_first_nul() {
        assert_eq!(comm_to_string(b"getent\0\0\0\0\0\0\0\0\0\0"), "getent");
        assert_eq!(comm_to_string(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn addresses_keep_their_family() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 53]);
        assert_eq!(socket_addr(FAMILY_V4, &v4, 53).to_string(), "127.0.0.53:53");
        let v6 = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(
            socket_addr(dnstrace_common::FAMILY_V6, &v6, 53).to_string(),
            "[::1]:53"
        );
    }
}
