//! The diagnosis matrix: every answer shape the shaping server makes, asked
//! by every client here, with one nameserver and with a good second one
//! (knot), and by programs that look the name up three times. For each cell
//! the verdicts dnstrace must name, no more and no fewer, follow from what
//! that client does on the wire (docs/resolvers.md); a false verdict on a
//! resolver's normal behaviour fails the cell. The cells run in parallel
//! under one tracer, each client with a pid and name of its own.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::SocketAddr,
    sync::Mutex,
    thread,
};

use dnstrace_tests::{
    clients::{Client, ClientRun, Lookup},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Trace, Tracer},
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

/// Which server a verdict names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Named {
    Shaping,
    Good,
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
                cells.push(Cell {
                    client,
                    shape,
                    servers,
                    times: 1,
                });
            }
        }
        // Programs that look the name up three times, whatever each gives.
        for client in [Client::Python { lookups: 3 }, Client::Musl, Client::Go] {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family3 {
    /// glibc's getaddrinfo: getent, Python.
    Glibc,
    Musl,
    Go,
    Dig,
}

fn family(client: Client) -> Family3 {
    match client {
        Client::Getent | Client::Python { .. } => Family3::Glibc,
        Client::Musl => Family3::Musl,
        Client::Go => Family3::Go,
        Client::Dig => Family3::Dig,
        other => panic!("{other:?} is not in the matrix"),
    }
}

/// The verdicts a cell must get: (cause, server).
fn expected(_cell: &Cell) -> BTreeSet<(&'static str, Named)> {
    BTreeSet::new()
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
                    let subzone = if cell.shape == "normal" { "ok" } else { cell.shape };
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
        let want: BTreeSet<(String, String)> = expected(cell)
            .into_iter()
            .map(|(cause, server)| {
                let server = match server {
                    Named::Shaping => shaping,
                    Named::Good => good,
                };
                (cause.to_string(), named(Some(server)))
            })
            .collect();
        writeln!(table, "{:<40} pid {:<7} {got:?}", cell.label(), run.pid).expect("write");
        if got != want {
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
