//! A DNS server that answers in odd shapes on purpose, to provoke the stub
//! resolver behaviour in docs/resolvers.md.
//!
//! Usage: `shaping-server ADDR:PORT... [other=IP...]` (UDP and TCP); the
//! `other-address` shape answers from the `other=` address of the query's
//! family. The shape comes from the label just before the zone:
//! `<anything>.<shape>.example.test.` Without a known shape label, a name
//! gets a normal authoritative answer. Over TCP
//! every shape is answered as over UDP, except that nothing is truncated
//! there: a `tc` name gets its whole answer, as resolvers that fall back to
//! TCP expect. Each query is logged to stderr as
//! `query <id> <qtype> <qname> from <addr>`, a log the tests can use as
//! ground truth.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use dnstrace_tests::servers::{ANSWER_V4, ANSWER_V6, HUGE_TXT_RECORDS, ZONE};

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Authoritative answer, EDNS echoed.
    Normal,
    /// A answered with `qr,rd` only; AAAA a lame NODATA: the cached CoreDNS
    /// answers of the case behind the project.
    LameAaaa,
    /// Both types lame NODATA: no AA, no RA, no records but an SOA.
    Lame,
    /// A caching server in front of an authoritative one (CoreDNS with
    /// `cache 30`): the first query for a name and type is answered `qr,aa,rd`,
    /// the next ones for [`CACHE_TTL`] `qr,rd` only, as [`Shape::LameAaaa`]
    /// answers. A has its address; AAAA is NODATA with an SOA. No OPT ever.
    Cache,
    Rcode(u16),
    /// TC=1 and nothing else.
    Truncated,
    /// No answer at all.
    Drop,
    /// A answered, AAAA never.
    DropAaaa,
    /// A answered after [`SLOW`], AAAA never: a far server that drops AAAA.
    SlowDropAaaa,
    /// The answer carries another ID.
    WrongId,
    /// A normal answer to another name: the first letter of the question
    /// changed.
    WrongQuestion,
    /// A normal answer from another port of the same address.
    OtherPort,
    /// A normal answer from another address (`other=`).
    OtherAddress,
    /// A normal answer, after [`LATE`]: past a one-second client timeout.
    Late,
    /// Only the 12-byte header, no question section, with this rcode
    /// (REFUSED or FORMERR, as some servers and middleboxes send).
    Bare(u16),
    /// NOERROR, no records but an SOA, RA set: an ordinary NODATA from a
    /// recursive server.
    NodataRa,
    /// As [`Shape::LameAaaa`], with an OPT record when the query had one:
    /// what glibc keeps and Go throws away.
    LameAaaaEdns,
    /// TXT answered with [`HUGE_TXT_RECORDS`] records, whatever the
    /// client's EDNS size.
    Huge,
}

impl Shape {
    fn from_label(label: &str) -> Self {
        match label {
            "lame-aaaa" => Shape::LameAaaa,
            "lame" => Shape::Lame,
            "cache" => Shape::Cache,
            "formerr" => Shape::Rcode(1),
            "servfail" => Shape::Rcode(2),
            "nxdomain" => Shape::Rcode(3),
            "notimp" => Shape::Rcode(4),
            "refused" => Shape::Rcode(5),
            "tc" => Shape::Truncated,
            "drop" => Shape::Drop,
            "drop-aaaa" => Shape::DropAaaa,
            "slow-drop-aaaa" => Shape::SlowDropAaaa,
            "wrong-id" => Shape::WrongId,
            "wrong-question" => Shape::WrongQuestion,
            "other-port" => Shape::OtherPort,
            "other-address" => Shape::OtherAddress,
            "late" => Shape::Late,
            "refused-bare" => Shape::Bare(5),
            "formerr-bare" => Shape::Bare(1),
            "nodata-ra" => Shape::NodataRa,
            "lame-aaaa-edns" => Shape::LameAaaaEdns,
            "huge" => Shape::Huge,
            _ => Shape::Normal,
        }
    }
}

/// The parts of a query an answer needs.
struct Query<'a> {
    id: u16,
    rd: bool,
    /// The question section as sent, echoed in the answer.
    question: &'a [u8],
    qname: String,
    qtype: u16,
    edns: bool,
}

fn parse(packet: &[u8]) -> Option<Query<'_>> {
    let word = |at: usize| Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    let (id, flags, qdcount, arcount) = (word(0)?, word(2)?, word(4)?, word(10)?);
    if flags & FLAG_QR != 0 || qdcount != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*packet.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Queries carry no compression pointers.
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = word(at)?;
    let question = packet.get(12..at + 4)?;
    let qname = labels.iter().map(|l| format!("{l}.")).collect();
    Some(Query {
        id,
        rd: flags & FLAG_RD != 0,
        question,
        qname,
        qtype,
        edns: arcount > 0,
    })
}

fn shape_of(qname: &str) -> Shape {
    qname
        .strip_suffix(&format!("{ZONE}."))
        .and_then(|rest| rest.strip_suffix('.'))
        .and_then(|rest| rest.rsplit('.').next())
        .map_or(Shape::Normal, Shape::from_label)
}

/// Builds a DNS message; records always name the question (pointer 0xc00c).
struct Answer {
    bytes: Vec<u8>,
    questions: u16,
    counts: [u16; 3],
}

impl Answer {
    fn new(id: u16, flags: u16, question: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(512);
        for word in [id, flags, 1, 0, 0, 0] {
            bytes.extend(word.to_be_bytes());
        }
        bytes.extend(question);
        Self {
            bytes,
            questions: 1,
            counts: [0; 3],
        }
    }

    /// Adds a record to `section` (0 answer, 1 authority, 2 additional).
    fn record(&mut self, section: usize, rtype: u16, rdata: &[u8]) {
        self.bytes.extend([0xc0, 0x0c]);
        self.bytes.extend(rtype.to_be_bytes());
        self.bytes.extend(CLASS_IN.to_be_bytes());
        self.bytes.extend(300u32.to_be_bytes());
        let len = u16::try_from(rdata.len()).expect("rdata fits a record");
        self.bytes.extend(len.to_be_bytes());
        self.bytes.extend(rdata);
        self.counts[section] += 1;
    }

    fn soa(&mut self) {
        // Root names keep the record short: MNAME ".", RNAME ".", then times.
        let mut rdata = vec![0, 0];
        for value in [1u32, 3600, 900, 604_800, 300] {
            rdata.extend(value.to_be_bytes());
        }
        self.record(1, TYPE_SOA, &rdata);
    }

    fn opt(&mut self) {
        self.bytes.push(0);
        self.bytes.extend(TYPE_OPT.to_be_bytes());
        self.bytes.extend(1232u16.to_be_bytes());
        self.bytes.extend([0, 0, 0, 0, 0, 0]);
        self.counts[2] += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes[4..6].copy_from_slice(&self.questions.to_be_bytes());
        for (i, count) in self.counts.into_iter().enumerate() {
            self.bytes[6 + 2 * i..8 + 2 * i].copy_from_slice(&count.to_be_bytes());
        }
        self.bytes
    }
}

/// How long [`Shape::Cache`] answers from its cache: CoreDNS's `cache 30`.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// The names and types [`Shape::Cache`] has answered, and when.
#[derive(Default)]
struct Cache(Mutex<HashMap<(String, u16), Instant>>);

impl Cache {
    /// Whether an answer for `qname` and `qtype` is cached; caches one if not.
    fn hit(&self, qname: &str, qtype: u16) -> bool {
        let mut entries = self.0.lock().expect("cache lock");
        let now = Instant::now();
        // Expired entries go, so the map stays as small as the traffic.
        entries.retain(|_, cached| now.duration_since(*cached) < CACHE_TTL);
        let key = (qname.to_owned(), qtype);
        if entries.contains_key(&key) {
            return true;
        }
        entries.insert(key, now);
        false
    }
}

fn answer(query: &Query, tcp: bool, cache: &Cache) -> Option<Vec<u8>> {
    let shape = match shape_of(&query.qname) {
        // TCP has room for the whole answer.
        Shape::Truncated if tcp => Shape::Normal,
        shape => shape,
    };
    let rd = if query.rd { FLAG_RD } else { 0 };
    let authoritative = FLAG_QR | FLAG_AA | rd | FLAG_RA;
    let address = |answer: &mut Answer| match query.qtype {
        TYPE_A => answer.record(0, TYPE_A, &ANSWER_V4.octets()),
        TYPE_AAAA => answer.record(0, TYPE_AAAA, &ANSWER_V6.octets()),
        _ => answer.soa(),
    };
    let answer = match shape {
        Shape::Drop => return None,
        Shape::DropAaaa | Shape::SlowDropAaaa if query.qtype == TYPE_AAAA => return None,
        Shape::Normal
        | Shape::DropAaaa
        | Shape::SlowDropAaaa
        | Shape::WrongId
        | Shape::WrongQuestion
        | Shape::OtherPort
        | Shape::OtherAddress
        | Shape::Late
        | Shape::Huge => {
            let id = if shape == Shape::WrongId {
                !query.id
            } else {
                query.id
            };
            let mut question = query.question.to_vec();
            if shape == Shape::WrongQuestion {
                // The first letter of the first label.
                question[1] = if question[1] == b'x' { b'y' } else { b'x' };
            }
            let mut answer = Answer::new(id, authoritative, &question);
            if shape == Shape::Huge && query.qtype == TYPE_TXT {
                for n in 0..HUGE_TXT_RECORDS {
                    let mut rdata = vec![200];
                    rdata.extend(format!("{n:0>200}").bytes());
                    answer.record(0, TYPE_TXT, &rdata);
                }
            } else {
                address(&mut answer);
            }
            if query.edns {
                answer.opt();
            }
            answer
        }
        Shape::LameAaaa | Shape::LameAaaaEdns if query.qtype == TYPE_A => {
            let mut answer = Answer::new(query.id, FLAG_QR | rd, query.question);
            address(&mut answer);
            if shape == Shape::LameAaaaEdns && query.edns {
                answer.opt();
            }
            answer
        }
        Shape::LameAaaa | Shape::LameAaaaEdns | Shape::Lame | Shape::NodataRa => {
            let ra = if shape == Shape::NodataRa { FLAG_RA } else { 0 };
            let mut answer = Answer::new(query.id, FLAG_QR | rd | ra, query.question);
            answer.soa();
            if shape == Shape::LameAaaaEdns && query.edns {
                answer.opt();
            }
            answer
        }
        Shape::Bare(rcode) => {
            let mut answer = Answer::new(query.id, FLAG_QR | rd | FLAG_RA | rcode, &[]);
            answer.questions = 0;
            answer
        }
        Shape::Rcode(rcode) => {
            Answer::new(query.id, FLAG_QR | rd | FLAG_RA | rcode, query.question)
        }
        Shape::Truncated => Answer::new(query.id, authoritative | FLAG_TC, query.question),
        Shape::Cache => {
            let aa = if cache.hit(&query.qname, query.qtype) {
                0
            } else {
                FLAG_AA
            };
            let mut answer = Answer::new(query.id, FLAG_QR | aa | rd, query.question);
            match query.qtype {
                TYPE_A => address(&mut answer),
                _ => answer.soa(),
            }
            answer
        }
    };
    Some(answer.finish())
}

/// Parses and logs one query, and shapes its answer.
fn respond(packet: &[u8], peer: SocketAddr, tcp: bool, cache: &Cache) -> Option<Vec<u8>> {
    let Some(query) = parse(packet) else {
        eprintln!("unparsable {} bytes from {peer}", packet.len());
        return None;
    };
    let transport = if tcp { " tcp" } else { "" };
    eprintln!(
        "query {} {} {} from {peer}{transport}",
        query.id, query.qtype, query.qname
    );
    answer(&query, tcp, cache)
}

/// How long [`Shape::SlowDropAaaa`] takes to answer: a server far away.
const SLOW: Duration = Duration::from_millis(50);
/// How long [`Shape::Late`] takes: past a client's `timeout:1`, within
/// its second try.
const LATE: Duration = Duration::from_millis(1500);

/// How long the answer to `packet` waits.
fn delay_of(packet: &[u8]) -> Duration {
    match parse(packet).map(|query| shape_of(&query.qname)) {
        Some(Shape::SlowDropAaaa) => SLOW,
        Some(Shape::Late) => LATE,
        _ => Duration::ZERO,
    }
}

/// The sockets one UDP address answers from.
struct UdpSockets {
    /// The one queries come to.
    main: UdpSocket,
    /// Another port of the same address.
    other_port: UdpSocket,
    /// The `other=` address of the same family, when given.
    other_address: Option<UdpSocket>,
}

impl UdpSockets {
    /// The socket `packet`'s answer leaves from.
    fn for_answer(&self, packet: &[u8]) -> &UdpSocket {
        match parse(packet).map(|query| shape_of(&query.qname)) {
            Some(Shape::OtherPort) => &self.other_port,
            Some(Shape::OtherAddress) => self.other_address.as_ref().unwrap_or(&self.main),
            _ => &self.main,
        }
    }
}

fn serve_udp(sockets: UdpSockets, cache: Arc<Cache>) {
    let mut buffer = [0u8; 65536];
    loop {
        let (len, peer) = sockets.main.recv_from(&mut buffer).expect("recv_from");
        let Some(answer) = respond(&buffer[..len], peer, false, &cache) else {
            continue;
        };
        let socket = sockets.for_answer(&buffer[..len]);
        let delay = delay_of(&buffer[..len]);
        if delay.is_zero() {
            socket.send_to(&answer, peer).expect("send_to");
        } else {
            // On a thread of its own, so other queries are not held up.
            let socket = socket.try_clone().expect("clone the socket");
            thread::spawn(move || {
                thread::sleep(delay);
                socket.send_to(&answer, peer).expect("send_to");
            });
        }
    }
}

fn serve_tcp(listener: TcpListener, cache: Arc<Cache>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let cache = Arc::clone(&cache);
        thread::spawn(move || serve_connection(stream, &cache));
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2) until the client closes.
fn serve_connection(mut stream: TcpStream, cache: &Cache) {
    let Ok(peer) = stream.peer_addr() else { return };
    loop {
        let mut length = [0u8; 2];
        if stream.read_exact(&mut length).is_err() {
            return;
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(length))];
        if stream.read_exact(&mut packet).is_err() {
            return;
        }
        thread::sleep(delay_of(&packet));
        if let Some(answer) = respond(&packet, peer, true, cache) {
            let length = u16::try_from(answer.len()).expect("answers fit a TCP message");
            let mut framed = length.to_be_bytes().to_vec();
            framed.extend(answer);
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

fn main() {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut others: Vec<IpAddr> = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.strip_prefix("other=") {
            Some(ip) => others.push(ip.parse().unwrap_or_else(|e| panic!("address {ip:?}: {e}"))),
            None => addrs.push(
                arg.parse()
                    .unwrap_or_else(|e| panic!("address {arg:?}: {e}")),
            ),
        }
    }
    assert!(
        !addrs.is_empty(),
        "usage: shaping-server ADDR:PORT... [other=IP...]"
    );
    let cache = Arc::new(Cache::default());
    let mut servers = Vec::new();
    for addr in addrs {
        let bind = |addr: SocketAddr| {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"))
        };
        let sockets = UdpSockets {
            main: bind(addr),
            other_port: bind(SocketAddr::new(addr.ip(), 0)),
            other_address: others
                .iter()
                .find(|ip| ip.is_ipv4() == addr.is_ipv4())
                .map(|ip| bind(SocketAddr::new(*ip, 0))),
        };
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
        let udp_cache = Arc::clone(&cache);
        servers.push(thread::spawn(move || serve_udp(sockets, udp_cache)));
        let tcp_cache = Arc::clone(&cache);
        servers.push(thread::spawn(move || serve_tcp(listener, tcp_cache)));
    }
    for server in servers {
        server.join().expect("server thread");
    }
}
