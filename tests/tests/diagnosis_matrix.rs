//! The diagnosis matrix: every answer shape the shaping server makes, asked
//! by every client here (glibc through getent and Python, musl, Go, c-ares
//! through Node, dig), with one nameserver and with a good second one
//! (knot), and by programs that look the name up three times. For each cell
//! the verdicts dnstrace must name, no more and no fewer, follow from what
//! that client does on the wire (docs/resolvers.md); a false verdict on a
//! resolver's normal behaviour fails the cell. The cells run in parallel
//! under one tracer, each client with a pid and name of its own.

use std::{collections::BTreeSet, fmt::Write as _, net::SocketAddr, sync::Mutex, thread};

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Message, Trace, Tracer},
};

/// Clients running at once: enough to finish in a minute or two, few
/// enough not to starve a 2-core machine.
const PARALLEL: usize = 8;
/// Short timeouts keep the silent shapes to a second or two a try.
const OPTIONS: &str = "options timeout:1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Servers {
    /// The shaping server alone.
    One,
    /// The shaping server, then knot, which answers well.
    ThenGood,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    client: Client,
    shape: &'static str,
    servers: Servers,
    /// Lookups the program makes, one after the other.
    times: u32,
}

impl Cell {
    fn label(&self) -> String {
        format!(
            "{} {} {:?}{}",
            self.client.name(),
            self.shape,
            self.servers,
            if self.times > 1 { " x3" } else { "" }
        )
    }
}

/// Every shape the shaping server makes (`normal` is any other label).
const SHAPES: &[&str] = &[
    "normal",
    "lame",
    "lame-aaaa",
    "lame-aaaa-edns",
    "cache",
    "nodata-ra",
    "nxdomain",
    "servfail",
    "refused",
    "refused-bare",
    "formerr-bare",
    "notimp",
    "formerr",
    "tc",
    "drop",
    "drop-aaaa",
    "wrong-id",
    "wrong-question",
    "other-port",
    "other-address",
    "late",
];

fn cells() -> Vec<Cell> {
    let clients = [
        Client::Getent,
        Client::Python { lookups: 1 },
        Client::Musl,
        Client::Go,
        Client::Node,
        Client::Dig,
    ];
    let mut cells = Vec::new();
    for &shape in SHAPES {
        for client in clients {
            for servers in [Servers::One, Servers::ThenGood] {
                // dig asks the server it is given, never resolv.conf's.
                if client == Client::Dig && servers == Servers::ThenGood {
                    continue;
                }
                // What c-ares makes of an answer without a question has
                // changed between versions (1.18 in Debian, 1.34 in
                // Node's own builds).
                if client == Client::Node && shape.ends_with("-bare") {
                    continue;
                }
                cells.push(Cell {
                    client,
                    shape,
                    servers,
                    times: 1,
                });
            }
        }
        // Programs that look the name up three times, whatever each gives.
        for client in [
            Client::Python { lookups: 3 },
            Client::Musl,
            Client::Go,
            Client::Node,
        ] {
            if client == Client::Node && shape.ends_with("-bare") {
                continue;
            }
            cells.push(Cell {
                client,
                shape,
                servers: Servers::One,
                times: 3,
            });
        }
    }
    cells
}

/// Whose resolver a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolver {
    /// glibc's getaddrinfo: getent, Python.
    Glibc,
    Musl,
    Go,
    /// c-ares, through Node.
    CAres,
    /// BIND's dig: takes every answer, never a second server.
    Dig,
}

fn resolver(client: Client) -> Resolver {
    match client {
        Client::Getent | Client::Python { .. } => Resolver::Glibc,
        Client::Musl => Resolver::Musl,
        Client::Go => Resolver::Go,
        Client::Node => Resolver::CAres,
        Client::Dig => Resolver::Dig,
        other => panic!("{other:?} is not in the matrix"),
    }
}

/// What a client did on the wire, where the resolver's choice depends on
/// which answer came first: read from the trace's messages, which the
/// capture tests hold to tcpdump's view.
#[derive(Debug, Default)]
struct Wire {
    /// It asked a question again on the socket it used, or at another
    /// server from another socket.
    asked_again: bool,
    /// For some question, the shaping server's answer came first.
    shaping_first: bool,
    /// Some answer from the shaping server reached it.
    heard_shaping: bool,
    /// It asked a question again before any answer to it came: it gave up
    /// waiting.
    gave_up_waiting: bool,
}

impl Wire {
    fn of(trace: &Trace, pid: u32, shaping: SocketAddr) -> Self {
        let mine: Vec<&Message> = trace
            .messages
            .iter()
            .filter(|m| m.pid == Some(pid) && m.proto == "udp")
            .collect();
        let mut wire = Wire::default();
        let mut asked: Vec<(&str, &str, u64, SocketAddr)> = Vec::new();
        let mut answered: Vec<(&str, &str)> = Vec::new();
        // Asked and not answered since: a program that looks a name up
        // three times asks it again after an answer, as a new lookup.
        let mut unanswered: Vec<(&str, &str)> = Vec::new();
        for m in mine {
            let (Some(qname), Some(qtype)) = (m.qname.as_deref(), m.qtype.as_deref()) else {
                wire.heard_shaping |= m.remote == shaping && m.qr == Some(true);
                continue;
            };
            if m.qr == Some(false) {
                // Not musl's copy to its other server (same socket), nor the
                // program asking again (a fresh socket to the same server).
                wire.asked_again |= asked.iter().any(|&(n, t, socket, server)| {
                    (n, t) == (qname, qtype) && (socket == m.socket_cookie) == (server == m.remote)
                });
                // musl's copy to its other server leaves the same socket.
                wire.gave_up_waiting |= unanswered.contains(&(qname, qtype))
                    && asked.iter().any(|&(n, t, socket, server)| {
                        (n, t) == (qname, qtype)
                            && !(socket == m.socket_cookie && server != m.remote)
                    });
                asked.push((qname, qtype, m.socket_cookie, m.remote));
                if !unanswered.contains(&(qname, qtype)) {
                    unanswered.push((qname, qtype));
                }
                continue;
            }
            wire.heard_shaping |= m.remote == shaping;
            unanswered.retain(|&question| question != (qname, qtype));
            if !answered.contains(&(qname, qtype)) {
                answered.push((qname, qtype));
                wire.shaping_first |= m.remote == shaping;
            }
        }
        wire
    }
}

/// The verdicts a cell must get, each naming the shaping server (the
/// good one never earns one), from what its client does with the shape
/// (docs/resolvers.md) and, where that depends on which answer came first,
/// from its wire.
fn expected(cell: &Cell, wire: &Wire) -> Vec<&'static str> {
    use Resolver::*;
    let resolver = resolver(cell.client);
    let two = cell.servers == Servers::ThenGood;
    // musl asks both servers at once and takes the first answer it keeps:
    // with a good second server, the shaping server's silence or oddity
    // costs it nothing.
    let musl_covered = resolver == Musl && two;
    let timeout = ["timeout"];
    let mismatched_timeout = ["mismatched_answer", "timeout"];
    let when = |condition: bool, verdicts: &[&'static str]| {
        if condition {
            verdicts.to_vec()
        } else {
            Vec::new()
        }
    };
    match (cell.shape, resolver) {
        ("normal" | "nxdomain" | "nodata-ra", _) => Vec::new(),
        // The first lookup gets AA; later ones (x3) the cached lame shape.
        ("cache", Go) => when(cell.times > 1, &["answer_rejected"]),
        // glibc 2.36 keeps the A answer when it came first, and moves on
        // when the lame AAAA came first.
        ("cache" | "lame-aaaa" | "lame-aaaa-edns", Glibc) => {
            when(wire.asked_again, &["answer_rejected"])
        }
        ("lame" | "lame-aaaa" | "lame-aaaa-edns", Go) | ("lame", Glibc) => {
            vec!["answer_rejected"]
        }
        ("cache" | "lame" | "lame-aaaa" | "lame-aaaa-edns", Musl | CAres | Dig) => Vec::new(),
        // Node sets ARES_FLAG_NOCHECKRESP: c-ares hands every rcode back.
        ("servfail" | "refused" | "notimp" | "formerr", CAres) => Vec::new(),
        ("servfail" | "refused" | "notimp" | "refused-bare", Glibc)
        | ("servfail" | "refused" | "notimp" | "formerr", Go) => {
            vec!["server_failure_fallback"]
        }
        // musl asks a SERVFAIL server again, unless the good answer came
        // first; it ignores REFUSED, NOTIMP and FORMERR.
        ("servfail", Musl) => when(wire.asked_again, &["server_failure_fallback"]),
        ("refused" | "notimp" | "formerr" | "refused-bare" | "formerr-bare", Musl) => Vec::new(),
        // glibc returns FORMERR to the caller; dig takes every rcode.
        ("formerr" | "formerr-bare", Glibc) => Vec::new(),
        ("servfail" | "refused" | "notimp" | "formerr" | "refused-bare" | "formerr-bare", Dig) => {
            Vec::new()
        }
        // Go ignores an answer without its question and times out.
        ("refused-bare" | "formerr-bare", Go) => mismatched_timeout.to_vec(),
        ("tc", Glibc | Go | CAres | Dig) => vec!["truncated_tcp_fallback"],
        ("tc", Musl) => when(!two || wire.shaping_first, &["tcp_fallback_missing"]),
        ("drop" | "drop-aaaa" | "other-port" | "other-address", _) if musl_covered => Vec::new(),
        // The answer comes after 1.5 s: a timeout where the client asked
        // again before it (all but dig, which waits 5 s, and musl with a
        // good second server; c-ares stretches its timeouts).
        ("late", _) => when(wire.gave_up_waiting, &timeout),
        // An answer from another port or address is not DNS traffic to a
        // tracer that watches port 53: only the timeout shows.
        ("drop" | "drop-aaaa" | "other-port" | "other-address", _) => timeout.to_vec(),
        ("wrong-id", _) if musl_covered => when(wire.heard_shaping, &["mismatched_answer"]),
        // musl checks the id alone: it takes the answer to another name.
        ("wrong-question", Musl) => when(!two || wire.heard_shaping, &["mismatched_answer"]),
        ("wrong-id" | "wrong-question", _) => mismatched_timeout.to_vec(),
        (shape, _) => panic!("no expectation for shape {shape}"),
    }
}

struct Ran {
    cell: Cell,
    run: ClientRun,
}

/// Runs every cell under one tracer, `PARALLEL` at a time.
fn run_cells(net: &Topology, shaping: SocketAddr, good: SocketAddr) -> (Vec<Ran>, Trace) {
    let queue = Mutex::new(cells());
    let ran = Mutex::new(Vec::new());
    let mut tracer = Tracer::start(["--netns", net.client.name()]);
    thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                loop {
                    let Some(cell) = queue.lock().expect("queue").pop() else {
                        return;
                    };
                    let label = cell.client.name();
                    let subzone = if cell.shape == "normal" {
                        "ok"
                    } else {
                        cell.shape
                    };
                    let mut lookup = Lookup::in_subzone(label, subzone, shaping)
                        .times(cell.times)
                        .with_resolv_conf(OPTIONS);
                    if cell.servers == Servers::ThenGood {
                        lookup = lookup.with_resolv_conf(format!("nameserver {}", good.ip()));
                    }
                    let (_, run) = cell.client.prepare(net, &lookup).run_to_exit();
                    ran.lock().expect("results").push(Ran { cell, run });
                }
            });
        }
    });
    tracer.wait_until_settled();
    // To read a run's whole trace: DNSTRACE_MATRIX_TRACE=/path/trace.jsonl.
    let trace = match std::env::var_os("DNSTRACE_MATRIX_TRACE") {
        Some(path) => tracer.stop_keeping(std::path::Path::new(&path)),
        None => tracer.stop(),
    };
    assert_eq!(trace.summary.lost, 0, "dnstrace lost messages");
    (ran.into_inner().expect("results"), trace)
}

#[test]
fn every_client_against_every_shape_gets_exactly_the_verdicts_its_wire_shows() {
    let net = Topology::new();
    let shaping = DnsServer::start(ServerKind::Shaping, &net);
    let knot = DnsServer::start(ServerKind::Knot, &net);
    let (shaping, good) = (shaping.socket(Family::V4), knot.socket(Family::V4));
    let (ran, trace) = run_cells(&net, shaping, good);

    let mut wrong = String::new();
    let mut table = String::new();
    for Ran { cell, run } in &ran {
        let named = |server: Option<SocketAddr>| match server {
            Some(s) if s == shaping => "shaping".to_string(),
            Some(s) if s == good => "good".to_string(),
            Some(s) => s.to_string(),
            None => "-".to_string(),
        };
        let got: BTreeSet<(String, String)> = trace
            .diagnoses_of(run.pid)
            .into_iter()
            .map(|d| (d.cause.clone(), named(d.server)))
            .collect();
        let wire = Wire::of(&trace, run.pid, shaping);
        let want: BTreeSet<(String, String)> = expected(cell, &wire)
            .into_iter()
            .map(|cause| (cause.to_string(), named(Some(shaping))))
            .collect();
        // A program asking three times for a name that answers is three
        // lookups, each with the answer its resolver kept.
        let lookups = trace.lookups.iter().filter(|l| l.pid == run.pid).count();
        if cell.times > 1
            && ["normal", "nxdomain", "nodata-ra"].contains(&cell.shape)
            && lookups != 3
        {
            writeln!(
                wrong,
                "{}: {lookups} lookups instead of 3; lines:\n{}",
                cell.label(),
                trace.correlation_of(run.pid)
            )
            .expect("write");
        }
        writeln!(table, "{:<40} pid {:<7} {got:?}", cell.label(), run.pid).expect("write");
        // A client that asked again before any answer came did time out:
        // on a loaded machine an answer can come after its 1 s, whatever
        // the shape. A timeout is then true, never required.
        let true_timeouts_only = wire.gave_up_waiting
            && got.is_superset(&want)
            && got.difference(&want).all(|(cause, _)| cause == "timeout");
        if got != want && !true_timeouts_only {
            writeln!(
                wrong,
                "{}: got {got:?}, expected {want:?}; lines:\n{}",
                cell.label(),
                trace.correlation_of(run.pid)
            )
            .expect("write");
        }
    }
    eprintln!("{} cells:\n{table}", ran.len());
    assert!(wrong.is_empty(), "cells with wrong verdicts:\n{wrong}");
}
