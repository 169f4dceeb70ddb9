//! The operational endpoints every service answers on its HTTP listener: `/healthz` (the process
//! is alive), `/readyz` (every dependency it needs is reachable: 503 with details otherwise) and
//! `/metrics` (Prometheus text format).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

/// Named readiness checks. `/readyz` is 200 only when all of them pass.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(&'static str, Check)>>>,
}

impl Readiness {
    /// Adds a check evaluated on every `/readyz` request. It must be cheap and not block.
    pub fn add_check(&self, name: &'static str, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.lock().push((name, Arc::new(check)));
    }

    /// Adds a check backed by a flag that the owner of the dependency raises and lowers.
    pub fn add_flag(&self, name: &'static str) -> ReadyFlag {
        let flag = ReadyFlag::default();
        let reader = flag.clone();
        self.add_check(name, move || reader.is_ready());
        flag
    }

    /// Whether everything is ready, and each check's result.
    pub fn report(&self) -> (bool, BTreeMap<&'static str, bool>) {
        let checks: Vec<_> = self.lock().clone();
        let results: BTreeMap<_, _> = checks.iter().map(|(name, check)| (*name, check())).collect();
        (results.values().all(|ok| *ok), results)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Check)>> {
        // A panic while holding this lock cannot leave the list half-updated (push is atomic).
        self.checks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A readiness bit that can also be awaited ("wait until the streams are provisioned").
#[derive(Clone)]
pub struct ReadyFlag(Arc<watch::Sender<bool>>);

impl Default for ReadyFlag {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.send_replace(ready);
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the flag is up.
    pub async fn wait(&self) {
        let mut receiver = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|ready| *ready).await;
    }
}

/// The process-wide Prometheus recorder, installed on first use (tests may build several services
/// in one process; the `metrics` facade has one global recorder).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// `/healthz`, `/readyz` and `/metrics`.
/// Installs the metrics recorder now, so nothing recorded before the first scrape is lost.
pub fn router(readiness: Readiness) -> Router {
    let metrics = metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(move || std::future::ready(metrics.render())))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (ready, checks) = readiness.report();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({ "ready": ready, "checks": checks }))).into_response()
}

/// Binds the HTTP listener. Port 0 picks a free port; the bound address is logged with the
/// `http_addr` field, which is how test harnesses find it.
pub async fn bind_http(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    let listener = TcpListener::bind(addr).await.map_err(|err| {
        crate::Error::with_source(crate::ErrorKind::Config, format!("cannot listen on RUNCAST_HTTP_ADDR={addr}"), err)
    })?;
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(http_addr = %bound, "http listener bound");
    }
    Ok(listener)
}

/// `listener` with TCP_NODELAY on every accepted connection, for `axum::serve`. Small frames go
/// out at once: with Nagle's algorithm a live event waits behind the peer's delayed ACK (tens of
/// milliseconds on Linux; it was most of the gateway's p99 latency).
pub fn no_delay(listener: TcpListener) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY on an accepted connection");
        }
    })
}

/// Serves `router` until `shutdown` is cancelled, then gives in-flight requests and the service's
/// background `tasks` (which watch the same token) at most `grace` to finish.
pub async fn serve_until_stopped(
    listener: TcpListener,
    router: Router,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), crate::Error> {
    let server = axum::serve(no_delay(listener), router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    tasks.close();
    let drained = tokio::time::timeout(grace, async {
        let _ = served.await;
        tasks.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?grace, "shutdown grace period over; exiting with work still in flight");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;

    #[tokio::test]
    async fn accepted_connections_have_nagle_turned_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut listener = no_delay(listener);
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().expect("readable option"));
        client.await.expect("client task").expect("connects");
    }

    #[test]
    fn ready_only_when_every_check_passes() {
        let readiness = Readiness::default();
        let nats = readiness.add_flag("nats");
        readiness.add_check("always", || true);
        assert!(!readiness.report().0);
        nats.set(true);
        let (ready, checks) = readiness.report();
        assert!(ready);
        assert_eq!(checks.get("nats"), Some(&true));
        nats.set(false);
        assert!(!readiness.report().0);
    }

    #[test]
    fn no_checks_means_ready() {
        assert!(Readiness::default().report().0);
    }

    #[tokio::test]
    async fn waiting_on_a_flag_resolves_when_it_is_raised() {
        let flag = ReadyFlag::default();
        let waiter = tokio::spawn({
            let flag = flag.clone();
            async move { flag.wait().await }
        });
        assert!(!waiter.is_finished());
        flag.set(true);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("wait returns once the flag is set")
            .expect("task did not panic");
    }
}
