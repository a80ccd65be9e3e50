use super::*;
use crate::{
    correlate::{
        self,
        attempt::Rejection,
        tests::{GOOD, NODATA_RA, client, lookup},
    },
    message::Client,
};

const SECOND: u64 = 1_000_000_000;

fn args(max_clients: usize, max_servers: usize, top_names: usize) -> MetricsArgs {
    MetricsArgs {
        file: None,
        max_clients,
        max_servers,
        grace_secs: 300,
        top_names,
    }
}

fn output(args: &MetricsArgs) -> MetricsOutput {
    MetricsOutput::open(args, true).unwrap().expect("serving")
}

/// An attempt with the answer its outcome implies: none for a timeout,
/// records for one answered, none for one rejected.
fn attempt(client: &Client, server: u8, qtype: u16, outcome: Outcome, at: u64) -> Attempt {
    let answer = match outcome {
        Outcome::Timeout => None,
        Outcome::Answered => Some(GOOD),
        _ => Some(NODATA_RA),
    };
    correlate::tests::attempt(client, server, qtype, outcome, at, answer)
}

fn resolved(client: &Client, name: &str, at: u64) -> Lookup {
    let attempts = vec![
        attempt(client, 1, 1, Outcome::Answered, at),
        attempt(client, 1, 28, Outcome::Answered, at),
    ];
    lookup(name, attempts, at)
}

fn text(output: &MetricsOutput) -> String {
    exposition(&output.registry)
}

/// The sample lines of `metric` (its name up to the labels), sorted: a
/// family keeps its series in no order.
fn samples<'t>(text: &'t str, metric: &str) -> Vec<&'t str> {
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect();
    lines.sort_unstable();
    lines
}

#[test]
fn a_lookup_is_counted_under_its_client_outcome_and_types() {
    let mut metrics = output(&args(500, 32, 0));
    let getent = client(7, "getent");
    metrics
        .lookup(&resolved(&getent, "db.test", SECOND))
        .unwrap();
    let failed = vec![
        attempt(
            &getent,
            2,
            1,
            Outcome::Rejected(Rejection::NextServer),
            SECOND,
        ),
        attempt(&getent, 2, 1, Outcome::Timeout, SECOND),
    ];
    metrics.lookup(&lookup("x.test", failed, SECOND)).unwrap();
    let text = text(&metrics);
    let who = r#"namespace="",pod="",container="",comm="getent""#;
    assert!(
        text.contains(&format!(
            "dnstrace_lookups_total{{{who},outcome=\"resolved\",qtype=\"A,AAAA\"}} 1\n"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "dnstrace_lookups_total{{{who},outcome=\"failed\",qtype=\"A\"}} 1\n"
        )),
        "{text}"
    );
    for metric in [
        "dnstrace_responses_rejected_total",
        "dnstrace_timeouts_total",
    ] {
        assert_eq!(
            samples(&text, metric),
            [format!("{metric}{{{who},server=\"192.0.2.2:53\"}} 1")],
            "{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "dnstrace_lookup_duration_seconds_bucket{{{who},le=\"0.001\"}} 2\n"
        )),
        "both lookups took 1 ms: {text}"
    );
    assert!(!text.contains("db.test"), "no names in labels: {text}");
}

#[test]
fn clients_and_servers_past_their_bounds_are_folded_into_other() {
    let mut metrics = output(&args(2, 1, 0));
    for n in 0..20u8 {
        let client = client(u32::from(n), &format!("p{n}"));
        let timeout = attempt(&client, n, 1, Outcome::Timeout, SECOND);
        metrics
            .lookup(&lookup("x.test", vec![timeout], SECOND))
            .unwrap();
    }
    let text = text(&metrics);
    let lookups = samples(&text, "dnstrace_lookups_total");
    assert_eq!(lookups.len(), 3, "2 clients and ~other: {text}");
    assert!(
        lookups
            .iter()
            .any(|l| l.contains(r#"comm="~other""#) && l.ends_with(" 18"))
    );
    let timeouts = samples(&text, "dnstrace_timeouts_total");
    assert_eq!(
        timeouts.len(),
        3,
        "p0 at its server, p1 and ~other at ~other: {text}"
    );
    assert!(
        text.contains("dnstrace_metrics_folded_total{label=\"client\"} 18\n"),
        "{text}"
    );
    assert!(
        text.contains("dnstrace_metrics_folded_total{label=\"server\"} 19\n"),
        "{text}"
    );
}

#[test]
fn series_of_clients_gone_for_the_grace_period_are_removed() {
    let mut metrics = output(&args(1, 32, 0));
    let summary = Summary::default();
    let state = |now_ns| AgentState {
        now_ns,
        summary: &summary,
        open_lookups: 0,
        processes: 0,
    };
    metrics
        .lookup(&resolved(&client(1, "gone"), "a.test", SECOND))
        .unwrap();
    metrics.state(&state(200 * SECOND)).unwrap();
    metrics
        .lookup(&resolved(&client(2, "late"), "a.test", 250 * SECOND))
        .unwrap();
    assert!(
        text(&metrics).contains(r#"comm="~other""#),
        "the one slot was taken"
    );
    metrics.state(&state(302 * SECOND)).unwrap();
    let after = text(&metrics);
    assert!(!after.contains("gone"), "{after}");
    assert!(after.contains(r#"comm="~other""#), "{after}");
    metrics
        .lookup(&resolved(&client(2, "late"), "a.test", 303 * SECOND))
        .unwrap();
    assert!(
        text(&metrics).contains(r#"comm="late""#),
        "the slot was freed"
    );
}

#[test]
fn names_are_labels_only_up_to_the_top_names_bound() {
    let mut metrics = output(&args(500, 32, 1));
    let app = client(1, "app");
    for name in ["first.test", "second.test", "third.test"] {
        metrics.lookup(&resolved(&app, name, SECOND)).unwrap();
    }
    let text = text(&metrics);
    assert_eq!(
        samples(&text, "dnstrace_lookups_by_name_total"),
        [
            r#"dnstrace_lookups_by_name_total{name="first.test",outcome="resolved"} 1"#,
            r#"dnstrace_lookups_by_name_total{name="~other",outcome="resolved"} 2"#,
        ],
        "{text}"
    );
}

#[test]
fn a_diagnosis_counts_what_it_grew_by() {
    let mut metrics = output(&args(500, 32, 0));
    let app = client(1, "app");
    let timeout = attempt(&app, 1, 1, Outcome::Timeout, SECOND);
    let lookup = lookup("x.test", vec![timeout], SECOND);
    let mut diagnoser = crate::diagnose::Diagnoser::default();
    for count in [1, 3] {
        while diagnoser.all()[..].first().is_none_or(|d| d.count < count) {
            diagnoser.lookup(&lookup);
        }
        let diagnosis = diagnoser.all()[0].clone();
        metrics.diagnosis(&diagnosis, count == 1).unwrap();
    }
    let text = text(&metrics);
    assert_eq!(
        samples(&text, "dnstrace_diagnoses_total"),
        [
            r#"dnstrace_diagnoses_total{namespace="",pod="",container="",comm="app",cause="timeout",server="192.0.2.1:53"} 3"#
        ],
        "{text}"
    );
}

#[test]
fn every_metric_is_in_docs_metrics_md() {
    let docs = include_str!("../../../../docs/metrics.md");
    // No client slots, so that something is folded.
    let mut metrics = output(&args(0, 32, 1));
    let app = client(1, "app");
    let attempts = vec![
        attempt(&app, 1, 1, Outcome::Rejected(Rejection::AskedAgain), SECOND),
        attempt(&app, 1, 1, Outcome::Timeout, SECOND),
    ];
    let failed = lookup("x.test", attempts, SECOND);
    metrics.lookup(&failed).unwrap();
    let mut diagnoser = crate::diagnose::Diagnoser::default();
    diagnoser.lookup(&failed);
    for diagnosis in diagnoser.all() {
        metrics.diagnosis(diagnosis, true).unwrap();
    }
    let summary = Summary::default();
    let state = AgentState {
        now_ns: SECOND,
        summary: &summary,
        open_lookups: 0,
        processes: 0,
    };
    metrics.state(&state).unwrap();
    let text = text(&metrics);
    let types: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .collect();
    assert_eq!(types.len(), 16, "every family has a series here: {text}");
    for name in types.iter().filter_map(|t| t.split(' ').next()) {
        assert!(
            docs.contains(&format!("`{name}")),
            "docs/metrics.md lacks {name}"
        );
    }
}

#[test]
fn a_process_in_a_pod_is_labelled_by_its_pod_and_container_alone() {
    use crate::message::{Container, Facts, Pod};
    let mut in_pod = client(7, "python3");
    in_pod.facts = Some(std::sync::Arc::new(Facts {
        container: Some(Container {
            id: "a".repeat(64),
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
    }));
    let labels = Identity::of(&in_pod);
    assert_eq!(
        (
            &*labels.namespace,
            &*labels.pod,
            &*labels.container,
            &*labels.comm
        ),
        ("shop", "web-7f9c4-x2k8p", "app", "")
    );
    let on_host = Identity::of(&client(8, "getent"));
    assert_eq!(
        (&*on_host.namespace, &*on_host.pod, &*on_host.comm),
        ("", "", "getent")
    );
}

/// Past `MAX_DROP_REASONS` reasons, drops of a new one count as `~other`;
/// those with series keep counting under their own.
#[test]
fn drop_reasons_past_their_bound_are_counted_as_other() {
    use correlate::tests::{Socket, message, server};
    let mut metrics = output(&args(8, 8, 0));
    let query = message(
        crate::message::Direction::Send,
        Socket::new(7, 1, server(1)),
        1,
        "db.test.",
        1,
        0,
        None,
    );
    let mut drop = |reason: String| {
        let dropped = crate::message::Dropped {
            message: query.clone(),
            reason: reason.into(),
            location: "somewhere+0x1".into(),
            netns: Some(1),
            conntrack: None,
        };
        metrics.dropped(&dropped).unwrap();
    };
    for n in 0..MAX_DROP_REASONS + 3 {
        drop(format!("REASON_{n}"));
    }
    drop("REASON_0".into());
    drop(format!("REASON_{MAX_DROP_REASONS}"));
    let text = text(&metrics);
    let series = samples(&text, "dnstrace_kernel_drops_total");
    assert_eq!(series.len(), MAX_DROP_REASONS + 1, "{text}");
    assert!(
        series
            .iter()
            .any(|l| l.contains(r#"reason="REASON_0""#) && l.ends_with(" 2"))
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains(r#"reason="~other""#) && l.ends_with(" 4"))
    );
}
