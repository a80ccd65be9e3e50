//! Who a client is, as the labels of the per-client metrics.

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;

use crate::message::Client;

/// What stands for the clients and servers past the bounds.
pub const OTHER: &str = "~other";

static EMPTY_TEXT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
static OTHER_TEXT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(OTHER));

/// A label value that does not apply.
pub fn empty() -> Arc<str> {
    EMPTY_TEXT.clone()
}

pub fn other() -> Arc<str> {
    OTHER_TEXT.clone()
}

/// A label value, empty where it is not known.
fn text(value: Option<&str>) -> Arc<str> {
    value.map_or_else(empty, Arc::from)
}

/// `namespace`, `pod` and `container` for a process in a Kubernetes pod;
/// `comm` for any other process; empty where they do not apply (a client
/// known only by its address, in `analyze` of a capture).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Identity {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub container: Arc<str>,
    pub comm: Arc<str>,
}

impl Identity {
    /// The one place a client becomes labels. A process in a pod is named
    /// by its pod and container alone, so that a pod's series do not
    /// multiply by the names of its processes.
    pub fn of(client: &Client) -> Self {
        let facts = client.facts.as_deref();
        let pod = facts.and_then(|facts| facts.pod.as_ref());
        match pod.and_then(|pod| pod.name.as_deref()) {
            Some(name) => Self {
                namespace: text(pod.and_then(|pod| pod.namespace.as_deref())),
                pod: name.into(),
                container: text(
                    facts
                        .and_then(|facts| facts.container.as_ref())
                        .and_then(|container| container.name.as_deref()),
                ),
                comm: empty(),
            },
            None => Self {
                namespace: empty(),
                pod: empty(),
                container: empty(),
                comm: client.comm.clone().unwrap_or_else(empty),
            },
        }
    }

    /// Every client past the bound.
    pub fn other() -> Self {
        Self {
            namespace: other(),
            pod: other(),
            container: other(),
            comm: other(),
        }
    }
}
