//! # execution-api
//!
//! The command and query API of Runcast (gRPC and REST) and the only writer of execution events.
//!
//! - [`domain`]: the execution state machine, pure and exhaustively tested;
//! - [`requests`], [`validate`]: requests checked and turned into domain commands (shared by both
//!   front ends);
//! - [`store`]: JetStream as the event store — last event per subject, compare-and-set appends;
//! - [`commands`]: read, decide, append, retry on a lost race; [`logs`] and [`agents`] do the same
//!   for log lines and agent presence;
//! - [`queries`]: lists and history from the PostgreSQL read model; [`watch`]: live follow;
//! - [`sweeper`]: `agent.offline` and `approval.expired`, from one replica at a time;
//! - [`grpc`], [`rest`]: the two front ends; [`policy`]: who may call what; [`error`]: the one
//!   mapping of errors to gRPC statuses and HTTP responses; [`admission`]: concurrency limit,
//!   load shedding and request timeout on both listeners; [`series`]: every metric, at zero
//!   from the first scrape;
//! - [`Application`]: wiring — listeners, auth layer, NATS, PostgreSQL, sweepers, shutdown.

mod admission;
mod agents;
mod archived;
mod commands;
mod domain;
mod error;
mod grpc;
mod logs;
mod policy;
pub mod queries;
mod requests;
mod rest;
mod series;
mod store;
mod sweeper;
mod validate;
mod watch;

use clap::Parser;
use runcast_contract::v1::agent_service_server::AgentServiceServer;
use runcast_contract::v1::execution_service_server::ExecutionServiceServer;
use runcast_runtime::auth::{self, AuthArgs, AuthState, Authenticator};
use runcast_runtime::config::{LifecycleArgs, NatsArgs, TelemetryArgs};
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::{self, Readiness};
use runcast_runtime::postgres::PostgresArgs;
use runcast_runtime::telemetry::trace_context;
use runcast_runtime::{Error, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codec::CompressionEncoding;
use tonic_health::ServingStatus;

pub const SERVICE: &str = "execution-api";

#[derive(Debug, Clone, Parser)]
#[command(name = SERVICE, version, about = "Runcast command and query API (gRPC + REST).")]
pub struct Config {
    /// Address of the gRPC listener.
    #[arg(long, env = "RUNCAST_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener (REST under /api/v1, /healthz, /readyz, /metrics).
    #[arg(long, env = "RUNCAST_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub http_addr: SocketAddr,

    /// Origins allowed to call the REST API from a browser (comma list; `*` for any; empty: none).
    #[arg(long, env = "RUNCAST_CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,

    /// How often the sweepers look for silent agents and expired approvals.
    #[arg(long, env = "RUNCAST_SWEEP_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// How long an agent may stay offline before each execution it owns fails with
    /// `agent {id} went offline` (unless it comes back first).
    #[arg(long, env = "RUNCAST_AGENT_LOST_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub agent_lost_grace: Duration,

    /// Requests in flight per listener (gRPC, REST); beyond it requests are refused at once
    /// (RESOURCE_EXHAUSTED / 503 with Retry-After), never queued.
    #[arg(long, env = "RUNCAST_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests: u32,

    /// A tenant's share of those: requests of one tenant in flight per listener, beyond which its
    /// requests are refused at once (RESOURCE_EXHAUSTED / 429 with Retry-After) while other
    /// tenants' still get in. Log uploads hold theirs while they stream. Default: half of
    /// RUNCAST_MAX_CONCURRENT_REQUESTS; at most all of them.
    #[arg(long, env = "RUNCAST_MAX_CONCURRENT_REQUESTS_PER_TENANT", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_requests_per_tenant: Option<u32>,

    /// Longest time a request may take to answer (DEADLINE_EXCEEDED / 504); log uploads excepted.
    #[arg(long, env = "RUNCAST_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Subjects (executions, agents, log streams) whose last event a replica remembers from its own
    /// writes and reads, so the first try of a write needs no read from NATS (0: always read).
    /// About 1 KiB each.
    #[arg(long, env = "RUNCAST_REMEMBERED_SUBJECTS", default_value_t = 10_000)]
    pub remembered_subjects: usize,

    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub executions: commands::Executions,
    /// What `WatchExecution` reads after an offset the stream may have aged out.
    pub log: std::sync::Arc<dyn runcast_eventlog::EventLog>,
    pub queries: queries::Queries,
    pub shutdown: CancellationToken,
}

pub struct Application {
    config: Config,
    http: TcpListener,
    grpc: TcpListener,
    readiness: Readiness,
    nats: Nats,
    pool: runcast_store::PgPool,
    authenticator: Authenticator,
}

impl Application {
    /// Checks the configuration, binds both listeners (port 0 picks free ports) and starts
    /// connecting to NATS and PostgreSQL (neither has to be up yet).
    pub async fn build(config: Config) -> Result<Self, Error> {
        let authenticator = Authenticator::from_args(&config.auth)?;
        series::declare();
        let readiness = Readiness::default();
        let pool = config.postgres.lazy_pool()?;
        let nats = Nats::connect(&config.nats, SERVICE, &readiness).await?;
        let http = ops::bind_http(config.http_addr).await?;
        let grpc = TcpListener::bind(config.grpc_addr).await.map_err(|err| {
            Error::with_source(
                ErrorKind::Config,
                format!("cannot listen on RUNCAST_GRPC_ADDR={}", config.grpc_addr),
                err,
            )
        })?;
        if let Ok(bound) = grpc.local_addr() {
            tracing::info!(grpc_addr = %bound, "grpc listener bound");
        }
        Ok(Self { config, http, grpc, readiness, nats, pool, authenticator })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.http_addr)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self { config, http, grpc, readiness, nats, pool, authenticator } = self;
        let tasks = TaskTracker::new();

        // Readiness is NATS only: writes and GetExecution must keep working while PostgreSQL is down.
        let provisioned = readiness.add_flag("streams");
        tasks.spawn(nats.spawn_provisioning(config.nats.streams.clone(), provisioned, shutdown.clone()));

        let store = store::EventStore::new(
            nats.jetstream.clone(),
            nats.topology.clone(),
            config.nats.streams.replicas,
            config.remembered_subjects,
        );
        let app = App {
            executions: commands::Executions::with_read_model(store.clone(), pool.clone(), config.nats.streams.max_age)
                .with_duplicate_window(config.nats.streams.duplicate_window),
            log: std::sync::Arc::new(runcast_eventlog::JetStreamLog::new(nats.clone(), pool.clone())),
            queries: queries::Queries::new(pool.clone()),
            shutdown: shutdown.clone(),
        };
        let sweeps = sweeper::Settings {
            interval: config.sweep_interval,
            agent_lost_grace: config.agent_lost_grace,
            replicas: config.nats.streams.replicas,
        };
        tasks.spawn(sweeper::run(store, pool.clone(), sweeps, config.nats.streams.max_age, shutdown.clone()));

        let auth_state = AuthState { authenticator, policy: policy::policy };
        let auth_layer = axum::middleware::from_fn_with_state(auth_state, auth::layer);
        let (grpc_admission, rest_admission) = (admission("grpc", &config), admission("rest", &config));

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        tasks.spawn(mirror_readiness_to_grpc_health(readiness.clone(), health_reporter, shutdown.clone()));
        // Both reflection versions: grpcurl and current tools ask v1, older tools v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(runcast_contract::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_error =
            |err| Error::with_source(ErrorKind::Internal, "cannot build the reflection service", err);
        let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
        let grpc_router = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            // gzip both ways for clients that ask (`grpc-accept-encoding`): watched states and
            // lists carry whole states; a client that does not ask gets what it got before.
            .add_service(
                ExecutionServiceServer::new(app.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                AgentServiceServer::new(app.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(grpc_admission.clone(), admission::admit_tenant))
            .layer(auth_layer.clone())
            .layer(axum::middleware::from_fn_with_state(grpc_admission, admission::admit))
            .layer(axum::middleware::from_fn(trace_context::layer));
        tasks.spawn(ops::serve(grpc, grpc_router, (&config.lifecycle).into(), shutdown.clone()));

        let http_router = rest::router(app)
            // Lists and history pages carry whole states (steps and all): 5–10× smaller in gzip.
            // zlib's fastest level: these are answers to wait for, not files to archive.
            .layer(
                tower_http::compression::CompressionLayer::new()
                    .quality(tower_http::compression::CompressionLevel::Fastest),
            )
            .layer(axum::middleware::from_fn_with_state(rest_admission.clone(), admission::admit_tenant))
            .layer(auth_layer)
            .layer(axum::middleware::from_fn_with_state(rest_admission, admission::admit))
            .layer(cors(&config.cors_origins)?)
            .layer(axum::middleware::from_fn(trace_context::layer))
            .merge(ops::router(readiness));
        let result = ops::serve_until_stopped(http, http_router, tasks, shutdown, &config.lifecycle).await;
        pool.close().await;
        result
    }
}

fn admission(listener: &'static str, config: &Config) -> admission::Admission {
    let all = config.max_concurrent_requests;
    let per_tenant = config.max_concurrent_requests_per_tenant.unwrap_or((all / 2).max(1));
    admission::Admission::new(listener, all as usize, per_tenant as usize, config.request_timeout)
}

fn cors(origins: &str) -> Result<tower_http::cors::CorsLayer, Error> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let layer = CorsLayer::new().allow_methods(Any).allow_headers(Any);
    let origins: Vec<&str> = origins.split(',').map(str::trim).filter(|o| !o.is_empty()).collect();
    Ok(match origins.as_slice() {
        [] => layer,
        ["*"] => layer.allow_origin(Any),
        list => {
            let values = list
                .iter()
                .map(|origin| {
                    origin.parse().map_err(|_| {
                        Error::new(ErrorKind::Config, format!("RUNCAST_CORS_ORIGINS: {origin:?} is not a valid origin"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            layer.allow_origin(AllowOrigin::list(values))
        }
    })
}

/// `grpc.health.v1.Health` answers SERVING exactly when `/readyz` would answer 200.
async fn mirror_readiness_to_grpc_health(
    readiness: Readiness,
    reporter: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let status = if readiness.report().0 { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
