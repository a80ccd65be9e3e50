//! A process that sends one DNS query to 127.0.0.1:53 and then stays
//! alive, so that dnstrace can read its files while it runs. Nothing needs
//! to answer: the query is what the tests look for.

/// Seconds the process stays after its query; the test kills it sooner.
const STAY_SECS: u32 = 60;

/// The command line: python3 sending an A query for `qname` (with its
/// trailing dot) from a UDP socket, then sleeping.
pub fn query_then_stay(qname: &str) -> Vec<String> {
    let labels: Vec<String> = qname
        .trim_end_matches('.')
        .split('.')
        .map(|label| format!("{:02x}{}", label.len(), hex(label.as_bytes())))
        .collect();
    let query = format!("123401000001000000000000{}0000010001", labels.concat());
    vec![
        "python3".into(),
        "-c".into(),
        format!(
            "import socket,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.sendto(bytes.fromhex('{query}'),('127.0.0.1',53))\n\
             time.sleep({STAY_SECS})\n"
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_the_wire_form_of_the_name() {
        let script = &query_then_stay("ab.c.")[2];
        assert!(
            script.contains("'12340100000100000000000002616201630000010001'"),
            "{script}"
        );
    }
}
