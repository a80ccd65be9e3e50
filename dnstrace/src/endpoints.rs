//! `--metrics ADDR`: the agent's HTTP endpoints, on the agent's own runtime.
//! `/metrics` (Prometheus text format), `/healthz` (the agent loop runs)
//! and `/readyz` (the programs are attached), for Prometheus and for a
//! Kubernetes DaemonSet's probes.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, header, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{encoding::prometheus_text::CONTENT_TYPE, registry::Registry};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{clock::monotonic_now_ns, failure::Failure, output::metrics::exposition};

/// The agent loop ticks once a second; this long without a tick, it is
/// stuck.
const STALLED_AFTER: Duration = Duration::from_secs(10);
/// Connections served at once; past this, new ones wait in the backlog.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the probes ask: whether the agent loop runs and the programs are
/// attached. The agent writes it, the endpoints read it.
#[derive(Debug)]
pub struct Health {
    last_tick_ns: AtomicU64,
    attached: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            last_tick_ns: AtomicU64::new(monotonic_now_ns()),
            attached: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// The agent loop went round.
    pub fn tick(&self) {
        self.last_tick_ns
            .store(monotonic_now_ns(), Ordering::Relaxed);
    }

    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Relaxed);
    }

    fn is_alive(&self) -> bool {
        let since = monotonic_now_ns().saturating_sub(self.last_tick_ns.load(Ordering::Relaxed));
        Duration::from_nanos(since) < STALLED_AFTER
    }

    fn is_ready(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }
}

/// Binds `address` before anything is loaded, so that a port in use fails
/// at start (exit 2).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, Failure> {
    let failure = |e: std::io::Error| {
        Failure::setup(format!(
            "cannot serve metrics on {address} (--metrics): {e}"
        ))
    };
    let listener = std::net::TcpListener::bind(address).map_err(failure)?;
    listener.set_nonblocking(true).map_err(failure)?;
    Ok(listener)
}

/// Serves the endpoints until the runtime ends. Call within the runtime.
pub fn spawn(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
) -> Result<(), Failure> {
    let listener = TcpListener::from_std(listener)
        .map_err(|e| Failure::setup(format!("cannot serve metrics: {e}")))?;
    if let Ok(address) = listener.local_addr() {
        eprintln!("dnstrace: metrics on http://{address}/metrics");
    }
    tokio::spawn(accept(listener, registry, health));
    Ok(())
}

async fn accept(listener: TcpListener, registry: Arc<Registry>, health: Arc<Health>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, most likely: wait rather than spin.
                eprintln!("dnstrace: metrics endpoint: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &registry, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-request is its own business.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

fn respond<B>(request: &Request<B>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => Response::builder()
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Full::new(Bytes::from(exposition(registry))))
            .expect("a valid response"),
        "/healthz" if health.is_alive() => plain(StatusCode::OK, "ok\n"),
        "/healthz" => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent loop has stalled\n",
        ),
        "/readyz" if health.is_ready() => plain(StatusCode::OK, "ok\n"),
        "/readyz" => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the programs are not attached\n",
        ),
        _ => plain(
            StatusCode::NOT_FOUND,
            "dnstrace serves /metrics, /healthz and /readyz\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(path: &str, health: &Health) -> StatusCode {
        let request = Request::get(path).body(()).unwrap();
        respond(&request, &Registry::default(), health).status()
    }

    #[test]
    fn probes_answer_from_the_agent_loop_and_the_attachment() {
        let health = Health::default();
        assert_eq!(status("/healthz", &health), StatusCode::OK);
        assert_eq!(status("/readyz", &health), StatusCode::SERVICE_UNAVAILABLE);
        health.set_attached(true);
        assert_eq!(status("/readyz", &health), StatusCode::OK);
        let stalled = STALLED_AFTER.as_nanos() as u64 + 1;
        health.last_tick_ns.store(
            monotonic_now_ns().saturating_sub(stalled),
            Ordering::Relaxed,
        );
        assert_eq!(status("/healthz", &health), StatusCode::SERVICE_UNAVAILABLE);
        health.tick();
        assert_eq!(status("/healthz", &health), StatusCode::OK);
        assert_eq!(status("/metrics", &health), StatusCode::OK);
        assert_eq!(status("/", &health), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).unwrap();
        let response = respond(&post, &Registry::default(), &health);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
