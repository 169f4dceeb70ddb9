//! # runcast-testkit
//!
//! Real infrastructure for integration tests, started on free loopback ports in temporary
//! directories and stopped on `Drop`:
//!
//! - [`tools`]: finds `nats-server` and PostgreSQL in the project's tools folder (installed by
//!   `scripts/install-tools.sh`), or says exactly what to run;
//! - [`nats`]: a `nats-server` with JetStream that can be stopped and restarted on the same port;
//! - [`cluster`]: three routed `nats-server`s (a JetStream cluster for R3 streams) whose nodes can
//!   be crashed, stopped and restarted, and the leader of a stream;
//! - [`postgres`]: a PostgreSQL cluster (as an unprivileged user when running as root) that hands
//!   out one fresh database per test;
//! - [`service`]: the three service binaries as real processes, with their bound addresses, and
//!   [`ServiceEnv`] — where one test's services find NATS, PostgreSQL, their prefix and secret;
//! - [`lifecycle`]: the start-up, readiness and shutdown contract every service binary keeps;
//! - [`otlp`]: an OpenTelemetry trace endpoint that hands the spans services export to the test;
//! - [`slow_peers`]: connections that never finish a request, to check listeners shed them;
//! - [`promtool`]: `promtool check metrics` over a `/metrics` page;
//! - [`token`]: HS256 tokens for a test's secret, tenant, subject and roles;
//! - [`events`]: execution, agent and log events as the api publishes them;
//! - [`Infra`]: both servers together, and [`Isolation`] — a stream prefix and a database of a
//!   test's own, so tests sharing servers never see each other's streams or rows;
//! - [`profile`]: `perf record` of the machine while a benchmark measures (`BENCH_PERF`);
//! - [`eventually`]: wait for a condition with a deadline instead of sleeping and hoping.

pub mod cluster;
pub mod events;
pub mod lifecycle;
pub mod nats;
pub mod otlp;
pub mod postgres;
pub mod profile;
pub mod promtool;
pub mod service;
pub mod slow_peers;
pub mod token;
pub mod tools;

pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use postgres::PostgresServer;
pub use service::{ServiceEnv, ServiceProcess, wait_ready};

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What went wrong while setting up test infrastructure; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HarnessError(pub String);

pub type Result<T> = std::result::Result<T, HarnessError>;

impl HarnessError {
    pub(crate) fn io(context: impl std::fmt::Display, err: std::io::Error) -> Self {
        Self(format!("{context}: {err}"))
    }
}

/// A name unique to this process and call, valid as a stream prefix and a database name.
pub fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("{kind}{}x{}x{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos)
}

/// A real NATS JetStream server and a real PostgreSQL server.
pub struct Infra {
    pub nats: NatsServer,
    pub postgres: PostgresServer,
}

/// What one test owns on shared servers.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub stream_prefix: String,
    pub database_url: String,
}

impl Infra {
    pub async fn start() -> Result<Self> {
        let (nats, postgres) = tokio::try_join!(NatsServer::start(), PostgresServer::start())?;
        Ok(Self { nats, postgres })
    }

    /// A stream prefix and a fresh database for one test.
    pub async fn isolate(&self) -> Result<Isolation> {
        let name = unique_name("t");
        let database_url = self.postgres.create_database(&name).await?;
        Ok(Isolation { stream_prefix: name, database_url })
    }

    /// Where a test's services find these servers, with its `isolation` and token `secret`.
    pub fn services(&self, isolation: &Isolation, secret: &str) -> ServiceEnv {
        ServiceEnv {
            nats_url: self.nats.url(),
            database_url: isolation.database_url.clone(),
            stream_prefix: isolation.stream_prefix.clone(),
            replicas: 1,
            secret: secret.to_owned(),
        }
    }
}

/// Polls `condition` until it returns `Some`, or fails after `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(HarnessError(format!("timed out after {timeout:?} waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Binds port 0 on loopback and returns the port the kernel picked (for servers that cannot
/// pick their own). Another process could take it in between; callers retry on a bind failure.
pub(crate) fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|err| HarnessError::io("cannot bind a free port", err))?;
    listener.local_addr().map(|addr| addr.port()).map_err(|err| HarnessError::io("cannot read a bound port", err))
}
