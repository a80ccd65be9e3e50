//! conntrack's failure counters (`insert_failed`, `drop`) per network
//! namespace, read when netfilter drops a DNS packet: their growth names
//! the conntrack insert race. The host's namespace is read at start; any
//! other the first time one of its drops comes, so growth there counts
//! from then on.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt};

use crate::message::ConntrackChange;

/// Namespaces remembered; past this the memory starts over.
const MAX_NAMESPACES: usize = 4096;

pub struct ConntrackCounters {
    own_netns: Option<u64>,
    baseline: HashMap<u64, ConntrackChange>,
}

impl ConntrackCounters {
    /// Reads the counters of dnstrace's own namespace.
    pub fn at_start() -> Self {
        let own_netns = netns_of("self");
        let mut baseline = HashMap::new();
        if let (Some(netns), Some(counts)) = (own_netns, read("self")) {
            baseline.insert(netns, counts);
        }
        Self {
            own_netns,
            baseline,
        }
    }

    /// How the counters of namespace `netns` grew since they were first
    /// read, through the files of `pid` (a process in that namespace) or
    /// dnstrace's own; `None` when they cannot be read.
    pub fn change(&mut self, netns: u64, pid: Option<u32>) -> Option<ConntrackChange> {
        let proc_dir = if self.own_netns == Some(netns) {
            "self".to_string()
        } else {
            let pid = pid?.to_string();
            // The process may have moved, or its pid been taken.
            (netns_of(&pid)? == netns).then_some(pid)?
        };
        let now = read(&proc_dir)?;
        if self.baseline.len() >= MAX_NAMESPACES && !self.baseline.contains_key(&netns) {
            self.baseline.clear();
        }
        let before = *self.baseline.entry(netns).or_insert(now);
        Some(ConntrackChange {
            insert_failed: now.insert_failed.saturating_sub(before.insert_failed),
            drop: now.drop.saturating_sub(before.drop),
        })
    }
}

fn netns_of(proc_dir: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{proc_dir}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

fn read(proc_dir: &str) -> Option<ConntrackChange> {
    parse(&fs::read_to_string(format!("/proc/{proc_dir}/net/stat/nf_conntrack")).ok()?)
}

/// The file: a line of column names, then a line of hex numbers per CPU.
fn parse(text: &str) -> Option<ConntrackChange> {
    let mut lines = text.lines();
    let columns: Vec<&str> = lines.next()?.split_whitespace().collect();
    let insert_failed = columns.iter().position(|c| *c == "insert_failed")?;
    let drop = columns.iter().position(|c| *c == "drop")?;
    let mut total = ConntrackChange::default();
    for line in lines {
        let values: Vec<&str> = line.split_whitespace().collect();
        let value = |i: usize| {
            values
                .get(i)
                .and_then(|v| u64::from_str_radix(v, 16).ok())
                .unwrap_or(0)
        };
        total.insert_failed = total.insert_failed.saturating_add(value(insert_failed));
        total.drop = total.drop.saturating_add(value(drop));
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_over_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    00000004  00000000 00000000 00000000 00000003 00000000 00000000 00000000 00000000 00000002 0000000a 00000000 00000000  00000000 00000000 00000000 00000000\n\
                    00000004  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000001 00000000 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(
            parse(text),
            Some(ConntrackChange {
                insert_failed: 3,
                drop: 11
            })
        );
        assert_eq!(parse("entries\n"), None);
    }
}
