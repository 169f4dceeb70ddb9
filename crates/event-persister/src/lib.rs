//! # event-persister
//!
//! Consumes the Runcast streams and writes the history and read model to PostgreSQL.
//!
//! - [`schema`]: migrations (embedded from `migrations/`) and the daily partitions of the history;
//! - [`Application`]: wiring — HTTP ops endpoints, NATS connection and stream provisioning, the
//!   schema upkeep loop, graceful shutdown.

pub mod schema;

use clap::{Parser, Subcommand};
use runcast_runtime::Error;
use runcast_runtime::config::{LifecycleArgs, NatsArgs, TelemetryArgs};
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::{self, Readiness};
use runcast_runtime::postgres::{self, PostgresArgs};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const SERVICE: &str = "event-persister";

#[derive(Debug, Parser)]
#[command(name = SERVICE, version, about = "Writes the Runcast event history and read model to PostgreSQL.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Run the persister (the default).
    Run,
    /// Apply pending database migrations, create the upcoming partitions, and exit.
    Migrate,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of the HTTP listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "RUNCAST_HTTP_ADDR", default_value = "0.0.0.0:8082")]
    pub http_addr: SocketAddr,

    /// Days of history partitions kept ready ahead of today.
    #[arg(long, env = "RUNCAST_PARTITION_DAYS_AHEAD", default_value_t = 7, value_parser = clap::value_parser!(u16).range(1..=366))]
    pub partition_days_ahead: u16,

    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

pub struct Application {
    config: Config,
    listener: TcpListener,
    readiness: Readiness,
    nats: Nats,
    pool: sqlx::PgPool,
}

impl Application {
    /// Binds the HTTP listener and starts connecting. Returns while NATS or PostgreSQL are still
    /// unreachable: `/readyz` says so until they are.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let readiness = Readiness::default();
        let pool = config.postgres.lazy_pool()?;
        let nats = Nats::connect(&config.nats, SERVICE, &readiness).await?;
        let listener = ops::bind_http(config.http_addr).await?;
        Ok(Self {
            config,
            listener,
            readiness,
            nats,
            pool,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.http_addr)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self {
            config,
            listener,
            readiness,
            nats,
            pool,
        } = self;
        let tasks = TaskTracker::new();

        let provisioned = readiness.add_flag("streams");
        tasks.spawn(nats.spawn_provisioning(
            config.nats.streams.clone(),
            provisioned,
            shutdown.clone(),
        ));

        let schema_ready = readiness.add_flag("schema");
        tasks.spawn(schema::keep_up_to_date(
            pool.clone(),
            config.partition_days_ahead,
            schema_ready,
            shutdown.clone(),
        ));

        let reachable = readiness.add_flag("postgres");
        tasks.spawn(postgres::monitor(
            pool.clone(),
            reachable,
            Duration::from_secs(1),
            shutdown.clone(),
        ));

        ops::serve_until_stopped(
            listener,
            ops::router(readiness),
            tasks,
            shutdown,
            config.lifecycle.shutdown_grace,
        )
        .await?;
        pool.close().await;
        Ok(())
    }
}
