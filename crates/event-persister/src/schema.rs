//! The database schema: migrations from `migrations/` (embedded at build time) and the daily
//! partitions of `events` and `log_lines`, created ahead of time so writes never wait on DDL.

use crate::Config;
use runcast_runtime::ops::ReadyFlag;
use runcast_runtime::{Error, ErrorKind, postgres};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Tables partitioned by day.
pub const PARTITIONED_TABLES: [&str; 2] = ["events", "log_lines"];

/// How often partitions are topped up while running.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Applies pending migrations. Safe to run concurrently from several replicas (sqlx takes an
/// advisory lock) and again on an up-to-date database (no-op).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await.map_err(|err| match err {
        sqlx::migrate::MigrateError::Execute(inner) => postgres::error("cannot apply migrations", inner),
        other => Error::with_source(ErrorKind::Internal, "cannot apply migrations", other),
    })
}

/// Creates the partitions from yesterday to `days_ahead` days after today (UTC) that are missing.
/// Returns how many were created.
pub async fn ensure_partitions(pool: &PgPool, days_ahead: u16) -> Result<i32, Error> {
    let mut created = 0;
    for table in PARTITIONED_TABLES {
        let count: i32 = sqlx::query_scalar(
            "SELECT runcast_ensure_daily_partitions($1::regclass, (now() AT TIME ZONE 'UTC')::date - 1, $2 + 2)",
        )
        .bind(table)
        .bind(i32::from(days_ahead))
        .fetch_one(pool)
        .await
        .map_err(|err| postgres::error(format!("cannot create partitions of {table}"), err))?;
        created += count;
    }
    Ok(created)
}

/// `event-persister migrate`: migrations and partitions once, then exit.
pub async fn migrate_once(config: &Config) -> Result<(), Error> {
    let pool = config.postgres.lazy_pool()?;
    migrate(&pool).await?;
    let created = ensure_partitions(&pool, config.partition_days_ahead).await?;
    tracing::info!(partitions_created = created, "database schema is up to date");
    pool.close().await;
    Ok(())
}

/// Brings the schema up to date as soon as the database is reachable (retrying with capped
/// backoff), raises `ready`, then tops partitions up every hour until `shutdown`.
pub async fn keep_up_to_date(pool: PgPool, days_ahead: u16, ready: ReadyFlag, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = async {
            migrate(&pool).await?;
            ensure_partitions(&pool, days_ahead).await
        }
        .await;
        let wait = match outcome {
            Ok(created) => {
                if created > 0 || !ready.is_ready() {
                    tracing::info!(partitions_created = created, "database schema is up to date");
                }
                ready.set(true);
                delay = Duration::from_millis(200);
                UPKEEP_INTERVAL
            }
            Err(err) => {
                tracing::warn!(cause = %err, retry_in = ?delay, "cannot bring the database schema up to date yet");
                let wait = delay;
                delay = (delay * 2).min(Duration::from_secs(10));
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
