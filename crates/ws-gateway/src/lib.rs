//! # ws-gateway
//!
//! Pushes Runcast events to frontends over WebSocket and SSE (DESIGN §4). Stateless: any replica
//! serves any client, and a client resumes from its last offset on any of them.
//!
//! # Layout
//!
//! - [`channel`], [`protocol`]: the gateway's side of the public contract, whose channels, filters,
//!   messages and codes are `runcast_contract::gateway`: routing an event to its channels, the
//!   subprotocols, the encoding of control messages and the fast framing of events.
//! - [`outbound`]: the per-connection queue, bounded in events and bytes (coalescing, overflow →
//!   `resync`).
//! - [`hub`]: the subscriber index by tenant and channel; encodes each event once and shares
//!   the bytes; holds live events while a subscription replays.
//! - [`upstream`]: one ordered JetStream consumer per stream per replica, feeding the hub;
//!   recreated at once when the NATS connection comes back; the stream's epoch.
//! - [`replay`]: resume from an offset (JetStream, then the PostgreSQL history) within an epoch,
//!   and snapshots (the stream's last event, else the read model).
//! - [`session`]: one connection's protocol state machine, shared by both transports.
//! - [`ws`], [`sse`]: the two write-only transports and their HTTP entry points.
//! - [`gateway`]: what the connections of a replica share (limits, connection caps, auth, stats,
//!   drain).
//! - [`dashboard`]: the live dashboard at `/`, embedded at build time.
//! - [`series`]: every metric, described and at zero from the start.
//! - [`scheduler`]: the Tokio runtime, tuned so live writes are not starved by a reconnect storm.
//! - [`Application`]: wiring — listener, NATS, provisioning, consumers, graceful drain.

pub mod channel;
pub mod dashboard;
mod fair_slots;
mod gateway;
pub mod hub;
pub mod outbound;
mod permessage_deflate;
mod protocol;
pub mod replay;
pub mod scheduler;
pub mod series;
mod session;
mod socket;
mod sse;
mod sse_gzip;
mod upgrade;
mod upstream;
mod wake_flag;
mod ws;
mod ws_wire;

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

    /// Further origins the dashboard may send its token to (besides its own and the API above),
    /// comma separated; served as `allowed_origins` in `/config.json`.
    #[arg(long, env = "RUNCAST_DASHBOARD_ALLOWED_ORIGINS", default_value = "")]
    pub dashboard_allowed_origins: String,

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

    /// Bytes of events queued per connection before a slow client gets `resync` (whichever of
    /// this and the event count is reached first).
    #[arg(long, env = "RUNCAST_WS_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1u64 << 32)))]
    pub queue_bytes: u64,

    /// Connections (WebSocket + SSE) per replica; beyond it upgrades answer 503 with Retry-After.
    #[arg(long, env = "RUNCAST_WS_MAX_CONNECTIONS", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Connections of one tenant per replica; beyond it upgrades answer 429 with Retry-After.
    #[arg(long, env = "RUNCAST_WS_MAX_CONNECTIONS_PER_TENANT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_tenant: u32,

    /// Connections of one subject (the token's `sub`) per replica; beyond it 429 with Retry-After.
    #[arg(long, env = "RUNCAST_WS_MAX_CONNECTIONS_PER_SUBJECT", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_subject: u32,

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

    /// Recent events kept per stream, so resumes within them are served from memory rather than
    /// a JetStream consumer each (a reconnect storm); 0 turns the window off.
    #[arg(long, env = "RUNCAST_WS_RECENT_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=10_000_000))]
    pub recent_events: u32,

    /// Bytes the window of recent events may hold per stream (counted as twice the events' JSON).
    #[arg(long, env = "RUNCAST_WS_RECENT_BYTES", default_value_t = 32 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(0..=(1u64 << 34)))]
    pub recent_bytes: u64,

    /// Replays and snapshots running at once on this replica; more wait their turn, tenants in turn
    /// (round robin). A replay waiting for its client to read gives its slot back meanwhile.
    #[arg(long, env = "RUNCAST_REPLAY_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub replay_concurrency: u32,

    /// Replays and snapshots one connection runs at once; its other resumes wait their turn.
    #[arg(long, env = "RUNCAST_WS_MAX_REPLAYS_PER_CONNECTION", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub max_replays_per_connection: u32,

    /// On drain, each client is told (`retry_after_ms` of `reconnect`, SSE `retry:`) to wait a
    /// delay drawn uniformly from this window before reconnecting: N clients of a draining replica
    /// arrive at the others at about N / window per second instead of all at once. 0: at once.
    #[arg(long, env = "RUNCAST_WS_DRAIN_RECONNECT_WINDOW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_reconnect_window: Duration,

    /// Compress WebSocket messages (`permessage-deflate`, RFC 7692) for clients that offer it, as
    /// browsers do, and SSE bodies (`Content-Encoding: gzip`) for requests that accept it: each
    /// message of 256 bytes or more is compressed once, on its own (no context kept between
    /// messages), and every connection that sends it shares the compressed bytes.
    #[arg(long, env = "RUNCAST_WS_COMPRESSION", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub compression: bool,
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
            allowed_origins: comma_list(&self.allowed_origins),
            queue_bytes: usize::try_from(self.queue_bytes).unwrap_or(usize::MAX),
            max_connections: self.max_connections as usize,
            max_connections_per_tenant: self.max_connections_per_tenant as usize,
            max_connections_per_subject: self.max_connections_per_subject as usize,
            max_replays_per_connection: self.max_replays_per_connection as usize,
            drain_reconnect_window: self.drain_reconnect_window,
            compression: self.compression,
        }
    }
}

fn comma_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

pub struct Application {
    config: Config,
    http: TcpListener,
    readiness: Readiness,
    nats: Nats,
    authenticator: Authenticator,
    history: runcast_store::PgPool,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, Error> {
        // Installs the Prometheus recorder now: metrics recorded before it exists are lost.
        let _ = ops::metrics_handle();
        series::declare();
        match runcast_runtime::limits::raise_open_files_limit() {
            Ok(open_files) => tracing::info!(open_files, "open files limit (one per connection)"),
            Err(err) => {
                tracing::warn!(%err, "cannot raise the open files limit; connections are capped by the current one")
            }
        }
        // A connection shows its token once (and at renewal): remembering verified tokens would
        // only cost memory here, ~0.4 KiB per idle connection (the fan-out bench, scenario d).
        let authenticator = Authenticator::remembering(&config.auth, 0)?;
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
        let hub = Arc::new(Hub::bounded(limits.queue_capacity, limits.queue_bytes).with_recent(
            config.gateway.recent_events as usize,
            usize::try_from(config.gateway.recent_bytes).unwrap_or(usize::MAX),
        ));
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
                log: Arc::new(runcast_eventlog::JetStreamLog::new(nats.clone(), history)),
                topology: nats.topology.clone(),
                batch: config.gateway.replay_batch as usize,
                slots: Arc::new(fair_slots::FairSlots::new(config.gateway.replay_concurrency as usize)),
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
            .merge(dashboard::router(&config.dashboard_api_url, &comma_list(&config.dashboard_allowed_origins)))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed);
        ops::serve_until_stopped(http, router, tasks, shutdown, &config.lifecycle).await
    }
}

/// `/ws/stats`: needs credentials (any role); a tenant sees its own numbers, `admin` everything.
async fn stats(State(gateway): State<Arc<Gateway>>, headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match gateway.authenticate(&headers, None) {
        Ok(principal) => axum::Json(gateway.stats(&principal)).into_response(),
        Err(err) => gateway::Refusal::Auth(err).into_response(),
    }
}

/// Unknown routes: the JSON error shape like every other answer.
async fn not_found(uri: axum::http::Uri) -> axum::response::Response {
    runcast_runtime::auth::json_error(
        axum::http::StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!(
            "no route {}: the gateway serves /ws, /sse, /ws/stats, /healthz, /readyz, /metrics and the dashboard at /",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    runcast_runtime::auth::json_error(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        &format!("{method} is not allowed on {}: use GET", uri.path()),
    )
}
