//! Text: one aligned line per message, for a person at a terminal.
//!
//! ```text
//! TIME            PID     COMM            DIR REMOTE                 ID    FLAGS          RCODE     QTYPE  AN QNAME
//! 05:49:46.123456 1234    getent          >   10.253.1.2:53          4a1f  rd             -         A       - postgres.svc.
//! ```

use std::io::{self, Write};

use super::{Destination, Output, Summary};
use crate::{
    clock::TimeOfDay,
    decode::{qtype_name, rcode_name},
    message::{Direction, Message},
};

const HEADER: &str = "TIME            PID     COMM            DIR REMOTE                 ID    FLAGS          RCODE     QTYPE   AN QNAME";

pub struct TextOutput {
    destination: Destination,
    color: bool,
}

impl TextOutput {
    pub fn new(mut destination: Destination, color: bool) -> io::Result<Self> {
        writeln!(destination.writer, "{HEADER}")?;
        Ok(Self { destination, color })
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
        let line = format_line(message);
        let writer = &mut self.destination.writer;
        if self.color {
            let colour = match (message.direction, message.dns.header.as_ref()) {
                (_, None) => paint::YELLOW,
                (Direction::Send, Some(h)) if !h.is_response => paint::DIM,
                (_, Some(h)) if h.rcode == 0 => paint::GREEN,
                _ => paint::RED,
            };
            writeln!(writer, "{colour}{line}{}", paint::RESET)?;
        } else {
            writeln!(writer, "{line}")?;
        }
        if self.destination.is_terminal {
            writer.flush()?;
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

fn format_line(message: &Message) -> String {
    let (pid, comm) = match &message.process {
        Some(p) => (p.pid.to_string(), p.comm.as_str()),
        None => ("?".to_string(), "?"),
    };
    let arrow = match message.direction {
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
        time = TimeOfDay(message.wall_time_ns),
        remote = message.remote.to_string(),
    );
    if message.transport == crate::message::Transport::Tcp {
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
        message::{Process, Transport},
    };

    fn response() -> Message {
        Message {
            wall_time_ns: 1_795_758_586_123_456_789,
            process: Some(Process {
                pid: 4242,
                tid: 4242,
                comm: "getent".into(),
                uid: 0,
                cgroup_id: 1,
                netns: Some(4026531840),
            }),
            socket_cookie: 7,
            direction: Direction::Recv,
            transport: Transport::Udp,
            local: "10.253.1.1:40000".parse::<SocketAddr>().unwrap(),
            remote: "10.253.1.2:53".parse::<SocketAddr>().unwrap(),
            size: 60,
            truncated_capture: false,
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
    fn an_unknown_owner_and_a_bad_payload_are_marked() {
        let mut message = response();
        message.process = None;
        message.dns = DnsSummary {
            decode_error: Some("too short".into()),
            ..DnsSummary::default()
        };
        let line = format_line(&message);
        assert!(line.contains(" ?       ?  "), "{line}");
        assert!(line.ends_with("[undecodable: too short]"), "{line}");
    }
}
