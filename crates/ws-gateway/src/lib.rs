//! # ws-gateway
//!
//! Pushes Runcast events to frontends over WebSocket and SSE (DESIGN §4). Stateless: any replica
//! serves any client, and a client resumes from its last offset on any of them.
//!
//! # Layout
//!
//! - [`channel`], [`filter`], [`protocol`]: the public contract — channel names, filters, client
//!   and server messages, error and close codes. Pure, unit-tested.
//! - [`outbound`]: the bounded per-connection queue (coalescing, overflow → `resync`).
//! - [`hub`]: the subscriber index by tenant and channel; encodes each event once and shares
//!   the bytes; holds live events while a subscription replays.
//! - [`upstream`]: one ordered JetStream consumer per stream per replica, feeding the hub.
//! - [`replay`]: resume from an offset (JetStream, then the PostgreSQL history) and snapshots.
//! - [`session`]: one connection's protocol state machine, shared by both transports.
//! - [`ws`], [`sse`]: the two write-only transports and their HTTP entry points.
//! - [`gateway`]: what the connections of a replica share (limits, auth, stats, drain).
//! - [`dashboard`]: the live dashboard at `/`, embedded at build time.
//! - [`Application`]: wiring — listener, NATS, provisioning, consumers, graceful drain.

pub mod channel;
pub mod dashboard;
pub mod filter;
pub mod gateway;
pub mod hub;
pub mod outbound;
pub mod protocol;
pub mod replay;
pub mod session;
pub mod sse;
pub mod upstream;
pub mod ws;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clap::Parser;
use gateway::{Gateway, Limits};
use hub::Hub;
use runcast_contract::StreamKind;
use runcast_runtime::Error;
use runcast_runtime::auth::{AuthArgs, Authenticator};
use runcast_runtime::config::{LifecycleArgs, NatsArgs, TelemetryArgs};
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::{self, Readiness};
use runcast_runtime::postgres::PostgresArgs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SERVICE: &str = "ws-gateway";

#[derive(Debug, Clone, Parser)]
#[command(name = SERVICE, version, about = "Runcast live fan-out over WebSocket and SSE.")]
pub struct Config {
    /// Address of the HTTP listener (/ws, /sse, /ws/stats, /healthz, /readyz, /metrics).
    #[arg(long, env = "RUNCAST_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// REST API base the dashboard at `/` calls, as a browser sees it (e.g. `/api/v1` behind an
    /// ingress, `http://localhost:8081/api/v1`). Empty: the dashboard guesses.
    #[arg(long, env = "RUNCAST_DASHBOARD_API_URL", default_value = "")]
    pub dashboard_api_url: String,

    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// Connection limits and timings.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Subscriptions one connection may hold.
    #[arg(long, env = "RUNCAST_WS_MAX_SUBSCRIPTIONS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_subscriptions: u32,

    /// Inbound messages per second per connection; beyond it messages are refused with
    /// `rate_limited`, beyond four times it the connection is closed (1008).
    #[arg(long, env = "RUNCAST_WS_MAX_MESSAGES_PER_SECOND", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_messages_per_second: u32,

    /// Largest inbound frame in bytes; a larger one closes the connection (1009).
    #[arg(long, env = "RUNCAST_WS_MAX_FRAME_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_frame_bytes: u32,

    /// Events queued per connection before a slow client gets `resync`.
    #[arg(long, env = "RUNCAST_WS_QUEUE_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// Interval of WebSocket pings; a peer silent for two intervals is closed.
    #[arg(long, env = "RUNCAST_WS_PING_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Longest a write to one client may take before the connection is dropped.
    #[arg(long, env = "RUNCAST_WS_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Interval of the SSE heartbeat comment.
    #[arg(long, env = "RUNCAST_SSE_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_heartbeat: Duration,

    /// Origins allowed to connect from a browser, comma separated; empty allows any.
    #[arg(long, env = "RUNCAST_WS_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,

    /// Events read per round trip when replaying from JetStream or the history.
    #[arg(long, env = "RUNCAST_REPLAY_BATCH", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub replay_batch: u32,

    /// Replays and snapshots running at once on this replica; more wait their turn.
    #[arg(long, env = "RUNCAST_REPLAY_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub replay_concurrency: u32,
}

impl GatewayArgs {
    fn limits(&self) -> Limits {
        let duration = |d: Duration| d.max(Duration::from_millis(10));
        Limits {
            max_subscriptions: self.max_subscriptions as usize,
            max_messages_per_second: self.max_messages_per_second,
            max_frame_bytes: self.max_frame_bytes as usize,
            queue_capacity: self.queue_capacity as usize,
            ping_interval: duration(self.ping_interval),
            write_timeout: duration(self.write_timeout),
            sse_heartbeat: duration(self.sse_heartbeat),
            allowed_origins: self
                .allowed_origins
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

pub struct Application {
    config: Config,
    http: TcpListener,
    readiness: Readiness,
    nats: Nats,
    authenticator: Authenticator,
    history: sqlx::PgPool,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, Error> {
        // Installs the Prometheus recorder now: metrics recorded before it exists are lost.
        let _ = ops::metrics_handle();
        match runcast_runtime::limits::raise_open_files_limit() {
            Ok(open_files) => tracing::info!(open_files, "open files limit (one per connection)"),
            Err(err) => {
                tracing::warn!(%err, "cannot raise the open files limit; connections are capped by the current one")
            }
        }
        let authenticator = Authenticator::from_args(&config.auth)?;
        let history = config.postgres.lazy_pool()?;
        let readiness = Readiness::default();
        let nats = Nats::connect(&config.nats, SERVICE, &readiness).await?;
        let http = ops::bind_http(config.http_addr).await?;
        Ok(Self { config, http, readiness, nats, authenticator, history })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self { config, http, readiness, nats, authenticator, history } = self;
        let tasks = TaskTracker::new();
        let limits = config.gateway.limits();
        let hub = Arc::new(Hub::new(limits.queue_capacity));
        let provisioned = readiness.add_flag("streams");
        tasks.spawn(nats.spawn_provisioning(config.nats.streams.clone(), provisioned.clone(), shutdown.clone()));
        for kind in StreamKind::ALL {
            tasks.spawn(upstream::run(nats.clone(), hub.clone(), kind, provisioned.clone(), shutdown.clone()));
        }
        let live = hub.clone();
        readiness.add_check("upstream", move || live.all_live());
        // Load balancers stop routing here as soon as the drain starts.
        let draining = shutdown.clone();
        readiness.add_check("accepting", move || !draining.is_cancelled());
        let gateway = Arc::new(Gateway::new(
            hub,
            replay::Sources {
                nats,
                history,
                batch: config.gateway.replay_batch as usize,
                slots: Arc::new(tokio::sync::Semaphore::new(config.gateway.replay_concurrency as usize)),
            },
            authenticator,
            limits,
            shutdown.clone(),
            tasks.clone(),
        ));
        let router = Router::new()
            .route("/ws", get(ws::upgrade))
            .route("/sse", get(sse::stream))
            .route("/ws/stats", get(stats))
            .with_state(gateway)
            .merge(ops::router(readiness))
            .merge(dashboard::router(&config.dashboard_api_url));
        ops::serve_until_stopped(http, router, tasks, shutdown, config.lifecycle.shutdown_grace).await
    }
}

async fn stats(State(gateway): State<Arc<Gateway>>) -> axum::Json<serde_json::Value> {
    axum::Json(gateway.stats())
}
