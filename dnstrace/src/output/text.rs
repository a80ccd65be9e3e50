//! Text: one aligned line per message, for a person at a terminal.
//!
//! ```text
//! TIME            PID     COMM            DIR REMOTE                 ID    FLAGS          RCODE     QTYPE  AN QNAME
//! 05:49:46.123456 1234    getent          >   10.253.1.2:53          4a1f  rd             -         A       - postgres.svc.
//! ```

use std::io::{self, Write};

use super::{Destination, Output, ProcessReport, Summary};
use crate::{
    clock::TimeOfDay,
    correlate::{
        attempt::Attempt,
        lookup::{Lookup, LookupOutcome},
    },
    decode::{qtype_name, rcode_name},
    diagnose::Diagnosis,
    message::{Client, Direction, Dropped, Message},
    terminal,
};

const HEADER: &str = "TIME            PID     COMM            DIR REMOTE                 ID    FLAGS          RCODE     QTYPE   AN QNAME";

pub struct TextOutput {
    destination: Destination,
    color: bool,
    /// Print every message too, not only lookups.
    verbose: bool,
}

impl TextOutput {
    pub fn new(mut destination: Destination, color: bool, verbose: bool) -> io::Result<Self> {
        if verbose {
            writeln!(destination.writer, "{HEADER}")?;
        }
        Ok(Self {
            destination,
            color,
            verbose,
        })
    }

    fn write_line(&mut self, colour: &str, line: &str) -> io::Result<()> {
        // Thread names and names read from files are anyone's text.
        let line = terminal::escape(line);
        let writer = &mut self.destination.writer;
        if self.color {
            writeln!(writer, "{colour}{line}{}", paint::RESET)?;
        } else {
            writeln!(writer, "{line}")?;
        }
        if self.destination.is_terminal {
            writer.flush()?;
        }
        self.destination.line_written()
    }
}

/// ANSI colours, used only on a terminal unless asked for.
mod paint {
    pub const RED: &str = "\x1b[31m";
    pub const GREEN: &str = "\x1b[32m";
    pub const YELLOW: &str = "\x1b[33m";
    pub const DIM: &str = "\x1b[2m";
    pub const RESET: &str = "\x1b[0m";
}

impl Output for TextOutput {
    fn message(&mut self, message: &Message) -> io::Result<()> {
        if !self.verbose {
            return Ok(());
        }
        let colour = match (message.envelope.direction, message.dns.header.as_ref()) {
            (_, None) => paint::YELLOW,
            (Direction::Send, Some(h)) if !h.is_response => paint::DIM,
            (_, Some(h)) if h.rcode == 0 => paint::GREEN,
            _ => paint::RED,
        };
        self.write_line(colour, &format_line(message))
    }

    fn dropped(&mut self, dropped: &Dropped) -> io::Result<()> {
        if !self.verbose {
            return Ok(());
        }
        let line = format!(
            "{}  dropped by the kernel: {} at {}",
            format_line(&dropped.message),
            dropped.reason,
            dropped.location
        );
        self.write_line(paint::RED, &line)
    }

    fn lookup(&mut self, lookup: &Lookup) -> io::Result<()> {
        let colour = match lookup.outcome() {
            LookupOutcome::Resolved => paint::GREEN,
            LookupOutcome::NxDomain | LookupOutcome::NoData => paint::YELLOW,
            LookupOutcome::Failed => paint::RED,
            LookupOutcome::Incomplete => paint::DIM,
        };
        self.write_line(colour, &format_lookup(lookup))
    }

    fn stray(&mut self, attempt: &Attempt) -> io::Result<()> {
        let (pid, comm) = client_columns(&attempt.client);
        let line = format!(
            "{} {pid:<7} {comm:<15} stray response from {} for {} (id {:04x}): {}",
            TimeOfDay(attempt.response.as_ref().map_or(0, |r| r.wall_time_ns)),
            attempt.response.as_ref().map_or(attempt.server, |r| r.from),
            attempt.question.name,
            attempt.id,
            attempt.outcome.detail().unwrap_or("mismatched")
        );
        self.write_line(paint::YELLOW, &line)
    }

    fn diagnosis(&mut self, diagnosis: &Diagnosis, first: bool) -> io::Result<()> {
        if !first {
            return Ok(());
        }
        for line in format_diagnosis(diagnosis) {
            self.write_line(paint::RED, &line)?;
        }
        Ok(())
    }

    fn report(&mut self, processes: &[&ProcessReport], diagnoses: &[&Diagnosis]) -> io::Result<()> {
        if processes.is_empty() && diagnoses.is_empty() {
            return Ok(());
        }
        self.write_line("", "")?;
        self.write_line(
            paint::DIM,
            "PID     COMM            LOOKUPS RESOLVED NXDOMAIN NODATA FAILED QUERIES WASTED MEAN-MS",
        )?;
        for p in processes {
            let mean_ms = p.total_ns as f64 / p.lookups.max(1) as f64 / 1e6;
            let (pid, comm) = client_columns(&p.client);
            let line = format!(
                "{pid:<7} {comm:<15} {:>7} {:>8} {:>8} {:>6} {:>6} {:>7} {:>6} {mean_ms:>7.1}",
                p.lookups, p.resolved, p.nxdomain, p.nodata, p.failed, p.queries, p.wasted_queries
            );
            let colour = if p.failed > 0 { paint::RED } else { "" };
            self.write_line(colour, &line)?;
        }
        for diagnosis in diagnoses {
            for line in format_diagnosis(diagnosis) {
                self.write_line(paint::RED, &line)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.destination.writer.flush()
    }

    fn finish(&mut self, _summary: &Summary) -> io::Result<()> {
        // The summary goes to stderr with the other diagnostics.
        self.flush()
    }
}

/// `TIME PID COMM NAME OUTCOME TOTAL ATTEMPTS [oddities]`.
fn format_lookup(lookup: &Lookup) -> String {
    let mut servers: Vec<String> = Vec::new();
    let mut types: Vec<String> = Vec::new();
    for attempt in &lookup.attempts {
        let server = attempt.server.to_string();
        if !servers.contains(&server) {
            servers.push(server);
        }
        let qtype = qtype_name(attempt.question.qtype).into_owned();
        if !types.contains(&qtype) {
            types.push(qtype);
        }
    }
    let mut odd: Vec<String> = Vec::new();
    for (outcome, label) in [
        ("rejected", "rejected"),
        ("timeout", "timed out"),
        ("late", "late"),
    ] {
        let count = lookup
            .attempts
            .iter()
            .filter(|a| a.outcome.name() == outcome)
            .count();
        if count > 0 {
            odd.push(format!("{count} {label}"));
        }
    }
    for attempt in &lookup.attempts {
        if let Some(drop) = &attempt.drop {
            odd.push(format!(
                "{} {} dropped by the kernel: {}",
                qtype_name(attempt.question.qtype),
                drop.packet.name(),
                drop.reason
            ));
        }
    }
    if lookup.incomplete {
        odd.push("messages may have been lost, not judged".to_owned());
    }
    let wasted = lookup.wasted_queries();
    if wasted > 0 {
        odd.push(format!("{wasted} wasted"));
    }
    let names = lookup.names_tried();
    if names.len() > 1 {
        odd.push(format!("tried {}", names.join(" ")));
    }
    let (pid, comm) = client_columns(lookup.client());
    let mut line = format!(
        "{} {pid:<7} {comm:<15} {:<9} {:>9.1}ms {} {} ({}) via {}",
        TimeOfDay(lookup.first_wall_time_ns()),
        lookup.outcome().name().to_uppercase(),
        lookup.total_ns() as f64 / 1e6,
        lookup.name(),
        match lookup.queries() {
            1 => "1 query".to_string(),
            n => format!("{n} queries"),
        },
        types.join(","),
        servers.join(",")
    );
    if let Some(pod) = lookup.server_pod() {
        line.push_str(&format!(" (pod {})", pod.path()));
    }
    if !odd.is_empty() {
        line.push_str(&format!(" [{}]", odd.join(", ")));
    }
    line
}

/// The PID and COMM columns; a process in a pod shows
/// `namespace/pod/container` for its name, and a client known only by its
/// address (a packet capture) shows the address.
fn client_columns(client: &Client) -> (String, String) {
    match client.pid() {
        Some(pid) => (pid.to_string(), client.name()),
        None => (
            "-".into(),
            client.address().map(|a| a.to_string()).unwrap_or_default(),
        ),
    }
}

/// A diagnosis as a short block that stands out.
fn format_diagnosis(diagnosis: &Diagnosis) -> Vec<String> {
    let server = match (diagnosis.server, &diagnosis.server_pod) {
        (Some(server), Some(pod)) => format!(" server {server} (pod {})", pod.path()),
        (Some(server), None) => format!(" server {server}"),
        (None, _) => String::new(),
    };
    let names: Vec<&str> = diagnosis.names.iter().map(String::as_str).collect();
    vec![
        format!(
            "!! {} — {}{server}, {} time(s), names: {}",
            diagnosis.cause.code(),
            diagnosis.client,
            diagnosis.count,
            names.join(" ")
        ),
        format!("   why: {}", diagnosis.explanation),
        format!("   fix: {}", diagnosis.fix),
    ]
}

fn format_line(message: &Message) -> String {
    let (pid, comm) = match &message.envelope.process {
        Some(p) => (
            p.pid.to_string(),
            p.facts.pod_path().unwrap_or_else(|| p.comm.to_string()),
        ),
        None => ("?".to_string(), "?".to_string()),
    };
    let arrow = match message.envelope.direction {
        Direction::Send => ">",
        Direction::Recv => "<",
    };
    let dns = &message.dns;
    let (id, flags, rcode, answers) = match &dns.header {
        Some(h) => {
            let mut flags: Vec<&str> = Vec::with_capacity(7);
            if h.is_response {
                flags.push("qr");
            }
            flags.extend(h.flags.names());
            let rcode = if h.is_response {
                rcode_name(h.rcode)
            } else {
                "-".into()
            };
            let answers = if h.is_response {
                h.answers.to_string()
            } else {
                "-".into()
            };
            (format!("{:04x}", h.id), flags.join(","), rcode, answers)
        }
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    let (qtype, qname) = match &dns.question {
        Some(q) => (qtype_name(q.qtype), q.name.as_str()),
        None => ("-".into(), "-"),
    };
    let mut line = format!(
        "{time} {pid:<7} {comm:<15} {arrow}   {remote:<22} {id:<5} {flags:<14} {rcode:<9} {qtype:<6} {answers:>3} {qname}",
        time = TimeOfDay(message.envelope.wall_time_ns),
        remote = message.envelope.remote.to_string(),
    );
    if message.envelope.transport == crate::message::Transport::Tcp {
        line.push_str(" [tcp]");
    }
    if let Some(error) = &dns.decode_error {
        line.push_str(&format!(" [undecodable: {error}]"));
    } else if message.truncated_capture {
        line.push_str(" [capture cut short]");
    }
    line
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        decode::{DnsSummary, Flags, HeaderSummary, Question},
        message::{Envelope, Process, Transport},
    };

    fn response() -> Message {
        Message {
            envelope: Envelope {
                wall_time_ns: 1_795_758_586_123_456_789,
                monotonic_ns: 1,
                process: Some(Process {
                    pid: 4242,
                    tid: 4242,
                    comm: "getent".into(),
                    uid: 0,
                    cgroup_id: 1,
                    netns: Some(4026531840),
                    facts: crate::message::Facts::unknown(),
                }),
                socket_cookie: 7,
                direction: Direction::Recv,
                transport: Transport::Udp,
                local: "10.253.1.1:40000".parse::<SocketAddr>().unwrap(),
                remote: "10.253.1.2:53".parse::<SocketAddr>().unwrap(),
                response_number: None,
            },
            size: 60,
            truncated_capture: false,
            payload: Vec::new(),
            dns: DnsSummary {
                header: Some(HeaderSummary {
                    id: 0x4a1f,
                    is_response: true,
                    opcode: 0,
                    flags: Flags::RD,
                    rcode: 0,
                    questions: 1,
                    answers: 0,
                    authority: 1,
                    additional: 0,
                }),
                question: Some(Question {
                    name: "postgres.svc.".into(),
                    qtype: 28,
                }),
                edns_udp_size: None,
                decode_error: None,
            },
        }
    }

    #[test]
    fn a_line_holds_every_column_in_order() {
        let line = format_line(&response());
        assert_eq!(
            line,
            "05:49:46.123456 4242    getent          <   10.253.1.2:53          4a1f  qr,rd          NOERROR   AAAA     0 postgres.svc."
        );
        assert_eq!(line.find("QNAME"), None);
        assert_eq!(
            line.find("postgres"),
            HEADER.find("QNAME"),
            "columns align with the header"
        );
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let path = std::env::temp_dir().join(format!("dnstrace-text-{}", std::process::id()));
        let destination = Destination::open(Some(&path), Default::default()).unwrap();
        let mut output = TextOutput::new(destination, false, true).unwrap();
        let mut message = response();
        if let Some(process) = message.envelope.process.as_mut() {
            process.comm = "evil\x1b]0;x\x07\u{202e}".into();
        }
        output.message(&message).unwrap();
        output.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(text.contains("evil\\x1b]0;x\\x07\\u{202e}"), "{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(!text.contains('\u{202e}'), "{text:?}");
    }

    #[test]
    fn a_process_in_a_pod_is_named_by_namespace_pod_and_container() {
        use std::sync::Arc;

        use crate::message::{Client, ClientId, Container, Facts, Pod};
        let facts = Arc::new(Facts {
            container: Some(Container {
                id: "ab".repeat(32),
                runtime: None,
                name: Some("app".into()),
                image: None,
            }),
            pod: Some(Pod {
                name: Some("web-7f9c4-x2k8p".into()),
                namespace: Some("shop".into()),
                uid: None,
            }),
            ..Facts::default()
        });
        let mut message = response();
        if let Some(process) = message.envelope.process.as_mut() {
            process.facts = facts.clone();
        }
        assert!(
            format_line(&message).contains(" 4242    shop/web-7f9c4-x2k8p/app <"),
            "{}",
            format_line(&message)
        );
        let client = Client {
            id: ClientId::Pid(4242),
            comm: Some("getent".into()),
            facts: Some(facts),
        };
        assert_eq!(client.to_string(), "shop/web-7f9c4-x2k8p/app (pid 4242)");
        assert_eq!(
            client_columns(&client),
            ("4242".into(), "shop/web-7f9c4-x2k8p/app".into())
        );
        // A host process, and a container without a pod, keep their name.
        let host = Client {
            facts: Some(Facts::unknown()),
            ..client
        };
        assert_eq!(host.to_string(), "getent (pid 4242)");
    }

    #[test]
    fn an_unknown_owner_and_a_bad_payload_are_marked() {
        let mut message = response();
        message.envelope.process = None;
        message.dns = DnsSummary {
            decode_error: Some("too short".into()),
            ..DnsSummary::default()
        };
        let line = format_line(&message);
        assert!(line.contains(" ?       ?  "), "{line}");
        assert!(line.ends_with("[undecodable: too short]"), "{line}");
    }
}
