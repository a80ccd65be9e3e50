//! A bounded flood for the load tests: DNS queries with distinct names that
//! nothing answers, from many sockets, and datagrams of random bytes, sent
//! to one address. Bounded in count and in time: it stops at whichever
//! comes first.
//!
//! Usage: `flood ADDR:PORT DOMAIN QUERIES SOCKETS GARBAGE PER_SECOND SECONDS`
//! sends QUERIES A queries for `f<n>.DOMAIN` round-robin from SOCKETS UDP
//! sockets, then GARBAGE datagrams of 12 to 512 random bytes, at most
//! PER_SECOND a second (0: as fast as it can), for at most SECONDS. It
//! prints `sent QUERIES GARBAGE` with what it did send.

use std::{
    net::{SocketAddr, UdpSocket},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

/// Datagrams sent between looks at the clock and the rate.
const BATCH: u64 = 256;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| {
        let [
            target,
            domain,
            queries,
            sockets,
            garbage,
            per_second,
            seconds,
        ] = args.as_slice()
        else {
            return None;
        };
        Some((
            target.parse::<SocketAddr>().ok()?,
            domain.clone(),
            queries.parse::<u64>().ok()?,
            sockets.parse::<usize>().ok()?.max(1),
            garbage.parse::<u64>().ok()?,
            per_second.parse::<u64>().ok()?,
            Duration::from_secs(seconds.parse().ok()?),
        ))
    })();
    let Some((target, domain, queries, sockets, garbage, per_second, limit)) = parsed else {
        eprintln!("usage: flood ADDR:PORT DOMAIN QUERIES SOCKETS GARBAGE PER_SECOND SECONDS");
        return ExitCode::from(2);
    };
    raise_open_files(sockets as u64 + 64);
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sockets: Vec<UdpSocket> = match (0..sockets).map(|_| UdpSocket::bind(bind)).collect() {
        Ok(sockets) => sockets,
        Err(error) => {
            eprintln!("flood: cannot open the sockets: {error}");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut sent = (0u64, 0u64);
    let mut packet = Vec::with_capacity(512);
    let total = queries + garbage;
    for n in 0..total {
        if n % BATCH == 0 {
            if start.elapsed() >= limit {
                break;
            }
            if per_second > 0 {
                let due = Duration::from_secs_f64(n as f64 / per_second as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
        packet.clear();
        let socket = &sockets[(n % sockets.len() as u64) as usize];
        if n < queries {
            query(&mut packet, n as u16, &format!("f{n}.{domain}"));
        } else {
            let len = 12 + random.next() as usize % 501;
            packet.extend((0..len).map(|_| random.next() as u8));
        }
        // A full socket buffer or an ICMP error from an earlier datagram
        // is not the flood's business: it goes on.
        if socket.send_to(&packet, target).is_ok() {
            if n < queries {
                sent.0 += 1;
            } else {
                sent.1 += 1;
            }
        }
    }
    println!("sent {} {}", sent.0, sent.1);
    ExitCode::SUCCESS
}

/// An A query for `name`, recursion desired.
fn query(packet: &mut Vec<u8>, id: u16, name: &str) {
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
}

/// 10,000 sockets need more descriptors than the usual soft limit.
fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// xorshift64: random enough bytes, no dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
