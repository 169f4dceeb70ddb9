//! # event-persister
//!
//! Consumes the Runcast streams and writes the history and read model to PostgreSQL, exactly
//! once in effect: at-least-once delivery from JetStream, idempotent writes into PostgreSQL.
//!
//! # Layout
//!
//! - [`decode`]: raw message → validated event, or the reason it is poison (pure);
//! - [`rows`]: the fold of a batch into history, read-model and log rows (pure; shared with
//!   [`rebuild`], which is why both paths yield the same rows);
//! - [`store`]: a folded batch handed to `runcast_store`'s writes (one transaction per batch,
//!   bulk `UNNEST` writes, version-guarded upserts); this crate holds no SQL;
//! - [`consumer`]: the durable pull consumer per stream: batches, ack after commit, backoff,
//!   dead letters;
//! - [`lag`]: the consumer's ack floor as the low watermark, lag metric and `/readyz` details;
//! - [`retention`]: dropping expired day partitions (every tenant's; the api's
//!   `DELETE /events` deletes one tenant's rows itself);
//! - [`rebuild`]: `event-persister rebuild`, the read model recomputed from the history;
//! - [`schema`]: the store's migrations and daily partitions, kept up to date while running;
//! - [`http`]: `/healthz`, `/readyz` (with lag), `/metrics`; [`series`]: every metric, at zero
//!   from the first scrape;
//! - [`error`]: this crate's error, whose kind decides retry or dead letter;
//! - [`Application`]: wiring — HTTP ops endpoints, NATS connection and stream provisioning, the
//!   schema upkeep loop, consumers, retention, graceful shutdown.

mod consumer;
pub mod decode;
mod error;
mod http;
mod lag;
mod rebuild;
pub mod retention;
pub mod rows;
pub mod schema;
mod series;
pub mod store;

use clap::{Parser, Subcommand};
use consumer::{AckFloor, ConsumerSettings, StreamConsumer};
use lag::{LagBoard, LagMonitor};
use retention::RetentionPolicy;
use runcast_contract::StreamKind;
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

/// How long a stopping persister waits to hand its last acks to NATS.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest `RUNCAST_BATCH_WAIT`: shutdown lets the fetch in progress finish, within the grace.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(5);

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
    /// Recompute the read model from the history in PostgreSQL, and exit.
    Rebuild {
        /// Delete the read model first (also drops entities whose history has expired).
        #[arg(long)]
        reset: bool,
        /// History rows read and written per transaction.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        page_size: i64,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of the HTTP listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "RUNCAST_HTTP_ADDR", default_value = "0.0.0.0:8082")]
    pub http_addr: SocketAddr,

    /// Days of history partitions kept ready ahead of today.
    #[arg(long, env = "RUNCAST_PARTITION_DAYS_AHEAD", default_value_t = 7, value_parser = clap::value_parser!(u16).range(1..=366))]
    pub partition_days_ahead: u16,

    /// Durable consumer name, shared by every replica (one consumer per stream).
    #[arg(long, env = "RUNCAST_CONSUMER_NAME", default_value = "event-persister")]
    pub consumer_name: String,

    /// Most events written per transaction.
    #[arg(long, env = "RUNCAST_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Most payload bytes fetched per batch (bounds memory: each writer holds one batch).
    #[arg(long, env = "RUNCAST_BATCH_MAX_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    pub batch_max_bytes: u64,

    /// Batches of one stream written at the same time by this process (each its own fetch loop
    /// and transaction on the shared durable consumer).
    #[arg(long, env = "RUNCAST_WRITERS_PER_STREAM", default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub writers_per_stream: u8,

    /// Longest wait for a batch to fill before writing what has arrived.
    #[arg(long, env = "RUNCAST_BATCH_WAIT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

    /// How long JetStream waits for an ack before redelivering to another replica.
    #[arg(long, env = "RUNCAST_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,

    /// Longest pause between two attempts to write a batch while PostgreSQL is down.
    #[arg(long, env = "RUNCAST_DB_RETRY_MAX", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_retry_max: Duration,

    /// How often lag and the applied offset (`as_of_offset`) are refreshed.
    #[arg(long, env = "RUNCAST_LAG_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub lag_interval: Duration,

    /// How long the event history is kept in PostgreSQL.
    #[arg(long, env = "RUNCAST_HISTORY_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub history_retention: Duration,

    /// How long log lines are kept in PostgreSQL.
    #[arg(long, env = "RUNCAST_LOGS_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub logs_retention: Duration,

    /// How often expired partitions are dropped (one replica at a time).
    #[arg(long, env = "RUNCAST_RETENTION_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,

    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

impl Config {
    /// Settings a duration of zero would break (a busy loop or an instant redelivery).
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("RUNCAST_BATCH_WAIT", self.batch_wait),
            ("RUNCAST_ACK_WAIT", self.ack_wait),
            ("RUNCAST_DB_RETRY_MAX", self.db_retry_max),
            ("RUNCAST_LAG_INTERVAL", self.lag_interval),
            ("RUNCAST_HISTORY_RETENTION", self.history_retention),
            ("RUNCAST_LOGS_RETENTION", self.logs_retention),
            ("RUNCAST_RETENTION_INTERVAL", self.retention_interval),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
            return Err(Error::new(runcast_runtime::ErrorKind::Config, format!("{name} must be longer than zero")));
        }
        if self.batch_wait > MAX_BATCH_WAIT {
            return Err(Error::new(
                runcast_runtime::ErrorKind::Config,
                format!(
                    "RUNCAST_BATCH_WAIT must be at most {MAX_BATCH_WAIT:?}: a stopping persister finishes its fetch"
                ),
            ));
        }
        if self.db_retry_max + runcast_runtime::postgres::ACQUIRE_TIMEOUT >= self.ack_wait {
            return Err(Error::new(
                runcast_runtime::ErrorKind::Config,
                "RUNCAST_DB_RETRY_MAX must be shorter than RUNCAST_ACK_WAIT minus 3s, or held batches are redelivered",
            ));
        }
        if self.ack_wait <= self.batch_wait {
            return Err(Error::new(
                runcast_runtime::ErrorKind::Config,
                "RUNCAST_ACK_WAIT must be longer than RUNCAST_BATCH_WAIT",
            ));
        }
        if runcast_contract::EntityId::parse("RUNCAST_CONSUMER_NAME", &self.consumer_name).is_err() {
            return Err(Error::new(
                runcast_runtime::ErrorKind::Config,
                "RUNCAST_CONSUMER_NAME must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
            ));
        }
        Ok(())
    }

    pub fn consumer_settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            name: self.consumer_name.clone(),
            batch_size: self.batch_size as usize,
            batch_wait: self.batch_wait,
            batch_max_bytes: usize::try_from(self.batch_max_bytes).unwrap_or(usize::MAX),
            retry_max: self.db_retry_max,
            ack_wait: self.ack_wait,
        }
    }

    pub fn retention_policy(&self) -> RetentionPolicy {
        RetentionPolicy { history: self.history_retention, logs: self.logs_retention }
    }
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
        config.validate()?;
        series::declare();
        let writers = 3 * u32::from(config.writers_per_stream);
        if config.postgres.db_max_connections <= writers {
            tracing::warn!(
                pool = config.postgres.db_max_connections,
                writers,
                "RUNCAST_DB_MAX_CONNECTIONS leaves the batch writers waiting for connections; raise it above {writers}"
            );
        }
        // Install the recorder now: metrics recorded before the first scrape would be lost.
        ops::metrics_handle();
        let readiness = Readiness::default();
        let pool = config.postgres.lazy_durable_pool()?;
        let nats = Nats::connect(&config.nats, SERVICE, &readiness).await?;
        let listener = ops::bind_http(config.http_addr).await?;
        Ok(Self { config, listener, readiness, nats, pool })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.http_addr)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self { config, listener, readiness, nats, pool } = self;
        let tasks = TaskTracker::new();

        let provisioned = readiness.add_flag("streams");
        tasks.spawn(nats.spawn_provisioning(config.nats.streams.clone(), provisioned.clone(), shutdown.clone()));

        let schema_ready = readiness.add_flag("schema");
        tasks.spawn(schema::keep_up_to_date(
            pool.clone(),
            config.partition_days_ahead,
            schema_ready.clone(),
            shutdown.clone(),
        ));

        let reachable = readiness.add_flag("postgres");
        tasks.spawn(postgres::monitor(pool.clone(), reachable, Duration::from_secs(1), shutdown.clone()));

        let lag_board = LagBoard::default();
        for kind in StreamKind::ALL {
            let floor = AckFloor::default();
            // Several loops on one durable consumer are exactly several replicas: batches commit
            // in any order, rows only move forward, the ack floor stays the low watermark.
            for _ in 0..config.writers_per_stream {
                tasks.spawn(
                    StreamConsumer::new(kind, nats.clone(), pool.clone(), config.consumer_settings(), floor.clone())
                        .run(provisioned.clone(), schema_ready.clone(), shutdown.clone()),
                );
            }
            tasks.spawn(
                LagMonitor {
                    kind,
                    nats: nats.clone(),
                    pool: pool.clone(),
                    consumer_name: config.consumer_name.clone(),
                    floor,
                    board: lag_board.clone(),
                    interval: config.lag_interval,
                }
                .run(provisioned.clone(), shutdown.clone()),
            );
        }
        tasks.spawn(retention::run(
            pool.clone(),
            config.retention_policy(),
            config.retention_interval,
            schema_ready.clone(),
            shutdown.clone(),
        ));

        ops::serve_until_stopped(listener, http::router(readiness, lag_board), tasks, shutdown, &config.lifecycle)
            .await?;
        // The last batches' acks may still be queued in the client: send them before exiting, or
        // JetStream redelivers those messages after `ack_wait` (written again as no-ops, but late).
        match tokio::time::timeout(ACK_FLUSH_TIMEOUT, nats.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(cause = %err, "cannot send the last acks; JetStream will redeliver them"),
            Err(_) => {
                tracing::warn!(timeout = ?ACK_FLUSH_TIMEOUT, "the last acks not sent in time; JetStream will redeliver them")
            }
        }
        pool.close().await;
        Ok(())
    }
}

/// `event-persister rebuild`: migrations, then the read model from the history, then exit.
pub async fn rebuild_once(config: &Config, page_size: i64, reset: bool) -> Result<(), Error> {
    let pool = config.postgres.lazy_durable_pool()?;
    schema::migrate(&pool).await?;
    let report = rebuild::rebuild(&pool, page_size, reset).await;
    pool.close().await;
    report.map(|_| ()).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["event-persister"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("parses").config
    }

    #[test]
    fn the_defaults_are_valid_and_documented() {
        let config = parse(&[]);
        config.validate().expect("defaults are valid");
        assert_eq!(config.batch_size, 1000);
        assert_eq!(config.batch_wait, Duration::from_millis(100));
        assert_eq!(config.history_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(config.logs_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(config.consumer_name, "event-persister");
    }

    #[test]
    fn settings_that_would_break_the_consumer_are_refused_by_name() {
        for (args, variable) in [
            (&["--batch-wait", "0s"][..], "RUNCAST_BATCH_WAIT"),
            (&["--batch-wait", "10s"][..], "RUNCAST_BATCH_WAIT"),
            (&["--history-retention", "0s"][..], "RUNCAST_HISTORY_RETENTION"),
            (&["--db-retry-max", "30s"][..], "RUNCAST_DB_RETRY_MAX"),
            (&["--consumer-name", "a.b"][..], "RUNCAST_CONSUMER_NAME"),
        ] {
            let err = parse(args).validate().expect_err(variable);
            assert_eq!(err.kind(), runcast_runtime::ErrorKind::Config);
            assert!(err.to_string().contains(variable), "{err} should name {variable}");
        }
    }
}
