//! What dnstrace's JSON Lines must hold after the client ran: each message
//! (`"kind":"message"`) of every exchange exactly once, attributed to the process that owns the
//! socket (docs/json.md, "How messages are attributed"), with the header the
//! wire carried; nothing else; nothing lost.

use std::net::SocketAddr;

use serde_json::Value;

use crate::dns::{BATCHES, CLIENT_NAME, EARLY, LATE, Query, ServerSpec, qtype_name};

/// The processes that own the sockets.
#[derive(Clone, Copy)]
pub struct Pids {
    pub client: u32,
    pub early: u32,
    pub late: u32,
}

impl Pids {
    /// The server that answers on `address`, and its pid.
    fn server(&self, address: SocketAddr) -> (&'static ServerSpec, u32) {
        if LATE.addresses.contains(&address) {
            (&LATE, self.late)
        } else {
            (&EARLY, self.early)
        }
    }
}

/// One of the four messages an exchange makes, seen from one socket.
struct Role {
    what: &'static str,
    direction: &'static str,
    response: bool,
    client_side: bool,
}

const ROLES: [Role; 4] = [
    Role {
        what: "client sent the query",
        direction: "send",
        response: false,
        client_side: true,
    },
    Role {
        what: "client received the answer",
        direction: "recv",
        response: true,
        client_side: true,
    },
    Role {
        what: "server received the query",
        direction: "recv",
        response: false,
        client_side: false,
    },
    Role {
        what: "server sent the answer",
        direction: "send",
        response: true,
        client_side: false,
    },
];

/// Checks the trace in `jsonl`; the count of messages, or every problem.
pub fn trace(jsonl: &str, pids: Pids) -> Result<usize, Vec<String>> {
    let mut problems = Vec::new();
    let mut messages = Vec::new();
    let mut summaries = Vec::new();
    let mut last_is_summary = false;
    for (number, line) in jsonl.lines().enumerate() {
        let object = serde_json::from_str::<Value>(line);
        last_is_summary = matches!(&object, Ok(object) if object["kind"] == "summary");
        match object {
            Ok(object) if object["kind"] == "message" => messages.push(object),
            Ok(object) if object["kind"] == "summary" => summaries.push(object),
            // Attempts, lookups, diagnoses: derived from the messages, and
            // tested on the host; here only capture is under test.
            Ok(object) if object["kind"].is_string() => {}
            Ok(_) => problems.push(format!("line {}: no kind", number + 1)),
            Err(error) => problems.push(format!("line {}: not JSON: {error}", number + 1)),
        }
    }

    match summaries.as_slice() {
        [summary] if last_is_summary => {
            if summary["lost"] != 0 {
                problems.push(format!("summary: lost {}", summary["lost"]));
            }
            if summary["undecodable"] != 0 {
                problems.push(format!("summary: undecodable {}", summary["undecodable"]));
            }
            if summary["messages"] != messages.len() {
                problems.push(format!(
                    "summary says {} messages, the file has {}",
                    summary["messages"],
                    messages.len()
                ));
            }
        }
        _ => problems.push(format!(
            "expected one summary as the last line, found {}",
            summaries.len()
        )),
    }

    let mut expected = 0;
    for batch in BATCHES {
        for query in batch.queries {
            for role in &ROLES {
                expected += 1;
                let seen: Vec<usize> = (0..messages.len())
                    .filter(|&i| plays(&messages[i], query, role, batch.server))
                    .collect();
                let name = format!("{} {:04x} {}", query.qname, query.id, role.what);
                match seen.as_slice() {
                    [index] => problems.extend(
                        attribution(&messages, *index, role, batch.server, pids)
                            .into_iter()
                            .map(|problem| format!("{name}: {problem}")),
                    ),
                    _ => problems.push(format!("{name}: seen {} times", seen.len())),
                }
            }
        }
    }
    if messages.len() != expected {
        problems.push(format!("{} messages, expected {expected}", messages.len()));
    }
    if problems.is_empty() {
        Ok(messages.len())
    } else {
        Err(problems)
    }
}

/// Whether `message` is `role`'s message of `query`: header fields as
/// sent, and the server's address on the right side.
fn plays(message: &Value, query: &Query, role: &Role, server: SocketAddr) -> bool {
    let server_end = if role.client_side { "remote" } else { "local" };
    let flags: &[&str] = if role.response {
        &["aa", "rd"]
    } else {
        &["rd"]
    };
    message["id"] == query.id
        && message["qname"] == query.qname
        && message["qtype"] == qtype_name(query.qtype)
        && message["direction"] == role.direction
        && message["qr"] == role.response
        && message["flags"] == serde_json::json!(flags)
        && message["rcode"] == "NOERROR"
        && message["answers"] == u16::from(role.response)
        && message["decode_error"].is_null()
        && message[server_end].as_str().and_then(|a| a.parse().ok()) == Some(server)
}

/// Who dnstrace says owns the socket of `messages[index]`.
fn attribution(
    messages: &[Value],
    index: usize,
    role: &Role,
    server: SocketAddr,
    pids: Pids,
) -> Vec<String> {
    let message = &messages[index];
    let (spec, server_pid) = pids.server(server);
    let (pid, comm) = if role.client_side {
        (pids.client, CLIENT_NAME)
    } else {
        (server_pid, spec.name)
    };
    // The one documented gap: a socket made while dnstrace runs that
    // receives before it ever sends has no known owner yet.
    let cookie = &message["socket_cookie"];
    let sent_before = messages[..index]
        .iter()
        .any(|m| m["direction"] == "send" && &m["socket_cookie"] == cookie);
    let may_be_unknown = role.direction == "recv" && !spec.before_tracer && !sent_before;
    if may_be_unknown && message["pid"].is_null() {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if message["pid"] != pid {
        problems.push(format!("pid {} instead of {pid}", message["pid"]));
    }
    if message["comm"] != comm {
        problems.push(format!("comm {} instead of {comm:?}", message["comm"]));
    }
    problems
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PIDS: Pids = Pids {
        client: 10,
        early: 20,
        late: 30,
    };

    /// The trace a correct dnstrace writes for the whole client run.
    fn perfect() -> Vec<Value> {
        let mut lines = Vec::new();
        for batch in BATCHES {
            for query in batch.queries {
                for role in &ROLES {
                    let (spec, server_pid) = PIDS.server(batch.server);
                    let (pid, comm, cookie) = if role.client_side {
                        (PIDS.client, CLIENT_NAME, 1)
                    } else {
                        (server_pid, spec.name, server_pid)
                    };
                    let client = "127.0.0.1:40000";
                    let server = batch.server.to_string();
                    let (local, remote) = if role.client_side {
                        (client, server.as_str())
                    } else {
                        (server.as_str(), client)
                    };
                    lines.push(json!({
                        "kind": "message", "pid": pid, "comm": comm, "socket_cookie": cookie,
                        "direction": role.direction, "local": local, "remote": remote,
                        "id": query.id, "qr": role.response,
                        "flags": if role.response { json!(["aa", "rd"]) } else { json!(["rd"]) },
                        "rcode": "NOERROR", "qname": query.qname, "qtype": qtype_name(query.qtype),
                        "answers": u16::from(role.response), "decode_error": null,
                    }));
                }
            }
        }
        let count = lines.len();
        lines.push(json!({"kind": "summary", "messages": count, "lost": 0, "undecodable": 0}));
        lines
    }

    fn text(lines: &[Value]) -> String {
        lines.iter().map(|line| format!("{line}\n")).collect()
    }

    /// Where the late server's messages start: after the other batches.
    const LATE_FIRST: usize = 24;

    fn unattribute(line: &mut Value) {
        line["pid"] = Value::Null;
        line["comm"] = Value::Null;
    }

    #[test]
    fn a_complete_trace_passes_whatever_else_it_holds() {
        let mut lines = perfect();
        lines.insert(
            4,
            json!({"kind": "attempt", "id": 0x4101, "outcome": "answered"}),
        );
        assert_eq!(trace(&text(&lines), PIDS), Ok(32));
        lines.insert(4, json!({"id": 0x4101}));
        assert_eq!(
            trace(&text(&lines), PIDS),
            Err(vec!["line 5: no kind".into()])
        );
    }

    #[test]
    fn only_a_new_socket_may_receive_unattributed_before_it_sends() {
        let mut lines = perfect();
        // The late server's first receive: allowed.
        assert_eq!(lines[LATE_FIRST + 2]["direction"], "recv");
        unattribute(&mut lines[LATE_FIRST + 2]);
        assert_eq!(trace(&text(&lines), PIDS), Ok(32));
        // Its second receive, after it sent: not allowed.
        unattribute(&mut lines[LATE_FIRST + 6]);
        // The early server existed before dnstrace: not allowed either.
        unattribute(&mut lines[2]);
        let problems = trace(&text(&lines), PIDS).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].contains("connect.v4.vm.test. 4101 server received the query: pid null")
        );
        assert!(problems[2].contains("late.v4.vm.test. 4202 server received the query: pid null"));
    }

    #[test]
    fn misattribution_duplicates_and_losses_fail() {
        let mut lines = perfect();
        // The client's receive blamed on the server, as the current task
        // at ingress would have it.
        lines[1]["pid"] = json!(PIDS.early);
        let duplicate = lines[0].clone();
        lines.insert(0, duplicate);
        let summary = lines.last_mut().unwrap();
        summary["lost"] = json!(2);
        summary["messages"] = json!(33);
        let problems = trace(&text(&lines), PIDS).unwrap_err();
        assert!(problems[0].contains("lost 2"), "{problems:?}");
        assert!(problems[1].contains("client sent the query: seen 2 times"));
        assert!(problems[2].contains("pid 20 instead of 10"), "{problems:?}");
        assert!(problems[3].contains("33 messages, expected 32"));
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
