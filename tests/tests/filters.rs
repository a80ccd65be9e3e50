//! The kernel-side filters: `--pid`, `--comm`, `--netns`, `--cgroup` and
//! `--port` each keep exactly the messages they name, whole, and nothing else.

use dnstrace_tests::{
    cgroup::Cgroup,
    clients::{Client, ClientRun, Lookup, PausedClient},
    expect::{Side, assert_client_run_captured_once, assert_only},
    netns::{Family, Topology},
    servers::{DnsServer, ServerKind},
    trace::{Message, Tracer},
    wire::PacketCapture,
};

/// A topology with dnsmasq, and ground truth on its link.
struct Setup {
    net: Topology,
    server: DnsServer,
}

impl Setup {
    fn new() -> Self {
        let net = Topology::new();
        let server = DnsServer::start(ServerKind::Dnsmasq, &net);
        Self { net, server }
    }

    fn lookup(&self, label: &str) -> Lookup {
        Lookup::new(label, self.server.socket(Family::V4))
    }

    /// Runs a client the filter should not select.
    fn run_bystander(&self, client: Client) -> ClientRun {
        client.run(
            &self.net,
            &self.lookup(&format!("bystander-{}", client.name())),
        )
    }
}

#[test]
fn pid_filter_captures_only_that_process() {
    let setup = Setup::new();
    let wire = PacketCapture::start(&setup.net.server, &[53]);
    let getent = Client::Getent.prepare(&setup.net, &setup.lookup("selected"));
    let pid = getent.pid();
    let tracer = Tracer::start(["--pid", &pid.to_string()]);
    let selected = getent.run();
    setup.run_bystander(Client::Python { lookups: 1 });
    let trace = tracer.stop();
    let packets = wire.stop();
    assert_client_run_captured_once(&trace, &packets, setup.net.client.inode(), &selected);
    // Neither the other client nor dnsmasq answering it.
    assert_only(&trace, &format!("--pid {pid}"), |m| m.pid == Some(pid));
}

#[test]
fn pid_filter_follows_every_thread_of_the_process() {
    let setup = Setup::new();
    let wire = PacketCapture::start(&setup.net.server, &[53]);
    let dig = Client::Dig.prepare(&setup.net, &setup.lookup("selected"));
    let pid = dig.pid();
    let tracer = Tracer::start(["--pid", &pid.to_string()]);
    let selected = dig.run();
    setup.run_bystander(Client::Getent);
    let trace = tracer.stop();
    let packets = wire.stop();
    let messages =
        assert_client_run_captured_once(&trace, &packets, setup.net.client.inode(), &selected);
    assert!(
        messages.iter().all(|m| m.tid != Some(pid)),
        "dig's messages should all come from its network thread: {messages:?}"
    );
    assert_only(&trace, &format!("--pid {pid}"), |m| m.pid == Some(pid));
}

#[test]
fn comm_filter_captures_only_that_command() {
    let setup = Setup::new();
    let wire = PacketCapture::start(&setup.net.server, &[53]);
    let tracer = Tracer::start(["--comm", "getent"]);
    let selected = Client::Getent.run(&setup.net, &setup.lookup("selected"));
    setup.run_bystander(Client::Python { lookups: 1 });
    setup.run_bystander(Client::Dig);
    let trace = tracer.stop();
    let packets = wire.stop();
    assert_client_run_captured_once(&trace, &packets, setup.net.client.inode(), &selected);
    // Other tests' getent may run meanwhile; they are rightly captured.
    assert_only(&trace, "--comm getent", |m| {
        m.comm.as_deref() == Some("getent")
    });
}

#[test]
fn pid_with_comm_still_catches_the_command_restarted_under_a_new_pid() {
    let setup = Setup::new();
    let wire = PacketCapture::start(&setup.net.server, &[53]);
    let first = Client::Getent.prepare(&setup.net, &setup.lookup("first"));
    let pid = first.pid();
    let tracer = Tracer::start(["--pid", &pid.to_string(), "--comm", "getent"]);
    let first = first.run();
    // The "restart": the same command again, as a new process.
    let restarted = Client::Getent.run(&setup.net, &setup.lookup("restarted"));
    setup.run_bystander(Client::Python { lookups: 1 });
    let trace = tracer.stop();
    let packets = wire.stop();
    assert_ne!(first.pid, restarted.pid);
    for run in [&first, &restarted] {
        assert_client_run_captured_once(&trace, &packets, setup.net.client.inode(), run);
    }
    assert_only(&trace, &format!("--pid {pid} --comm getent"), |m| {
        m.pid == Some(pid) || m.comm.as_deref() == Some("getent")
    });
}

/// Runs getent and dig under a tracer restricted to the client namespace
/// by `netns_arg`, and checks both are captured and the server's side not.
fn check_netns_filter(setup: &Setup, netns_arg: &str, getent: PausedClient) {
    let wire = PacketCapture::start(&setup.net.server, &[53]);
    let tracer = Tracer::start(["--netns", netns_arg]);
    let runs = [
        getent.run(),
        Client::Dig.run(&setup.net, &setup.lookup("dig")),
    ];
    let trace = tracer.stop();
    let packets = wire.stop();
    let inode = setup.net.client.inode();
    for run in &runs {
        assert_client_run_captured_once(&trace, &packets, inode, run);
    }
    assert_only(&trace, &format!("--netns {netns_arg}"), |m| {
        m.netns == Some(inode) && Side::Client.owns(m)
    });
}

#[test]
fn netns_filter_by_name_captures_only_that_namespace() {
    let setup = Setup::new();
    let getent = Client::Getent.prepare(&setup.net, &setup.lookup("getent"));
    check_netns_filter(&setup, setup.net.client.name(), getent);
}

#[test]
fn netns_filter_by_proc_path_captures_only_that_namespace() {
    let setup = Setup::new();
    let getent = Client::Getent.prepare(&setup.net, &setup.lookup("getent"));
    let path = format!("/proc/{}/ns/net", getent.pid());
    check_netns_filter(&setup, &path, getent);
}

#[test]
fn cgroup_filter_captures_only_processes_in_that_cgroup() {
    let setup = Setup::new();
    let cgroup = Cgroup::new();
    let wire = PacketCapture::start(&setup.net.server, &[53]);
    let getent = Client::Getent.prepare(&setup.net, &setup.lookup("selected"));
    cgroup.add(getent.pid());
    let tracer = Tracer::start([std::ffi::OsStr::new("--cgroup"), cgroup.path().as_os_str()]);
    let selected = getent.run();
    setup.run_bystander(Client::Python { lookups: 1 });
    let trace = tracer.stop();
    let packets = wire.stop();
    let messages =
        assert_client_run_captured_once(&trace, &packets, setup.net.client.inode(), &selected);
    for message in messages {
        assert_eq!(
            message.cgroup_id,
            Some(cgroup.id()),
            "cgroup_id of {message:?}"
        );
    }
    assert_only(
        &trace,
        &format!("--cgroup {}", cgroup.path().display()),
        |m| m.pid == Some(selected.pid),
    );
}

#[test]
fn port_filter_captures_only_the_given_ports() {
    const OTHER_PORT: u16 = 5353;
    let setup = Setup::new();
    let other_server = DnsServer::start_on_port(ServerKind::Dnsmasq, &setup.net, OTHER_PORT);
    let wire = PacketCapture::start(&setup.net.server, &[53, OTHER_PORT]);
    let default_ports = Tracer::start(["--port", "53"]);
    let other_port = Tracer::start(["--port", &OTHER_PORT.to_string()]);
    let to_53 = Client::Dig.run(&setup.net, &setup.lookup("port-53"));
    let to_other = Client::Dig.run(
        &setup.net,
        &Lookup::new("port-other", other_server.socket(Family::V4)),
    );
    let default_trace = default_ports.stop();
    let other_trace = other_port.stop();
    let packets = wire.stop();
    let inode = setup.net.client.inode();
    assert_client_run_captured_once(&default_trace, &packets, inode, &to_53);
    assert_client_run_captured_once(&other_trace, &packets, inode, &to_other);
    let not_asked = |run: &ClientRun| {
        let run = run.clone();
        move |m: &Message| !m.qname.as_deref().is_some_and(|q| run.asked_for(q))
    };
    assert_only(&default_trace, "--port 53", not_asked(&to_other));
    assert_only(
        &other_trace,
        &format!("--port {OTHER_PORT}"),
        not_asked(&to_53),
    );
}
