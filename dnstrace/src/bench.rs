//! What the pipeline benchmark (benches/pipeline.rs) runs: the agent's own
//! work per message, decode → correlate → JSON, over a trace held in
//! memory, as the live agent does it once a record is off the ring buffer.
//! Reading the file is done once, before, and is not measured.

use crate::{
    analyze::{self, Feed, ReadOptions},
    cli::AnalyzeArgs,
    message::{Envelope, Message},
};

/// A message as capture hands it to the pipeline: its envelope and bytes.
struct Captured {
    envelope: Envelope,
    payload: Vec<u8>,
    size: u32,
}

pub struct Replay {
    messages: Vec<Captured>,
    args: AnalyzeArgs,
}

impl Replay {
    /// Reads the trace that `analyze_args` (`dnstrace analyze`'s arguments,
    /// one trace) names, whole, keeping each message's bytes.
    pub fn read(analyze_args: &[&str]) -> Result<Self, String> {
        let args = AnalyzeArgs::parse_from(analyze_args)?;
        let [path] = &args.files[..] else {
            return Err("one trace, please".into());
        };
        let options = ReadOptions {
            ports: args.ports.clone(),
            keep_payloads: true,
        };
        let mut reader = analyze::open(path, &options).map_err(|e| e.to_string())?;
        let mut messages = Vec::new();
        while let Some(message) = reader.next_message().map_err(|e| e.to_string())? {
            // JSON Lines keep no DNS bytes: nothing to decode again.
            if message.payload.is_empty() && message.size > 0 {
                return Err(format!("{}: holds no DNS payloads", path.display()));
            }
            messages.push(Captured {
                envelope: message.envelope,
                payload: message.payload,
                size: message.size,
            });
        }
        if reader.skipped().count > 0 {
            return Err(format!("{}: damaged records", path.display()));
        }
        Ok(Self { messages, args })
    }

    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// Decodes, correlates and writes every message, into the outputs the
    /// command line named, as `dnstrace analyze` would.
    pub fn run(&self) -> Result<(), String> {
        let mut pipeline = analyze::open_pipeline(&self.args).map_err(|e| e.to_string())?;
        let keep_payloads = pipeline.needs_payloads();
        let mut feed = Feed::default();
        for captured in &self.messages {
            let message = Message::decoded(
                captured.envelope.clone(),
                &captured.payload,
                captured.size,
                keep_payloads,
            );
            feed.message(&mut pipeline, &message);
        }
        pipeline.finish();
        match pipeline.take_write_error() {
            Some(error) => Err(format!("writing output failed: {error}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Message as Dns, MessageType, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata::A},
    };

    use super::*;
    use crate::{
        message::{Direction, Facts, Process, Transport},
        output::{Output, pcapng::PcapngOutput},
    };

    fn payload(id: u16, name: &str, answer: Option<[u8; 4]>) -> Vec<u8> {
        let kind = match answer {
            Some(_) => MessageType::Response,
            None => MessageType::Query,
        };
        let mut dns = Dns::new(id, kind, OpCode::Query);
        let name = Name::from_ascii(name).unwrap();
        dns.add_query(Query::query(name.clone(), RecordType::A));
        if let Some(address) = answer {
            dns.add_answer(Record::from_rdata(
                name,
                30,
                RData::A(A::from(std::net::Ipv4Addr::from(address))),
            ));
        }
        dns.to_vec().unwrap()
    }

    /// A trace as `dnstrace -w` writes it: lookups answered, one never
    /// answered, from one process.
    fn write_trace(path: &std::path::Path) {
        let mut output = PcapngOutput::new(std::fs::File::create(path).unwrap()).unwrap();
        let process = Process {
            pid: 4242,
            tid: 4242,
            comm: "client".into(),
            uid: 1000,
            cgroup_id: 5,
            netns: None,
            facts: Facts::unknown(),
        };
        let second = 1_000_000_000;
        for (n, name) in ["a.test.", "b.test.", "c.test.", "lost.test."]
            .iter()
            .enumerate()
        {
            let id = n as u16 + 1;
            let sent = 1_795_758_586_000_000_000 + n as i128 * second;
            let mut exchange = vec![(sent, Direction::Send, payload(id, name, None))];
            if !name.starts_with("lost") {
                let answer = payload(id, name, Some([192, 0, 2, id as u8]));
                exchange.push((sent + 2_000_000, Direction::Recv, answer));
            }
            for (wall_time_ns, direction, bytes) in exchange {
                let envelope = Envelope {
                    wall_time_ns,
                    monotonic_ns: wall_time_ns as u64,
                    process: Some(process.clone()),
                    socket_cookie: 7 + n as u64,
                    direction,
                    transport: Transport::Udp,
                    local: "10.0.0.2:40000".parse().unwrap(),
                    remote: "10.0.0.1:53".parse().unwrap(),
                    response_number: None,
                };
                let message = Message::decoded(envelope, &bytes, bytes.len() as u32, true);
                output.message(&message).unwrap();
            }
        }
        output.flush().unwrap();
    }

    /// The replay does all that analyze does but read the file: the same
    /// JSON, byte for byte.
    #[test]
    fn a_replay_writes_what_analyze_writes() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace.pcapng");
        write_trace(&trace);
        let (from_analyze, from_replay) = (dir.path().join("a.json"), dir.path().join("r.json"));
        let args = |output: &std::path::Path| {
            let (trace, output) = (trace.to_str().unwrap(), output.to_str().unwrap());
            AnalyzeArgs::parse_from(&[trace, "--format", "json", "-o", output]).unwrap()
        };
        analyze::run(&args(&from_analyze)).unwrap();
        let replay = Replay::read(&[
            trace.to_str().unwrap(),
            "--format",
            "json",
            "-o",
            from_replay.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(replay.messages(), 7);
        replay.run().unwrap();
        let written = std::fs::read_to_string(&from_analyze).unwrap();
        assert_eq!(written.matches("\"kind\":\"message\"").count(), 7);
        assert_eq!(written.matches("\"kind\":\"lookup\"").count(), 4);
        assert_eq!(std::fs::read_to_string(&from_replay).unwrap(), written);
    }
}
