//! The guest's DNS traffic: responders on loopback addresses, and a client
//! that sends every query of [`BATCHES`] the ways resolvers do. Each runs as
//! its own process (`/init serve`, `/init client`), so dnstrace must tell
//! them apart.

use std::{
    io::{self, BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd as _,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};

use crate::system;

pub const SERVE: &str = "serve";
pub const CLIENT: &str = "client";
/// The client's thread name, as dnstrace's `comm` shows it.
pub const CLIENT_NAME: &str = "vm-client";

const EARLY_V4: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53));
const EARLY_V6: SocketAddr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 53, 0, 0));
/// lo answers for all of 127.0.0.0/8, so a second server needs no address.
const LATE_V4: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 53));

/// A DNS server process of the test.
pub struct ServerSpec {
    /// Its thread name, as dnstrace's `comm` shows it.
    pub name: &'static str,
    pub addresses: &'static [SocketAddr],
    /// Whether its sockets exist before dnstrace starts (dnstrace must find
    /// their owner at start), or are made while it runs (their first
    /// receive precedes any send, so it may be unattributed).
    pub before_tracer: bool,
}

/// Runs for the whole boot, like a resolver that was there first.
pub const EARLY: ServerSpec = ServerSpec {
    name: "vm-server",
    addresses: &[EARLY_V4, EARLY_V6],
    before_tracer: true,
};

/// Started after dnstrace attaches, stopped after each run.
pub const LATE: ServerSpec = ServerSpec {
    name: "vm-late-server",
    addresses: &[LATE_V4],
    before_tracer: false,
};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
/// How long the client waits for each answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to bind its sockets.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a batch's queries leave the client.
#[derive(Clone, Copy, Debug)]
pub enum SendCall {
    /// connect(), then send(): glibc's and musl's way.
    Connected,
    /// sendto() on an unconnected socket: Go's and dig's way.
    SendTo,
    /// connect(), then both queries in one sendmmsg(): glibc's A + AAAA.
    SendMmsg,
}

pub struct Query {
    pub id: u16,
    pub qname: &'static str,
    pub qtype: u16,
}

/// Queries that share one client socket.
pub struct Batch {
    pub send: SendCall,
    pub server: SocketAddr,
    pub queries: &'static [Query],
}

/// Everything the client sends: on IPv4 and IPv6, each send path once, and
/// to both servers.
pub const BATCHES: &[Batch] = &[
    Batch {
        send: SendCall::Connected,
        server: EARLY_V4,
        queries: &[Query {
            id: 0x4101,
            qname: "connect.v4.vm.test.",
            qtype: TYPE_A,
        }],
    },
    Batch {
        send: SendCall::SendTo,
        server: EARLY_V4,
        queries: &[Query {
            id: 0x4102,
            qname: "sendto.v4.vm.test.",
            qtype: TYPE_A,
        }],
    },
    Batch {
        send: SendCall::SendMmsg,
        server: EARLY_V4,
        queries: &[
            Query {
                id: 0x4103,
                qname: "sendmmsg.v4.vm.test.",
                qtype: TYPE_A,
            },
            Query {
                id: 0x4104,
                qname: "sendmmsg.v4.vm.test.",
                qtype: TYPE_AAAA,
            },
        ],
    },
    Batch {
        send: SendCall::Connected,
        server: EARLY_V6,
        queries: &[Query {
            id: 0x6101,
            qname: "connect.v6.vm.test.",
            qtype: TYPE_AAAA,
        }],
    },
    Batch {
        send: SendCall::SendTo,
        server: EARLY_V6,
        queries: &[Query {
            id: 0x6102,
            qname: "sendto.v6.vm.test.",
            qtype: TYPE_AAAA,
        }],
    },
    // Two queries, so the late server's socket receives again after it sent.
    Batch {
        send: SendCall::SendTo,
        server: LATE_V4,
        queries: &[
            Query {
                id: 0x4201,
                qname: "late.v4.vm.test.",
                qtype: TYPE_A,
            },
            Query {
                id: 0x4202,
                qname: "late.v4.vm.test.",
                qtype: TYPE_AAAA,
            },
        ],
    },
];

pub fn qtype_name(qtype: u16) -> &'static str {
    match qtype {
        TYPE_A => "A",
        TYPE_AAAA => "AAAA",
        _ => "other",
    }
}

/// Where nothing listens: a query sent there is dropped by the kernel with
/// the reason `NO_SOCKET`.
const NOBODY_V4: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 53));

/// The query [`send_unheard`] sends.
pub const UNHEARD: Query = Query {
    id: 0x4d01,
    qname: "unheard.vm.test.",
    qtype: TYPE_A,
};

/// Sends [`UNHEARD`] to an address where no server listens.
pub fn send_unheard() -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("binding a client socket")?;
    socket
        .send_to(&query_bytes(&UNHEARD), NOBODY_V4)
        .context("sending the unheard query")?;
    Ok(())
}

/// A query with RD set, as stub resolvers send it.
fn query_bytes(query: &Query) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    for field in [query.id, FLAG_RD, 1, 0, 0, 0] {
        bytes.extend_from_slice(&field.to_be_bytes());
    }
    for label in query.qname.trim_end_matches('.').split('.') {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.push(0);
    bytes.extend_from_slice(&query.qtype.to_be_bytes());
    bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
    bytes
}

/// The authoritative answer to `query`: one fixed A or AAAA record, RD
/// echoed. `None` for anything but a one-question query.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let header = |at: usize| Some(u16::from_be_bytes(query.get(at..at + 2)?.try_into().ok()?));
    let (id, flags, questions) = (header(0)?, header(2)?, header(4)?);
    if flags & FLAG_QR != 0 || questions != 1 {
        return None;
    }
    // Walk the question's labels to find where it ends.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1 + len;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
    }
    let question = query.get(12..end + 4)?;
    let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
    let rdata: Vec<u8> = match qtype {
        TYPE_A => Ipv4Addr::new(192, 0, 2, 1).octets().into(),
        TYPE_AAAA => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)
            .octets()
            .into(),
        _ => Vec::new(),
    };
    let answers = u16::from(!rdata.is_empty());
    let mut bytes = Vec::with_capacity(question.len() + 40);
    let reply_flags = FLAG_QR | FLAG_AA | (flags & FLAG_RD);
    for field in [id, reply_flags, 1, answers, 0, 0] {
        bytes.extend_from_slice(&field.to_be_bytes());
    }
    bytes.extend_from_slice(question);
    if answers == 1 {
        // A pointer to the question's name, then type, class, TTL, rdata.
        bytes.extend_from_slice(&[0xc0, 12]);
        bytes.extend_from_slice(&qtype.to_be_bytes());
        bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        bytes.extend_from_slice(&60u32.to_be_bytes());
        bytes.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&rdata);
    }
    Some(bytes)
}

/// The responder process, answering until it is killed.
pub struct Server {
    child: Child,
}

impl Server {
    /// Starts `/init serve NAME ADDRESS...` and waits until it is bound.
    pub fn start(spec: &ServerSpec) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe().context("locating /init")?)
            .args([SERVE, spec.name])
            .args(spec.addresses.iter().map(SocketAddr::to_string))
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the DNS server")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let (ready, is_ready) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = ready.send(line);
        });
        let server = Self { child };
        match is_ready.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.trim() == "ready" => Ok(server),
            Ok(line) => bail!("{} did not start: {line:?}", spec.name),
            Err(_) => bail!("{} was not ready within {READY_TIMEOUT:?}", spec.name),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // It may have died already; there is nothing else to do about it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/init serve NAME ADDRESS...`: answers on every address, one thread.
pub fn serve(args: &[String]) -> anyhow::Result<()> {
    let (name, addresses) = args.split_first().context("serve NAME ADDRESS...")?;
    system::set_thread_name(name)?;
    let sockets = addresses
        .iter()
        .map(|address| {
            let address: SocketAddr = address.parse().context("serve NAME ADDRESS...")?;
            UdpSocket::bind(address).with_context(|| format!("binding {address}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!("ready");
    let mut polls: Vec<libc::pollfd> = sockets
        .iter()
        .map(|socket| libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buffer = [0; 1500];
    loop {
        // SAFETY: polls is a valid array of pollfd for the whole call.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as _, -1) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error).context("poll");
        }
        for (socket, poll) in sockets.iter().zip(&polls) {
            if poll.revents & libc::POLLIN == 0 {
                continue;
            }
            let (len, peer) = socket.recv_from(&mut buffer).context("recv_from")?;
            if let Some(reply) = answer(&buffer[..len]) {
                socket.send_to(&reply, peer).context("send_to")?;
            }
        }
    }
}

/// `/init client`: every batch, each answer checked.
pub fn client() -> anyhow::Result<()> {
    system::set_thread_name(CLIENT_NAME)?;
    for batch in BATCHES {
        run_batch(batch).with_context(|| format!("{:?} to {}", batch.send, batch.server))?;
    }
    Ok(())
}

fn run_batch(batch: &Batch) -> anyhow::Result<()> {
    let local = match batch.server.ip() {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    };
    let socket = UdpSocket::bind(local).with_context(|| format!("binding {local}"))?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let queries: Vec<Vec<u8>> = batch.queries.iter().map(query_bytes).collect();
    match batch.send {
        SendCall::Connected => {
            socket.connect(batch.server)?;
            for query in &queries {
                socket.send(query)?;
            }
        }
        SendCall::SendTo => {
            for query in &queries {
                socket.send_to(query, batch.server)?;
            }
        }
        SendCall::SendMmsg => {
            socket.connect(batch.server)?;
            send_mmsg(&socket, &queries)?;
        }
    }
    let mut buffer = [0; 1500];
    let mut unanswered: Vec<u16> = batch.queries.iter().map(|query| query.id).collect();
    while !unanswered.is_empty() {
        let (len, from) = socket
            .recv_from(&mut buffer)
            .with_context(|| format!("waiting for answers to ids {unanswered:04x?}"))?;
        ensure!(from == batch.server, "an answer came from {from}");
        ensure!(len >= 12, "a {len}-byte answer");
        let id = u16::from_be_bytes([buffer[0], buffer[1]]);
        let flags = u16::from_be_bytes([buffer[2], buffer[3]]);
        ensure!(flags & FLAG_QR != 0, "id {id:04x}: not a response");
        let before = unanswered.len();
        unanswered.retain(|&waiting| waiting != id);
        ensure!(unanswered.len() < before, "unexpected answer id {id:04x}");
    }
    Ok(())
}

/// Both queries in one system call, as glibc sends its A + AAAA pair.
fn send_mmsg(socket: &UdpSocket, queries: &[Vec<u8>]) -> anyhow::Result<()> {
    let mut iovecs: Vec<libc::iovec> = queries
        .iter()
        .map(|query| libc::iovec {
            iov_base: query.as_ptr() as *mut libc::c_void,
            iov_len: query.len(),
        })
        .collect();
    let mut messages: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iovec| {
            // SAFETY: msghdr is plain data; zeroes mean no name, no control.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = iovec;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: every header points at an iovec and a buffer that live until
    // the call returns.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            messages.as_mut_ptr(),
            messages.len() as _,
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("sendmmsg");
    }
    ensure!(
        sent as usize == queries.len(),
        "sendmmsg sent {sent} of {} queries",
        queries.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_echoes_id_question_and_rd() {
        let query = query_bytes(&BATCHES[2].queries[1]);
        let reply = answer(&query).unwrap();
        assert_eq!(&reply[..2], &0x4104u16.to_be_bytes());
        assert_eq!(&reply[2..4], &(FLAG_QR | FLAG_AA | FLAG_RD).to_be_bytes());
        assert_eq!(&reply[6..8], &1u16.to_be_bytes());
        assert_eq!(&reply[12..query.len()], &query[12..]);
        // AAAA: 16 bytes of rdata end the message.
        assert_eq!(reply.len(), query.len() + 12 + 16);
        assert_eq!(reply[reply.len() - 16..][..2], [0x20, 0x01]);
    }

    #[test]
    fn anything_but_a_plain_query_gets_no_answer() {
        let query = query_bytes(&BATCHES[0].queries[0]);
        assert!(answer(&query[..query.len() - 1]).is_none());
        assert!(answer(&answer(&query).unwrap()).is_none());
        assert!(answer(&[0; 5]).is_none());
    }
}
