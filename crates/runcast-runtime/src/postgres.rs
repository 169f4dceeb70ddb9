//! PostgreSQL access shared by the services that read or write the history: a pool that connects
//! lazily (a service starts while the database is down) and a monitor that keeps the `postgres`
//! readiness check equal to "a query works right now". Queries, and the classification of their
//! errors, are `runcast-store`'s.

use crate::error::{Error, ErrorKind};
use crate::ops::ReadyFlag;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a query may wait for a pooled connection before it fails with `Unavailable`.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle longer than this is pinged before it is handed out; a busier one is
/// not. sqlx pings every connection on acquire by default, and again on release (always): for a
/// one-query read that is three round trips instead of two. A connection that broke while idle
/// for less than this fails its next query with `Unavailable` (and is closed when released),
/// as a connection breaking mid-query does.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct PostgresArgs {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/runcast",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Connections in the pool.
    #[arg(long, env = "RUNCAST_DB_MAX_CONNECTIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,
}

impl PostgresArgs {
    /// A pool that has not connected yet; the URL is checked now, the server on first use.
    pub fn lazy_pool(&self) -> Result<PgPool, Error> {
        let (pool, options) = self.pool_options()?;
        Ok(pool.connect_lazy_with(options))
    }

    /// [`Self::lazy_pool`] for a writer that tells others its writes are stored once its commit
    /// returns (the persister acks events to JetStream, which may then drop them): where the
    /// server runs with `synchronous_commit = off`, its sessions set it `on`, so a commit returns
    /// only once its WAL is flushed. Any other level (`local`, `remote_write`, `on`,
    /// `remote_apply`) already flushes locally and is kept.
    pub fn lazy_durable_pool(&self) -> Result<PgPool, Error> {
        let (pool, options) = self.pool_options()?;
        Ok(pool.after_connect(|connection, _| Box::pin(commit_durably(connection))).connect_lazy_with(options))
    }

    fn pool_options(&self) -> Result<(PgPoolOptions, PgConnectOptions), Error> {
        // The URL may hold a password: never echo it.
        if !(self.database_url.starts_with("postgres://") || self.database_url.starts_with("postgresql://")) {
            return Err(Error::new(ErrorKind::Config, "DATABASE_URL must start with postgres:// or postgresql://"));
        }
        let options = PgConnectOptions::from_str(&self.database_url)
            .map_err(|err| Error::with_source(ErrorKind::Config, "DATABASE_URL is not a valid PostgreSQL URL", err))?;
        let pool = PgPoolOptions::new()
            .max_connections(self.db_max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            });
        Ok((pool, options))
    }
}

/// Raises the session's `synchronous_commit` to `on` if the server has it `off` (see
/// [`PostgresArgs::lazy_durable_pool`]); warns once per process about that and about `fsync = off`,
/// which no session can undo.
async fn commit_durably(connection: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let (synchronous_commit, fsync): (String, String) =
        sqlx::query_as("SELECT current_setting('synchronous_commit'), current_setting('fsync')")
            .fetch_one(&mut *connection)
            .await?;
    if synchronous_commit == "off" {
        sqlx::query("SET synchronous_commit = on").execute(&mut *connection).await?;
    }
    WARNED.call_once(|| {
        if synchronous_commit == "off" {
            tracing::warn!(
                "PostgreSQL runs with synchronous_commit = off: this service's sessions set it to on, so what it \
                 acknowledges is flushed to the WAL first"
            );
        }
        if fsync == "off" {
            tracing::warn!(
                "PostgreSQL runs with fsync = off: a crash of its machine can lose events already acknowledged \
                 (fine for tests, never for production)"
            );
        }
    });
    Ok(())
}

/// Pings the database every `interval` and mirrors the outcome into `flag`, until `shutdown`.
pub async fn monitor(pool: PgPool, flag: ReadyFlag, interval: Duration, shutdown: CancellationToken) {
    loop {
        let ok =
            matches!(tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::query("SELECT 1").execute(&pool)).await, Ok(Ok(_)));
        if ok != flag.is_ready() {
            if ok {
                tracing::info!("PostgreSQL reachable");
            } else {
                tracing::warn!("PostgreSQL unreachable");
            }
        }
        flag.set(ok);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
