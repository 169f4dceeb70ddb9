//! The operational endpoints every service answers on its HTTP listener: `/healthz` (the process
//! is alive), `/readyz` (every dependency it needs is reachable: 503 with details otherwise) and
//! `/metrics` (Prometheus text format). And the HTTP server every listener runs: [`serve`], with
//! TCP_NODELAY, a header-read and idle timeout, HTTP/2 keep-alive pings and graceful shutdown.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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

/// How often the recorder's histograms are drained into their summaries when nobody scrapes.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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
            spawn_upkeep(handle.clone(), METRICS_UPKEEP_INTERVAL);
            handle
        })
        .clone()
}

/// Drains the recorder's histograms every `interval`, for the life of the process (the recorder is
/// process-wide too). Until drained, a histogram keeps every sample it was given — the gateway's
/// delivery latency gets one per write — so without this a service nobody scrapes grows without
/// bound (what `PrometheusBuilder::install` does with a task; `build_recorder` leaves it to us).
fn spawn_upkeep(handle: PrometheusHandle, interval: Duration) {
    let upkeep = move || {
        loop {
            std::thread::sleep(interval);
            handle.run_upkeep();
        }
    };
    if let Err(err) = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(upkeep) {
        tracing::warn!(cause = %err, "cannot start the metrics upkeep thread; histograms drain only when scraped");
    }
}

/// Declares what every service exposes from its first scrape: `runcast_build_info{service,
/// version}` = 1 and the process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, …, refreshed at each scrape).
pub fn announce(service: &'static str) {
    metrics_handle();
    metrics::describe_gauge!("runcast_build_info", "Always 1; the labels say which service and version runs");
    metrics::gauge!("runcast_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    process_collector().describe();
    metrics::describe_counter!("runcast_nats_reconnects_total", "Connections to NATS regained after a loss");
    metrics::counter!("runcast_nats_reconnects_total").increment(0);
}

fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// `/healthz`, `/readyz` and `/metrics`.
/// Installs the metrics recorder now, so nothing recorded before the first scrape is lost.
pub fn router(readiness: Readiness) -> Router {
    metrics_handle();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| std::future::ready(render_metrics())))
        .with_state(readiness)
}

/// The `/metrics` page: every series recorded so far, the process metrics read now.
pub fn render_metrics() -> String {
    process_collector().collect();
    metrics_handle().render()
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (ready, checks) = readiness.report();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({ "ready": ready, "checks": checks }))).into_response()
}

/// Connection attempts the kernel queues for `accept`: as many as it allows (`net.core.somaxconn`,
/// 4,096 by default since Linux 5.4, caps it). Tokio's default of 1,024 is overrun when thousands
/// of clients reconnect at once (a drained replica, a network blip): the kernel then drops their
/// handshakes, which they retry only after 1, 3, 7 s… The operator sizes it with `somaxconn`.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as Tokio's `bind`).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds the HTTP listener. Port 0 picks a free port; the bound address is logged with the
/// `http_addr` field, which is how test harnesses find it.
pub async fn bind_http(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    let listener = listen(addr).map_err(|err| {
        crate::Error::with_source(crate::ErrorKind::Config, format!("cannot listen on RUNCAST_HTTP_ADDR={addr}"), err)
    })?;
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(http_addr = %bound, "http listener bound");
    }
    Ok(listener)
}

/// Turns Nagle's algorithm off on an accepted connection. Small frames go out at once: with
/// Nagle's algorithm a live event waits behind the peer's delayed ACK (tens of milliseconds on
/// Linux; it was most of the gateway's p99 latency).
fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(%err, "cannot set TCP_NODELAY on an accepted connection");
    }
}

/// How a listener treats its connections and its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Time in-flight work gets after the shutdown signal.
    pub shutdown_grace: Duration,
    pub connections: ConnectionOptions,
}

/// How a listener accepts and reads its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// Longest wait for a request's headers, from the connection's first byte or from the end of
    /// the previous response (idle keep-alive), and for a silent peer's first byte.
    pub header_timeout: Duration,
    /// New connections read and answered at once, up to their first response (at most
    /// [`HANDSHAKE_HOLD`] each); the others wait in the listen backlog. This paces a reconnect
    /// storm: ten thousand handshakes accepted at once would all be runnable together, and the
    /// live work of the connections already open would wait behind every one of them.
    pub handshakes: usize,
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HANDSHAKES: usize = 16;

/// How long a new connection counts against [`ConnectionOptions::handshakes`] at most: a peer
/// that sends its request slowly does not hold back the connections behind it for longer.
pub const HANDSHAKE_HOLD: Duration = Duration::from_millis(50);

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self { header_timeout: DEFAULT_HEADER_TIMEOUT, handshakes: DEFAULT_HANDSHAKES }
    }
}

/// A grace period alone: the default connection options.
impl From<Duration> for ServeOptions {
    fn from(shutdown_grace: Duration) -> Self {
        Self { shutdown_grace, connections: ConnectionOptions::default() }
    }
}

/// A new connection's place among the handshakes in progress ([`ConnectionOptions::handshakes`]),
/// given back at its first response, after [`HANDSHAKE_HOLD`], or when the connection ends,
/// whichever comes first. Each request of the connection carries it as an extension: a handler
/// whose response is only the start of the handshake (a WebSocket upgrade) can [`keep`] it past
/// both, and must then give it back with [`done`] within a bound of its own.
///
/// [`keep`]: HandshakePlace::keep
/// [`done`]: HandshakePlace::done
#[derive(Clone)]
pub struct HandshakePlace(Arc<Place>);

struct Place {
    permit: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    kept: std::sync::atomic::AtomicBool,
}

impl HandshakePlace {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self(Arc::new(Place { permit: Mutex::new(Some(permit)), kept: false.into() }))
    }

    /// The place outlives the response, until [`done`](Self::done) or the hold.
    pub fn keep(&self) {
        self.0.kept.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gives the place to the next connection waiting (again: a no-op).
    pub fn done(&self) {
        drop(self.0.permit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }

    /// A place kept by its handler is the handler's to bound.
    fn held_too_long(&self) {
        if !self.0.kept.load(std::sync::atomic::Ordering::Relaxed) {
            self.done();
        }
    }

    fn responded(&self) {
        if !self.0.kept.load(std::sync::atomic::Ordering::Relaxed) {
            self.done();
        }
    }
}

/// Serves `router` on `listener` (HTTP/1 with upgrades, and HTTP/2) until `shutdown`, then stops
/// accepting and lets open requests finish. A peer that sends nothing, sends its headers too
/// slowly, or idles between requests longer than `header_timeout` is disconnected; an HTTP/2 peer
/// that stops answering pings too. At most `handshakes` new connections are read at once.
/// Upgraded connections (WebSocket) leave hyper and are the router's to bound.
pub async fn serve(listener: TcpListener, router: Router, options: ConnectionOptions, shutdown: CancellationToken) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let ConnectionOptions { header_timeout, handshakes } = options;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(header_timeout).keep_alive_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(handshakes.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = accept(&listener, &handshakes) => accepted,
        };
        let (tcp, permit) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors, most likely: wait for some to close instead of spinning.
                tracing::warn!(cause = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        no_delay(&tcp);
        let handshake = HandshakePlace::new(permit);
        let service = {
            let (carried, responded) = (handshake.clone(), handshake.clone());
            let carrying = tower::util::MapRequest::new(router.clone(), move |mut request: axum::http::Request<_>| {
                request.extensions_mut().insert(carried.clone());
                request
            });
            tower::util::MapResponse::new(carrying, move |response: Response| {
                responded.responded();
                response
            })
        };
        let (builder, watcher, shutdown) = (builder.clone(), graceful.watcher(), shutdown.clone());
        tokio::spawn(async move {
            let served = async move {
                // hyper reads the first bytes to choose HTTP/1 or HTTP/2 with no deadline of its
                // own; a peer still silent at shutdown is dropped at once.
                let mut first = [0_u8; 1];
                let peeked = tokio::select! {
                    peeked = tokio::time::timeout(header_timeout, tcp.peek(&mut first)) => peeked,
                    () = shutdown.cancelled() => return,
                };
                if !matches!(peeked, Ok(Ok(1..))) {
                    return;
                }
                let service = hyper_util::service::TowerToHyperService::new(service);
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                if let Err(err) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!(cause = %err, "connection ended with an error");
                }
            };
            let hold = async move {
                tokio::time::sleep(HANDSHAKE_HOLD).await;
                handshake.held_too_long();
            };
            futures::future::join(served, hold).await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Waits for a handshake place, then for a connection.
async fn accept(
    listener: &TcpListener,
    handshakes: &Arc<tokio::sync::Semaphore>,
) -> std::io::Result<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = handshakes.clone().acquire_owned().await.map_err(std::io::Error::other)?;
    let (tcp, _) = listener.accept().await?;
    Ok((tcp, permit))
}

/// Serves `router` until `shutdown` is cancelled, then gives in-flight requests and the service's
/// background `tasks` (which watch the same token) at most the grace to finish.
pub async fn serve_until_stopped(
    listener: TcpListener,
    router: Router,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    options: impl Into<ServeOptions>,
) -> Result<(), crate::Error> {
    let ServeOptions { shutdown_grace: grace, connections } = options.into();
    let served = tokio::spawn(serve(listener, router, connections, shutdown.clone()));
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

    #[test]
    fn the_recorder_comes_with_a_thread_that_drains_its_histograms() {
        let upkeep_threads = || {
            std::fs::read_dir("/proc/self/task")
                .expect("tasks")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "metrics-upkeep")
                .count()
        };
        metrics_handle();
        metrics_handle();
        // The thread names itself once it runs: wait for it, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while upkeep_threads() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(upkeep_threads(), 1, "one upkeep thread per process, however often the handle is asked for");
    }

    #[tokio::test]
    async fn accepted_connections_have_nagle_turned_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (accepted, _) = listener.accept().await.expect("accepts");
        assert!(!accepted.nodelay().expect("readable option"), "off by default");
        no_delay(&accepted);
        assert!(accepted.nodelay().expect("readable option"));
        client.await.expect("client task").expect("connects");
    }

    /// Reads until the server closes the connection; fails if it is still open after `within`.
    async fn closed_by_server(socket: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut received = Vec::new();
        tokio::time::timeout(within, async {
            let mut buffer = [0_u8; 1024];
            loop {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await
        .expect("the server closes the connection in time");
        received
    }

    #[tokio::test]
    async fn silent_slow_and_idle_peers_are_disconnected_while_others_are_served() {
        use tokio::io::AsyncWriteExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let timeout = Duration::from_millis(300);
        let router = Router::new().route("/healthz", get(|| async { "ok" }));
        let options = ConnectionOptions { header_timeout: timeout, handshakes: DEFAULT_HANDSHAKES };
        let server = tokio::spawn(serve(listener, router, options, shutdown.clone()));

        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connects");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("half the headers");
        let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connects");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("a request");

        // A well-behaved request on a fresh connection is answered meanwhile.
        let mut normal = tokio::net::TcpStream::connect(addr).await.expect("connects");
        normal.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("sent");
        let answer = closed_by_server(&mut normal, Duration::from_secs(5)).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));

        assert!(closed_by_server(&mut silent, Duration::from_secs(5)).await.is_empty());
        let slow_answer = closed_by_server(&mut slow, Duration::from_secs(5)).await;
        assert!(!slow_answer.starts_with(b"HTTP/1.1 200"), "unfinished headers are never served");
        let idle_answer = closed_by_server(&mut idle, Duration::from_secs(5)).await;
        assert!(idle_answer.starts_with(b"HTTP/1.1 200"), "answered, then closed once idle");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic");
    }

    /// Requests on fresh connections; the handler records how many run at once.
    async fn concurrent_first_requests(handshakes: usize, connections: usize) -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let handler = {
            let (running, most) = (running.clone(), most.clone());
            move || {
                let (running, most) = (running.clone(), most.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Well inside HANDSHAKE_HOLD, long enough for unpaced requests to overlap.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    "ok"
                }
            }
        };
        let router = Router::new().route("/work", get(handler));
        let shutdown = CancellationToken::new();
        let options = ConnectionOptions { header_timeout: Duration::from_secs(5), handshakes };
        let server = tokio::spawn(serve(listener, router, options, shutdown.clone()));
        let clients = (0..connections).map(|_| {
            tokio::spawn(async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
                tcp.write_all(b"GET /work HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("sent");
                closed_by_server(&mut tcp, Duration::from_secs(10)).await
            })
        });
        for answer in futures::future::join_all(clients).await {
            let answer = answer.expect("client task");
            assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        }
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic");
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn new_connections_are_read_a_bounded_number_at_a_time() {
        assert_eq!(concurrent_first_requests(1, 8).await, 1, "one handshake at a time");
        let paced = concurrent_first_requests(3, 12).await;
        assert!((2..=3).contains(&paced), "at most three at a time, and more than one: {paced}");
    }

    #[tokio::test]
    async fn a_silent_new_connection_holds_back_the_next_ones_only_briefly() {
        use tokio::io::AsyncWriteExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let router = Router::new().route("/healthz", get(|| async { "ok" }));
        // One place, a header timeout far beyond the test: only the hold frees the place.
        let options = ConnectionOptions { header_timeout: Duration::from_secs(60), handshakes: 1 };
        let server = tokio::spawn(serve(listener, router, options, shutdown.clone()));
        let _silent = tokio::net::TcpStream::connect(addr).await.expect("connects");
        let mut next = tokio::net::TcpStream::connect(addr).await.expect("connects");
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("sent");
        let answer = closed_by_server(&mut next, Duration::from_secs(10)).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic");
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
