//! `kernel_drop`: the node's own kernel dropped a query or its response
//! (`skb:kfree_skb`), so the process waited for an answer that could not
//! come, or came to a socket that was gone. The explanation and the fix
//! follow the kernel's drop reason.

use super::{Cause, Finding, names_of};
use crate::{
    correlate::{
        attempt::{Attempt, DroppedPacket, KernelDrop},
        lookup::Lookup,
    },
    decode::qtype_name,
};

pub fn check(lookup: &Lookup) -> Vec<Finding> {
    lookup
        .attempts
        .iter()
        .filter_map(|attempt| {
            let drop = attempt.drop.as_ref()?;
            let what = format!(
                "The kernel dropped the {} of {} for {} {} to {} ({} at {}, {} ms after the query \
                 was sent).",
                drop.packet.name(),
                lookup.client(),
                attempt.question.name,
                qtype_name(attempt.question.qtype),
                attempt.server,
                drop.reason,
                drop.location,
                drop.after_ns / 1_000_000
            );
            let (why, fix) = reason(drop, attempt);
            Some(Finding {
                cause: Cause::KernelDrop,
                server: Some(attempt.server),
                names: names_of(std::iter::once(attempt)),
                evidence: vec![attempt.id],
                explanation: format!("{what} {why}"),
                fix,
                shapes: None,
                wall_time_ns: attempt
                    .sent_wall_time_ns()
                    .unwrap_or(lookup.first_wall_time_ns()),
            })
        })
        .collect()
}

/// What the reason means, and what to do about it.
fn reason(drop: &KernelDrop, attempt: &Attempt) -> (String, String) {
    let conntrack_fixes = "Avoid two queries racing through conntrack: glibc `options \
                           single-request-reopen` (or `use-vc`, TCP) in resolv.conf, a node-local \
                           DNS cache (NodeLocal DNSCache) so pods' queries are not DNATed, and a \
                           kernel with the conntrack clash fixes (Linux 5.0, backported to 4.19).";
    match &*drop.reason {
        "NETFILTER_DROP" => match drop.conntrack.as_deref() {
            Some(change) if change.insert_failed > 0 || change.drop > 0 => (
                format!(
                    "Conntrack's insert_failed grew by {} and its drop counter by {} meanwhile: \
                     conntrack could not confirm the packet's entry because another packet of \
                     the same new UDP flow (its A/AAAA sibling) won the race to insert it. This \
                     is the Linux conntrack race behind 5-second DNS delays in Kubernetes.",
                    change.insert_failed, change.drop
                ),
                conntrack_fixes.into(),
            ),
            counters => (
                match counters {
                    Some(_) => "Netfilter dropped it: a firewall rule (nftables or iptables) \
                                matched it, since conntrack's insert_failed and drop counters \
                                did not grow."
                        .to_string(),
                    None => "Netfilter dropped it: a firewall rule (nftables or iptables), or \
                             conntrack failing to insert its entry (its counters could not be \
                             read in that namespace)."
                        .to_string(),
                },
                format!(
                    "Find the rule that drops DNS {} to {} (`nft list ruleset`, `iptables-save`) \
                     in the namespace where it was dropped. {conntrack_fixes}",
                    match drop.packet {
                        DroppedPacket::Query => "queries",
                        DroppedPacket::Response => "responses",
                    },
                    attempt.server
                ),
            ),
        },
        "SOCKET_RCVBUFF" => (
            "The socket's receive buffer was full: the process reads its responses more slowly \
             than they come."
                .into(),
            "Read the socket sooner or more often (an event loop blocked elsewhere), send fewer \
             queries at once, or raise the socket's SO_RCVBUF (net.core.rmem_default, \
             net.core.rmem_max)."
                .into(),
        ),
        "NO_SOCKET" => (
            "No socket was waiting for it: the answer came after the process had closed its \
             socket, a late answer it never saw."
                .into(),
            format!(
                "The server or the path to it is too slow for the process's timeout: make {} \
                 answer sooner (its upstreams, its cache), or give the resolver a longer \
                 `options timeout:`.",
                attempt.server
            ),
        ),
        "UDP_CSUM" | "TCP_CSUM" | "IP_CSUM" | "SKB_CSUM" | "PKT_TOO_SMALL" | "IP_INHDR"
        | "HDR_TRUNC" => (
            "Its checksum or headers were wrong, so the kernel would not deliver it.".into(),
            "Look for what damages packets on the path: a NIC or virtual device's checksum \
             offload (`ethtool -K DEV rx off tx off` to test), a middlebox rewriting them, or bad \
             hardware."
                .into(),
        ),
        other => (
            format!("The kernel names the reason {other}."),
            "See the kernel's `enum skb_drop_reason` for what the reason means, and the \
             location for where it was dropped."
                .into(),
        ),
    }
}
